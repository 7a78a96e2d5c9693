"""ClientApp: FedAvg local training (E epochs of SGD on the node's partition), weights back.

A malicious node (one of the run's seeded attackers) attacks with what a weight-sending client
can do on its own: ``sign_flip`` sends ``w_global - scale * (w_local - w_global)`` (its update
reversed and scaled), ``label_flip`` trains on labels ``L - 1 - y``, ``gaussian`` sends
``w_global + N(0, sigma^2)``.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedavg_app.settings import read_run_config
from tesseract_fl.attacks import flip_labels
from tesseract_fl.errors import ConfigError
from tesseract_fl.flower import FlowerTask, load_arrays, model_arrays

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
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + server_round * 1009 + client)
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
    metrics = MetricRecord(
        {
            "num-examples": int(idx.numel()),
            "train-loss": loss,
            "partition-id": client,
            "malicious": int(malicious),
        }
    )
    return Message(RecordDict({"arrays": model_arrays(model), "metrics": metrics}), reply_to=msg)
