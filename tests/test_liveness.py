"""Liveness the watchdog can trust: progress is work done or waited for, never silence
by design. A healthy daemon is never reported hung (which stops systemd's watchdog and
restarts it mid-import), and a hung one still is (tests/test_queue_moves.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from dacwatch.daemon.service import Service
from dacwatch.daemon.watcher import IgnoreRules, Watcher
from dacwatch.daemon.worker import drop_output, output_identity
from dacwatch.fsio import Identity

from .conftest import settings_for
from .daemon import wav


def test_a_whole_file_pass_and_a_wait_in_the_gate_are_progress(tmp_path: Path, tiny_weights: Path) -> None:
    """Window 0: each file is one forward pass, reporting nothing while it runs, and with
    two files at once one waits behind the other's pass. Each pass is slowed to 0.5 s (a
    slow device), longer than a tenth of ``stall_timeout_s``, the bound between two
    blocks: before passes and waits counted as progress, this was 'looks hung'."""
    s = settings_for(
        tmp_path,
        tiny_weights,
        stall_timeout_s=1.5,
        codec={"devices": ["cpu"], "encode_window_s": 0.0, "jobs_per_device": 2},
    )
    service = Service(s)
    service.startup()

    def slow(*_: Any) -> None:
        time.sleep(0.5)

    service.workers[0].pool.codec().model.encoder.register_forward_pre_hook(slow)
    for i in range(4):
        wav(s.inbox / f"whole{i}.wav", seconds=2.0, rate=44100)
    problems: list[list[str]] = []
    loop = threading.Thread(target=service.loop)
    with capture_logs() as logs:
        loop.start()
        deadline = time.monotonic() + 90
        while sum(e["event"] == "job.done" for e in logs) < 4 and time.monotonic() < deadline:
            if found := service.problems():
                problems.append(found)
            time.sleep(0.02)
        service.stopping.set()
        loop.join(30)
    service.shutdown(10)
    events = [e["event"] for e in logs]
    assert events.count("job.done") == 4, events
    assert problems == [] and "service.unhealthy" not in events


class _Submissions:
    """The queue's side of the watcher, on a loaded disk: each submission takes a while."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.paths: list[Path] = []

    def __call__(self, path: Path, _ident: Identity) -> None:
        time.sleep(self.delay_s)
        self.paths.append(path)


@pytest.mark.slow
def test_the_watcher_beats_through_a_long_scan_and_a_long_submission(tmp_path: Path) -> None:
    """50,000 new files in 50 folders, each submission slowed to a fraction of a
    millisecond: the first scan, the debouncer's probes and the submissions take
    seconds, and the watcher's heartbeat never goes quiet for half a second (it beat
    only once per loop before, so this was a dead watcher for the whole import)."""
    inbox = tmp_path / "inbox"
    names = [inbox / f"d{i // 1000:02d}" / f"f{i:05d}.wav" for i in range(50_000)]
    for folder in {n.parent for n in names}:
        folder.mkdir(parents=True)
    for name in names:
        name.write_bytes(b"x")
    submit = _Submissions(delay_s=0.0001)
    watcher = Watcher(IgnoreRules(inbox), submit, settle_s=0.2, writer_check=False, reconcile_interval_s=3600)
    longest = 0.0
    watcher.start()
    try:
        deadline = time.monotonic() + 240
        while len(submit.paths) < len(names) and time.monotonic() < deadline:
            longest = max(longest, time.monotonic() - watcher.heartbeat)
            assert watcher.healthy(max_silence_s=30.0)
            time.sleep(0.01)
    finally:
        watcher.stop()
        watcher.join(30)
    assert len(submit.paths) == len(names)
    assert longest < 2.0, f"the watcher was silent for {longest:.2f} s"  # 11 s when it beat once a loop


def test_a_changed_sources_output_is_unlinked_only_if_it_is_still_ours(tmp_path: Path) -> None:
    """After the rename, a changed source makes the worker drop its output: only the file
    it wrote. A newer version's output renamed over the same name meanwhile (a lane or a
    host stalled between its rename and its check) is kept."""
    output = tmp_path / "talk.dac"
    output.write_bytes(b"v1 codes")
    mine = output_identity(output)
    newer = tmp_path / ".newer"
    newer.write_bytes(b"v2 codes, converted by another lane")
    os.replace(newer, output)
    assert drop_output(output, mine) is False
    assert output.read_bytes() == b"v2 codes, converted by another lane"
    assert drop_output(output, output_identity(output)) is True and not output.exists()
    assert drop_output(output, None) is False


def test_a_bug_met_submitting_one_file_never_stops_intake(tmp_path: Path, tiny_weights: Path) -> None:
    """Whatever goes wrong submitting one file is logged with its traceback; the watcher's
    thread (which calls this) carries on with the others."""
    s = settings_for(tmp_path, tiny_weights)
    service = Service(s)
    service.startup()
    try:
        ident = Identity(size=10, mtime_ns=1, inode=1)
        with capture_logs() as logs:
            service._submit(tmp_path / "not-in-the-inbox.wav", ident)  # a path the inbox does not hold
            service._submit(s.inbox.absolute() / "good.wav", ident)
        events = [e["event"] for e in logs]
        assert events == ["queue.submit_error", "job.queued"], events
    finally:
        service.shutdown(5)
