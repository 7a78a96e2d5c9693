"""Coordinate-wise row weights of the sorting rules, estimated on a fixed sample of columns.

A coordinate-wise rule has no single weight per client; its weight is the share of coordinates
in which the client's value is used (Table 3 and Figure 4 of the paper compare defenses by it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.kernels.sorting import numpy_view
from tesseract_fl.validation import as_count

__all__ = [
    "WEIGHT_SAMPLE",
    "check_weight_sample",
    "position_weights",
    "rank_rows",
    "sample_columns",
    "sampled_columns_t",
]


#: At most this many coordinates (fixed seed) are used to compute coordinate-wise weights: the
#: weights are diagnostics (Table 3, Fig. 4), a kept fraction near 0.6 is then estimated to
#: about +-0.008 (one standard error), and the sample costs a fraction of the rule itself.
WEIGHT_SAMPLE = 4096


_WEIGHT_SEED = 0


def sample_columns(P: int, sample: int | None) -> Tensor | None:
    """Sorted distinct column indices (fixed seed) for weight estimation; ``None`` = all columns.

    With ``sample`` None or ``P <= sample`` all columns are used (exact weights); otherwise
    ``sample`` indices are drawn with replacement from a seeded generator and de-duplicated
    (about ``sample`` distinct columns, O(sample) work even for P = 11e6).
    """
    if sample is None or P <= sample:
        return None
    rng = np.random.default_rng(_WEIGHT_SEED)
    idx = np.unique(rng.integers(0, P, size=int(sample)))
    return torch.from_numpy(idx)


def rank_rows(G: Tensor, sample: int | None) -> np.ndarray:
    """``order[k, j]``: the row holding the k-th smallest value of (sampled) column j.

    Uses ``np.argsort`` on the transposed sample (ties: NumPy's default order, deterministic).
    """
    return np.argsort(sampled_columns_t(G, None, sample), axis=1).T


def sampled_columns_t(G: Tensor, rows: Tensor | None, sample: int | None) -> np.ndarray:
    """``G[rows][:, cols].T`` as a contiguous NumPy array (cols from :func:`sample_columns`).

    Gathered with NumPy fancy indexing on CPU (``torch.index_select`` over columns is far
    slower there).
    """
    cols = sample_columns(G.shape[1], sample)
    X = G.detach()
    if X.device.type != "cpu":
        if rows is not None:
            X = X.index_select(0, rows.to(X.device))
        if cols is not None:
            X = X.index_select(1, cols.to(X.device))
        return np.ascontiguousarray(numpy_view(X.cpu()).T)
    A = numpy_view(X)
    r = slice(None) if rows is None else rows.cpu().numpy()
    c = slice(None) if cols is None else cols.numpy()
    if rows is not None and cols is not None:
        sub = A[np.ix_(np.asarray(r), np.asarray(c))]
    else:
        sub = A[r][:, c] if rows is not None else A[:, c]
    return np.ascontiguousarray(sub.T)


def position_weights(order: np.ndarray, positions_weight: np.ndarray, m: int) -> np.ndarray:
    """Row weights: sum over sampled columns of ``positions_weight[k]`` for the row at rank k.

    Normalized to sum to 1 (all zero when there are no sampled columns).
    """
    w = np.zeros(m, dtype=np.float64)
    for k in np.nonzero(positions_weight)[0]:
        w += positions_weight[k] * np.bincount(order[k], minlength=m)
    total = w.sum()
    return w / total if total > 0 else w


def check_weight_sample(value: int | None) -> int | None:
    """The ``weight_sample`` parameter of the coordinate-wise rules: ``None`` (every column) or
    a count >= 1."""
    return None if value is None else as_count(value, "weight_sample", minimum=1)
