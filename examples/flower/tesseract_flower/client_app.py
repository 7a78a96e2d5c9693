"""ClientApp: one FedSGD client (partition ``partition-id`` of the run's split), honest or not.

``train`` returns the client's gradient at the received global model on its round-robin batch
(the simulator's batch for that round). A malicious client (its partition id is one of the
run's attackers) runs the configured attack:

- label flipping: relabels its batch before computing the gradient;
- sign flipping: negates its own gradient (needs no one else);
- full-knowledge attacks (Full-Trim, Full-Krum, ALIE, IPM, Min-Max, Min-Sum; Gaussian noise
  too, for the simulator's RNG sequence): colluding-attacker mode. The attackers meet in
  ``attack-dir``; per round the first one computes every client's honest gradient and the
  attack's rows for all attackers, the others read theirs
  (:class:`tesseract_fl.flower.ColludingAttackers`).

The reply's metrics carry ``partition-id`` and ``malicious`` for the experiment's bookkeeping
(the strategy stores them; it never uses them to aggregate).
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tesseract_fl.attacks import AttackContext, Poison, is_data_attack, make_attack
from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import ExperimentConfig
from tesseract_fl.flower import (
    LOCAL_ATTACKS,
    ColludingAttackers,
    FlowerTask,
    Layout,
    gradient_record,
    load_arrays,
)
from tesseract_flower.settings import read_run_config

app = ClientApp()


def _partition(context: Context, cfg: ExperimentConfig) -> int:
    """This node's partition id; its ``num-partitions`` must equal the run's ``clients``."""
    node = context.node_config
    if "partition-id" not in node:
        raise ConfigError(
            "this SuperNode has no partition-id; start it with "
            "--node-config 'partition-id=<i> num-partitions=<clients>'"
        )
    num = int(node.get("num-partitions", cfg.clients))
    if num != cfg.clients:
        raise ConfigError(
            f"SuperNode num-partitions = {num} but the run has clients = {cfg.clients}; "
            "set --run-config clients=... (or num-supernodes) to match"
        )
    return int(node["partition-id"])


def _attack(cfg: ExperimentConfig) -> Any:
    return make_attack(cfg.attack, **cfg.attack_params) if cfg.attack != "none" else None


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Gradient of this client's round batch at the global model (poisoned if malicious)."""
    cfg, opts = read_run_config(dict(context.run_config))
    task = FlowerTask.cached(cfg)
    client = _partition(context, cfg)
    arrays = msg.content.array_records["arrays"]
    server_round = msg.content.config_records["config"]["server-round"]
    if not isinstance(server_round, int):
        raise ConfigError(f"train message without an integer server-round: {server_round!r}")
    rnd = server_round - 1
    model = task.model()
    load_arrays(model, arrays)
    malicious = task.is_malicious(client)
    attack = _attack(cfg) if malicious else None
    grad, loss = task.gradient(model, client, rnd, attack=attack)
    if attack is not None and not is_data_attack(attack):
        if attack.name in LOCAL_ATTACKS:
            ctx = AttackContext(
                malicious=torch.ones(1, dtype=torch.bool), c_max=cfg.resolved_c_max, round=rnd
            )
            out = attack.poison(grad.unsqueeze(0), ctx)
            grad = (out.rows if isinstance(out, Poison) else out)[0]
        else:
            colluders = ColludingAttackers(
                opts.collusion_dir(context.run_id),
                attack,
                num_clients=cfg.clients,
                malicious_ids=task.malicious_ids,
                c_max=cfg.resolved_c_max,
                seed=cfg.seed,
            )
            grad, _ = colluders.row(
                server_round, client, arrays, lambda: task.honest_gradients(model, rnd)
            )
    layout = Layout.of(arrays) if opts.gradient_format == "layers" else None
    metrics = MetricRecord(
        {
            "num-examples": len(task.partitions[client]),
            "train-loss": loss,
            "partition-id": client,
            "malicious": int(malicious),
        }
    )
    content = RecordDict({"gradient": gradient_record(grad, layout), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy and loss of the global model on this client's own training partition."""
    cfg, _ = read_run_config(dict(context.run_config))
    task = FlowerTask.cached(cfg)
    client = _partition(context, cfg)
    model = task.model()
    load_arrays(model, msg.content.array_records["arrays"])
    idx = torch.from_numpy(task.partitions[client])
    from tesseract_fl.simulation.engine import evaluate as evaluate_model

    acc, loss = evaluate_model(model, task.ds.train_x[idx], task.ds.train_y[idx])
    metrics = MetricRecord({"num-examples": len(idx), "accuracy": acc, "loss": loss})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
