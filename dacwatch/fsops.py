"""The one seam between the conversion path and the file system.

Every call the conversion path makes on a file or folder (open, read, write, fsync,
rename, replace, link, unlink, mkdir, copy) is one of the functions here, so that a
test can make any of them fail, the way SQLite's tests fail each call of its VFS.

Test hook: ``DACWATCH_FAULT`` holds rules separated by ``;``, each
``<call>:<errno>:<once|always>[:<path-substring>]``, for example
``write:ENOSPC:once`` or ``replace:EIO:always:/outbox/talk``. A rule makes the
named call raise ``OSError(errno)`` before doing anything, when one of the paths
it is given contains the substring (any path without one); ``once`` fails the
first such call of the process only. Like ``DACWATCH_CRASH_AT``, it is read from
the environment of a real daemon; nothing sets it in production.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

FAULT_ENV = "DACWATCH_FAULT"
CALLS = ("open", "read", "write", "fsync", "rename", "replace", "link", "unlink", "mkdir", "copy")

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------- injected faults


@dataclass
class Rule:
    call: str
    errno: int
    always: bool
    substring: str = ""
    fired: bool = False

    @classmethod
    def parse(cls, text: str) -> Rule:
        parts = text.strip().split(":", 3)
        if len(parts) < 3 or parts[0] not in CALLS or parts[2] not in ("once", "always"):
            raise ValueError(
                f"{FAULT_ENV} rule {text!r} is not <call>:<errno>:<once|always>[:<path-substring>] "
                f"with a call among {', '.join(CALLS)}"
            )
        code = int(parts[1]) if parts[1].isdigit() else getattr(errno, parts[1], None)
        if not isinstance(code, int):
            raise ValueError(f"{FAULT_ENV} rule {text!r}: unknown errno {parts[1]!r}")
        return cls(parts[0], code, parts[2] == "always", parts[3] if len(parts) > 3 else "")


_lock = threading.Lock()
_parsed: tuple[str, list[Rule]] = ("", [])


def rules() -> list[Rule]:
    """The rules in ``$DACWATCH_FAULT`` (parsed again only when it changes)."""
    global _parsed
    spec = os.environ.get(FAULT_ENV, "")
    with _lock:
        if spec != _parsed[0]:
            _parsed = (spec, [Rule.parse(r) for r in spec.split(";") if r.strip()])
        return _parsed[1]


def inject(call: str, *paths: PathLike | int) -> None:
    """Raise the error a rule names for ``call`` on ``paths``, if one does."""
    if not os.environ.get(FAULT_ENV):
        return
    names = [p if isinstance(p, str) else os.fsdecode(p) for p in paths if not isinstance(p, int)]
    for rule in rules():
        if rule.call != call or not any(rule.substring in name for name in names or [""]):
            continue
        with _lock:
            if rule.fired and not rule.always:
                continue
            rule.fired = True
        raise OSError(rule.errno, os.strerror(rule.errno), names[0] if names else None)


# ---------------------------------------------------------------------- files


class _File(io.FileIO):
    """A raw file whose reads and writes pass the seam; ``where`` names it for rules."""

    def __init__(self, file: PathLike | int, mode: str, where: PathLike) -> None:
        super().__init__(file, mode)
        self.where = os.fsdecode(where)

    def read(self, size: int | None = -1) -> bytes:
        inject("read", self.where)
        return super().read(size)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        inject("read", self.where)
        return super().readinto(buffer)

    def readall(self) -> bytes:
        inject("read", self.where)
        return super().readall()

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        inject("write", self.where)
        return super().write(data)


def open_read(path: PathLike) -> BinaryIO:
    """``path`` opened for buffered reading."""
    inject("open", path)
    return io.BufferedReader(_File(path, "rb", path))


def open_write(path: PathLike) -> BinaryIO:
    """``path`` created (or truncated) for buffered writing; seekable (zip, WAV headers)."""
    inject("open", path)
    return io.BufferedRandom(_File(path, "w+b", path))


def temporary(directory: PathLike) -> IO[bytes]:
    """An unnamed file in ``directory`` (gone when closed, or when the process dies)."""
    inject("open", directory)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".dacwatch-tmp-spill-")
    try:
        os.unlink(name)
        return io.BufferedRandom(_File(fd, "r+b", name))
    except BaseException:
        os.close(fd)
        raise


def fsync(f: IO[bytes]) -> None:
    """Flush ``f`` and force it to disk."""
    f.flush()
    raw = getattr(f, "raw", f)
    inject("fsync", getattr(raw, "where", ""))
    os.fsync(f.fileno())


def fsync_path(path: PathLike) -> None:
    """Force the file or folder at ``path`` to disk."""
    inject("fsync", path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- names


def rename(source: PathLike, target: PathLike) -> None:
    inject("rename", source, target)
    os.rename(source, target)


def replace(source: PathLike, target: PathLike) -> None:
    inject("replace", source, target)
    os.replace(source, target)


def link(source: PathLike, target: PathLike) -> None:
    """A second name for ``source``; fails (EEXIST) rather than replace ``target``."""
    inject("link", source, target)
    os.link(source, target)


def unlink(path: PathLike) -> None:
    inject("unlink", path)
    os.unlink(path)


def mkdir(path: PathLike) -> None:
    """``path`` and its parents, made where missing."""
    inject("mkdir", path)
    Path(path).mkdir(parents=True, exist_ok=True)


def copy(source: PathLike, target: PathLike) -> None:
    """``source``'s bytes into a new ``target``, forced to disk before this returns."""
    inject("copy", source, target)
    with open_read(source) as src, open_write(target) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        fsync(dst)


__all__ = [
    "CALLS",
    "FAULT_ENV",
    "Rule",
    "copy",
    "fsync",
    "fsync_path",
    "inject",
    "link",
    "mkdir",
    "open_read",
    "open_write",
    "rename",
    "replace",
    "rules",
    "temporary",
    "unlink",
]
