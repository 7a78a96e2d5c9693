"""The server's side of a round, shared by the simulator and the Flower strategy (docs/design.md,
"The FedSGD round"): aggregate the round's rows with the defense, refuse a non-finite update,
give every row a flip-score against the previous global direction, and turn the result into the
store's typed records.

The simulator computes the rows itself (clients' gradients, then the attack); the Flower
strategy receives them from nodes. From the rows on, both run these functions, so a defense sees
the same call and the store the same records whichever way the round was run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from tesseract_fl.aggregators.base import Aggregate, AggregationContext, finite
from tesseract_fl.aggregators.tesseract import flip_scores
from tesseract_fl.errors import UpdateError
from tesseract_fl.experiments.store import ClientRow, RoundMetrics
from tesseract_fl.validation import finite_or_none

__all__ = [
    "AggregatedRound",
    "NonFiniteUpdateError",
    "aggregate_round",
    "client_rows",
    "next_direction",
    "round_metrics",
]


class Aggregates(Protocol):
    """What the round needs of a defense: an :class:`~tesseract_fl.aggregators.Aggregator`, or
    the Flower strategy's defense over node slots."""

    def aggregate(self, G: Tensor, client_ids: Tensor, ctx: AggregationContext) -> Aggregate: ...


class NonFiniteUpdateError(UpdateError):
    """The defense returned an update with NaN/Inf entries: the server step must not be taken."""


@dataclass(frozen=True)
class AggregatedRound:
    """A round's aggregate and every row's flip-score (``None`` when not asked for and the
    defense does not report them)."""

    aggregate: Aggregate
    flip_scores: Tensor | None


def aggregate_round(
    defense: Aggregates,
    G: Tensor,
    client_ids: Tensor,
    ctx: AggregationContext,
    *,
    s_g: Tensor | None,
    want_flip_scores: bool,
) -> AggregatedRound:
    """``defense.aggregate(G, client_ids, ctx)``, refusing a non-finite update
    (:class:`NonFiniteUpdateError`), with the rows' flip-scores: the defense's own (TESSERACT)
    or, when ``want_flip_scores``, computed against ``s_g``, the sign of the previous global
    update (zeros before the first round; paper Alg. 1 line 3), so Figure 2 can be drawn for
    any defense."""
    agg = defense.aggregate(G, client_ids, ctx)
    if not finite(agg.update):
        raise NonFiniteUpdateError("the aggregated update is not finite")
    fs = agg.diagnostics.flip_scores
    if fs is None and want_flip_scores:
        fs = every_flip_score(G, s_g)
    return AggregatedRound(aggregate=agg, flip_scores=fs)


def every_flip_score(G: Tensor, s_g: Tensor | None) -> Tensor:
    """Every row's flip-score against ``s_g`` (zeros when ``None``), on the CPU."""
    s = s_g if s_g is not None else torch.zeros(G.shape[1])
    return flip_scores(G, s.to(G.device)).cpu()


def next_direction(update: Tensor) -> Tensor:
    """The flip-score reference of the next round: the sign of this round's update (CPU)."""
    return torch.sign(update.detach()).cpu()


def client_rows(
    client_ids: Sequence[int],
    malicious: Sequence[bool],
    agg: Aggregate,
    flip_scores: Tensor | None,
) -> list[ClientRow]:
    """The store's per-client rows of a round, one per row of the aggregated matrix: its flip-
    score, the defense's reputation (when it keeps one) and the row's weight in the update."""
    rep = agg.diagnostics.reputation
    w = agg.weights.detach().cpu().to(torch.float64)
    return [
        ClientRow(
            client=int(cid),
            malicious=bool(mal),
            flip_score=None if flip_scores is None else finite_or_none(float(flip_scores[i])),
            reputation=None if rep is None else float(rep[i]),
            weight=float(w[i]),
        )
        for i, (cid, mal) in enumerate(zip(client_ids, malicious, strict=True))
    ]


def round_metrics(
    lr: float,
    train_loss: float | None,
    agg: Aggregate | None,
    test_accuracy: float | None = None,
    test_loss: float | None = None,
) -> RoundMetrics:
    """The store's metrics row of a round (non-finite values become ``None``)."""
    d = agg.diagnostics if agg is not None else None
    return RoundMetrics(
        lr=lr,
        train_loss=finite_or_none(train_loss),
        test_accuracy=test_accuracy,
        test_loss=finite_or_none(test_loss),
        fs_low=None if d is None else finite_or_none(d.fs_low),
        fs_high=None if d is None else finite_or_none(d.fs_high),
    )
