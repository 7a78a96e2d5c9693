"""The pre-aggregator contract."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class PreAggregator(Protocol):
    """Maps a ``[m, P]`` gradient matrix to another one with the same rows' clients.

    ``transform`` returns the new matrix and a record of what it did (plain floats and lists
    per row, for the store). Rows with a NaN/Inf entry are passed through unchanged: the rule
    after it excludes them under the hostile-input policy.
    """

    name: str

    def transform(self, G: Tensor) -> tuple[Tensor, dict[str, Any]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class RowMixer(Protocol):
    """A pre-aggregator that changes the rows (bucketing): ``mix(G)`` returns the new rows
    ``X [B, P]``, the mixing matrix ``M [B, m]`` (float64, ``X = M @ G``) and a report, so the
    composed defense can map the rule's weights back to the clients."""

    name: str

    def mix(self, G: Tensor) -> tuple[Tensor, Tensor, dict[str, Any]]: ...
