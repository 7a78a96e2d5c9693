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
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any, Literal

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from torch import Tensor

from tesseract_fl.aggregators import AggregationContext
from tesseract_fl.aggregators.tesseract import flip_scores
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.experiments.store import ResultsStore
from tesseract_fl.flower.records import Layout
from tesseract_fl.flower.slots import NodeSlots, SlotAggregator

__all__ = ["MalformedPolicy", "NodeRound", "RobustStrategy", "RoundRecord"]

MalformedPolicy = Literal["penalize", "drop", "raise"]
_MALFORMED = ("penalize", "drop", "raise")

#: Reply metrics kept per node for bookkeeping (shown in results, never used to aggregate).
INFO_KEYS: tuple[str, ...] = ("partition-id",)


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


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


class RobustStrategy(FedAvg):
    """FedSGD over Flower with any tesseract-fl defense (``defense``: a registry name).

    Parameters beyond ``FedAvg``'s (sampling, record keys, evaluation):

    - ``defense``, ``defense_params``: the aggregator, as ``make_aggregator`` builds it (unknown
      names or parameters raise :class:`ConfigError` listing the allowed ones); ``c_max``: the
      number of nodes assumed malicious.
    - ``lr``: server learning rate, a number or ``round -> lr`` (rounds from 0, as the
      simulator's schedules).
    - ``capacity`` / ``max_nodes``: initial and maximal number of node slots (slots grow by
      doubling; results do not depend on the capacity).
    - ``root_gradient_fn(server_round, arrays) -> Tensor[P]``: the server's gradient on its clean
      root set at the current model; required by FLTrust.
    - ``on_malformed``: a reply whose gradient has the wrong keys, shape or dtype (or lacks a
      positive ``num-examples``) is logged naming the node, then ``"penalize"`` (default: it
      becomes a NaN row, so the hostile-row policy gives it weight 0 and TESSERACT penalizes it
      as maximally suspicious), ``"drop"`` (treated as absent) or ``"raise"`` (UpdateError
      naming the node ends the run). NaN/Inf values are not malformed: the aggregators' policy
      handles them.
    - ``store`` (path or open :class:`ResultsStore`), ``run_id``, ``run_name``, ``run_config``:
      where the rounds are written (``runs``/``metrics``/``clients`` rows as the simulator's
      runner writes them; the ``clients`` table's client is the node's slot, and the run's
      summary maps slots to node ids). ``record_every``: per-node rows every that many rounds.
    - ``loss_key``, ``label_key``: reply metrics read for bookkeeping only: the clients' training
      loss, and an experiment's ground-truth "this node is malicious" flag (stored, shown, never
      used to aggregate).

    Per round, ``aggregate_train`` returns a ``MetricRecord`` with ``train-loss``, ``lr``,
    ``round-seconds``, ``node-ids``, ``weights``, ``flip-scores`` (against the previous global
    update's sign, for every defense), ``reputations`` (TESSERACT), ``fs-low``/``fs-high`` and
    the counts of ``malformed`` and ``failed`` replies; :attr:`history` keeps the same as
    :class:`RoundRecord` objects.
    """

    def __init__(
        self,
        defense: str = "tesseract",
        *,
        c_max: int,
        lr: float | Callable[[int], float] = 0.01,
        defense_params: dict[str, Any] | None = None,
        capacity: int = 8,
        max_nodes: int | None = None,
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
        if isinstance(c_max, bool) or not isinstance(c_max, int) or c_max < 0:
            raise ConfigError(f"c_max must be a non-negative integer, got {c_max!r}")
        if on_malformed not in _MALFORMED:
            raise ConfigError(
                f"on_malformed = {on_malformed!r}; allowed values: {', '.join(_MALFORMED)}"
            )
        if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
            raise ConfigError(f"record_every must be an integer >= 1, got {record_every!r}")
        # TESSERACT and the trimming rules need more than 2 c_max clients per round.
        least = max(2, 2 * c_max + 1)
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
        self.defense_name = str(defense)
        self.c_max = c_max
        self.defense = SlotAggregator(
            self.defense_name,
            c_max=c_max,
            params=defense_params,
            capacity=capacity,
            max_capacity=max_nodes,
        )
        self.needs_root = bool(getattr(self.defense.aggregator, "needs_root_gradient", False))
        if self.needs_root and root_gradient_fn is None:
            raise ConfigError(
                f"defense {self.defense_name!r} needs the server's root gradient: pass "
                "root_gradient_fn(server_round, arrays) -> Tensor[P]"
            )
        self.root_gradient_fn = root_gradient_fn
        self.lr_fn: Callable[[int], float] = lr if callable(lr) else _constant(float(lr))
        self.on_malformed: MalformedPolicy = on_malformed
        self.record_every = record_every
        self.loss_key = loss_key
        self.label_key = label_key
        self.slots = NodeSlots()
        self.node_info: dict[int, dict[str, Any]] = {}
        self.history: list[RoundRecord] = []
        self.arrays: ArrayRecord | None = None
        self.layout: Layout | None = None
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
        rows: dict[int, Tensor] = {}
        examples: dict[int, float] = {}
        losses: dict[int, float] = {}
        malformed: list[int] = []
        failed: list[int] = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                failed.append(node)
                log(WARNING, "round %d: node %d failed: %s", server_round, node, msg.error.reason)
                continue
            if node in rows or node in malformed:
                log(
                    WARNING,
                    "round %d: node %d replied twice; later reply ignored",
                    server_round,
                    node,
                )
                continue
            try:
                grad, n = self._read_reply(msg.content, layout, node)
            except UpdateError as exc:
                reason = f"round {server_round}: node {node}: {exc}"
                if self.on_malformed == "raise":
                    raise UpdateError(reason) from None
                log(WARNING, "%s (%s)", reason, self.on_malformed)
                malformed.append(node)
                if self.on_malformed == "penalize":
                    rows[node] = torch.full((layout.num_params,), math.nan)
                    examples[node] = 1.0
                continue
            rows[node] = grad
            examples[node] = n
            loss = _metric(msg.content, self.loss_key)
            if loss is not None and not self.node_info.get(node, {}).get("malicious", False):
                losses[node] = loss
        record = RoundRecord(
            round=server_round,
            lr=float(self.lr_fn(server_round - 1)),
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
            client_ids=slots, n_samples=n_samples, c_max=self.c_max, round=server_round - 1
        )
        if self.needs_root:
            assert self.root_gradient_fn is not None
            g0 = torch.as_tensor(self.root_gradient_fn(server_round, self.arrays))
            ctx.extra["root_gradient"] = g0.detach().to(torch.float32).reshape(-1)
        try:
            agg = self.defense.aggregate(G, slots, ctx)
        except UpdateError as exc:  # e.g. too few nodes for c_max this round
            log(ERROR, "round %d skipped, the global model is unchanged: %s", server_round, exc)
            record.skipped = str(exc)
            return self._finish_round(record, None)
        update = agg.update.detach().to(torch.float32).cpu()
        if not bool(torch.isfinite(update).all()):
            raise UpdateError(f"round {server_round}: aggregated update is not finite")

        if losses:
            weights_l = [examples[n] for n in losses]
            record.train_loss = sum(
                w * v for w, v in zip(weights_l, losses.values(), strict=True)
            ) / sum(weights_l)
        fs = agg.record.get("flip_scores")
        if fs is None:  # every defense gets flip-scores against the last global direction
            s_g = self._s_g if self._s_g is not None else torch.zeros(layout.num_params)
            fs = flip_scores(G, s_g)
        rep = agg.record.get("reputation")
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
        record.fs_low = _finite(agg.record.get("fs_low"))
        record.fs_high = _finite(agg.record.get("fs_high"))
        new_arrays = self._step(update, record.lr)
        self._s_g = torch.sign(update)
        self._set_model(new_arrays)
        return self._finish_round(record, new_arrays)

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
        metrics are stored as the round's test accuracy and loss."""

        def evaluate_and_store(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            assert evaluate_fn is not None
            res = evaluate_fn(server_round, arrays)
            if res is not None and server_round >= 1:
                self._record_test(server_round, res)
            return res

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

    def _read_reply(self, content: RecordDict, layout: Layout, node: int) -> tuple[Tensor, float]:
        """``(gradient [P], num-examples)`` of one reply; UpdateError says what is malformed."""
        info = self.node_info.setdefault(node, {})
        if len(content.array_records) != 1:
            raise UpdateError(
                f"expected one ArrayRecord with the gradient, got {len(content.array_records)}"
            )
        label = _metric(content, self.label_key)
        if label is not None:
            info["malicious"] = bool(label)
        for key in INFO_KEYS:
            value = _metric(content, key)
            if value is not None:
                info[key] = int(value)
        n = _metric(content, self.weighted_by_key)
        if n is None or not (math.isfinite(n) and n > 0):
            raise UpdateError(
                f"metric {self.weighted_by_key!r} must be a positive number, got {n!r}"
            )
        record = next(iter(content.array_records.values()))
        return layout.read_gradient(record), float(n)

    def _step(self, update: Tensor, lr: float) -> ArrayRecord:
        """``theta <- theta - lr * update`` per array, with the simulator's own tensor op
        (``apply_update``: ``p.add_(u.view_as(p), alpha=-lr)``), so both give identical bits."""
        assert self.arrays is not None and self.layout is not None
        out: dict[str, Array] = {}
        offset = 0
        for key, n in zip(self.layout.keys, self.layout.sizes, strict=True):
            p = torch.from_numpy(self.arrays[key].numpy().copy())
            p.add_(update[offset : offset + n].view_as(p).to(p.dtype), alpha=-lr)
            out[key] = Array(p.numpy())
            offset += n
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
                (nr.slot, nr.malicious, _finite(nr.flip_score), nr.reputation, nr.weight)
                for nr in record.nodes
            ]
        self._store.write_round(self.run_id, rnd, self._store_metrics(record), rows)

    def _store_metrics(self, record: RoundRecord) -> dict[str, float | None]:
        return {
            "lr": record.lr,
            "train_loss": _finite(record.train_loss),
            "test_accuracy": record.test_accuracy,
            "test_loss": _finite(record.test_loss),
            "fs_low": record.fs_low,
            "fs_high": record.fs_high,
        }

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


def _constant(value: float) -> Callable[[int], float]:
    """``round -> value``: a constant learning rate."""
    return lambda _round: value


def _metric(content: RecordDict, key: str) -> float | None:
    """A scalar metric from a reply's (first) MetricRecord, or None when absent/not a number."""
    for rec in content.metric_records.values():
        value = rec.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return None
    return None
