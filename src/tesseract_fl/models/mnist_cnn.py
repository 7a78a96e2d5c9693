"""The paper's MNIST "DNN" (Sec. 5, Table 1: 0.27M parameters) and the authors' padded variant."""

from __future__ import annotations

from torch import Tensor, nn

from tesseract_fl.models.pooling import MaxPool2x2


class MnistCNN(nn.Module):
    """conv30-pool-conv50-pool-fc200-fc10 on 1x28x28 images (docs/design.md, "Models").

    Without padding: 28 -> conv3 26 -> pool 13 -> conv3 11 -> pool 5, so the first linear layer
    sees 50*5*5 = 1250 features and the model has 266,060 parameters (the paper's 0.27M).
    With ``padding=1`` (the authors' code): 28 -> 14 -> 7, 50*7*7 = 2450 features, 506,060
    parameters.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, padding: int = 0) -> None:
        super().__init__()
        side = 28
        side = (side + 2 * padding - 2) // 2
        side = (side + 2 * padding - 2) // 2
        # Pooling before each ReLU: see models/pooling.py (the same numbers, a quarter of the
        # ReLU's work); the parameters keep their indices (features.0, features.3).
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 30, 3, padding=padding),
            MaxPool2x2(),
            nn.ReLU(),
            nn.Conv2d(30, 50, 3, padding=padding),
            MaxPool2x2(),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * side * side, 200),
            nn.ReLU(),
            nn.Linear(200, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
