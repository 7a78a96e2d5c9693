"""Client partition schemes: cover, determinism, bias statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.data import PARTITIONS, bias_groups, partition
from tesseract_fl.errors import ConfigError, DatasetError


def _labels(n: int = 60000, classes: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def _assert_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    assert allidx.dtype == np.int64
    assert allidx.size == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def _home_fraction(parts: list[np.ndarray], labels: np.ndarray, classes: int) -> float:
    groups = bias_groups(len(parts), classes)
    return float(np.mean([np.mean(labels[p] == g) for p, g in zip(parts, groups, strict=True)]))


@pytest.mark.parametrize("bias", [0.5, 0.9, 0.1])
def test_bias_fraction(bias: float) -> None:
    labels = _labels()
    parts = partition(labels, 100, "bias", bias=bias, rng=np.random.default_rng(0))
    assert len(parts) == 100
    _assert_cover(parts, labels.size)
    assert abs(_home_fraction(parts, labels, 10) - bias) < 0.02


def test_bias_groups_contiguous() -> None:
    np.testing.assert_array_equal(bias_groups(100, 10), np.repeat(np.arange(10), 10))
    np.testing.assert_array_equal(bias_groups(5, 2), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(bias_groups(3, 10), [0, 1, 2])  # fewer clients than classes


def test_bias_one_is_fully_grouped() -> None:
    labels = _labels(5000)
    parts = partition(labels, 20, "bias", bias=1.0, rng=np.random.default_rng(3))
    groups = bias_groups(20, 10)
    for p, g in zip(parts, groups, strict=True):
        assert np.all(labels[p] == g)


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_cover_and_determinism(scheme: str) -> None:
    labels = _labels(3001)
    groups = np.arange(labels.size) % 101  # writer ids, used by the ``writers`` scheme only
    a = partition(labels, 17, scheme, groups=groups, rng=np.random.default_rng(42))
    b = partition(labels, 17, scheme, groups=groups, rng=np.random.default_rng(42))
    c = partition(labels, 17, scheme, groups=groups, rng=np.random.default_rng(43))
    _assert_cover(a, labels.size)
    assert len(a) == 17
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    if scheme != "sequential":
        assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_random_order_within_client() -> None:
    parts = partition(_labels(2000), 4, "bias", rng=np.random.default_rng(0))
    assert not all(np.all(np.diff(p) > 0) for p in parts)


def test_iid_sizes() -> None:
    parts = partition(_labels(1003), 10, "iid", rng=np.random.default_rng(0))
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_sequential_contiguous() -> None:
    parts = partition(_labels(1003), 10, "sequential", rng=np.random.default_rng(0))
    start = 0
    for p in parts:
        np.testing.assert_array_equal(p, np.arange(start, start + p.size))
        start += p.size
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_large_alpha_near_uniform() -> None:
    labels = _labels(20000)
    parts = partition(labels, 10, "dirichlet", alpha=1e4, rng=np.random.default_rng(0))
    for p in parts:
        assert abs(p.size - 2000) < 100
        frac = np.bincount(labels[p], minlength=10) / p.size
        assert np.all(np.abs(frac - 0.1) < 0.03)


def test_dirichlet_small_alpha_skewed() -> None:
    labels = _labels(20000)
    parts = partition(labels, 10, "dirichlet", alpha=0.05, rng=np.random.default_rng(0))
    top = [np.bincount(labels[p], minlength=10).max() / p.size for p in parts if p.size > 50]
    assert np.mean(top) > 0.5


@pytest.mark.parametrize("scheme", ["bias", "dirichlet"])
def test_no_empty_client(scheme: str) -> None:
    # 12 samples over 10 clients: random schemes would often leave clients empty.
    for seed in range(20):
        labels = _labels(12, seed=seed)
        parts = partition(labels, 10, scheme, alpha=0.1, rng=np.random.default_rng(seed))
        _assert_cover(parts, 12)
        assert all(p.size >= 1 for p in parts)


def test_fewer_samples_than_clients() -> None:
    parts = partition(np.array([0, 1, 2]), 5, "iid", rng=np.random.default_rng(0))
    _assert_cover(parts, 3)
    assert sum(p.size == 0 for p in parts) == 2


def test_validation() -> None:
    labels = _labels(100)
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="allowed: bias, iid, sequential, dirichlet"):
        partition(labels, 10, "noniid", rng=rng)
    with pytest.raises(ConfigError, match="num_clients"):
        partition(labels, 0, "iid", rng=rng)
    with pytest.raises(ConfigError, match=r"bias must lie in \[0, 1\]"):
        partition(labels, 10, "bias", bias=1.5, rng=rng)
    with pytest.raises(ConfigError, match="alpha"):
        partition(labels, 10, "dirichlet", alpha=0.0, rng=rng)
    with pytest.raises(DatasetError, match="1-D"):
        partition(labels.reshape(10, 10), 10, "iid", rng=rng)
    with pytest.raises(DatasetError, match=r"\[0, 5\)"):
        partition(labels, 10, "bias", num_classes=5, rng=rng)
    assert isinstance(ConfigError("x"), ValueError)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 60),
    m=st.integers(1, 12),
    classes=st.integers(1, 6),
    scheme=st.sampled_from(PARTITIONS),
    bias=st.floats(0.0, 1.0),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_disjoint_cover(
    n: int, m: int, classes: int, scheme: str, bias: float, alpha: float, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, classes, n)
    parts = partition(
        labels,
        m,
        scheme,
        bias=bias,
        alpha=alpha,
        num_classes=classes,
        groups=np.random.default_rng(seed + 1).integers(0, 7, n),
        rng=np.random.default_rng(seed),
    )
    assert len(parts) == m
    _assert_cover(parts, n)
    if n >= m:
        assert all(p.size >= 1 for p in parts)
