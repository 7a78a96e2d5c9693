"""Min-Max and Min-Sum (Shejwalkar and Houmansadr 2021, "Manipulating the Byzantine: Optimizing
Model Poisoning Attacks and Defenses for Federated Learning", NDSS; docs/design.md, "Min-Max and
Min-Sum").

Every attacker sends ``mu + gamma * p``: ``mu`` the mean of the benign gradients, ``p`` a
perturbation direction (``"std"``: ``-sigma``, the per-coordinate sample standard deviation,
default; ``"unit_vec"``: ``-mu / ||mu||``; ``"sign"``: ``-sign(mu)``) and ``gamma`` the largest
scale the paper's binary search finds such that

* Min-Max: the malicious row's largest distance to a benign row is at most the largest distance
  between two benign rows;
* Min-Sum: its sum of squared distances to the benign rows is at most the largest such sum of a
  benign row (to the other benign rows).

Search (as in the paper and the authors' code): start at ``gamma_init``, step
``gamma_init / 2``; if the condition holds gamma grows by the step, else it shrinks by it; the
step halves every time; stop when gamma is within ``tau`` of the last gamma that passed, which is
returned (0 if none passed; gamma never exceeds ``2 * gamma_init``).

Distances: with ``C = G_benign - mu`` the benign-benign squared distances come from one Gram
matrix ``C @ C.T`` (combined in float64, centred so that a large common mean does not cost
precision), and the malicious row's squared distance to benign row i is the quadratic
``||C_i||^2 - 2 gamma C_i.p + gamma^2 ||p||^2``: after one matrix-vector product ``C @ p`` each
tested gamma costs O(k), not O(k P).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.attacks.base import (
    AttackContext,
    Poison,
    benign_index,
    check_honest,
    malicious_mask,
)
from tesseract_fl.attacks.statistics import column_std_mean
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count, positive_finite

__all__ = [
    "PERTURBATIONS",
    "MinMax",
    "MinSum",
    "min_max",
    "min_sum",
    "perturbation_vector",
    "search_gamma",
]

#: Perturbation directions ``p`` (the paper's ``-grad_p``): names as in the authors' code.
PERTURBATIONS: tuple[str, ...] = ("std", "unit_vec", "sign")

#: Safety cap on search iterations (the halving step ends it after ~log2(gamma_init / tau)).
MAX_ITER = 200


def _check_perturbation(kind: Any) -> str:
    if not isinstance(kind, str) or kind not in PERTURBATIONS:
        raise ConfigError(
            f"perturbation must be one of {', '.join(PERTURBATIONS)} (p = -sigma, -mu/||mu||, "
            f"-sign(mu)), got {kind!r}"
        )
    return kind


def _check_positive(value: Any, what: str) -> float:
    return positive_finite(value, what)


def _mean_and_direction(X: Tensor, kind: str, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(mu, p) of the benign rows ``X`` [k, P] (or ``X[rows]``, for ``"std"`` only); ``p = 0``
    for ``unit_vec`` when ``mu = 0``."""
    if kind == "std":
        sigma, mu = column_std_mean(X, correction=1, rows=rows)
        return mu, -sigma
    mu = X.mean(dim=0)
    if kind == "sign":
        return mu, -torch.sign(mu)
    norm = float(torch.linalg.vector_norm(mu.double()))
    return mu, (-mu / norm if norm > 0.0 else torch.zeros_like(mu))


def perturbation_vector(G_benign: Tensor, kind: str = "std") -> Tensor:
    """The perturbation ``p`` [P] of the benign rows ``G_benign`` [k, P] (k >= 2):
    ``-sigma`` (``"std"``), ``-mu / ||mu||`` (``"unit_vec"``, 0 when mu = 0) or ``-sign(mu)``."""
    check_honest(G_benign, 0, min_benign=2)
    return _mean_and_direction(G_benign.detach(), _check_perturbation(kind))[1]


def search_gamma(ok: Callable[[float], bool], gamma_init: float = 10.0, tau: float = 1e-5) -> float:
    """The paper's binary search: the last gamma for which ``ok(gamma)`` held (0.0 if none).

    Start at ``gamma_init`` with step ``gamma_init / 2``; gamma moves up by the step when ``ok``
    holds, down otherwise, and the step halves each time, until gamma is within ``tau`` of the
    last success. For a condition that holds exactly on ``[0, gamma*]`` the result is within
    about ``tau`` below ``min(gamma*, 2 gamma_init)``.
    """
    g0 = _check_positive(gamma_init, "gamma_init")
    t = _check_positive(tau, "tau")
    gamma, step, succ = g0, g0 / 2.0, 0.0
    for _ in range(MAX_ITER):
        if abs(succ - gamma) <= t:
            break
        if ok(gamma):
            succ = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2.0
    return succ


def _centred(X: Tensor, mu: Tensor, rows: Tensor | None) -> Tensor:
    """``X - mu``, or ``X[rows] - mu`` built row by row (the same values, without first copying
    the benign rows)."""
    if rows is None:
        return X - mu
    C = torch.empty(
        (rows.numel(), X.shape[1]), dtype=torch.promote_types(X.dtype, mu.dtype), device=X.device
    )
    for k, i in enumerate(rows.tolist()):
        torch.sub(X[i], mu, out=C[k])
    return C


def _geometry(
    X: Tensor, mu: Tensor, p: Tensor, rows: Tensor | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """(centred Gram ``C @ C.T`` [k, k], ``C @ p`` [k], ``||p||^2``) in float64, ``C = X - mu``
    (``X[rows] - mu`` with ``rows``)."""
    C = _centred(X, mu, rows)
    gram = (C @ C.T).to(device="cpu", dtype=torch.float64).numpy()
    gram = (gram + gram.T) * 0.5
    e = (C @ p).to(device="cpu", dtype=torch.float64).numpy()
    pp = float(torch.dot(p.double(), p.double()))
    return gram, e, pp


def _benign_sq_distances(gram: np.ndarray) -> np.ndarray:
    """Squared distances between benign rows from their (centred) Gram matrix, clamped at 0."""
    n = np.diag(gram)
    D = np.maximum(n[:, None] + n[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(D, 0.0)
    return D


def _condition(
    objective: str, gram: np.ndarray, e: np.ndarray, pp: float
) -> Callable[[float], bool]:
    """``ok(gamma)`` for Min-Max (``"max"``) or Min-Sum (``"sum"``) on the float64 geometry."""
    c2 = np.diag(gram).copy()  # ||g_i - mu||^2
    D = _benign_sq_distances(gram)
    if objective == "max":
        threshold = float(D.max())

        def ok(gamma: float) -> bool:
            return float(np.max(c2 - 2.0 * gamma * e + gamma * gamma * pp)) <= threshold

    else:
        threshold = float(D.sum(axis=1).max())
        k = c2.shape[0]
        s_c2, s_e = float(c2.sum()), float(e.sum())

        def ok(gamma: float) -> bool:
            return s_c2 - 2.0 * gamma * s_e + k * gamma * gamma * pp <= threshold

    return ok


def _attack(
    G_benign: Tensor,
    num_malicious: int,
    objective: str,
    kind: str,
    gamma_init: float,
    tau: float,
    rows: Tensor | None = None,
) -> tuple[Tensor, float]:
    """(rows [num_malicious, P], gamma) without validation; the benign rows are ``G_benign``,
    or ``G_benign[rows]`` (read in place) when ``rows`` (indices) is given."""
    X = G_benign.detach()
    if rows is not None and kind != "std":  # only the std statistics read rows in place
        X, rows = X.index_select(0, rows), None
    mu, p = _mean_and_direction(X, kind, rows)
    gamma = search_gamma(_condition(objective, *_geometry(X, mu, p, rows)), gamma_init, tau)
    row = mu + gamma * p
    return row.expand(num_malicious, -1).clone(), gamma


def _public(
    objective: str,
    G_benign: Tensor,
    num_malicious: int,
    perturbation: str,
    gamma_init: float,
    tau: float,
) -> tuple[Tensor, float]:
    c = as_count(num_malicious, "num_malicious", minimum=1)
    kind = _check_perturbation(perturbation)
    g0 = _check_positive(gamma_init, "gamma_init")
    t = _check_positive(tau, "tau")
    check_honest(G_benign, 0, min_benign=2)
    return _attack(G_benign, c, objective, kind, g0, t)


def min_max(
    G_benign: Tensor,
    num_malicious: int,
    perturbation: str = "std",
    gamma_init: float = 10.0,
    tau: float = 1e-5,
) -> tuple[Tensor, float]:
    """Min-Max rows ``[num_malicious, P]`` (all equal to ``mu + gamma p``) and ``gamma``.

    ``G_benign`` [k, P], k >= 2: the benign gradients only. Largest distance to a benign row
    <= the largest benign-benign distance.
    """
    return _public("max", G_benign, num_malicious, perturbation, gamma_init, tau)


def min_sum(
    G_benign: Tensor,
    num_malicious: int,
    perturbation: str = "std",
    gamma_init: float = 10.0,
    tau: float = 1e-5,
) -> tuple[Tensor, float]:
    """Min-Sum rows ``[num_malicious, P]`` (all equal to ``mu + gamma p``) and ``gamma``.

    ``G_benign`` [k, P], k >= 2: the benign gradients only. Sum of squared distances to the
    benign rows <= the largest such sum of a benign row.
    """
    return _public("sum", G_benign, num_malicious, perturbation, gamma_init, tau)


class _MinMaxBase:
    """Shared constructor and ``poison`` of :class:`MinMax` and :class:`MinSum`."""

    name = ""
    _objective = ""

    def __init__(
        self, *, perturbation: str = "std", gamma_init: float = 10.0, tau: float = 1e-5
    ) -> None:
        self.perturbation = _check_perturbation(perturbation)
        self.gamma_init = _check_positive(gamma_init, "gamma_init")
        self.tau = _check_positive(tau, "tau")

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        """Every attacker sends ``mu + gamma p`` of the benign rows; records ``gamma``."""
        c = ctx.num_malicious
        check_honest(G_honest, c, min_benign=2)
        mask = malicious_mask(G_honest.shape[0], c, ctx.malicious).to(G_honest.device)
        rows, gamma = _attack(
            G_honest,
            c,
            self._objective,
            self.perturbation,
            self.gamma_init,
            self.tau,
            rows=benign_index(mask),
        )
        return Poison(rows, {"gamma": gamma})

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(perturbation={self.perturbation!r}, "
            f"gamma_init={self.gamma_init:g}, tau={self.tau:g})"
        )


class MinMax(_MinMaxBase):
    """Min-Max attack (Shejwalkar and Houmansadr 2021) on the benign rows
    ``G_honest[~ctx.malicious]``; records ``gamma``."""

    name = "min_max"
    _objective = "max"


class MinSum(_MinMaxBase):
    """Min-Sum attack (Shejwalkar and Houmansadr 2021) on the benign rows
    ``G_honest[~ctx.malicious]``; records ``gamma``."""

    name = "min_sum"
    _objective = "sum"
