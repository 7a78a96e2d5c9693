"""RobustStrategy against hostile Flower nodes: no reply ends or freezes a federation.

Every field of every reply goes through the ``on_malformed`` policy naming the node; settings are
checked when the strategy is built; the number of nodes with defense state is capped; a property
test throws random replies at the strategy; the local deployment refuses unregistered SuperNodes.
"""

from __future__ import annotations

import io
import logging
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flower_helpers import FakeGrid, arrays_of, flat, play_round, reply, task_identity
from tesseract_fl.aggregators import Aggregate
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.flower import DEFAULT_MAX_NODES, RobustStrategy
from tesseract_fl.flower.localhost import LocalFederation, make_supernode_keys

SHAPES = {"w": (3, 4), "b": (4,)}
P = 16
NODES = [11, 22, 33, 44, 55]
HOSTILE = 33


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    yield from task_identity()


def _grads(seed: int, n: int) -> torch.Tensor:
    return torch.randn(n, P, generator=torch.Generator().manual_seed(seed))


def _round_with(
    strategy: RobustStrategy, hostile: Message, nodes: list[int] = NODES
) -> ArrayRecord | None:
    """One round: honest replies from ``nodes`` except the hostile node's."""
    G = _grads(0, len(nodes))
    replies = [reply(n, 1, G[i]) for i, n in enumerate(nodes) if n != HOSTILE]
    return play_round(strategy, 1, arrays_of(SHAPES), [*replies, hostile], nodes)


# ---------------------------------------------------------------- every field through the policy

BAD_FIELDS = [
    ("partition-id", math.inf, r"'partition-id' must be an integer in \[0, 2\*\*53\], got inf"),
    ("partition-id", math.nan, r"'partition-id' must be an integer .*got nan"),
    ("partition-id", -1, r"'partition-id' must be an integer .*got -1"),
    ("partition-id", 2.5, r"'partition-id' must be an integer .*got 2.5"),
    ("partition-id", 10**400, r"'partition-id' must be an integer .*an integer of 1329 bits"),
    ("partition-id", [1, 2], r"'partition-id' must be an integer .*a list of 2 values"),
    ("malicious", math.nan, r"'malicious' must be 0 or 1, got nan"),
    ("malicious", 7, r"'malicious' must be 0 or 1, got 7"),
    ("train-loss", math.inf, r"'train-loss' must be a finite number, got inf"),
    ("train-loss", 10**400, r"'train-loss' must be a finite number, got an integer of"),
    ("num-examples", 1e39, r"'num-examples' must be a positive number at most 2\*\*53 .*1e\+39"),
    ("num-examples", 2.0**60, r"'num-examples' must be a positive number"),
    ("num-examples", 10**400, r"'num-examples' must be a positive number"),
    ("num-examples", math.nan, r"'num-examples' must be a positive number"),
    ("num-examples", 1e-50, r"'num-examples' must be a positive number .*1e-50"),
    ("num-examples", 0, r"'num-examples' must be a positive number .*got 0"),
    ("num-examples", [10.0], r"'num-examples' must be a positive number .*a list of 1 values"),
]
FIELD_IDS = [f"{key}={value!r}"[:32] for key, value, _ in BAD_FIELDS]


def _hostile_reply(key: str, value: Any) -> Message:
    metrics = {"num-examples": 10.0, key: value}
    return reply(HOSTILE, 1, _grads(9, 1)[0], **metrics)


@pytest.mark.parametrize(("key", "value", "message"), BAD_FIELDS, ids=FIELD_IDS)
def test_a_bad_field_raises_an_update_error_naming_the_node(
    key: str, value: Any, message: str
) -> None:
    """Before: partition-id inf/NaN escaped as OverflowError/ValueError, num-examples 1e39 became
    inf in float32 and skipped every FedSGD round without naming the node."""
    strategy = RobustStrategy("fedsgd", c_max=1, lr=0.1, on_malformed="raise")
    with pytest.raises(UpdateError, match=rf"^round 1: node {HOSTILE}: metric {message}"):
        _round_with(strategy, _hostile_reply(key, value))


@pytest.mark.parametrize(("key", "value", "message"), BAD_FIELDS, ids=FIELD_IDS)
def test_a_bad_field_is_penalized_and_the_round_goes_on(
    key: str, value: Any, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    strategy = RobustStrategy("tesseract", c_max=1, lr=0.1)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        new = _round_with(strategy, _hostile_reply(key, value))
    assert new is not None and bool(torch.isfinite(flat(new)).all())
    rec = strategy.history[-1]
    assert rec.skipped is None and rec.malformed == [HOSTILE]
    assert f"node {HOSTILE}: metric" in caplog.text and "penalized" in caplog.text
    by_node = {nr.node_id: nr for nr in rec.nodes}
    assert by_node[HOSTILE].weight == 0.0
    assert strategy.reputations()[HOSTILE] == pytest.approx(-(1 - 2 / 5))
    assert strategy.node_info.get(HOSTILE, {}) == {}  # nothing of a malformed reply is kept


@pytest.mark.parametrize(
    ("key", "value", "message"),
    BAD_FIELDS[:3] + BAD_FIELDS[10:11],
    ids=FIELD_IDS[:3] + FIELD_IDS[10:11],
)
def test_a_bad_field_can_be_dropped(key: str, value: Any, message: str) -> None:
    strategy = RobustStrategy("fedsgd", c_max=1, lr=0.1, on_malformed="drop")
    new = _round_with(strategy, _hostile_reply(key, value))
    assert new is not None
    rec = strategy.history[-1]
    assert rec.malformed == [HOSTILE]
    assert HOSTILE not in [nr.node_id for nr in rec.nodes] and HOSTILE not in strategy.slots


def test_valid_bookkeeping_fields_are_kept() -> None:
    strategy = RobustStrategy("fedsgd", c_max=1, lr=0.1)
    _round_with(
        strategy,
        reply(HOSTILE, 1, _grads(9, 1)[0], 2**53, **{"partition-id": 7.0, "malicious": 1}),
    )
    assert strategy.history[-1].malformed == []
    assert strategy.node_info[HOSTILE] == {"partition-id": 7, "malicious": True}


def test_num_examples_beyond_float32_no_longer_skips_fedsgd_rounds() -> None:
    """1e39 is finite in float64 and inf in float32: each round used to be skipped."""
    strategy = RobustStrategy("fedsgd", c_max=1, lr=0.1)
    arrays = arrays_of(SHAPES)
    for r in (1, 2):
        G = _grads(r, 5)
        replies = [reply(n, r, G[i], 1e39 if n == HOSTILE else 10.0) for i, n in enumerate(NODES)]
        new = play_round(strategy, r, arrays, replies, NODES)
        assert new is not None and strategy.history[-1].skipped is None
        assert strategy.history[-1].malformed == [HOSTILE]
        arrays = new


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (RecordDict({"m": MetricRecord({"num-examples": 1.0})}), "expected one ArrayRecord"),
        (
            RecordDict({"g": ArrayRecord({"gradient": Array(np.zeros(P, np.float32))})}),
            r"expected one MetricRecord with 'num-examples', got 0",
        ),
        (
            RecordDict(
                {
                    "g": ArrayRecord({"gradient": Array(np.zeros(P, np.float32))}),
                    "m1": MetricRecord({"num-examples": 1.0}),
                    "m2": MetricRecord({"num-examples": 1e9}),
                }
            ),
            r"expected one MetricRecord with 'num-examples', got 2",
        ),
    ],
)
def test_reply_structure_is_checked(content: RecordDict, message: str) -> None:
    strategy = RobustStrategy("fedsgd", c_max=1, lr=0.1, on_malformed="raise")
    hostile = reply(HOSTILE, 1, torch.zeros(P))
    hostile.content = content
    with pytest.raises(UpdateError, match=rf"node {HOSTILE}: {message}"):
        _round_with(strategy, hostile)


@pytest.mark.parametrize("policy", ["penalize", "drop", "raise"])
def test_a_reply_without_content_or_a_valid_node_id_goes_through_the_policy(policy: str) -> None:
    empty = reply(HOSTILE, 1, torch.zeros(P))
    empty.__dict__["_content"] = None  # neither content nor an error
    nameless = reply(77, 1, torch.zeros(P))
    nameless.metadata.__dict__["_src_node_id"] = -5
    strategy = RobustStrategy("fedsgd", c_max=1, lr=0.1, on_malformed=policy)  # type: ignore[arg-type]
    if policy == "raise":
        with pytest.raises(UpdateError, match=rf"node {HOSTILE}: the reply carries no content"):
            _round_with(strategy, empty)
        with pytest.raises(UpdateError, match=r"a reply: src_node_id -5 is not a node id"):
            _round_with(strategy, nameless)
        return
    new = _round_with(strategy, empty)
    assert new is not None and strategy.history[-1].malformed == [HOSTILE]
    other = RobustStrategy("fedsgd", c_max=1, lr=0.1, on_malformed=policy)  # type: ignore[arg-type]
    assert _round_with(other, nameless) is not None
    assert -5 not in other.slots and len(other.history[-1].nodes) == 4


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # The bytes' own header claims 4 TB: refused before numpy allocates anything.
        (_npy_header((10**12,)), r"decodes to shape \(1000000000000,\)"),
        (_npy_header((P,)) + b"\0" * 10, "holds 10 data bytes, its shape and dtype need 64"),
        (_npy_header((P,), "<i4") + b"\0" * 64, r"decodes to shape \(16,\) dtype int32"),
        (b"not an npy file", "cannot be decoded"),
    ],
)
def test_lying_array_bytes_are_malformed(data: bytes, message: str) -> None:
    arr = Array(dtype="float32", shape=(P,), stype="numpy.ndarray", data=data)
    strategy = RobustStrategy("fedsgd", c_max=1, lr=0.1, on_malformed="raise")
    with pytest.raises(UpdateError, match=rf"node {HOSTILE}: array 'gradient' {message}"):
        _round_with(strategy, reply(HOSTILE, 1, ArrayRecord({"gradient": arr})))


# ---------------------------------------------------------------- rounds that cannot be applied


def test_non_finite_aggregate_skips_the_round_instead_of_ending_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    strategy = RobustStrategy("fedsgd", c_max=1, lr=0.1)

    def overflowing(G: torch.Tensor, slots: torch.Tensor, ctx: Any) -> Aggregate:
        return Aggregate(update=torch.full((P,), math.inf), weights=torch.ones(len(slots)))

    monkeypatch.setattr(strategy.defense, "aggregate", overflowing)
    new = _round_with(strategy, reply(HOSTILE, 1, torch.zeros(P)))
    assert new is None
    assert strategy.history[-1].skipped == "aggregated update is not finite"


def test_a_step_that_overflows_the_model_skips_the_round() -> None:
    """Finite float32 rows near float32's maximum: FedSGD's mean is finite, but the step with
    lr = 10 would overflow the global model to inf (it used to be applied)."""
    strategy = RobustStrategy("fedsgd", c_max=1, lr=10.0)
    huge = torch.full((P,), 3e38)
    replies = [reply(n, 1, huge) for n in NODES]
    new = play_round(strategy, 1, arrays_of(SHAPES), replies, NODES)
    assert new is None
    assert strategy.history[-1].skipped == "the SGD step would make the global model non-finite"
    assert strategy.arrays is not None and bool(torch.isfinite(flat(strategy.arrays)).all())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1, "fast"])
def test_a_bad_lr_schedule_value_names_the_round(bad: Any) -> None:
    strategy = RobustStrategy("fedsgd", c_max=1, lr=lambda r: 0.1 if r == 0 else bad)
    arrays = play_round(
        strategy, 1, arrays_of(SHAPES), [reply(n, 1, torch.ones(P)) for n in NODES], NODES
    )
    assert arrays is not None
    with pytest.raises(ConfigError, match=r"lr schedule gave .* for round 2 .*finite number >= 0"):
        play_round(strategy, 2, arrays, [reply(n, 2, torch.ones(P)) for n in NODES], NODES)


# ---------------------------------------------------------------- the cap on node state


def test_max_nodes_has_a_finite_default_and_caps_made_up_node_ids() -> None:
    """Made-up node ids used to get slots without bound (3000 were accepted)."""
    strategy = RobustStrategy("fedsgd", c_max=1, lr=0.1)
    assert strategy.max_nodes == DEFAULT_MAX_NODES == 1000
    nodes = list(range(1, 3001))
    G = torch.randn(len(nodes), P, generator=torch.Generator().manual_seed(0))
    replies = [reply(n, 1, G[i]) for i, n in enumerate(nodes)]
    new = play_round(strategy, 1, arrays_of(SHAPES), replies, nodes)
    assert new is not None
    assert len(strategy.slots) == 1000 and strategy.defense.capacity <= 1000
    assert sorted(strategy.history[-1].malformed) == nodes[1000:]  # ascending node-id order
    assert len(strategy.node_info) == 1000


def test_a_new_node_beyond_max_nodes_goes_through_the_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    strategy = RobustStrategy("tesseract", c_max=1, lr=0.1, max_nodes=5, capacity=3)
    arrays = arrays_of(SHAPES)
    arrays = play_round(strategy, 1, arrays, [reply(n, 1, torch.ones(P)) for n in NODES], NODES)
    assert arrays is not None
    newcomers = [*NODES, 66]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        new = play_round(
            strategy, 2, arrays, [reply(n, 2, torch.ones(P)) for n in newcomers], newcomers
        )
    assert new is not None
    assert strategy.history[-1].malformed == [66] and 66 not in strategy.slots
    assert "node 66: a new node, but the strategy already keeps state for max_nodes = 5" in (
        caplog.text
    )
    assert "dropped" in caplog.text  # no slot, so it cannot be penalized
    raising = RobustStrategy("tesseract", c_max=1, lr=0.1, max_nodes=5, on_malformed="raise")
    with pytest.raises(UpdateError, match=r"round 1: node 66: a new node, .*max_nodes = 5"):
        play_round(
            raising,
            1,
            arrays_of(SHAPES),
            [reply(n, 1, torch.ones(P)) for n in newcomers],
            newcomers,
        )


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": math.nan}, r"^lr must be a finite number > 0, got nan$"),
        ({"lr": math.inf}, r"^lr must be a finite number > 0, got inf$"),
        ({"lr": -0.1}, r"^lr must be a finite number > 0, got -0.1$"),
        ({"lr": 0.0}, r"^lr must be a finite number > 0, got 0.0$"),
        ({"lr": "0.1"}, r"^lr must be a finite number > 0, got '0.1'$"),
        ({"fraction_train": 2.0}, r"^fraction_train must be a number in \(0, 1\], got 2.0$"),
        ({"fraction_train": 0.0}, r"^fraction_train must be a number in \(0, 1\], got 0.0$"),
        ({"fraction_train": math.nan}, r"^fraction_train must be a number in \(0, 1\]"),
        ({"fraction_evaluate": 1.5}, r"^fraction_evaluate must be a number in \[0, 1\], got 1.5$"),
        ({"fraction_evaluate": -1}, r"^fraction_evaluate must be a number in \[0, 1\]"),
        ({"min_train_nodes": 0}, r"^min_train_nodes must be an integer >= 1, got 0$"),
        ({"min_train_nodes": 2.5}, r"^min_train_nodes must be an integer >= 1, got 2.5$"),
        ({"min_available_nodes": True}, r"^min_available_nodes must be an integer >= 1"),
        ({"min_available_nodes": 2000}, r"^min_available_nodes = 2000 exceeds max_nodes = 1000"),
        ({"min_evaluate_nodes": -1}, r"^min_evaluate_nodes must be an integer >= 0, got -1$"),
        ({"max_nodes": None}, r"^max_nodes must be an integer >= 1, got None$"),
        ({"max_nodes": 2}, r"^max_nodes = 2 is below the 3 nodes that c_max = 1 needs$"),
        ({"capacity": 0}, r"^capacity must be an integer >= 1, got 0$"),
        ({"on_malformed": "ignore"}, r"^on_malformed = 'ignore'; allowed values: penalize"),
        ({"on_malformed": ["drop"]}, r"^on_malformed = \['drop'\]; allowed values"),
        ({"record_every": 0}, r"^record_every must be an integer >= 1, got 0$"),
        ({"c_max": -1}, r"^c_max must be an integer >= 0, got -1$"),
        ({"defense_params": [1]}, r"^defense_params must be a dict"),
        ({"root_gradient_fn": 3}, r"^root_gradient_fn must be callable, got 3$"),
        ({"store": 5}, r"^store must be a path or a ResultsStore, got 5$"),
        ({"run_id": ""}, r"^run_id must be a non-empty string"),
        ({"weighted_by_key": ""}, r"^weighted_by_key must be a non-empty string"),
        ({"loss_key": "num-examples"}, r"^weighted_by_key, loss_key and label_key must be"),
        ({"label_key": "partition-id"}, r"^weighted_by_key, loss_key and label_key must be"),
        ({"arrayrecord_key": "config"}, r"^arrayrecord_key and configrecord_key must differ"),
        ({"evaluate_metrics_aggr_fn": "mean"}, r"^evaluate_metrics_aggr_fn must be callable"),
    ],
)
def test_settings_are_checked_when_the_strategy_is_built(
    kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"c_max": 1, **kwargs}
    with pytest.raises(ConfigError, match=message):
        RobustStrategy("tesseract", **args)


def test_defense_name_must_be_a_string() -> None:
    with pytest.raises(
        ConfigError, match=r"^defense must be a registered name or an aggregator instance"
    ):
        RobustStrategy(None, c_max=1)  # type: ignore[arg-type]


def test_fraction_train_two_no_longer_hangs_in_flowers_sampler() -> None:
    """fraction_train = 2.0 made FedAvg wait forever for twice the connected nodes."""
    with pytest.raises(ConfigError, match="fraction_train"):
        RobustStrategy("tesseract", c_max=1, fraction_train=2.0)
    strategy = RobustStrategy("tesseract", c_max=1, fraction_train=1.0)
    sent = list(strategy.configure_train(1, arrays_of(SHAPES), ConfigRecord(), FakeGrid(NODES)))
    assert len(sent) == len(NODES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_rounds": -1}, r"^num_rounds must be an integer >= 0, got -1$"),
        ({"timeout": math.inf}, r"^timeout must be a finite number > 0, got inf$"),
        ({"timeout": 0}, r"^timeout must be a finite number > 0, got 0$"),
    ],
)
def test_start_arguments_are_checked(kwargs: dict[str, Any], message: str) -> None:
    strategy = RobustStrategy("tesseract", c_max=1)
    with pytest.raises(ConfigError, match=message):
        strategy.start(FakeGrid(NODES), arrays_of(SHAPES), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- federated evaluation


def _eval_reply(node: int, metrics: dict[str, Any]) -> Message:
    msg = reply(node, 1, torch.zeros(P))
    msg.content = RecordDict({"metrics": MetricRecord(metrics)})
    return msg


def test_hostile_evaluate_replies_are_left_out_of_the_average(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Flower's FedAvg raised InconsistentMessageReplies (ending the run) for one reply without
    num-examples or with other keys."""
    strategy = RobustStrategy("tesseract", c_max=1)
    replies = [
        _eval_reply(11, {"num-examples": 10, "accuracy": 0.5, "loss": 1.0}),
        _eval_reply(22, {"num-examples": 30, "accuracy": 0.9, "loss": 2.0}),
        _eval_reply(33, {"accuracy": 0.1}),  # no num-examples
        _eval_reply(44, {"num-examples": 1e39, "accuracy": 1.0}),
        _eval_reply(55, {"num-examples": 10, "accuracy": math.nan}),
        _eval_reply(66, {"num-examples": 10, "accuracy": 10**400}),
    ]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics is not None
    assert metrics["accuracy"] == pytest.approx(0.8) and metrics["loss"] == pytest.approx(1.75)
    for node in (33, 44, 55, 66):
        assert f"node {node}: evaluate reply: metric" in caplog.text
    raising = RobustStrategy("tesseract", c_max=1, on_malformed="raise")
    with pytest.raises(UpdateError, match=r"round 1: node 33: evaluate reply: metric"):
        raising.aggregate_evaluate(1, replies)


def test_evaluate_metric_of_mixed_shapes_is_left_out() -> None:
    strategy = RobustStrategy("tesseract", c_max=1)
    replies = [
        _eval_reply(11, {"num-examples": 1, "acc": 0.5, "per-class": [1.0, 0.0]}),
        _eval_reply(22, {"num-examples": 1, "acc": 0.7, "per-class": [1.0, 0.0, 1.0]}),
    ]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics is not None and dict(metrics) == {"acc": pytest.approx(0.6)}


def test_evaluate_matches_flowers_average_for_valid_replies() -> None:
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    rng = np.random.default_rng(0)
    replies = [
        _eval_reply(
            n,
            {
                "num-examples": int(rng.integers(1, 100)),
                "accuracy": float(rng.random()),
                "hist": [float(v) for v in rng.random(3)],
            },
        )
        for n in NODES
    ]
    ours = RobustStrategy("tesseract", c_max=1).aggregate_evaluate(1, replies)
    theirs = aggregate_metricrecords([m.content for m in replies], "num-examples")
    assert ours is not None and dict(ours) == dict(theirs)  # bit for bit


# ---------------------------------------------------------------- property test: random replies

_SPECIAL = [math.nan, math.inf, -math.inf, 1e39, 3e38, -0.0, 5e-324, 1e300, 2.0**53]
_HUGE_INTS = [10**400, -(10**400), 2**53, 2**53 + 1, 2**64, -1, 0]
_scalar = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(_SPECIAL),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(_HUGE_INTS),
)
_metric_value = st.one_of(
    _scalar,
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=4),
)
#: Valid values of the metrics the strategy reads (so that replies also get past them).
_GOOD = {
    "num-examples": st.one_of(st.integers(1, 1000), st.floats(0.5, 1e6)),
    "partition-id": st.integers(0, 100),
    "malicious": st.sampled_from([0, 1]),
    "train-loss": st.floats(0.0, 10.0),
    "accuracy": st.floats(0.0, 1.0),
}


@st.composite
def _metrics(draw: st.DrawFn) -> MetricRecord:
    """The known metrics, each absent, valid or hostile, plus random extra fields."""
    out: dict[str, Any] = {}
    for key, good in _GOOD.items():
        kind = draw(st.sampled_from(["good", "good", "good", "bad", "absent"]))
        if kind != "absent":
            out[key] = draw(good if kind == "good" else _metric_value)
    out.update(draw(st.dictionaries(st.text(max_size=6), _metric_value, max_size=3)))
    return MetricRecord(out)


_shapes = st.one_of(
    st.just((P,)),
    st.just((3, 4)),
    st.just((4,)),
    st.just((2, 8)),
    st.lists(st.integers(0, 5), max_size=3).map(tuple),
)
_dtypes = st.sampled_from(
    ["float16", "float32", "float64", ">f4", "int32", "int64", "uint8", "bool", "complex64"]
)
_float_dtypes = st.sampled_from(["float16", "float32", "float64"])


@st.composite
def _numpy_array(
    draw: st.DrawFn, shape: tuple[int, ...] | None = None, good: bool = False
) -> Array:
    shape = draw(_shapes) if shape is None else shape
    dtype = np.dtype(draw(_float_dtypes if good else _dtypes))
    size = int(np.prod(shape, dtype=np.int64))
    values = draw(st.lists(st.sampled_from([*_SPECIAL, 1.0, -2.0]), min_size=size, max_size=size))
    with np.errstate(all="ignore"):
        arr = np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
    return Array(arr)


@st.composite
def _raw_array(draw: st.DrawFn, shape: tuple[int, ...] | None = None) -> Array:
    """Metadata and bytes that need not agree (a lying sender)."""
    meta_shape = (
        shape
        if shape is not None
        else draw(st.one_of(_shapes, st.lists(st.integers(-3, 10**6), max_size=2).map(tuple)))
    )
    dtype = draw(st.one_of(st.just("float32"), _dtypes, st.text(max_size=5)))
    stype = draw(st.sampled_from(["numpy.ndarray", "numpy.ndarray", "torch.Tensor", ""]))
    header_shape = draw(st.one_of(st.just(meta_shape), _shapes, st.just((10**12,))))
    descr = draw(st.sampled_from(["<f4", "<f8", "<i4", "|O"]))
    data = draw(
        st.one_of(
            st.binary(max_size=200),
            st.just(_npy_header(header_shape, descr)),
        )
    )
    return Array(
        dtype=dtype, shape=meta_shape, stype=stype, data=data + draw(st.binary(max_size=80))
    )


@st.composite
def _array_record(draw: st.DrawFn) -> ArrayRecord:
    """A flat gradient, a per-layer one, or random keys; each array valid, wrong or lying."""
    form = draw(st.sampled_from(["flat", "layers", "random"]))
    if form == "random":
        return ArrayRecord(
            draw(
                st.dictionaries(
                    st.one_of(st.sampled_from(["gradient", "w", "b"]), st.text(max_size=4)),
                    st.one_of(_numpy_array(), _raw_array()),
                    max_size=3,
                )
            )
        )
    wanted = {"gradient": (P,)} if form == "flat" else SHAPES
    return ArrayRecord(
        {
            key: draw(
                st.one_of(
                    _numpy_array(shape, good=True),
                    _numpy_array(shape, good=True),
                    _numpy_array(),
                    _raw_array(shape),
                )
            )
            for key, shape in wanted.items()
        }
    )


_config_record = st.dictionaries(
    st.text(max_size=4), st.one_of(st.text(max_size=5), st.binary(max_size=5), st.booleans())
).map(ConfigRecord)


@st.composite
def _content(draw: st.DrawFn) -> RecordDict:
    """Mostly one ArrayRecord and one MetricRecord (so the fields inside are reached)."""
    one_each = draw(st.integers(0, 3)) > 0
    n_arrays = 1 if one_each else draw(st.integers(0, 2))
    n_metrics = 1 if one_each else draw(st.integers(0, 2))
    records: dict[str, Any] = {}
    for i in range(n_arrays):
        records[f"a{i}"] = draw(_array_record())
    for i in range(n_metrics):
        records[f"m{i}"] = draw(_metrics())
    if draw(st.booleans()):
        records["c"] = draw(_config_record)
    return RecordDict(records)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    contents=st.lists(_content(), min_size=1, max_size=3),
    senders=st.lists(st.sampled_from([22, 33, 77, 88, 2**64 - 1]), min_size=3, max_size=3),
    policy=st.sampled_from(["penalize", "drop", "raise"]),
    defense=st.sampled_from(["tesseract", "fedsgd", "median", "foolsgold"]),
    max_nodes=st.integers(3, 8),
)
def test_random_replies_give_only_documented_outcomes(
    contents: list[RecordDict], senders: list[int], policy: str, defense: str, max_nodes: int
) -> None:
    """Random reply contents (random field names and value types: NaN, Inf, huge integers,
    lists, arrays of wrong shapes, dtypes and bytes) next to honest replies: aggregate_train and
    aggregate_evaluate return (a finite model or None) or, under ``"raise"``, raise UpdateError;
    never anything else. The node cap holds throughout."""
    strategy = RobustStrategy(
        defense,
        c_max=1,
        lr=0.1,
        on_malformed=policy,  # type: ignore[arg-type]
        max_nodes=max_nodes,
        capacity=3,
    )
    honest = [11, 44, 55]
    G = _grads(1, len(honest))
    replies = [reply(n, 1, G[i]) for i, n in enumerate(honest)]
    hostile = []
    for node, content in zip(senders, contents, strict=False):
        msg = reply(node, 1, torch.zeros(P))
        msg.content = content
        hostile.append(msg)
    everyone = [*replies, *hostile]
    try:
        new = play_round(strategy, 1, arrays_of(SHAPES), everyone, [*honest, *senders])
    except UpdateError as exc:
        assert policy == "raise" and str(exc).startswith("round 1: node ")
    else:
        assert new is None or bool(torch.isfinite(flat(new)).all())
        rec = strategy.history[-1]
        if rec.skipped is None:
            answered = {nr.node_id for nr in rec.nodes} | set(rec.malformed)
            assert {int(m.metadata.src_node_id) for m in everyone} <= answered
        if policy == "drop":
            assert set(rec.malformed).isdisjoint(nr.node_id for nr in rec.nodes)
        else:  # penalized: in the round with weight 0
            assert all(nr.weight == 0.0 for nr in rec.nodes if nr.node_id in rec.malformed)
    assert len(strategy.slots) <= max_nodes and strategy.defense.capacity <= max_nodes
    try:
        metrics = strategy.aggregate_evaluate(1, hostile)
    except UpdateError as exc:
        assert policy == "raise" and str(exc).startswith("round 1: node ")
    else:
        assert metrics is None or isinstance(metrics, MetricRecord)


# ---------------------------------------------------------------- deployment: SuperNode auth


def test_supernode_keys_load_as_flowers_ec_keys(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )

    dirs = [tmp_path / "python"]
    make_supernode_keys(dirs[0], 2)
    script = Path(__file__).resolve().parents[1] / "scripts" / "make-test-certs.sh"
    if shutil.which("ssh-keygen") and shutil.which("openssl"):
        dirs.append(tmp_path / "script")
        subprocess.run(
            ["bash", str(script), str(dirs[1])],
            env={"PATH": "/usr/bin:/bin", "SUPERNODE_KEYS": "2"},
            check=True,
            capture_output=True,
        )
    for d in dirs:
        for i in range(2):
            private = load_ssh_private_key((d / f"supernode-{i}").read_bytes(), None)
            public = load_ssh_public_key((d / f"supernode-{i}.pub").read_bytes())
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            assert isinstance(public, ec.EllipticCurvePublicKey)
            assert (d / f"supernode-{i}").stat().st_mode & 0o077 == 0


def test_node_auth_needs_tls(tmp_path: Path) -> None:
    from tesseract_fl.flower.localhost import FederationError

    with pytest.raises(FederationError, match="SuperNode authentication needs TLS"):
        LocalFederation(tmp_path, supernodes=1, insecure=True, node_auth=True)
    assert LocalFederation(tmp_path, supernodes=1, insecure=True).node_auth is False
    assert LocalFederation(tmp_path, supernodes=1).node_auth is True


@pytest.mark.integration
def test_local_superlink_refuses_unregistered_supernodes(tmp_path: Path) -> None:
    """With TLS the local federation runs with SuperNode authentication: a registered node
    connects; one with an unregistered key, or with no key, is refused."""
    fed = LocalFederation(tmp_path / "fed", supernodes=1)
    try:
        fed.start()
        log = fed.tail("superlink", 400)
        assert "SuperNode authentication is disabled" not in log
        assert f"SuperNode ID: {fed.node_ids[0]}" in fed.tail("supernode-0", 200)
        rogue_key = make_supernode_keys(tmp_path / "rogue", 1)[0]
        fed.spawn_supernode("rogue-key", "partition-id=0 num-partitions=1", rogue_key)
        fed.spawn_supernode("rogue-nokey", "partition-id=0 num-partitions=1", None)
        deadline = time.monotonic() + 90
        rogues = [fed.named["rogue-key"], fed.named["rogue-nokey"]]
        while time.monotonic() < deadline and any(p.poll() is None for p in rogues):
            time.sleep(0.5)
        for name in ("rogue-key", "rogue-nokey"):
            text = fed.tail(name, 200)
            assert "Failed to initialize the connection to the SuperLink" in text, text
            assert "SuperNode ID:" not in text
    finally:
        fed.stop()
    assert fed.survivors() == []
