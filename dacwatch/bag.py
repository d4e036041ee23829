"""An archive of ``.dac`` files as a BagIt bag (RFC 8493): ``bagit.txt``, ``bag-info.txt``
and ``manifest-sha256.txt`` at the root, the files themselves under ``data/``.

A CRC-32 inside each file catches bit rot; a SHA-256 kept apart from the files catches
what a CRC cannot: a file replaced by another whole one, or rolled back to an older
version. The manifest lists the ``.dac`` files only (as :func:`dacwatch.scrub.dac_files`
finds them); a bag that other BagIt tools are to validate keeps nothing else in ``data/``.

Names are bytes on Linux: a manifest line keeps a name's bytes (``surrogateescape``), and
encodes CR, LF and ``%`` as RFC 8493 says (``%0D``, ``%0A``, ``%25``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dacwatch.fsio import atomic_output

BAGIT_TXT = "bagit.txt"
MANIFEST = "manifest-sha256.txt"
BAG_INFO = "bag-info.txt"
PAYLOAD = "data"
BLOCK = 1 << 20
BAGIT_DECLARATION = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"

Spend = Callable[[int], object]  # told of every block read (a RateLimit's spend)


def sha256_of(path: Path, spend: Spend | None = None) -> str:
    """The file's SHA-256 (hex), read block by block (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
            if spend is not None:
                spend(len(block))
    return digest.hexdigest()


def find_root(path: Path) -> Path | None:
    """The bag ``path`` lies in (or is): the nearest folder, from ``path`` up, that holds
    ``bagit.txt`` and ``manifest-sha256.txt``. None when there is none."""
    here = path.absolute()
    for folder in ([here] if here.is_dir() else []) + list(here.parents):
        if (folder / BAGIT_TXT).is_file() and (folder / MANIFEST).is_file():
            return folder
    return None


def key_of(root: Path, path: Path) -> str:
    """``path``'s name in ``root``'s manifest: relative, ``/``-separated (``data/...``)."""
    return Path(os.path.relpath(path.absolute(), root)).as_posix()


def _encode(name: str) -> str:
    return name.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _decode(name: str) -> str:
    return name.replace("%0D", "\r").replace("%0A", "\n").replace("%0d", "\r").replace("%0a", "\n").replace("%25", "%")


def manifest_line(key: str, digest: str) -> str:
    return f"{digest}  {_encode(key)}\n"


def read_manifest(root: Path) -> dict[str, str]:
    """The manifest as ``{name: sha256}``."""
    entries: dict[str, str] = {}
    text = (root / MANIFEST).read_text(encoding="utf-8", errors="surrogateescape")
    for line in text.splitlines():
        if line.strip():
            digest, _, name = line.partition(" ")
            entries[_decode(name.lstrip(" *"))] = digest.lower()
    return entries


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (temporary file, fsync, rename)."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)


def write_manifest_file(root: Path, entries: dict[str, str]) -> None:
    write_text(root / MANIFEST, "".join(manifest_line(k, entries[k]) for k in sorted(entries)))


def write_bag_info(root: Path, octets: int, files: int, today: datetime.date | None = None) -> None:
    """``bag-info.txt``: the payload's size (``Payload-Oxum``, octets.files) and the date."""
    day = (today or datetime.date.today()).isoformat()
    write_text(root / BAG_INFO, f"Bagging-Date: {day}\nPayload-Oxum: {octets}.{files}\n")


def ensure_declaration(root: Path) -> None:
    if not (root / BAGIT_TXT).is_file():
        write_text(root / BAGIT_TXT, BAGIT_DECLARATION)


@dataclass(frozen=True)
class Written:
    files: int
    octets: int


def write_bag(root: Path, files: Iterable[Path], spend: Spend | None = None) -> Written:
    """Make ``root`` a bag of ``files`` (each under ``root/data/``): hash each, then write
    ``bagit.txt``, ``manifest-sha256.txt`` and ``bag-info.txt``, each atomically. The
    manifest is written last but one, so a bag is never declared over a partial list."""
    entries: dict[str, str] = {}
    octets = 0
    payload = (root / PAYLOAD).absolute()
    for path in files:
        if payload not in path.absolute().parents:
            raise ValueError(f"{path} is not under {payload}: a bag keeps its files in data/")
        entries[key_of(root, path)] = sha256_of(path, spend)
        octets += path.stat().st_size
    ensure_declaration(root)
    write_manifest_file(root, entries)
    write_bag_info(root, octets, len(entries))
    return Written(len(entries), octets)
