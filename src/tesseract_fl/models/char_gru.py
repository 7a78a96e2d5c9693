"""Character GRU for LEAF Shakespeare (docs/design.md, "Models"; paper Table 1: 0.14M parameters).

Embedding(100, 100) over Python's ``string.printable``, a 2-layer GRU with hidden size 100 and
Linear(100, 100) on the last step's hidden state (next-character prediction): 141,300
parameters. The recurrent layers are a ``torch.nn.GRU``; its fused kernel has no
``torch.func.vmap`` batching rule, so under the vmap backend the same parameters run through
:func:`gru_matmul`, the GRU's gate equations written with plain matmuls (equal to the kernel to
float rounding). Outside vmap (loop and threads backends) the fused kernel is used: a client's
forward and backward take well under half the time of the matmul form on one CPU thread
(``python -m benchmarks gru``).
"""

from __future__ import annotations

import math
import string

import torch
from torch import Tensor, nn
from torch._C._functorch import peek_interpreter_stack

#: The 100-character vocabulary: Python's ``string.printable``.
VOCAB: str = string.printable
VOCAB_SIZE: int = len(VOCAB)


def gru_matmul(x: Tensor, gru: nn.GRU | GRU) -> Tensor:
    """The outputs ``[B, T, H]`` of the last layer of ``gru`` (an ``nn.GRU`` or :class:`GRU`,
    batch first, initial state zero) on ``x`` [B, T, in], written with matmuls (vmap-able).

    Gates in ``nn.GRU``'s order (reset, update, new): ``r = s(W_ir x + b_ir + W_hr h + b_hr)``,
    ``z = s(W_iz x + b_iz + W_hz h + b_hz)``, ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``,
    ``h' = (1 - z) n + z h``.
    """
    out = x
    H = gru.hidden_size
    for k in range(gru.num_layers):
        w_ih = getattr(gru, f"weight_ih_l{k}")
        w_hh = getattr(gru, f"weight_hh_l{k}")
        b_ih = getattr(gru, f"bias_ih_l{k}")
        b_hh = getattr(gru, f"bias_hh_l{k}")
        gi_all = out @ w_ih.T + b_ih  # input projections of all steps at once
        h = out.new_zeros(out.shape[0], H)
        steps = []
        for t in range(out.shape[1]):
            gi = gi_all[:, t]
            gh = h @ w_hh.T + b_hh
            r = torch.sigmoid(gi[:, :H] + gh[:, :H])
            z = torch.sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
            n = torch.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
            h = (1 - z) * n + z * h
            steps.append(h)
        out = torch.stack(steps, dim=1)
    return out


class GRU(nn.Module):
    """Multi-layer GRU, batch first, equal to ``nn.GRU(..., batch_first=True)`` in matmuls only
    (:func:`gru_matmul`); the same parameter names, shapes and initialization.

    Parameters ``weight_ih_l{k}`` [3H, in], ``weight_hh_l{k}`` [3H, H], ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` [3H], gates in the order reset, update, new, as in ``nn.GRU``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        bound = 1.0 / math.sqrt(hidden_size)
        for k in range(num_layers):
            cin = input_size if k == 0 else hidden_size
            for name, shape in (
                (f"weight_ih_l{k}", (3 * hidden_size, cin)),
                (f"weight_hh_l{k}", (3 * hidden_size, hidden_size)),
                (f"bias_ih_l{k}", (3 * hidden_size,)),
                (f"bias_hh_l{k}", (3 * hidden_size,)),
            ):
                self.register_parameter(
                    name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
                )

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, T, in] -> outputs of the last layer [B, T, H] (initial state zero)."""
        return gru_matmul(x, self)


class CharGRU(nn.Module):
    """Embedding(100,100) -> 2-layer GRU(100) -> Linear(100, num_classes) on the last step."""

    def __init__(self, num_classes: int = VOCAB_SIZE, vocab_size: int = VOCAB_SIZE) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 100)
        self.gru = nn.GRU(100, 100, num_layers=2, batch_first=True)
        self.fc = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: int64 character indices [B, T] -> logits [B, num_classes]."""
        e = self.embed(x)
        if peek_interpreter_stack() is not None:
            # inside a torch.func transform (the vmap backend): the kernel has no batching rule
            h = gru_matmul(e, self.gru)
        else:
            h = self.gru(e)[0]
        return self.fc(h[:, -1])
