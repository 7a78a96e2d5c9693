"""TESSERACT: flip-score reputation aggregation (paper Sec. 3, Algorithm 1; docs/design.md,
"TESSERACT").

Each round the server computes every client's flip-score against the sign of the previous global
update (Alg. 1 line 3), penalizes the ``c_max`` lowest and ``c_max`` highest flip-scores and
rewards the rest (lines 4-6), turns the decayed reputations into weights with a softmax (line 7),
aggregates (line 8) and stores the sign of the new update (line 9).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import (
    AggregationContext,
    Aggregator,
    Defense,
    Diagnostics,
    Rows,
    RuleResult,
    check_layout,
)
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.aggregators.kernels.flip_scores import (
    check_sign_vector,
    rank_keys,
    safe_flip_scores,
    score_dtype,
)
from tesseract_fl.errors import ConfigError, UpdateError

__all__ = [
    "LOG_FLOAT32_MAX",
    "Tesseract",
    "flip_scores",
    "penalty_mask",
]

#: ``log(float32 max)`` ~ 88.72: a reputation above this makes ``exp(RS)`` overflow float32, which
#: triggers the paper's halving rule (Sec. 3, "We halve the reputation score of every client...").
LOG_FLOAT32_MAX: float = math.log(torch.finfo(torch.float32).max)


# --------------------------------------------------------------------------- flip-scores


def flip_scores(G: Tensor, s_g: Tensor) -> Tensor:
    """Flip-scores ``FS_i = sum_j G_ij^2 [sign(G_ij) != s_g_j]`` (Alg. 1 line 3) -> Tensor[m].

    ``G`` is the [m, P] gradient matrix, ``s_g`` the sign of the previous global update (entries
    in {-1, 0, +1}). With ``s_g = 0`` (round 1) every nonzero coordinate counts; a zero gradient
    entry never counts (``sign(0) = 0``). Accumulated in G's dtype (float32 for half precision
    G, and then returned as float32: float16 cannot hold squares of entries above 256); agrees
    with :func:`~tesseract_fl.aggregators.reference.flip_scores_reference` to float32 rounding
    (~1e-7 relative). Hostile rows: a row with NaN/Inf scores ``+inf``; a finite row whose
    score overflows the score dtype is recomputed in float64 and capped at that dtype's maximum
    (:func:`~tesseract_fl.aggregators.kernels.flip_scores.safe_flip_scores`).
    """
    check_layout(G)
    check_sign_vector(G, s_g)
    return safe_flip_scores(G, s_g.to(dtype=G.dtype, device=G.device))


# --------------------------------------------------------------------------- penalties


def _rank(fs: Tensor, client_ids: Tensor) -> Tensor:
    """Row order sorting by (flip-score, client id), ascending; ties go to the lower id first."""
    fs = torch.as_tensor(fs).detach().cpu()
    ids = torch.as_tensor(client_ids).detach().cpu()
    if fs.dim() != 1 or ids.dim() != 1 or fs.shape != ids.shape:
        raise UpdateError(
            f"flip-scores and client ids must be 1-D of equal length, "
            f"got {tuple(fs.shape)} and {tuple(ids.shape)}"
        )
    if bool(torch.isnan(fs).any()):
        raise UpdateError("flip-scores contain NaN")
    by_id = torch.argsort(ids, stable=True)
    return by_id[torch.argsort(fs[by_id], stable=True)]


def penalty_mask(fs: Tensor, c_max: int, client_ids: Tensor) -> Tensor:
    """Which clients are penalized (Alg. 1 line 4): the ``c_max`` lowest and ``c_max`` highest FS.

    Clients are ranked by ``(fs, client id)``, so among equal flip-scores the lower id counts as
    the lower score. Returns a bool Tensor[m] (CPU). When ``2 * c_max >= m`` the two ends cover
    everyone and every client is penalized (the paper requires ``c_max < m/2``; :class:`Tesseract`
    refuses such rounds). ``c_max = 0`` penalizes nobody.
    """
    if int(c_max) != c_max or c_max < 0:
        raise UpdateError(f"c_max must be a non-negative integer, got {c_max!r}")
    c = int(c_max)
    order = _rank(fs, client_ids)
    m = order.shape[0]
    mask = torch.zeros(m, dtype=torch.bool)
    if c == 0:
        return mask
    if 2 * c >= m:
        mask[:] = True
        return mask
    mask[order[:c]] = True
    mask[order[m - c :]] = True
    return mask


# --------------------------------------------------------------------------- the aggregator


def _as_int(value: Any, what: str) -> int:
    """An integer (range checks follow in ``_check_hyper``)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    try:
        ok = int(value) == value
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return int(value)


class Tesseract(Defense):
    """TESSERACT aggregator (paper Algorithm 1) with reputation state keyed by client id.

    Parameters: ``num_clients`` (ids are ``0..num_clients-1``), ``c_max`` (clients assumed
    malicious, ``c_max < num_clients / 2``), ``mu_d`` (reputation decay in [0, 1], paper default
    0.99), ``filter_then`` (optional aggregator instance or registry name: clients whose softmax
    weight is below ``filter_threshold`` are dropped and the rest go to that aggregator, paper
    Sec. 3 "use this to directly filter out the suspicious gradients").

    State: ``reputation`` Tensor[num_clients] float64 (RS, Alg. 1 line 0), ``s_g`` Tensor[P] (sign
    of the last global update, line 1; created as zeros on the first round), ``round``.
    """

    name = "tesseract"
    num_clients: int
    runs_without_finite_rows = True  # rows with NaN/Inf are penalized even when all are

    def __init__(
        self,
        num_clients: int,
        c_max: int,
        mu_d: float = 0.99,
        filter_then: Aggregator | str | None = None,
        filter_threshold: float = 1e-4,
    ) -> None:
        self.num_clients = _as_int(num_clients, "num_clients")
        self.c_max = _as_int(c_max, "c_max")
        self.mu_d = float(mu_d)
        self.filter_threshold = float(filter_threshold)
        self._check_hyper(self.num_clients, self.c_max, self.mu_d, self.filter_threshold)
        self._inner: Aggregator | None
        if filter_then is None:
            self._inner = None
        elif isinstance(filter_then, str):
            from tesseract_fl.aggregators import make_aggregator

            self._inner = make_aggregator(
                filter_then, num_clients=self.num_clients, c_max=self.c_max
            )
        elif isinstance(filter_then, Aggregator):
            self._inner = filter_then
        else:
            raise ConfigError(
                f"filter_then must be an aggregator or a registered name, got {filter_then!r}"
            )
        if self._inner is not None and getattr(self._inner, "needs_root_gradient", False):
            # the inner rule scores against the server's root gradient (FLTrust, MoNNA): the
            # round computes it for this defense and passes it through to the inner rule
            self.needs_root_gradient = True  # type: ignore[misc]
            self.root_size = int(getattr(self._inner, "root_size", 100))
        self.reputation: Tensor = torch.zeros(self.num_clients, dtype=torch.float64)
        self._s_g: Tensor | None = None
        self.round = 0
        self._fs_low = math.nan
        self._fs_high = math.nan

    @staticmethod
    def _check_hyper(num_clients: int, c_max: int, mu_d: float, filter_threshold: float) -> None:
        if num_clients < 1:
            raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
        if c_max < 0 or 2 * c_max >= num_clients:
            raise ConfigError(
                f"c_max must satisfy 0 <= c_max < num_clients/2 (paper Sec. 3), "
                f"got c_max={c_max} with num_clients={num_clients}"
            )
        if not 0.0 <= mu_d <= 1.0:
            raise ConfigError(f"mu_d must be in [0, 1], got {mu_d}")
        if not (math.isfinite(filter_threshold) and filter_threshold >= 0.0):
            raise ConfigError(f"filter_threshold must be finite and >= 0, got {filter_threshold}")

    # ------------------------------------------------------------------ read-only views

    @property
    def s_g(self) -> Tensor | None:
        """Sign of the last global update (Alg. 1 line 9); ``None`` before the first round."""
        return self._s_g

    @property
    def fs_low(self) -> float:
        """The ``c_max``-th lowest flip-score of the last round (nan before it or if c_max = 0)."""
        return self._fs_low

    @property
    def fs_high(self) -> float:
        """The ``c_max``-th highest flip-score of the last round (nan before it or if c_max = 0)."""
        return self._fs_high

    @property
    def filter_then(self) -> Aggregator | None:
        """The aggregator the surviving clients are passed to, if any."""
        return self._inner

    def public_state(self) -> dict[str, Any]:
        """What an adaptive attacker is assumed to know (paper Sec. 6.2); copies, safe to keep."""
        return {
            "s_g": None if self._s_g is None else self._s_g.clone(),
            "fs_low": self._fs_low,
            "fs_high": self._fs_high,
            "reputation": self.reputation.clone(),
        }

    # ------------------------------------------------------------------ aggregation

    def check_input(self, G: Tensor, ids: Tensor, ctx: AggregationContext) -> None:
        """More than ``2 c_max`` rows (finite or not), and the columns of earlier rounds."""
        m, P = G.shape
        c = self.c_max
        if m <= 2 * c:
            raise UpdateError(
                f"TESSERACT needs more than 2*c_max={2 * c} clients in a round, got m={m}"
            )
        if self._s_g is not None and self._s_g.shape[0] != P:
            raise UpdateError(
                f"G has P={P} columns but earlier rounds had P={self._s_g.shape[0]} (s_g length)"
            )

    def rule(self, rows: Rows) -> RuleResult:
        """One TESSERACT round (Alg. 1 lines 2-9) on the rows received.

        Only the present clients' reputations change and ``m`` in the penalty/reward is the
        number present. The state changes only when the round succeeds. Diagnostics:
        ``flip_scores``, ``fs_low``, ``fs_high``, ``penalized``, ``reputation`` (present
        clients, after the update); ``extra``: ``halvings`` (plus ``softmax_weights``, ``kept``
        and the inner rule's ``inner`` diagnostics with ``filter_then``).

        Hostile-input policy: a row with a NaN/Inf entry is maximally suspicious: its
        flip-score is ``+inf`` (so it fills the high end of the ranking first) and it is always
        penalized (``RS <- mu_d RS - (1 - 2 c_max / m)``); it gets weight 0 and the softmax runs
        over the finite rows only. With no finite row the update is zero and ``s_g`` is left
        unchanged.
        """
        fin, ids = rows.finite, rows.all_ids
        m, P = fin.m, fin.G.shape[1]
        dtype, device = fin.G.dtype, fin.G.device
        c = self.c_max

        # Alg. 1 lines 1-3: flip-scores against the previous global direction (zeros at first).
        if self._s_g is None:
            s = torch.zeros(P, dtype=dtype, device=device)
        else:
            s = self._s_g.to(dtype=dtype, device=device)
        fs = torch.full((m,), math.inf, dtype=score_dtype(dtype))
        keys = fs
        if fin.m_finite:
            fs_fin = safe_flip_scores(fin.G, s).detach().cpu()
            fs = fin.scatter(fs_fin)
            keys = fin.scatter(rank_keys(fin.G, s, fs_fin))
            if fin.kept is not None:
                fs[fin.excluded] = math.inf
                keys[fin.excluded] = math.inf

        # Lines 4-6: penalize c_max on either end (ties by client id), reward the rest.
        order = _rank(keys, ids)
        penalized = torch.zeros(m, dtype=torch.bool)
        if c > 0:
            penalized[order[:c]] = True
            penalized[order[m - c :]] = True
            fs_low, fs_high = float(fs[order[c - 1]]), float(fs[order[m - c]])
        else:
            fs_low = fs_high = math.nan
        reward = 2.0 * c / m
        penalty = -(1.0 - reward)
        rep = self.reputation.clone()
        change = torch.full((m,), reward, dtype=torch.float64)
        if fin.excluded:
            penalized[fin.excluded] = True  # maximally suspicious: always penalized
        change[penalized] = penalty
        rep[ids] = self.mu_d * rep[ids] + change

        # Line 7 with the paper's overflow rule: halve every stored RS while exp(RS) would
        # overflow float32; the softmax itself is computed stably in float64 anyway.
        halvings = 0
        while float(rep[ids].max()) > LOG_FLOAT32_MAX:
            rep.mul_(0.5)
            halvings += 1
        w64_fin = torch.softmax(rep[rows.ids], dim=0)  # finite rows only; empty when none
        diagnostics = Diagnostics(
            flip_scores=fs,
            fs_low=fs_low,
            fs_high=fs_high,
            penalized=penalized,
            reputation=rep[ids].clone(),
            extra={"halvings": halvings},
        )

        # Line 8: weighted mean, or hand the survivors to another rule (filter_then).
        if fin.m_finite == 0:
            update, weights = fin.G.new_zeros(P), w64_fin.to(dtype=dtype, device=device)
        elif self._inner is None:
            weights = w64_fin.to(dtype=dtype, device=device)
            update = weighted_mean(weights, fin.G)
        else:
            update, weights = self._filter_and_aggregate(rows, w64_fin, diagnostics)

        # Line 9: new global direction; commit the round's state (no finite row: keep s_g).
        if fin.m_finite or self._s_g is None:
            self._s_g = torch.sign(update)
        self.reputation = rep
        self.round += 1
        self._fs_low, self._fs_high = fs_low, fs_high
        return RuleResult(update=update, weights=weights, diagnostics=diagnostics)

    def _filter_and_aggregate(
        self, rows: Rows, w64_fin: Tensor, diagnostics: Diagnostics
    ) -> tuple[Tensor, Tensor]:
        """Drop clients with softmax weight < ``filter_threshold``; aggregate the rest.

        If every client would be dropped (possible only when ``filter_threshold > 1/m``), all
        finite rows are kept. An inner rule built on :class:`Defense` receives every finite row
        with the dropped ones marked (``drop``): they leave the round as non-finite rows do, so
        its c_max is validated against the clients of the round and reduced to what the rule
        accepts for the survivors (MoNNA needs more than c_max rows, the trimmed mean more than
        2 c_max); docs/design.md, "TESSERACT". Any other aggregator receives the
        survivors' rows alone. Returns the inner rule's update and its weights over the finite
        rows (0 when dropped).
        """
        assert self._inner is not None
        fin, X = rows.finite, rows.G
        mf = X.shape[0]
        kept = (w64_fin >= self.filter_threshold) & (w64_fin > 0)
        if not bool(kept.any()):
            kept = w64_fin > 0
        n = rows.ctx.n_samples
        if n is not None:
            n = torch.as_tensor(n)
            if n.dim() != 1 or n.shape[0] != fin.m:
                raise UpdateError(f"ctx.n_samples must have length {fin.m}, got {tuple(n.shape)}")
        weights = torch.zeros(mf, dtype=X.dtype, device=X.device)
        if isinstance(self._inner, Defense):
            if n is not None and fin.kept is not None:
                n = n[fin.kept.to(n.device)]
            ctx = dataclasses.replace(rows.ctx, n_samples=n)
            inner = self._inner.aggregate(X, client_ids=rows.ids, ctx=ctx, drop=~kept.cpu())
            weights.copy_(inner.weights.to(dtype=X.dtype, device=X.device))
        else:
            idx = kept.nonzero().flatten()
            sub_G = X if idx.numel() == fin.m else X.index_select(0, idx.to(X.device))
            if n is not None:
                n = n[fin.rows_of_input(idx).to(n.device)]
            ctx = dataclasses.replace(rows.ctx, n_samples=n)
            inner = self._inner.aggregate(sub_G, client_ids=rows.ids[idx], ctx=ctx)
            weights[idx.to(X.device)] = inner.weights.to(dtype=X.dtype, device=X.device)
        diagnostics.extra["softmax_weights"] = fin.scatter(w64_fin)
        diagnostics.extra["kept"] = fin.scatter(kept.to(torch.float64)) > 0
        diagnostics.extra["inner"] = inner.diagnostics
        return inner.update, weights

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume identically (like ``torch.optim``'s): copies of the state."""
        inner_name = None if self._inner is None else self._inner.name
        return {
            "num_clients": self.num_clients,
            "c_max": self.c_max,
            "mu_d": self.mu_d,
            "filter_threshold": self.filter_threshold,
            "filter_then": inner_name,
            "filter_then_state": None if self._inner is None else self._inner.state_dict(),
            "reputation": self.reputation.clone(),
            "s_g": None if self._s_g is None else self._s_g.clone(),
            "round": self.round,
            "fs_low": self._fs_low,
            "fs_high": self._fs_high,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; hyper-parameters are restored too (as torch.optim).

        Raises :class:`ConfigError` if ``num_clients`` or the ``filter_then`` rule differ, or the
        state is malformed; nothing is changed then.
        """
        required = {"num_clients", "c_max", "mu_d", "reputation", "s_g", "round"}
        missing = required - set(state)
        if missing:
            raise ConfigError(f"TESSERACT state is missing keys {sorted(missing)}")
        num_clients = _as_int(state["num_clients"], "num_clients")
        if num_clients != self.num_clients:
            raise ConfigError(
                f"state is for num_clients={num_clients}, this aggregator has {self.num_clients}"
            )
        c_max = _as_int(state["c_max"], "c_max")
        mu_d = float(state["mu_d"])
        threshold = float(state.get("filter_threshold", self.filter_threshold))
        self._check_hyper(num_clients, c_max, mu_d, threshold)
        inner_name = None if self._inner is None else self._inner.name
        if state.get("filter_then", inner_name) != inner_name:
            raise ConfigError(
                f"state was saved with filter_then={state.get('filter_then')!r}, "
                f"this aggregator has {inner_name!r}"
            )
        rep = torch.as_tensor(state["reputation"]).detach().to(device="cpu", dtype=torch.float64)
        if rep.shape != (self.num_clients,) or not bool(torch.isfinite(rep).all()):
            raise ConfigError(
                f"state reputation must be finite with shape ({self.num_clients},), "
                f"got {tuple(rep.shape)}"
            )
        s_g = state["s_g"]
        if s_g is not None:
            s_g = torch.as_tensor(s_g).detach()
            if s_g.dim() != 1 or not torch.equal(s_g, torch.sign(s_g)):
                raise ConfigError("state s_g must be a 1-D sign vector (entries -1, 0, +1)")
            s_g = s_g.clone()
        rnd = _as_int(state["round"], "round")
        if self._inner is not None and state.get("filter_then_state") is not None:
            self._inner.load_state_dict(state["filter_then_state"])
        self.c_max, self.mu_d, self.filter_threshold = c_max, mu_d, threshold
        self.reputation = rep.clone()
        self._s_g = s_g
        self.round = rnd
        self._fs_low = float(state.get("fs_low", math.nan))
        self._fs_high = float(state.get("fs_high", math.nan))

    def __repr__(self) -> str:
        inner = "" if self._inner is None else f", filter_then={self._inner.name!r}"
        return (
            f"Tesseract(num_clients={self.num_clients}, c_max={self.c_max}, mu_d={self.mu_d}"
            f"{inner})"
        )
