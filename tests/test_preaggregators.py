"""Pre-aggregators: the median-norm clip, its composition with every defense, and the
safeguard it gives against magnitude attacks in the simulator."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators import AggregationContext, PreAggregated, make_aggregator
from tesseract_fl.errors import ConfigError, TesseractFLError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.preaggregators import MedianNormClip, clip_to_median_norm, row_norms

DEFENSES = [
    "fedsgd",
    "tesseract",
    "trimmed_mean",
    "median",
    "krum",
    "bulyan",
    "faba",
    "foolsgold",
    "fltrust",
]


def test_clip_by_hand() -> None:
    # Norms 1, 2, 3, 40 -> median 2.5; multiplier 2 -> tau 5: only the last row is clipped.
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [24.0, 32.0]])
    out, scale, tau = clip_to_median_norm(G, 2.0)
    assert tau == 5.0
    assert torch.equal(out[:3], G[:3])  # untouched rows keep their bits
    assert torch.allclose(out[3], torch.tensor([3.0, 4.0]))
    assert scale.tolist() == [1.0, 1.0, 1.0, 5.0 / 40.0]


def test_non_finite_rows_pass_through_and_huge_rows_are_measured() -> None:
    G = torch.tensor(
        [[1.0, 1.0], [math.nan, 1.0], [1e200, -1e200], [2.0, 2.0]], dtype=torch.float64
    )
    norms = row_norms(G)
    assert norms[2] == pytest.approx(math.sqrt(2) * 1e200)
    out, scale, tau = clip_to_median_norm(G, 1.0)
    assert math.isnan(out[1, 0]) and scale[1] == 1.0
    assert bool(torch.isfinite(out[2]).all())
    assert float(torch.linalg.vector_norm(out[2])) == pytest.approx(tau)
    # float32 max in every coordinate: the norm overflows float32 but not our measure.
    big = torch.full((3, 4), torch.finfo(torch.float32).max)
    big[0] = 1.0
    big[1] = 1.0
    out32, _, _ = clip_to_median_norm(big, 3.0)
    assert bool(torch.isfinite(out32).all()) and float(out32[2].norm()) == pytest.approx(6.0)


@pytest.mark.parametrize("bad", [0.5, 0, -1, math.inf, math.nan, "3", True])
def test_bad_multiplier_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="multiplier"):
        MedianNormClip(bad)  # type: ignore[arg-type]


def test_composition_names_and_params() -> None:
    agg = make_aggregator("clip+tesseract", num_clients=10, c_max=2, clip={"multiplier": 2.0})
    assert isinstance(agg, PreAggregated) and agg.name == "clip+tesseract"
    assert agg.pres[0].multiplier == 2.0 and agg.c_max == 2
    assert callable(agg.public_state)  # the adaptive attacks read the rule's state
    with pytest.raises(ConfigError, match="unknown pre-aggregator 'clp'"):
        make_aggregator("clp+tesseract", num_clients=10, c_max=2)
    with pytest.raises(ConfigError, match="unknown aggregator"):
        make_aggregator("clip+tesserakt", num_clients=10, c_max=2)
    with pytest.raises(ConfigError, match="does not accept parameter"):
        make_aggregator("clip+tesseract", num_clients=10, c_max=2, clip={"tau": 2.0})
    cfg = resolve_config("mnist", overrides=["defense=clip+krum", "defense.clip={multiplier=4}"])
    assert cfg.defense == "clip+krum" and cfg.defense_params == {"clip": {"multiplier": 4}}
    with pytest.raises(TesseractFLError, match="multiplier"):
        resolve_config("mnist", overrides=["defense=clip+krum", "defense.clip={multiplier=0}"])


def test_state_round_trip() -> None:
    agg = make_aggregator("clip+tesseract", num_clients=6, c_max=1)
    G = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    agg.aggregate(G, torch.arange(6))
    state = agg.state_dict()
    other = make_aggregator("clip+tesseract", num_clients=6, c_max=1)
    other.load_state_dict(state)
    a, b = agg.aggregate(G, torch.arange(6)), other.aggregate(G, torch.arange(6))
    assert torch.equal(a.update, b.update) and torch.equal(a.weights, b.weights)


@pytest.mark.parametrize("name", DEFENSES)
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    magnitude=st.sampled_from([1e6, 1e20, 3e38]),
    bad=st.integers(1, 2),
)
def test_clip_bounds_every_defense(name: str, seed: int, magnitude: float, bad: int) -> None:
    """With the clip in front, ``bad`` huge rows move no rule's update past the clip bound."""
    m, P = 10, 8
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(m, P, generator=gen)
    G[:bad] = magnitude * torch.sign(torch.randn(bad, P, generator=gen))
    agg = make_aggregator(f"clip+{name}", num_clients=m, c_max=2)
    ctx = AggregationContext(root_gradient=G[5:].mean(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Bulyan's m < 4c+3 notice
        out = agg.aggregate(G, torch.arange(m), ctx)
    tau = out.diagnostics.extra["clip_tau"]
    assert bool(torch.isfinite(out.update).all())
    # Every rule's update is a combination of rows with total weight <= 1 (FLTrust rescales
    # rows to the root norm, which the clip bounds too): its norm stays within a few tau.
    limit = 3.0 * max(tau, float(ctx.root_gradient.norm()))
    assert float(out.update.norm()) <= limit


def _run(tmp_path: Path, tiny_overrides: list[str], *extra: str) -> dict:
    cfg = resolve_config("mnist", overrides=[*tiny_overrides, "rounds=6", *extra])
    return run_experiment(cfg, tmp_path / "s.sqlite")


@pytest.mark.parametrize(
    "attack",
    [["attack=gaussian", "attack.sigma=1e20"], ["attack=sign_flip", "attack.scale=1e6"]],
    ids=["gaussian-1e20", "sign_flip-1e6"],
)
def test_safeguard_holds_tesseract_under_magnitude_attacks(
    tmp_path: Path, tiny_overrides: list[str], attack: list[str]
) -> None:
    """Without the clip, one round of huge rows makes the model diverge; with it TESSERACT
    trains on."""
    plain = _run(tmp_path, tiny_overrides, "defense=tesseract", *attack)
    assert plain.diverged_at is not None
    clean = _run(tmp_path, tiny_overrides, "defense=tesseract")
    safe = _run(tmp_path, tiny_overrides, "defense=clip+tesseract", *attack)
    assert safe.final_loss < 1.2 * clean.final_loss
    assert safe.final_accuracy >= clean.final_accuracy - 0.15


def test_clip_changes_nothing_without_an_attack(tmp_path: Path, tiny_overrides: list[str]) -> None:
    """Benign rows lie within 3 median norms here: the clipped run is the plain run's bits."""
    plain = _run(tmp_path, tiny_overrides, "defense=tesseract")
    clipped = _run(tmp_path, tiny_overrides, "defense=clip+tesseract")
    assert clipped.final_loss == plain.final_loss
    assert clipped.run_id != plain.run_id
