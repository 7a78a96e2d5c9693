"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML; docs/design.md, "Trimmed mean") and the shared column-sorting
kernel.

Per coordinate the ``c_max`` largest and ``c_max`` smallest client values are dropped and the
remaining ``m - 2 c_max`` are averaged.

The kernel :func:`sorted_column_chunks` (also used by :mod:`.median` and :mod:`.bulyan`) sorts
every column of G in blocks of columns, so no full-size temporary is ever made:

* CPU, ``m < 64``: a Batcher odd-even merge sorting network applied to whole rows of a column
  block (each compare-exchange is one ``np.minimum`` and one ``np.maximum`` over a contiguous
  row slice), pruned backwards to the comparators that can change the requested result (a rule
  that only sums the middle band never needs to order the dropped values among themselves).
* CPU, ``m >= 64``: each block is transposed into a ``[cols, m]`` buffer and every row (one
  column of G) is sorted along the contiguous axis with NumPy's SIMD sort; the trimmed mean then
  sums the kept band of each sorted row in one call.
* Other devices: ``torch.sort`` along dim 0 per column block.

Measured on the project's 2-core CPU (idle, 2 threads), on ``[100, 270000]`` float32: the
transposed sort in 8192-column blocks with the band sum 62 ms; the pruned network 108-115 ms
(its 928 comparators each stream 100 rows of a 13 MB block through L3); ByzFL's
``np.sort(axis=0)``-based TrMean 135 ms; ``np.partition`` with two kth 640 ms (only a single kth
uses NumPy's SIMD select); ``torch.sort(dim=0)`` about 2 s. With 27M values in ``[m, 27e6/m]``
the network wins up to m = 48 (3x at m = 10, where rows are too short for a SIMD sort) and the
two tie near m = 64, hence ``SORT_MIN_ROWS``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.base import (
    Aggregate,
    AggregationContext,
    FiniteRows,
    Stateless,
    as_count,
    check_client_ids,
    check_layout,
    split_finite,
)
from tesseract_fl.errors import ConfigError, UpdateError

__all__ = [
    "TrimmedMean",
    "resolve_sort_method",
    "sample_columns",
    "sorted_column_chunks",
    "sorted_row_blocks",
    "trimmed_mean",
]

#: Default number of columns per block for the CPU network (row slices of 128 KiB).
DEFAULT_CHUNK_COLUMNS = 32768
#: Default number of columns per block for the CPU transposed sort (a [8192, 100] float32 block
#: is 3.2 MB, near the L2 cache of two cores).
SORT_CHUNK_COLUMNS = 8192
#: Smallest m for which ``method="auto"`` uses the transposed SIMD sort on CPU (below it: the
#: network, whose comparator count grows as m log^2 m while per-row sorts get cheaper per value).
SORT_MIN_ROWS = 64
#: At most this many coordinates (fixed seed) are used to compute coordinate-wise weights: the
#: weights are diagnostics (Table 3, Fig. 4), a kept fraction near 0.6 is then estimated to
#: about +-0.008 (one standard error), and the sample costs a fraction of the rule itself.
WEIGHT_SAMPLE = 4096
_WEIGHT_SEED = 0


# --------------------------------------------------------------------------- validation helpers


# --------------------------------------------------------------------------- sorting network


def _batcher_network(n: int) -> list[tuple[int, int]]:
    """Comparators ``(a, b)``, ``a < b``, of Batcher's odd-even merge sort for ``n`` wires.

    Built for the next power of two N; comparators touching a wire ``>= n`` are dropped, which is
    exact because padding wires would hold +inf and a +inf never moves to a lower wire.
    """
    size = 1
    while size < n:
        size *= 2
    out: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        a, b = i + j, i + j + k
                        if b < n:
                            out.append((a, b))
            k //= 2
        p *= 2
    return out


@functools.lru_cache(maxsize=64)
def _pruned_network(n: int, groups: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The sorting network for ``n`` wires reduced to what a consumer of the output needs.

    ``groups[k]`` labels output position k; the consumer must be symmetric in the values of the
    positions that share a label (e.g. it sums them, or ignores them). Walking backwards, a
    comparator between two wires of one label cannot change the result and is dropped; a kept
    comparator makes its two wires a fresh label of their own (the downstream result is symmetric
    in them, since it only sees their min and max).
    """
    labels = list(groups)
    fresh = max(labels, default=0) + 1
    keep: list[tuple[int, int]] = []
    for a, b in reversed(_batcher_network(n)):
        if labels[a] == labels[b]:
            continue
        keep.append((a, b))
        labels[a] = labels[b] = fresh
        fresh += 1
    return tuple(reversed(keep))


def _numpy_view(G: Tensor) -> np.ndarray:
    """A NumPy view of CPU tensor ``G`` (float32/float64), converting other float dtypes."""
    X = G.detach()
    if X.dtype not in (torch.float32, torch.float64):
        X = X.float()
    return X.numpy()


def resolve_sort_method(G: Tensor, m: int, method: str) -> str:
    """The kernel form ``method`` means for ``m`` rows of ``G``: ``"auto"`` picks the torch sort
    off CPU, the network for ``m < SORT_MIN_ROWS`` and the transposed sort otherwise."""
    if method == "auto":
        if G.device.type != "cpu":
            return "torch"
        return "network" if m < SORT_MIN_ROWS else "sort"
    if method not in ("network", "sort", "torch"):
        raise ConfigError(f"method must be 'auto', 'network', 'sort' or 'torch', got {method!r}")
    return method


def _chunk_columns(G: Tensor, m: int, method: str, chunk_size: int | None) -> int:
    """Columns per block: ``chunk_size`` if given, else the form's default (all columns off
    CPU), capped so a block holds at most 2^26 elements."""
    P = G.shape[1]
    if chunk_size is None:
        if G.device.type != "cpu":
            chunk = P
        else:
            chunk = SORT_CHUNK_COLUMNS if method == "sort" else DEFAULT_CHUNK_COLUMNS
        chunk = max(1, min(chunk, (1 << 26) // m))
    else:
        chunk = as_count(chunk_size, "chunk_size", minimum=1)
    return max(1, min(chunk, P)) if P else 1


def sorted_row_blocks(
    G: Tensor, row_idx: Sequence[int], chunk: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """CPU transposed sort: yields ``(start, stop, B)`` with ``B[j]`` the values of column
    ``start + j`` of ``G[row_idx]`` in ascending order (``B`` is ``[stop - start, len(row_idx)]``,
    a reused buffer: use it before the next step)."""
    A = _numpy_view(G)
    m_all, P = A.shape
    rows = list(row_idx)
    tbuf = np.empty((chunk, len(rows)), dtype=A.dtype)
    full_rows = rows == list(range(m_all))
    for start in range(0, P, chunk):
        stop = min(P, start + chunk)
        b = tbuf[: stop - start]
        src = A[:, start:stop] if full_rows else A[rows, start:stop]
        np.copyto(b, src.T)
        b.sort(axis=1)
        yield start, stop, b


def sorted_column_chunks(
    G: Tensor,
    *,
    rows: Sequence[int] | None = None,
    groups: Sequence[int] | None = None,
    chunk_size: int | None = None,
    method: str = "auto",
) -> Iterator[tuple[int, int, list[Any]]]:
    """Sort every column of ``G[rows]`` block by block: yields ``(start, stop, S)``.

    ``S[k]`` (a 1-D NumPy array on CPU, a tensor with ``method="torch"``; length
    ``stop - start``) holds the k-th smallest value of each
    column in ``start:stop`` (k = 0 is the minimum). ``groups`` (one label per sorted position,
    default: all distinct = full sort) says which output positions the caller treats
    symmetrically; only those are guaranteed to hold the right multiset of values per label (see
    :func:`_pruned_network`). The arrays are reused buffers: use them before the next step.
    (Consumers work on NumPy arrays on CPU because small torch ops on a loaded 2-core machine
    were measured to stall for ~10 ms each in torch's intra-op thread pool.)

    ``method``: ``"auto"`` (see :func:`resolve_sort_method`), ``"network"``, ``"sort"`` (NumPy
    SIMD sort of transposed blocks, :func:`sorted_row_blocks`) or ``"torch"`` (``torch.sort``).
    ``chunk_size`` is the number of columns per block (default 32768 for the network, 8192 for
    the sort, all columns off CPU; capped so a block holds at most 2^26 elements).
    """
    m_all, P = G.shape
    row_idx = list(range(m_all)) if rows is None else [int(r) for r in rows]
    m = len(row_idx)
    if m == 0:
        raise UpdateError("cannot sort the columns of an empty row selection")
    group_key = tuple(range(m)) if groups is None else tuple(int(g) for g in groups)
    if len(group_key) != m:
        raise ConfigError(f"groups must have one label per row ({m}), got {len(group_key)}")
    method = resolve_sort_method(G, m, method)
    chunk = _chunk_columns(G, m, method, chunk_size)

    if method == "torch":
        sel = torch.as_tensor(row_idx, device=G.device)
        for start in range(0, P, chunk):
            stop = min(P, start + chunk)
            block = G.detach()[:, start:stop].index_select(0, sel)
            srt = torch.sort(block, dim=0).values
            yield start, stop, list(srt.unbind(0))
        return

    if method == "sort":
        for start, stop, b in sorted_row_blocks(G, row_idx, chunk):
            yield start, stop, [b[:, k] for k in range(m)]
        return

    A = _numpy_view(G)
    network = _pruned_network(m, group_key)
    buf = np.empty((m + 1, chunk), dtype=A.dtype)
    for start in range(0, P, chunk):
        stop = min(P, start + chunk)
        n = stop - start
        r = [buf[k, :n] for k in range(m)]
        tmp = buf[m, :n]
        for k, src_row in enumerate(row_idx):
            np.copyto(r[k], A[src_row, start:stop])
        for a, b_ in network:
            ra = r[a]
            rb = r[b_]
            np.minimum(ra, rb, out=tmp)
            np.maximum(ra, rb, out=rb)
            r[a] = tmp
            tmp = ra
        yield start, stop, r


# --------------------------------------------------------------------------- threads

_POOL: ThreadPoolExecutor | None = None
#: Below this many columns per thread, splitting the work across threads does not pay.
PARALLEL_MIN_COLUMNS = 65536


def map_column_ranges(fn: Callable[[Tensor], Tensor], G: Tensor) -> Tensor:
    """``fn(G)`` for a column-separable ``fn``, split into contiguous column ranges on threads.

    The NumPy kernels release the GIL, so on a CPU with ``torch.get_num_threads()`` > 1 the
    ranges run in parallel (measured on [100, 270000] with 2 cores: trimmed mean 106 -> 81 ms).
    Every column is computed by the same code as without threads, so results are identical.
    """
    global _POOL
    threads = torch.get_num_threads()
    P = G.shape[1]
    n = min(threads, P // PARALLEL_MIN_COLUMNS)
    if G.device.type != "cpu" or n < 2:
        return fn(G)
    if _POOL is None or _POOL._max_workers < n:
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tesseract-fl-columns")
    bounds = np.linspace(0, P, n + 1).astype(int)
    parts = list(_POOL.map(lambda i: fn(G[:, bounds[i] : bounds[i + 1]]), range(n)))
    return torch.cat(parts)


# --------------------------------------------------------------------------- weights


def sample_columns(P: int, sample: int | None) -> Tensor | None:
    """Sorted distinct column indices (fixed seed) for weight estimation; ``None`` = all columns.

    With ``sample`` None or ``P <= sample`` all columns are used (exact weights); otherwise
    ``sample`` indices are drawn with replacement from a seeded generator and de-duplicated
    (about ``sample`` distinct columns, O(sample) work even for P = 11e6).
    """
    if sample is None or P <= sample:
        return None
    rng = np.random.default_rng(_WEIGHT_SEED)
    idx = np.unique(rng.integers(0, P, size=int(sample)))
    return torch.from_numpy(idx)


def rank_rows(G: Tensor, sample: int | None) -> np.ndarray:
    """``order[k, j]``: the row holding the k-th smallest value of (sampled) column j.

    Uses ``np.argsort`` on the transposed sample (ties: NumPy's default order, deterministic).
    """
    return np.argsort(sampled_columns_t(G, None, sample), axis=1).T


def sampled_columns_t(G: Tensor, rows: Tensor | None, sample: int | None) -> np.ndarray:
    """``G[rows][:, cols].T`` as a contiguous NumPy array (cols from :func:`sample_columns`).

    Gathered with NumPy fancy indexing on CPU (``torch.index_select`` over columns was measured
    at ~0.5 s for [60, 270000] -> 20,000 columns on the loaded 2-core machine, NumPy ~10 ms).
    """
    cols = sample_columns(G.shape[1], sample)
    X = G.detach()
    if X.device.type != "cpu":
        if rows is not None:
            X = X.index_select(0, rows.to(X.device))
        if cols is not None:
            X = X.index_select(1, cols.to(X.device))
        return np.ascontiguousarray(_numpy_view(X.cpu()).T)
    A = _numpy_view(X)
    r = slice(None) if rows is None else rows.cpu().numpy()
    c = slice(None) if cols is None else cols.numpy()
    if rows is not None and cols is not None:
        sub = A[np.ix_(np.asarray(r), np.asarray(c))]
    else:
        sub = A[r][:, c] if rows is not None else A[:, c]
    return np.ascontiguousarray(sub.T)


def position_weights(order: np.ndarray, positions_weight: np.ndarray, m: int) -> np.ndarray:
    """Row weights: sum over sampled columns of ``positions_weight[k]`` for the row at rank k.

    Normalized to sum to 1 (all zero when there are no sampled columns).
    """
    w = np.zeros(m, dtype=np.float64)
    for k in np.nonzero(positions_weight)[0]:
        w += positions_weight[k] * np.bincount(order[k], minlength=m)
    total = w.sum()
    return w / total if total > 0 else w


# --------------------------------------------------------------------------- trimmed mean


def _check_trim(m: int, c_max: Any) -> int:
    c = as_count(c_max, "c_max")
    if m <= 2 * c:
        raise ConfigError(
            f"trimmed mean needs m > 2*c_max clients, got m={m} and c_max={c} "
            f"(use c_max <= {(m - 1) // 2})"
        )
    return c


def effective_trim(fin: FiniteRows, c_max: Any) -> int:
    """c_max validated against the rows received, reduced to ``(m_finite - 1) // 2`` when rows
    were excluded (hostile-row policy): the trimmed mean needs ``m_finite > 2 c``."""
    c = _check_trim(fin.m, c_max)
    return min(c, (fin.m_finite - 1) // 2)


def trimmed_mean(
    G: Tensor, c_max: int, *, chunk_size: int | None = None, method: str = "auto"
) -> Tensor:
    """Coordinate-wise trimmed mean of ``G`` [m, P] -> Tensor[P] (Yin et al. 2018, Def. 2).

    Per coordinate, the ``c_max`` largest and ``c_max`` smallest values are removed and the other
    ``m - 2 c_max`` averaged (summed in sorted order in G's dtype). Requires ``m > 2 c_max``
    (:class:`ConfigError`). ``chunk_size``/``method`` select the kernel block size and form (see
    :func:`sorted_column_chunks`); every form gives the same values up to float rounding.
    Rows with NaN/Inf are excluded and c_max reduced to fit the finite rows
    (:func:`effective_trim`); no finite row: the zero vector.
    """
    fin = split_finite(G)
    c = effective_trim(fin, c_max)
    if fin.m_finite == 0:
        return fin.zero_update().update
    return _trimmed_mean(fin.G, c, chunk_size=chunk_size, method=method)


def _trimmed_mean(G: Tensor, c: int, *, chunk_size: int | None, method: str) -> Tensor:
    """The trimmed-mean kernel on a finite matrix with a valid ``c`` (no validation).

    A sum of kept values near the float32 limit can overflow even though their mean cannot:
    then the kernel is rerun in float64 and the mean cast back (finite by construction). Near
    the float64 limit the overflowed coordinates are recomputed on the values divided by a
    power of two ``>= m`` (exact; no sum of them can overflow) and multiplied back, clamped to
    the dtype's range (a mean cannot leave it; only rounding could).
    """
    out = _trimmed_mean_kernel(G, c, chunk_size=chunk_size, method=method)
    if G.dtype != torch.float64 and not bool(torch.isfinite(out).all()):
        out = _trimmed_mean_kernel(G.double(), c, chunk_size=chunk_size, method=method)
        out = out.to(G.dtype)
    if not bool(torch.isfinite(out).all()):
        big = float(torch.finfo(out.dtype).max)
        k = max(1, math.ceil(math.log2(G.shape[0])))
        low = _trimmed_mean_kernel(G.double() * 2.0**-k, c, chunk_size=chunk_size, method=method)
        bad = ~torch.isfinite(out)
        out[bad] = (low[bad] * 2.0**k).clamp(-big, big).to(out.dtype)
    return out


def _trimmed_mean_kernel(G: Tensor, c: int, *, chunk_size: int | None, method: str) -> Tensor:
    m = G.shape[0]
    keep = m - 2 * c
    form = resolve_sort_method(G, m, method)

    if form == "sort":
        # Sorted rows of the transposed block: the kept band is contiguous, one sum per block.
        def band_sum_block(X: Tensor) -> Tensor:
            dtype = np.float64 if X.dtype == torch.float64 else np.float32
            out: np.ndarray[Any, Any] = np.empty(X.shape[1], dtype=dtype)
            chunk = _chunk_columns(X, m, form, chunk_size)
            with np.errstate(over="ignore"):  # an overflowed sum is redone by the caller
                for start, stop, b in sorted_row_blocks(X, range(m), chunk):
                    np.sum(b[:, c : m - c], axis=1, out=out[start:stop])
                out /= keep
            return torch.from_numpy(out).to(dtype=X.dtype)

        return map_column_ranges(band_sum_block, G)

    groups = [0] * c + [1] * keep + [2] * c

    def sorted_rows_block(X: Tensor) -> Tensor:
        out = torch.empty(X.shape[1], dtype=X.dtype, device=X.device)
        for start, stop, S in sorted_column_chunks(
            X, groups=groups, chunk_size=chunk_size, method=form
        ):
            acc = S[c] + 0  # a copy, for NumPy arrays and tensors alike
            with np.errstate(over="ignore"):  # an overflowed sum is redone by the caller
                for k in range(c + 1, m - c):
                    acc += S[k]
                acc /= keep
            out[start:stop] = torch.as_tensor(acc).to(device=X.device, dtype=X.dtype)
        return out

    return map_column_ranges(sorted_rows_block, G)


def trimmed_mean_weights(G: Tensor, c_max: int, sample: int | None = WEIGHT_SAMPLE) -> Tensor:
    """Each row's share of the kept values: kept fraction / (m - 2 c_max), summing to 1.

    Computed on at most ``sample`` coordinates (fixed seed; all when P <= sample or None).
    """
    m = G.shape[0]
    c = _check_trim(m, c_max)
    order = rank_rows(G, sample)
    pw = np.zeros(m)
    pw[c : m - c] = 1.0
    return torch.from_numpy(position_weights(order, pw, m)).to(dtype=G.dtype, device=G.device)


class TrimmedMean(Stateless):
    """Coordinate-wise trimmed mean aggregator (Yin et al. 2018); stateless.

    ``c_max``: values dropped at each end per coordinate (needs ``m > 2 c_max`` each round).
    ``weight_sample``: coordinates (fixed seed) used for the reported weights, ``None`` = all.
    ``weights[i]`` = fraction of (sampled) coordinates where row i's value was kept, divided by
    ``m - 2 c_max`` (sums to 1). ``ctx.c_max`` is ignored.
    """

    name = "trimmed_mean"

    def __init__(self, c_max: int, weight_sample: int | None = WEIGHT_SAMPLE) -> None:
        self.c_max = as_count(c_max, "c_max")
        self.weight_sample = (
            None if weight_sample is None else as_count(weight_sample, "weight_sample", minimum=1)
        )

    def aggregate(
        self,
        G: Tensor,
        client_ids: Tensor | Sequence[int] | None = None,
        ctx: AggregationContext | None = None,
    ) -> Aggregate:
        """Return the trimmed mean of ``G`` and the kept-share weights; rows with NaN/Inf are
        excluded (``record["excluded"]``, weight 0) and ``record["c_max_effective"]`` is the
        trim actually used."""
        check_layout(G)
        check_client_ids(client_ids, G.shape[0])
        fin = split_finite(G)
        c = effective_trim(fin, self.c_max)
        if fin.m_finite == 0:
            return fin.zero_update()
        update = _trimmed_mean(fin.G, c, chunk_size=None, method="auto")
        weights = fin.scatter(trimmed_mean_weights(fin.G, c, self.weight_sample))
        return Aggregate(update=update, weights=weights, record=fin.record(c))

    def __repr__(self) -> str:
        return f"TrimmedMean(c_max={self.c_max})"
