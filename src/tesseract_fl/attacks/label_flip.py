"""Label flipping, a data-poisoning attack (paper App. A.2; Fang et al. 2020 Sec. 5;
docs/design.md, "Label flipping").

The malicious clients compute honest gradients, but on poisoned labels: *untargeted* flipping
relabels every sample ``y -> (L - 1) - y``; *targeted* flipping relabels one source class as a
target class (default 7 -> 1 on digit data) and leaves the rest alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tesseract_fl.errors import ConfigError

__all__ = ["LabelFlip", "TargetedLabelFlip", "flip_labels", "relabel"]


def flip_labels(y: Tensor, num_classes: int) -> Tensor:
    """Untargeted flip ``y -> (L - 1) - y`` for integer labels in ``[0, L)``."""
    if num_classes < 2:
        raise ConfigError(f"label flipping needs at least 2 classes, got {num_classes}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(
            f"labels must be in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]"
        )
    return (num_classes - 1) - y


def relabel(y: Tensor, source: int, target: int) -> Tensor:
    """Targeted flip: every ``source`` label becomes ``target``; other labels are unchanged."""
    return torch.where(y == source, torch.full_like(y, target), y)


def _check_class(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"attack.{key} must be a non-negative class index, got {value!r}")
    return value


class LabelFlip:
    """Untargeted label flipping: malicious clients train on ``(L - 1) - y``."""

    name = "label_flip"

    def poison_labels(self, y: Tensor, num_classes: int) -> Tensor:
        return flip_labels(y, num_classes)

    def __repr__(self) -> str:
        return "LabelFlip()"


class TargetedLabelFlip:
    """Targeted label flipping: malicious clients relabel ``source`` as ``target``."""

    name = "targeted_label_flip"

    def __init__(self, *, source: int = 7, target: int = 1) -> None:
        self.source = _check_class("source", source)
        self.target = _check_class("target", target)
        if self.source == self.target:
            raise ConfigError(f"attack.source and attack.target must differ, both are {source}")

    def poison_labels(self, y: Tensor, num_classes: int) -> Tensor:
        for key in ("source", "target"):
            if getattr(self, key) >= num_classes:
                raise ConfigError(
                    f"attack.{key} = {getattr(self, key)} is not a class of a {num_classes}-class "
                    "dataset"
                )
        return relabel(y, self.source, self.target)

    def __repr__(self) -> str:
        return f"TargetedLabelFlip(source={self.source}, target={self.target})"
