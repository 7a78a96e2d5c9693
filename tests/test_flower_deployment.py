"""A real Flower deployment on localhost: one SuperLink and 5 SuperNodes as separate processes
(TLS with test certificates), 3 rounds of TESSERACT with one sign-flipping node."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tesseract_fl.experiments.config import build_config
from tesseract_fl.experiments.runner import build_simulation
from tesseract_fl.flower.localhost import LocalFederation

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tesseract_fl.cli", "federation", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    """Five SuperNodes (partitions 0-4) and a TLS SuperLink with SuperNode authentication,
    started by ``tesseract-fl federation start`` (the command users run) and stopped by
    ``tesseract-fl federation stop``, checked to be gone, however the test ends."""
    workdir = tmp_path / "federation"
    started = _cli("start", str(workdir), "--supernodes", "5")
    assert started.returncode == 0, started.stderr + started.stdout
    assert "TLS, SuperNode authentication" in started.stdout
    fed = LocalFederation.attach(workdir)
    assert len(fed.node_ids) == 5  # every SuperNode registered with its own key
    try:
        yield fed
    finally:
        stopped = _cli("stop", str(workdir))
        left = fed.survivors()
        if left:
            fed.stop()
        assert stopped.returncode == 0 and left == [], (
            f"Flower processes still running after stop: {left}\n{stopped.stderr}"
        )


@pytest.mark.integration
def test_localhost_deployment_tesseract_reputation_finds_the_sign_flipper(
    federation: LocalFederation, tiny_data_dir: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    # Sign flipping with scale 2: in round 1 (s_g = 0) flip-scores are squared norms, so the
    # attacker already stands out; afterwards it flips against the global direction.
    experiment = {
        "clients": 5,
        "malicious": 1,
        "rounds": 3,
        "batch_size": 8,
        "eval_every": 3,
        "defense": "tesseract",
        "attack": {"name": "sign_flip", "scale": 2.0},
        "malicious_ids": [4],
        "data_dir": str(tiny_data_dir),
    }
    run_config = {
        **{k: v for k, v in experiment.items() if k not in ("attack", "malicious_ids")},
        "attack": "sign_flip",
        "attack-params": "scale=2.0",
        "malicious-ids": "4",
        "results-dir": str(results),
        "test-samples": 100,
    }
    t0 = time.monotonic()
    assert len(federation.survivors()) >= 6  # SuperLink, 5 SuperNodes (+ their SuperExecs)
    assert "https://127.0.0.1" in federation.tail("superlink", 200)  # TLS, not --insecure
    federation.run(EXAMPLE, run_config, timeout=300)
    seconds = time.monotonic() - t0

    files = list(results.glob("flower-*.json"))
    assert len(files) == 1, federation.tail("flwr-run")
    summary = json.loads(files[0].read_text())
    assert summary["rounds"] == 3 and len(summary["history"]) == 3
    nodes = summary["nodes"].values()
    assert len(nodes) == 5
    reputation = {info["partition-id"]: info["reputation"] for info in nodes}
    assert [info["partition-id"] for info in nodes if info["malicious"]] == [4]
    lowest = min(reputation, key=reputation.__getitem__)
    assert lowest == 4, reputation
    assert all(reputation[4] < r for p, r in reputation.items() if p != 4)

    # The same experiment in the in-process simulator ends with the same reputations.
    sim = build_simulation(build_config(experiment))
    for _ in range(3):
        res = sim.step()
    expected = res.aggregate.diagnostics.reputation.tolist()
    assert [reputation[p] for p in range(5)] == pytest.approx(expected, abs=1e-12)

    federation.stop()
    assert federation.survivors() == []
    assert all(p.poll() is not None for p in federation.procs)
    print(f"deployment: 3 rounds in {seconds:.1f} s")


def test_stop_kills_detached_descendants(tmp_path: Path) -> None:
    """What Flower's SuperExec does (a child in a new session) is still found and killed."""
    fed = LocalFederation(tmp_path / "f", insecure=True)
    fed.workdir.mkdir(parents=True)
    fed._spawn("parent", ["bash", "-c", "setsid sleep 300 & sleep 300"])
    deadline = time.monotonic() + 10
    while len(fed.survivors()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fed.survivors()) == 3  # bash and both sleeps
    fed.stop(grace=0.5)
    assert fed.survivors() == []
