"""Bulyan (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML; docs/design.md, "Bulyan").

1. Selection: ``theta = m - 2 c_max`` gradients are chosen by applying Krum (Blanchard et al.
   2017) to the remaining set and removing the winner, theta times. The set shrinks, so Krum's
   neighbour count is ``max(1, n - c_max - 2)`` for the current size n (as Flower does). One
   pairwise distance matrix is computed and sorted row by row once; each pick then updates the
   remaining rows' scores for the removed row instead of recomputing them (the same picks,
   see :func:`bulyan_select`).
2. Aggregation: per coordinate, the ``beta = theta - 2 c_max`` selected values closest to the
   coordinate median of the selected values are averaged.

Requires ``m > 4 c_max``; the paper's guarantee needs ``m >= 4 c_max + 3`` and a warning says so
otherwise (the TESSERACT paper's m=10, c=2 runs are in that regime: theta = 6, beta = 2).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.base import (
    Aggregate,
    AggregationContext,
    FiniteRows,
    Stateless,
    as_count,
    check_client_ids,
    check_layout,
    split_finite,
)
from tesseract_fl.aggregators.krum import _pairwise_sq_distances, _scores_np
from tesseract_fl.aggregators.trimmed_mean import (
    WEIGHT_SAMPLE,
    sampled_columns_t,
    sorted_column_chunks,
)
from tesseract_fl.errors import ConfigError

__all__ = ["Bulyan", "bulyan", "bulyan_select"]


def _check_bulyan(m: int, c_max: Any, warn: bool) -> int:
    c = as_count(c_max, "c_max")
    if m <= 4 * c:
        raise ConfigError(
            f"Bulyan needs m > 4*c_max clients, got m={m} and c_max={c} "
            f"(use c_max <= {(m - 1) // 4})"
        )
    if warn and m < 4 * c + 3:
        warnings.warn(
            f"Bulyan with m={m} < 4*c_max+3={4 * c + 3}: its robustness guarantee does not hold "
            f"(theta={m - 2 * c}, beta={m - 4 * c})",
            RuntimeWarning,
            stacklevel=3,
        )
    return c


def bulyan_select(D: Tensor, c_max: int) -> Tensor:
    """Bulyan's selection phase on a squared-distance matrix ``D`` [m, m] -> Tensor[theta].

    Repeated Krum on the remaining rows, neighbour count ``max(1, n - c_max - 2)`` (capped at
    ``n - 1``), ties to the lowest row index; returns the winners in selection order.

    Each pick is exactly the one of recomputing every remaining row's Krum score from scratch
    (:func:`_select_direct`, O(m^2) per pick), but found in O(m) per pick on average
    (:func:`_select_incremental`) when D is finite.
    """
    Dn = np.ascontiguousarray(torch.as_tensor(D, dtype=torch.float64).cpu().numpy())
    m = Dn.shape[0]
    c = as_count(c_max, "c_max")
    theta = m - 2 * c
    if theta <= 0:
        return torch.zeros(0, dtype=torch.long)
    if bool(np.isfinite(Dn).all()):
        chosen = _select_incremental(Dn, c, theta)
    else:
        chosen = _select_direct(Dn, c, theta)
    return torch.tensor(chosen, dtype=torch.long)


def _direct_pick(Dn: np.ndarray, remaining: list[int], c: int) -> int:
    """Position in ``remaining`` of the row with the smallest Krum score among ``remaining``
    (scores recomputed on the sub-matrix; the first minimum, i.e. the lowest index, on ties)."""
    idx = np.asarray(remaining)
    scores = _scores_np(Dn[np.ix_(idx, idx)], max(1, len(remaining) - c - 2))
    return int(np.argmin(scores))


def _select_direct(Dn: np.ndarray, c: int, theta: int) -> list[int]:
    """Bulyan's selection by definition: Krum scores recomputed for every pick (O(m^3))."""
    remaining = list(range(Dn.shape[0]))
    chosen: list[int] = []
    for _ in range(theta):
        chosen.append(remaining.pop(_direct_pick(Dn, remaining, c)))
    return chosen


#: Rows of D argsorted per block in :func:`_select_incremental` (bounds its temporaries).
_SORT_BLOCK_ROWS = 512
_U = 2.0**-53  # unit roundoff of float64


def _select_incremental(Dn: np.ndarray, c: int, theta: int) -> list[int]:
    """:func:`_select_direct`'s picks from one row-wise sort of the finite matrix ``Dn``.

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
        return _select_direct(Dn, c, theta)
    s = _scores_np(Dn, k)  # the first pick's exact scores
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


def _window_start(S: list[np.ndarray], med: np.ndarray, theta: int, beta: int) -> np.ndarray:
    """Per column, the first start s of the sorted window ``S[s:s+beta]`` nearest to ``med``.

    The beta values closest to the median form a contiguous window of the sorted values, the one
    whose farthest member is nearest; among equally good windows the lowest s (lower values) wins.
    """
    best_s = np.zeros(med.shape[0], dtype=np.int64)
    best = np.maximum(med - S[0], S[beta - 1] - med)
    for s in range(1, theta - beta + 1):
        cost = np.maximum(med - S[s], S[s + beta - 1] - med)
        better = cost < best
        best_s[better] = s
        np.copyto(best, cost, where=better)
    return best_s


def _window_mean(S: list[np.ndarray], theta: int, beta: int) -> np.ndarray:
    """Mean of the beta sorted values nearest the (NumPy) median, per column."""
    lo_pos, hi_pos = (theta - 1) // 2, theta // 2
    med = S[lo_pos] if lo_pos == hi_pos else S[lo_pos] * 0.5 + S[hi_pos] * 0.5
    if beta == theta:
        acc = S[0] + 0
        for k in range(1, theta):
            acc += S[k]
        return acc / beta
    s0 = _window_start(S, med, theta, beta)
    stack = np.stack(S)
    idx = s0[None, :] + np.arange(beta)[:, None]
    return np.take_along_axis(stack, idx, axis=0).sum(axis=0) / beta


def _bulyan_coordinates(
    G: Tensor,
    sel: Tensor,
    beta: int,
    *,
    chunk_size: int | None,
    method: str,
) -> Tensor:
    theta = sel.numel()
    P = G.shape[1]
    out = torch.empty(P, dtype=G.dtype, device=G.device)
    for start, stop, S in sorted_column_chunks(
        G, rows=sel.tolist(), chunk_size=chunk_size, method=method
    ):
        Sn = [x.cpu().numpy() if isinstance(x, Tensor) else x for x in S]
        with np.errstate(over="ignore"):  # overflowed window sums are redone below
            val = _window_mean(Sn, theta, beta)
        out[start:stop] = torch.from_numpy(val).to(device=G.device, dtype=G.dtype)
    if G.dtype != torch.float64 and not bool(torch.isfinite(out).all()):
        # The window sums of values near the float32 limit overflowed; their means cannot.
        out = _bulyan_coordinates(G.double(), sel, beta, chunk_size=chunk_size, method=method)
        out = out.to(G.dtype)
    elif not bool(torch.isfinite(out).all()):
        # float64 values near its limit: the window means of the values divided by a power of
        # two >= beta (exact; no window sum can overflow), multiplied back and clamped (a mean
        # of finite values is within their range; only rounding could step out)
        big = float(torch.finfo(G.dtype).max)
        k = max(1, math.ceil(math.log2(beta)))
        low = _bulyan_coordinates(G * 2.0**-k, sel, beta, chunk_size=chunk_size, method=method)
        bad = ~torch.isfinite(out)
        out[bad] = (low[bad] * 2.0**k).clamp(-big, big)
    return out


def _bulyan(
    G: Tensor,
    c_max: int,
    *,
    warn: bool = True,
    chunk_size: int | None = None,
    method: str = "auto",
) -> tuple[Tensor, Tensor, FiniteRows, int]:
    """(update, selected rows of ``fin.G``, finite split, effective c).

    Hostile-row policy: c_max is validated against the rows received, then reduced to
    ``(m_finite - 1) // 4`` when rows were excluded (Bulyan needs ``m_finite > 4 c``).
    """
    fin = split_finite(G)
    c = min(_check_bulyan(fin.m, c_max, warn), (fin.m_finite - 1) // 4)
    if fin.m_finite == 0:
        return fin.zero_update().update, torch.zeros(0, dtype=torch.long), fin, 0
    X = fin.G
    sel = bulyan_select(_pairwise_sq_distances(X), c)
    beta = sel.numel() - 2 * c
    return _bulyan_coordinates(X, sel, beta, chunk_size=chunk_size, method=method), sel, fin, c


def bulyan(
    G: Tensor,
    c_max: int,
    *,
    warn: bool = True,
    chunk_size: int | None = None,
    method: str = "auto",
) -> Tensor:
    """Bulyan of ``G`` [m, P] -> Tensor[P] (El Mhamdi et al. 2018, Sec. 4).

    ``theta = m - 2 c_max`` rows are selected by repeated Krum (:func:`bulyan_select`); per
    coordinate the ``beta = theta - 2 c_max`` selected values nearest the coordinate median of the
    selected rows (NumPy semantics for even theta) are averaged; equidistant candidates are
    resolved towards the lower values. Requires ``m > 4 c_max`` (:class:`ConfigError`); warns
    (``RuntimeWarning``, if ``warn``) when ``m < 4 c_max + 3``. With ``c_max = 0`` it is the mean.
    Rows with NaN/Inf are excluded and c_max reduced to fit the finite rows; none finite: zeros.
    """
    return _bulyan(G, c_max, warn=warn, chunk_size=chunk_size, method=method)[0]


def bulyan_weights(G: Tensor, sel: Tensor, beta: int, sample: int | None = WEIGHT_SAMPLE) -> Tensor:
    """Row weights: share of (sampled) coordinates in which a selected row is among the beta
    values nearest the median; normalized to sum 1, 0 for unselected rows.

    Uses at most ``sample`` coordinates (fixed seed; all when ``P <= sample`` or ``None``) and
    the same window rule as :func:`bulyan` (rows ranked by ``np.argsort``).
    """
    m = G.shape[0]
    theta = sel.numel()
    A = sampled_columns_t(G, sel, sample)  # [cols, theta]
    order = np.argsort(A, axis=1)
    srt = np.take_along_axis(A, order, axis=1)
    S = list(np.ascontiguousarray(srt.T))
    lo_pos, hi_pos = (theta - 1) // 2, theta // 2
    med = S[lo_pos] if lo_pos == hi_pos else S[lo_pos] * 0.5 + S[hi_pos] * 0.5
    if beta == theta:
        s0 = np.zeros(A.shape[0], dtype=np.int64)
    else:
        s0 = _window_start(S, med, theta, beta)
    pos = s0[:, None] + np.arange(beta)[None, :]
    rows_in = np.take_along_axis(order, pos, axis=1)  # positions within sel
    counts = np.bincount(rows_in.ravel(), minlength=theta).astype(np.float64)
    w = torch.zeros(m, dtype=torch.float64)
    if counts.sum() > 0:
        w[sel] = torch.from_numpy(counts / counts.sum())
    return w.to(dtype=G.dtype, device=G.device)


class Bulyan(Stateless):
    """Bulyan aggregator (El Mhamdi et al. 2018); stateless apart from a warn-once flag.

    ``c_max``: clients assumed malicious (needs ``m > 4 c_max`` each round; a ``RuntimeWarning``
    is issued once per instance when ``m < 4 c_max + 3``). ``weight_sample``: coordinates (fixed
    seed) used for the weights, ``None`` = all. ``weights``: selected rows share 1 by how often
    they are among the beta values averaged; others 0. ``record["selected"]``: Krum picks in
    order. ``ctx.c_max`` is ignored.
    """

    name = "bulyan"

    def __init__(self, c_max: int, weight_sample: int | None = WEIGHT_SAMPLE) -> None:
        self.c_max = as_count(c_max, "c_max")
        self.weight_sample = (
            None if weight_sample is None else as_count(weight_sample, "weight_sample", minimum=1)
        )
        self._warned = False

    def aggregate(
        self,
        G: Tensor,
        client_ids: Tensor | Sequence[int] | None = None,
        ctx: AggregationContext | None = None,
    ) -> Aggregate:
        """Return the Bulyan update, its weights and the selected rows."""
        check_layout(G)
        m = G.shape[0]
        check_client_ids(client_ids, m)
        warn = not self._warned
        update, sel, fin, c = _bulyan(G, self.c_max, warn=warn)  # validates G
        if warn and m < 4 * self.c_max + 3:
            self._warned = True
        if fin.m_finite == 0:
            return fin.zero_update()
        beta = sel.numel() - 2 * c
        weights = fin.scatter(bulyan_weights(fin.G, sel, beta, self.weight_sample))
        if fin.kept is not None:
            sel = fin.kept[sel]
        return Aggregate(update=update, weights=weights, record={"selected": sel, **fin.record(c)})

    def __repr__(self) -> str:
        return f"Bulyan(c_max={self.c_max})"
