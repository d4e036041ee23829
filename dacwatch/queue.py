"""Durable jobs in SQLite (WAL): an explicit status machine, leases, attempts, recovery at boot.

A job is one version of one source file: its path relative to the inbox plus
its size, mtime and inode. The same file seen again is the same job (so it is
converted once, across restarts); a changed file under the same name is a new
job. Statuses::

    queued --lease--> running --complete--> done
       ^                 |  \\--fail------> failed --retry--> queued
       +---retry_later---+
       +---requeue (shutdown) / recover (crash at boot)
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TransientError
from .fsio import Identity

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    output TEXT,
    worker TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    UNIQUE (path, size, mtime_ns, inode)
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, not_before, id);
CREATE INDEX IF NOT EXISTS jobs_by_path ON jobs (path);
"""


CRASHED = "interrupted by a crash"


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            path=row["path"],
            identity=Identity(row["size"], row["mtime_ns"], row["inode"]),
            status=Status(row["status"]),
            attempts=row["attempts"],
            last_error=row["last_error"],
            output=row["output"],
        )


class QueueError(TransientError):
    """The queue database is locked or unusable right now."""


class JobQueue:
    """Thread-safe access to the job table (one connection behind a lock)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            if readonly:
                uri = f"file:{path}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 5000")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                self._db.executescript(SCHEMA)
            integrity = self._db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise QueueError(f"queue database {path} cannot be opened: {exc}") from exc
        if integrity != "ok":
            self._db.close()
            raise sqlite3.DatabaseError(f"integrity check failed: {integrity}")

    @classmethod
    def open_readonly(cls, path: Path) -> JobQueue:
        if not path.exists():
            raise QueueError(f"no queue database at {path} (has the daemon run with this state_dir?)")
        return cls(path, readonly=True)

    @classmethod
    def open_or_rebuild(cls, path: Path) -> tuple[JobQueue, Path | None]:
        """Open the queue; a corrupted database is moved aside (returned) and a new one made.

        The reconcile scan then finds every file still in the inbox again.
        """
        try:
            return cls(path), None
        except sqlite3.DatabaseError:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            return cls(path), aside

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise QueueError(f"queue database {self.path} is locked: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):  # locked, disk I/O: a fault of the moment
                    raise QueueError(f"queue database {self.path}: {exc}") from exc
                raise

    # ------------------------------------------------------------------ transitions

    def submit(self, path: str, ident: Identity) -> bool:
        """Queue this version of ``path``; False if it is already known. Older queued
        versions of the same path are dropped: only the newest content is converted."""
        now = time.time()
        with self._tx() as db:
            known = db.execute(
                "SELECT 1 FROM jobs WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
                (path, ident.size, ident.mtime_ns, ident.inode),
            ).fetchone()
            if known:
                return False
            db.execute("DELETE FROM jobs WHERE path = ? AND status = 'queued'", (path,))
            db.execute(
                "INSERT INTO jobs (path, size, mtime_ns, inode, status, not_before, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (path, ident.size, ident.mtime_ns, ident.inode, now, now, now),
            )
            return True

    def lease(self, worker: str) -> Job | None:
        """Take the oldest due queued job and mark it running (attempts + 1)."""
        now = time.time()
        with self._tx() as db:
            # Due jobs in the order they became due (not_before: when it was queued, or
            # when a retry is due): a job sent back waits behind the jobs queued before
            # that moment and goes ahead of those queued after it, so neither starves.
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' AND not_before <= ? ORDER BY not_before, id LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = ?, started_at = ?, "
                "updated_at = ? WHERE id = ?",
                (worker, now, now, row["id"]),
            )
            return Job.from_row(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def _finish(self, job_id: int, status: Status, error: str | None = None, output: str | None = None) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = ?, last_error = ?, output = COALESCE(?, output), finished_at = ?, "
                "updated_at = ?, worker = NULL WHERE id = ?",
                (status.value, error, output, now, now, job_id),
            )

    def complete(self, job_id: int, output: str) -> None:
        self._finish(job_id, Status.DONE, output=output)

    def fail(self, job_id: int, error: str) -> None:
        self._finish(job_id, Status.FAILED, error=error)

    def retry_later(self, job_id: int, error: str, delay_s: float, counted: bool = True) -> None:
        """Back to the queue, due in ``delay_s``, behind the jobs already due. An attempt
        that is not ``counted`` (retrying out of memory with a smaller batch) is given back."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = 'queued', last_error = ?, not_before = ?, updated_at = ?, worker = NULL, "
                "output = NULL, attempts = attempts - ? WHERE id = ?",
                (error, now + delay_s, now, 0 if counted else 1, job_id),
            )

    def reserve_output(self, job_id: int, path: str, candidates: list[str]) -> str:
        """Claim an output name for a running job: the first of ``candidates`` that no other
        source's job holds (done, running, or queued again after a crash with its output
        perhaps already in place); '' if all are held. In one transaction, so two workers
        (or two hosts on one database) never claim the same name."""
        with self._tx() as db:
            for name in candidates:
                taken = db.execute(
                    "SELECT 1 FROM jobs WHERE output = ? AND path != ? AND status != 'failed' LIMIT 1",
                    (name, path),
                ).fetchone()
                if not taken:
                    db.execute("UPDATE jobs SET output = ? WHERE id = ?", (name, job_id))
                    return name
        return ""

    def requeue(self, job_id: int) -> None:
        """Give a job back unfinished (shutdown): the interrupted attempt does not count."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = 'queued', attempts = MAX(0, attempts - 1), updated_at = ?, worker = NULL, "
                "output = NULL WHERE id = ? AND status = 'running'",
                (now, job_id),
            )

    def drop(self, job_id: int) -> None:
        """Forget a job whose source vanished or changed (a newer version is its own job)."""
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def recover(self) -> int:
        """At boot: jobs left running by a crash go back to the queue (their attempt counts)."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', worker = NULL, updated_at = ?, "
                "last_error = ? WHERE status = 'running'",
                (now, CRASHED),
            )
            return cur.rowcount

    def retry_failed(self, path: str | None = None) -> int:
        """Failed jobs back to queued with fresh attempts (all, or those of one path)."""
        now = time.time()
        with self._tx() as db:
            if path is None:
                cur = db.execute(
                    "UPDATE jobs SET status = 'queued', attempts = 0, not_before = 0, updated_at = ? WHERE status = 'failed'",
                    (now,),
                )
            else:
                cur = db.execute(
                    "UPDATE jobs SET status = 'queued', attempts = 0, not_before = 0, updated_at = ? "
                    "WHERE status = 'failed' AND path = ?",
                    (now, path),
                )
            return cur.rowcount

    # ------------------------------------------------------------------ reading

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.OperationalError as exc:
                raise QueueError(f"queue database {self.path} cannot be read: {exc}") from exc

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
        out.update({r["status"]: r["n"] for r in rows})
        return out

    def report(self, failures: int = 10) -> dict[str, Any]:
        with self._read() as db:
            running = db.execute(
                "SELECT path, attempts, worker, started_at FROM jobs WHERE status = 'running' ORDER BY id"
            ).fetchall()
            failed = db.execute(
                "SELECT path, attempts, last_error, finished_at FROM jobs WHERE status = 'failed' "
                "ORDER BY finished_at DESC LIMIT ?",
                (failures,),
            ).fetchall()
        return {
            "counts": self.counts(),
            "running": [dict(r) | {"started_at": _iso(r["started_at"])} for r in running],
            "recent_failures": [dict(r) | {"finished_at": _iso(r["finished_at"])} for r in failed],
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
