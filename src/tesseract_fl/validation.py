"""The small validators every layer uses, written once (docs/design.md, "Conventions").

Each raises :class:`~tesseract_fl.errors.ConfigError` with the parameter's name and the value it
got; booleans are never accepted as numbers (``True`` is not a count of 1).
"""

from __future__ import annotations

import math
from typing import Any

from tesseract_fl.errors import ConfigError

__all__ = ["as_count", "finite_or_none", "positive_finite"]


def as_count(value: Any, what: str, *, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (an integral float such as ``3.0`` is accepted)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    try:
        ivalue = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{what} must be an integer, got {value!r}") from exc
    if ivalue != value:
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    if ivalue < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {ivalue}")
    return ivalue


def positive_finite(value: Any, what: str) -> float:
    """``value`` as a float that is finite and > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{what} must be a positive finite number, got {value!r}") from None
    if isinstance(value, bool) or not (math.isfinite(v) and v > 0.0):
        raise ConfigError(f"{what} must be a positive finite number, got {value!r}")
    return v


def finite_or_none(x: Any) -> float | None:
    """``float(x)`` when it is a finite number, else ``None`` (JSON has no NaN or Infinity)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None
