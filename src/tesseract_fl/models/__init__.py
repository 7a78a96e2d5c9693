"""Model registry: small models written here (no torchvision), built by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tesseract_fl.errors import ConfigError
from tesseract_fl.models.mnist_cnn import MnistCNN

MODELS: dict[str, Callable[[int], nn.Module]] = {
    "mnist_cnn": lambda num_classes: MnistCNN(num_classes=num_classes, padding=0),
    "mnist_cnn_padded": lambda num_classes: MnistCNN(num_classes=num_classes, padding=1),
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


__all__ = ["MODELS", "MnistCNN", "count_parameters", "make_model"]
