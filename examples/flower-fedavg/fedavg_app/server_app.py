"""ServerApp: FedAvg whose aggregation is a tesseract-fl defense (RobustStrategy, weights mode).

Writes every round to ``<results-dir>/store.sqlite`` and, at the end,
``<results-dir>/flower-<run id>.json`` (per node: partition id, malicious flag, reputation).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedavg_app.settings import read_run_config
from tesseract_fl.flower import FlowerTask, RobustStrategy, load_arrays, model_arrays

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg, opts = read_run_config(dict(context.run_config))
    task = FlowerTask.cached(cfg)
    scratch = task.model()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 or not (
            server_round % cfg.eval_every == 0 or server_round == cfg.rounds
        ):
            return None
        load_arrays(scratch, arrays)
        acc, loss = task.evaluate(scratch, opts.test_samples)
        print(f"round {server_round}: test accuracy {100 * acc:.2f}%, loss {loss:.4f}", flush=True)
        return MetricRecord({"accuracy": acc, "loss": loss})

    results = Path(opts.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    run_id = f"flower-fedavg-{context.run_id}"
    strategy = RobustStrategy(
        cfg.defense,
        c_max=cfg.resolved_c_max,
        reply="weights",
        lr=opts.server_lr,
        defense_params=cfg.defense_params,
        safeguard=opts.safeguard,
        capacity=cfg.clients,
        store=results / "store.sqlite",
        run_id=run_id,
        run_name=cfg.name,
        run_config={"experiment": cfg.to_dict(), "app": dataclasses.asdict(opts)},
        fraction_evaluate=0.0,
        min_available_nodes=cfg.clients,
    )
    t0 = time.perf_counter()
    strategy.start(
        grid,
        model_arrays(task.model()),
        num_rounds=cfg.rounds,
        train_config=ConfigRecord(),
        evaluate_fn=evaluate,
    )
    summary = strategy.summary_dict()
    summary["seconds"] = time.perf_counter() - t0
    out = results / f"{run_id}.json"
    out.write_text(json.dumps(summary, indent=1, default=str))
    print(f"results: {out}", flush=True)
