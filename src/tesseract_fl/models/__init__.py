"""Model registry: small models written here (no torchvision), built by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tesseract_fl.errors import ConfigError
from tesseract_fl.models.char_gru import CharGRU
from tesseract_fl.models.chmnist_cnn import ChMnistCNN
from tesseract_fl.models.leaf_cnn import LeafCNN
from tesseract_fl.models.mlp import MLP
from tesseract_fl.models.mnist_cnn import MnistCNN
from tesseract_fl.models.resnet import ResNet18, ResNet18Cifar

MODELS: dict[str, Callable[[int], nn.Module]] = {
    "mnist_cnn": lambda num_classes: MnistCNN(num_classes=num_classes, padding=0),
    "mnist_cnn_padded": lambda num_classes: MnistCNN(num_classes=num_classes, padding=1),
    "resnet18_cifar": lambda num_classes: ResNet18Cifar(num_classes=num_classes),
    "resnet18": lambda num_classes: ResNet18(num_classes=num_classes),
    "char_gru": lambda num_classes: CharGRU(num_classes=num_classes),
    "leaf_cnn": lambda num_classes: LeafCNN(num_classes=num_classes),
    "leaf_cnn_3x3": lambda num_classes: LeafCNN(num_classes=num_classes, kernel=3),
    "mlp": lambda num_classes: MLP(num_classes=num_classes),
    "chmnist_cnn": lambda num_classes: ChMnistCNN(num_classes=num_classes),
}


def make_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a registered model; unknown names raise ConfigError listing the known ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; allowed values: {', '.join(sorted(MODELS))}"
        ) from None
    return factory(num_classes)


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
