"""The ``tesseract-fl`` command: run experiments and grids, report, manage datasets, presets."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import tesseract_fl
from tesseract_fl.errors import TesseractFLError

if TYPE_CHECKING:
    from tesseract_fl.experiments.runner import RunSummary

err_console = Console(stderr=True)
out_console = Console()


def _add_run_args(
    p: argparse.ArgumentParser, preset_required: bool, store_default: str = "runs/store.sqlite"
) -> None:
    p.add_argument("--preset", required=preset_required, help="bundled preset (see `presets`)")
    p.add_argument("--config", help="TOML config file; its keys override the preset's")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key (repeatable), e.g. --set rounds=300 --set defense=fedsgd",
    )
    p.add_argument("--store", default=None, help=f"SQLite results store (default {store_default})")
    p.add_argument("--data-dir", default=None, help="dataset directory (env TESSERACT_FL_DATA)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--force", action="store_true", help="rerun even if the store has this run")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its checkpoint; an error if there is none "
        "(without --resume an interrupted run also continues, or starts if it never ran)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--reuse-stale",
        action="store_true",
        help="return a stored result even if the code that computed it has changed since",
    )
    _add_plugin_arg(p)


class _Raw(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks."""


class _NamesInHelp(argparse.ArgumentParser):
    """``run --help`` ends with the registered names (read when help is asked for, so the
    command line stays quick to start)."""

    def format_help(self) -> str:
        if self.prog.split()[-1] != "run":
            return super().format_help()
        from tesseract_fl.plugins import all_components

        by_kind: dict[str, list[str]] = {}
        for c in all_components():
            by_kind.setdefault(c.kind, []).append(c.name)
        import textwrap

        lines = ["names for --set defense=..., attack=..., dataset=..., model=...:"]
        for kind in ("defense", "attack", "dataset", "model"):
            names = ", ".join(sorted(by_kind.get(kind, [])))
            lines += textwrap.wrap(
                f"{kind}s: {names}", width=78, initial_indent="  ", subsequent_indent="    "
            )
        lines.append("  before a defense: clip+RULE, nnm+RULE, bucketing+RULE (pre-aggregators)")
        self.epilog = "\n".join(lines)
        return super().format_help()


def _add_plugin_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE.py",
        help="import a plugin (module name or .py file) that registers defenses, attacks, "
        "models or datasets (repeatable; entry-point plugins load by themselves)",
    )


#: Packaged grid files the report reads by default: the paper-scale ones (``--grid`` for the
#: quick ones).
DEFAULT_REPORT_GRIDS: tuple[str, ...] = ("*-mnist", "table2-shakespeare*")
DEFAULT_REPORT_DIR = Path("runs") / "report"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tesseract-fl",
        description="Byzantine-robust federated learning: TESSERACT and baselines, simulated.",
    )
    parser.add_argument(
        "--version", action="version", version=f"tesseract-fl {tesseract_fl.__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_NamesInHelp)
    _add_run_args(
        sub.add_parser("run", help="run one experiment", formatter_class=_Raw),
        preset_required=False,
    )
    _add_run_args(
        sub.add_parser(
            "demo", help="FedSGD vs TESSERACT under Full-Trim on MNIST (the short demo preset)"
        ),
        False,
        store_default=str(DEMO_STORE),
    )
    gr = sub.add_parser(
        "grid",
        help="run a grid file: skip finished runs, resume interrupted ones, run N in parallel",
    )
    gr.add_argument(
        "grid_file",
        help="a packaged grid's name (e.g. table2-mnist; `tesseract-fl grid --list`) or a grid "
        "TOML file",
        nargs="?",
    )
    gr.add_argument("--list", action="store_true", help="list the packaged grids and exit")
    gr.add_argument(
        "--jobs", "-j", type=int, default=1, help="runs at once, one process each (default 1)"
    )
    gr.add_argument(
        "--store", default=None, help="SQLite results store (default runs/store.sqlite)"
    )
    gr.add_argument(
        "--dry-run", action="store_true", help="list the runs and their state; run nothing"
    )
    gr.add_argument("--data-dir", default=None, help="dataset directory for every run")
    gr.add_argument("--force", action="store_true", help="rerun finished runs too")
    gr.add_argument(
        "--reuse-stale",
        action="store_true",
        help="keep finished runs whose code has changed since instead of computing them again",
    )
    gr.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: --jobs processes on this machine; ray: one Ray task per run, results "
        "written into --store by this process",
    )
    gr.add_argument(
        "--address",
        default=None,
        help="with --executor ray: the Ray cluster to use (default: start a local instance)",
    )
    _add_plugin_arg(gr)
    ds = sub.add_parser(
        "datasets",
        help="list, prepare (install, verify, write a manifest) or verify datasets",
        description="list: name, source, present, size, path. prepare NAME: install from the "
        "offline source, or download where there is internet, check SHA-256, write "
        "manifest.json; otherwise say what to place where (fetch: the same). verify: read "
        "every file and check hashes / the manifest.",
    )
    ds.add_argument("action", choices=["list", "prepare", "fetch", "verify"])
    ds.add_argument("names", nargs="*", help="dataset names (default: all for list/verify)")
    ds.add_argument("--data-dir", default=None, help="data directory (env TESSERACT_FL_DATA)")
    ds.add_argument(
        "--archive",
        default=None,
        metavar="PATH",
        help="prepare: unpack this copy of the dataset's archive instead of downloading it",
    )
    ds.add_argument(
        "--no-download",
        action="store_true",
        help="prepare: never use the network; say what to place where instead",
    )
    pr = sub.add_parser(
        "presets", help="list presets, or print one as a TOML config file (run --config reads it)"
    )
    pr.add_argument("name", nargs="?")
    _add_plugin_arg(pr)
    sh = sub.add_parser("show", help="list runs in a store, or one run's metrics")
    sh.add_argument("run_id", nargs="?", help="a run id or any unique prefix of one")
    sh.add_argument(
        "--store", default=None, help="SQLite results store (default runs/store.sqlite)"
    )
    fmt = sh.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    _add_plugin_arg(sh)
    fd = sub.add_parser(
        "federation",
        help="start or stop a local Flower deployment: a SuperLink and N SuperNodes, with TLS "
        "and SuperNode authentication",
        formatter_class=_Raw,
        description="Start a Flower deployment on this machine as real processes: test TLS "
        "certificates,\na SuperLink with SuperNode authentication, N SuperNodes (partition-id i "
        "of N),\neach with its own registered key; then point flwr at it:\n\n"
        "  tesseract-fl federation start runs/federation --supernodes 5\n"
        "  FLWR_HOME=runs/federation/flwr-home flwr run examples/flower local --stream\n"
        "  tesseract-fl federation stop runs/federation\n\n"
        "--insecure (no TLS, hence no authentication) is an explicit opt-in.",
    )
    fd.add_argument("action", choices=("start", "stop", "status"))
    fd.add_argument("workdir", help="folder for certificates, keys, logs and flwr's config")
    fd.add_argument("--supernodes", type=int, default=2, help="SuperNodes to start (start)")
    fd.add_argument(
        "--insecure", action="store_true", help="no TLS and no SuperNode authentication"
    )
    fd.add_argument(
        "--cert-script",
        default=None,
        help="certificate script (default: scripts/make-test-certs.sh of the source checkout)",
    )
    pl = sub.add_parser(
        "plugins",
        help="list every registered defense, attack, model and dataset, where it came from and "
        "its parameters",
    )
    _add_plugin_arg(pl)
    rp = sub.add_parser(
        "report", help="write report.md (paper Tables 2-3 beside ours, Figures 2-6) and CSV"
    )
    rp.add_argument(
        "--store", default=None, help="SQLite results store (default runs/store.sqlite)"
    )
    rp.add_argument("--out", default=None, help="output folder (default runs/report)")
    rp.add_argument(
        "--grid",
        dest="grids",
        action="append",
        default=[],
        metavar="FILE",
        help="grid (packaged name or file) whose runs the report reads (repeatable; default "
        "the packaged paper-scale grids, *-mnist)",
    )
    _add_plugin_arg(rp)
    return parser


def _diverged_note(summary: dict[str, Any]) -> str:
    """``" (diverged at round r)"`` for a run that diverged, else ``""``."""
    at = summary.get("diverged_at")
    return "" if at is None else f" (diverged at round {at})"


def _summary_table(summary: RunSummary) -> Table:
    table = Table(title=f"run {summary.run_id}" + (" (from store)" if summary.cached else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("name", "dataset", "defense", "attack", "rounds"):
        table.add_row(key, str(getattr(summary, key)))
    acc = summary.final_accuracy
    table.add_row("final test accuracy", "-" if acc is None else f"{100 * acc:.2f}%")
    if summary.diverged_at is not None:
        table.add_row("diverged", f"at round {summary.diverged_at} (accuracy measured there)")
    loss = summary.final_loss
    table.add_row("final test loss", "-" if loss is None else f"{loss:.4f}")
    rps = summary.rounds_per_second
    table.add_row("rounds / second", "-" if rps is None else f"{rps:.3f}")
    table.add_row("backend / device", f"{summary.backend} / {summary.device}")
    table.add_row("store", str(summary.store))
    return table


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f"data_dir={json.dumps(args.data_dir)}")
    return overrides


def _run_with_progress(cfg: Any, args: argparse.Namespace) -> RunSummary:
    """Run one config into ``--store`` with a progress bar on stderr (unless ``--quiet``)."""
    from tesseract_fl.experiments.runner import DEFAULT_STORE, run_experiment

    store = args.store or DEFAULT_STORE
    if args.quiet:
        return run_experiment(cfg, store, force=args.force, reuse_stale=args.reuse_stale)
    with Progress(
        TextColumn(f"[bold]{cfg.name}[/] {cfg.defense}/{cfg.attack}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task("rounds", total=cfg.rounds, status="")

        def progress(done: int, total: int, info: dict[str, Any]) -> None:
            acc = info.get("acc")
            status = f"loss {info['loss']:.3f}" + ("" if acc is None else f" acc {100 * acc:.1f}%")
            bar.update(task, completed=done, status=status)

        return run_experiment(
            cfg, store, force=args.force, progress=progress, reuse_stale=args.reuse_stale
        )


def _check_resumable(cfg: Any, args: argparse.Namespace) -> None:
    """``--resume``: the store must hold this run unfinished, with a checkpoint beside it."""
    from tesseract_fl.experiments.checkpoints import checkpoint_path
    from tesseract_fl.experiments.runner import DEFAULT_STORE
    from tesseract_fl.experiments.store import ResultsStore

    if args.force:
        raise TesseractFLError("--resume and --force contradict each other (--force restarts)")
    store = Path(args.store or DEFAULT_STORE)
    run_id = cfg.run_id()
    if not store.is_file():
        raise TesseractFLError(f"--resume: no results store at {str(store)!r}")
    with ResultsStore(store, readonly=True) as s:
        run = s.get_run(run_id)
    if run is None or run["status"] == "finished":
        what = "is not in" if run is None else "is already finished in"
        raise TesseractFLError(f"--resume: run {run_id} {what} {str(store)!r}; nothing to resume")
    ckpt = checkpoint_path(store, run_id)
    if not ckpt.is_file():
        raise TesseractFLError(
            f"--resume: run {run_id} stopped after {run['rounds_done']} rounds but has no "
            f"checkpoint at {str(ckpt)!r}; run without --resume to restart it"
        )


def cmd_run(args: argparse.Namespace) -> int:
    from tesseract_fl.experiments.config import resolve_config

    if args.preset is None and args.config is None:
        raise TesseractFLError("give --preset NAME or --config FILE (see `tesseract-fl presets`)")
    cfg = resolve_config(args.preset, args.config, _overrides(args))
    if args.resume:
        _check_resumable(cfg, args)
    summary = _run_with_progress(cfg, args)
    if args.json:
        print(json_text(summary.to_dict()))
    else:
        out_console.print(_summary_table(summary))
    return 0


#: The demo's side-by-side comparison: the same attacked run under each of these defenses.
DEMO_DEFENSES: tuple[str, ...] = ("fedsgd", "tesseract")
#: The demo's own results store (git-ignored), so that running the demo in a clone leaves the
#: committed results store untouched.
DEMO_STORE = Path("runs") / "demo.sqlite"


def cmd_demo(args: argparse.Namespace) -> int:
    """FedSGD and TESSERACT side by side under the demo preset's attack (Full-Trim on MNIST)."""
    from tesseract_fl.experiments.config import resolve_config

    preset = args.preset or "demo"
    if args.store is None:
        args.store = str(DEMO_STORE)
    # Validate every variant before the first one starts, so a bad --set fails fast.
    cfgs = [
        resolve_config(preset, args.config, [f"defense={d}", *_overrides(args)])
        for d in DEMO_DEFENSES
    ]
    if args.resume:
        for cfg in cfgs:
            _check_resumable(cfg, args)
    summaries = [_run_with_progress(cfg, args) for cfg in cfgs]
    if args.json:
        print(json_text({"runs": [s.to_dict() for s in summaries]}))
        return 0
    first = cfgs[0]
    table = Table(
        title=f"{first.dataset}: {first.clients} clients, {first.malicious} malicious, "
        f"attack {first.attack}, {first.rounds} rounds"
    )
    for col, justify in (
        ("defense", "left"),
        ("test accuracy", "right"),
        ("test loss", "right"),
        ("rounds / s", "right"),
        ("run id", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for cfg, summary in zip(cfgs, summaries, strict=True):
        acc, loss, rps = summary.final_accuracy, summary.final_loss, summary.rounds_per_second
        table.add_row(
            cfg.defense,
            "-" if acc is None else f"{100 * acc:.2f}%",
            "-" if loss is None else f"{loss:.4f}",
            "-" if rps is None else f"{rps:.2f}",
            summary.run_id + (" (cached)" if summary.cached else ""),
        )
    out_console.print(table)
    out_console.print(f"results store: {summaries[-1].store}")
    return 0


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _grid_dry_run(grid: Any, store: Any, args: argparse.Namespace) -> int:
    """Print the grid's runs and their state in the store (finished / partial / new)."""
    from tesseract_fl.experiments.grid_runner import grid_status

    table = Table(
        title=f"grid {grid.name}: {len(grid.runs)} runs (store {store})",
        box=box.SIMPLE,
        collapse_padding=True,
        pad_edge=False,
    )
    for col in ("dataset", "attack", "defense", "c/m", "seed", "run id", "status"):
        table.add_column(col, no_wrap=True)
    counts: dict[str, int] = {}
    states = grid_status(grid, store, reuse_stale=args.reuse_stale)
    for st in states:
        spec, cfg = st["spec"], st["spec"].config
        counts[st["status"]] = counts.get(st["status"], 0) + 1
        status = st["status"]
        if status == "partial":
            status = f"partial {st['rounds_done']}/{cfg.rounds}" + ("*" if st["checkpoint"] else "")
        table.add_row(
            str(spec.labels["dataset"]),
            cfg.attack,
            cfg.defense,
            f"{cfg.malicious}/{cfg.clients}",
            str(cfg.seed),
            spec.run_id,
            status,
        )
    out_console.print(table)
    out_console.print(
        ", ".join(
            f"{counts.get(k, 0)} {k}"
            for k in ("finished", "stale", "partial", "new")
            if k != "stale" or counts.get(k)  # stale: finished by code that has changed since
        )
        + ("; * = resumes from a checkpoint" if any(st["checkpoint"] for st in states) else ""),
        highlight=False,
    )
    return 0


def _list_grids() -> int:
    """The packaged grids: name, runs, description."""
    from tesseract_fl.experiments.grid import list_grids, load_grid

    table = Table(title="packaged grids (tesseract-fl grid NAME)")
    table.add_column("name")
    table.add_column("runs", justify="right")
    table.add_column("description")
    for name in list_grids():
        grid = load_grid(name)
        table.add_row(name, str(len(grid.runs)), grid.description)
    out_console.print(table)
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    """Run (or with --dry-run list) a grid file's runs into one store."""
    from tesseract_fl.experiments.grid import load_grid
    from tesseract_fl.experiments.grid_runner import GridEvent, run_grid
    from tesseract_fl.experiments.runner import DEFAULT_STORE

    if args.list:
        return _list_grids()
    if args.grid_file is None:
        raise TesseractFLError("grid: name a grid (a packaged one, see --list, or a TOML file)")
    grid = load_grid(args.grid_file)
    store = args.store or DEFAULT_STORE
    if args.jobs < 1:
        raise TesseractFLError(f"--jobs must be >= 1, got {args.jobs}")
    if args.dry_run:
        return _grid_dry_run(grid, store, args)
    with Progress(
        TextColumn(f"[bold]{grid.name}[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TextColumn("{task.fields[runs]}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task("rounds", total=None, runs="")

        def progress(ev: GridEvent) -> None:
            bar.update(
                task,
                completed=ev.rounds_done,
                total=ev.rounds_total,
                runs=f"runs {ev.runs_done}/{ev.runs_total}",
            )
            res = ev.result
            if ev.kind != "done" or res is None:
                return
            if res["status"] == "finished":
                resumed = res["resumed_from"]
                bar.console.print(
                    f"[green]done[/] {res['name']}: accuracy {_pct(res['final_accuracy'])}, "
                    f"{res['seconds']:.1f} s"
                    + ("" if resumed is None else f" (resumed at round {resumed})")
                    + _diverged_note(res)
                    + (
                        ""
                        if not res.get("replaced_stale")
                        else f" (recomputed: code changed; old result kept as "
                        f"{res['replaced_stale']})"
                    ),
                    highlight=False,
                )
            else:
                bar.console.print(f"[red]failed[/] {res['name']}: {res['error']}", highlight=False)

        results = run_grid(
            grid,
            store,
            jobs=args.jobs,
            force=args.force,
            data_dir=args.data_dir,
            progress=progress,
            reuse_stale=args.reuse_stale,
            executor=args.executor,
            address=args.address,
        )
    table = Table(title=f"grid {grid.name} (store {store})")
    for col, justify in (
        ("run", "left"),
        ("run id", "left"),
        ("status", "left"),
        ("final accuracy", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for res in results:
        status = "finished (before)" if res["status"] == "skipped" else res["status"]
        status += _diverged_note(res)
        table.add_row(res["name"], res["run_id"], status, _pct(res["final_accuracy"]))
    out_console.print(table)
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        err_console.print(f"[bold red]{len(failed)} run(s) failed:[/]")
        for r in failed:
            err_console.print(f"  {r['name']} ({r['run_id']}): {r['error']}", highlight=False)
        return 1
    return 0


def _bytes(n: int) -> str:
    """A byte count for people: 0, 512 B, 53.4 MB."""
    if n == 0:
        return "0"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def cmd_datasets(args: argparse.Namespace) -> int:
    from tesseract_fl.data import DATASETS, default_data_dir, verify_dataset
    from tesseract_fl.data.prepare import dataset_status, prepare_dataset

    managed = sorted(n for n in DATASETS if DATASETS.infos[n].builtin)
    names = args.names or managed
    for n in names:
        if n not in DATASETS:
            DATASETS.lookup(n)  # ConfigError: the allowed names and the closest
        if n not in managed:
            raise TesseractFLError(
                f"dataset {n!r} comes from a plugin ({DATASETS.infos[n].origin}): its loader "
                "finds its own data, `tesseract-fl datasets` manages the built-in datasets' "
                f"files only ({', '.join(managed)})"
            )
    if args.action in ("prepare", "fetch"):
        if not args.names:
            raise TesseractFLError(
                f"name the datasets to {args.action}, e.g. `tesseract-fl datasets prepare mnist`"
            )
        if args.archive is not None and len(names) != 1:
            raise TesseractFLError("--archive goes with exactly one dataset name")
        for n in names:
            manifest = prepare_dataset(
                n,
                args.data_dir,
                archive=args.archive,
                download=not args.no_download,
                log=lambda msg: err_console.print(msg, highlight=False),
            )
            out_console.print(f"[green]{n}[/]: ready (manifest {manifest})", highlight=False)
        return 0
    if args.action == "list":
        table = Table(title=f"datasets in {default_data_dir(args.data_dir)}")
        for col, justify in (
            ("name", "left"),
            ("source", "left"),
            ("present", "left"),
            ("size", "right"),
            ("path", "left"),
        ):
            table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
        for n in names:
            st = dataset_status(n, args.data_dir)
            table.add_row(n, st.source, st.detail, _bytes(st.size), str(st.path))
        out_console.print(table)
        out_console.print(
            "present = the reader's files exist; `datasets verify` reads them and checks hashes; "
            "`datasets prepare NAME` installs a missing one or says what to place where.",
            highlight=False,
        )
        return 0
    table = Table(title=f"datasets in {default_data_dir(args.data_dir)}")
    table.add_column("name")
    table.add_column("description")
    table.add_column("files", overflow="fold")
    bad = False
    for n in names:
        status = verify_dataset(n, args.data_dir)
        ok = all(v == "ok" for v in status.values())
        bad |= not ok
        files = "ok" if ok else "; ".join(f"{k}: {v}" for k, v in status.items() if v != "ok")
        table.add_row(n, DATASETS.infos[n].description, files)
    out_console.print(table)
    return 1 if bad else 0


def cmd_presets(args: argparse.Namespace) -> int:
    from tesseract_fl.data.prepare import dataset_status
    from tesseract_fl.experiments.config import build_config, list_presets, load_preset

    if args.name is None:
        # Compact enough for 80 columns: short cells, no wrapping; what to do about missing
        # data goes below the table instead of into it.
        table = Table(
            title="presets (`tesseract-fl presets NAME` prints one as a config file)",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            padding=(0, 1, 0, 0),
        )
        for col, justify in (
            ("name", "left"),
            ("model", "left"),
            ("m/c", "right"),
            ("rounds", "right"),
            ("batch", "right"),
            ("lr", "right"),
            ("data", "left"),
        ):
            table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        present: dict[str, bool] = {}
        for n in list_presets():
            cfg = build_config(load_preset(n))
            if cfg.dataset not in present:
                present[cfg.dataset] = dataset_status(cfg.dataset).present
            lr = f"{cfg.lr:g}" + ("" if cfg.lr_schedule == "constant" else f" {cfg.lr_schedule}")
            table.add_row(
                n,
                cfg.model,
                f"{cfg.clients}/{cfg.malicious}",
                str(cfg.rounds),
                str(cfg.batch_size),
                lr,
                "yes" if present[cfg.dataset] else "no",
            )
        out_console.print(table)
        missing = sorted(d for d, ok in present.items() if not ok)
        if missing:
            out_console.print(f"data not here: tesseract-fl datasets prepare {' | '.join(missing)}")
        return 0
    cfg = build_config(load_preset(args.name))
    print(config_toml(cfg.to_dict()), end="")
    return 0


def _toml_value(value: Any) -> str:
    """A TOML literal of a config value (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def config_toml(d: dict[str, Any]) -> str:
    """A config as a TOML file ``run --config`` reads back to the same config: keys without a
    value (TOML has no null) become comments saying what their default is, and the defense's
    and attack's parameters become their ``[defense]`` / ``[attack]`` tables."""
    lines: list[str] = []
    tables: dict[str, dict[str, Any]] = {}
    for key, value in d.items():
        if key in ("defense", "attack"):
            tables[key] = {"name": value, **(d.get(f"{key}_params") or {})}
        elif key in ("defense_params", "attack_params"):
            continue
        elif value is None:
            lines.append(f"# {key} = ...   (not set: its default applies)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, table in tables.items():
        lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _existing_store(given: str | None) -> Path:
    """The store a read-only command opens: ``--store`` or the default, which must exist (a
    command that only reads never creates one); the error points at the committed results when
    the default is missing in a clone."""
    from tesseract_fl.experiments.runner import DEFAULT_STORE

    path = Path(given) if given is not None else DEFAULT_STORE
    if path.is_file():
        return path
    hint = ""
    if given is None and COMMITTED_STORE.is_file():
        hint = f"; the committed paper results are in {str(COMMITTED_STORE)!r} (--store)"
    raise TesseractFLError(f"no results store at {str(path)!r}{hint}")


#: The results store committed with the repository (the paper-scale runs behind the report).
COMMITTED_STORE = Path("results") / "store.sqlite"


def _find_run(store: Any, prefix: str) -> dict[str, Any]:
    """A run by id or unique id prefix (the table shows ids whole; any prefix works)."""
    one = store.get_run(prefix)
    if one is not None:
        return cast(dict[str, Any], one)
    matches = [r["run_id"] for r in store.list_runs() if r["run_id"].startswith(prefix)]
    if len(matches) > 1:
        raise TesseractFLError(
            f"run id prefix {prefix!r} matches {len(matches)} runs in {store.path}: "
            f"{', '.join(matches[:5])}{' ...' if len(matches) > 5 else ''}"
        )
    if not matches:
        raise TesseractFLError(f"no run {prefix!r} in {store.path}")
    return cast(dict[str, Any], store.get_run(matches[0]))


def _short_name(name: str, attack: str, defense: str) -> str:
    """A grid run's name without the attack and defense the table shows beside it
    (``table2-mnist/mnist/full_trim/tesseract/s0`` -> ``table2-mnist/mnist/s0``)."""
    parts = name.split("/")
    if len(parts) == 5 and parts[2:4] == [attack, defense]:
        return "/".join([parts[0], parts[1], parts[4]])
    return name


def _print_records(records: list[dict[str, Any]], args: argparse.Namespace) -> bool:
    """``--json`` / ``--csv``: print ``records`` that way and say so; else print nothing."""
    if args.json:
        print(json.dumps(records, indent=1))
        return True
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(records[0]) if records else [])
        writer.writeheader()
        writer.writerows(records)
        return True
    return False


def cmd_show(args: argparse.Namespace) -> int:
    """The runs in a store (one row each), or one run's metrics per evaluated round."""
    from tesseract_fl.experiments.store import ResultsStore

    with ResultsStore(_existing_store(args.store), readonly=True) as store:
        if args.run_id is None:
            runs = []
            for run in store.list_runs():
                cfg, summary = run["config"], run["summary"] or {}
                runs.append(
                    {
                        "run_id": run["run_id"],
                        "name": run["name"],
                        "defense": cfg["defense"],
                        "attack": cfg["attack"],
                        "status": run["status"] + _diverged_note(summary),
                        "rounds_done": run["rounds_done"],
                        "rounds": cfg["rounds"],
                        "final_accuracy": summary.get("final_accuracy"),
                    }
                )
            if _print_records(runs, args):
                return 0
            table = Table(title=str(store.path), box=box.SIMPLE, pad_edge=False)
            table.add_column("run id", no_wrap=True, min_width=10)
            # At 80 columns the id, status, rounds and accuracy stay whole; names fold.
            table.add_column("name", overflow="fold", ratio=3)
            table.add_column("defense", overflow="fold", ratio=2)
            table.add_column("attack", overflow="fold", ratio=2)
            table.add_column("status", no_wrap=True)
            table.add_column("rounds", justify="right", no_wrap=True)
            table.add_column("acc %", justify="right", no_wrap=True, min_width=5)
            for r in runs:
                acc = r["final_accuracy"]
                table.add_row(
                    r["run_id"][:10],
                    _short_name(r["name"], r["attack"], r["defense"]),
                    r["defense"],
                    r["attack"],
                    r["status"],
                    f"{r['rounds_done']}/{r['rounds']}",
                    "-" if acc is None else f"{100 * acc:.2f}",
                )
            out_console.print(table)
            return 0
        one = _find_run(store, args.run_id)
        asr = store.attack_success(one["run_id"])  # backdoors only
        metrics = [
            {
                "round": m["round"] + 1,
                "train_loss": m["train_loss"],
                "test_accuracy": m["test_accuracy"],
                "test_loss": m["test_loss"],
                **({"attack_success": asr.get(m["round"])} if asr else {}),
            }
            for m in store.metrics(one["run_id"])
            if m["test_accuracy"] is not None
        ]
        if args.json:
            record = {k: one[k] for k in ("run_id", "name", "status", "config", "summary")}
            print(json.dumps({**record, "metrics": metrics}, indent=1))
            return 0
        if _print_records(metrics, args):
            return 0
        table = Table(title=f"{one['run_id']} ({one['status']})")
        cols = ["round", "train loss", "test acc %", "test loss"]
        for col in cols + (["attack success %"] if asr else []):
            table.add_column(col, justify="right")
        for m in metrics:
            cells = [
                str(m["round"]),
                f"{m['train_loss']:.4f}",
                f"{100 * m['test_accuracy']:.2f}",
                f"{m['test_loss']:.4f}",
            ]
            if asr:
                rate = m.get("attack_success")
                cells.append("-" if rate is None else f"{100 * rate:.2f}")
            table.add_row(*cells)
        out_console.print(table)
    return 0


def _report_grid_paths(given: list[str]) -> list[Path]:
    """``--grid`` names or files, else the packaged paper-scale grids (``*-mnist``)."""
    from tesseract_fl.experiments.grid import packaged_grids_dir, resolve_grid_path

    if given:
        return [resolve_grid_path(g) for g in given]
    return sorted(
        {
            p
            for pattern in DEFAULT_REPORT_GRIDS
            for p in packaged_grids_dir().glob(f"{pattern}.toml")
        }
    )


def cmd_report(args: argparse.Namespace) -> int:
    """Render the report for the runs the grids plan; print where it went and the coverage."""
    from tesseract_fl.experiments.grid import load_grid
    from tesseract_fl.report import generate_report

    grids = [load_grid(p) for p in _report_grid_paths(args.grids)]
    store = _existing_store(args.store)
    result = generate_report(store, args.out or DEFAULT_REPORT_DIR, grids)
    table = Table(title="report coverage")
    for col, justify in (
        ("artefact", "left"),
        ("filled", "right"),
        ("missing", "right"),
        ("no grid", "right"),
        ("drawn", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for c in result.coverage:
        table.add_row(
            c.artefact,
            f"{c.filled} {c.unit}",
            str(c.missing),
            str(c.not_planned),
            "" if c.drawn is None else ("yes" if c.drawn else "no"),
        )
    out_console.print(table)
    out_console.print(f"report: {result.path}")
    extra = result.robustness_files
    csvs = [*map(str, result.csv_files), *(str(p) for p in extra if p.suffix == ".csv")]
    out_console.print(f"tables: {', '.join(csvs) if csvs else '(none)'}")
    figures = [str(f) for fig in result.figures for f in fig.files]
    figures += [str(p) for p in extra if p.suffix == ".png"]
    out_console.print(f"figures: {', '.join(figures) if figures else '(none drawn)'}")
    return 0


def cmd_federation(args: argparse.Namespace) -> int:
    """``federation start|stop|status WORKDIR``: a local Flower deployment left running between
    commands (its processes carry a tag that ``stop`` finds them by)."""
    from tesseract_fl.flower.localhost import LocalFederation

    workdir = Path(args.workdir)
    if args.action == "start":
        if args.supernodes < 1:
            raise TesseractFLError(f"--supernodes must be >= 1, got {args.supernodes}")
        if (workdir / LocalFederation.STATE_FILE).is_file():
            old = LocalFederation.attach(workdir)
            if old.survivors():
                raise TesseractFLError(
                    f"a federation is already running in {workdir}; "
                    f"`tesseract-fl federation stop {workdir}` first"
                )
        fed = LocalFederation(
            workdir,
            supernodes=args.supernodes,
            insecure=args.insecure,
            cert_script=args.cert_script,
        )
        try:
            fed.start()
        except BaseException:
            fed.stop()
            raise
        fed.save_state()
        mode = "insecure (no TLS)" if fed.insecure else "TLS, SuperNode authentication"
        out_console.print(
            f"SuperLink at 127.0.0.1:{fed.port} ({mode}), {args.supernodes} SuperNodes "
            f"connected{f' (node ids {fed.node_ids})' if fed.node_ids else ''}.\n"
            f"Run an app:  FLWR_HOME={fed.workdir / 'flwr-home'} flwr run APP_DIR local "
            f"--stream\nStop:        tesseract-fl federation stop {args.workdir}",
            highlight=False,
        )
        return 0
    fed = LocalFederation.attach(workdir)
    if args.action == "status":
        alive = fed.survivors()
        out_console.print(
            f"{len(alive)} processes of the federation in {fed.workdir} are running"
            + (f" (SuperLink port {fed.port})" if alive else ""),
            highlight=False,
        )
        return 0 if alive else 1
    fed.stop()
    left = fed.survivors()
    if left:
        raise TesseractFLError(f"processes still running after stop: {left}")
    out_console.print(f"stopped the federation in {fed.workdir}", highlight=False)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """Every registered component: kind, name, origin, fingerprint and parameters."""
    from tesseract_fl.plugins import all_components

    table = Table(title="registered components")
    for col in ("kind", "name", "from", "fingerprint", "parameters (defaults)"):
        table.add_column(col, overflow="fold", no_wrap=col in ("kind", "name"))
    for c in all_components():
        params = ", ".join(f"{k}={v!r}" for k, v in c.params.items()) or "-"
        if c.kind in ("model", "dataset"):
            params = "-"  # a factory's argument is given by the run, not by the config
        table.add_row(c.kind, c.name, c.origin, c.fingerprint_label(), params)
    out_console.print(table)
    return 0


def _finite_or_none(value: Any) -> Any:
    """``value`` with every NaN/Inf float replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """Strict JSON (non-finite numbers as null), keys sorted."""
    return json.dumps(_finite_or_none(value), sort_keys=True, allow_nan=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from tesseract_fl.plugins import load_plugins

        load_plugins(getattr(args, "plugins", []))  # entry points, then each --plugin
        if args.command == "plugins":
            return cmd_plugins(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "grid":
            return cmd_grid(args)
        if args.command == "datasets":
            return cmd_datasets(args)
        if args.command == "presets":
            return cmd_presets(args)
        if args.command == "show":
            return cmd_show(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "federation":
            return cmd_federation(args)
    except TesseractFLError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        again = "`grid`" if args.command == "grid" else "`run`"
        err_console.print(
            "[yellow]interrupted[/]: rounds written so far are kept in the store; the run is "
            f"marked failed and {again} resumes it from its last checkpoint"
        )
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
