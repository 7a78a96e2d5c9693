"""Mimic (Karimireddy, He and Jaggi 2022, "Byzantine-Robust Learning on Heterogeneous Datasets
via Bucketing", ICLR, Sec. 4 and App.; ByzFL's ``Mimic``; docs/design.md, "Mimic").

Every attacker sends the honest gradient of one benign client ``i*``: nothing it sends is an
outlier, yet over-weighting one client's data skews the model under heterogeneity. Two ways to
pick ``i*``:

* ``epsilon = k`` (ByzFL's ``Mimic(epsilon)``): the ``k``-th benign row, in client order.
* ``epsilon = None`` (Karimireddy et al.'s choice, the default): during the first ``warmup``
  rounds, the attackers track the top principal direction ``z`` of the centered benign
  gradients ``d_i = g_i - mean(g)`` by one power-iteration step per round,
  ``z <- sum_i (d_i . z) d_i / ||.||`` (started from the first round's largest-norm ``d_i``), and
  pick ``i* = argmax_i |d_i . z|``, the client that most strongly pulls along the direction in
  which the benign clients differ; from round ``warmup`` on, ``i*`` stays fixed. Its state
  (``z``, ``i*``, rounds seen) is in :meth:`Mimic.state_dict`, so a resumed run continues it.

The record holds ``mimicked``: the client row copied this round.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tesseract_fl.attacks.base import (
    AttackContext,
    Poison,
    benign_index,
    benign_rows,
    check_honest,
    malicious_mask,
)
from tesseract_fl.errors import ConfigError

__all__ = ["Mimic", "mimic"]


def mimic(G_benign: Tensor, c: int, epsilon: int = 0) -> Tensor:
    """``c`` copies of the ``epsilon``-th row of ``G_benign`` [n, P] (ByzFL's ``Mimic``)."""
    check_honest(G_benign, 0, min_benign=1)
    if not 0 <= epsilon < G_benign.shape[0]:
        raise ConfigError(f"mimic epsilon must be in [0, {G_benign.shape[0]}), got {epsilon}")
    return G_benign[epsilon].detach().expand(c, -1).clone()


def _power_step(D: Tensor, z: Tensor | None) -> Tensor:
    """One power-iteration step of the covariance ``D^T D`` from ``z`` (from the row of largest
    norm when ``z`` is None): the unit vector ``D^T (D z)`` normalized."""
    if z is None:
        z = D[int(torch.linalg.vector_norm(D, dim=1).argmax())]
    nxt = D.T @ (D @ z)
    norm = torch.linalg.vector_norm(nxt)
    return nxt / norm if float(norm) > 0 else z


class Mimic:
    """Mimic: the attackers copy one benign client's gradient (``epsilon``) or the one chosen
    along the benign clients' top principal direction during ``warmup`` rounds."""

    name = "mimic"

    def __init__(self, *, epsilon: int | None = None, warmup: int = 10) -> None:
        if epsilon is not None and (
            isinstance(epsilon, bool) or not isinstance(epsilon, int) or epsilon < 0
        ):
            raise ConfigError(f"attack.epsilon must be a non-negative integer, got {epsilon!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ConfigError(f"attack.warmup must be an integer >= 1, got {warmup!r}")
        self.epsilon = epsilon
        self.warmup = warmup
        self._z: Tensor | None = None
        self._chosen: int | None = None
        self._seen = 0

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        """``c`` copies of the chosen benign row (its index among all rows is recorded)."""
        c = ctx.num_malicious
        check_honest(G_honest, c, min_benign=1)
        mask = malicious_mask(G_honest.shape[0], c, ctx.malicious).to(G_honest.device)
        benign_idx = benign_index(mask)
        n_benign = benign_idx.numel()
        if self.epsilon is not None:
            if self.epsilon >= n_benign:
                raise ConfigError(
                    f"attack.epsilon = {self.epsilon} but there are {n_benign} benign clients"
                )
            k = self.epsilon
        else:
            if self._seen < self.warmup or self._chosen is None:
                # Only the warm-up rounds read the benign rows as a whole.
                B = benign_rows(G_honest.detach(), mask)
                D = (B - B.mean(dim=0)).double()
                self._z = _power_step(D, None if self._z is None else self._z.to(D))
                self._chosen = int((D @ self._z).abs().argmax())
                self._seen += 1
            k = min(self._chosen, n_benign - 1)
        row = int(benign_idx[k])
        return Poison(G_honest.detach()[row].expand(c, -1).clone(), {"mimicked": float(row)})

    def state_dict(self) -> dict[str, Any]:
        """The tracked direction, the chosen benign row and the warm-up rounds seen."""
        return {"z": self._z, "chosen": self._chosen, "seen": self._seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"z", "chosen", "seen"}
        if unknown:
            raise ConfigError(f"Mimic: unexpected state keys {sorted(unknown)}")
        z = state.get("z")
        if z is not None and not isinstance(z, Tensor):
            raise ConfigError("Mimic: state 'z' must be a tensor or None")
        chosen = state.get("chosen")
        self._z = z
        self._chosen = None if chosen is None else int(chosen)
        self._seen = int(state.get("seen", 0))

    def __repr__(self) -> str:
        if self.epsilon is not None:
            return f"Mimic(epsilon={self.epsilon})"
        return f"Mimic(warmup={self.warmup})"
