"""Model parameters and gradients as Flower ``ArrayRecord``s, and the checks on what comes back.

The global model travels as an ``ArrayRecord`` holding the model's *trainable parameters*, one
array per parameter in ``named_parameters()`` order (buffers such as BatchNorm running statistics
are not aggregated: they stay the server's, as in the simulator). A client answers with its
gradient at that model, either

* flat: one array under :data:`GRADIENT_KEY` of length P (the simulator's matrix row), or
* per layer: one array per parameter, under the same keys and with the same shapes as the model
  record.

:class:`Layout` is the bridge: it flattens per-layer arrays in the model record's key order (the
order the simulator flattens gradients in), so both forms give the same row of ``G``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor, nn

from tesseract_fl.errors import UpdateError
from tesseract_fl.simulation.flat import flat_slices

__all__ = [
    "GRADIENT_KEY",
    "Layout",
    "gradient_record",
    "load_arrays",
    "model_arrays",
]

#: Key of the single array of a flat gradient reply.
GRADIENT_KEY = "gradient"

_FLOAT_DTYPES = ("float16", "float32", "float64")


def model_arrays(model: nn.Module) -> ArrayRecord:
    """The model's trainable parameters as an ``ArrayRecord`` (float32 copies, in order)."""
    return ArrayRecord(
        {
            name: Array(p.detach().cpu().to(torch.float32).numpy().copy())
            for name, p in model.named_parameters()
            if p.requires_grad
        }
    )


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    """Copy the arrays of a model record into ``model``'s trainable parameters (in place).

    The record must hold exactly the model's trainable parameter names with their shapes;
    anything else is an :class:`UpdateError` naming the first mismatch.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(arrays.keys()):
        missing = sorted(set(params) - set(arrays.keys()))[:5]
        extra = sorted(set(arrays.keys()) - set(params))[:5]
        raise UpdateError(
            f"model record does not match the model: missing {missing}, unexpected {extra}"
        )
    with torch.no_grad():
        for name, p in params.items():
            value = torch.from_numpy(np.ascontiguousarray(arrays[name].numpy()))
            if tuple(value.shape) != tuple(p.shape):
                raise UpdateError(
                    f"model record array {name!r} has shape {tuple(value.shape)}, "
                    f"the model's parameter has {tuple(p.shape)}"
                )
            p.copy_(value.to(p.dtype))


@dataclass(frozen=True)
class Layout:
    """Keys and shapes of the global model record, in order: how rows of ``G`` are laid out."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, arrays: ArrayRecord) -> Layout:
        """The layout of a model record (from the arrays' metadata; nothing is decoded)."""
        keys = tuple(arrays.keys())
        return cls(keys=keys, shapes=tuple(tuple(int(d) for d in arrays[k].shape) for k in keys))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def num_params(self) -> int:
        """P: the length of a flat gradient."""
        return sum(self.sizes)

    def flatten(self, arrays: Mapping[str, Any]) -> Tensor:
        """Per-key arrays (``Array`` or ndarray) -> one float32 vector, in layout order."""
        parts = [_as_tensor(arrays[k]).reshape(-1) for k in self.keys]
        return torch.cat(parts) if parts else torch.zeros(0)

    def unflatten(self, flat: Tensor) -> dict[str, np.ndarray]:
        """A flat vector -> per-key float32 ndarrays with the layout's shapes."""
        if flat.dim() != 1 or flat.shape[0] != self.num_params:
            raise UpdateError(
                f"flat vector has shape {tuple(flat.shape)}, the layout needs ({self.num_params},)"
            )
        out: dict[str, np.ndarray] = {}
        for key, shape, sl in zip(self.keys, self.shapes, flat_slices(self.sizes), strict=True):
            out[key] = flat[sl].detach().cpu().numpy().reshape(shape).copy()
        return out

    def read_gradient(self, record: ArrayRecord) -> Tensor:
        """A client's gradient record -> float32 Tensor[P]; :class:`UpdateError` says what is
        wrong (the caller adds the node). NaN/Inf values pass (the aggregators' hostile-row
        policy handles them); wrong keys, shapes or non-float dtypes do not."""
        keys = list(record.keys())
        if keys == [GRADIENT_KEY] and GRADIENT_KEY not in self.keys:
            arr = record[GRADIENT_KEY]
            _check_meta(arr, (self.num_params,), GRADIENT_KEY)
            return _decode(arr, (self.num_params,), GRADIENT_KEY)
        if set(keys) != set(self.keys):
            missing = sorted(set(self.keys) - set(keys))[:5]
            extra = sorted(set(keys) - set(self.keys))[:5]
            raise UpdateError(
                f"gradient record must hold one array {GRADIENT_KEY!r} of length "
                f"{self.num_params} or one array per model parameter; missing {missing}, "
                f"unexpected {extra}"
            )
        for key, shape in zip(self.keys, self.shapes, strict=True):
            _check_meta(record[key], shape, key)
        return torch.cat(
            [
                _decode(record[k], s, k).reshape(-1)
                for k, s in zip(self.keys, self.shapes, strict=True)
            ]
        )


def gradient_record(flat: Tensor, layout: Layout | None = None) -> ArrayRecord:
    """A client's reply: the flat gradient under :data:`GRADIENT_KEY`, or per layer when a
    ``layout`` (the received model record's) is given."""
    flat = flat.detach().cpu().to(torch.float32)
    if layout is None:
        return ArrayRecord({GRADIENT_KEY: Array(flat.numpy().copy())})
    return ArrayRecord({k: Array(v) for k, v in layout.unflatten(flat).items()})


def _check_meta(arr: Any, shape: tuple[int, ...], key: str) -> None:
    """Shape and dtype from the array's metadata, before decoding any bytes."""
    if not isinstance(arr, Array):
        raise UpdateError(f"array {key!r} is not a Flower Array")
    got = tuple(int(d) for d in arr.shape)
    if got != tuple(shape):
        raise UpdateError(f"array {key!r} has shape {got}, expected {tuple(shape)}")
    if str(arr.dtype) not in _FLOAT_DTYPES:
        raise UpdateError(f"array {key!r} has dtype {arr.dtype!r}, expected a float type")


def _decode(arr: Array, shape: tuple[int, ...], key: str) -> Tensor:
    """Decode an array's bytes and check them against its metadata (a lying header is caught).

    The ``.npy`` header inside the bytes is read first: its shape, dtype and the number of data
    bytes must match before anything is allocated, so a header claiming a huge shape costs
    nothing."""
    _check_npy_header(arr.data, shape, key)
    try:
        value = arr.numpy()
    except Exception as exc:  # corrupt bytes: any decoding error is the sender's fault
        raise UpdateError(f"array {key!r} cannot be decoded: {exc}") from None
    if tuple(value.shape) != tuple(shape) or value.dtype.kind != "f":
        raise UpdateError(
            f"array {key!r} decodes to shape {tuple(value.shape)} dtype {value.dtype}, "
            f"expected {tuple(shape)} float"
        )
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as intended
        return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


def _check_npy_header(data: Any, shape: tuple[int, ...], key: str) -> None:
    """UpdateError unless ``data`` is a ``.npy`` (format 1.0 or 2.0) of a float array with
    ``shape`` and exactly the data bytes that shape needs."""
    if not isinstance(data, bytes):
        raise UpdateError(f"array {key!r} has no byte payload")
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            got, _fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            got, _fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise UpdateError(f"array {key!r} is in .npy format {version}, expected 1.0 or 2.0")
    except UpdateError:
        raise
    except Exception as exc:  # a header that numpy cannot parse
        raise UpdateError(f"array {key!r} cannot be decoded: {exc}") from None
    if tuple(got) != tuple(shape) or dtype.kind != "f":
        raise UpdateError(
            f"array {key!r} decodes to shape {tuple(got)} dtype {dtype}, "
            f"expected {tuple(shape)} float"
        )
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - buf.tell() != needed:
        raise UpdateError(
            f"array {key!r} holds {len(data) - buf.tell()} data bytes, its shape and dtype need "
            f"{needed}"
        )


def _as_tensor(value: Any) -> Tensor:
    arr = value.numpy() if isinstance(value, Array) else np.asarray(value)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
