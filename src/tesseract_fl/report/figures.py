"""Paper Figures 2-6 from a results store (matplotlib, Agg canvas, PNG and SVG each).

Every figure is drawn from the runs of the grids named after it (``fig2-*`` ... ``fig6-*``).
Curves average the finished seeds of one setting; a panel without finished runs is left out and
a figure without any is not drawn (the report says which runs would fill it).
"""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tesseract_fl.experiments.grid import Grid
from tesseract_fl.report.labels import attack_label, dataset_label, defense_label
from tesseract_fl.report.runs import GridRun, RunReader, grid_runs, same_fraction

__all__ = [
    "FIGURES",
    "FigureResult",
    "figure2",
    "figure3",
    "figure4",
    "figure5",
    "figure6",
    "write_figures",
]

#: One style for every figure.
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "svg.fonttype": "none",
    "svg.hashsalt": "tesseract-fl",
}
PNG_DPI = 150
PANEL_SIZE = (5.0, 3.6)
#: Characters that fit across one panel at the style's title size, and up its height for a
#: y-axis label: longer text is wrapped, never clipped.
PANEL_CHARS = 52
LABEL_CHARS = 38

#: Fixed colours so that a defense looks the same in every figure.
DEFENSE_COLORS: dict[str, str] = {
    "fedsgd": "#7f7f7f",
    "tesseract": "#1f77b4",
    "faba": "#ff7f0e",
    "foolsgold": "#2ca02c",
    "fltrust": "#9467bd",
    "krum": "#8c564b",
    "bulyan": "#e377c2",
    "trimmed_mean": "#bcbd22",
    "median": "#17becf",
}
GROUP_COLORS: dict[str, str] = {"benign": "#1f77b4", "malicious": "#d62728"}
ATTACK_STYLES: dict[str, str] = {
    "none": ":",
    "full_krum": "--",
    "full_trim": "--",
    "adaptive_krum": "-",
    "adaptive_trim": "-",
    "label_flip": "-",
    "targeted_label_flip": "--",
}
DATASET_STYLES: tuple[str, ...] = ("-", "--", ":", "-.")

ROUND_LABEL = "round (global model updates)"
ACCURACY_LABEL = "test accuracy (%)"
LOSS_LABEL = "test loss (cross-entropy)"

#: Figure key -> (title, caption) as shown in the report.
FIGURES: dict[str, tuple[str, str]] = {
    "fig2": (
        "Figure 2: flip-scores of benign and malicious clients",
        "Mean flip-score of benign and of malicious clients per round when FedSGD aggregates "
        "only the benign (a) or only the malicious (b) gradients (paper Fig. 2). The paper "
        "does not name the attack; our grid uses Full-Trim.",
    ),
    "fig3": (
        "Figure 3: test loss under Full-Krum; FABA vs TESSERACT at c/m = 0.3",
        "(a) Test loss per round of each defense under the Full-Krum attack at c/m = 0.2 "
        "(Krum left out, as in the paper, for its large loss). (b) Test accuracy of FABA and "
        "TESSERACT at c/m = 0.3 under Full-Krum on MNIST, Fashion-MNIST and Breast Cancer "
        "Wisconsin (the paper's fourth data set, Ch-MNIST, needs its tiles placed by hand).",
    ),
    "fig4": (
        "Figure 4: TESSERACT reputation weights over time",
        "Every client's aggregation weight (softmax of its reputation) per recorded round, "
        "thin lines coloured by group, with the group means in bold (paper Fig. 4). One seed. "
        "Without an attack the clients marked malicious behave honestly.",
    ),
    "fig5": (
        "Figure 5: TESSERACT under adaptive attacks",
        "Test accuracy per round of TESSERACT under the adaptive Krum and Trim attacks (solid), "
        "with the base cases Full-Krum on Krum and Full-Trim on FedSGD (dashed), as in paper "
        "Fig. 5.",
    ),
    "fig6": (
        "Figure 6: label flipping",
        "Test accuracy per round of FedSGD and TESSERACT under untargeted and targeted label "
        "flipping (paper Fig. 6 / App. A.2), with the no-attack runs for reference.",
    ),
}


@dataclass
class FigureResult:
    """A figure's files (PNG, SVG; empty when skipped), the runs it used and what is missing."""

    key: str
    title: str
    caption: str
    files: list[Path] = field(default_factory=list)
    used: list[str] = field(default_factory=list)
    missing: list[GridRun] = field(default_factory=list)
    planned: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def drawn(self) -> bool:
        return bool(self.files)

    @property
    def png(self) -> Path | None:
        return next((f for f in self.files if f.suffix == ".png"), None)


@dataclass(frozen=True)
class Series:
    """One line of a panel."""

    label: str
    x: list[int]
    y: list[float]
    color: str
    linestyle: str = "-"
    linewidth: float | None = None
    alpha: float = 1.0
    #: Lowest and highest value over the seeds at each x (drawn as a band when n > 1).
    band: tuple[list[float], list[float]] | None = None
    reference: bool = False


@dataclass
class Panel:
    """One axes: a title, its axis labels and lines."""

    title: str
    ylabel: str
    series: list[Series]
    logy: bool = False
    legend: bool = True


# -- data helpers ---------------------------------------------------------------------------
def _setting(run: GridRun, keys: Sequence[str]) -> tuple[Any, ...]:
    return tuple(run.labels.get(k) for k in keys)


def _group_finished(
    reader: RunReader, runs: Iterable[GridRun], keys: Sequence[str]
) -> dict[tuple[Any, ...], list[str]]:
    """Finished run ids grouped by the values of ``keys`` (the seeds of one setting)."""
    out: dict[tuple[Any, ...], list[str]] = {}
    for r in runs:
        if reader.finished(r.run_id):
            out.setdefault(_setting(r, keys), []).append(r.run_id)
    return out


def mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    """Average several ``(round, value)`` curves over the rounds all of them have."""
    if not curves:
        return [], []
    maps = [dict(c) for c in curves]
    rounds = sorted(set.intersection(*(set(m) for m in maps)))
    return rounds, [statistics.fmean(m[r] for m in maps) for r in rounds]


def spread_curve(
    curves: Sequence[Sequence[tuple[int, float]]],
) -> tuple[list[float], list[float]] | None:
    """Per round (those all curves have), the lowest and highest value over the curves: the
    spread over seeds; None for fewer than two curves."""
    if len(curves) < 2:
        return None
    maps = [dict(c) for c in curves]
    rounds = sorted(set.intersection(*(set(m) for m in maps)))
    return [min(m[r] for m in maps) for r in rounds], [max(m[r] for m in maps) for r in rounds]


def wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (titles and axis labels
    that would otherwise be clipped or run into the next panel)."""
    return "\n".join(textwrap.wrap(text, width)) if len(text) > width else text


def group_means(
    records: Iterable[dict[str, Any]], field_name: str
) -> dict[str, list[tuple[int, float]]]:
    """Per group (benign / malicious), the mean of ``field_name`` over its clients per
    recorded round (rounds count from 1)."""
    acc: dict[str, dict[int, list[float]]] = {"benign": {}, "malicious": {}}
    for rec in records:
        value = rec[field_name]
        if value is None:
            continue
        group = "malicious" if rec["malicious"] else "benign"
        acc[group].setdefault(int(rec["round"]) + 1, []).append(float(value))
    return {g: [(r, statistics.fmean(v)) for r, v in sorted(per.items())] for g, per in acc.items()}


def client_curves(
    records: Iterable[dict[str, Any]], field_name: str
) -> dict[tuple[int, bool], list[tuple[int, float]]]:
    """``(client, malicious) -> [(round, value)]`` for one run's client records."""
    out: dict[tuple[int, bool], list[tuple[int, float]]] = {}
    for rec in records:
        if rec[field_name] is not None:
            key = (int(rec["client"]), bool(rec["malicious"]))
            out.setdefault(key, []).append((int(rec["round"]) + 1, float(rec[field_name])))
    return out


def _n(ids: Sequence[str]) -> str:
    return f" (n={len(ids)})" if len(ids) > 1 else ""


def _metric_series(
    reader: RunReader,
    groups: dict[tuple[Any, ...], list[str]],
    key: str,
    style: Callable[[tuple[Any, ...]], tuple[str, str, str]],
    reference: Callable[[tuple[Any, ...]], bool] = lambda _: False,
) -> list[Series]:
    """One mean curve per setting; ``style(setting) -> (label, color, linestyle)``;
    ``reference(setting)`` marks the comparison lines (e.g. the no-attack runs)."""
    out = []
    scale = 100.0 if key == "test_accuracy" else 1.0
    for setting, ids in groups.items():
        curves = [reader.curve(i, key) for i in ids]
        x, y = mean_curve(curves)
        if not x:
            continue
        label, color, ls = style(setting)
        spread = spread_curve(curves)
        band = (
            None
            if spread is None
            else ([scale * v for v in spread[0]], [scale * v for v in spread[1]])
        )
        out.append(
            Series(
                label + _n(ids),
                x,
                [scale * v for v in y],
                color,
                ls,
                reference=reference(setting),
                band=band,
            )
        )
    return out


# -- drawing --------------------------------------------------------------------------------
def _spans_decade(values: Sequence[float]) -> bool:
    """A log axis only pays off for positive values spanning more than a factor of 10."""
    return bool(values) and min(values) > 0 and max(values) > 10 * min(values)


def _draw(ax: Axes, panel: Panel) -> None:
    for s in panel.series:
        ax.plot(
            s.x,
            s.y,
            label=s.label or "_nolegend_",
            color=s.color,
            linestyle=s.linestyle,
            linewidth=s.linewidth,
            alpha=s.alpha,
        )
        if s.band is not None:
            ax.fill_between(s.x, s.band[0], s.band[1], color=s.color, alpha=0.15, linewidth=0)
    ylabel = panel.ylabel
    if panel.logy and _spans_decade([v for s in panel.series for v in s.y]):
        ax.set_yscale("log")
        ylabel += ", log scale"
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(wrap(panel.title, PANEL_CHARS))
    ax.set_xlabel(ROUND_LABEL)
    ax.set_ylabel(wrap(ylabel, LABEL_CHARS))
    if panel.legend:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")


def render(panels: Sequence[Panel], title: str, out_dir: Path, key: str) -> list[Path]:
    """Draw the panels side by side and save ``key``.png and ``key``.svg under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with rc_context(cast(Any, STYLE)):  # matplotlib types rc keys as literals
        fig = Figure(
            figsize=(PANEL_SIZE[0] * len(panels), PANEL_SIZE[1] + 0.4), layout="constrained"
        )
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, panel in zip(axes, panels, strict=True):
            _draw(ax, panel)
        fig.suptitle(wrap(title, int(PANEL_CHARS * len(panels) * 0.9)))
        png, svg = out_dir / f"{key}.png", out_dir / f"{key}.svg"
        fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None, "Creator": None})
    return [png, svg]


def _result(key: str, reader: RunReader, runs: Sequence[GridRun]) -> FigureResult:
    title, caption = FIGURES[key]
    return FigureResult(
        key=key,
        title=title,
        caption=caption,
        used=[r.run_id for r in runs if reader.finished(r.run_id)],
        missing=[r for r in runs if not reader.finished(r.run_id)],
        planned=len(runs),
    )


def _finish(
    result: FigureResult,
    panels: list[Panel],
    out_dir: Path,
    title_of: Callable[[list[Panel]], str] | None = None,
) -> FigureResult:
    """Render the panels that have a line of their own (not only reference lines, e.g. the
    no-attack runs of Fig. 6); a figure without any is skipped with a note. ``title_of(drawn
    panels)`` gives the title when it depends on which panels are drawn (a title never
    promises a panel that is left out)."""
    drawn = [p for p in panels if any(not s.reference for s in p.series)]
    if not drawn:
        for suffix in (".png", ".svg"):  # never leave an earlier report's figure behind
            (out_dir / f"{result.key}{suffix}").unlink(missing_ok=True)
        only_reference = any(p.series for p in panels)
        result.notes.append(
            "Not drawn: only its reference runs are finished in the store."
            if only_reference
            else "Not drawn: none of its runs is finished in the store."
        )
        return result
    for p in panels:
        if p not in drawn:
            result.notes.append(f"Panel '{p.title}' left out: none of its runs is finished.")
    if title_of is not None:
        result.title = title_of(drawn)
    result.files = render(drawn, result.title, out_dir, result.key)
    return result


def _panel_letter(i: int) -> str:
    return f"({chr(ord('a') + i)}) "


# -- the figures ----------------------------------------------------------------------------
def figure2(reader: RunReader, grids: Iterable[Grid], out_dir: Path) -> FigureResult:
    """Paper Fig. 2: mean flip-score of benign vs malicious clients per round, one panel per
    ``aggregate_only`` mode (only benign / only malicious gradients aggregated)."""
    runs = grid_runs(grids, "fig2")
    result = _result("fig2", reader, runs)
    panels = []
    for i, mode in enumerate(("benign", "malicious")):
        ids = [
            r.run_id
            for r in runs
            if r.spec.config.aggregate_only == mode and reader.finished(r.run_id)
        ]
        series = []
        for group in ("benign", "malicious"):
            x, y = mean_curve([group_means(reader.clients(i_), "flip_score")[group] for i_ in ids])
            if x:
                series.append(Series(f"{group} clients{_n(ids)}", x, y, GROUP_COLORS[group]))
        attack = {r.labels["attack"] for r in runs if r.spec.config.aggregate_only == mode}
        what = ", ".join(attack_label(a) for a in sorted(attack)) or "no runs"
        panels.append(
            Panel(
                title=f"{_panel_letter(i)}only {mode} gradients aggregated ({what})",
                ylabel="mean flip-score (sum of squared flipped entries)",
                series=series,
                logy=True,
            )
        )
    return _finish(result, panels, out_dir)


def figure3(reader: RunReader, grids: Iterable[Grid], out_dir: Path) -> FigureResult:
    """Paper Fig. 3: (a) test loss per defense under Full-Krum at c/m = 0.2; (b) FABA vs
    TESSERACT at c/m = 0.3 (test accuracy, one line style per dataset)."""
    runs = [r for r in grid_runs(grids, "fig3") if r.spec.config.aggregate_only == "all"]
    result = _result("fig3", reader, runs)
    low = [r for r in runs if same_fraction(float(r.labels["malicious_fraction"]), 0.2)]
    high = [r for r in runs if same_fraction(float(r.labels["malicious_fraction"]), 0.3)]
    datasets = sorted({r.labels["dataset"] for r in runs})
    ds_style = {ds: DATASET_STYLES[i % len(DATASET_STYLES)] for i, ds in enumerate(datasets)}
    many_low = len({r.labels["dataset"] for r in low}) > 1

    def style_low(s: tuple[Any, ...]) -> tuple[str, str, str]:
        ds, defense, _ = s
        label = defense_label(defense) + (f", {dataset_label(ds)}" if many_low else "")
        return label, DEFENSE_COLORS.get(defense, "black"), ds_style[ds]

    def style_high(s: tuple[Any, ...]) -> tuple[str, str, str]:
        ds, defense, _ = s
        label = f"{defense_label(defense)}, {dataset_label(ds)}"
        return label, DEFENSE_COLORS.get(defense, "black"), ds_style[ds]

    keys = ("dataset", "defense", "attack")
    attacks_low = ", ".join(sorted({attack_label(r.labels["attack"]) for r in low})) or "-"
    attacks_high = ", ".join(sorted({attack_label(r.labels["attack"]) for r in high})) or "-"
    panels = [
        Panel(
            title=f"(a) test loss under {attacks_low}, c/m = 0.2",
            ylabel=LOSS_LABEL,
            series=_metric_series(
                reader, _group_finished(reader, low, keys), "test_loss", style_low
            ),
            logy=True,
        ),
        Panel(
            title=f"(b) FABA vs TESSERACT under {attacks_high}, c/m = 0.3",
            ylabel=ACCURACY_LABEL,
            series=_metric_series(
                reader, _group_finished(reader, high, keys), "test_accuracy", style_high
            ),
        ),
    ]
    if not high:
        panels.pop()

    def title_of(drawn: list[Panel]) -> str:
        if len(drawn) == len(panels) == 2:
            return result.title
        if drawn[0] is panels[0]:
            return f"Figure 3: test loss under {attacks_low}"
        return f"Figure 3: FABA vs TESSERACT under {attacks_high} at c/m = 0.3"

    return _finish(result, panels, out_dir, title_of)


def figure4(reader: RunReader, grids: Iterable[Grid], out_dir: Path) -> FigureResult:
    """Paper Fig. 4: TESSERACT's weight of every client per recorded round (thin lines by
    group) and the two group means, one panel per attack; the lowest finished seed."""
    runs = [r for r in grid_runs(grids, "fig4") if r.labels["defense"] == "tesseract"]
    result = _result("fig4", reader, runs)
    attacks: list[str] = []
    for r in runs:
        if r.labels["attack"] not in attacks:
            attacks.append(r.labels["attack"])
    panels = []
    for i, attack in enumerate(attacks):
        done = sorted(
            (r for r in runs if r.labels["attack"] == attack and reader.finished(r.run_id)),
            key=lambda r: (r.labels["dataset"], r.labels["seed"]),
        )
        series: list[Series] = []
        title = f"{_panel_letter(i)}{attack_label(attack)}"
        if done:
            run = done[0]
            records = reader.clients(run.run_id)
            for (_, mal), curve in sorted(client_curves(records, "weight").items()):
                group = "malicious" if mal else "benign"
                series.append(
                    Series(
                        "",
                        [x for x, _ in curve],
                        [y for _, y in curve],
                        GROUP_COLORS[group],
                        linewidth=0.5,
                        alpha=0.25,
                    )
                )
            for group, curve in group_means(records, "weight").items():
                if curve:
                    series.append(
                        Series(
                            f"{group} clients (mean)"
                            if group == "benign" or attack != "none"
                            else "clients marked malicious, idle (mean)",
                            [x for x, _ in curve],
                            [y for _, y in curve],
                            GROUP_COLORS[group],
                            linewidth=2.2,
                        )
                    )
            title += f", {dataset_label(run.labels['dataset'])}, seed {run.labels['seed']}"
        panels.append(
            Panel(
                title=title,
                ylabel="aggregation weight (softmax of reputation)",
                series=series,
                logy=True,
            )
        )
    return _finish(result, panels, out_dir)


def _accuracy_panels(
    key: str,
    reader: RunReader,
    runs: Sequence[GridRun],
    style: Callable[[tuple[Any, ...]], tuple[str, str, str]],
    reference: Callable[[tuple[Any, ...]], bool],
) -> list[Panel]:
    """Test accuracy per round, one panel per dataset, one line per (defense, attack)."""
    datasets: list[str] = []
    for r in runs:
        if r.labels["dataset"] not in datasets:
            datasets.append(r.labels["dataset"])
    panels = []
    for i, ds in enumerate(datasets):
        mine = [r for r in runs if r.labels["dataset"] == ds]
        fracs = sorted({round(float(r.labels["malicious_fraction"]), 3) for r in mine})
        groups = _group_finished(reader, mine, ("defense", "attack", "malicious_fraction"))
        panels.append(
            Panel(
                title=f"{_panel_letter(i)}{dataset_label(ds)}, c/m = "
                + ", ".join(f"{f:g}" for f in fracs),
                ylabel=ACCURACY_LABEL,
                series=_metric_series(reader, groups, "test_accuracy", style, reference),
            )
        )
    return panels


def _accuracy_by_dataset(
    key: str,
    reader: RunReader,
    grids: Iterable[Grid],
    out_dir: Path,
    style: Callable[[tuple[Any, ...]], tuple[str, str, str]],
    reference: Callable[[tuple[Any, ...]], bool],
) -> FigureResult:
    """:func:`_accuracy_panels` drawn; a panel with only ``reference`` lines is left out."""
    runs = [r for r in grid_runs(grids, key) if r.spec.config.aggregate_only == "all"]
    result = _result(key, reader, runs)
    return _finish(result, _accuracy_panels(key, reader, runs, style, reference), out_dir)


def figure5(reader: RunReader, grids: Iterable[Grid], out_dir: Path) -> FigureResult:
    """Paper Fig. 5: TESSERACT under adaptive Krum / Trim, with the Table 2 base cases."""

    def style(s: tuple[Any, ...]) -> tuple[str, str, str]:
        defense, attack, _ = s
        ls = "-" if attack.startswith("adaptive") else "--"
        color = {"adaptive_krum": "#1f77b4", "adaptive_trim": "#17becf"}.get(
            attack, DEFENSE_COLORS.get(defense, "black")
        )
        return f"{defense_label(defense)}, {attack_label(attack)}", color, ls

    def base_case(s: tuple[Any, ...]) -> bool:
        return not str(s[1]).startswith("adaptive")

    return _accuracy_by_dataset("fig5", reader, grids, out_dir, style, base_case)


def figure6(reader: RunReader, grids: Iterable[Grid], out_dir: Path) -> FigureResult:
    """Paper Fig. 6: FedSGD and TESSERACT under untargeted / targeted label flipping, and the
    accuracy on the targeted attack's source class (which the overall accuracy hides)."""

    def style(s: tuple[Any, ...]) -> tuple[str, str, str]:
        defense, attack, _ = s
        return (
            f"{defense_label(defense)}, {attack_label(attack)}",
            DEFENSE_COLORS.get(defense, "black"),
            ATTACK_STYLES.get(attack, "-"),
        )

    def no_attack(s: tuple[Any, ...]) -> bool:
        return s[1] == "none"

    runs = [r for r in grid_runs(grids, "fig6") if r.spec.config.aggregate_only == "all"]
    panels = _accuracy_panels("fig6", reader, runs, style, no_attack)
    source = _source_class_panel(reader, runs, style, len(panels))
    return _finish(_result("fig6", reader, runs), [*panels, *([source] if source else [])], out_dir)


def _source_class(run: GridRun) -> int:
    """The targeted label flip's source class (its parameter, else the attack's default)."""
    from tesseract_fl.attacks import make_attack

    attack = make_attack("targeted_label_flip", **run.spec.config.attack_params)
    return int(attack.source)


def _source_class_panel(
    reader: RunReader,
    runs: Sequence[GridRun],
    style: Callable[[tuple[Any, ...]], tuple[str, str, str]],
    index: int,
) -> Panel | None:
    """Accuracy on the source class of the targeted runs (and, as references, of the no-attack
    runs on the same class); None when no targeted run with per-class records is finished."""
    targeted = [r for r in runs if r.labels["attack"] == "targeted_label_flip"]
    done = [r for r in targeted if reader.finished(r.run_id)]
    if not done:
        return None
    cls = _source_class(done[0])
    series: list[Series] = []
    keys = ("defense", "attack", "malicious_fraction")
    for ref, group in (
        (False, targeted),
        (True, [r for r in runs if r.labels["attack"] == "none"]),
    ):
        for setting, ids in _group_finished(reader, group, keys).items():
            curves = [reader.class_curve(i, cls) for i in ids]
            x, y = mean_curve(curves)
            if not x:
                continue
            label, color, ls = style(setting)
            spread = spread_curve(curves)
            band = (
                None
                if spread is None
                else ([100 * v for v in spread[0]], [100 * v for v in spread[1]])
            )
            series.append(
                Series(
                    label + _n(ids), x, [100 * v for v in y], color, ls, reference=ref, band=band
                )
            )
    if not any(not s.reference for s in series):
        return None
    return Panel(
        title=f"({chr(ord('a') + index)}) accuracy on class {cls}, the targeted flip's source",
        ylabel=f"test accuracy on class {cls} (%)",
        series=series,
    )


def write_figures(reader: RunReader, grids: Sequence[Grid], out_dir: Path) -> list[FigureResult]:
    """Draw every figure whose runs exist (files under ``out_dir``); report the rest."""
    return [fn(reader, grids, out_dir) for fn in (figure2, figure3, figure4, figure5, figure6)]
