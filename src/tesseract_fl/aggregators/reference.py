"""Plain reference implementations of the defenses' formulas, for reading and for the tests.

Each function here states a rule the obvious way, in float64, one pass of its definition after
the other, with no blocking, scaling or sorting networks: the fast kernels in
:mod:`tesseract_fl.aggregators.kernels` and the rule modules must agree with these (tested in
``tests/test_reference.py``). They take finite matrices only (the hostile-input policy lives in
:class:`~tesseract_fl.aggregators.base.Defense`) and are far too slow for real runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "bulyan_reference",
    "centered_clipping_reference",
    "dnc_scores_reference",
    "faba_reference",
    "fedsgd_reference",
    "flip_scores_reference",
    "fltrust_reference",
    "foolsgold_reference",
    "geometric_median_reference",
    "krum_reference",
    "meamed_reference",
    "median_reference",
    "nearest_neighbour_mixing_reference",
    "trimmed_mean_reference",
]


def _f64(G: Tensor) -> Tensor:
    return G.detach().cpu().to(torch.float64)


def fedsgd_reference(G: Tensor, n_samples: Tensor | None = None) -> Tensor:
    """``sum_i n_i g_i / sum_i n_i`` (uniform weights without counts)."""
    X = _f64(G)
    n = torch.ones(X.shape[0], dtype=torch.float64) if n_samples is None else _f64(n_samples)
    return (n[:, None] * X).sum(0) / n.sum()


def trimmed_mean_reference(G: Tensor, c: int) -> Tensor:
    """Per coordinate: sort, drop ``c`` at each end, average the rest (Yin et al. 2018)."""
    S = torch.sort(_f64(G), dim=0).values
    return S[c : S.shape[0] - c].mean(0)


def median_reference(G: Tensor) -> Tensor:
    """Per coordinate: NumPy's median (mean of the two middle values for an even count)."""
    return torch.from_numpy(np.median(_f64(G).numpy(), axis=0))


def _sq_distances(X: Tensor) -> Tensor:
    return ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)


def _krum_scores(D: Tensor, n_neighbours: int) -> Tensor:
    m = D.shape[0]
    scores = torch.empty(m, dtype=torch.float64)
    for i in range(m):
        others = torch.cat([D[i, :i], D[i, i + 1 :]])
        scores[i] = torch.sort(others).values[:n_neighbours].sum()
    return scores


def krum_reference(G: Tensor, c: int, k: int = 1) -> tuple[Tensor, list[int]]:
    """Krum / Multi-Krum (Blanchard et al. 2017): the mean of the ``k`` rows whose summed
    squared distance to their ``m - c - 2`` nearest other rows is smallest (ties: lower index);
    returns the update and the selected rows."""
    X = _f64(G)
    scores = _krum_scores(_sq_distances(X), X.shape[0] - c - 2)
    order = sorted(range(X.shape[0]), key=lambda i: (float(scores[i]), i))
    sel = order[:k]
    return X[sel].mean(0), sel


def bulyan_reference(G: Tensor, c: int) -> tuple[Tensor, list[int]]:
    """Bulyan (El Mhamdi et al. 2018): ``theta = m - 2c`` rows chosen by Krum applied to the
    remaining set, theta times (neighbour count ``max(1, n - c - 2)`` for the current size n,
    ties to the lower index); per coordinate the mean of the ``beta = theta - 2c`` selected
    values nearest the median (the sorted window whose farthest member is nearest, the lowest
    such window on ties)."""
    X = _f64(G)
    D = _sq_distances(X)
    remaining = list(range(X.shape[0]))
    sel: list[int] = []
    for _ in range(X.shape[0] - 2 * c):
        sub = D[remaining][:, remaining]
        k = min(max(1, len(remaining) - c - 2), len(remaining) - 1)
        scores = _krum_scores(sub, k) if k > 0 else torch.zeros(len(remaining))
        best = min(range(len(remaining)), key=lambda i: (float(scores[i]), i))
        sel.append(remaining.pop(best))
    theta = len(sel)
    beta = theta - 2 * c
    out = torch.empty(X.shape[1], dtype=torch.float64)
    for j in range(X.shape[1]):
        S = torch.sort(X[sel, j]).values
        med = float(np.median(S.numpy()))
        costs = [
            max(med - float(S[s]), float(S[s + beta - 1]) - med) for s in range(theta - beta + 1)
        ]
        s0 = min(range(len(costs)), key=lambda s: (costs[s], s))
        out[j] = S[s0 : s0 + beta].mean()
    return out, sel


def faba_reference(G: Tensor, c: int) -> tuple[Tensor, list[int]]:
    """FABA (Xia et al. 2019): ``c`` times remove the row farthest from the mean of the rows
    that remain (ties: lower index); the mean of the rest. Returns it and the removal order."""
    X = _f64(G)
    alive = list(range(X.shape[0]))
    removed: list[int] = []
    for _ in range(c):
        mean = X[alive].mean(0)
        d = ((X[alive] - mean) ** 2).sum(1)
        r = alive[int(torch.argmax(d))]  # argmax returns the first maximum
        removed.append(r)
        alive.remove(r)
    return X[alive].mean(0), removed


def fltrust_reference(G: Tensor, g0: Tensor) -> Tensor:
    """FLTrust (Cao et al. 2021): ``TS_i = ReLU(cos(g_i, g0))``, ``g_i' = g_i ||g0|| / ||g_i||``,
    update ``sum_i TS_i g_i' / sum_i TS_i`` (zero when every trust score is 0)."""
    X, r = _f64(G), _f64(g0)
    n0 = torch.linalg.vector_norm(r)
    norms = torch.linalg.vector_norm(X, dim=1)
    ok = (norms > 0) & (n0 > 0)
    cos = torch.where(ok, (X @ r) / (norms * n0).clamp(min=1e-300), torch.zeros_like(norms))
    ts = cos.clamp(min=0.0)
    if float(ts.sum()) <= 0.0:
        return torch.zeros(X.shape[1], dtype=torch.float64)
    scaled = X * torch.where(ok, n0 / norms.clamp(min=1e-300), torch.zeros_like(norms))[:, None]
    return (ts[:, None] * scaled).sum(0) / ts.sum()


def foolsgold_reference(H: Tensor, kappa: float = 1.0) -> Tensor:
    """FoolsGold's raw weights ``alpha`` (Fung et al. 2020, Algorithm 1) from histories ``H``:
    cosine similarities (diagonal 0), pardoning, ``1 - max``, rescaling by the maximum, the
    logit with confidence ``kappa``, each written as a loop over clients."""
    X = _f64(H)
    m = X.shape[0]
    norms = [float(torch.linalg.vector_norm(X[i])) for i in range(m)]
    cs = [[0.0] * m for _ in range(m)]
    for i in range(m):
        for j in range(m):
            if i != j and norms[i] > 0 and norms[j] > 0:
                cs[i][j] = min(1.0, max(-1.0, float(X[i] @ X[j]) / (norms[i] * norms[j])))
    v = [max(row) if m > 1 else 0.0 for row in cs]
    for i in range(m):
        for j in range(m):
            if v[j] > v[i]:
                cs[i][j] *= v[i] / v[j]
    alpha = [min(1.0, max(0.0, 1.0 - max(row))) if m > 1 else 1.0 for row in cs]
    top = max(alpha, default=0.0)
    if top <= 0.0:
        return torch.zeros(m, dtype=torch.float64)
    out = []
    for a in alpha:
        a = a / top
        a = 0.99 if a == 1.0 else a
        if a <= 0.0:
            out.append(0.0)
            continue
        logit = kappa * (float(np.log(a / (1.0 - a))) + 0.5)
        out.append(min(1.0, max(0.0, logit)))
    return torch.tensor(out, dtype=torch.float64)


def flip_scores_reference(G: Tensor, s_g: Tensor) -> Tensor:
    """TESSERACT's flip-scores (paper Alg. 1 line 3), literally: ``sum_j G_ij^2`` over the
    coordinates whose sign differs from ``s_g``, in float64."""
    G64 = G.double()
    mask = torch.sign(G64) != s_g.to(device=G.device, dtype=torch.float64)
    return (G64 * G64 * mask).sum(dim=1)


def geometric_median_reference(
    G: Tensor, iters: int, nu: float, *, init: str = "mean", alpha: Tensor | None = None
) -> Tensor:
    """RFA's smoothed Weiszfeld (Pillutla et al. 2022, Algorithm 2), one row at a time:
    ``beta_i = alpha_i / max(nu, ||z - g_i||)``, ``z <- sum_i beta_i g_i / sum_i beta_i``, from
    the weighted mean (``init = "mean"``) or from zero (ByzFL's start)."""
    X = _f64(G)
    m = X.shape[0]
    a = [1.0 / m] * m if alpha is None else [float(v) for v in _f64(alpha) / _f64(alpha).sum()]
    z = torch.zeros(X.shape[1], dtype=torch.float64)
    if init == "mean":
        for i in range(m):
            z = z + a[i] * X[i]
    for _ in range(iters):
        beta = [a[i] / max(nu, float(torch.linalg.vector_norm(z - X[i]))) for i in range(m)]
        z = torch.zeros(X.shape[1], dtype=torch.float64)
        for i in range(m):
            z = z + beta[i] * X[i]
        z = z / sum(beta)
    return z


def centered_clipping_reference(G: Tensor, v: Tensor, tau: float, iters: int) -> Tensor:
    """Karimireddy et al. 2021, Eq. 2: ``v <- v + (1/m) sum_i (g_i - v) min(1, tau/||g_i - v||)``,
    ``iters`` times."""
    X, z = _f64(G), _f64(v)
    m = X.shape[0]
    for _ in range(iters):
        step = torch.zeros_like(z)
        for i in range(m):
            d = X[i] - z
            n = float(torch.linalg.vector_norm(d))
            step += d * (min(1.0, tau / n) if n > 0 else 1.0)
        z = z + step / m
    return z


def meamed_reference(G: Tensor, c: int) -> Tensor:
    """Xie et al. 2018, Def. 3: per coordinate, the mean of the ``m - c`` values nearest the
    median (ties to the lower value)."""
    X = _f64(G)
    m, P = X.shape
    out = torch.empty(P, dtype=torch.float64)
    for j in range(P):
        col = X[:, j].tolist()
        med = float(np.median(col))
        nearest = sorted(col, key=lambda x: (abs(x - med), x))[: m - c]
        out[j] = sum(nearest) / len(nearest)
    return out


def nearest_neighbour_mixing_reference(G: Tensor, c: int) -> Tensor:
    """Allouah et al. 2023, Algorithm 1: each row becomes the mean of its ``m - c`` nearest rows
    (itself included; ties to the lower index)."""
    X = _f64(G)
    m = X.shape[0]
    out = torch.empty_like(X)
    for i in range(m):
        d = [float(((X[i] - X[j]) ** 2).sum()) for j in range(m)]
        near = sorted(range(m), key=lambda j: (d[j], j))[: m - c]
        out[i] = X[near].mean(0)
    return out


def dnc_scores_reference(X: Tensor) -> Tensor:
    """DnC's outlier scores (Shejwalkar and Houmansadr 2021, Algorithm 3): the squared
    projection of each centred row on the top right singular vector, by power iteration on the
    covariance ``Y^T Y`` (plain, no SVD routine)."""
    Y = _f64(X)
    Y = Y - Y.mean(0)
    C = Y.T @ Y
    v = torch.ones(C.shape[0], dtype=torch.float64)
    for _ in range(2000):
        v = C @ v
        n = float(torch.linalg.vector_norm(v))
        if n == 0.0:
            return torch.zeros(Y.shape[0], dtype=torch.float64)
        v = v / n
    return (Y @ v) ** 2
