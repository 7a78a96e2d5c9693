"""Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML, Def. 1; docs/design.md, "Median").

NumPy semantics: for an even number of clients the median of a coordinate is the mean of the two
middle values (``torch.median`` would return the lower one). Computed with the pruned sorting
network of :func:`~tesseract_fl.aggregators.trimmed_mean.sorted_column_chunks`, which only
orders what decides the middle value(s).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.base import (
    Aggregate,
    AggregationContext,
    Stateless,
    as_count,
    check_client_ids,
    check_layout,
    split_finite,
)
from tesseract_fl.aggregators.trimmed_mean import (
    WEIGHT_SAMPLE,
    map_column_ranges,
    position_weights,
    rank_rows,
    sorted_column_chunks,
)

__all__ = ["Median", "median", "median_weights"]


def median(G: Tensor, *, chunk_size: int | None = None, method: str = "auto") -> Tensor:
    """Coordinate-wise median of ``G`` [m, P] -> Tensor[P] (Yin et al. 2018), NumPy semantics.

    Odd m: the middle value; even m: the mean of the two middle values, computed as
    ``lo * 0.5 + hi * 0.5`` (the same float as NumPy's ``(lo + hi) / 2`` except that it cannot
    overflow for huge values).
    ``chunk_size``/``method`` as in :func:`~.trimmed_mean.sorted_column_chunks`.
    Rows with NaN/Inf are excluded (the median of the finite rows); none finite: zero vector.
    """
    fin = split_finite(G)
    if fin.m_finite == 0:
        return fin.zero_update().update
    return _median(fin.G, chunk_size=chunk_size, method=method)


def _median(G: Tensor, *, chunk_size: int | None, method: str) -> Tensor:
    """The median kernel on a finite matrix (no validation)."""
    m, _ = G.shape
    lo_pos, hi_pos = (m - 1) // 2, m // 2
    groups = [0 if k < lo_pos else (1 if k <= hi_pos else 2) for k in range(m)]

    def block(X: Tensor) -> Tensor:
        out = torch.empty(X.shape[1], dtype=X.dtype, device=X.device)
        for start, stop, S in sorted_column_chunks(
            X, groups=groups, chunk_size=chunk_size, method=method
        ):
            if lo_pos == hi_pos:
                val = S[lo_pos]
            else:
                val = S[lo_pos] * 0.5 + S[hi_pos] * 0.5
            out[start:stop] = torch.as_tensor(val).to(device=X.device, dtype=X.dtype)
        return out

    return map_column_ranges(block, G)


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


class Median(Stateless):
    """Coordinate-wise median aggregator (Yin et al. 2018); stateless, no parameters besides
    ``weight_sample`` (coordinates used for the reported weights, ``None`` = all).

    ``weights[i]`` = fraction of (sampled) coordinates where row i is (one of) the middle value(s),
    each of two middles counting 1/2 (sums to 1).
    """

    name = "median"

    def __init__(self, weight_sample: int | None = WEIGHT_SAMPLE) -> None:
        self.weight_sample = (
            None if weight_sample is None else as_count(weight_sample, "weight_sample", minimum=1)
        )

    def aggregate(
        self,
        G: Tensor,
        client_ids: Tensor | Sequence[int] | None = None,
        ctx: AggregationContext | None = None,
    ) -> Aggregate:
        """Return the coordinate-wise median of ``G`` and the middle-share weights; rows with
        NaN/Inf are excluded (``record["excluded"]``, weight 0)."""
        check_layout(G)
        check_client_ids(client_ids, G.shape[0])
        fin = split_finite(G)
        if fin.m_finite == 0:
            return fin.zero_update()
        update = _median(fin.G, chunk_size=None, method="auto")
        weights = fin.scatter(median_weights(fin.G, self.weight_sample))
        return Aggregate(update=update, weights=weights, record=fin.record())

    def __repr__(self) -> str:
        return "Median()"
