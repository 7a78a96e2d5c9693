"""Nearest-neighbour mixing (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot and Stephan 2023,
"Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS, Algorithm 1;
ByzFL's ``NNM``; docs/design.md, "nnm: nearest-neighbour mixing").

Each row is replaced by the mean of its ``m - c_max`` nearest rows (Euclidean, itself included):

    g_i <- mean_{j in N_i} g_j,    N_i = the m - c_max rows nearest g_i

so a rule after it sees rows whose spread an attacker can barely widen. Ties in distance go to
the lower row index. Rows with NaN/Inf pass through unchanged (the rule excludes them) and are
nobody's neighbours; the neighbour count is ``m_finite - c_max`` (at least 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.base import split_finite
from tesseract_fl.aggregators.kernels.gram import sq_distances
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count

__all__ = ["NearestNeighbourMixing", "nearest_neighbour_mixing"]


def nearest_neighbour_mixing(G: Tensor, c_max: int) -> Tensor:
    """NNM of the rows of ``G`` [m, P] -> Tensor[m, P] (finite rows only; see the module)."""
    k = G.shape[0] - c_max
    D = sq_distances(G).numpy()
    order = np.argsort(D, axis=1, kind="stable")[:, :k]  # itself first (distance 0), then nearest
    mix = torch.zeros(G.shape[0], G.shape[0], dtype=G.dtype)
    rows = np.repeat(np.arange(G.shape[0]), k)
    mix[torch.from_numpy(rows), torch.from_numpy(order.reshape(-1))] = 1.0 / k
    return mix.to(G.device) @ G


class NearestNeighbourMixing:
    """``nnm``: replace every row by the mean of its ``m - c_max`` nearest rows.

    ``c_max`` is the defense's (passed by ``make_aggregator``); the report records nothing
    beyond the neighbour count ``nnm_k``.
    """

    name = "nnm"

    def __init__(self, c_max: int) -> None:
        self.c_max = as_count(c_max, "c_max")

    def __repr__(self) -> str:
        return f"NearestNeighbourMixing(c_max={self.c_max})"

    def transform(self, G: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Mix the finite rows; rows with NaN/Inf pass through."""
        if not isinstance(G, Tensor) or G.dim() != 2 or not G.is_floating_point():
            return G, {}  # the rule's layout check names the problem
        fin = split_finite(G)
        if fin.m_finite == 0:
            return G, {"nnm_k": 0}
        if self.c_max >= fin.m:
            raise ConfigError(f"nnm needs c_max < m, got c_max={self.c_max} with m={fin.m}")
        c = min(self.c_max, fin.m_finite - 1)
        mixed = nearest_neighbour_mixing(fin.G, c)
        if fin.kept is None:
            return mixed, {"nnm_k": fin.m_finite - c}
        out = G.clone()
        out[fin.kept.to(G.device)] = mixed
        return out, {"nnm_k": fin.m_finite - c}

    def state_dict(self) -> dict[str, Any]:
        """Stateless: an empty dict."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accept the (empty) state of :meth:`state_dict`."""
        if state:
            raise ConfigError(f"nnm is stateless; unexpected state keys {sorted(state)}")
