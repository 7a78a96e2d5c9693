"""Aggregator benchmark: every registered defense on the paper's two matrix shapes, in one process.

Times each aggregator in :data:`tesseract_fl.aggregators.AGGREGATORS` (Multi-Krum too, as Krum
with ``k = m - c_max``, the ``m - f`` rows ByzFL's MultiKrum averages) on random float32
matrices ``[100, 270000]`` (MNIST DNN, ``c_max = 20``) and ``[10, 11_000_000]`` (about 440 MB,
``c_max = 2``), next to the memory bound (one pass over the matrix: the faster of
``torch.ones(1, m) @ G`` and numpy ``G.sum(0)``; docs/design.md, "Performance") and ByzFL
0.0.11's times measured earlier on this machine (``[100, 270000]``: trimmed mean 81 ms, median
391 ms, Krum 408 ms, Multi-Krum 505 ms). When ByzFL is importable (``pip install --no-deps
byzfl==0.0.11``; ``--no-byzfl`` skips it), its TrMean, Median, Krum and MultiKrum are timed side
by side. Stateful rules (FoolsGold, TESSERACT) are timed in
steady state (after a first round). Names the registry does not hold yet are listed as skipped.

    .venv/bin/python -m benchmarks aggregators [--repeats 5] [--quick] [--no-byzfl] [--threads N]
        [--out results/benchmarks/aggregators.json]
"""

from __future__ import annotations

import argparse
import gc
import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from benchmarks._timing import machine_info, timeit, write_report
from tesseract_fl.aggregators import AGGREGATORS, AggregationContext, make_aggregator

#: (m, P, c_max): the MNIST DNN with 100 clients, and the CIFAR-10 ResNet-18 scale with 10.
SHAPES: tuple[tuple[int, int, int], ...] = ((100, 270_000, 20), (10, 11_000_000, 2))

#: The paper's defenses, in report order; other registered names are appended.
EXPECTED = (
    "fedsgd",
    "trimmed_mean",
    "median",
    "krum",
    "multi_krum",
    "bulyan",
    "faba",
    "foolsgold",
    "fltrust",
    "tesseract",
)

#: ByzFL 0.0.11 on [100, 270000] float32 on this machine, best of numpy/torch, ms.
BYZFL_REFERENCE_MS = {"trimmed_mean": 81.0, "median": 391.0, "krum": 408.0, "multi_krum": 505.0}
BYZFL_REFERENCE_SHAPE = (100, 270_000)
#: Our name -> ByzFL class name in ``byzfl.aggregators.aggregators``.
BYZFL_CLASSES = {
    "trimmed_mean": "TrMean",
    "median": "Median",
    "krum": "Krum",
    "multi_krum": "MultiKrum",
    "geomed": "GeometricMedian",
    "centered_clipping": "CenteredClipping",
    "meamed": "Meamed",
    "monna": "MoNNA",
    "caf": "CAF",
}
#: ByzFL constructor arguments doing the work ours does with its defaults (c = c_max): the
#: geometric median with 4 smoothed Weiszfeld steps at nu = 1e-6 (ours starts from the mean,
#: ByzFL from 0), centered clipping with tau = 10 and one step, MoNNA around row 0 (ours around
#: the server's root gradient: the same distances and selection). ByzFL's CAF takes one power
#: step from a random vector per iteration where ours solves the m x m eigenproblem exactly.
BYZFL_KWARGS: dict[str, Any] = {
    "geomed": lambda c: {"nu": 1e-6, "T": 4},
    "centered_clipping": lambda c: {"tau": 10.0, "L": 1},
    "monna": lambda c: {"f": c, "idx": 0},
}


def _accepts(cls: type, param: str) -> bool:
    try:
        return param in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def build(name: str, m: int, c: int) -> tuple[Any | None, str]:
    """The aggregator to time under ``name`` (or None) and a note (why skipped / how built)."""
    if name in AGGREGATORS:
        return make_aggregator(name, num_clients=m, c_max=c), ""
    if name == "multi_krum":
        krum_cls = AGGREGATORS.get("krum")
        if krum_cls is None:
            return None, "not registered (needs krum)"
        if not _accepts(krum_cls, "k"):
            return None, "krum takes no k"
        return make_aggregator("krum", num_clients=m, c_max=c, k=m - c), f"krum k={m - c}"
    return None, "not registered"


def _import_byzfl_aggregators() -> Any:
    """ByzFL's aggregators module without running ``byzfl/__init__.py`` (it imports torchvision).

    A bare package object with the right ``__path__`` stands in for ``byzfl`` so that the
    submodules (``aggregators.aggregators``, ``utils.misc``) import normally.
    """
    import importlib.util
    import sys
    import types

    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("byzfl is not installed")
        pkg = types.ModuleType("byzfl")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = pkg
    return importlib.import_module("byzfl.aggregators.aggregators")


def time_byzfl(G: torch.Tensor, c: int, repeats: int) -> dict[str, Any]:
    """ByzFL's rules that we also have (:data:`BYZFL_CLASSES`) on numpy and torch input; the
    best of the two."""
    try:
        mod = _import_byzfl_aggregators()
    except Exception as exc:  # not installed, or its imports fail
        return {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    version = "unknown"
    try:
        from importlib.metadata import version as _version

        version = _version("byzfl")
    except Exception:
        pass
    out: dict[str, Any] = {"available": True, "version": version, "results": {}}
    Gn = G.numpy()
    for ours, cls_name in BYZFL_CLASSES.items():
        cls = getattr(mod, cls_name, None)
        if cls is None:
            out["results"][ours] = {"error": f"no class {cls_name}"}
            continue
        if ours in BYZFL_KWARGS:
            agg = cls(**BYZFL_KWARGS[ours](c))
        else:
            agg = cls(f=c) if _accepts(cls, "f") else cls()
        entry: dict[str, Any] = {"class": cls_name}
        for kind, data in (("numpy", Gn), ("torch", G)):
            try:
                entry[kind] = timeit(lambda agg=agg, data=data: agg(data), repeats)
            except Exception as exc:
                entry[kind] = {"error": f"{type(exc).__name__}: {exc}"}
        best = [entry[k]["min_ms"] for k in ("numpy", "torch") if "min_ms" in entry[k]]
        if best:
            entry["best_min_ms"] = min(best)
        out["results"][ours] = entry
    return out


def bench_shape(m: int, P: int, c: int, repeats: int, byzfl: bool) -> dict[str, Any]:
    """Time the memory bound, every aggregator and (optionally) ByzFL on one random matrix."""
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(m, P, generator=gen)
    g0 = torch.randn(P, generator=gen)
    ctx = AggregationContext(root_gradient=g0)
    ones = torch.ones(1, m)
    Gn = G.numpy()
    bound = {
        "torch_ones_matmul": timeit(lambda: ones @ G, 2 * repeats),
        "numpy_sum0": timeit(lambda: Gn.sum(0), 2 * repeats),
    }
    bound_ms = min(v["min_ms"] for v in bound.values())
    names = list(EXPECTED) + sorted(set(AGGREGATORS) - set(EXPECTED))
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            agg, note = build(name, m, c)
        except Exception as exc:
            skipped[name] = f"construction failed: {type(exc).__name__}: {exc}"
            continue
        if agg is None:
            skipped[name] = note
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t = timeit(lambda agg=agg: agg.aggregate(G, ctx=ctx), repeats)
        except Exception as exc:
            skipped[name] = f"aggregate failed: {type(exc).__name__}: {exc}"
            continue
        finally:
            del agg
            gc.collect()
        t["ratio_to_memory_bound"] = t["min_ms"] / bound_ms
        if caught:
            first = str(caught[0].message)
            note = f"{note}; warns: {first}" if note else f"warns: {first}"
        if note:
            t["note"] = note
        if (m, P) == BYZFL_REFERENCE_SHAPE and name in BYZFL_REFERENCE_MS:
            ref = BYZFL_REFERENCE_MS[name]
            t["byzfl_reference_ms"] = ref
            t["speedup_vs_byzfl_reference"] = ref / t["min_ms"]
        results[name] = t
    out: dict[str, Any] = {
        "m": m,
        "P": P,
        "c_max": c,
        "memory_bound": bound,
        "memory_bound_ms": bound_ms,
        "order": names,
        "results": results,
        "skipped": skipped,
    }
    if byzfl:
        bz = time_byzfl(G, c, repeats)
        out["byzfl"] = bz
        for name, entry in bz.get("results", {}).items():
            if name in results and "best_min_ms" in entry:
                results[name]["byzfl_measured_ms"] = entry["best_min_ms"]
                results[name]["speedup_vs_byzfl_measured"] = (
                    entry["best_min_ms"] / results[name]["min_ms"]
                )
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def print_table(console: Console, shape: dict[str, Any]) -> None:
    """One rich table per shape, rows in :data:`EXPECTED` order, skipped names dimmed."""
    m, P, c = shape["m"], shape["P"], shape["c_max"]
    bound = shape["memory_bound_ms"]
    results, skipped = shape["results"], shape["skipped"]
    has_ref = any("byzfl_reference_ms" in r for r in results.values())
    has_byzfl = any("byzfl_measured_ms" in r for r in results.values())
    table = Table(
        title=f"[{m}, {P:_}] float32, c_max={c}; memory bound {bound:.1f} ms",
        title_justify="left",
    )
    cols = ["aggregator", "min ms", "median ms", "x bound"]
    if has_ref:
        cols += ["ByzFL ref ms", "speed-up vs ref"]
    if has_byzfl:
        cols += ["ByzFL here ms", "speed-up here"]
    cols.append("note")
    for col in cols:
        table.add_column(col, justify="left" if col in ("aggregator", "note") else "right")
    for name in shape["order"]:
        if name in skipped:
            cells = [name] + [""] * (len(cols) - 2) + [f"skipped: {skipped[name]}"]
            table.add_row(*cells, style="dim")
            continue
        r = results[name]
        cells = [
            name,
            _fmt(r["min_ms"], ".1f"),
            _fmt(r["median_ms"], ".1f"),
            _fmt(r["ratio_to_memory_bound"], ".1f"),
        ]
        if has_ref:
            cells += [
                _fmt(r.get("byzfl_reference_ms"), ".0f"),
                _fmt(r.get("speedup_vs_byzfl_reference"), ".2f"),
            ]
        if has_byzfl:
            cells += [
                _fmt(r.get("byzfl_measured_ms"), ".1f"),
                _fmt(r.get("speedup_vs_byzfl_measured"), ".2f"),
            ]
        note = r.get("note", "")
        cells.append(note if len(note) <= 70 else note[:67] + "...")
        table.add_row(*cells)
    console.print(table)
    bz = shape.get("byzfl")
    if bz is not None and not bz.get("available"):
        console.print(f"ByzFL not timed: {bz.get('error')}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per aggregator (min)")
    ap.add_argument("--quick", action="store_true", help="only the [100, 270000] matrix")
    ap.add_argument(
        "--byzfl",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time ByzFL when it is importable (default: yes)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    ap.add_argument("--out", default="results/benchmarks/aggregators.json")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    console = Console(width=None if Console().is_terminal else 140)
    shapes = SHAPES[:1] if args.quick else SHAPES
    report: dict[str, Any] = {
        "benchmark": "aggregators",
        "repeats": args.repeats,
        **machine_info(),
        "registered": sorted(AGGREGATORS),
        "byzfl_reference_ms": {
            "shape": list(BYZFL_REFERENCE_SHAPE),
            "source": "ByzFL 0.0.11 measured on this machine, best of numpy/torch",
            **BYZFL_REFERENCE_MS,
        },
        "shapes": [],
    }
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats={args.repeats}; "
        f"registered: {', '.join(sorted(AGGREGATORS))}"
    )
    for m, P, c in shapes:
        res = bench_shape(m, P, c, args.repeats, args.byzfl)
        report["shapes"].append(res)
        print_table(console, res)
        gc.collect()
    console.print(f"wrote {write_report(report, args.out)}")
    return report


if __name__ == "__main__":
    main()
