"""Column-sorting kernels of the coordinate-wise rules (trimmed mean, median, Bulyan's second
phase).

:func:`sorted_column_chunks` sorts every column of G in blocks of columns, so no full-size
temporary is ever made:

* CPU, ``m < SORT_MIN_ROWS``: a Batcher odd-even merge sorting network applied to whole rows of
  a column block (each compare-exchange is one ``np.minimum`` and one ``np.maximum`` over a
  contiguous row slice), pruned backwards to the comparators that can change the requested
  result (a rule that only sums the middle band never needs to order the dropped values among
  themselves).
* CPU, ``m >= SORT_MIN_ROWS``: each block is transposed into a ``[cols, m]`` buffer and every row
  (one column of G) is sorted along the contiguous axis with NumPy's SIMD sort.
* Other devices: ``torch.sort`` along dim 0 per column block.

Which form is faster where is measured by ``python -m benchmarks aggregators``; the crossover
near 64 rows is why ``SORT_MIN_ROWS`` is 64. Every form gives the same values up to float
rounding of the sums (the same values exactly for the median).
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

from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.validation import as_count

__all__ = [
    "map_column_ranges",
    "median_kernel",
    "resolve_sort_method",
    "sorted_column_chunks",
    "sorted_row_blocks",
    "trimmed_mean_kernel",
    "window_mean_kernel",
    "window_start",
]


#: Default number of columns per block for the CPU network (row slices of 128 KiB).
DEFAULT_CHUNK_COLUMNS = 32768


#: Default number of columns per block for the CPU transposed sort (a [8192, 100] float32 block
#: is 3.2 MB, near the L2 cache of two cores).
SORT_CHUNK_COLUMNS = 8192


#: Smallest m for which ``method="auto"`` uses the transposed SIMD sort on CPU (below it: the
#: network, whose comparator count grows as m log^2 m while per-row sorts get cheaper per value).
SORT_MIN_ROWS = 64


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


def numpy_view(G: Tensor) -> np.ndarray:
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
    A = numpy_view(G)
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
    (Consumers work on NumPy arrays on CPU because small torch ops on a loaded machine can
    stall in torch's intra-op thread pool.)

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

    A = numpy_view(G)
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


_POOL: ThreadPoolExecutor | None = None


#: Below this many columns per thread, splitting the work across threads does not pay.
PARALLEL_MIN_COLUMNS = 65536


def map_column_ranges(fn: Callable[[Tensor], Tensor], G: Tensor) -> Tensor:
    """``fn(G)`` for a column-separable ``fn``, split into contiguous column ranges on threads.

    The NumPy kernels release the GIL, so on a CPU with ``torch.get_num_threads()`` > 1 the
    ranges run in parallel.
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


def trimmed_mean_kernel(G: Tensor, c: int, *, chunk_size: int | None, method: str) -> Tensor:
    """The trimmed-mean kernel on a finite matrix with a valid ``c`` (no validation).

    A sum of kept values near the float32 limit can overflow even though their mean cannot:
    then the kernel is rerun in float64 and the mean cast back (finite by construction). Near
    the float64 limit the overflowed coordinates are recomputed on the values divided by a
    power of two ``>= m`` (exact; no sum of them can overflow) and multiplied back, clamped to
    the dtype's range (a mean cannot leave it; only rounding could).
    """
    out = _band_mean(G, c, chunk_size=chunk_size, method=method)
    if G.dtype != torch.float64 and not bool(torch.isfinite(out).all()):
        out = _band_mean(G.double(), c, chunk_size=chunk_size, method=method)
        out = out.to(G.dtype)
    if not bool(torch.isfinite(out).all()):
        big = float(torch.finfo(out.dtype).max)
        k = max(1, math.ceil(math.log2(G.shape[0])))
        low = _band_mean(G.double() * 2.0**-k, c, chunk_size=chunk_size, method=method)
        bad = ~torch.isfinite(out)
        out[bad] = (low[bad] * 2.0**k).clamp(-big, big).to(out.dtype)
    return out


def _band_mean(G: Tensor, c: int, *, chunk_size: int | None, method: str) -> Tensor:
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


def median_kernel(G: Tensor, *, chunk_size: int | None, method: str) -> Tensor:
    """The median kernel on a finite matrix (no validation)."""
    m, _ = G.shape
    lo_pos, hi_pos = (m - 1) // 2, m // 2
    groups = [0 if k < lo_pos else (1 if k <= hi_pos else 2) for k in range(m)]

    def block(X: Tensor) -> Tensor:
        out = torch.empty(X.shape[1], dtype=X.dtype, device=X.device)
        for start, stop, S in sorted_column_chunks(
            X, groups=groups, chunk_size=chunk_size, method=method
        ):
            if lo_pos == hi_pos:
                val = S[lo_pos]
            else:
                val = S[lo_pos] * 0.5 + S[hi_pos] * 0.5
            out[start:stop] = torch.as_tensor(val).to(device=X.device, dtype=X.dtype)
        return out

    return map_column_ranges(block, G)


def window_start(S: list[np.ndarray], med: np.ndarray, theta: int, beta: int) -> np.ndarray:
    """Per column, the first start s of the sorted window ``S[s:s+beta]`` nearest to ``med``.

    The beta values closest to the median form a contiguous window of the sorted values, the one
    whose farthest member is nearest; among equally good windows the lowest s (lower values) wins.
    """
    best_s = np.zeros(med.shape[0], dtype=np.int64)
    best = np.maximum(med - S[0], S[beta - 1] - med)
    for s in range(1, theta - beta + 1):
        cost = np.maximum(med - S[s], S[s + beta - 1] - med)
        better = cost < best
        best_s[better] = s
        np.copyto(best, cost, where=better)
    return best_s


def _nearest_window_mean(S: list[np.ndarray], theta: int, beta: int) -> np.ndarray:
    """Mean of the beta sorted values nearest the (NumPy) median, per column."""
    lo_pos, hi_pos = (theta - 1) // 2, theta // 2
    med = S[lo_pos] if lo_pos == hi_pos else S[lo_pos] * 0.5 + S[hi_pos] * 0.5
    if beta == theta:
        acc = S[0] + 0
        for k in range(1, theta):
            acc += S[k]
        return acc / beta
    s0 = window_start(S, med, theta, beta)
    stack = np.stack(S)
    idx = s0[None, :] + np.arange(beta)[:, None]
    return np.take_along_axis(stack, idx, axis=0).sum(axis=0) / beta


def window_mean_kernel(
    G: Tensor,
    sel: Tensor,
    beta: int,
    *,
    chunk_size: int | None,
    method: str,
) -> Tensor:
    theta = sel.numel()
    P = G.shape[1]
    out = torch.empty(P, dtype=G.dtype, device=G.device)
    for start, stop, S in sorted_column_chunks(
        G, rows=sel.tolist(), chunk_size=chunk_size, method=method
    ):
        Sn = [x.cpu().numpy() if isinstance(x, Tensor) else x for x in S]
        with np.errstate(over="ignore"):  # overflowed window sums are redone below
            val = _nearest_window_mean(Sn, theta, beta)
        out[start:stop] = torch.from_numpy(val).to(device=G.device, dtype=G.dtype)
    if G.dtype != torch.float64 and not bool(torch.isfinite(out).all()):
        # The window sums of values near the float32 limit overflowed; their means cannot.
        out = window_mean_kernel(G.double(), sel, beta, chunk_size=chunk_size, method=method)
        out = out.to(G.dtype)
    elif not bool(torch.isfinite(out).all()):
        # float64 values near its limit: the window means of the values divided by a power of
        # two >= beta (exact; no window sum can overflow), multiplied back and clamped (a mean
        # of finite values is within their range; only rounding could step out)
        big = float(torch.finfo(G.dtype).max)
        k = max(1, math.ceil(math.log2(beta)))
        low = window_mean_kernel(G * 2.0**-k, sel, beta, chunk_size=chunk_size, method=method)
        bad = ~torch.isfinite(out)
        out[bad] = (low[bad] * 2.0**k).clamp(-big, big)
    return out


def nearest_median_mean_kernel(
    G: Tensor, keep: int, *, chunk_size: int | None = None, method: str = "auto"
) -> Tensor:
    """Per column of ``G`` [m, P], the mean of the ``keep`` values nearest the column's median
    (NumPy's median): the window ``S[s : s + keep]`` of the sorted column whose farthest member
    is nearest the median, the lowest ``s`` on ties (Meamed; the same rule as Bulyan's window).

    Every window holds the sorted positions ``c .. m - c - 1`` (``c = m - keep``), so only the
    ``c + 1`` values at each end and the median positions need their exact order: the pruned
    sorting network (or the transposed sort) orders just those, and the window's sum is the
    middle band's plus the end values it takes, summed in float64 (no cancellation).
    """
    m = G.shape[0]
    c = m - keep
    lo_pos, hi_pos = (m - 1) // 2, m // 2
    exact = set(range(c + 1)) | set(range(m - c - 1, m)) | {lo_pos, hi_pos}
    groups = [k if k in exact else m for k in range(m)]  # the rest: one symmetric label

    def block(X: Tensor) -> Tensor:
        out = torch.empty(X.shape[1], dtype=X.dtype, device=X.device)
        for start, stop, S in sorted_column_chunks(
            X, groups=groups, chunk_size=chunk_size, method=method
        ):
            S64 = [np.asarray(torch.as_tensor(x).cpu().numpy(), dtype=np.float64) for x in S]
            med = (S64[lo_pos] + S64[hi_pos]) * 0.5
            s0 = np.zeros(med.shape[0], dtype=np.int64)
            best = np.maximum(med - S64[0], S64[keep - 1] - med)
            for s in range(1, c + 1):
                cost = np.maximum(med - S64[s], S64[s + keep - 1] - med)
                better = cost < best
                s0[better] = s
                np.copyto(best, cost, where=better)
            acc = np.zeros(med.shape[0])
            for k in range(c, m - c):
                acc += S64[k]
            for k in range(c):
                acc += np.where(s0 <= k, S64[k], 0.0)  # low end values inside the window
            for k in range(m - c, m):
                acc += np.where(k <= s0 + keep - 1, S64[k], 0.0)  # high end values inside
            with np.errstate(over="ignore"):
                val = acc / keep
            out[start:stop] = torch.from_numpy(val).to(device=X.device, dtype=X.dtype)
        return out

    out = map_column_ranges(block, G)
    if not bool(torch.isfinite(out).all()):  # a float32 mean beyond range: only by rounding
        big = float(torch.finfo(G.dtype).max)
        out = out.nan_to_num(posinf=big, neginf=-big)
    return out
