"""Durable jobs: an explicit status machine, leases, attempts, recovery at boot.

One protocol, two backends: SQLite (WAL, under ``state_dir``: one host, the
default) and PostgreSQL (``queue.url``: every daemon naming the database shares
one queue, :mod:`dacwatch.queue.postgres`). The SQL here is written for both.

A job is one version of one source file: its path relative to the inbox plus
its size, mtime and (on one host) inode. The same file seen again is the same
job (so it is converted once, across restarts and across hosts); a changed file
under the same name is a new job. Statuses::

    queued --lease--> running --complete--> done
       ^                 |  \\--fail------> failed --retry--> queued
       +---retry_later---+
       +---requeue (shutdown) / recover (crash at boot) / lease expired (another node)

A lease names its node (host and state_dir) and carries a random token and a
heartbeat. A running job whose heartbeat is older than ``lease_timeout_s`` is
taken over by the next lease, on any node; every transition of a running job
names the token, so a worker that lost its lease changes nothing, and it checks
that it still holds the lease before renaming its output into place.
"""

from __future__ import annotations

import contextlib
import enum
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from dacwatch.errors import TransientError
from dacwatch.fsio import Identity
from dacwatch.names import fold, printable

SCHEMA_VERSION = 4  # 1: no leases; 2: node, lease token, heartbeat; 3: where a failed source was quarantined;
# 4: names as bytes, output_key
# The job table, written once for both backends: SQLite's types, and PostgreSQL's
# (64-bit ids and sizes, double precision times: its REAL is 32-bit, and bytes are BYTEA).
# Names (path, output) are the file system's bytes (os.fsencode): any name the kernel
# takes, valid UTF-8 or not. output_key is the output name as claims compare it.
_JOBS = """
CREATE TABLE IF NOT EXISTS jobs (
    id {id},
    path {blob} NOT NULL,
    size {int} NOT NULL,
    mtime_ns {int} NOT NULL,
    inode {int} NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    output {blob},
    output_key {blob},
    worker TEXT,
    not_before {real} NOT NULL DEFAULT 0,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    started_at {real},
    finished_at {real},
    node TEXT,
    lease TEXT,
    heartbeat_at {real},
    quarantined {blob},
    UNIQUE (path, size, mtime_ns, inode)
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, not_before, id);
CREATE INDEX IF NOT EXISTS jobs_by_path ON jobs (path);
CREATE INDEX IF NOT EXISTS jobs_by_output ON jobs (output);
CREATE INDEX IF NOT EXISTS jobs_by_output_key ON jobs (output_key);
"""


def jobs_schema(id_type: str, int_type: str, real_type: str, blob_type: str) -> str:
    return _JOBS.format(id=id_type, int=int_type, real=real_type, blob=blob_type)


SCHEMA = jobs_schema("INTEGER PRIMARY KEY", "INTEGER", "REAL", "BLOB")
# Columns added by each version, for databases made by an older one. Version 3 also
# turns the text names into their bytes (SQLite: CAST; a column's declared type stays,
# its values are BLOBs) and fills output_key (fill_output_keys).
MIGRATIONS = {2: ["ALTER TABLE jobs ADD COLUMN node TEXT", "ALTER TABLE jobs ADD COLUMN lease TEXT",
                  "ALTER TABLE jobs ADD COLUMN heartbeat_at REAL"],
              3: ["ALTER TABLE jobs ADD COLUMN quarantined BLOB"],
              4: ["ALTER TABLE jobs ADD COLUMN output_key BLOB",
                  "UPDATE jobs SET path = CAST(path AS BLOB), output = CAST(output AS BLOB)"]}  # fmt: skip
LEASE_TIMEOUT_S = 120.0


CRASHED = "interrupted by a crash"


def name_bytes(name: str) -> bytes:
    """A name as the queue stores it: the file system's bytes, lossless."""
    return os.fsencode(name)


def name_str(stored: Any) -> str:
    """A stored name back as Python's ``str`` for it (surrogateescape: ``os.fsencode`` of it is
    the original bytes). Text from a database older than version 3 is taken as it is."""
    return stored if isinstance(stored, str) else os.fsdecode(bytes(stored))


def output_key(name: str, fold_case: bool) -> bytes:
    """What an output-name claim compares: the name, case-folded when the outbox folds case."""
    return name_bytes(fold(name) if fold_case else name)


def fill_output_keys(db: Db) -> None:
    """Version 3: the claim key of every output claimed before it (the exact name: a
    case-folding outbox is detected from now on, and its claims made from now on fold)."""
    for row in db.execute("SELECT id, output FROM jobs WHERE output IS NOT NULL AND output_key IS NULL").fetchall():
        db.execute("UPDATE jobs SET output_key = ? WHERE id = ?", (name_bytes(name_str(row["output"])), row["id"]))


class Status(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Job:
    id: int
    path: str  # relative to the inbox
    identity: Identity
    status: Status
    attempts: int
    last_error: str | None
    output: str | None = None  # the output name it holds (claimed, or written)
    lease: str | None = None  # the token of the lease this copy was taken under
    # Where its source went in the failed folder (relative to it): two bad versions of
    # one name are quarantined under two names (x.wav, x.1.wav).
    quarantined: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls(
            id=row["id"],
            path=name_str(row["path"]),
            identity=Identity(row["size"], row["mtime_ns"], row["inode"]),
            status=Status(row["status"]),
            attempts=row["attempts"],
            last_error=row["last_error"],
            output=None if row["output"] is None else name_str(row["output"]),
            lease=row["lease"],
            quarantined=_str_or_none(row["quarantined"] if "quarantined" in row.keys() else None),  # noqa: SIM118
        )


class QueueError(TransientError):
    """The queue database is locked or unusable right now."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """A connection inside a transaction, speaking ``?`` placeholders and giving rows by name."""

    def execute(self, sql: str, params: Any = ..., /) -> Cursor: ...


def default_node(state_dir: Path | None = None, keep: bool = True) -> str:
    """This daemon's name in a shared queue: the host's name and a random id kept in its
    state_dir (``node-id``), so that cloned hosts of one name, or several daemons on one
    host, never take each other's jobs for their own at boot. Without ``keep`` (the
    commands that only read or change rows) nothing is written: a name for now."""
    if state_dir is None:
        return f"{socket.gethostname()}:pid{os.getpid()}"
    path = state_dir / "node-id"
    try:
        ident = path.read_text().strip()
    except FileNotFoundError:
        ident = ""
    if not ident:
        ident = secrets.token_hex(6)
        if not keep:
            return f"{socket.gethostname()}:{ident}"
        with contextlib.suppress(OSError):  # a read-only state_dir (dacwatch status): a name for now
            state_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(ident + "\n")
    return f"{socket.gethostname()}:{ident}"


class BaseQueue:
    """The queue's protocol, in SQL both backends speak. A backend supplies connections
    (:meth:`_tx`, :meth:`_read`) and says whether the queue is shared by many hosts."""

    shared = False  # many hosts: file versions leave out the inode (not stable across NFS clients)
    lock_due_rows = ""  # PostgreSQL: " FOR UPDATE SKIP LOCKED" (concurrent leases skip each other's rows)
    where = "queue"  # what it is, for messages

    def __init__(self, node: str | None = None, lease_timeout_s: float = LEASE_TIMEOUT_S) -> None:
        self.node = node or default_node()
        self.lease_timeout_s = lease_timeout_s
        self._lock = threading.RLock()
        self.takeovers = 0  # leases this queue object took over from a silent node

    # ------------------------------------------------------------------ backend

    def _tx(self) -> contextlib.AbstractContextManager[Db]:
        raise NotImplementedError

    def _read(self) -> contextlib.AbstractContextManager[Db]:
        raise NotImplementedError

    def _now(self, db: Db) -> float:
        """The time leases are reckoned in: this host's clock for SQLite (one host); the
        database server's for PostgreSQL, so that hosts' clocks need not agree."""
        return time.time()

    def _serialize(self, db: Db) -> None:
        """Make the rest of this transaction exclusive among output-name claims (SQLite's
        BEGIN IMMEDIATE already is)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> BaseQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def version(self, ident: Identity) -> Identity:
        """What this queue stores and compares of a file's identity."""
        return replace(ident, inode=0) if self.shared else ident

    # ------------------------------------------------------------------ transitions

    def submit(self, path: str, ident: Identity) -> bool:
        """Queue this version of ``path``; False if it is already known (to any node). Older
        queued versions of the same path are dropped: only the newest content is converted."""
        ident = self.version(ident)
        key = (name_bytes(path), ident.size, ident.mtime_ns, ident.inode)
        with self._tx() as db:
            now = self._now(db)
            known = db.execute(
                "SELECT 1 FROM jobs WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?", key
            ).fetchone()
            if known:
                return False
            db.execute(
                "DELETE FROM jobs WHERE path = ? AND status = 'queued' AND NOT (size = ? AND mtime_ns = ? AND inode = ?)",
                key,
            )
            cur = db.execute(
                "INSERT INTO jobs (path, size, mtime_ns, inode, status, not_before, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?) ON CONFLICT DO NOTHING",
                (*key, now, now, now),
            )
            return cur.rowcount == 1

    def lease(self, worker: str) -> Job | None:
        """Take the oldest due job and mark it running (attempts + 1) under a new lease: a
        queued one, or a running one whose node stopped beating (taken over, as after a
        crash: its last error says so)."""
        with self._tx() as db:
            now = self._now(db)
            # Due jobs in the order they became due (not_before: when it was queued, or
            # when a retry is due): a job sent back waits behind the jobs queued before
            # that moment and goes ahead of those queued after it, so neither starves.
            # Shared: a running job whose node stopped beating is due again. One host needs
            # no takeover (recover() at boot), and a wall clock stepped by NTP must not
            # hand one lane's job to another.
            expired = " OR (status = 'running' AND heartbeat_at < ?)" if self.shared else ""
            row = db.execute(
                "SELECT id, status, node FROM jobs WHERE (status = 'queued' AND not_before <= ?)"
                + expired
                + " ORDER BY not_before, id LIMIT 1"
                + self.lock_due_rows,
                (now, now - self.lease_timeout_s) if self.shared else (now,),
            ).fetchone()
            if row is None:
                return None
            token = f"{self.node}/{worker}/{secrets.token_hex(8)}"
            taken_over = row["status"] == Status.RUNNING
            db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = ?, node = ?, lease = ?, "
                "heartbeat_at = ?, started_at = ?, updated_at = ?, "
                "last_error = CASE WHEN status = 'running' THEN ? ELSE last_error END WHERE id = ?",
                (worker, self.node, token, now, now, now, CRASHED, row["id"]),
            )
            job = Job.from_row(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())
        if taken_over:
            self.takeovers += 1
        return job

    def beat(self, leases: list[str]) -> None:
        """The running jobs of these leases are alive (the service calls this every few seconds)."""
        if not leases:
            return
        marks = ", ".join("?" * len(leases))
        with self._tx() as db:
            db.execute(
                f"UPDATE jobs SET heartbeat_at = ? WHERE status = 'running' AND lease IN ({marks})",
                (self._now(db), *leases),
            )

    def holds(self, job_id: int, lease: str | None) -> bool:
        """Whether ``lease`` is still the running lease of the job (not taken over)."""
        with self._read() as db:
            row = db.execute("SELECT lease, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and row["status"] == Status.RUNNING and (lease is None or row["lease"] == lease)

    @staticmethod
    def _mine(lease: str | None) -> tuple[str, tuple[Any, ...]]:
        """The condition that a transition of a running job is made under its lease (and
        that the job is still running: a lease recovered at boot is void)."""
        return ("", ()) if lease is None else (" AND lease = ? AND status = 'running'", (lease,))

    def _finish(
        self,
        job_id: int,
        status: Status,
        error: str | None = None,
        output: str | None = None,
        lease: str | None = None,
        quarantined: str | None = None,
    ) -> bool:
        cond, args = self._mine(lease)
        # A recorded output keeps its claim's key (reserve_output); another name is keyed as it is.
        named, names = ("", ()) if output is None else (
            "output = ?, output_key = CASE WHEN output = ? THEN output_key ELSE ? END, ",
            (name_bytes(output),) * 3,
        )  # fmt: skip
        with self._tx() as db:
            now = self._now(db)
            cur = db.execute(
                "UPDATE jobs SET status = ?, last_error = ?, " + named + "finished_at = ?, "
                "updated_at = ?, worker = NULL, quarantined = ? WHERE id = ?" + cond,
                (status.value, _text(error), *names, now, now, _name_or_none(quarantined), job_id, *args),
            )
            return cur.rowcount == 1

    def complete(self, job_id: int, output: str, lease: str | None = None) -> bool:
        """Done. False if ``lease`` no longer holds the job (nothing changed)."""
        return self._finish(job_id, Status.DONE, output=output, lease=lease)

    def fail(self, job_id: int, error: str, lease: str | None = None, quarantined: str | None = None) -> bool:
        """Failed for good; ``quarantined``: where its source now lies, relative to the failed folder."""
        return self._finish(job_id, Status.FAILED, error=error, lease=lease, quarantined=quarantined)

    def retry_later(
        self, job_id: int, error: str, delay_s: float, counted: bool = True, lease: str | None = None
    ) -> bool:
        """Back to the queue, due in ``delay_s``, behind the jobs already due. An attempt
        that is not ``counted`` (retrying out of memory with a smaller batch) is given back."""
        cond, args = self._mine(lease)
        with self._tx() as db:
            now = self._now(db)
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', last_error = ?, not_before = ?, updated_at = ?, worker = NULL, "
                "output = NULL, output_key = NULL, attempts = attempts - ? WHERE id = ?" + cond,
                (_text(error), now + delay_s, now, 0 if counted else 1, job_id, *args),
            )
            return cur.rowcount == 1

    def reserve_output(
        self, job_id: int, path: str, candidates: list[str], lease: str | None = None, fold_case: bool = False
    ) -> str:
        """Claim an output name for a running job: the first of ``candidates`` that no other
        source's job holds (done, running, or queued again after a crash with its output
        perhaps already in place); '' if all are held. In one exclusive transaction, so two
        workers (or two hosts on one database) never claim the same name. ``fold_case``: the
        outbox folds case (``Talk.dac`` is ``talk.dac`` there), so claims compare folded."""
        cond, args = self._mine(lease)
        with self._tx() as db:
            self._serialize(db)
            for name in candidates:
                exact, key = name_bytes(name), output_key(name, fold_case)
                # A claim made while the outbox was not seen to fold is keyed by its exact
                # name: compare against both keys, never miss an earlier claim.
                taken = db.execute(
                    "SELECT 1 FROM jobs WHERE (output_key = ? OR output_key = ? OR output = ?) AND path != ? "
                    "AND status != 'failed' LIMIT 1",
                    (key, exact, exact, name_bytes(path)),
                ).fetchone()
                if not taken:
                    cur = db.execute(
                        "UPDATE jobs SET output = ?, output_key = ? WHERE id = ?" + cond, (exact, key, job_id, *args)
                    )
                    return name if cur.rowcount == 1 else ""
        return ""

    def requeue(self, job_id: int, lease: str | None = None) -> bool:
        """Give a job back unfinished (shutdown): the interrupted attempt does not count."""
        cond, args = self._mine(lease)
        with self._tx() as db:
            now = self._now(db)
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, "
                "updated_at = ?, worker = NULL, output = NULL, output_key = NULL WHERE id = ? AND status = 'running'"
                + cond,
                (now, job_id, *args),
            )
            return cur.rowcount == 1

    def drop(self, job_id: int, lease: str | None = None) -> bool:
        """Forget a job whose source vanished or changed (a newer version is its own job)."""
        cond, args = self._mine(lease)
        with self._tx() as db:
            return db.execute("DELETE FROM jobs WHERE id = ?" + cond, (job_id, *args)).rowcount == 1

    def recover(self) -> int:
        """At boot: this node's jobs left running by a crash go back to the queue (their
        attempt counts). Other nodes' running jobs are theirs until their leases expire."""
        mine = " AND (node = ? OR node IS NULL)" if self.shared else ""
        with self._tx() as db:
            now = self._now(db)
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', worker = NULL, lease = NULL, updated_at = ?, "
                "last_error = ? WHERE status = 'running'" + mine,
                (now, CRASHED, *((self.node,) if self.shared else ())),
            )
            return cur.rowcount

    def retry_failed(self, path: str | None = None, ids: list[int] | None = None) -> int:
        """Failed jobs back to queued with fresh attempts (all, those of one path, or these)."""
        which: str = ""
        args: tuple[Any, ...] = ()
        if path is not None:
            which, args = " AND path = ?", (name_bytes(path),)
        if ids is not None:
            if not ids:
                return 0
            which, args = which + f" AND id IN ({', '.join('?' * len(ids))})", (*args, *ids)
        with self._tx() as db:
            now = self._now(db)
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', attempts = 0, not_before = 0, updated_at = ?, quarantined = NULL "
                "WHERE status = 'failed'" + which,
                (now, *args),
            )
            return cur.rowcount

    # ------------------------------------------------------------------ reading

    def get(self, job_id: int) -> Job | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def jobs(self, status: Status | None = None) -> list[Job]:
        with self._read() as db:
            if status is None:
                rows = db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
            else:
                rows = db.execute("SELECT * FROM jobs WHERE status = ? ORDER BY id", (status.value,)).fetchall()
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        out = {s.value: 0 for s in Status}
        out.update({r["status"]: int(r["n"]) for r in rows})
        return out

    def report(self, failures: int = 10, finished: int = 0, window_s: float = 3600.0) -> dict[str, Any]:
        """What the queue knows, every node's: counts, running jobs, the last ``failures``
        failures and ``finished`` finished jobs, and the bytes pending and finished in the
        last ``window_s`` (the drain estimate of :mod:`dacwatch.daemon.report`)."""
        with self._read() as db:
            now = self._now(db)
            done = [  # SELECT *, as above
                dict(r)
                for r in db.execute(
                    "SELECT * FROM jobs WHERE status = 'done' ORDER BY finished_at DESC LIMIT ?", (finished,)
                ).fetchall()
            ]
            pending = db.execute(
                "SELECT COALESCE(SUM(size), 0) AS b FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchone()
            recent = db.execute(
                "SELECT COALESCE(SUM(size), 0) AS b, MIN(started_at) AS first FROM jobs "
                "WHERE status = 'done' AND finished_at >= ?",
                (now - window_s,),
            ).fetchone()
            # SELECT *: an older database (dacwatch status never migrates) has no node or heartbeat.
            running = [
                dict(r) for r in db.execute("SELECT * FROM jobs WHERE status = 'running' ORDER BY id").fetchall()
            ]
            failed = db.execute(
                "SELECT path, attempts, last_error, finished_at FROM jobs WHERE status = 'failed' "
                "ORDER BY finished_at DESC LIMIT ?",
                (failures,),
            ).fetchall()
            # Faults of the moment: queued again, with why, until they clear or are given up.
            waiting = db.execute(
                "SELECT path, attempts, last_error, not_before FROM jobs "
                "WHERE status = 'queued' AND last_error IS NOT NULL ORDER BY not_before LIMIT ?",
                (failures,),
            ).fetchall()
        # Names shown, never stored: printable (bytes that are not UTF-8 as \\xe9).
        return {
            "counts": self.counts(),
            "running": [
                {k: r.get(k) for k in ("attempts", "worker", "node")}
                | {"path": printable(name_str(r["path"]))}
                | {"started_at": _iso(r.get("started_at")), "heartbeat_at": _iso(r.get("heartbeat_at"))}
                for r in running
            ],
            "recent_failures": [
                dict(r) | {"path": printable(name_str(r["path"])), "finished_at": _iso(r["finished_at"])}
                for r in failed
            ],
            "recent_done": [
                {k: r.get(k) for k in ("node", "attempts")}
                | {"path": printable(name_str(r["path"])), "output": _printable_name(r.get("output"))}
                | {"finished_at": _iso(r["finished_at"]), "started_at": _iso(r["started_at"])}
                | {"wall_s": r["finished_at"] - r["started_at"] if r["started_at"] else None}
                for r in done
            ],
            "bytes": {
                "pending": int(pending["b"]),
                "done_recently": int(recent["b"]),
                "since_s": min(window_s, now - recent["first"]) if recent["first"] is not None else None,
            },
            "retrying": [
                dict(r) | {"path": printable(name_str(r["path"])), "not_before": _iso(r["not_before"])} for r in waiting
            ],
        }


def _text(message: str | None) -> str | None:
    """A message for a TEXT column: names in it that are not UTF-8 made printable."""
    return None if message is None else printable(message)


def _str_or_none(stored: Any) -> str | None:
    return None if stored is None else name_str(stored)


def _name_or_none(name: str | None) -> bytes | None:
    return None if name is None else name_bytes(name)


def _printable_name(value: Any) -> str | None:
    return None if value is None else printable(name_str(value))


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
