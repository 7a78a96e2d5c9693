"""Results store: one SQLite file with runs, per-round metrics and per-client records.

WAL mode, and every round is written in one transaction, so a run killed at any point leaves
only whole rounds behind and every finished run stays readable. Schema, run ownership and the
tables' columns: docs/design.md, "Results store" and "Run ownership".
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tesseract_fl.errors import RunBusyError, StoreError

#: 2: status 'stale' (a finished attempt kept after its code changed); 1 is migrated on open.
SCHEMA_VERSION = 2

_RUNS_COLUMNS = """(
    run_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    config      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'stale')),
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    rounds_done INTEGER NOT NULL DEFAULT 0,
    summary     TEXT,
    versions    TEXT,
    error       TEXT
)"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs """
    + _RUNS_COLUMNS
    + """;
CREATE TABLE IF NOT EXISTS metrics (
    run_id        TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    round         INTEGER NOT NULL,
    lr            REAL,
    train_loss    REAL,
    test_accuracy REAL,
    test_loss     REAL,
    fs_low        REAL,
    fs_high       REAL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS clients (
    run_id     TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    round      INTEGER NOT NULL,
    client     INTEGER NOT NULL,
    malicious  INTEGER NOT NULL,
    flip_score REAL,
    reputation REAL,
    weight     REAL,
    PRIMARY KEY (run_id, round, client)
);
CREATE TABLE IF NOT EXISTS class_metrics (
    run_id   TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    round    INTEGER NOT NULL,
    class    INTEGER NOT NULL,
    accuracy REAL,
    PRIMARY KEY (run_id, round, class)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
    run_id    TEXT PRIMARY KEY,
    token     TEXT NOT NULL,
    host      TEXT NOT NULL,
    pid       INTEGER NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS eval_metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    round  INTEGER NOT NULL,
    key    TEXT NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, round, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attack_records (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    round  INTEGER NOT NULL,
    key    TEXT NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, round, key)
);
"""
)


class ClientRow(NamedTuple):
    """One client's record of a round (a row of the ``clients`` table): whether it is an
    attacker, its flip-score, the defense's reputation of it (when it keeps one) and its weight
    in the update."""

    client: int
    malicious: bool
    flip_score: float | None
    reputation: float | None
    weight: float | None


@dataclass(frozen=True)
class RoundMetrics:
    """One round's row of the ``metrics`` table; ``None`` where nothing was measured."""

    lr: float | None = None
    train_loss: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    fs_low: float | None = None
    fs_high: float | None = None


#: An owner silent for this long (no round written) is taken to be gone, wherever it ran.
STALE_OWNER_SECONDS = 900.0


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Tables holding one run's per-round rows.
ROUND_TABLES = ("metrics", "clients", "attack_records", "class_metrics", "eval_metrics")


def _real(v: Any) -> float | None:
    """A finite float, or None (NaN/Inf are stored as NULL rather than failing the round)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class ResultsStore:
    """Thin wrapper around a SQLite results file; safe to open from several processes."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        """Open (or, unless ``readonly``, create) the store at ``path``.

        ``readonly``: for commands that only read (``show``, ``report``, ``grid --dry-run``): a
        missing store is a :class:`StoreError` naming the path, never an empty new file, and
        nothing is written (a store on read-only media can be read).
        """
        self.path = Path(path)
        self._claims: dict[str, str] = {}
        self.readonly = readonly
        if readonly:
            self._open_readonly()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the folder {str(self.path.parent)!r} for results store "
                f"{str(self.path)!r}: {exc.strerror or exc}"
            ) from None
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"results store {str(self.path)!r} exists but is not a file")
        try:
            self.conn = sqlite3.connect(self.path, timeout=30.0)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)
            version = "SELECT value FROM meta WHERE key='schema_version'"
            row = self.conn.execute(version).fetchone()
            if row is None:
                # OR IGNORE: another process creating the same new store may write it first
                # (grid workers open it together); then its value is the one checked below.
                with self.conn:
                    self.conn.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
                row = self.conn.execute(version).fetchone()
            if int(row[0]) == 1:
                self._migrate_from_1()
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {row[0]}, this tesseract-fl writes "
                    f"{SCHEMA_VERSION}; use a new --store path"
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open results store {str(self.path)!r}: {exc}") from None

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2: rebuild ``runs`` so that its status may be ``stale`` (SQLite cannot
        alter a CHECK in place); every row is kept as it is, in one transaction."""
        self.conn.execute("PRAGMA foreign_keys=OFF")
        try:
            with self.conn:
                self.conn.execute(f"CREATE TABLE runs_v2 {_RUNS_COLUMNS}")
                self.conn.execute("INSERT INTO runs_v2 SELECT * FROM runs")
                self.conn.execute("DROP TABLE runs")
                self.conn.execute("ALTER TABLE runs_v2 RENAME TO runs")
                self.conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )
        finally:
            self.conn.execute("PRAGMA foreign_keys=ON")

    def _open_readonly(self) -> None:
        if not self.path.is_file():
            raise StoreError(f"no results store at {str(self.path)!r}")
        try:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, timeout=30.0)
            self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read results store {str(self.path)!r}: {exc}") from None

    def has_table(self, name: str) -> bool:
        """Whether the store has table ``name`` (a read-only older store may lack new ones)."""
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all."""
        try:
            with self.conn:
                yield self.conn
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"write to {str(self.path)!r} failed: {exc}") from None

    # -- runs -----------------------------------------------------------------------------
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        cur = self.conn.execute(
            "SELECT run_id, name, config, status, created_at, updated_at, rounds_done, summary, "
            "versions, error FROM runs WHERE run_id = ?",
            (run_id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        keys = [d[0] for d in cur.description]
        out = dict(zip(keys, row, strict=True))
        for k in ("config", "summary", "versions"):
            out[k] = json.loads(out[k]) if out[k] else None
        return out

    def list_runs(self) -> list[dict[str, Any]]:
        ids = [r[0] for r in self.conn.execute("SELECT run_id FROM runs ORDER BY created_at")]
        return [r for r in (self.get_run(i) for i in ids) if r is not None]

    def start_run(
        self, run_id: str, name: str, config: dict[str, Any], versions: dict[str, str]
    ) -> None:
        """Create (or restart from scratch) a run; rows of an unfinished attempt are dropped."""
        now = time.time()
        with self.transaction() as c:
            for table in ROUND_TABLES:
                c.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            c.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            c.execute(
                "INSERT INTO runs (run_id, name, config, status, created_at, updated_at, versions) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (run_id, name, json.dumps(config, sort_keys=True), now, now, json.dumps(versions)),
            )

    def mark_stale(self, run_id: str, reason: str) -> str:
        """Keep a finished attempt whose code differs from the current one under a new id
        ``<run id>~stale<n>`` with status ``stale`` (all its rows move with it), freeing
        ``run_id`` for the recomputation; returns the new id (docs/design.md, "Fingerprints")."""
        with self.transaction() as c:
            n = (
                1
                + c.execute(
                    "SELECT COUNT(*) FROM runs WHERE run_id LIKE ?", (f"{run_id}~stale%",)
                ).fetchone()[0]
            )
            new = f"{run_id}~stale{n}"
            cur = c.execute(
                "INSERT INTO runs (run_id, name, config, status, created_at, updated_at, "
                "rounds_done, summary, versions, error) SELECT ?, name, config, 'stale', "
                "created_at, ?, rounds_done, summary, versions, ? FROM runs WHERE run_id = ?",
                (new, time.time(), reason, run_id),
            )
            if cur.rowcount != 1:
                raise StoreError(f"cannot mark run {run_id!r} stale: it is not in {self.path}")
            for table in ROUND_TABLES:
                c.execute(f"UPDATE {table} SET run_id = ? WHERE run_id = ?", (new, run_id))
            c.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        return new

    def resume_run(self, run_id: str, from_round: int) -> None:
        """Continue an unfinished run at ``from_round`` (a checkpoint's round): rows of later
        rounds are dropped and the run is marked running again, in one transaction."""
        if from_round < 0:
            raise StoreError(f"from_round must be >= 0, got {from_round}")
        with self.transaction() as c:
            for table in ROUND_TABLES:
                c.execute(
                    f"DELETE FROM {table} WHERE run_id = ? AND round >= ?", (run_id, from_round)
                )
            cur = c.execute(
                "UPDATE runs SET status = 'running', error = NULL, rounds_done = ?, "
                "updated_at = ? WHERE run_id = ?",
                (from_round, time.time(), run_id),
            )
            if cur.rowcount != 1:
                raise StoreError(f"cannot resume run {run_id!r}: it is not in {self.path}")

    def write_round(
        self,
        run_id: str,
        round_: int,
        metrics: RoundMetrics,
        clients: Iterable[ClientRow] = (),
        attack: dict[str, float] | None = None,
        class_accuracy: Sequence[float] = (),
        attack_success: float | None = None,
    ) -> None:
        """One round's metrics, (optionally) per-client rows, what the attack did (e.g.
        Full-Krum's ``lambda``), the per-class test accuracy of an evaluation and a backdoor's
        attack success rate there, atomically.
        Refused (:class:`RunBusyError`) when another process has taken over a claimed run."""
        with self.transaction() as c:
            self._check_claim(c, run_id)
            c.execute(
                "INSERT OR REPLACE INTO metrics (run_id, round, lr, train_loss, test_accuracy, "
                "test_loss, fs_low, fs_high) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    round_,
                    metrics.lr,
                    metrics.train_loss,
                    metrics.test_accuracy,
                    metrics.test_loss,
                    metrics.fs_low,
                    metrics.fs_high,
                ),
            )
            c.executemany(
                "INSERT OR REPLACE INTO clients (run_id, round, client, malicious, flip_score, "
                "reputation, weight) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        round_,
                        r.client,
                        int(r.malicious),
                        r.flip_score,
                        r.reputation,
                        r.weight,
                    )
                    for r in clients
                ],
            )
            c.executemany(
                "INSERT OR REPLACE INTO attack_records (run_id, round, key, value) "
                "VALUES (?, ?, ?, ?)",
                [(run_id, round_, k, _real(v)) for k, v in (attack or {}).items()],
            )
            c.executemany(
                "INSERT OR REPLACE INTO class_metrics (run_id, round, class, accuracy) "
                "VALUES (?, ?, ?, ?)",
                [(run_id, round_, k, _real(v)) for k, v in enumerate(class_accuracy)],
            )
            if attack_success is not None:
                c.execute(
                    "INSERT OR REPLACE INTO eval_metrics (run_id, round, key, value) "
                    "VALUES (?, ?, 'attack_success', ?)",
                    (run_id, round_, _real(attack_success)),
                )
            c.execute(
                "UPDATE runs SET rounds_done = ?, updated_at = ? WHERE run_id = ?",
                (round_ + 1, time.time(), run_id),
            )

    # -- ownership: one process at a time runs a given run ------------------------------------
    def claim(self, run_id: str, *, stale_after: float = STALE_OWNER_SECONDS) -> None:
        """Make this store object the run's only writer, or raise :class:`RunBusyError`.

        An owner counts as gone (and its claim is taken over) when it ran on this host and its
        process no longer exists, or when it has written nothing for ``stale_after`` seconds.
        Every :meth:`write_round` afterwards checks that the claim still holds.
        """
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        now = time.time()
        host = socket.gethostname()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            row = self.conn.execute(
                "SELECT token, host, pid, heartbeat FROM owners WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is not None and row[0] not in self._claims.values():
                o_host, o_pid, beat = row[1], int(row[2]), float(row[3])
                gone = (o_host == host and not _pid_alive(o_pid)) or now - beat > stale_after
                if not gone:
                    self.conn.execute("ROLLBACK")
                    raise RunBusyError(
                        f"run {run_id} is being run by process {o_pid} on {o_host} (last round "
                        f"written {now - beat:.0f} s ago) into {str(self.path)!r}; wait for it "
                        "to end, or stop it and run again (the run resumes)"
                    )
            self.conn.execute(
                "INSERT OR REPLACE INTO owners (run_id, token, host, pid, heartbeat) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, token, host, os.getpid(), now),
            )
            self.conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.DatabaseError):
                self.conn.execute("ROLLBACK")
            raise StoreError(f"cannot claim run {run_id} in {str(self.path)!r}: {exc}") from None
        self._claims[run_id] = token

    def heartbeat(self, run_id: str) -> None:
        """Keep this store object's claim on the run fresh while the run is computed elsewhere
        (a grid driver waiting for a Ray task)."""
        with self.transaction() as c:
            self._check_claim(c, run_id)

    def export_run(self, run_id: str) -> dict[str, Any] | None:
        """Every row of one run (``runs`` and the per-round tables) as plain lists, to move a
        run between stores (a Ray worker's local store and the driver's); None if absent."""
        out: dict[str, Any] = {}
        for table in ("runs", *ROUND_TABLES):
            cur = self.conn.execute(f"SELECT * FROM {table} WHERE run_id = ?", (run_id,))
            out[table] = {
                "columns": [d[0] for d in cur.description],
                "rows": [list(r) for r in cur.fetchall()],
            }
        return out if out["runs"]["rows"] else None

    def import_run(self, data: dict[str, Any]) -> str:
        """Replace a run by the rows of :meth:`export_run`, in one transaction; its id."""
        run_rows = data["runs"]["rows"]
        if len(run_rows) != 1:
            raise StoreError("import_run: expected exactly one runs row")
        cols = data["runs"]["columns"]
        run_id = str(run_rows[0][cols.index("run_id")])
        with self.transaction() as c:
            for table in ROUND_TABLES:
                c.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            c.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            for table in ("runs", *ROUND_TABLES):
                part = data.get(table) or {"columns": [], "rows": []}
                if not part["rows"]:
                    continue
                names = ", ".join(part["columns"])
                marks = ", ".join("?" * len(part["columns"]))
                c.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", part["rows"])
        return run_id

    def release(self, run_id: str) -> None:
        """Give up this store object's claim on the run (no-op without one)."""
        token = self._claims.pop(run_id, None)
        if token is not None:
            with self.transaction() as c:
                c.execute("DELETE FROM owners WHERE run_id = ? AND token = ?", (run_id, token))

    def _check_claim(self, c: sqlite3.Connection, run_id: str) -> None:
        """Inside a write: refresh the heartbeat, or fail if another process took the run."""
        token = self._claims.get(run_id)
        if token is None:
            return
        cur = c.execute(
            "UPDATE owners SET heartbeat = ? WHERE run_id = ? AND token = ?",
            (time.time(), run_id, token),
        )
        if cur.rowcount != 1:
            raise RunBusyError(
                f"run {run_id}: another process took it over in {str(self.path)!r}; this "
                "process stops writing it"
            )

    def missing_rounds(self, run_id: str, rounds: int) -> list[int]:
        """Rounds in ``[0, rounds)`` without a metrics row (a finished run must have none)."""
        have = {
            int(r[0])
            for r in self.conn.execute("SELECT round FROM metrics WHERE run_id = ?", (run_id,))
        }
        return [r for r in range(rounds) if r not in have]

    def finish_run(self, run_id: str, summary: dict[str, Any]) -> None:
        """Mark the run finished; :class:`StoreError` (and nothing written) if any of the
        ``summary["rounds"]`` rounds lacks its metrics row."""
        rounds = summary.get("rounds")
        if summary.get("diverged_at") is not None:
            rounds = int(summary["diverged_at"]) + 1  # a diverged run stops at that round
        if isinstance(rounds, int):
            missing = self.missing_rounds(run_id, rounds)
            if missing:
                raise StoreError(
                    f"run {run_id} cannot be marked finished: {len(missing)} of its {rounds} "
                    f"rounds are missing from {str(self.path)!r} (first: {missing[:5]})"
                )
        with self.transaction() as c:
            self._check_claim(c, run_id)
            c.execute(
                "UPDATE runs SET status = 'finished', summary = ?, updated_at = ? WHERE run_id = ?",
                (json.dumps(summary, sort_keys=True), time.time(), run_id),
            )

    def fail_run(self, run_id: str, error: str) -> None:
        """Mark the run failed, unless another process has taken over this object's claim
        (then the run is theirs and nothing is written)."""
        token = self._claims.get(run_id)
        with self.transaction() as c:
            if token is not None:
                row = c.execute("SELECT token FROM owners WHERE run_id = ?", (run_id,)).fetchone()
                if row is not None and row[0] != token:
                    return
            c.execute(
                "UPDATE runs SET status = 'failed', error = ?, updated_at = ? WHERE run_id = ?",
                (error, time.time(), run_id),
            )

    # -- reads ------------------------------------------------------------------------------
    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT round, lr, train_loss, test_accuracy, test_loss, fs_low, fs_high FROM metrics "
            "WHERE run_id = ? ORDER BY round",
            (run_id,),
        )
        keys = [d[0] for d in cur.description]
        return [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]

    def attack_records(self, run_id: str) -> dict[int, dict[str, float | None]]:
        """What the attack did per round: ``{round: {key: value}}`` (empty without an attack)."""
        out: dict[int, dict[str, float | None]] = {}
        for rnd, key, value in self.conn.execute(
            "SELECT round, key, value FROM attack_records WHERE run_id = ? ORDER BY round, key",
            (run_id,),
        ):
            out.setdefault(int(rnd), {})[key] = value
        return out

    def class_accuracy(self, run_id: str) -> dict[int, list[float | None]]:
        """Per-class test accuracy at each evaluated round: ``{round: [acc of class 0, ...]}``
        (runs stored before per-class accuracy was recorded have none)."""
        out: dict[int, list[float | None]] = {}
        if not self.has_table("class_metrics"):
            return out
        for rnd, _cls, acc in self.conn.execute(
            "SELECT round, class, accuracy FROM class_metrics WHERE run_id = ? "
            "ORDER BY round, class",
            (run_id,),
        ):
            out.setdefault(int(rnd), []).append(acc)
        return out

    def attack_success(self, run_id: str) -> dict[int, float | None]:
        """A backdoor's attack success rate at each evaluated round: ``{round: rate}`` (empty
        for other attacks and for stores written before it was recorded)."""
        if not self.has_table("eval_metrics"):
            return {}
        return {
            int(rnd): value
            for rnd, value in self.conn.execute(
                "SELECT round, value FROM eval_metrics WHERE run_id = ? AND key = "
                "'attack_success' ORDER BY round",
                (run_id,),
            )
        }

    def client_records(self, run_id: str) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT round, client, malicious, flip_score, reputation, weight FROM clients "
            "WHERE run_id = ? ORDER BY round, client",
            (run_id,),
        )
        keys = [d[0] for d in cur.description]
        return [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]
