"""FedSGD: the sample-weighted mean of the clients' gradients (docs/design.md, "FedSGD").

``update = sum_i n_i g_i / sum_i n_i`` where ``n_i`` is client i's local sample count; uniform
weights (the plain mean) when no counts are given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import (
    AggregationContext,
    Defense,
    FiniteRows,
    Rows,
    RuleResult,
    finite,
)
from tesseract_fl.errors import UpdateError

__all__ = ["FedSGD", "fedsgd", "sample_weights", "weighted_mean"]


def weighted_mean(w: Tensor, X: Tensor) -> Tensor:
    """``w @ X`` for convex weights ``w`` [m] (>= 0, summing to 1) and rows ``X`` [m, P].

    The product in X's dtype is returned whenever it is finite (so ordinary inputs get exactly
    ``w @ X``). For finite rows a convex combination lies within the rows' range, so a
    non-finite product can only be an overflow of the partial sums (values near the dtype's
    maximum): then it is recomputed in float64 on the rows scaled by 1/4 (exact), scaled back
    and clamped to the dtype's range (only rounding can step out of it). Rows with NaN/Inf keep
    the non-finite product (callers exclude such rows first; docs/design.md, hostile-input
    policy).
    """
    out = w @ X
    if finite(out) or not bool(torch.isfinite(X).all()):
        return out
    big = float(torch.finfo(X.dtype).max)
    w64 = w.to(torch.float64)
    safe = (w64 @ (X.to(torch.float64) * 0.25)) * 4.0
    return safe.clamp(-big, big).to(X.dtype)


def sample_weights(
    n_samples: Tensor | Sequence[float] | None,
    m: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Normalized FedSGD weights ``n_i / sum_j n_j`` (Tensor[m]); uniform ``1/m`` when ``None``.

    Raises :class:`UpdateError` unless ``n_samples`` is 1-D of length ``m``, finite, non-negative
    and has a positive sum. The division is done in float64, then cast to ``dtype``.
    """
    if m < 1:
        raise UpdateError(f"need at least one client to weight, got m={m}")
    if n_samples is None:
        return torch.full((m,), 1.0 / m, dtype=dtype, device=device)
    try:
        n = torch.as_tensor(n_samples, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UpdateError(f"n_samples must be a 1-D sequence of numbers: {exc}") from exc
    if n.dim() != 1 or n.shape[0] != m:
        raise UpdateError(
            f"n_samples must have one entry per row of G (length {m}), got shape {tuple(n.shape)}"
        )
    if not bool(torch.isfinite(n).all()):
        raise UpdateError("n_samples must be finite")
    if bool((n < 0).any()):
        raise UpdateError(f"n_samples must be non-negative, got {n.tolist()[:10]}")
    total = float(n.sum())
    if not total > 0 or not math.isfinite(total):
        raise UpdateError("n_samples must have a positive (finite) sum")
    return (n / total).to(dtype=dtype, device=device)


def fedsgd(G: Tensor, n_samples: Tensor | Sequence[float] | None = None) -> Tensor:
    """Sample-weighted mean of the rows of ``G`` [m, P] -> Tensor[P] (docs/design.md, "FedSGD").

    One matrix-vector product ``w @ G`` in G's dtype (one BLAS pass over G); when values near
    the dtype's maximum make it overflow it is redone so that it cannot (:func:`weighted_mean`).
    Rows with NaN/Inf entries are excluded (hostile-input policy).
    """
    return FedSGD().aggregate(G, ctx=AggregationContext(n_samples=_as_counts(n_samples))).update


def _as_counts(n_samples: Tensor | Sequence[float] | None) -> Tensor | None:
    if n_samples is None or isinstance(n_samples, Tensor):
        return n_samples
    try:
        return torch.as_tensor(n_samples, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UpdateError(f"n_samples must be a 1-D sequence of numbers: {exc}") from exc


def finite_counts(n_samples: Tensor | None, fin: FiniteRows) -> Tensor | None:
    """The finite rows' sample counts (validated against every row received)."""
    if n_samples is None:
        return None
    sample_weights(n_samples, fin.m)  # validates the counts against every received row
    if fin.kept is None:
        return n_samples
    return torch.as_tensor(n_samples, dtype=torch.float64).detach().cpu()[fin.kept]


class FedSGD(Defense):
    """FedSGD: ``update = sum_i n_i g_i / sum_i n_i`` over the finite rows; stateless.

    Sample counts come from ``ctx.n_samples`` (uniform weights without them); when the finite
    rows' counts sum to 0 the update is zero.
    """

    name = "fedsgd"
    runs_without_finite_rows = True  # the counts are validated even then

    def rule(self, rows: Rows) -> RuleResult:
        """``w @ G`` with ``w_i = n_i / sum_j n_j``."""
        n = finite_counts(rows.ctx.n_samples, rows.finite)
        m, P = rows.G.shape
        if m == 0 or (n is not None and rows.finite.kept is not None and not float(n.sum()) > 0):
            return RuleResult(update=rows.G.new_zeros(P), weights=rows.G.new_zeros(m))
        w = sample_weights(n, m, dtype=rows.G.dtype, device=rows.G.device)
        return RuleResult(update=weighted_mean(w, rows.G), weights=w)

    def __repr__(self) -> str:
        return "FedSGD()"
