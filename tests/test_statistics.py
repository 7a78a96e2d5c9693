"""The attacks' column statistics equal torch.std_mean bit for bit (stored runs rely on it)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.attacks.statistics import column_std_mean


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.isnan(), b.isnan())
        and (torch.equal(a[~a.isnan()], b[~b.isnan()]))
    )


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 40),
    p=st.integers(1, 300),
    scale=st.sampled_from([1e-6, 1.0, 3e3, 1e18]),
    offset=st.sampled_from([0.0, 1.0, -250.0]),
    correction=st.sampled_from([0, 1, 2]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
    block=st.sampled_from([1, 7, 64, 1 << 16]),  # several blocks and a short last one
)
def test_bit_identical_to_torch(
    n: int,
    p: int,
    scale: float,
    offset: float,
    correction: int,
    dtype: torch.dtype,
    seed: int,
    block: int,
) -> None:
    g = torch.Generator().manual_seed(seed)
    X = (torch.randn(n, p, generator=g, dtype=torch.float64) * scale + offset).to(dtype)
    sigma, mu = column_std_mean(X, correction=correction, block=block, min_columns=1)
    ref_sigma, ref_mu = torch.std_mean(X, dim=0, correction=correction)
    assert _same(mu, ref_mu)
    assert _same(sigma, ref_sigma)


def test_paper_scale_shape_and_strided_rows() -> None:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(100, 70_000, generator=g)[::2]  # 50 rows, not contiguous between rows
    want = torch.std_mean(X, dim=0, correction=1)
    for block in (1 << 16, 30_000):  # the default and a short last block
        for got, ref in zip(column_std_mean(X, block=block), want, strict=True):
            assert _same(got, ref)


def test_many_columns_float32_and_float64() -> None:
    # Enough columns that a last-bit slip in the final square root (torch's own vectorized
    # float64 sqrt is not always correctly rounded; the reduction's is) would show.
    g = torch.Generator().manual_seed(5)
    base = torch.randn(30, 200_000, generator=g, dtype=torch.float64) + 1000.0
    for X in (base, base.float()):
        want = torch.std_mean(X, dim=0, correction=1)
        for got, ref in zip(column_std_mean(X), want, strict=True):
            assert _same(got, ref)


def test_non_finite_entries_propagate_as_torch() -> None:
    X = torch.randn(6, 9)
    X[1, 2], X[3, 4], X[0, 5], X[4, 5] = float("nan"), float("inf"), float("inf"), -float("inf")
    for got, want in zip(
        column_std_mean(X, min_columns=1), torch.std_mean(X, dim=0, correction=1), strict=True
    ):
        assert _same(got, want)


@pytest.mark.parametrize(("rows", "correction"), [(0, 1), (1, 1), (2, 2)])
def test_too_few_rows_fall_back_to_torch(rows: int, correction: int) -> None:
    X = torch.randn(rows, 5)
    with pytest.warns(UserWarning):
        got = column_std_mean(X, correction=correction)
    with pytest.warns(UserWarning):
        want = torch.std_mean(X, dim=0, correction=correction)
    for a, b in zip(got, want, strict=True):
        assert _same(a, b)


def test_half_precision_falls_back_to_torch() -> None:
    X = torch.randn(8, 33).to(torch.bfloat16)
    for got, want in zip(column_std_mean(X), torch.std_mean(X, dim=0, correction=1), strict=True):
        assert _same(got, want)


def test_the_recurrence_runs_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 / float64 CPU rows with enough columns never reach torch.std_mean (so the tests
    above compare the recurrence, not torch with itself); small ones do."""
    X = torch.randn(5, 20_000)
    want = torch.std_mean(X, dim=0, correction=1)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.std_mean called")

    monkeypatch.setattr(torch, "std_mean", refuse)
    for got, ref in zip(column_std_mean(X), want, strict=True):
        assert _same(got, ref)
    column_std_mean(X[:, :100], min_columns=1)
    with pytest.raises(AssertionError, match=r"torch\.std_mean called"):
        column_std_mean(X[:, :100])  # below the default min_columns: torch's loop


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(3, 30),
    p=st.integers(1, 200),
    seed=st.integers(0, 2**31 - 1),
    min_columns=st.sampled_from([1, 1 << 30]),  # the recurrence, and torch on a copy
)
def test_rows_read_in_place_equal_the_copied_rows(
    n: int, p: int, seed: int, min_columns: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g) * 3 + 1
    rows = torch.randperm(n, generator=g)[: max(2, n // 2)]  # any order
    want = torch.std_mean(X[rows], dim=0, correction=1)
    got = column_std_mean(X, rows=rows, block=64, min_columns=min_columns)
    for a, b in zip(got, want, strict=True):
        assert _same(a, b)
    with pytest.raises(ValueError, match="row indices"):
        column_std_mean(X, rows=torch.ones(n, dtype=torch.bool))
