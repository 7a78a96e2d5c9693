"""Inner Product Manipulation (Xie, Koyejo and Gupta 2020, "Fall of Empires: Breaking
Byzantine-tolerant SGD by Inner Product Manipulation", UAI; docs/design.md, "IPM").

Every attacker sends ``-eps * mu``, ``mu`` the mean of the benign gradients. A small ``eps``
(default 0.1, the paper's setting against Krum) keeps the malicious rows close to the benign
ones so that robust aggregators accept them, while the aggregate's inner product with the true
gradient shrinks or turns negative; a large ``eps`` amounts to sign flipping of the mean.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tesseract_fl.attacks.base import (
    AttackContext,
    Poison,
    benign_rows,
    check_honest,
    malicious_mask,
)
from tesseract_fl.validation import as_count, positive_finite

__all__ = ["IPM", "ipm"]


def _check_eps(eps: Any) -> float:
    return positive_finite(eps, "IPM eps")


def _ipm(G_benign: Tensor, num_malicious: int, eps: float) -> Tensor:
    """Rows without validation: ``-eps * mean(G_benign)`` repeated ``num_malicious`` times."""
    row = G_benign.detach().mean(dim=0) * (-eps)
    return row.expand(num_malicious, -1).clone()


def ipm(G_benign: Tensor, num_malicious: int, eps: float = 0.1) -> Tensor:
    """IPM rows ``[num_malicious, P]``, each ``-eps * mean of the benign rows G_benign [k, P]``."""
    c = as_count(num_malicious, "num_malicious", minimum=1)
    check_honest(G_benign, 0, min_benign=1)
    return _ipm(G_benign, c, _check_eps(eps))


class IPM:
    """Inner Product Manipulation (Xie et al. 2020): every attacker sends ``-eps`` times the
    mean of the benign rows ``G_honest[~ctx.malicious]``. Records ``eps``."""

    name = "ipm"

    def __init__(self, *, eps: float = 0.1) -> None:
        self.eps = _check_eps(eps)

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        """Every attacker sends ``-eps * mu`` of the benign rows."""
        c = ctx.num_malicious
        check_honest(G_honest, c, min_benign=1)
        mask = malicious_mask(G_honest.shape[0], c, ctx.malicious).to(G_honest.device)
        return Poison(_ipm(benign_rows(G_honest, mask), c, self.eps), {"eps": self.eps})

    def __repr__(self) -> str:
        return f"IPM(eps={self.eps:g})"
