"""FABA: Fast Aggregation against Byzantine Attacks (Xia et al., IJCAI 2019; docs/design.md,
"FABA").

``c_max`` times, remove the gradient farthest (L2) from the mean of the gradients that remain
(the mean includes the candidate itself); the update is the mean of the ``m - c_max`` survivors.

Fast form (docs/design.md, "Performance"): everything after one Gram matrix ``K = G G^T`` is
O(m^2). With
``S`` the remaining rows, ``n = |S|``, ``s_i = sum_{j in S} K_ij`` and ``T = sum_{j,l in S} K_jl``,
the squared distance of row ``i`` to the mean of ``S`` is ``K_ii - 2 s_i / n + T / n^2``; removing
row ``r`` updates ``s <- s - K[:, r]`` and ``T <- T - 2 s_r + K_rr`` (with the old ``s_r``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import (
    Defense,
    Diagnostics,
    FiniteRows,
    Rows,
    RuleResult,
    check_layout,
    check_matrix,
    split_finite,
)
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.aggregators.kernels.gram import fits, gram64_scaled, gram_blocks
from tesseract_fl.errors import ConfigError

__all__ = ["FABA", "faba", "faba_removed", "faba_select"]


def _check_c_max(c_max: Any, m: int | None = None) -> int:
    try:
        c = int(c_max)
        ok = c == c_max and not isinstance(c_max, bool)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or c < 0:
        raise ConfigError(f"c_max must be a non-negative integer, got {c_max!r}")
    if m is not None and 2 * c >= m:
        raise ConfigError(
            f"FABA needs c_max < m/2 (Xia et al. 2019), got c_max={c} with m={m} clients"
        )
    return c


def _removal_order(K: Tensor, c: int) -> list[int]:
    """Rows removed by FABA, in removal order, from the float64 Gram matrix ``K`` (O(c m^2)).

    ``s`` and ``T`` are re-summed over the remaining rows at every step rather than updated by
    subtraction: after a huge row (e.g. 1e30, K entries ~1e60) is removed, subtracting its
    contribution would leave a rounding residue (~1e44) that swamps the honest rows' distances.
    With m <= a few hundred this costs microseconds.
    """
    m = K.shape[0]
    diag = K.diagonal().clone()
    alive = torch.ones(m, dtype=torch.bool, device=K.device)
    neg_inf = torch.tensor(float("-inf"), dtype=K.dtype, device=K.device)
    removed: list[int] = []
    n = m
    for _ in range(c):
        s = K[:, alive].sum(dim=1)  # s_i = sum_{j in S} K_ij
        T = float(s[alive].sum())  # sum_{j,l in S} K_jl
        d = diag - (2.0 / n) * s + T / (n * n)
        r = int(torch.where(alive, d, neg_inf).argmax())  # first index on ties
        removed.append(r)
        alive[r] = False
        n -= 1
    return removed


def _faba_gram(X: Tensor) -> Tensor:
    """The Gram matrix FABA's distances are computed from: :func:`gram64`, or when its entries
    (or the sums ``T`` of up to ``m^2`` of them) would overflow float64, that of the matrix
    scaled by a power of two (:func:`gram64_scaled`), which removes the same rows."""
    m = X.shape[0]
    return gram64_scaled(X, factor=4.0 * m * m)[0]


def faba_removed(G: Tensor, c_max: int) -> list[int]:
    """Row indices FABA removes from ``G`` [m, P], in the order it removes them.

    Ties (equal distances) go to the lowest row index. Raises :class:`UpdateError` for a bad
    matrix and :class:`ConfigError` unless ``0 <= c_max < m/2``. Finite rows too large for
    float64 squared distances (e.g. 1e200) are handled in a power-of-two scaled space.
    """
    check_layout(G)
    c = _check_c_max(c_max, G.shape[0])
    if c == 0:
        check_matrix(G)
        return []
    return _removal_order(_faba_gram(G), c)  # rejects NaN/Inf


def faba_select(G: Tensor, c_max: int) -> Tensor:
    """Which rows of ``G`` [m, P] FABA keeps: bool Tensor[m] (on G's device), ``m - c_max`` True."""
    removed = faba_removed(G, c_max)
    kept = torch.ones(G.shape[0], dtype=torch.bool, device=G.device)
    if removed:
        kept[torch.tensor(removed, device=G.device)] = False
    return kept


def faba(G: Tensor, c_max: int) -> Tensor:
    """FABA (Xia et al. 2019) on ``G`` [m, P] -> Tensor[P]: the mean of the rows it keeps.

    ``c_max`` times the row farthest from the mean of the remaining rows is removed (see the
    module docstring for the O(m^2) Gram-matrix form). Requires ``0 <= c_max < m/2``
    (:class:`ConfigError`); ``c_max = 0`` is the plain mean. Rows with NaN/Inf are excluded
    first (hostile-input policy); none finite: the zero vector.
    """
    return FABA(c_max).aggregate(G).update


class FABA(Defense):
    """The FABA aggregator (Xia et al. 2019); stateless.

    ``c_max`` is the number of rows removed each round (``0 <= c_max < m/2`` for the round's
    ``m``, else :class:`ConfigError`; reduced to ``(m_finite - 1) // 2`` when rows were
    excluded). ``weights`` are ``1/(m - c_max)`` on kept rows and 0 on removed ones;
    ``diagnostics.extra`` holds ``kept`` (bool Tensor[m]), ``removed`` (row indices in removal
    order) and ``removed_clients`` (their client ids).
    """

    name = "faba"
    runs_without_finite_rows = True  # kept/removed are reported even then

    def __init__(self, c_max: int) -> None:
        self.c_max = _check_c_max(c_max)

    def finite_rows(self, G: Tensor) -> FiniteRows:
        """The hostile-input split; with rows to remove, the Gram matrix's diagonal (squared
        norms) is the finiteness probe and the matrix is kept for the rule."""
        if _check_c_max(self.c_max, G.shape[0]) == 0:
            return split_finite(G)
        K = gram_blocks(G)
        return dataclasses.replace(split_finite(G, row_probe=K.diagonal()), cache=K)

    def effective_c(self, fin: FiniteRows) -> int:
        """c_max reduced to ``(m_finite - 1) // 2`` when rows were excluded."""
        return min(self.c_max, (fin.m_finite - 1) // 2)

    def rule(self, rows: Rows) -> RuleResult:
        """Remove the farthest row from the running mean c times; average the rest."""
        fin, X, mf = rows.finite, rows.G, rows.G.shape[0]
        if mf == 0:
            extra: dict[str, Any] = {
                "kept": torch.zeros(fin.m, dtype=torch.bool),
                "removed": [],
                "removed_clients": [],
            }
            return RuleResult(
                update=X.new_zeros(X.shape[1]),
                weights=X.new_zeros(0),
                diagnostics=Diagnostics(extra=extra, c_max_effective=0),
            )
        c = rows.c
        assert c is not None
        K = fin.cache
        if c > 0 and (
            K is None
            or fin.kept is not None
            or not bool(torch.isfinite(K).all())
            or not fits(K, 4.0 * mf**2)
        ):
            # rows excluded, or huge rows overflowed float32 (float64 fallback) or would overflow
            # the float64 distances (power-of-two scaled Gram matrix)
            K = _faba_gram(X)
        removed = _removal_order(K, c) if c > 0 and K is not None else []
        w = torch.full((mf,), 1.0 / (mf - c), dtype=X.dtype, device=X.device)
        if removed:
            w[torch.tensor(removed, device=X.device)] = 0.0
        removed_rows = [int(r) for r in fin.rows_of_input(torch.tensor(removed, dtype=torch.long))]
        kept = fin.scatter(w).detach().cpu() > 0
        ids = rows.all_ids.tolist()
        extra = {
            "kept": kept,
            "removed": removed_rows,
            "removed_clients": [ids[r] for r in removed_rows],
        }
        return RuleResult(
            update=weighted_mean(w, X), weights=w, diagnostics=Diagnostics(extra=extra)
        )

    def __repr__(self) -> str:
        return f"FABA(c_max={self.c_max})"
