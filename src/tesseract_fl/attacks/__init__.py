"""Poisoning attacks (docs/design.md, "Attacks") and a registry to build them by name.

Model poisoning (``poison(G_honest, ctx) -> Poison``): :class:`FullTrim`, :class:`FullKrum`,
:class:`AdaptiveKrum`, :class:`AdaptiveTrim`. Data poisoning (``poison_labels``):
:class:`LabelFlip`, :class:`TargetedLabelFlip`. Beyond the paper: :class:`ALIE`, :class:`IPM`,
:class:`MinMax`, :class:`MinSum`, :class:`SignFlip`, :class:`GaussianNoise`, :class:`Mimic`,
:class:`FangFLTrust` (against FLTrust: needs the server's root gradient).
Backdoors (``poison_batch``, judged by attack success rate): :class:`BadNets`,
:class:`ModelReplacement`, :class:`DBA`. Functional API
(stable): :func:`full_trim`, :func:`full_krum`, :func:`adaptive_krum`, :func:`adaptive_trim`,
:func:`alie`, :func:`ipm`, :func:`min_max`, :func:`min_sum`, :func:`sign_flip`,
:func:`gaussian_noise`, :func:`mimic`, :func:`fang_fltrust`.
"""

from __future__ import annotations

from typing import Any

from tesseract_fl.aggregators import constructor_params
from tesseract_fl.attacks.adaptive import (
    AdaptiveKrum,
    AdaptiveTrim,
    adaptive_krum,
    adaptive_trim,
    dilute,
    vector_flip_score,
)
from tesseract_fl.attacks.alie import ALIE, alie, alie_z_max
from tesseract_fl.attacks.backdoor import (
    DBA,
    BackdoorAttack,
    BadNets,
    ModelReplacement,
    attack_success_rate,
)
from tesseract_fl.attacks.base import (
    AttackContext,
    DataAttack,
    DefenseView,
    ModelAttack,
    Poison,
    malicious_mask,
)
from tesseract_fl.attacks.fang_fltrust import FangFLTrust, fang_fltrust
from tesseract_fl.attacks.full_krum import FullKrum, full_krum, full_krum_search, lambda_upper_bound
from tesseract_fl.attacks.full_trim import FullTrim, full_trim
from tesseract_fl.attacks.gaussian import GaussianNoise, gaussian_noise
from tesseract_fl.attacks.ipm import IPM, ipm
from tesseract_fl.attacks.label_flip import LabelFlip, TargetedLabelFlip, flip_labels, relabel
from tesseract_fl.attacks.mimic import Mimic, mimic
from tesseract_fl.attacks.min_max import MinMax, MinSum, min_max, min_sum
from tesseract_fl.attacks.sign_flip import SignFlip, sign_flip
from tesseract_fl.errors import ConfigError
from tesseract_fl.plugins import register_attack as _register
from tesseract_fl.plugins.registry import BUILTIN, Registry, origin

__all__ = [
    "ALIE",
    "ATTACKS",
    "DBA",
    "IPM",
    "AdaptiveKrum",
    "AdaptiveTrim",
    "AttackContext",
    "BackdoorAttack",
    "BadNets",
    "DataAttack",
    "DefenseView",
    "FangFLTrust",
    "FullKrum",
    "FullTrim",
    "GaussianNoise",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "ModelAttack",
    "ModelReplacement",
    "Poison",
    "SignFlip",
    "TargetedLabelFlip",
    "adaptive_krum",
    "adaptive_trim",
    "alie",
    "alie_z_max",
    "attack_success_rate",
    "dilute",
    "fang_fltrust",
    "flip_labels",
    "full_krum",
    "full_krum_search",
    "full_trim",
    "gaussian_noise",
    "ipm",
    "is_backdoor",
    "is_data_attack",
    "lambda_upper_bound",
    "make_attack",
    "malicious_mask",
    "mimic",
    "min_max",
    "min_sum",
    "needs_root_gradient",
    "register_attack",
    "relabel",
    "sign_flip",
    "vector_flip_score",
]

#: Attack classes by name (docs/design.md, "Plugins"): the built-ins are registered exactly as
#: a plugin's attack is, with :func:`tesseract_fl.register_attack`; constructors take keyword
#: parameters (the ``[attack]`` table).
ATTACKS: Registry = Registry("attack", "attack")

with origin(BUILTIN):
    for _cls in (
        FullTrim,
        FullKrum,
        AdaptiveKrum,
        AdaptiveTrim,
        LabelFlip,
        TargetedLabelFlip,
        ALIE,
        IPM,
        MinMax,
        MinSum,
        SignFlip,
        GaussianNoise,
        Mimic,
        FangFLTrust,
        BadNets,
        ModelReplacement,
        DBA,
    ):
        _register(_cls.name, _cls)
    del _cls

#: Attacks that read the defense's public state (TESSERACT's cut-offs): need defense.public_state.
NEEDS_DEFENSE_STATE: frozenset[str] = frozenset({"adaptive_krum", "adaptive_trim"})


def needs_root_gradient(attack: Any) -> bool:
    """True for attacks that read the server's root gradient (``ctx.root_gradient``): they need
    a defense that computes one (FLTrust)."""
    return bool(getattr(attack, "needs_root_gradient", False))


def register_attack(name: str, cls: type, *, replace: bool = False) -> None:
    """Add ``cls`` to :data:`ATTACKS` under ``name`` (``replace=True`` to overwrite); the same
    as :func:`tesseract_fl.register_attack`."""
    _register(name, cls, replace=replace)


def is_data_attack(attack: Any) -> bool:
    """True for label-poisoning attacks (they act before the gradients are computed)."""
    return callable(getattr(attack, "poison_labels", None))


def is_backdoor(attack: Any) -> bool:
    """True for backdoor attacks (they poison batches; judged by attack success rate)."""
    return callable(getattr(attack, "poison_batch", None))


def make_attack(name: str, **params: Any) -> Any:
    """Build the attack registered as ``name`` with its parameters; clear errors for unknown
    names (listing the allowed ones) and unknown or invalid parameters."""
    key = str(name).strip().lower()
    cls = ATTACKS.lookup(key, extra=("none",))
    accepted, _ = constructor_params(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"attack {key!r} does not accept parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) if accepted else '(none)'}"
        )
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"invalid parameters for attack {key!r}: {exc}") from None
