"""Ignore rules and the debouncer, with an injected clock and probe: no sleeps."""

from __future__ import annotations

import os
from pathlib import Path

from dacwatch.daemon.watcher import Debouncer, IgnoreRules, Seen
from dacwatch.daemon.writers import WriterScan
from dacwatch.fsio import TEMP_PREFIX, Identity


class FakeFiles:
    def __init__(self) -> None:
        self.files: dict[Path, Identity] = {}
        self.now = 0.0

    def probe(self, path: Path) -> Identity | None:
        return self.files.get(path)

    def clock(self) -> float:
        return self.now

    def write(self, path: Path, size: int) -> None:
        self.files[path] = Identity(size, int(self.now * 1e9), 1)


def test_a_growing_file_is_taken_only_once_it_settles() -> None:
    fs = FakeFiles()
    d = Debouncer(settle_s=2.0, clock=fs.clock, probe=fs.probe, writers=None)
    p = Path("/in/a.wav")
    for step in range(10):  # written in pieces every second: never quiet for 2 s
        fs.now = step
        fs.write(p, 100 * (step + 1))
        d.seen(p)
        assert d.due() == []
    fs.now = 10.5
    assert d.due() == []
    fs.now = 11.0
    assert d.due() == [(p, fs.files[p])]
    assert d.due() == []  # taken once


def test_changes_seen_only_by_the_check_still_reset_the_timer() -> None:
    fs = FakeFiles()
    d = Debouncer(settle_s=2.0, clock=fs.clock, probe=fs.probe, writers=None)
    p = Path("/in/a.wav")
    fs.write(p, 1)
    d.seen(p)
    fs.now = 1.9
    fs.write(p, 2)  # no event for this write (lost, or polling)
    fs.now = 2.1
    assert d.due() == []  # judged at the moment of taking: changed, so wait again
    fs.now = 4.0
    assert d.due() == []
    fs.now = 4.2
    assert d.due() == [(p, fs.files[p])]


def test_closed_after_write_is_complete_at_once_if_unchanged() -> None:
    fs = FakeFiles()
    d = Debouncer(settle_s=60.0, clock=fs.clock, probe=fs.probe, writers=None)
    p = Path("/in/a.wav")
    fs.write(p, 5)
    for what in (Seen.OPENED, Seen.MODIFIED, Seen.CLOSED_WRITE):
        d.seen(p, what)
    fs.now = 0.5  # a moment of quiet, far less than settle_s
    assert d.due() == [(p, fs.files[p])]


def stalling_writer(d: Debouncer, fs: FakeFiles, p: Path) -> None:
    """curl from a server that stalls: opened, written, then silent for a long time."""
    fs.write(p, 3_500_000)
    for what in (Seen.OPENED, Seen.MODIFIED):
        d.seen(p, what)
    fs.now = 600.0  # ten minutes without a byte


def test_a_writer_that_stalls_is_never_taken_while_it_holds_the_file() -> None:
    fs = FakeFiles()
    d = Debouncer(settle_s=2.0, clock=fs.clock, probe=fs.probe, writers=None)
    p = Path("/in/talk.wav")
    stalling_writer(d, fs, p)
    assert d.due() == []  # settle_s passed long ago: the events say a writer is there
    fs.write(p, 3_840_000)
    d.seen(p, Seen.MODIFIED)
    d.seen(p, Seen.CLOSED_WRITE)
    fs.now = 601.0
    assert d.due() == [(p, fs.files[p])]


def test_an_empty_file_is_never_complete() -> None:
    fs = FakeFiles()
    d = Debouncer(settle_s=1.0, clock=fs.clock, probe=fs.probe, writers=lambda keys: WriterScan(frozenset(), True))
    p = Path("/in/rec.mp3")
    fs.write(p, 0)  # ffmpeg before its first flush
    d.seen(p, Seen.OPENED)
    d.seen(p, Seen.CLOSED_WRITE)
    fs.now = 3600.0
    assert d.due() == [] and len(d) == 1
    fs.write(p, 169_000)
    d.seen(p, Seen.MODIFIED)
    fs.now = 3601.0
    assert d.due() == []  # written, not closed since
    d.seen(p, Seen.CLOSED_WRITE)
    fs.now = 3602.0
    assert d.due() == [(p, fs.files[p])]


def test_readers_alone_fall_back_to_the_settle_time() -> None:
    fs = FakeFiles()
    d = Debouncer(settle_s=2.0, clock=fs.clock, probe=fs.probe, writers=None)
    p = Path("/in/a.wav")
    fs.write(p, 10)
    d.seen(p)  # found by the startup scan: no events yet
    d.seen(p, Seen.OPENED)  # someone reads it (or opened it to write, not written yet)
    fs.now = 1.0
    assert d.due() == []
    fs.now = 2.0
    assert d.due() == [(p, fs.files[p])]


def test_a_file_renamed_into_place_is_complete_at_once() -> None:
    fs = FakeFiles()
    d = Debouncer(settle_s=60.0, clock=fs.clock, probe=fs.probe, writers=None)
    p = Path("/in/a.wav")
    fs.write(p, 10)
    d.seen(p, Seen.MOVED_IN)
    fs.now = 0.5
    assert d.due() == [(p, fs.files[p])]


def fixed_scan(writers: set[str], complete: bool) -> object:
    def scan(keys: list[str]) -> WriterScan:
        return WriterScan(frozenset(k for k in keys if k in writers), complete)

    return scan


def test_the_writer_check_overrides_events_and_settling() -> None:
    fs = FakeFiles()
    p = Path("/in/talk.wav")
    held: set[str] = {"/in/talk.wav"}
    d = Debouncer(settle_s=2.0, clock=fs.clock, probe=fs.probe, writers=fixed_scan(held, False))  # type: ignore[arg-type]
    fs.write(p, 10)
    d.seen(p)  # no events (say, it was opened before the daemon started)
    fs.now = 100.0
    assert d.due() == []  # settled long ago, but a process has it open for writing
    held.clear()
    assert d.due() == []  # the last scan is reused for up to a second
    fs.now = 101.0
    assert d.due() == [(p, fs.files[p])]  # the scan could not see everyone: settle time rules


def test_a_complete_scan_with_no_writer_needs_no_settle_time() -> None:
    fs = FakeFiles()
    d = Debouncer(settle_s=60.0, clock=fs.clock, probe=fs.probe, writers=fixed_scan(set(), True))  # type: ignore[arg-type]
    p = Path("/in/a.wav")
    fs.write(p, 10)
    d.seen(p)
    fs.now = 0.2
    assert d.due() == []  # size and mtime must hold for a moment first
    fs.now = 0.6
    assert d.due() == [(p, fs.files[p])]


def test_vanished_files_are_forgotten() -> None:
    fs = FakeFiles()
    d = Debouncer(settle_s=1.0, clock=fs.clock, probe=fs.probe, writers=None)
    p = Path("/in/a.wav")
    fs.write(p, 5)
    d.seen(p)
    del fs.files[p]
    fs.now = 5
    assert d.due() == [] and len(d) == 0


def test_ignore_rules(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    (inbox / "out").mkdir(parents=True)
    rules = IgnoreRules(inbox, excluded=(inbox / "out",))
    assert rules.ignored(inbox / "a.wav") is None
    assert rules.ignored(inbox / "deep" / "b.flac") is None
    assert rules.ignored(inbox / "-rf ..wav") is None  # odd but legal names are candidates
    for name in (".hidden.wav", "a.wav.part", "a.tmp", "a.crdownload", "a.wav~", f"{TEMP_PREFIX}x.dac"):
        assert rules.ignored(inbox / name) is not None, name
    assert rules.ignored(inbox / ".sync" / "a.wav") is not None
    assert rules.ignored(inbox / "out" / "a.dac") is not None
    assert rules.ignored(tmp_path / "elsewhere.wav") is not None
    os.symlink("/etc/passwd", inbox / "passwd.wav")
    assert rules.ignored(inbox / "passwd.wav") == "symlink pointing outside the inbox"
    (inbox / "real.wav").write_bytes(b"x")
    os.symlink(inbox / "real.wav", inbox / "link.wav")
    assert rules.ignored(inbox / "link.wav") is None


def test_events_saying_a_writer_is_there_outrank_a_scan_that_sees_none() -> None:
    """A writer in another PID namespace, or the kernel's own, holds no descriptor this
    process can see: modified-and-not-closed still means being written."""
    fs = FakeFiles()
    d = Debouncer(settle_s=2.0, clock=fs.clock, probe=fs.probe, writers=fixed_scan(set(), True))  # type: ignore[arg-type]
    p = Path("/in/talk.wav")
    stalling_writer(d, fs, p)
    assert d.due() == []
    d.seen(p, Seen.CLOSED_WRITE)
    fs.now = 601.0
    assert d.due() == [(p, fs.files[p])]


def test_a_symlink_is_judged_by_the_file_it_names(tmp_path: Path) -> None:
    """inbox/latest.wav -> a recording still being written: not taken while its writer
    holds the target open (the real probe follows the link; the real scan finds it)."""
    import subprocess
    import sys

    from dacwatch.daemon.watcher import probe

    target = tmp_path / "raw" / "rec.wav"
    target.parent.mkdir()
    target.write_bytes(b"RIFF" + b"\0" * 100)
    link = tmp_path / "inbox" / "latest.wav"
    link.parent.mkdir()
    link.symlink_to(target)
    now = [0.0]
    d = Debouncer(settle_s=1.0, clock=lambda: now[0], probe=probe)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; f=open(sys.argv[1],'ab'); print(1, flush=True); time.sleep(60)",
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "1"
        d.seen(link)
        now[0] = 100.0
        assert d.due() == []  # the scan (this test runs as root, or sees its own child) finds the writer
    finally:
        writer.kill()
        writer.wait()
        assert writer.stdout is not None
        writer.stdout.close()
    now[0] = 200.0
    assert [p for p, _ in d.due()] == [link]
