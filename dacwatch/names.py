"""Names are bytes on Linux: a printable form for people, and the one rule that fits a
derived name into the file system's limit, counted in bytes.

Python gives a name that is not UTF-8 as a ``str`` holding lone surrogates
(``surrogateescape``): ``os.fsencode`` gives its bytes back exactly. Such a ``str``
cannot be stored as text (SQLite, PostgreSQL) nor written to a strict stream, so
the queue stores names as bytes, and logs, JSON notes and ``status`` show them
through :func:`printable`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

NAME_MAX = 255  # bytes in one name (Linux's limit; a folder's own limit, if lower, wins)
HASH_CHARS = 8  # hex digits of the full name's hash in a shortened name
MAX_SUFFIX_BYTES = 16  # a longer "suffix" (``a.<200 bytes>``) is part of the stem


def printable(name: str | os.PathLike[str] | bytes) -> str:
    """``name`` as text anyone can print: bytes that are not UTF-8 as ``\\xe9``. The same
    ``str`` for every name that is valid UTF-8 (the only helper for logs and JSON)."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    text = os.fspath(name)
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:  # a surrogate that no undecodable byte made: not a file name
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def name_max(folder: Path) -> int:
    """The longest name, in bytes, that ``folder`` (or its nearest existing parent) takes."""
    probe = folder
    while True:
        try:
            return min(NAME_MAX, os.pathconf(probe, "PC_NAME_MAX"))
        except (OSError, ValueError):
            if probe.parent == probe:
                return NAME_MAX
            probe = probe.parent


def fit(name: str, limit: int = NAME_MAX, suffix: str | None = None) -> str:
    """``name`` if it fits in ``limit`` bytes; else shortened by the one rule (README,
    "Output names"): the suffix kept (``suffix``, by default the last extension when it
    is short), the stem cut at a UTF-8 character boundary, and ``~`` and 8 hex digits of
    the SHA-256 of the whole name added before the suffix, so two long names that share
    their first bytes never become one."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    if suffix is None:
        ext = os.path.splitext(name)[1]
        suffix = ext if len(os.fsencode(ext)) <= MAX_SUFFIX_BYTES else ""
    tail = os.fsencode(suffix)
    stem = raw[: len(raw) - len(tail)] if tail else raw
    mark = b"~" + hashlib.sha256(raw).hexdigest()[:HASH_CHARS].encode()
    room = max(0, limit - len(mark) - len(tail))
    return os.fsdecode(_cut(stem, room) + mark + tail)


def fit_path(path: Path, suffix: str | None = None) -> Path:
    """``path`` with its last name :func:`fit` to its folder's limit."""
    name = fit(path.name, name_max(path.parent), suffix)
    return path if name == path.name else path.with_name(name)


def _cut(raw: bytes, room: int) -> bytes:
    """The first ``room`` bytes of ``raw``, less a UTF-8 character cut in half (bytes that
    are not UTF-8 are characters of their own)."""
    head = raw[:room]
    start = len(head)  # back over continuation bytes (10xxxxxx) to the last lead byte
    while start > 0 and len(head) - start < 3 and head[start - 1] & 0xC0 == 0x80:
        start -= 1
    if start > 0:
        lead = head[start - 1]
        need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 0
        if need > len(head) - (start - 1):
            return head[: start - 1]
    return head


def fold(name: str) -> str:
    """The form in which a case-insensitive folder compares names."""
    return name.casefold()


def output_candidates(first: Path, source_name: str, count: int = 100) -> list[Path]:
    """The output names a source may take, in order (README, "Output names"): ``talk.dac``
    for ``talk.wav``; if another source holds it, the whole source name, ``talk.wav.dac``,
    then ``talk.wav.1.dac``... Each fits its folder's limit. Shared by the daemon's claims
    and ``dacwatch encode|decode`` on a folder."""
    names = [first.name, f"{source_name}{first.suffix}"]
    names += [f"{source_name}.{i}{first.suffix}" for i in range(1, count)]
    limit = name_max(first.parent)
    # dict: each name once, in order (``talk`` without a suffix: talk.dac is both first names)
    return [first.with_name(n) for n in dict.fromkeys(fit(n, limit) for n in names)]
