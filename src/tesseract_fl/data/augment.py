"""Training-time data augmentation written in torch, applied to whole batches at once.

``crop_flip`` is the standard CIFAR-10 augmentation (paper Table 1's ResNet-18 runs;
docs/design.md, "Presets"): pad each image by 4 pixels on every side, take a random 32x32
crop, and flip it horizontally with probability 1/2, independently per image. The padding is
black in pixel space, i.e. the dataset's normalized value of a zero pixel (``-mean / std`` per
channel), as with torchvision's ``RandomCrop(32, padding=4)`` applied before ``Normalize``.
Offsets and flips are drawn on the CPU from the caller's generator, so a run is reproducible
and resumable on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tesseract_fl.errors import ConfigError

__all__ = ["AUGMENTATIONS", "Augment", "black_pixel", "make_augment", "random_crop_flip"]

#: Names accepted by the ``augment`` config key.
AUGMENTATIONS: tuple[str, ...] = ("none", "crop_flip")

#: ``(images [N, C, H, W], generator) -> augmented images`` (same shape, device and dtype).
Augment = Callable[[Tensor, torch.Generator], Tensor]


def random_crop_flip(
    x: Tensor,
    generator: torch.Generator,
    padding: int = 4,
    fill: Sequence[float] | float = 0.0,
) -> Tensor:
    """Random crop of the ``padding``-padded image back to its size, then a random horizontal
    flip, independently per image of ``x`` (``[N, C, H, W]``). ``fill``: the padding value,
    one per channel or one for all."""
    if x.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    p = int(padding)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if fill_t.numel() not in (1, c):
        raise ValueError(f"fill needs 1 or {c} values, got {fill_t.numel()}")
    padded = fill_t.view(1, -1, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
    padded[:, :, p : p + h, p : p + w] = x
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, w)
    cols = torch.where(flip.view(n, 1), (w - 1) - cols, cols) + dx.view(n, 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, rows, cols.view(n, 1, 1, w)]


def make_augment(name: str, fill: Sequence[float] | float = 0.0) -> Augment | None:
    """The augmentation called ``name`` (None for ``"none"``), padding with ``fill``."""
    if name == "none":
        return None
    if name == "crop_flip":
        return lambda x, gen: random_crop_flip(x, gen, padding=4, fill=fill)
    raise ConfigError(
        f"augment = {name!r} is not allowed; allowed values: {', '.join(AUGMENTATIONS)}"
    )


def black_pixel(dataset: str) -> tuple[float, ...] | float:
    """The normalized value of a zero (black) pixel of ``dataset``, per channel where its
    normalization is fixed (CIFAR-10, MNIST, Fashion-MNIST); else 0.0, the training mean of
    datasets standardized with statistics computed at load time."""
    if dataset == "cifar10":
        from tesseract_fl.data.cifar import CIFAR10_MEAN, CIFAR10_STD

        return tuple(-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True))
    from tesseract_fl.data.registry import NORMALIZATION

    if dataset in NORMALIZATION:
        mean, std = NORMALIZATION[dataset]
        return -mean / std
    return 0.0
