"""The weights fingerprint of a file, remembered by the file's identity.

Hashing every tensor of a full-size network takes about a quarter of a second,
paid by every one-shot command before it converts anything. A weights file that
has not changed has the same fingerprint, so it is kept on disk under the file's
identity: device, inode, size, and modification and change times in
nanoseconds. Any write to the file, or a new file renamed over it (rsync, cp,
a download), changes the inode or the change time, which nobody can set back,
so a stale entry is never taken for the file it once described.

The cache is an optimisation only: an entry that cannot be read, does not
parse or describes another identity is ignored, and a folder that cannot be
written is left alone (the fingerprint is then computed each time, as before).
Entries are written whole, under a temporary name renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from dacwatch.codec.cachefiles import cache_root, write_whole

Identity = tuple[int, int, int, int, int]

_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")


def cache_dir() -> Path:
    """Where fingerprints are remembered: ``fingerprints/`` under dacwatch's cache folder."""
    return cache_root() / "fingerprints"


def identity(path: Path) -> Identity | None:
    """What changes whenever the file's bytes may have: None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _entry(path: Path, ident: Identity, folder: Path) -> Path:
    key = hashlib.sha256(os.fsencode(os.path.realpath(path)) + b"\0" + repr(ident).encode()).hexdigest()
    return folder / f"{key[:40]}.json"


def lookup(path: Path, ident: Identity, folder: Path | None = None) -> str | None:
    """The fingerprint recorded for ``path`` as it was at ``ident``, or None."""
    try:
        data = json.loads(_entry(path, ident, folder or cache_dir()).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("identity") != list(ident):
        return None
    value = data.get("fingerprint")
    return value if isinstance(value, str) and _FINGERPRINT.match(value) else None


def store(path: Path, ident: Identity, fingerprint: str, folder: Path | None = None) -> bool:
    """Record ``fingerprint`` for ``path`` at ``ident``; False if the folder cannot take it."""
    target = _entry(path, ident, folder or cache_dir())
    payload = json.dumps({"path": str(path), "identity": list(ident), "fingerprint": fingerprint}) + "\n"
    try:
        write_whole(target, payload)
    except OSError:
        return False
    return True
