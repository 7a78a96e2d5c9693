"""An example tesseract-fl plugin: one component of each kind, registered on import.

- defense ``centered_clip``: centered clipping (Karimireddy, He and Jaggi 2021, "Learning from
  History for Byzantine Robust Optimization", ICML, Eq. 2), starting from last round's
  aggregate;
- attack ``random_direction``: every attacker sends a random direction scaled to the median
  honest norm (a norm bound cannot tell it from a benign update);
- model ``digits_mlp``: 64-32-classes MLP;
- dataset ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import tesseract_fl
from tesseract_fl.aggregators.base import Defense, Rows, RuleResult
from tesseract_fl.attacks.base import AttackContext, Poison, malicious_mask
from tesseract_fl.data import Dataset
from tesseract_fl.errors import ConfigError


def centered_clip(G: Tensor, v: Tensor, tau: float, iters: int) -> Tensor:
    """``v <- v + mean_i clip_tau(g_i - v)``, ``iters`` times, with
    ``clip_tau(x) = x * min(1, tau / ||x||)`` (Karimireddy et al. 2021, Eq. 2)."""
    for _ in range(iters):
        diff = G - v
        norms = torch.linalg.vector_norm(diff, dim=1, keepdim=True)
        scale = torch.clamp(tau / norms.clamp_min(1e-12), max=1.0)
        v = v + (diff * scale).mean(dim=0)
    return v


@tesseract_fl.register_defense("centered_clip")  # fingerprint: its source hash
class CenteredClip(Defense):
    """Centered clipping around last round's aggregate (its state).

    The base class applies the hostile-input policy every defense keeps (rows with NaN/Inf
    excluded, weight 0, listed in ``diagnostics.excluded``; no finite row: the zero update) and
    calls :meth:`rule` on the finite rows.
    """

    name = "centered_clip"

    def __init__(self, *, tau: float = 1.0, iters: int = 1) -> None:
        if not (isinstance(tau, int | float) and not isinstance(tau, bool) and tau > 0):
            raise ConfigError(f"centered_clip: tau must be a positive number, got {tau!r}")
        if not (isinstance(iters, int) and not isinstance(iters, bool) and iters >= 1):
            raise ConfigError(f"centered_clip: iters must be an integer >= 1, got {iters!r}")
        self.tau, self.iters = float(tau), iters
        self.previous: Tensor | None = None

    def rule(self, rows: Rows) -> RuleResult:
        G = rows.G
        start = self.previous
        if start is None or start.shape[0] != G.shape[1]:
            start = torch.zeros(G.shape[1], dtype=G.dtype, device=G.device)
        update = centered_clip(G, start.to(G.device, G.dtype), self.tau, self.iters)
        self.previous = update.detach().clone()
        m = G.shape[0]
        return RuleResult(update=update, weights=torch.full((m,), 1.0 / m, dtype=torch.float64))

    def state_dict(self) -> dict[str, Any]:
        return {"previous": None if self.previous is None else self.previous.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        prev = state.get("previous")
        self.previous = None if prev is None else prev.clone()


@tesseract_fl.register_attack("random_direction", version="1")  # fingerprint: "1"
class RandomDirection:
    """Each attacker sends a random unit direction times ``scale`` x the median honest norm."""

    name = "random_direction"

    def __init__(self, *, scale: float = 1.0) -> None:
        if not (isinstance(scale, int | float) and not isinstance(scale, bool) and scale > 0):
            raise ConfigError(f"random_direction: scale must be positive, got {scale!r}")
        self.scale = float(scale)

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        c = ctx.num_malicious
        mask = malicious_mask(G_honest.shape[0], c, ctx.malicious).to(G_honest.device)
        norm = float(torch.linalg.vector_norm(G_honest[~mask], dim=1).median())
        noise = torch.randn(
            (c, G_honest.shape[1]), generator=ctx.generator, dtype=torch.float32
        ).to(device=G_honest.device, dtype=G_honest.dtype)
        rows = noise / torch.linalg.vector_norm(noise, dim=1, keepdim=True) * norm * self.scale
        return Poison(rows, {"norm": norm})


@tesseract_fl.register_model("digits_mlp")
def digits_mlp(num_classes: int) -> nn.Module:
    """64-32-classes MLP for the flattened 8x8 digits."""
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))


@tesseract_fl.register_dataset("digits", description="scikit-learn 8x8 digits, 10 classes")
def load_digits(data_dir: Path) -> Dataset:
    """scikit-learn's digits, flattened, scaled to [0, 1], stratified 80/20 split (seed 0)."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x / 16.0, y, test_size=0.2, stratify=y, random_state=0
    )
    return Dataset(
        name="digits",
        train_x=torch.tensor(x_tr, dtype=torch.float32),
        train_y=torch.tensor(y_tr, dtype=torch.int64),
        test_x=torch.tensor(x_te, dtype=torch.float32),
        test_y=torch.tensor(y_te, dtype=torch.int64),
        num_classes=10,
        source="scikit-learn load_digits",
    )
