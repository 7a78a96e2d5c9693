"""A defense preceded by pre-aggregators: ``clip+tesseract`` clips the rows, then TESSERACT.

The composed object is itself an aggregator: the engine, the attacks that read a defense's
public state, FLTrust's root set and the Flower strategy see the rule behind it unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import Aggregate, AggregationContext, Aggregator, Diagnostics
from tesseract_fl.preaggregators import PreAggregator
from tesseract_fl.preaggregators.base import RowMixer


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
        reports join the rule's ``diagnostics.extra``.

        A pre-aggregator that changes the rows (bucketing) returns its mixing matrix ``M``:
        the rule then sees the mixed rows as clients ``0..B-1`` with the summed sample counts,
        its weights are mapped back (``M^T w``), and its per-row diagnostics, which name
        buckets, move to ``extra["buckets"]``."""
        reports: dict[str, Any] = {}
        M: Tensor | None = None
        X = G
        for pre in self.pres:
            if isinstance(pre, RowMixer):
                X, step, rec = pre.mix(X)
                M = step if M is None else step @ M
            else:
                X, rec = pre.transform(X)
            reports.update(rec)
        if M is None:
            agg = self.rule.aggregate(X, client_ids, ctx)
            agg.diagnostics.extra.update(reports)
            return agg
        return self._aggregate_mixed(G, X, M, ctx, reports)

    def _aggregate_mixed(
        self,
        G: Tensor,
        X: Tensor,
        M: Tensor,
        ctx: AggregationContext | None,
        reports: dict[str, Any],
    ) -> Aggregate:
        """The rule on mixed rows ``X = M @ G``; weights and diagnostics back on G's rows."""
        ctx = AggregationContext() if ctx is None else ctx
        n = ctx.n_samples
        if n is not None:
            members = (M > 0).to(torch.float64)
            n = (members @ torch.as_tensor(n, dtype=torch.float64).cpu()).to(torch.float32)
        inner = self.rule.aggregate(
            X, torch.arange(X.shape[0]), dataclasses.replace(ctx, n_samples=n)
        )
        weights = (M.T @ inner.weights.detach().cpu().to(torch.float64)).to(
            dtype=inner.weights.dtype, device=inner.weights.device
        )
        excluded = (~torch.isfinite(G).all(dim=1)).nonzero().flatten().tolist()
        diagnostics = Diagnostics(
            excluded=excluded, extra={**reports, "buckets_diagnostics": inner.diagnostics}
        )
        return Aggregate(update=inner.update, weights=weights, diagnostics=diagnostics)

    def state_dict(self) -> dict[str, Any]:
        """The rule's state, and each pre-aggregator's by name."""
        return {"rule": self.rule.state_dict(), "pre": {p.name: p.state_dict() for p in self.pres}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.rule.load_state_dict(state["rule"])
        for p in self.pres:
            p.load_state_dict(state.get("pre", {}).get(p.name, {}))
