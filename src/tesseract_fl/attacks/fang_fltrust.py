"""Fang et al.'s full-knowledge attack framework applied to FLTrust: the adaptive attack of
Cao et al. (NDSS 2021, "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping",
Sec. "Adaptive attack"), built on Fang et al. (USENIX Security 2020); docs/design.md,
"Fang-FLTrust".

Fang et al.'s framework: with ``g`` the server's update before the attack and ``s = sign(g)``,
the attackers choose their rows to maximise the directed deviation ``s . (g - g')`` of the
update ``g'`` the rule computes after the attack. FLTrust rescales every row to the root
gradient's norm, so Cao et al. write each malicious row as ``g'_i = ||g_0|| e_i`` with ``e_i`` a
unit vector; with ``TS_j = ReLU(cos(g_j, g_0))`` and ``gbar_j = ||g_0|| g_j / ||g_j||`` for the
benign rows,

    g' = (sum_benign TS_j gbar_j + ||g_0|| sum_mal ReLU(e_i . g_0 / ||g_0||) e_i)
         / (sum_benign TS_j + sum_mal ReLU(e_i . g_0 / ||g_0||)),

and the ``e_i`` are found by gradient ascent on ``h = s . (g - g') / ||g_0||``, each step
followed by renormalising ``e_i`` to unit length. Our choices where the method leaves room
(parameters of :class:`FangFLTrust`): the start ``e_i = g_0 / ||g_0||`` (a direction of
trust 1; a start of trust 0, such as Full-Trim's rows, has zero gradient under the ReLU), a step
of fixed length ``step_size`` along the gradient (so the step does not depend on the gradients'
scale or on P), ``steps`` iterations, and the best ``e_i`` seen is kept. The attack needs the
server's root gradient, so it runs against defenses that compute one (FLTrust, MoNNA with the
root pivot); the record holds the deviation reached and the attackers' mean trust score.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tesseract_fl.attacks.base import AttackContext, Poison, check_honest, malicious_mask
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.validation import as_count, positive_finite

__all__ = ["FangFLTrust", "fang_fltrust", "fltrust_reference"]


def fltrust_reference(G: Tensor, g0: Tensor) -> tuple[Tensor, Tensor]:
    """``(sum_j TS_j gbar_j, sum_j TS_j)`` of rows ``G`` [k, P] against ``g0`` (float64): the
    numerator and denominator of FLTrust's update over these rows (rows of norm 0: trust 0)."""
    X = G.detach().double()
    r = g0.detach().double()
    n0 = torch.linalg.vector_norm(r)
    norms = torch.linalg.vector_norm(X, dim=1)
    ok = norms > 0
    cos = torch.where(ok, (X @ r) / (torch.where(ok, norms, 1.0) * n0), 0.0)
    ts = cos.clamp(0.0, 1.0)
    w = torch.where(ts > 0, ts * n0 / torch.where(ok, norms, 1.0), 0.0)
    return w @ X, ts.sum()


def _check_root(g0: Any, P: int) -> Tensor:
    if g0 is None:
        raise ConfigError(
            "attack 'fang_fltrust' needs the server's root gradient: run it against a defense "
            "with a root set (fltrust, or monna with pivot = 'root')"
        )
    if not isinstance(g0, Tensor) or g0.dim() != 1 or g0.shape[0] != P:
        shape = tuple(g0.shape) if isinstance(g0, Tensor) else type(g0).__name__
        raise UpdateError(f"root gradient must be a vector of length {P}, got {shape}")
    if not bool(torch.isfinite(g0).all()):
        raise UpdateError("root gradient has NaN/Inf entries")
    return g0


def fang_fltrust(
    G_honest: Tensor,
    malicious: Tensor,
    g0: Tensor | None,
    *,
    steps: int = 100,
    step_size: float = 0.05,
) -> tuple[Tensor, dict[str, float]]:
    """Malicious rows ``[c, P]`` (``c = malicious.sum()``) maximising FLTrust's directed
    deviation, and the record ``{"deviation", "trust"}`` (``s . (g - g')`` reached and the
    attackers' mean trust score)."""
    c = int(malicious.sum())
    check_honest(G_honest, c, min_benign=0)
    P = G_honest.shape[1]
    root = _check_root(g0, P)
    mask = malicious.to(G_honest.device)
    r = root.detach().double()
    n0 = float(torch.linalg.vector_norm(r))
    if n0 == 0.0:
        # FLTrust's update is 0 whatever the clients send (every cosine is 0).
        return torch.zeros(c, P, dtype=G_honest.dtype, device=G_honest.device), {
            "deviation": 0.0,
            "trust": 0.0,
        }
    num_all, den_all = fltrust_reference(G_honest, r)
    g = num_all / den_all if float(den_all) > 0 else torch.zeros_like(r)
    s = torch.sign(g)
    if not bool(s.any()):
        s = torch.sign(r)  # no update before the attack: deviate from the root direction
    A, B = fltrust_reference(G_honest[~mask], r)
    A = A / n0
    base = float(s @ g) / n0
    r_hat = r / n0

    def deviation(E: Tensor) -> Tensor:
        ts = (E @ r_hat).clamp(min=0.0)
        g_after = (A + ts @ E) / (B + ts.sum()).clamp(min=torch.finfo(torch.float64).tiny)
        return base - s @ g_after

    E = r_hat.expand(c, -1).clone()
    best_E, best_h = E.clone(), float(deviation(E))
    for _ in range(steps):
        E.requires_grad_(True)
        h = deviation(E)
        (grad,) = torch.autograd.grad(h, E)
        with torch.no_grad():
            gnorm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
            if not bool((gnorm > 0).any()):
                break
            step = torch.where(gnorm > 0, grad / gnorm.clamp(min=1e-300), 0.0)
            E = E.detach() + step_size * step
            E = E / torch.linalg.vector_norm(E, dim=1, keepdim=True)
            h_now = float(deviation(E))
            if h_now > best_h:
                best_E, best_h = E.clone(), h_now
    with torch.no_grad():
        trust = float((best_E @ r_hat).clamp(min=0.0).mean())
        rows = (best_E * n0).to(dtype=G_honest.dtype)
    return rows, {"deviation": best_h * n0, "trust": trust}


class FangFLTrust:
    """Fang et al.'s attack framework against FLTrust (Cao et al. 2021's adaptive attack):
    unit directions scaled to the root norm, found by ``steps`` gradient-ascent steps of length
    ``step_size`` on FLTrust's directed deviation. Needs the server's root gradient."""

    name = "fang_fltrust"
    needs_root_gradient = True

    def __init__(self, *, steps: int = 100, step_size: float = 0.05) -> None:
        self.steps = as_count(steps, "attack.steps", minimum=1)
        self.step_size = positive_finite(step_size, "attack.step_size")

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        """The rows maximising the deviation of FLTrust's update (``ctx.root_gradient``)."""
        c = ctx.num_malicious
        mask = malicious_mask(G_honest.shape[0], c, ctx.malicious)
        rows, record = fang_fltrust(
            G_honest, mask, ctx.root_gradient, steps=self.steps, step_size=self.step_size
        )
        return Poison(rows, record)

    def __repr__(self) -> str:
        return f"FangFLTrust(steps={self.steps}, step_size={self.step_size:g})"
