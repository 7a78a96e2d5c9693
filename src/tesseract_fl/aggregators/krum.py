"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS; docs/design.md, "Krum and Multi-Krum").

``score_i`` = sum of the squared L2 distances from g_i to its ``m - c_max - 2`` nearest other
gradients; Krum returns the gradient with the smallest score, Multi-Krum(k) the mean of the k
best. All pairwise distances come from one Gram matrix ``G @ G.T`` (one BLAS call;
docs/design.md, "Performance"), combined in float64:
``d_ij = n_i + n_j - 2 g_ij`` clamped at 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.base import Defense, Diagnostics, FiniteRows, Rows, RuleResult
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.aggregators.kernels.gram import (
    nearest_sums,
    pairwise_sq_distances,
    sq_distances,
)
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.validation import as_count

__all__ = ["Krum", "krum", "krum_scores", "krum_select", "pairwise_sq_distances"]


def _check_neighbours(m: int, c_max: Any) -> int:
    c = as_count(c_max, "c_max")
    if m - c - 2 < 1:
        raise ConfigError(
            f"Krum needs m - c_max - 2 >= 1 (at least one neighbour), got m={m} and c_max={c} "
            f"(use c_max <= {m - 3} or more clients)"
        )
    return c


def krum_scores(D: Tensor, c_max: int) -> Tensor:
    """Krum scores from a squared-distance matrix ``D`` [m, m] -> float64 Tensor[m].

    ``score_i = sum of the m - c_max - 2 smallest d_ij, j != i`` (Blanchard et al. 2017, Sec. 4).
    Requires ``m - c_max - 2 >= 1`` (:class:`ConfigError`).
    """
    D = torch.as_tensor(D, dtype=torch.float64)
    if D.dim() != 2 or D.shape[0] != D.shape[1]:
        raise UpdateError(f"distance matrix must be square, got shape {tuple(D.shape)}")
    m = D.shape[0]
    c = _check_neighbours(m, c_max)
    return nearest_sums(D, m - c - 2)


def krum_select(scores: Tensor, k: int = 1) -> Tensor:
    """Indices of the ``k`` smallest scores, ascending by (score, index): ties go to lower index."""
    s = torch.as_tensor(scores, dtype=torch.float64).cpu().numpy()
    return torch.from_numpy(np.argsort(s, kind="stable")[:k].copy())


def _check_k(m: int, k: Any) -> int:
    kk = as_count(k, "k", minimum=1)
    if kk > m:
        raise ConfigError(f"Multi-Krum k must be between 1 and m={m}, got k={kk}")
    return kk


def effective_krum_c(fin: FiniteRows, c_max: Any) -> int:
    """c_max validated against the rows received, then reduced to ``max(0, m_finite - 3)`` when
    rows were excluded (hostile-row policy). With fewer than 3 finite rows the neighbour count
    is ``max(1, m_finite - 1)`` (one row: it is returned)."""
    c = _check_neighbours(fin.m, c_max)
    return max(0, min(c, fin.m_finite - 3))


def krum(G: Tensor, c_max: int, k: int = 1) -> Tensor:
    """Krum (``k = 1``) or Multi-Krum (``k > 1``) of ``G`` [m, P] -> Tensor[P].

    Krum returns the row with the smallest score (a copy of an input row); Multi-Krum the mean of
    the k rows with the smallest scores (Blanchard et al. 2017; El Mhamdi et al. 2018 for the
    name). Ties are broken by the lowest row index. Requires ``m - c_max - 2 >= 1`` and
    ``1 <= k <= m`` (:class:`ConfigError`). Rows with NaN/Inf are excluded, c_max and k reduced
    to fit the finite rows (:func:`effective_krum_c`); no finite row: the zero vector.
    """
    return Krum(c_max, k).aggregate(G).update


class Krum(Defense):
    """Krum / Multi-Krum aggregator (Blanchard et al. 2017); stateless.

    ``c_max``: clients assumed malicious; ``k``: rows averaged (1 = Krum). ``weights`` are
    one-hot on the selected row (``1/k`` on each of the k selected for Multi-Krum);
    ``diagnostics.scores`` are the float64 scores (+inf for excluded rows) and
    ``diagnostics.selected`` the selected rows. Rows so large that the scores would overflow
    float64 (e.g. 1e200) are scored on the matrix scaled by a power of two (the same selection;
    the recorded scores are then the scaled ones).
    """

    name = "krum"

    def __init__(self, c_max: int, k: int = 1) -> None:
        self.c_max = as_count(c_max, "c_max")
        self.k = as_count(k, "k", minimum=1)

    def effective_c(self, fin: FiniteRows) -> int:
        """:func:`effective_krum_c` (k is checked against the rows received too)."""
        c = effective_krum_c(fin, self.c_max)
        _check_k(fin.m, self.k)
        return c

    def rule(self, rows: Rows) -> RuleResult:
        """Scores from the pairwise distances; the k best rows, averaged."""
        assert rows.c is not None
        X = rows.G
        mf = X.shape[0]
        kk = min(self.k, mf)  # capped at the number of finite rows
        scores = nearest_sums(sq_distances(X), max(1, mf - rows.c - 2))
        sel = krum_select(scores, kk)
        w = torch.zeros(mf, dtype=X.dtype, device=X.device)
        w[sel.to(X.device)] = 1.0 / kk
        if kk == 1:
            update = X[int(sel[0])].detach().clone()
        else:
            update = weighted_mean(w, X.detach())
        fin = rows.finite
        diagnostics = Diagnostics(
            scores=fin.scatter(scores, fill=float("inf")), selected=fin.rows_of_input(sel)
        )
        return RuleResult(update=update, weights=w, diagnostics=diagnostics)

    def __repr__(self) -> str:
        return f"Krum(c_max={self.c_max}, k={self.k})"
