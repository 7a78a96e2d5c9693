"""tesseract-fl: Byzantine-robust federated learning with TESSERACT (flip-score reputation)."""

from importlib.metadata import PackageNotFoundError, version

from tesseract_fl.tuning import tune_cpu

try:
    #: The one version string: the package metadata's (pyproject.toml).
    __version__ = version("tesseract-fl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "tune_cpu"]
