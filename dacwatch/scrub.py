"""``dacwatch scrub``: is an archive of ``.dac`` files still whole, and still decodable here?

Each file, of any layout dacwatch reads, is checked in order, and every problem
found is reported once, with the check that found it:

- ``crc``: the zip's structure, and every entry's bytes against its CRC-32 (DAC
  1.0.0's ``.npy`` layout carries no checksum: nothing to compare);
- ``structure``: the metadata against its schema, the codes' shape and the
  lengths against the metadata (what :func:`dacwatch.formats.container.read` refuses);
- ``codes``: every code inside its codebook;
- ``weights``: the weights the file names are available on this host: the
  weights file of one's own that it names exists, or its release is in the
  weights cache or fetchable by name (an older layout names none: the model you
  name decodes it);
- ``decode`` (``--decode full`` or ``sample``): the file decodes, to finite audio
  of the recorded length (``sample``: three one-second excerpts, at the start,
  middle and end);
- in a BagIt bag (:mod:`dacwatch.bag`; a folder from the path up holds ``bagit.txt``
  and ``manifest-sha256.txt``), the files against the manifest: ``manifest-changed``
  (whole, yet not the file that was bagged: its SHA-256 differs), ``manifest-extra``
  (a ``.dac`` the manifest does not list), ``manifest-missing`` (listed, not there).
  A file that fails an earlier check is reported for that one alone.

Reads are block by block (bounded memory) and can be held to a rate
(``--max-read-mb-s``); nothing is ever modified or moved.
"""

from __future__ import annotations

import os
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dacwatch import bag
from dacwatch.errors import DacwatchError
from dacwatch.formats.container import ContainerError, DacFile, read

CHECKS = ("crc", "structure", "codes", "weights", "decode", "manifest-changed", "manifest-extra", "manifest-missing")
BLOCK = 1 << 20


@dataclass(frozen=True)
class Problem:
    path: str
    check: str
    detail: str


@dataclass
class Report:
    files: int = 0
    clean: int = 0
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "problem_files": len({p.path for p in self.problems})}


class RateLimit:
    """At most ``mb_per_s`` megabytes a second, averaged from the start (None: no limit)."""

    def __init__(
        self,
        mb_per_s: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.rate = None if mb_per_s is None else mb_per_s * 1e6
        self.clock, self.sleep = clock, sleep
        self.started = clock()
        self.total = 0

    def spend(self, nbytes: int) -> None:
        self.total += nbytes
        if self.rate:
            ahead = self.total / self.rate - (self.clock() - self.started)
            if ahead > 0:
                self.sleep(ahead)


def dac_files(paths: Iterable[Path]) -> Iterator[Path]:
    """``.dac`` files named, or found under folders named (sorted; dotfiles and our temp files skipped)."""
    for path in paths:
        if not path.is_dir():
            yield path
            continue
        for dirpath, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.lower().endswith(".dac") and not name.startswith("."):
                    yield Path(dirpath) / name


def check_crc(path: Path, limit: RateLimit) -> str | None:
    """Every zip entry's bytes against its CRC-32 (zipfile compares as the last block is
    read); None when they all match."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        return None  # DAC 1.0.0's .npy: no checksum to compare (read() judges its structure)
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as entry:
                    while block := entry.read(BLOCK):
                        limit.spend(len(block))
    except zipfile.BadZipFile as exc:
        return f"damaged bytes or zip structure ({exc})"
    except (EOFError, ValueError, zlib.error) as exc:
        return f"damaged zip structure ({exc})"
    return None


WeightsCheck = Callable[[DacFile], str | None]


def weights_here(cache_dir: Path | None, local: str | None = None) -> WeightsCheck:
    """A check that a file's weights are available on this host (None when they are):
    for weights of one's own, ``local`` is the fingerprint of those given (``--weights``);
    a release is available when it is in the cache or known by name (fetched on first use)."""
    from dacwatch.codec.model import ModelSpec, resolve_release, weights_path
    from dacwatch.errors import ModelUnavailableError

    def check(dac: DacFile) -> str | None:
        m = dac.metadata.model
        if dac.legacy is not None or not m.named:
            return None  # names no model: decoded with the one the user names
        if m.tag == "local":
            if local is not None and (m.weights is None or m.weights == local):
                return None
            given = "the weights given here are others" if local else "no weights file was given (--weights)"
            return (
                f"made with the weights file {m.weights_file or '(unnamed)'} ({m.weights or 'no fingerprint'}); {given}"
            )
        try:
            spec = ModelSpec(m.type, m.bitrate, m.tag)
            resolve_release(spec)
            weights_path(spec, cache_dir, download=False)
        except ModelUnavailableError as exc:
            if "no released DAC model" in str(exc):
                return str(exc)
            return None  # a known release, fetched on first use
        except ValueError as exc:
            return f"names an impossible model ({exc})"
        return None

    return check


Decoder = Callable[[DacFile, str], str | None]


def decoder(pool: Any) -> Decoder:
    """A check that decodes a file (``full``) or three one-second excerpts (``sample``)
    with ``pool`` (:class:`dacwatch.convert.CodecPool`) and looks at the audio."""
    from dacwatch.convert import decode_excerpt

    def check(dac: DacFile, how: str) -> str | None:
        meta = dac.metadata
        total = meta.model_length if dac.legacy is None else dac.frames * meta.model.hop_length
        second = max(1, meta.model.sample_rate)
        if how == "full" or total <= 3 * second:
            spans = [(0, total)]
        else:
            middle = total // 2 - second // 2
            spans = [(0, second), (middle, middle + second), (total - second, total)]
        for a, b in spans:
            audio = decode_excerpt(pool, dac, a, b)
            if audio.shape[-1] != b - a:
                return f"samples {a}..{b}: decoded {audio.shape[-1]} samples, the file records {b - a}"
            if not np.isfinite(audio).all():
                return f"samples {a}..{b}: the decoded audio is not finite"
        return None

    return check


def scrub(
    paths: Iterable[Path],
    weights: WeightsCheck | None = None,
    decode: tuple[Decoder, str] | None = None,
    max_read_mb_s: float | None = None,
    progress: Callable[[Path], None] | None = None,
) -> Report:
    """Check every ``.dac`` file under ``paths``; nothing is modified."""
    paths = list(paths)
    report = Report()
    limit = RateLimit(max_read_mb_s)
    manifests = Manifests(paths, limit)
    for path in dac_files(paths):
        report.files += 1
        found = check_file(path, limit, weights, decode)
        found = manifests.check(path, found)
        report.problems += found
        report.clean += not found
        if progress is not None:
            progress(path)
    report.problems += manifests.missing()
    report.bytes_read = limit.total
    return report


class Manifests:
    """The manifests of the bags that the files under ``paths`` lie in, and what was seen
    of each: every listed file is accounted for once, by its own check or as missing."""

    def __init__(self, paths: list[Path], limit: RateLimit) -> None:
        self.scope = [p.absolute() for p in paths]
        self.limit = limit
        self.roots: dict[Path, Path | None] = {}  # a file's folder -> its bag's root
        self.entries: dict[Path, dict[str, str]] = {}  # a bag's root -> its manifest
        self.seen: dict[Path, set[str]] = {}
        for p in paths:
            self._root(p.absolute() if p.is_dir() else p.absolute().parent)

    def _root(self, folder: Path) -> Path | None:
        if folder not in self.roots:
            root = self.roots[folder] = bag.find_root(folder)
            if root is not None and root not in self.entries:
                self.entries[root] = bag.read_manifest(root)
                self.seen[root] = set()
        return self.roots[folder]

    def check(self, path: Path, found: list[Problem]) -> list[Problem]:
        """``found`` (the file's other checks), else what the manifest says of ``path``."""
        root = self._root(path.absolute().parent)
        if root is None:
            return found
        key = bag.key_of(root, path)
        self.seen[root].add(key)
        if found:
            return found
        return self._against(root, key, path)

    def _against(self, root: Path, key: str, path: Path) -> list[Problem]:
        listed = self.entries[root].get(key)
        if listed is None:
            return [Problem(str(path), "manifest-extra", f"not listed in {root / bag.MANIFEST}")]
        try:
            now = bag.sha256_of(path, self.limit.spend)
        except OSError as exc:
            return [Problem(str(path), "structure", f"cannot be read ({exc.strerror or exc})")]
        if now != listed:
            return [
                Problem(
                    str(path),
                    "manifest-changed",
                    f"sha256 {now}, the manifest records {listed}: replaced or rolled back since it was bagged",
                )
            ]
        return []

    def missing(self) -> list[Problem]:
        """Listed files inside the paths scrubbed that no check saw: those not there are
        missing; any other (a file no ``.dac`` scan finds) is compared with its hash."""
        problems: list[Problem] = []
        for root, entries in self.entries.items():
            for key in sorted(set(entries) - self.seen[root]):
                path = root / key
                if not any(s == path or s in path.parents for s in self.scope):
                    continue
                if not path.is_file():
                    problems.append(Problem(str(path), "manifest-missing", f"listed in {root / bag.MANIFEST}"))
                else:
                    problems += self._against(root, key, path)
        return problems


def check_file(
    path: Path, limit: RateLimit, weights: WeightsCheck | None, decode: tuple[Decoder, str] | None
) -> list[Problem]:
    where = str(path)
    try:
        if (bad := check_crc(path, limit)) is not None:
            return [Problem(where, "crc", bad)]
        dac = read(path)
    except ContainerError as exc:
        return [Problem(where, "structure", " ".join(str(exc).split()))]
    except OSError as exc:
        return [Problem(where, "structure", f"cannot be read ({exc.strerror or exc})")]
    try:
        dac.check_codes()
    except ContainerError as exc:
        return [Problem(where, "codes", " ".join(str(exc).split()))]
    if weights is not None and (bad := weights(dac)) is not None:
        return [Problem(where, "weights", bad)]
    if decode is not None:
        check, how = decode
        try:
            bad = check(dac, how)
        except (DacwatchError, ValueError, OSError) as exc:
            bad = " ".join(str(exc).split()) or type(exc).__name__
        if bad is not None:
            return [Problem(where, "decode", bad)]
    return []


__all__ = ["CHECKS", "Problem", "RateLimit", "Report", "decoder", "scrub", "weights_here"]
