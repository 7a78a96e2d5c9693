"""MoNNA, the mean of the nearest neighbours of a trusted vector (Farhadkhani, Guerraoui, Gupta,
Hoang, Pinot and Stephan 2023, "Robust Collaborative Learning with Linear Gradient Overhead",
ICML; ByzFL's ``MoNNA``; docs/design.md, "MoNNA").

``MoNNA(g_1..g_m) = (1 / (m - c_max)) sum_{i in N(p)} g_i``, with ``N(p)`` the ``m - c_max`` rows
nearest (in Euclidean distance) to a pivot ``p`` that the aggregator trusts. In the paper's
peer-to-peer setting each honest node is its own pivot. A server has no gradient of its own
unless it holds data, so ``pivot`` is either a client id the server trusts (``pivot = k``: ByzFL's
``MoNNA(f, idx)``, the pivot's own row counting as its nearest neighbour) or, by default,
``"root"``: the server's gradient on its clean root set (FLTrust's root data), which is not one of
the rows. Ties in distance go to the lower row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import (
    AggregationContext,
    Defense,
    FiniteRows,
    Rows,
    RuleResult,
    finite,
)
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.aggregators.kernels.gram import distances_to
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.validation import as_count

__all__ = ["MoNNA", "monna", "nearest_rows"]


def nearest_rows(G: Tensor, pivot: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` rows of ``G`` [m, P] nearest to ``pivot`` [P], ascending by distance
    (ties to the lower index); the distances in one cache-blocked pass (:func:`distances_to`)."""
    d = distances_to(G, pivot).tolist()
    order = sorted(range(G.shape[0]), key=lambda i: (d[i], i))
    return torch.as_tensor(order[:k], dtype=torch.long)


def monna(G: Tensor, c_max: int, pivot: int = 0) -> Tensor:
    """MoNNA of ``G`` [m, P] around row ``pivot`` -> Tensor[P] (ByzFL's ``MoNNA(f, idx)``)."""
    return MoNNA(c_max, pivot=pivot).aggregate(G).update


class MoNNA(Defense):
    """MoNNA aggregator (Farhadkhani et al. 2023); stateless.

    ``c_max``: rows left out (needs ``m > c_max``); ``pivot``: ``"root"`` (the server's
    root-set gradient, the round computes it) or a trusted client id. ``weights``: ``1/(m-c)``
    on the neighbours; ``diagnostics.selected``: the neighbours.
    """

    name = "monna"

    def __init__(self, c_max: int, pivot: int | str = "root", root_size: int = 100) -> None:
        self.c_max = as_count(c_max, "c_max")
        if pivot != "root" and (isinstance(pivot, bool) or not isinstance(pivot, int) or pivot < 0):
            raise ConfigError(f"MoNNA pivot must be 'root' or a client id, got {pivot!r}")
        self.pivot = pivot
        self.root_size = as_count(root_size, "root_size", minimum=1)
        # Only the root pivot needs the server's gradient (and a root set kept out of the data).
        self.needs_root_gradient = pivot == "root"  # type: ignore[misc]

    def check_input(self, G: Tensor, ids: Tensor, ctx: AggregationContext) -> None:
        if self.c_max >= G.shape[0]:
            raise ConfigError(f"MoNNA needs m > c_max, got m={G.shape[0]}, c_max={self.c_max}")
        if self.pivot == "root":
            g0 = ctx.root_gradient
            if not isinstance(g0, Tensor) or g0.shape != (G.shape[1],):
                raise UpdateError(
                    "MoNNA with pivot='root' needs ctx=AggregationContext(root_gradient=g0) with "
                    f"g0 a Tensor[{G.shape[1]}]"
                )
            if not finite(g0):
                raise UpdateError("MoNNA's root gradient is not finite")
        elif not bool(ids.eq(int(self.pivot)).any()):
            raise UpdateError(f"MoNNA's trusted pivot client {self.pivot} sent no row this round")

    def effective_c(self, fin: FiniteRows) -> int:
        return min(self.c_max, fin.m_finite - 1)

    def rule(self, rows: Rows) -> RuleResult:
        """The mean of the ``m - c`` rows nearest the pivot."""
        assert rows.c is not None
        if self.pivot == "root":
            assert rows.ctx.root_gradient is not None
            p = rows.ctx.root_gradient.to(device=rows.G.device, dtype=rows.G.dtype)
        else:
            at = torch.nonzero(rows.ids.eq(int(self.pivot))).flatten()
            if at.numel() == 0:
                raise UpdateError(
                    f"MoNNA's trusted pivot client {self.pivot} sent a non-finite row"
                )
            p = rows.G[int(at[0])]
        keep = nearest_rows(rows.G, p, rows.G.shape[0] - rows.c)
        w = torch.zeros(rows.G.shape[0], dtype=torch.float64)
        w[keep] = 1.0 / keep.numel()
        update = weighted_mean(w.to(dtype=rows.G.dtype, device=rows.G.device), rows.G)
        out = RuleResult(update=update, weights=w)
        out.diagnostics.selected = rows.finite.rows_of_input(keep)
        return out

    def __repr__(self) -> str:
        return f"MoNNA(c_max={self.c_max}, pivot={self.pivot!r})"
