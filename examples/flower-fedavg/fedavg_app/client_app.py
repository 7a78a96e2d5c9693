"""ClientApp: FedAvg local training (E epochs of SGD on the node's partition), weights back.

A malicious node (one of the run's seeded attackers) attacks with what a weight-sending client
can do on its own: ``sign_flip`` sends ``w_global - scale * (w_local - w_global)`` (its update
reversed and scaled), ``label_flip`` trains on labels ``L - 1 - y``, ``gaussian`` sends
``w_global + N(0, sigma^2)``. Or the attackers collude with full knowledge (``full_trim``,
``full_krum``, ``alie``, ``ipm``, ``min_max``, ``min_sum``, ``mimic``): the first attacker of a
round recomputes every client's honest local training, the attack turns that matrix of
pseudo-gradients ``w_global - w_local`` into the attackers' rows (shared through a folder, as
in the FedSGD example), and each attacker sends ``w_global - row``.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedavg_app.settings import COLLUDING_ATTACKS, AppOptions, read_run_config
from tesseract_fl.attacks import flip_labels, make_attack
from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import ExperimentConfig
from tesseract_fl.flower import FlowerTask, load_arrays, model_arrays
from tesseract_fl.flower.collusion import ColludingAttackers
from tesseract_fl.flower.records import Layout

app = ClientApp()


def local_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch: int,
    lr: float,
    generator: torch.Generator,
) -> float:
    """``epochs`` passes of minibatch SGD over ``(x, y)`` in a seeded order; the mean loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return sum(losses) / max(len(losses), 1)


def _generator(cfg: ExperimentConfig, server_round: int, client: int) -> torch.Generator:
    """The seeded order of ``client``'s local epochs in ``server_round``."""
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + server_round * 1009 + client)


def honest_updates(
    task: FlowerTask, cfg: ExperimentConfig, opts: AppOptions, arrays: Any, server_round: int
) -> torch.Tensor:
    """Every client's honest pseudo-gradient ``w_global - w_local`` of ``server_round``
    (``[clients, P]``, in the layout of ``arrays``): what full-knowledge attackers see."""
    layout = Layout.of(arrays)
    w_global = layout.flatten(arrays)
    rows = []
    for client in range(cfg.clients):
        model = task.model()
        load_arrays(model, arrays)
        idx = torch.from_numpy(task.partitions[client])
        local_train(
            model,
            task.ds.train_x[idx],
            task.ds.train_y[idx],
            epochs=opts.local_epochs,
            batch=cfg.batch_size,
            lr=cfg.lr,
            generator=_generator(cfg, server_round, client),
        )
        rows.append(w_global - layout.flatten(model_arrays(model)))
    return torch.stack(rows)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, opts = read_run_config(dict(context.run_config))
    task = FlowerTask.cached(cfg)
    if "partition-id" not in context.node_config:
        raise ConfigError("this SuperNode has no partition-id (set --node-config)")
    client = int(context.node_config["partition-id"])
    server_round = int(msg.content.config_records["config"]["server-round"])
    arrays = msg.content.array_records["arrays"]
    model = task.model()
    load_arrays(model, arrays)
    w_global = [p.detach().clone() for p in model.state_dict().values()]
    malicious = task.is_malicious(client)
    idx = torch.from_numpy(task.partitions[client])
    x, y = task.ds.train_x[idx], task.ds.train_y[idx]
    if malicious and opts.attack == "label_flip":
        y = flip_labels(y, task.ds.num_classes)
    gen = _generator(cfg, server_round, client)
    loss = local_train(
        model, x, y, epochs=opts.local_epochs, batch=cfg.batch_size, lr=cfg.lr, generator=gen
    )
    if malicious and opts.attack in ("sign_flip", "gaussian"):
        with torch.no_grad():
            for p, g in zip(model.state_dict().values(), w_global, strict=True):
                if not p.is_floating_point():
                    continue
                if opts.attack == "sign_flip":
                    p.copy_(g - opts.attack_scale * (p - g))
                else:
                    p.copy_(g + opts.attack_sigma * torch.randn(p.shape, generator=gen))
    if malicious and opts.attack in COLLUDING_ATTACKS:
        colluders = ColludingAttackers(
            opts.collusion_dir(context.run_id),
            make_attack(opts.attack),
            num_clients=cfg.clients,
            malicious_ids=task.malicious_ids,
            c_max=cfg.resolved_c_max,
            seed=cfg.seed,
        )
        row, _ = colluders.row(
            server_round,
            client,
            arrays,
            lambda: honest_updates(task, cfg, opts, arrays, server_round),
        )
        layout = Layout.of(arrays)
        sent = {
            k: torch.from_numpy(v)
            for k, v in layout.unflatten(layout.flatten(arrays) - row).items()
        }
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in sent:
                    p.copy_(sent[name].to(p.dtype))
    metrics = MetricRecord(
        {
            "num-examples": int(idx.numel()),
            "train-loss": loss,
            "partition-id": client,
            "malicious": int(malicious),
        }
    )
    return Message(RecordDict({"arrays": model_arrays(model), "metrics": metrics}), reply_to=msg)
