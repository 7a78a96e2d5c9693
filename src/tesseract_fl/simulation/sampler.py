"""Round-robin local batches (paper Sec. 5: clients sample their local data round-robin)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class RoundRobinSampler:
    """Each client walks through its own (already shuffled) index list, ``b`` samples a round.

    When a client reaches the end of its list it wraps around to the start, so every batch has
    exactly ``b`` samples (a client holding fewer than ``b`` samples repeats some of them). Equal
    batch sizes let the vmap backend stack all clients into one tensor.
    """

    def __init__(self, partitions: Sequence[np.ndarray], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        empty = [i for i, p in enumerate(partitions) if len(p) == 0]
        if empty:
            raise ValueError(f"clients {empty[:10]} hold no samples; cannot draw batches")
        self.partitions = [np.asarray(p, dtype=np.int64) for p in partitions]
        self.batch_size = batch_size
        self.cursors = np.zeros(len(partitions), dtype=np.int64)

    @property
    def n_samples(self) -> np.ndarray:
        """Local dataset size of each client (FedSGD's weights)."""
        return np.array([len(p) for p in self.partitions], dtype=np.int64)

    def next_batches(self) -> np.ndarray:
        """Indices ``[m, b]`` of every client's next batch; advances every cursor by ``b``."""
        b = self.batch_size
        out = np.empty((len(self.partitions), b), dtype=np.int64)
        for i, part in enumerate(self.partitions):
            pos = (self.cursors[i] + np.arange(b)) % len(part)
            out[i] = part[pos]
            self.cursors[i] = (self.cursors[i] + b) % len(part)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"cursors": self.cursors.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cursors = np.asarray(state["cursors"], dtype=np.int64)
        if cursors.shape != self.cursors.shape:
            raise ValueError("sampler state is for a different number of clients")
        self.cursors = cursors
