"""Models (docs/design.md, "Models"): exact parameter counts, shapes, and vmap == loop gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tesseract_fl.models import MODELS, count_parameters, make_model
from tesseract_fl.models.char_gru import GRU, VOCAB_SIZE, CharGRU, gru_matmul
from tesseract_fl.simulation.gradients import loop_gradients, vmap_gradients

EXPECTED = {
    "resnet18_cifar": (10, 5_206_218),
    "resnet18": (10, 11_173_962),
    "char_gru": (100, 141_300),
    "leaf_cnn": (62, 6_603_710),
    "leaf_cnn_3x3": (62, 6_570_430),
    "mlp": (2, 4_130),
    "chmnist_cnn": (8, 581_768),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts(name: str) -> None:
    num_classes, count = EXPECTED[name]
    assert name in MODELS
    assert count_parameters(make_model(name, num_classes=num_classes)) == count


@pytest.mark.parametrize(
    ("name", "num_classes", "x"),
    [
        ("leaf_cnn", 62, torch.randn(2, 1, 28, 28)),
        ("mlp", 2, torch.randn(3, 30)),
        ("chmnist_cnn", 8, torch.randn(2, 3, 64, 64)),
        ("char_gru", 100, torch.randint(0, 100, (2, 5))),
    ],
)
def test_output_shapes(name: str, num_classes: int, x: torch.Tensor) -> None:
    out = make_model(name, num_classes=num_classes)(x)
    assert out.shape == (x.shape[0], num_classes)


def test_char_gru_matmul_form_matches_the_fused_kernel() -> None:
    """The vmap path's matmul GRU equals nn.GRU's fused kernel, output and gradients."""
    torch.manual_seed(0)
    model = CharGRU()
    assert isinstance(model.gru, nn.GRU)
    plain = GRU(100, 100, num_layers=2)
    plain.load_state_dict(model.gru.state_dict())
    x = torch.randn(3, 6, 100)
    torch.testing.assert_close(plain(x), model.gru(x)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gru_matmul(x, model.gru), model.gru(x)[0], rtol=1e-5, atol=1e-6)
    plain(x).square().sum().backward()
    model.gru(x)[0].square().sum().backward()
    for (name, a), b in zip(model.gru.named_parameters(), plain.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert VOCAB_SIZE == 100


def test_char_gru_initialization_is_that_of_the_matmul_module() -> None:
    """Same parameter names, order and initial values as before the fused kernel was used."""
    torch.manual_seed(0)
    model = CharGRU()
    torch.manual_seed(0)
    nn.Embedding(100, 100)
    plain = GRU(100, 100, num_layers=2)
    assert [n for n, _ in model.gru.named_parameters()] == [n for n, _ in plain.named_parameters()]
    for a, b in zip(model.gru.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


def test_vmap_equals_loop_char_gru() -> None:
    torch.manual_seed(0)
    model = make_model("char_gru", num_classes=100)
    x = torch.randint(0, 100, (3, 2, 6))
    y = torch.randint(0, 100, (3, 2))
    G_loop, l_loop = loop_gradients(model, x, y, F.cross_entropy)
    G_vmap, l_vmap = vmap_gradients(model, x, y, F.cross_entropy, chunk_size=2)
    torch.testing.assert_close(G_vmap, G_loop, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(l_vmap, l_loop)


def test_vmap_equals_loop_resnet18_cifar_batchnorm() -> None:
    """Training-mode BN: per-client batch statistics; vmap leaves running stats untouched."""
    torch.manual_seed(0)
    model = make_model("resnet18_cifar")
    model.train()
    x = torch.randn(2, 2, 3, 32, 32)
    y = torch.randint(0, 10, (2, 2))
    before = {n: b.clone() for n, b in model.named_buffers()}
    G_vmap, l_vmap = vmap_gradients(model, x, y, F.cross_entropy, chunk_size=2)
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    G_loop, l_loop = loop_gradients(model, x, y, F.cross_entropy)
    assert G_loop.shape == (2, 5_206_218)
    torch.testing.assert_close(G_vmap, G_loop, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(l_vmap, l_loop, rtol=1e-5, atol=1e-6)
    bn = model.blocks[0].bn1
    assert int(bn.num_batches_tracked) == 2  # the loop backend updates them, once per client
