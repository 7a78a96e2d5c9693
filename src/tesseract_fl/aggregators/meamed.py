"""Meamed: the mean around the median (Xie, Koyejo and Gupta 2018, "Generalized Byzantine-tolerant
SGD", arXiv:1802.10116, Def. 3; ByzFL's ``Meamed``; docs/design.md, "Meamed").

Per coordinate j, the ``m - c_max`` values ``g_ij`` nearest the coordinate median are averaged.
The nearest values form a contiguous window of the sorted column: the window whose farthest
member is nearest the median, the lowest one on ties (the same window rule as Bulyan's second
phase). Needs ``m > 2 c_max``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import FiniteRows, Rows, RuleResult
from tesseract_fl.aggregators.bulyan import bulyan_weights
from tesseract_fl.aggregators.coordinatewise import CoordinateWise
from tesseract_fl.aggregators.kernels.sorting import nearest_median_mean_kernel, window_mean_kernel
from tesseract_fl.aggregators.trimmed_mean import effective_trim

__all__ = ["Meamed", "meamed"]


def meamed(G: Tensor, c_max: int) -> Tensor:
    """Meamed of ``G`` [m, P] -> Tensor[P]: per coordinate the mean of the ``m - c_max`` values
    nearest the median (Xie et al. 2018). Requires ``m > 2 c_max``; rows with NaN/Inf are
    excluded and c_max reduced to fit the finite rows."""
    return Meamed(c_max).aggregate(G).update


class Meamed(CoordinateWise):
    """Meamed aggregator (Xie et al. 2018); stateless.

    ``c_max``: values left out per coordinate (needs ``m > 2 c_max``; reduced to
    ``(m_finite - 1) // 2`` when rows were excluded). ``weights``: each row's share of the
    averaged values over (sampled) coordinates, summing to 1. ``method``: ``"auto"`` (the
    sorting kernel orders only the ends of each column and its median,
    :func:`~.kernels.sorting.nearest_median_mean_kernel`) or ``"window"`` (Bulyan's window
    kernel on fully sorted columns; the same values up to float rounding).
    """

    name = "meamed"
    methods = ("auto", "window")

    def effective_c(self, fin: FiniteRows) -> int:
        """The trimmed mean's rule: ``m > 2 c_max``, reduced to fit the finite rows."""
        return effective_trim(fin, self.c_max)

    def rule(self, rows: Rows) -> RuleResult:
        """The coordinate-wise mean of the ``m - c`` values nearest the median."""
        assert rows.c is not None
        every = torch.arange(rows.G.shape[0])
        keep = rows.G.shape[0] - rows.c
        if self.method == "window":
            update = window_mean_kernel(
                rows.G, every, keep, chunk_size=self.chunk_size, method="auto"
            )
        else:
            update = nearest_median_mean_kernel(rows.G, keep, chunk_size=self.chunk_size)
        weights = bulyan_weights(rows.G, every, keep, self.weight_sample)
        return RuleResult(update=update, weights=weights)

    def __repr__(self) -> str:
        return f"Meamed(c_max={self.c_max})"
