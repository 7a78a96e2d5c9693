"""Paper attacks: Full-Trim, Full-Krum, adaptive Krum/Trim, label flipping."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators import Tesseract, krum, median, trimmed_mean
from tesseract_fl.aggregators.krum import pairwise_sq_distances
from tesseract_fl.attacks import (
    ATTACKS,
    AdaptiveKrum,
    AttackContext,
    DefenseView,
    FullKrum,
    adaptive_krum,
    adaptive_trim,
    dilute,
    flip_labels,
    full_krum,
    full_krum_search,
    full_trim,
    lambda_upper_bound,
    make_attack,
    relabel,
    vector_flip_score,
)
from tesseract_fl.errors import ConfigError, UpdateError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def honest(m: int = 30, P: int = 40, seed: int = 0, shift: float = 0.3) -> torch.Tensor:
    return torch.randn(m, P, generator=gen(seed)) + shift


# ------------------------------------------------------------------------------- Full-Trim


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(3, 25),
    P=st.integers(1, 30),
    c=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    shift=st.floats(-1.0, 1.0),
)
def test_full_trim_beyond_opposite_extreme_within_factor_two(
    m: int, P: int, c: int, seed: int, shift: float
) -> None:
    G = honest(m, P, seed, shift)
    R = full_trim(G, c, gen(seed + 1))
    assert R.shape == (c, P)
    s = torch.sign(G.sum(0))
    for j in range(P):
        if s[j] > 0:  # benign direction up: push below the minimum, at most 2x away from it
            mn = float(G[:, j].min())
            lo, hi = (mn / 2, mn) if mn > 0 else (2 * mn, mn)
        else:
            mx = float(G[:, j].max())
            lo, hi = (mx, 2 * mx) if mx >= 0 else (mx, mx / 2)
        col = R[:, j]
        assert bool((col >= lo - 1e-6).all()) and bool((col <= hi + 1e-6).all()), (j, lo, hi)
        if s[j] > 0 and float(G[:, j].min()) > 0:
            assert bool((col <= float(G[:, j].min())).all())  # never above the benign minimum


def test_full_trim_hand_case() -> None:
    G = torch.tensor([[1.0, -2.0, 3.0], [2.0, -1.0, -4.0]])
    # s = (+, -, -); directed = (min=1, max=-1, max=3); 1 shrinks /b, -1 grows *b, 3 grows *b
    R = full_trim(G, 200, gen(3))
    assert bool(((R[:, 0] > 0.5) & (R[:, 0] <= 1.0)).all())
    assert bool(((R[:, 1] >= -1.0) & (R[:, 1] <= -0.5)).all())
    assert bool(((R[:, 2] >= 3.0) & (R[:, 2] <= 6.0)).all())
    # b is drawn independently per attacker and coordinate and covers (1, 2)
    assert float(R[:, 2].min()) < 3.3 and float(R[:, 2].max()) > 5.7
    assert len(set(R[:, 2].tolist())) == 200


def test_full_trim_is_seeded_and_validates() -> None:
    G = honest()
    assert torch.equal(full_trim(G, 3, gen(5)), full_trim(G, 3, gen(5)))
    assert not torch.equal(full_trim(G, 3, gen(5)), full_trim(G, 3, gen(6)))
    with pytest.raises(ConfigError):
        full_trim(G, 0, gen())
    bad = G.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(UpdateError):
        full_trim(bad, 3, gen())
    with pytest.raises(UpdateError):  # the matrix is checked before num_malicious
        full_trim(bad, 0, gen())
    bad[2, 3] = -float("inf")
    with pytest.raises(UpdateError, match="rows \\[2\\]"):
        full_trim(bad, 3, gen())
    # Finite entries whose column sum overflows are valid input, not a NaN/Inf row.
    big = G.clone()
    big[:, 0] = 3e38
    rows = full_trim(big, 3, gen())
    assert rows.shape == (3, G.shape[1]) and bool(torch.isfinite(rows[:, 1:]).all())


def test_full_trim_moves_trimmed_mean_and_median_against_benign_direction() -> None:
    G = honest(50, 200, 1, shift=0.5)
    c = 10
    A = G.clone()
    A[:c] = full_trim(G, c, gen())
    s = torch.sign(G.sum(0))
    for rule in (lambda X: trimmed_mean(X, c), median):
        clean, attacked = rule(G), rule(A)
        # every coordinate moves against the benign direction
        assert bool((s * (attacked - clean) <= 1e-7).all())
        assert float((s * (attacked - clean)).sum()) < 0


# ------------------------------------------------------------------------------- Full-Krum


def test_full_krum_makes_krum_select_a_malicious_row_below_the_bound() -> None:
    m, c = 30, 6
    G = honest(m, 60, 2)
    rows, lam = full_krum_search(G, c, c, gen())
    bound = lambda_upper_bound(G[c:], m, c)
    assert 0 < lam <= bound
    A = G.clone()
    A[:c] = rows
    chosen = krum(A, c)
    assert any(torch.equal(chosen, rows[i]) for i in range(c))
    # the rows are -lambda * sign(sum) plus tiny distinct noise
    s = torch.sign(G.sum(0))
    assert torch.allclose(rows, (-lam * s).expand(c, -1), atol=1e-4 / 60 + 1e-9)
    assert len({tuple(r.tolist()) for r in rows}) == c
    assert torch.equal(full_krum(G, c, c, gen()), rows)


def test_full_krum_lambda_is_the_first_halving_that_succeeds() -> None:
    m, c = 20, 4
    G = honest(m, 30, 4)
    rows, lam = full_krum_search(G, c, c, gen())
    bound = lambda_upper_bound(G[c:], m, c)
    halvings = math.log2(bound / lam)
    assert abs(halvings - round(halvings)) < 1e-6
    if round(halvings) > 0:  # twice this lambda failed: Krum then picked a benign row
        s = torch.sign(G.sum(0))
        A = G.clone()
        A[:c] = rows - lam * s  # = noise - 2 lambda s
        chosen = krum(A, c)
        assert not any(torch.equal(chosen, A[i]) for i in range(c))


def test_lambda_upper_bound_formula_by_hand() -> None:
    B = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    m, c = 7, 2  # m - c - 2 = 3 neighbours, but only 2 other benign rows exist
    # row sums of distances to the others: 15, 10, 15 -> min 10; max norm 10; P = 2
    expected = 10 / ((m - 2 * c - 1) * math.sqrt(2)) + 10 / math.sqrt(2)
    assert lambda_upper_bound(B, m, c) == pytest.approx(expected)


def test_full_krum_gives_up_when_krum_cannot_be_fooled() -> None:
    # Identical benign rows: Krum scores them 0, the attackers can never win.
    G = torch.ones(12, 5)
    rows, lam = full_krum_search(G, 3, 3, gen())
    assert lam == 0.0
    assert torch.equal(rows, G[:3])


def test_full_krum_respects_malicious_rows_and_validates() -> None:
    G = honest(20, 25, 7)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[[3, 9, 15]] = True
    rows, lam = full_krum_search(G, 3, 3, gen(), malicious_rows=mask)
    A = G.clone()
    A[mask] = rows
    chosen = krum(A, 3)
    assert any(torch.equal(chosen, rows[i]) for i in range(3)) and lam > 0
    with pytest.raises(UpdateError):
        full_krum(G, 2, 3, gen(), malicious_rows=mask)
    with pytest.raises(ConfigError):
        full_krum(G, 10, 3, gen())  # m - 2c - 1 < 1
    with pytest.raises(ConfigError):
        full_krum(G, 3, 18, gen())  # Krum needs m - c_max - 2 >= 1


def test_full_krum_shortcut_distances_match_the_aggregator() -> None:
    from tesseract_fl.attacks.full_krum import _AttackedGram

    G = honest(15, 33, 8)
    mask = torch.zeros(15, dtype=torch.bool)
    mask[[0, 4, 7]] = True
    s = torch.sign(G.sum(0))
    noise = torch.rand(3, 33, generator=gen()) * 1e-3
    A = G.clone()
    A[mask] = noise - 0.37 * s
    D = _AttackedGram(G, mask, s, noise).distances(0.37)
    assert torch.allclose(torch.from_numpy(D), pairwise_sq_distances(A), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("m", "P"), [(15, 33), (30, 70_000)])
def test_full_krum_assembled_gram_is_the_product_and_keeps_the_search(m: int, P: int) -> None:
    """The attacked matrix's Gram matrix assembled from the benign products and two small ones
    is its product (to rounding; bit for bit where the once-per-shape check says so), and the
    search returns the same rows and lambda whether the confirmation assembles it or multiplies
    the whole matrix."""
    fk = importlib.import_module("tesseract_fl.attacks.full_krum")  # the function shadows it

    G = honest(m, P, 9)
    c = m // 5
    mask = torch.zeros(m, dtype=torch.bool)
    mask[torch.arange(1, m, 4)[:c]] = True
    s = torch.sign(G.sum(0))
    noise = torch.rand(c, P, generator=gen()) * 1e-3
    gram = fk._AttackedGram(G, mask, s, noise)
    rows = noise - 0.37 * s
    A = G.clone()
    A[mask] = rows
    assert torch.allclose(gram.attacked_gram(rows), A @ A.T, rtol=1e-5, atol=1e-3)

    fk._ASSEMBLY_EXACT.clear()
    first = full_krum_search(G, c, c, gen(), malicious_rows=mask)  # multiplies, then checks
    checked = dict(fk._ASSEMBLY_EXACT)
    assert list(checked.values()) in ([True], [False])
    again = full_krum_search(G, c, c, gen(), malicious_rows=mask)  # assembles where exact
    for key in fk._ASSEMBLY_EXACT:
        fk._ASSEMBLY_EXACT[key] = False
    whole = full_krum_search(G, c, c, gen(), malicious_rows=mask)  # always multiplies
    fk._ASSEMBLY_EXACT.clear()
    for other in (again, whole):
        assert torch.equal(other[0], first[0]) and other[1] == first[1]
    assert first[1] > 0


def test_full_krum_confirmation_multiplies_where_assembly_is_not_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shape whose assembled Gram matrix was not bit-identical never uses it."""
    fk = importlib.import_module("tesseract_fl.attacks.full_krum")  # the function shadows it

    def never(*_args: object) -> None:
        raise AssertionError("assembled Gram matrix used after a failed check")

    G = honest(20, 40, 3)
    fk._ASSEMBLY_EXACT.clear()
    expected = full_krum_search(G, 4, 4, gen())
    assert len(fk._ASSEMBLY_EXACT) == 1
    for key in fk._ASSEMBLY_EXACT:
        fk._ASSEMBLY_EXACT[key] = False  # as if the check had failed
    monkeypatch.setattr(fk, "_krum_winner_from_gram", never)
    assert torch.equal(full_krum_search(G, 4, 4, gen())[0], expected[0])
    fk._ASSEMBLY_EXACT.clear()


# ------------------------------------------------------------------------------- adaptive


def test_dilute_restores_smallest_mean_coordinates_first_until_below_cutoff() -> None:
    mean = torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5, 0.6, -0.7, 0.8, 0.9, -1.0] * 2)
    s_g = torch.sign(mean)
    target = -3.0 * s_g  # flips every coordinate: FS = 9 * 20 = 180
    v, frac = dilute(target, mean, s_g, fs_high=100.0)
    # each 5% step is one coordinate; restoring k coordinates leaves FS = 9 (20 - k)
    assert vector_flip_score(v, s_g) < 100.0
    k = round(frac * 20)
    assert 9 * (20 - k) < 100 <= 9 * (20 - k + 1)
    order = torch.argsort(mean.abs(), stable=True)
    assert torch.equal(v[order[:k]], mean[order[:k]])
    assert torch.equal(v[order[k:]], target[order[k:]])


def test_dilute_leaves_stealthy_targets_and_unknown_cutoffs_alone() -> None:
    mean = torch.randn(50, generator=gen())
    target = torch.randn(50, generator=gen(1))
    s_g = torch.sign(mean)
    fs = vector_flip_score(target, s_g)
    assert torch.equal(dilute(target, mean, s_g, fs + 1.0)[0], target)
    v, frac = dilute(target, mean, s_g, None)
    assert torch.equal(v, target) and frac == 0.0
    # cut-off below even the mean's own flip-score: everything is restored
    v, frac = dilute(target, mean, torch.sign(-mean), 0.0)
    assert frac == 1.0 and torch.equal(v, mean)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 3.0, float("inf"), -float("inf")])
        | st.floats(-1e6, 1e6, width=32),
        min_size=1,
        max_size=80,
    ),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_restoration_order_is_the_stable_argsort_of_abs(
    values: list[float], dtype: torch.dtype
) -> None:
    adaptive = importlib.import_module("tesseract_fl.attacks.adaptive")
    mean = torch.tensor(values, dtype=dtype)
    assert torch.equal(adaptive.restoration_order(mean), torch.argsort(mean.abs(), stable=True))


def test_dilute_accepts_tensors_that_need_gradients_and_checks_its_order() -> None:
    mean = torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5] * 4)
    s_g = torch.sign(mean)
    target = (-3.0 * s_g).requires_grad_()
    v, frac = dilute(target, mean, s_g, fs_high=100.0)
    assert 0.0 < frac < 1.0 and v.requires_grad and v.dtype == target.dtype
    v64, _ = dilute(target.detach(), mean.double(), s_g, fs_high=100.0)
    assert v64.dtype == torch.float32  # the target's dtype
    order = torch.argsort(mean.abs(), stable=True)
    assert torch.equal(dilute(target.detach(), mean, s_g, 100.0, order=order)[0], v.detach())
    for bad in (order[:-1], torch.cat([order[:-1], order[:1]]), order.float(), order + 1):
        with pytest.raises(ConfigError, match="permutation"):
            dilute(target.detach(), mean, s_g, 100.0, order=bad)


def test_restoration_order_with_nan_falls_back_to_the_float_sort() -> None:
    adaptive = importlib.import_module("tesseract_fl.attacks.adaptive")
    # Two NaNs whose payloads order against their indices: read as integers they would swap.
    bits = torch.tensor([0x3F800000, 0x7FC00005, 0x3F000000, 0x7FC00001, 0x3F000000])
    mean = bits.to(torch.int32).view(torch.float32)
    assert torch.equal(adaptive.restoration_order(mean), torch.argsort(mean.abs(), stable=True))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(1, 5), q=st.floats(0.05, 0.95))
def test_adaptive_flip_scores_end_below_fs_high_when_a_dilution_exists(
    seed: int, c: int, q: float
) -> None:
    G = honest(25, 60, seed, shift=0.2)
    s_g = torch.sign(G.mean(0) + 0.3 * torch.randn(60, generator=gen(seed + 7)))
    fs = torch.tensor([vector_flip_score(g, s_g) for g in G])
    fs_high = float(torch.quantile(fs, q))
    mean = G.mean(0)
    exists = vector_flip_score(mean, s_g) < fs_high
    rows, rec = adaptive_trim(G, c, s_g, fs_high, gen(seed))
    assert rows.shape == (c, 60)
    if exists:
        assert all(vector_flip_score(r, s_g) < fs_high for r in rows)
    assert 0.0 <= rec["restored"] <= 1.0
    krows, krec = adaptive_krum(G, c, c, s_g, fs_high, gen(seed))
    if exists and krec["lambda"] > 0:
        # attacker 0 is exactly below; the others add noise of at most 1e-4/P per coordinate
        assert vector_flip_score(krows[0], s_g) < fs_high
        assert all(vector_flip_score(r, s_g) < fs_high * (1 + 1e-6) + 1e-9 for r in krows)


def test_adaptive_trim_compensation_chain() -> None:
    G = honest(30, 80, 11, shift=0.2)
    s_g = torch.sign(G.mean(0))
    fs = sorted(vector_flip_score(g, s_g) for g in G)
    fs_high = fs[-6]
    c = 5
    U = full_trim(G, c, gen(2))
    V, rec = adaptive_trim(G, c, s_g, fs_high, gen(2))  # same generator -> same targets U
    assert rec["restored"] > 0  # the Full-Trim targets were too loud and got diluted
    # attacker i targets u_i plus what attacker i-1 gave up; the last leftover closes the books
    carry = torch.zeros(80)
    for i in range(c):
        target = U[i] + carry
        carry = target - V[i]
    assert torch.allclose(U.sum(0) - V.sum(0), carry, atol=1e-5)
    assert rec["leftover_norm"] == pytest.approx(float(carry.norm()), rel=1e-5)


def test_adaptive_attacks_read_the_defense_without_changing_it() -> None:
    G = honest(20, 30, 3)
    defense = Tesseract(num_clients=20, c_max=4)
    for seed in range(3):
        defense.aggregate(honest(20, 30, 100 + seed))
    before = {
        k: (v.clone() if isinstance(v, torch.Tensor) else v)
        for k, v in defense.state_dict().items()
    }
    view = DefenseView(defense)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[:4] = True
    ctx = AttackContext(malicious=mask, c_max=4, round=3, generator=gen(), defense=view)
    for name in ("adaptive_krum", "adaptive_trim"):
        out = make_attack(name).poison(G, ctx)
        assert out.rows.shape == (4, 30)
        assert "restored" in out.record
    after = defense.state_dict()
    for k, v in before.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, after[k])
        else:
            assert v == after[k]
    with pytest.raises(AttributeError):
        view.reputation = torch.zeros(20)  # type: ignore[attr-defined]
    assert not hasattr(view, "aggregate")
    state = view.public_state()
    state["s_g"].fill_(7.0)  # a copy: the defense's s_g is untouched
    assert not bool((defense.public_state()["s_g"] == 7.0).any())


def test_adaptive_attacks_need_tesseract_state() -> None:
    G = honest(20, 30, 3)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[:4] = True
    from tesseract_fl.aggregators import Krum

    ctx = AttackContext(malicious=mask, c_max=4, generator=gen(), defense=DefenseView(Krum(4)))
    with pytest.raises(ConfigError, match="tesseract"):
        AdaptiveKrum().poison(G, ctx)


# ------------------------------------------------------------------------------- labels


def test_label_flipping_maps() -> None:
    y = torch.arange(10)
    assert flip_labels(y, 10).tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert relabel(y, 7, 1).tolist() == [0, 1, 2, 3, 4, 5, 6, 1, 8, 9]
    with pytest.raises(ConfigError):
        flip_labels(torch.tensor([10]), 10)
    with pytest.raises(ConfigError):
        make_attack("targeted_label_flip", source=3, target=3)
    with pytest.raises(ConfigError):
        make_attack("targeted_label_flip", source=12).poison_labels(y, 10)


# ------------------------------------------------------------------------------- registry


def test_registry_builds_every_attack_and_rejects_bad_parameters() -> None:
    for name in ATTACKS:
        attack = make_attack(name)
        assert attack.name == name
        assert any(
            callable(getattr(attack, m, None)) for m in ("poison", "poison_labels", "poison_batch")
        )
    with pytest.raises(ConfigError, match="allowed"):
        make_attack("full_trimm")
    with pytest.raises(ConfigError, match="accepted"):
        make_attack("full_trim", strength=2)
    assert isinstance(make_attack("FULL_KRUM"), FullKrum)
