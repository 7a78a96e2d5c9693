"""Drive a RobustStrategy round by round without a SuperLink: a fake Grid and reply messages."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.supercore.task_identity import TaskIdentity

from tesseract_fl.flower import RobustStrategy, gradient_record

_ids = itertools.count(1)


class FakeGrid:
    """The two Grid calls FedAvg's sampling makes: the connected nodes."""

    def __init__(self, node_ids: Sequence[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def task_identity() -> Iterator[None]:
    """Messages need the ServerApp's run/node identity; set a fake one for a test."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def reply(
    node_id: int,
    server_round: int,
    grad: torch.Tensor | ArrayRecord,
    num_examples: float = 10.0,
    **metrics: float,
) -> Message:
    """A train reply of ``node_id`` carrying ``grad`` (a flat Tensor or a ready ArrayRecord)."""
    arrays = grad if isinstance(grad, ArrayRecord) else gradient_record(grad)
    metadata = Metadata(
        run_id=1,
        message_id=f"m{next(_ids)}",
        src_node_id=int(node_id),
        dst_node_id=0,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    content = RecordDict(
        {"g": arrays, "metrics": MetricRecord({"num-examples": num_examples, **metrics})}
    )
    return Message(content, metadata=metadata)


def play_round(
    strategy: RobustStrategy,
    server_round: int,
    arrays: ArrayRecord,
    replies: list[Message],
    connected: Sequence[int],
) -> ArrayRecord | None:
    """configure_train (as Flower calls it), then aggregate_train on ``replies``."""
    list(strategy.configure_train(server_round, arrays, ConfigRecord(), FakeGrid(connected)))
    new, _ = strategy.aggregate_train(server_round, replies)
    return new


def arrays_of(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {k: Array(rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}
    )


def flat(arrays: ArrayRecord) -> torch.Tensor:
    return torch.cat([torch.from_numpy(a.numpy()).reshape(-1) for a in arrays.values()])
