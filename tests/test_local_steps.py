"""``local_steps = K``: each client trains K local steps and sends ``(w - w_local) / lr``; with
``fedsgd`` the server step is FedAvg's mean of the local models. One step stays the paper's."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import build_simulation, run_experiment


def _params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_round_is_fedavg_of_k_local_steps(tiny_overrides: list[str], optimizer: str) -> None:
    over = [*tiny_overrides, "defense=fedsgd", "local_steps=3", f'client_optimizer="{optimizer}"']
    cfg = resolve_config("mnist", overrides=over)
    sim = build_simulation(cfg)
    # the same batches, drawn by a copy of the sampler, trained by hand
    sampler = copy.deepcopy(sim.sampler)
    batches = [torch.from_numpy(sampler.next_batches()) for _ in range(3)]
    lr = float(sim.lr_fn(0))
    local = []
    for i in range(sim.num_clients):
        model = copy.deepcopy(sim.model)
        opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(
            model.parameters(), lr=lr
        )
        for idx in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(
                model(sim.train_x[idx[i]]), sim.train_y[idx[i]]
            ).backward()
            opt.step()
        local.append(_params(model))
    sim.step()
    n = sim.n_samples / sim.n_samples.sum()  # FedSGD weighs clients by their sample counts
    want = sum(float(n[i]) * local[i] for i in range(sim.num_clients))
    got = _params(sim.model)
    if optimizer == "sgd":
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        return
    # Adam divides by sqrt(v) + 1e-8: where a coordinate's gradient is near 1e-8, the last bits
    # of the gradient (thread count, SIMD width) move its step by a sizeable part of lr. Nearly
    # every coordinate must agree tightly, and none may be off by more than lr / 100 (a wrong
    # update would be off by about lr almost everywhere).
    close = torch.isclose(got, want, rtol=1e-4, atol=1e-6)
    assert float(close.float().mean()) > 0.999
    torch.testing.assert_close(got, want, rtol=0.0, atol=lr / 100)


def test_default_is_the_papers_step_and_options_validated(tiny_overrides: list[str]) -> None:
    base = resolve_config("mnist", overrides=tiny_overrides)
    one = resolve_config("mnist", overrides=[*tiny_overrides, "local_steps=1"])
    two = resolve_config("mnist", overrides=[*tiny_overrides, "local_steps=2"])
    assert base.run_id() == one.run_id() != two.run_id()
    for bad in ("local_steps=0", "local_steps=1.5", "local_steps=true"):
        with pytest.raises(ConfigError, match="local_steps"):
            resolve_config("mnist", overrides=[*tiny_overrides, bad])


def test_a_run_with_local_steps_and_an_attack(tmp_path: Path, tiny_overrides: list[str]) -> None:
    over = [*tiny_overrides, "local_steps=2", "defense=tesseract", "attack=sign_flip"]
    out = run_experiment(resolve_config("mnist", overrides=over), tmp_path / "s.sqlite")
    assert out.final_accuracy is not None and out.diverged_at is None


def test_same_numbers_with_one_or_two_workers(tiny_overrides: list[str]) -> None:
    rows = []
    for backend in ("loop", "threads"):
        over = [*tiny_overrides, "local_steps=2", f'backend="{backend}"']
        sim = build_simulation(resolve_config("mnist", overrides=over))
        G, losses = sim.compute_gradients()
        rows.append((G.clone(), losses.clone()))
    assert torch.equal(rows[0][0], rows[1][0]) and torch.equal(rows[0][1], rows[1][1])
