"""Small CNN for Ch-MNIST (Kather et al. 2016 colorectal histology; paper Fig. 3b).

The paper gives no architecture. Our choice, for 3x64x64 RGB tiles (the 150x150 originals
resized to 64x64, as the Kaggle "Colorectal Histology MNIST" 64x64 release does) and 8 classes:
three blocks Conv2d(3x3, pad 1) ReLU MaxPool2 with 32/64/64 channels (64 -> 32 -> 16 -> 8),
then Linear(64*8*8, 128) ReLU, Linear(128, 8): 581,768 parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from tesseract_fl.models.pooling import MaxPool2x2


class ChMnistCNN(nn.Module):
    """conv32-pool-conv64-pool-conv64-pool-fc128-fc8 on 3x64x64 tiles."""

    def __init__(self, num_classes: int = 8, image_size: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in (32, 64, 64):
            # pooling before the ReLU: see models/pooling.py (the same numbers)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), MaxPool2x2(), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        side = image_size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
