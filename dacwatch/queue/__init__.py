"""The job queue: one protocol (:mod:`.base`) with SQLite, and PostgreSQL (:mod:`.postgres`) for
many hosts; :func:`open_queue` picks one from the configuration."""

from __future__ import annotations

from pathlib import Path

from dacwatch.queue.base import LEASE_TIMEOUT_S, BaseQueue, default_node
from dacwatch.queue.sqlite import JobQueue

__all__ = ["BaseQueue", "JobQueue", "open_queue"]


def open_queue(
    state_db: Path,
    url: str | None = None,
    lease_timeout_s: float = LEASE_TIMEOUT_S,
    readonly: bool = False,
    existing: bool = False,
) -> tuple[BaseQueue, Path | None]:
    """The daemon's queue: PostgreSQL when ``url`` is set, else SQLite at ``state_db`` (a
    corrupted one moved aside and returned). ``readonly`` (``status``) or ``existing``
    (``retry``, which only changes rows): open the queue a daemon made, creating,
    migrating the schema of or rebuilding nothing, or say in one sentence why not."""
    existing = existing or readonly
    node = default_node(state_db.parent, keep=not existing)
    if url:
        from dacwatch.queue.postgres import PostgresQueue

        return PostgresQueue(url, node, lease_timeout_s, readonly=readonly, create=not existing), None
    if existing:
        return JobQueue.open_existing(state_db, readonly, node), None
    return JobQueue.open_or_rebuild(state_db, node, lease_timeout_s)
