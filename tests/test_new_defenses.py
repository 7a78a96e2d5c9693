"""Geometric median (RFA), centered clipping, Meamed and nearest-neighbour mixing: hand-computed
cases, agreement with the plain statements of their formulas, state, composition with
TESSERACT's filter and the pre-aggregators, and use in a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators import (
    CenteredClipping,
    GeometricMedian,
    Meamed,
    make_aggregator,
)
from tesseract_fl.aggregators.base import AggregationContext
from tesseract_fl.aggregators.reference import (
    centered_clipping_reference,
    geometric_median_reference,
    meamed_reference,
    nearest_neighbour_mixing_reference,
)
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.preaggregators import NearestNeighbourMixing


def _m(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _rand(m: int, P: int, seed: int) -> torch.Tensor:
    return torch.randn(m, P, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- by hand


def test_geometric_median_by_hand() -> None:
    """On a line the geometric median is the median: 0, 1, 10 -> 1; symmetric points -> centre."""
    G = _m([[0.0], [1.0], [10.0]])
    out = GeometricMedian(iters=200, nu=1e-12).aggregate(G)
    assert float(out.update[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(out.weights.sum()) == pytest.approx(1.0)
    square = _m([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [50.0, 50.0]])
    # the outlier pulls the mean to (10, 10); the geometric median stays near the square
    z = GeometricMedian(iters=100, nu=1e-9).aggregate(square).update
    assert float(torch.linalg.vector_norm(z)) < 0.6
    assert GeometricMedian(iters=0).aggregate(square).update.tolist() == [10.0, 10.0]


def test_centered_clipping_by_hand_and_its_reference_state() -> None:
    """From v = 0 with tau = 1: (3, 0) is clipped to (1, 0), (0, 0.5) is kept; the mean is
    (0.5, 0.25), which the next round starts from."""
    rule = CenteredClipping(tau=1.0, iters=1)
    out = rule.aggregate(_m([[3.0, 0.0], [0.0, 0.5]]))
    assert out.update.tolist() == [0.5, 0.25]
    assert out.weights.tolist() == pytest.approx([1.0 / 6.0, 0.5])
    assert rule.reference is not None and rule.reference.tolist() == [0.5, 0.25]
    again = CenteredClipping(tau=1.0)
    again.load_state_dict(rule.state_dict())
    G2 = _m([[0.5, 3.25], [0.5, 0.25]])  # (0, 3) from the reference is clipped to (0, 1)
    assert again.aggregate(G2).update.tolist() == [0.5, 0.75]
    with pytest.raises(UpdateError, match="columns"):
        again.aggregate(torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="tau"):
        CenteredClipping(tau=0.0)
    with pytest.raises(ConfigError, match="iters"):
        CenteredClipping(iters=0)


def test_meamed_by_hand() -> None:
    """Column 1, 2, 3, 100 with c = 1: median 2.5, nearest three 1, 2, 3 -> 2."""
    G = _m([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [100.0, -7.0]])
    out = Meamed(1).aggregate(G)
    assert out.update.tolist() == [2.0, 5.0]
    # each value kept counts 1/6 (3 per column, 2 columns); row 3 is kept in neither column
    assert out.weights.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
    with pytest.raises(ConfigError, match="m > 2"):
        Meamed(2).aggregate(G)


def test_nnm_by_hand() -> None:
    """Rows 0, 1, 10 with c = 1 (two neighbours each, itself included): 0.5, 0.5, 5.5."""
    out, rec = NearestNeighbourMixing(c_max=1).transform(_m([[0.0], [1.0], [10.0]]))
    assert out.flatten().tolist() == [0.5, 0.5, 5.5]
    assert rec == {"nnm_k": 2}
    # a NaN row passes through untouched and is nobody's neighbour
    G = _m([[0.0], [float("nan")], [1.0], [10.0]])
    out, _ = NearestNeighbourMixing(c_max=1).transform(G)
    assert out[[0, 2, 3]].flatten().tolist() == [0.5, 0.5, 5.5] and bool(out[1].isnan().all())


# ----------------------------------------------------------------------------- formulas


cases = st.tuples(st.integers(3, 10), st.integers(1, 12), st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(cases, st.data())
def test_rules_match_their_formulas(case: tuple[int, int, int], data: st.DataObject) -> None:
    m, P, seed = case
    G = _rand(m, P, seed).double()
    iters = data.draw(st.integers(0, 6), label="iters")
    for init in ("mean", "zero"):
        if init == "zero" and iters == 0:
            continue
        got = GeometricMedian(iters=iters, nu=1e-3, init=init).aggregate(G).update
        want = geometric_median_reference(G, iters, 1e-3, init=init)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    n = torch.rand(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    got = GeometricMedian(iters=3).aggregate(G, ctx=AggregationContext(n_samples=n)).update
    torch.testing.assert_close(got, geometric_median_reference(G, 3, 1e-6, alpha=n))

    tau = data.draw(st.floats(0.1, 5.0), label="tau")
    L = data.draw(st.integers(1, 3), label="iters_cc")
    got = CenteredClipping(tau=tau, iters=L).aggregate(G).update
    torch.testing.assert_close(got, centered_clipping_reference(G, torch.zeros(P), tau, L))

    c = data.draw(st.integers(0, (m - 1) // 2), label="c")
    method = data.draw(st.sampled_from(["auto", "window"]), label="method")
    torch.testing.assert_close(Meamed(c, method=method).aggregate(G).update, meamed_reference(G, c))

    cn = data.draw(st.integers(0, m - 1), label="c_nnm")
    mixed, _ = NearestNeighbourMixing(c_max=cn).transform(G)
    torch.testing.assert_close(mixed, nearest_neighbour_mixing_reference(G, cn))


def test_float32_rows_near_the_limit_give_finite_updates() -> None:
    """Rows of +-3e38 on opposite sides: their differences overflow float32, the rules do not."""
    G = _rand(8, 20, 1)
    G[0] = 3e38
    G[1] = -3e38
    for rule in (GeometricMedian(), CenteredClipping(tau=1.0, iters=3)):
        for _ in range(2):
            out = rule.aggregate(G)
            assert bool(torch.isfinite(out.update).all()) and bool(
                torch.isfinite(out.weights).all()
            )
    # the geometric median is not dragged to the huge rows
    assert float(GeometricMedian(iters=20).aggregate(G).update.abs().max()) < 10.0


# ----------------------------------------------------------------------------- composition


def test_composition_with_the_registry_and_tesseract() -> None:
    G = _rand(10, 30, 2)
    nnm = make_aggregator("nnm+trimmed_mean", num_clients=10, c_max=2)
    mixed, _ = NearestNeighbourMixing(c_max=2).transform(G)
    plain = make_aggregator("trimmed_mean", num_clients=10, c_max=2)
    torch.testing.assert_close(nnm.aggregate(G).update, plain.aggregate(mixed).update)
    assert nnm.aggregate(G).diagnostics.extra["nnm_k"] == 8
    # TESSERACT's filter hands the surviving clients to the new rules
    tess = make_aggregator("tesseract", num_clients=10, c_max=2, filter_then="geomed")
    out = tess.aggregate(G)
    assert out.diagnostics.extra["inner"].extra["steps"] == 4
    torch.testing.assert_close(out.update, GeometricMedian().aggregate(G).update)
    stacked = make_aggregator("clip+nnm+meamed", num_clients=10, c_max=2)
    assert stacked.name == "clip+nnm+meamed" and stacked.aggregate(G).update.shape == (30,)
    with pytest.raises(ConfigError, match="does not accept"):
        make_aggregator("geomed", num_clients=10, c_max=2, tau=1.0)


@pytest.mark.parametrize("defense", ["geomed", "centered_clipping", "meamed", "nnm+krum"])
def test_new_defenses_run_end_to_end_and_resume_state(
    tmp_path: Path, tiny_overrides: list[str], defense: str
) -> None:
    cfg = resolve_config(
        "mnist", overrides=[*tiny_overrides, "rounds=4", f'defense="{defense}"', "attack=full_trim"]
    )
    summary = run_experiment(cfg, tmp_path / "s.sqlite")
    assert summary.final_accuracy is not None and 0.0 <= summary.final_accuracy <= 1.0


@settings(max_examples=30, deadline=None)
@given(cases, st.sampled_from(["auto", "network", "sort", "torch"]), st.data())
def test_meamed_kernel_forms_agree(
    case: tuple[int, int, int], method: str, data: st.DataObject
) -> None:
    """Every sorting form of the kernel gives the formula's values (float32 input)."""
    from tesseract_fl.aggregators.kernels.sorting import nearest_median_mean_kernel

    m, P, seed = case
    G = _rand(m, P, seed)
    c = data.draw(st.integers(0, (m - 1) // 2), label="c")
    got = nearest_median_mean_kernel(G, m - c, method=method)
    torch.testing.assert_close(got.double(), meamed_reference(G, c), rtol=1e-5, atol=1e-5)


def test_dnc_removes_the_outlier_and_resumes_its_draws() -> None:
    """Four rows near (1, 1, ...) and one far along a direction: DnC (c_max = 1) keeps the four
    and averages them; a copy restored from the state draws the same coordinates next."""
    from tesseract_fl.aggregators import DnC

    G = torch.ones(5, 40, dtype=torch.float64) + 0.01 * _rand(5, 40, 3).double()
    G[2] += 5.0 * torch.linspace(-1, 1, 40, dtype=torch.float64)
    rule = DnC(c_max=1, b=16)
    out = rule.aggregate(G)
    assert out.diagnostics.selected is not None
    assert out.diagnostics.selected.tolist() == [0, 1, 3, 4]
    torch.testing.assert_close(out.update, G[[0, 1, 3, 4]].mean(0))
    assert out.weights.tolist() == [0.25, 0.25, 0.0, 0.25, 0.25]
    twin = DnC(c_max=1, b=16)
    twin.load_state_dict(rule.state_dict())
    G2 = _rand(5, 40, 4).double()
    a, b = rule.aggregate(G2), twin.aggregate(G2)
    assert torch.equal(a.update, b.update) and torch.equal(
        a.diagnostics.scores, b.diagnostics.scores
    )
    with pytest.raises(ConfigError, match="remove"):
        DnC(c_max=5).aggregate(G)


@settings(max_examples=30, deadline=None)
@given(cases)
def test_dnc_scores_match_the_plain_power_iteration(case: tuple[int, int, int]) -> None:
    from tesseract_fl.aggregators.dnc import dnc_scores
    from tesseract_fl.aggregators.reference import dnc_scores_reference

    m, P, seed = case
    X = _rand(m, P, seed).double()
    X[0] += 3.0  # a clear top direction, so the power iteration converges
    torch.testing.assert_close(dnc_scores(X), dnc_scores_reference(X), rtol=1e-6, atol=1e-9)


def test_bucketing_averages_random_buckets_and_maps_weights_back() -> None:
    """Buckets of s rows of a seeded permutation; the rule sees their means, the clients get
    their bucket's weight split evenly; the state replays the permutation; counts are summed."""
    from tesseract_fl.preaggregators import Bucketing

    G = _rand(7, 5, 8).double()
    rule = make_aggregator("bucketing+fedsgd", num_clients=7, c_max=0)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    buckets = [perm[0:2], perm[2:4], perm[4:6], perm[6:7]]  # ceil(7 / 2) = 4, the last of 1
    want = torch.stack([G[b].mean(0) for b in buckets]).mean(0)
    out = rule.aggregate(G)
    torch.testing.assert_close(out.update, want)
    per_client = torch.zeros(7, dtype=torch.float64)
    for b in buckets:
        per_client[b] = 0.25 / b.numel()
    torch.testing.assert_close(out.weights, per_client)
    assert out.diagnostics.extra["buckets"] == 4 and out.diagnostics.flip_scores is None
    # FedSGD behind bucketing weights each bucket by its members' summed counts
    n = torch.arange(1.0, 8.0)
    counted = make_aggregator("bucketing+fedsgd", num_clients=7, c_max=0)
    got = counted.aggregate(G, ctx=AggregationContext(n_samples=n)).update
    sums = torch.stack([n[b].sum() for b in buckets]).double()
    means = torch.stack([G[b].mean(0) for b in buckets])
    torch.testing.assert_close(got, (sums / sums.sum()) @ means)
    # the generator is the state: a restored copy draws the next permutation too
    a = Bucketing(s=3)
    a.mix(G)
    b = Bucketing(s=3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.mix(G)[1], b.mix(G)[1])
    # a NaN row makes its bucket hostile: that bucket's clients all get weight 0
    H = G.clone()
    H[3, 0] = float("nan")
    med = make_aggregator("bucketing+median", num_clients=7, c_max=0).aggregate(H)
    assert med.diagnostics.excluded == [3] and float(med.weights[3]) == 0.0
    assert bool(torch.isfinite(med.update).all())
    with pytest.raises(ConfigError, match="in front of a rule"):
        Bucketing().transform(G)
