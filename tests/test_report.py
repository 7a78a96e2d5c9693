"""The report: paper values, Tables 2-3 from a real store, figures, report.md, CLI.

The store is filled by really running small grids on the tiny IDX fixture dataset.
"""

from __future__ import annotations

import csv
import re
import sqlite3
import statistics
import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from tesseract_fl.cli import main
from tesseract_fl.experiments.grid import Grid, load_grid
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore
from tesseract_fl.report import generate_report, load_paper_values, write_report
from tesseract_fl.report.runs import RunReader
from tesseract_fl.report.tables import (
    Cell,
    Stat,
    build_table2,
    build_table3,
    deviates,
    flag_notes,
    markdown_cell,
    summarize,
    weight_fractions,
)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "src" / "tesseract_fl" / "experiments" / "grids"

#: Tiny grids named like the real ones (table2-*, fig2-* ...), so each feeds its artefact.
TINY_GRIDS: dict[str, str] = {
    "table2-tiny": """
[[cells]]
attack = "none"
defense = "fedsgd"
seed = [0, 1]
[[cells]]
attack = "none"
defense = ["tesseract", "faba"]
[[cells]]
attack = "full_krum"
defense = ["tesseract", "foolsgold"]
[[cells]]
attack = "full_trim"
defense = ["fedsgd", "tesseract", "fltrust"]
""",
    "table3-tiny": """
[[cells]]
attack = ["none", "full_trim", "full_krum"]
defense = ["foolsgold", "fltrust", "tesseract"]
""",
    "fig2-tiny": """
[[cells]]
attack = "full_trim"
defense = "fedsgd"
aggregate_only = ["benign", "malicious"]
""",
    "fig3-tiny": """
[[cells]]
attack = "full_krum"
defense = ["fedsgd", "tesseract"]
[[cells]]
attack = "full_krum"
defense = ["faba", "tesseract"]
malicious_fraction = 0.3
""",
    "fig4-tiny": """
[[cells]]
attack = ["none", "full_krum", "full_trim"]
defense = "tesseract"
""",
    "fig5-tiny": """
[[cells]]
attack = ["adaptive_krum", "adaptive_trim"]
defense = "tesseract"
[[cells]]
attack = "full_krum"
defense = "krum"
[[cells]]
attack = "full_trim"
defense = "fedsgd"
""",
    "fig6-tiny": """
[[cells]]
attack = ["label_flip", "targeted_label_flip"]
defense = ["fedsgd", "tesseract"]
""",
}
#: Left unrun on purpose: a planned cell that stays "missing".
UNRUN = ("none", "faba")


def _grid_text(name: str, body: str, data_dir: Path) -> str:
    head = f'name = "{name}"\nseeds = [0]\n[datasets]\nmnist = "mnist"\n'
    setting = (
        f'[set]\ndata_dir = "{data_dir}"\nclients = 10\nrounds = 4\neval_every = 2\n'
        "record_every = 1\nbatch_size = 8\nlr = 0.05\n"
    )
    # Every block gets c/m = 0.2 unless it says otherwise (c = 2 of 10 clients).
    blocks = [
        b if "malicious_fraction" in b else b + "malicious_fraction = 0.2\n"
        for b in body.split("[[cells]]")[1:]
    ]
    return head + setting + "".join(f"[[cells]]{b}" for b in blocks)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> dict[str, Any]:
    """A store holding every tiny grid's runs except the UNRUN cell; the grids and paths."""
    root = tmp_path_factory.mktemp("report")
    paths = []
    for name, body in TINY_GRIDS.items():
        p = root / f"{name}.toml"
        p.write_text(_grid_text(name, body, tiny_data_dir))
        paths.append(p)
    grids = [load_grid(p) for p in paths]
    store = root / "store.sqlite"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a busy machine
    try:
        done: set[str] = set()
        for grid in grids:
            for spec in grid.runs:
                if spec.run_id in done or (spec.labels["attack"], spec.labels["defense"]) == UNRUN:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Bulyan/Krum size warnings at m = 10
                    run_experiment(spec.config, store)
                done.add(spec.run_id)
    finally:
        torch.set_num_threads(threads)
    return {"store": store, "grids": grids, "paths": paths, "root": root}


@pytest.fixture(scope="module")
def report(filled: dict[str, Any]) -> Any:
    return generate_report(filled["store"], filled["root"] / "out", filled["grids"])


def _final_accuracy(store: Path, run_id: str) -> float:
    with ResultsStore(store) as s:
        run = s.get_run(run_id)
    assert run is not None and run["status"] == "finished"
    return float(run["summary"]["final_accuracy"])


def _runs(grids: list[Grid], **labels: Any) -> list[str]:
    out: list[str] = []
    for g in grids:
        for r in g.runs:
            if all(r.labels.get(k) == v for k, v in labels.items()) and r.run_id not in out:
                out.append(r.run_id)
    return out


# -- paper values -------------------------------------------------------------------------------
def test_paper_values_load_every_cell() -> None:
    paper = load_paper_values()
    t2, t3 = paper.table2, paper.table3
    assert "TESSERACT" in paper.title
    assert t2.value("none", "tesseract", "mnist") == 92.52
    assert t2.value("full_krum", "tesseract", "femnist") == 80.19
    assert t2.value("full_trim", "median", "femnist") == 45.6
    assert t2.value("full_krum", "krum", "shakespeare") == 11.98
    assert t2.metric["shakespeare"] == "loss"
    assert len(t2.rows) == 5 + 7 + 7 and len(t2.values) == 19 * 4
    assert t2.value("none", "krum", "mnist") is None
    assert t3.value("tesseract", "malicious", "full_krum") == 0.08
    assert t3.value("foolsgold", "benign", "none") == 0.29
    assert t3.value("tesseract", "malicious", "none") is None  # the paper prints "-"
    assert len(t3.values) == 3 * 3 + 3 * 2
    assert "Table 2" in t2.source and "Table 3" in t3.source


def test_paper_values_are_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "report/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["tesseract_fl"]
    deps = " ".join(pyproject["project"]["dependencies"])
    assert "matplotlib" in deps


def test_paper_numbers_only_in_the_data_file() -> None:
    """No source file copies a paper number: they live in paper_values.toml only."""
    paper = load_paper_values()
    numbers = {f"{v:.2f}" for v in paper.table2.values.values() if v >= 10}
    sources = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    assert not {n for n in numbers if re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", sources)}


# -- flag rule and formatting (unit level) ------------------------------------------------------
@pytest.mark.parametrize(
    ("ours", "paper", "metric", "flag"),
    [
        (92.45, 87.45, "accuracy", False),  # exactly 5 points apart: not flagged
        (92.46, 87.45, "accuracy", True),
        (82.44, 87.45, "accuracy", True),
        (87.45, 87.45, "accuracy", False),
        (0.13, 0.08, "fraction", False),
        (0.14, 0.08, "fraction", True),
        (1.70, 1.62, "loss", False),  # 0.08 <= 5% of 1.62
        (1.71, 1.62, "loss", True),
    ],
)
def test_flag_rule(ours: float, paper: float, metric: str, flag: bool) -> None:
    assert deviates(ours, paper, metric) is flag
    cell = Cell(row=("a", "d"), column="mnist", metric=metric, paper=paper)
    cell.ours = Stat(mean=ours, std=None, n=1)
    cell.used = ["r"]
    assert cell.flagged is flag
    assert markdown_cell(cell).startswith("⚠") is flag


def test_summarize_and_missing_cell() -> None:
    assert summarize([]) is None
    one = summarize([80.0])
    assert one is not None and one.std is None and one.n == 1
    two = summarize([80.0, 82.0])
    assert two is not None and two.mean == 81.0 and two.std == pytest.approx(2**0.5)
    cell = Cell(row=("none", "faba"), column="mnist", metric="accuracy", paper=91.77)
    assert markdown_cell(cell) == "missing · paper 91.77" and not cell.flagged
    cell.ours = two
    assert markdown_cell(cell) == "⚠ 81.00 ± 1.41 (n=2) · paper 91.77"


def test_weight_fractions_by_round_then_group() -> None:
    recs = [
        {"round": 0, "client": 0, "malicious": 0, "weight": 0.5},
        {"round": 0, "client": 1, "malicious": 0, "weight": 0.0},
        {"round": 0, "client": 2, "malicious": 1, "weight": 0.5},
        {"round": 1, "client": 0, "malicious": 0, "weight": 0.5},
        {"round": 1, "client": 1, "malicious": 0, "weight": 2e-4},
        {"round": 1, "client": 2, "malicious": 1, "weight": 5e-5},
    ]
    assert weight_fractions(recs) == {"benign": 0.75, "malicious": 0.5}
    assert weight_fractions([]) == {"benign": None, "malicious": None}


# -- tables from a real store -----------------------------------------------------------------
def test_table2_cell_is_mean_and_std_over_seeds(filled: dict[str, Any]) -> None:
    store, grids = filled["store"], filled["grids"]
    with ResultsStore(store) as s:
        table = build_table2(RunReader(s), grids, load_paper_values().table2)
    ids = _runs(grids, attack="none", defense="fedsgd", dataset="mnist")
    assert len(ids) == 2
    accs = [100 * _final_accuracy(store, i) for i in ids]
    cell = table.cell(("none", "fedsgd"), "mnist")
    assert cell.ours is not None and cell.ours.n == 2
    assert cell.ours.mean == pytest.approx(statistics.fmean(accs))
    assert cell.ours.std == pytest.approx(statistics.stdev(accs))
    assert sorted(cell.used) == sorted(ids) and cell.paper == 92.45
    one = table.cell(("full_trim", "tesseract"), "mnist")
    assert one.ours is not None and one.ours.n == 1 and one.ours.std is None
    # Planned but not run, and not planned at all: both missing, never 0.
    for row, col in ((UNRUN, "mnist"), (("none", "fedsgd"), "cifar10")):
        assert table.cell(row, col).ours is None and table.cell(row, col).missing
    assert table.cell(UNRUN, "mnist").planned and not table.cell(UNRUN, "cifar10").planned


def test_table3_fractions_match_the_clients_table(filled: dict[str, Any]) -> None:
    store, grids = filled["store"], filled["grids"]
    with ResultsStore(store) as s:
        table = build_table3(RunReader(s), grids, load_paper_values().table3)
    db = sqlite3.connect(store)
    for defense in ("tesseract", "foolsgold", "fltrust"):
        for attack in ("none", "full_trim", "full_krum"):
            (rid,) = _runs(
                grids, attack=attack, defense=defense, dataset="mnist", malicious_fraction=0.2
            )
            rows = db.execute(
                "SELECT round, malicious, AVG(weight > 1e-4) FROM clients WHERE run_id = ? "
                "GROUP BY round, malicious",
                (rid,),
            ).fetchall()
            for group, flag in (("benign", 0), ("malicious", 1)):
                expected = statistics.fmean(f for _, m, f in rows if m == flag)
                cell = table.cell((defense, group), attack)
                assert cell.ours is not None and cell.ours.n == 1
                assert cell.ours.mean == pytest.approx(expected)
    assert table.cell(("tesseract", "malicious"), "full_krum").paper == 0.08


# -- the written report --------------------------------------------------------------------
def test_report_files_and_layout(filled: dict[str, Any], report: Any) -> None:
    out = filled["root"] / "out"
    text = report.path.read_text()
    assert report.path == out / "report.md"
    for heading in ("## Table 2", "## Table 3", "## Figure 2", "## Figure 6", "## Runs used"):
        assert heading in text
    # Ours beside the paper's, in the paper's layout.
    t2 = report.tables[0]
    cell = t2.cell(("none", "fedsgd"), "mnist")
    assert cell.ours is not None
    assert f"{cell.ours.mean:.2f} ± {cell.ours.std:.2f} (n=2) · paper 92.45" in text
    assert "missing · paper 91.77" in text  # the unrun FABA cell
    assert "missing · paper 71.17" in text  # CIFAR-10: no grid covers it
    # The fill command names the grid file of the unrun cell.
    assert f"tesseract-fl grid {filled['root'] / 'table2-tiny.toml'}" in text
    # Every finished run id appears under "Runs used".
    for rid in cell.used:
        assert f"`{rid}`" in text
    for fig in report.figures:
        assert fig.drawn, fig.notes
        assert f"![{fig.title}](figures/{fig.key}.png)" in text
        for suffix, magic in ((".png", b"\x89PNG"), (".svg", b"<svg")):
            f = out / "figures" / f"{fig.key}{suffix}"
            data = f.read_bytes()
            assert len(data) > 1000 and magic in data[:400]


def test_flags_appear_exactly_when_far_from_the_paper(report: Any) -> None:
    """⚠ exactly for comparable cells far from the paper; cells whose runs are not at the
    paper's settings (the tiny runs here) are marked ≠ with the reason, never ⚠."""
    text = report.path.read_text()
    compared = 0
    for table in report.tables:
        flagged = 0
        for c in table.relevant_cells():
            far = (
                c.ours is not None
                and c.paper is not None
                and abs(c.ours.mean - c.paper) > (5.0 if c.metric == "accuracy" else 0.05)
            )
            comparable = c.not_comparable is None
            assert c.flagged is (far and comparable)
            assert markdown_cell(c).startswith("⚠") is (far and comparable)
            if c.ours is not None and c.paper is not None and not comparable:
                assert markdown_cell(c).endswith("≠") and "rounds" in str(c.not_comparable)
            flagged += far and comparable
            compared += comparable and c.ours is not None
        notes = flag_notes(table)
        assert len(notes) == flagged
        for n in notes:
            assert n in text
    assert compared == 0  # the tiny runs are 100 clients x few rounds: none is the paper's
    assert "≠ not compared with the paper" in text and "rounds" in text
    # Shown as the paper's setting, a far-off cell is flagged.
    cell = next(c for c in report.tables[0].relevant_cells() if c.ours and c.paper)
    far = Cell(cell.row, cell.column, cell.metric, cell.ours.mean + 20, ours=cell.ours)
    assert far.flagged and markdown_cell(far).startswith("⚠")


def test_paper_setting_differs_names_each_difference() -> None:
    from tesseract_fl.experiments.config import resolve_config
    from tesseract_fl.experiments.grid import RunSpec
    from tesseract_fl.report.runs import GridRun
    from tesseract_fl.report.tables import paper_setting_differs

    def run(*overrides: str) -> GridRun:
        cfg = resolve_config("mnist", overrides=list(overrides))
        spec = RunSpec(labels={"dataset": "mnist"}, config=cfg, run_id=cfg.run_id())
        return GridRun(spec=spec, grid=Grid(name="table2-x", description=""))

    assert paper_setting_differs(run()) is None
    assert paper_setting_differs(run("seed=3", "eval_every=5")) is None
    why = paper_setting_differs(run("rounds=60", "clients=20", "malicious=4"))
    assert why == "clients 20 vs 100, rounds 60 vs 500"
    assert paper_setting_differs(run("malicious=30")) == "c/m 0.30 vs 0.20"


def test_csv_missing_is_not_zero(report: Any) -> None:
    path = next(p for p in report.csv_files if p.name == "table2.csv")
    rows = list(csv.DictReader(path.open()))
    by = {(r["attack"], r["defense"], r["dataset"]): r for r in rows}
    for key in (("none", "faba", "mnist"), ("none", "fedsgd", "cifar10")):
        assert by[key]["ours"] == "missing" and by[key]["mean"] == "" and by[key]["n"] == ""
    filled = by[("none", "fedsgd", "mnist")]
    assert filled["n"] == "2" and float(filled["mean"]) > 0 and filled["paper"] == "92.45"
    assert len(by) == 19 * 4
    t3 = list(csv.DictReader((path.parent / "table3.csv").open()))
    assert {r["clients"] for r in t3} == {"benign", "malicious"}


def test_figures_without_runs_are_skipped_with_a_note(
    filled: dict[str, Any], tiny_data_dir: Path
) -> None:
    tables_only = [g for g in filled["grids"] if g.name.startswith("table")]
    # Fig. 6 with only its no-attack reference run finished (table2-tiny's FedSGD run).
    ref = filled["root"] / "fig6-ref.toml"
    body = (
        '[[cells]]\nattack = "none"\ndefense = "fedsgd"\nseed = 0\n'
        '[[cells]]\nattack = "label_flip"\ndefense = "fedsgd"\nseed = 5\n'  # never run
    )
    ref.write_text(_grid_text("fig6-ref", body, tiny_data_dir))
    out = filled["root"] / "tables-only"
    result = generate_report(filled["store"], out, [*tables_only, load_grid(ref)])
    assert all(not f.drawn for f in result.figures)
    assert not any((out / "figures").glob("*"))
    text = result.path.read_text()
    assert "Not drawn: none of its runs is finished" in text
    assert "Not drawn: only its reference runs are finished" in text


def test_fig6_shows_the_source_class_and_fig3_titles_only_what_is_drawn(
    filled: dict[str, Any], report: Any, tiny_data_dir: Path
) -> None:
    svg = (filled["root"] / "out" / "figures" / "fig6.svg").read_text()
    assert "accuracy on class 7, the targeted flip" in svg
    # Fig. 3 with its c/m = 0.3 panel unrun: the title promises only panel (a).
    only_a = filled["root"] / "fig3-only-a.toml"
    body = (
        '[[cells]]\nattack = "full_krum"\ndefense = ["fedsgd", "tesseract"]\n'
        '[[cells]]\nattack = "full_krum"\ndefense = "faba"\nmalicious_fraction = 0.3\n'
        "seed = 9\n"  # never run
    )
    only_a.write_text(_grid_text("fig3-only-a", body, tiny_data_dir))
    result = generate_report(filled["store"], filled["root"] / "only-a", [load_grid(only_a)])
    fig3 = next(f for f in result.figures if f.key == "fig3")
    assert fig3.drawn and fig3.title == "Figure 3: test loss under Full-Krum"
    assert "## Figure 3: test loss under Full-Krum\n" in result.path.read_text()


def test_wrap_and_spread() -> None:
    from tesseract_fl.report.figures import spread_curve, wrap

    assert wrap("short", 10) == "short"
    wrapped = wrap("Figure 3: test loss under Full-Krum; FABA vs TESSERACT at c/m = 0.3", 40)
    assert "\n" in wrapped and all(len(line) <= 40 for line in wrapped.splitlines())
    assert spread_curve([[(1, 2.0), (2, 4.0)]]) is None
    assert spread_curve([[(1, 2.0), (2, 4.0)], [(1, 1.0), (2, 6.0), (3, 9.0)]]) == (
        [1.0, 4.0],
        [2.0, 6.0],
    )


def test_write_report_returns_the_markdown_path(filled: dict[str, Any]) -> None:
    grids = [g for g in filled["grids"] if g.name == "table2-tiny"]
    path = write_report(filled["store"], filled["root"] / "w", grids)
    assert path.name == "report.md" and path.is_file()


# -- CLI ------------------------------------------------------------------------------------
def test_cli_report_end_to_end(
    filled: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    args = ["report", "--store", str(filled["store"]), "--out", str(out)]
    for p in filled["paths"]:
        args += ["--grid", str(p)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "report coverage" in printed and "Table 2" in printed and "report.md" in printed
    assert (out / "report.md").is_file() and (out / "tables" / "table2.csv").is_file()
    assert (out / "figures" / "fig4.png").is_file()


def test_cli_report_clear_errors(
    filled: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing_store = ["report", "--store", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path)]
    assert main([*missing_store, "--grid", str(filled["paths"][0])]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "nope.sqlite" in err and "no results store" in err
    assert not (tmp_path / "nope.sqlite").exists()  # a report never creates a store
    bad_grid = ["report", "--store", str(filled["store"]), "--grid", str(tmp_path / "x.toml")]
    assert main([*bad_grid, "--out", str(tmp_path)]) == 2
    assert "x.toml" in capsys.readouterr().err


# -- the grid files shipped in experiments/ --------------------------------------------------
def test_every_experiment_grid_loads() -> None:
    files = sorted(EXPERIMENTS.glob("*.toml"))
    grids = {p.stem: load_grid(p) for p in files}
    assert {"table2-mnist", "table2-quick", "table3-quick", "fig2-quick", "fig6-mnist"} <= set(
        grids
    )
    prefixes = ("table2", "table3", "fig2", "fig3", "fig4", "fig5", "fig6")
    # Grids of runs that no paper table or figure shows (results/README.md lists them).
    outside_report = {
        "datasets-paper",
        "safeguard-mnist",
        "robustness-matrix",
    }  # report --grid
    for name, grid in grids.items():
        assert grid.runs, name
        assert name.startswith(prefixes) or name in outside_report, (
            f"{name}: the report would not read it"
        )
        for r in grid.runs:
            cfg = r.config
            if cfg.attack in ("full_krum", "adaptive_krum"):
                assert cfg.clients - 2 * cfg.malicious - 1 >= 1
    for scale in ("mnist", "quick"):
        t2 = {r.run_id for r in grids[f"table2-{scale}"].runs}
        assert {r.run_id for r in grids[f"table3-{scale}"].runs} <= t2  # Table 3 reuses runs
        assert {r.run_id for r in grids[f"fig4-{scale}"].runs} <= t2
        cells = {(r.labels["attack"], r.labels["defense"]) for r in grids[f"table2-{scale}"].runs}
        assert cells == set(load_paper_values().table2.rows)
    quick = grids["table2-quick"].runs
    assert all(r.config.clients == 20 and r.config.malicious == 4 for r in quick)
    assert all(r.config.rounds == 60 for r in quick)


def test_robustness_rows_of_a_later_block_join_their_dataset(tmp_path: Path) -> None:
    from tesseract_fl.report.robustness import build_robustness

    grid = tmp_path / "two-blocks.toml"
    grid.write_text(
        'name = "two-blocks"\nseeds = [0]\n'
        '[datasets]\nmnist = "mnist-quick"\nbreast_cancer = "breast_cancer-quick"\n'
        '[[cells]]\nattack = ["none", "full_trim"]\ndefense = ["fedsgd", "median"]\n'
        "malicious_fraction = 0.2\n"
        '[[cells]]\nattack = ["fang_fltrust"]\ndefense = ["fltrust"]\n'
        "malicious_fraction = 0.2\n"
    )
    with ResultsStore(tmp_path / "s.sqlite") as store:
        table = build_robustness(RunReader(store), load_grid(grid))
    assert table.axes[:2] == ["dataset", "attack"]
    assert [s[:2] for s in table.settings] == [
        ("mnist", "none"),
        ("mnist", "full_trim"),
        ("mnist", "fang_fltrust"),
        ("breast_cancer", "none"),
        ("breast_cancer", "full_trim"),
        ("breast_cancer", "fang_fltrust"),
    ]
    assert (table.settings[2], "median") not in table.cells  # not planned, not missing


def test_table2_gives_another_client_optimizer_its_own_column(
    tmp_path: Path, tiny_data_dir: Path
) -> None:
    body = '[[cells]]\nattack = ["none"]\ndefense = ["fedsgd"]\n'
    paths = []
    for name, extra in (("table2-sgd", ""), ("table2-adam", 'client_optimizer = "adam"\n')):
        p = tmp_path / f"{name}.toml"
        p.write_text(_grid_text(name, body + extra, tiny_data_dir))
        paths.append(p)
    grids = [load_grid(p) for p in paths]
    store = tmp_path / "store.sqlite"
    for g in grids:
        for spec in g.runs:
            run_experiment(spec.config, store)
    with ResultsStore(store) as s:
        table = build_table2(RunReader(s), grids, load_paper_values().table2)
    # The Adam column sits right after its dataset's paper column.
    assert table.columns[table.columns.index("mnist") + 1] == "mnist@adam"
    sgd, adam = (table.cell(("none", "fedsgd"), c) for c in ("mnist", "mnist@adam"))
    sgd_id, adam_id = (g.runs[0].run_id for g in grids)
    assert sgd_id != adam_id
    assert sgd.used == [sgd_id] and adam.used == [adam_id]  # never averaged together
    assert sgd.ours is not None and adam.ours is not None
    assert sgd.ours.mean == pytest.approx(100 * _final_accuracy(store, sgd_id))
    assert adam.ours.mean == pytest.approx(100 * _final_accuracy(store, adam_id))
    assert sgd.paper == adam.paper == 92.45  # the paper's one value beside both
    # Cells no grid plans in the Adam column are empty, not "missing".
    assert not table.cell(("none", "faba"), "mnist@adam").relevant
    assert table.cell(("none", "faba"), "mnist").relevant
    assert "adam clients" in table.column_labels["mnist@adam"]
    assert any('client_optimizer = "adam"' in n for n in table.notes)
