"""``client_optimizer = "adam"``: each client sends the first step of a fresh Adam (the authors'
Shakespeare script), an option beside the paper's gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import build_simulation
from tesseract_fl.simulation.engine import adam_first_step


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_is_the_first_step_of_a_fresh_adam(betas: tuple[float, float]) -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])  # type: ignore[union-attr]
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    lr = 0.1
    torch.optim.Adam(model.parameters(), lr=lr, betas=betas).step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    want = (before - after) / lr
    got = adam_first_step(grads.clone().unsqueeze(0))[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float(got.abs().max()) <= 1.0


def test_option_in_the_simulator(tiny_overrides: list[str]) -> None:
    sgd = resolve_config("mnist", overrides=tiny_overrides)
    default = resolve_config("mnist", overrides=[*tiny_overrides, 'client_optimizer="sgd"'])
    adam = resolve_config("mnist", overrides=[*tiny_overrides, 'client_optimizer="adam"'])
    assert sgd.run_id() == default.run_id() != adam.run_id()  # the default keeps old ids
    G_sgd, _ = build_simulation(sgd).compute_gradients()
    G_adam, _ = build_simulation(adam).compute_gradients()
    torch.testing.assert_close(G_adam, G_sgd / (G_sgd.abs() + 1e-8))
    with pytest.raises(ConfigError, match="client_optimizer"):
        resolve_config("mnist", overrides=[*tiny_overrides, 'client_optimizer="rmsprop"'])
