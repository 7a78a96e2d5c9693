"""Centered clipping (Karimireddy, He and Jaggi 2021, "Learning from History for Byzantine
Robust Optimization", ICML, Eq. 2; ByzFL's ``CenteredClipping``; docs/design.md, "Centered
clipping").

From a reference point ``v_0``, ``iters`` times:

    v_{l+1} = v_l + (1/m) sum_i clip_tau(g_i - v_l),    clip_tau(x) = x min(1, tau / ||x||)

The reference is the previous round's aggregate (the paper's momentum reference; zeros in the
first round), so it is the rule's state. The paper's clients send momentum; here they send what
the round gives them (gradients in the paper's FedSGD setting), and the server keeps no
momentum of its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import AggregationContext, Defense, Rows, RuleResult
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.aggregators.kernels.gram import distances_to
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.validation import as_count, positive_finite

__all__ = ["CenteredClipping", "centered_clipping"]


def centered_clipping(G: Tensor, v: Tensor, tau: float, iters: int) -> tuple[Tensor, Tensor]:
    """``(v_L, c)``: ``iters`` centered-clipping steps from ``v`` on the rows of ``G`` [m, P],
    and the last step's per-row coefficients ``c_i = min(1, tau / ||g_i - v||) / m`` (float64).

    A step is ``v + sum_i c_i (g_i - v) = (1 - sum_i c_i) v + sum_i c_i g_i``: one pass for the
    distances (:func:`~.kernels.gram.distances_to`) and one weighted sum of the rows
    (:func:`~.fedsgd.weighted_mean`, which cannot overflow), with no ``[m, P]`` temporary.
    """
    m = G.shape[0]
    c = torch.zeros(m, dtype=torch.float64)
    for _ in range(iters):
        norms = distances_to(G, v)
        scale = torch.where(norms > tau, tau / norms, torch.ones_like(norms))
        c = scale / m
        keep = 1.0 - float(c.sum())
        v = v * keep + weighted_mean(c.to(device=G.device, dtype=G.dtype), G)
    return v, c


class CenteredClipping(Defense):
    """Centered clipping aggregator (Karimireddy et al. 2021) with its reference in its state.

    ``tau``: clipping radius (> 0); ``iters``: steps per round (>= 1). ``weights``: the last
    step's coefficients ``c_i`` (they sum to at most 1: the rest of the update is the
    reference). State: ``reference`` (the last aggregate, ``None`` before the first round).
    """

    name = "centered_clipping"

    def __init__(self, tau: float = 10.0, iters: int = 1) -> None:
        self.tau = positive_finite(tau, "tau")
        self.iters = as_count(iters, "iters", minimum=1)
        self.reference: Tensor | None = None

    def check_input(self, G: Tensor, ids: Tensor, ctx: AggregationContext) -> None:
        """Every round has the columns of the reference."""
        if self.reference is not None and self.reference.shape[0] != G.shape[1]:
            raise UpdateError(
                f"G has P={G.shape[1]} columns but the reference has {self.reference.shape[0]}"
            )

    def rule(self, rows: Rows) -> RuleResult:
        """``iters`` clipping steps around the last aggregate; it becomes the next reference."""
        G = rows.G
        v = self.reference
        v = torch.zeros(G.shape[1], dtype=G.dtype) if v is None else v.to(G.dtype)
        update, c = centered_clipping(G, v.to(G.device), self.tau, self.iters)
        self.reference = update.detach().cpu().clone()
        return RuleResult(update=update, weights=c)

    def state_dict(self) -> dict[str, Any]:
        """The reference point (a copy)."""
        return {"reference": None if self.reference is None else self.reference.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (ConfigError for a malformed one)."""
        if set(state) - {"reference"}:
            raise ConfigError(f"unexpected centered_clip state keys {sorted(set(state))}")
        ref = state.get("reference")
        if ref is not None:
            ref = torch.as_tensor(ref).detach()
            if ref.dim() != 1 or not bool(torch.isfinite(ref).all()):
                raise ConfigError("centered_clip reference must be a finite 1-D tensor")
            ref = ref.clone()
        self.reference = ref

    def __repr__(self) -> str:
        return f"CenteredClipping(tau={self.tau}, iters={self.iters})"
