"""The built wheel works outside the clone: ``python -m build``, install the wheel into a fresh
virtual environment, then from an empty folder ``--version``, a packaged grid's ``--dry-run``,
a 3-round grid of our own and the report over it.

The fresh environment gets the wheel's package only; its third-party dependencies (torch,
numpy, ...) are the test environment's, reached through a path file, because installing torch
again from the registry would take minutes and, on a CPU machine, could pull a CUDA build. The
test checks that ``tesseract_fl`` itself is imported from the fresh environment, not the clone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY_GRID = """
name = "table2-wheel"
description = "3 rounds on Breast Cancer, from an installed wheel"
seeds = [0]
[datasets]
bc = "breast_cancer"
[set]
rounds = 3
eval_every = 1
[[cells]]
attack = "none"
defense = ["fedsgd", "tesseract"]
"""


def _sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "80"
    _sh(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist")],
        ROOT,
        env,
    )
    (wheel,) = (tmp / "dist").glob("tesseract_fl-*.whl")
    venv = tmp / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    py = venv / "bin" / "python"
    site = Path(
        _sh(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env
        ).strip()
    )
    # Dependencies from this environment (its site folder is appended, so the fresh one's own
    # tesseract_fl comes first; the clone's editable-install hook there is not run).
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _sh(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "--quiet",
            str(wheel),
        ],
        tmp,
        env,
    )
    return venv, env


def test_the_wheel_runs_outside_the_clone(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = installed
    cli = str(venv / "bin" / "tesseract-fl")
    where = _sh(
        [str(venv / "bin" / "python"), "-c", "import tesseract_fl; print(tesseract_fl.__file__)"],
        tmp_path,
        env,
    )
    assert Path(where.strip()).is_relative_to(venv), where  # not the clone's src/
    assert _sh([cli, "--version"], tmp_path, env).startswith("tesseract-fl 0.")
    dry = _sh([cli, "grid", "table2-mnist", "--dry-run"], tmp_path, env)
    assert "0 finished, 0 partial, 19 new" in dry
    assert "table2-mnist" in _sh([cli, "grid", "--list"], tmp_path, env)
    (tmp_path / "table2-wheel.toml").write_text(TINY_GRID)
    _sh([cli, "grid", "table2-wheel.toml"], tmp_path, env)
    shown = _sh([cli, "show", "--json"], tmp_path, env)
    assert shown.count('"status": "finished"') == 2
    _sh([cli, "report", "--grid", "table2-wheel.toml"], tmp_path, env)
    assert (tmp_path / "runs" / "report" / "report.md").is_file()
    _sh([cli, "report"], tmp_path, env)  # the packaged paper grids: all missing, still a report
    assert not (tmp_path / "results").exists()  # nothing written beside a committed store
