"""Gaussian noise attack (docs/design.md, "Gaussian noise"; the usual untargeted baseline,
e.g. Blanchard et al. 2017, "Machine Learning with Adversaries", NeurIPS).

Each attacker sends an independent ``N(0, sigma^2)`` draw per coordinate. Default
``sigma = 1.0``: far above typical per-coordinate gradient magnitudes, so the noise dominates the
aggregate if a defense lets it through, yet not so large that every norm- or distance-based
defense rejects the rows trivially (much larger values test little beyond that). Draws come from
the run's generator on the CPU (results do not depend on the device) and are then moved to the
gradients' device and dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tesseract_fl.attacks.base import AttackContext, Poison, check_honest, malicious_mask
from tesseract_fl.errors import UpdateError
from tesseract_fl.validation import as_count, positive_finite

__all__ = ["GaussianNoise", "gaussian_noise"]


def _check_sigma(sigma: Any) -> float:
    return positive_finite(sigma, "Gaussian attack sigma")


def _noise(
    num_malicious: int, P: int, sigma: float, generator: torch.Generator | None, like: Tensor
) -> Tensor:
    z = torch.randn((num_malicious, P), generator=generator, dtype=torch.float32)
    return (z * sigma).to(device=like.device, dtype=like.dtype)


def gaussian_noise(
    num_malicious: int,
    P: int,
    sigma: float = 1.0,
    generator: torch.Generator | None = None,
    like: Tensor | None = None,
) -> Tensor:
    """``[num_malicious, P]`` i.i.d. ``N(0, sigma^2)`` draws from ``generator`` (CPU, float32),
    returned on ``like``'s device and dtype (float32 CPU when ``like`` is None)."""
    c = as_count(num_malicious, "num_malicious", minimum=1)
    p = as_count(P, "P", minimum=1)
    s = _check_sigma(sigma)
    ref = torch.empty(0) if like is None else like
    if not ref.is_floating_point():
        raise UpdateError(f"like must be a floating-point tensor, got dtype {ref.dtype}")
    return _noise(c, p, s, generator, ref)


class GaussianNoise:
    """Gaussian noise attack: each attacker sends ``N(0, sigma^2)`` per coordinate, drawn from
    ``ctx.generator``. Records ``sigma``."""

    name = "gaussian"

    def __init__(self, *, sigma: float = 1.0) -> None:
        self.sigma = _check_sigma(sigma)

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        """``[c, P]`` noise rows in G_honest's dtype and device."""
        c = ctx.num_malicious
        check_honest(G_honest, c, min_benign=0)
        m, P = G_honest.shape
        malicious_mask(m, c, ctx.malicious)  # validates the mask against G_honest
        return Poison(_noise(c, P, self.sigma, ctx.generator, G_honest), {"sigma": self.sigma})

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma:g})"
