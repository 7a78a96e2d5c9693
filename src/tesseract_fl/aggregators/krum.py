"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS; docs/design.md, "Krum and Multi-Krum").

``score_i`` = sum of the squared L2 distances from g_i to its ``m - c_max - 2`` nearest other
gradients; Krum returns the gradient with the smallest score, Multi-Krum(k) the mean of the k
best. All pairwise distances come from one Gram matrix ``G @ G.T`` (one BLAS call;
docs/design.md, "Performance"), combined in float64:
``d_ij = n_i + n_j - 2 g_ij`` clamped at 0.
"""

from __future__ import annotations

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
    check_matrix,
    split_finite,
)
from tesseract_fl.aggregators.faba import _fits, _max_abs, downscale_exponent
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.errors import ConfigError, UpdateError

__all__ = ["Krum", "krum", "krum_scores", "krum_select", "pairwise_sq_distances"]


def pairwise_sq_distances(G: Tensor) -> Tensor:
    """Squared L2 distances between the rows of ``G`` [m, P] -> float64 Tensor[m, m] (CPU).

    Via the Gram matrix: ``d_ij = n_i + n_j - 2 g_ij`` with ``g = G @ G.T`` computed by BLAS in
    G's dtype and the combination done in float64, clamped at 0; the diagonal is exactly 0 and the
    matrix exactly symmetric. The absolute error is about ``eps(dtype) * (n_i + n_j)``, so the
    distance between two nearly identical rows of large norm is resolved only to that level.
    """
    check_matrix(G)
    D, e = _scaled_sq_distances(G, factor=4.0)
    if e:
        raise UpdateError("gradient entries are too large: their Gram matrix overflows float64")
    return D


def _pairwise_sq_distances(G: Tensor) -> Tensor:
    """:func:`pairwise_sq_distances` without validating ``G`` (callers have checked it), in a
    power-of-two scaled space when the distances would overflow (:func:`_scaled_sq_distances`):
    the same comparisons, so Krum and Bulyan select the same rows."""
    return _scaled_sq_distances(G, factor=4.0 * max(G.shape[0], 1))[0]


def _scaled_sq_distances(G: Tensor, factor: float) -> tuple[Tensor, int]:
    """``(D, e)``: the squared distances of the rows of ``G * 2**-e`` (float64, CPU), e >= 0.

    Finite rows of huge magnitude (e.g. 1e30) overflow the float32 Gram matrix; that is seen on
    the small [m, m] result, and only then is it recomputed in float64 (exact enough, no inf).
    Rows too large even for float64 are scaled by the power of two of
    :func:`~.faba.downscale_exponent` first, so that ``factor * max_i |g_i|^2`` stays finite
    (``D_ij <= 4 max_i |g_i|^2``: ``factor = 4`` keeps D finite, ``4 m`` also Krum's scores,
    sums of fewer than m distances); ``e = 0`` otherwise. Half precision inputs are multiplied
    in float32.
    """
    X = G.detach()
    if X.dtype.itemsize < 4:
        X = X.float()
    e = 0
    gram = (X @ X.T).to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(gram).all()) and X.dtype != torch.float64:
        X64 = X.double()
        gram = (X64 @ X64.T).cpu()
    if not (bool(torch.isfinite(gram).all()) and _fits(gram, factor)):
        X64 = X.double()
        e = downscale_exponent(_max_abs(X64), factor * X.shape[1])
        X64 = X64 * 2.0**-e
        gram = (X64 @ X64.T).cpu()
    gram = (gram + gram.T) * 0.5
    norms = gram.diagonal().clone()
    D = norms[:, None] + norms[None, :] - 2.0 * gram
    D.clamp_(min=0.0)
    D.fill_diagonal_(0.0)
    return D, e


def _check_neighbours(m: int, c_max: Any) -> int:
    c = as_count(c_max, "c_max")
    if m - c - 2 < 1:
        raise ConfigError(
            f"Krum needs m - c_max - 2 >= 1 (at least one neighbour), got m={m} and c_max={c} "
            f"(use c_max <= {m - 3} or more clients)"
        )
    return c


def _scores_np(D: np.ndarray, n_neighbours: int) -> np.ndarray:
    """Sum of each row's ``n_neighbours`` smallest off-diagonal entries of ``D`` (float64).

    NumPy on purpose: these [m, m] matrices are tiny, and tiny torch ops were measured to stall
    for milliseconds each in torch's thread pool on a loaded 2-core machine.
    """
    m = D.shape[0]
    k = min(n_neighbours, m - 1)
    if k <= 0:
        return np.zeros(m, dtype=np.float64)
    off = np.array(D, dtype=np.float64, copy=True)
    np.fill_diagonal(off, np.inf)
    return np.partition(off, k - 1, axis=1)[:, :k].sum(axis=1)


def _scores(D: Tensor, n_neighbours: int) -> Tensor:
    """Tensor wrapper of :func:`_scores_np` (float64, CPU)."""
    return torch.from_numpy(_scores_np(D.detach().cpu().double().numpy(), n_neighbours))


def krum_scores(D: Tensor, c_max: int) -> Tensor:
    """Krum scores from a squared-distance matrix ``D`` [m, m] -> float64 Tensor[m].

    ``score_i = sum of the m - c_max - 2 smallest d_ij, j != i`` (Blanchard et al. 2017, Sec. 4).
    Requires ``m - c_max - 2 >= 1`` (:class:`ConfigError`).
    """
    D = torch.as_tensor(D, dtype=torch.float64)
    if D.dim() != 2 or D.shape[0] != D.shape[1]:
        raise UpdateError(f"distance matrix must be square, got shape {tuple(D.shape)}")
    m = D.shape[0]
    c = _check_neighbours(m, c_max)
    return _scores(D, m - c - 2)


def krum_select(scores: Tensor, k: int = 1) -> Tensor:
    """Indices of the ``k`` smallest scores, ascending by (score, index): ties go to lower index."""
    s = torch.as_tensor(scores, dtype=torch.float64).cpu().numpy()
    return torch.from_numpy(np.argsort(s, kind="stable")[:k].copy())


def _check_k(m: int, k: Any) -> int:
    kk = as_count(k, "k", minimum=1)
    if kk > m:
        raise ConfigError(f"Multi-Krum k must be between 1 and m={m}, got k={kk}")
    return kk


def effective_krum_c(fin: FiniteRows, c_max: Any) -> int:
    """c_max validated against the rows received, then reduced to ``max(0, m_finite - 3)`` when
    rows were excluded (hostile-row policy). With fewer than 3 finite rows the neighbour count
    is ``max(1, m_finite - 1)`` (one row: it is returned)."""
    c = _check_neighbours(fin.m, c_max)
    return max(0, min(c, fin.m_finite - 3))


def _krum(G: Tensor, c_max: int, k: int) -> tuple[Tensor, Tensor, Tensor, FiniteRows, int]:
    """(update, selected rows, scores, finite split, effective c) for Krum / Multi-Krum.

    Selected rows and scores index the finite rows ``fin.G``; excluded rows are never chosen.
    ``k`` is capped at the number of finite rows.
    """
    fin = split_finite(G)
    c = effective_krum_c(fin, c_max)
    kk = _check_k(fin.m, k)
    mf = fin.m_finite
    if mf == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return fin.zero_update().update, empty, torch.zeros(0, dtype=torch.float64), fin, c
    kk = min(kk, mf)
    X = fin.G
    scores = _scores(_pairwise_sq_distances(X), max(1, mf - c - 2))
    sel = krum_select(scores, kk)
    if kk == 1:
        update = X[int(sel[0])].detach().clone()
    else:
        w = torch.zeros(mf, dtype=X.dtype, device=X.device)
        w[sel.to(X.device)] = 1.0 / kk
        update = weighted_mean(w, X.detach())
    return update, sel, scores, fin, c


def krum(G: Tensor, c_max: int, k: int = 1) -> Tensor:
    """Krum (``k = 1``) or Multi-Krum (``k > 1``) of ``G`` [m, P] -> Tensor[P].

    Krum returns the row with the smallest score (a copy of an input row); Multi-Krum the mean of
    the k rows with the smallest scores (Blanchard et al. 2017; El Mhamdi et al. 2018 for the
    name). Ties are broken by the lowest row index. Requires ``m - c_max - 2 >= 1`` and
    ``1 <= k <= m`` (:class:`ConfigError`). Rows with NaN/Inf are excluded, c_max and k reduced
    to fit the finite rows (:func:`effective_krum_c`); no finite row: the zero vector.
    """
    return _krum(G, c_max, k)[0]


class Krum(Stateless):
    """Krum / Multi-Krum aggregator (Blanchard et al. 2017); stateless.

    ``c_max``: clients assumed malicious; ``k``: rows averaged (1 = Krum). ``weights`` are
    one-hot on the selected row (``1/k`` on each of the k selected for Multi-Krum); ``record``
    holds the float64 ``scores`` and the ``selected`` row indices. ``ctx.c_max`` is ignored.
    Rows so large that the scores would overflow float64 (e.g. 1e200) are scored on the matrix
    scaled by a power of two (the same selection; the recorded scores are then the scaled
    ones).
    """

    name = "krum"

    def __init__(self, c_max: int, k: int = 1) -> None:
        self.c_max = as_count(c_max, "c_max")
        self.k = as_count(k, "k", minimum=1)

    def aggregate(
        self,
        G: Tensor,
        client_ids: Tensor | Sequence[int] | None = None,
        ctx: AggregationContext | None = None,
    ) -> Aggregate:
        """Return the Krum / Multi-Krum update with its selection weights.

        ``record``: ``scores`` (per row, +inf for excluded rows), ``selected`` (row indices of G),
        ``excluded`` and ``c_max_effective`` (hostile-row policy).
        """
        check_layout(G)
        m = G.shape[0]
        check_client_ids(client_ids, m)
        update, sel, scores, fin, c = _krum(G, self.c_max, self.k)
        weights = torch.zeros(fin.m_finite, dtype=G.dtype, device=G.device)
        if sel.numel():
            weights[sel.to(G.device)] = 1.0 / sel.numel()
        weights = fin.scatter(weights)
        if fin.kept is not None:
            full = torch.full((m,), float("inf"), dtype=torch.float64)
            full[fin.kept] = scores
            scores, sel = full, fin.kept[sel]
        record = {"scores": scores, "selected": sel, **fin.record(c)}
        return Aggregate(update=update, weights=weights, record=record)

    def __repr__(self) -> str:
        return f"Krum(c_max={self.c_max}, k={self.k})"
