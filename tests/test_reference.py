"""The fast rules agree with the plain statements of their formulas
(:mod:`tesseract_fl.aggregators.reference`) on random finite matrices, including every form of
the sorting kernel and matrices wide enough to be cut into column blocks and threads."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tesseract_fl.aggregators import (
    FABA,
    Bulyan,
    FedSGD,
    FLTrust,
    Krum,
    Median,
    TrimmedMean,
    fltrust,
)
from tesseract_fl.aggregators.base import AggregationContext
from tesseract_fl.aggregators.foolsgold import foolsgold_weights
from tesseract_fl.aggregators.reference import (
    bulyan_reference,
    faba_reference,
    fedsgd_reference,
    fltrust_reference,
    foolsgold_reference,
    krum_reference,
    median_reference,
    trimmed_mean_reference,
)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got.to(torch.float64), want, rtol=1e-5, atol=1e-5)


matrices = st.tuples(st.integers(3, 12), st.integers(1, 40), st.integers(0, 2**31 - 1))


def _matrix(m: int, P: int, seed: int) -> torch.Tensor:
    return torch.randn(m, P, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(matrices, st.data())
def test_coordinate_rules_match_their_formulas(
    case: tuple[int, int, int], data: st.DataObject
) -> None:
    m, P, seed = case
    G = _matrix(m, P, seed)
    c = data.draw(st.integers(0, (m - 1) // 2), label="c")
    method = data.draw(st.sampled_from(["auto", "network", "sort", "torch"]), label="method")
    _close(TrimmedMean(c, method=method).aggregate(G).update, trimmed_mean_reference(G, c))
    _close(Median(method=method).aggregate(G).update, median_reference(G))
    n = torch.rand(m, generator=torch.Generator().manual_seed(seed)) + 0.1
    _close(
        FedSGD().aggregate(G, ctx=AggregationContext(n_samples=n)).update, fedsgd_reference(G, n)
    )


@settings(max_examples=40, deadline=None)
@given(matrices, st.data())
def test_selecting_rules_pick_what_their_formulas_pick(
    case: tuple[int, int, int], data: st.DataObject
) -> None:
    m, P, seed = case
    G = _matrix(m, P, seed)
    c = data.draw(st.integers(0, m - 3), label="c")
    k = data.draw(st.integers(1, m), label="k")
    out = Krum(c, k).aggregate(G)
    want, sel = krum_reference(G, c, k)
    assert out.diagnostics.selected is not None
    assert out.diagnostics.selected.tolist() == sel
    _close(out.update, want)

    cf = data.draw(st.integers(0, (m - 1) // 2), label="c_faba")
    out = FABA(cf).aggregate(G)
    want, removed = faba_reference(G, cf)
    assert out.diagnostics.extra["removed"] == removed
    _close(out.update, want)


@pytest.mark.filterwarnings("ignore:Bulyan with m")
@settings(max_examples=30, deadline=None)
@given(st.integers(5, 14), st.integers(1, 12), st.integers(0, 2**31 - 1), st.data())
def test_bulyan_matches_its_formula(m: int, P: int, seed: int, data: st.DataObject) -> None:
    G = _matrix(m, P, seed)
    c = data.draw(st.integers(0, (m - 1) // 4), label="c")
    out = Bulyan(c).aggregate(G)
    want, sel = bulyan_reference(G, c)
    assert out.diagnostics.selected is not None
    assert out.diagnostics.selected.tolist() == sel
    _close(out.update, want)


@settings(max_examples=40, deadline=None)
@given(matrices)
def test_trust_and_similarity_rules_match_their_formulas(case: tuple[int, int, int]) -> None:
    m, P, seed = case
    G = _matrix(m, P, seed)
    g0 = torch.randn(P, generator=torch.Generator().manual_seed(seed + 1))
    _close(fltrust(G, g0), fltrust_reference(G, g0))
    _close(
        FLTrust().aggregate(G, ctx=AggregationContext(root_gradient=g0)).update,
        fltrust_reference(G, g0),
    )
    # FoolsGold's raw weights: a few clients sharing a direction (sybils) among honest ones
    H = _matrix(m, 20, seed)
    H[1:3] = H[0] * torch.tensor([[2.0], [0.5]]) + 0.05 * H[1:3]
    torch.testing.assert_close(foolsgold_weights(H), foolsgold_reference(H), rtol=1e-5, atol=1e-6)


def test_wide_matrices_cut_into_blocks_and_threads_agree() -> None:
    """Column blocks (and the thread split above 65,536 columns) give the formula's values."""
    G = _matrix(9, 140_000, 3)
    _close(TrimmedMean(2).aggregate(G).update, trimmed_mean_reference(G, 2))
    _close(Median().aggregate(G).update, median_reference(G))
    _close(
        TrimmedMean(2, chunk_size=1000, method="sort").aggregate(G).update,
        trimmed_mean_reference(G, 2),
    )
