"""The flat-parameter layout: a model's trainable parameters as one vector ``theta`` [P] and a
client's gradient as one row of ``G`` [m, P], blocks in ``model.parameters()`` order
(docs/design.md, "Gradient matrix"). Every place that cuts such a vector into its blocks uses
:func:`flat_slices`.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["flat_slices"]


def flat_slices(sizes: Iterable[int]) -> list[slice]:
    """The slice of the flat vector each block of ``sizes`` entries occupies, in order."""
    out: list[slice] = []
    offset = 0
    for n in sizes:
        out.append(slice(offset, offset + int(n)))
        offset += int(n)
    return out
