"""The FedAvg example app (examples/flower-fedavg) round by round without a SuperLink: its
ClientApp trains locally and sends weights, attackers send scaled sign-flipped updates, and
RobustStrategy in weights mode (as its ServerApp builds it) aggregates them."""

from __future__ import annotations

import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

flwr = pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict  # noqa: E402
from flwr.app.message_type import MessageType  # noqa: E402

from flower_helpers import FakeGrid, task_identity  # noqa: E402
from tesseract_fl.flower import FlowerTask, RobustStrategy, model_arrays  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "examples" / "flower-fedavg"


@pytest.fixture
def identity() -> Iterator[None]:
    yield from task_identity()


def _run_config(data_dir: Path, **over: Any) -> dict[str, Any]:
    cfg = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cfg.update(data_dir=str(data_dir), **over)
    return cfg


def _train_message(arrays: Any, server_round: int, node: int) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    meta = Metadata(
        run_id=1,
        message_id=f"t{server_round}-{node}",
        src_node_id=0,
        dst_node_id=node,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    return Message(content, metadata=meta)


def _as_reply(msg: Message, node: int, server_round: int) -> Message:
    """The ClientApp's reply as the ServerApp receives it (sender = the node)."""
    meta = Metadata(
        run_id=1,
        message_id=f"r{server_round}-{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"t{server_round}-{node}",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    return Message(msg.content, metadata=meta)


def test_fedavg_app_attackers_get_the_lowest_reputations(
    tiny_data_dir: Path, identity: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(APP))
    for mod in [m for m in sys.modules if m.startswith("fedavg_app")]:
        del sys.modules[mod]
    from fedavg_app import client_app
    from fedavg_app.settings import read_run_config

    run_config = _run_config(tiny_data_dir, rounds=4, **{"local-epochs": 1})
    cfg, opts = read_run_config(run_config)
    task = FlowerTask.cached(cfg)
    nodes = list(range(1001, 1001 + cfg.clients))
    strategy = RobustStrategy(
        cfg.defense,
        c_max=cfg.resolved_c_max,
        reply="weights",
        lr=opts.server_lr,
        safeguard=opts.safeguard,
        capacity=cfg.clients,
        min_available_nodes=cfg.clients,
    )
    arrays = model_arrays(task.model())
    for rnd in range(1, cfg.rounds + 1):
        list(strategy.configure_train(rnd, arrays, ConfigRecord(), FakeGrid(nodes)))
        replies = []
        for pid, node in enumerate(nodes):
            ctx = Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": pid, "num-partitions": cfg.clients},
                state=RecordDict(),
                run_config=run_config,
            )
            out = client_app.train(_train_message(arrays, rnd, node), ctx)
            replies.append(_as_reply(out, node, rnd))
        new, _ = strategy.aggregate_train(rnd, replies)
        assert new is not None
        arrays = new
    reps = strategy.reputations()
    attackers = {nodes[i] for i in task.malicious_ids}
    assert len(attackers) == cfg.malicious == 2
    # No benign node below an attacker (TESSERACT's low cut-off may tie a benign node with the
    # lowest flip-score to them), and the attackers' weight gone.
    assert max(reps[n] for n in attackers) <= min(reps[n] for n in reps if n not in attackers)
    last = strategy.history[-1]
    assert sum(r.weight for r in last.nodes if r.node_id in attackers) < 0.05


def test_fedavg_app_colluding_attack_on_updates(
    tiny_data_dir: Path, identity: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Full-knowledge attackers in weights mode: each attacker's reply is ``w_global - row``,
    the row being Full-Trim applied to every client's honest pseudo-gradient of the round."""
    import torch

    from tesseract_fl.attacks import AttackContext, FullTrim
    from tesseract_fl.flower.records import Layout

    monkeypatch.syspath_prepend(str(APP))
    for mod in [m for m in sys.modules if m.startswith("fedavg_app")]:
        del sys.modules[mod]
    from fedavg_app import client_app
    from fedavg_app.settings import read_run_config

    run_config = _run_config(
        tiny_data_dir,
        rounds=2,
        attack="full_trim",
        defense="fedsgd",
        **{"local-epochs": 1, "results-dir": str(tmp_path)},
    )
    cfg, opts = read_run_config(run_config)
    task = FlowerTask.cached(cfg)
    nodes = list(range(1001, 1001 + cfg.clients))
    strategy = RobustStrategy(
        cfg.defense, c_max=cfg.resolved_c_max, reply="weights", lr=1.0, capacity=cfg.clients
    )
    arrays = model_arrays(task.model())
    gen = torch.Generator().manual_seed(cfg.seed)
    mask = torch.zeros(cfg.clients, dtype=torch.bool)
    mask[task.malicious_ids] = True
    for rnd in range(1, cfg.rounds + 1):
        list(strategy.configure_train(rnd, arrays, ConfigRecord(), FakeGrid(nodes)))
        honest = client_app.honest_updates(task, cfg, opts, arrays, rnd)
        ctx = AttackContext(malicious=mask, c_max=cfg.resolved_c_max, round=rnd - 1, generator=gen)
        want = FullTrim().poison(honest, ctx).rows
        layout = Layout.of(arrays)
        w_global = layout.flatten(arrays)
        replies = []
        for pid, node in enumerate(nodes):
            ctx_node = Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": pid, "num-partitions": cfg.clients},
                state=RecordDict(),
                run_config=run_config,
            )
            out = client_app.train(_train_message(arrays, rnd, node), ctx_node)
            sent = w_global - layout.flatten(out.content.array_records["arrays"])
            if pid in task.malicious_ids:
                row = want[task.malicious_ids.index(pid)]
                torch.testing.assert_close(sent, row, rtol=0, atol=1e-5)
            else:  # benign nodes send their honest training, the matrix the attackers saw
                torch.testing.assert_close(sent, honest[pid], rtol=0, atol=1e-5)
            replies.append(_as_reply(out, node, rnd))
        new, _ = strategy.aggregate_train(rnd, replies)
        assert new is not None
        arrays = new
    assert (tmp_path / "collusion-1" / "round-000002.pt").is_file()
