# Sourced by setup.sh and test.sh: create .venv (Python >= 3.11) and install the project into it.
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: Python >= 3.11 is needed; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PY" -m venv .venv
fi
# torch is installed pinned to 2.13.0 (the CPU wheel) before the package, whose range allows it.
# Reinstall also when the environment's tesseract_fl is another checkout's (an editable install
# made elsewhere), so the tests always import this tree's src/.
here_src="$(pwd -P)/src"
if ! .venv/bin/python -c 'import tesseract_fl, pytest, hypothesis, ruff, flwr, mkdocs, mkdocstrings, build' 2>/dev/null \
    || [ pyproject.toml -nt .venv/.installed ] \
    || ! .venv/bin/python -c 'import pathlib, sys, tesseract_fl
sys.exit(pathlib.Path(tesseract_fl.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]))' \
        "$here_src" 2>/dev/null; then
    echo "==> installing tesseract-fl and its dependencies into .venv"
    # torch first, pinned to the CPU wheel: the package's own range (torch>=2.2,<3) would let
    # pip pick a multi-GB CUDA build on a CPU machine. (grep drops this machine's pip warnings
    # about absent local index folders.)
    .venv/bin/python -m pip install --quiet --disable-pip-version-check 'torch==2.13.0' \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,flower]' \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    # ByzFL, for the cross-check tests and the benchmarks only (same matrices, same results):
    # without its dependencies, since its package imports torchvision; its aggregator modules
    # need only numpy and torch. Optional: the tests skip when it is absent.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps 'byzfl==0.0.11' \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) \
        || echo "warning: byzfl not installed; its cross-check tests will be skipped" >&2
    touch .venv/.installed
fi
