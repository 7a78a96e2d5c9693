"""Adaptive attacks against TESSERACT (paper Sec. 6.2, Figure 5; docs/design.md, "Adaptive Krum
and adaptive Trim").

The attacker knows the defense's previous-round cut-off ``FS_high`` (the c_max-th highest
flip-score) and its ``s_g``. It starts from the Full-Krum (resp. Full-Trim) target; if the
target's flip-score is at least ``FS_high`` it restores attacked coordinates to the honest mean
gradient, 5% of the coordinates at a time in ascending order of ``|honest mean|`` (those that
would have moved least without the attack), until the flip-score drops below ``FS_high``.

* Adaptive-Krum: every attacker sends the diluted Full-Krum vector (attackers 1..c-1 add the
  Full-Krum noise U(-1e-4/P, 1e-4/P)). The authors' code returns before diluting; we implement
  the paper's description.
* Adaptive-Trim: attacker 0 dilutes its Full-Trim target ``u_0`` to ``v_0``; attacker i then
  targets ``u_i + (u_{i-1}' - v_{i-1})``, carrying the mass the previous attacker gave up, so that
  ``sum(targets u) - sum(sent v)`` equals the last attacker's leftover.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.attacks.base import AttackContext, Poison, check_honest, malicious_mask
from tesseract_fl.attacks.full_krum import full_krum_search
from tesseract_fl.attacks.full_trim import full_trim
from tesseract_fl.errors import ConfigError

__all__ = [
    "AdaptiveKrum",
    "AdaptiveTrim",
    "adaptive_krum",
    "adaptive_trim",
    "dilute",
    "vector_flip_score",
]

#: Fraction of the coordinates restored per dilution step (paper Sec. 6.2: "5% at a time").
STEP_FRACTION = 0.05


def vector_flip_score(x: Tensor, s_g: Tensor | None) -> float:
    """Flip-score of one vector against ``s_g`` (paper Eq. for FS; ``s_g = None``: round 1,
    every nonzero coordinate counts), accumulated in float64."""
    return float(_contrib(x, _sign64(s_g, x.device)).sum())


def _sign64(s_g: Tensor | None, device: torch.device) -> Tensor | None:
    return None if s_g is None else s_g.to(device=device, dtype=torch.float64)


def _contrib(x: Tensor, sg64: Tensor | None) -> Tensor:
    """Per-coordinate flip-score terms ``x_j^2 [sign(x_j) != s_g_j]`` in float64 (``sg64``:
    ``s_g`` in float64 on x's device, None for round 1)."""
    x64 = x.double()
    sg = torch.zeros_like(x64) if sg64 is None else sg64
    return x64 * x64 * (torch.sign(x64) != sg)


def restoration_order(mean: Tensor) -> Tensor:
    """Coordinates in ascending ``|mean|``, ties in index order (a stable argsort).

    For float32 / float64 the sort runs on the bit patterns of ``|mean|`` read as integers:
    for values >= 0 (and +inf) they order exactly as the values do, and torch sorts integers by
    radix, an order of magnitude faster than its float sort; the permutation is the same.
    """
    a = mean.abs()
    view = {torch.float32: torch.int32, torch.float64: torch.int64}.get(a.dtype)
    if view is None or bool(torch.isnan(a).any()):  # NaN payloads would order by their bits
        return torch.argsort(a, stable=True)
    return torch.argsort(a.view(view), stable=True)


def dilute(
    target: Tensor,
    mean: Tensor,
    s_g: Tensor | None,
    fs_high: float | None,
    order: Tensor | None = None,
    step_fraction: float = STEP_FRACTION,
) -> tuple[Tensor, float]:
    """Restore ``target``'s coordinates to ``mean`` in steps of ``step_fraction * P`` (ascending
    ``|mean|``, or ``order``: a permutation of ``range(P)``) until its flip-score is below
    ``fs_high``; return ``(v, fraction restored)``, ``v`` in the target's dtype.

    No cut-off known (``fs_high is None``, the first round) or a target already below it: the
    target is returned unchanged. If even full restoration stays at or above ``fs_high``, every
    coordinate is restored (``v = mean``, fraction 1). The flip-score after each step comes from
    one cumulative sum, so the search costs O(P log P) for the sort.
    """
    if fs_high is None or not math.isfinite(float(fs_high)):
        return target.clone(), 0.0
    if order is None:
        order = restoration_order(mean)
    else:
        _check_order(order, mean.numel())
    return _dilute(target, _MeanTerms(mean, s_g, order), float(fs_high), step_fraction)


def _check_order(order: Tensor, P: int) -> None:
    """``order`` must be a permutation of ``range(P)`` (the ranks are read from it)."""
    ok = (
        isinstance(order, Tensor)
        and order.dim() == 1
        and order.numel() == P
        and not order.is_floating_point()
        and (P == 0 or (int(order.min()) >= 0 and int(order.max()) < P))
        and bool((torch.bincount(order.long().cpu(), minlength=P) == 1).all())
    )
    if not ok:
        raise ConfigError(f"order must be a permutation of range({P}) (the restoration order)")


class _MeanTerms:
    """What :func:`dilute` needs of the honest mean, computed once for several targets (the
    adaptive Trim chain dilutes one per attacker): ``s_g`` in float64, the mean's flip-score
    terms, the restoration order and each coordinate's rank in it."""

    def __init__(self, mean: Tensor, s_g: Tensor | None, order: Tensor) -> None:
        self.mean = mean
        self.sg64 = _sign64(s_g, mean.device)
        self.contrib = _contrib(mean, self.sg64)
        self.order = order
        self.rank = torch.empty_like(order)
        self.rank[order] = torch.arange(order.numel(), device=order.device)


def _dilute(
    target: Tensor, mean: _MeanTerms, fs_high: float, step_fraction: float
) -> tuple[Tensor, float]:
    """:func:`dilute` with the mean's terms given and a finite cut-off."""
    P = target.numel()
    a = _contrib(target, mean.sg64)
    fs0 = float(a.sum())
    if fs0 < fs_high:
        return target.clone(), 0.0
    # Flip-score change of restoring each coordinate, in restoration order, accumulated.
    diff = mean.contrib - a if a.requires_grad else torch.sub(mean.contrib, a, out=a)
    delta = diff.index_select(0, mean.order).cumsum(0)
    step = max(1, math.ceil(step_fraction * P))
    ks = torch.arange(step, P + step, step, device=target.device).clamp_(max=P)
    fs_k = fs0 + delta[ks - 1]
    ok = (fs_k < fs_high).nonzero()
    k = int(ks[int(ok[0])]) if ok.numel() else P
    # The first k coordinates of the order take the mean's value, the others keep the target's.
    return torch.where(mean.rank < k, mean.mean.to(target.dtype), target), k / P


def _state(s_g: Any, fs_high: Any) -> tuple[Tensor | None, float | None]:
    fs = None if fs_high is None else float(fs_high)
    return (None if s_g is None else torch.as_tensor(s_g)), fs


def adaptive_krum(
    G_benign: Tensor,
    num_malicious: int,
    c_max: int,
    s_g: Tensor | None,
    fs_high: float | None,
    generator: torch.Generator | None = None,
    *,
    malicious_rows: Any = None,
) -> tuple[Tensor, dict[str, float]]:
    """Adaptive-Krum rows ``[c, P]`` and the record (``lambda``, ``restored`` fraction)."""
    check_honest(G_benign, num_malicious)
    m = G_benign.shape[0]
    mask = malicious_mask(m, num_malicious, malicious_rows).to(G_benign.device)
    rows, lam = full_krum_search(G_benign, num_malicious, c_max, generator, malicious_rows=mask)
    if lam == 0.0:  # Full-Krum gave up: the attackers send honest gradients, nothing to hide.
        return rows, {"lambda": 0.0, "restored": 0.0, "gave_up": 1.0}
    s_g, fs = _state(s_g, fs_high)
    target = rows[0]  # attacker 0's row carries no noise
    v, restored = dilute(target, G_benign.mean(dim=0), s_g, fs)
    out = v.unsqueeze(0) + (rows - target.unsqueeze(0))  # keep the other attackers' noise
    return out, {"lambda": lam, "restored": restored, "gave_up": 0.0}


def adaptive_trim(
    G_benign: Tensor,
    num_malicious: int,
    s_g: Tensor | None,
    fs_high: float | None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Adaptive-Trim rows ``[c, P]`` with the compensation chain; the record holds the mean
    ``restored`` fraction and the norm of the last attacker's ``leftover`` mass."""
    U = full_trim(G_benign, num_malicious, generator)  # validates G_benign and num_malicious
    s_g, fs = _state(s_g, fs_high)
    mean = G_benign.mean(dim=0)
    out = torch.empty_like(U)
    carry = torch.zeros_like(U[0])
    fractions = []
    # No cut-off known yet (the first round): nothing to dilute, as in :func:`dilute`.
    known = fs is not None and math.isfinite(fs)
    terms = _MeanTerms(mean, s_g, restoration_order(mean)) if known else None
    for i in range(num_malicious):
        target = U[i] + carry
        if terms is None or fs is None:
            out[i], frac = target.clone(), 0.0
        else:
            out[i], frac = _dilute(target, terms, fs, STEP_FRACTION)
        carry = target - out[i]
        fractions.append(frac)
    return out, {
        "restored": sum(fractions) / len(fractions),
        "leftover_norm": float(carry.double().norm()),
    }


def _public(ctx: AttackContext) -> tuple[Tensor | None, float | None]:
    if ctx.defense is None:
        raise ConfigError("adaptive attacks need the defense's public state (none was given)")
    state = ctx.defense.public_state()
    if "fs_high" not in state:
        raise ConfigError(
            f"adaptive attacks target TESSERACT's flip-score cut-off; defense {ctx.defense.name!r} "
            "publishes none (use defense = 'tesseract')"
        )
    return state.get("s_g"), state.get("fs_high")


class AdaptiveKrum:
    """Adaptive-Krum (paper Sec. 6.2): Full-Krum diluted below TESSERACT's previous FS_high."""

    name = "adaptive_krum"

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        s_g, fs_high = _public(ctx)
        rows, record = adaptive_krum(
            G_honest,
            ctx.num_malicious,
            ctx.c_max,
            s_g,
            fs_high,
            ctx.generator,
            malicious_rows=ctx.malicious,
        )
        return Poison(rows, record)

    def __repr__(self) -> str:
        return "AdaptiveKrum()"


class AdaptiveTrim:
    """Adaptive-Trim (paper Sec. 6.2): Full-Trim diluted with the compensation chain."""

    name = "adaptive_trim"

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        s_g, fs_high = _public(ctx)
        rows, record = adaptive_trim(G_honest, ctx.num_malicious, s_g, fs_high, ctx.generator)
        return Poison(rows, record)

    def __repr__(self) -> str:
        return "AdaptiveTrim()"
