"""tesseract-fl on Flower: every defense as a Flower strategy, malicious clients, deployments.

Needs the optional dependency group ``flower`` (``pip install 'tesseract-fl[flower]'``).

- :class:`RobustStrategy`: a Flower Message-API strategy (``flwr.serverapp.strategy.FedAvg``
  subclass) that aggregates clients' gradients with any registered aggregator, keyed by stable
  node slots (:class:`NodeSlots`), and takes the server SGD step.
- :class:`FlowerTask`: dataset, partitions, model and batches of an experiment config, built as
  the simulator builds them (what the example ClientApp / ServerApp use).
- :class:`ColludingAttackers`: full-knowledge attacks (Full-Trim, Full-Krum, ...) for malicious
  ClientApps that meet in a shared directory.
- :func:`model_arrays`, :func:`load_arrays`, :func:`gradient_record`, :class:`Layout`: models
  and gradients as ``ArrayRecord``.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "tesseract_fl.flower needs Flower; install it with: pip install 'tesseract-fl[flower]'"
    ) from exc

from tesseract_fl.flower.collusion import LOCAL_ATTACKS, ColludingAttackers, model_fingerprint
from tesseract_fl.flower.records import (
    GRADIENT_KEY,
    Layout,
    gradient_record,
    load_arrays,
    model_arrays,
)
from tesseract_fl.flower.slots import NodeSlots, SlotAggregator, grow_state
from tesseract_fl.flower.strategy import (
    DEFAULT_MAX_NODES,
    NodeRound,
    RobustStrategy,
    RoundRecord,
)
from tesseract_fl.flower.task import FlowerTask

__all__ = [
    "DEFAULT_MAX_NODES",
    "GRADIENT_KEY",
    "LOCAL_ATTACKS",
    "ColludingAttackers",
    "FlowerTask",
    "Layout",
    "NodeRound",
    "NodeSlots",
    "RobustStrategy",
    "RoundRecord",
    "SlotAggregator",
    "gradient_record",
    "grow_state",
    "load_arrays",
    "model_arrays",
    "model_fingerprint",
]
