"""Presets of every dataset (paper scale and quick), run end to end on fixtures in the real
formats; CIFAR-10 augmentation; evaluation subsets; missing data fails early and says how to
get it."""

from __future__ import annotations

import copy
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_idx_dataset
from datafixtures import write_chmnist_npz, write_cifar, write_femnist, write_shakespeare
from tesseract_fl.cli import main
from tesseract_fl.data.augment import black_pixel, make_augment, random_crop_flip
from tesseract_fl.errors import ConfigError, DatasetError
from tesseract_fl.experiments.config import list_presets, load_preset, resolve_config
from tesseract_fl.experiments.runner import build_simulation, evaluation_indices, run_experiment

PAPER = {  # paper Table 1 (docs/design.md, "Presets"): dataset, model, m, c, rounds, b, lr, sched.
    "mnist": ("mnist", "mnist_cnn", 100, 20, 500, 32, 0.01, "constant"),
    "cifar10": ("cifar10", "resnet18_cifar", 10, 2, 2000, 128, 0.1, "cifar"),
    "shakespeare": ("shakespeare", "char_gru", 10, 2, 2000, 100, 0.01, "constant"),
    "femnist": ("femnist", "leaf_cnn", 35, 7, 2000, 32, 0.1, "constant"),
}
QUICK = [n for n in list_presets() if n.endswith("-quick")]


def test_paper_presets_follow_table_1() -> None:
    for name, expected in PAPER.items():
        cfg = resolve_config(name)
        got = (cfg.dataset, cfg.model, cfg.clients, cfg.malicious, cfg.rounds, cfg.batch_size)
        assert (*got, cfg.lr, cfg.lr_schedule) == expected, name
        assert cfg.defense == "tesseract" and cfg.defense_params["mu_d"] == 0.99
    assert resolve_config("cifar10").augment == "crop_flip"
    assert resolve_config("femnist").partition == "writers"
    assert resolve_config("shakespeare").partition == "sequential"
    for name in ("fmnist", "breast_cancer", "chmnist"):
        assert resolve_config(name).dataset == name
    assert resolve_config("chmnist").model == "chmnist_cnn"
    assert resolve_config("chmnist").malicious / resolve_config("chmnist").clients == 0.3


def test_every_preset_has_a_quick_variant() -> None:
    full = [n for n in list_presets() if not n.endswith("-quick") and n != "demo"]
    assert sorted(full) == sorted(n.removesuffix("-quick") for n in QUICK)
    for q in QUICK:
        quick, paper = resolve_config(q), resolve_config(q.removesuffix("-quick"))
        for key in ("dataset", "model", "partition", "lr", "lr_schedule", "augment", "backend"):
            assert getattr(quick, key) == getattr(paper, key), (q, key)
        assert quick.rounds < paper.rounds or quick.clients < paper.clients, q
        assert quick.malicious > 0 and quick.defense == "tesseract"


def test_new_keys_keep_the_ids_of_stored_runs() -> None:
    # ids stored in results/store.sqlite before `augment`, `test_subset` and `writers` existed
    assert resolve_config("mnist").run_id() == "fdc877a20f060e00"
    assert resolve_config("shakespeare").run_id() == "5ef9bc9e9c77d9dc"
    assert resolve_config("breast_cancer").run_id() == "fd347b85333e3ff9"
    assert resolve_config("mnist", overrides=["test_subset=100"]).run_id() != "fdc877a20f060e00"
    with pytest.raises(ConfigError, match=r"augment = 'flip'.*allowed values: none, crop_flip"):
        resolve_config("mnist", overrides=["augment=flip"])
    with pytest.raises(ConfigError, match="test_subset must be >= 0"):
        resolve_config("mnist", overrides=["test_subset=-1"])


# ---------------------------------------------------------------- augmentation
def _naive_crop_flip(x: torch.Tensor, gen: torch.Generator, p: int, fill: float) -> torch.Tensor:
    """Per-image reference with the same draws as :func:`random_crop_flip`."""
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = []
    for i in range(n):
        padded = torch.nn.functional.pad(x[i], (p, p, p, p), value=fill)
        crop = padded[:, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


def test_random_crop_flip_matches_per_image_reference() -> None:
    x = torch.randn(64, 3, 8, 8)
    got = random_crop_flip(x, torch.Generator().manual_seed(3), padding=4, fill=-2.5)
    want = _naive_crop_flip(x, torch.Generator().manual_seed(3), 4, -2.5)
    assert torch.equal(got, want)
    assert not torch.equal(got, x)  # 64 images: some are shifted or flipped
    assert (got == -2.5).any()  # padding shows at the borders of shifted crops
    # per-channel fill: a black CIFAR pixel in normalized units
    fill = black_pixel("cifar10")
    assert isinstance(fill, tuple) and len(fill) == 3 and all(f < -1.5 for f in fill)
    out = random_crop_flip(torch.zeros(200, 3, 4, 4), torch.Generator().manual_seed(0), 4, fill)
    for ch in range(3):
        vals = out[:, ch].unique()
        assert len(vals) == 2 and torch.allclose(vals, torch.tensor(sorted([0.0, fill[ch]])))
    assert make_augment("none") is None
    with pytest.raises(ConfigError, match="crop_flip"):
        make_augment("rotate")


def test_augmented_runs_resume_exactly(tiny_data_dir: Path, tiny_overrides: list[str]) -> None:
    over = [*tiny_overrides, "augment=crop_flip"]
    a = build_simulation(resolve_config("mnist", overrides=over))
    plain = build_simulation(resolve_config("mnist", overrides=tiny_overrides))
    ga, _ = a.compute_gradients()
    gp, _ = plain.compute_gradients()
    assert not torch.allclose(ga, gp)  # the same batches, augmented
    a.step()
    state = copy.deepcopy(a.state_dict())  # a checkpoint is a copy on disk
    ref = a.step()
    b = build_simulation(resolve_config("mnist", overrides=over))
    b.load_state_dict(state)
    again = b.step()
    assert torch.equal(ref.aggregate.update, again.aggregate.update)


def test_evaluation_subset_is_fixed(tiny_data_dir: Path, tiny_overrides: list[str]) -> None:
    idx = evaluation_indices(200, 50)
    assert idx is not None and len(idx) == 50 and len(set(idx.tolist())) == 50
    assert torch.equal(idx, torch.sort(idx).values)
    assert evaluation_indices(200, 0) is None and evaluation_indices(200, 200) is None
    sims = [
        build_simulation(resolve_config("mnist", overrides=[*tiny_overrides, s, "test_subset=50"]))
        for s in ("seed=0", "seed=1")
    ]
    assert sims[0].test_x.shape[0] == 50 and torch.equal(sims[0].test_y, sims[1].test_y)
    full = build_simulation(resolve_config("mnist", overrides=tiny_overrides))
    assert full.test_x.shape[0] == 200
    assert torch.equal(sims[0].test_x, full.test_x[idx])


# ---------------------------------------------------------------- missing data
@pytest.mark.parametrize("preset", ["cifar10-quick", "femnist", "chmnist-quick", "shakespeare"])
def test_missing_data_fails_early_and_says_how_to_get_it(
    preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = load_preset(preset)["dataset"]
    store = tmp_path / "s.sqlite"
    t = time.perf_counter()
    rc = main(["run", "--preset", preset, "--data-dir", str(tmp_path), "--store", str(store)])
    assert rc == 2 and time.perf_counter() - t < 30
    err = " ".join(capsys.readouterr().err.split())
    assert f"run '{preset}' needs dataset '{dataset}'" in err
    assert f"tesseract-fl datasets prepare {dataset}" in err and str(tmp_path / dataset) in err
    with sqlite3.connect(store) as con:
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    with pytest.raises(DatasetError, match=f"datasets prepare {dataset}"):
        build_simulation(resolve_config(preset, overrides=[f'data_dir="{tmp_path}"']))


# ---------------------------------------------------------------- every quick preset runs
def _fixture(dataset: str, root: Path) -> Path:
    if dataset in ("mnist", "fmnist"):
        return make_idx_dataset(root, dataset, n_train=300, n_test=50)
    if dataset == "cifar10":
        return write_cifar(root, n=8)
    if dataset == "femnist":
        return write_femnist(root, writers=12, per_writer=4)
    if dataset == "chmnist":
        return write_chmnist_npz(root, per_class=5)
    if dataset == "shakespeare":
        return write_shakespeare(root)
    return root  # breast_cancer: scikit-learn's copy


@pytest.mark.parametrize("preset", QUICK)
def test_quick_preset_runs_end_to_end(preset: str, tmp_path: Path) -> None:
    """Two rounds of each quick preset, as configured except rounds and batch size, on a small
    fixture in the dataset's real format (CIFAR-10: ResNet-18, augmentation, BN, schedule)."""
    cfg = resolve_config(preset)
    root = _fixture(cfg.dataset, tmp_path / "data")
    over = [f'data_dir="{root}"', "rounds=2", "batch_size=2", "eval_every=1", "record_every=1"]
    summary = run_experiment(resolve_config(preset, overrides=over), tmp_path / "s.sqlite")
    assert summary.rounds == 2 and summary.final_accuracy is not None
    assert np.isfinite(summary.final_loss)


def test_cifar10_quick_details(tmp_path: Path) -> None:
    root = write_cifar(tmp_path, n=8)
    sim = build_simulation(
        resolve_config("cifar10-quick", overrides=[f'data_dir="{root}"', "batch_size=2"])
    )
    assert sim.augment is not None and sim.backend == "loop"
    first, second = sim.step(), sim.step()
    assert first.lr == 0.0 and 0.0 < second.lr <= 0.1  # the paper's warm-up from zero
    bn = sim.model.blocks[0].bn1  # type: ignore[union-attr, index]
    assert int(bn.num_batches_tracked) == 20  # running statistics: 10 clients x 2 rounds
    assert sim.test_x.shape[0] == 8  # fewer test images than test_subset: all of them


def test_femnist_quick_deals_whole_writers(tmp_path: Path) -> None:
    root = write_femnist(tmp_path, writers=12, per_writer=4)
    sim = build_simulation(
        resolve_config("femnist-quick", overrides=[f'data_dir="{root}"', "batch_size=4"])
    )
    groups = torch.arange(12).repeat_interleave(4)
    owners = [set(groups[torch.from_numpy(p)].tolist()) for p in sim.sampler.partitions]
    assert sorted(w for o in owners for w in o) == list(range(12))  # each writer on one client
    assert all(len(p) == 4 * len(o) for p, o in zip(sim.sampler.partitions, owners, strict=True))
