"""Bucketing (Karimireddy, He and Jaggi 2022, "Byzantine-Robust Learning on Heterogeneous
Datasets via Bucketing", ICLR, Algorithm 1; ByzFL's ``Bucketing``; docs/design.md, "bucketing").

The rows are shuffled and cut into ``ceil(m / s)`` buckets of ``s`` consecutive rows (the last
one smaller when ``s`` does not divide ``m``); the rule after it aggregates the buckets' means:

    perm = a random permutation of the rows,    b_k = mean(g_perm[k s : (k + 1) s])

Unlike the other pre-aggregators it changes the number of rows, so it returns the mixing matrix
``M`` [buckets, m] with ``b = M @ G``; the composed defense maps the rule's bucket weights back
to the clients (``w_clients = M^T w_buckets``). The permutation comes from the bucketing's own
seeded generator, which is its state. A bucket holding a row with NaN/Inf is such a row itself
(the rule excludes it, so all of its clients get weight 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import check_layout
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count

__all__ = ["Bucketing", "bucket_matrix"]


def bucket_matrix(perm: Tensor, s: int) -> Tensor:
    """The mixing matrix [ceil(m/s), m] (float64) of buckets of ``s`` consecutive rows of
    ``perm``: row k holds ``1/|bucket k|`` at its members."""
    m = perm.numel()
    B = -(-m // s)
    M = torch.zeros(B, m, dtype=torch.float64)
    for k in range(B):
        members = perm[k * s : (k + 1) * s]
        M[k, members] = 1.0 / members.numel()
    return M


class Bucketing:
    """``bucketing``: average random buckets of ``s`` rows before the rule (``s`` >= 1)."""

    name = "bucketing"

    def __init__(self, s: int = 2, seed: int = 0) -> None:
        self.s = as_count(s, "bucketing.s", minimum=1)
        self.seed = as_count(seed, "bucketing.seed")
        self.generator = torch.Generator().manual_seed(self.seed)

    def __repr__(self) -> str:
        return f"Bucketing(s={self.s})"

    def mix(self, G: Tensor) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """``(bucket means [B, P], M [B, m] float64, report)``; means that overflow G's dtype
        (finite rows near its limit) are recomputed so that they cannot. A wrong layout is the
        rule's :class:`~tesseract_fl.errors.UpdateError`."""
        check_layout(G)
        m = G.shape[0]
        perm = torch.randperm(m, generator=self.generator)
        M = bucket_matrix(perm, self.s)
        out = M.to(device=G.device, dtype=G.dtype) @ G
        finite_in = torch.isfinite(G).all(dim=1).cpu()
        for k in (~torch.isfinite(out).all(dim=1)).nonzero().flatten().tolist():
            members = M[k] > 0
            if bool(finite_in[members].all()):  # an overflow, not a hostile row
                out[k] = weighted_mean(M[k].to(device=G.device, dtype=G.dtype), G)
        return out, M, {"buckets": M.shape[0]}

    def transform(self, G: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Not usable alone: bucketing changes the rows (see :meth:`mix`)."""
        raise ConfigError("bucketing changes the number of rows: use it in front of a rule")

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (the permutation drawn next)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if state:
            self.generator.set_state(state["generator"])
