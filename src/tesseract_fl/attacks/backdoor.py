"""Backdoor attacks with a trigger (docs/design.md, "Backdoors").

* **BadNets** (Gu et al. 2017, "BadNets: Identifying Vulnerabilities in the Machine Learning
  Model Supply Chain"): every malicious client stamps a fixed pattern (a ``size`` x ``size``
  square of the data's brightest value, one pixel in from the bottom-right corner; for tabular
  data its last ``size`` features) on a fraction ``fraction`` of each of its batches and labels
  those samples ``target``, then computes its gradient honestly on that batch.
* **Model replacement** (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning", Sec. 4):
  BadNets' poisoned gradient, boosted by ``gamma``. Their ``gamma = n / eta`` makes the attacker's
  model replace the global one under FedAvg; with our server averaging ``m`` rows and applying its
  learning rate itself, the matching boost is ``gamma = m / c``:
  ``(1/m) (sum_benign g_i + c * (m/c) g_bd) = g_bd + (1/m) sum_benign g_i`` (the default).
* **DBA** (Xie et al. 2020, "DBA: Distributed Backdoor Attacks against Federated Learning"): the
  global trigger is split into ``parts`` local triggers (bars of ``size`` pixels, arranged two per
  row near the top-left corner; for tabular data consecutive blocks of the last features); the
  ``j``-th attacker (in client order) stamps only part ``j mod parts``. Success is measured with
  the assembled global trigger.

The **attack success rate** (ASR) of a model: among the test samples whose label is not
``target``, the fraction classified as ``target`` once the global trigger is stamped on them
(:func:`attack_success_rate`; stored beside accuracy at every evaluation).

Which samples are poisoned is fixed (the first ``round(fraction * B)`` of a batch), so a run needs
no random draws for it; the trigger value ``high`` is the training set's largest input value (the
white pixel of a normalized image), passed in by the simulator.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from tesseract_fl.attacks.base import AttackContext, Poison, check_honest, malicious_mask
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import positive_finite

__all__ = [
    "DBA",
    "BackdoorAttack",
    "BadNets",
    "ModelReplacement",
    "attack_success_rate",
    "dba_masks",
    "square_mask",
    "stamp",
]


@runtime_checkable
class BackdoorAttack(Protocol):
    """A backdoor: poisons the malicious clients' batches (inputs and labels) before their
    gradients, and stamps its global trigger on test inputs to measure attack success."""

    name: str
    target: int

    def poison_batch(self, x: Tensor, y: Tensor, high: float) -> tuple[Tensor, Tensor]: ...

    def stamp_global(self, x: Tensor, high: float) -> Tensor: ...


def _int_param(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"attack.{key} must be an integer >= {low}, got {value!r}")
    return value


def square_mask(sample_shape: tuple[int, ...], size: int) -> Tensor:
    """BadNets' pattern as a bool mask of one sample's shape: a ``size`` x ``size`` square one
    pixel in from the bottom-right corner of every channel (images ``[C, H, W]``), or the last
    ``size`` features (tabular ``[F]``)."""
    mask = torch.zeros(sample_shape, dtype=torch.bool)
    if len(sample_shape) == 1:
        if size > sample_shape[0]:
            raise ConfigError(f"attack.size = {size} exceeds the {sample_shape[0]} features")
        mask[-size:] = True
        return mask
    if len(sample_shape) != 3:
        raise ConfigError(f"backdoor triggers need [C, H, W] or [F] inputs, got {sample_shape}")
    _, h, w = sample_shape
    if size + 1 > min(h, w):
        raise ConfigError(f"attack.size = {size} does not fit a {h}x{w} image")
    mask[:, h - 1 - size : h - 1, w - 1 - size : w - 1] = True
    return mask


def dba_masks(sample_shape: tuple[int, ...], size: int, parts: int) -> list[Tensor]:
    """DBA's local triggers as bool masks: part ``k`` is a one-pixel-high bar of ``size`` pixels
    at row ``1 + 2 (k // 2)``, column ``1 + (k % 2)(size + 2)`` (images), or the ``k``-th block of
    ``size`` features counted from the end (tabular). Their union is the global trigger."""
    masks = []
    for k in range(parts):
        mask = torch.zeros(sample_shape, dtype=torch.bool)
        if len(sample_shape) == 1:
            if parts * size > sample_shape[0]:
                raise ConfigError(
                    f"attack.parts * attack.size = {parts * size} exceeds the "
                    f"{sample_shape[0]} features"
                )
            f = sample_shape[0]
            mask[f - (k + 1) * size : f - k * size] = True
        elif len(sample_shape) == 3:
            _, h, w = sample_shape
            row, col = 1 + 2 * (k // 2), 1 + (k % 2) * (size + 2)
            if row >= h or col + size > w:
                raise ConfigError(
                    f"a DBA trigger of {parts} bars of {size} pixels does not fit a {h}x{w} image"
                )
            mask[:, row, col : col + size] = True
        else:
            raise ConfigError(f"backdoor triggers need [C, H, W] or [F] inputs, got {sample_shape}")
        masks.append(mask)
    return masks


def stamp(x: Tensor, mask: Tensor, high: float) -> Tensor:
    """``x`` with the trigger ``mask`` (one sample's shape) set to ``high`` (a new tensor)."""
    return torch.where(mask.to(x.device), torch.as_tensor(high, dtype=x.dtype, device=x.device), x)


def _poisoned_count(fraction: float, batch: int) -> int:
    return min(batch, max(1, math.floor(fraction * batch + 0.5)))


class BadNets:
    """BadNets: a square trigger on a fraction of each malicious batch, labelled ``target``."""

    name = "badnets"

    def __init__(self, *, target: int = 0, size: int = 3, fraction: float = 0.3125) -> None:
        self.target = _int_param("target", target, 0)
        self.size = _int_param("size", size, 1)
        f = positive_finite(fraction, "attack.fraction")
        if f > 1.0:
            raise ConfigError(f"attack.fraction must be in (0, 1], got {fraction!r}")
        self.fraction = f

    def local_mask(self, sample_shape: tuple[int, ...], attacker: int) -> Tensor:
        """The trigger the ``attacker``-th malicious client stamps (BadNets: the global one)."""
        return square_mask(sample_shape, self.size)

    def global_mask(self, sample_shape: tuple[int, ...]) -> Tensor:
        """The trigger stamped on test inputs to measure attack success."""
        return square_mask(sample_shape, self.size)

    def poison_batch(self, x: Tensor, y: Tensor, high: float) -> tuple[Tensor, Tensor]:
        """Poison the malicious clients' batches ``x [c, B, ...]``, ``y [c, B]``: the first
        ``round(fraction * B)`` samples of attacker ``j`` get its local trigger and ``target``."""
        if x.dim() < 3 or y.shape != x.shape[:2]:
            raise ConfigError(
                f"poison_batch expects x [c, B, ...] and y [c, B], got {tuple(x.shape)} and "
                f"{tuple(y.shape)}"
            )
        if x.is_floating_point() is False:
            raise ConfigError("backdoor triggers need real-valued inputs (not token ids)")
        k = _poisoned_count(self.fraction, x.shape[1])
        x, y = x.clone(), y.clone()
        sample = tuple(x.shape[2:])
        for j in range(x.shape[0]):
            x[j, :k] = stamp(x[j, :k], self.local_mask(sample, j), high)
            y[j, :k] = self.target
        return x, y

    def stamp_global(self, x: Tensor, high: float) -> Tensor:
        """Test inputs ``x [N, ...]`` with the global trigger stamped on every sample."""
        return stamp(x, self.global_mask(tuple(x.shape[1:])), high)

    def __repr__(self) -> str:
        cls = type(self).__name__
        return f"{cls}(target={self.target}, size={self.size}, fraction={self.fraction:g})"


class ModelReplacement(BadNets):
    """Model replacement: BadNets' poisoned gradients boosted by ``gamma`` (default ``m / c``).
    Records ``boost``."""

    name = "model_replacement"

    def __init__(
        self,
        *,
        target: int = 0,
        size: int = 3,
        fraction: float = 0.3125,
        boost: float | None = None,
    ) -> None:
        super().__init__(target=target, size=size, fraction=fraction)
        self.boost = None if boost is None else positive_finite(boost, "attack.boost")

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        """The malicious rows (already computed on backdoored batches) times ``gamma``."""
        c = ctx.num_malicious
        check_honest(G_honest, c, min_benign=0)
        m = G_honest.shape[0]
        gamma = float(m) / c if self.boost is None else self.boost
        mask = malicious_mask(m, c, ctx.malicious).to(G_honest.device)
        return Poison(G_honest.detach()[mask] * gamma, {"boost": gamma})

    def __repr__(self) -> str:
        boost = "m/c" if self.boost is None else f"{self.boost:g}"
        return f"ModelReplacement(target={self.target}, size={self.size}, boost={boost})"


class DBA(BadNets):
    """DBA: the global trigger split into ``parts`` local bars, one per attacker in turn."""

    name = "dba"

    def __init__(
        self, *, target: int = 0, size: int = 4, parts: int = 4, fraction: float = 0.3125
    ) -> None:
        super().__init__(target=target, size=size, fraction=fraction)
        self.parts = _int_param("parts", parts, 1)

    def local_mask(self, sample_shape: tuple[int, ...], attacker: int) -> Tensor:
        return dba_masks(sample_shape, self.size, self.parts)[attacker % self.parts]

    def global_mask(self, sample_shape: tuple[int, ...]) -> Tensor:
        return torch.stack(dba_masks(sample_shape, self.size, self.parts)).any(dim=0)

    def __repr__(self) -> str:
        return f"DBA(target={self.target}, size={self.size}, parts={self.parts})"


@torch.no_grad()
def attack_success_rate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    backdoor: BackdoorAttack,
    high: float,
    batch_size: int = 256,
) -> float:
    """Fraction of the test samples not labelled ``target`` that ``model`` classifies as
    ``target`` with the global trigger stamped on them (NaN when every label is the target)."""
    keep = y != backdoor.target
    xs = x[keep]
    if xs.shape[0] == 0:
        return math.nan
    was_training = model.training
    model.eval()
    hits = 0
    for start in range(0, xs.shape[0], batch_size):
        xb = backdoor.stamp_global(xs[start : start + batch_size], high)
        hits += int((model(xb).argmax(dim=1) == backdoor.target).sum())
    model.train(was_training)
    return hits / xs.shape[0]
