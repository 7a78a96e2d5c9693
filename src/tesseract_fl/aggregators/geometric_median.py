"""Geometric median by the smoothed Weiszfeld algorithm: RFA (Pillutla, Kakade and Harchaoui
2022, "Robust Aggregation for Federated Learning", IEEE Trans. Signal Process., Algorithm 2;
docs/design.md, "Geometric median (RFA)").

The (alpha-weighted) geometric median ``argmin_z sum_i alpha_i ||z - g_i||`` is approximated by
smoothed Weiszfeld steps from the weighted mean ``z_0 = sum_i alpha_i g_i``:

    beta_i = alpha_i / max(nu, ||z_t - g_i||),    z_{t+1} = sum_i beta_i g_i / sum_i beta_i

``alpha_i`` are the clients' sample shares (uniform without counts); ``iters`` steps (the
authors' default of 5 communication passes is the mean plus 4 steps), smoothing ``nu``
(their default 1e-6), and an optional early stop when the smoothed objective
``sum_i alpha_i max(nu, ||z - g_i||)`` decreases by less than ``ftol`` relative.
``init = "zero"`` starts from the zero vector instead (ByzFL's ``GeometricMedian``, which runs
``T`` steps from 0 with uniform weights).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import Defense, Diagnostics, Rows, RuleResult
from tesseract_fl.aggregators.fedsgd import finite_counts, sample_weights, weighted_mean
from tesseract_fl.aggregators.kernels.gram import distances_to
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count, positive_finite

__all__ = ["GeometricMedian", "geometric_median", "smoothed_weiszfeld"]


def smoothed_weiszfeld(
    G: Tensor, alpha: Tensor, *, iters: int, nu: float, ftol: float, init: str = "mean"
) -> tuple[Tensor, Tensor, int]:
    """``(z, w, steps)``: the smoothed Weiszfeld estimate of the alpha-weighted geometric median
    of the finite rows ``G`` [m, P], the convex weights ``w`` [m] (float64) with ``z = w @ G``,
    and the number of steps taken (:func:`~.kernels.gram.distances_to`: finite distances)."""
    a = alpha.to(dtype=torch.float64, device=G.device)
    if init == "mean":
        w = a / a.sum()
        z = weighted_mean(w.to(G.dtype), G)
    else:
        w = torch.zeros_like(a)
        z = torch.zeros(G.shape[1], dtype=G.dtype, device=G.device)
    prev = math.inf
    steps = 0
    for _ in range(iters):
        d = distances_to(G, z).to(a.device).clamp(min=nu)
        objective = float((a * d).sum())
        if ftol > 0 and prev - objective <= ftol * abs(objective):
            break
        prev = objective
        beta = a / d
        total = float(beta.sum())
        if not (total > 0 and math.isfinite(total)):
            break  # every distance beyond float64's range: keep the current estimate
        w = beta / total
        z = weighted_mean(w.to(G.dtype), G)
        steps += 1
    return z, w, steps


def geometric_median(G: Tensor, *, iters: int = 4, nu: float = 1e-6) -> Tensor:
    """RFA's smoothed Weiszfeld geometric median of the rows of ``G`` [m, P] -> Tensor[P]
    (uniform weights; rows with NaN/Inf excluded)."""
    return GeometricMedian(iters=iters, nu=nu).aggregate(G).update


class GeometricMedian(Defense):
    """Geometric median / RFA aggregator (Pillutla et al. 2022); stateless.

    ``iters``: Weiszfeld steps after the start (>= 0); ``nu``: smoothing (> 0); ``ftol``: stop
    early when the objective's relative decrease is at most this (0: always ``iters`` steps);
    ``init``: ``"mean"`` (RFA) or ``"zero"`` (ByzFL). ``weights``: the last step's normalized
    ``beta`` (the update is exactly their weighted mean of the rows). ``diagnostics.extra``:
    ``steps`` taken.
    """

    name = "geomed"

    def __init__(
        self, iters: int = 4, nu: float = 1e-6, ftol: float = 0.0, init: str = "mean"
    ) -> None:
        self.iters = as_count(iters, "iters")
        self.nu = positive_finite(nu, "nu")
        if isinstance(ftol, bool) or not isinstance(ftol, int | float) or not 0 <= ftol < 1:
            raise ConfigError(f"ftol must be a number in [0, 1), got {ftol!r}")
        self.ftol = float(ftol)
        if init not in ("mean", "zero"):
            raise ConfigError(f"init must be 'mean' or 'zero', got {init!r}")
        if init == "zero" and self.iters == 0:
            raise ConfigError("init = 'zero' needs iters >= 1 (the zero vector is no estimate)")
        self.init = init

    def rule(self, rows: Rows) -> RuleResult:
        """Smoothed Weiszfeld on the finite rows, weighted by their sample shares."""
        n = finite_counts(rows.ctx.n_samples, rows.finite)
        m = rows.G.shape[0]
        if n is not None and not float(torch.as_tensor(n).sum()) > 0:
            return RuleResult(update=rows.G.new_zeros(rows.G.shape[1]), weights=rows.G.new_zeros(m))
        alpha = sample_weights(n, m, dtype=torch.float64)
        z, w, steps = smoothed_weiszfeld(
            rows.G, alpha, iters=self.iters, nu=self.nu, ftol=self.ftol, init=self.init
        )
        return RuleResult(update=z, weights=w, diagnostics=Diagnostics(extra={"steps": steps}))

    def __repr__(self) -> str:
        return f"GeometricMedian(iters={self.iters}, nu={self.nu})"
