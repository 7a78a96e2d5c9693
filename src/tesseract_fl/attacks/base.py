"""Shared types of all attacks (docs/design.md, "Attack interface"): what an attack sees and
what it returns.

A *model-poisoning* attack maps the round's honest gradient matrix ``G_honest`` [m, P] (row i is
client i's honest gradient, attackers included: full knowledge) to the ``[c, P]`` rows the
``c`` malicious clients send instead. A *data-poisoning* attack changes the malicious clients'
labels before they compute honest gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import check_matrix
from tesseract_fl.errors import ConfigError, UpdateError


class DefenseView:
    """Read-only window on the defense for adaptive attacks: the attack cannot change the
    defense's state.

    Exposes the defense's ``name``, ``c_max`` and :meth:`public_state` (copies of what the paper's
    adaptive attacker is assumed to know: TESSERACT's previous-round ``fs_low``/``fs_high`` and
    ``s_g``). It has no ``aggregate`` and refuses attribute assignment.
    """

    __slots__ = ("_defense",)
    _defense: Any

    def __init__(self, defense: Any) -> None:
        object.__setattr__(self, "_defense", defense)

    @property
    def name(self) -> str:
        return str(getattr(self._defense, "name", type(self._defense).__name__))

    @property
    def c_max(self) -> int | None:
        c = getattr(self._defense, "c_max", None)
        return None if c is None else int(c)

    def public_state(self) -> dict[str, Any]:
        """Copies of the defense's public state (``{}`` for defenses that publish none)."""
        fn = getattr(self._defense, "public_state", None)
        if fn is None:
            return {}
        state = fn()
        return {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in state.items()}

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("the defense is read-only for attacks")

    def __repr__(self) -> str:
        return f"DefenseView({self.name})"


@dataclass
class AttackContext:
    """Full knowledge of the round (docs/design.md, "Attack interface").

    ``malicious``: bool mask [m] of the attackers' rows in ``G_honest``; ``c_max``: clients the
    server assumes malicious; ``generator``: the run's seeded RNG (every random draw of an attack
    comes from it, so runs are reproducible); ``defense``: read-only :class:`DefenseView` or None;
    ``root_gradient``: the server's root-set gradient of this round when the defense computes one
    (FLTrust; full knowledge includes it), else None.
    """

    malicious: Tensor
    c_max: int = 0
    round: int = 0
    generator: torch.Generator | None = None
    defense: DefenseView | None = None
    root_gradient: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_malicious(self) -> int:
        return int(self.malicious.sum())


@dataclass
class Poison:
    """An attack's output: the malicious rows [c, P] (in ascending attacker-row order) and what
    the attack did this round (e.g. Full-Krum's ``lambda``), stored per round in the results."""

    rows: Tensor
    record: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class ModelAttack(Protocol):
    """Model poisoning: ``poison(G_honest, ctx)`` -> :class:`Poison` with ``c`` rows."""

    name: str

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison: ...


@runtime_checkable
class DataAttack(Protocol):
    """Data poisoning: relabel a malicious client's batch before its honest gradient."""

    name: str

    def poison_labels(self, y: Tensor, num_classes: int) -> Tensor: ...


def malicious_mask(m: int, num_malicious: int, malicious_rows: Any = None) -> Tensor:
    """Bool mask [m] of the attackers' rows: ``malicious_rows`` (indices or a bool mask), else
    the first ``num_malicious`` rows (the convention of the functional API)."""
    if isinstance(num_malicious, bool) or not isinstance(num_malicious, int):
        raise ConfigError(f"num_malicious must be an integer, got {num_malicious!r}")
    if not 1 <= num_malicious <= m:
        raise ConfigError(f"num_malicious must be in [1, {m}] for {m} rows, got {num_malicious}")
    mask = torch.zeros(m, dtype=torch.bool)
    if malicious_rows is None:
        mask[:num_malicious] = True
        return mask
    rows = torch.as_tensor(malicious_rows).detach().cpu()
    if rows.dtype == torch.bool:
        if rows.shape != (m,):
            raise UpdateError(f"malicious mask must have shape ({m},), got {tuple(rows.shape)}")
        mask = rows.clone()
    else:
        rows = rows.long().flatten()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= m):
            raise UpdateError(f"malicious rows must be in [0, {m}), got {rows.tolist()}")
        mask[rows] = True
    if int(mask.sum()) != num_malicious:
        raise UpdateError(
            f"malicious rows name {int(mask.sum())} distinct rows, num_malicious is {num_malicious}"
        )
    return mask


def benign_index(mask: Tensor) -> Tensor:
    """Indices of the rows outside the attackers' ``mask``, ascending."""
    return (~mask).nonzero().flatten()


def benign_rows(G: Tensor, mask: Tensor) -> Tensor:
    """The rows of ``G`` outside the attackers' ``mask`` (on G's device): a view when they are
    one contiguous block of a contiguous ``G`` (the attackers first or last: the functional
    API's convention), else a copy. Either way the same values in the same layout, so what is
    computed from them is the same; the view spares copying most of the round's matrix."""
    keep = benign_index(mask)
    if keep.numel():
        lo, hi = int(keep[0]), int(keep[-1]) + 1
        if hi - lo == keep.numel():
            view = G[lo:hi]
            if view.is_contiguous():
                return view
    return G[~mask]


def check_honest(G_honest: Tensor, num_malicious: int, *, min_benign: int = 1) -> None:
    """Validate the honest matrix and that enough benign rows remain for the attack's estimate."""
    check_matrix(G_honest)
    m = G_honest.shape[0]
    if m - num_malicious < min_benign:
        raise ConfigError(
            f"the attack needs at least {min_benign} benign rows, got m={m} with "
            f"{num_malicious} malicious"
        )


def uniform(
    shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None, like: Tensor
) -> Tensor:
    """U(low, high) draws from ``generator`` (on the CPU, so results do not depend on device)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float32)
    u.mul_(high - low).add_(low)  # in place: the same values as low + (high - low) * u
    return u.to(device=like.device, dtype=like.dtype)
