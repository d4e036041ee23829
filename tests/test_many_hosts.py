"""Many daemons, one inbox, one PostgreSQL queue (issue 15): separate processes with
separate state folders, as separate hosts would be, against a real server the tests
start. Every file is converted exactly once; a daemon killed mid-job has its job taken
over after the lease timeout and finished once; the database restarting mid-run loses,
duplicates and quarantines nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dacwatch.formats.container import read
from dacwatch.fsio import TEMP_PREFIX
from dacwatch.queue.postgres import PostgresQueue

from .daemon import Daemon, wav

# 16 heartbeats of 0.5 s: a loaded CI machine once delayed a beat past a 4 s lease, and the
# host's other lane took its own running job over (attempts 3 instead of 2).
LEASE_TIMEOUT_S = 8.0


def fleet(tmp_path: Path, weights: Path, url: str, count: int, **overrides: Any) -> list[Daemon]:
    shared = {name: str(tmp_path / "shared" / name) for name in ("inbox", "outbox", "done", "failed")}
    (tmp_path / "shared" / "inbox").mkdir(parents=True, exist_ok=True)
    daemons = []
    for i in range(count):
        d = Daemon(
            tmp_path / f"host{i}",
            weights,
            **shared,
            queue__url=url,
            queue__lease_timeout_s=LEASE_TIMEOUT_S,
            queue__heartbeat_s=0.5,
            **overrides,
        )
        d.inbox, d.outbox = Path(shared["inbox"]), Path(shared["outbox"])
        d.done, d.failed = Path(shared["done"]), Path(shared["failed"])
        daemons.append(d)
    return daemons


def all_events(daemons: list[Daemon], name: str) -> list[dict[str, Any]]:
    return [e for d in daemons for e in d.events(name)]


def test_three_daemons_convert_300_files_once_through_a_database_restart(
    tmp_path: Path, tiny_weights: Path, pg_server: Any, pg_url: str
) -> None:
    daemons = fleet(tmp_path, tiny_weights, pg_url, 3, codec__jobs_per_device=1)
    try:
        for d in daemons:
            d.start()
        for d in daemons:
            d.ready()
        staging = tmp_path / "staging"
        for i in range(300):
            wav(staging / f"f{i:03d}.wav", seconds=0.1)
        inbox = daemons[0].inbox
        for p in sorted(staging.iterdir()):
            os.rename(p, inbox / p.name)
        daemons[0].wait_for(lambda: len(all_events(daemons, "job.done")) >= 60, 180, "60 files done")
        pg_server.restart()  # mid-run: every daemon's next queue call fails, then reconnects
        daemons[0].wait_for(lambda: len(all_events(daemons, "job.done")) >= 300, 300, "300 files done")
        time.sleep(2.0)  # any duplicate would show up now
        done = all_events(daemons, "job.done")
        sources = [e["source"] for e in done]
        assert len(done) == 300 and len(set(sources)) == 300
        assert sum(1 for d in daemons if d.events("job.done")) >= 2  # the work was shared
        assert len(list(daemons[0].outbox.glob("*.dac"))) == 300 and not list(inbox.glob("*.wav"))
        assert not list(daemons[0].failed.rglob("*")) and not all_events(daemons, "job.failed")
        assert all_events(daemons, "queue.unavailable")  # the restart was seen, and outlived
        with PostgresQueue(pg_url, "check") as q:
            assert q.counts() == {"queued": 0, "running": 0, "done": 300, "failed": 0}
        for d in daemons:
            assert d.stop() == 0
    finally:
        for d in daemons:
            d.close()


def test_a_killed_daemons_job_is_taken_over_and_finished_once(tmp_path: Path, tiny_weights: Path, pg_url: str) -> None:
    first, second = fleet(tmp_path, tiny_weights, pg_url, 2, codec__encode_window_s=0.2)
    try:
        first.start(notify=True).ready()
        wav(first.inbox / "long.wav", seconds=20.0, rate=44100, channels=2)
        first.wait_for(lambda: any("converting long.wav" in m for m in first.messages()), what="long.wav running")
        second.start().ready()
        # `dacwatch status` on the other host shows this host's running job, from the queue.
        status = subprocess.run(
            [sys.executable, "-m", "dacwatch", "status", "--config", str(second.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        node = f"{socket.gethostname()}:{(first.state / 'node-id').read_text().strip()}"
        assert status.returncode == 0 and f"running: long.wav on {node}, cpu" in status.stdout, status.stdout
        first.kill()  # mid-job: its lease stops beating
        killed_at = time.monotonic()
        done = second.wait_event("job.done", timeout=180)
        taken_after = time.monotonic() - killed_at
        assert taken_after >= LEASE_TIMEOUT_S - 1.0  # not before the lease ran out
        assert [Path(e["source"]).name for e in done] == ["long.wav"] and done[0]["attempts"] == 2
        assert read(second.outbox / "long.dac").metadata.length == 20 * 44100
        with PostgresQueue(pg_url, "check") as q:
            jobs = q.jobs()
            assert len(jobs) == 1 and jobs[0].status.value == "done" and q.counts()["running"] == 0
        first.start().ready()  # back: nothing of its own to recover, nothing converted again
        time.sleep(1.0)
        assert first.stop(signal.SIGTERM) == 0 and second.stop() == 0
        assert not [p for p in (tmp_path / "shared").rglob("*") if p.name.startswith(TEMP_PREFIX)]
        assert len(all_events([first, second], "job.done")) == 1
    finally:
        first.close()
        second.close()


def test_startup_on_shared_storage_sweeps_only_dead_writers_temp_files(tmp_path: Path) -> None:
    """A temporary file in a shared outbox may be another host's output in the making:
    a host starting up removes only those untouched for the lease timeout."""
    from dacwatch.fsio import sweep_temp_files

    live = tmp_path / f"{TEMP_PREFIX}aaaa-talk.dac"
    dead = tmp_path / "sub" / f"{TEMP_PREFIX}bbbb-old.dac"
    dead.parent.mkdir()
    live.write_bytes(b"being written")
    dead.write_bytes(b"left by a killed host")
    old = time.time() - 2 * LEASE_TIMEOUT_S
    os.utime(dead, (old, old))
    assert sweep_temp_files(tmp_path, older_than_s=LEASE_TIMEOUT_S) == [dead]
    assert live.exists() and not dead.exists()
    assert sweep_temp_files(tmp_path) == [live]  # one host alone: every leftover is its own
