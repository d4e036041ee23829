"""The durable queue on a real SQLite file: identity, transitions, recovery, corruption."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from dacwatch.fsio import Identity
from dacwatch.queue import JobQueue, Status

A = Identity(size=10, mtime_ns=1, inode=5)
A2 = Identity(size=11, mtime_ns=2, inode=5)


def test_same_file_is_one_job_and_a_changed_file_is_a_new_one(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "q.db") as q:
        assert q.submit("a.wav", A) is True
        assert q.submit("a.wav", A) is False
        assert q.submit("a.wav", A2) is True  # new content: the old queued version is dropped
        jobs = q.jobs()
        assert [j.identity for j in jobs] == [A2]
        job = q.lease("w")
        assert job is not None and job.status is Status.RUNNING and job.attempts == 1
        q.complete(job.id, "out/a.dac")
        assert q.submit("a.wav", A2) is False  # finished: never converted again
    with JobQueue(tmp_path / "q.db") as q:  # and that survives a restart
        assert q.submit("a.wav", A2) is False
        assert q.counts() == {"queued": 0, "running": 0, "done": 1, "failed": 0}


def test_crash_recovery_and_shutdown_requeue(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with JobQueue(path) as q:
        q.submit("a.wav", A)
        q.submit("b.wav", Identity(1, 1, 1))
        a = q.lease("w")
        b = q.lease("w")
        assert a and b
        q.requeue(b.id)  # shutdown: the attempt does not count
        assert q.get(b.id).attempts == 0  # type: ignore[union-attr]
    with JobQueue(path) as q:  # a "crash" left a running
        assert q.recover() == 1
        job = q.get(a.id)
        assert job is not None and job.status is Status.QUEUED and job.attempts == 1


def test_backoff_hides_a_job_until_due(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "q.db") as q:
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


def test_concurrent_leases_never_share_a_job(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "q.db") as q:
        for i in range(200):
            q.submit(f"{i}.wav", Identity(i, i, i))
        taken: list[int] = []
        lock = threading.Lock()

        def take() -> None:
            while (job := q.lease(threading.current_thread().name)) is not None:
                with lock:
                    taken.append(job.id)

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(taken) == sorted(set(taken)) and len(taken) == 200


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
        with JobQueue.open_readonly(tmp_path / "q.db") as ro:
            report = ro.report()
        assert report["counts"]["running"] == 1 and report["running"][0]["path"] == "a.wav"


def test_a_retried_job_waits_behind_earlier_jobs_and_ahead_of_later_ones(tmp_path: Path) -> None:
    import time

    with JobQueue(tmp_path / "q.db") as q:
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


def test_an_output_name_stays_held_across_a_crash(tmp_path: Path) -> None:
    """talk.wav wrote talk.dac and the process died before recording it: after the
    restart talk.flac must not claim talk.dac (talk.wav's codes would be lost)."""
    with JobQueue(tmp_path / "q.db") as q:
        q.submit("talk.wav", Identity(1, 1, 1))
        q.submit("talk.flac", Identity(2, 2, 2))
        wav_job = q.lease("w")
        assert wav_job is not None
        assert q.reserve_output(wav_job.id, "talk.wav", ["out/talk.dac", "out/talk.wav.dac"]) == "out/talk.dac"
    with JobQueue(tmp_path / "q.db") as q:  # restarted; two workers lease both jobs at once
        assert q.recover() == 1
        again, flac = q.lease("w1"), q.lease("w2")
        assert again is not None and again.path == "talk.wav" and again.output == "out/talk.dac"
        assert flac is not None and flac.path == "talk.flac"
        # talk.flac's worker claims first: talk.dac is still talk.wav's.
        assert q.reserve_output(flac.id, "talk.flac", ["out/talk.dac", "out/talk.flac.dac"]) == "out/talk.flac.dac"
        assert q.reserve_output(again.id, "talk.wav", ["out/talk.dac", "out/talk.wav.dac"]) == "out/talk.dac"
