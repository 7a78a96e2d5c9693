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
    Aggregate,
    AggregationContext,
    Stateless,
    check_client_ids,
    check_layout,
    split_finite,
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
    if bool(torch.isfinite(out).all()) or not bool(torch.isfinite(X).all()):
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

    Computed as one matrix-vector product ``w @ G`` in G's dtype (float32 for the simulator),
    which on CPU is one BLAS pass over G (much faster than ``(w[:, None] * G).sum(0)``); when
    values near the dtype's maximum make that product overflow, it is redone so that it cannot
    (:func:`weighted_mean`): the mean of finite rows is always finite.
    Rows with NaN/Inf entries are excluded (hostile-row policy, :func:`.base.split_finite`).
    """
    return _fedsgd(G, n_samples).update


def _fedsgd(G: Tensor, n_samples: Tensor | Sequence[float] | None) -> Aggregate:
    """FedSGD on the finite rows of G; excluded rows get weight 0, their counts are ignored.

    When the finite rows' counts sum to 0 (or no row is finite) the update is zero.
    """
    fin = split_finite(G)
    m = fin.m
    if n_samples is not None:
        sample_weights(n_samples, m)  # validates the counts against every received row
    if fin.m_finite == 0:
        return fin.zero_update()
    n = n_samples
    if n is not None and fin.kept is not None:
        n = torch.as_tensor(n, dtype=torch.float64).detach().cpu()[fin.kept]
        if not float(n.sum()) > 0:
            return fin.zero_update()
    w = sample_weights(n, fin.m_finite, dtype=G.dtype, device=G.device)
    return Aggregate(update=weighted_mean(w, fin.G), weights=fin.scatter(w), record=fin.record())


class FedSGD(Stateless):
    """The FedSGD aggregator (sample-weighted mean); stateless.

    Sample counts come from ``ctx.n_samples`` when given, otherwise the weights are uniform.
    ``client_ids`` are accepted for interface compatibility and only checked for length.
    """

    name = "fedsgd"

    def aggregate(
        self,
        G: Tensor,
        client_ids: Tensor | Sequence[int] | None = None,
        ctx: AggregationContext | None = None,
    ) -> Aggregate:
        """Return ``Aggregate(update=w @ G, weights=w)`` with ``w_i = n_i / sum_j n_j``
        over the finite rows (``record["excluded"]``: rows dropped for NaN/Inf)."""
        check_layout(G)
        check_client_ids(client_ids, G.shape[0])
        n = ctx.n_samples if ctx is not None else None
        return _fedsgd(G, n)

    def __repr__(self) -> str:
        return "FedSGD()"
