"""FoolsGold (Fung et al. 2020): weights by hand and against a literal reference, sybils,
history keyed by client id, state round trip, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators.base import Aggregator
from tesseract_fl.aggregators.foolsgold import FoolsGold, foolsgold_weights
from tesseract_fl.errors import ConfigError, UpdateError


def foolsgold_naive(H: torch.Tensor, kappa: float = 1.0) -> list[float]:
    """FoolsGold step by step (docs/design.md, "FoolsGold") with Python loops, in float64."""
    H64 = H.double()
    m = H64.shape[0]
    cs = [[0.0] * m for _ in range(m)]
    for i in range(m):
        for j in range(m):
            ni, nj = float(H64[i].norm()), float(H64[j].norm())
            if i != j and ni > 0 and nj > 0:
                cs[i][j] = min(1.0, max(-1.0, float(H64[i] @ H64[j]) / (ni * nj)))
    v = [max(row) for row in cs]
    for i in range(m):
        for j in range(m):
            if v[j] > v[i]:
                cs[i][j] *= v[i] / v[j]
    alpha = [min(1.0, max(0.0, 1.0 - max(row))) for row in cs]
    top = max(alpha)
    if top == 0:
        return [0.0] * m
    out = []
    for a in alpha:
        a = a / top
        if a == 1.0:
            a = 0.99
        x = kappa * (math.log(a / (1 - a)) + 0.5) if a > 0 else -math.inf
        out.append(1.0 if x > 1 else 0.0 if x < 0 else x)
    return out


def test_hand_computed_with_pardoning() -> None:
    H = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # A
            [0.9, math.sqrt(0.19), 0.0, 0.0],  # B: cos(A, B) = 0.9
            [0.6, 0.0, 0.8, 0.0],  # C: cos(A, C) = 0.6, cos(B, C) = 0.54
            [0.0, 0.0, 0.0, 1.0],  # D: orthogonal to all
        ],
        dtype=torch.float64,
    )
    # v = [0.9, 0.9, 0.6, 0]; pardoning row C: 0.6 * 0.6/0.9 = 0.4, 0.54 * 0.6/0.9 = 0.36;
    # alpha = [0.1, 0.1, 0.6, 1] -> D: 0.99; logit: A, B < 0 -> 0; C: ln(1.5) + 0.5; D -> 1
    expected = torch.tensor([0.0, 0.0, math.log(1.5) + 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(foolsgold_weights(H), expected)
    torch.testing.assert_close(foolsgold_weights(H.float()), expected, atol=1e-6, rtol=1e-6)


def test_hand_computed_simple() -> None:
    # 0 and 2 identical: alpha 0; 1 orthogonal: 1 -> 0.99 -> logit > 1 -> 1
    H = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert foolsgold_weights(H).tolist() == [0.0, 1.0, 0.0]
    # cos(0, 1) = 0.5: alpha = [0.5, 0.5, 1] -> logit(0.5) + 0.5 = 0.5; kappa scales it
    H = torch.tensor([[1.0, 0.0, 0.0], [0.5, math.sqrt(0.75), 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(
        foolsgold_weights(H), torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        foolsgold_weights(H, kappa=1.5), torch.tensor([0.75, 0.75, 1.0], dtype=torch.float64)
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.integers(1, 8),
    P=st.integers(1, 6),
    kappa=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_matches_naive(seed: int, m: int, P: int, kappa: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    H = torch.randn(m, P, generator=gen, dtype=torch.float64)
    H[torch.rand(m, generator=gen) < 0.15] = 0.0  # some empty histories
    got = foolsgold_weights(H, kappa)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, torch.tensor(foolsgold_naive(H, kappa), dtype=torch.float64))


def test_identical_sybils_get_near_zero_weight() -> None:
    torch.manual_seed(0)
    honest = torch.randn(20, 300)
    sybil = torch.randn(300).expand(5, 300)
    G = torch.cat([honest, sybil])
    out = FoolsGold(num_clients=25).aggregate(G)
    assert bool((out.weights[20:] < 1e-3).all())
    assert bool((out.weights[:20] > 0.01).all())
    torch.testing.assert_close(out.weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close(out.update, out.weights @ G)
    torch.testing.assert_close(out.diagnostics.scores, foolsgold_weights(G))


def test_history_accumulates_by_client_id() -> None:
    torch.manual_seed(1)
    agg = FoolsGold(num_clients=5)
    expected = torch.zeros(5, 8)
    rounds = [[0, 1, 2], [3, 0, 4], [4, 1, 2, 3, 0], [2, 0]]
    for ids in rounds:
        G = torch.randn(len(ids), 8)
        out = agg.aggregate(G, client_ids=torch.tensor(ids))
        for row, cid in enumerate(ids):
            expected[cid] += G[row]
        assert agg.history is not None
        torch.testing.assert_close(agg.history, expected)
        alpha = foolsgold_weights(expected[ids])
        torch.testing.assert_close(out.diagnostics.scores, alpha)
        torch.testing.assert_close(out.weights, (alpha / alpha.sum()).float())
        torch.testing.assert_close(out.update, out.weights @ G)
    assert agg.rounds_seen.tolist() == [4, 2, 3, 2, 2]
    # absent clients keep their histories
    G = torch.randn(2, 8)
    agg.aggregate(G, client_ids=torch.tensor([1, 3]))
    expected[[1, 3]] += G
    torch.testing.assert_close(agg.history, expected)


def test_without_history_uses_current_round_only() -> None:
    torch.manual_seed(2)
    agg = FoolsGold(num_clients=4, use_history=False)
    for _ in range(3):
        G = torch.randn(4, 6)
        out = agg.aggregate(G)
        torch.testing.assert_close(out.diagnostics.scores, foolsgold_weights(G))
    assert agg.history is None


def test_all_identical_clients_give_zero_update() -> None:
    G = torch.ones(4, 3)
    out = FoolsGold(num_clients=4).aggregate(G)
    assert out.diagnostics.extra["all_zero"] is True
    assert torch.equal(out.update, torch.zeros(3))
    assert torch.equal(out.weights, torch.zeros(4))
    assert torch.equal(foolsgold_weights(G), torch.zeros(4, dtype=torch.float64))


def test_state_round_trip() -> None:
    torch.manual_seed(3)
    a = FoolsGold(num_clients=6, kappa=1.0)
    assert isinstance(a, Aggregator) and a.name == "foolsgold"
    for _ in range(2):
        a.aggregate(torch.randn(4, 5), client_ids=torch.randperm(6)[:4])
    b = FoolsGold(num_clients=6, kappa=2.0, use_history=False)
    b.load_state_dict(a.state_dict())
    assert b.kappa == 1.0 and b.use_history is True and b.round == 2
    G, ids = torch.randn(5, 5), torch.tensor([5, 0, 2, 1, 3])
    oa, ob = a.aggregate(G, client_ids=ids), b.aggregate(G, client_ids=ids)
    assert torch.equal(oa.update, ob.update) and torch.equal(oa.weights, ob.weights)
    assert torch.equal(a.history, b.history)  # type: ignore[arg-type]
    # the saved state is a copy
    state = a.state_dict()
    a.aggregate(G, client_ids=ids)
    assert not torch.equal(state["history"], a.history)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_clients"):
        FoolsGold(num_clients=7).load_state_dict(state)
    with pytest.raises(ConfigError, match="missing"):
        FoolsGold(num_clients=6).load_state_dict({"num_clients": 6})


def test_errors() -> None:
    agg = FoolsGold(num_clients=3)
    G = torch.randn(3, 4)
    G[1, 2] = float("nan")
    out = agg.aggregate(G)  # hostile-row policy: row 1 excluded, its history untouched
    assert out.diagnostics.excluded == [1] and float(out.weights[1]) == 0.0
    assert agg.history is not None and float(agg.history[1].abs().sum()) == 0.0
    agg.aggregate(torch.randn(3, 4))
    with pytest.raises(UpdateError, match="P=4"):
        agg.aggregate(torch.randn(3, 5))
    with pytest.raises(UpdateError, match="client_ids"):
        agg.aggregate(torch.randn(2, 4), client_ids=[0, 3])
    with pytest.raises(UpdateError, match="unique"):
        agg.aggregate(torch.randn(2, 4), client_ids=[1, 1])
    # histories that would overflow float32 are halved (a common scale keeps every cosine)
    agg.aggregate(torch.full((3, 4), 3e38))  # near the float32 maximum, still finite
    assert agg.history is not None
    before = agg.history.clone()
    out = agg.aggregate(torch.full((3, 4), 3e38), client_ids=[2, 0, 1])
    assert bool(torch.isfinite(out.update).all()) and bool(torch.isfinite(agg.history).all())
    assert agg.state_dict()["scale"] == 2.0
    assert torch.allclose(agg.history.double() * 2.0, before.double() + 3e38, rtol=1e-6)
    assert bool(torch.isfinite(agg.history.double() * 2.0).all())
    out = agg.aggregate(torch.full((3, 4), 3e38))
    assert bool(torch.isfinite(out.update).all()) and bool(torch.isfinite(agg.history).all())
    restored = FoolsGold(num_clients=3)
    restored.load_state_dict(agg.state_dict())
    G = torch.randn(3, 4)
    assert torch.equal(restored.aggregate(G).update, agg.aggregate(G).update)
    for bad in ({"num_clients": 0}, {"num_clients": 2.5}):
        with pytest.raises(ConfigError, match="num_clients"):
            FoolsGold(**bad)  # type: ignore[arg-type]
    for kappa in (0.0, -1.0, float("nan"), float("inf"), "big"):
        with pytest.raises(ConfigError, match="kappa"):
            FoolsGold(num_clients=3, kappa=kappa)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="use_history"):
        FoolsGold(num_clients=3, use_history="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("use_history", [True, False])
def test_non_finite_entries_are_rejected(bad: float, use_history: bool) -> None:
    agg = FoolsGold(num_clients=4, use_history=use_history)
    agg.aggregate(torch.randn(4, 50))
    state = agg.state_dict()
    G = torch.randn(3, 50)
    G[1, 7] = bad
    out = agg.aggregate(G, client_ids=[3, 1, 0])  # row 1 (client 1) is excluded
    assert out.diagnostics.excluded == [1] and float(out.weights[1]) == 0.0
    assert bool(torch.isfinite(out.update).all())
    with pytest.raises(UpdateError, match="NaN/Inf"):
        foolsgold_weights(G)  # the building block stays strict
    after = agg.state_dict()
    assert after["round"] == state["round"] + 1 == 2
    if use_history:
        assert torch.equal(after["history"][1], state["history"][1])  # not updated with NaN
        assert not torch.equal(after["history"][3], state["history"][3])
    assert after["rounds_seen"].tolist() == [2, 1, 1, 2]
