"""DnC, divide and conquer (Shejwalkar and Houmansadr 2021, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS, Algorithm 3;
docs/design.md, "DnC").

``niters`` times: draw ``b`` coordinates at random, centre the rows' sub-vectors on their mean,
take the top right singular vector ``v`` of the centred matrix and score each row by its
squared projection ``s_i = <g_i[r] - mu, v>^2``; keep the ``m - c * c_max`` rows with the lowest
scores. The update is the mean of the rows kept in every iteration. The coordinates are drawn
from the rule's own seeded generator, which is its state (so a resumed run draws the same).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import Defense, Diagnostics, FiniteRows, Rows, RuleResult
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count, positive_finite

__all__ = ["DnC", "dnc_scores"]


def _unit_scores(X: Tensor) -> tuple[Tensor, float]:
    """``(s, peak)``: DnC's scores of ``X / peak`` (``peak = max |X|``, so nothing overflows:
    the true scores are ``s * peak^2``, in the same order)."""
    Y = X.to(torch.float64)
    peak = float(Y.abs().max()) if Y.numel() else 0.0
    if not peak > 0:
        return torch.zeros(X.shape[0], dtype=torch.float64), 0.0
    Y = Y / peak
    Y = Y - Y.mean(dim=0)
    if not bool(Y.any()):
        return torch.zeros(X.shape[0], dtype=torch.float64), peak
    _, _, vh = torch.linalg.svd(Y, full_matrices=False)
    return (Y @ vh[0]) ** 2, peak


def dnc_scores(X: Tensor) -> Tensor:
    """Squared projections of the centred rows of ``X`` [m, b] on their top right singular
    vector (float64 [m]; all zero when the rows are identical, +inf where one overflows)."""
    s, peak = _unit_scores(X)
    return s * peak * peak  # floats: inf where it overflows (``peak**2`` would raise)


class DnC(Defense):
    """DnC aggregator (Shejwalkar and Houmansadr 2021) with its random generator as state.

    ``c_max``: clients assumed malicious; ``niters`` (1), ``b`` (10000 coordinates, all when P
    is smaller), ``c`` (filtering fraction, 1.0: remove ``c * c_max`` rows per iteration; the
    paper's defaults), ``seed``. ``weights``: ``1/|kept|`` on the rows kept; ``diagnostics``:
    ``selected`` (the kept rows), ``scores`` (the last iteration's).
    """

    name = "dnc"

    def __init__(
        self, c_max: int, niters: int = 1, b: int = 10000, c: float = 1.0, seed: int = 0
    ) -> None:
        self.c_max = as_count(c_max, "c_max")
        self.niters = as_count(niters, "niters", minimum=1)
        self.b = as_count(b, "b", minimum=1)
        self.c = positive_finite(c, "c")
        self.seed = as_count(seed, "seed")
        self.generator = torch.Generator().manual_seed(self.seed)

    def effective_c(self, fin: FiniteRows) -> int:
        """Rows removed per iteration: ``floor(c * c_max)``, below the finite row count."""
        removed = math.floor(self.c * self.c_max)
        if removed >= fin.m:
            raise ConfigError(
                f"DnC would remove {removed} of {fin.m} rows (c * c_max); use a smaller c or c_max"
            )
        return max(0, min(removed, fin.m_finite - 1))

    def rule(self, rows: Rows) -> RuleResult:
        """Filter by the singular-vector scores on random coordinates; average the survivors."""
        assert rows.c is not None
        X = rows.G
        m, P = X.shape
        kept = torch.ones(m, dtype=torch.bool)
        scores = torch.zeros(m, dtype=torch.float64)
        for _ in range(self.niters):
            cols = torch.randperm(P, generator=self.generator)[: min(self.b, P)]
            unit, peak = _unit_scores(X[:, cols.to(X.device)].cpu())
            scores = unit * peak * peak
            order = sorted(range(m), key=lambda i: (float(unit[i]), i))
            good = torch.zeros(m, dtype=torch.bool)
            good[order[: m - rows.c]] = True
            kept &= good
        if not bool(kept.any()):  # the intersections left nobody: keep the last iteration's
            kept = good
        w = kept.to(torch.float64) / float(kept.sum())
        update = weighted_mean(w.to(dtype=X.dtype, device=X.device), X)
        fin = rows.finite
        diagnostics = Diagnostics(
            scores=fin.scatter(scores, fill=float("inf")),
            selected=fin.rows_of_input(kept.nonzero().flatten()),
        )
        return RuleResult(update=update, weights=w, diagnostics=diagnostics)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (the coordinates drawn next)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if set(state) != {"generator"}:
            raise ConfigError(f"DnC state must hold 'generator', got keys {sorted(state)}")
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"DnC(c_max={self.c_max}, niters={self.niters}, b={self.b}, c={self.c})"
