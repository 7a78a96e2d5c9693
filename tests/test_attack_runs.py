"""Attacks inside the simulator: engine hooks, label flipping, Figure 2 modes, store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

import tesseract_fl.simulation.engine as engine_mod
from tesseract_fl.attacks import ATTACKS, NEEDS_DEFENSE_STATE, make_attack, needs_root_gradient
from tesseract_fl.attacks.base import Poison
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import build_simulation, run_experiment
from tesseract_fl.experiments.store import ResultsStore


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_attack_runs_and_records(
    tmp_path: Path, tiny_overrides: list[str], attack: str
) -> None:
    extra = ["defense=fltrust"] if needs_root_gradient(make_attack(attack)) else []
    cfg = resolve_config(
        "mnist", overrides=[*tiny_overrides, f"attack={attack}", "rounds=3", *extra]
    )
    summary = run_experiment(cfg, tmp_path / "s.sqlite")
    assert summary.attack == attack and 0.0 <= summary.final_accuracy <= 1.0
    with ResultsStore(tmp_path / "s.sqlite") as s:
        records = s.attack_records(summary.run_id)
        run = s.get_run(summary.run_id)
    assert run is not None
    ids = run["config"]["resolved"]["malicious_ids"]
    assert len(ids) == 2 and ids == sorted(ids)
    if attack == "full_krum":
        assert sorted(records) == [0, 1, 2]
        assert all(r["lambda"] is not None and r["lambda"] >= 0 for r in records.values())
    if attack in NEEDS_DEFENSE_STATE:
        assert all(0.0 <= r["restored"] <= 1.0 for r in records.values())


def test_full_krum_sends_rows_krum_selects(tiny_overrides: list[str]) -> None:
    cfg = resolve_config(
        "mnist", overrides=[*tiny_overrides, "defense=krum", "attack=full_krum", "rounds=2"]
    )
    sim = build_simulation(cfg)
    for _ in range(2):
        res = sim.step()
        if res.attack["lambda"] > 0:
            chosen = int(res.aggregate.diagnostics.selected[0])
            assert bool(sim.malicious[chosen])


def test_label_flipping_changes_only_malicious_labels(
    tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.Tensor] = []
    real = engine_mod.client_gradients

    def spy(model, x, y, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(y.clone())
        return real(model, x, y, *args, **kwargs)

    monkeypatch.setattr(engine_mod, "client_gradients", spy)
    labels = {}
    for attack in ("none", "label_flip", "targeted_label_flip"):
        sim = build_simulation(
            resolve_config("mnist", overrides=[*tiny_overrides, f"attack={attack}"])
        )
        sim.step()
        labels[attack] = seen.pop()
    mal = sim.malicious
    clean = labels["none"]
    assert torch.equal(labels["label_flip"][~mal], clean[~mal])
    assert torch.equal(labels["label_flip"][mal], 9 - clean[mal])
    assert torch.equal(labels["targeted_label_flip"][~mal], clean[~mal])
    expected = torch.where(clean[mal] == 7, torch.ones_like(clean[mal]), clean[mal])
    assert torch.equal(labels["targeted_label_flip"][mal], expected)
    # the training data itself is untouched
    assert torch.equal(
        sim.train_y, build_simulation(resolve_config("mnist", overrides=tiny_overrides)).train_y
    )


@pytest.mark.parametrize("group", ["benign", "malicious"])
def test_aggregate_only_updates_from_one_group_and_scores_everyone(
    tiny_overrides: list[str], group: str
) -> None:
    over = [*tiny_overrides, "defense=fedsgd", "attack=full_trim", f"aggregate_only={group}"]
    sim = build_simulation(resolve_config("mnist", overrides=over))
    sim.step()
    captured: dict[str, torch.Tensor] = {}
    real = sim.aggregator.aggregate

    def spy(G, ids=None, ctx=None):  # type: ignore[no-untyped-def]
        captured["G"], captured["ids"] = G.clone(), torch.as_tensor(ids).clone()
        return real(G, ids, ctx)

    sim.aggregator.aggregate = spy  # type: ignore[method-assign]
    s_prev = sim.s_g.clone()
    res = sim.step()
    rows = sim.malicious if group == "malicious" else ~sim.malicious
    assert torch.equal(captured["ids"], sim.client_ids[rows])
    assert res.flip_scores is not None and res.flip_scores.shape == (10,)
    w = res.aggregate.weights
    assert bool((w[~rows] == 0).all()) and float(w[rows].sum()) == pytest.approx(1.0, abs=1e-5)
    # everyone's flip-score is against the previous global update's sign
    G_all = torch.zeros(10, captured["G"].shape[1])
    G_all[rows] = captured["G"]
    fs = (G_all**2 * (torch.sign(G_all) != s_prev)).sum(1)
    assert torch.allclose(res.flip_scores[rows], fs[rows], rtol=1e-4)
    assert bool((res.flip_scores[~rows] > 0).all())
    assert torch.equal(sim.s_g, torch.sign(res.aggregate.update))


def test_aggregate_only_with_tesseract_records_reputations_of_everyone(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    over = [*tiny_overrides, "clients=12", "malicious=2", "c_max=1", "aggregate_only=benign"]
    summary = run_experiment(resolve_config("mnist", overrides=over), tmp_path / "s.sqlite")
    with ResultsStore(tmp_path / "s.sqlite") as s:
        last = [r for r in s.client_records(summary.run_id) if r["round"] == 5]
    assert len(last) == 12
    assert all(r["flip_score"] is not None and r["reputation"] is not None for r in last)
    assert all(r["weight"] == 0 for r in last if r["malicious"])
    assert all(r["reputation"] == 0 for r in last if r["malicious"])  # never aggregated


def test_flip_scores_recorded_for_defenses_without_them(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    cfg = resolve_config("mnist", overrides=[*tiny_overrides, "defense=median"])
    summary = run_experiment(cfg, tmp_path / "s.sqlite")
    with ResultsStore(tmp_path / "s.sqlite") as s:
        recs = s.client_records(summary.run_id)
    assert recs and all(r["flip_score"] is not None and r["flip_score"] >= 0 for r in recs)


class _BadAttack:
    name = "bad"

    def __init__(self, rows: torch.Tensor | None = None, nan: bool = False) -> None:
        self.rows, self.nan = rows, nan

    def poison(self, G: torch.Tensor, ctx: object) -> Poison:
        c = int(ctx.malicious.sum())  # type: ignore[attr-defined]
        rows = torch.zeros(c, G.shape[1] + 1) if self.rows is None else self.rows
        if self.nan:
            rows = torch.full((c, G.shape[1]), float("nan"))
        return Poison(rows)


def test_bad_attack_output_is_a_clear_error(tiny_overrides: list[str]) -> None:
    sim = build_simulation(resolve_config("mnist", overrides=tiny_overrides))
    sim.attack = _BadAttack()
    with pytest.raises(UpdateError, match="expected"):
        sim.step()


def test_nan_attack_rows_are_excluded_not_fatal(tiny_overrides: list[str]) -> None:
    """Hostile-row policy: NaN rows from malicious clients get weight 0; the model stays finite."""
    for defense in ("fedsgd", "tesseract", "krum"):
        sim = build_simulation(
            resolve_config("mnist", overrides=[*tiny_overrides, f"defense={defense}"])
        )
        sim.attack = _BadAttack(nan=True)
        result = sim.step()
        bad = sim.malicious.nonzero().flatten().tolist()
        assert result.aggregate.diagnostics.excluded == bad
        assert float(result.aggregate.weights[bad].abs().sum()) == 0.0
        assert all(bool(torch.isfinite(p).all()) for p in sim.model.parameters())


def test_same_seed_same_attack_numbers(tmp_path: Path, tiny_overrides: list[str]) -> None:
    over = [*tiny_overrides, "defense=krum", "attack=full_krum"]
    a = run_experiment(resolve_config("mnist", overrides=over), tmp_path / "a.sqlite")
    b = run_experiment(resolve_config("mnist", overrides=over), tmp_path / "b.sqlite")
    assert a.final_accuracy == b.final_accuracy and a.final_loss == b.final_loss
    with ResultsStore(tmp_path / "a.sqlite") as sa, ResultsStore(tmp_path / "b.sqlite") as sb:
        assert sa.attack_records(a.run_id) == sb.attack_records(b.run_id)


def test_explicit_malicious_ids(tmp_path: Path, tiny_overrides: list[str]) -> None:
    over = [*tiny_overrides, "attack=full_trim", "malicious_ids=[7, 1]"]
    cfg = resolve_config("mnist", overrides=over)
    sim = build_simulation(cfg)
    assert sim.client_ids[sim.malicious].tolist() == [1, 7]
    summary = run_experiment(cfg, tmp_path / "s.sqlite")
    con = sqlite3.connect(tmp_path / "s.sqlite")
    stored = json.loads(con.execute("SELECT config FROM runs").fetchone()[0])
    assert stored["resolved"]["malicious_ids"] == [1, 7]
    mal = {r[0] for r in con.execute("SELECT client FROM clients WHERE malicious = 1")}
    assert mal == {1, 7} and summary.malicious == 2


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["attack=full_trimm"], "full_trim"),
        (["attack=full_trim", "attack.strength=2"], "accepted"),
        (["attack=adaptive_krum", "defense=krum"], "tesseract"),
        (["attack=full_krum", "clients=10", "malicious=5", "c_max=2"], "2*malicious"),
        (["malicious_ids=[1, 1]"], "distinct"),
        (["malicious_ids=[1, 2, 3]"], "malicious = 2"),
        (["malicious_ids=[1, 20]"], "[0, 10)"),
        (["malicious_ids='x'"], "list"),
        (["aggregate_only=some"], "benign"),
        (["aggregate_only=malicious", "malicious=0", "c_max=0"], "malicious >= 1"),
        (["aggregate_only=malicious"], "tesseract"),
        (["attack=targeted_label_flip", "attack.source=3", "attack.target=3"], "differ"),
    ],
)
def test_attack_config_errors(tiny_overrides: list[str], overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_config("mnist", overrides=[*tiny_overrides, *overrides])
    assert needle in str(err.value)


def test_new_keys_at_defaults_keep_run_ids(tiny_overrides: list[str]) -> None:
    base = resolve_config("mnist", overrides=tiny_overrides)
    same = resolve_config("mnist", overrides=[*tiny_overrides, "aggregate_only=all"])
    assert base.run_id() == same.run_id()
    d = base.to_dict()
    assert "aggregate_only" in d and "malicious_ids" in d
    other = resolve_config("mnist", overrides=[*tiny_overrides, "malicious_ids=[0, 1]"])
    assert other.run_id() != base.run_id()


def test_cli_demo_compares_fedsgd_and_tesseract(
    tmp_path: Path, tiny_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tesseract_fl.cli import main

    over = ["clients=10", "malicious=2", "rounds=3", "batch_size=8", "eval_every=3"]
    args = ["demo", "--quiet", "--json", "--store", str(tmp_path / "s.sqlite")]
    args += ["--data-dir", str(tiny_data_dir)] + [a for o in over for a in ("--set", o)]
    assert main(args) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["defense"] for r in runs] == ["fedsgd", "tesseract"]
    assert all(r["attack"] == "full_trim" and r["rounds"] == 3 for r in runs)
    assert main(args[:2] + args[3:]) == 0  # the table; both runs come from the store
    out = capsys.readouterr().out
    assert "fedsgd" in out and "tesseract" in out and "cached" in out


def test_cli_demo_default_store_is_its_own(
    tmp_path: Path,
    tiny_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --store the demo writes runs/demo.sqlite, never the committed results store."""
    from tesseract_fl.cli import DEMO_STORE, main

    monkeypatch.chdir(tmp_path)
    over = ["clients=10", "malicious=2", "rounds=2", "batch_size=8", "eval_every=2"]
    args = ["demo", "--quiet", "--json", "--data-dir", str(tiny_data_dir)]
    assert main(args + [a for o in over for a in ("--set", o)]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert {Path(r["store"]).resolve() for r in runs} == {(tmp_path / DEMO_STORE).resolve()}
    assert (tmp_path / DEMO_STORE).is_file()
    assert not (tmp_path / "results" / "store.sqlite").exists()


def test_parameters_at_their_defaults_do_not_change_the_run_id(tiny_overrides: list[str]) -> None:
    plain = resolve_config("mnist", overrides=[*tiny_overrides, "defense=tesseract"])
    explicit = resolve_config("mnist", overrides=[*tiny_overrides, "defense.mu_d=0.99"])
    assert plain.defense_params == {} and explicit.defense_params == {"mu_d": 0.99}
    assert plain.run_id() == explicit.run_id()
    changed = resolve_config("mnist", overrides=[*tiny_overrides, "defense.mu_d=0.9"])
    assert changed.run_id() != plain.run_id()
    a = resolve_config("mnist", overrides=[*tiny_overrides, "attack=targeted_label_flip"])
    b = resolve_config(
        "mnist", overrides=[*tiny_overrides, "attack=targeted_label_flip", "attack.source=7"]
    )
    c = resolve_config(
        "mnist", overrides=[*tiny_overrides, "attack=targeted_label_flip", "attack.source=3"]
    )
    assert a.run_id() == b.run_id() != c.run_id()
