"""MLP for Breast Cancer Wisconsin (paper Fig. 3b; the paper gives no architecture).

Our choice: 30 standardized features -> Linear(30,64) ReLU -> Linear(64,32) ReLU ->
Linear(32,2): 4,130 parameters. Small, as the data set (569 samples) is small.
"""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected ReLU network ``in_features -> hidden... -> num_classes``."""

    def __init__(
        self, num_classes: int = 2, in_features: int = 30, hidden: tuple[int, ...] = (64, 32)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_features
        for h in hidden:
            layers += [nn.Linear(cin, h), nn.ReLU()]
            cin = h
        layers.append(nn.Linear(cin, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
