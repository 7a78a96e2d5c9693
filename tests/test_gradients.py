"""The gradient backends give the same per-client gradients, and they are real gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tesseract_fl.errors import ConfigError
from tesseract_fl.models import count_parameters, make_model
from tesseract_fl.simulation.gradients import (
    client_gradients,
    default_backend,
    default_vmap_chunk,
    threaded_gradients,
)


def test_parameter_counts_match_design() -> None:
    assert count_parameters(make_model("mnist_cnn")) == 266_060
    assert count_parameters(make_model("mnist_cnn_padded")) == 506_060


@pytest.mark.parametrize("model_name", ["mnist_cnn", "mnist_cnn_padded"])
def test_loop_and_vmap_agree(model_name: str) -> None:
    torch.manual_seed(0)
    model = make_model(model_name)
    x = torch.randn(7, 4, 1, 28, 28)
    y = torch.randint(0, 10, (7, 4))
    G_loop, l_loop = client_gradients(model, x, y, F.cross_entropy, backend="loop")
    G_vmap, l_vmap = client_gradients(model, x, y, F.cross_entropy, backend="vmap", chunk_size=3)
    assert G_loop.shape == (7, count_parameters(model))
    torch.testing.assert_close(G_vmap, G_loop, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(l_vmap, l_loop)
    # Rows differ between clients (they saw different data).
    assert not torch.allclose(G_loop[0], G_loop[1])


def test_row_is_the_clients_autograd_gradient() -> None:
    torch.manual_seed(1)
    model = make_model("mnist_cnn")
    x = torch.randn(3, 5, 1, 28, 28)
    y = torch.randint(0, 10, (3, 5))
    G, _ = client_gradients(model, x, y, F.cross_entropy, backend="vmap", chunk_size=2)
    model.zero_grad()
    F.cross_entropy(model(x[2]), y[2]).backward()
    ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(G[2], ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_name", ["mnist_cnn", "mlp"])
def test_threads_backend_matches_loop_and_ignores_worker_count(model_name: str) -> None:
    torch.manual_seed(2)
    model = make_model(model_name)
    if model_name == "mlp":
        x, y = torch.randn(7, 4, 30), torch.randint(0, 2, (7, 4))
    else:
        x, y = torch.randn(7, 4, 1, 28, 28), torch.randint(0, 10, (7, 4))
    G_loop, l_loop = client_gradients(model, x, y, F.cross_entropy, backend="loop")
    G_thr, l_thr = client_gradients(model, x, y, F.cross_entropy, backend="threads")
    torch.testing.assert_close(G_thr, G_loop, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(l_thr, l_loop)
    # Every client is computed by one single-threaded worker: bitwise the same for any split.
    for workers in (1, 3, 7, 16):
        G_w, l_w = threaded_gradients(model, x, y, F.cross_entropy, workers=workers)
        assert torch.equal(G_w, G_thr)
        assert torch.equal(l_w, l_thr)
    # The model is left untouched (parameters still contiguous Parameters) and the caller's
    # thread count is restored.
    assert all(p.is_contiguous() for p in model.parameters())
    assert torch.get_num_threads() >= 1


def test_threads_backend_falls_back_to_loop_for_batchnorm_in_training() -> None:
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(8, 3)
    )
    twin = copy.deepcopy(model)
    x, y = torch.randn(4, 5, 1, 4, 4), torch.randint(0, 3, (4, 5))
    G_thr, _ = client_gradients(model, x, y, F.cross_entropy, backend="threads")
    G_loop, _ = client_gradients(twin, x, y, F.cross_entropy, backend="loop")
    assert torch.equal(G_thr, G_loop)
    # Running statistics updated once per client, in client order, exactly as the loop does.
    assert torch.equal(model[1].running_mean, twin[1].running_mean)
    assert int(model[1].num_batches_tracked) == 4


def test_threads_backend_rejects_zero_workers() -> None:
    model = make_model("mlp")
    with pytest.raises(ConfigError, match="workers"):
        threaded_gradients(
            model,
            torch.randn(2, 3, 30),
            torch.zeros(2, 3, dtype=torch.long),
            F.cross_entropy,
            workers=0,
        )


def test_default_backend_per_device() -> None:
    assert default_backend("cpu") == "threads"
    assert default_backend("cuda") == "vmap"


def test_default_vmap_chunk_per_device() -> None:
    """0 (automatic): ten clients per call on a CPU, the whole round in one call on a GPU."""
    assert default_vmap_chunk("cpu", 100) == 10
    assert default_vmap_chunk("cuda", 100) == 100
    assert default_vmap_chunk("cuda:1", 7) == 7


def test_vmap_chunk_is_halved_on_out_of_memory(
    tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vmap call that runs out of GPU memory is retried on the same batches with half the
    chunk, with a warning, and the round's gradients are those of the smaller chunk."""
    from tesseract_fl.experiments.config import resolve_config
    from tesseract_fl.experiments.runner import build_simulation
    from tesseract_fl.simulation import engine

    cfg = resolve_config(
        "mnist", overrides=[*tiny_overrides, 'backend="vmap"', "vmap_chunk=8", "attack=none"]
    )
    sim = build_simulation(cfg)
    expected = build_simulation(cfg)
    expected.vmap_chunk = 2
    seen: list[int] = []
    real = engine.client_gradients

    def small_gpu(*args: object, chunk_size: int, **kwargs: object) -> object:
        seen.append(chunk_size)
        if chunk_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, chunk_size=chunk_size, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "client_gradients", small_gpu)
    with pytest.warns(RuntimeWarning) as record:
        G, _ = sim.compute_gradients()
    assert ["retrying with 4 clients" in str(w.message) for w in record] == [True, False]
    assert "retrying with 2 clients" in str(record[1].message)
    assert seen == [8, 4, 2] and sim.vmap_chunk == 2
    G_expected, _ = expected.compute_gradients()
    assert torch.equal(G, G_expected)
    sim.compute_gradients()
    assert seen[-1] == 2  # the smaller chunk is kept
