"""A Little Is Enough (Baruch, Baruch and Goldberg 2019, "A Little Is Enough: Circumventing
Defenses For Distributed Learning", NeurIPS; docs/design.md, "ALIE").

Every attacker sends ``mu + sign * z * sigma``, where ``mu`` and ``sigma`` are the per-coordinate
mean and sample standard deviation (unbiased, ``n - 1``) of the benign gradients. The shift stays
inside the benign spread, so coordinate-wise and distance-based defenses keep the malicious rows,
yet all attackers push the same way. By default ``z`` is the paper's ``z_max`` (Sec. 3.2)::

    s = floor(n / 2 + 1) - f,    z_max = Phi^-1((n - s) / n)

with ``n`` clients of which ``f`` are malicious (n = 100, f = 20: s = 31, z_max = 0.496): the
largest z for which the ``s`` benign clients needed for a majority still lie further from the
mean than the attackers. ``sign = -1`` (default) moves against the mean gradient.
"""

from __future__ import annotations

import math
import numbers
from statistics import NormalDist
from typing import Any

from torch import Tensor

from tesseract_fl.attacks.base import (
    AttackContext,
    Poison,
    benign_index,
    check_honest,
    malicious_mask,
)
from tesseract_fl.attacks.statistics import column_std_mean
from tesseract_fl.errors import ConfigError
from tesseract_fl.validation import as_count

__all__ = ["ALIE", "alie", "alie_z_max"]


def alie_z_max(num_clients: int, num_malicious: int) -> float:
    """Baruch et al.'s ``z_max = Phi^-1((n - s) / n)``, ``s = floor(n/2 + 1) - f``.

    :class:`ConfigError` when ``(n - s) / n`` is not in (0, 1), i.e. the attackers alone are a
    majority (``f >= floor(n/2 + 1)``): no z follows from the formula, pass ``z`` explicitly.
    """
    n = as_count(num_clients, "num_clients", minimum=1)
    f = as_count(num_malicious, "num_malicious", minimum=0)
    if f > n:
        raise ConfigError(f"num_malicious ({f}) cannot exceed num_clients ({n})")
    s = math.floor(n / 2 + 1) - f
    q = (n - s) / n
    if not 0.0 < q < 1.0:
        raise ConfigError(
            f"ALIE's z_max = Phi^-1((n - s)/n) with s = floor(n/2 + 1) - f needs (n - s)/n in "
            f"(0, 1), got n={n}, f={f}, s={s}, (n - s)/n={q:g}; pass z explicitly"
        )
    return NormalDist().inv_cdf(q)


def _check_z(z: Any) -> float | None:
    if z is None:
        return None
    try:
        zf = float(z)
    except (TypeError, ValueError):
        raise ConfigError(f"ALIE z must be a finite number >= 0 or None, got {z!r}") from None
    if isinstance(z, bool) or not (math.isfinite(zf) and zf >= 0.0):
        raise ConfigError(f"ALIE z must be a finite number >= 0 or None, got {z!r}")
    return zf


def _check_sign(sign: Any) -> float:
    if sign in ("-", "+"):
        return -1.0 if sign == "-" else 1.0
    if isinstance(sign, bool) or not isinstance(sign, numbers.Real) or sign not in (-1, 1):
        raise ConfigError(
            f"ALIE sign must be -1 (mu - z*sigma, the default) or +1 (mu + z*sigma), got {sign!r}"
        )
    return float(sign)


def _alie(
    G_benign: Tensor,
    num_clients: int,
    num_malicious: int,
    z: float | None,
    sign: float,
    rows: Tensor | None = None,
) -> tuple[Tensor, float]:
    """(rows [num_malicious, P], z used) without validating ``G_benign``; the benign rows are
    ``G_benign[rows]`` (read in place) when ``rows`` (indices) is given."""
    zz = alie_z_max(num_clients, num_malicious) if z is None else z
    sigma, mu = column_std_mean(G_benign.detach(), correction=1, rows=rows)
    row = mu + (sign * zz) * sigma
    return row.expand(num_malicious, -1).clone(), zz


def alie(
    G_benign: Tensor,
    num_malicious: int,
    num_clients: int | None = None,
    z: float | None = None,
    sign: float = -1.0,
) -> Tensor:
    """ALIE rows ``[num_malicious, P]``: every row is ``mu + sign * z * sigma`` of ``G_benign``.

    ``G_benign`` [k, P] holds the benign gradients only (k >= 2 for sigma); ``num_clients``
    defaults to ``k + num_malicious``; ``z = None`` uses :func:`alie_z_max`.
    """
    c = as_count(num_malicious, "num_malicious", minimum=1)
    check_honest(G_benign, 0, min_benign=2)
    n = G_benign.shape[0] + c if num_clients is None else as_count(num_clients, "num_clients")
    return _alie(G_benign, n, c, _check_z(z), _check_sign(sign))[0]


class ALIE:
    """A Little Is Enough (Baruch et al. 2019): ``n`` = rows of ``G_honest``, ``f`` =
    ``ctx.num_malicious``; statistics of the benign rows ``G_honest[~ctx.malicious]``. Records
    the ``z`` used."""

    name = "alie"

    def __init__(self, *, z: float | None = None, sign: float = -1.0) -> None:
        self.z = _check_z(z)
        self.sign = _check_sign(sign)

    def poison(self, G_honest: Tensor, ctx: AttackContext) -> Poison:
        """Every attacker sends ``mu + sign * z * sigma`` of the benign rows."""
        c = ctx.num_malicious
        check_honest(G_honest, c, min_benign=2)
        m = G_honest.shape[0]
        mask = malicious_mask(m, c, ctx.malicious).to(G_honest.device)
        rows, z = _alie(G_honest, m, c, self.z, self.sign, rows=benign_index(mask))
        return Poison(rows, {"z": z})

    def __repr__(self) -> str:
        return f"ALIE(z={self.z}, sign={self.sign:+g})"
