"""Ours against the authors' published code on the same model and settings, at equal evaluation
cadence.

Their per-round times (``benchmarks/reference.toml``: how and when they were measured) come
from their FLAIR ``main.py`` run side by side with ours, only its torchvision data loading
patched. Here the ``mnist`` preset runs with their padded DNN (``mnist_cnn_padded``, 506,060
parameters), Full-Trim with 20 attackers and TESSERACT with ``c_max`` 20, and the same rounds
are timed (median, min and max over the repeats): with the test evaluation every round (their
code's cadence), every 10 rounds (ours, applied to both), without it, and a Full-Krum round.
The reference was measured on one machine: on another, the ratios compare two machines too, so
re-measure both sides there when their code is at hand.

    .venv/bin/python -m benchmarks authors [--repeats 5] [--quick]
        [--out results/benchmarks/authors.json]
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._timing import machine_info, timeit, write_report
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import build_simulation

REFERENCE = Path(__file__).with_name("reference.toml")


def _sim(attack: str) -> Any:
    cfg = resolve_config(
        "mnist", overrides=["model=mnist_cnn_padded", f"attack={attack}", "defense=tesseract"]
    )
    sim = build_simulation(cfg)
    for _ in range(2):  # steady state: s_g, reputations, the attack's first round
        sim.step()
    return sim, cfg


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one repeat")
    ap.add_argument("--out", default="results/benchmarks/authors.json")
    args = ap.parse_args(argv)
    reps = 1 if args.quick else args.repeats
    ref = tomllib.loads(REFERENCE.read_text())["authors_mnist"]
    console = Console()

    sim, _ = _sim("full_trim")
    grads = timeit(sim.compute_gradients, reps)
    step = timeit(sim.step, reps)
    ev = timeit(sim.evaluate, reps)
    krum_sim, _ = _sim("full_krum")
    krum_step = timeit(krum_sim.step, reps)
    krum_attack = timeit(lambda: krum_sim.poison(krum_sim.compute_gradients()[0]), reps)

    def med(t: dict[str, float]) -> float:
        return t["median_ms"] / 1000

    def spread(t: dict[str, float], extra: float = 0.0) -> tuple[float, float]:
        return t["min_ms"] / 1000 + extra, t["max_ms"] / 1000 + extra

    ev_s = med(ev)
    theirs_eval = float(ref["evaluation_s"])
    rows = [
        (
            "round, evaluation every round (both)",
            med(step) + ev_s,
            spread(step, ev_s),
            ref["round_with_eval_every_round_s"],
            ref["target_speedup_eval_every_round"],
        ),
        (
            "round, evaluation every 10 rounds (both)",
            med(step) + ev_s / 10,
            spread(step, ev_s / 10),
            ref["round_without_eval_s"] + theirs_eval / 10,
            ref["target_speedup_eval_every_10"],
        ),
        (
            "round, no evaluation",
            med(step),
            spread(step),
            ref["round_without_eval_s"],
            ref["target_speedup_no_eval"],
        ),
        (
            "Full-Krum round, no evaluation",
            med(krum_step),
            spread(krum_step),
            ref["full_krum_round_s"],
            ref["target_speedup_full_krum_round"],
        ),
        ("gradients / local training", med(grads), spread(grads), ref["local_training_s"], None),
        (
            "Full-Krum attack alone (gradients subtracted)",
            med(krum_attack) - med(grads),
            (krum_attack["min_ms"] / 1000 - med(grads), krum_attack["max_ms"] / 1000 - med(grads)),
            ref["full_krum_attack_s"],
            None,
        ),
        ("test-set evaluation (10k images)", ev_s, spread(ev), theirs_eval, None),
    ]
    table = Table(
        title=f"mnist_cnn_padded ({sim.num_params:,} params), 100 clients x 32, TESSERACT "
        f"c_max 20, backend {sim.backend}, {machine_info()['torch_threads']} threads",
        title_justify="left",
    )
    for col in ("what", "ours s (median)", "min-max", "theirs s", "speed-up", "target", "ok"):
        table.add_column(col, justify="left" if col == "what" else "right")
    results = []
    for what, ours, (lo, hi), theirs, target in rows:
        speedup = theirs / ours
        ok = None if target is None else speedup >= target
        results.append(
            {
                "what": what,
                "ours_s": ours,
                "ours_min_s": lo,
                "ours_max_s": hi,
                "theirs_s": theirs,
                "speedup": speedup,
                "target": target,
                "meets_target": ok,
            }
        )
        table.add_row(
            what,
            f"{ours:.3f}",
            f"{lo:.3f}-{hi:.3f}",
            f"{theirs:.2f}",
            f"{speedup:.2f}x",
            "" if target is None else f">= {target:.1f}x",
            "" if ok is None else ("yes" if ok else "NO"),
        )
    console.print(table)
    console.print(f"theirs: {ref['measured']}, {' '.join(ref['source'].split())}")
    report = {
        "benchmark": "authors",
        **machine_info(),
        "reference": ref,
        "backend": sim.backend,
        "params": sim.num_params,
        "timings": {
            "gradients": grads,
            "round_full_trim": step,
            "evaluate": ev,
            "round_full_krum": krum_step,
            "gradients_plus_full_krum_attack": krum_attack,
        },
        "comparison": results,
    }
    console.print(f"wrote {write_report(report, args.out)}")
    return report


if __name__ == "__main__":
    main()
