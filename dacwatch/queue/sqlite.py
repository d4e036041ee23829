"""The SQLite queue under ``state_dir`` (one host): the protocol of :mod:`dacwatch.queue.base`
on one connection behind a lock."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from dacwatch.queue.base import (
    LEASE_TIMEOUT_S,
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    BaseQueue,
    Db,
    QueueError,
    fill_output_keys,
)


class JobQueue(BaseQueue):
    """The SQLite queue under ``state_dir``: one connection behind a lock, thread-safe."""

    def __init__(
        self,
        path: Path,
        readonly: bool = False,
        node: str | None = None,
        lease_timeout_s: float = LEASE_TIMEOUT_S,
        create: bool = True,
    ) -> None:
        super().__init__(node, lease_timeout_s)
        self.path = path
        self.where = f"queue database {path}"
        try:
            if readonly or not create:  # never makes the file (nor its folder)
                uri = f"file:{path}?mode={'ro' if readonly else 'rw'}"
                self._db = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False, isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise QueueError(f"queue database {path} cannot be opened: {exc}") from exc
        try:
            self._prepare(readonly, create)
        except BaseException:
            self._db.close()
            raise

    def _prepare(self, readonly: bool, create: bool) -> None:
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 5000")
            if (
                not create
                and not self._db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
                ).fetchone()
            ):
                raise QueueError(f"{self.path} holds no dacwatch queue (has the daemon run with this state_dir?)")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                self._migrate()
            integrity = self._db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise QueueError(f"queue database {self.path} cannot be opened: {exc}") from exc
        if integrity != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {integrity}")

    def _migrate(self) -> None:
        """Create the table, or bring one made by an older version up to this one."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        exists = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone()
        if exists and version < SCHEMA_VERSION:
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)").fetchall()}
            for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS.get(v, []):
                    words = statement.split()
                    if words[0] != "ALTER" or words[5] not in columns:  # ALTER TABLE jobs ADD COLUMN <name> ...
                        self._db.execute(statement)
            fill_output_keys(cast(Db, self._db))
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def open_existing(cls, path: Path, readonly: bool = True, node: str | None = None) -> JobQueue:
        """Open the queue the daemon made, for commands that read it or change its rows
        (``status``, ``retry``): nothing is ever created or rebuilt; what is missing or
        damaged is said in one sentence (the daemon rebuilds a damaged one at its start)."""
        if not path.is_file():
            raise QueueError(f"no queue database at {path} (has the daemon run with this state_dir?)")
        try:
            return cls(path, readonly=readonly, node=node, create=False)
        except sqlite3.DatabaseError as exc:
            raise QueueError(
                f"queue database {path} is damaged ({exc}): the daemon moves it aside and makes a new one "
                "at its next start"
            ) from exc

    @classmethod
    def open_or_rebuild(
        cls, path: Path, node: str | None = None, lease_timeout_s: float = LEASE_TIMEOUT_S
    ) -> tuple[JobQueue, Path | None]:
        """Open the queue; a corrupted database is moved aside (returned) and a new one made.

        The reconcile scan then finds every file still in the inbox again.
        """
        try:
            return cls(path, node=node, lease_timeout_s=lease_timeout_s), None
        except sqlite3.DatabaseError:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            return cls(path, node=node, lease_timeout_s=lease_timeout_s), aside

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobQueue:
        return self

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Db]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise QueueError(f"queue database {self.path} is locked: {exc}") from exc
            try:
                yield cast(Db, self._db)
                self._db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):  # locked, disk I/O: a fault of the moment
                    raise QueueError(f"queue database {self.path}: {exc}") from exc
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[Db]:
        with self._lock:
            try:
                yield cast(Db, self._db)
            except sqlite3.OperationalError as exc:
                raise QueueError(f"queue database {self.path} cannot be read: {exc}") from exc
