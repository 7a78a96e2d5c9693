"""Stable aggregator slots for Flower node ids, and aggregators that grow with them.

Our aggregators key their state (TESSERACT's reputations, FoolsGold's histories) by integer
client ids in ``[0, num_clients)``. Flower identifies a SuperNode by a random 64-bit node id and
delivers replies in any order, with nodes joining late or dropping out. :class:`NodeSlots` gives
every node id the next free slot the first time it is seen and keeps it for the whole run, so a
node's state follows the node, never its position in a reply list. :class:`SlotAggregator` owns
the aggregator and rebuilds it with a larger ``num_clients`` (state carried over, new slots at
their initial state) when more nodes appear than it has room for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators import Aggregate, AggregationContext, Aggregator, make_aggregator
from tesseract_fl.errors import ConfigError

__all__ = ["PER_CLIENT_STATE", "NodeSlots", "SlotAggregator", "grow_state"]

#: State entries (of the built-in stateful aggregators) that hold one row per client id; a custom
#: stateful aggregator can name its own in a ``per_client_state`` class attribute.
PER_CLIENT_STATE: tuple[str, ...] = ("reputation", "history", "rounds_seen")


class NodeSlots:
    """Flower node id -> slot (the client id our aggregators see), assigned once per node."""

    def __init__(self) -> None:
        self._slots: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._slots

    def slot(self, node_id: int) -> int:
        """The slot of a known node (KeyError for a node never seen)."""
        return self._slots[node_id]

    def assign(self, node_ids: Iterable[int]) -> list[int]:
        """Slots of ``node_ids`` (in the given order); unseen nodes get the next free slots in
        ascending node-id order, so the assignment does not depend on the replies' order."""
        ids = [int(n) for n in node_ids]
        for node in sorted(set(ids) - set(self._slots)):
            self._slots[node] = len(self._slots)
        return [self._slots[n] for n in ids]

    def node_ids(self) -> list[int]:
        """Every known node id, in slot order."""
        return sorted(self._slots, key=self._slots.__getitem__)

    def state_dict(self) -> dict[str, Any]:
        return {"slots": {str(k): v for k, v in self._slots.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        slots = {int(k): int(v) for k, v in state["slots"].items()}
        if sorted(slots.values()) != list(range(len(slots))):
            raise ConfigError("node slot state must map node ids onto 0..n-1")
        self._slots = slots


def grow_state(state: dict[str, Any], old: int, new: int, keys: Iterable[str]) -> dict[str, Any]:
    """A copy of an aggregator's ``state_dict`` for ``new`` >= ``old`` clients: ``num_clients``
    updated and every per-client entry (``keys``; nested states such as TESSERACT's
    ``filter_then_state`` too) padded with zero rows, the initial state of a new client."""
    keys = tuple(keys)
    out: dict[str, Any] = {}
    for k, v in state.items():
        if k == "num_clients" and v == old:
            out[k] = new
        elif k in keys and isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == old:
            pad = torch.zeros((new - old, *v.shape[1:]), dtype=v.dtype, device=v.device)
            out[k] = torch.cat([v, pad])
        elif isinstance(v, dict):
            out[k] = grow_state(v, old, new, keys)
        else:
            out[k] = v
    return out


class SlotAggregator:
    """A registry aggregator (by name) over node slots, grown as new nodes appear; or a defense
    instance the caller built, used as it is (it cannot be rebuilt larger: a stateful one holds
    at most its ``num_clients`` slots).

    ``capacity`` is the initial ``num_clients`` (at least ``2 c_max + 1``, TESSERACT's minimum);
    ``max_capacity`` (None: unbounded) caps the growth. Growing doubles the capacity (or more, to
    fit), rebuilds the aggregator with :func:`make_aggregator` and loads the old state padded by
    :func:`grow_state`; results do not depend on the capacity (the rules use the clients present
    in the round). Unknown names and parameters fail here with the registry's
    :class:`ConfigError`.
    """

    def __init__(
        self,
        name: str | Aggregator,
        *,
        c_max: int,
        params: dict[str, Any] | None = None,
        capacity: int = 8,
        max_capacity: int | None = None,
    ) -> None:
        self.c_max = int(c_max)
        self.max_capacity = max_capacity
        self.instance = not isinstance(name, str)
        if self.instance:
            assert not isinstance(name, str)
            if params:
                raise ConfigError("defense_params apply to a defense name, not to an instance")
            self.name, self.params = str(name.name), {}
            self.aggregator: Aggregator = name
            slots = getattr(name, "num_clients", None)
            self.capacity = int(slots) if slots is not None else (max_capacity or 2**31 - 1)
            return
        self.name = str(name)
        self.params = dict(params or {})
        self.capacity = max(int(capacity), 2 * self.c_max + 1, 1)
        if max_capacity is not None and self.capacity > max_capacity:
            raise ConfigError(
                f"max_capacity = {max_capacity} is below the {self.capacity} slots that "
                f"c_max = {self.c_max} needs"
            )
        self.aggregator = make_aggregator(
            self.name, num_clients=self.capacity, c_max=self.c_max, **self.params
        )

    def ensure(self, slots_needed: int) -> None:
        """Make room for slots ``0..slots_needed-1`` (rebuild with the state carried over)."""
        if slots_needed <= self.capacity:
            return
        if self.instance:
            raise ConfigError(
                f"{slots_needed} nodes have taken part, but the defense instance keeps state "
                f"for {self.capacity} clients (build it with more, or pass its name)"
            )
        if self.max_capacity is not None and slots_needed > self.max_capacity:
            raise ConfigError(
                f"{slots_needed} nodes have taken part, more than max_capacity = "
                f"{self.max_capacity}"
            )
        new = max(slots_needed, 2 * self.capacity)
        if self.max_capacity is not None:
            new = min(new, self.max_capacity)
        state = self.aggregator.state_dict()
        rebuilt = make_aggregator(self.name, num_clients=new, c_max=self.c_max, **self.params)
        if state:
            keys = getattr(self.aggregator, "per_client_state", PER_CLIENT_STATE)
            rebuilt.load_state_dict(grow_state(state, self.capacity, new, keys))
        self.aggregator, self.capacity = rebuilt, new

    def aggregate(self, G: Tensor, slots: Tensor, ctx: AggregationContext) -> Aggregate:
        """Aggregate rows ``G`` of clients ``slots`` (growing first if a slot needs room)."""
        if slots.numel():
            self.ensure(int(slots.max()) + 1)
        return self.aggregator.aggregate(G, slots, ctx)
