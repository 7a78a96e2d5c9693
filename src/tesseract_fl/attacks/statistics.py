"""Per-coordinate statistics of the benign gradients that several attacks share (ALIE's and
Min-Max / Min-Sum's ``mu`` and ``sigma``; docs/design.md, "ALIE" and "Min-Max and Min-Sum").

:func:`column_std_mean` returns exactly ``torch.std_mean(X, dim=0, correction=c)`` (the same
bits) for float32 and float64 rows on the CPU, in cache-sized column blocks. There torch
reduces each column with Welford's recurrence in float64, one scalar column at a time::

    n_k = k,  delta = x_k - mean_{k-1},  mean_k = mean_{k-1} + delta / n_k,
    M2_k = M2_{k-1} + delta * (x_k - mean_k),  sigma = sqrt(M2_n / (n - c))

Running the same recurrence with one vector operation per step over a block of columns gives
every column the same sequence of float64 roundings, hence the same result, at a fraction of
the time (``python -m benchmarks attacks``). Other devices and dtypes, fewer rows than the
correction needs, and rows that need gradients use torch directly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["column_std_mean"]

# Columns per block: the block's running mean, M2 and two temporaries (float64) stay within
# the L2 caches, and each vector operation is large enough to be split over two threads.
_BLOCK_COLUMNS = 1 << 16
# Below this many columns the recurrence's per-row Python calls cost more than torch's scalar
# loop saves (many rows of a small model), so torch computes it.
_MIN_COLUMNS = 1 << 14


def column_std_mean(
    X: Tensor,
    correction: float = 1,
    *,
    rows: Tensor | None = None,
    block: int = _BLOCK_COLUMNS,
    min_columns: int = _MIN_COLUMNS,
) -> tuple[Tensor, Tensor]:
    """``(sigma, mu)`` per column of the rows ``X`` [n, P] (or of ``X[rows]``, read in place:
    the attackers' statistics of the benign rows without copying them), bit-identical to
    ``torch.std_mean(X[rows], dim=0, correction=correction)``; ``block`` (columns per block)
    and ``min_columns`` (fewer columns: torch computes it) change only the speed."""
    if rows is not None and (
        rows.dim() != 1 or rows.dtype == torch.bool or rows.is_floating_point()
    ):
        raise ValueError("rows must be a 1-D tensor of row indices")
    n_rows = X.shape[0] if rows is None or X.dim() != 2 else int(rows.numel())
    if (
        X.dim() != 2
        or X.shape[1] < min_columns
        or X.device.type != "cpu"
        or X.dtype not in (torch.float32, torch.float64)
        or n_rows - correction <= 0
        or X.requires_grad
    ):
        Xr = X if rows is None else X.index_select(0, rows.to(X.device))
        return torch.std_mean(Xr, dim=0, correction=correction)
    order = range(n_rows) if rows is None else [int(i) for i in rows.tolist()]
    n, P = n_rows, X.shape[1]
    mean_all = torch.zeros(P, dtype=torch.float64)
    m2_all = torch.zeros(P, dtype=torch.float64)
    width = max(1, min(P, int(block)))
    x = torch.empty(width, dtype=torch.float64)
    delta = torch.empty(width, dtype=torch.float64)
    tmp = torch.empty(width, dtype=torch.float64)
    for c0 in range(0, P, width):
        c1 = min(P, c0 + width)
        b = c1 - c0
        mean, m2 = mean_all[c0:c1], m2_all[c0:c1]
        xb, db, tb = x[:b], delta[:b], tmp[:b]
        for k, i in enumerate(order):
            xb.copy_(X[i, c0:c1])
            torch.sub(xb, mean, out=db)
            torch.div(db, float(k + 1), out=tb)
            mean.add_(tb)
            torch.sub(xb, mean, out=tb)
            tb.mul_(db)
            m2.add_(tb)
    # torch's CPU sqrt of float64 tensors is not always correctly rounded, the reduction's own
    # (std::sqrt) is; NumPy's is too, so the last step is NumPy's.
    var = m2_all.numpy()
    np.divide(var, float(n) - float(correction), out=var)
    np.sqrt(var, out=var)
    return m2_all.to(X.dtype), mean_all.to(X.dtype)
