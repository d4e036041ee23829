"""Filesystem care: atomic outputs, file identity, paths that cannot escape their folder."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dacwatch import fsops
from dacwatch.errors import PermanentError
from dacwatch.faults import os_fault
from dacwatch.names import fit_path

TEMP_PREFIX = ".dacwatch-tmp-"


def fsync_dir(path: Path) -> None:
    fsops.fsync_path(path)


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (and parents) or raise a classified error naming it."""
    try:
        fsops.mkdir(path)
    except OSError as exc:
        raise os_fault(exc, f"cannot create {path}") from exc
    return path


def discard(path: Path) -> None:
    """Remove what we made at ``path`` after a failure, if it is there. Not a call of the
    seam: a cleanup is not work an injected fault should refuse (a full disk still
    unlinks), and a real failure leaves a temporary name, swept at startup."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def writer_tag() -> str:
    """Who writes a temporary file: this process on this host (``p<pid>@<host>``), so the
    next run into a folder can tell a dead writer's leftovers from a live one's."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
    return f"p{os.getpid()}@{host}"


def temp_beside(final: Path) -> Path:
    """A fresh temporary name in ``final``'s folder, for what becomes ``final``."""
    return temp_name(final, f"{writer_tag()}-{secrets.token_hex(6)}")


_WRITER = re.compile(r"p(\d+)@([0-9a-f]{6})-")


def sweep_dead_writers(folder: Path) -> list[Path]:
    """Remove, from ``folder`` alone, the temporary files that a process of this host left
    when it was killed (``kill -9`` of a one-shot ``encode``/``decode``): its tag names a
    process that no longer runs. Another host's files, and a live process's, are kept."""
    removed: list[Path] = []
    here = writer_tag().split("@")[1]
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        found = _WRITER.match(name[len(TEMP_PREFIX) :]) if name.startswith(TEMP_PREFIX) else None
        if found is None or found.group(2) != here or _alive(int(found.group(1))):
            continue
        with contextlib.suppress(OSError):
            (folder / name).unlink()
            removed.append(folder / name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def move_across(source: Path, target: Path) -> None:
    """Move the regular file ``source`` to ``target`` on another file system, durably:
    copy to a temporary name beside ``target``, fsync, link it to ``target`` (never
    clobbering), fsync the folder, and only then unlink ``source``. Any failure leaves
    ``source`` where it was and no copy under either name; errors come out classified."""
    tmp = temp_beside(target)
    try:
        fsops.copy(source, tmp)
        fsops.link(tmp, target)
    except OSError as exc:
        discard(tmp)
        raise os_fault(exc, f"copying {source} to {target}") from exc
    discard(tmp)
    try:
        fsync_dir(target.parent)
        fsops.unlink(source)
    except OSError as exc:
        discard(target)  # the source is still whole where it was: keep one copy only
        raise os_fault(exc, f"moving {source} to {target}") from exc
    with contextlib.suppress(OSError):
        fsync_dir(source.parent)


@contextlib.contextmanager
def atomic_output(
    final: Path, overwrite: bool = True, before_rename: Callable[[], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it becomes ``final`` whole.

    ``before_rename`` runs after the data is on disk and just before the rename;
    whatever it raises stops the rename (and the temporary file is removed).

    The temporary name is a dotfile with our prefix (the watcher ignores it
    and startup sweeps leftovers); data and folder are fsynced so a crash
    leaves either the old state or the complete file under the final name.
    Any error of the file system, in the body or here, comes out classified
    (:func:`dacwatch.faults.os_fault`) with the temporary file removed.
    """
    ensure_dir(final.parent)
    tmp = temp_beside(final)
    try:
        yield tmp
        fsops.fsync_path(tmp)
        if before_rename is not None:
            before_rename()
        if overwrite:
            fsops.replace(tmp, final)
        else:
            fsops.link(tmp, final)  # fails if final exists: never clobber
            discard(tmp)  # final is whole already; a leftover second name is swept at startup
        fsync_dir(final.parent)
    except OSError as exc:
        discard(tmp)
        if exc.errno == errno.EEXIST and not overwrite:
            raise PermanentError(f"{final} already exists") from exc
        raise os_fault(exc, f"writing {final}") from exc
    except BaseException:
        discard(tmp)
        raise


def temp_name(final: Path, tag: str) -> Path:
    """A name beside ``final`` that the watcher and the startup sweep know as ours
    (``TEMP_PREFIX``, then ``tag``), fitted to the folder's limit in bytes."""
    return fit_path(final.parent / f"{TEMP_PREFIX}{tag}-{final.name}")


def sweep_temp_files(root: Path, older_than_s: float = 0.0) -> list[Path]:
    """Remove temporary files a killed run left under ``root``; returns what was removed.

    On storage other hosts write to as well (a shared queue), a temporary file may be
    another host's output in the making: only those untouched for ``older_than_s``
    (the lease timeout: their writer's job has been taken over) are removed.
    """
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    if older_than_s:
        now = _storage_now(root, now)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    if older_than_s and now - p.stat().st_mtime < older_than_s:
                        continue
                    p.unlink()
                    removed.append(p)
    return removed


def _storage_now(root: Path, fallback: float) -> float:
    """The time by the clock that stamps files in ``root``: a network file system's server
    sets the mtimes, and this host's clock may run ahead of it (then a live host's fresh
    temporary file would look old)."""
    probe = root / f"{TEMP_PREFIX}clock-{secrets.token_hex(6)}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0")
        return probe.stat().st_mtime
    except OSError:
        return fallback
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def folds_case(folder: Path) -> bool:
    """Whether ``folder`` takes ``Talk.dac`` and ``talk.dac`` for one name (SMB, some NFS
    exports, macOS volumes, casefolded ext4): a probe file with a mixed-case name is made
    and its case-swapped name looked up. False when the probe cannot be made."""
    probe = folder / f"{TEMP_PREFIX}Case-{secrets.token_hex(4)}"
    try:
        with open(probe, "xb"):
            pass
    except OSError:
        return False
    try:
        return os.path.lexists(probe.with_name(probe.name.swapcase()))
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


@dataclass(frozen=True)
class Identity:
    """What makes a file the same file: a change in any part makes it a new job.

    ``regular`` only says whether the file can have writers at all; it is not
    part of the identity (nor stored in the queue)."""

    size: int
    mtime_ns: int
    inode: int
    regular: bool = field(default=True, compare=False)  # a FIFO or device is no file being written

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, stat.S_ISREG(st.st_mode))


def identity(path: Path) -> Identity:
    """The identity of what ``path`` names (a symlink's target: what is read and written)."""
    return Identity.of(os.stat(path))


def within(root: Path, path: Path) -> bool:
    """True if ``path`` (resolved) lies inside ``root`` (resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def mirror(source: Path, src_root: Path, dst_root: Path, suffix: str | None = None) -> Path:
    """``source``'s place under ``src_root``, mirrored under ``dst_root`` (optionally with a new suffix).

    Refuses anything whose relative path would climb out (``..``, absolute).
    """
    rel = Path(os.path.relpath(source, src_root))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise PermanentError(f"{source} is not inside {src_root}")
    target = dst_root / rel
    if suffix is not None:
        target = target.with_name(target.name + suffix) if not target.suffix else target.with_suffix(suffix)
        target = fit_path(target)  # a new suffix may not fit where the source's name did
    # A symlinked folder anywhere on the way (existing now) must not lead out.
    existing = target.parent
    while not existing.exists() and existing != dst_root and dst_root in existing.parents:
        existing = existing.parent
    if existing.exists() and not within(dst_root, existing):
        raise PermanentError(f"{target} would escape {dst_root}")
    return target
