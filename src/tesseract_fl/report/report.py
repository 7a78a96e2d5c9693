"""The reproduction report: ``report.md`` with paper Tables 2 and 3 (ours beside the paper's),
Figures 2-6, the runs used, and what is missing with the grid command that fills it
(docs/design.md, "Report"). CSV files of the tables go to ``tables/``, figures to ``figures/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tesseract_fl.errors import StoreError
from tesseract_fl.experiments.grid import Grid, packaged_grids_dir
from tesseract_fl.experiments.store import ResultsStore
from tesseract_fl.report.figures import FigureResult, write_figures
from tesseract_fl.report.labels import attack_label, dataset_label, defense_label
from tesseract_fl.report.paper import PaperValues, load_paper_values
from tesseract_fl.report.robustness import robustness_md
from tesseract_fl.report.runs import GridRun, RunReader
from tesseract_fl.report.tables import (
    FLAG,
    Table,
    build_table2,
    build_table3,
    comparability_notes,
    flag_notes,
    mixed_notes,
    table_markdown,
    write_csv,
)

__all__ = ["ARTEFACT_PREFIXES", "Coverage", "ReportResult", "generate_report", "write_report"]

#: Grid name prefixes the report reads (a grid named ``table2-quick`` feeds Table 2).
ARTEFACT_PREFIXES: tuple[str, ...] = ("table2", "table3", "fig2", "fig3", "fig4", "fig5", "fig6")
_STANDARD_LABELS = ("dataset", "preset", "attack", "defense", "seed", "malicious_fraction")


@dataclass(frozen=True)
class Coverage:
    """How much of one table (cells) or figure (runs) the store fills."""

    artefact: str
    unit: str
    filled: int
    missing: int
    not_planned: int = 0
    drawn: bool | None = None


@dataclass
class ReportResult:
    """What :func:`generate_report` wrote."""

    path: Path
    tables: list[Table]
    figures: list[FigureResult]
    csv_files: list[Path]
    coverage: list[Coverage]
    #: The robustness sections' CSVs and heatmaps (grids other than the paper's).
    robustness_files: list[Path] = field(default_factory=list)


def _display(path: Path | str) -> str:
    """A path relative to the working directory when it lies below it, else as given."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # on another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _grid_ref(grid: Grid) -> str:
    """How a command names a grid: a packaged grid by its name, another by its path."""
    if grid.path is None:
        return grid.name
    if grid.path.resolve().parent == packaged_grids_dir().resolve():
        return grid.path.stem
    return _display(grid.path)


def fill_command(grid: Grid, store: Path) -> str:
    """The command that runs a grid's missing runs into ``store``."""
    return f"tesseract-fl grid {_grid_ref(grid)} --store {_display(store)}"


def table_coverage(table: Table) -> Coverage:
    cells = table.relevant_cells()
    return Coverage(
        artefact=table.title.split(":")[0],
        unit="cells",
        filled=sum(not c.missing for c in cells),
        missing=sum(c.missing and bool(c.planned) for c in cells),
        not_planned=sum(c.missing and not c.planned for c in cells),
    )


def figure_coverage(fig: FigureResult) -> Coverage:
    return Coverage(
        artefact=fig.title.split(":")[0],
        unit="runs",
        filled=len(fig.used),
        missing=len(fig.missing),
        drawn=fig.drawn,
    )


def run_description(run: GridRun) -> str:
    """``MNIST, Full-Krum, TESSERACT, c/m 0.2, seed 0`` plus any other grid axis."""
    lab = run.labels
    parts = [
        dataset_label(lab["dataset"]),
        attack_label(lab["attack"]),
        defense_label(lab["defense"]),
        f"c/m {float(lab['malicious_fraction']):g}",
        f"seed {lab['seed']}",
    ]
    parts += [f"{k}={v}" for k, v in lab.items() if k not in _STANDARD_LABELS]
    if run.spec.config.aggregate_only != "all" and "aggregate_only" not in lab:
        parts.append(f"aggregate_only={run.spec.config.aggregate_only}")
    return ", ".join(parts)


def settings_summary(runs: Iterable[GridRun]) -> str:
    """The distinct settings of ``runs`` (seed aside), e.g. ``MNIST: m = 20 clients, c = 4,
    60 rounds, batch 32, lr 0.01, bias partition``: says at which scale a number was made."""
    seen: list[str] = []
    for r in runs:
        c = r.spec.config
        text = (
            f"{dataset_label(c.dataset)}: m = {c.clients} clients, c = {c.malicious}, "
            f"{c.rounds} rounds, batch {c.batch_size}, lr {c.lr:g}, {c.partition} partition"
            + ("" if c.client_optimizer == "sgd" else f", {c.client_optimizer} clients")
        )
        if text not in seen:
            seen.append(text)
    return "; ".join(seen) if seen else "none"


# -- markdown sections ------------------------------------------------------------------------
def _intro(paper: PaperValues, store: Path, grids: Sequence[Grid]) -> list[str]:
    grid_list = ", ".join(f"`{_grid_ref(g)}` ({len(g.runs)} runs)" for g in grids)
    if grids and not any(_reads(g) for g in grids):  # only the user's own grids
        return [
            "# tesseract-fl report",
            "",
            f"Results store `{_display(store)}`; grids {grid_list}; generated "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC. None of these grids is one of "
            "the paper's tables or figures, so each is shown as a robustness table: our values "
            "only (mean over seeds ± sample standard deviation, n = number of seeds; `missing` "
            "means no finished run in the store, never 0).",
            "",
        ]
    return [
        "# tesseract-fl report: reproduction of the TESSERACT paper",
        "",
        f"Results store `{_display(store)}`; grids {grid_list or '(none)'}; generated "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC.",
        "",
        f"Paper: *{paper.title}* ({paper.authors}). Each table cell shows **our value first** "
        "(mean over seeds ± sample standard deviation, n = number of seeds) and the paper's "
        "printed value after it: `ours · paper X`. `missing` means no finished run in the "
        f"store (never 0). {FLAG} marks a cell where ours and the paper's differ by more than 5 "
        "accuracy points (Table 3: more than 0.05; test loss: more than 5% of the paper's "
        "value). The paper's numbers are only displayed beside ours, never computed with.",
        "",
    ]


def _coverage_md(coverage: Sequence[Coverage]) -> list[str]:
    if not coverage:
        return []
    lines = [
        "## Coverage",
        "",
        "| artefact | filled | missing (planned by a grid) | not planned by any grid |",
        "|---|---:|---:|---:|",
    ]
    for c in coverage:
        drawn = "" if c.drawn is None else (" (drawn)" if c.drawn else " (not drawn)")
        lines.append(
            f"| {c.artefact}{drawn} | {c.filled} {c.unit} | {c.missing} | {c.not_planned} |"
        )
    return [*lines, ""]


def _missing_cells_md(table: Table, reader: RunReader) -> list[str]:
    planned = [c for c in table.relevant_cells() if c.missing and c.planned]
    unplanned: dict[str, int] = {}
    for c in table.relevant_cells():
        if c.missing and not c.planned:
            label = table.column_labels[c.column]
            unplanned[label] = unplanned.get(label, 0) + 1
    lines: list[str] = []
    if planned:
        lines.append("Missing cells that a grid plans (run it to fill them):")
        lines.append("")
        for c in planned:
            where = ", ".join([*table.row_labels[c.row], table.column_labels[c.column]])
            runs = "; ".join(f"`{r.run_id}` ({reader.status(r.run_id)})" for r in c.unfinished)
            lines.append(f"- {where}: {runs}")
        lines.append("")
    if unplanned:
        parts = ", ".join(f"{k} ({n} cells)" for k, n in unplanned.items())
        lines += [f"Missing cells that no grid in this report plans: {parts}.", ""]
    return lines


def _table_md(table: Table, csv_path: Path, out_dir: Path, reader: RunReader) -> list[str]:
    lines = [
        f"## {table.title}",
        "",
        f"Paper: {table.source}. CSV: [`{csv_path.relative_to(out_dir)}`]"
        f"({csv_path.relative_to(out_dir).as_posix()}).",
        "",
        f"Our runs ({len(table.used_runs())} finished): {settings_summary(table.used_runs())}.",
        "",
        table_markdown(table),
        "",
    ]
    flags = flag_notes(table)
    if flags:
        lines += ["Cells far from the paper:", "", *(f"- {f}" for f in flags), ""]
    notes = [*comparability_notes(table), *mixed_notes(table), *table.notes]
    if notes:
        lines += [*(f"- {n}" for n in notes), ""]
    return lines + _missing_cells_md(table, reader)


def _figure_md(
    fig: FigureResult, out_dir: Path, reader: RunReader, by_id: dict[str, GridRun]
) -> list[str]:
    lines = [f"## {fig.title}", ""]
    if fig.png is not None:
        rel = fig.png.relative_to(out_dir).as_posix()
        svg = Path(rel).with_suffix(".svg").as_posix()
        lines += [f"![{fig.title}]({rel})", "", f"{fig.caption} ([SVG]({svg}))", ""]
    else:
        lines += [f"{fig.caption}", ""]
    done = f"Runs finished: {len(fig.used)} of {fig.planned}"
    if fig.used:
        done += f" ({settings_summary(by_id[i] for i in fig.used)})"
    lines.append(done + ".")
    lines.append("")
    if fig.notes:
        lines += [*(f"- {n}" for n in fig.notes), ""]
    if fig.missing:
        lines += ["Missing runs:", ""]
        lines += [
            f"- `{r.run_id}` {run_description(r)} ({reader.status(r.run_id)})" for r in fig.missing
        ]
        lines.append("")
    return lines


def _reads(grid: Grid) -> bool:
    """Whether the report reads a grid: its name starts with an artefact's prefix."""
    return grid.name.startswith(ARTEFACT_PREFIXES)


def _fill_md(grids: Sequence[Grid], reader: RunReader, store: Path) -> list[str]:
    lines = ["## Missing results and how to fill them", ""]
    todo = []
    for g in grids:
        missing = [r for r in g.runs if not reader.finished(r.run_id)]
        if missing:
            todo.append(f"- `{fill_command(g, store)}`: {len(missing)} of {len(g.runs)} runs")
    lines += todo or ["Every run of the report's grids is finished."]
    lines.append("")
    distinct = {r.run_id for g in grids for r in g.runs}
    left = sum(not reader.finished(i) for i in distinct)
    if todo:
        lines += [
            f"{left} distinct runs are missing in all: grids that share a setting share its run "
            "id, so a run is done once and fills every table and figure that uses it.",
            "",
        ]
    unused = [g for g in grids if not _reads(g)]
    if unused:
        names = ", ".join(f"`{_grid_ref(g)}`" for g in unused)
        prefixes = ", ".join(ARTEFACT_PREFIXES)
        lines += [
            f"Grids that are not the paper's (names not starting with {prefixes}) are shown as "
            f"robustness tables above: {names}.",
            "",
        ]
    return lines


def _runs_md(uses: dict[str, tuple[GridRun, list[str]]]) -> list[str]:
    lines = [
        "## Runs used",
        "",
        "| run id | setting | grid | used in |",
        "|---|---|---|---|",
    ]
    for run_id, (run, artefacts) in uses.items():
        lines.append(
            f"| `{run_id}` | {run_description(run)} | {run.grid.name} | {', '.join(artefacts)} |"
        )
    if not uses:
        lines.append("| – | no finished run | | |")
    return [*lines, ""]


def _by_id(grids: Sequence[Grid]) -> dict[str, GridRun]:
    """Every planned run by id (the first grid that plans it)."""
    by_id: dict[str, GridRun] = {}
    for g in grids:
        for spec in g.runs:
            by_id.setdefault(spec.run_id, GridRun(spec=spec, grid=g))
    return by_id


def _uses(
    tables: Sequence[Table], figures: Sequence[FigureResult], by_id: dict[str, GridRun]
) -> dict[str, tuple[GridRun, list[str]]]:
    """Finished run id -> (its grid run, the artefacts that use it), in report order."""
    out: dict[str, tuple[GridRun, list[str]]] = {}
    named: list[tuple[str, list[str]]] = [(t.title.split(":")[0], t.run_ids()) for t in tables]
    named += [(f.title.split(":")[0], f.used) for f in figures]
    for name, ids in named:
        for rid in ids:
            entry = out.setdefault(rid, (by_id[rid], []))
            if name not in entry[1]:
                entry[1].append(name)
    return out


# -- entry points -------------------------------------------------------------------------------
def _open_store(store: ResultsStore | str | Path) -> tuple[ResultsStore, bool]:
    if isinstance(store, ResultsStore):
        return store, False
    path = Path(store)
    if not path.is_file():
        raise StoreError(
            f"results store {str(path)!r} does not exist; run a grid first "
            "(e.g. `tesseract-fl grid table2-quick`) or pass --store (the paper-scale results of "
            "a clone: --store results/store.sqlite)"
        )
    return ResultsStore(path, readonly=True), True


def generate_report(
    store: ResultsStore | str | Path,
    out_dir: str | Path,
    grids: Iterable[Grid],
    *,
    paper: PaperValues | None = None,
) -> ReportResult:
    """Build Tables 2-3 and Figures 2-6 from ``store`` for the runs ``grids`` plan; write
    ``report.md``, ``tables/*.csv`` and ``figures/*.png|svg`` under ``out_dir``."""
    grids = list(grids)
    paper = paper or load_paper_values()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, close = _open_store(store)
    try:
        reader = RunReader(results)
        # The paper's tables and figures only when a paper grid is given (a report of the
        # user's own grids alone is not padded with empty paper tables).
        paper_grids = any(_reads(g) for g in grids)
        tables = (
            [
                build_table2(reader, grids, paper.table2),
                build_table3(reader, grids, paper.table3),
            ]
            if paper_grids
            else []
        )
        csv_files = [write_csv(t, out / "tables" / f"{t.key}.csv") for t in tables]
        figures = write_figures(reader, grids, out / "figures") if paper_grids else []
        coverage = [*(table_coverage(t) for t in tables), *(figure_coverage(f) for f in figures)]
        lines = _intro(paper, results.path, grids) + _coverage_md(coverage)
        for table, csv_path in zip(tables, csv_files, strict=True):
            lines += _table_md(table, csv_path, out, reader)
        by_id = _by_id(grids)
        for fig in figures:
            lines += _figure_md(fig, out, reader, by_id)
        robustness_files: list[Path] = []
        for g in grids:
            if not _reads(g):  # any other grid: a settings x defenses robustness table
                lines += robustness_md(reader, g, out, robustness_files)
        lines += _fill_md(grids, reader, results.path)
        lines += _runs_md(_uses(tables, figures, by_id))
    finally:
        if close:
            results.close()
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return ReportResult(
        path=path,
        tables=tables,
        figures=figures,
        csv_files=csv_files,
        coverage=coverage,
        robustness_files=robustness_files,
    )


def write_report(
    store: ResultsStore | str | Path, out_dir: str | Path, grids: Iterable[Grid]
) -> Path:
    """Write the report (see :func:`generate_report`) and return the path of ``report.md``."""
    return generate_report(store, out_dir, grids).path
