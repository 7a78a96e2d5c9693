"""FLAME (Nguyen et al. 2022, "FLAME: Taming Backdoors in Federated Learning", USENIX Security,
Sec. 4 and Algorithm 1; docs/design.md, "FLAME").

Three steps on the round's updates ``g_i``:

1. **Clustering.** HDBSCAN on the pairwise cosine distances ``1 - cos(g_i, g_j)`` with
   ``min_cluster_size = m // 2 + 1`` and ``min_samples = 1`` (single cluster allowed): the rows
   of the largest cluster are admitted, the rest (other clusters, noise) are left out. If HDBSCAN
   finds no cluster, every row is admitted (our choice; the paper does not say).
2. **Adaptive clipping.** ``S = median_i ||g_i||`` over all rows; each admitted row is scaled by
   ``min(1, S / ||g_i||)``.
3. **Noise.** The mean of the clipped admitted rows plus ``N(0, (lambda S)^2)`` per coordinate
   (``noise_lambda``, the paper's ``lambda = 0.001`` for image classification). FLAME adds the
   noise to the global model; with our server step ``theta -= lr * update`` the same ``lambda``
   on the update gives the same noise relative to the clipping bound.

HDBSCAN is scikit-learn's (``sklearn.cluster.HDBSCAN``, already a dependency for the Breast
Cancer data). The noise comes from the rule's own seeded generator, its state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.base import Defense, Diagnostics, Rows, RuleResult
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.aggregators.kernels.gram import gram64_scaled
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count

__all__ = ["FLAME", "cosine_distances", "flame_admitted"]


def _gram_norms(G: Tensor) -> tuple[Tensor, Tensor]:
    """The rows' float64 Gram matrix (of ``G * 2**-e``, never overflowing) and their norms
    ``||g_i||`` (float64, capped at float64's maximum)."""
    K, e = gram64_scaled(G.detach(), float(G.shape[0]))
    K = K.cpu()
    K = 0.5 * (K + K.T)  # the blocked products may differ in the last bit across the diagonal
    norms = K.diagonal().clamp(min=0.0).sqrt() * 2.0**e
    return K, norms.nan_to_num(posinf=torch.finfo(torch.float64).max)


def cosine_distances(G: Tensor, gram: Tensor | None = None) -> np.ndarray:
    """``1 - cos(g_i, g_j)`` for the rows of ``G`` [m, P] (float64 numpy [m, m], symmetric, zero
    diagonal; a zero row is at distance 1 from every other row), from the rows' Gram matrix."""
    K = _gram_norms(G)[0] if gram is None else gram
    n = K.diagonal().clamp(min=0.0).sqrt()
    zero = n == 0
    safe = torch.where(zero, torch.ones_like(n), n)
    d = (1.0 - K / safe[:, None] / safe[None, :]).clamp_(0.0, 2.0)
    d[zero, :] = 1.0
    d[:, zero] = 1.0
    d.fill_diagonal_(0.0)
    return d.numpy()


def flame_admitted(G: Tensor, gram: Tensor | None = None) -> np.ndarray:
    """Bool [m]: the rows in HDBSCAN's largest cluster of the cosine distances (all rows when it
    finds none, or when ``m < 3``); ``gram``: the rows' Gram matrix when already computed."""
    m = G.shape[0]
    if m < 3:
        return np.ones(m, dtype=bool)
    from sklearn.cluster import HDBSCAN

    labels = HDBSCAN(
        metric="precomputed",
        min_cluster_size=m // 2 + 1,
        min_samples=1,
        allow_single_cluster=True,
        copy=True,  # the distance matrix is ours; explicit (sklearn's default changes in 1.10)
    ).fit_predict(cosine_distances(G, gram))
    found = labels[labels >= 0]
    if found.size == 0:
        return np.ones(m, dtype=bool)
    counts = np.bincount(found)
    return np.asarray(labels == int(np.argmax(counts)))  # the largest (lowest label on ties)


class FLAME(Defense):
    """FLAME aggregator (Nguyen et al. 2022) with its noise generator as state.

    ``noise_lambda``: noise std as a multiple of the clipping bound (0.001; 0 for none);
    ``seed``: the generator's. ``weights``: ``min(1, S/||g_i||) / |admitted|`` on the admitted
    rows; ``diagnostics``: ``selected`` (admitted rows), ``extra["clip_bound"]`` (``S``),
    ``extra["noise_std"]``.
    """

    name = "flame"

    def __init__(self, noise_lambda: float = 0.001, seed: int = 0) -> None:
        lam = float(noise_lambda)
        if isinstance(noise_lambda, bool) or not np.isfinite(lam) or lam < 0:
            raise ConfigError(f"noise_lambda must be a finite number >= 0, got {noise_lambda!r}")
        self.noise_lambda = lam
        self.seed = as_count(seed, "seed")
        self.generator = torch.Generator().manual_seed(self.seed)

    def rule(self, rows: Rows) -> RuleResult:
        """Cluster, clip to the median norm, average, add noise."""
        X = rows.G
        gram, norms = _gram_norms(X)  # one pass over the rows for the cosines and the norms
        admitted = torch.from_numpy(flame_admitted(X, gram))
        bound = float(norms.median()) if norms.numel() else 0.0
        scale = torch.where(
            norms > bound, bound / torch.where(norms > 0, norms, 1.0), torch.ones_like(norms)
        )
        w = torch.where(admitted, scale, torch.zeros_like(scale)) / float(admitted.sum())
        update = weighted_mean(w.to(dtype=X.dtype, device=X.device), X)
        std = self.noise_lambda * bound
        if std > 0:
            noise = torch.randn(X.shape[1], generator=self.generator, dtype=torch.float64)
            # added in float64 and kept in the dtype's range: rows near the dtype's maximum
            # must not turn the update into inf (hostile-input policy)
            big = float(torch.finfo(X.dtype).max)
            noisy = update.to(torch.float64) + std * noise.to(update.device)
            update = noisy.clamp(-big, big).to(X.dtype)
        fin = rows.finite
        diagnostics = Diagnostics(selected=fin.rows_of_input(admitted.nonzero().flatten()))
        diagnostics.extra.update({"clip_bound": bound, "noise_std": std})
        return RuleResult(update=update, weights=w, diagnostics=diagnostics)

    def state_dict(self) -> dict[str, Any]:
        """The noise generator's state."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"generator"}:
            raise ConfigError(f"FLAME state must hold 'generator', got keys {sorted(state)}")
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"FLAME(noise_lambda={self.noise_lambda:g})"
