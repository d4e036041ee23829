"""The queue on PostgreSQL (``queue.url``): every daemon naming the database shares it.

The protocol and its SQL are :class:`dacwatch.queue.base.BaseQueue`'s; this module
gives it a connection (psycopg 3), the schema (created and migrated by the
daemon, under an advisory lock, with a version number), row locks that let
concurrent leases skip each other (``FOR UPDATE SKIP LOCKED``), and errors:
a server that cannot be reached at startup is a clear error before READY;
while running, every failure of the connection is a :class:`QueueError`, which
callers retry (the connection is made again on the next call), so no job is
lost or quarantined because the database blinked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dacwatch.errors import ConfigError
from dacwatch.queue.base import (
    LEASE_TIMEOUT_S,
    SCHEMA_VERSION,
    BaseQueue,
    Cursor,
    Db,
    QueueError,
    fill_output_keys,
    jobs_schema,
)

VERSIONS = "CREATE TABLE IF NOT EXISTS dacwatch_schema (version INTEGER NOT NULL)"
SCHEMA = jobs_schema("BIGSERIAL PRIMARY KEY", "BIGINT", "DOUBLE PRECISION", "BYTEA")
# What each version changes in a database made by an older one (2 was the first released).
MIGRATIONS = {
    3: ["ALTER TABLE jobs ADD COLUMN IF NOT EXISTS quarantined BYTEA"],  # where a failed source went
    4: [  # names as the file system's bytes; the claim key of outputs
        "ALTER TABLE jobs ALTER COLUMN path TYPE BYTEA USING convert_to(path, 'UTF8')",
        "ALTER TABLE jobs ALTER COLUMN output TYPE BYTEA USING convert_to(output, 'UTF8')",
        "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS output_key BYTEA",
    ],
}
MIGRATION_LOCK = 0x64616377  # "dacw": one daemon at a time creates or migrates the schema
RESERVE_LOCK = 0x64616372  # "dacr": one output-name claim at a time


def redacted(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class _Translated:
    """A psycopg connection inside a transaction, taking the SQLite spelling (``?``)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = (), /) -> Cursor:
        cursor: Cursor = self._conn.execute(sql.replace("?", "%s"), params)
        return cursor


class PostgresQueue(BaseQueue):
    shared = True
    lock_due_rows = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        url: str,
        node: str | None = None,
        lease_timeout_s: float = LEASE_TIMEOUT_S,
        connect_timeout_s: float = 5,
        readonly: bool = False,
        create: bool = True,
    ) -> None:
        super().__init__(node, lease_timeout_s)
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError(
                "queue.url names PostgreSQL, but psycopg is not installed: pip install 'dacwatch[postgres]'"
            ) from exc
        self._psycopg = psycopg
        self.url = url
        self.where = f"queue database {redacted(url)}"
        self.connect_timeout_s = connect_timeout_s
        self._conn: Any = None
        with self._lock:
            self._connect()
            if not create or readonly:  # dacwatch status may run as a role that can only read
                self._require_schema()
            else:
                self._migrate()

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            from psycopg.rows import dict_row

            try:
                self._conn = self._psycopg.connect(
                    self.url,
                    autocommit=True,  # transactions are explicit (_tx), none left open between calls
                    row_factory=dict_row,
                    connect_timeout=max(1, round(self.connect_timeout_s)),
                    application_name="dacwatch",
                    # A host cut off mid-transaction must not hold locks for hours: TCP
                    # keepalives notice a dead peer, and the server ends idle transactions
                    # and gives up waiting for a lock (each a QueueError here, retried).
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                    options="-c lock_timeout=30000 -c idle_in_transaction_session_timeout=60000",
                )
            except self._psycopg.Error as exc:
                self._conn = None
                raise QueueError(f"{self.where} cannot be reached: {' '.join(str(exc).split())}") from exc
        return self._conn

    def _migrate(self) -> None:
        """Create the schema, or bring an older one up to this version; refuse a newer one."""
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            db.execute(VERSIONS)
            row = db.execute("SELECT max(version) AS v FROM dacwatch_schema").fetchone()
            version = row["v"] if row else None
            if version is not None and version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.where} holds schema version {version}, newer than this dacwatch knows "
                    f"({SCHEMA_VERSION}): upgrade dacwatch on this host"
                )
            if version is not None and version < SCHEMA_VERSION:  # before SCHEMA: its indexes need new columns
                for v in range(max(version, 2) + 1, SCHEMA_VERSION + 1):  # PostgreSQL schemas began at 2
                    for statement in MIGRATIONS.get(v, []):
                        db.execute(statement)
                fill_output_keys(db)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if version is None:
                db.execute("INSERT INTO dacwatch_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                db.execute("UPDATE dacwatch_schema SET version = ?", (SCHEMA_VERSION,))

    def _require_schema(self) -> None:
        """For the commands that never create (status, retry): the daemon's tables must be there."""
        with self._tx() as db:
            row = db.execute(
                "SELECT to_regclass('dacwatch_schema') IS NOT NULL AND to_regclass('jobs') IS NOT NULL AS ok"
            ).fetchone()
        if not row["ok"]:
            self.close()
            raise QueueError(f"{self.where} holds no dacwatch queue yet (has a daemon run with this queue.url?)")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    def __enter__(self) -> PostgresQueue:
        return self

    def _now(self, db: Db) -> float:
        return float(db.execute("SELECT extract(epoch FROM clock_timestamp()) AS now").fetchone()["now"])

    def _serialize(self, db: Db) -> None:
        # Output names are claimed only here: an advisory lock held to the end of the
        # transaction makes claims one at a time without locking the table (a table lock
        # taken while leases hold row locks deadlocks with them).
        db.execute("SELECT pg_advisory_xact_lock(?)", (RESERVE_LOCK,))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Db]:
        psycopg = self._psycopg
        with self._lock:
            conn = self._connect()
            try:
                with conn.transaction():
                    yield _Translated(conn)
            except (
                psycopg.errors.SerializationFailure,
                psycopg.errors.DeadlockDetected,
                psycopg.errors.LockNotAvailable,
            ) as exc:  # the transaction was rolled back; the connection is fine
                raise QueueError(f"{self.where}: {' '.join(str(exc).split())}") from exc
            except psycopg.ProgrammingError:
                raise  # our SQL is wrong: a bug, not a fault of the moment
            except psycopg.Error as exc:
                # The connection broke (server restarted, network cut) or the server refused
                # (read-only after a failover, out of disk): made again next time, retried.
                self.close()
                raise QueueError(f"{self.where}: {' '.join(str(exc).split())}") from exc

    def _read(self) -> contextlib.AbstractContextManager[Db]:
        return self._tx()


__all__ = ["PostgresQueue", "redacted"]
