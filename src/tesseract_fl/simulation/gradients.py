"""Per-client gradients of one FedSGD round, stacked into the ``[m, P]`` matrix (docs/design.md,
"Performance").

Three interchangeable backends compute the same numbers (up to float rounding):

* ``loop``: one forward/backward per client on the calling thread.
* ``threads``: the same per-client loop spread over worker threads that each run torch
  single-threaded, with 4-D (conv) weights in channels-last layout. A client's batch is too small
  for two intra-op threads to help much, and oneDNN's channels-last convolutions are faster here:
  1.5-1.9x faster than ``loop`` on the MNIST DNNs (``python -m benchmarks engine``). Each client
  is computed by one thread, so the numbers do not depend on the number of workers. The CPU
  default.
* ``vmap``: ``torch.func.vmap(grad(functional_call))`` over chunks of clients. On a GPU this
  replaces hundreds of tiny kernels by a few large ones; on a CPU it is about as fast as the loop.

Every client computes its gradient at the same global parameters (FedSGD: one local step per
round), so the model's own parameters are used directly and never copied per client.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from tesseract_fl.errors import ConfigError
from tesseract_fl.simulation.flat import flat_slices

Backend = Literal["loop", "threads", "vmap"]
BACKENDS: tuple[str, ...] = ("loop", "threads", "vmap")

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_backend(device: torch.device | str) -> Backend:
    """The faster backend for a device: threads on CPU, vmap on accelerators."""
    return "threads" if torch.device(device).type == "cpu" else "vmap"


#: Clients per vmap call on a CPU when none is configured (``vmap_chunk = 0``).
CPU_VMAP_CHUNK = 10


def default_vmap_chunk(device: torch.device | str, clients: int) -> int:
    """Clients per vmap call when ``vmap_chunk = 0``: 10 on a CPU; on an accelerator all of a
    round's clients in one call (launches dominate small per-client work there: docs/performance.md,
    "Measured on a GPU")."""
    return CPU_VMAP_CHUNK if torch.device(device).type == "cpu" else max(1, clients)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def num_params(model: nn.Module) -> int:
    """Width P of the gradient matrix: the number of trainable parameters."""
    return sum(p.numel() for _, p in _trainable(model))


def loop_gradients(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Gradients of ``loss_fn(model(x[i]), y[i])`` for each client i, one backward per client.

    ``x``: ``[m, b, ...]`` inputs, ``y``: ``[m, b]`` targets. Returns ``(G [m, P], losses [m])``.
    """
    named = _trainable(model)
    params = [p for _, p in named]
    m = x.shape[0]
    P = sum(p.numel() for p in params)
    G = out if out is not None else torch.empty(m, P, dtype=torch.float32, device=x.device)
    losses = torch.empty(m, dtype=torch.float32, device=x.device)
    slices = flat_slices(p.numel() for p in params)
    for i in range(m):
        loss = loss_fn(model(x[i]), y[i])
        grads = torch.autograd.grad(loss, params)
        row = G[i]
        for g, sl in zip(grads, slices, strict=True):
            row[sl].copy_(g.reshape(-1))
        losses[i] = loss.detach()
    return G, losses


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
# Per-model replicas for the worker threads (channels-last copies; refreshed on every call).
_REPLICAS: weakref.WeakKeyDictionary[nn.Module, list[nn.Module]] = weakref.WeakKeyDictionary()


def worker_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads, made once and reused (each task sets its own
    thread's torch thread count: see :func:`_block_losses`); the simulator's local training
    runs on it too."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="tfl-grad")
            _POOLS[workers] = pool
        return pool


def _synced_replicas(model: nn.Module, workers: int) -> list[nn.Module]:
    """``workers`` private copies of ``model`` (4-D weights channels-last) holding its current
    parameters and buffers: made once per model, refreshed with ``copy_`` on every call."""
    with _POOLS_LOCK:
        replicas = _REPLICAS.setdefault(model, [])
        while len(replicas) < workers:
            replica = copy.deepcopy(model)
            replica.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            replicas.append(replica)
        replicas = replicas[:workers]
    src = [*model.parameters(), *model.buffers()]
    with torch.no_grad():
        for r in replicas:
            r.train(model.training)
            for dst, val in zip([*r.parameters(), *r.buffers()], src, strict=True):
                dst.copy_(val)
    return replicas


def threaded_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    workers: int | None = None,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Same as :func:`loop_gradients`, with the clients split into ``workers`` contiguous blocks
    computed concurrently (default: the calling thread's torch thread count).

    Each worker runs its own replica of the model (made once per model, 4-D weights in
    channels-last layout, parameters and buffers copied from the model on every call: two
    models' worth of copies per round, nothing per client). A model in training mode with
    buffers (BatchNorm running statistics) falls back to :func:`loop_gradients`: the loop's
    sequential buffer updates cannot be split across threads.
    """
    m = x.shape[0]
    workers = torch.get_num_threads() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    has_buffers = any(True for _ in model.buffers())
    if x.device.type != "cpu" or (model.training and has_buffers):
        return loop_gradients(model, x, y, loss_fn, out=out)
    workers = min(workers, m)
    replicas = _synced_replicas(model, workers)
    P = num_params(model)
    G = out if out is not None else torch.empty(m, P, dtype=torch.float32, device=x.device)
    losses = torch.empty(m, dtype=torch.float32, device=x.device)

    bounds = [round(k * m / workers) for k in range(workers + 1)]
    if workers == 1:
        prev = torch.get_num_threads()
        try:
            _, l1 = _block_losses(replicas[0], x, y, loss_fn, G)
        finally:
            torch.set_num_threads(prev)
        losses.copy_(l1)
        return G, losses
    futures = [
        worker_pool(workers).submit(
            _block_losses,
            replicas[k],
            x[bounds[k] : bounds[k + 1]],
            y[bounds[k] : bounds[k + 1]],
            loss_fn,
            G[bounds[k] : bounds[k + 1]],
        )
        for k in range(workers)
    ]
    for k, f in enumerate(futures):
        losses[bounds[k] : bounds[k + 1]] = f.result()[1]
    return G, losses


def _block_losses(
    replica: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, out: Tensor
) -> tuple[Tensor, Tensor]:
    """One worker's share: the per-client loop on its replica, torch single-threaded."""
    # OpenMP thread counts are per calling thread: the worker runs torch single-threaded while
    # the main thread keeps its own setting for aggregation and evaluation.
    torch.set_num_threads(1)
    with torch.enable_grad():
        return loop_gradients(replica, x, y, loss_fn, out=out)


def vmap_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    chunk_size: int = 10,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Same as :func:`loop_gradients`, vectorized with ``torch.func.vmap`` over chunks of clients.

    Buffers (e.g. BatchNorm running statistics): in eval mode they are passed unbatched. In
    training mode BatchNorm normalizes with each client's own batch statistics and updates its
    running statistics in place, so every client gets a private copy of the buffers (batched
    along the client axis) that is discarded afterwards: the vmap backend never updates the
    model's running statistics (the loop backend does, once per client). ``nn.GRU`` has no vmap
    batching rule; under vmap ``char_gru`` runs its GRU written with matmuls instead.
    """
    if chunk_size < 1:
        raise ConfigError(f"vmap_chunk must be >= 1, got {chunk_size}")
    named = _trainable(model)
    names = [n for n, _ in named]
    params = {n: p.detach() for n, p in named}
    buffers = {n: b for n, b in model.named_buffers()}

    private_buffers = model.training and len(buffers) > 0

    def client_loss(
        p: dict[str, Tensor], bufs: dict[str, Tensor], xb: Tensor, yb: Tensor
    ) -> Tensor:
        pred = functional_call(model, (p, bufs), (xb,))
        return loss_fn(pred, yb)

    per_client = vmap(
        grad_and_value(client_loss),
        in_dims=(None, 0 if private_buffers else None, 0, 0),
        chunk_size=None,
    )
    m = x.shape[0]
    P = sum(p.numel() for p in params.values())
    G = out if out is not None else torch.empty(m, P, dtype=torch.float32, device=x.device)
    losses = torch.empty(m, dtype=torch.float32, device=x.device)
    for start in range(0, m, chunk_size):
        stop = min(start + chunk_size, m)
        bufs = (
            {n: b.unsqueeze(0).repeat(stop - start, *([1] * b.dim())) for n, b in buffers.items()}
            if private_buffers
            else buffers
        )
        grads, loss = per_client(params, bufs, x[start:stop], y[start:stop])
        for n, sl in zip(names, flat_slices(grads[n][0].numel() for n in names), strict=True):
            g = grads[n]
            G[start:stop, sl].copy_(g.reshape(stop - start, sl.stop - sl.start))
        losses[start:stop] = loss
    return G, losses


def client_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    backend: Backend = "loop",
    chunk_size: int = 10,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Dispatch to the chosen backend; both return ``(G [m, P] float32, losses [m])``."""
    if backend == "loop":
        return loop_gradients(model, x, y, loss_fn, out=out)
    if backend == "threads":
        return threaded_gradients(model, x, y, loss_fn, out=out)
    if backend == "vmap":
        return vmap_gradients(model, x, y, loss_fn, chunk_size=chunk_size, out=out)
    raise ConfigError(f"unknown backend {backend!r}; allowed values: {', '.join(BACKENDS)}")
