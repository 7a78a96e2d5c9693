"""Paper Tables 2 and 3 from a results store, with the paper's printed value beside ours.

Table 2 (paper Table 2): per (attack, defense, dataset) the mean over seeds of the final test
accuracy in % (Shakespeare: test loss) at c/m = 0.2, with its standard deviation and the number
of seeds. Table 3 (paper Table 3): per (defense, attack) the fraction of benign and of malicious
clients whose effective aggregation weight exceeds 1e-4, averaged over the recorded rounds of a
run, then over seeds. A cell whose runs are not finished is *missing*, never 0.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tesseract_fl.data import DATASETS
from tesseract_fl.experiments.grid import Grid
from tesseract_fl.report.labels import attack_label, dataset_label, defense_label
from tesseract_fl.report.paper import GROUPS, PaperTable2, PaperTable3
from tesseract_fl.report.runs import GridRun, RunReader, grid_runs, mixed_settings, same_fraction

__all__ = [
    "Cell",
    "Stat",
    "Table",
    "build_table2",
    "build_table3",
    "comparability_notes",
    "deviates",
    "flag_notes",
    "summarize",
    "table_markdown",
    "weight_fractions",
    "write_csv",
]

#: Paper Table 3 counts a client as contributing when its weight is above 1e-4.
WEIGHT_THRESHOLD = 1e-4
#: Paper Tables 2 and 3 are at c/m = 0.2.
TABLE_FRACTION = 0.2
#: A cell is flagged when ours and the paper's differ by more than this (metric units):
#: 5 points of accuracy (%), 5 points of a fraction (0.05), or 5% of the paper's test loss.
FLAG_POINTS = 5.0
FLAG_FRACTION = 0.05
FLAG_LOSS_RELATIVE = 0.05
#: What the markdown shows for a cell without finished runs, and for one nobody plans.
MISSING = "missing"
EMPTY = "–"
FLAG = "⚠"

#: Decimals per metric: the paper prints two everywhere.
_DECIMALS = {"accuracy": 2, "loss": 2, "fraction": 2}
_UNITS = {"accuracy": " points", "loss": "", "fraction": ""}


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (None for one seed) and number of seeds of a cell."""

    mean: float
    std: float | None
    n: int


def summarize(values: Sequence[float]) -> Stat | None:
    """Mean and spread over seeds; None when there is no value (a missing cell, not 0)."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(mean=statistics.fmean(values), std=std, n=len(values))


def deviates(ours: float, paper: float, metric: str) -> bool:
    """True when ours differs from the paper's value by more than the flag threshold.

    Accuracy (%): more than 5 points; fraction: more than 0.05; loss: more than 5% of the
    paper's value. The difference is rounded to 9 decimals first so that e.g. 90.35 vs 85.35
    (exactly 5 points apart in print) is not flagged by float noise.
    """
    diff = round(abs(ours - paper), 9)
    if metric == "accuracy":
        return diff > FLAG_POINTS
    if metric == "fraction":
        return diff > FLAG_FRACTION
    if metric == "loss":
        return diff > round(FLAG_LOSS_RELATIVE * abs(paper), 9)
    raise ValueError(f"unknown metric {metric!r}")


@dataclass
class Cell:
    """One table cell: the grid runs planned for it, the finished ones used, ours and paper's."""

    row: tuple[str, ...]
    column: str
    metric: str
    paper: float | None
    planned: list[GridRun] = field(default_factory=list)
    used: list[str] = field(default_factory=list)
    ours: Stat | None = None
    mixed: bool = False
    #: Why the runs used are not the paper's setting (then ours is not compared; None: it is).
    not_comparable: str | None = None

    @property
    def missing(self) -> bool:
        """No finished run: shown as "missing" (whether a grid plans it or not)."""
        return self.ours is None

    @property
    def relevant(self) -> bool:
        """The cell exists in the layout: the paper prints it or a grid plans it."""
        return self.paper is not None or bool(self.planned)

    @property
    def flagged(self) -> bool:
        if self.ours is None or self.paper is None or self.not_comparable:
            return False
        return deviates(self.ours.mean, self.paper, self.metric)

    @property
    def unfinished(self) -> list[GridRun]:
        """Planned runs that are not finished in the store (what a grid command would fill)."""
        used = set(self.used)
        return [r for r in self.planned if r.run_id not in used]


@dataclass
class Table:
    """A table in the paper's layout: rows (e.g. attack, defense) by columns (e.g. dataset)."""

    key: str
    title: str
    source: str
    row_keys: tuple[str, ...]
    column_key: str
    rows: list[tuple[str, ...]]
    columns: list[str]
    row_labels: dict[tuple[str, ...], tuple[str, ...]]
    column_labels: dict[str, str]
    cells: dict[tuple[tuple[str, ...], str], Cell]
    notes: list[str] = field(default_factory=list)

    def cell(self, row: tuple[str, ...], column: str) -> Cell:
        return self.cells[(row, column)]

    def relevant_cells(self) -> list[Cell]:
        return [c for c in self.cells.values() if c.relevant]

    def used_runs(self) -> list[GridRun]:
        """The finished grid runs any cell uses, in table order."""
        out: dict[str, GridRun] = {}
        for c in self.cells.values():
            for r in c.planned:
                if r.run_id in c.used:
                    out.setdefault(r.run_id, r)
        return list(out.values())

    def run_ids(self) -> list[str]:
        """Finished runs used by any cell, in table order."""
        out: list[str] = []
        for c in self.cells.values():
            out.extend(r for r in c.used if r not in out)
        return out


# -- values per run -------------------------------------------------------------------------
def final_value(reader: RunReader, run_id: str, metric: str) -> float | None:
    """Table 2's value of one run: final test accuracy in %, or final test loss."""
    if metric == "loss":
        return reader.final(run_id, "test_loss")
    acc = reader.final(run_id, "test_accuracy")
    return None if acc is None else 100.0 * acc


def weight_fractions(
    records: Iterable[dict[str, Any]], threshold: float = WEIGHT_THRESHOLD
) -> dict[str, float | None]:
    """Table 3's value of one run: per group (benign / malicious), the fraction of its clients
    with weight > ``threshold`` in each recorded round, averaged over those rounds (None when
    the group never appears)."""
    per_round: dict[int, dict[str, list[bool]]] = {}
    for rec in records:
        if rec["weight"] is None:
            continue
        group = "malicious" if rec["malicious"] else "benign"
        per_round.setdefault(int(rec["round"]), {}).setdefault(group, []).append(
            float(rec["weight"]) > threshold
        )
    out: dict[str, float | None] = {}
    for group in GROUPS:
        fracs = [sum(v[group]) / len(v[group]) for v in per_round.values() if v.get(group)]
        out[group] = statistics.fmean(fracs) if fracs else None
    return out


def _fill(cell: Cell, reader: RunReader, value: Any) -> None:
    """Use the cell's finished runs: ``value(run_id)`` gives one run's number (or None)."""
    values: list[float] = []
    for run in cell.planned:
        if not reader.finished(run.run_id):
            continue
        v = value(run.run_id)
        if v is not None and math.isfinite(v):
            values.append(v)
            cell.used.append(run.run_id)
    cell.ours = summarize(values)
    used = [r for r in cell.planned if r.run_id in cell.used]
    cell.mixed = mixed_settings(used)
    reasons = sorted({why for r in used if (why := paper_setting_differs(r)) is not None})
    cell.not_comparable = "; ".join(reasons) or None


#: The settings a cell must share with the paper (its dataset's paper preset, from Table 1) to
#: be compared with the paper's value.
PAPER_SETTINGS = ("clients", "rounds", "batch_size", "lr", "partition", "bias")


def paper_setting_differs(run: GridRun) -> str | None:
    """How a run's settings differ from its dataset's paper preset (None: they do not): the
    keys of :data:`PAPER_SETTINGS` and the malicious fraction, e.g. ``rounds 60 vs 500``."""
    from tesseract_fl.errors import ConfigError
    from tesseract_fl.experiments.config import load_preset

    cfg = run.spec.config
    try:
        preset = load_preset(cfg.dataset)
    except ConfigError:
        return f"no paper preset for {cfg.dataset!r}"
    diffs = [
        f"{k} {getattr(cfg, k)} vs {preset[k]}"
        for k in PAPER_SETTINGS
        if k in preset and getattr(cfg, k) != preset[k]
    ]
    if "malicious" in preset and "clients" in preset:
        ours, theirs = cfg.malicious / cfg.clients, preset["malicious"] / preset["clients"]
        if not same_fraction(ours, theirs):
            diffs.append(f"c/m {ours:.2f} vs {theirs:.2f}")
    return ", ".join(diffs) or None


def _table_runs(grids: Iterable[Grid], prefix: str) -> list[GridRun]:
    """A table's runs: its grids' runs at c/m = 0.2 that aggregate every client."""
    return [
        r
        for r in grid_runs(grids, prefix)
        if same_fraction(float(r.labels["malicious_fraction"]), TABLE_FRACTION)
        and r.spec.config.aggregate_only == "all"
    ]


def _with_extra(base: list[Any], extra: Iterable[Any], group: Any = None) -> list[Any]:
    """``base`` plus the items of ``extra`` it lacks; with ``group`` (item -> key) an extra
    item goes after the last base item of its group, else at the end."""
    out = list(base)
    for item in extra:
        if item in out:
            continue
        idx = [i for i, b in enumerate(out) if group is not None and group(b) == group(item)]
        out.insert(idx[-1] + 1 if idx else len(out), item)
    return out


#: Separates a dataset from a non-default client optimizer in a Table 2 column key.
_OPTIMIZER_SEP = "@"


def table2_column(run: GridRun) -> str:
    """A run's Table 2 column: its dataset, or ``dataset@optimizer`` when its clients send
    something other than plain SGD steps (e.g. the authors' Adam clients on Shakespeare), so
    the two optimizers get columns side by side instead of being averaged into one cell."""
    ds = str(run.labels["dataset"])
    opt = run.spec.config.client_optimizer
    return ds if opt == "sgd" else f"{ds}{_OPTIMIZER_SEP}{opt}"


def _column_dataset(column: str) -> tuple[str, str | None]:
    """The dataset and the client optimizer (None: the default) of a Table 2 column key."""
    ds, _, opt = column.partition(_OPTIMIZER_SEP)
    return ds, opt or None


def build_table2(reader: RunReader, grids: Iterable[Grid], paper: PaperTable2) -> Table:
    """Paper Table 2 from the ``table2-*`` grids' runs: rows (attack, defense) in the paper's
    order, columns datasets; rows or datasets our grids add come after the paper's, a dataset
    run with another client optimizer right after its paper column (the paper's value shown
    beside both, since the paper reports one)."""
    runs = _table_runs(grids, "table2")
    rows = _with_extra(
        list(paper.rows),
        [(r.labels["attack"], r.labels["defense"]) for r in runs],
        group=lambda row: row[0],
    )
    columns = _with_extra(
        list(paper.datasets),
        [table2_column(r) for r in runs],
        group=lambda column: _column_dataset(column)[0],
    )
    cells: dict[tuple[tuple[str, ...], str], Cell] = {}
    for row in rows:
        for col in columns:
            ds, opt = _column_dataset(col)
            metric = paper.metric.get(ds, "accuracy")
            planned = [
                r
                for r in runs
                if (r.labels["attack"], r.labels["defense"], table2_column(r)) == (*row, col)
            ]
            # Another optimizer's column holds only the cells a grid plans (the paper's value
            # beside them); elsewhere it stays empty rather than "missing".
            value = paper.value(row[0], row[1], ds) if opt is None or planned else None
            cell = Cell(row=row, column=col, metric=metric, paper=value, planned=planned)
            _fill(cell, reader, lambda rid, m=metric: final_value(reader, rid, m))
            cells[(row, col)] = cell
    notes = [
        f"{paper.dataset_labels.get(ds, dataset_label(ds))}: dataset not in the toolkit yet, "
        "no grid can run it."
        for ds in dict.fromkeys(_column_dataset(c)[0] for c in columns)
        if ds not in DATASETS
    ]
    notes += [
        f"{_table2_label(paper, col)}: the clients send the first step of a "
        f'`client_optimizer = "{opt}"` optimizer created afresh every round instead of the '
        "paper's plain SGD gradient; the paper's value is shown beside it for reference."
        for col in columns
        for opt in [_column_dataset(col)[1]]
        if opt is not None
    ]
    return Table(
        key="table2",
        title="Table 2: test accuracy (%) / test loss (Shakespeare) at c/m = 0.2",
        source=paper.source,
        row_keys=("attack", "defense"),
        column_key="dataset",
        rows=rows,
        columns=columns,
        row_labels={row: (attack_label(row[0]), defense_label(row[1])) for row in rows},
        column_labels={col: _table2_label(paper, col) for col in columns},
        cells=cells,
        notes=notes,
    )


def _table2_label(paper: PaperTable2, column: str) -> str:
    ds, opt = _column_dataset(column)
    label = paper.dataset_labels.get(ds, dataset_label(ds))
    if opt is not None:
        label += f", {opt} clients"
    return label + (" (test loss)" if paper.metric.get(ds) == "loss" else "")


def build_table3(reader: RunReader, grids: Iterable[Grid], paper: PaperTable3) -> Table:
    """Paper Table 3 from the ``table3-*`` grids' runs on the paper's dataset: rows
    (defense, benign / malicious), columns attacks ("none" = the paper's "Benign" column)."""
    runs = [r for r in _table_runs(grids, "table3") if r.labels["dataset"] == paper.dataset]
    defenses = _with_extra(list(paper.defenses), [r.labels["defense"] for r in runs])
    columns = _with_extra(list(paper.attacks), [r.labels["attack"] for r in runs])
    rows: list[tuple[str, ...]] = [(d, g) for d in defenses for g in GROUPS]
    fractions: dict[str, dict[str, float | None]] = {}

    def fraction(run_id: str, group: str) -> float | None:
        if run_id not in fractions:
            fractions[run_id] = weight_fractions(reader.clients(run_id))
        return fractions[run_id][group]

    cells: dict[tuple[tuple[str, ...], str], Cell] = {}
    for row in rows:
        defense, group = row
        for attack in columns:
            cell = Cell(
                row=row,
                column=attack,
                metric="fraction",
                paper=paper.value(defense, group, attack),
            )
            cell.planned = [
                r for r in runs if (r.labels["defense"], r.labels["attack"]) == (defense, attack)
            ]
            _fill(cell, reader, lambda rid, g=group: fraction(rid, g))
            cells[(row, attack)] = cell
    return Table(
        key="table3",
        title=f"Table 3: fraction of clients with weight > {_sci(WEIGHT_THRESHOLD)} "
        f"({dataset_label(paper.dataset)}, c/m = 0.2)",
        source=paper.source,
        row_keys=("defense", "clients"),
        column_key="attack",
        rows=rows,
        columns=columns,
        row_labels={
            row: (defense_label(row[0]), "n_ben" if row[1] == "benign" else "n_mal") for row in rows
        },
        column_labels={a: "None (benign)" if a == "none" else attack_label(a) for a in columns},
        cells=cells,
        notes=[
            "Without an attack the clients marked malicious behave honestly; the paper prints "
            "'-' for their n_mal, ours is shown for reference."
        ],
    )


# -- rendering ------------------------------------------------------------------------------
def _sci(x: float) -> str:
    """``1e-4`` as the paper writes it (Python prints ``1e-04``)."""
    mantissa, _, exp = f"{x:.0e}".partition("e")
    return f"{mantissa}e{int(exp)}"


def format_value(value: float, metric: str) -> str:
    return f"{value:.{_DECIMALS.get(metric, 2)}f}"


def format_ours(cell: Cell) -> str:
    """``87.10 ± 0.40 (n=2)``, ``87.10 (n=1)``, or ``missing``."""
    if cell.ours is None:
        return MISSING
    text = format_value(cell.ours.mean, cell.metric)
    if cell.ours.std is not None:
        text += f" ± {format_value(cell.ours.std, cell.metric)}"
    return f"{text} (n={cell.ours.n})"


def format_paper(cell: Cell) -> str:
    return EMPTY if cell.paper is None else format_value(cell.paper, cell.metric)


def markdown_cell(cell: Cell) -> str:
    """Ours beside the paper's, e.g. ``81.10 ± 0.40 (n=2) · paper 80.00``; ⚠ when flagged."""
    if not cell.relevant:
        return EMPTY
    text = f"{format_ours(cell)} · paper {format_paper(cell)}"
    if cell.mixed:
        text += " ‡"
    if cell.not_comparable and cell.paper is not None and cell.ours is not None:
        text += " ≠"
    return f"{FLAG} {text}" if cell.flagged else text


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(table: Table) -> str:
    """The table as GitHub markdown in the paper's layout (first row key shown once per
    group, as the paper prints the attack once per block)."""
    header = [
        *(k.capitalize() for k in table.row_keys),
        *(table.column_labels[c] for c in table.columns),
    ]
    lines = [
        "| " + " | ".join(_escape(h) for h in header) + " |",
        "|" + "|".join(["---"] * len(table.row_keys) + ["---:"] * len(table.columns)) + "|",
    ]
    previous: str | None = None
    for row in table.rows:
        labels = list(table.row_labels[row])
        if labels[0] == previous:
            labels[0] = ""
        else:
            previous = labels[0]
        cells = [markdown_cell(table.cell(row, c)) for c in table.columns]
        lines.append("| " + " | ".join(_escape(x) for x in [*labels, *cells]) + " |")
    return "\n".join(lines)


def _where(table: Table, cell: Cell) -> str:
    return ", ".join([*table.row_labels[cell.row], table.column_labels[cell.column]])


def flag_notes(table: Table) -> list[str]:
    """One sentence per flagged cell: where, ours, the paper's, and how far apart."""
    out = []
    for cell in table.relevant_cells():
        if not cell.flagged or cell.ours is None or cell.paper is None:
            continue
        diff = f"{cell.ours.mean - cell.paper:+.2f}" + _UNITS[cell.metric]
        rule = {
            "accuracy": "more than 5 points",
            "fraction": "more than 0.05",
            "loss": "more than 5% of the paper's value",
        }[cell.metric]
        out.append(
            f"{FLAG} {_where(table, cell)}: ours {format_value(cell.ours.mean, cell.metric)} vs "
            f"paper {format_value(cell.paper, cell.metric)}, a difference of {diff} ({rule})."
        )
    return out


def comparability_notes(table: Table) -> list[str]:
    """One sentence per distinct setting that keeps cells from being compared (≠)."""
    by_reason: dict[str, list[str]] = {}
    for c in table.relevant_cells():
        if c.not_comparable and c.paper is not None and c.ours is not None:
            by_reason.setdefault(c.not_comparable, []).append(_where(table, c))
    return [
        f"≠ not compared with the paper ({len(cells)} cell{'s' * (len(cells) > 1)}, e.g. "
        f"{cells[0]}): the runs' settings are not the paper's ({why})."
        for why, cells in by_reason.items()
    ]


def mixed_notes(table: Table) -> list[str]:
    """Cells averaging runs that differ in more than their seed (‡ in the table)."""
    return [
        f"‡ {_where(table, c)}: its runs differ in more than the seed (e.g. quick and paper "
        "scale grids in one report); the mean mixes settings."
        for c in table.relevant_cells()
        if c.mixed
    ]


CSV_FIELDS = (
    "metric",
    "ours",
    "mean",
    "std",
    "n",
    "paper",
    "difference",
    "flag",
    "mixed_settings",
    "run_ids",
    "missing_run_ids",
)


def csv_rows(table: Table) -> list[dict[str, str]]:
    """One row per relevant cell; a cell without finished runs has ours = "missing" and empty
    mean/std/n (never 0)."""
    rows = []
    for row in table.rows:
        for column in table.columns:
            cell = table.cell(row, column)
            if not cell.relevant:
                continue
            ours = cell.ours
            rows.append(
                {
                    **dict(zip(table.row_keys, row, strict=True)),
                    table.column_key: column,
                    "metric": cell.metric,
                    "ours": format_ours(cell),
                    "mean": "" if ours is None else repr(ours.mean),
                    "std": "" if ours is None or ours.std is None else repr(ours.std),
                    "n": "" if ours is None else str(ours.n),
                    "paper": "" if cell.paper is None else repr(cell.paper),
                    "difference": ""
                    if ours is None or cell.paper is None
                    else repr(ours.mean - cell.paper),
                    "flag": "yes" if cell.flagged else "no",
                    "mixed_settings": "yes" if cell.mixed else "no",
                    "run_ids": " ".join(cell.used),
                    "missing_run_ids": " ".join(r.run_id for r in cell.unfinished),
                }
            )
    return rows


def write_csv(table: Table, path: Path) -> Path:
    """Write the table's cells (long format: one line per cell) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [*table.row_keys, table.column_key, *CSV_FIELDS]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(csv_rows(table))
    return path
