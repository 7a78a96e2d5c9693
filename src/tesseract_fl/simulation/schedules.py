"""Learning-rate schedules of the presets (paper Sec. 5; docs/design.md, "Presets")."""

from __future__ import annotations

import math
from collections.abc import Callable

from tesseract_fl.errors import ConfigError

LR_SCHEDULES: tuple[str, ...] = ("constant", "cifar")


def make_schedule(name: str, lr: float, rounds: int) -> Callable[[int], float]:
    """Return ``round -> lr`` (rounds counted from 0).

    ``constant``: the paper's MNIST/Shakespeare/FEMNIST setting. ``cifar``: starts at zero, peaks
    at ``lr`` at one quarter of training and decays again: ``lr (1 - exp(-25 e/E))`` for
    ``e < E/4``, then ``lr exp(-0.5 ((e - E/4)/(E/4))^2)``.
    """
    if name == "constant":
        return lambda e: lr
    if name == "cifar":
        quarter = rounds / 4.0

        def cifar(e: int) -> float:
            if e < quarter:
                return lr * (1.0 - math.exp(-25.0 * e / rounds))
            return lr * math.exp(-0.5 * ((e - quarter) / quarter) ** 2)

        return cifar
    raise ConfigError(f"unknown lr_schedule {name!r}; allowed values: {', '.join(LR_SCHEDULES)}")
