"""Aggregation rules (defenses) and a registry to build them by name (docs/design.md, "Defenses").

Public API: :func:`fedsgd`, :class:`FedSGD`, :func:`flip_scores`, :class:`Tesseract`, the shared
types :class:`Aggregate`, :class:`AggregationContext`, :class:`Aggregator`, and the registry
:data:`AGGREGATORS` / :func:`make_aggregator` / :func:`register_aggregator`.
"""

from __future__ import annotations

import inspect
from typing import Any

from tesseract_fl.aggregators.base import (
    Aggregate,
    AggregationContext,
    Aggregator,
    Defense,
    Diagnostics,
    Rows,
    RuleResult,
    check_matrix,
)
from tesseract_fl.aggregators.bulyan import Bulyan, bulyan
from tesseract_fl.aggregators.caf import CAF, caf
from tesseract_fl.aggregators.centered_clipping import CenteredClipping
from tesseract_fl.aggregators.composed import PreAggregated
from tesseract_fl.aggregators.dnc import DnC
from tesseract_fl.aggregators.faba import FABA, faba
from tesseract_fl.aggregators.fedsgd import FedSGD, fedsgd
from tesseract_fl.aggregators.flame import FLAME
from tesseract_fl.aggregators.fltrust import FLTrust, fltrust
from tesseract_fl.aggregators.foolsgold import FoolsGold
from tesseract_fl.aggregators.geometric_median import GeometricMedian, geometric_median
from tesseract_fl.aggregators.kernels.gram import pairwise_sq_distances
from tesseract_fl.aggregators.krum import Krum, krum, krum_scores
from tesseract_fl.aggregators.meamed import Meamed, meamed
from tesseract_fl.aggregators.median import Median, median
from tesseract_fl.aggregators.monna import MoNNA, monna
from tesseract_fl.aggregators.tesseract import Tesseract, flip_scores, penalty_mask
from tesseract_fl.aggregators.trimmed_mean import TrimmedMean, trimmed_mean
from tesseract_fl.errors import ConfigError
from tesseract_fl.plugins import register_defense
from tesseract_fl.plugins.registry import BUILTIN, Registry, origin
from tesseract_fl.preaggregators import PRE_AGGREGATORS

__all__ = [
    "AGGREGATORS",
    "CAF",
    "FABA",
    "FLAME",
    "Aggregate",
    "AggregationContext",
    "Aggregator",
    "Bulyan",
    "CenteredClipping",
    "Defense",
    "Diagnostics",
    "DnC",
    "FLTrust",
    "FedSGD",
    "FoolsGold",
    "GeometricMedian",
    "Krum",
    "Meamed",
    "Median",
    "MoNNA",
    "PreAggregated",
    "Rows",
    "RuleResult",
    "Tesseract",
    "TrimmedMean",
    "bulyan",
    "caf",
    "check_matrix",
    "faba",
    "fedsgd",
    "flip_scores",
    "fltrust",
    "geometric_median",
    "krum",
    "krum_scores",
    "make_aggregator",
    "meamed",
    "median",
    "monna",
    "pairwise_sq_distances",
    "penalty_mask",
    "register_aggregator",
    "split_defense_name",
    "trimmed_mean",
]

#: Aggregator classes by name (docs/design.md, "Plugins"): the built-ins are registered exactly
#: as a plugin's defense is, with :func:`tesseract_fl.register_defense`. Constructors may take
#: ``num_clients`` and/or ``c_max`` (passed by :func:`make_aggregator` when accepted) plus
#: keyword parameters of their own.
AGGREGATORS: Registry = Registry("defense", "aggregator (defense)")

with origin(BUILTIN):
    for _cls in (
        FedSGD,
        Tesseract,
        TrimmedMean,
        Median,
        Krum,
        Bulyan,
        FABA,
        FoolsGold,
        FLTrust,
        GeometricMedian,
        CenteredClipping,
        Meamed,
        DnC,
        MoNNA,
        CAF,
        FLAME,
    ):
        register_defense(_cls.name, _cls)
    del _cls


def _build(cls: type, key: str, kind: str, params: dict[str, Any], *, c_max: int) -> Any:
    """``cls(**params)`` with unknown parameters named; the round's ``c_max`` is passed when the
    constructor takes it (nnm's neighbour count)."""
    accepted, var_kw = constructor_params(cls)
    unknown = sorted(set(params) - {a for a in accepted if a != "c_max"})
    if unknown and not var_kw:
        raise ConfigError(
            f"{kind} {key!r} does not accept parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) if accepted else '(none)'}"
        )
    if "c_max" in accepted:
        params = {**params, "c_max": c_max}
    return cls(**params)


# Filled by make_aggregator: the round's sizes, not user-tunable parameters.
_CONTEXT_PARAMS = ("num_clients", "c_max")


def register_aggregator(name: str, cls: type, *, replace: bool = False) -> None:
    """Add ``cls`` to :data:`AGGREGATORS` under ``name`` (``replace=True`` to overwrite); the
    same as :func:`tesseract_fl.register_defense`."""
    register_defense(name, cls, replace=replace)


def constructor_params(cls: type) -> tuple[list[str], bool]:
    """Keyword-passable constructor parameter names, and whether it takes ``**kwargs``."""
    sig = inspect.signature(cls)
    names: list[str] = []
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return names, var_kw


def split_defense_name(name: str) -> tuple[list[str], str]:
    """``"clip+tesseract"`` -> ``(["clip"], "tesseract")``; names are checked against the
    registries (:class:`ConfigError` listing the allowed names)."""
    parts = [p.strip().lower() for p in str(name).split("+")]
    *pres, rule = parts
    for pre in pres:
        if pre not in PRE_AGGREGATORS:
            raise ConfigError(
                f"unknown pre-aggregator {pre!r} in defense {name!r}; allowed before '+': "
                f"{', '.join(sorted(PRE_AGGREGATORS))}"
            )
    AGGREGATORS.lookup(rule)  # unknown: ConfigError with the allowed and the closest name
    return pres, rule


def make_aggregator(name: str, *, num_clients: int, c_max: int, **params: Any) -> Aggregator:
    """Build the aggregator registered as ``name`` (case-insensitive).

    ``num_clients`` and ``c_max`` are passed only to constructors that accept them (FedSGD takes
    neither). Raises :class:`ConfigError` for an unknown name (listing the allowed names) or for
    parameters the constructor does not accept (listing the accepted ones).

    A name ``"pre+...+rule"`` puts pre-aggregators (:mod:`tesseract_fl.preaggregators`) before
    the rule; each one's parameters are the table under its name (``clip = {multiplier = 2}``).
    """
    if "+" in str(name):
        pres, rule = split_defense_name(name)
        rest = dict(params)
        built: list[Any] = []
        for pre in pres:
            pre_params = rest.pop(pre, {})
            if not isinstance(pre_params, dict):
                raise ConfigError(
                    f"parameters of pre-aggregator {pre!r} must be a table, got {pre_params!r}"
                )
            built.append(
                _build(PRE_AGGREGATORS[pre], pre, "pre-aggregator", pre_params, c_max=c_max)
            )
        inner = make_aggregator(rule, num_clients=num_clients, c_max=c_max, **rest)
        return PreAggregated(built, inner)
    key = str(name).strip().lower()
    cls = AGGREGATORS.lookup(key)
    accepted, var_kw = constructor_params(cls)
    tunable = [p for p in accepted if p not in _CONTEXT_PARAMS]
    unknown = sorted(set(params) - set(tunable))
    if unknown and not var_kw:
        raise ConfigError(
            f"aggregator {key!r} does not accept parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(tunable) if tunable else '(none)'}"
        )
    kwargs: dict[str, Any] = dict(params)
    if "num_clients" in accepted:
        kwargs["num_clients"] = num_clients
    if "c_max" in accepted:
        kwargs["c_max"] = c_max
    agg = cls(**kwargs)
    if not isinstance(agg, Aggregator):
        lacking = [
            a
            for a in ("name", "needs_root_gradient", "aggregate", "state_dict", "load_state_dict")
            if not hasattr(agg, a)
        ]
        raise ConfigError(
            f"registered class {cls.__name__} does not implement Aggregator: it lacks "
            f"{', '.join(lacking)}"
        )
    return agg
