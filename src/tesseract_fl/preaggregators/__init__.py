"""Pre-aggregators: transforms of the gradient matrix applied before any defense.

A pre-aggregator maps the round's ``[m, P]`` matrix to another ``[m, P]`` matrix (one row per
client, same order), so it composes with every rule: ``defense = "clip+tesseract"`` clips the
rows, then TESSERACT aggregates them. Built by :func:`tesseract_fl.aggregators.make_aggregator`
from a name with ``+`` (docs/design.md, "Pre-aggregators").
"""

from __future__ import annotations

from tesseract_fl.preaggregators.base import PreAggregator
from tesseract_fl.preaggregators.bucketing import Bucketing
from tesseract_fl.preaggregators.clip import MedianNormClip, clip_to_median_norm, row_norms
from tesseract_fl.preaggregators.nnm import NearestNeighbourMixing, nearest_neighbour_mixing

__all__ = [
    "PRE_AGGREGATORS",
    "Bucketing",
    "MedianNormClip",
    "NearestNeighbourMixing",
    "PreAggregator",
    "clip_to_median_norm",
    "nearest_neighbour_mixing",
    "row_norms",
]

#: Pre-aggregator classes by name (the part of a defense name before ``+``).
PRE_AGGREGATORS: dict[str, type] = {
    MedianNormClip.name: MedianNormClip,
    NearestNeighbourMixing.name: NearestNeighbourMixing,
    Bucketing.name: Bucketing,
}
