"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML, Def. 2; docs/design.md, "Trimmed mean").

Per coordinate j, the ``c_max`` largest and the ``c_max`` smallest values ``g_ij`` are dropped
and the remaining ``m - 2 c_max`` averaged: ``update_j = mean(sort_i(g_ij)[c : m - c])``.
Needs ``m > 2 c_max``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.base import FiniteRows, Rows, RuleResult
from tesseract_fl.aggregators.coordinatewise import CoordinateWise
from tesseract_fl.aggregators.kernels.sorting import trimmed_mean_kernel
from tesseract_fl.aggregators.kernels.weights import (
    WEIGHT_SAMPLE,
    position_weights,
    rank_rows,
)
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count

__all__ = ["TrimmedMean", "effective_trim", "trimmed_mean", "trimmed_mean_weights"]


def check_trim(m: int, c_max: Any) -> int:
    """``c_max`` as a count that leaves rows to average: ``m > 2 c_max`` (:class:`ConfigError`)."""
    c = as_count(c_max, "c_max")
    if m <= 2 * c:
        raise ConfigError(
            f"trimmed mean needs m > 2*c_max clients, got m={m} and c_max={c} "
            f"(use c_max <= {(m - 1) // 2})"
        )
    return c


def effective_trim(fin: FiniteRows, c_max: Any) -> int:
    """c_max validated against the rows received, reduced to ``(m_finite - 1) // 2`` when rows
    were excluded (hostile-input policy): the trimmed mean needs ``m_finite > 2 c``."""
    c = check_trim(fin.m, c_max)
    return min(c, (fin.m_finite - 1) // 2)


def trimmed_mean(
    G: Tensor, c_max: int, *, chunk_size: int | None = None, method: str = "auto"
) -> Tensor:
    """Coordinate-wise trimmed mean of ``G`` [m, P] -> Tensor[P] (Yin et al. 2018, Def. 2).

    Requires ``m > 2 c_max`` (:class:`ConfigError`). ``chunk_size``/``method`` select the
    sorting kernel's block size and form
    (:func:`~tesseract_fl.aggregators.kernels.sorting.sorted_column_chunks`); every form gives
    the same values up to float rounding. Rows with NaN/Inf are excluded and c_max reduced to
    fit the finite rows (:func:`effective_trim`); no finite row: the zero vector.
    """
    return TrimmedMean(c_max, chunk_size=chunk_size, method=method).aggregate(G).update


def trimmed_mean_weights(G: Tensor, c_max: int, sample: int | None = WEIGHT_SAMPLE) -> Tensor:
    """Each row's share of the kept values: kept fraction / (m - 2 c_max), summing to 1.

    Computed on at most ``sample`` coordinates (fixed seed; all when P <= sample or None).
    """
    m = G.shape[0]
    c = check_trim(m, c_max)
    order = rank_rows(G, sample)
    pw = np.zeros(m)
    pw[c : m - c] = 1.0
    return torch.from_numpy(position_weights(order, pw, m)).to(dtype=G.dtype, device=G.device)


class TrimmedMean(CoordinateWise):
    """Coordinate-wise trimmed mean aggregator (Yin et al. 2018); stateless.

    ``c_max``: values dropped at each end per coordinate (needs ``m > 2 c_max`` each round).
    ``weight_sample``: coordinates (fixed seed) used for the reported weights, ``None`` = all;
    ``weights[i]`` = fraction of them where row i's value was kept, divided by ``m - 2 c_max``
    (sums to 1). ``chunk_size``/``method``: the sorting kernel's (results agree).
    """

    name = "trimmed_mean"

    def effective_c(self, fin: FiniteRows) -> int:
        """:func:`effective_trim`."""
        return effective_trim(fin, self.c_max)

    def rule(self, rows: Rows) -> RuleResult:
        """The trimmed mean of the finite rows and the kept-share weights."""
        assert rows.c is not None
        update = trimmed_mean_kernel(rows.G, rows.c, chunk_size=self.chunk_size, method=self.method)
        weights = trimmed_mean_weights(rows.G, rows.c, self.weight_sample)
        return RuleResult(update=update, weights=weights)

    def __repr__(self) -> str:
        return f"TrimmedMean(c_max={self.c_max})"
