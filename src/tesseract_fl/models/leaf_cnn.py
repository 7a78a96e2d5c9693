"""LEAF's FEMNIST CNN (docs/design.md, "Models"; paper Table 1: 6.6M parameters, "same as LEAF").

Conv2d(1,32,5,pad 2) ReLU MaxPool2, Conv2d(32,64,5,pad 2) ReLU MaxPool2, Linear(3136,2048) ReLU,
Linear(2048,62) on 1x28x28 images: 6,603,710 parameters. ``kernel=3`` gives the authors' code
(3x3 kernels, padding 1): 6,570,430.
"""

from __future__ import annotations

from torch import Tensor, nn

from tesseract_fl.models.pooling import MaxPool2x2


class LeafCNN(nn.Module):
    """The LEAF FEMNIST CNN; 62 classes (digits, upper and lower case letters) by default."""

    def __init__(self, num_classes: int = 62, kernel: int = 5) -> None:
        super().__init__()
        pad = kernel // 2
        # Pooling before each ReLU: see models/pooling.py (the same numbers).
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel, padding=pad),
            MaxPool2x2(),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel, padding=pad),
            MaxPool2x2(),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 2048),
            nn.ReLU(),
            nn.Linear(2048, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
