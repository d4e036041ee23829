"""``dacwatch repack``: rewrite ``.dac`` files in another code format, exactly and atomically.

Each file is read, written beside itself under a temporary name, read back and
compared code for code with the original before it replaces it (fsync, rename,
fsync the folder: :func:`dacwatch.fsio.atomic_output`). A file that fails any
step is left exactly as it was. Older layouts (DAC 1.0.0, the seed script) name
no model, so they are reported and left alone: decode and re-encode them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dacwatch.errors import DacwatchError
from dacwatch.formats.container import CODE_FORMATS, ContainerError, read, write
from dacwatch.fsio import atomic_output
from dacwatch.scrub import dac_files


@dataclass
class Outcome:
    repacked: int = 0
    already: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def repack_file(path: Path, code_format: str) -> tuple[str, int, int]:
    """Rewrite ``path`` in ``code_format``; returns (what happened, bytes before, bytes after)."""
    dac = read(path)
    before = path.stat().st_size
    if dac.legacy is not None:
        return f"skipped: an older layout ({dac.legacy.kind}) names no model", before, before
    if dac.metadata.version == CODE_FORMATS[code_format]:
        return "already", before, before

    def same_codes() -> None:
        # Read back what is about to replace the file: every code equal, or nothing changes.
        again = read(tmp, mmap=False)
        for a in range(0, dac.frames, 1 << 16):
            if not np.array_equal(dac.codes[a : a + (1 << 16)], again.codes[a : a + (1 << 16)]):
                raise DacwatchError(f"{path}: the rewritten codes differ from the original at frames {a}..; kept")

    with atomic_output(path, overwrite=True, before_rename=same_codes) as tmp, open(tmp, "wb") as f:
        write(f, dac.metadata, dac.codes, code_format)  # read and written block by block
    return "repacked", before, path.stat().st_size


def repack_tree(paths: Iterable[Path], code_format: str, report: Callable[[str], None] = print) -> Outcome:
    outcome = Outcome()
    for path in dac_files(paths):
        try:
            what, before, after = repack_file(path, code_format)
        except (DacwatchError, ContainerError, OSError, ValueError) as exc:
            outcome.failed += 1
            report(f"failed: {path}: {' '.join(str(exc).split())}")
            continue
        outcome.bytes_before += before
        outcome.bytes_after += after
        if what == "repacked":
            outcome.repacked += 1
            report(f"repacked: {path}: {before} -> {after} bytes")
        elif what == "already":
            outcome.already += 1
        else:
            outcome.skipped += 1
            report(f"{what.split(':')[0]}: {path}: {what.split(': ', 1)[-1]}")
    return outcome
