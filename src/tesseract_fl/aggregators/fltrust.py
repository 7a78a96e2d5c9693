"""FLTrust: trust bootstrapping from a clean root gradient (Cao et al., NDSS 2021;
docs/design.md, "FLTrust").

The server computes its own gradient ``g_0`` on a small clean root set at the current model.
Each client gets the trust score ``TS_i = ReLU(cos(g_i, g_0))``, its gradient is rescaled to the
root gradient's norm, ``g_i' = g_i * ||g_0|| / ||g_i||``, and the update is
``sum_i TS_i g_i' / sum_i TS_i`` (the zero vector when every trust score is 0). For finite
inputs the update is finite: values whose squares overflow are handled in a power-of-two scaled
space, and when the root norm is so large that a coordinate of the update would leave the range
of G's dtype, the update's norm is lowered until it fits (its direction is kept).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import (
    AggregationContext,
    Defense,
    Diagnostics,
    FiniteRows,
    Rows,
    RuleResult,
    check_layout,
    check_matrix,
    split_finite,
)
from tesseract_fl.aggregators.kernels.gram import downscale_exponent, max_abs
from tesseract_fl.errors import UpdateError
from tesseract_fl.validation import as_count

__all__ = ["FLTrust", "fltrust", "fltrust_weights"]


def _check_root(G: Tensor, g0: Any) -> Tensor:
    if not isinstance(g0, Tensor):
        raise UpdateError(f"root gradient g0 must be a torch.Tensor, got {type(g0).__name__}")
    if g0.dim() != 1 or g0.shape[0] != G.shape[1]:
        raise UpdateError(
            f"root gradient g0 must be a vector of length P={G.shape[1]} (columns of G), "
            f"got shape {tuple(g0.shape)}"
        )
    if not g0.is_floating_point():
        raise UpdateError(f"root gradient g0 must be floating point, got dtype {g0.dtype}")
    # Fast path: a finite sum means finite entries (NaN/Inf propagate); else check exactly.
    if not math.isfinite(float(g0.sum())) and not bool(torch.isfinite(g0).all()):
        raise UpdateError("root gradient g0 has NaN/Inf entries")
    out = g0.to(dtype=G.dtype, device=G.device)
    if out.dtype != g0.dtype and not bool(torch.isfinite(out).all()):
        raise UpdateError(
            f"root gradient g0 has entries beyond the range of {G.dtype} (the dtype of G): "
            f"max |g0| = {float(g0.abs().max()):.3g}"
        )
    return out


def _trust(G: Tensor, g0: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """Cosines, trust scores, row norms (float64, G's device) and ``||g0||``.

    Validates G's entries: NaN/Inf in G make its dot product or norm non-finite, and only then
    is ``check_matrix`` run (saving a pass). Two memory-bound passes over G in its dtype:
    ``G @ g0`` and the row norms (float32 norms: asking for float64 accumulation is many times
    slower). A row or root of norm 0 has cosine 0 (so trust 0).
    Half precision inputs are multiplied in float32; values too large for float64 norms are
    handled by :func:`_trust_scaled`.
    """
    if G.dtype.itemsize < 4:
        G, g0 = G.float(), g0.float()
    dots = (G @ g0).to(torch.float64)
    norms = torch.linalg.vector_norm(G, dim=1).to(torch.float64)
    if not bool(torch.isfinite(dots).all() & torch.isfinite(norms).all()):
        check_matrix(G)  # a NaN/Inf entry of G shows up here: raise for it
        if G.dtype != torch.float64:
            # huge finite entries overflowed the float32 products: redo in float64 (rare, slow)
            return _trust(G.double(), g0.double())
        return _trust_scaled(G, g0)
    n0 = float(torch.linalg.vector_norm(g0.to(torch.float64)))
    if not math.isfinite(n0):
        return _trust_scaled(G.double(), g0.double())
    ok = norms > 0
    denom = torch.where(ok, norms, torch.ones_like(norms)) * n0
    if n0 > 0:
        cos = torch.where(ok, dots / denom, torch.zeros_like(dots)).clamp(-1.0, 1.0)
    else:
        cos = torch.zeros_like(dots)
    ts = cos.clamp(min=0.0)
    return cos, ts, norms, n0


def _scaled(X: Tensor) -> tuple[Tensor, int]:
    """``(X * 2**-e, e)`` for float64 ``X`` [..., P]: sums of P squares of it cannot overflow."""
    e = downscale_exponent(max_abs(X), float(X.shape[-1]))
    return (X * 2.0**-e if e else X), e


def _trust_scaled(G: Tensor, g0: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """:func:`_trust` for finite float64 values whose squares overflow (e.g. 1e200).

    Cosines are invariant to scaling each vector, so G and g0 are scaled by powers of two
    (exact) until their norms fit; the norms reported are scaled back (+inf where even that
    overflows float64, which then gives that row weight 0 in the effective weights).
    """
    Xs, e = _scaled(G)
    gs, e0 = _scaled(g0)
    dots = Xs @ gs
    ns = torch.linalg.vector_norm(Xs, dim=1)
    n0s = float(torch.linalg.vector_norm(gs))
    ok = ns > 0
    if n0s > 0:
        denom = torch.where(ok, ns, torch.ones_like(ns)) * n0s
        cos = torch.where(ok, dots / denom, torch.zeros_like(dots)).clamp(-1.0, 1.0)
    else:
        cos = torch.zeros_like(dots)
    return cos, cos.clamp(min=0.0), ns * 2.0**e, n0s * 2.0**e0


def _split(G: Tensor) -> FiniteRows:
    """:func:`.base.split_finite` probed by the row norms (cheap when every row is finite)."""
    check_layout(G)
    return split_finite(G, row_probe=torch.linalg.vector_norm(G, dim=1))


def _effective_weights(ts: Tensor, norms: Tensor, n0: float) -> Tensor:
    """``TS_i ||g0|| / ||g_i|| / sum_j TS_j`` (float64); all zero when every TS is 0."""
    total = float(ts.sum())
    if total <= 0.0:
        return torch.zeros_like(ts)
    scale = torch.where(ts > 0, n0 / norms.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return ts * scale / total


def _fltrust(X: Tensor, g0: Tensor) -> tuple[Tensor, Tensor, Tensor, float, Tensor, Tensor]:
    """``(cos, ts, norms, n0, w, update)`` for finite rows ``X`` and a root ``g0`` in X's dtype.

    ``w`` (X's dtype) are the effective weights and ``update = w @ X``, computed so in X's
    dtype whenever that is finite. Otherwise (values near the dtype's limit, or a root norm
    far beyond it) :func:`_unit_row_update` forms the update from unit rows in float64.
    """
    cos, ts, norms, n0 = _trust(X, g0)
    w = _effective_weights(ts, norms, n0).to(X.dtype)
    if bool(torch.isfinite(w).all()):
        update = w @ X
        if bool(torch.isfinite(update).all()):
            return cos, ts, norms, n0, w, update
    w, update = _unit_row_update(X, g0, ts)
    return cos, ts, norms, n0, w, update


def _unit_row_update(X: Tensor, g0: Tensor, ts: Tensor) -> tuple[Tensor, Tensor]:
    """FLTrust's ``(weights, update)`` for finite X and g0, computed so that it cannot overflow.

    ``update = t * v`` with ``v = sum_i a_i g_i / ||g_i||``, ``a_i = TS_i / sum_j TS_j``
    (convex, so ``|v_j| <= 1``) and the target norm ``t = ||g0||``, all in float64 on
    power-of-two scaled rows and root. When a coordinate of that update lies beyond the range
    of X's dtype (only a root norm beyond it can do this), ``t`` is lowered until the largest
    coordinate is the dtype's maximum: the direction is kept and the update is finite. Effective
    weights beyond the dtype's range are reported as its maximum.
    """
    big = float(torch.finfo(X.dtype).max)
    total = float(ts.sum())
    if not total > 0.0:
        return X.new_zeros(X.shape[0]), X.new_zeros(X.shape[1])
    Xs, e = _scaled(X.to(torch.float64))
    gs, e0 = _scaled(g0.to(torch.float64))
    ns = torch.linalg.vector_norm(Xs, dim=1)
    n0s = float(torch.linalg.vector_norm(gs))  # ||g0|| = n0s * 2**e0
    a = ts.to(device=X.device, dtype=torch.float64) / total
    use = (a > 0) & (ns > 0)
    safe_ns = torch.where(use, ns, torch.ones_like(ns))
    v = torch.where(use, a, torch.zeros_like(a)) @ (Xs / safe_ns[:, None])
    v_max = max_abs(v)
    t_s = n0s  # the target norm, scaled by 2**-e0
    if v_max > 0.0:
        t_s = min(n0s, big / v_max * 2.0**-e0)
    update = ((v * t_s) * 2.0**e0).clamp(-big, big).to(X.dtype)
    w = torch.where(use, a * (t_s / safe_ns) * 2.0 ** (e0 - e), torch.zeros_like(a))
    return w.clamp(max=big).to(X.dtype), update


def fltrust_weights(G: Tensor, g0: Tensor) -> Tensor:
    """FLTrust's effective weight of each row of ``G`` [m, P] -> Tensor[m] in G's dtype.

    ``w_i = TS_i * ||g0|| / ||g_i|| / sum_j TS_j`` with ``TS_i = ReLU(cos(g_i, g0))``, so that
    ``fltrust(G, g0) == w @ G``. Rows of norm 0 (and every row when ``g0 = 0``) get trust 0; when
    every trust score is 0 all weights are 0. Rows with NaN/Inf get weight 0 (hostile-row
    policy: excluded, the others are weighted as if they were absent). Values near the dtype's
    limit: see :func:`_unit_row_update` (weights are capped at the dtype's maximum).
    """
    g0 = _check_root(G, g0)
    fin = _split(G)
    if fin.m_finite == 0:
        return G.new_zeros(fin.m)
    return fin.scatter(_fltrust(fin.G, g0)[4])


def fltrust(G: Tensor, g0: Tensor) -> Tensor:
    """FLTrust (Cao et al. 2021) on ``G`` [m, P] with root gradient ``g0`` [P] -> Tensor[P].

    ``sum_i TS_i g_i' / sum_i TS_i`` with ``g_i' = g_i ||g0|| / ||g_i||``; the zero vector when
    every trust score is 0. Invariant to scaling any ``g_i`` by a positive constant. Rows with
    NaN/Inf are excluded (hostile-input policy). Finite for finite inputs: when a coordinate
    would lie beyond G's dtype's range (a root norm beyond it), the update's norm is lowered
    until it fits, keeping its direction (:func:`_unit_row_update`).
    """
    return FLTrust().aggregate(G, ctx=AggregationContext(root_gradient=g0)).update


class FLTrust(Defense):
    """The FLTrust aggregator (Cao et al. 2021); stateless on the aggregation side.

    ``root_size`` is the number of clean root samples the server holds (paper default 100); the
    round draws that set and computes ``g_0`` on it, passing it as ``ctx.root_gradient``
    (``needs_root_gradient`` tells it to). ``diagnostics.scores`` are the trust scores;
    ``diagnostics.extra`` holds ``cosine``, ``norms`` (float64, per row), ``root_norm`` and
    ``all_zero`` (every trust score 0: the update is zero).
    """

    name = "fltrust"
    needs_root_gradient = True
    runs_without_finite_rows = True  # all_zero is reported even then

    def __init__(self, root_size: int = 100) -> None:
        self.root_size = as_count(root_size, "root_size", minimum=1)

    def check_input(self, G: Tensor, ids: Tensor, ctx: AggregationContext) -> None:
        """The root gradient must be there and be a finite vector of length P: the server's
        own gradient is trusted, so a bad one is a bug, not an attack (:class:`UpdateError`)."""
        if ctx.root_gradient is None:
            raise UpdateError(
                "FLTrust needs the server's root gradient: pass "
                "ctx=AggregationContext(root_gradient=g0) with g0 a Tensor[P] "
                "computed on the clean root set at the current model"
            )
        _check_root(G, ctx.root_gradient)

    def finite_rows(self, G: Tensor) -> FiniteRows:
        """The hostile-input split, probed by the row norms."""
        return _split(G)

    def rule(self, rows: Rows) -> RuleResult:
        """Trust scores against the root gradient; the trust-weighted mean of the rescaled rows."""
        fin, X = rows.finite, rows.G
        if X.shape[0] == 0:
            return RuleResult(
                update=X.new_zeros(X.shape[1]),
                weights=X.new_zeros(0),
                diagnostics=Diagnostics(extra={"all_zero": True}),
            )
        assert rows.ctx.root_gradient is not None
        g0 = _check_root(X, rows.ctx.root_gradient)
        cos, ts, norms, n0, w, update = _fltrust(X, g0)

        def full(x: Tensor, fill: float) -> Tensor:
            return fin.scatter(x.detach().cpu(), fill=fill)

        extra: dict[str, Any] = {
            "cosine": full(cos, 0.0),
            "norms": full(norms, float("nan")),
            "root_norm": n0,
            "all_zero": not bool((ts > 0).any()),
        }
        return RuleResult(
            update=update, weights=w, diagnostics=Diagnostics(scores=full(ts, 0.0), extra=extra)
        )

    def __repr__(self) -> str:
        return f"FLTrust(root_size={self.root_size})"
