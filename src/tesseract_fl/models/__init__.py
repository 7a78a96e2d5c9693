"""Model registry: small models written here (no torchvision), built by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from tesseract_fl.errors import ConfigError
from tesseract_fl.models.char_gru import CharGRU
from tesseract_fl.models.chmnist_cnn import ChMnistCNN
from tesseract_fl.models.leaf_cnn import LeafCNN
from tesseract_fl.models.mlp import MLP
from tesseract_fl.models.mnist_cnn import MnistCNN
from tesseract_fl.models.resnet import ResNet18, ResNet18Cifar
from tesseract_fl.plugins import register_model
from tesseract_fl.plugins.registry import BUILTIN, Registry, origin

#: Model factories ``num_classes -> nn.Module`` by name (docs/design.md, "Plugins"): the
#: built-ins are registered exactly as a plugin's model is, with
#: :func:`tesseract_fl.register_model`.
MODELS: Registry = Registry("model", "model")


def _factory(cls: type[nn.Module], **kwargs: Any) -> Callable[[int], nn.Module]:
    """``num_classes -> cls(num_classes=num_classes, **kwargs)``."""
    return lambda num_classes: cls(num_classes=num_classes, **kwargs)


with origin(BUILTIN):
    for _name, _cls, _kwargs, _about in (
        ("mnist_cnn", MnistCNN, {"padding": 0}, "paper Table 1 MNIST CNN (unpadded convolutions)"),
        ("mnist_cnn_padded", MnistCNN, {"padding": 1}, "the MNIST CNN with padded convolutions"),
        ("resnet18_cifar", ResNet18Cifar, {}, "ResNet-18 with the CIFAR stem (3x3, no max-pool)"),
        ("resnet18", ResNet18, {}, "ResNet-18 with the ImageNet stem"),
        ("char_gru", CharGRU, {}, "character GRU for next-character prediction (Shakespeare)"),
        ("leaf_cnn", LeafCNN, {}, "LEAF FEMNIST CNN (5x5 convolutions)"),
        ("leaf_cnn_3x3", LeafCNN, {"kernel": 3}, "LEAF FEMNIST CNN with 3x3 convolutions"),
        ("mlp", MLP, {}, "tabular MLP 30-64-32-classes (Breast Cancer)"),
        ("chmnist_cnn", ChMnistCNN, {}, "Ch-MNIST CNN for 3x64x64 histology tiles"),
    ):
        register_model(_name, _factory(_cls, **_kwargs), description=_about)
    del _name, _cls, _kwargs, _about


def make_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a registered model; unknown names raise ConfigError listing the known ones (and
    the closest), a factory that does not return an ``nn.Module`` is a ConfigError too."""
    factory = MODELS.lookup(name)
    model = factory(num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model {name!r}: its factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (the P of the gradient matrix)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "MLP",
    "MODELS",
    "ChMnistCNN",
    "CharGRU",
    "LeafCNN",
    "MnistCNN",
    "ResNet18",
    "ResNet18Cifar",
    "count_parameters",
    "make_model",
]
