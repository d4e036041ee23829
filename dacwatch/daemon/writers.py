"""Who holds a file open for writing: a walk of ``/proc``, as ``fuser`` does.

Only a local kernel can answer, and only for the processes this one may see:
under the hardened unit (``ProtectProc=invisible``, another user) most are
hidden, so a scan says whether it saw everything (``complete``). Where it did
not, the watcher relies on inotify's open/close events and, failing those, on
the settle time (watcher.py). Open files are matched by the path their
``/proc/PID/fd`` link names: reading a link never touches the file's own file
system, so a hung network mount elsewhere cannot hang the scan.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


@dataclass(frozen=True)
class WriterScan:
    """The files (of those asked about, by real path) another process holds open for writing."""

    writers: frozenset[str]
    complete: bool  # every process was visible and its open files readable


def _flags(fdinfo: str) -> int | None:
    try:
        with open(fdinfo) as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def scan_writers(targets: Iterable[str], proc: Path = Path("/proc")) -> WriterScan:
    """Which of ``targets`` (real paths) another process has open ``O_WRONLY``/``O_RDWR``."""
    wanted = set(targets)
    own = os.getpid()
    # ProtectProc=invisible hides other users' processes, pid 1 among them.
    complete = (proc / "1").is_dir()
    found: set[str] = set()
    try:
        entries = os.listdir(proc)
    except OSError:
        return WriterScan(frozenset(), False)
    for name in entries:
        if not name.isdigit() or int(name) == own or not wanted:
            continue
        fd_dir = f"{proc}/{name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except FileNotFoundError:
            continue  # the process ended
        except OSError:
            complete = False  # another user's process: its files are not ours to see
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target in wanted:
                flags = _flags(f"{proc}/{name}/fdinfo/{fd}")
                if flags is None or flags & _WRITE_FLAGS:  # unreadable flags: assume the worst
                    found.add(target)
    return WriterScan(frozenset(found), complete)
