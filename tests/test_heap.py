"""The glibc heap setting of the simulator (simulation/heap.py): applied once, can be turned off."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = (
    "from tesseract_fl.simulation.heap import keep_freed_memory as k; "
    "a = k(); b = k(); assert a == b; print(a)"
)


def _run(env_value: str | None) -> str:
    import os

    env = dict(os.environ)
    env.pop("TESSERACT_FL_GLIBC_HEAP", None)
    if env_value is not None:
        env["TESSERACT_FL_GLIBC_HEAP"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_applies_on_linux_and_env_turns_it_off() -> None:
    assert _run(None) == "True"
    assert _run("0") == "False"
    assert _run("off") == "False"


def test_importing_and_building_change_no_process_state() -> None:
    """Importing the library and building a simulation directly leave the heap alone; the
    runner's build_simulation (the CLI's path) turns the tuning on."""
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import pathlib, tempfile\n"
        "from conftest import make_idx_dataset\n"
        "import tesseract_fl, tesseract_fl.simulation.heap as h\n"
        "from tesseract_fl.aggregators import make_aggregator\n"
        "from tesseract_fl.data import load_dataset\n"
        "from tesseract_fl.models import make_model\n"
        "from tesseract_fl.simulation.engine import FedSGDSimulation, FederatedData\n"
        "from tesseract_fl.simulation.engine import SimulationSpec\n"
        "from tesseract_fl.experiments.config import resolve_config\n"
        "from tesseract_fl.experiments.runner import build_simulation\n"
        "import numpy as np\n"
        "d = pathlib.Path(tempfile.mkdtemp()); make_idx_dataset(d)\n"
        "ds = load_dataset('mnist', str(d))\n"
        "data = FederatedData(train_x=ds.train_x, train_y=ds.train_y, test_x=ds.test_x,\n"
        "    test_y=ds.test_y, partitions=np.array_split(np.arange(600), 4))\n"
        "FedSGDSimulation(SimulationSpec(model=make_model('mnist_cnn'), data=data,\n"
        "    aggregator=make_aggregator('fedsgd', num_clients=4, c_max=0), malicious_ids=[],\n"
        "    c_max=0, batch_size=8, lr_fn=lambda r: 0.1, device='cpu'))\n"
        "print(h._applied)\n"
        "over = [f'data_dir=\"{d}\"', 'clients=4', 'malicious=1']\n"
        "cfg = resolve_config('mnist', overrides=over)\n"
        "build_simulation(cfg)\n"
        "print(h._applied)\n"
    )
    import os

    env = {k: v for k, v in os.environ.items() if k != "TESSERACT_FL_GLIBC_HEAP"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    expected = "True" if sys.platform.startswith("linux") else "False"
    assert out == ["None", expected]
