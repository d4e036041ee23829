"""dacwatch's own cache folder, and the one way a file is written into it.

The caches under it (the weights fingerprints, the CPU decoder's kernel choices)
only ever save time: deleting them is safe, and a reader ignores what it cannot parse.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """``$CACHE_DIRECTORY`` under systemd (the unit's ``CacheDirectory=``), else
    ``${XDG_CACHE_HOME:-~/.cache}/dacwatch``. Fingerprints live in ``fingerprints/``
    below it, the decoder's kernel choices in ``kernels/``."""
    env = os.environ.get("CACHE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dacwatch"


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: a temporary name beside it, fsync, rename into
    place (making the folder if needed). Raises OSError, leaving no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
