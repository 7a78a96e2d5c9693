"""FLAME (Nguyen et al. 2022): cosine distances, HDBSCAN's majority cluster, median-norm
clipping and the noise, against hand computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tesseract_fl.aggregators import FLAME, make_aggregator
from tesseract_fl.aggregators.flame import cosine_distances, flame_admitted
from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment


def test_cosine_distances_by_hand() -> None:
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.0, 0.0]])
    d = cosine_distances(G)
    assert d.shape == (4, 4) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    assert d[0, 1] == pytest.approx(1.0)
    assert d[0, 2] == pytest.approx(1 - 1 / np.sqrt(2))
    assert d[3, 0] == 1.0 and d[3, 2] == 1.0  # a zero row is at distance 1


def _two_groups(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(30, generator=gen)
    G = u + 0.1 * torch.randn(10, 30, generator=gen)  # 7 benign rows near u ...
    G[[1, 4, 8]] = -3.0 * u + 0.1 * torch.randn(3, 30, generator=gen)  # ... 3 flipped, larger
    benign = torch.ones(10, dtype=torch.bool)
    benign[[1, 4, 8]] = False
    return G, benign


def test_majority_cluster_admitted_then_clipped_to_the_median_norm() -> None:
    G, benign = _two_groups()
    admitted = torch.from_numpy(flame_admitted(G))
    # HDBSCAN's cluster holds none of the flipped rows and at least min_cluster_size rows (it
    # may call a late-joining benign row noise: FLAME then leaves it out too)
    assert not bool(admitted[~benign].any()) and int(admitted.sum()) >= 10 // 2 + 1
    out = FLAME(noise_lambda=0.0).aggregate(G)
    norms = G.double().norm(dim=1)
    S = float(norms.median())
    scale = torch.clamp(S / norms, max=1.0)
    want = (scale[admitted, None] * G[admitted].double()).sum(0) / int(admitted.sum())
    torch.testing.assert_close(out.update.double(), want, rtol=1e-5, atol=1e-6)
    assert out.weights[~admitted].abs().sum() == 0.0
    assert out.diagnostics.selected is not None
    assert out.diagnostics.selected.tolist() == torch.nonzero(admitted).flatten().tolist()
    assert out.diagnostics.extra["clip_bound"] == pytest.approx(S)


def test_noise_std_is_lambda_times_the_bound_and_seeded() -> None:
    G, _ = _two_groups(1)
    plain = FLAME(noise_lambda=0.0).aggregate(G).update
    noisy = [FLAME(noise_lambda=0.5, seed=3).aggregate(G) for _ in range(2)]
    assert torch.equal(noisy[0].update, noisy[1].update)  # same seed, same noise
    S = noisy[0].diagnostics.extra["clip_bound"]
    assert noisy[0].diagnostics.extra["noise_std"] == pytest.approx(0.5 * S)
    resid = (noisy[0].update - plain).double()
    assert float(resid.std()) == pytest.approx(0.5 * S, rel=0.5)  # 30 draws of N(0, (lS)^2)
    # the generator is the state: a copy continues the same stream
    a = FLAME(noise_lambda=0.5, seed=3)
    a.aggregate(G)
    b = FLAME(noise_lambda=0.5, seed=99)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.aggregate(G).update, b.aggregate(G).update)
    with pytest.raises(ConfigError):
        b.load_state_dict({})
    for bad in (-0.1, float("nan"), True):
        with pytest.raises(ConfigError):
            FLAME(noise_lambda=bad)  # type: ignore[arg-type]


def test_in_a_run(tmp_path: Path, tiny_overrides: list[str]) -> None:
    assert isinstance(make_aggregator("flame", num_clients=10, c_max=2), FLAME)
    for attack in ("badnets", "sign_flip"):
        cfg = resolve_config(
            "mnist", overrides=[*tiny_overrides, "defense=flame", f"attack={attack}"]
        )
        out = run_experiment(cfg, tmp_path / "s.sqlite")
        assert out.final_accuracy is not None
