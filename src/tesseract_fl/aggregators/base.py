"""Shared types of all aggregators: the context a round passes in and the result it gets back."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from tesseract_fl.errors import ConfigError, UpdateError


@dataclass
class AggregationContext:
    """What a defense may know about the round besides the gradient matrix (docs/design.md,
    "Aggregators").

    ``n_samples``: the clients' local dataset sizes, one per row (FedSGD's weights);
    ``root_gradient``: the server's own gradient on its clean root set at the current model,
    computed by the round when the defense declares ``needs_root_gradient`` (FLTrust);
    ``extra``: anything a plugin defense and its caller agree on (the built-ins read nothing
    from it). The rows' client ids are the ``client_ids`` argument of ``aggregate``.
    """

    n_samples: Tensor | None = None
    root_gradient: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Diagnostics:
    """What a defense reports about a round besides the update and the weights (docs/design.md,
    "Aggregators"). Per-row tensors index the rows received (the rows of ``G``).

    ``excluded``: rows dropped for NaN/Inf entries (hostile-input policy); ``c_max_effective``:
    the c_max the rule ran with when rows were excluded or it differs from the configured one;
    ``scores``: the rule's per-row score (Krum's score, FLTrust's trust, FoolsGold's alpha);
    ``selected``: the rows a selecting rule picked (Krum, Bulyan); ``flip_scores``, ``fs_low``,
    ``fs_high``, ``reputation`` (of the present clients), ``penalized``: TESSERACT's (paper
    Algorithm 1); ``extra``: the rest, named in each rule's docstring.
    """

    excluded: list[int] = field(default_factory=list)
    c_max_effective: int | None = None
    scores: Tensor | None = None
    selected: Tensor | None = None
    flip_scores: Tensor | None = None
    fs_low: float | None = None
    fs_high: float | None = None
    reputation: Tensor | None = None
    penalized: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Aggregate:
    """Result of one aggregation.

    ``update`` is the aggregated gradient (Tensor[P]); ``weights`` is each row's effective weight
    (Tensor[m]) so Table 3 / Figure 4 are computed the same way for every defense;
    ``diagnostics`` is what the defense reports about the round (:class:`Diagnostics`).
    """

    update: Tensor
    weights: Tensor
    diagnostics: Diagnostics = field(default_factory=Diagnostics)


@runtime_checkable
class Aggregator(Protocol):
    """A defense: maps a ``[m, P]`` gradient matrix (plus context) to an :class:`Aggregate`.

    ``needs_root_gradient``: the round must pass ``ctx.root_gradient`` (FLTrust).
    """

    name: str
    needs_root_gradient: bool

    def aggregate(
        self, G: Tensor, client_ids: Tensor | None = None, ctx: AggregationContext | None = None
    ) -> Aggregate: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_matrix(G: Tensor, *, min_rows: int = 1) -> None:
    # Strict validator for the building blocks (gram64, flip_scores, ...); the aggregators
    # themselves apply the hostile-row policy of :func:`split_finite` instead.
    """Validate a gradient matrix: 2-D float tensor with at least ``min_rows`` rows, all finite."""
    if not isinstance(G, Tensor):
        raise UpdateError(f"gradient matrix must be a torch.Tensor, got {type(G).__name__}")
    if G.dim() != 2:
        raise UpdateError(
            f"gradient matrix must be 2-D [clients, params], got shape {tuple(G.shape)}"
        )
    if not G.is_floating_point():
        raise UpdateError(f"gradient matrix must be floating point, got dtype {G.dtype}")
    if G.shape[0] < min_rows:
        raise UpdateError(f"gradient matrix needs at least {min_rows} rows, got {G.shape[0]}")
    if not all_finite(G):
        bad = (~torch.isfinite(G)).any(dim=1).nonzero().flatten().tolist()
        raise UpdateError(f"gradient matrix has NaN/Inf entries in rows {bad[:10]}")


def finite(t: Tensor) -> bool:
    """True when every entry of ``t`` is finite. The sum decides in one pass with no boolean
    temporary (a NaN or Inf entry makes it NaN or Inf); only when the sum is not finite, which
    finite entries overflowing can also cause, does the elementwise check run."""
    if t.numel() == 0:
        return True
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def all_finite(G: Tensor) -> bool:
    """True when every entry of the 2-D tensor ``G`` is finite.

    Fast path: the column sums ``ones(1, m) @ G`` (one BLAS pass over G, several times faster
    than ``torch.isfinite(G).all()``, which writes a boolean temporary) are all finite only if
    G is: a NaN or +-Inf entry makes its column sum NaN or +-Inf. A non-finite sum
    may also come from finite entries overflowing, so then the exact elementwise check decides.
    """
    if G.numel() == 0:
        return True
    col_sums = torch.ones(1, G.shape[0], dtype=G.dtype, device=G.device) @ G
    if finite(col_sums):
        return True
    return bool(torch.isfinite(G).all())


def resolve_client_ids(
    client_ids: Tensor | Sequence[int] | None, m: int, num_clients: int | None = None
) -> Tensor:
    """Ids of G's rows (CPU long): ``client_ids``, else ``0..m-1``.

    One integer per row, unique, and (when ``num_clients`` is given: stateful defenses key their
    state by these ids) within ``[0, num_clients)``; otherwise :class:`UpdateError`.
    """
    ids: Any = torch.arange(m) if client_ids is None else client_ids
    try:
        t = torch.as_tensor(ids).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UpdateError(f"client_ids must be a 1-D sequence of integers: {exc}") from exc
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise UpdateError(f"client_ids must be integers, got dtype {t.dtype}")
    t = t.to(torch.long)
    if t.dim() != 1 or t.shape[0] != m:
        raise UpdateError(
            f"client_ids must be 1-D with one id per row of G ({m}), got shape {tuple(t.shape)}"
        )
    if t.unique().numel() != m:
        raise UpdateError(f"client_ids must be unique, got {t.tolist()[:20]}")
    if num_clients is not None and m and (int(t.min()) < 0 or int(t.max()) >= num_clients):
        raise UpdateError(
            f"client_ids must lie in [0, {num_clients}), got range [{int(t.min())}, {int(t.max())}]"
        )
    return t


def check_layout(G: Tensor) -> None:
    """The cheap part of :func:`~tesseract_fl.aggregators.base.check_matrix`: a 2-D floating
    point Tensor with at least one row (its error messages). Finiteness is left to the caller,
    which sees NaN/Inf propagate into its Gram matrix or dot products and then calls
    ``check_matrix`` for the exact diagnosis; this saves one pass over G."""
    if not isinstance(G, Tensor) or G.dim() != 2 or not G.is_floating_point() or G.shape[0] < 1:
        check_matrix(G)


# --------------------------------------------------------------------------- hostile rows
#
# Policy (docs/design.md, "Hostile-input policy"): a malicious client may send NaN/Inf, so a
# row with any non-finite entry is EXCLUDED from the round instead of failing it. The rule runs
# on the finite rows only; the excluded rows get weight 0 and are listed in
# ``Diagnostics.excluded``. The configured c_max is still validated against the rows received
# (ConfigError as before); when rows were excluded it is reduced to the largest value the rule
# accepts for the finite count (``Diagnostics.c_max_effective``). With no finite row left the
# update is the zero vector (the global model is unchanged) and every weight is 0. A wrong
# layout (not 2-D, not float, no rows) is still an UpdateError.


@dataclass(frozen=True)
class FiniteRows:
    """The finite rows of a gradient matrix (see :func:`split_finite`).

    ``G``: the rows the rule runs on (the input itself when none was taken out); ``kept``: their
    indices in the input (CPU long), ``None`` when every row is kept; ``excluded``: indices of
    the rows with a NaN/Inf entry; ``m``: rows received; ``dropped``: indices of finite rows an
    earlier stage of the round took out (TESSERACT's filter, :meth:`without`).
    """

    G: Tensor
    kept: Tensor | None
    excluded: list[int]
    m: int
    #: What the rule computed on the way and may reuse (FABA's Gram matrix of the rows received).
    cache: Tensor | None = None
    dropped: list[int] = field(default_factory=list)

    @property
    def m_finite(self) -> int:
        """Number of rows the rule runs on (finite and not dropped)."""
        return self.m - len(self.excluded) - len(self.dropped)

    def without(self, drop: Tensor) -> FiniteRows:
        """These rows less those where ``drop`` (bool, one per row received) is true.

        The dropped rows are out of the round for the rule exactly as non-finite rows are
        (weight 0, c_max reduced to what the rule accepts for the rows left) but are listed in
        ``dropped``, not ``excluded``. The cache is discarded: it covers the rows received.
        """
        drop = torch.as_tensor(drop, dtype=torch.bool).detach().cpu()
        if drop.shape != (self.m,):
            raise UpdateError(
                f"drop must have one entry per row ({self.m}), got {tuple(drop.shape)}"
            )
        rows = torch.arange(self.m) if self.kept is None else self.kept
        stay = ~drop[rows]
        if bool(stay.all()):
            return self
        dropped = sorted(self.dropped + rows[~stay].tolist())
        kept = rows[stay]
        G = self.G.index_select(0, stay.nonzero().flatten().to(self.G.device))
        return FiniteRows(G=G, kept=kept, excluded=list(self.excluded), m=self.m, dropped=dropped)

    def scatter(self, w: Tensor, fill: float = 0.0) -> Tensor:
        """Per-finite-row values -> values of every received row (``fill`` for excluded rows)."""
        if self.kept is None:
            return w
        out = torch.full((self.m,), fill, dtype=w.dtype, device=w.device)
        out[self.kept.to(w.device)] = w
        return out

    def rows_of_input(self, idx: Tensor) -> Tensor:
        """Indices into the finite rows -> indices into the rows received."""
        return idx if self.kept is None else self.kept[idx.cpu()]

    def zero_update(self, c_max_effective: int | None = None) -> Aggregate:
        """The no-finite-row result: zero update, all weights 0 (the model is unchanged)."""
        z = self.G.new_zeros(self.G.shape[1])
        return Aggregate(
            update=z,
            weights=self.G.new_zeros(self.m),
            diagnostics=self.diagnostics(c_max_effective),
        )

    def diagnostics(self, c_max_effective: int | None = None) -> Diagnostics:
        """The hostile-input part of a round's :class:`Diagnostics`."""
        return Diagnostics(excluded=list(self.excluded), c_max_effective=c_max_effective)


def split_finite(G: Tensor, *, row_probe: Tensor | None = None) -> FiniteRows:
    """Validate ``G``'s layout and split off the rows with NaN/Inf entries (hostile policy).

    Cost when every row is finite: one :func:`all_finite` pass (the column-sum trick); the
    per-row exact check runs only when some
    entry is not finite. ``row_probe``: a per-row quantity the caller computed anyway whose
    entries are finite only if the row is (squared norms, Gram diagonal); when it is all finite
    the pass over G is skipped (a non-finite probe may be an overflow: the exact check decides).
    """
    check_layout(G)
    m = G.shape[0]
    if row_probe is not None and bool(torch.isfinite(row_probe).all()):
        return FiniteRows(G=G, kept=None, excluded=[], m=m)
    if all_finite(G):
        return FiniteRows(G=G, kept=None, excluded=[], m=m)
    finite = torch.isfinite(G).all(dim=1).cpu()
    kept = finite.nonzero().flatten()
    excluded = (~finite).nonzero().flatten().tolist()
    sub = G.index_select(0, kept.to(G.device)) if kept.numel() else G[:0]
    return FiniteRows(G=sub, kept=kept, excluded=excluded, m=m)


@dataclass(frozen=True)
class Rows:
    """What a rule's formula sees: the finite rows of the round (hostile-input policy applied).

    ``G``: the finite rows; ``ids``: their client ids; ``c``: the c_max the rule runs with
    (:meth:`Defense.effective_c`; ``None`` for rules without one); ``finite``: the split, for
    rules whose formula also looks at the excluded rows (TESSERACT penalizes them); ``all_ids``:
    the ids of every row received; ``ctx``: the round's context.
    """

    G: Tensor
    ids: Tensor
    c: int | None
    finite: FiniteRows
    all_ids: Tensor
    ctx: AggregationContext


@dataclass
class RuleResult:
    """A rule's formula applied to :class:`Rows`: ``update`` (Tensor[P]), ``weights`` (one per
    finite row; the base scatters them back) and ``diagnostics`` (per-row tensors index the rows
    received, as in :class:`Aggregate`; ``excluded`` and ``c_max_effective`` are filled in)."""

    update: Tensor
    weights: Tensor
    diagnostics: Diagnostics = field(default_factory=Diagnostics)


class Defense:
    """Base of the defenses: the hostile-input policy written once around a rule's formula.

    :meth:`aggregate` checks the layout of ``G`` and the client ids, splits off the rows with
    NaN/Inf entries (:func:`split_finite`), reduces c_max to what the finite rows allow
    (:meth:`effective_c`), returns the zero update when no finite row is left, and otherwise
    calls :meth:`rule` on the finite rows and scatters the weights back (docs/design.md,
    "Hostile-input policy"). A subclass sets ``name`` and implements :meth:`rule`; stateful
    rules also ``state_dict``/``load_state_dict`` (the default is stateless).

    Class attributes: ``needs_root_gradient`` (the round passes ``ctx.root_gradient``, FLTrust);
    ``runs_without_finite_rows`` (call :meth:`rule` even when every row was excluded: stateful
    rules that must record such a round); ``num_clients`` (set by stateful rules: client ids
    must lie in ``[0, num_clients)``).
    """

    name: ClassVar[str] = ""
    needs_root_gradient: ClassVar[bool] = False
    runs_without_finite_rows: ClassVar[bool] = False
    num_clients: int | None = None

    def rule(self, rows: Rows) -> RuleResult:
        """The rule's formula on the finite rows."""
        raise NotImplementedError(f"{type(self).__name__} does not implement rule()")

    def check_input(self, G: Tensor, ids: Tensor, ctx: AggregationContext) -> None:
        """Checks of the whole round before the split (sizes the rule needs, its context)."""

    def finite_rows(self, G: Tensor) -> FiniteRows:
        """The hostile-input split of ``G`` (a rule may exclude more, e.g. FoolsGold)."""
        return split_finite(G)

    def effective_c(self, fin: FiniteRows) -> int | None:
        """The c_max to run with on ``fin``'s finite rows; ``None`` for rules without one."""
        return None

    def aggregate(
        self,
        G: Tensor,
        client_ids: Tensor | Sequence[int] | None = None,
        ctx: AggregationContext | None = None,
        *,
        drop: Tensor | None = None,
    ) -> Aggregate:
        """One round of the rule on ``G`` [m, P] with the hostile-input policy applied.

        ``drop`` (bool per row, optional): rows an earlier stage took out (TESSERACT's filter in
        front of this rule); they are treated as excluded rows are, see :meth:`FiniteRows.without`.
        """
        check_layout(G)
        ids = resolve_client_ids(client_ids, G.shape[0], self.num_clients)
        ctx = AggregationContext() if ctx is None else ctx
        self.check_input(G, ids, ctx)
        fin = self.finite_rows(G)
        if drop is not None:
            fin = fin.without(drop)
        c = self.effective_c(fin)
        if fin.m_finite == 0 and not self.runs_without_finite_rows:
            return fin.zero_update(None if c is None else max(c, 0))
        fids = ids if fin.kept is None else ids[fin.kept]
        out = self.rule(Rows(G=fin.G, ids=fids, c=c, finite=fin, all_ids=ids, ctx=ctx))
        d = out.diagnostics
        d.excluded = list(fin.excluded)
        if d.c_max_effective is None:
            d.c_max_effective = c
        return Aggregate(update=out.update, weights=fin.scatter(out.weights), diagnostics=d)

    def state_dict(self) -> dict[str, Any]:
        """Stateless by default: an empty dict."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accept the (empty) state of :meth:`state_dict`; anything else is a mistake."""
        if state:
            raise ConfigError(
                f"{type(self).__name__} is stateless; unexpected state keys {sorted(state)}"
            )


def stack_updates(updates: Mapping[int, Tensor], num_params: int) -> tuple[Tensor, Tensor]:
    """Stack per-client flat updates into ``(G [m, P], client_ids [m])``, sorted by client id.

    For a server that receives one update per client (e.g. a Flower strategy). Each update must
    be a 1-D floating point Tensor of length ``num_params``; otherwise :class:`UpdateError`
    names the offending client. NaN/Inf values are accepted here: the aggregators exclude such
    rows (hostile-row policy above). Rows take the dtype of the first update (float32 default).
    """
    if not updates:
        raise UpdateError("no client updates to stack")
    ids = sorted(updates)
    dtype: torch.dtype | None = None
    for cid in ids:
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise UpdateError(f"client id must be an int, got {cid!r}")
        u = updates[cid]
        if not isinstance(u, Tensor):
            what = type(u).__name__
            raise UpdateError(f"client {cid}: update must be a torch.Tensor, got {what}")
        if u.dim() != 1:
            raise UpdateError(f"client {cid}: update must be 1-D, got shape {tuple(u.shape)}")
        if not u.is_floating_point():
            raise UpdateError(f"client {cid}: update must be floating point, got dtype {u.dtype}")
        if u.shape[0] != num_params:
            raise UpdateError(
                f"client {cid}: update has {u.shape[0]} entries, the model has {num_params}"
            )
        dtype = dtype or u.dtype
    assert dtype is not None
    device = updates[ids[0]].device
    G = torch.stack([updates[cid].detach().to(device=device, dtype=dtype) for cid in ids])
    return G, torch.tensor(ids, dtype=torch.long)
