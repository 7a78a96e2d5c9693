"""Krum, Multi-Krum and Bulyan: hand cases, naive double-loop references, properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators.bulyan import Bulyan, bulyan, bulyan_select
from tesseract_fl.aggregators.krum import Krum, krum, krum_scores, pairwise_sq_distances
from tesseract_fl.errors import ConfigError, UpdateError


def rand(m: int, P: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, P, generator=torch.Generator().manual_seed(seed))


def ref_scores(G: torch.Tensor, c: int, n_nb: int | None = None) -> list[float]:
    """Double loop over pairs (float64), then the n_nb smallest per row."""
    X = G.double()
    m = X.shape[0]
    k = m - c - 2 if n_nb is None else n_nb
    out = []
    for i in range(m):
        d = sorted(float(((X[i] - X[j]) ** 2).sum()) for j in range(m) if j != i)
        out.append(sum(d[: min(k, m - 1)]))
    return out


def ref_bulyan(G: torch.Tensor, c: int) -> torch.Tensor:
    """Naive Bulyan: recompute Krum on the remaining set; argsort |x - median| per coordinate."""
    m = G.shape[0]
    remaining = list(range(m))
    sel = []
    for _ in range(m - 2 * c):
        n = len(remaining)
        sc = ref_scores(G[remaining], 0, max(1, n - c - 2))
        sel.append(remaining.pop(int(np.argmin(sc))))
    S = G[sel].double().numpy()
    beta = len(sel) - 2 * c
    med = np.median(S, axis=0)
    idx = np.argsort(np.abs(S - med), axis=0, kind="stable")[:beta]
    return torch.from_numpy(np.take_along_axis(S, idx, axis=0).mean(0))


def test_pairwise_distances_match_double_loop() -> None:
    G = rand(7, 50)
    D = pairwise_sq_distances(G)
    for i in range(7):
        for j in range(7):
            assert abs(float(D[i, j]) - float(((G[i] - G[j]).double() ** 2).sum())) < 1e-4
    assert torch.equal(D, D.T) and bool((D.diagonal() == 0).all())


def test_krum_by_hand() -> None:
    # m=5, c=1 -> 2 neighbours. Rows on a line at 0, 1, 2, 10, 11.
    G = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    # scores: 0:{1,4}=5, 1:{1,1}=2, 2:{1,4}=5, 3:{1,64}=65, 4:{1,81}=82
    assert torch.allclose(
        krum_scores(pairwise_sq_distances(G), 1),
        torch.tensor([5.0, 2.0, 5.0, 65.0, 82.0], dtype=torch.float64),
    )
    assert torch.equal(krum(G, 1), torch.tensor([1.0]))
    # Multi-Krum k=3: rows 1, 0, 2 (tie 0/2 by index) -> mean 1
    assert torch.allclose(krum(G, 1, k=3), torch.tensor([1.0]))
    agg = Krum(c_max=1, k=2).aggregate(G)
    assert torch.allclose(agg.weights, torch.tensor([0.5, 0.5, 0, 0, 0]))
    assert agg.diagnostics.selected.tolist() == [1, 0]


def test_krum_ties_lowest_index() -> None:
    G = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    agg = Krum(c_max=1).aggregate(G)
    assert agg.weights.tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(("m", "c"), [(4, 1), (10, 2), (12, 3), (20, 5)])
def test_krum_matches_reference(m: int, c: int) -> None:
    G = rand(m, 64, seed=m)
    sc = krum_scores(pairwise_sq_distances(G), c)
    ref = ref_scores(G, c)
    assert np.allclose(sc.numpy(), ref, rtol=1e-5)
    best = int(np.argmin(ref))
    assert torch.equal(krum(G, c), G[best])
    k = m - c
    order = np.argsort(ref, kind="stable")[:k]
    assert torch.allclose(krum(G, c, k=k), G[list(order)].mean(0), atol=1e-6)


def test_krum_errors() -> None:
    G = rand(4, 3)
    with pytest.raises(ConfigError, match="m - c_max - 2 >= 1"):
        krum(G, 2)
    with pytest.raises(ConfigError, match="k"):
        krum(G, 1, k=5)
    with pytest.raises(ConfigError):
        Krum(c_max=1, k=0)
    with pytest.raises(UpdateError):
        krum(torch.ones(5), 1)


@settings(max_examples=30, deadline=None)
@given(st.integers(4, 12), st.integers(0, 10_000), st.data())
def test_krum_returns_input_row_and_multikrum_mean(m: int, seed: int, data: st.DataObject) -> None:
    c = data.draw(st.integers(0, m - 3))
    k = data.draw(st.integers(1, m))
    G = rand(m, 5, seed=seed)
    out = krum(G, c)
    assert any(torch.equal(out, G[i]) for i in range(m))
    agg = Krum(c, k=k).aggregate(G)
    sel = agg.diagnostics.selected
    assert sel.unique().numel() == k
    assert torch.allclose(agg.update, G[sel].mean(0), atol=1e-5)
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
    # permutation invariant up to ties (with one neighbour, mutual nearest rows always tie)
    scores = krum_scores(pairwise_sq_distances(G), c)
    out_p = krum(G[perm], c)
    winners = [i for i in range(m) if torch.equal(out_p, G[i])]
    assert winners and any(abs(float(scores[i] - scores.min())) <= 1e-9 for i in winners)


def test_bulyan_by_hand_m10_c2() -> None:
    # theta = 6, beta = 2; outliers 8, 9 are never selected.
    col = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0, -100.0]
    G = torch.tensor(col)[:, None]
    with pytest.warns(RuntimeWarning, match="4\\*c_max\\+3"):
        out = bulyan(G, 2)
    sel = bulyan_select(pairwise_sq_distances(G), 2)
    assert sorted(sel.tolist()) == [1, 2, 3, 4, 5, 6]
    # selected values 1..6, median 3.5, two nearest: 3 and 4 -> 3.5
    assert torch.allclose(out, torch.tensor([3.5]))


@pytest.mark.parametrize(("m", "c"), [(1, 0), (5, 1), (10, 2), (13, 3), (21, 5)])
def test_bulyan_matches_reference(m: int, c: int) -> None:
    G = rand(m, 97, seed=m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = bulyan(G, c, chunk_size=10)
        full = bulyan(G, c, chunk_size=1000)
        srt = bulyan(G, c, method="sort")
        trc = bulyan(G, c, method="torch")
    assert torch.allclose(got.double(), ref_bulyan(G, c), atol=1e-6)
    assert torch.equal(got, full)
    assert torch.allclose(got, srt) and torch.allclose(got, trc)


def test_bulyan_errors_and_warn_once() -> None:
    with pytest.raises(ConfigError, match="m > 4\\*c_max"):
        bulyan(rand(8, 3), 2)
    agg = Bulyan(c_max=2)
    with pytest.warns(RuntimeWarning):
        agg.aggregate(rand(10, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = agg.aggregate(rand(10, 6, seed=1))  # second time: silent
        bulyan(rand(11, 4), 2)  # m = 4c+3: no warning
    assert abs(float(res.weights.sum()) - 1) < 1e-6
    assert int((res.weights > 0).sum()) <= 6
    assert Bulyan.name == "bulyan" and agg.state_dict() == {}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([(13, 3), (17, 4), (14, 3)]))
def test_bulyan_permutation_invariant(seed: int, mc: tuple[int, int]) -> None:
    # c >= 3 keeps Krum's neighbour count >= 2 in every selection step; with one neighbour
    # mutual nearest rows tie and the pick (hence the result) depends on the row order.
    m, c = mc
    G = rand(m, 6, seed=seed)
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.allclose(bulyan(G, c), bulyan(G[perm], c), atol=1e-6)
