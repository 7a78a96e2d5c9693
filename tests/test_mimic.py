"""Mimic (Karimireddy et al. 2022; ByzFL's Mimic): which benign client is copied, the warm-up,
its state across a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import interrupt_then_resume
from tesseract_fl.attacks import AttackContext, Mimic, make_attack, mimic
from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore


def _round(pull: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows 0 and 3 malicious; benign row i = base + pull_i * u + small noise."""
    gen = torch.Generator().manual_seed(seed)
    P = 40
    base, u = torch.randn(P, generator=gen), torch.randn(P, generator=gen)
    G = base + 0.01 * torch.randn(6, P, generator=gen)
    benign = [1, 2, 4, 5]
    for row, a in zip(benign, pull, strict=True):
        G[row] += a * u
    mal = torch.zeros(6, dtype=torch.bool)
    mal[[0, 3]] = True
    return G, mal


def test_epsilon_copies_that_benign_row() -> None:
    G, mal = _round([0.0, 1.0, 2.0, 3.0])
    out = Mimic(epsilon=2).poison(G, AttackContext(malicious=mal))
    assert torch.equal(out.rows, G[[4, 4]]) and out.record == {"mimicked": 4.0}  # benign #2
    torch.testing.assert_close(mimic(G[~mal], 3, epsilon=1), G[[2, 2, 2]])
    with pytest.raises(ConfigError, match="benign clients"):
        Mimic(epsilon=4).poison(G, AttackContext(malicious=mal))


def test_picks_the_client_pulling_hardest_along_the_top_direction() -> None:
    G, mal = _round([0.1, -0.2, 3.0, 0.4])  # benign row 4 is far out along u
    out = Mimic().poison(G, AttackContext(malicious=mal))
    assert out.record == {"mimicked": 4.0}
    assert torch.equal(out.rows, G[[4, 4]])
    G2, _ = _round([-2.5, 0.0, 0.1, 0.2], seed=0)  # now benign row 1 is the outlier
    assert Mimic().poison(G2, AttackContext(malicious=mal)).record == {"mimicked": 1.0}


def test_choice_is_fixed_after_the_warmup() -> None:
    attack = Mimic(warmup=2)
    ctx = AttackContext(malicious=_round([0.0] * 4)[1])
    first = [attack.poison(_round([0.1, -0.2, 3.0, 0.4], s)[0], ctx).record for s in range(2)]
    assert first == [{"mimicked": 4.0}] * 2
    # after the warm-up a different outlier does not move the choice
    G, _ = _round([-2.5, 0.0, 0.1, 0.2], seed=5)
    assert attack.poison(G, ctx).record == {"mimicked": 4.0}
    # the state carries it: a fresh attack loaded with it continues the same way
    again = Mimic(warmup=2)
    again.load_state_dict(attack.state_dict())
    assert again.poison(G, ctx).record == {"mimicked": 4.0}
    with pytest.raises(ConfigError):
        again.load_state_dict({"bogus": 1})


def test_parameters_validated() -> None:
    for bad in ({"epsilon": -1}, {"epsilon": 1.5}, {"warmup": 0}, {"warmup": True}):
        with pytest.raises(ConfigError):
            make_attack("mimic", **bad)


def test_resumed_mimic_run_matches_an_uninterrupted_one(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    cfg = resolve_config(
        "mnist", overrides=[*tiny_overrides, "attack=mimic", "defense=median", "checkpoint_every=2"]
    )
    whole = run_experiment(cfg, tmp_path / "a.sqlite")
    resumed = interrupt_then_resume(cfg, tmp_path / "b.sqlite", at=4)
    assert resumed.resumed_from == 4
    assert resumed.final_accuracy == whole.final_accuracy
    with ResultsStore(tmp_path / "a.sqlite") as a, ResultsStore(tmp_path / "b.sqlite") as b:
        assert a.attack_records(whole.run_id) == b.attack_records(resumed.run_id)
