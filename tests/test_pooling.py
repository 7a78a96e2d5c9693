"""MaxPool2x2 and the CNNs' pool-before-ReLU order: the same numbers as the textbook models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tesseract_fl.models import make_model
from tesseract_fl.models.pooling import MaxPool2x2, max_pool2x2


@pytest.mark.parametrize(
    "shape", [(4, 3, 28, 28), (4, 3, 27, 13), (3, 7, 7), (2, 5, 2, 3), (1, 2, 26, 26)]
)
def test_inference_path_gives_the_pooling_kernels_values(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.relu(torch.randn(shape, generator=gen))  # ties at 0 in many windows
    x.view(-1)[3::11] = float("nan")
    for inp in (x, x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x):
        with torch.no_grad():
            got = MaxPool2x2()(inp)
        torch.testing.assert_close(got, F.max_pool2d(inp, 2), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(max_pool2x2(inp), got, rtol=0, atol=0, equal_nan=True)


def test_training_path_keeps_the_pooling_kernels_gradient() -> None:
    """With ties (ReLU zeros) the kernel routes a window's gradient to one input; the training
    path must do exactly that, not split it as ``torch.maximum`` would."""
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(3, 4, 10, 10, generator=gen)).requires_grad_()
    w = torch.randn(3, 4, 5, 5, generator=gen)
    (g_ours,) = torch.autograd.grad((MaxPool2x2()(x) * w).sum(), x)
    (g_ref,) = torch.autograd.grad((nn.MaxPool2d(2)(x) * w).sum(), x)
    assert torch.equal(g_ours, g_ref)
    assert bool(((g_ref != 0).sum(dim=(-1, -2)) <= 25).all())  # one input per window


def test_too_small_inputs_are_refused_as_by_the_kernel() -> None:
    with torch.no_grad(), pytest.raises(RuntimeError):
        MaxPool2x2()(torch.ones(2, 3, 1, 1))


def _conv_relu_pool(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its features in the textbook order, conv-ReLU-pool, and plain
    ``nn.MaxPool2d``: the reference our pool-before-ReLU order must reproduce bit for bit."""
    ref = copy.deepcopy(model)
    layers = list(ref.features)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        if isinstance(layers[i], MaxPool2x2):
            assert isinstance(layers[i + 1], nn.ReLU)
            out += [nn.ReLU(), nn.MaxPool2d(2)]
            i += 2
        else:
            out.append(layers[i])
            i += 1
    ref.features = nn.Sequential(*out)
    assert not any(isinstance(m, MaxPool2x2) for m in ref.modules())
    return ref


@pytest.mark.parametrize("name", ["mnist_cnn", "mnist_cnn_padded", "leaf_cnn", "chmnist_cnn"])
def test_models_match_conv_relu_pool_bit_for_bit(name: str) -> None:
    """Evaluation logits, training loss and every parameter's gradient equal those of the same
    weights in conv-ReLU-pool order with the pooling kernel, in both memory layouts."""
    torch.manual_seed(0)
    model = make_model(name, num_classes=10)
    ref = _conv_relu_pool(model)
    shape = (3, 64, 64) if name == "chmnist_cnn" else (1, 28, 28)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, *shape, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref.eval()(x))
    for layout in (torch.contiguous_format, torch.channels_last):
        a = copy.deepcopy(model).train().to(memory_format=layout)
        b = copy.deepcopy(ref).train().to(memory_format=layout)
        xl = x.contiguous(memory_format=layout)
        la, lb = F.cross_entropy(a(xl), y), F.cross_entropy(b(xl), y)
        la.backward()
        lb.backward()
        assert torch.equal(la, lb)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert pa.grad is not None and pb.grad is not None
            assert torch.equal(pa.grad, pb.grad)
