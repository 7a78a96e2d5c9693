"""Full-Trim: the full-knowledge directed-deviation attack on trimmed mean / median (Fang et al.
2020, "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX Security,
Sec. 4; docs/design.md, "Full-Trim").

With ``s_j = sign(sum_i g_ij)`` the benign direction of coordinate j and ``max_j``/``min_j`` the
extremes of the honest gradients, the attack pushes every coordinate past the extreme *opposite*
to the benign direction: ``directed_j = min_j`` if ``s_j > 0`` else ``max_j``; each attacker sends
``directed_j / b_j`` if ``s_j * directed_j > 0`` else ``directed_j * b_j``, with ``b_j ~ U(1, 2)``
drawn independently per attacker and coordinate. The statistics use every client's honest
gradient (attackers included), as in the authors' code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import check_layout, finite
from tesseract_fl.attacks.base import AttackContext, Poison, check_honest, uniform
from tesseract_fl.errors import ConfigError

__all__ = ["FullTrim", "full_trim", "full_trim_direction"]


def full_trim_direction(
    G_honest: Tensor, column_sums: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(s, directed)``: the benign direction ``sign(sum_i g_i)`` and the per-coordinate extreme
    opposite to it (``min`` where ``s > 0``, else ``max``) of ``G_honest`` [m, P]
    (``column_sums``: ``G_honest.sum(dim=0)`` when the caller has it)."""
    s = torch.sign(G_honest.sum(dim=0) if column_sums is None else column_sums)
    directed = torch.where(s > 0, G_honest.amin(dim=0), G_honest.amax(dim=0))
    return s, directed


def full_trim(
    G_benign: Tensor, num_malicious: int, generator: torch.Generator | None = None
) -> Tensor:
    """Full-Trim rows ``[num_malicious, P]`` from every client's honest gradients ``G_benign``.

    Each row lies beyond the honest extreme opposite to the honest direction, within a factor 2:
    where that extreme has the benign sign it is shrunk towards 0 by ``b`` (``directed / b``),
    otherwise it is stretched away from 0 (``directed * b``), ``b ~ U(1, 2)`` per entry.
    """
    check_layout(G_benign)
    # The column sums the direction needs are finite only if G is (NaN/Inf propagate), so they
    # stand in for the finiteness pass; a non-finite sum gets the exact check (which also
    # tells an overflow of finite entries from a NaN/Inf entry).
    sums = G_benign.sum(dim=0)
    if not finite(sums):
        check_honest(G_benign, 0)
    if isinstance(num_malicious, bool) or not isinstance(num_malicious, int) or num_malicious < 1:
        raise ConfigError(f"num_malicious must be a positive integer, got {num_malicious!r}")
    s, directed = full_trim_direction(G_benign, sums)
    b = uniform((num_malicious, G_benign.shape[1]), 1.0, 2.0, generator, G_benign)
    same_sign = (s * directed > 0).unsqueeze(0)
    # where(same_sign, directed / b, directed * b) with one temporary instead of three: the
    # [c, P] passes dominate the attack's time (benchmarks/attacks.py).
    shrunk = directed / b
    stretched = b.mul_(directed)
    return torch.where(same_sign, shrunk, stretched, out=stretched)


class FullTrim:
    """Full-Trim attack (Fang et al. 2020) as a model-poisoning attack object."""

    name = "full_trim"

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        """Every attacker's Full-Trim row (independent ``b`` draws) from the round's honest rows."""
        return Poison(full_trim(G_honest, ctx.num_malicious, ctx.generator))

    def __repr__(self) -> str:
        return "FullTrim()"
