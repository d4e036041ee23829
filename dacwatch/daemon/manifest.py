"""The outbox as a BagIt bag (``output.manifest = true``): outputs go under ``outbox/data/``
and each one renamed into place is added to ``manifest-sha256.txt``, with ``bag-info.txt``'s
``Payload-Oxum`` brought along, so ``dacwatch scrub`` (or any BagIt tool) can later tell a
replaced or rolled-back output from the one the daemon wrote."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from dacwatch import bag
from dacwatch.faults import os_fault
from dacwatch.fsio import ensure_dir

LOCK = ".dacwatch-manifest.lock"  # a dotfile: no scan counts it, and it lies outside data/


def payload(outbox: Path) -> Path:
    """Where the outputs go in a bag outbox."""
    return outbox / bag.PAYLOAD


def start(outbox: Path) -> None:
    """Declare the outbox a bag (at startup): ``bagit.txt``, and an empty manifest and
    ``bag-info.txt`` where there are none yet."""
    ensure_dir(outbox)
    with _locked(outbox):
        bag.ensure_declaration(outbox)
        if not (outbox / bag.MANIFEST).is_file():
            bag.write_manifest_file(outbox, {})
            bag.write_bag_info(outbox, 0, 0)


def record(outbox: Path, output: Path) -> None:
    """Add ``output`` (just renamed into place under ``outbox/data/``) to the manifest, or
    replace its line (a file converted again). Several workers finish at once: the
    manifest is read, rewritten to a temporary file and renamed under a lock, so no
    worker's line is lost and a reader never sees half a manifest."""
    digest = bag.sha256_of(output)  # outside the lock: the output is ours alone now
    with _locked(outbox):
        entries = bag.read_manifest(outbox) if (outbox / bag.MANIFEST).is_file() else {}
        entries[bag.key_of(outbox, output)] = digest
        bag.write_manifest_file(outbox, entries)
        octets = files = 0
        for key in entries:
            try:
                octets += (outbox / key).stat().st_size
                files += 1
            except FileNotFoundError:
                pass  # removed since it was listed: scrub says so (manifest-missing)
        bag.write_bag_info(outbox, octets, files)


@contextlib.contextmanager
def _locked(outbox: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the outbox's lock file, for the body's length."""
    path = outbox / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise os_fault(exc, f"opening {path}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise os_fault(exc, f"locking {path}") from exc
        yield
    finally:
        os.close(fd)  # releases the lock
