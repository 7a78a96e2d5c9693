"""A robustness table for any grid (docs/design.md, "Report"): settings x defenses.

For a grid that is not one of the paper's tables or figures: one row per setting (dataset,
attack and any other axis of the grid), one column per defense, each cell the final test
accuracy as mean ± sample std over the finished seeds with n; a diverged run counts with the
accuracy measured where it diverged and is marked. No paper value is shown beside these cells:
their settings are the user's. A heatmap of the means goes beside the table. Settings under a
backdoor attack get a second table and heatmap: the attack success rate at the last evaluation
(lower is better for the defense), since a backdoor leaves accuracy nearly intact.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tesseract_fl.experiments.grid import Grid
from tesseract_fl.report.labels import attack_label, dataset_label, defense_label
from tesseract_fl.report.runs import RunReader

__all__ = ["RobustnessTable", "build_robustness", "robustness_md"]

#: Labels that are not a setting axis of the table (the defense is its columns).
_NOT_AXES = ("defense", "seed", "preset")


@dataclass
class Cell:
    """One (setting, defense): the final accuracies of its finished seeds."""

    values: list[float] = field(default_factory=list)
    planned: int = 0
    diverged: int = 0
    #: A backdoor's final attack success rates (empty for other attacks).
    asr: list[float] = field(default_factory=list)

    def text(self, values: list[float] | None = None) -> str:
        vals = self.values if values is None else values
        if not vals:
            return f"missing (0 of {self.planned})"
        mean = 100 * statistics.fmean(vals)
        n = len(vals)
        spread = f" ± {100 * statistics.stdev(vals):.2f}" if n > 1 else ""
        mark = f" †{self.diverged}" if self.diverged else ""
        return f"{mean:.2f}{spread} (n={n}){mark}"


@dataclass
class RobustnessTable:
    """A grid's settings x defenses table."""

    grid: Grid
    axes: list[str]
    settings: list[tuple[Any, ...]]
    defenses: list[str]
    cells: dict[tuple[tuple[Any, ...], str], Cell]

    @property
    def filled(self) -> int:
        return sum(1 for c in self.cells.values() if c.values)

    def backdoor_settings(self) -> list[tuple[Any, ...]]:
        """The settings where some finished run recorded an attack success rate."""
        return [
            s for s in self.settings if any(c.asr for (t, _), c in self.cells.items() if t == s)
        ]


def _value_label(axis: str, value: Any) -> str:
    if axis == "dataset":
        return dataset_label(str(value))
    if axis == "attack":
        return attack_label(str(value))
    if axis == "malicious_fraction":
        return f"c/m {float(value):.2f}"
    return f"{axis}={value}"


def build_robustness(reader: RunReader, grid: Grid) -> RobustnessTable:
    """Group ``grid``'s runs by setting and defense; read each finished run's final accuracy."""
    axes: list[str] = []
    for spec in grid.runs:
        for k in spec.labels:
            if k not in _NOT_AXES and k not in axes:
                axes.append(k)
    # An axis with one value in the whole grid says nothing: left out of the row labels.
    axes = [a for a in axes if len({repr(s.labels.get(a)) for s in grid.runs}) > 1] or ["dataset"]
    settings: list[tuple[Any, ...]] = []
    defenses: list[str] = []
    cells: dict[tuple[tuple[Any, ...], str], Cell] = {}
    for spec in grid.runs:
        setting = tuple(spec.labels.get(a) for a in axes)
        defense = str(spec.labels["defense"])
        if setting not in settings:
            settings.append(setting)
        if defense not in defenses:
            defenses.append(defense)
        cell = cells.setdefault((setting, defense), Cell())
        cell.planned += 1
        if not reader.finished(spec.run_id):
            continue
        acc = reader.final(spec.run_id, "test_accuracy")
        if acc is None:
            continue
        cell.values.append(acc)
        summary = (reader.run(spec.run_id) or {}).get("summary") or {}
        cell.diverged += summary.get("diverged_at") is not None
        asr = summary.get("final_attack_success")
        if isinstance(asr, int | float) and asr == asr:
            cell.asr.append(float(asr))
    # Rows of a later [[cells]] block (e.g. an attack run against a few defenses only) join
    # their dataset's group instead of trailing after every dataset (a stable sort).
    if axes[0] == "dataset":
        first = {v: i for i, v in reversed(list(enumerate(s[0] for s in settings)))}
        settings.sort(key=lambda s: first[s[0]])
    return RobustnessTable(grid, axes, settings, defenses, cells)


def write_robustness_csv(table: RobustnessTable, path: Path) -> Path:
    """One row per (setting, defense): mean, std, n, diverged (accuracy as a fraction)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                *table.axes,
                "defense",
                "mean_accuracy",
                "std_accuracy",
                "n",
                "diverged",
                "mean_attack_success",
                "std_attack_success",
            ]
        )
        for setting in table.settings:
            for d in table.defenses:
                c = table.cells.get((setting, d))
                if c is None:
                    continue
                mean = statistics.fmean(c.values) if c.values else ""
                std = statistics.stdev(c.values) if len(c.values) > 1 else ""
                asr = statistics.fmean(c.asr) if c.asr else ""
                asr_std = statistics.stdev(c.asr) if len(c.asr) > 1 else ""
                w.writerow([*setting, d, mean, std, len(c.values), c.diverged, asr, asr_std])
    return path


def write_heatmap(
    table: RobustnessTable, path: Path, *, attack_success: bool = False
) -> Path | None:
    """Mean final accuracy (or, with ``attack_success``, a backdoor's final attack success rate
    over the backdoor settings) per (setting, defense) as a heatmap; None when nothing is filled."""
    settings = table.backdoor_settings() if attack_success else table.settings
    if not table.filled or not settings:
        return None

    def values(c: Cell) -> list[float]:
        return c.asr if attack_success else c.values

    rows = [
        ", ".join(_value_label(a, v) for a, v in zip(table.axes, s, strict=True)) for s in settings
    ]
    cols = [defense_label(d) for d in table.defenses]
    data = [
        [
            100 * statistics.fmean(values(c))
            if (c := table.cells.get((s, d))) and values(c)
            else float("nan")
            for d in table.defenses
        ]
        for s in settings
    ]
    what = "attack success rate" if attack_success else "final test accuracy"
    with rc_context({"font.size": 9}):
        fig = Figure(figsize=(1.6 + 1.1 * len(cols), 1.2 + 0.45 * len(rows)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        # Bright is good for the defense in both maps: high accuracy, low attack success.
        cmap = "viridis_r" if attack_success else "viridis"
        im = ax.imshow(data, vmin=0, vmax=100, cmap=cmap, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                text = "–" if v != v else f"{v:.1f}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    color="black" if v != v or (v <= 40 if attack_success else v >= 60) else "w",
                )
        fig.colorbar(im, ax=ax, label=f"{what} (%)")
        ax.set_title(f"{table.grid.name}: {what} (%)")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130)
    return path


def robustness_md(
    reader: RunReader, grid: Grid, out_dir: Path, written: list[Path] | None = None
) -> list[str]:
    """The report section for one grid: table, its CSV and heatmap (the files it writes are
    appended to ``written`` when given)."""
    table = build_robustness(reader, grid)
    slug = grid.name.replace("/", "_")
    csv_path = write_robustness_csv(table, out_dir / "tables" / f"robustness-{slug}.csv")
    png = write_heatmap(table, out_dir / "figures" / f"robustness-{slug}.png")
    files = [csv_path] if png is None else [csv_path, png]
    header = [*(a.replace("_", " ") for a in table.axes), *map(defense_label, table.defenses)]
    lines = [
        f"## Robustness: grid {grid.name}",
        "",
        (grid.description + ". " if grid.description else "")
        + "Final test accuracy (%), mean ± sample std over seeds, n = finished seeds; † = runs "
        "that diverged (their accuracy where they stopped). These settings are the grid's own, "
        "so no paper value is shown beside them. "
        f"CSV: `{csv_path.relative_to(out_dir)}`.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for s in table.settings:
        labels = [_value_label(a, v) for a, v in zip(table.axes, s, strict=True)]
        cells = [
            c.text() if (c := table.cells.get((s, d))) is not None else "not planned"
            for d in table.defenses
        ]
        lines.append("| " + " | ".join([*labels, *cells]) + " |")
    lines.append("")
    if png is not None:
        lines += [f"![{grid.name}]({png.relative_to(out_dir)})", ""]
    backdoors = table.backdoor_settings()
    if backdoors:
        asr_png = write_heatmap(
            table, out_dir / "figures" / f"robustness-{slug}-asr.png", attack_success=True
        )
        lines += [
            f"### Backdoors: attack success rate, grid {grid.name}",
            "",
            "Fraction (%) of the test images of other classes that the final model classifies as "
            "the backdoor's target once the trigger is stamped on them (lower is better), mean ± "
            "sample std over seeds. The accuracy of the same runs is in the table above.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for s in backdoors:
            labels = [_value_label(a, v) for a, v in zip(table.axes, s, strict=True)]
            cells = [
                c.text(c.asr) if (c := table.cells.get((s, d))) is not None else "not planned"
                for d in table.defenses
            ]
            lines.append("| " + " | ".join([*labels, *cells]) + " |")
        lines.append("")
        if asr_png is not None:
            files.append(asr_png)
            lines += [f"![{grid.name}, attack success]({asr_png.relative_to(out_dir)})", ""]
    if written is not None:
        written.extend(files)
    return lines
