"""Every bad input is one clear line, never a traceback; a diverging run is a result."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tesseract_fl.cli import main
from tesseract_fl.errors import ConfigError, StoreError, TesseractFLError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.grid import load_grid
from tesseract_fl.experiments.grid_runner import run_grid
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore


def _flat(text: str) -> str:
    """Terminal output without rich's line wrapping and table borders."""
    return " ".join(text.replace("│", " ").split())


def _sets(overrides: list[str]) -> list[str]:
    out: list[str] = []
    for o in overrides:
        out += ["--set", o]
    return out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=1000000", "batch_size must be in"),
        ("lr=1e308", "lr must be a finite number"),
        ("lr=inf", "lr must be a finite number"),
        ("lr=nan", "lr must be a finite number"),
        ("seed=-1", "seed must be an integer in"),
        ("seed=1180591620717411303424", "seed must be an integer in"),
        ('device="cuda:abc"', "CUDA index must be a number"),
        ('device="cpu:0"', "takes no index"),
        ("vmap_chunk=-1", "vmap_chunk must be >= 0"),
    ],
)
def test_bad_config_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config("mnist", overrides=[override])


@pytest.mark.parametrize("model", ["resnet18", "mlp", "char_gru"])
def test_model_that_does_not_fit_the_dataset(
    tmp_path: Path, tiny_overrides: list[str], model: str
) -> None:
    cfg = resolve_config("mnist", overrides=[*tiny_overrides, f'model="{model}"'])
    with pytest.raises(ConfigError, match=f"model '{model}' does not fit dataset 'mnist'"):
        run_experiment(cfg, tmp_path / "s.sqlite")


def test_deeply_nested_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert main(["run", "--config", str(deep)]) == 2
    assert "nests arrays or tables too deeply" in _flat(capsys.readouterr().err)
    with pytest.raises(ConfigError, match="nests too deeply"):
        resolve_config("mnist", overrides=["x=" + "[" * 5000 + "]" * 5000])


def test_too_few_samples_for_the_clients(tmp_path: Path, tiny_overrides: list[str]) -> None:
    cfg = resolve_config("mnist", overrides=[*tiny_overrides, "clients=700", "malicious=2"])
    with pytest.raises(TesseractFLError, match="600 training samples to split among 700"):
        run_experiment(cfg, tmp_path / "s.sqlite")


def test_diverging_run_is_a_result(
    tmp_path: Path, tiny_overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    over = [*tiny_overrides, "lr=100000"]
    cfg = resolve_config("mnist", overrides=over)
    store = tmp_path / "s.sqlite"
    summary = run_experiment(cfg, store)
    at = summary.diverged_at
    assert at is not None and 0 <= at < cfg.rounds
    assert 0.0 <= summary.final_accuracy <= 1.0
    with ResultsStore(store) as s:
        run = s.get_run(cfg.run_id())
        assert run is not None and run["status"] == "finished"
        metrics = s.metrics(cfg.run_id())
    assert [m["round"] for m in metrics] == list(range(at + 1))
    assert metrics[-1]["test_accuracy"] == summary.final_accuracy
    again = run_experiment(cfg, store)
    assert again.cached is True and again.diverged_at == at
    assert main(["run", "--preset", "mnist", "--store", str(store), *_sets(over)]) == 0
    assert f"at round {at} (accuracy measured there)" in _flat(capsys.readouterr().out)
    assert main(["show", "--store", str(store)]) == 0
    assert f"(diverged at round {at})" in _flat(capsys.readouterr().out)
    # --json is strict JSON even with a NaN loss.
    args = ["run", "--preset", "mnist", "--store", str(store), "--json", "--quiet"]
    assert main([*args, *_sets(over)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["diverged_at"] == at and out["final_loss"] is None


def test_grid_with_a_diverging_run_completes(tmp_path: Path, tiny_data_dir: Path) -> None:
    grid_file = tmp_path / "g.toml"
    grid_file.write_text(
        'name = "div"\nseeds = [0]\n[datasets]\nmnist = "mnist"\n'
        f'[set]\ndata_dir = "{tiny_data_dir}"\nclients = 10\nmalicious = 2\nrounds = 6\n'
        'batch_size = 8\n[[cells]]\nattack = "none"\ndefense = "fedsgd"\nlr = [0.05, 100000.0]\n'
    )
    results = run_grid(load_grid(grid_file), tmp_path / "s.sqlite")
    assert [r["status"] for r in results] == ["finished", "finished"]
    assert results[0]["diverged_at"] is None and results[1]["diverged_at"] is not None


def test_store_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the folder"):
        ResultsStore(blocker / "s.sqlite")
    with pytest.raises(StoreError, match="no results store"):
        ResultsStore(tmp_path / "missing.sqlite", readonly=True)
    assert not (tmp_path / "missing.sqlite").exists()
    assert main(["show", "--store", str(tmp_path / "typo.sqlite")]) == 2
    assert "no results store at" in _flat(capsys.readouterr().err)
    assert not (tmp_path / "typo.sqlite").exists()
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(StoreError, match="not a file"):
        ResultsStore(tmp_path / "dir.sqlite")
    # A read-only open writes nothing.
    with ResultsStore(tmp_path / "s.sqlite") as s:
        s.start_run("r", "n", {}, {})
    with ResultsStore(tmp_path / "s.sqlite", readonly=True) as s:
        assert s.get_run("r") is not None
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            s.conn.execute("DELETE FROM runs")


def test_version_is_one_string(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    import tesseract_fl

    assert tesseract_fl.__version__ == version("tesseract-fl")
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"tesseract-fl {tesseract_fl.__version__}"


def test_batch_larger_than_every_client(tmp_path: Path, tiny_overrides: list[str]) -> None:
    cfg = resolve_config("mnist", overrides=[*tiny_overrides, "batch_size=1000"])
    with pytest.raises(ConfigError, match="batch_size = 1000 is larger than every client"):
        run_experiment(cfg, tmp_path / "s.sqlite")
