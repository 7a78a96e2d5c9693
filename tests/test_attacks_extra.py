"""ALIE, IPM, Min-Max / Min-Sum, sign flipping and Gaussian noise: hand cases, naive float64
references (loops over rows, NumPy statistics), constraint properties and parameter checks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.attacks.alie import ALIE, alie, alie_z_max
from tesseract_fl.attacks.base import AttackContext
from tesseract_fl.attacks.gaussian import GaussianNoise, gaussian_noise
from tesseract_fl.attacks.ipm import IPM, ipm
from tesseract_fl.attacks.min_max import (
    PERTURBATIONS,
    MinMax,
    MinSum,
    min_max,
    min_sum,
    perturbation_vector,
    search_gamma,
)
from tesseract_fl.attacks.sign_flip import SignFlip, sign_flip
from tesseract_fl.errors import ConfigError, UpdateError


def rand(m: int, P: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(m, P, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def ctx_for(m: int, rows: list[int], seed: int = 0) -> AttackContext:
    mask = torch.zeros(m, dtype=torch.bool)
    mask[rows] = True
    return AttackContext(malicious=mask, generator=torch.Generator().manual_seed(seed))


def np_direction(B: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, p) computed independently with NumPy in float64."""
    mu = B.mean(axis=0)
    if kind == "std":
        return mu, -B.std(axis=0, ddof=1)
    if kind == "sign":
        return mu, -np.sign(mu)
    return mu, -mu / np.linalg.norm(mu)


def max_dist(row: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(largest squared distance row -> benign, largest benign-benign squared distance)."""
    k = B.shape[0]
    mal = max(float(((B[i] - row) ** 2).sum()) for i in range(k))
    ben = max(float(((B[i] - B[j]) ** 2).sum()) for i in range(k) for j in range(k))
    return mal, ben


def sum_dist(row: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(sum of squared distances row -> benign, largest such sum of a benign row)."""
    k = B.shape[0]
    mal = sum(float(((B[i] - row) ** 2).sum()) for i in range(k))
    ben = max(sum(float(((B[i] - B[j]) ** 2).sum()) for j in range(k)) for i in range(k))
    return mal, ben


# ----------------------------------------------------------------------------------------- ALIE


def test_alie_z_max_paper_example() -> None:
    # n=100, f=20: s = floor(51) - 20 = 31, z = Phi^-1(69/100).
    z = alie_z_max(100, 20)
    assert round(z, 3) == 0.496
    assert 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) == pytest.approx(0.69, abs=1e-12)
    # n=10, f=2: s = 6 - 2 = 4, Phi(z) = 0.6 -> z = 0.2533.
    assert alie_z_max(10, 2) == pytest.approx(0.253347, abs=1e-6)
    # Odd n: n=11, f=2: s = floor(6.5) - 2 = 4, Phi(z) = 7/11.
    z11 = alie_z_max(11, 2)
    assert 0.5 * (1.0 + math.erf(z11 / math.sqrt(2.0))) == pytest.approx(7 / 11, abs=1e-12)


@pytest.mark.parametrize(("n", "f"), [(10, 6), (10, 7), (4, 3)])
def test_alie_z_max_attacker_majority_is_config_error(n: int, f: int) -> None:
    with pytest.raises(ConfigError, match="pass z explicitly"):
        alie_z_max(n, f)


def test_alie_by_hand() -> None:
    B = torch.tensor([[0.0, 2.0], [2.0, 2.0], [4.0, 8.0]], dtype=torch.float64)
    # mu = [2, 4]; sample std: col0 sqrt((4+0+4)/2) = 2, col1 sqrt((4+4+16)/2) = sqrt(12).
    rows = alie(B, 3, z=1.0)
    expect = torch.tensor([0.0, 4.0 - math.sqrt(12.0)], dtype=torch.float64)
    assert rows.shape == (3, 2)
    for r in rows:
        torch.testing.assert_close(r, expect)
    up = alie(B, 1, z=0.5, sign=1)
    torch.testing.assert_close(up[0], torch.tensor([3.0, 4.0 + 0.5 * math.sqrt(12.0)]).double())
    assert torch.equal(alie(B, 1, z=0.5, sign="+"), up)


def test_alie_default_z_uses_all_clients() -> None:
    B = rand(80, 6, seed=1)
    z = alie_z_max(100, 20)
    Bn = B.numpy()
    expect = Bn.mean(0) - z * Bn.std(0, ddof=1)
    rows = alie(B, 20)  # num_clients defaults to 80 + 20
    assert rows.shape == (20, 6)
    np.testing.assert_allclose(
        rows.numpy(), np.broadcast_to(expect, (20, 6)), rtol=1e-12, atol=1e-12
    )
    # num_clients given explicitly changes z: n=200, f=20 -> s=81, Phi^-1(119/200).
    rows200 = alie(B, 20, num_clients=200)
    z200 = alie_z_max(200, 20)
    assert z200 != pytest.approx(z)
    np.testing.assert_allclose(rows200[0].numpy(), Bn.mean(0) - z200 * Bn.std(0, ddof=1))


def test_alie_class_uses_benign_rows_only() -> None:
    m, P = 100, 5
    G = rand(m, P, seed=2, dtype=torch.float32)
    bad = list(range(0, 40, 2))  # 20 non-contiguous attackers
    ctx = ctx_for(m, bad)
    out = ALIE().poison(G, ctx)
    assert out.record["z"] == pytest.approx(0.4959, abs=1e-4)
    assert out.rows.shape == (20, P) and out.rows.dtype == torch.float32
    B = G[~ctx.malicious].double().numpy()
    expect = B.mean(0) - out.record["z"] * B.std(0, ddof=1)
    np.testing.assert_allclose(out.rows.double().numpy(), np.tile(expect, (20, 1)), atol=1e-5)
    # The attackers' own honest rows do not enter the statistics.
    G2 = G.clone()
    G2[bad] = 1e3
    assert torch.equal(ALIE().poison(G2, ctx).rows, out.rows)
    fixed = ALIE(z=1.5, sign=1).poison(G, ctx)
    assert fixed.record["z"] == 1.5
    np.testing.assert_allclose(
        fixed.rows[0].double().numpy(), B.mean(0) + 1.5 * B.std(0, ddof=1), atol=1e-5
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sign": 0},
        {"sign": 2.0},
        {"sign": "x"},
        {"sign": True},
        {"z": -0.1},
        {"z": float("nan")},
        {"z": "big"},
    ],
)
def test_alie_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ALIE(**kwargs)
    with pytest.raises(ConfigError):
        alie(rand(4, 3), 2, **kwargs)


def test_alie_needs_two_benign_rows() -> None:
    with pytest.raises(ConfigError, match="at least 2 benign"):
        ALIE(z=1.0).poison(rand(3, 4), ctx_for(3, [0, 1]))
    with pytest.raises(ConfigError):
        alie(rand(1, 4), 1, z=1.0)


# ------------------------------------------------------------------------------------------ IPM


def test_ipm_by_hand() -> None:
    B = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    rows = ipm(B, 3, eps=0.5)
    assert torch.equal(rows, torch.tensor([[-1.0, -1.5]] * 3))
    assert torch.equal(ipm(B, 1)[0], torch.tensor([-0.2, -0.3]))


def test_ipm_class_is_minus_eps_benign_mean() -> None:
    G = rand(10, 7, seed=3)
    ctx = ctx_for(10, [1, 4, 9])
    out = IPM(eps=2.0).poison(G, ctx)
    benign = G[[0, 2, 3, 5, 6, 7, 8]]
    torch.testing.assert_close(out.rows, (-2.0 * benign.mean(0)).expand(3, -1))
    assert out.record == {"eps": 2.0}
    G2 = G.clone()
    G2[[1, 4, 9]] = -50.0
    assert torch.equal(IPM(eps=2.0).poison(G2, ctx).rows, out.rows)


@pytest.mark.parametrize("eps", [0, -0.1, float("inf"), float("nan"), "a", True])
def test_ipm_bad_eps(eps: Any) -> None:
    with pytest.raises(ConfigError, match="eps"):
        IPM(eps=eps)
    with pytest.raises(ConfigError, match="eps"):
        ipm(rand(3, 2), 1, eps=eps)


# ------------------------------------------------------------------------------ gamma search


def test_search_gamma_converges_below_threshold() -> None:
    calls: list[float] = []

    def ok(g: float) -> bool:
        calls.append(g)
        return g <= 3.3

    g = search_gamma(ok, 10.0, 1e-5)
    assert 3.3 - 2e-5 <= g <= 3.3
    assert calls[0] == 10.0 and calls[1] == 5.0 and calls[2] == 2.5  # step gamma_init/2, halving
    assert len(calls) < 40


def test_search_gamma_none_and_all() -> None:
    assert search_gamma(lambda g: False, 10.0, 1e-5) == 0.0
    top = search_gamma(lambda g: True, 10.0, 1e-5)
    assert 20.0 - 1e-4 < top < 20.0  # capped at 2 * gamma_init
    assert search_gamma(lambda g: g <= 0.25, 1.0, 1e-3) == pytest.approx(0.25, abs=2e-3)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "x"])
def test_search_gamma_bad_parameters(bad: Any) -> None:
    with pytest.raises(ConfigError, match="gamma_init"):
        search_gamma(lambda g: True, bad, 1e-5)
    with pytest.raises(ConfigError, match="tau"):
        search_gamma(lambda g: True, 10.0, bad)


# ------------------------------------------------------------------------- Min-Max / Min-Sum


def test_min_max_and_min_sum_by_hand_1d() -> None:
    # Benign {0, 2}: mu = 1, sigma = sqrt(2), p = -sqrt(2). Largest benign distance 2;
    # malicious row 1 - g sqrt(2) is at distance 1 + g sqrt(2) from 2 -> g* = 1/sqrt(2).
    # Min-Sum: (1 - g sqrt2)^2 + (1 + g sqrt2)^2 = 2 + 4 g^2 <= 4 -> g* = 1/sqrt(2) too.
    B = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    for fn in (min_max, min_sum):
        rows, g = fn(B, 2)
        assert g == pytest.approx(1 / math.sqrt(2), abs=3e-5) and g <= 1 / math.sqrt(2)
        torch.testing.assert_close(rows, torch.full((2, 1), 1.0 - g * math.sqrt(2)).double())


def test_min_max_differs_from_min_sum() -> None:
    # Benign {0, 0, 3} in 1-D: mu = 1, sigma = sqrt(3), p = -sqrt(3).
    # Min-Max: distance to 3 is 2 + g sqrt3 <= 3 -> g* = 1/sqrt(3).
    # Min-Sum: 2 (1 - g sqrt3)^2 + (2 + g sqrt3)^2 = 6 + 9 g^2 (cross terms cancel) <= max benign
    # sum 18 -> g* = sqrt(12/9) = 2/sqrt(3).
    B = torch.tensor([[0.0], [0.0], [3.0]], dtype=torch.float64)
    assert min_max(B, 1)[1] == pytest.approx(1 / math.sqrt(3), abs=3e-5)
    assert min_sum(B, 1)[1] == pytest.approx(2 / math.sqrt(3), abs=3e-5)


def check_constraint(fn: Any, B: torch.Tensor, kind: str, gamma_init: float = 10.0) -> float:
    """The found gamma satisfies the constraint; a slightly larger gamma violates it."""
    rows, g = fn(B, 3, perturbation=kind, gamma_init=gamma_init)
    Bn = B.numpy()
    mu, p = np_direction(Bn, kind)
    np.testing.assert_allclose(rows.numpy(), np.tile(mu + g * p, (3, 1)), rtol=1e-12, atol=1e-12)
    measure = max_dist if fn is min_max else sum_dist
    mal, ben = measure(rows[0].numpy(), Bn)
    assert g > 0.0
    assert g < 2 * gamma_init - 1e-3
    assert mal <= ben * (1 + 1e-12)
    g_up = g * (1 + 1e-3) + 1e-3
    mal_up, _ = measure(mu + g_up * p, Bn)
    assert mal_up > ben
    return g


@pytest.mark.parametrize("kind", PERTURBATIONS)
@pytest.mark.parametrize("fn", [min_max, min_sum])
def test_constraint_tight(fn: Any, kind: str) -> None:
    check_constraint(fn, rand(8, 30, seed=4) + 0.3, kind)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(2, 9),
    P=st.integers(1, 12),
    kind=st.sampled_from(PERTURBATIONS),
    shift=st.floats(-3.0, 3.0),
)
def test_constraint_property(seed: int, k: int, P: int, kind: str, shift: float) -> None:
    B = rand(k, P, seed=seed) + shift
    if kind != "std" and float(B.mean(0).abs().min()) < 1e-3:
        return  # sign(mu) / mu/||mu|| near a zero coordinate: ill-conditioned, skip
    for fn in (min_max, min_sum):
        check_constraint(fn, B, kind, gamma_init=1000.0)


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_min_sum_closed_form(kind: str) -> None:
    # The cross terms sum to 0 over the benign rows, so Min-Sum's condition reduces to
    # gamma^2 ||p||^2 <= max_i ||g_i - mu||^2.
    B = rand(6, 20, seed=5) - 0.5
    mu, p = np_direction(B.numpy(), kind)
    g_star = math.sqrt(float(((B.numpy() - mu) ** 2).sum(1).max()) / float(p @ p))
    g = min_sum(B, 1, perturbation=kind)[1]
    assert g_star - 3e-5 <= g <= g_star


def test_min_max_class_benign_rows_record_and_dtype() -> None:
    G = rand(12, 9, seed=6, dtype=torch.float32)
    bad = [0, 5, 11]
    ctx = ctx_for(12, bad)
    benign = G[~ctx.malicious]
    for cls, fn in ((MinMax, min_max), (MinSum, min_sum)):
        out = cls(perturbation="sign").poison(G, ctx)
        rows, g = fn(benign, 3, perturbation="sign")
        assert out.record == {"gamma": g} and g > 0
        assert torch.equal(out.rows, rows)
        assert out.rows.dtype == torch.float32 and out.rows.shape == (3, 9)
        G2 = G.clone()
        G2[bad] = 7.0
        assert torch.equal(cls(perturbation="sign").poison(G2, ctx).rows, out.rows)
        measure = max_dist if fn is min_max else sum_dist
        mal, ben = measure(out.rows[0].double().numpy(), benign.double().numpy())
        assert mal <= ben * (1 + 1e-5)


def test_perturbation_vector_and_zero_mean() -> None:
    B = torch.tensor([[1.0, -2.0, 0.0], [3.0, 2.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(
        perturbation_vector(B, "std"), -torch.tensor([2.0, 4.0, 0.0]).double() / math.sqrt(2)
    )
    torch.testing.assert_close(
        perturbation_vector(B, "sign"), torch.tensor([-1.0, 0.0, 0.0]).double()
    )
    torch.testing.assert_close(
        perturbation_vector(B, "unit_vec"), torch.tensor([-1.0, 0.0, 0.0]).double()
    )
    # mu = 0: unit_vec is undefined, p = 0 and the attack sends mu (no NaN).
    Z = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    rows, _ = min_max(Z, 2, perturbation="unit_vec")
    assert torch.equal(rows, torch.zeros(2, 2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"perturbation": "gauss"},
        {"perturbation": 1},
        {"gamma_init": 0},
        {"gamma_init": -2.0},
        {"tau": 0.0},
        {"tau": float("inf")},
    ],
)
def test_min_max_bad_parameters(kwargs: dict[str, Any]) -> None:
    for cls, fn in ((MinMax, min_max), (MinSum, min_sum)):
        with pytest.raises(ConfigError):
            cls(**kwargs)
        with pytest.raises(ConfigError):
            fn(rand(4, 3), 1, **kwargs)


def test_min_max_needs_two_benign_rows() -> None:
    with pytest.raises(ConfigError, match="at least 2 benign"):
        MinMax().poison(rand(4, 3), ctx_for(4, [0, 1, 2]))
    with pytest.raises(ConfigError):
        min_sum(rand(1, 3), 1)


# ------------------------------------------------------------------------------------ sign flip


def test_sign_flip_by_hand() -> None:
    G = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    assert torch.equal(sign_flip(G), torch.tensor([[-1.0, 2.0], [-0.5, -0.0]]))
    assert torch.equal(sign_flip(G, scale=3.0), torch.tensor([[-3.0, 6.0], [-1.5, 0.0]]))
    assert torch.equal(G, torch.tensor([[1.0, -2.0], [0.5, 0.0]]))  # input untouched


def test_sign_flip_class_uses_own_rows_only() -> None:
    G = rand(8, 5, seed=7)
    ctx = ctx_for(8, [6, 2])
    out = SignFlip(scale=2.0).poison(G, ctx)
    torch.testing.assert_close(out.rows, -2.0 * G[[2, 6]])  # ascending attacker-row order
    assert out.record == {"scale": 2.0}
    G2 = G.clone()
    G2[[0, 1, 3, 4, 5, 7]] = 99.0
    assert torch.equal(SignFlip(scale=2.0).poison(G2, ctx).rows, out.rows)
    # All clients malicious is fine: no benign statistics needed.
    assert SignFlip().poison(G, ctx_for(8, list(range(8)))).rows.shape == (8, 5)


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), None])
def test_sign_flip_bad_scale(scale: Any) -> None:
    with pytest.raises(ConfigError, match="scale"):
        SignFlip(scale=scale)
    with pytest.raises(ConfigError, match="scale"):
        sign_flip(rand(2, 2), scale=scale)


# ------------------------------------------------------------------------------------- Gaussian


def test_gaussian_shape_seed_and_statistics() -> None:
    like = torch.zeros(1, dtype=torch.float64)
    a = gaussian_noise(3, 11, 2.0, torch.Generator().manual_seed(1), like)
    b = gaussian_noise(3, 11, 2.0, torch.Generator().manual_seed(1), like)
    c = gaussian_noise(3, 11, 2.0, torch.Generator().manual_seed(2), like)
    assert a.shape == (3, 11) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    big = gaussian_noise(4, 50_000, 0.3, torch.Generator().manual_seed(3))
    assert big.dtype == torch.float32
    assert float(big.std()) == pytest.approx(0.3, rel=0.01)
    assert abs(float(big.mean())) < 0.005
    assert not torch.equal(big[0], big[1])  # attackers draw independently


def test_gaussian_class() -> None:
    G = rand(6, 4000, seed=8, dtype=torch.float32)
    out1 = GaussianNoise(sigma=5.0).poison(G, ctx_for(6, [1, 3], seed=9))
    out2 = GaussianNoise(sigma=5.0).poison(G * 100, ctx_for(6, [1, 3], seed=9))
    out3 = GaussianNoise(sigma=5.0).poison(G, ctx_for(6, [1, 3], seed=10))
    assert out1.rows.shape == (2, 4000) and out1.rows.dtype == torch.float32
    assert torch.equal(out1.rows, out2.rows)  # independent of the gradients' values
    assert not torch.equal(out1.rows, out3.rows)
    assert float(out1.rows.std()) == pytest.approx(5.0, rel=0.05)
    assert out1.record == {"sigma": 5.0}
    assert GaussianNoise().sigma == 1.0


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("inf"), "loud", False])
def test_gaussian_bad_sigma(sigma: Any) -> None:
    with pytest.raises(ConfigError, match="sigma"):
        GaussianNoise(sigma=sigma)
    with pytest.raises(ConfigError, match="sigma"):
        gaussian_noise(2, 3, sigma)


# ------------------------------------------------------------------------------ all attacks


ALL = [ALIE(), IPM(), MinMax(), MinSum(), SignFlip(), GaussianNoise()]


@pytest.mark.parametrize("attack", ALL, ids=lambda a: a.name)
def test_nan_input_is_update_error(attack: Any) -> None:
    G = rand(10, 4)
    G[7, 2] = float("nan")
    with pytest.raises(UpdateError, match="NaN"):
        attack.poison(G, ctx_for(10, [0, 1]))


@pytest.mark.parametrize("attack", ALL, ids=lambda a: a.name)
def test_bad_mask_is_update_error(attack: Any) -> None:
    ctx = AttackContext(malicious=torch.tensor([True, False, False]))
    with pytest.raises(UpdateError, match="mask"):
        attack.poison(rand(10, 4), ctx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("attack", ALL, ids=lambda a: a.name)
def test_dtype_shape_and_determinism(attack: Any, dtype: torch.dtype) -> None:
    G = rand(10, 6, seed=11, dtype=dtype)
    a = attack.poison(G, ctx_for(10, [2, 3, 8], seed=4))
    b = attack.poison(G, ctx_for(10, [2, 3, 8], seed=4))
    assert a.rows.shape == (3, 6) and a.rows.dtype == dtype
    assert bool(torch.isfinite(a.rows).all())
    assert torch.equal(a.rows, b.rows) and a.record == b.record
    a.rows[0, 0] = 123.0  # rows are owned by the caller, not views of each other or of G
    assert float(a.rows[1, 0]) != 123.0 and not bool((G == 123.0).any())


def test_names_and_reprs() -> None:
    assert [a.name for a in ALL] == ["alie", "ipm", "min_max", "min_sum", "sign_flip", "gaussian"]
    assert repr(ALIE(z=0.5, sign=1)) == "ALIE(z=0.5, sign=+1)"
    assert repr(IPM(eps=0.2)) == "IPM(eps=0.2)"
    assert (
        repr(MinSum(perturbation="sign")) == "MinSum(perturbation='sign', gamma_init=10, tau=1e-05)"
    )
    assert repr(SignFlip(scale=2)) == "SignFlip(scale=2)"
    assert repr(GaussianNoise(sigma=0.5)) == "GaussianNoise(sigma=0.5)"
    with pytest.raises(TypeError):
        IPM(0.5)  # type: ignore[misc]  # keyword-only


def test_benign_rows_view_when_one_block_else_copy() -> None:
    from tesseract_fl.attacks.base import benign_rows, malicious_mask

    G = torch.randn(10, 7)
    for rows in (None, [7, 8, 9], [0, 9], [0, 2, 5]):  # first, last, both ends, scattered
        mask = malicious_mask(10, 3 if rows is None or len(rows) == 3 else len(rows), rows)
        got = benign_rows(G, mask)
        assert torch.equal(got, G[~mask]) and got.is_contiguous()
        block = rows in (None, [7, 8, 9], [0, 9])
        shares = got.untyped_storage().data_ptr() == G.untyped_storage().data_ptr()
        assert shares == block  # a view of G exactly when the benign rows are one block
    Gt = torch.randn(7, 10).T  # not contiguous: the rows are copied
    got = benign_rows(Gt, malicious_mask(10, 3))
    assert torch.equal(got, Gt[3:]) and got.is_contiguous()
