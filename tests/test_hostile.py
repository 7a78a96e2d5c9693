"""Hostile inputs (docs/design.md, "Hostile-input policy"): every aggregator under
NaN/Inf/zero/huge/duplicate rows, dropouts, ``stack_updates``, and fuzzing of the config loader,
the grid expander and the IDX reader.

The policy under test is documented in ``aggregators/base.py`` (``split_finite``) and in the
reliability page of the docs (docs/reliability.md, "Hostile input policy").
"""

from __future__ import annotations

import gzip
import math
import string
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators import (
    AggregationContext,
    FoolsGold,
    Tesseract,
    make_aggregator,
)
from tesseract_fl.aggregators.base import stack_updates
from tesseract_fl.data.idx import read_idx, write_idx
from tesseract_fl.data.registry import load_dataset
from tesseract_fl.errors import TesseractFLError, UpdateError
from tesseract_fl.experiments.config import build_config, load_toml, resolve_config
from tesseract_fl.experiments.grid import expand_grid

HUGE = 1e30
KINDS = ("honest", "nan", "inf", "-inf", "zero", "huge", "-huge", "dup")
NON_FINITE = {"nan", "inf", "-inf"}
HOSTILE_FINITE = {"zero", "huge", "-huge"}
FAST = settings(
    max_examples=25,
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def max_c(name: str, m: int) -> int:
    """Largest c_max each rule accepts for m rows (its documented size check)."""
    return {
        "fedsgd": 0,
        "median": 0,
        "foolsgold": 0,
        "fltrust": 0,
        "tesseract": (m - 1) // 2,
        "trimmed_mean": (m - 1) // 2,
        "faba": (m - 1) // 2,
        "krum": m - 3,
        "bulyan": (m - 1) // 4,
        "geomed": 0,
        "centered_clipping": 0,
        "meamed": (m - 1) // 2,
        "nnm+median": m - 1,
        "dnc": m - 1,
        "bucketing+median": 0,
        "monna": m - 1,
        "caf": (m - 1) // 2,
        "flame": 0,
    }[name]


def c_effective(name: str, c: int, m_finite: int) -> int:
    """The documented reduction of c_max to the finite row count."""
    if name in ("trimmed_mean", "faba", "meamed", "caf"):
        return min(c, (m_finite - 1) // 2)
    if name == "monna":
        return min(c, m_finite - 1)
    if name == "bulyan":
        return min(c, (m_finite - 1) // 4)
    if name == "krum":
        return max(0, min(c, m_finite - 3))
    if name == "dnc":
        return max(0, min(c, m_finite - 1))
    return c


def hostile_matrix(kinds: list[str], P: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """G [m, P] with row i of kind ``kinds[i]``; duplicates copy an earlier row and its kind."""
    rng = np.random.default_rng(seed)
    G = torch.from_numpy(rng.normal(size=(len(kinds), P)).astype(np.float32))
    out = list(kinds)
    for i, kind in enumerate(kinds):
        if kind == "nan":
            G[i, int(rng.integers(P))] = math.nan
        elif kind == "inf":
            G[i, int(rng.integers(P))] = math.inf
        elif kind == "-inf":
            G[i] = -math.inf
        elif kind == "zero":
            G[i] = 0.0
        elif kind == "huge":
            G[i] = HUGE
        elif kind == "-huge":
            G[i] = torch.where(G[i] > 0, -HUGE, HUGE)  # huge and sign-flipped
        elif kind == "dup" and i > 0:
            j = int(rng.integers(i))
            G[i] = G[j]
            out[i] = out[j]
        elif kind == "dup":
            out[i] = "honest"
    return G, out


def build(name: str, m: int, c: int, k: int) -> Any:
    params: dict[str, Any] = {"k": k} if name == "krum" else {}
    return make_aggregator(name, num_clients=m, c_max=c, **params)


AGGREGATOR_NAMES = [
    "fedsgd",
    "tesseract",
    "trimmed_mean",
    "median",
    "krum",
    "bulyan",
    "faba",
    "foolsgold",
    "fltrust",
    "geomed",
    "centered_clipping",
    "meamed",
    "nnm+median",
    "dnc",
    "bucketing+median",
    "monna",
    "caf",
    "flame",
]


@pytest.mark.parametrize("name", AGGREGATOR_NAMES)
@FAST
@given(data=st.data())
def test_hostile_matrices(name: str, data: st.DataObject) -> None:
    m = data.draw(st.integers(3, 50), label="m")
    P = data.draw(st.integers(1, 6), label="P")
    kinds = data.draw(
        st.lists(st.sampled_from(KINDS) | st.just("honest"), min_size=m, max_size=m),
        label="kinds",
    )
    seed = data.draw(st.integers(0, 2**16), label="seed")
    c = data.draw(st.integers(0, max_c(name, m)), label="c_max")
    k = data.draw(st.integers(1, m), label="k") if name == "krum" else 1
    G, kinds = hostile_matrix(kinds, P, seed)
    agg = build(name, m, c, k)
    ctx = AggregationContext(root_gradient=torch.ones(P))
    excluded = [i for i, kind in enumerate(kinds) if kind in NON_FINITE]
    finite = [i for i in range(m) if i not in excluded]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Bulyan's m < 4c+3 notice
        for _ in range(2):  # a second round exercises TESSERACT's s_g, FoolsGold's history
            out = agg.aggregate(G, torch.arange(m), ctx)
            assert out.update.shape == (P,)
            assert bool(torch.isfinite(out.update).all()), out.update
            assert out.weights.shape == (m,)
            assert bool(torch.isfinite(out.weights).all())
            assert bool((out.weights >= 0).all())
            assert out.diagnostics.excluded == excluded
            if excluded:
                assert float(out.weights[excluded].abs().sum()) == 0.0
            if not finite:
                assert float(out.update.abs().sum()) == 0.0
    if not finite:
        return
    c_eff = c_effective(name, c, len(finite))
    if out.diagnostics.c_max_effective is not None:
        assert out.diagnostics.c_max_effective == c_eff
    honest = [i for i in finite if kinds[i] == "honest"]
    n_bad = len(finite) - len(honest)
    if name == "krum" and k == 1:
        assert any(torch.equal(out.update, G[i]) for i in finite)
    robust = {
        "trimmed_mean": n_bad <= c_eff,
        "bulyan": n_bad <= c_eff,
        "median": n_bad <= (len(finite) - 1) // 2,
    }
    if robust.get(name) and honest:
        lo = G[honest].min(0).values
        hi = G[honest].max(0).values
        tol = 1e-5 * (1 + torch.maximum(lo.abs(), hi.abs()))
        assert bool((out.update >= lo - tol).all() & (out.update <= hi + tol).all())


@pytest.mark.parametrize("name", AGGREGATOR_NAMES)
def test_huge_rows_do_not_overflow(name: str) -> None:
    """Rows of magnitude 1e30 (finite in float32) give a finite update and finite weights."""
    m, P = 11, 3000
    G = torch.randn(m, P)
    G[0] = HUGE
    G[1] = -HUGE
    G[2, ::2] = HUGE
    agg = build(name, m, min(2, max_c(name, m)), 1)
    ctx = AggregationContext(root_gradient=torch.ones(P))
    for _ in range(2):
        out = agg.aggregate(G, torch.arange(m), ctx)
        assert bool(torch.isfinite(out.update).all())
        assert bool(torch.isfinite(out.weights).all()) and bool((out.weights >= 0).all())
        assert out.diagnostics.excluded == []
    if name in ("trimmed_mean", "median", "krum", "bulyan", "faba"):
        # robust rules ignore the 3 huge rows when c_max = 2 covers... (c=2 < 3 for some):
        # at least the result must not be dominated by 1e30.
        assert float(out.update.abs().max()) < HUGE


def test_tesseract_flip_score_does_not_overflow() -> None:
    agg = Tesseract(num_clients=5, c_max=1)
    G = torch.randn(5, 1000)
    G[3] = HUGE
    out = agg.aggregate(G)
    fs = out.diagnostics.flip_scores
    assert bool(torch.isfinite(fs).all())
    assert int(torch.argmax(fs)) == 3 and bool(out.diagnostics.penalized[3])


# --------------------------------------------------------------------------- dropouts


def test_tesseract_absent_clients_keep_reputation_and_softmax_over_present() -> None:
    agg = Tesseract(num_clients=10, c_max=2, mu_d=0.5)
    for _ in range(3):
        agg.aggregate(torch.randn(10, 20))
    before = agg.reputation.clone()
    present = torch.tensor([0, 2, 3, 5, 8, 9])  # m = 6 > 2 c_max
    out = agg.aggregate(torch.randn(6, 20), client_ids=present)
    absent = [i for i in range(10) if i not in present.tolist()]
    assert torch.equal(agg.reputation[absent], before[absent])  # not decayed
    assert not torch.equal(agg.reputation[present], before[present])
    assert float(out.weights.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(
        out.weights.double(), torch.softmax(agg.reputation[present], 0), rtol=1e-6, atol=1e-7
    )
    # reward/penalty use the present m: reward 2c/m = 2/3
    changed = agg.reputation[present] - 0.5 * before[present]
    assert set(np.round(changed.numpy(), 6).tolist()) <= {round(2 / 3, 6), round(-1 / 3, 6)}


def test_tesseract_cut_off_when_too_few_present() -> None:
    """Documented cut-off: present m (finite or not) must exceed 2 c_max, else UpdateError and
    no state change; NaN rows count as present (and penalized)."""
    agg = Tesseract(num_clients=10, c_max=2)
    agg.aggregate(torch.randn(10, 4))
    state = agg.state_dict()
    with pytest.raises(UpdateError, match="2\\*c_max"):
        agg.aggregate(torch.randn(4, 4), client_ids=[0, 1, 2, 3])
    after = agg.state_dict()
    assert torch.equal(after["reputation"], state["reputation"]) and after["round"] == 1
    G = torch.randn(5, 4)
    G[:3] = math.nan  # 5 present, 2 finite: allowed, the 3 NaN rows are penalized
    out = agg.aggregate(G, client_ids=[0, 1, 2, 3, 4])
    assert out.diagnostics.excluded == [0, 1, 2]
    assert bool(out.diagnostics.penalized[:3].all())
    assert float(out.weights[3:].sum()) == pytest.approx(1.0)


def test_tesseract_all_rows_non_finite_leaves_model_and_direction() -> None:
    agg = Tesseract(num_clients=4, c_max=1)
    agg.aggregate(torch.randn(4, 5))
    s_g = agg.s_g
    out = agg.aggregate(torch.full((4, 5), math.nan))
    assert float(out.update.abs().sum()) == 0.0 and float(out.weights.sum()) == 0.0
    assert agg.s_g is not None and s_g is not None and torch.equal(agg.s_g, s_g)


def test_foolsgold_absent_and_nan_clients_keep_history() -> None:
    agg = FoolsGold(num_clients=6)
    agg.aggregate(torch.randn(6, 8))
    assert agg.history is not None
    H = agg.history.clone()
    G = torch.randn(3, 8)
    G[1, 0] = math.inf
    out = agg.aggregate(G, client_ids=[4, 1, 2])
    assert agg.history is not None
    for cid in (0, 3, 5, 1):  # absent, and client 1 whose row was not finite
        assert torch.equal(agg.history[cid], H[cid])
    assert out.diagnostics.excluded == [1] and float(out.weights[1]) == 0.0
    assert agg.rounds_seen.tolist() == [1, 1, 2, 1, 2, 1]


# --------------------------------------------------------------------------- stack_updates


@pytest.mark.parametrize("name", ["trimmed_mean", "monna", "median", "krum"])
def test_dropped_rows_leave_the_round_like_non_finite_rows(name: str) -> None:
    """``aggregate(drop=...)``: rows another stage took out get weight 0 and lower c_max as
    non-finite rows do, but are not reported as excluded (only the NaN row is)."""
    gen = torch.Generator().manual_seed(5)
    G = torch.randn(9, 4, generator=gen)
    g0 = torch.randn(4, generator=gen)
    G[1, 2] = math.nan
    drop = torch.zeros(9, dtype=torch.bool)
    drop[[3, 6, 7]] = True
    ctx = AggregationContext(root_gradient=g0)
    rule = make_aggregator(name, num_clients=9, c_max=3)
    out = rule.aggregate(G, ctx=ctx, drop=drop)
    rest = [0, 2, 4, 5, 8]
    assert out.diagnostics.excluded == [1]
    assert bool((out.weights[[1, 3, 6, 7]] == 0).all())
    # the same rule with the c_max it accepts for 5 rows, on those rows alone
    c = out.diagnostics.c_max_effective
    assert (c is None) == (name == "median") and (c is None or c <= 3)
    alone = make_aggregator(name, num_clients=9, c_max=3 if c is None else c)
    alone_out = alone.aggregate(G[rest], ctx=ctx)
    torch.testing.assert_close(out.update, alone_out.update, rtol=0, atol=0)
    torch.testing.assert_close(out.weights[rest], alone_out.weights, rtol=0, atol=0)
    with pytest.raises(UpdateError, match="drop"):
        rule.aggregate(G, ctx=ctx, drop=drop[:5])


def test_stack_updates() -> None:
    G, ids = stack_updates({7: torch.ones(3), 2: torch.tensor([0.0, math.nan, 1.0])}, 3)
    assert ids.tolist() == [2, 7] and G.shape == (2, 3) and math.isnan(float(G[0, 1]))
    with pytest.raises(UpdateError, match="client 5: update has 2 entries"):
        stack_updates({1: torch.ones(3), 5: torch.ones(2)}, 3)
    with pytest.raises(UpdateError, match="client 4: update must be 1-D"):
        stack_updates({4: torch.ones(1, 3)}, 3)
    with pytest.raises(UpdateError, match="client 3: update must be floating point"):
        stack_updates({3: torch.ones(3, dtype=torch.long)}, 3)
    with pytest.raises(UpdateError, match=r"client 0: update must be a torch\.Tensor"):
        stack_updates({0: [1.0, 2.0, 3.0]}, 3)  # type: ignore[dict-item]
    with pytest.raises(UpdateError, match="no client updates"):
        stack_updates({}, 3)


def test_wrong_layout_is_still_an_update_error() -> None:
    for name in AGGREGATOR_NAMES:
        agg = build(name, 5, 1 if max_c(name, 5) else 0, 1)
        ctx = AggregationContext(root_gradient=torch.ones(3))
        for bad in (torch.ones(5), torch.ones(5, 3, dtype=torch.long), torch.ones(0, 3)):
            with pytest.raises(UpdateError):
                agg.aggregate(bad, None, ctx)


# --------------------------------------------------------------------------- fuzzing

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-5, 200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
CONFIG_KEYS = [
    "name", "dataset", "model", "partition", "bias", "alpha", "clients", "malicious", "c_max",
    "rounds", "batch_size", "lr", "lr_schedule", "defense", "attack", "malicious_ids",
    "aggregate_only", "seed", "eval_every", "record_every", "device", "backend", "vmap_chunk",
    "data_dir", "checkpoint_every", "bogus",
]  # fmt: skip


@settings(max_examples=60, deadline=3000)
@given(data=st.dictionaries(st.sampled_from(CONFIG_KEYS), VALUES, max_size=6))
def test_fuzz_build_config(data: dict[str, Any]) -> None:
    base = {"clients": 6, "malicious": 1, "rounds": 1}
    try:
        build_config({**base, **data})
    except TesseractFLError:
        pass


TOMLISH = st.text(alphabet=string.printable + "[]=\"'#{}", max_size=200)


@settings(
    max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=TOMLISH, raw=st.binary(max_size=64))
def test_fuzz_config_files(tmp_path: Path, text: str, raw: bytes) -> None:
    path = tmp_path / "c.toml"
    for content in (text.encode(), raw, b"clients = 6\nmalicious = 1\n" + text.encode()):
        path.write_bytes(content)
        try:
            load_toml(path)
            resolve_config(config_file=path)
        except TesseractFLError:
            pass


@settings(max_examples=60, deadline=3000)
@given(
    raw=st.dictionaries(
        st.sampled_from(["name", "description", "datasets", "seeds", "set", "cells", "x"]),
        VALUES,
        max_size=5,
    )
)
def test_fuzz_expand_grid(raw: dict[str, Any]) -> None:
    try:
        expand_grid(raw)
    except TesseractFLError:
        pass


@settings(
    max_examples=80, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    head=st.sampled_from(
        [b"", b"\x00\x00\x08\x01", b"\x00\x00\x08\x03", b"\x00\x00\x0d\x02", b"\x1f\x8b"]
    ),
    body=st.binary(max_size=80),
    gz=st.booleans(),
)
def test_fuzz_read_idx(tmp_path: Path, head: bytes, body: bytes, gz: bool) -> None:
    path = tmp_path / "f.idx"
    content = head + body
    path.write_bytes(gzip.compress(content) if gz else content)
    try:
        arr = read_idx(path)
    except TesseractFLError:
        return
    assert isinstance(arr, np.ndarray)


def _valid_dataset(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    d = root / "mnist"
    files = {
        "train-images.idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels.idx1-ubyte": rng.integers(0, 10, 6).astype(np.uint8),
        "t10k-images.idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels.idx1-ubyte": rng.integers(0, 10, 3).astype(np.uint8),
    }
    return {name: write_idx(d / name, arr) for name, arr in files.items()}


@settings(
    max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.integers(0, 3),
    mode=st.sampled_from(["truncate", "flip", "magic", "count", "random"]),
    pos=st.integers(0, 10_000),
    raw=st.binary(max_size=40),
)
def test_fuzz_load_dataset_corrupt_files(
    tmp_path_factory: pytest.TempPathFactory, which: int, mode: str, pos: int, raw: bytes
) -> None:
    root = tmp_path_factory.mktemp("ds")
    paths = list(_valid_dataset(root).values())
    target = paths[which]
    data = bytearray(target.read_bytes())
    if mode == "truncate":
        data = data[: pos % len(data)]
    elif mode == "flip":
        data[pos % len(data)] ^= 0xFF
    elif mode == "magic":
        data[:4] = (raw + b"\x00\x00\x00\x00")[:4]
    elif mode == "count":
        data[4:8] = int(pos).to_bytes(4, "big")
    else:
        data = bytearray(raw)
    target.write_bytes(bytes(data))
    try:
        load_dataset("mnist", root)
    except TesseractFLError:
        pass


@pytest.mark.parametrize("name", ["trimmed_mean", "bulyan", "median", "fedsgd", "faba", "krum"])
def test_values_near_the_float32_limit_give_a_finite_mean(name: str) -> None:
    """Sums of kept values near 3.4e38 overflow float32 although their mean does not."""
    from tesseract_fl.aggregators import AggregationContext, make_aggregator

    m, P = 12, 40
    G = torch.full((m, P), 3.0e38)
    G[1::4] = 3.3e38
    agg = make_aggregator(name, num_clients=m, c_max=2)
    ctx = AggregationContext(n_samples=torch.ones(m))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = agg.aggregate(G, torch.arange(m), ctx)
    assert bool(torch.isfinite(out.update).all())
    assert float(out.update.min()) >= 3.0e38 * (1 - 1e-6)
    assert float(out.update.max()) <= 3.3e38 * (1 + 1e-6)
