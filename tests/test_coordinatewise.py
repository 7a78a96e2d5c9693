"""Trimmed mean and coordinate-wise median: hand cases, naive references, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators.kernels.sorting import (
    PARALLEL_MIN_COLUMNS,
    SORT_MIN_ROWS,
    resolve_sort_method,
    sorted_column_chunks,
)
from tesseract_fl.aggregators.median import Median, median, median_weights
from tesseract_fl.aggregators.trimmed_mean import TrimmedMean, trimmed_mean, trimmed_mean_weights
from tesseract_fl.errors import ConfigError, UpdateError

METHODS = ["network", "sort", "torch"]


def ref_trimmed(G: torch.Tensor, c: int) -> torch.Tensor:
    """Naive: sort every column, average the middle (float64)."""
    m = G.shape[0]
    return torch.sort(G.double(), dim=0).values[c : m - c].mean(0)


def rand(m: int, P: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, P, generator=torch.Generator().manual_seed(seed))


def test_trimmed_mean_by_hand() -> None:
    G = torch.tensor([[1.0, -5.0], [100.0, 0.0], [2.0, 1.0], [-50.0, 2.0], [3.0, 9.0]])
    # col 0 sorted: -50 1 2 3 100 -> drop one each end -> (1+2+3)/3 = 2
    # col 1 sorted: -5 0 1 2 9 -> (0+1+2)/3 = 1
    assert torch.equal(trimmed_mean(G, 1), torch.tensor([2.0, 1.0]))
    assert torch.equal(trimmed_mean(G, 2), torch.tensor([2.0, 1.0]))  # median row
    assert torch.allclose(trimmed_mean(G, 0), G.mean(0))


def test_median_by_hand_odd_and_even() -> None:
    G = torch.tensor([[3.0, 1.0], [1.0, 7.0], [2.0, 4.0]])
    assert torch.equal(median(G), torch.tensor([2.0, 4.0]))
    G4 = torch.tensor([[3.0, 1.0], [1.0, 7.0], [2.0, 4.0], [10.0, 5.0]])
    # even m: mean of the two middle values (NumPy), not torch's lower median
    assert torch.equal(median(G4), torch.tensor([2.5, 4.5]))
    assert not torch.equal(median(G4), G4.median(0).values)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("m", "c"), [(1, 0), (2, 0), (3, 1), (7, 2), (10, 2), (35, 7), (40, 13), (64, 12), (100, 20)]
)
def test_trimmed_mean_matches_reference(method: str, m: int, c: int) -> None:
    G = rand(m, 301, seed=m)
    got = trimmed_mean(G, c, method=method, chunk_size=64)
    assert got.dtype == torch.float32 and got.shape == (301,)
    assert torch.allclose(got.double(), ref_trimmed(G, c), atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 9, 10, 35, 36, 100])
def test_median_matches_numpy(method: str, m: int) -> None:
    G = rand(m, 257, seed=m)
    expected = np.median(G.numpy(), axis=0)
    got = median(G, method=method, chunk_size=50)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-7)


def test_large_m_uses_sort_path_and_agrees() -> None:
    G = rand(150, 300)
    assert torch.allclose(trimmed_mean(G, 30).double(), ref_trimmed(G, 30), atol=1e-6)
    np.testing.assert_allclose(median(G).numpy(), np.median(G.numpy(), 0), atol=1e-7)


def test_auto_method_by_size() -> None:
    """The network below SORT_MIN_ROWS rows on CPU, the transposed sort from it on."""
    G = torch.zeros(1, 5)
    assert resolve_sort_method(G, SORT_MIN_ROWS - 1, "auto") == "network"
    assert resolve_sort_method(G, SORT_MIN_ROWS, "auto") == "sort"
    assert resolve_sort_method(G, 100, "torch") == "torch"
    with pytest.raises(ConfigError, match="method must be"):
        resolve_sort_method(G, 100, "quick")


def test_threaded_column_ranges_agree_with_one_block() -> None:
    """Above 2 x PARALLEL_MIN_COLUMNS the CPU kernels split columns over threads; every column
    must come out as in a single-threaded pass (and as the naive reference)."""
    G = rand(100, 2 * PARALLEL_MIN_COLUMNS + 7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        split = trimmed_mean(G, 20)
        torch.set_num_threads(1)
        single = trimmed_mean(G, 20)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(split, single)
    assert torch.allclose(split.double(), ref_trimmed(G, 20), atol=1e-6)


def test_chunked_equals_unchunked() -> None:
    G = rand(10, 1000)
    assert torch.equal(trimmed_mean(G, 2, chunk_size=3), trimmed_mean(G, 2, chunk_size=10_000))
    G = rand(100, 1000)
    assert torch.equal(trimmed_mean(G, 20, chunk_size=3), trimmed_mean(G, 20, chunk_size=10_000))
    assert torch.equal(median(G, chunk_size=7), median(G, chunk_size=10_000))


def test_ties_and_duplicates() -> None:
    G = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 0.0], [-5.0, 0.0]])
    assert torch.equal(trimmed_mean(G, 1), torch.tensor([1.0, 0.0]))
    assert torch.equal(median(G), torch.tensor([1.0, 0.0]))


def test_sorted_column_chunks_full_sort() -> None:
    G = rand(13, 40)
    for start, stop, S in sorted_column_chunks(G, chunk_size=16):
        got = np.stack(S)
        np.testing.assert_array_equal(got, torch.sort(G[:, start:stop], dim=0).values.numpy())


def test_float64_input_keeps_dtype() -> None:
    G = rand(5, 20).double()
    assert trimmed_mean(G, 1).dtype == torch.float64
    assert torch.allclose(median(G), torch.from_numpy(np.median(G.numpy(), 0)))


def test_errors() -> None:
    G = rand(4, 5)
    with pytest.raises(ConfigError, match="m > 2\\*c_max"):
        trimmed_mean(G, 2)
    with pytest.raises(ConfigError, match="c_max"):
        trimmed_mean(G, -1)
    with pytest.raises(ConfigError):
        trimmed_mean(G, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TrimmedMean(c_max=True)  # type: ignore[arg-type]
    with pytest.raises(UpdateError):
        trimmed_mean(torch.ones(3), 0)
    bad = G.clone()
    bad[1, 2] = float("nan")
    # hostile-row policy: the NaN row is excluded
    torch.testing.assert_close(median(bad), median(G[[0, 2, 3]]))
    with pytest.raises(UpdateError):
        median(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="method"):
        median(G, method="bogus")


def test_weights() -> None:
    G = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [5.0, 50.0]])
    w = trimmed_mean_weights(G, 1, sample=None)
    assert torch.allclose(w, torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3, 0.0]))
    assert torch.allclose(median_weights(G, sample=None), torch.tensor([0.0, 0, 1, 0, 0]))
    G4 = G[:4]
    assert torch.allclose(median_weights(G4, sample=None), torch.tensor([0.0, 0.5, 0.5, 0.0]))
    big = rand(12, 50_000)
    w = trimmed_mean_weights(big, 3)  # sampled
    assert abs(float(w.sum()) - 1) < 1e-5 and bool((w >= 0).all())


def test_aggregator_classes() -> None:
    G = rand(9, 100)
    agg = TrimmedMean(c_max=2).aggregate(G, client_ids=list(range(9)))
    assert torch.equal(agg.update, trimmed_mean(G, 2))
    assert agg.weights.shape == (9,) and abs(float(agg.weights.sum()) - 1) < 1e-5
    med = Median().aggregate(G)
    assert torch.equal(med.update, median(G))
    assert TrimmedMean.name == "trimmed_mean" and Median.name == "median"
    for a in (TrimmedMean(1), Median()):
        assert a.state_dict() == {}
        a.load_state_dict({})
        with pytest.raises(ConfigError):
            a.load_state_dict({"x": 1})
    with pytest.raises(UpdateError):
        Median().aggregate(G, client_ids=[0, 1])


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda m: st.tuples(
            st.just(m),
            st.integers(0, (m - 1) // 2),
            st.lists(st.lists(finite, min_size=3, max_size=3), min_size=m, max_size=m),
            st.permutations(range(m)),
        )
    )
)
def test_permutation_invariance(case: tuple[int, int, list[list[float]], list[int]]) -> None:
    _m, c, rows, perm = case
    G = torch.tensor(rows, dtype=torch.float32)
    Gp = G[list(perm)]
    assert torch.equal(median(G), median(Gp))
    assert torch.allclose(trimmed_mean(G, c), trimmed_mean(Gp, c), atol=1e-4)
    assert torch.allclose(trimmed_mean(G, c).double(), ref_trimmed(G, c), atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(3, 12).flatmap(
        lambda m: st.tuples(
            st.just(m),
            st.integers(1, (m - 1) // 2),
            st.lists(st.lists(finite, min_size=4, max_size=4), min_size=m, max_size=m),
            st.lists(st.sampled_from([-3e38, 3e38, 1e30, -1e20]), min_size=4, max_size=4),
        )
    )
)
def test_bounded_by_honest_rows(case: tuple[int, int, list[list[float]], list[float]]) -> None:
    _m, c, rows, bad = case
    G = torch.tensor(rows, dtype=torch.float32)
    honest = G[c:]
    G[:c] = torch.tensor(bad)  # the first c rows are replaced by huge values
    lo, hi = honest.min(0).values, honest.max(0).values
    for out in (trimmed_mean(G, c), median(G)):
        assert bool((out >= lo - 1e-4).all()) and bool((out <= hi + 1e-4).all())


def test_thread_split_over_columns_gives_identical_results() -> None:
    """Wide matrices are split into column ranges on threads; values must not change."""

    gen = torch.Generator().manual_seed(3)
    G = torch.randn(9, 2 * PARALLEL_MIN_COLUMNS + 17, generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        tm2, md2 = trimmed_mean(G, 2), median(G)
        torch.set_num_threads(1)
        tm1, md1 = trimmed_mean(G, 2), median(G)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(tm1, tm2) and torch.equal(md1, md2)
    ref = torch.sort(G, dim=0).values
    torch.testing.assert_close(tm2, ref[2:7].mean(0))
    torch.testing.assert_close(md2, ref[4])
