"""Finite numbers that escape the hostile-input policy: magnitudes near each dtype's limit,
squares that overflow, half precision sums of squares, and Bulyan's selection at large m.

The policy (``aggregators/base.py``, ``split_finite``) excludes rows with NaN/Inf; these tests
check that *finite* rows, however large, never turn into an inf/NaN update, weight or a round
that loops or fails, and that the fixes leave ordinary numbers alone.
"""

from __future__ import annotations

import math
import signal
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators import (
    FABA,
    AggregationContext,
    Bulyan,
    FedSGD,
    FLTrust,
    FoolsGold,
    Krum,
    Tesseract,
    fedsgd,
    make_aggregator,
    pairwise_sq_distances,
)
from tesseract_fl.aggregators.bulyan import bulyan, bulyan_select
from tesseract_fl.aggregators.faba import faba_removed
from tesseract_fl.aggregators.fltrust import fltrust, fltrust_weights
from tesseract_fl.aggregators.kernels.gram import gram64, nearest_sums_np, sq_distances
from tesseract_fl.aggregators.krum import krum
from tesseract_fl.aggregators.median import median
from tesseract_fl.aggregators.reference import flip_scores_reference
from tesseract_fl.aggregators.tesseract import flip_scores
from tesseract_fl.aggregators.trimmed_mean import trimmed_mean
from tesseract_fl.errors import UpdateError

F32_MAX = float(torch.finfo(torch.float32).max)
F64_MAX = float(torch.finfo(torch.float64).max)
TWO_M600 = 2.0**-600  # brings 1e200 down to ~2.4e19, where every square fits float64


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Turn a hang (an endless loop) into a test failure instead of a stuck suite."""

    def fail(signum: int, frame: Any) -> None:
        raise TimeoutError(f"did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


# --------------------------------------------------------------------------- FoolsGold


def test_foolsgold_terminates_on_a_float64_entry_beyond_float32() -> None:
    """A 1e300 entry does not fit the float32 histories: halving them could never make room,
    which looped forever. The row is now excluded like a NaN row; the others are aggregated."""
    torch.manual_seed(0)
    G = torch.randn(6, 5, dtype=torch.float64)
    G[2, 3] = 1e300
    agg = FoolsGold(num_clients=6)
    with time_limit(20):
        out = agg.aggregate(G)
        again = agg.aggregate(torch.randn(6, 5, dtype=torch.float64))
    assert out.diagnostics.excluded == [2] and float(out.weights[2]) == 0.0
    assert finite(out.update) and finite(out.weights) and finite(again.update)
    assert agg.history is not None and finite(agg.history)
    assert agg.rounds_seen.tolist() == [2, 2, 1, 2, 2, 2]  # client 2's history skipped once
    assert float(out.update.abs().max()) < 10  # the 1e300 row has no influence


def test_foolsgold_without_history_keeps_a_huge_float64_row() -> None:
    """Without float32 histories nothing needs excluding: cosines come from a power-of-two
    scaled Gram matrix, which gave an UpdateError before."""
    torch.manual_seed(1)
    G = torch.randn(6, 5, dtype=torch.float64)
    G[2] = 1e300 * G[2]
    out = FoolsGold(num_clients=6, use_history=False).aggregate(G)
    scaled = FoolsGold(num_clients=6, use_history=False).aggregate(G * TWO_M600)
    assert out.diagnostics.excluded == [] and finite(out.update) and finite(out.weights)
    assert torch.equal(out.diagnostics.scores, scaled.diagnostics.scores)  # the same cosines


# --------------------------------------------------------------------------- TESSERACT


def test_tesseract_float16_flip_scores_do_not_tie() -> None:
    """Squares of float16 entries above 256 exceed 65504: the scores were capped there, tied,
    and the penalties followed client ids. They are summed in float32 now."""
    m, P = 5, 10
    G = (torch.arange(1, m + 1, dtype=torch.float32)[:, None] * 200.0).repeat(1, P)
    G16 = G.half()
    ids = torch.tensor([2, 0, 4, 1, 3])  # ties by id would pick rows 1 (id 0) and 2 (id 4)
    fs = flip_scores(G16, torch.zeros(P))
    assert fs.dtype == torch.float32
    torch.testing.assert_close(fs.double(), flip_scores_reference(G16, torch.zeros(P)))
    out = Tesseract(num_clients=m, c_max=1).aggregate(G16, ids)
    assert out.diagnostics.penalized.tolist() == [True, False, False, False, True]
    ref = Tesseract(num_clients=m, c_max=1).aggregate(G16.float(), ids)
    assert torch.equal(out.diagnostics.flip_scores, ref.diagnostics.flip_scores)
    assert out.diagnostics.fs_high == float(fs[4]) and finite(out.update)


@pytest.mark.parametrize(("dtype", "huge"), [(torch.float32, 1e20), (torch.float64, 1e160)])
def test_tesseract_scores_beyond_the_dtype_keep_their_order(
    dtype: torch.dtype, huge: float
) -> None:
    """Rows whose flip-scores overflow the dtype are capped in the record, but ranked by their
    true (float64, power-of-two scaled) scores, not by client id."""
    m, P = 7, 8
    torch.manual_seed(2)
    G = torch.randn(m, P, dtype=dtype)
    G[2:] = huge * torch.arange(1, 6, dtype=dtype)[:, None]  # row 6 is the most extreme
    ids = torch.tensor([6, 5, 4, 3, 2, 1, 0])  # ties by id would penalize row 6 last
    out = Tesseract(num_clients=m, c_max=1).aggregate(G, ids)
    assert bool(out.diagnostics.penalized[6]) and not bool(out.diagnostics.penalized[2])
    assert finite(out.diagnostics.flip_scores) and finite(out.update) and finite(out.weights)


def test_tesseract_float32_scores_are_unchanged() -> None:
    """Ordinary float32/float64 inputs take the same path as before: exact G-dtype scores."""
    torch.manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        G = torch.randn(9, 300, dtype=dtype)
        s = torch.sign(torch.randn(300))
        fs = flip_scores(G, s)
        assert fs.dtype == dtype
        expected = torch.zeros(9, dtype=dtype)
        for i in range(9):
            u = (G[i] * s.to(dtype)).clamp(max=0)
            expected[i] = torch.linalg.vecdot(u[None], u[None])[0]
        torch.testing.assert_close(fs, expected, rtol=1e-6, atol=0.0)


# --------------------------------------------------------------------------- FedSGD


@pytest.mark.parametrize("n_samples", [None, "counts"])
def test_fedsgd_mean_of_float32_max_is_finite(n_samples: str | None) -> None:
    """Every row holds float32 max in column 0: the float32 product overflowed to inf."""
    m = 10 if n_samples is None else 7
    torch.manual_seed(4)
    G = torch.randn(m, 6)
    G[:, 0] = F32_MAX
    n = None if n_samples is None else torch.arange(1, m + 1, dtype=torch.float64)
    u = fedsgd(G, n)
    assert finite(u) and float(u[0]) == F32_MAX
    w = torch.full((m,), 1.0 / m) if n is None else (n / n.sum()).float()
    torch.testing.assert_close(u[1:], (w.double() @ G[:, 1:].double()).float())
    out = FedSGD().aggregate(G, ctx=AggregationContext(n_samples=n))
    assert torch.equal(out.update, u)


@pytest.mark.parametrize(("dtype", "m"), [(torch.float16, 27), (torch.float64, 11)])
def test_fedsgd_mean_near_the_dtype_limit(dtype: torch.dtype, m: int) -> None:
    """(The row counts are ones for which the plain product overflows.)"""
    big = float(torch.finfo(dtype).max)
    G = torch.full((m, 3), big, dtype=dtype)
    G[:, 2] = -big
    u = fedsgd(G)
    assert finite(u)
    expected = torch.tensor([big, big, -big], dtype=torch.float64)
    torch.testing.assert_close(u.double(), expected, rtol=1e-3, atol=0.0)


def test_fedsgd_ordinary_mean_is_the_plain_product() -> None:
    torch.manual_seed(5)
    G = torch.randn(13, 257)
    w = torch.full((13,), 1.0 / 13)
    assert torch.equal(fedsgd(G), w @ G)


# --------------------------------------------------------------------------- FLTrust


def unit_row_direction(G: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
    """FLTrust's update divided by ||g0|| (float64): the trust-weighted mean of unit rows."""
    G64, g64 = G.double(), g0.double()
    ts = (G64 @ g64 / G64.norm(dim=1) / g64.norm()).clamp(min=0)
    return (ts / ts.sum()) @ (G64 / G64.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("spread", [0.0, 1.0])
def test_fltrust_root_norm_beyond_float32_gives_a_finite_update(spread: float) -> None:
    """||g0|| = 3e39 is no float32 number: the rows rescaled to it summed to inf. The update
    is now formed from unit rows in float64: the exact one when its coordinates fit float32
    (spread 0), else shortened until its largest coordinate is float32 max (same direction)."""
    torch.manual_seed(6)
    P = 100
    G = 1.0 + spread * torch.randn(10, P)
    G[3] *= 1e-3  # a weight near float32 max
    g0 = torch.full((P,), 3e38)
    out = FLTrust().aggregate(G, ctx=AggregationContext(root_gradient=g0))
    assert finite(out.update) and finite(out.weights) and bool((out.weights >= 0).all())
    v = unit_row_direction(G, g0)
    exact = v * g0.double().norm()
    u = out.update.double()
    if float(exact.abs().max()) < F32_MAX:
        torch.testing.assert_close(u, exact, rtol=1e-6, atol=0.0)
    else:
        assert float(u.abs().max()) == F32_MAX
        torch.testing.assert_close(u / F32_MAX, v / float(v.abs().max()), rtol=1e-6, atol=1e-9)
    assert torch.equal(fltrust(G, g0), out.update)
    assert torch.equal(fltrust_weights(G, g0), out.weights)


def test_fltrust_float64_rows_whose_squares_overflow() -> None:
    """Rows of 1e200: their norms overflowed float64 (UpdateError). FLTrust is invariant to
    each row's scale, so the update equals that of the rows scaled by 2**-600."""
    torch.manual_seed(7)
    G = torch.randn(8, 5, dtype=torch.float64)
    G[:3] *= 1e200
    g0 = torch.randn(5, dtype=torch.float64)
    out = FLTrust().aggregate(G, ctx=AggregationContext(root_gradient=g0))
    G_small = G.clone()
    G_small[:3] *= TWO_M600
    ref = fltrust(G_small, g0)
    assert finite(out.update) and finite(out.weights)
    torch.testing.assert_close(out.update, ref, rtol=1e-12, atol=1e-12)
    # a root of 1e200 too: the update has its norm
    big_root = fltrust(G, g0 * 1e200)
    assert finite(big_root)
    torch.testing.assert_close(big_root / 1e200, ref, rtol=1e-12, atol=1e-12)


def test_fltrust_root_beyond_the_dtype_of_g_is_an_update_error() -> None:
    G = torch.randn(4, 3)
    g0 = torch.tensor([1e300, 0.0, 1.0], dtype=torch.float64)
    with pytest.raises(UpdateError, match=r"beyond the range of torch\.float32"):
        fltrust(G, g0)


def test_fltrust_float16_products_in_float32() -> None:
    torch.manual_seed(8)
    G = (torch.randn(6, 400) * 3).half()
    g0 = (torch.randn(400) * 3).half()
    assert torch.equal(fltrust_weights(G, g0), fltrust_weights(G.float(), g0.float()).half())


# --------------------------------------------------------------------------- Krum, Bulyan, FABA


def huge_matrix(seed: int, m: int = 11, P: int = 6) -> torch.Tensor:
    """float64 rows near 1e200 (squares overflow float64), a few farther out."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(m, P, dtype=torch.float64, generator=g) * 1e200
    G[:2] *= 40.0
    return G


@pytest.mark.parametrize("k", [1, 3])
def test_krum_selects_in_scaled_space(k: int) -> None:
    G = huge_matrix(9)
    out = Krum(c_max=2, k=k).aggregate(G)
    ref = Krum(c_max=2, k=k).aggregate(G * TWO_M600)
    assert torch.equal(out.diagnostics.selected, ref.diagnostics.selected)
    assert torch.equal(out.weights, ref.weights)
    assert finite(out.update) and finite(out.diagnostics.scores)
    if k == 1:
        assert torch.equal(out.update, G[int(out.diagnostics.selected[0])])
    else:
        torch.testing.assert_close(out.update * TWO_M600, ref.update, rtol=1e-15, atol=0.0)
    with pytest.raises(UpdateError, match="too large"):
        pairwise_sq_distances(G)  # the public building block stays strict


def test_multi_krum_mean_near_the_float64_limit() -> None:
    G = torch.full((7, 3), F64_MAX, dtype=torch.float64)
    G[:, 1] = -F64_MAX
    u = krum(G, 2, k=4)
    assert u.tolist() == [F64_MAX, -F64_MAX, F64_MAX]


def test_bulyan_selects_in_scaled_space() -> None:
    G = huge_matrix(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = Bulyan(c_max=2).aggregate(G)
        ref = Bulyan(c_max=2).aggregate(G * TWO_M600)
    assert torch.equal(out.diagnostics.selected, ref.diagnostics.selected)
    assert torch.equal(out.update * TWO_M600, ref.update)  # powers of two: exact
    assert torch.equal(out.weights, ref.weights)


def test_faba_removes_the_same_rows_in_scaled_space() -> None:
    G = huge_matrix(11)
    out = FABA(c_max=3).aggregate(G)
    ref = FABA(c_max=3).aggregate(G * TWO_M600)
    assert (
        out.diagnostics.extra["removed"] == ref.diagnostics.extra["removed"] == faba_removed(G, 3)
    )
    assert set(out.diagnostics.extra["removed"][:2]) == {0, 1}  # the two rows 40 times farther out
    torch.testing.assert_close(out.update * TWO_M600, ref.update, rtol=1e-15, atol=0.0)
    with pytest.raises(UpdateError, match="too large"):
        gram64(G)


def test_half_precision_distances_are_float32_sums() -> None:
    """Gram matrices of float16 rows used to be accumulated in float16 (3 decimal digits)."""
    torch.manual_seed(12)
    G = (torch.randn(9, 2000) * 0.5).half()
    assert torch.equal(pairwise_sq_distances(G), pairwise_sq_distances(G.float()))
    assert torch.equal(gram64(G), gram64(G.float()))
    assert torch.equal(krum(G, 2), krum(G.float(), 2).half())


# --------------------------------------------------------------------------- Bulyan selection


def reference_bulyan_select(D: torch.Tensor, c: int) -> list[int]:
    """Bulyan's selection literally: recompute Krum scores of the remaining rows per pick."""
    Dn = D.double().numpy()
    remaining = list(range(Dn.shape[0]))
    chosen: list[int] = []
    for _ in range(Dn.shape[0] - 2 * c):
        sub = Dn[np.ix_(remaining, remaining)]
        scores = nearest_sums_np(sub, max(1, len(remaining) - c - 2))
        chosen.append(remaining.pop(int(np.argmin(scores))))
    return chosen


def selection_matrix(rng: np.random.Generator, m: int, kind: int) -> torch.Tensor:
    X = rng.normal(size=(m, int(rng.integers(1, 6))))
    if kind == 1:  # many exact duplicates: tied scores
        X[rng.integers(m, size=m // 2 + 1)] = X[0]
    elif kind == 2:  # integer rows: many equal distances
        X = np.round(X * 2)
    elif kind == 3:  # a third of the rows far out
        X[: m // 3] *= 1e6
    return sq_distances(torch.from_numpy(X.astype(np.float32)))


def test_bulyan_select_matches_the_reference() -> None:
    rng = np.random.default_rng(13)
    for trial in range(160):
        m = int(rng.integers(1, 90))
        c = int(rng.integers(0, (m - 1) // 4 + 1)) if m > 1 else 0
        D = selection_matrix(rng, m, trial % 4)
        assert bulyan_select(D, c).tolist() == reference_bulyan_select(D, c), (trial, m, c)


def test_bulyan_select_matches_the_reference_on_hostile_distances() -> None:
    """Non-finite distance matrices (only via the public function) take the direct route."""
    rng = np.random.default_rng(14)
    D = selection_matrix(rng, 20, 0)
    D[3, :] = math.inf
    D[:, 3] = math.inf
    D[3, 3] = 0.0
    assert bulyan_select(D, 3).tolist() == reference_bulyan_select(D, 3)


def test_bulyan_at_a_thousand_clients() -> None:
    """m = 1000 with 200 duplicated attackers: the per-pick rescoring made this cubic."""
    torch.manual_seed(15)
    m, c = 1000, 200
    G = torch.randn(m, 10)
    G[:c] = G[0] + 3.0
    out = Bulyan(c_max=c).aggregate(G)
    sel = out.diagnostics.selected.tolist()
    assert len(sel) == len(set(sel)) == m - 2 * c
    D = sq_distances(G)
    assert sel[0] == int(np.argmin(nearest_sums_np(D.numpy(), m - c - 2)))
    assert finite(out.update) and abs(float(out.weights.sum()) - 1.0) < 1e-5


# --------------------------------------------------------------------------- coordinate-wise


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("rule", ["trimmed_mean", "median", "bulyan"])
def test_coordinatewise_means_near_the_dtype_limit(dtype: torch.dtype, rule: str) -> None:
    """Sums of kept values near the float64 limit overflowed (float32 was already rerun in
    float64); float16 is summed in float32 throughout. The result is the one computed on the
    values divided by 16 (no overflow there), times 16."""
    big = float(torch.finfo(dtype).max)
    m, P = 13, 5
    G = torch.full((m, P), big, dtype=dtype)
    G[::3] = big * 0.75
    G[:, 4] = -G[:, 4]
    fn: Callable[[torch.Tensor], torch.Tensor] = {
        "trimmed_mean": lambda X: trimmed_mean(X, 2),
        "median": median,
        "bulyan": lambda X: bulyan(X, 2, warn=False),
    }[rule]
    u = fn(G)
    assert u.dtype == dtype and finite(u)
    rtol = 1e-3 if dtype == torch.float16 else 1e-6
    torch.testing.assert_close(u.double(), fn(G / 16).double() * 16, rtol=rtol, atol=0.0)
    if rule == "trimmed_mean":  # keeps 3 values of 0.75 big and 6 of big per coordinate
        expected = torch.full((P,), big / 9 * (3 * 0.75 + 6), dtype=torch.float64)
        expected[4] = -expected[4]
        torch.testing.assert_close(u.double(), expected, rtol=rtol, atol=0.0)


# --------------------------------------------------------------------------- the property

NAMES = [
    "fedsgd",
    "tesseract",
    "trimmed_mean",
    "median",
    "krum",
    "bulyan",
    "faba",
    "foolsgold",
    "fltrust",
    "geomed",
    "centered_clipping",
    "meamed",
    "nnm+median",
    "dnc",
    "bucketing+median",
    "monna",
    "caf",
    "flame",
]
DTYPES = [torch.float16, torch.float32, torch.float64]
WIDTH = {torch.float16: 16, torch.float32: 32, torch.float64: 64}


def max_c(name: str, m: int) -> int:
    return {
        "tesseract": (m - 1) // 2,
        "trimmed_mean": (m - 1) // 2,
        "faba": (m - 1) // 2,
        "krum": m - 3,
        "bulyan": (m - 1) // 4,
        "meamed": (m - 1) // 2,
        "nnm+median": m - 1,
        "dnc": m - 1,
        "bucketing+median": 0,
        "monna": m - 1,
        "caf": (m - 1) // 2,
    }.get(name, 0)


def extreme_values(dtype: torch.dtype) -> st.SearchStrategy[float]:
    """Any finite value of ``dtype``, with its limits and the edges of squaring overweighted."""
    info = torch.finfo(dtype)
    edges = [
        0.0,
        1.0,
        float(info.tiny),
        float(info.max),
        float(info.max) * 0.75,
        math.sqrt(float(info.max)),
        math.sqrt(float(info.max)) * 4,
    ]
    specials = st.sampled_from([float(torch.tensor(v, dtype=dtype)) for v in edges])
    signs = st.sampled_from([1.0, -1.0])
    anything = st.floats(
        -float(info.max),
        float(info.max),
        allow_nan=False,
        width=WIDTH[dtype],  # type: ignore[arg-type]
    )
    return st.one_of(st.builds(lambda v, s: v * s, specials, signs), anything)


PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(data=st.data())
def test_any_finite_matrix_gives_a_finite_update(name: str, data: st.DataObject) -> None:
    """For any finite matrix (float16/32/64, up to the dtype's maximum) and a valid c_max,
    every defense returns a finite update and finite non-negative weights. This is stricter
    than "finite or UpdateError/ConfigError": with one dtype, finite values and a valid
    configuration nothing is malformed, so no rule may fail the round either (Krum, Bulyan,
    FABA and FLTrust raised UpdateError for float64 rows of 1e200)."""
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    m = data.draw(st.integers(3, 9), label="m")
    P = data.draw(st.integers(1, 5), label="P")
    values = extreme_values(dtype)
    rows = data.draw(
        st.lists(st.lists(values, min_size=P, max_size=P), min_size=m, max_size=m), label="G"
    )
    # a few rows copied from others: exact ties in every distance-based rule
    dups = data.draw(st.lists(st.integers(0, m - 1), max_size=3), label="dups")
    for j, i in enumerate(dups):
        rows[(i + j + 1) % m] = list(rows[i])
    G = torch.tensor(rows, dtype=dtype)
    assert finite(G)
    g0 = torch.tensor(data.draw(st.lists(values, min_size=P, max_size=P), label="g0"), dtype=dtype)
    c = data.draw(st.integers(0, max_c(name, m)), label="c_max")
    k = data.draw(st.integers(1, m), label="k") if name == "krum" else 1
    agg = make_aggregator(name, num_clients=m, c_max=c, **({"k": k} if name == "krum" else {}))
    ctx = AggregationContext(root_gradient=g0)
    with warnings.catch_warnings(), time_limit(20):
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):  # a second round uses TESSERACT's s_g and FoolsGold's history
            out = agg.aggregate(G, torch.arange(m), ctx)  # no UpdateError: nothing is malformed
            assert out.update.shape == (P,) and out.update.dtype == dtype
            assert finite(out.update), out.update
            assert out.weights.shape == (m,) and finite(out.weights), out.weights
            assert bool((out.weights >= 0).all())
            key = {"tesseract": "flip_scores", "foolsgold": "scores", "krum": "scores"}.get(name)
            if key is not None:
                scores = getattr(out.diagnostics, key)
                assert finite(scores), scores
