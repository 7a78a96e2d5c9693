"""Backdoor attacks (BadNets, model replacement, DBA) and the attack success rate: triggers by
hand, batch poisoning, the boost, ASR by hand, and the store / summary / resume path."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import interrupt_then_resume
from tesseract_fl.attacks import (
    DBA,
    AttackContext,
    BackdoorAttack,
    BadNets,
    ModelReplacement,
    attack_success_rate,
    is_backdoor,
    make_attack,
)
from tesseract_fl.attacks.backdoor import dba_masks, square_mask, stamp
from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore


def test_square_trigger_by_hand() -> None:
    m = square_mask((1, 6, 6), 2)
    want = torch.zeros(1, 6, 6, dtype=torch.bool)
    want[0, 3:5, 3:5] = True  # one pixel in from the bottom-right corner
    assert torch.equal(m, want)
    assert torch.equal(square_mask((5,), 2), torch.tensor([False, False, False, True, True]))
    with pytest.raises(ConfigError, match="does not fit"):
        square_mask((1, 4, 4), 4)
    with pytest.raises(ConfigError, match="exceeds"):
        square_mask((3,), 4)


def test_dba_parts_are_disjoint_bars_whose_union_is_the_global_trigger() -> None:
    parts = dba_masks((1, 28, 28), 4, 4)
    assert [int(p.sum()) for p in parts] == [4, 4, 4, 4]
    assert int(torch.stack(parts).sum(dim=0).max()) == 1  # disjoint
    assert bool(parts[0][0, 1, 1:5].all()) and bool(parts[1][0, 1, 7:11].all())
    assert bool(parts[2][0, 3, 1:5].all()) and bool(parts[3][0, 3, 7:11].all())
    attack = DBA(size=4, parts=4)
    assert torch.equal(attack.global_mask((1, 28, 28)), torch.stack(parts).any(dim=0))
    assert torch.equal(attack.local_mask((1, 28, 28), 5), parts[1])  # attacker 5 -> part 1
    tab = dba_masks((10,), 2, 3)
    assert [torch.nonzero(p).flatten().tolist() for p in tab] == [[8, 9], [6, 7], [4, 5]]


def test_poison_batch_stamps_the_first_fraction_and_relabels_them() -> None:
    x = torch.zeros(2, 8, 1, 6, 6)
    y = torch.arange(16).view(2, 8) % 3
    x0, y0 = x.clone(), y.clone()
    px, py = BadNets(target=2, size=2, fraction=0.25).poison_batch(x, y, high=9.0)
    assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs untouched
    mask = square_mask((1, 6, 6), 2)
    for j in range(2):
        for b in range(8):
            if b < 2:  # round(0.25 * 8) = 2 poisoned samples per attacker
                assert torch.equal(px[j, b], stamp(x0[j, b], mask, 9.0))
                assert int(py[j, b]) == 2
            else:
                assert torch.equal(px[j, b], x0[j, b]) and int(py[j, b]) == int(y0[j, b])
    # DBA: attacker j stamps its own part only
    dx, _ = DBA(size=1, parts=2, fraction=1.0).poison_batch(x, y, high=1.0)
    parts = dba_masks((1, 6, 6), 1, 2)
    for j in range(2):
        assert torch.equal(dx[j, 0] == 1.0, parts[j])


def test_model_replacement_boosts_by_m_over_c() -> None:
    G = torch.randn(10, 7, generator=torch.Generator().manual_seed(0))
    mal = torch.zeros(10, dtype=torch.bool)
    mal[[2, 5]] = True
    out = ModelReplacement().poison(G, AttackContext(malicious=mal))
    torch.testing.assert_close(out.rows, G[mal] * 5.0)
    assert out.record == {"boost": 5.0}
    # the mean of the rows is then the backdoored gradient plus the benign sum over m
    H = G.clone()
    H[mal] = out.rows
    torch.testing.assert_close(H.mean(0), G[mal].sum(0) / 2 + G[~mal].sum(0) / 10)
    assert ModelReplacement(boost=3.0).poison(G, AttackContext(malicious=mal)).record == {
        "boost": 3.0
    }


class _Const(nn.Module):
    """Predicts ``cls`` when the input's last feature is above 0.5, else the first feature."""

    def __init__(self, cls: int, n: int = 3) -> None:
        super().__init__()
        self.cls, self.n = cls, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.n)
        triggered = x[:, -1] > 0.5
        out[triggered, self.cls] = 1.0
        out[~triggered, x[~triggered, 0].long()] = 1.0
        return out


def test_attack_success_rate_by_hand() -> None:
    x = torch.zeros(6, 4)
    x[:, 0] = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0, 2.0])  # the "clean prediction"
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    bd = BadNets(target=2, size=1)
    # every triggered sample goes to class 2; the two samples labelled 2 do not count
    assert attack_success_rate(_Const(2), x, y, bd, high=1.0, batch_size=4) == 1.0
    # a model that ignores the trigger: triggered samples keep their clean class
    assert attack_success_rate(_Const(2), x, y, bd, high=0.0, batch_size=4) == 0.0
    assert math.isnan(attack_success_rate(_Const(2), x[[2, 5]], y[[2, 5]], bd, high=1.0))


def test_registered_and_validated() -> None:
    for name in ("badnets", "model_replacement", "dba"):
        attack = make_attack(name)
        assert is_backdoor(attack) and isinstance(attack, BackdoorAttack)
    assert callable(getattr(make_attack("model_replacement"), "poison", None))
    for bad in ({"fraction": 0.0}, {"fraction": 1.5}, {"size": 0}, {"target": -1}):
        with pytest.raises(ConfigError):
            make_attack("badnets", **bad)
    with pytest.raises(ConfigError):
        make_attack("model_replacement", boost=-1.0)
    with pytest.raises(ConfigError):
        make_attack("dba", parts=0)


def _cfg(tiny_overrides: list[str], *extra: str) -> Any:
    return resolve_config("mnist", overrides=[*tiny_overrides, *extra])


def test_run_stores_attack_success_at_every_evaluation(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    store = tmp_path / "s.sqlite"
    cfg = _cfg(tiny_overrides, "attack=badnets", "defense=fedsgd")
    summary = run_experiment(cfg, store)
    with ResultsStore(store) as s:
        asr = s.attack_success(summary.run_id)
        run = s.get_run(summary.run_id)
    assert sorted(asr) == [2, 5]  # eval_every = 3 over 6 rounds
    assert all(v is not None and 0.0 <= v <= 1.0 for v in asr.values())
    assert summary.final_attack_success == asr[5]
    assert run is not None and run["summary"]["final_attack_success"] == asr[5]
    # other attacks store none, and their summaries do not carry the key
    plain = run_experiment(_cfg(tiny_overrides, "attack=sign_flip", "defense=fedsgd"), store)
    with ResultsStore(store) as s:
        assert s.attack_success(plain.run_id) == {}
        row = s.get_run(plain.run_id)
    assert row is not None and "final_attack_success" not in row["summary"]


def test_backdoor_moves_the_model_to_the_target(tmp_path: Path, tiny_overrides: list[str]) -> None:
    # Boosted and with every sample triggered, the attackers own the model: nearly every
    # triggered test image goes to the target (a model that never saw the trigger sends about
    # one in ten there, the target's share of the tiny dataset).
    store = tmp_path / "s.sqlite"
    attack = 'attack={name="model_replacement", fraction=1.0}'
    bd = run_experiment(_cfg(tiny_overrides, attack, "defense=fedsgd"), store)
    base = run_experiment(_cfg(tiny_overrides, "attack=none", "defense=fedsgd"), store)
    assert bd.final_attack_success is not None and base.final_attack_success is None
    assert bd.final_attack_success > 0.9


def test_resumed_backdoor_run_matches_an_uninterrupted_one(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    cfg = _cfg(tiny_overrides, "attack=dba", "defense=tesseract", "checkpoint_every=2")
    whole = run_experiment(cfg, tmp_path / "a.sqlite")
    resumed = interrupt_then_resume(cfg, tmp_path / "b.sqlite", at=4)
    assert resumed.resumed_from == 4
    assert resumed.final_attack_success == whole.final_attack_success
    with ResultsStore(tmp_path / "a.sqlite") as a, ResultsStore(tmp_path / "b.sqlite") as b:
        assert a.attack_success(whole.run_id) == b.attack_success(resumed.run_id)


def test_token_inputs_are_refused() -> None:
    import numpy as np

    from tesseract_fl.aggregators import make_aggregator
    from tesseract_fl.simulation.engine import FederatedData, FedSGDSimulation, SimulationSpec

    data = FederatedData(
        train_x=torch.zeros(8, 5, dtype=torch.long),
        train_y=torch.zeros(8, dtype=torch.long),
        test_x=torch.zeros(2, 5, dtype=torch.long),
        test_y=torch.zeros(2, dtype=torch.long),
        partitions=[np.arange(4), np.arange(4, 8)],
        num_classes=2,
    )
    spec = SimulationSpec(
        model=nn.Sequential(nn.Embedding(3, 2), nn.Flatten(), nn.Linear(10, 2)),
        data=data,
        aggregator=make_aggregator("fedsgd", num_clients=2, c_max=1),
        malicious_ids=[0],
        c_max=1,
        batch_size=2,
        lr_fn=lambda r: 0.1,
        attack=BadNets(),
    )
    with pytest.raises(ConfigError, match="token ids"):
        FedSGDSimulation(spec)


def test_flower_apps_refuse_backdoors(tmp_path: Path) -> None:
    from tesseract_fl.flower.collusion import ColludingAttackers

    with pytest.raises(ConfigError, match="simulator only"):
        ColludingAttackers(
            tmp_path, ModelReplacement(), num_clients=4, malicious_ids=[0], c_max=1, seed=0
        )


def test_report_shows_attack_success_beside_accuracy(tmp_path: Path, tiny_data_dir: Path) -> None:
    from tesseract_fl.experiments.grid import expand_grid
    from tesseract_fl.experiments.grid_runner import run_grid
    from tesseract_fl.report.robustness import robustness_md
    from tesseract_fl.report.runs import RunReader

    raw = {
        "name": "bd",
        "seeds": [0],
        "datasets": {"mnist": "mnist"},
        "set": {
            "data_dir": str(tiny_data_dir),
            "clients": 10,
            "rounds": 3,
            "batch_size": 8,
            "eval_every": 3,
        },
        "cells": [
            {
                "attack": ["badnets", "sign_flip"],
                "defense": ["fedsgd", "median"],
                "malicious_fraction": 0.2,
            }
        ],
    }
    grid = expand_grid(raw, name="bd")
    store = tmp_path / "s.sqlite"
    run_grid(grid, store)
    with ResultsStore(store, readonly=True) as s:
        written: list[Path] = []
        md = "\n".join(robustness_md(RunReader(s), grid, tmp_path / "rep", written))
        asr = {
            spec.labels["defense"]: s.get_run(spec.run_id)["summary"]["final_attack_success"]  # type: ignore[index]
            for spec in grid.runs
            if spec.labels["attack"] == "badnets"
        }
    section = md.split("### Backdoors: attack success rate")[1]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| attack | FedSGD | Median")
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| BadNets"]  # sign flipping has no ASR
    assert f"{100 * asr['fedsgd']:.2f} (n=1)" in rows[1]
    assert f"{100 * asr['median']:.2f} (n=1)" in rows[1]
    assert (tmp_path / "rep" / "figures" / "robustness-bd-asr.png").is_file()
    rep = tmp_path / "rep"
    assert written == [
        rep / "tables" / "robustness-bd.csv",
        rep / "figures" / "robustness-bd.png",
        rep / "figures" / "robustness-bd-asr.png",
    ]
    csv_text = (tmp_path / "rep" / "tables" / "robustness-bd.csv").read_text()
    assert "mean_attack_success" in csv_text.splitlines()[0]


def test_show_lists_attack_success(
    tmp_path: Path, tiny_overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tesseract_fl.cli import main

    store = tmp_path / "s.sqlite"
    summary = run_experiment(_cfg(tiny_overrides, "attack=dba", "defense=median"), store)
    with ResultsStore(store) as s:
        asr = s.attack_success(summary.run_id)
    assert main(["show", summary.run_id[:8], "--store", str(store), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [m["attack_success"] for m in shown["metrics"]] == [asr[2], asr[5]]
    assert main(["show", summary.run_id[:8], "--store", str(store)]) == 0
    assert "attack success %" in capsys.readouterr().out
