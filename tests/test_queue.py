"""The durable queue, on both backends: a real SQLite file and a real PostgreSQL server
(started by the tests): identity, transitions, recovery, leases, corruption."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dacwatch.fsio import Identity
from dacwatch.queue.base import CRASHED, BaseQueue, Status
from dacwatch.queue.sqlite import JobQueue

from .pg import V2_POSTGRES_SCHEMA

A = Identity(size=10, mtime_ns=1, inode=5)
A2 = Identity(size=11, mtime_ns=2, inode=5)
Opener = Callable[..., BaseQueue]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_q(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the same queue again (a restart, another thread's connection); ``node`` and
    ``lease_timeout_s`` as a daemon passes them."""
    if request.param == "sqlite":
        return lambda node="n1", lease_timeout_s=120.0: JobQueue(
            tmp_path / "q.db", node=node, lease_timeout_s=lease_timeout_s
        )
    from dacwatch.queue.postgres import PostgresQueue

    url = request.getfixturevalue("pg_url")
    return lambda node="n1", lease_timeout_s=120.0: PostgresQueue(url, node, lease_timeout_s)


def test_same_file_is_one_job_and_a_changed_file_is_a_new_one(open_q: Opener) -> None:
    with open_q() as q:
        assert q.submit("a.wav", A) is True
        assert q.submit("a.wav", A) is False
        assert q.submit("a.wav", A2) is True  # new content: the old queued version is dropped
        jobs = q.jobs()
        assert [j.identity for j in jobs] == [q.version(A2)]
        job = q.lease("w")
        assert job is not None and job.status is Status.RUNNING and job.attempts == 1
        q.complete(job.id, "out/a.dac")
        assert q.submit("a.wav", A2) is False  # finished: never converted again
    with open_q() as q:  # and that survives a restart
        assert q.submit("a.wav", A2) is False
        assert q.counts() == {"queued": 0, "running": 0, "done": 1, "failed": 0}


def test_crash_recovery_and_shutdown_requeue(open_q: Opener) -> None:
    with open_q() as q:
        q.submit("a.wav", A)
        q.submit("b.wav", Identity(1, 1, 1))
        a = q.lease("w")
        b = q.lease("w")
        assert a and b
        q.requeue(b.id)  # shutdown: the attempt does not count
        assert q.get(b.id).attempts == 0  # type: ignore[union-attr]
    with open_q() as q:  # a "crash" left a running
        assert q.recover() == 1
        job = q.get(a.id)
        assert job is not None and job.status is Status.QUEUED and job.attempts == 1


def test_backoff_hides_a_job_until_due(open_q: Opener) -> None:
    with open_q() as q:
        q.submit("a.wav", A)
        job = q.lease("w")
        assert job
        q.retry_later(job.id, "disk full", delay_s=3600)
        assert q.lease("w") is None
        q.retry_later(job.id, "disk full", delay_s=0)
        again = q.lease("w")
        assert again and again.attempts == 2 and again.last_error == "disk full"
        q.fail(again.id, "bad")
        assert q.retry_failed("other.wav") == 0
        assert q.retry_failed("a.wav") == 1
        assert q.get(job.id).attempts == 0  # type: ignore[union-attr]


def test_concurrent_leases_never_share_a_job(open_q: Opener) -> None:
    with open_q() as q:
        for i in range(200):
            q.submit(f"{i}.wav", Identity(i, i, i))
        taken: list[int] = []
        lock = threading.Lock()

        claimed: list[str] = []

        def take() -> None:  # a connection of its own, as another worker or host has
            with open_q(node=threading.current_thread().name) as mine:
                while (job := mine.lease("w")) is not None:
                    # Two sources want each name (0.wav and 100.wav want out/0.dac...).
                    n = int(job.path.split(".")[0])
                    wanted = [f"out/{n % 100}.dac", f"out/{n}.wav.dac"]
                    name = mine.reserve_output(job.id, job.path, wanted, lease=job.lease)
                    assert mine.complete(job.id, name, lease=job.lease)
                    with lock:
                        taken.append(job.id)
                        claimed.append(name)

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(taken) == sorted(set(taken)) and len(taken) == 200
        assert len(set(claimed)) == 200 and q.counts()["done"] == 200  # no name claimed twice


def test_corrupted_database_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with JobQueue(path) as q:
        q.submit("a.wav", A)
    path.write_bytes(b"SQLite format 3\0" + b"\xff" * 8192)
    with pytest.raises(sqlite3.DatabaseError):
        JobQueue(path)
    q, aside = JobQueue.open_or_rebuild(path)
    with q:
        assert aside is not None and aside.exists()
        assert q.counts()["queued"] == 0 and q.submit("a.wav", A)


def test_status_reader_sees_a_live_database(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "q.db") as q:
        q.submit("a.wav", A)
        job = q.lease("cpu")
        assert job
        with JobQueue.open_existing(tmp_path / "q.db") as ro:
            report = ro.report()
        assert report["counts"]["running"] == 1 and report["running"][0]["path"] == "a.wav"


def test_a_retried_job_waits_behind_earlier_jobs_and_ahead_of_later_ones(open_q: Opener) -> None:
    import time

    with open_q() as q:
        q.submit("old.wav", Identity(1, 1, 1))
        q.submit("retried.wav", Identity(2, 2, 2))
        old = q.lease("w")
        assert old is not None and old.path == "old.wav"
        q.retry_later(old.id, "out of memory", 0.0, counted=False)  # sent back: due now
        time.sleep(0.01)
        q.submit("later.wav", Identity(3, 3, 3))  # arrives after the retry was due
        order = []
        while (job := q.lease("w")) is not None:
            order.append((job.path, job.attempts))
            q.complete(job.id, f"out/{job.path}")
        assert order == [("retried.wav", 1), ("old.wav", 1), ("later.wav", 1)]


def test_an_output_name_stays_held_across_a_crash(open_q: Opener) -> None:
    """talk.wav wrote talk.dac and the process died before recording it: after the
    restart talk.flac must not claim talk.dac (talk.wav's codes would be lost)."""
    with open_q() as q:
        q.submit("talk.wav", Identity(1, 1, 1))
        q.submit("talk.flac", Identity(2, 2, 2))
        wav_job = q.lease("w")
        assert wav_job is not None
        assert q.reserve_output(wav_job.id, "talk.wav", ["out/talk.dac", "out/talk.wav.dac"]) == "out/talk.dac"
    with open_q() as q:  # restarted; two workers lease both jobs at once
        assert q.recover() == 1
        again, flac = q.lease("w1"), q.lease("w2")
        assert again is not None and again.path == "talk.wav" and again.output == "out/talk.dac"
        assert flac is not None and flac.path == "talk.flac"
        # talk.flac's worker claims first: talk.dac is still talk.wav's.
        assert q.reserve_output(flac.id, "talk.flac", ["out/talk.dac", "out/talk.flac.dac"]) == "out/talk.flac.dac"
        assert q.reserve_output(again.id, "talk.wav", ["out/talk.dac", "out/talk.wav.dac"]) == "out/talk.dac"


def test_a_silent_nodes_job_is_taken_over_and_its_old_lease_changes_nothing(pg_url: str) -> None:
    """Node 1 leases a job and stops beating (died, or cut off); after the lease timeout
    node 2 takes it over, as after a crash. Node 1, back, can neither finish nor requeue
    it, and knows it no longer holds it (so it never renames its output into place)."""
    from dacwatch.queue.postgres import PostgresQueue

    with PostgresQueue(pg_url, "n1", 1.5) as one, PostgresQueue(pg_url, "n2", 1.5) as two:
        one.submit("a.wav", A)
        first = one.lease("w")
        assert first is not None and first.lease and one.holds(first.id, first.lease)
        assert two.lease("w") is None  # alive: not due to anyone else
        time.sleep(1.0)
        one.beat([first.lease])
        time.sleep(1.0)  # 2 s since the lease, 1 s since the beat
        assert two.lease("w") is None  # the beat kept it
        time.sleep(1.0)  # 2 s since the beat
        second = two.lease("w")
        assert second is not None and second.id == first.id and second.lease != first.lease
        assert second.attempts == 2 and second.last_error == CRASHED and two.takeovers == 1
        assert not one.holds(first.id, first.lease)
        assert one.complete(first.id, "out/a.dac", lease=first.lease) is False
        assert one.requeue(first.id, lease=first.lease) is False
        assert one.get(first.id).status is Status.RUNNING  # type: ignore[union-attr]
        assert two.complete(second.id, "out/a.dac", lease=second.lease) is True
        assert two.get(first.id).status is Status.DONE  # type: ignore[union-attr]


def test_one_host_never_takes_over_its_own_running_jobs(tmp_path: Path) -> None:
    """SQLite is one host: a job stays its worker's however long it runs (a clock stepped
    by NTP must not hand it to another lane); recovery at boot is what frees it."""
    with JobQueue(tmp_path / "q.db") as one, JobQueue(tmp_path / "q.db", lease_timeout_s=0.0) as other:
        one.submit("a.wav", A)
        job = one.lease("w1")
        assert job is not None
        time.sleep(0.05)
        assert other.lease("w2") is None and one.holds(job.id, job.lease)


def test_a_lease_recovered_at_boot_is_void(open_q: Opener) -> None:
    with open_q() as q:
        q.submit("a.wav", A)
        job = q.lease("w")
        assert job is not None
        assert q.recover() == 1  # the daemon restarted
        assert q.complete(job.id, "out/a.dac", lease=job.lease) is False  # the old worker's word is void
        again = q.lease("w")
        assert again is not None and again.id == job.id and q.complete(again.id, "out/a.dac", lease=again.lease)


def test_many_connections_submitting_one_file_queue_it_once(open_q: Opener) -> None:
    """Every daemon on a shared inbox sees every file: it is queued once."""
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def submit(i: int) -> None:
        with open_q(node=f"n{i}") as q:
            barrier.wait()
            for n in range(50):
                added = q.submit(f"{n}.wav", Identity(n + 1, n, 7))
                with lock:
                    results.append(added)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 50
    with open_q() as q:
        assert q.counts()["queued"] == 50


def test_postgres_versions_leave_out_the_inode(pg_url: str) -> None:
    """On NFS each client may see another inode for one file: the shared queue keys a
    version by path, size and mtime."""
    from dacwatch.queue.postgres import PostgresQueue

    with PostgresQueue(pg_url, "n1") as one, PostgresQueue(pg_url, "n2") as two:
        assert one.submit("a.wav", Identity(10, 1, 5)) is True
        assert two.submit("a.wav", Identity(10, 1, 999)) is False  # same file, seen from elsewhere
        job = two.lease("w")
        assert job is not None and job.identity == two.version(Identity(10, 1, 12345))


def test_recovery_at_boot_takes_back_only_this_nodes_jobs(pg_url: str) -> None:
    from dacwatch.queue.postgres import PostgresQueue

    with PostgresQueue(pg_url, "n1") as one, PostgresQueue(pg_url, "n2") as two:
        one.submit("a.wav", Identity(1, 1, 0))
        one.submit("b.wav", Identity(2, 2, 0))
        assert one.lease("w") is not None and two.lease("w") is not None
        assert one.recover() == 1  # n1 restarted: its job is queued again, n2's stays n2's
        assert one.counts() == {"queued": 1, "running": 1, "done": 0, "failed": 0}


def test_an_unreachable_server_is_a_clear_error(pg_server: Any) -> None:
    from dacwatch.queue.base import QueueError
    from dacwatch.queue.postgres import PostgresQueue

    from .pg import free_port

    url = f"postgresql://dacwatch:secret@127.0.0.1:{free_port()}/archive"
    with pytest.raises(QueueError) as caught:
        PostgresQueue(url, "n1", connect_timeout_s=2)
    message = str(caught.value)
    assert "cannot be reached" in message and "secret" not in message and "127.0.0.1" in message


def test_the_database_restarting_loses_nothing(pg_server: Any, pg_url: str) -> None:
    """The server restarts under an open queue: the next call fails as a QueueError (which
    every caller retries), the one after reconnects, and every job is still there."""
    from dacwatch.queue.base import QueueError
    from dacwatch.queue.postgres import PostgresQueue

    with PostgresQueue(pg_url, "n1") as q:
        q.submit("a.wav", A)
        job = q.lease("w")
        assert job is not None
        pg_server.restart()
        with pytest.raises(QueueError):
            q.counts()
        assert q.complete(job.id, "out/a.dac", lease=job.lease) is True
        assert q.counts() == {"queued": 0, "running": 0, "done": 1, "failed": 0}


def test_an_older_sqlite_database_is_migrated(tmp_path: Path) -> None:
    """A queue made by the previous version (no lease columns) opens, keeps its jobs and
    takes leases."""
    path = tmp_path / "q.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL, "
        "mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL "
        "DEFAULT 0, last_error TEXT, output TEXT, worker TEXT, not_before REAL NOT NULL DEFAULT 0, "
        "created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL, finished_at REAL, "
        "UNIQUE (path, size, mtime_ns, inode));"
        "INSERT INTO jobs (path, size, mtime_ns, inode, status, created_at, updated_at) "
        "VALUES ('a.wav', 10, 1, 5, 'queued', 0, 0);"
    )
    old.close()
    with JobQueue(path) as q:
        job = q.lease("w")
        assert job is not None and job.path == "a.wav" and job.lease and q.holds(job.id, job.lease)
        assert q.complete(job.id, "out/a.dac", lease=job.lease)
        q.submit("b.wav", A)
        other = q.lease("w")
        assert other is not None and q.fail(other.id, "bad", lease=other.lease, quarantined="b.1.wav")
        assert q.jobs(Status.FAILED)[0].quarantined == "b.1.wav"  # the column added by version 3


def test_a_version_2_postgres_schema_gains_the_quarantine_column(pg_url: str) -> None:
    import psycopg

    from dacwatch.queue.postgres import PostgresQueue

    with psycopg.connect(pg_url, autocommit=True) as conn:  # the schema version 2 made
        conn.execute(V2_POSTGRES_SCHEMA)
    with PostgresQueue(pg_url, "n1") as q:
        q.submit("x.wav", A)
        job = q.lease("w")
        assert job is not None and q.fail(job.id, "bad", lease=job.lease, quarantined="x.1.wav")
        assert q.jobs(Status.FAILED)[0].quarantined == "x.1.wav"
        assert q.retry_failed(ids=[job.id]) == 1 and q.jobs(Status.QUEUED)[0].quarantined is None
