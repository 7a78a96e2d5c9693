"""RobustStrategy: same updates as the simulator, state keyed by node id, hostile replies."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from flower_helpers import FakeGrid, arrays_of, flat, play_round, reply, task_identity
from tesseract_fl.aggregators import Tesseract, make_aggregator
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.experiments.config import build_config
from tesseract_fl.experiments.runner import build_simulation
from tesseract_fl.experiments.store import ResultsStore
from tesseract_fl.flower import (
    DEFAULT_MAX_NODES,
    Layout,
    RobustStrategy,
    gradient_record,
    model_arrays,
)


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    yield from task_identity()


class Recorder:
    """Wraps the simulator's aggregator and keeps every round's input and output."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.needs_root_gradient = getattr(inner, "needs_root_gradient", False)
        self.root_size = getattr(inner, "root_size", None)
        self.calls: list[dict[str, Any]] = []

    def aggregate(self, G: torch.Tensor, client_ids: Any = None, ctx: Any = None) -> Any:
        out = self.inner.aggregate(G, client_ids, ctx)
        self.calls.append(
            {
                "G": G.clone(),
                "n": ctx.n_samples.clone(),
                "root": ctx.root_gradient,
                "update": out.update.clone(),
                "weights": out.weights.clone(),
            }
        )
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


SIM_DEFENSES = [
    ("fedsgd", {}),
    ("tesseract", {}),
    ("tesseract", {"filter_then": "median"}),
    ("trimmed_mean", {}),
    ("median", {}),
    ("krum", {"k": 3}),
    ("bulyan", {}),
    ("faba", {}),
    ("foolsgold", {}),
    ("fltrust", {}),
]


@pytest.mark.filterwarnings("ignore:Bulyan with m=:RuntimeWarning")
@pytest.mark.parametrize("safeguard", [None, 3.0], ids=["plain", "safeguard"])
@pytest.mark.parametrize(("defense", "params"), SIM_DEFENSES)
def test_same_update_as_the_simulator(
    tiny_data_dir: Path, defense: str, params: dict[str, Any], safeguard: float | None
) -> None:
    """The simulator's gradient matrices, sent as Flower replies (random node ids, shuffled
    order), give bit-identical global models round after round; with the strategy's default
    safeguard, those of the simulator's ``clip+DEFENSE``."""
    sim_defense = defense if safeguard is None else f"clip+{defense}"
    cfg = build_config(
        {
            "data_dir": str(tiny_data_dir),
            "clients": 10,
            "malicious": 2,
            "rounds": 3,
            "batch_size": 8,
            "lr": 0.05,
            "defense": {"name": sim_defense, **params},
            "attack": {"name": "sign_flip", "scale": 50.0} if safeguard else "full_trim",
        }
    )
    sim = build_simulation(cfg)
    initial = model_arrays(sim.model)
    rec = Recorder(sim.aggregator)
    sim.aggregator = rec
    params_after = []
    for _ in range(cfg.rounds):
        sim.step()
        params_after.append(torch.cat([p.detach().reshape(-1) for p in sim.model.parameters()]))

    rng = random.Random(7)
    node_ids = sorted({rng.getrandbits(64) for _ in range(cfg.clients)})  # slot i <-> client i
    assert len(node_ids) == cfg.clients
    strategy = RobustStrategy(
        defense,
        c_max=cfg.resolved_c_max,
        lr=cfg.lr,
        defense_params=params,
        safeguard=safeguard,
        capacity=3,  # grows during the first round: must not change anything
        root_gradient_fn=lambda r, _arrays: rec.calls[r - 1]["root"],
    )
    arrays = initial
    for r in range(1, cfg.rounds + 1):
        call = rec.calls[r - 1]
        replies = [
            reply(node_ids[i], r, call["G"][i], float(call["n"][i])) for i in range(cfg.clients)
        ]
        rng.shuffle(replies)
        new = play_round(strategy, r, arrays, replies, node_ids)
        assert new is not None
        assert torch.equal(flat(new), params_after[r - 1]), f"round {r}"
        weights = {nr.node_id: nr.weight for nr in strategy.history[-1].nodes}
        expected = call["weights"].double()
        got = torch.tensor([weights[n] for n in node_ids], dtype=torch.float64)
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-9)
        arrays = new


def _tesseract_strategy(**kw: Any) -> RobustStrategy:
    return RobustStrategy("tesseract", c_max=1, lr=0.1, **kw)


SHAPES = {"w": (3, 4), "b": (4,)}
P = 16


def _grads(seed: int, n: int) -> torch.Tensor:
    return torch.randn(n, P, generator=torch.Generator().manual_seed(seed))


def test_dropout_rejoin_late_join_and_reordering_keep_reputations() -> None:
    """Reputation is keyed by node id: a node absent in round 2 comes back in round 3 with the
    reputation it had; a node joining in round 3 starts fresh; replies arrive shuffled and the
    slot capacity grows on the way. Checked against TESSERACT driven with stable client ids."""
    nodes = [2**63 + 5, 17, 2**40, 999, 3]  # arbitrary 64-bit ids
    late = 123456789
    strategy = _tesseract_strategy(capacity=3)
    reference = Tesseract(num_clients=8, c_max=1)
    ids = {n: i for i, n in enumerate(sorted(nodes))}  # slots in ascending id order
    ids[late] = len(nodes)
    away = nodes[1]
    schedule = {1: nodes, 2: [n for n in nodes if n != away], 3: [*nodes, late]}
    arrays = arrays_of(SHAPES)
    reps = {}
    for r, present in schedule.items():
        G = _grads(r, len(present))
        replies = [reply(n, r, G[i]) for i, n in enumerate(present)]
        random.Random(r).shuffle(replies)
        new = play_round(strategy, r, arrays, replies, present)
        assert new is not None
        arrays = new
        order = sorted(range(len(present)), key=lambda i: ids[present[i]])
        reference.aggregate(G[order], torch.tensor([ids[present[i]] for i in order]))
        reps[r] = strategy.reputations()
        for n in present:
            assert reps[r][n] == pytest.approx(float(reference.reputation[ids[n]]), abs=1e-12)

    assert reps[2][away] == reps[1][away]  # absent: neither decayed nor changed
    assert away in reps[3] and reps[3][away] != reps[2][away]  # back, same slot, updated
    assert late not in reps[2] and late in reps[3]
    assert strategy.defense.capacity >= len(nodes) + 1
    assert [nr.node_id for nr in strategy.history[-1].nodes] == sorted(
        [*nodes, late], key=ids.__getitem__
    )


def test_reply_order_does_not_matter() -> None:
    nodes = [50, 10, 40, 20, 30]
    results = []
    for seed in (0, 1):
        strategy = _tesseract_strategy()
        arrays = arrays_of(SHAPES)
        for r in (1, 2, 3):
            G = _grads(r, len(nodes))
            replies = [reply(n, r, G[i]) for i, n in enumerate(nodes)]
            random.Random(seed * 10 + r).shuffle(replies)
            arrays = play_round(strategy, r, arrays, replies, nodes)
        results.append((flat(arrays), strategy.reputations()))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_flat_and_per_layer_gradients_agree() -> None:
    nodes = [1, 2, 3, 4, 5]
    arrays = arrays_of(SHAPES)
    layout = Layout.of(arrays)
    G = _grads(0, 5)
    outs = []
    for per_layer in (False, True):
        strategy = _tesseract_strategy()
        replies = [
            reply(n, 1, gradient_record(G[i], layout if per_layer else None))
            for i, n in enumerate(nodes)
        ]
        outs.append(flat(play_round(strategy, 1, arrays, replies, nodes)))
    assert torch.equal(outs[0], outs[1])


def test_wrong_shape_raises_naming_the_node() -> None:
    nodes = [11, 22, 33, 44, 55]
    strategy = _tesseract_strategy(on_malformed="raise")
    G = _grads(0, 5)
    replies = [reply(n, 1, G[i]) for i, n in enumerate(nodes)]
    replies[2] = reply(33, 1, torch.zeros(P + 1))
    with pytest.raises(UpdateError, match=r"round 1: node 33: .*shape \(17,\), expected \(16,\)"):
        play_round(strategy, 1, arrays_of(SHAPES), replies, nodes)


@pytest.mark.parametrize(
    "bad",
    [
        ArrayRecord({"gradient": Array(np.zeros(P + 1, dtype=np.float32))}),
        ArrayRecord({"gradient": Array(np.zeros(P, dtype=np.int64))}),
        ArrayRecord({"w": Array(np.zeros((3, 4), dtype=np.float32))}),  # a layer missing
        ArrayRecord(
            {
                "w": Array(np.zeros((4, 3), dtype=np.float32)),  # transposed
                "b": Array(np.zeros(4, dtype=np.float32)),
            }
        ),
    ],
)
def test_malformed_reply_is_penalized_and_logged(
    bad: ArrayRecord, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = [11, 22, 33, 44, 55]
    strategy = _tesseract_strategy()
    G = _grads(0, 5)
    replies = [reply(n, 1, G[i]) for i, n in enumerate(nodes)]
    replies[2] = reply(33, 1, bad)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        play_round(strategy, 1, arrays_of(SHAPES), replies, nodes)
    assert "node 33" in caplog.text
    rec = strategy.history[-1]
    assert rec.malformed == [33]
    by_node = {nr.node_id: nr for nr in rec.nodes}
    assert by_node[33].weight == 0.0
    assert by_node[33].flip_score == float("inf")
    assert strategy.reputations()[33] == pytest.approx(-(1 - 2 / 5))  # always penalized


def test_malformed_reply_can_be_dropped() -> None:
    nodes = [11, 22, 33, 44, 55]
    strategy = _tesseract_strategy(on_malformed="drop")
    G = _grads(0, 5)
    replies = [reply(n, 1, G[i]) for i, n in enumerate(nodes)]
    replies[2] = reply(33, 1, torch.zeros(3))
    play_round(strategy, 1, arrays_of(SHAPES), replies, nodes)
    assert [nr.node_id for nr in strategy.history[-1].nodes] == [11, 22, 44, 55]
    assert 33 not in strategy.reputations()


def test_nan_gradient_gets_weight_zero_and_is_penalized() -> None:
    nodes = [11, 22, 33, 44, 55]
    strategy = _tesseract_strategy()
    G = _grads(0, 5)
    G[4, 3] = float("nan")
    replies = [reply(n, 1, G[i]) for i, n in enumerate(nodes)]
    new = play_round(strategy, 1, arrays_of(SHAPES), replies, nodes)
    assert new is not None and bool(torch.isfinite(flat(new)).all())
    by_node = {nr.node_id: nr for nr in strategy.history[-1].nodes}
    assert by_node[55].weight == 0.0
    assert strategy.history[-1].malformed == []
    assert by_node[55].flip_score == float("inf")  # the hostile-row policy: maximally suspicious
    assert strategy.reputations()[55] == pytest.approx(-(1 - 2 / 5))


def test_missing_num_examples_is_malformed() -> None:
    nodes = [1, 2, 3, 4, 5]
    strategy = _tesseract_strategy(on_malformed="raise")
    G = _grads(0, 5)
    replies = [reply(n, 1, G[i]) for i, n in enumerate(nodes)]
    replies[0] = reply(1, 1, G[0], num_examples=-3.0)
    with pytest.raises(UpdateError, match="node 1: metric 'num-examples' must be a positive"):
        play_round(strategy, 1, arrays_of(SHAPES), replies, nodes)


def test_too_few_nodes_skips_the_round() -> None:
    strategy = RobustStrategy("tesseract", c_max=2, lr=0.1, min_available_nodes=1)
    arrays = arrays_of(SHAPES)
    G = _grads(0, 3)
    replies = [reply(n, 1, G[i]) for i, n in enumerate([1, 2, 3])]
    new = play_round(strategy, 1, arrays, replies, [1, 2, 3, 4, 5])
    assert new is None
    assert "2*c_max" in (strategy.history[-1].skipped or "")


def test_errors_for_bad_settings() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown aggregator .*'tesserakt'.*allowed: .*tesseract"
    ):
        RobustStrategy("tesserakt", c_max=1)
    with pytest.raises(ConfigError, match="does not accept parameter"):
        RobustStrategy("krum", c_max=1, defense_params={"mu_d": 0.9})
    with pytest.raises(ConfigError, match="root_gradient_fn"):
        RobustStrategy("fltrust", c_max=1)
    with pytest.raises(ConfigError, match="on_malformed"):
        RobustStrategy("median", c_max=1, on_malformed="ignore")  # type: ignore[arg-type]


def test_metrics_and_results_store(tmp_path: Path) -> None:
    nodes = [7, 8, 9, 10, 11]
    store_path = tmp_path / "store.sqlite"
    strategy = _tesseract_strategy(store=store_path, run_id="flower-test", run_config={"x": 1})
    arrays = arrays_of(SHAPES)
    metrics = []
    for r in (1, 2):
        G = _grads(r, 5)
        replies = [
            reply(n, r, G[i], **{"train-loss": 1.0 + i, "malicious": int(n == 11)})
            for i, n in enumerate(nodes)
        ]
        list(strategy.configure_train(r, arrays, ConfigRecord(), FakeGrid(nodes)))
        arrays, m = strategy.aggregate_train(r, replies)
        metrics.append(m)
    strategy.finish()
    m = metrics[-1]
    assert m["node-ids"] == nodes
    assert len(m["weights"]) == len(m["flip-scores"]) == len(m["reputations"]) == 5
    assert m["train-loss"] == pytest.approx(2.5)  # benign nodes only, equal num-examples
    with ResultsStore(store_path) as store:
        run = store.get_run("flower-test")
        assert run is not None and run["status"] == "finished"
        assert run["config"]["x"] == 1 and run["config"]["defense"] == "clip+tesseract"
        assert run["summary"]["nodes"]["11"]["malicious"] is True
        assert [r["round"] for r in store.metrics("flower-test")] == [0, 1]
        rows = store.client_records("flower-test")
        assert len(rows) == 10
        mal = [row for row in rows if row["malicious"]]
        assert {row["client"] for row in mal} == {4}  # node 11 has slot 4


def test_default_safeguard_bounds_a_magnitude_attack() -> None:
    """Two of ten nodes sending 3e38 in one coordinate: without the safeguard TESSERACT moves
    that parameter by about 1e37 in one round; with the default one it moves by at most a few
    benign gradient norms."""
    gen = torch.Generator().manual_seed(0)
    moves = {}
    for safeguard in (None, 3.0):
        strategy = RobustStrategy("tesseract", c_max=2, lr=0.1, safeguard=safeguard)
        node_ids = list(range(101, 111))
        grads = torch.randn(10, P, generator=gen)
        grads[:2, 0] = 3e38
        arrays = arrays_of(SHAPES)
        replies = [reply(node_ids[i], 1, grads[i], 10.0) for i in range(10)]
        new = play_round(strategy, 1, arrays, replies, node_ids)
        assert new is not None
        moves[safeguard] = float((flat(new) - flat(arrays)).abs().max())
    assert moves[None] > 1e30
    assert moves[3.0] < 0.1 * 3 * 2 * float(torch.linalg.vector_norm(grads[2:], dim=1).max())
    assert RobustStrategy("median", c_max=1).defense_name == "clip+median"
    assert RobustStrategy("median", c_max=1, safeguard=None).defense_name == "median"
    with pytest.raises(ConfigError, match="safeguard"):
        RobustStrategy("median", c_max=1, safeguard=0.5)


def _layered(flat_vec: torch.Tensor) -> ArrayRecord:
    """A flat vector as an ArrayRecord with the model's per-layer keys and shapes."""
    out, offset = {}, 0
    for key, shape in SHAPES.items():
        n = int(np.prod(shape))
        out[key] = Array(flat_vec[offset : offset + n].reshape(shape).numpy().copy())
        offset += n
    return ArrayRecord(out)


def test_weights_replies_make_fedsgd_a_fedavg() -> None:
    """reply = "weights" with FedSGD (weighted by num-examples) and the default server lr 1.0
    gives the weighted average of the nodes' new weights; "update" replies give the same bits."""
    gen = torch.Generator().manual_seed(3)
    arrays = arrays_of(SHAPES)
    w = flat(arrays)
    node_ids = list(range(201, 206))
    local = w + 0.1 * torch.randn(5, P, generator=gen)
    n = [10.0, 20.0, 30.0, 15.0, 25.0]
    strategy = RobustStrategy("fedsgd", c_max=0, reply="weights", safeguard=None)
    assert strategy.lr_fn(0) == 1.0
    new_w = play_round(
        strategy,
        1,
        arrays,
        [reply(node_ids[i], 1, _layered(local[i]), n[i]) for i in range(5)],
        node_ids,
    )
    assert new_w is not None
    weights = torch.tensor(n) / sum(n)
    expected = (weights[:, None] * local).sum(dim=0)
    assert torch.allclose(flat(new_w), expected, atol=1e-6)
    by_update = RobustStrategy("fedsgd", c_max=0, reply="update", safeguard=None)
    new_u = play_round(
        by_update,
        1,
        arrays,
        [reply(node_ids[i], 1, local[i] - w, n[i]) for i in range(5)],
        node_ids,
    )
    assert new_u is not None and torch.equal(flat(new_u), flat(new_w))
    with pytest.raises(ConfigError, match="reply = 'params'; allowed values"):
        RobustStrategy("fedsgd", c_max=0, reply="params")  # type: ignore[arg-type]


def test_tesseract_penalizes_attackers_in_multi_step_weight_replies() -> None:
    """FedAvg-style nodes (5 local SGD steps each, new weights sent back); 2 of 10 attackers
    send weights moved against the benign direction. Flip-scores compare the sign of each
    pseudo-gradient w_global - w_local with the last global pseudo-gradient's; TESSERACT's
    penalties land on the attackers, whose aggregation weight goes to about 0."""
    gen = torch.Generator().manual_seed(5)
    node_ids = list(range(301, 311))
    attackers = set(node_ids[:2])
    strategy = RobustStrategy("tesseract", c_max=2, reply="weights")
    arrays = arrays_of(SHAPES)
    target = torch.randn(P, generator=gen)  # benign nodes pull towards it
    for rnd in range(1, 13):
        w = flat(arrays)
        replies = []
        benign = []
        for node in node_ids[2:]:
            x = w.clone()
            for _ in range(5):
                x -= 0.05 * ((x - target) + 0.3 * torch.randn(P, generator=gen))
            benign.append(x)
            replies.append(reply(node, rnd, _layered(x), 10.0))
        step = torch.stack(benign).mean(dim=0) - w
        for node in sorted(attackers):
            replies.append(reply(node, rnd, _layered(w - 2.0 * step), 10.0))
        new = play_round(strategy, rnd, arrays, replies, node_ids)
        assert new is not None
        arrays = new
    last = strategy.history[-1]
    att_weight = sum(r.weight for r in last.nodes if r.node_id in attackers)
    reps = strategy.reputations()
    assert att_weight < 0.05
    assert max(reps[n] for n in attackers) < min(reps[n] for n in node_ids[2:])
    dist_before = float(torch.linalg.vector_norm(flat(arrays_of(SHAPES)) - target))
    assert float(torch.linalg.vector_norm(flat(arrays) - target)) < 0.5 * dist_before


@pytest.mark.parametrize(
    "defense",
    ["fedsgd", "tesseract", "trimmed_mean", "median", "krum", "bulyan", "faba", "foolsgold"],
)
def test_weights_mode_applies_the_simulators_aggregate_of_the_pseudo_gradients(
    defense: str,
) -> None:
    """In weights mode each defense's step is exactly what the simulator's aggregator gives on
    the pseudo-gradient matrix ``w_global - w_local`` (rows by slot), applied with lr 1."""
    from tesseract_fl.aggregators import AggregationContext

    gen = torch.Generator().manual_seed(11)
    m, c_max = 11, 2
    arrays = arrays_of(SHAPES)
    w = flat(arrays)
    node_ids = list(range(401, 401 + m))
    local = w + 0.1 * torch.randn(m, P, generator=gen)
    strategy = RobustStrategy(defense, c_max=c_max, reply="weights", safeguard=None, capacity=m)
    new = play_round(
        strategy,
        1,
        arrays,
        [reply(n, 1, _layered(local[i]), 10.0) for i, n in enumerate(node_ids)],
        node_ids,
    )
    assert new is not None
    G = w - local
    agg = make_aggregator(defense, num_clients=m, c_max=c_max)
    ctx = AggregationContext(n_samples=torch.full((m,), 10.0))
    expected = w.clone()
    expected.add_(agg.aggregate(G, torch.arange(m), ctx).update, alpha=-1.0)
    assert torch.equal(flat(new), expected)


def test_fraction_sampling_keeps_the_state_of_nodes_not_sampled() -> None:
    """With fraction_train = 0.5 Flower samples half of the connected nodes each round; the
    nodes left out keep their reputations untouched until they are sampled again."""
    nodes = list(range(501, 511))
    strategy = RobustStrategy(
        "tesseract",
        c_max=1,
        lr=0.1,
        fraction_train=0.5,
        min_train_nodes=5,
        min_available_nodes=10,
    )
    arrays = arrays_of(SHAPES)
    sampled_rounds: list[set[int]] = []
    for r in range(1, 7):
        msgs = list(strategy.configure_train(r, arrays, ConfigRecord(), FakeGrid(nodes)))
        sampled = {int(m.metadata.dst_node_id) for m in msgs}
        assert len(sampled) == 5
        sampled_rounds.append(sampled)
        before = strategy.reputations()
        G = _grads(100 + r, len(sampled))
        replies = [reply(n, r, G[i]) for i, n in enumerate(sorted(sampled))]
        new, _ = strategy.aggregate_train(r, replies)
        assert new is not None
        arrays = new
        after = strategy.reputations()
        for n in nodes:
            if n not in sampled and n in before:
                assert after[n] == before[n]  # not sampled: unchanged
    assert len(set().union(*sampled_rounds)) > 5  # the sample changed between rounds


def test_a_defense_instance_is_the_same_as_its_name() -> None:
    """An instance built by the user runs as the registry's build of the same name does (with
    the safeguard in front, and its state kept per node); a stateful instance caps max_nodes at
    its num_clients, a mismatched c_max or defense_params with an instance is refused."""
    nodes = [9, 4, 7, 1, 30]
    by_name = _tesseract_strategy(max_nodes=8)
    inst = RobustStrategy(Tesseract(num_clients=8, c_max=1), c_max=1, lr=0.1)
    assert inst.defense_name == "clip+tesseract" and inst.max_nodes == 8
    arrays_a = arrays_b = arrays_of(SHAPES)
    for r in (1, 2, 3):
        G = _grads(r, len(nodes))
        replies = [reply(n, r, G[i]) for i, n in enumerate(nodes)]
        arrays_a = play_round(by_name, r, arrays_a, replies, nodes)
        arrays_b = play_round(inst, r, arrays_b, replies, nodes)
        assert torch.equal(flat(arrays_a), flat(arrays_b))
    assert by_name.reputations() == inst.reputations()
    with pytest.raises(ConfigError, match="c_max"):
        RobustStrategy(Tesseract(num_clients=8, c_max=2), c_max=1)
    with pytest.raises(ConfigError, match="defense_params"):
        RobustStrategy(Tesseract(num_clients=8, c_max=1), c_max=1, defense_params={"mu_d": 0.5})
    with pytest.raises(ConfigError, match="registered name or an aggregator"):
        RobustStrategy(object(), c_max=1)  # type: ignore[arg-type]
    # a stateless instance (no num_clients) holds any number of nodes
    med = RobustStrategy(make_aggregator("median", num_clients=2, c_max=0), c_max=0, lr=0.1)
    assert med.max_nodes == DEFAULT_MAX_NODES
