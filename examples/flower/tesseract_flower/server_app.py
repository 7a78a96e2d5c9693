"""ServerApp: FedSGD with a tesseract-fl defense (RobustStrategy) and server-side evaluation.

Writes every round to ``<results-dir>/store.sqlite`` (our results store; ``tesseract-fl show
--store ...`` lists it) and, at the end, ``<results-dir>/flower-<run id>.json``: the run's
summary (per node: slot, partition id, ground-truth malicious flag, final reputation) and every
round's per-node weights, flip-scores and reputations.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from tesseract_fl.flower import (
    DEFAULT_MAX_NODES,
    FlowerTask,
    RobustStrategy,
    load_arrays,
    model_arrays,
)
from tesseract_fl.simulation.schedules import make_schedule
from tesseract_flower.settings import read_run_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the task from the run config, run the strategy, write the results file."""
    cfg, opts = read_run_config(dict(context.run_config))
    task = FlowerTask.cached(cfg)
    model = task.model()
    scratch = task.model()  # for root gradients and evaluation at a received model

    def root_gradient(server_round: int, arrays: ArrayRecord) -> Tensor:
        load_arrays(scratch, arrays)
        return task.root_gradient(scratch, server_round - 1)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        last = server_round == cfg.rounds
        if server_round == 0 or not (server_round % cfg.eval_every == 0 or last):
            return None
        load_arrays(scratch, arrays)
        acc, loss = task.evaluate(scratch, opts.test_samples)
        return MetricRecord({"accuracy": acc, "loss": loss})

    results = Path(opts.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    run_id = f"flower-{context.run_id}"
    strategy = RobustStrategy(
        cfg.defense,
        c_max=cfg.resolved_c_max,
        lr=make_schedule(cfg.lr_schedule, cfg.lr, cfg.rounds),
        defense_params=cfg.defense_params,
        capacity=cfg.clients,
        # Room for every client twice over (a SuperNode that restarts without a registered key
        # comes back under a new node id), never below the strategy's default cap.
        max_nodes=max(DEFAULT_MAX_NODES, 2 * cfg.clients),
        root_gradient_fn=root_gradient if task.root is not None else None,
        store=results / "store.sqlite",
        run_id=run_id,
        run_name=cfg.name,
        run_config={"experiment": cfg.to_dict(), "flower": dataclasses.asdict(opts)},
        record_every=cfg.record_every,
        fraction_train=opts.fraction_train,
        fraction_evaluate=opts.fraction_evaluate,
        min_available_nodes=opts.min_nodes or cfg.clients,
    )
    t0 = time.perf_counter()
    strategy.start(
        grid,
        model_arrays(model),
        num_rounds=cfg.rounds,
        train_config=ConfigRecord(),
        evaluate_fn=evaluate,
    )
    summary = strategy.summary_dict()
    summary["seconds"] = time.perf_counter() - t0
    summary["history"] = [dataclasses.asdict(r) for r in strategy.history]
    out = results / f"{run_id}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out)
