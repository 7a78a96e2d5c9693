"""ResNet-18 for 3x32x32 CIFAR-10 images (docs/design.md, "Models"; paper Table 1).

Two variants:

* :class:`ResNet18Cifar` (``resnet18_cifar``): the authors' CIFAR variant, the paper's 5.2M.
  Stem Conv2d(3, 64, 3, pad 1, no bias) + ReLU without BatchNorm; four stages of two
  post-activation basic blocks (``relu(bn(conv))`` twice, shortcut added) with channels
  64/128/256/256 and strides 1/2/2/2; on a shape change the shortcut is a 1x1 conv without
  BatchNorm; head: global average pool and global max pool concatenated (512) -> Linear(512, 10).
  5,206,218 trainable parameters.
* :class:`ResNet18` (``resnet18``): the standard CIFAR ResNet-18 (He et al. 2016 as adapted to
  32x32 inputs): 3x3 stem conv + BN + ReLU, pre-addition basic blocks
  ``relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut)`` with channels 64/128/256/512, 1x1 conv + BN
  shortcuts on a shape change, global average pool, Linear(512, 10): 11,173,962 parameters.

BatchNorm: only parameters are aggregated; the running statistics are buffers that stay with
the server's model. In training mode every forward pass normalizes with its own batch
statistics, so each client's gradient depends only on its own batch, in the loop and the vmap
backend alike (the vmap backend hands each client a private copy of the buffers and discards
it; see ``simulation/gradients.py``). Evaluation in eval mode uses the running statistics that
the loop backend's training passes accumulate (the authors evaluate CIFAR in training mode).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class _PostActBlock(nn.Module):
    """The authors' block: ``relu(bn(conv))`` twice, then the shortcut is added."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = (
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return out + self.shortcut(x)


class ResNet18Cifar(nn.Module):
    """The authors' CIFAR ResNet-18 variant: 5,206,218 parameters (paper's 5.2M)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (256, 2)):
            blocks.append(_PostActBlock(cin, cout, stride))
            blocks.append(_PostActBlock(cout, cout, 1))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(2 * cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(F.relu(self.stem(x)))
        pooled = torch.cat((out.mean(dim=(2, 3)), out.amax(dim=(2, 3))), dim=1)
        return self.fc(pooled)


class _BasicBlock(nn.Module):
    """Standard ResNet basic block: the shortcut is added before the last ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """Standard CIFAR ResNet-18: 11,173,962 parameters (11.2M; docs/design.md, "Models")."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks.append(_BasicBlock(cin, cout, stride))
            blocks.append(_BasicBlock(cout, cout, 1))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(self.stem(x))
        return self.fc(out.mean(dim=(2, 3)))
