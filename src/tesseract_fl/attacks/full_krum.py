"""Full-Krum: the full-knowledge directed-deviation attack on Krum (Fang et al. 2020, USENIX
Security, Sec. 4.2 "Attacking Krum"; docs/design.md, "Full-Krum").

Attacker 0 sends ``-lambda * s`` with ``s = sign(sum of the honest gradients)``; lambda starts at
the paper's upper bound (Fang et al., Theorem 1 / Eq. 5)::

    1/((m - 2c - 1) sqrt(P)) * min_{i benign} sum_{l in the m-c-2 benign nearest to i} ||g_l - g_i||
      + 1/sqrt(P) * max_{i benign} ||g_i||

and is halved until Krum, run on the round's matrix with the attackers' rows replaced, selects a
malicious row; below ``1e-5`` the attack gives up for the round and the attackers send their honest
gradients. The other ``c - 1`` attackers send the same vector plus U(-eps, eps) noise,
``eps = 1e-4 / P``, so that the rows are distinct yet close. We follow the paper, not the authors'
code, which places the square root differently and tests the selection with an off-by-one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.kernels.gram import (
    fits,
    nearest_sums_np,
    sq_distances,
    sq_distances_from_gram,
)
from tesseract_fl.aggregators.krum import krum_select
from tesseract_fl.attacks.base import AttackContext, Poison, check_honest, malicious_mask, uniform
from tesseract_fl.errors import ConfigError

__all__ = ["FullKrum", "full_krum", "full_krum_search", "lambda_upper_bound"]

#: Below this lambda the attack gives up for the round (Fang et al.'s threshold).
LAMBDA_MIN = 1e-5


def lambda_upper_bound(G_benign_only: Tensor, num_clients: int, num_malicious: int) -> float:
    """Fang et al.'s upper bound on lambda from the benign rows [m - c, P] (module docstring)."""
    D = sq_distances(G_benign_only).numpy()
    norms = G_benign_only.double().norm(dim=1).cpu().numpy()
    return _bound_from_gram(D, norms, G_benign_only.shape[1], num_clients, num_malicious)


def _bound_from_gram(D: np.ndarray, norms: np.ndarray, P: int, m: int, c: int) -> float:
    """The bound from the benign squared distances ``D`` and norms; with fewer than
    ``m - c - 2`` other benign rows the sum runs over all of them."""
    if m - 2 * c - 1 < 1:
        raise ConfigError(f"Full-Krum needs m - 2c - 1 >= 1, got m={m} and c={c}")
    n = D.shape[0]
    dist = np.sqrt(np.maximum(D, 0.0))
    np.fill_diagonal(dist, np.inf)
    k = max(0, min(m - c - 2, n - 1))
    near = np.sort(dist, axis=1)[:, :k].sum(axis=1) if k > 0 else np.zeros(n)
    return float(near.min()) / ((m - 2 * c - 1) * math.sqrt(P)) + float(norms.max()) / math.sqrt(P)


def _krum_pick(D: np.ndarray, c_max: int) -> int:
    """Row Krum selects from the squared distances ``D`` (its scores and tie-break)."""
    scores = nearest_sums_np(D, D.shape[0] - c_max - 2)
    return int(krum_select(torch.from_numpy(scores), 1)[0])


def _krum_winner(G: Tensor, c_max: int) -> int:
    """Row Krum selects on ``G`` (same distances, scores and tie-break as the aggregator)."""
    return _krum_pick(sq_distances(G).numpy(), c_max)


def _krum_winner_from_gram(K: Tensor, c_max: int) -> int | None:
    """:func:`_krum_winner` from the attacked matrix's float32 Gram matrix ``K``, or None where
    the aggregator would leave its float32 path (an overflowing product: it recomputes)."""
    m = K.shape[0]
    gram = K.to(device="cpu", dtype=torch.float64)
    if not (bool(torch.isfinite(gram).all()) and fits(gram, 4.0 * max(m, 1))):
        return None
    return _krum_pick(sq_distances_from_gram(gram).numpy(), c_max)


#: Whether, for a round's shape, the Gram matrix assembled from sub-block products equals the
#: one BLAS computes for the whole attacked matrix, bit for bit (checked once per shape).
_ASSEMBLY_EXACT: dict[tuple[Any, ...], bool] = {}


class _AttackedGram:
    """Squared distances of the attacked matrix for any lambda from one float64 Gram matrix.

    The attacked rows are ``noise_k - lambda * s``, so every inner product of the attacked matrix
    is a quadratic in lambda of inner products among the benign rows, ``s`` and the noise rows:
    the halving search costs one ``[m + 1, P]`` Gram product instead of one per lambda.
    """

    def __init__(self, G: Tensor, mask: Tensor, s: Tensor, noise: Tensor) -> None:
        # Products in G's dtype by BLAS without copying G (as the aggregator computes its Gram),
        # combined in float64.
        ben = (~mask).cpu().numpy()
        Y = torch.cat([s.unsqueeze(0), noise]).to(G.dtype)
        self.G, self.mask = G, mask
        self.mal_idx = mask.nonzero().flatten()
        self.K = G @ G.T  # in G's dtype: the aggregator's products for the benign rows
        Kgg = self.K.double().cpu().numpy()
        Kyg = (Y @ G.T).double().cpu().numpy()
        Kyy = (Y @ Y.T).double().cpu().numpy()
        nb = int(ben.sum())
        self.Kbb = Kgg[np.ix_(ben, ben)]
        self.kbs = Kyg[0, ben]
        self.Knb = Kyg[1:, ben]
        self.ss = Kyy[0, 0]
        self.sn = Kyy[0, 1:]
        self.Knn = Kyy[1:, 1:]
        mal = mask.cpu().numpy()
        self.order = np.empty(mask.numel(), dtype=np.int64)  # original row -> stacked row
        self.order[~mal] = np.arange(nb)
        self.order[mal] = nb + np.arange(noise.shape[0])

    @staticmethod
    def _distances(F: np.ndarray) -> np.ndarray:
        norms = np.diag(F).copy()
        D = norms[:, None] + norms[None, :] - 2.0 * F
        np.maximum(D, 0.0, out=D)
        np.fill_diagonal(D, 0.0)
        return D

    def attacked_gram(self, rows: Tensor) -> Tensor:
        """``X @ X.T`` for ``X`` = G with the malicious rows replaced by ``rows``, from the benign
        rows' products already computed and two small ones (``rows @ G.T``, ``rows @ rows.T``)."""
        mi = self.mal_idx
        R = rows @ self.G.T
        R[:, mi] = rows @ rows.T
        K = self.K.clone()
        K[mi, :] = R
        K[:, mi] = R.T
        return K

    def winner(self, rows: Tensor, c_max: int) -> int:
        """The row Krum selects on the attacked matrix, computed as the aggregator computes it.

        The attacked matrix's Gram matrix is assembled (:meth:`attacked_gram`) where that was
        seen to equal BLAS's product of the whole matrix bit for bit for this shape, thread
        count and device (checked the first time; products of other shapes can round
        differently); otherwise the whole matrix is built and multiplied.
        """
        G = self.G
        key = (
            tuple(G.shape),
            G.dtype,
            str(G.device),
            torch.get_num_threads(),
            tuple(self.mal_idx.tolist()),
        )
        exact = _ASSEMBLY_EXACT.get(key)
        if exact:
            found = _krum_winner_from_gram(self.attacked_gram(rows), c_max)
            if found is not None:
                return found
        attacked = G.clone()
        attacked[self.mask] = rows
        if exact is None and G.is_contiguous() and rows.is_contiguous():
            _ASSEMBLY_EXACT[key] = torch.equal(self.attacked_gram(rows), attacked @ attacked.T)
        return _krum_winner(attacked, c_max)

    def benign_distances(self) -> np.ndarray:
        return self._distances(self.Kbb)

    def distances(self, lam: float) -> np.ndarray:
        MM = self.Knn - lam * (self.sn[:, None] + self.sn[None, :]) + lam * lam * self.ss
        MB = self.Knb - lam * self.kbs[None, :]
        F = np.block([[self.Kbb, MB.T], [MB, MM]])
        return self._distances(F[np.ix_(self.order, self.order)])


def full_krum_search(
    G_benign: Tensor,
    num_malicious: int,
    c_max: int,
    generator: torch.Generator | None = None,
    *,
    malicious_rows: Any = None,
) -> tuple[Tensor, float]:
    """Full-Krum rows ``[c, P]`` and the lambda used (0.0 when the attack gave up).

    ``G_benign`` [m, P] holds every client's honest gradient for the round; ``malicious_rows``
    (indices or a bool mask; default the first ``num_malicious`` rows) says which rows the attack
    replaces, so the selection test runs Krum on exactly the matrix the server will see. Each
    lambda is first tested on distances from :class:`_AttackedGram`; a hit is confirmed with the
    aggregator's own computation, and after a disagreement (a near-tie) every lambda is.
    """
    check_honest(G_benign, num_malicious, min_benign=1)
    m, P = G_benign.shape
    mask = malicious_mask(m, num_malicious, malicious_rows).to(G_benign.device)
    c, cm = num_malicious, int(c_max)
    if m - cm - 2 < 1:
        raise ConfigError(f"Krum needs m - c_max - 2 >= 1, got m={m} and c_max={cm}")
    s = torch.sign(G_benign.sum(dim=0))
    eps = 1e-4 / P
    noise = uniform((c, P), -eps, eps, generator, G_benign)
    noise[0].zero_()
    gram = _AttackedGram(G_benign, mask, s, noise)
    benign_norms = np.sqrt(np.maximum(np.diag(gram.Kbb), 0.0))
    lam = _bound_from_gram(gram.benign_distances(), benign_norms, P, m, c)
    mal = mask.cpu().numpy()
    exact = False
    while lam >= LAMBDA_MIN:
        if (
            exact
            or mal[
                int(np.argsort(nearest_sums_np(gram.distances(lam), m - cm - 2), kind="stable")[0])
            ]
        ):
            rows = noise - lam * s
            if bool(mal[gram.winner(rows, cm)]):
                return rows, lam
            exact = True  # float64 shortcut and the aggregator's float32 Gram disagreed
        lam /= 2.0
    return G_benign[mask].clone(), 0.0


def full_krum(
    G_benign: Tensor,
    num_malicious: int,
    c_max: int,
    generator: torch.Generator | None = None,
    *,
    malicious_rows: Any = None,
) -> Tensor:
    """Full-Krum rows ``[num_malicious, P]`` (see :func:`full_krum_search`; lambda dropped)."""
    return full_krum_search(
        G_benign, num_malicious, c_max, generator, malicious_rows=malicious_rows
    )[0]


class FullKrum:
    """Full-Krum attack (Fang et al. 2020); records the round's ``lambda`` (0 = gave up)."""

    name = "full_krum"

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        """Lambda search against Krum with the server's ``c_max`` on the round's full matrix."""
        rows, lam = full_krum_search(
            G_honest, ctx.num_malicious, ctx.c_max, ctx.generator, malicious_rows=ctx.malicious
        )
        return Poison(rows, {"lambda": lam, "gave_up": float(lam == 0.0)})

    def __repr__(self) -> str:
        return "FullKrum()"
