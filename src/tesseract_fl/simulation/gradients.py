"""Per-client gradients of one FedSGD round, stacked into the ``[m, P]`` matrix (DESIGN.md 3, 7).

Two interchangeable backends compute the same numbers:

* ``loop``: one forward/backward per client. On a CPU this is already near the compute bound
  (DESIGN.md section 7: 1.01 s per MNIST round of 100 clients x 32 images on 2 cores).
* ``vmap``: ``torch.func.vmap(grad(functional_call))`` over chunks of clients. On a GPU this
  replaces hundreds of tiny kernels by a few large ones; on a CPU it is about as fast as the loop.

Every client computes its gradient at the same global parameters (FedSGD: one local step per
round), so the model's own parameters are used directly and never copied per client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from tesseract_fl.errors import ConfigError

Backend = Literal["loop", "vmap"]
BACKENDS: tuple[str, ...] = ("loop", "vmap")

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_backend(device: torch.device | str) -> Backend:
    """The faster backend for a device: the loop on CPU, vmap on accelerators (DESIGN.md 7)."""
    return "loop" if torch.device(device).type == "cpu" else "vmap"


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
    for i in range(m):
        loss = loss_fn(model(x[i]), y[i])
        grads = torch.autograd.grad(loss, params)
        offset = 0
        row = G[i]
        for g in grads:
            n = g.numel()
            row[offset : offset + n].copy_(g.reshape(-1))
            offset += n
        losses[i] = loss.detach()
    return G, losses


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
    batching rule; ``char_gru`` uses an equivalent GRU written with matmuls instead.
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
        offset = 0
        for n in names:
            g = grads[n]
            k = g[0].numel()
            G[start:stop, offset : offset + k].copy_(g.reshape(stop - start, k))
            offset += k
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
    if backend == "vmap":
        return vmap_gradients(model, x, y, loss_fn, chunk_size=chunk_size, out=out)
    raise ConfigError(f"unknown backend {backend!r}; allowed values: {', '.join(BACKENDS)}")
