"""The /proc writer check against real processes holding real files."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dacwatch.daemon.writers import scan_writers

HOLD = "import sys, time; f = open(sys.argv[1], sys.argv[2]); print('open', flush=True); time.sleep(60)"


@pytest.fixture
def holder() -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def hold(path: Path, mode: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_process_writing_the_file_is_found_and_a_reader_is_not(tmp_path: Path, holder: object) -> None:
    written, read, idle = tmp_path / "w.wav", tmp_path / "r.wav", tmp_path / "i.wav"
    for p in (written, read, idle):
        p.write_bytes(b"x")
    keys = {p: os.path.realpath(p) for p in (written, read, idle)}
    writer = holder(written, "ab")  # type: ignore[operator]
    holder(read, "rb")  # type: ignore[operator]
    scan = scan_writers(keys.values())
    assert scan.writers == {keys[written]}
    if os.geteuid() == 0:
        assert scan.complete  # root sees every process
    writer.kill()
    writer.wait()
    assert scan_writers(keys.values()).writers == frozenset()


def test_read_write_opens_count_as_writers(tmp_path: Path, holder: object) -> None:
    p = tmp_path / "rw.wav"
    p.write_bytes(b"x")
    holder(p, "r+b")  # type: ignore[operator]
    assert scan_writers([os.path.realpath(p)]).writers == {os.path.realpath(p)}


def test_this_process_is_never_its_own_writer(tmp_path: Path) -> None:
    p = tmp_path / "own.wav"
    with open(p, "wb") as f:
        f.write(b"x")
        f.flush()
        assert scan_writers([os.path.realpath(p)]).writers == frozenset()


def test_a_hidden_process_table_is_incomplete(tmp_path: Path) -> None:
    """ProtectProc=invisible hides other users' processes, pid 1 among them."""
    proc = tmp_path / "proc"
    (proc / str(os.getpid() + 1) / "fd").mkdir(parents=True)
    (proc / "self").mkdir()
    assert not scan_writers(["/x.wav"], proc).complete
    (proc / "1" / "fd").mkdir(parents=True)
    assert scan_writers(["/x.wav"], proc).complete
