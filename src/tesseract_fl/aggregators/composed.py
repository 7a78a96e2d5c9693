"""A defense preceded by pre-aggregators: ``clip+tesseract`` clips the rows, then TESSERACT.

The composed object is itself an aggregator: the engine, the attacks that read a defense's
public state, FLTrust's root set and the Flower strategy see the rule behind it unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from tesseract_fl.aggregators.base import Aggregate, AggregationContext, Aggregator
from tesseract_fl.preaggregators import PreAggregator


class PreAggregated:
    """``pres`` applied in order to the gradient matrix, then ``rule`` aggregates the result."""

    def __init__(self, pres: list[PreAggregator], rule: Aggregator) -> None:
        self.pres = list(pres)
        self.rule = rule
        self.name = "+".join([*(p.name for p in self.pres), rule.name])

    def __repr__(self) -> str:
        return f"PreAggregated({self.pres!r}, {self.rule!r})"

    def __getattr__(self, attr: str) -> Any:
        # Everything else (c_max, num_clients, needs_root_gradient, root_size, public_state)
        # is the rule's: the pre-aggregators only change the rows it receives.
        if attr in ("pres", "rule"):
            raise AttributeError(attr)
        return getattr(self.rule, attr)

    def aggregate(
        self, G: Tensor, client_ids: Tensor | None = None, ctx: AggregationContext | None = None
    ) -> Aggregate:
        """Transform ``G`` by each pre-aggregator, aggregate with the rule; the pre-aggregators'
        reports join the rule's ``diagnostics.extra``."""
        reports: dict[str, Any] = {}
        for pre in self.pres:
            G, rec = pre.transform(G)
            reports.update(rec)
        agg = self.rule.aggregate(G, client_ids, ctx)
        agg.diagnostics.extra.update(reports)
        return agg

    def state_dict(self) -> dict[str, Any]:
        """The rule's state, and each pre-aggregator's by name."""
        return {"rule": self.rule.state_dict(), "pre": {p.name: p.state_dict() for p in self.pres}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.rule.load_state_dict(state["rule"])
        for p in self.pres:
            p.load_state_dict(state.get("pre", {}).get(p.name, {}))
