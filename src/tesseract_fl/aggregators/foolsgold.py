"""FoolsGold: down-weighting clients whose update histories look alike (Fung et al., RAID 2020).

Sybils pushing the same poisoned objective send similar updates round after round, while honest
clients with different local data diverge. FoolsGold keeps each client's history
``H_i = sum of its updates``; per round (docs/design.md, "FoolsGold"):

1. ``cs_ij`` = cosine similarity of ``H_i`` and ``H_j``, the diagonal excluded (set to 0, as
   ``cs - I`` in the authors' code; so ``v_i = max_j cs_ij >= 0``);
2. ``v_i = max_j cs_ij``; pardoning: if ``v_j > v_i`` then ``cs_ij *= v_i / v_j``;
3. ``alpha_i = 1 - max_j cs_ij`` clipped to [0, 1]; ``alpha /= max(alpha)``; ``alpha = 1 -> 0.99``;
4. ``alpha_i = kappa * (ln(alpha_i / (1 - alpha_i)) + 0.5)``; +inf or > 1 -> 1, < 0 (and -inf)
   -> 0;
5. update = the mean of the current updates weighted by ``alpha`` (normalized to sum 1).

``use_history=False`` uses only the current round's updates (what the authors' code does).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import (
    AggregationContext,
    Defense,
    Diagnostics,
    FiniteRows,
    Rows,
    RuleResult,
    all_finite,
    check_matrix,
    split_finite,
)
from tesseract_fl.aggregators.fedsgd import weighted_mean
from tesseract_fl.aggregators.kernels.gram import gram64, gram64_scaled, max_abs
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.validation import as_count, positive_finite

__all__ = ["FoolsGold", "foolsgold_weights", "foolsgold_weights_from_gram"]

_F32_MAX = float(torch.finfo(torch.float32).max)


def foolsgold_weights_from_gram(K: Tensor, kappa: float = 1.0) -> Tensor:
    """FoolsGold's raw weights ``alpha`` (steps 1-4) from the Gram matrix ``K = H H^T`` [m, m].

    Works in float64; returns float64 Tensor[m] with entries in [0, 1]. A history of norm 0 has
    cosine 0 with everyone. When every clipped ``alpha`` is 0 (e.g. all histories parallel),
    ``max(alpha) = 0`` and the rescaling is skipped: all weights are 0 (no NaN).
    """
    K = K.to(torch.float64)
    m = K.shape[0]
    norms = K.diagonal().clamp(min=0.0).sqrt()
    ok = norms > 0
    safe = torch.where(ok, norms, torch.ones_like(norms))
    cs = K / safe[:, None] / safe[None, :]
    cs = torch.where(ok[:, None] & ok[None, :], cs, torch.zeros_like(cs)).clamp(-1.0, 1.0)
    cs.fill_diagonal_(0.0)  # step 1: diagonal excluded (cs - I)
    v = cs.max(dim=1).values if m > 0 else cs.new_zeros(0)  # step 2
    # Pardoning: row i, column j with v_j > v_i gets cs_ij * v_i / v_j (v_j > v_i >= 0).
    pardon = v[None, :] > v[:, None]
    ratio = v[:, None] / torch.where(pardon, v[None, :], torch.ones_like(cs))
    cs = torch.where(pardon, cs * ratio, cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0) if m > 0 else cs.new_zeros(0)  # step 3
    top = float(alpha.max()) if m > 0 else 0.0
    if top <= 0.0:
        return torch.zeros_like(alpha)
    alpha = alpha / top
    alpha[alpha == 1.0] = 0.99
    with torch.no_grad():  # step 4: logit; ln(0) = -inf is mapped to 0 below
        logit = float(kappa) * (torch.log(alpha / (1.0 - alpha)) + 0.5)
    logit = torch.where(torch.isposinf(logit) | (logit > 1.0), torch.ones_like(logit), logit)
    logit = torch.where(logit < 0.0, torch.zeros_like(logit), logit)  # includes -inf
    return logit


def _check_kappa(kappa: Any) -> float:
    return positive_finite(kappa, "kappa")


def foolsgold_weights(H: Tensor, kappa: float = 1.0) -> Tensor:
    """FoolsGold's raw weights ``alpha`` (before normalizing to sum 1) for histories ``H`` [m, P].

    Fung et al. 2020, Algorithm 1 (docs/design.md, "FoolsGold", steps 1-4): returns float64
    Tensor[m] on H's device, entries in [0, 1]. Cosines come from the blockwise
    float64-accumulated Gram matrix of H (:func:`~tesseract_fl.aggregators.faba.gram64`).
    """
    k = _check_kappa(kappa)
    return foolsgold_weights_from_gram(gram64(H), k)  # gram64 validates H


def _without_rows_beyond_float32(fin: FiniteRows, g_max: float | None) -> FiniteRows:
    """``fin`` less the finite rows with an entry beyond float32's range (e.g. 1e300 in float64).

    The histories are float32, so such a row cannot be added to its client's history; it is
    treated like a row with NaN/Inf (hostile-row policy: excluded, weight 0, history not
    updated, listed in ``Diagnostics.excluded``). ``g_max``: ``max |fin.G|`` when known. Float32
    and half precision rows always fit, so this costs nothing for them.
    """
    X = fin.G
    if X.dtype.itemsize <= 4 or X.shape[0] == 0:
        return fin
    top = max_abs(X) if g_max is None else g_max
    if math.isfinite(float(torch.tensor(top, dtype=torch.float64).to(torch.float32))):
        return fin
    fits = torch.isfinite(X.abs().amax(dim=1).to(torch.float32)).cpu()
    local = fits.nonzero().flatten()
    rows = torch.arange(fin.m) if fin.kept is None else fin.kept
    excluded = sorted(fin.excluded + rows[~fits].tolist())
    return FiniteRows(
        G=X.index_select(0, local.to(X.device)), kept=rows[local], excluded=excluded, m=fin.m
    )


class FoolsGold(Defense):
    """The FoolsGold aggregator (Fung et al. 2020) with update histories keyed by client id.

    Parameters: ``num_clients`` (ids ``0..num_clients-1``), ``kappa`` (the logit's confidence
    parameter, paper default 1), ``use_history`` (True: ``H_i`` = sum of all of client i's
    updates so far, as in the paper; False: the current update only, as in the authors' code).

    State: ``history`` float32 Tensor[num_clients, P] (allocated on the first round that needs it;
    a client absent from a round keeps its history), ``rounds_seen`` Tensor[num_clients] (how
    many updates each client has contributed), ``round``. ``diagnostics.scores`` holds
    ``alpha`` (raw weights, float64) and ``diagnostics.extra["all_zero"]`` is True when every
    alpha was 0 and the update is the zero vector.
    """

    name = "foolsgold"
    num_clients: int
    runs_without_finite_rows = True  # the round counter advances even then

    def __init__(self, num_clients: int, kappa: float = 1.0, use_history: bool = True) -> None:
        self.num_clients = as_count(num_clients, "num_clients", minimum=1)
        self.kappa = _check_kappa(kappa)
        if not isinstance(use_history, bool):
            raise ConfigError(f"use_history must be true or false, got {use_history!r}")
        self.use_history = use_history
        self.history: Tensor | None = None
        self._bound = 0.0  # upper bound on max |history| (see _add_to_history)
        self._scale = 1.0  # true histories = history * _scale (a power of two; see below)
        self.rounds_seen = torch.zeros(self.num_clients, dtype=torch.long)
        self.round = 0

    def check_input(self, G: Tensor, ids: Tensor, ctx: AggregationContext) -> None:
        """Every round must have the same number of columns as the histories."""
        P = G.shape[1]
        if self.history is not None and self.history.shape[1] != P:
            raise UpdateError(
                f"G has P={P} columns but earlier rounds had P={self.history.shape[1]}"
            )

    def finite_rows(self, G: Tensor) -> FiniteRows:
        """The hostile-input split, probed by ``max |G|`` (one pass); with ``use_history`` a
        finite row beyond float32's range (the histories' dtype) is excluded too."""
        g_max = max_abs(G)  # finite only if every entry is
        fin = split_finite(G, row_probe=torch.tensor([g_max]))
        if self.use_history:
            fin = _without_rows_beyond_float32(fin, g_max if fin.kept is None else None)
        return fin

    def rule(self, rows: Rows) -> RuleResult:
        """Add each finite row to its client's history, weight the rows by the histories'
        similarity, return the weighted mean of the rows. Absent clients and clients whose row
        was excluded keep their histories."""
        X, fids = rows.G, rows.ids
        mf, P = X.shape
        if mf == 0:
            gram = torch.zeros(0, 0, dtype=torch.float64)
        elif self.use_history:
            gram = self._add_to_history(X, fids)
        else:
            gram = gram64_scaled(X)[0]  # a common power-of-two scale keeps every cosine
        alpha = foolsgold_weights_from_gram(gram, self.kappa)
        total = float(alpha.sum())
        all_zero = total <= 0.0
        if all_zero:
            w = torch.zeros(mf, dtype=X.dtype, device=X.device)
            update = torch.zeros(P, dtype=X.dtype, device=X.device)
        else:
            w = (alpha / total).to(dtype=X.dtype, device=X.device)
            update = weighted_mean(w, X)
        self.rounds_seen[fids] += 1
        self.round += 1
        diagnostics = Diagnostics(
            scores=rows.finite.scatter(alpha.detach().cpu()), extra={"all_zero": all_zero}
        )
        return RuleResult(update=update, weights=w, diagnostics=diagnostics)

    def _add_to_history(self, G: Tensor, ids: Tensor) -> Tensor:
        """Add the rows of G to their clients' histories; return the present histories' Gram
        matrix (float64 [m, m], rows in the order of ``ids``).

        The sum is done in place unless it could overflow float32: ``_bound`` is an upper bound
        on ``max |H|`` (grown by ``max |G|`` each round), so the exact check (and a copy) is only
        needed when the bound nears the float32 maximum. If the sum would overflow, every history
        is halved (and later updates are divided by the accumulated power-of-two ``_scale``):
        a common positive scale leaves the cosine similarities FoolsGold uses unchanged, so huge
        updates cannot make a round fail.

        Row gathers (``index_select``) and scatters (``index_add_``) of [m, P] matrices are slow
        on CPU (fresh pages and a scalar kernel), so rows are added one by one in place, and
        when at least half of the clients are present the Gram matrix of the whole history is
        formed and its [ids, ids] block taken (``python -m benchmarks aggregators``).
        """
        m, P = G.shape
        if self.history is None:
            self.history = torch.zeros(self.num_clients, P, dtype=torch.float32, device=G.device)
            self._bound = 0.0
            self._scale = 1.0
        H = self.history
        everyone = m == self.num_clients and bool(torch.equal(ids, torch.arange(m)))
        upd = G.to(device=H.device, dtype=H.dtype)  # a float64 overflow becomes inf: caught
        if self._scale != 1.0:
            upd = upd / self._scale
        g_max = max_abs(upd)
        if not math.isfinite(g_max):
            check_matrix(G)  # NaN/Inf in G: raise before touching the histories
            # finite entries beyond float32 (aggregate excludes such rows): halving the
            # histories could never make room for them
            raise UpdateError(
                f"update entries up to {max_abs(G):.3g} are beyond the float32 range of the "
                "FoolsGold histories"
            )
        id_list = ids.tolist()
        if self._bound + g_max < 0.5 * _F32_MAX:
            self._bound += g_max
            if everyone:
                H.add_(upd)
            elif H.device.type == "cpu":
                for row, cid in enumerate(id_list):
                    H[cid].add_(upd[row])
            else:
                H.index_add_(0, ids.to(H.device), upd)
        else:
            idx = ids.to(H.device)
            H_new = (H if everyone else H.index_select(0, idx)) + upd
            while not all_finite(H_new):
                H.mul_(0.5)  # exact; cosines of the histories are unchanged
                upd = upd * 0.5
                self._scale *= 2.0
                H_new = (H if everyone else H.index_select(0, idx)) + upd
            if everyone:
                self.history = H = H_new
            else:
                H.index_copy_(0, idx, H_new)
            self._bound = max_abs(H)
        if everyone:
            return gram64(H)
        if 2 * m >= self.num_clients:
            sel = ids.to(H.device)
            return gram64(H)[sel][:, sel]
        return gram64(H.index_select(0, ids.to(H.device)))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume identically: settings and copies of the state."""
        return {
            "num_clients": self.num_clients,
            "kappa": self.kappa,
            "use_history": self.use_history,
            "history": None if self.history is None else self.history.detach().cpu().clone(),
            "rounds_seen": self.rounds_seen.clone(),
            "round": self.round,
            "scale": self._scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; ConfigError (and no change) if it does not fit."""
        required = {"num_clients", "kappa", "use_history", "history", "round"}
        missing = required - set(state)
        if missing:
            raise ConfigError(f"FoolsGold state is missing keys {sorted(missing)}")
        num_clients = as_count(state["num_clients"], "num_clients", minimum=1)
        if num_clients != self.num_clients:
            raise ConfigError(
                f"state is for num_clients={num_clients}, this aggregator has {self.num_clients}"
            )
        kappa = _check_kappa(state["kappa"])
        use_history = state["use_history"]
        if not isinstance(use_history, bool):
            raise ConfigError(f"use_history must be true or false, got {use_history!r}")
        history = state["history"]
        if history is not None:
            history = torch.as_tensor(history).detach()
            if history.dim() != 2 or history.shape[0] != self.num_clients:
                raise ConfigError(
                    f"state history must have shape ({self.num_clients}, P), "
                    f"got {tuple(history.shape)}"
                )
            if not bool(torch.isfinite(history).all()):
                raise ConfigError("state history has NaN/Inf entries")
            history = history.to(torch.float32).clone()
        seen = state.get("rounds_seen")
        if seen is None:
            seen = torch.zeros(self.num_clients, dtype=torch.long)
        else:
            seen = torch.as_tensor(seen).detach().to(torch.long).clone()
            if seen.shape != (self.num_clients,):
                raise ConfigError(
                    f"state rounds_seen must have shape ({self.num_clients},), "
                    f"got {tuple(seen.shape)}"
                )
        rnd = as_count(state["round"], "round", minimum=0)
        scale = state.get("scale", 1.0)  # absent in states saved before it existed
        if (
            isinstance(scale, bool)
            or not isinstance(scale, (int, float))
            or not (math.isfinite(scale) and scale >= 1.0)
        ):
            raise ConfigError(f"state scale must be a finite number >= 1, got {scale!r}")
        scale = float(scale)
        self.kappa, self.use_history = kappa, use_history
        self.history, self.rounds_seen, self.round = history, seen, rnd
        self._bound = 0.0 if history is None else max_abs(history)
        self._scale = scale

    def __repr__(self) -> str:
        return (
            f"FoolsGold(num_clients={self.num_clients}, kappa={self.kappa}, "
            f"use_history={self.use_history})"
        )
