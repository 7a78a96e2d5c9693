"""The shared parameters of the rank-based coordinate-wise rules (trimmed mean, Bulyan, Meamed):
the c_max they trim or select by, the coordinates their weights are estimated on, and the
sorting kernel's options (docs/design.md, "Performance")."""

from __future__ import annotations

from tesseract_fl.aggregators.base import Defense
from tesseract_fl.aggregators.kernels.weights import WEIGHT_SAMPLE, check_weight_sample
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count

__all__ = ["CoordinateWise"]


class CoordinateWise(Defense):
    """``c_max``; ``weight_sample`` (coordinates, fixed seed, used for the reported weights;
    ``None`` = all); ``chunk_size``/``method``: the sorting kernel's (results agree).
    ``methods``: the ``method`` values a rule accepts, checked here (``None``: the kernel
    checks them when it runs)."""

    methods: tuple[str, ...] | None = None

    def __init__(
        self,
        c_max: int,
        weight_sample: int | None = WEIGHT_SAMPLE,
        *,
        chunk_size: int | None = None,
        method: str = "auto",
    ) -> None:
        if self.methods is not None and method not in self.methods:
            allowed = " or ".join(repr(m) for m in self.methods)
            raise ConfigError(f"method must be {allowed}, got {method!r}")
        self.c_max = as_count(c_max, "c_max")
        self.weight_sample = check_weight_sample(weight_sample)
        self.chunk_size = chunk_size
        self.method = method
