"""Every tesseract-fl defense as a Flower strategy (Message API, ``flwr.serverapp.strategy``).

:class:`RobustStrategy` is Flower's ``FedAvg`` with the aggregation step replaced: clients send
gradients (FedSGD, as in our simulator), the strategy stacks them into ``G [m, P]`` keyed by
stable node slots, aggregates with any registered aggregator (the same code the simulator runs),
and takes the server SGD step ``theta <- theta - lr_t * update`` on the global model. Node
sampling, messaging and federated evaluation stay Flower's.

Why slots: a Flower node id is a random 64-bit integer and replies arrive in any order; defenses
with state (TESSERACT's reputations, FoolsGold's histories) must follow the node. Each node id
gets a slot the first time it replies and keeps it, rows of ``G`` are ordered by slot, and the
aggregator grows when new nodes join (:mod:`tesseract_fl.flower.slots`). A node that misses
rounds keeps its state (TESSERACT: its reputation is neither decayed nor changed while absent).

Hostile nodes (docs/design.md, hostile-input policy): every field of a reply that the strategy
reads is checked, train and evaluate replies alike, and whatever it cannot use goes through one
policy, ``on_malformed``, with a log line naming the node. No reply makes the strategy raise
anything but our :class:`UpdateError`, and that only under ``on_malformed="raise"``; at most
``max_nodes`` distinct node ids get defense state, so made-up node ids cannot grow it without
bound.
"""

from __future__ import annotations

import math
import numbers
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from torch import Tensor

from tesseract_fl.aggregators import Aggregate, AggregationContext, Aggregator, PreAggregated
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.experiments.store import ClientRow, ResultsStore, RoundMetrics
from tesseract_fl.flower.records import Layout
from tesseract_fl.flower.slots import NodeSlots, SlotAggregator
from tesseract_fl.preaggregators.clip import DEFAULT_MULTIPLIER, MedianNormClip
from tesseract_fl.simulation.flat import flat_slices
from tesseract_fl.simulation.round import NonFiniteUpdateError, aggregate_round, next_direction
from tesseract_fl.validation import finite_or_none

__all__ = [
    "DEFAULT_MAX_NODES",
    "MAX_EXAMPLES",
    "MalformedPolicy",
    "NodeRound",
    "RobustStrategy",
    "RoundRecord",
]

MalformedPolicy = Literal["penalize", "drop", "raise"]
#: What a node's train reply holds (docs/design.md, "The Flower strategy").
ReplyKind = Literal["gradient", "update", "weights"]
REPLY_KINDS: tuple[str, ...] = ("gradient", "update", "weights")
#: The server learning rate for gradient replies when none is given (the paper's FedSGD lr).
DEFAULT_GRADIENT_LR = 0.01
_MALFORMED = ("penalize", "drop", "raise")

#: Reply metrics kept per node for bookkeeping (shown in results, never used to aggregate);
#: each must be an integer in ``[0, 2**53]``.
INFO_KEYS: tuple[str, ...] = ("partition-id",)

#: Default cap on the distinct node ids that get defense state (FoolsGold keeps ``nodes x P``
#: floats of history): room for a large federation, not for made-up node ids without end.
DEFAULT_MAX_NODES = 1000

#: Largest ``num-examples`` a reply may claim: integers up to 2**53 are exact in float64 and far
#: inside float32's range (the aggregators' sample weights are float32).
MAX_EXAMPLES = 2**53

#: Largest valid Flower node id (node ids are unsigned 64-bit integers).
_MAX_NODE_ID = 2**64 - 1


@dataclass
class NodeRound:
    """One node's part in one round (``reputation`` None for defenses without reputations)."""

    node_id: int
    slot: int
    weight: float
    flip_score: float
    reputation: float | None
    malicious: bool
    num_examples: float


@dataclass
class RoundRecord:
    """What the strategy did in one round (``round`` is Flower's ``server_round``, from 1)."""

    round: int
    lr: float
    seconds: float
    train_loss: float | None
    nodes: list[NodeRound] = field(default_factory=list)
    fs_low: float | None = None
    fs_high: float | None = None
    malformed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: str | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None


def instance_with_safeguard(defense: Aggregator, multiplier: float | None) -> Aggregator:
    """A defense instance with the median-norm clip in front (unless ``multiplier`` is None or
    it already starts with a ``clip`` pre-aggregator)."""
    if multiplier is None or str(defense.name).strip().lower().startswith("clip+"):
        return defense
    _check_real("safeguard", multiplier, low=1.0, low_open=False)
    return PreAggregated([MedianNormClip(float(multiplier))], defense)


def with_safeguard(
    defense: str, params: dict[str, Any] | None, multiplier: float | None
) -> tuple[str, dict[str, Any]]:
    """The defense name and parameters with the median-norm clip in front (unless ``multiplier``
    is None or the name already starts with a ``clip`` pre-aggregator)."""
    out = dict(params) if params is not None else {}
    if multiplier is None or defense.strip().lower().startswith("clip+"):
        return defense, out
    _check_real("safeguard", multiplier, low=1.0, low_open=False)
    out["clip"] = {"multiplier": float(multiplier)}
    return f"clip+{defense}", out


class RobustStrategy(FedAvg):
    """Any tesseract-fl defense (``defense``: a registry name, built-in or plugin, or an
    aggregator instance) in a Flower app, for FedSGD apps (nodes reply with a gradient) and
    FedAvg apps (nodes train locally and reply with their new weights or their update).

    Parameters beyond ``FedAvg``'s (sampling, record keys, evaluation):

    - ``reply``: what a train reply's ``ArrayRecord`` holds (flat under ``"gradient"`` or per
      layer with the model's keys): ``"gradient"`` (default; FedSGD), ``"weights"`` (the node's
      new weights after any number of local epochs or steps) or ``"update"``
      (``w_local - w_global``). Weights and updates become pseudo-gradients
      ``w_global - w_local``, which the defense aggregates and the server applies as
      ``theta -= lr * aggregate``; with ``lr = 1`` (the default for these kinds) and
      ``defense = "fedsgd"`` that is FedAvg. Flip-scores then compare the signs of each
      pseudo-gradient with those of the last global pseudo-gradient: a multi-step update that
      moves against the federation's direction flips as a one-step gradient does.

    - ``defense``, ``defense_params``: the aggregator, as ``make_aggregator`` builds it (unknown
      names or parameters raise :class:`ConfigError` listing the allowed ones); ``c_max``: the
      number of nodes assumed malicious. ``defense`` may instead be an instance you built
      (e.g. ``Tesseract(num_clients=50, c_max=5, mu_d=0.95)`` or a plugin class's object):
      it is used as it is (no ``defense_params``; its ``c_max``, if it has one, must equal
      the strategy's), and a stateful one keeps state for at most its ``num_clients`` nodes,
      so ``max_nodes`` is capped there.
    - ``lr``: server learning rate, a finite number > 0 or ``round -> lr`` (rounds from 0, as
      the simulator's schedules; every value must be a finite number >= 0, else the round
      raises :class:`ConfigError`); default 0.01 for gradient replies, 1.0 for weights and
      updates.
    - ``capacity`` / ``max_nodes``: initial and maximal number of node slots (slots grow by
      doubling, never beyond ``max_nodes``; results do not depend on the capacity).
      ``max_nodes`` (default :data:`DEFAULT_MAX_NODES`) bounds the defense state: a reply from
      a new node once that many distinct nodes have slots goes through ``on_malformed``
      (dropped, as it has no slot to penalize, or ``"raise"``).
    - ``safeguard``: every reply's gradient is clipped to this many times the round's median
      norm before the defense (the ``clip`` pre-aggregator, :mod:`tesseract_fl.preaggregators`):
      a deployed server meets magnitude attacks that the paper's threat model leaves out (two
      nodes sending 3e38 would otherwise move the model by about 1e37 under TESSERACT, whose
      softmax never gives a row weight 0). ``None`` switches it off (the simulator's paper
      presets run without it); a ``defense`` already starting with ``clip+`` is left as given.
    - ``root_gradient_fn(server_round, arrays) -> Tensor[P]``: the server's gradient on its clean
      root set at the current model; required by FLTrust.
    - ``on_malformed``: a reply the strategy cannot use (not exactly one ``ArrayRecord`` and one
      ``MetricRecord``; a gradient with the wrong keys, shape, dtype or bytes; ``num-examples``
      missing or not a number in ``(0, 2**53]`` that float32 keeps positive; a loss that is not
      a finite number; a label other than 0/1; a ``partition-id`` that is not an integer in
      ``[0, 2**53]``) is logged naming the node, then ``"penalize"`` (default: it becomes a NaN
      row, so the hostile-row policy gives it weight 0 and TESSERACT penalizes it as maximally
      suspicious), ``"drop"`` (treated as absent) or ``"raise"`` (UpdateError naming the node
      ends the run). NaN/Inf gradient values are not malformed: the aggregators' policy handles
      them. Reply metrics the strategy does not read are ignored. Federated-evaluation replies
      go through the same checks (a malformed one is left out of the average, or raises).
    - ``store`` (path or open :class:`ResultsStore`), ``run_id``, ``run_name``, ``run_config``:
      where the rounds are written (``runs``/``metrics``/``clients`` rows as the simulator's
      runner writes them; the ``clients`` table's client is the node's slot, and the run's
      summary maps slots to node ids). ``record_every``: per-node rows every that many rounds.
    - ``loss_key``, ``label_key``: reply metrics read for bookkeeping only: the clients' training
      loss, and an experiment's ground-truth "this node is malicious" flag (stored, shown, never
      used to aggregate).

    Settings are checked here: a bad one raises one :class:`ConfigError` naming it and what is
    allowed (``fraction_train`` in ``(0, 1]``, ``fraction_evaluate`` in ``[0, 1]``, node counts
    positive integers no larger than ``max_nodes``, record keys distinct non-empty strings).

    Per round, ``aggregate_train`` returns a ``MetricRecord`` with ``train-loss``, ``lr``,
    ``round-seconds``, ``node-ids``, ``weights``, ``flip-scores`` (against the previous global
    update's sign, for every defense), ``reputations`` (TESSERACT), ``fs-low``/``fs-high`` and
    the counts of ``malformed`` and ``failed`` replies; :attr:`history` keeps the same as
    :class:`RoundRecord` objects. A round whose aggregated update (or the stepped model) is not
    finite is skipped with the global model unchanged.
    """

    def __init__(
        self,
        defense: str | Aggregator = "tesseract",
        *,
        c_max: int,
        lr: float | Callable[[int], float] | None = None,
        reply: ReplyKind = "gradient",
        defense_params: dict[str, Any] | None = None,
        capacity: int = 8,
        max_nodes: int = DEFAULT_MAX_NODES,
        safeguard: float | None = DEFAULT_MULTIPLIER,
        root_gradient_fn: Callable[[int, ArrayRecord], Tensor] | None = None,
        on_malformed: MalformedPolicy = "penalize",
        store: ResultsStore | str | Path | None = None,
        run_id: str | None = None,
        run_name: str = "flower",
        run_config: dict[str, Any] | None = None,
        record_every: int = 1,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int | None = None,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int | None = None,
        weighted_by_key: str = "num-examples",
        loss_key: str = "train-loss",
        label_key: str = "malicious",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
    ) -> None:
        if (isinstance(defense, str) and not defense) or not isinstance(defense, str | Aggregator):
            raise ConfigError(
                f"defense must be a registered name or an aggregator instance, got {defense!r}"
            )
        _check_int("c_max", c_max, 0)
        if not isinstance(defense, str):
            inst_c = getattr(defense, "c_max", None)
            if inst_c is not None and int(inst_c) != c_max:
                raise ConfigError(
                    f"the defense instance has c_max = {inst_c} but the strategy c_max = {c_max}"
                )
            slots = getattr(defense, "num_clients", None)
            if slots is not None:
                max_nodes = min(max_nodes, int(slots))  # it cannot be rebuilt for more
        if not isinstance(reply, str) or reply not in REPLY_KINDS:
            raise ConfigError(
                f"reply = {reply!r}; allowed values: {', '.join(REPLY_KINDS)} (what a node's "
                "train reply holds: its gradient, its update w_local - w_global, or its new "
                "weights)"
            )
        if lr is None:  # FedSGD's step for gradients; a plain FedAvg step for the other kinds
            lr = DEFAULT_GRADIENT_LR if reply == "gradient" else 1.0
        if not isinstance(on_malformed, str) or on_malformed not in _MALFORMED:
            raise ConfigError(
                f"on_malformed = {on_malformed!r}; allowed values: {', '.join(_MALFORMED)}"
            )
        _check_int("record_every", record_every, 1)
        _check_int("max_nodes", max_nodes, 1)
        _check_int("capacity", capacity, 1)
        # TESSERACT and the trimming rules need more than 2 c_max clients per round.
        least = max(2, 2 * c_max + 1)
        if max_nodes < least:
            raise ConfigError(
                f"max_nodes = {max_nodes} is below the {least} nodes that c_max = {c_max} needs"
            )
        if not callable(lr):
            _check_real("lr", lr, low=0.0, low_open=True)
        if defense_params is not None and not (
            isinstance(defense_params, Mapping) and all(isinstance(k, str) for k in defense_params)
        ):
            raise ConfigError(
                "defense_params must be a dict of parameter names to values, got "
                f"{defense_params!r}"
            )
        if root_gradient_fn is not None and not callable(root_gradient_fn):
            raise ConfigError(f"root_gradient_fn must be callable, got {root_gradient_fn!r}")
        if evaluate_metrics_aggr_fn is not None and not callable(evaluate_metrics_aggr_fn):
            raise ConfigError(
                f"evaluate_metrics_aggr_fn must be callable, got {evaluate_metrics_aggr_fn!r}"
            )
        if store is not None and not isinstance(store, (ResultsStore, str, os.PathLike)):
            raise ConfigError(f"store must be a path or a ResultsStore, got {store!r}")
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise ConfigError(f"run_id must be a non-empty string, got {run_id!r}")
        if not isinstance(run_name, str):
            raise ConfigError(f"run_name must be a string, got {run_name!r}")
        if run_config is not None and not isinstance(run_config, Mapping):
            raise ConfigError(f"run_config must be a dict, got {run_config!r}")
        _check_real("fraction_train", fraction_train, low=0.0, high=1.0, low_open=True)
        _check_real("fraction_evaluate", fraction_evaluate, low=0.0, high=1.0)
        for name, count in (
            ("min_train_nodes", min_train_nodes),
            ("min_available_nodes", min_available_nodes),
        ):
            if count is not None:
                _check_int(name, count, 1)
                if count > max_nodes:
                    raise ConfigError(
                        f"{name} = {count} exceeds max_nodes = {max_nodes} (the most nodes the "
                        "strategy keeps state for); raise max_nodes"
                    )
        _check_int("min_evaluate_nodes", min_evaluate_nodes, 0)
        keys = {
            "weighted_by_key": weighted_by_key,
            "loss_key": loss_key,
            "label_key": label_key,
            "arrayrecord_key": arrayrecord_key,
            "configrecord_key": configrecord_key,
        }
        for name, key in keys.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{name} must be a non-empty string, got {key!r}")
        metric_keys = [weighted_by_key, loss_key, label_key, *INFO_KEYS]
        if len(set(metric_keys)) != len(metric_keys):
            raise ConfigError(
                "weighted_by_key, loss_key and label_key must be different metric names, none "
                f"of them {', '.join(map(repr, INFO_KEYS))}; got {weighted_by_key!r}, "
                f"{loss_key!r}, {label_key!r}"
            )
        if arrayrecord_key == configrecord_key:
            raise ConfigError(
                f"arrayrecord_key and configrecord_key must differ, both are {arrayrecord_key!r}"
            )
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=least if min_train_nodes is None else min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=least if min_available_nodes is None else min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        self._custom_evaluate_aggr = evaluate_metrics_aggr_fn is not None
        if isinstance(defense, str):
            defense, defense_params = with_safeguard(defense, defense_params, safeguard)
        else:
            defense = instance_with_safeguard(defense, safeguard)
        self.defense_name = defense if isinstance(defense, str) else str(defense.name)
        self.c_max = c_max
        self.max_nodes = max_nodes
        self.defense = SlotAggregator(
            defense,  # a name (rebuilt larger as nodes join) or the caller's instance
            c_max=c_max,
            params=defense_params,
            capacity=min(capacity, max_nodes),  # only the initial allocation
            max_capacity=max_nodes,
        )
        self.needs_root = bool(self.defense.aggregator.needs_root_gradient)
        if self.needs_root and root_gradient_fn is None:
            raise ConfigError(
                f"defense {self.defense_name!r} needs the server's root gradient: pass "
                "root_gradient_fn(server_round, arrays) -> Tensor[P]"
            )
        self.root_gradient_fn = root_gradient_fn
        self.lr_fn: Callable[[int], float] = lr if callable(lr) else _constant(float(lr))
        self.on_malformed: MalformedPolicy = on_malformed
        self.reply: ReplyKind = reply
        self.record_every = record_every
        self.loss_key = loss_key
        self.label_key = label_key
        self.slots = NodeSlots()
        self.node_info: dict[int, dict[str, Any]] = {}
        self.history: list[RoundRecord] = []
        self.arrays: ArrayRecord | None = None
        self.layout: Layout | None = None
        self._flat_global: Tensor | None = None
        self._s_g: Tensor | None = None
        self._t_round = time.perf_counter()
        self._store_arg = store
        self._store: ResultsStore | None = None
        self.run_id = run_id or f"flower-{uuid.uuid4().hex[:12]}"
        self.run_name = run_name
        self.run_config = dict(run_config or {})

    # ------------------------------------------------------------------ Flower hooks

    def summary(self) -> None:
        """Log the defense next to FedAvg's sampling settings."""
        log(INFO, "\t├──> Defense: %r (c_max=%d)", self.defense.aggregator, self.c_max)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling and messages; remembers the global model the gradients refer to."""
        self._set_model(arrays)
        self._t_round = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Stack the replies' gradients by node slot, aggregate with the defense, take the SGD
        step; returns the new global model and the round's metrics (module docstring)."""
        if self.arrays is None or self.layout is None:
            raise UpdateError("aggregate_train before configure_train: no global model to update")
        layout = self.layout
        usable, malformed, failed = self._read_replies(server_round, replies)
        rows, examples, losses = self._round_rows(usable, layout)
        record = RoundRecord(
            round=server_round,
            lr=self._round_lr(server_round),
            seconds=0.0,
            train_loss=None,
            malformed=malformed,
            failed=failed,
        )
        if not rows:
            record.skipped = "no usable replies"
            return self._finish_round(record, None)

        nodes = list(rows)
        slot_list = self.slots.assign(nodes)
        order = sorted(range(len(nodes)), key=slot_list.__getitem__)
        nodes = [nodes[i] for i in order]
        slots = torch.tensor([slot_list[i] for i in order], dtype=torch.long)
        G = torch.stack([rows[n] for n in nodes])
        n_samples = torch.tensor([examples[n] for n in nodes], dtype=torch.float32)
        ctx = AggregationContext(
            n_samples=n_samples,
            root_gradient=self._root_gradient(server_round, layout) if self.needs_root else None,
        )
        out = self._aggregate_and_step(server_round, G, slots, ctx, record)
        if out is None:
            return self._finish_round(record, None)
        agg, fs, update, new_arrays = out

        if losses:
            weights_l = [examples[n] for n in losses]
            record.train_loss = sum(
                w * v for w, v in zip(weights_l, losses.values(), strict=True)
            ) / sum(weights_l)
        rep = agg.diagnostics.reputation
        w = agg.weights.detach().cpu().to(torch.float64)
        record.nodes = [
            NodeRound(
                node_id=n,
                slot=int(slots[i]),
                weight=float(w[i]),
                flip_score=float(fs[i]),
                reputation=None if rep is None else float(rep[i]),
                malicious=bool(self.node_info.get(n, {}).get("malicious", False)),
                num_examples=examples[n],
            )
            for i, n in enumerate(nodes)
        ]
        record.fs_low = finite_or_none(agg.diagnostics.fs_low)
        record.fs_high = finite_or_none(agg.diagnostics.fs_high)
        self._s_g = next_direction(update)
        self._set_model(new_arrays)
        return self._finish_round(record, new_arrays)

    def _read_replies(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[dict[int, _Reply | None], list[int], list[int]]:
        """Check every reply: ``(usable, malformed, failed)`` where a usable reply of ``None``
        is a malformed one to penalize (a NaN row); nodes beyond ``max_nodes`` are dropped."""
        assert self.layout is not None
        usable: dict[int, _Reply | None] = {}
        malformed: list[int] = []
        failed: list[int] = []
        for msg in replies:
            node = self._sender(msg, server_round)
            if node is None:
                continue
            if msg.has_error():
                failed.append(node)
                log(
                    WARNING,
                    "round %d: node %d failed: %s",
                    server_round,
                    node,
                    _short(msg.error.reason),
                )
                continue
            if node in usable or node in malformed:
                log(
                    WARNING,
                    "round %d: node %d replied twice; later reply ignored",
                    server_round,
                    node,
                )
                continue
            try:
                usable[node] = self._read_reply(_content(msg), self.layout)
            except UpdateError as exc:
                self._malformed(server_round, node, str(exc))
                malformed.append(node)
                if self.on_malformed == "penalize":
                    usable[node] = None
        # Slots for new nodes in ascending node-id order (as NodeSlots assigns them), up to
        # max_nodes; a new node beyond the cap cannot be given state, so it is never penalized.
        new = sorted(n for n in usable if n not in self.slots)
        for node in new[max(self.max_nodes - len(self.slots), 0) :]:
            self._malformed(
                server_round,
                node,
                f"a new node, but the strategy already keeps state for max_nodes = "
                f"{self.max_nodes} distinct nodes; its reply is ignored",
                penalize=False,
            )
            del usable[node]
            if node not in malformed:
                malformed.append(node)
        return usable, malformed, failed

    def _round_rows(
        self, usable: dict[int, _Reply | None], layout: Layout
    ) -> tuple[dict[int, Tensor], dict[int, float], dict[int, float]]:
        """Each usable node's gradient row (NaN for one to penalize), example count and (for
        nodes not marked malicious) training loss; records what nodes report about themselves."""
        rows: dict[int, Tensor] = {}
        examples: dict[int, float] = {}
        losses: dict[int, float] = {}
        for node, parsed in usable.items():
            if parsed is None:
                rows[node] = torch.full((layout.num_params,), math.nan)
                examples[node] = 1.0
                continue
            info = self.node_info.setdefault(node, {})
            info.update(parsed.info)
            rows[node] = parsed.grad
            examples[node] = parsed.num_examples
            if parsed.loss is not None and not info.get("malicious", False):
                losses[node] = parsed.loss
        return rows, examples, losses

    def _aggregate_and_step(
        self,
        server_round: int,
        G: Tensor,
        slots: Tensor,
        ctx: AggregationContext,
        record: RoundRecord,
    ) -> tuple[Aggregate, Tensor, Tensor, ArrayRecord] | None:
        """The round's aggregation (shared with the simulator) and server step:
        ``(aggregate, flip-scores, update, new arrays)``, or ``None`` with ``record.skipped``
        saying why the global model is left unchanged."""
        new_arrays = None
        try:
            out = aggregate_round(self.defense, G, slots, ctx, s_g=self._s_g, want_flip_scores=True)
        except NonFiniteUpdateError:
            # Finite but huge rows can overflow a defense without robust bounds (e.g. FedSGD);
            # the round is skipped rather than the run ended (the defense has seen the round).
            record.skipped = "aggregated update is not finite"
        except UpdateError as exc:  # e.g. too few nodes for c_max this round
            log(ERROR, "round %d skipped, the global model is unchanged: %s", server_round, exc)
            record.skipped = str(exc)
            return None
        else:
            update = out.aggregate.update.detach().to(torch.float32).cpu()
            if not bool(torch.isfinite(update).all()):  # beyond float32's range
                record.skipped = "aggregated update is not finite"
            else:
                new_arrays = self._step(update, record.lr)
                if new_arrays is None:
                    record.skipped = "the SGD step would make the global model non-finite"
        if new_arrays is None:
            log(
                ERROR,
                "round %d skipped, the global model is unchanged: %s",
                server_round,
                record.skipped,
            )
            return None
        assert out.flip_scores is not None  # every defense gets flip-scores (want_flip_scores)
        return out.aggregate, out.flip_scores, update, new_arrays

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Federated evaluation: the weighted average (by ``weighted_by_key``, as Flower's
        ``FedAvg``) of the replies' metrics, or ``evaluate_metrics_aggr_fn`` of them. A reply
        needs one ``MetricRecord`` with a valid ``num-examples`` and only finite numbers (or
        lists of them); any other goes through ``on_malformed`` (left out, or UpdateError)."""
        usable: list[RecordDict] = []
        seen: set[int] = set()
        failures = 0
        for msg in replies:
            node = self._sender(msg, server_round)
            if node is None:
                continue
            if msg.has_error():
                failures += 1
                log(
                    WARNING,
                    "round %d: node %d failed to evaluate: %s",
                    server_round,
                    node,
                    _short(msg.error.reason),
                )
                continue
            if node in seen:
                log(
                    WARNING,
                    "round %d: node %d sent two evaluate replies; later reply ignored",
                    server_round,
                    node,
                )
                continue
            seen.add(node)
            try:
                content = _content(msg)
                metrics = _only(content.metric_records, "MetricRecord", self.weighted_by_key)
                _examples(metrics, self.weighted_by_key)
                for key, value in metrics.items():
                    _check_metric_value(value, key)
            except UpdateError as exc:
                self._malformed(server_round, node, f"evaluate reply: {exc}", penalize=False)
                continue
            usable.append(content)
        log(
            INFO,
            "aggregate_evaluate: %d usable replies, %d failures, %d malformed",
            len(usable),
            failures,
            len(seen) - len(usable),
        )
        if not usable:
            return None
        if self._custom_evaluate_aggr:
            return self.evaluate_metrics_aggr_fn(usable, self.weighted_by_key)
        metrics, mixed = _mean_metrics(usable, self.weighted_by_key)
        for key in mixed:
            log(
                WARNING,
                "round %d: evaluate metric %r is a number in some replies and a list (or lists "
                "of another length) in others; left out of the average",
                server_round,
                key,
            )
        return metrics

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's round loop; the results store's run is opened first and marked finished
        (or failed, with the error) at the end. ``evaluate_fn``'s ``accuracy`` and ``loss``
        metrics are stored as the round's test accuracy and loss. ``num_rounds`` must be an
        integer >= 0 and ``timeout`` (seconds a round waits for replies) a finite number > 0."""

        def evaluate_and_store(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            assert evaluate_fn is not None
            res = evaluate_fn(server_round, arrays)
            if res is not None and server_round >= 1:
                self._record_test(server_round, res)
            return res

        _check_int("num_rounds", num_rounds, 0)
        _check_real("timeout", timeout, low=0.0, low_open=True)
        if evaluate_fn is not None and not callable(evaluate_fn):
            raise ConfigError(f"evaluate_fn must be callable, got {evaluate_fn!r}")
        self._open_store()
        try:
            result = super().start(
                grid,
                initial_arrays,
                num_rounds=num_rounds,
                timeout=timeout,
                train_config=train_config,
                evaluate_config=evaluate_config,
                evaluate_fn=evaluate_and_store if evaluate_fn is not None else None,
            )
        except BaseException as exc:
            if self._store is not None:
                self._store.fail_run(self.run_id, f"{type(exc).__name__}: {exc}")
            raise
        self.finish()
        return result

    # ------------------------------------------------------------------ results

    def reputations(self) -> dict[int, float]:
        """Every known node's current reputation (TESSERACT; ``{}`` for defenses without)."""
        fn = getattr(self.defense.aggregator, "public_state", None)
        rep = fn().get("reputation") if callable(fn) else None
        if not isinstance(rep, Tensor):
            return {}
        return {n: float(rep[self.slots.slot(n)]) for n in self.slots.node_ids()}

    def summary_dict(self) -> dict[str, Any]:
        """What the results store keeps as the run's summary: per-node info (slot, ground-truth
        label, reported partition id, final reputation) and timings."""
        reps = self.reputations()
        trained = [r for r in self.history if r.skipped is None]
        last_eval = next((r for r in reversed(self.history) if r.test_accuracy is not None), None)
        return {
            "engine": "flower",
            "run_id": self.run_id,
            "defense": self.defense_name,
            "rounds": len(self.history),
            "final_accuracy": None if last_eval is None else last_eval.test_accuracy,
            "final_loss": None if last_eval is None else last_eval.test_loss,
            "seconds_per_round": (
                sum(r.seconds for r in trained) / len(trained) if trained else None
            ),
            "nodes": {
                str(n): {
                    **self.node_info.get(n, {}),
                    "slot": self.slots.slot(n),
                    "reputation": reps.get(n),
                }
                for n in self.slots.node_ids()
            },
        }

    def finish(self) -> None:
        """Mark the run finished in the results store (with :meth:`summary_dict`)."""
        if self._store is not None:
            self._store.finish_run(self.run_id, self.summary_dict())

    # ------------------------------------------------------------------ internals

    def _set_model(self, arrays: ArrayRecord) -> None:
        layout = Layout.of(arrays)
        if self.layout is not None and layout != self.layout:
            raise UpdateError(
                "the global model's keys or shapes changed between rounds; the defense's state "
                "(e.g. TESSERACT's s_g) refers to the old layout"
            )
        self.arrays, self.layout = arrays, layout
        self._flat_global = None  # recomputed for the next round's weight replies

    def _sender(self, msg: Message, server_round: int) -> int | None:
        """The reply's node id; None (after the malformed policy) when it is not a valid one."""
        node = getattr(getattr(msg, "metadata", None), "src_node_id", None)
        if isinstance(node, int) and not isinstance(node, bool) and 0 <= node <= _MAX_NODE_ID:
            return node
        self._malformed(
            server_round,
            None,
            f"src_node_id {_show(node)} is not a node id (an integer in [0, 2**64)); "
            "the reply is ignored",
            penalize=False,
        )
        return None

    def _malformed(
        self, server_round: int, node: int | None, what: str, *, penalize: bool = True
    ) -> None:
        """Apply ``on_malformed`` to a reply: raise an UpdateError naming the node, or log it
        (the caller drops or penalizes it; ``penalize=False`` when it cannot be penalized)."""
        who = "a reply" if node is None else f"node {node}"
        reason = f"round {server_round}: {who}: {what}"
        if self.on_malformed == "raise":
            raise UpdateError(reason)
        action = "penalized" if penalize and self.on_malformed == "penalize" else "dropped"
        log(WARNING, "%s (malformed reply, %s)", reason, action)

    def _read_reply(self, content: RecordDict, layout: Layout) -> _Reply:
        """Everything the strategy uses from one train reply, each field checked; UpdateError
        says what is malformed (the caller adds the node). Nothing is stored here."""
        arrays = _only(content.array_records, "ArrayRecord", self.weighted_by_key)
        metrics = _only(content.metric_records, "MetricRecord", self.weighted_by_key)
        num_examples = _examples(metrics, self.weighted_by_key)
        loss = None
        if self.loss_key in metrics:
            loss = _finite_number(metrics[self.loss_key], self.loss_key)
        info: dict[str, Any] = {}
        if self.label_key in metrics:
            info["malicious"] = _label(metrics[self.label_key], self.label_key)
        for key in INFO_KEYS:
            if key in metrics:
                info[key] = _index(metrics[key], key)
        vec = layout.read_gradient(arrays)
        return _Reply(self._pseudo_gradient(vec, layout), num_examples, loss, info)

    def _pseudo_gradient(self, vec: Tensor, layout: Layout) -> Tensor:
        """What the defense aggregates for a reply: the gradient as sent, or for FedAvg-style
        replies the pseudo-gradient ``w_global - w_local`` (update ``u = w_local - w_global``
        gives ``-u``), so that ``theta - lr * aggregate`` with ``lr = 1`` is a robust FedAvg."""
        if self.reply == "gradient":
            return vec
        if self.reply == "update":
            return -vec
        if self._flat_global is None:
            assert self.arrays is not None
            self._flat_global = layout.flatten(self.arrays).to(torch.float32)
        return self._flat_global - vec

    def _round_lr(self, server_round: int) -> float:
        """The learning rate of a round; ConfigError unless it is a finite number >= 0."""
        value = self.lr_fn(server_round - 1)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.floating, np.integer))
            or not math.isfinite(float(value))
            or float(value) < 0
        ):
            raise ConfigError(
                f"lr schedule gave {_show(value)} for round {server_round} (from 0: "
                f"{server_round - 1}); it must return a finite number >= 0"
            )
        return float(value)

    def _root_gradient(self, server_round: int, layout: Layout) -> Tensor:
        """``root_gradient_fn``'s gradient as float32 Tensor[P]; ConfigError for another shape."""
        assert self.root_gradient_fn is not None and self.arrays is not None
        g0 = torch.as_tensor(self.root_gradient_fn(server_round, self.arrays))
        if g0.numel() != layout.num_params:
            raise ConfigError(
                f"root_gradient_fn returned {g0.numel()} values for round {server_round}, the "
                f"model has P = {layout.num_params} parameters"
            )
        return g0.detach().to(torch.float32).reshape(-1)

    def _step(self, update: Tensor, lr: float) -> ArrayRecord | None:
        """``theta <- theta - lr * update`` per array, with the simulator's own tensor op
        (``apply_update``: ``p.add_(u.view_as(p), alpha=-lr)``), so both give identical bits;
        None when the new model would not be finite."""
        assert self.arrays is not None and self.layout is not None
        out: dict[str, Array] = {}
        for key, sl in zip(self.layout.keys, flat_slices(self.layout.sizes), strict=True):
            p = torch.from_numpy(self.arrays[key].numpy().copy())
            p.add_(update[sl].view_as(p).to(p.dtype), alpha=-lr)
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                return None
            out[key] = Array(p.numpy())
        return ArrayRecord(out)

    def _finish_round(
        self, record: RoundRecord, arrays: ArrayRecord | None
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record.seconds = time.perf_counter() - self._t_round
        self.history.append(record)
        self._write_round(record)
        return arrays, self._metric_record(record)

    def _metric_record(self, record: RoundRecord) -> MetricRecord:
        m = MetricRecord(
            {
                "lr": record.lr,
                "round-seconds": record.seconds,
                "nodes": len(record.nodes),
                "malformed": len(record.malformed),
                "failed": len(record.failed),
            }
        )
        if record.train_loss is not None:
            m["train-loss"] = float(record.train_loss)
        if record.skipped is not None:
            m["skipped"] = 1
        if record.nodes:
            m["node-ids"] = [nr.node_id for nr in record.nodes]
            m["weights"] = [nr.weight for nr in record.nodes]
            m["flip-scores"] = [nr.flip_score for nr in record.nodes]
            reps = [nr.reputation for nr in record.nodes]
            if all(r is not None for r in reps):
                m["reputations"] = [float(r) for r in reps if r is not None]
        if record.fs_low is not None:
            m["fs-low"] = record.fs_low
        if record.fs_high is not None:
            m["fs-high"] = record.fs_high
        return m

    def _open_store(self) -> None:
        """Open the results store and create this run's row (once)."""
        if self._store is not None or self._store_arg is None:
            return
        store = self._store_arg
        self._store = store if isinstance(store, ResultsStore) else ResultsStore(store)
        import flwr

        from tesseract_fl.experiments.runner import versions

        config = {
            "engine": "flower",
            "defense": self.defense_name,
            "defense_params": self.defense.params,
            **(
                {"defense_instance": repr(self.defense.aggregator)} if self.defense.instance else {}
            ),
            "c_max": self.c_max,
            **self.run_config,
        }
        self._store.start_run(
            self.run_id, self.run_name, config, {**versions(), "flwr": flwr.__version__}
        )

    def _write_round(self, record: RoundRecord) -> None:
        self._open_store()
        if self._store is None:
            return
        rnd = record.round - 1  # the store counts rounds from 0, like the simulator
        rows = []
        if rnd % self.record_every == 0:
            rows = [
                ClientRow(
                    nr.slot, nr.malicious, finite_or_none(nr.flip_score), nr.reputation, nr.weight
                )
                for nr in record.nodes
            ]
        self._store.write_round(self.run_id, rnd, self._store_metrics(record), rows)

    def _store_metrics(self, record: RoundRecord) -> RoundMetrics:
        return RoundMetrics(
            lr=record.lr,
            train_loss=finite_or_none(record.train_loss),
            test_accuracy=record.test_accuracy,
            test_loss=finite_or_none(record.test_loss),
            fs_low=record.fs_low,
            fs_high=record.fs_high,
        )

    def _record_test(self, server_round: int, res: MetricRecord) -> None:
        record = next((r for r in self.history if r.round == server_round), None)
        if record is None:
            return
        acc = res.get("accuracy")
        loss = res.get("loss")
        record.test_accuracy = None if acc is None else float(acc)  # type: ignore[arg-type]
        record.test_loss = None if loss is None else float(loss)  # type: ignore[arg-type]
        if self._store is not None:
            # Only the metrics row is rewritten; the round's client rows stay.
            self._store.write_round(self.run_id, server_round - 1, self._store_metrics(record))


@dataclass
class _Reply:
    """What the strategy uses from one checked train reply."""

    grad: Tensor
    num_examples: float
    loss: float | None
    info: dict[str, Any]


def _constant(value: float) -> Callable[[int], float]:
    """``round -> value``: a constant learning rate."""
    return lambda _round: value


def _check_int(name: str, value: Any, low: int) -> None:
    """ConfigError unless ``value`` is an integer (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_real(
    name: str, value: Any, *, low: float, high: float | None = None, low_open: bool = False
) -> None:
    """ConfigError unless ``value`` is a finite number in the given range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        try:
            v = float(value)
        except OverflowError:
            v = math.inf
        ok = math.isfinite(v) and (v > low if low_open else v >= low)
        ok = ok and (high is None or v <= high)
    if not ok:
        if high is None:
            allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
        else:
            allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f"{name} must be {allowed}, got {_show(value)}")


def _show(value: Any) -> str:
    """A received value for a one-line message (huge integers and lists abbreviated)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, list):
        return f"a list of {len(value)} values"
    return _short(value, 60)


def _short(value: Any, limit: int = 200) -> str:
    """``repr`` of a value cut to ``limit`` characters (a node's text stays on one log line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_float(value: Any) -> float | None:
    """A metric scalar as float (integers beyond float's range as +-inf); None for lists."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _content(msg: Message) -> RecordDict:
    """A reply's content; UpdateError for a reply that carries neither content nor an error."""
    if not msg.has_content():
        raise UpdateError("the reply carries no content")
    return msg.content


def _only(records: Mapping[str, Any], kind: str, weight_key: str) -> Any:
    """The single record of a kind in a reply; UpdateError for none or several."""
    if len(records) != 1:
        what = "the gradient" if kind == "ArrayRecord" else f"{weight_key!r}"
        raise UpdateError(f"expected one {kind} with {what}, got {len(records)}")
    return next(iter(records.values()))


def _examples(metrics: Mapping[str, Any], key: str) -> float:
    """A reply's sample count: a number in ``(0, 2**53]`` that float32 does not round to 0."""
    value = metrics.get(key)
    v = _as_float(value)
    if v is None or not 0 < v <= MAX_EXAMPLES or not np.float32(v) > 0:
        got = "nothing" if key not in metrics else _show(value)
        raise UpdateError(
            f"metric {key!r} must be a positive number at most 2**53 that float32 keeps above "
            f"0, got {got}"
        )
    return v


def _finite_number(value: Any, key: str) -> float:
    v = _as_float(value)
    if v is None or not math.isfinite(v):
        raise UpdateError(f"metric {key!r} must be a finite number, got {_show(value)}")
    return v


def _label(value: Any, key: str) -> bool:
    v = _as_float(value)
    if v is None or v not in (0.0, 1.0):
        raise UpdateError(f"metric {key!r} must be 0 or 1, got {_show(value)}")
    return bool(v)


def _index(value: Any, key: str) -> int:
    v = _as_float(value)
    if v is None or not v.is_integer() or not 0 <= v <= MAX_EXAMPLES:
        raise UpdateError(f"metric {key!r} must be an integer in [0, 2**53], got {_show(value)}")
    return int(value) if isinstance(value, int) else int(v)


def _check_metric_value(value: Any, key: str) -> None:
    """An evaluate metric: a finite number or a list of finite numbers."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        v = _as_float(item)
        if v is None or not math.isfinite(v):
            raise UpdateError(
                f"metric {key!r} must be a finite number or a list of them, got {_show(value)}"
            )


def _mean_metrics(records: list[RecordDict], weight_key: str) -> tuple[MetricRecord, list[str]]:
    """Flower's weighted average of checked evaluate metrics (``aggregate_metricrecords``: each
    value times ``w / sum w``, summed in reply order), per key over the replies reporting it;
    a key whose replies disagree on its shape (number or list length) is left out and named."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = [float(m[weight_key]) for m in metrics]  # type: ignore[arg-type]
    shapes: dict[str, int | None] = {}
    mixed: list[str] = []
    for m in metrics:
        for key, value in m.items():
            shape = len(value) if isinstance(value, list) else None
            if key == weight_key or key in mixed:
                continue
            if key in shapes and shapes[key] != shape:
                mixed.append(key)
            shapes.setdefault(key, shape)
    out = MetricRecord()
    for key in shapes:
        if key in mixed:
            continue
        reporting = [(w, m[key]) for w, m in zip(weights, metrics, strict=True) if key in m]
        total = sum(w for w, _ in reporting)
        acc: Any = None
        for w, value in reporting:
            f = w / total
            if isinstance(value, list):
                acc = (
                    [v * f for v in value]
                    if acc is None
                    else [a + v * f for a, v in zip(acc, value, strict=True)]
                )
            else:
                acc = value * f if acc is None else acc + value * f
        out[key] = acc
    return out, mixed
