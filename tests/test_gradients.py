"""The two gradient backends give the same per-client gradients, and they are real gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tesseract_fl.models import count_parameters, make_model
from tesseract_fl.simulation.gradients import client_gradients, default_backend


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


def test_default_backend_per_device() -> None:
    assert default_backend("cpu") == "loop"
    assert default_backend("cuda") == "vmap"
