"""CAF, the covariance-bound agnostic filter (Allouah, Guerraoui and Stephan 2025, "Towards
Trustworthy Federated Learning with Untrusted Participants", ICML; ByzFL's ``CAF``;
docs/design.md, "CAF").

Start with weights ``c_i = 1``. While ``sum_i c_i > m - 2 c_max``: take the weighted mean
``mu_c = sum_i c_i g_i / sum_i c_i``, the top eigenpair ``(lambda, v)`` of the weighted covariance
``Sigma_c = sum_i c_i (g_i - mu_c)(g_i - mu_c)^T / sum_i c_i``, the squared projections
``tau_i = ((g_i - mu_c) . v)^2``, and shrink ``c_i <- c_i (1 - tau_i / max_j tau_j)``. Return the
``mu_c`` of the iteration with the smallest ``lambda``.

``Sigma_c`` is ``P x P``; its top eigenpair is that of the ``m x m`` matrix
``K = W^1/2 D D^T W^1/2 / sum c`` (``D`` the centred rows, ``W = diag(c)``), so every iteration
works on the Gram matrix of the rows centred once on their mean (summed in float64): exact,
deterministic, and ``O(m^2 P)`` in all.
(ByzFL approximates ``v`` by one power step from a random vector; ours is the exact eigenvector.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import Defense, FiniteRows, Rows, RuleResult, finite
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.aggregators.kernels.gram import gram64_scaled
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count

__all__ = ["CAF", "caf", "caf_weights"]

#: A guard, not part of the rule: each iteration zeroes the weight of the row with the largest
#: projection, so the loop ends within about m iterations unless that row's weight was already
#: ~0; the cap stops such a slow geometric shrinking.
_MAX_ITERS_PER_ROW = 100


def caf_weights(G: Tensor, c_max: int) -> tuple[Tensor, int]:
    """CAF's filter on ``G`` [m, P]: the normalized weights of the returned mean (float64 [m],
    summing to 1) and the number of filtering iterations run."""
    m = G.shape[0]
    gram = _centred_gram(G.detach())
    c = torch.ones(m, dtype=torch.float64)
    best_w = c / m
    best_lam = float("inf")
    iters = 0
    while float(c.sum()) > m - 2 * c_max and iters < _MAX_ITERS_PER_ROW * m:
        iters += 1
        w = c / c.sum()
        # Gram of the centred rows D = X - 1 w^T X:  D D^T = (I - 1 w^T) gram (I - w 1^T)
        gw = gram @ w
        dd = gram - gw[:, None] - gw[None, :] + w @ gw
        sq = c.sqrt()
        K = sq[:, None] * dd * sq[None, :] / c.sum()
        evals, evecs = torch.linalg.eigh(K)
        lam = float(evals[-1])
        if lam < best_lam:
            best_lam, best_w = lam, w
        if not lam > 0:  # the weighted rows coincide: nothing left to filter
            break
        # v = D^T W^1/2 u / ||.||, so (d_i . v) = (dd W^1/2 u)_i / sqrt(lam * sum c)
        proj = (dd @ (sq * evecs[:, -1])) / (lam * float(c.sum())) ** 0.5
        tau = proj * proj
        c = c * (1.0 - tau / tau.max())
    return best_w, iters


def _centred_gram(X: Tensor) -> Tensor:
    """The float64 Gram matrix [m, m] of the rows centred on their plain mean, up to a power-of-2
    scale (the filter is translation- and scale-free, so either changes nothing). Centring first
    keeps the later re-centring on ``mu_c`` free of cancellation; :func:`gram64_scaled` sums in
    float64 and never overflows. Rows whose mean overflows the dtype are centred in float64."""
    D = X - X.mean(dim=0)
    if not finite(D):
        X64 = X.to(torch.float64)
        D = (X64 * 0.5**512) - (X64 * 0.5**512).mean(dim=0)  # exact scaling, then centre
    K, _ = gram64_scaled(D, float(X.shape[0]) ** 2)
    K = K.cpu()
    return 0.5 * (K + K.T)  # the blocked products may differ in the last bit across the diagonal


def caf(G: Tensor, c_max: int) -> Tensor:
    """CAF of ``G`` [m, P] -> Tensor[P] (Allouah et al. 2025); needs ``m > 2 c_max``; rows with
    NaN/Inf are excluded and c_max reduced to fit the finite rows."""
    return CAF(c_max).aggregate(G).update


class CAF(Defense):
    """CAF aggregator (Allouah et al. 2025); stateless. ``c_max``: clients assumed malicious
    (needs ``m > 2 c_max``). ``weights``: the returned mean's normalized ``c_i``;
    ``diagnostics.extra["iterations"]``: filtering iterations run."""

    name = "caf"

    def __init__(self, c_max: int) -> None:
        self.c_max = as_count(c_max, "c_max")

    def effective_c(self, fin: FiniteRows) -> int:
        if 2 * self.c_max >= fin.m:
            raise ConfigError(f"CAF needs m > 2 c_max, got m={fin.m}, c_max={self.c_max}")
        return min(self.c_max, (fin.m_finite - 1) // 2)

    def rule(self, rows: Rows) -> RuleResult:
        """Filter along the covariance's top eigenvector; the mean of the best iteration."""
        assert rows.c is not None
        w, iters = caf_weights(rows.G, rows.c)
        update = weighted_mean(w.to(dtype=rows.G.dtype, device=rows.G.device), rows.G)
        out = RuleResult(update=update, weights=w)
        out.diagnostics.extra["iterations"] = iters
        return out

    def __repr__(self) -> str:
        return f"CAF(c_max={self.c_max})"
