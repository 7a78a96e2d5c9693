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
followed by renormalising ``e_i`` to unit length (its gradient in closed form below; from the
common start the rows stay equal, so one row is iterated). Our choices where the method leaves room
(parameters of :class:`FangFLTrust`): the start ``e_i = g_0 / ||g_0||`` (a direction of
trust 1; a start of trust 0, such as Full-Trim's rows, has zero gradient under the ReLU), a step
of fixed length ``step_size`` along the gradient (so the step does not depend on the gradients'
scale or on P), ``steps`` iterations, and the best ``e_i`` seen is kept. The attack needs the
server's root gradient, so it runs against defenses that compute one (FLTrust, MoNNA with the
root pivot); the record holds the deviation reached and the attackers' mean trust score.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators.fltrust import _check_root as check_fltrust_root
from tesseract_fl.aggregators.fltrust import _trust
from tesseract_fl.attacks.base import AttackContext, Poison, check_honest, malicious_mask
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count, positive_finite

__all__ = ["FangFLTrust", "fang_fltrust", "fltrust_terms"]


def fltrust_terms(G: Tensor, g0: Tensor) -> tuple[Tensor, Tensor]:
    """``(w, ts)`` (float64 [k]) of rows ``G`` [k, P] against ``g0``: FLTrust's trust scores
    ``TS_j`` and the weights ``w_j = TS_j ||g0|| / ||g_j||`` of the raw rows, so that
    ``w @ G = sum_j TS_j gbar_j``. The cosines and norms are FLTrust's own
    (``aggregators/fltrust.py``: rows or a root of norm 0 get trust 0)."""
    X = G.detach()
    _, ts, norms, n0 = _trust(X, g0.detach().to(device=X.device, dtype=X.dtype))
    return torch.where(ts > 0, ts * n0 / norms.clamp(min=torch.finfo(torch.float64).tiny), 0.0), ts


def _check_root(G: Tensor, g0: Any) -> Tensor:
    """``g0`` itself, after FLTrust's own checks of a root gradient (``UpdateError``); a missing
    one is a ``ConfigError``: the attack was run against a defense without a root set."""
    if g0 is None:
        raise ConfigError(
            "attack 'fang_fltrust' needs the server's root gradient: run it against a defense "
            "with a root set (fltrust, or monna with pivot = 'root')"
        )
    check_fltrust_root(G, g0)
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
    root = _check_root(G_honest, g0)
    mask = malicious.to(G_honest.device)
    r = root.detach().double()
    n0 = float(torch.linalg.vector_norm(r))
    if n0 == 0.0:
        # FLTrust's update is 0 whatever the clients send (every cosine is 0).
        return torch.zeros(c, P, dtype=G_honest.dtype, device=G_honest.device), {
            "deviation": 0.0,
            "trust": 0.0,
        }
    w, ts = fltrust_terms(G_honest, r)
    X = G_honest.detach()
    if X.dtype.itemsize < 4:
        X = X.float()
    r = r.to(X.device)
    den_all = float(ts.sum())
    g = (w.to(X.dtype) @ X).double() / den_all if den_all > 0 else torch.zeros_like(r)
    s = torch.sign(g)
    if not bool(s.any()):
        s = torch.sign(r)  # no update before the attack: deviate from the root direction
    benign = ~mask
    A = (torch.where(benign, w, 0.0).to(X.dtype) @ X).double() / n0
    B = ts[benign].sum()
    base = float(s @ g) / n0
    r_hat = r / n0

    # Every attacker starts at r and the gradient of row i depends on the other rows only
    # through sums symmetric in them, so the rows stay equal along the ascent: one row e with
    # multiplicity c gives the same iterates as c rows at 1/c of the cost. With t = ReLU(e . r),
    # N = s . A + c t (s . e) and D = B + c t, h = base - N / D and
    #   dh/de = -c t s / D - c [t > 0] r ((s . e) D - N) / D^2.
    sA = float(s @ A)
    tiny = torch.finfo(torch.float64).tiny

    def value_and_grad(e: Tensor) -> tuple[float, Tensor]:
        se, t = float(s @ e), max(float(e @ r_hat), 0.0)
        N, D = sA + c * t * se, max(float(B) + c * t, tiny)
        grad = s * (-c * t / D)
        if t > 0.0:
            grad.add_(r_hat, alpha=-c * (se * D - N) / (D * D))
        return base - N / D, grad

    e = r_hat.clone()
    best_e, best_h = e, -math.inf
    for _ in range(steps):
        h, grad = value_and_grad(e)
        if h > best_h:
            best_e, best_h = e, h
        gnorm = float(torch.linalg.vector_norm(grad))
        if gnorm == 0.0:
            break
        e = e + grad * (step_size / gnorm)
        e = e / torch.linalg.vector_norm(e)
    h = value_and_grad(e)[0]
    if h > best_h:
        best_e, best_h = e, h
    trust = max(float(best_e @ r_hat), 0.0)
    rows = (best_e * n0).to(dtype=G_honest.dtype).expand(c, -1).clone()
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
