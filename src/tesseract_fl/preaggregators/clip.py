"""Norm bounding against the round's median row norm: a safeguard against magnitude attacks.

    tau = multiplier * median_i ||g_i||_2          (over the finite rows)
    g_i <- g_i * min(1, tau / ||g_i||_2)

A row no longer than ``tau`` is untouched; a longer one keeps its direction at norm ``tau``.
With fewer than half of the rows malicious the median norm is a benign client's, so no attacker
can move the aggregate by more than ``multiplier`` benign norms, whatever the rule after it
(the same argument as norm-bounded aggregation, Sun et al. 2019, "Can you really backdoor
federated learning?", with the bound taken from the round itself as in ARC, Allouah et al.
2024). The paper's presets do not clip: TESSERACT's numbers there are without it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.errors import ConfigError

#: Default bound, in median row norms.
DEFAULT_MULTIPLIER = 3.0


def _peak_and_unit_norm(G: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: the largest magnitude, and the norm of the row divided by it (float64).

    ``norm = peak * unit`` with ``1 <= unit <= sqrt(P)``: the squares of a row divided by its
    peak cannot overflow, so rows of 1e200 in float64 or 3e38 in float32 are measured exactly.
    """
    G64 = G.detach().to(torch.float64)
    peak = G64.abs().amax(dim=1)
    safe = torch.where((peak > 0) & torch.isfinite(peak), peak, torch.ones_like(peak))
    return peak, torch.linalg.vector_norm(G64 / safe[:, None], dim=1)


def row_norms(G: Tensor) -> Tensor:
    """Euclidean norm of each row of ``G`` as float64: finite for every finite row short of
    float64's range, NaN or Inf for rows holding NaN/Inf."""
    norms, _, _ = _norms(G)
    return norms


def _norms(G: Tensor) -> tuple[Tensor, Tensor, dict[int, tuple[float, float]]]:
    """``(norms, finite-row mask, {row: (peak, unit)})``: one pass in ``G``'s dtype, and the
    exact peak-scaled measure only for the rows whose squares overflowed there."""
    norms = torch.linalg.vector_norm(G.detach(), dim=1).to(torch.float64).cpu()
    finite = torch.isfinite(norms)
    scaled: dict[int, tuple[float, float]] = {}
    if not bool(finite.all()):
        rows = (~finite).nonzero().flatten()
        peak, unit = _peak_and_unit_norm(G.index_select(0, rows.to(G.device)))
        for k, row in enumerate(rows.tolist()):
            p, u = float(peak[k]), float(unit[k])
            if math.isfinite(p) and math.isfinite(u):  # a finite row that overflowed
                finite[row] = True
                norms[row] = p * u
                scaled[row] = (p, u)
    return norms, finite, scaled


def clip_to_median_norm(G: Tensor, multiplier: float) -> tuple[Tensor, Tensor, float]:
    """Rows of ``G`` clipped to ``multiplier`` times the median finite row norm.

    Returns ``(clipped G, per-row scale factor in float64, tau)``. Rows holding NaN/Inf get
    factor 1 (they pass through for the rule's hostile-row policy); with no finite row nothing
    changes. Rows with factor 1 keep the input's bits.
    """
    norms, finite, scaled = _norms(G)
    if not bool(finite.any()):
        return G, torch.ones_like(norms), math.nan
    tau = multiplier * float(torch.quantile(norms[finite], 0.5))
    scale = torch.ones_like(norms)
    over = finite & (norms > tau)
    if not (math.isfinite(tau) and bool(over.any())):
        return G, scale, tau
    for row in over.nonzero().flatten().tolist():
        if row in scaled:  # (tau / peak) / unit: finite even where peak * unit overflows
            peak, unit = scaled[row]
            scale[row] = (tau / peak) / unit
        else:
            scale[row] = tau / float(norms[row])
    # One multiply: x * 1.0 is x exactly, so unclipped rows keep their bits. A factor below
    # the dtype's smallest normal number (a float32 row of ~1e38 clipped to ~1) is applied in
    # float64 instead, where it cannot underflow.
    tiny = torch.finfo(G.dtype).tiny
    col = scale.to(device=G.device)
    out = G * col.to(G.dtype)[:, None]
    small = (col < tiny).nonzero().flatten()
    if small.numel():
        out[small] = (G[small].to(torch.float64) * col[small][:, None]).to(G.dtype)
    return out, scale, tau


class MedianNormClip:
    """``clip``: bound every row's norm by ``multiplier`` x the round's median row norm."""

    name = "clip"

    def __init__(self, multiplier: float = DEFAULT_MULTIPLIER) -> None:
        if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
            raise ConfigError(f"clip.multiplier must be a number, got {multiplier!r}")
        if not (math.isfinite(multiplier) and multiplier >= 1.0):
            raise ConfigError(f"clip.multiplier must be a finite number >= 1, got {multiplier!r}")
        self.multiplier = float(multiplier)

    def __repr__(self) -> str:
        return f"MedianNormClip(multiplier={self.multiplier})"

    def transform(self, G: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Clip the rows; the record holds ``clip_tau`` and ``clip_scale`` (one per row)."""
        if not isinstance(G, Tensor) or G.dim() != 2 or not G.is_floating_point():
            return G, {}  # the rule's layout check names the problem
        out, scale, tau = clip_to_median_norm(G, self.multiplier)
        return out, {"clip_tau": tau, "clip_scale": scale.tolist()}

    def state_dict(self) -> dict[str, Any]:
        """Stateless: an empty dict."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accept the (empty) state of :meth:`state_dict`."""
        if state:
            raise ConfigError(f"clip is stateless; unexpected state keys {sorted(state)}")
