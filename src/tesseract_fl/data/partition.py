"""Split a labelled training set among federated clients (IID and non-IID schemes).

Schemes (``PARTITIONS``):

- ``bias`` (Fang et al. 2020): with ``L`` classes the clients form ``G = min(L, m)``
  groups of contiguous client ids, as even as possible: client ``i`` is in group
  ``i * G // m`` (so with m=100, L=10, clients 0-9 are group 0, 10-19 group 1, ...).
  Label ``l``'s home group is ``l % G`` (= ``l`` when ``m >= L``). Each sample of label
  ``l`` goes to its home group with probability ``bias`` and otherwise to one of the
  other ``G - 1`` groups uniformly at random; within the group it goes to a client
  uniformly at random. ``bias = 1/L`` is IID in expectation.
- ``iid``: a seeded shuffle split into ``m`` chunks whose sizes differ by at most one.
- ``sequential``: ``m`` contiguous chunks of the original order (sizes differ by at most
  one); kept in the original order (no shuffle), e.g. for text streams.
- ``dirichlet``: for each class, proportions ``p ~ Dir(alpha * 1_m)`` over the clients;
  the class's samples are shuffled and cut by those proportions. Large ``alpha`` is close
  to uniform, small ``alpha`` gives few classes per client.
- ``writers``: needs ``groups`` (the natural owner of each sample, e.g. the FEMNIST writer):
  the distinct groups are shuffled and dealt round-robin to the ``m`` clients, so every
  owner's samples stay on one client (FEMNIST: writers folded into 35 clients).

Every sample index appears in exactly one client's array. Except for ``sequential`` each
client's indices are in a seeded random order (the simulator reads batches round-robin
from that order). Everything depends only on the inputs and ``rng``.

Non-empty guarantee: when there are at least ``m`` samples, every client gets at least
one. Random schemes (``bias``, ``dirichlet``) can leave a client empty; such clients, in
increasing id order, each receive one sample taken (at an ``rng``-chosen position) from
the currently largest client (lowest id on ties). With fewer than ``m`` samples some
clients are necessarily empty; passing the ``dataset`` name makes that an error instead.
"""

from __future__ import annotations

import numpy as np

from tesseract_fl.errors import ConfigError, DatasetError

__all__ = ["PARTITIONS", "bias_groups", "partition"]

#: Names of the supported partition schemes.
PARTITIONS: tuple[str, ...] = ("bias", "iid", "sequential", "dirichlet", "writers")


def bias_groups(num_clients: int, num_classes: int) -> np.ndarray:
    """Group id of each client in the ``bias`` scheme: ``i * G // m`` with ``G = min(L, m)``.

    The group id is also the label whose samples the group is biased towards.
    """
    g = min(num_classes, num_clients)
    return np.arange(num_clients, dtype=np.int64) * g // num_clients


def _validate_labels(labels: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, int]:
    """Return labels as a 1-D int64 array and the number of classes, or raise DatasetError."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DatasetError(f"labels must be a 1-D array, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DatasetError(f"labels must be integers, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64, copy=False)
    if num_classes is None:
        num_classes = int(arr.max()) + 1 if arr.size else 1
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}.")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= num_classes):
        raise DatasetError(
            f"labels must lie in [0, {num_classes}), found [{int(arr.min())}, {int(arr.max())}]."
        )
    return arr, num_classes


def _group_by_client(
    assignment: np.ndarray, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Turn a per-sample client id array into per-client index arrays in random order."""
    n = assignment.shape[0]
    perm = rng.permutation(n)
    order = perm[np.argsort(assignment[perm], kind="stable")]
    counts = np.bincount(assignment, minlength=num_clients)
    return [a.astype(np.int64, copy=False) for a in np.split(order, np.cumsum(counts)[:-1])]


def _bias(
    labels: np.ndarray, num_clients: int, num_classes: int, bias: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Fang et al.'s biased group assignment (see module docstring)."""
    n = labels.shape[0]
    g = min(num_classes, num_clients)
    groups = bias_groups(num_clients, num_classes)
    starts = np.searchsorted(groups, np.arange(g), side="left")
    sizes = np.bincount(groups, minlength=g)
    home = labels % g
    if g > 1:
        stay = rng.random(n) < bias
        other = rng.integers(0, g - 1, size=n)
        other = other + (other >= home)
        group = np.where(stay, home, other)
    else:
        group = np.zeros(n, dtype=np.int64)
    client = starts[group] + (rng.random(n) * sizes[group]).astype(np.int64)
    client = np.minimum(client, starts[group] + sizes[group] - 1)  # guard float rounding
    return _group_by_client(client, num_clients, rng)


def _dirichlet(
    labels: np.ndarray, num_clients: int, num_classes: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per-class Dirichlet proportions over clients (see module docstring)."""
    assignment = np.empty(labels.shape[0], dtype=np.int64)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            continue
        p = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.floor(np.cumsum(p)[:-1] * idx.size).astype(np.int64)
        counts = np.diff(np.concatenate(([0], np.clip(cuts, 0, idx.size), [idx.size])))
        assignment[rng.permutation(idx)] = np.repeat(np.arange(num_clients), counts)
    return _group_by_client(assignment, num_clients, rng)


def _fill_empty(parts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Give every empty client one sample from the largest client (see module docstring)."""
    total = sum(p.size for p in parts)
    if total < len(parts):
        return parts
    for i in range(len(parts)):
        if parts[i].size:
            continue
        donor = int(np.argmax([p.size for p in parts]))
        pos = int(rng.integers(parts[donor].size))
        parts[i] = parts[donor][pos : pos + 1].copy()
        parts[donor] = np.delete(parts[donor], pos)
    return parts


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    *,
    bias: float = 0.5,
    alpha: float = 0.5,
    num_classes: int | None = None,
    groups: np.ndarray | None = None,
    dataset: str | None = None,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Split sample indices ``0..len(labels)-1`` among ``num_clients`` clients.

    Args:
        labels: 1-D integer class labels of the training set.
        num_clients: number of clients ``m`` (>= 1).
        scheme: one of ``PARTITIONS``.
        bias: ``bias`` scheme only, probability in [0, 1] that a sample goes to its
            label's group.
        alpha: ``dirichlet`` scheme only, concentration (> 0).
        num_classes: number of classes ``L`` (default ``max(labels) + 1``).
        groups: ``writers`` scheme only, integer owner id of each sample.
        dataset: name of the dataset the labels come from; when given, fewer samples than
            clients (some clients would get no data) is refused with an error naming it,
            instead of returning empty clients.
        rng: the source of randomness; equal seeds give equal partitions.

    Returns:
        One int64 index array per client; together they cover every index exactly once.

    Raises:
        ConfigError: bad ``scheme``, ``num_clients``, ``bias`` or ``alpha``.
        DatasetError: labels not 1-D integers in ``[0, num_classes)``, or (with ``dataset``)
            fewer samples than clients.
    """
    name = scheme.strip().lower() if isinstance(scheme, str) else scheme
    if name not in PARTITIONS:
        raise ConfigError(f"unknown partition {scheme!r}; allowed: {', '.join(PARTITIONS)}.")
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise ConfigError(f"num_clients must be an integer >= 1, got {num_clients!r}.")
    num_clients = int(num_clients)
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}.")
    if not (0.0 <= float(bias) <= 1.0):
        raise ConfigError(f"bias must lie in [0, 1], got {bias}.")
    if not (float(alpha) > 0.0 and np.isfinite(alpha)):
        raise ConfigError(f"alpha must be a finite number > 0, got {alpha}.")
    lab, n_classes = _validate_labels(labels, num_classes)
    n = lab.shape[0]
    if dataset is not None and n < num_clients:
        fix = f"use at most {n} clients or a larger training set" if n else "check its files"
        raise DatasetError(
            f"dataset {dataset!r} has {n} training samples to split among {num_clients} "
            f"clients, and every client needs at least one: {fix}."
        )

    if name == "iid":
        parts = [a.astype(np.int64) for a in np.array_split(rng.permutation(n), num_clients)]
    elif name == "sequential":
        parts = [a.astype(np.int64) for a in np.array_split(np.arange(n), num_clients)]
    elif name == "bias":
        parts = _bias(lab, num_clients, n_classes, float(bias), rng)
    elif name == "writers":
        parts = _writers(groups, n, num_clients, rng)
    else:
        parts = _dirichlet(lab, num_clients, n_classes, float(alpha), rng)
    return _fill_empty(parts, rng)


def _writers(
    groups: np.ndarray | None, n: int, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Deal whole groups (writers), in a seeded random order, round-robin to the clients."""
    if groups is None:
        raise ConfigError(
            "partition 'writers' needs per-sample writer ids; this dataset has none "
            "(only femnist does). Use bias, iid, sequential or dirichlet."
        )
    g = np.asarray(groups)
    if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer):
        raise DatasetError(f"groups must be {n} integers, got {g.dtype} {list(g.shape)}.")
    owners = rng.permutation(np.unique(g))
    client_of = {int(v): i % num_clients for i, v in enumerate(owners.tolist())}
    assignment = np.fromiter((client_of[v] for v in g.tolist()), dtype=np.int64, count=n)
    return _group_by_client(assignment, num_clients, rng)
