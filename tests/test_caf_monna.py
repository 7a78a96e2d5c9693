"""CAF (Allouah et al. 2025) and MoNNA (Farhadkhani et al. 2023): hand cases, a plain reference
of CAF's filter on the P x P covariance, MoNNA's pivots, and both in a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tesseract_fl.aggregators import CAF, AggregationContext, MoNNA, caf, make_aggregator, monna
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment


def _caf_reference(G: torch.Tensor, f: int) -> torch.Tensor:
    """CAF as written: the weighted covariance [P, P], its top eigenvector, the shrinking."""
    X = G.double()
    n = X.shape[0]
    c = torch.ones(n, dtype=torch.float64)
    best, best_lam = X.mean(0), float("inf")
    while float(c.sum()) > n - 2 * f:
        mu = (c[:, None] * X).sum(0) / c.sum()
        D = X - mu
        cov = (c[:, None, None] * D[:, :, None] * D[:, None, :]).sum(0) / c.sum()
        evals, evecs = torch.linalg.eigh(cov)
        lam, v = float(evals[-1]), evecs[:, -1]
        if lam < best_lam:
            best_lam, best = lam, mu
        tau = (D @ v) ** 2
        c = c * (1 - tau / tau.max())
    return best


@pytest.mark.parametrize("seed", range(6))
def test_caf_matches_the_plain_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    m, P, f = 11, 7, 3
    G = torch.randn(m, P, generator=gen, dtype=torch.float64)
    G[:f] += 5.0 * torch.randn(P, generator=gen, dtype=torch.float64)  # colluding outliers
    torch.testing.assert_close(caf(G, f), _caf_reference(G, f), rtol=1e-9, atol=1e-11)
    agg = CAF(f).aggregate(G)
    assert float(agg.weights.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(agg.update, (agg.weights[:, None] * G).sum(0))


def test_caf_by_hand() -> None:
    G = torch.ones(5, 3)  # identical rows: nothing to filter, the mean
    torch.testing.assert_close(caf(G, 1), torch.ones(3))
    G = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    agg = CAF(1).aggregate(G)
    assert float(agg.weights[4]) == 0.0  # the far outlier is filtered out first
    assert float(agg.update.abs().max()) < 1.0
    with pytest.raises(ConfigError, match="m > 2 c_max"):
        CAF(3).aggregate(torch.randn(6, 2))


def test_monna_by_hand() -> None:
    G = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    torch.testing.assert_close(monna(G, 2, pivot=0), torch.tensor([1.0]))  # rows 0, 1, 2
    torch.testing.assert_close(monna(G, 2, pivot=4), torch.tensor([23.0 / 3]))  # 11, 10, 2
    ctx = AggregationContext(root_gradient=torch.tensor([10.4]))
    agg = MoNNA(2).aggregate(G, ctx=ctx)
    torch.testing.assert_close(agg.update, torch.tensor([23.0 / 3]))
    assert agg.diagnostics.selected is not None
    assert sorted(agg.diagnostics.selected.tolist()) == [2, 3, 4]
    assert agg.weights.tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3])


def test_monna_pivots_validated() -> None:
    G = torch.randn(5, 3)
    assert MoNNA(1).needs_root_gradient and not MoNNA(1, pivot=2).needs_root_gradient
    with pytest.raises(UpdateError, match="root_gradient"):
        MoNNA(1).aggregate(G)
    with pytest.raises(UpdateError, match="not finite"):
        MoNNA(1).aggregate(G, ctx=AggregationContext(root_gradient=torch.full((3,), float("nan"))))
    with pytest.raises(UpdateError, match="sent no row"):
        MoNNA(1, pivot=7).aggregate(G)
    bad = G.clone()
    bad[2, 0] = float("inf")
    with pytest.raises(UpdateError, match="non-finite"):
        MoNNA(1, pivot=2).aggregate(bad)
    for pivot in (-1, 1.5, "server", True):
        with pytest.raises(ConfigError):
            MoNNA(1, pivot=pivot)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="m > c_max"):
        MoNNA(5, pivot=0).aggregate(G)


def test_registered_and_in_a_run(tmp_path: Path, tiny_overrides: list[str]) -> None:
    assert isinstance(make_aggregator("caf", num_clients=10, c_max=2), CAF)
    assert isinstance(make_aggregator("monna", num_clients=10, c_max=2), MoNNA)
    for defense in ("caf", "monna", "nnm+monna", 'defense={name="monna", pivot=3}'):
        d = defense if defense.startswith("defense=") else f"defense={defense}"
        cfg = resolve_config("mnist", overrides=[*tiny_overrides, d, "attack=sign_flip"])
        out = run_experiment(cfg, tmp_path / "s.sqlite")
        assert out.final_accuracy is not None and 0.0 <= out.final_accuracy <= 1.0
