"""Colluding attackers for Flower deployments: full knowledge through a shared directory.

Full-Trim, Full-Krum, ALIE, IPM and Min-Max/Min-Sum are *full-knowledge* attacks: the malicious
rows are computed from every client's honest gradient of the round, jointly for all attackers
(Full-Krum's attackers send one shared vector plus tiny noise). In the simulator that is one
function call; in a Flower deployment every malicious ClientApp runs in its own process.

Protocol (one directory per Flower run, on a file system all malicious nodes can reach, e.g. a
local path on one machine or an NFS mount with working ``flock``): for round r, the first
attacker to take the lock ``round-<r>.lock`` obtains the round's honest gradients (a callback:
in the example app it recomputes every client's gradient from the known partitions at the
round's global model, which is exactly what the honest clients send), runs the attack once for
all attackers with the run's attack RNG, and writes ``round-<r>.pt`` (the attackers' rows and a
fingerprint of the global model). The others wait on the lock and read their row. The attack's
``torch.Generator`` state is kept in the directory between rounds, seeded from the experiment
seed, so the sequence of random draws is the simulator's.

Attacks that adapt to the defense's state (``adaptive_krum``, ``adaptive_trim``) are refused:
the server's TESSERACT state is not visible to Flower clients.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from torch import Tensor

from tesseract_fl.attacks import (
    NEEDS_DEFENSE_STATE,
    AttackContext,
    Poison,
    is_backdoor,
    is_data_attack,
    needs_root_gradient,
)
from tesseract_fl.errors import ConfigError, UpdateError

__all__ = ["LOCAL_ATTACKS", "ColludingAttackers", "model_fingerprint"]

#: Model attacks an attacker computes from its own gradient alone (no collusion needed).
LOCAL_ATTACKS: frozenset[str] = frozenset({"sign_flip"})


def model_fingerprint(arrays: ArrayRecord) -> str:
    """SHA-256 (first 16 hex digits) of a model record's keys and bytes: which model a round's
    shared attack file belongs to."""
    h = hashlib.sha256()
    for key, arr in arrays.items():
        h.update(key.encode())
        h.update(arr.data)
    return h.hexdigest()[:16]


class ColludingAttackers:
    """The malicious clients of one run, meeting in ``directory`` (module docstring).

    ``attack``: a model-poisoning attack object (``make_attack``); ``num_clients``: rows of the
    honest matrix; ``malicious_ids``: the attackers' rows (client / partition ids); ``c_max``
    and ``seed``: as in the experiment config.
    """

    def __init__(
        self,
        directory: str | Path,
        attack: Any,
        *,
        num_clients: int,
        malicious_ids: Sequence[int],
        c_max: int,
        seed: int,
    ) -> None:
        name = str(getattr(attack, "name", type(attack).__name__))
        if is_backdoor(attack):
            raise ConfigError(
                f"backdoor attack {name!r} runs in the simulator only (tesseract-fl run); the "
                "Flower apps do not stamp triggers or measure attack success"
            )
        if is_data_attack(attack) or not callable(getattr(attack, "poison", None)):
            raise ConfigError(f"attack {name!r} is not a model-poisoning attack")
        if name in NEEDS_DEFENSE_STATE:
            raise ConfigError(
                f"attack {name!r} adapts to the server's TESSERACT state, which Flower clients "
                "cannot see; use it in the simulator"
            )
        if needs_root_gradient(attack):
            raise ConfigError(
                f"attack {name!r} reads the server's root gradient, which Flower clients cannot "
                "see; use it in the simulator"
            )
        ids = sorted(int(i) for i in malicious_ids)
        if not ids or len(set(ids)) != len(ids) or not all(0 <= i < num_clients for i in ids):
            raise ConfigError(
                f"malicious ids must be distinct and in [0, {num_clients}), "
                f"got {list(malicious_ids)}"
            )
        self.directory = Path(directory)
        self.attack = attack
        self.num_clients = int(num_clients)
        self.malicious_ids = ids
        self.c_max = int(c_max)
        self.seed = int(seed)

    def row(
        self,
        server_round: int,
        client: int,
        arrays: ArrayRecord,
        honest_gradients: Callable[[], Tensor],
    ) -> tuple[Tensor, dict[str, float]]:
        """Attacker ``client``'s malicious gradient for ``server_round`` (from 1) and the
        attack's record; the first attacker of the round computes and shares all rows."""
        if client not in self.malicious_ids:
            raise ConfigError(f"client {client} is not one of the attackers {self.malicious_ids}")
        self.directory.mkdir(parents=True, exist_ok=True)
        key = model_fingerprint(arrays)
        path = self.directory / f"round-{server_round:06d}.pt"
        with open(self.directory / f"round-{server_round:06d}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not path.exists():
                    self._compute(server_round, key, honest_gradients(), path)
                shared = torch.load(path, weights_only=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if shared["model"] != key:
            raise UpdateError(
                f"{path} holds the attack for another global model ({shared['model']} vs "
                f"{key}); use a fresh attack directory per run"
            )
        idx = self.malicious_ids.index(client)
        return shared["rows"][idx].clone(), dict(shared["record"])

    def _compute(self, server_round: int, key: str, G: Tensor, path: Path) -> None:
        """Run the attack once for every attacker and publish the rows (atomically)."""
        if tuple(G.shape[:1]) != (self.num_clients,) or G.dim() != 2:
            raise UpdateError(
                f"honest gradients must be [{self.num_clients}, P], got {tuple(G.shape)}"
            )
        gen = torch.Generator()
        rng_path = self.directory / "attack-rng.pt"
        if rng_path.exists():
            gen.set_state(torch.load(rng_path, weights_only=True))
        else:
            gen.manual_seed(self.seed)
        mask = torch.zeros(self.num_clients, dtype=torch.bool)
        mask[self.malicious_ids] = True
        ctx = AttackContext(malicious=mask, c_max=self.c_max, round=server_round - 1, generator=gen)
        out = self.attack.poison(G, ctx)
        rows = out.rows if isinstance(out, Poison) else out
        record = dict(out.record) if isinstance(out, Poison) else {}
        if tuple(rows.shape) != (len(self.malicious_ids), G.shape[1]):
            raise UpdateError(
                f"attack {self.attack!r} returned {tuple(rows.shape)}, expected "
                f"({len(self.malicious_ids)}, {G.shape[1]})"
            )
        _save(rng_path, gen.get_state())
        payload = {
            "model": key,
            "rows": rows.detach().cpu().contiguous(),
            "record": {k: float(v) for k, v in record.items()},
        }
        _save(path, payload)


def _save(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
