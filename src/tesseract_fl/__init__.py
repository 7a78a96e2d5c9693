"""tesseract-fl: Byzantine-robust federated learning with TESSERACT (flip-score reputation).

Extension API (docs/design.md, "Plugins"): :func:`register_defense`, :func:`register_attack`,
:func:`register_model`, :func:`register_dataset`, :func:`load_plugin`.
"""

from importlib.metadata import PackageNotFoundError, version

from tesseract_fl.plugins import (
    load_plugin,
    register_attack,
    register_dataset,
    register_defense,
    register_model,
)
from tesseract_fl.tuning import tune_cpu

try:
    #: The one version string: the package metadata's (pyproject.toml).
    __version__ = version("tesseract-fl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "load_plugin",
    "register_attack",
    "register_dataset",
    "register_defense",
    "register_model",
    "tune_cpu",
]
