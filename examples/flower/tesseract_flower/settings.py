"""The app's run config (``[tool.flwr.app.config]``) -> our experiment config + Flower options.

Experiment keys have the names and meanings of ``tesseract-fl run --set`` and go through the
same validation (a typo or an impossible setting fails with our error message, before any data
is loaded); the dash-named keys are Flower-side options.
"""

from __future__ import annotations

import difflib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import USER_KEYS, ExperimentConfig, build_config, parse_value


@dataclass(frozen=True)
class FlowerOptions:
    """Flower-side options of the app (dash-named run-config keys)."""

    gradient_format: str = "flat"
    attack_dir: str = ""
    results_dir: str = "results/flower"
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_nodes: int = 0
    test_samples: int = 0

    def collusion_dir(self, run_id: int) -> Path:
        """The colluding attackers' directory of one Flower run."""
        base = Path(self.attack_dir) if self.attack_dir else Path(tempfile.gettempdir())
        if not self.attack_dir:
            base = base / "tesseract-fl-collusion"
        return base / f"run-{run_id}"


def _params(text: Any, key: str) -> dict[str, Any]:
    """``"mu_d=0.95 filter_then='median'"`` -> ``{"mu_d": 0.95, "filter_then": "median"}``."""
    if not isinstance(text, str):
        raise ConfigError(f"{key} must be a string of key=value pairs, got {text!r}")
    out: dict[str, Any] = {}
    for item in text.split():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"{key}: expected key=value, got {item!r}")
        out[name] = parse_value(value)
    return out


def _number(run_config: dict[str, Any], key: str, default: float) -> float:
    """A numeric option (the strategy checks its range); ConfigError for anything else."""
    value = run_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def _count(run_config: dict[str, Any], key: str) -> int:
    """A count option: an integer >= 0 (0: the default)."""
    value = run_config.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key} must be an integer >= 0, got {value!r}")
    return value


#: Run-config keys besides the experiment keys (``USER_KEYS``).
OPTION_KEYS: tuple[str, ...] = (
    "defense-params",
    "attack-params",
    "malicious-ids",
    "gradient-format",
    "attack-dir",
    "results-dir",
    "fraction-train",
    "fraction-evaluate",
    "min-nodes",
    "test-samples",
)


def read_run_config(run_config: dict[str, Any]) -> tuple[ExperimentConfig, FlowerOptions]:
    """Validate the run config; :class:`ConfigError` names a bad key."""
    allowed = (*(k for k in USER_KEYS if k != "malicious_ids"), *OPTION_KEYS)
    for key in run_config:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown run-config key {key!r}{hint}; allowed: {', '.join(allowed)}"
            )
    raw: dict[str, Any] = {"name": "flower"}
    for key in USER_KEYS:
        if key in run_config:
            raw[key] = run_config[key]
    if raw.get("c_max") == -1:
        raw["c_max"] = None
    if raw.get("data_dir") == "":
        raw["data_dir"] = None
    ids = run_config.get("malicious-ids", "")
    raw["malicious_ids"] = [int(i) for i in str(ids).replace(",", " ").split()] or None
    raw["defense"] = {
        "name": run_config.get("defense", "tesseract"),
        **_params(run_config.get("defense-params", ""), "defense-params"),
    }
    attack = run_config.get("attack", "none")
    attack_params = _params(run_config.get("attack-params", ""), "attack-params")
    raw["attack"] = {"name": attack, **attack_params} if attack_params else attack
    cfg = build_config(raw)
    opts = FlowerOptions(
        gradient_format=str(run_config.get("gradient-format", "flat")),
        attack_dir=str(run_config.get("attack-dir", "")),
        results_dir=str(run_config.get("results-dir", "results/flower")),
        fraction_train=_number(run_config, "fraction-train", 1.0),
        fraction_evaluate=_number(run_config, "fraction-evaluate", 0.0),
        min_nodes=_count(run_config, "min-nodes"),
        test_samples=_count(run_config, "test-samples"),
    )
    if opts.gradient_format not in ("flat", "layers"):
        raise ConfigError(
            f"gradient-format = {opts.gradient_format!r}; allowed values: flat, layers"
        )
    return cfg, opts
