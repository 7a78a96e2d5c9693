"""The run config of the FedAvg app: tesseract-fl's experiment keys plus the app's own."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import ExperimentConfig, build_config, parse_value

#: Keys with the meaning they have in `tesseract-fl run --set`.
EXPERIMENT_KEYS = (
    "dataset",
    "model",
    "partition",
    "bias",
    "clients",
    "malicious",
    "rounds",
    "batch_size",
    "lr",
    "defense",
    "seed",
    "eval_every",
    "data_dir",
)
#: Attacks a weight-sending client can run on its own.
LOCAL_ATTACKS = ("none", "sign_flip", "label_flip", "gaussian")
#: Full-knowledge attacks the malicious clients run together on the round's honest updates
#: (each recomputes every client's local training, as a colluding attacker could).
COLLUDING_ATTACKS = ("full_trim", "full_krum", "alie", "ipm", "min_max", "min_sum", "mimic")
ATTACKS = LOCAL_ATTACKS + COLLUDING_ATTACKS


@dataclass(frozen=True)
class AppOptions:
    """What the app adds to an experiment: local training, the attack on weights, output."""

    local_epochs: int
    server_lr: float
    safeguard: float | None
    attack: str
    attack_scale: float
    attack_sigma: float
    test_samples: int
    results_dir: str

    def collusion_dir(self, run_id: int) -> str:
        """Where the colluding attackers of run ``run_id`` share each round's rows."""
        return f"{self.results_dir}/collusion-{run_id}"


def read_run_config(run_config: dict[str, Any]) -> tuple[ExperimentConfig, AppOptions]:
    """The experiment (validated as `tesseract-fl run` validates it) and the app options."""
    data = {k: run_config[k] for k in EXPERIMENT_KEYS if k in run_config}
    if not data.get("data_dir"):
        data.pop("data_dir", None)
    params = {}
    for item in shlex.split(str(run_config.get("defense-params", ""))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"defense-params: {item!r} is not key=value")
        params[key] = parse_value(value)
    if params:
        data["defense"] = {"name": data.get("defense", "tesseract"), **params}
    data["name"] = "flower-fedavg"
    cfg = build_config(data)
    attack = str(run_config.get("attack", "none"))
    if attack not in ATTACKS:
        raise ConfigError(f"attack = {attack!r}; this app's attacks on weights: {ATTACKS}")
    epochs = int(run_config.get("local-epochs", 1))
    if epochs < 1:
        raise ConfigError(f"local-epochs must be >= 1, got {epochs}")
    guard = float(run_config.get("safeguard", 3.0))
    return cfg, AppOptions(
        local_epochs=epochs,
        server_lr=float(run_config.get("server-lr", 1.0)),
        safeguard=guard if guard > 0 else None,
        attack=attack,
        attack_scale=float(run_config.get("attack-scale", 4.0)),
        attack_sigma=float(run_config.get("attack-sigma", 0.1)),
        test_samples=int(run_config.get("test-samples", 0)),
        results_dir=str(run_config.get("results-dir", "results/flower-fedavg")),
    )
