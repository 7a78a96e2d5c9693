"""Attack benchmark: every registered model-poisoning attack on the MNIST round shape, and the
Full-Krum lambda search against a naive search that reruns Krum from scratch for every lambda.

Times each attack in :data:`tesseract_fl.attacks.ATTACKS` (label flipping acts on labels, not on
gradients, and is skipped) on a ``[100, 266060]`` float32 matrix shaped like one MNIST round
(rows: a shared mean direction plus client noise; 20 attackers at random rows, as the simulator
draws them; the adaptive attacks get a TESSERACT defense after one round), then the attacks'
kernels against the torch calls they replace (the same bits, checked). The Full-Krum comparison
runs the same halving search both ways on the same matrix and checks that they pick the same
lambda (equal up to the float32 rounding of the bound's Gram products, which BLAS blocks
differently for [m, P] and [m - c, P]).

    .venv/bin/python -m benchmarks attacks [--repeats 3] [--quick]
        [--out results/benchmarks/attacks.json]
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from benchmarks._timing import machine_info, timeit, write_report
from tesseract_fl.aggregators import Tesseract
from tesseract_fl.aggregators.kernels.gram import nearest_sums_np, sq_distances
from tesseract_fl.aggregators.krum import krum_select
from tesseract_fl.attacks import ATTACKS, AttackContext, DefenseView, make_attack
from tesseract_fl.attacks.adaptive import restoration_order
from tesseract_fl.attacks.base import benign_index, malicious_mask, uniform
from tesseract_fl.attacks.full_krum import LAMBDA_MIN, full_krum_search, lambda_upper_bound
from tesseract_fl.attacks.statistics import column_std_mean


def round_matrix(m: int, P: int, seed: int = 0) -> torch.Tensor:
    """Rows like one round's gradients: a shared direction (cosine ~0.5 between rows) + noise."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(P, generator=g) * 1e-3
    return mean + torch.randn(m, P, generator=g) * 1e-3


def naive_full_krum(G: torch.Tensor, c: int, c_max: int, gen: torch.Generator) -> float:
    """The textbook search: build the attacked matrix and run Krum on it for every lambda."""
    m, P = G.shape
    mask = malicious_mask(m, c)
    s = torch.sign(G.sum(0))
    noise = uniform((c, P), -1e-4 / P, 1e-4 / P, gen, G)
    noise[0].zero_()
    lam = lambda_upper_bound(G[~mask], m, c)
    while lam >= LAMBDA_MIN:
        A = G.clone()
        A[mask] = noise - lam * s
        scores = nearest_sums_np(sq_distances(A).numpy(), m - c_max - 2)
        if bool(mask[int(krum_select(torch.from_numpy(scores), 1)[0])]):
            return lam
        lam /= 2.0
    return 0.0


def kernels(G: torch.Tensor, mask: torch.Tensor, repeats: int) -> dict[str, Any]:
    """The attacks' kernels against the torch calls they replace, side by side in this process,
    with a check that they return the same bits."""
    benign = benign_index(mask)
    mu = G[benign].mean(dim=0)
    pairs = {
        "std_mean of the benign rows": (
            lambda: column_std_mean(G, rows=benign),
            lambda: torch.std_mean(G[~mask], dim=0, correction=1),
        ),
        "restoration order (stable argsort of |mean|)": (
            lambda: restoration_order(mu),
            lambda: torch.argsort(mu.abs(), stable=True),
        ),
    }
    out: dict[str, Any] = {}
    table = Table(title="attack kernels: ours vs the torch calls they replace (same bits)")
    for col in ("kernel", "ours ms", "torch ms", "speed-up", "same bits"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for name, (ours, ref) in pairs.items():
        a, b = ours(), ref()
        same = (
            all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
            if isinstance(a, tuple)
            else torch.equal(a, b)
        )
        t_ours, t_ref = timeit(ours, repeats), timeit(ref, repeats)
        ratio = t_ref["min_ms"] / t_ours["min_ms"]
        out[name] = {"ours": t_ours, "torch": t_ref, "speedup": ratio, "same_bits": same}
        table.add_row(
            name, f"{t_ours['min_ms']:.1f}", f"{t_ref['min_ms']:.1f}", f"{ratio:.2f}x", str(same)
        )
    Console().print(table)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--m", type=int, default=100)
    ap.add_argument("--P", type=int, default=266_060)
    ap.add_argument("--c", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="one repeat")
    ap.add_argument("--out", default="results/benchmarks/attacks.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = 1
    m, P, c = args.m, args.P, args.c
    G = round_matrix(m, P)
    # Attackers at random rows, as the simulator draws them (not the first c).
    rows = torch.randperm(m, generator=torch.Generator().manual_seed(3))[:c]
    mask = malicious_mask(m, c, rows)
    defense = Tesseract(num_clients=m, c_max=c)
    defense.aggregate(round_matrix(m, P, seed=1))
    ctx = AttackContext(
        malicious=mask,
        c_max=c,
        generator=torch.Generator().manual_seed(0),
        defense=DefenseView(defense),
        root_gradient=round_matrix(1, P, seed=2)[0],  # for the attack against FLTrust
    )
    results: dict[str, Any] = {
        "benchmark": "attacks",
        "shape": [m, P],
        "c": c,
        **machine_info(),
        "attacks": {},
    }
    table = Table(
        title=f"attacks on [{m}, {P}] float32, c = {c} ({torch.get_num_threads()} threads)"
    )
    for col in ("attack", "min ms", "median ms", "record"):
        table.add_column(col, justify="left" if col in ("attack", "record") else "right")
    for name in sorted(ATTACKS):
        attack = make_attack(name)
        if not callable(getattr(attack, "poison", None)):
            continue
        out = attack.poison(G, ctx)
        t = timeit(lambda a=attack: a.poison(G, ctx), args.repeats)
        results["attacks"][name] = {**t, "record": out.record}
        rec = ", ".join(f"{k}={v:.3g}" for k, v in out.record.items())
        table.add_row(name, f"{t['min_ms']:.1f}", f"{t['median_ms']:.1f}", rec)
    Console().print(table)

    results["kernels"] = kernels(G, mask, args.repeats)

    fast_lam = full_krum_search(G, c, c, torch.Generator().manual_seed(0))[1]
    naive_lam = naive_full_krum(G, c, c, torch.Generator().manual_seed(0))
    fast = timeit(lambda: full_krum_search(G, c, c, torch.Generator().manual_seed(0)), args.repeats)
    naive = timeit(lambda: naive_full_krum(G, c, c, torch.Generator().manual_seed(0)), args.repeats)

    halvings = (
        0
        if naive_lam == 0
        else round(math.log2(lambda_upper_bound(G[c:], m, c) / naive_lam))  # attackers first
    )
    ratio = naive["min_ms"] / fast["min_ms"]
    results["full_krum_search"] = {
        "fast": fast,
        "naive": naive,
        "speedup": ratio,
        "lambda_fast": fast_lam,
        "lambda_naive": naive_lam,
        "halvings": halvings,
    }
    Console().print(
        f"Full-Krum lambda search: one Gram {fast['min_ms']:.0f} ms vs Krum per lambda "
        f"{naive['min_ms']:.0f} ms ({halvings} halvings): {ratio:.1f}x; same lambda (to float32 "
        f"rounding of the bound): {math.isclose(fast_lam, naive_lam, rel_tol=1e-6)}"
    )
    Console().print(f"wrote {write_report(results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
