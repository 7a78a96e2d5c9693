"""grid --executor ray on a local Ray instance: the same numbers as a local grid, plugins loaded
in the Ray workers, rows written into the one store by the driver, an interrupted run resumed
from its checkpoint, and finished runs skipped."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from tesseract_fl.experiments.grid import load_grid
from tesseract_fl.experiments.grid_runner import run_grid
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore

ray = pytest.importorskip("ray")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin"


@pytest.fixture(scope="module")
def local_ray() -> Any:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _grid(tmp_path: Path) -> Path:
    work = tmp_path / "plugin"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    (work / "short.toml").write_text(
        (work / "digits.toml")
        .read_text()
        .replace("rounds = 100", "rounds = 12\ncheckpoint_every = 4")
    )
    grid = work / "short-grid.toml"
    grid.write_text((work / "grid.toml").read_text().replace('"digits.toml"', '"short.toml"'))
    return grid


def _metrics(store: Path, run_ids: list[str]) -> dict[str, Any]:
    with ResultsStore(store, readonly=True) as s:
        return {r: (s.metrics(r), s.client_records(r)) for r in run_ids}


def test_ray_grid_matches_local_and_resumes(
    tmp_path: Path, local_ray: Any, example_plugin_free: None
) -> None:
    grid = load_grid(_grid(tmp_path))
    ids = [r.run_id for r in grid.runs]
    local = tmp_path / "local.sqlite"
    assert all(r["status"] == "finished" for r in run_grid(grid, local, jobs=1))

    # One run interrupted after round 8 (checkpoint at round 8) in the Ray store.
    on_ray = tmp_path / "ray.sqlite"
    target = grid.runs[1].config

    def stop(done: int, total: int, info: dict[str, Any]) -> None:
        if done == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_experiment(target, on_ray, progress=stop)
    results = run_grid(grid, on_ray, executor="ray")
    assert [r["status"] for r in results] == ["finished"] * len(ids)
    by_id = {r["run_id"]: r for r in results}
    assert by_id[target.run_id()]["resumed_from"] == 8
    assert _metrics(on_ray, ids) == _metrics(local, ids)  # bit-identical rows, plugins on Ray
    with ResultsStore(on_ray, readonly=True) as s:
        assert all(s.get_run(r)["status"] == "finished" for r in ids)
        assert s.conn.execute("SELECT COUNT(*) FROM owners").fetchone() == (0,)
    again = run_grid(grid, on_ray, executor="ray")
    assert {r["status"] for r in again} == {"skipped"}
