"""Bulyan's selection phase, Krum applied repeatedly to a shrinking set (El Mhamdi et al. 2018),
from one row-wise sort of the distance matrix instead of a fresh Krum per pick.
"""

from __future__ import annotations

import numpy as np

from tesseract_fl.aggregators.kernels.gram import nearest_sums_np

__all__ = ["select_direct", "select_incremental"]


def _direct_pick(Dn: np.ndarray, remaining: list[int], c: int) -> int:
    """Position in ``remaining`` of the row with the smallest Krum score among ``remaining``
    (scores recomputed on the sub-matrix; the first minimum, i.e. the lowest index, on ties)."""
    idx = np.asarray(remaining)
    scores = nearest_sums_np(Dn[np.ix_(idx, idx)], max(1, len(remaining) - c - 2))
    return int(np.argmin(scores))


def select_direct(Dn: np.ndarray, c: int, theta: int) -> list[int]:
    """Bulyan's selection by definition: Krum scores recomputed for every pick (O(m^3))."""
    remaining = list(range(Dn.shape[0]))
    chosen: list[int] = []
    for _ in range(theta):
        chosen.append(remaining.pop(_direct_pick(Dn, remaining, c)))
    return chosen


#: Rows of D argsorted per block in :func:`select_incremental` (bounds its temporaries).
_SORT_BLOCK_ROWS = 512


_U = 2.0**-53  # unit roundoff of float64


def select_incremental(Dn: np.ndarray, c: int, theta: int) -> list[int]:
    """:func:`select_direct`'s picks from one row-wise sort of the finite matrix ``Dn``.

    While ``k = n - c - 2 >= 1`` every pick lowers k by one, so each remaining row's set of its
    k nearest remaining rows loses exactly one member: the removed row if it was in the set,
    else the set's farthest member. Each row keeps its set as a boundary position ``p`` in its
    sorted row (ties ordered by column, as a stable sort gives) and a running sum ``s``. The
    running sums are rounded differently from a fresh sum, so they only shortlist: every row
    whose score could be the minimum within a rigorous bound on both roundings is rescored
    exactly as :func:`_direct_pick` scores it (NumPy's partition and sum of that row, which do
    not depend on the other rows), and the smallest exact score wins, ties to the lowest index.
    Usually one row is shortlisted; rows with identical distances (duplicates) tie and are all
    rescored. When ``k`` would drop below 1 (``n < c + 4``, a few rows) picks are direct.
    """
    m = Dn.shape[0]
    order = np.empty((m, m), dtype=np.int32 if m < 2**31 else np.int64)
    for b0 in range(0, m, _SORT_BLOCK_ROWS):
        b1 = min(m, b0 + _SORT_BLOCK_ROWS)
        blk = Dn[b0:b1].copy()
        blk[np.arange(b1 - b0), np.arange(b0, b1)] = np.inf  # self last (D is finite)
        order[b0:b1] = np.argsort(blk, axis=1, kind="stable")
    alive = np.ones(m, dtype=bool)
    remaining = list(range(m))
    chosen: list[int] = []
    n = m
    k = n - c - 2
    if k < 1:
        return select_direct(Dn, c, theta)
    s = nearest_sums_np(Dn, k)  # the first pick's exact scores
    err = s * (1.01 * k * _U)  # |s - exact| (the sums' rounding)
    p = np.full(m, k - 1, dtype=np.int64)  # boundary: position of the k-th nearest
    first = True
    for _ in range(theta):
        if k < 1:  # too few rows for the running sums: score the remaining rows directly
            r = remaining.pop(_direct_pick(Dn, remaining, c))
            chosen.append(r)
            n -= 1
            continue
        rows = np.flatnonzero(alive)
        if first:
            r = int(rows[np.argmin(s[rows])])  # exact scores: the first minimum
            first = False
        else:
            sr = s[rows]
            tol = err[rows] + (np.abs(sr) + err[rows]) * (
                1.01 * k * _U
            )  # + the fresh sum's rounding
            cand = rows[sr - tol <= float(np.min(sr + tol))]
            if cand.size == 1:
                r = int(cand[0])
            else:
                sub = Dn[np.ix_(cand, rows)]
                sub[np.arange(cand.size), np.searchsorted(rows, cand)] = np.inf
                exact = np.partition(sub, k - 1, axis=1)[:, :k].sum(axis=1)
                r = int(cand[np.argmin(exact)])
        chosen.append(r)
        remaining.remove(r)
        alive[r] = False
        n -= 1
        if len(chosen) == theta:
            break
        k_next = n - c - 2
        if k_next < 1:
            k = k_next
            continue
        rows = np.flatnonzero(alive)
        d = Dn[rows, r]
        pb = p[rows]
        bcol = order[rows, pb]
        bval = Dn[rows, bcol]
        in_set = (d < bval) | ((d == bval) & (r <= bcol))
        new_s = s[rows] - np.where(in_set, d, bval)
        s[rows] = new_s
        err[rows] += np.abs(new_s) * (1.01 * _U)
        move = rows[~in_set | (bcol == r)]
        while move.size:  # step each moved boundary back to the previous remaining row
            p[move] -= 1
            move = move[~alive[order[move, p[move]]]]
        k = k_next
    return chosen
