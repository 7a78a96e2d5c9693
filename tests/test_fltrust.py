"""FLTrust (Cao et al. 2021): trust scores, norm rescaling, effective weights, class."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators.base import AggregationContext, Aggregator
from tesseract_fl.aggregators.fltrust import FLTrust, fltrust, fltrust_weights
from tesseract_fl.errors import ConfigError, UpdateError


def fltrust_naive(G: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
    """Literal FLTrust in float64 (rows of norm 0 get trust 0)."""
    G64, g = G.double(), g0.double()
    n0 = g.norm()
    num = torch.zeros_like(g)
    den = 0.0
    for gi in G64:
        ni = gi.norm()
        if ni == 0 or n0 == 0:
            continue
        ts = max(float(gi @ g / (ni * n0)), 0.0)
        num += ts * gi * n0 / ni
        den += ts
    return num / den if den > 0 else num


def test_hand_computed_case() -> None:
    g0 = torch.tensor([2.0, 0.0])
    G = torch.tensor(
        [
            [1.0, 0.0],  # cos 1, rescaled to [2, 0]
            [3.0, 3.0],  # cos 1/sqrt2, rescaled to [sqrt2, sqrt2]
            [0.0, 5.0],  # cos 0 -> trust 0
            [-4.0, 0.0],  # cos -1 -> trust 0
        ]
    )
    r = 1 / math.sqrt(2)
    ts_sum = 1 + r
    expected = (torch.tensor([2.0, 0.0]) + r * torch.tensor([math.sqrt(2), math.sqrt(2)])) / ts_sum
    torch.testing.assert_close(fltrust(G, g0), expected)
    w = fltrust_weights(G, g0)
    # w_i = TS_i * ||g0|| / ||g_i|| / sum TS
    torch.testing.assert_close(
        w, torch.tensor([2.0 / ts_sum, r * 2 / math.sqrt(18) / ts_sum, 0.0, 0.0])
    )
    torch.testing.assert_close(w @ G, expected)


def test_opposite_gradient_gets_zero_weight() -> None:
    torch.manual_seed(0)
    g0 = torch.randn(50)
    G = torch.stack([g0 + 0.3 * torch.randn(50) for _ in range(5)] + [-3.0 * g0])
    w = fltrust_weights(G, g0)
    assert float(w[-1]) == 0.0
    assert bool((w[:-1] > 0).all())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.integers(1, 8),
    P=st.integers(1, 10),
    row=st.integers(0, 7),
    scale=st.floats(1e-3, 1e3),
)
def test_matches_naive_and_scale_invariant(
    seed: int, m: int, P: int, row: int, scale: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(m, P, generator=gen, dtype=torch.float64)
    g0 = torch.randn(P, generator=gen, dtype=torch.float64)
    out = fltrust(G, g0)
    torch.testing.assert_close(out, fltrust_naive(G, g0))
    G2 = G.clone()
    G2[row % m] *= scale
    torch.testing.assert_close(fltrust(G2, g0), out)
    # the update does not depend on ||g0|| beyond its direction's scale: 2 g0 doubles it
    torch.testing.assert_close(fltrust(G, 2.0 * g0), 2.0 * out)


def test_zero_rows_and_all_zero_trust() -> None:
    g0 = torch.tensor([1.0, 0.0])
    G = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    w = fltrust_weights(G, g0)
    assert float(w[0]) == 0.0 and float(w[1]) > 0
    # every gradient opposite or orthogonal: zero update and zero weights
    G = torch.tensor([[-1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert torch.equal(fltrust(G, g0), torch.zeros(2))
    out = FLTrust().aggregate(G, ctx=AggregationContext(root_gradient=g0))
    assert torch.equal(out.update, torch.zeros(2)) and torch.equal(out.weights, torch.zeros(3))
    assert out.diagnostics.extra["all_zero"] is True
    # zero root gradient: nobody can be trusted
    assert torch.equal(fltrust(torch.ones(2, 2), torch.zeros(2)), torch.zeros(2))


def test_class() -> None:
    agg = FLTrust(root_size=50)
    assert isinstance(agg, Aggregator)
    assert agg.name == "fltrust" and agg.needs_root_gradient is True
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    g0 = torch.tensor([1.0, 1.0])
    out = agg.aggregate(G, ctx=AggregationContext(root_gradient=g0))
    torch.testing.assert_close(out.update, fltrust(G, g0))
    torch.testing.assert_close(out.weights, fltrust_weights(G, g0))
    torch.testing.assert_close(out.weights @ G, out.update)
    assert out.diagnostics.scores[2] == 0.0
    assert agg.state_dict() == {}  # stateless between rounds
    with pytest.raises(ConfigError, match="stateless"):
        agg.load_state_dict({"root_size": 50})


def test_errors() -> None:
    G = torch.randn(3, 4)
    with pytest.raises(UpdateError, match="root_gradient"):
        FLTrust().aggregate(G)
    with pytest.raises(UpdateError, match="root_gradient"):
        FLTrust().aggregate(G, ctx=AggregationContext())
    with pytest.raises(UpdateError, match="length P=4"):
        fltrust(G, torch.randn(3))
    with pytest.raises(UpdateError, match="NaN"):
        fltrust(G, torch.tensor([1.0, float("nan"), 0.0, 0.0]))
    bad = G.clone()
    bad[1, 1] = float("inf")
    g0 = torch.randn(4)
    torch.testing.assert_close(fltrust(bad, g0), fltrust(G[[0, 2]], g0))  # row 1 excluded
    with pytest.raises(ConfigError, match="root_size"):
        FLTrust(root_size=0)
    with pytest.raises(ConfigError, match="root_size"):
        FLTrust(root_size="many")  # type: ignore[arg-type]


def test_huge_entries_fall_back_to_float64() -> None:
    G = torch.tensor([[3e38, 3e38], [-3e38, 0.0], [1.0, 2.0]])
    g0 = torch.tensor([1.0, 1.0])
    w = fltrust_weights(G, g0)
    assert bool(torch.isfinite(w).all()) and float(w[1]) == 0.0
    torch.testing.assert_close(fltrust(G, g0), fltrust_naive(G, g0).float())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("root", ["random", "zero"])
def test_non_finite_rows_are_excluded(bad: float, root: str) -> None:
    G = torch.randn(4, 100)
    G[2, 17] = bad
    g0 = torch.randn(100) if root == "random" else torch.zeros(100)
    g0[17] = 0.0  # the bad entry meets a zero of g0: still caught
    rest = G[[0, 1, 3]]
    torch.testing.assert_close(fltrust(G, g0), fltrust(rest, g0))
    out = FLTrust().aggregate(G, ctx=AggregationContext(root_gradient=g0))
    assert out.diagnostics.excluded == [2] and float(out.weights[2]) == 0.0
    assert bool(torch.isfinite(out.update).all())
    torch.testing.assert_close(out.weights[[0, 1, 3]], fltrust_weights(rest, g0))
