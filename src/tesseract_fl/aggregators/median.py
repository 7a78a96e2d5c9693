"""Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML, Def. 1; docs/design.md, "Median").

``update_j = median_i g_ij`` for every coordinate j, with NumPy's semantics: for an even number
of rows the mean of the two middle values (``torch.median`` would return the lower one).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.base import Defense, Rows, RuleResult
from tesseract_fl.aggregators.kernels.sorting import median_kernel
from tesseract_fl.aggregators.kernels.weights import (
    WEIGHT_SAMPLE,
    check_weight_sample,
    position_weights,
    rank_rows,
)

__all__ = ["Median", "median", "median_weights"]


def median(G: Tensor, *, chunk_size: int | None = None, method: str = "auto") -> Tensor:
    """Coordinate-wise median of ``G`` [m, P] -> Tensor[P] (Yin et al. 2018), NumPy semantics.

    Even m: ``lo * 0.5 + hi * 0.5`` (NumPy's ``(lo + hi) / 2`` except that it cannot overflow).
    ``chunk_size``/``method`` select the sorting kernel's block size and form
    (:func:`~tesseract_fl.aggregators.kernels.sorting.sorted_column_chunks`). Rows with NaN/Inf
    are excluded (the median of the finite rows); none finite: the zero vector.
    """
    return Median(chunk_size=chunk_size, method=method).aggregate(G).update


def median_weights(G: Tensor, sample: int | None = WEIGHT_SAMPLE) -> Tensor:
    """Row weights: fraction of (sampled) coordinates where the row is the middle value.

    For even m each of the two middle rows of a coordinate counts 1/2; sums to 1. At most
    ``sample`` coordinates (fixed seed; all when ``P <= sample`` or ``None``).
    """
    m = G.shape[0]
    order = rank_rows(G, sample)
    pw = np.zeros(m)
    pw[(m - 1) // 2] += 0.5
    pw[m // 2] += 0.5
    return torch.from_numpy(position_weights(order, pw, m)).to(dtype=G.dtype, device=G.device)


class Median(Defense):
    """Coordinate-wise median aggregator (Yin et al. 2018); stateless.

    ``weight_sample``: coordinates used for the reported weights (``None`` = all); ``weights[i]``
    = fraction of them where row i is (one of) the middle value(s), each of two middles counting
    1/2 (sums to 1). ``chunk_size``/``method``: the sorting kernel's (results agree).
    """

    name = "median"

    def __init__(
        self,
        weight_sample: int | None = WEIGHT_SAMPLE,
        *,
        chunk_size: int | None = None,
        method: str = "auto",
    ) -> None:
        self.weight_sample = check_weight_sample(weight_sample)
        self.chunk_size = chunk_size
        self.method = method

    def rule(self, rows: Rows) -> RuleResult:
        """The coordinate-wise median of the finite rows and their middle-share weights."""
        update = median_kernel(rows.G, chunk_size=self.chunk_size, method=self.method)
        return RuleResult(update=update, weights=median_weights(rows.G, self.weight_sample))

    def __repr__(self) -> str:
        return "Median()"
