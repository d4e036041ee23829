"""Ignore rules and the debouncer, with an injected clock and probe: no sleeps."""

from __future__ import annotations

import os
from pathlib import Path

from dacwatch.fsio import TEMP_PREFIX, Identity
from dacwatch.watcher import Debouncer, IgnoreRules


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
    d = Debouncer(settle_s=2.0, clock=fs.clock, probe=fs.probe)
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
    d = Debouncer(settle_s=2.0, clock=fs.clock, probe=fs.probe)
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
    d = Debouncer(settle_s=60.0, clock=fs.clock, probe=fs.probe)
    p = Path("/in/a.wav")
    fs.write(p, 5)
    d.seen(p)
    d.seen(p, closed=True)
    assert d.due() == [(p, fs.files[p])]


def test_vanished_files_are_forgotten() -> None:
    fs = FakeFiles()
    d = Debouncer(settle_s=1.0, clock=fs.clock, probe=fs.probe)
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
