"""TESSERACT (paper Algorithm 1): flip-scores, penalties, reputation, weights, state."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators import (
    AggregationContext,
    Aggregator,
    FedSGD,
    Tesseract,
    flip_scores,
    penalty_mask,
)
from tesseract_fl.aggregators.kernels import flip_scores as kernel
from tesseract_fl.aggregators.reference import flip_scores_reference
from tesseract_fl.aggregators.tesseract import LOG_FLOAT32_MAX
from tesseract_fl.errors import ConfigError, UpdateError

# --------------------------------------------------------------------------- flip-scores


def test_flip_scores_zero_direction_counts_every_nonzero() -> None:
    G = torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 3.0], [0.5, 0.0, -1.0]])
    # s_g = 0: FS_i = sum of squares (zeros add nothing)
    expected = torch.tensor([1.0 + 4.0, 9.0, 0.25 + 1.0])
    torch.testing.assert_close(flip_scores(G, torch.zeros(3)), expected)
    torch.testing.assert_close(flip_scores_reference(G, torch.zeros(3)).float(), expected)


def test_flip_scores_nonzero_direction_by_hand() -> None:
    G = torch.tensor(
        [
            [1.0, -2.0, 0.0],  # agrees on cols 0,1; col 2 is 0 = s_g -> 0
            [0.0, 0.0, 3.0],  # zeros never count; col 2: sign 1 != 0 -> 9
            [0.5, 0.0, -1.0],  # col 2: sign -1 != 0 -> 1
            [-1.0, 2.0, 0.0],  # both flipped -> 1 + 4
        ]
    )
    s_g = torch.tensor([1.0, -1.0, 0.0])
    expected = torch.tensor([0.0, 9.0, 1.0, 5.0])
    torch.testing.assert_close(flip_scores(G, s_g), expected)
    torch.testing.assert_close(flip_scores_reference(G, s_g).float(), expected)
    # no zero in s_g at all
    s2 = torch.tensor([-1.0, -1.0, 1.0])
    torch.testing.assert_close(flip_scores(G, s2), torch.tensor([1.0, 0.0, 1.25, 4.0]))


def test_flip_scores_validates_direction() -> None:
    G = torch.ones(2, 3)
    with pytest.raises(UpdateError, match="sign vector"):
        flip_scores(G, torch.tensor([0.5, 1.0, 1.0]))
    with pytest.raises(UpdateError, match="length"):
        flip_scores(G, torch.ones(4))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    zero_frac_g=st.sampled_from([0.0, 0.3]),
    zero_frac_s=st.sampled_from([0.0, 0.1, 1.0]),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_fast_flip_scores_match_naive(
    seed: int, zero_frac_g: float, zero_frac_s: float, scale: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(20, 5000, generator=gen) * scale
    G[torch.rand(20, 5000, generator=gen) < zero_frac_g] = 0.0
    s_g = torch.sign(torch.randn(5000, generator=gen))
    s_g[torch.rand(5000, generator=gen) < zero_frac_s] = 0.0
    fast = flip_scores(G, s_g)
    assert fast.shape == (20,) and fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), flip_scores_reference(G, s_g), rtol=1e-5, atol=0.0)


def test_flip_scores_chunking_matches_on_wide_matrix() -> None:
    # wide enough that rows are processed in several chunks
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(9, 600_000, generator=gen)
    s_g = torch.sign(torch.randn(600_000, generator=gen))
    s_g[:1000] = 0.0
    torch.testing.assert_close(
        flip_scores(G, s_g).double(), flip_scores_reference(G, s_g), rtol=1e-5, atol=0.0
    )


# --------------------------------------------------------------------------- penalty mask


def test_penalty_mask_both_ends() -> None:
    fs = torch.tensor([3.0, 1.0, 4.0, 1.5, 9.0, 2.0])  # m = 6, c_max = 1
    mask = penalty_mask(fs, 1, torch.arange(6))
    assert mask.tolist() == [False, True, False, False, True, False]
    mask2 = penalty_mask(fs, 2, torch.arange(6))  # lowest {1, 3}, highest {4, 2}
    assert mask2.tolist() == [False, True, True, True, True, False]


def test_penalty_mask_ties_broken_by_client_id() -> None:
    fs = torch.tensor([1.0, 1.0, 5.0, 5.0, 3.0, 3.0])
    # sorted by (fs, id): (1,0) (1,1) (3,4) (3,5) (5,2) (5,3): lowest id 0, highest id 3
    assert penalty_mask(fs, 1, torch.arange(6)).tolist() == [True, False, False, True, False, False]
    # ids, not row positions, break ties: rows 0/1 have ids 9/4, rows 2/3 have ids 2/7
    ids = torch.tensor([9, 4, 2, 7, 0, 1])
    assert penalty_mask(fs, 1, ids).tolist() == [False, True, False, True, False, False]


def test_penalty_mask_degenerate_cases() -> None:
    fs = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert not penalty_mask(fs, 0, torch.arange(4)).any()
    assert penalty_mask(fs, 2, torch.arange(4)).all()  # 2*c_max >= m: everyone
    assert penalty_mask(fs, 3, torch.arange(4)).all()
    with pytest.raises(UpdateError):
        penalty_mask(fs, -1, torch.arange(4))
    with pytest.raises(UpdateError):
        penalty_mask(fs, 1, torch.arange(3))


# --------------------------------------------------------------------------- reputation


def test_three_rounds_by_hand() -> None:
    mu = 0.9
    agg = Tesseract(num_clients=6, c_max=1, mu_d=mu)
    r = 2 / 6  # reward 2c_max/m
    p = -(1 - 2 / 6)  # penalty -(1 - 2c_max/m)

    # Round 1, s_g = 0: FS = sum of squares = [1, 4, 9, 16, 25, 36] -> penalize clients 0 and 5.
    G1 = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [5.0, 0.0], [6.0, 0.0]])
    out1 = agg.aggregate(G1)
    torch.testing.assert_close(out1.diagnostics.flip_scores, torch.tensor([1.0, 4, 9, 16, 25, 36]))
    assert out1.diagnostics.penalized.tolist() == [True, False, False, False, False, True]
    assert (out1.diagnostics.fs_low, out1.diagnostics.fs_high) == (1.0, 36.0)
    rs1 = torch.tensor([mu * 0 + p, mu * 0 + r, mu * 0 + r, mu * 0 + r, mu * 0 + r, mu * 0 + p])
    torch.testing.assert_close(agg.reputation, rs1.double())
    w1 = torch.softmax(rs1.double(), 0)
    torch.testing.assert_close(out1.weights, w1.float())
    torch.testing.assert_close(out1.update, w1.float() @ G1)
    assert agg.s_g.tolist() == [1.0, 0.0]  # sign(update): col 0 positive, col 1 zero

    # Round 2, s_g = [1, 0]: col 0 counts if negative, col 1 counts if nonzero.
    G2 = torch.tensor(
        [[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0], [-3.0, 0.0], [1.0, 2.0], [1.0, 0.5]]
    )  # FS = [0, 1, 1, 9, 4, 0.25] -> penalize 0 (lowest) and 3 (highest)
    out2 = agg.aggregate(G2)
    torch.testing.assert_close(out2.diagnostics.flip_scores, torch.tensor([0.0, 1, 1, 9, 4, 0.25]))
    assert out2.diagnostics.penalized.tolist() == [True, False, False, True, False, False]
    rs2 = torch.tensor(
        [
            mu * rs1[0] + p,  # 0.9 * -2/3 - 2/3 = -1.2667
            mu * rs1[1] + r,  # 0.9 * 1/3 + 1/3 = 0.6333
            mu * rs1[2] + r,
            mu * rs1[3] + p,  # 0.9 * 1/3 - 2/3 = -0.3667
            mu * rs1[4] + r,
            mu * rs1[5] + r,  # 0.9 * -2/3 + 1/3 = -0.2667
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(agg.reputation, rs2)
    w2 = torch.softmax(rs2, 0).float()
    torch.testing.assert_close(out2.update, w2 @ G2)
    # col 0: w0 - w1 + 2w2 - 3w3 + w4 + w5 > 0, col 1: w2 + 2w4 + 0.5w5 > 0
    assert agg.s_g.tolist() == [1.0, 1.0]

    # Round 3, s_g = [1, 1]: FS = [4, 0, 1, 0, 2, 9]; tie at 0 between clients 1 and 3 -> 1.
    G3 = torch.tensor([[-2.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.5, 0.5], [-1.0, -1.0], [3.0, -3.0]])
    out3 = agg.aggregate(G3)
    torch.testing.assert_close(out3.diagnostics.flip_scores, torch.tensor([4.0, 0, 1, 0, 2, 9]))
    assert out3.diagnostics.penalized.tolist() == [False, True, False, False, False, True]
    assert (agg.fs_low, agg.fs_high) == (0.0, 9.0)
    rs3 = torch.tensor(
        [
            mu * rs2[0] + r,
            mu * rs2[1] + p,
            mu * rs2[2] + r,
            mu * rs2[3] + r,
            mu * rs2[4] + r,
            mu * rs2[5] + p,
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(agg.reputation, rs3)
    torch.testing.assert_close(out3.diagnostics.reputation, rs3)
    w3 = torch.softmax(rs3, 0).float()
    torch.testing.assert_close(out3.weights, w3)
    torch.testing.assert_close(out3.weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close(out3.update, w3 @ G3)
    assert torch.equal(agg.s_g, torch.sign(out3.update))
    assert agg.round == 3
    assert out3.diagnostics.extra["halvings"] == 0


def test_overflow_rule_halves_stored_reputation() -> None:
    agg = Tesseract(num_clients=6, c_max=1, mu_d=1.0)
    state = agg.state_dict()
    state["reputation"] = torch.tensor([200.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    agg.load_state_dict(state)
    # FS = squares of [3, 1, 2, 4, 5, 6]: client 0 is in the middle -> rewarded.
    G = torch.tensor([[3.0], [1.0], [2.0], [4.0], [5.0], [6.0]])
    out = agg.aggregate(G)
    r, p = 2 / 6, -(1 - 2 / 6)
    before = torch.tensor([200 + r, p, r, r, r, p], dtype=torch.float64)
    # 200.33 > 88.72 -> /2 = 100.17 > 88.72 -> /4 = 50.08: two halvings of every stored RS
    assert out.diagnostics.extra["halvings"] == 2
    assert before[0] / 4 <= LOG_FLOAT32_MAX < before[0] / 2
    torch.testing.assert_close(agg.reputation, before / 4)
    assert torch.isfinite(out.weights).all() and torch.isfinite(out.update).all()
    torch.testing.assert_close(out.weights, torch.softmax(before / 4, 0).float())
    torch.testing.assert_close(out.weights.sum(), torch.tensor(1.0))


def test_c_max_zero_is_plain_mean() -> None:
    gen = torch.Generator().manual_seed(1)
    agg = Tesseract(num_clients=5, c_max=0)
    for _ in range(3):
        G = torch.randn(5, 40, generator=gen)
        out = agg.aggregate(G)
        assert not out.diagnostics.penalized.any()
        assert math.isnan(out.diagnostics.fs_low) and math.isnan(out.diagnostics.fs_high)
        torch.testing.assert_close(out.weights, torch.full((5,), 0.2))
        torch.testing.assert_close(out.update, G.mean(0))
    assert torch.equal(agg.reputation, torch.zeros(5, dtype=torch.float64))


def test_absent_clients_keep_reputation_and_m_is_present_count() -> None:
    mu = 0.99
    agg = Tesseract(num_clients=8, c_max=1, mu_d=mu)
    G1 = torch.arange(1.0, 9.0)[:, None]  # FS = squares: penalize ids 0 and 7
    agg.aggregate(G1)
    rs1 = agg.reputation.clone()
    r8, p8 = 2 / 8, -(1 - 2 / 8)
    torch.testing.assert_close(rs1, torch.tensor([p8] + [r8] * 6 + [p8], dtype=torch.float64))

    ids = torch.tensor([6, 1, 4, 3, 7])  # rows are not in id order
    G2 = torch.tensor([[1.0], [-5.0], [2.0], [-1.0], [3.0]])  # s_g = [1]: FS = [0, 25, 0, 1, 0]
    out = agg.aggregate(G2, client_ids=ids)
    # lowest: tie at 0 among ids 6, 4, 7 -> id 4; highest: id 1
    assert out.diagnostics.penalized.tolist() == [False, True, True, False, False]
    r5, p5 = 2 / 5, -(1 - 2 / 5)
    expected = rs1.clone()
    expected[6] = mu * rs1[6] + r5
    expected[1] = mu * rs1[1] + p5
    expected[4] = mu * rs1[4] + p5
    expected[3] = mu * rs1[3] + r5
    expected[7] = mu * rs1[7] + r5
    torch.testing.assert_close(agg.reputation, expected)
    for absent in (0, 2, 5):
        assert agg.reputation[absent] == rs1[absent]
    torch.testing.assert_close(out.diagnostics.reputation, expected[ids])
    torch.testing.assert_close(out.weights, torch.softmax(expected[ids], 0).float())


def test_state_dict_round_trip_gives_identical_next_round() -> None:
    gen = torch.Generator().manual_seed(7)
    rounds = [torch.randn(10, 300, generator=gen) for _ in range(4)]
    a = Tesseract(num_clients=10, c_max=2)
    for G in rounds[:2]:
        a.aggregate(G)
    state = a.state_dict()
    b = Tesseract(num_clients=10, c_max=2)
    b.load_state_dict(state)
    state["reputation"].fill_(123.0)  # the loaded copy must not alias the dict
    for G in rounds[2:]:
        oa, ob = a.aggregate(G), b.aggregate(G)
        assert torch.equal(oa.update, ob.update)
        assert torch.equal(oa.weights, ob.weights)
        assert torch.equal(oa.diagnostics.flip_scores, ob.diagnostics.flip_scores)
    assert torch.equal(a.reputation, b.reputation)
    assert torch.equal(a.s_g, b.s_g)
    assert (a.round, a.fs_low, a.fs_high) == (b.round, b.fs_low, b.fs_high)
    with pytest.raises(ConfigError, match="num_clients"):
        Tesseract(num_clients=11, c_max=2).load_state_dict(a.state_dict())


def test_fresh_state_round_trip() -> None:
    a = Tesseract(num_clients=4, c_max=1)
    b = Tesseract(num_clients=4, c_max=1)
    b.load_state_dict(a.state_dict())
    assert b.s_g is None and b.round == 0 and math.isnan(b.fs_high)


def test_public_state_and_properties() -> None:
    agg = Tesseract(num_clients=4, c_max=1)
    assert agg.public_state()["s_g"] is None and math.isnan(agg.fs_low)
    agg.aggregate(torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 0.5], [-2.0, -2.0]]))
    pub = agg.public_state()
    assert set(pub) == {"s_g", "fs_low", "fs_high", "reputation"}
    assert pub["fs_low"] == 0.25 and pub["fs_high"] == 10.0  # FS = [5, 10, 0.25, 8]
    pub["reputation"].fill_(5.0)
    assert not torch.equal(agg.reputation, pub["reputation"])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_row_is_penalized_and_gets_no_weight(value: float) -> None:
    agg = Tesseract(num_clients=4, c_max=1, mu_d=0.5)
    G = torch.ones(4, 3)
    G[2, 1] = value
    out = agg.aggregate(G)
    assert out.diagnostics.excluded == [2] and float(out.weights[2]) == 0.0
    assert bool(out.diagnostics.penalized[2]) and math.isinf(float(out.diagnostics.flip_scores[2]))
    # RS <- mu_d * RS - (1 - 2 c_max / m) with RS = 0, c_max = 1, m = 4
    assert float(agg.reputation[2]) == pytest.approx(-0.5)
    torch.testing.assert_close(out.update, torch.ones(3))
    assert agg.round == 1 and agg.s_g is not None


def test_width_must_not_change() -> None:
    agg = Tesseract(num_clients=4, c_max=1)
    agg.aggregate(torch.ones(4, 3))
    with pytest.raises(UpdateError, match="P=4"):
        agg.aggregate(torch.ones(4, 4))


def test_client_id_errors() -> None:
    agg = Tesseract(num_clients=5, c_max=1)
    G = torch.ones(4, 2)
    with pytest.raises(UpdateError, match="unique"):
        agg.aggregate(G, client_ids=[0, 1, 1, 2])
    with pytest.raises(UpdateError, match="lie in"):
        agg.aggregate(G, client_ids=[0, 1, 2, 5])
    with pytest.raises(UpdateError, match="integers"):
        agg.aggregate(G, client_ids=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(UpdateError, match="one id per row"):
        agg.aggregate(G, client_ids=[0, 1, 2])
    with pytest.raises(UpdateError, match="2\\*c_max"):
        agg.aggregate(torch.ones(2, 2), client_ids=[0, 1])
    assert agg.round == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_clients": 4, "c_max": 2},
        {"num_clients": 4, "c_max": -1},
        {"num_clients": 0, "c_max": 0},
        {"num_clients": 4, "c_max": 1, "mu_d": 1.5},
        {"num_clients": 4, "c_max": 1, "filter_threshold": -1.0},
        {"num_clients": 4, "c_max": 1, "filter_then": "nope"},
        {"num_clients": 4.5, "c_max": 1},
    ],
)
def test_constructor_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Tesseract(**kwargs)


# --------------------------------------------------------------------------- filter_then


def _low_reputation_for_client_0(agg: Tesseract) -> None:
    state = agg.state_dict()
    state["reputation"] = torch.tensor([-20.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    agg.load_state_dict(state)


@pytest.mark.parametrize("inner", ["fedsgd", FedSGD()])
def test_filter_then_fedsgd_drops_low_weight_clients(inner: str | Aggregator) -> None:
    agg = Tesseract(num_clients=6, c_max=1, filter_then=inner)
    _low_reputation_for_client_0(agg)
    G = torch.tensor([[100.0, -100.0], [1.0, 2.0], [2.0, 1.0], [3.0, 3.0], [0.5, 4.0], [4.0, 0.5]])
    out = agg.aggregate(G)
    # client 0's softmax weight ~ exp(-19.8) / 5 << 1e-4: dropped; the rest averaged uniformly
    assert out.diagnostics.extra["kept"].tolist() == [False, True, True, True, True, True]
    assert out.diagnostics.extra["softmax_weights"][0] < 1e-4
    torch.testing.assert_close(out.update, G[1:].mean(0))
    torch.testing.assert_close(out.weights, torch.tensor([0.0, 0.2, 0.2, 0.2, 0.2, 0.2]))
    assert torch.equal(agg.s_g, torch.sign(G[1:].mean(0)))
    assert agg.state_dict()["filter_then"] == "fedsgd"


def test_filter_then_passes_sample_counts_of_survivors() -> None:
    agg = Tesseract(num_clients=6, c_max=1, filter_then="fedsgd")
    _low_reputation_for_client_0(agg)
    G = torch.arange(12.0).reshape(6, 2)
    n = torch.tensor([50, 1, 1, 1, 1, 4])
    out = agg.aggregate(G, ctx=AggregationContext(n_samples=n))
    expected_w = torch.tensor([0.0, 1, 1, 1, 1, 4]) / 8
    torch.testing.assert_close(out.weights, expected_w)
    torch.testing.assert_close(out.update, expected_w @ G)


def test_filter_then_a_root_gradient_rule_gets_the_root_gradient(
    tiny_overrides: list[str],
) -> None:
    """In front of FLTrust or MoNNA the filter declares the root set they need and passes the
    round's root gradient through: the survivors get FLTrust's update against it."""
    from tesseract_fl.aggregators.fltrust import fltrust
    from tesseract_fl.experiments.config import resolve_config
    from tesseract_fl.experiments.runner import build_simulation

    assert not Tesseract(num_clients=4, c_max=1).needs_root_gradient
    agg = Tesseract(num_clients=6, c_max=1, filter_then="fltrust")
    assert agg.needs_root_gradient and agg.root_size == 100
    _low_reputation_for_client_0(agg)
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(6, 5, generator=gen)
    g0 = torch.randn(5, generator=gen)
    out = agg.aggregate(G, ctx=AggregationContext(root_gradient=g0))
    kept = out.diagnostics.extra["kept"]
    assert not bool(kept[0]) and bool(kept[1:].all())
    torch.testing.assert_close(out.update, fltrust(G[1:], g0))
    for inner in ("fltrust", "monna"):
        over = [*tiny_overrides, "defense=tesseract", f'defense.filter_then="{inner}"']
        sim = build_simulation(resolve_config("mnist", overrides=over))
        assert sim.root_sampler is not None
        sim.step()


def test_filter_then_keeps_everyone_when_all_would_drop() -> None:
    agg = Tesseract(num_clients=4, c_max=1, filter_then="fedsgd", filter_threshold=0.9)
    G = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    out = agg.aggregate(G)
    assert out.diagnostics.extra["kept"].all()
    torch.testing.assert_close(out.update, G.mean(0))


def _few_survivors(agg: Tesseract, survivors: int) -> None:
    """Reputations that leave only the first ``survivors`` clients above the filter threshold."""
    state = agg.state_dict()
    rep = torch.full((agg.num_clients,), -60.0, dtype=torch.float64)
    rep[:survivors] = 0.0
    state["reputation"] = rep
    agg.load_state_dict(state)


class _PlainAggregator:
    """An aggregator that is not a :class:`Defense` (a user's own object): the filter hands it
    the survivors' rows alone."""

    needs_root_gradient = False

    def __init__(self, rule: Aggregator) -> None:
        self.rule, self.name = rule, rule.name

    def aggregate(self, G, client_ids=None, ctx=None):  # type: ignore[no-untyped-def]
        return self.rule.aggregate(G, client_ids, ctx)

    def state_dict(self) -> dict:  # type: ignore[type-arg]
        return {}

    def load_state_dict(self, state: dict) -> None:  # type: ignore[type-arg]
        pass


@pytest.mark.parametrize(
    ("inner", "c_inner"),
    [("monna", lambda s: s - 1), ("trimmed_mean", lambda s: (s - 1) // 2), ("krum", None)],
)
def test_filter_then_reduces_the_inner_c_max_to_what_the_survivors_allow(
    inner: str, c_inner: object
) -> None:
    """When the filter leaves too few clients for the inner rule's c_max (MoNNA needs m > c_max,
    the trimmed mean m > 2 c_max), the inner rule runs as it does when non-finite rows were
    excluded: c_max reduced to what the survivors allow, dropped clients at weight 0."""
    from tesseract_fl.aggregators import make_aggregator

    gen = torch.Generator().manual_seed(3)
    G = torch.randn(10, 7, generator=gen)
    g0 = torch.randn(7, generator=gen)
    ctx = AggregationContext(root_gradient=g0)
    for survivors in (4, 3, 2, 1):
        agg = Tesseract(num_clients=10, c_max=4, filter_then=inner)
        _few_survivors(agg, survivors)
        out = agg.aggregate(G, ctx=ctx)
        assert out.diagnostics.extra["kept"].tolist() == [i < survivors for i in range(10)]
        assert bool((out.weights[survivors:] == 0).all())
        if callable(c_inner):
            c = min(4, c_inner(survivors))
            reference = make_aggregator(inner, num_clients=10, c_max=c)
            expected = reference.aggregate(G[:survivors], ctx=ctx).update
            assert out.diagnostics.extra["inner"].c_max_effective == c
            torch.testing.assert_close(out.update, expected, rtol=0, atol=0)
        assert torch.isfinite(out.update).all()


@pytest.mark.parametrize("inner", ["monna", "trimmed_mean", "krum", "foolsgold", "median"])
def test_filter_then_a_defense_gets_the_same_numbers_as_from_the_survivors_alone(
    inner: str,
) -> None:
    """Where the survivors allow the configured c_max, marking the dropped rows gives the inner
    rule bit for bit the update and weights it computes on the survivors' rows alone."""
    from tesseract_fl.aggregators import make_aggregator

    gen = torch.Generator().manual_seed(4)
    G = torch.randn(10, 6, generator=gen)
    ctx = AggregationContext(root_gradient=torch.randn(6, generator=gen))
    outs = []
    for wrap in (False, True):
        rule = make_aggregator(inner, num_clients=10, c_max=2)
        agg = Tesseract(
            num_clients=10, c_max=2, filter_then=_PlainAggregator(rule) if wrap else rule
        )
        _few_survivors(agg, 8)
        outs.append(agg.aggregate(G, ctx=ctx))
    assert torch.equal(outs[0].update, outs[1].update)
    assert torch.equal(outs[0].weights, outs[1].weights)
    assert bool((outs[0].weights[8:] == 0).all())


def test_filter_then_state_mismatch() -> None:
    plain = Tesseract(num_clients=4, c_max=1)
    filtered = Tesseract(num_clients=4, c_max=1, filter_then="fedsgd")
    with pytest.raises(ConfigError, match="filter_then"):
        plain.load_state_dict(filtered.state_dict())


def _vecdot_chunks(G: torch.Tensor, s: torch.Tensor, rows: int) -> torch.Tensor:
    """Flip-scores as the chunked clamp form with ``torch.linalg.vecdot`` per chunk: the sums
    that earlier releases computed, which the stored runs' flip-scores hold."""
    out = torch.zeros(G.shape[0], dtype=G.dtype)
    zero_idx = (s == 0).nonzero().flatten()
    for i in range(0, G.shape[0], rows):
        g = G[i : i + rows]
        u = torch.clamp(g * s, max=0)
        out[i : i + rows] += torch.linalg.vecdot(u, u)
        if zero_idx.numel():
            gz = g.index_select(1, zero_idx)
            out[i : i + rows] += torch.linalg.vecdot(gz, gz)
    return out


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 12),
    P=st.sampled_from([1, 5, 300, 70_000, 400_000]),
    zeros=st.sampled_from(["none", "some", "all"]),
    seed=st.integers(0, 1000),
)
def test_flip_scores_keep_the_chunked_vecdot_sums_bit_for_bit(
    m: int, P: int, zeros: str, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(m, P, generator=g)
    s = torch.sign(torch.randn(P, generator=g))
    if zeros == "some":
        s[torch.rand(P, generator=g) < 0.2] = 0.0
    elif zeros == "all":
        s.zero_()
    rows = max(1, min(m, kernel._CHUNK_ELEMENTS_CPU // P))
    assert torch.equal(kernel.flip_scores_fast(G, s), _vecdot_chunks(G, s, rows))
