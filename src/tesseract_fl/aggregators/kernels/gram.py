"""Gram matrices and pairwise squared distances that never overflow (FABA, FoolsGold, Krum,
Bulyan, the Full-Krum attack).

A Gram matrix of finite rows can still overflow float32 (entries near 1e20) or even float64;
these kernels notice it on the small ``[m, m]`` result and recompute in float64, or on the rows
scaled by a power of two, which is exact and keeps every comparison of distances and every
cosine unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from tesseract_fl.aggregators.base import check_layout, check_matrix
from tesseract_fl.errors import UpdateError

__all__ = [
    "distances_to",
    "downscale_exponent",
    "fits",
    "gram64",
    "gram64_scaled",
    "gram_blocks",
    "max_abs",
    "nearest_sums",
    "nearest_sums_np",
    "pairwise_sq_distances",
    "scaled_sq_distances",
    "sq_distances",
    "sq_distances_from_gram",
]


_GRAM_BLOCK = 4096


_GRAM_MAX_ELEMENTS = 1 << 24


#: Sums of squares of a matrix scaled by :func:`downscale_exponent` stay below 2**_SAFE_LOG2.
_SAFE_LOG2 = 1000


def downscale_exponent(max_abs: float, factor: float) -> int:
    """The smallest ``e >= 0`` with ``(max_abs * 2**-e)**2 * factor <= 2**1000``.

    Sums of ``factor`` squares of entries of magnitude ``<= max_abs`` (squared norms, Gram
    entries, sums of them) overflow float64 only when ``e > 0``; computing them on the matrix
    scaled by ``2**-e`` (exact: a power of two) keeps them finite and every comparison between
    them unchanged. ``max_abs`` must be finite; ``factor >= 1``.
    """
    if not max_abs > 0.0:
        return 0
    _, ex = math.frexp(max_abs)  # max_abs < 2**ex
    need = 2 * ex + math.log2(max(float(factor), 1.0)) - _SAFE_LOG2
    return max(0, math.ceil(need / 2))


def max_abs(t: Tensor) -> float:
    """``max |t|`` as a Python float (0 for an empty tensor)."""
    if t.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(t)
    return max(-float(lo), float(hi))


def gram_blocks(G: Tensor) -> Tensor:
    if G.dtype.itemsize < 4:
        G = G.float()  # half precision: accumulate the products in float32 at least
    m, P = G.shape
    K = torch.zeros(m, m, dtype=torch.float64, device=G.device)
    if m == 0 or P == 0:
        return K
    L = _GRAM_BLOCK
    B = P // L
    if B > 0:
        per_chunk = max(1, _GRAM_MAX_ELEMENTS // (m * m))
        X = G[:, : B * L].reshape(m, B, L).transpose(0, 1)  # [B, m, L], a view
        for b0 in range(0, B, per_chunk):
            x = X[b0 : b0 + per_chunk]
            K += torch.bmm(x, x.transpose(1, 2)).sum(0, dtype=torch.float64)
    if B * L < P:
        r = G[:, B * L :]
        K += (r @ r.T).to(torch.float64)
    return K


def gram64(G: Tensor) -> Tensor:
    """The Gram matrix ``G G^T`` of a [m, P] matrix as float64 Tensor[m, m].

    Computed blockwise: the columns are cut into blocks of 4096, one batched ``bmm`` (on strided
    views, no copy of G) forms every block's product in G's dtype, and the block products are
    summed in float64: as fast as ``G @ G.T`` on ``[100, 270000]`` and faster on very wide
    matrices, with float64-level relative errors instead of those of one float32 dot product
    over P terms (``python -m benchmarks aggregators``). A float64 G gives a float64 Gram
    matrix.

    Validation: raises :class:`UpdateError` (via ``check_matrix``) when G has NaN/Inf entries,
    detected through the result (a NaN/Inf entry makes its row's Gram entries non-finite); when
    finite entries overflow the float32 products, the Gram matrix is recomputed in float64.
    """
    check_layout(G)
    K = gram_blocks(G)
    if not bool(torch.isfinite(K).all()):
        check_matrix(G)  # raises for NaN/Inf entries
        K = gram_blocks(G.double())  # huge finite entries overflowed: redo in float64 (slow)
        if not bool(torch.isfinite(K).all()):
            raise UpdateError("gradient entries are too large: their Gram matrix overflows float64")
    return K


def gram64_scaled(G: Tensor, factor: float = 1.0) -> tuple[Tensor, int]:
    """``(K, e)``: the float64 Gram matrix ``K`` of ``G * 2**-e`` [m, P], never overflowing.

    ``e = 0`` (and ``K`` is :func:`gram64` of G, bit for bit) unless a Gram entry overflows or
    ``factor * max(diag K)`` would (callers pass the number of Gram entries they sum, e.g.
    ``m * m`` for FABA's ``T``); then the matrix is scaled by the power of two
    :func:`downscale_exponent` gives for its largest entry, which is exact (up to entries
    underflowing) and keeps cosines and every comparison of distances unchanged. NaN/Inf
    entries raise :class:`UpdateError` as in :func:`gram64`.
    """
    check_layout(G)
    K = gram_blocks(G)
    if bool(torch.isfinite(K).all()) and fits(K, factor):
        return K, 0
    check_matrix(G)  # raises for NaN/Inf entries
    if G.dtype != torch.float64:
        K = gram_blocks(G.double())
        if bool(torch.isfinite(K).all()) and fits(K, factor):
            return K, 0
    X = G.to(torch.float64)
    e = downscale_exponent(max_abs(X), float(G.shape[1]) * max(float(factor), 1.0))
    return gram_blocks(X * 2.0**-e), e


def fits(K: Tensor, factor: float) -> bool:
    """``factor * max(diag K)`` is finite (diag K holds squared norms, >= every |K_ij|)."""
    if K.numel() == 0:
        return True
    return math.isfinite(float(K.diagonal().max()) * max(float(factor), 1.0))


def pairwise_sq_distances(G: Tensor) -> Tensor:
    """Squared L2 distances between the rows of ``G`` [m, P] -> float64 Tensor[m, m] (CPU).

    Via the Gram matrix: ``d_ij = n_i + n_j - 2 g_ij`` with ``g = G @ G.T`` computed by BLAS in
    G's dtype and the combination done in float64, clamped at 0; the diagonal is exactly 0 and the
    matrix exactly symmetric. The absolute error is about ``eps(dtype) * (n_i + n_j)``, so the
    distance between two nearly identical rows of large norm is resolved only to that level.
    """
    check_matrix(G)
    D, e = scaled_sq_distances(G, factor=4.0)
    if e:
        raise UpdateError("gradient entries are too large: their Gram matrix overflows float64")
    return D


def sq_distances(G: Tensor) -> Tensor:
    """:func:`pairwise_sq_distances` without validating ``G`` (callers have checked it), in a
    power-of-two scaled space when the distances would overflow (:func:`scaled_sq_distances`):
    the same comparisons, so Krum and Bulyan select the same rows."""
    return scaled_sq_distances(G, factor=4.0 * max(G.shape[0], 1))[0]


def scaled_sq_distances(G: Tensor, factor: float) -> tuple[Tensor, int]:
    """``(D, e)``: the squared distances of the rows of ``G * 2**-e`` (float64, CPU), e >= 0.

    Finite rows of huge magnitude (e.g. 1e30) overflow the float32 Gram matrix; that is seen on
    the small [m, m] result, and only then is it recomputed in float64 (exact enough, no inf).
    Rows too large even for float64 are scaled by the power of two of
    :func:`~.faba.downscale_exponent` first, so that ``factor * max_i |g_i|^2`` stays finite
    (``D_ij <= 4 max_i |g_i|^2``: ``factor = 4`` keeps D finite, ``4 m`` also Krum's scores,
    sums of fewer than m distances); ``e = 0`` otherwise. Half precision inputs are multiplied
    in float32.
    """
    X = G.detach()
    if X.dtype.itemsize < 4:
        X = X.float()
    e = 0
    gram = (X @ X.T).to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(gram).all()) and X.dtype != torch.float64:
        X64 = X.double()
        gram = (X64 @ X64.T).cpu()
    if not (bool(torch.isfinite(gram).all()) and fits(gram, factor)):
        X64 = X.double()
        e = downscale_exponent(max_abs(X64), factor * X.shape[1])
        X64 = X64 * 2.0**-e
        gram = (X64 @ X64.T).cpu()
    return sq_distances_from_gram(gram), e


def sq_distances_from_gram(gram: Tensor) -> Tensor:
    """Squared distances (float64, clamped at 0, zero diagonal) from a float64 Gram matrix,
    symmetrized first: the last step of :func:`scaled_sq_distances`, shared with callers that
    assemble the Gram matrix themselves (Full-Krum's confirmation)."""
    gram = (gram + gram.T) * 0.5
    norms = gram.diagonal().clone()
    D = norms[:, None] + norms[None, :] - 2.0 * gram
    D.clamp_(min=0.0)
    D.fill_diagonal_(0.0)
    return D


def nearest_sums_np(D: np.ndarray, n_neighbours: int) -> np.ndarray:
    """Sum of each row's ``n_neighbours`` smallest off-diagonal entries of ``D`` (float64).

    NumPy on purpose: these [m, m] matrices are tiny, and tiny torch ops can stall in torch's
    thread pool on a loaded machine.
    """
    m = D.shape[0]
    k = min(n_neighbours, m - 1)
    if k <= 0:
        return np.zeros(m, dtype=np.float64)
    off = np.array(D, dtype=np.float64, copy=True)
    np.fill_diagonal(off, np.inf)
    return np.partition(off, k - 1, axis=1)[:, :k].sum(axis=1)


def nearest_sums(D: Tensor, n_neighbours: int) -> Tensor:
    """Tensor wrapper of :func:`nearest_sums_np` (float64, CPU)."""
    return torch.from_numpy(nearest_sums_np(D.detach().cpu().double().numpy(), n_neighbours))


#: Rows per chunk of :func:`distances_to` hold about this many elements (4 MiB of float32), so
#: the difference ``g_i - z`` lives in a reused, cache-sized buffer instead of an [m, P] one.
_DIST_CHUNK_ELEMENTS = 1 << 20


def distances_to(G: Tensor, z: Tensor) -> Tensor:
    """``||g_i - z||`` for every row of ``G`` [m, P] as float64 Tensor[m] (CPU).

    One pass in G's dtype over cache-sized chunks of rows; rows whose difference overflows
    there (entries near the dtype's limit on opposite sides) are redone in float64, and a
    distance beyond even float64's range is capped at its maximum, so every distance is finite
    for finite inputs.
    """
    m, P = G.shape
    d = torch.empty(m, dtype=torch.float64)
    rows = max(1, min(m, _DIST_CHUNK_ELEMENTS // max(P, 1))) if G.device.type == "cpu" else m
    buf = torch.empty(rows, P, dtype=G.dtype, device=G.device)
    for i in range(0, m, rows):
        g = G[i : i + rows]
        u = buf[: g.shape[0]]
        torch.sub(g, z, out=u)
        d[i : i + g.shape[0]] = torch.linalg.vector_norm(u, dim=1).to("cpu", torch.float64)
    bad = (~torch.isfinite(d)).nonzero().flatten()
    if bad.numel():
        far = G.index_select(0, bad.to(G.device)).to(torch.float64) - z.to(torch.float64)
        d[bad] = torch.linalg.vector_norm(far, dim=1).cpu()
        d.nan_to_num_(posinf=torch.finfo(torch.float64).max)
    return d
