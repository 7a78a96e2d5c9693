"""Engine benchmark for the `mnist` preset (100 clients x batch 32, MNIST DNN), in one process.

Measures seconds per round of the two gradient backends (per-client loop, chunked vmap), the
aggregation alone (FedSGD, TESSERACT), and whole rounds (gradients + aggregation + SGD step),
then prints ratios and writes JSON. Uses real MNIST when it is in the data directory, else
random images of the same shape (compute cost does not depend on pixel values; the JSON says
which).

    .venv/bin/python benchmarks/engine.py [--repeats 5] [--out results/benchmarks/engine.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from _timing import timeit  # benchmarks/ is on sys.path when run as a script
from tesseract_fl.aggregators import make_aggregator
from tesseract_fl.errors import DatasetError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import build_simulation
from tesseract_fl.models import make_model
from tesseract_fl.simulation.gradients import client_gradients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vmap-chunk", type=int, default=10)
    ap.add_argument("--out", default="results/benchmarks/engine.json")
    args = ap.parse_args()

    cfg = resolve_config("mnist")
    m, b = cfg.clients, cfg.batch_size
    torch.manual_seed(0)
    try:
        sim = build_simulation(cfg)
        idx = torch.from_numpy(sim.sampler.next_batches())
        x, y = sim.train_x[idx], sim.train_y[idx]
        data = "real MNIST"
    except DatasetError:
        sim = None
        x, y = torch.randn(m, b, 1, 28, 28), torch.randint(0, 10, (m, b))
        data = "random images (MNIST not found; run `tesseract-fl datasets fetch mnist`)"
    model = make_model(cfg.model)
    P = sum(p.numel() for p in model.parameters())
    out = torch.empty(m, P)

    res: dict[str, Any] = {}
    res["grad_loop"] = timeit(
        lambda: client_gradients(model, x, y, F.cross_entropy, "loop", out=out), args.repeats
    )
    res["grad_vmap"] = timeit(
        lambda: client_gradients(
            model, x, y, F.cross_entropy, "vmap", chunk_size=args.vmap_chunk, out=out
        ),
        args.repeats,
    )
    G, _ = client_gradients(model, x, y, F.cross_entropy, "loop")
    ones = torch.ones(1, m)
    res["memory_bound_matmul_sum"] = timeit(lambda: ones @ G, args.repeats * 4)
    Gn = G.numpy()
    res["memory_bound_numpy_sum"] = timeit(lambda: Gn.sum(0), args.repeats * 4)
    for name in ("fedsgd", "tesseract"):
        agg = make_aggregator(name, num_clients=m, c_max=cfg.resolved_c_max)
        res[f"aggregate_{name}"] = timeit(lambda agg=agg: agg.aggregate(G), args.repeats * 2)

    if sim is not None:
        for name in ("fedsgd", "tesseract"):
            for backend in ("loop", "vmap"):
                c = resolve_config("mnist", overrides=[f"defense={name}", f"backend={backend}"])
                s = build_simulation(c)
                res[f"round_{name}_{backend}"] = timeit(s.step, args.repeats)
        res["evaluate_10k"] = timeit(sim.evaluate, args.repeats)
    else:
        for name in ("fedsgd", "tesseract"):
            agg = make_aggregator(name, num_clients=m, c_max=cfg.resolved_c_max)

            def whole(agg: Any = agg) -> None:
                g, _ = client_gradients(model, x, y, F.cross_entropy, "loop", out=out)
                upd = agg.aggregate(g).update
                with torch.no_grad():
                    torch.nn.utils.vector_to_parameters(
                        torch.nn.utils.parameters_to_vector(model.parameters()) - 0.01 * upd,
                        model.parameters(),
                    )

            res[f"round_{name}_loop"] = timeit(whole, args.repeats)

    bound = min(
        res["memory_bound_matmul_sum"]["median_ms"], res["memory_bound_numpy_sum"]["median_ms"]
    )
    ratios = {
        "vmap_over_loop": res["grad_vmap"]["median_ms"] / res["grad_loop"]["median_ms"],
        "tesseract_aggregate_over_memory_bound": res["aggregate_tesseract"]["median_ms"] / bound,
        "tesseract_aggregate_share_of_round": res["aggregate_tesseract"]["median_ms"]
        / res["round_tesseract_loop"]["median_ms"],
    }
    report = {
        "benchmark": "engine",
        "preset": "mnist",
        "clients": m,
        "batch_size": b,
        "params": P,
        "data": data,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "numpy": np.__version__,
        "timings": res,
        "ratios": ratios,
    }
    print(f"data: {data}; m={m}, b={b}, P={P}, torch threads={torch.get_num_threads()}")
    for k, v in res.items():
        print(f"  {k:36s} {v['median_ms']:9.1f} ms  (min {v['min_ms']:.1f})")
    for k, v in ratios.items():
        print(f"  {k:36s} {v:9.3f}")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
