"""Model registry: small models written here (no torchvision), built by name."""

from __future__ import annotations

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

with origin(BUILTIN):
    register_model(
        "mnist_cnn",
        lambda num_classes: MnistCNN(num_classes=num_classes, padding=0),
        description="paper Table 1 MNIST CNN (unpadded convolutions)",
    )
    register_model(
        "mnist_cnn_padded",
        lambda num_classes: MnistCNN(num_classes=num_classes, padding=1),
        description="the MNIST CNN with padded convolutions",
    )
    register_model(
        "resnet18_cifar",
        lambda num_classes: ResNet18Cifar(num_classes=num_classes),
        description="ResNet-18 with the CIFAR stem (3x3, no max-pool)",
    )
    register_model(
        "resnet18",
        lambda num_classes: ResNet18(num_classes=num_classes),
        description="ResNet-18 with the ImageNet stem",
    )
    register_model(
        "char_gru",
        lambda num_classes: CharGRU(num_classes=num_classes),
        description="character GRU for next-character prediction (Shakespeare)",
    )
    register_model(
        "leaf_cnn",
        lambda num_classes: LeafCNN(num_classes=num_classes),
        description="LEAF FEMNIST CNN (5x5 convolutions)",
    )
    register_model(
        "leaf_cnn_3x3",
        lambda num_classes: LeafCNN(num_classes=num_classes, kernel=3),
        description="LEAF FEMNIST CNN with 3x3 convolutions",
    )
    register_model(
        "mlp",
        lambda num_classes: MLP(num_classes=num_classes),
        description="tabular MLP 30-64-32-classes (Breast Cancer)",
    )
    register_model(
        "chmnist_cnn",
        lambda num_classes: ChMnistCNN(num_classes=num_classes),
        description="Ch-MNIST CNN for 3x64x64 histology tiles",
    )


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
