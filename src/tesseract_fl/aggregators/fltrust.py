"""FLTrust: trust bootstrapping from a clean root gradient (Cao et al., NDSS 2021; DESIGN.md 4).

The server computes its own gradient ``g_0`` on a small clean root set at the current model.
Each client gets the trust score ``TS_i = ReLU(cos(g_i, g_0))``, its gradient is rescaled to the
root gradient's norm, ``g_i' = g_i * ||g_0|| / ||g_i||``, and the update is
``sum_i TS_i g_i' / sum_i TS_i`` (the zero vector when every trust score is 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import (
    Aggregate,
    AggregationContext,
    FiniteRows,
    Stateless,
    check_client_ids,
    check_layout,
    check_matrix,
    split_finite,
)
from tesseract_fl.errors import ConfigError, UpdateError

__all__ = ["ROOT_GRADIENT_KEY", "FLTrust", "fltrust", "fltrust_weights"]

#: Key of the server's root gradient ``g_0`` (Tensor[P]) in ``AggregationContext.extra``.
ROOT_GRADIENT_KEY = "root_gradient"


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
    return g0.to(dtype=G.dtype, device=G.device)


def _trust(G: Tensor, g0: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """Cosines, trust scores, row norms (float64, G's device) and ``||g0||``.

    Validates G's entries: NaN/Inf in G make its dot product or norm non-finite, and only then
    is ``check_matrix`` run (saving a pass). Two memory-bound passes over G in its dtype:
    ``G @ g0`` and the row norms (float32 norms: ~10 ms on [100, 270000] here, where asking for
    float64 accumulation takes ~200 ms). A row or root of norm 0 has cosine 0 (so trust 0).
    """
    dots = (G @ g0).to(torch.float64)
    norms = torch.linalg.vector_norm(G, dim=1).to(torch.float64)
    if not bool(torch.isfinite(dots).all() & torch.isfinite(norms).all()):
        check_matrix(G)  # a NaN/Inf entry of G shows up here: raise for it
        if G.dtype != torch.float64:
            # huge finite entries overflowed the float32 products: redo in float64 (rare, slow)
            return _trust(G.double(), g0.double())
        raise UpdateError("gradient entries are too large: their norms overflow float64")
    n0 = float(torch.linalg.vector_norm(g0.to(torch.float64)))
    ok = norms > 0
    denom = torch.where(ok, norms, torch.ones_like(norms)) * n0
    if n0 > 0:
        cos = torch.where(ok, dots / denom, torch.zeros_like(dots)).clamp(-1.0, 1.0)
    else:
        cos = torch.zeros_like(dots)
    ts = cos.clamp(min=0.0)
    return cos, ts, norms, n0


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


def fltrust_weights(G: Tensor, g0: Tensor) -> Tensor:
    """FLTrust's effective weight of each row of ``G`` [m, P] -> Tensor[m] in G's dtype.

    ``w_i = TS_i * ||g0|| / ||g_i|| / sum_j TS_j`` with ``TS_i = ReLU(cos(g_i, g0))``, so that
    ``fltrust(G, g0) == w @ G``. Rows of norm 0 (and every row when ``g0 = 0``) get trust 0; when
    every trust score is 0 all weights are 0. Rows with NaN/Inf get weight 0 (hostile-row
    policy: excluded, the others are weighted as if they were absent).
    """
    g0 = _check_root(G, g0)
    fin = _split(G)
    if fin.m_finite == 0:
        return G.new_zeros(fin.m)
    _, ts, norms, n0 = _trust(fin.G, g0)
    return fin.scatter(_effective_weights(ts, norms, n0).to(G.dtype))


def fltrust(G: Tensor, g0: Tensor) -> Tensor:
    """FLTrust (Cao et al. 2021) on ``G`` [m, P] with root gradient ``g0`` [P] -> Tensor[P].

    ``sum_i TS_i g_i' / sum_i TS_i`` with ``g_i' = g_i ||g0|| / ||g_i||``; the zero vector when
    every trust score is 0. Invariant to scaling any ``g_i`` by a positive constant. Rows with
    NaN/Inf are excluded (hostile-row policy).
    """
    g0 = _check_root(G, g0)
    fin = _split(G)
    if fin.m_finite == 0:
        return fin.zero_update().update
    _, ts, norms, n0 = _trust(fin.G, g0)
    return _effective_weights(ts, norms, n0).to(G.dtype) @ fin.G


class FLTrust(Stateless):
    """The FLTrust aggregator (Cao et al. 2021); stateless on the aggregation side.

    ``root_size`` is the number of clean root samples the server holds (paper default 100); the
    simulator draws that set and computes ``g_0`` on it each round, passing it as
    ``ctx.extra["root_gradient"]`` (Tensor[P]); ``needs_root_gradient`` tells it to. ``record``
    holds ``trust_scores``, ``cosine``, ``norms`` (float64, per row) and ``root_norm``.
    """

    name = "fltrust"
    needs_root_gradient = True

    def __init__(self, root_size: int = 100) -> None:
        try:
            size = int(root_size)
            ok = size == root_size and not isinstance(root_size, bool) and size >= 1
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ConfigError(f"root_size must be a positive integer, got {root_size!r}")
        self.root_size = size

    def aggregate(
        self,
        G: Tensor,
        client_ids: Tensor | Sequence[int] | None = None,
        ctx: AggregationContext | None = None,
    ) -> Aggregate:
        """One FLTrust round; ``g_0`` comes from ``ctx.extra["root_gradient"]`` (UpdateError if
        it is missing or not a finite vector of length P: the server's own gradient is trusted,
        so a non-finite one is a bug, not an attack). Rows with NaN/Inf are excluded (trust 0,
        weight 0, ``record["excluded"]``)."""
        check_layout(G)
        m = G.shape[0]
        check_client_ids(client_ids, m)
        if ctx is None or ROOT_GRADIENT_KEY not in ctx.extra:
            raise UpdateError(
                "FLTrust needs the server's root gradient: pass "
                'ctx=AggregationContext(extra={"root_gradient": g0}) with g0 a Tensor[P] '
                "computed on the clean root set at the current model"
            )
        g0 = _check_root(G, ctx.extra[ROOT_GRADIENT_KEY])
        fin = _split(G)
        if fin.m_finite == 0:
            out = fin.zero_update()
            out.record["all_zero"] = True
            return out
        cos, ts, norms, n0 = _trust(fin.G, g0)
        w = _effective_weights(ts, norms, n0).to(G.dtype)

        def full(x: Tensor, fill: float) -> Tensor:
            """Per-finite-row values -> per-received-row (``fill`` for excluded rows)."""
            x = x.detach().cpu()
            if fin.kept is None:
                return x
            out = torch.full((fin.m,), fill, dtype=x.dtype)
            out[fin.kept] = x
            return out

        record: dict[str, Any] = {
            "trust_scores": full(ts, 0.0),
            "cosine": full(cos, 0.0),
            "norms": full(norms, float("nan")),
            "root_norm": n0,
            "all_zero": not bool((ts > 0).any()),
            **fin.record(),
        }
        return Aggregate(update=w @ fin.G, weights=fin.scatter(w), record=record)

    def __repr__(self) -> str:
        return f"FLTrust(root_size={self.root_size})"
