"""Shared fixtures: a tiny MNIST-format dataset written as real IDX files (no download)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tesseract_fl.data.idx import write_idx


def make_idx_dataset(
    root: Path, name: str = "mnist", n_train: int = 600, n_test: int = 200
) -> Path:
    """Write learnable 28x28 digit-like images (class-dependent blobs) in IDX format."""
    rng = np.random.default_rng(0)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)

    def images(labels: np.ndarray) -> np.ndarray:
        x = rng.integers(0, 40, size=(len(labels), 28, 28)).astype(np.uint8)
        for i, lab in enumerate(labels):
            r, c = divmod(int(lab), 4)
            x[i, 2 + 6 * r : 8 + 6 * r, 2 + 6 * c : 8 + 6 * c] = 255
        return x

    ytr = rng.integers(0, 10, size=n_train).astype(np.uint8)
    yte = rng.integers(0, 10, size=n_test).astype(np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", images(ytr))
    write_idx(folder / "train-labels-idx1-ubyte.gz", ytr)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images(yte))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", yte)
    return root


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_idx_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def tiny_overrides(tiny_data_dir: Path) -> list[str]:
    """`--set` overrides for a seconds-long run on the tiny dataset."""
    return [
        f'data_dir="{tiny_data_dir}"',
        "clients=10",
        "malicious=2",
        "rounds=6",
        "batch_size=8",
        "eval_every=3",
        "record_every=2",
        "lr=0.05",
    ]


#: What examples/plugin registers (kind, name).
EXAMPLE_COMPONENTS = (
    ("defense", "centered_clip"),
    ("attack", "random_direction"),
    ("model", "digits_mlp"),
    ("dataset", "digits"),
)


def forget_example_plugin() -> None:
    """Drop the example plugin's components and load records from this process, so that a test
    can load another copy of it (two files registering one name is a clash, on purpose)."""
    import tesseract_fl.plugins as plugins
    from tesseract_fl.plugins.registry import registries

    regs = registries()
    for kind, name in EXAMPLE_COMPONENTS:
        regs[kind].pop(name, None)
        regs[kind].infos.pop(name, None)
    for key, (_, comps) in list(plugins._LOADED.items()):
        if any((c.kind, c.name) in EXAMPLE_COMPONENTS for c in comps):
            del plugins._LOADED[key]


@pytest.fixture
def example_plugin_free() -> Iterator[None]:
    forget_example_plugin()
    yield
    forget_example_plugin()


def interrupt_then_resume(cfg: Any, store: Path, at: int) -> Any:
    """Run ``cfg`` into ``store``, interrupted (KeyboardInterrupt) after round ``at``, then run
    it again: the second run resumes from its checkpoint. Returns the resumed run's summary."""
    from tesseract_fl.experiments.runner import run_experiment

    def stop(done: int, total: int, info: object) -> None:
        if done == at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, store, progress=stop)
    return run_experiment(cfg, store)
