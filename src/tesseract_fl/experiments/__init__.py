"""Experiment configs and presets, the runner, and the SQLite results store."""

from tesseract_fl.experiments.config import ExperimentConfig, list_presets, resolve_config
from tesseract_fl.experiments.store import ResultsStore

__all__ = ["ExperimentConfig", "ResultsStore", "list_presets", "resolve_config"]
