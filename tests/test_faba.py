"""FABA (Xia et al. 2019): removal rule, incremental Gram form vs the naive form, class."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators.base import Aggregator
from tesseract_fl.aggregators.faba import FABA, faba, faba_removed, faba_select
from tesseract_fl.aggregators.kernels.gram import gram64
from tesseract_fl.errors import ConfigError, UpdateError


def faba_naive(G: torch.Tensor, c_max: int) -> tuple[list[int], torch.Tensor]:
    """Literal FABA in float64: recompute the mean and all distances after every removal."""
    G64 = G.double()
    alive = list(range(G.shape[0]))
    removed = []
    for _ in range(c_max):
        mean = G64[alive].mean(0)
        d = ((G64[alive] - mean) ** 2).sum(1)
        r = alive[int(d.argmax())]
        removed.append(r)
        alive.remove(r)
    return removed, G64[alive].mean(0)


def test_gram64_matches_float64_product() -> None:
    torch.manual_seed(0)
    for P in (1, 4095, 4096, 10_000):
        G = torch.randn(5, P)
        ref = G.double() @ G.double().T
        torch.testing.assert_close(gram64(G), ref, rtol=1e-6, atol=1e-6 * P)


def test_hand_computed_case() -> None:
    G = torch.tensor([[0.0], [1.0], [2.0], [10.0], [1.5]])
    # all 5: mean 2.9, farthest 10 (row 3); then {0,1,2,1.5}: mean 1.125, farthest 0 (row 0)
    assert faba_removed(G, 2) == [3, 0]
    torch.testing.assert_close(faba(G, 2), torch.tensor([(1.0 + 2.0 + 1.5) / 3]))
    assert faba_select(G, 2).tolist() == [False, True, True, False, True]
    # {0, 1, 2, 10}: mean 3.25, 10 goes; c_max = 1 of 4 rows.
    G2 = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    assert faba_removed(G2, 1) == [3]
    torch.testing.assert_close(faba(G2, 1), torch.tensor([1.0]))


def test_ties_go_to_the_lowest_row() -> None:
    # {-1, 1, 0}: mean 0, rows 0 and 1 are equally far -> row 0 is removed.
    G = torch.tensor([[-1.0], [1.0], [0.0]])
    assert faba_removed(G, 1) == [0]


def test_c_max_zero_is_plain_mean() -> None:
    G = torch.randn(6, 7)
    torch.testing.assert_close(faba(G, 0), G.mean(0))
    assert faba_select(G, 0).all()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.integers(1, 12),
    P=st.integers(1, 9),
    frac=st.floats(0.0, 0.49),
    outlier_scale=st.sampled_from([1.0, 5.0, 100.0]),
)
def test_incremental_equals_naive(
    seed: int, m: int, P: int, frac: float, outlier_scale: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(m, P, generator=gen, dtype=torch.float64)
    G[: m // 3] *= outlier_scale
    c = min(int(frac * m), (m - 1) // 2)
    removed_ref, mean_ref = faba_naive(G, c)
    removed = faba_removed(G, c)
    assert removed == removed_ref
    assert len(set(removed)) == c
    kept = faba_select(G, c)
    assert int((~kept).sum()) == c
    torch.testing.assert_close(faba(G, c), mean_ref)
    out = FABA(c_max=c).aggregate(G)
    assert int((out.weights == 0).sum()) == c
    torch.testing.assert_close(out.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(out.update, mean_ref)


def test_float32_removes_obvious_outliers() -> None:
    torch.manual_seed(1)
    G = torch.randn(20, 5000) + 3.0  # common direction: Gram cancellation is exercised
    G[7] += 4.0
    G[13] -= 50.0
    assert set(faba_removed(G, 2)) == {7, 13}
    kept = faba_select(G, 2)
    torch.testing.assert_close(faba(G, 2), G[kept].mean(0))
    removed_ref, _ = faba_naive(G, 4)
    assert faba_removed(G, 4) == removed_ref


def test_class_weights_and_record() -> None:
    G = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0], [1.0, 1.0]])
    agg = FABA(c_max=1)
    assert isinstance(agg, Aggregator) and agg.name == "faba"
    out = agg.aggregate(G, client_ids=torch.tensor([10, 11, 12, 13, 14]))
    torch.testing.assert_close(out.weights, torch.tensor([0.25, 0.25, 0.25, 0.0, 0.25]))
    torch.testing.assert_close(out.update, torch.tensor([0.5, 0.5]))
    assert out.diagnostics.extra["removed"] == [3]
    assert out.diagnostics.extra["removed_clients"] == [13]
    assert out.diagnostics.extra["kept"].tolist() == [True, True, True, False, True]
    assert agg.state_dict() == {}  # stateless between rounds
    with pytest.raises(ConfigError, match="stateless"):
        agg.load_state_dict({"c_max": 1})


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="c_max"):
        FABA(c_max=-1)
    with pytest.raises(ConfigError, match="c_max"):
        FABA(c_max=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="c_max < m/2"):
        faba(torch.randn(4, 3), 2)
    with pytest.raises(ConfigError, match="c_max < m/2"):
        FABA(c_max=3).aggregate(torch.randn(6, 3))
    G = torch.randn(5, 3)
    G[2, 1] = float("nan")
    # hostile-row policy: the NaN row is excluded, FABA runs on the other four
    torch.testing.assert_close(faba(G, 1), faba(G[[0, 1, 3, 4]], 1))
    assert FABA(c_max=1).aggregate(G).diagnostics.excluded == [2]
    with pytest.raises(UpdateError):
        faba(torch.randn(5), 1)
    with pytest.raises(UpdateError, match="client_ids"):
        FABA(c_max=1).aggregate(torch.randn(5, 3), client_ids=[1, 2])


def test_huge_entries_fall_back_to_float64() -> None:
    G = torch.tensor([[1e30, 0.0], [0.0, 1e30], [1e30, 1e30], [0.0, 0.0], [1.0, 0.0]])
    assert torch.isfinite(gram64(G)).all()
    removed_ref, mean_ref = faba_naive(G, 2)
    assert faba_removed(G, 2) == removed_ref
    torch.testing.assert_close(faba(G, 2), mean_ref.float())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("c", [0, 1, 2])
def test_non_finite_rows_are_excluded(bad: float, c: int) -> None:
    G = torch.randn(6, 5000)
    G[4, 4321] = bad
    rest = G[[0, 1, 2, 3, 5]]
    c_eff = min(c, 2)
    torch.testing.assert_close(faba(G, c), faba(rest, c_eff))
    out = FABA(c_max=c).aggregate(G)
    assert out.diagnostics.excluded == [4] and float(out.weights[4]) == 0.0
    assert out.diagnostics.c_max_effective == c_eff
    # the building blocks stay strict
    with pytest.raises(UpdateError, match="NaN/Inf"):
        faba_removed(G, c)
    with pytest.raises(UpdateError, match="NaN/Inf"):
        gram64(G)


def test_float64_rows_whose_squares_overflow_are_handled() -> None:
    """Squared norms of 1e300 overflow float64: FABA works on a power-of-two scaled Gram
    matrix (the same removals) instead of failing the round; gram64 itself stays strict."""
    G = torch.tensor([[1e300, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    assert faba_removed(G, 1) == [0]
    torch.testing.assert_close(faba(G, 1), torch.tensor([0.5, 1.0], dtype=torch.float64))
    out = FABA(c_max=1).aggregate(G)
    assert out.diagnostics.extra["removed"] == [0] and out.weights.tolist() == [0.0, 0.5, 0.5]
    with pytest.raises(UpdateError, match="too large"):
        gram64(G)
