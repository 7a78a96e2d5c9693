"""2x2 max pooling whose inference path is three elementwise maxima instead of ATen's pooling
kernel, which took half of a test-set evaluation's time (docs/performance.md).

A maximum is exact, so both paths give the same values for the same input (a window whose
maxima are +0.0 and -0.0 may keep the other zero, which no later product or sum can tell apart
from it unless everything it is added to is zero as well); only the backward
differs (the pooling kernel routes a window's gradient to its first maximum, ``torch.maximum``
would split it between ties), which is why training, with gradients enabled, keeps
:func:`torch.nn.functional.max_pool2d`.

The CNNs pool before their ReLU: both are monotone, so ``relu(maxpool(x)) = maxpool(relu(x))``
value for value, and the gradient reaches the same input (a window's first maximum where it is
positive; nothing where it is not), while the ReLU and its backward run on a quarter of the
values. Their numbers, gradients included, are those of conv-ReLU-pool bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MaxPool2x2", "max_pool2x2"]


def max_pool2x2(x: Tensor) -> Tensor:
    """``max_pool2d(x, 2)`` of ``x`` [..., H, W] as the maximum of the four strided quarters of
    each window (a trailing odd row or column is dropped, as the pooling kernel drops it)."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    top = torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2])
    bottom = torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2])
    return torch.maximum(top, bottom, out=top)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)``; with gradients disabled (evaluation) it runs :func:`max_pool2x2`,
    which takes about an eighth of the pooling kernel's time on a contiguous CPU batch."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.dim() not in (3, 4) or min(x.shape[-2:]) < 2:
            return super().forward(x)  # training, or shapes the kernel validates
        return max_pool2x2(x)
