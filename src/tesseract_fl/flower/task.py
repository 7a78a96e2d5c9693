"""The data side of a Flower run, built exactly as the simulator builds it.

A :class:`FlowerTask` is made from the same :class:`ExperimentConfig` as a simulator run and
reuses the simulator's pieces: the dataset registry, the seeded client partitions and FLTrust
root set (:func:`~tesseract_fl.experiments.runner.split_clients`), the seeded initial model, the
round-robin batches and the per-client gradient of the simulator's backend. So a ClientApp
computes the gradient its simulated twin would, the ServerApp starts from the same model, and
colluding attackers can recompute every client's honest gradient of a round (full knowledge, as
in the paper's threat model).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tesseract_fl.data import Dataset, load_dataset
from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import ExperimentConfig
from tesseract_fl.experiments.runner import resolved_malicious_ids, root_size_of, split_clients
from tesseract_fl.models import make_model
from tesseract_fl.simulation.engine import evaluate
from tesseract_fl.simulation.gradients import Backend, client_gradients, default_backend

__all__ = ["FlowerTask"]


@functools.lru_cache(maxsize=2)
def _dataset(name: str, data_dir: str | None) -> Dataset:
    """Datasets are read once per process (a Ray actor serves many rounds and clients)."""
    return load_dataset(name, data_dir)


_TASKS: dict[str, FlowerTask] = {}


@dataclass
class FlowerTask:
    """Dataset, partitions, attackers and model of one experiment config (module docstring)."""

    cfg: ExperimentConfig
    ds: Dataset
    partitions: list[np.ndarray]
    root: np.ndarray | None
    malicious_ids: list[int]

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> FlowerTask:
        """Load the data and split it as ``build_simulation(cfg)`` does."""
        from tesseract_fl.aggregators import make_aggregator

        ds = _dataset(cfg.dataset, cfg.data_dir)
        defense = make_aggregator(
            cfg.defense, num_clients=cfg.clients, c_max=cfg.resolved_c_max, **cfg.defense_params
        )
        parts, root = split_clients(cfg, ds, root_size_of(defense))
        return cls(
            cfg=cfg, ds=ds, partitions=parts, root=root, malicious_ids=resolved_malicious_ids(cfg)
        )

    @classmethod
    def cached(cls, cfg: ExperimentConfig) -> FlowerTask:
        """:meth:`from_config`, memoized per process on the config's contents."""
        key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        task = _TASKS.get(key)
        if task is None:
            while len(_TASKS) >= 4:
                _TASKS.pop(next(iter(_TASKS)))
            task = _TASKS[key] = cls.from_config(cfg)
        return task

    def model(self) -> nn.Module:
        """The seeded initial model: the simulator's (``torch.manual_seed(seed)`` first)."""
        torch.manual_seed(self.cfg.seed)
        return make_model(self.cfg.model, num_classes=self.ds.num_classes)

    @property
    def backend(self) -> Backend:
        """The simulator's gradient backend for this config on the CPU (``auto``: its default),
        so a client's gradient has the simulator's bits."""
        if self.cfg.backend == "auto":
            return default_backend("cpu")
        return self.cfg.backend  # type: ignore[return-value]

    def is_malicious(self, client: int) -> bool:
        return client in self.malicious_ids

    def batch_indices(self, indices: np.ndarray, rnd: int) -> np.ndarray:
        """Round ``rnd`` (from 0) of the round-robin sampler over ``indices``: positions
        ``rnd*b .. rnd*b + b - 1`` modulo the partition size (the simulator's cursor)."""
        b = self.cfg.batch_size
        n = len(indices)
        if n == 0:
            raise ConfigError("a client holds no samples; cannot draw a batch")
        return indices[(rnd * b + np.arange(b)) % n]

    def gradient(
        self, model: nn.Module, client: int, rnd: int, *, attack: Any = None
    ) -> tuple[Tensor, float]:
        """``(gradient [P], loss)`` of ``client`` on its round-``rnd`` batch at ``model``;
        a data-poisoning ``attack`` relabels the batch first (label flipping)."""
        self._check_client(client)
        idx = torch.from_numpy(self.batch_indices(self.partitions[client], rnd))
        x = self.ds.train_x[idx].unsqueeze(0)
        y = self.ds.train_y[idx].unsqueeze(0)
        if attack is not None and callable(getattr(attack, "poison_labels", None)):
            y = attack.poison_labels(y.clone(), self.ds.num_classes)
        model.train()
        G, losses = client_gradients(model, x, y, F.cross_entropy, backend=self.backend)
        return G[0].clone(), float(losses[0])

    def honest_gradients(self, model: nn.Module, rnd: int) -> Tensor:
        """Every client's honest gradient of round ``rnd`` (``[clients, P]``, attackers' rows
        included): what a full-knowledge attacker sees in the simulator."""
        idx = torch.from_numpy(np.stack([self.batch_indices(p, rnd) for p in self.partitions]))
        model.train()
        G, _ = client_gradients(
            model, self.ds.train_x[idx], self.ds.train_y[idx], F.cross_entropy, self.backend
        )
        return G

    def root_gradient(self, model: nn.Module, rnd: int) -> Tensor:
        """The server's gradient on its round-``rnd`` root batch (FLTrust's ``g_0``)."""
        if self.root is None:
            raise ConfigError(f"defense {self.cfg.defense!r} keeps no root set")
        idx = torch.from_numpy(self.batch_indices(self.root, rnd)).unsqueeze(0)
        G, _ = client_gradients(
            model, self.ds.train_x[idx], self.ds.train_y[idx], F.cross_entropy, backend="loop"
        )
        return G[0].clone()

    def evaluate(self, model: nn.Module, max_samples: int = 0) -> tuple[float, float]:
        """Test accuracy (0-1) and loss, on the first ``max_samples`` test images (0: all)."""
        n = (
            self.ds.test_x.shape[0]
            if max_samples <= 0
            else min(max_samples, self.ds.test_x.shape[0])
        )
        return evaluate(model, self.ds.test_x[:n], self.ds.test_y[:n])

    def _check_client(self, client: int) -> None:
        if not 0 <= client < len(self.partitions):
            raise ConfigError(
                f"partition-id {client} is outside [0, {len(self.partitions)}) "
                f"(clients = {self.cfg.clients})"
            )
