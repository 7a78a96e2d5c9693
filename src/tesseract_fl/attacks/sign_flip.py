"""Sign flipping (docs/design.md, "Sign flipping"; a standard baseline, e.g. Li et al. 2019,
"RSA: Byzantine-Robust Stochastic Aggregation Methods", AAAI; Allen-Zhu et al. 2021).

Each attacker sends the negation of its own honest gradient, times ``scale`` (default 1.0):
``rows = -scale * G_honest[malicious]``. It needs no knowledge of the benign clients.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tesseract_fl.attacks.base import AttackContext, Poison, check_honest, malicious_mask
from tesseract_fl.validation import positive_finite

__all__ = ["SignFlip", "sign_flip"]


def _check_scale(scale: Any) -> float:
    return positive_finite(scale, "sign-flip scale")


def sign_flip(G_own: Tensor, scale: float = 1.0) -> Tensor:
    """``-scale * G_own``: the attackers' own honest gradients ``[c, P]`` negated (new tensor)."""
    s = _check_scale(scale)
    check_honest(G_own, 0, min_benign=1)
    return G_own.detach() * (-s)


class SignFlip:
    """Sign flipping: each attacker sends ``-scale`` times its own honest row. Records ``scale``."""

    name = "sign_flip"

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = _check_scale(scale)

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        """Rows ``-scale * G_honest[ctx.malicious]`` in ascending attacker-row order."""
        c = ctx.num_malicious
        check_honest(G_honest, c, min_benign=0)
        mask = malicious_mask(G_honest.shape[0], c, ctx.malicious).to(G_honest.device)
        return Poison(G_honest.detach()[mask] * (-self.scale), {"scale": self.scale})

    def __repr__(self) -> str:
        return f"SignFlip(scale={self.scale:g})"
