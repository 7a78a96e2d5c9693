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
