"""The ``.dac`` file: format 1, and readers for the two older layouts.

Format 1 is an uncompressed ``.npz`` (a zip of stored ``.npy`` entries) that
``numpy.load(path, allow_pickle=False)`` reads:

- ``codes``: int16 ``[frames, codebooks, channels]``, C order. Time comes
  first, so an excerpt is one contiguous byte range, and the entry is stored
  uncompressed, so it is memory-mapped straight out of the zip.
- ``metadata``: JSON text as a numpy unicode scalar (never an object array).

Older files come through one restricted unpickler that builds only plain
containers, numbers, strings and numpy arrays; any other global in the pickle
is refused before anything runs. This module knows numpy and the standard
library only.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal

import numpy as np

from dacwatch import __version__
from dacwatch.errors import PermanentError
from dacwatch.faults import os_fault
from dacwatch.formats.packing import PackedCodes, Packing, pack

FORMAT_NAME = "dacwatch"
FORMAT_VERSION = 2  # written by default: codes bit-packed (dacwatch.formats.packing)
FORMAT_VERSIONS = (1, 2)  # read: 1 stores codes as int16
CODE_FORMATS = {"packed": 2, "int16": 1}  # output.code_format / --code-format -> format version
CODES_ENTRY = "codes.npy"
METADATA_ENTRY = "metadata.npy"
MAX_METADATA_BYTES = 1 << 20  # metadata is a few hundred bytes; anything huge is hostile
MAX_LEGACY_BYTES = 1 << 30
CHILD_TIMEOUT_S = 60.0  # for reading one older file's pickle in a throwaway process
SEED_NORMALIZED_LUFS = -16.0  # DAC 1.0.0 files are read whole, as DAC does; refuse bombs


class ContainerError(PermanentError):
    """A ``.dac`` file that cannot be read; the message names the file and the fault."""


LOCAL_TAG = "local"  # the tag of a network loaded from a weights file of one's own


@dataclass(frozen=True)
class ModelRecord:
    """Which network made the codes, and its geometry.

    ``tag`` is a release's tag, ``"local"`` for a weights file of one's own
    (``weights_file`` names it), or empty for an older file that names no model
    (its type and bitrate are then only a guess from the codebook count, or
    ``"unknown"``, and the sample rate and hop 0 when there is no guess).
    ``weights`` is the fingerprint of the exact weights (``model.fingerprint``);
    files written before it was recorded have none.
    """

    type: str
    bitrate: str
    tag: str
    sample_rate: int
    hop_length: int
    codebook_size: int
    n_codebooks: int  # codebooks stored in the file (may be fewer than the model has)
    model_codebooks: int  # codebooks the model has
    weights: str | None = None
    weights_file: str | None = None

    @property
    def named(self) -> bool:
        """Whether the file says which model made it."""
        return bool(self.tag)

    def describe(self) -> str:
        if not self.named:
            return "an unnamed model"
        if self.tag == LOCAL_TAG:
            return f"the weights file {self.weights_file or '(unnamed)'}"
        return f"DAC {self.type} {self.bitrate} tag {self.tag}"


@dataclass(frozen=True)
class Metadata:
    """What a ``.dac`` file says about its audio. Lengths in samples, loudness in LUFS."""

    model: ModelRecord
    sample_rate: int  # of the original audio
    length: int  # samples of the original audio, per channel
    channels: int
    model_length: int  # samples at the model's rate before padding to the hop
    loudness: float | None  # integrated loudness of the input; None for silence or too short
    gain_db: float  # gain applied before encoding; decoding applies the opposite
    dacwatch_version: str = __version__
    packing: Packing | None = None  # format 2: how the codes are bit-packed; None: format 1 (int16)
    quality: dict[str, Any] | None = None  # dacwatch.codec.quality's figures, when measured at encode time

    @property
    def version(self) -> int:
        return 1 if self.packing is None else 2

    @property
    def duration_s(self) -> float:
        return self.length / self.sample_rate if self.sample_rate else 0.0

    def to_json(self) -> str:
        body = {"format": FORMAT_NAME, "version": self.version, **asdict(self)}
        for optional in ("packing", "quality"):
            if body[optional] is None:
                del body[optional]
        return json.dumps(body, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str, where: str) -> Metadata:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContainerError(f"{where}: metadata is not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise ContainerError(f"{where}: metadata is not a JSON object")
        if raw.get("format") != FORMAT_NAME:
            raise ContainerError(f"{where}: not a {FORMAT_NAME} file (format {raw.get('format')!r})")
        version = raw.get("version")
        if version not in FORMAT_VERSIONS or isinstance(version, bool):
            raise ContainerError(
                f"{where}: format version {version!r} is not one this dacwatch ({__version__}) reads "
                f"(it reads versions {', '.join(map(str, FORMAT_VERSIONS))})"
            )
        if (version == 2) != ("packing" in raw):
            raise ContainerError(f"{where}: format version {version} {'needs' if version == 2 else 'has no'} packing")
        try:
            model = ModelRecord(**raw["model"])
            packing = Packing(**raw["packing"]) if version == 2 else None
            meta = cls(
                model=model,
                sample_rate=raw["sample_rate"],
                length=raw["length"],
                channels=raw["channels"],
                model_length=raw["model_length"],
                loudness=raw["loudness"],
                gain_db=raw["gain_db"],
                dacwatch_version=raw.get("dacwatch_version", "unknown"),
                packing=packing,
                quality=raw.get("quality"),
            )
        except (KeyError, TypeError) as exc:
            raise ContainerError(f"{where}: metadata is missing or has a wrong field ({exc})") from exc
        meta.validate(where)
        return meta

    def validate(self, where: str) -> None:
        """Refuse metadata no real encoding could have produced."""
        m = self.model

        def positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
                raise ContainerError(
                    f"{where}: {name} must be a {'non-negative' if allow_zero else 'positive'} integer, not {value!r}"
                )

        for name in ("sample_rate", "hop_length", "codebook_size", "n_codebooks", "model_codebooks"):
            positive_int(f"model.{name}", getattr(m, name))
        positive_int("sample_rate", self.sample_rate)
        positive_int("channels", self.channels)
        positive_int("length", self.length, allow_zero=True)
        positive_int("model_length", self.model_length, allow_zero=True)
        if m.n_codebooks > m.model_codebooks:
            raise ContainerError(f"{where}: {m.n_codebooks} codebooks stored but the model has {m.model_codebooks}")
        for name in ("weights", "weights_file"):
            value = getattr(m, name)
            if value is not None and not (isinstance(value, str) and 0 < len(value) <= 4096):
                raise ContainerError(f"{where}: model.{name} must be a short string or null, not {value!r}")
        if not m.named:
            raise ContainerError(f"{where}: the metadata names no model (model.tag is empty)")
        if m.codebook_size > np.iinfo(np.int16).max + 1:
            raise ContainerError(f"{where}: codebook size {m.codebook_size} does not fit int16 codes")
        if self.loudness is not None and not (isinstance(self.loudness, (int, float)) and math.isfinite(self.loudness)):
            raise ContainerError(f"{where}: loudness must be a finite number or null")
        if not (isinstance(self.gain_db, (int, float)) and math.isfinite(self.gain_db)):
            raise ContainerError(f"{where}: gain_db must be a finite number")
        if self.quality is not None and not (
            isinstance(self.quality, dict)
            and all(
                isinstance(k, str) and (v is None or isinstance(v, (str, int, float))) for k, v in self.quality.items()
            )
        ):
            raise ContainerError(f"{where}: quality must be an object of plain values")
        if self.packing is not None:
            p = self.packing
            if any(isinstance(v, bool) or not isinstance(v, int) for v in (p.bits, p.group_frames, p.frames)):
                raise ContainerError(f"{where}: packing must hold integers, not {p}")
            if p.frames != self.expected_frames():
                raise ContainerError(
                    f"{where}: packing holds {p.frames} frames, the length needs {self.expected_frames()}"
                )
            try:
                p.check(m.codebook_size, m.n_codebooks, self.channels, where)
            except ValueError as exc:
                raise ContainerError(str(exc)) from exc

    def check_lengths(self, where: str) -> None:
        """The original length must be the duration the codes hold (a forged length would
        have a decoder pad terabytes of silence)."""
        coded = self.model_length / self.model.sample_rate
        claimed = self.length / self.sample_rate
        if abs(claimed - coded) > max(1.0, 0.01 * coded):
            raise ContainerError(f"{where}: claims {claimed:.3f} s of audio but its codes hold {coded:.3f} s; refusing")

    def expected_frames(self) -> int:
        return -(-self.model_length // self.model.hop_length)


@dataclass(frozen=True)
class LegacyLayout:
    """How an older file must be decoded: DAC 1.0.0 decodes in its own chunks."""

    kind: str  # "dac-1.0.0" or "seed"
    chunk_length: int | None = None  # frames per chunk (DAC 1.0.0)
    padding: bool = True  # layer padding DAC 1.0.0 used for those chunks
    input_db: tuple[float, ...] = ()  # DAC 1.0.0's loudness per signal, restored as it does
    derived_length: bool = True  # model_length is frames x hop (the file does not say)


@dataclass
class DacFile:
    """An opened ``.dac`` file. ``codes`` is ``[frames, codebooks, channels]``: a memmap for
    format 1, a :class:`PackedCodes` view of a memmap for format 2 (slices unpack only their groups)."""

    metadata: Metadata
    codes: np.ndarray | PackedCodes
    legacy: LegacyLayout | None = None
    path: Path | None = None

    @property
    def frames(self) -> int:
        return int(self.codes.shape[0])

    def bind(self, model: ModelRecord) -> DacFile:
        """This file read as made by ``model`` (for an older file that names none)."""
        length = self.metadata.model_length
        if self.legacy is not None and self.legacy.derived_length:
            length = self.frames * model.hop_length
        return replace(self, metadata=replace(self.metadata, model=model, model_length=length))

    def iter_code_blocks(self, frames: int = 1 << 16) -> Iterator[np.ndarray]:
        for i in range(0, self.frames, frames):
            yield np.asarray(self.codes[i : i + frames])

    def check_codes(self) -> None:
        """Scan every code (block by block) for values outside the codebook."""
        size = self.metadata.model.codebook_size
        for block in self.iter_code_blocks():
            if block.size and (int(block.min()) < 0 or int(block.max()) >= size):
                raise ContainerError(
                    f"{self.path or 'file'}: codes out of range {int(block.min())}..{int(block.max())} "
                    f"for a codebook of {size}"
                )


# ---------------------------------------------------------------------- writing


class CodeSpill:
    """Code blocks appended as they come, kept in an unnamed temporary file so
    memory does not grow with the recording's length."""

    def __init__(
        self,
        n_codebooks: int,
        channels: int,
        directory: str | os.PathLike[str] | None = None,
        file: IO[bytes] | None = None,
    ) -> None:
        """``file``: the unnamed file to spill into (owned from here on); by default a new
        one in ``directory``."""
        self.n_codebooks = n_codebooks
        self.channels = channels
        self.frames = 0
        self._file: IO[bytes] = file if file is not None else tempfile.TemporaryFile(dir=directory)  # noqa: SIM115

    def append(self, block: np.ndarray) -> None:
        if block.ndim != 3 or block.shape[1:] != (self.n_codebooks, self.channels):
            raise ValueError(f"expected codes [n, {self.n_codebooks}, {self.channels}], got {block.shape}")
        self._file.write(np.ascontiguousarray(block, dtype="<i2").tobytes())
        self.frames += block.shape[0]

    def array(self) -> np.ndarray:
        """Everything appended so far, ``[frames, codebooks, channels]``, memory-mapped."""
        self._file.flush()
        shape = (self.frames, self.n_codebooks, self.channels)
        if self.frames == 0:
            return np.zeros(shape, dtype=np.int16)
        return np.memmap(self._file, dtype="<i2", mode="r", shape=shape)

    def blocks(self, frames: int = 1 << 16) -> Iterator[np.ndarray]:
        """The codes appended, in order, ``frames`` at a time ``[n, codebooks, channels]``."""
        self._file.seek(0)
        size = frames * self.n_codebooks * self.channels * 2
        while chunk := self._file.read(size):
            yield np.frombuffer(chunk, dtype="<i2").reshape(-1, self.n_codebooks, self.channels)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CodeSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write(
    out: BinaryIO, metadata: Metadata, codes: np.ndarray | PackedCodes | CodeSpill, code_format: str = "packed"
) -> Metadata:
    """Write a ``.dac`` file to the binary file object ``out``: format 2 (``packed``, the
    codec's own bitrate) or format 1 (``int16``). Returns the metadata as written."""
    if code_format not in CODE_FORMATS:
        raise ValueError(f"code format must be one of {', '.join(CODE_FORMATS)}, not {code_format!r}")
    shape: tuple[int, ...]
    if isinstance(codes, CodeSpill):
        shape = (codes.frames, codes.n_codebooks, codes.channels)
    else:
        if codes.ndim != 3:
            raise ValueError("codes must be [frames, codebooks, channels]")
        shape = tuple(int(s) for s in codes.shape)
    if (
        shape[0] != metadata.expected_frames()
        or shape[1] != metadata.model.n_codebooks
        or shape[2] != metadata.channels
    ):
        raise ValueError(f"codes {shape} disagree with the metadata")
    packing = None
    if CODE_FORMATS[code_format] == 2:
        packing = Packing.for_codes(metadata.model.codebook_size, shape[1], shape[2], shape[0])
    metadata = replace(metadata, packing=packing)
    metadata.validate("metadata to write")
    blocks = codes.blocks() if isinstance(codes, CodeSpill) else _blocks_of(codes)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open(METADATA_ENTRY, "w") as entry:
            np.lib.format.write_array(entry, np.array(metadata.to_json()), allow_pickle=False)
        with zf.open(CODES_ENTRY, "w", force_zip64=True) as entry:
            if packing is None:
                np.lib.format.write_array_header_1_0(entry, {"descr": "<i2", "fortran_order": False, "shape": shape})
                for block in blocks:
                    entry.write(np.ascontiguousarray(block, dtype="<i2").tobytes())
            else:
                rows = (packing.groups, packing.group_bytes)
                np.lib.format.write_array_header_1_0(entry, {"descr": "|u1", "fortran_order": False, "shape": rows})
                for block in _regrouped(blocks, packing.group_frames):
                    entry.write(pack(block, packing).tobytes())
    return metadata


BLOCK_FRAMES = 1 << 16  # codes are written and scanned this many frames at a time


def _blocks_of(codes: np.ndarray | PackedCodes) -> Iterator[np.ndarray]:
    for i in range(0, codes.shape[0], BLOCK_FRAMES):
        yield np.asarray(codes[i : i + BLOCK_FRAMES])


def _regrouped(blocks: Iterator[np.ndarray], group: int) -> Iterator[np.ndarray]:
    """The same frames in blocks of a whole number of groups (the last may be short)."""
    held: np.ndarray | None = None
    for block in blocks:
        held = block if held is None else np.concatenate([held, block])
        whole = held.shape[0] - held.shape[0] % group
        if whole:
            yield held[:whole]
            held = held[whole:]
    if held is not None and held.shape[0]:
        yield held


# ---------------------------------------------------------------------- reading


Opener = Callable[[Path], BinaryIO]


def _open_rb(path: Path) -> BinaryIO:
    return open(path, "rb")


def read(path: str | os.PathLike[str], mmap: bool = True, opener: Opener = _open_rb) -> DacFile:
    """Open a ``.dac`` file of any supported layout. Format 1 codes are memory-mapped.

    ``opener`` opens the file for reading (the daemon passes its file system seam). An
    error of the system while reading (EACCES, EIO...) is no fault of the file's: it
    comes out classified by :func:`dacwatch.faults.os_fault`, never as ContainerError."""
    path = Path(path)
    try:
        return _read(path, mmap, opener)
    except OSError as exc:
        raise os_fault(exc, f"{path}: cannot be read") from exc


def _read(path: Path, mmap: bool, opener: Opener) -> DacFile:
    where = str(path)
    with opener(path) as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        return _legacy(_read_dac_1_0_0, path)
    if magic[:4] != b"PK\x03\x04":
        raise ContainerError(f"{where}: not a .dac file (neither a zip container nor a DAC 1.0.0 .npy)")
    try:
        with opener(path) as raw, zipfile.ZipFile(raw) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            if CODES_ENTRY not in infos:
                raise ContainerError(f"{where}: has no '{CODES_ENTRY}' entry")
            if METADATA_ENTRY not in infos:
                raise ContainerError(f"{where}: has no '{METADATA_ENTRY}' entry")
            meta_info = infos[METADATA_ENTRY]
            if meta_info.file_size > MAX_METADATA_BYTES:
                raise ContainerError(f"{where}: metadata entry is {meta_info.file_size} bytes; refusing")
            meta_bytes = _read_entry(zf, meta_info, MAX_METADATA_BYTES, where)
            codes_info = infos[CODES_ENTRY]
    except zipfile.BadZipFile as exc:
        raise ContainerError(f"{where}: truncated or not a zip file ({exc})") from exc

    meta_array = _npy_from_bytes(meta_bytes, where, METADATA_ENTRY)
    if isinstance(meta_array, _PickledNpy):
        return _legacy(lambda p: _read_seed(p, meta_array, codes_info), path)
    if meta_array.dtype.kind != "U" or meta_array.ndim != 0:
        raise ContainerError(f"{where}: metadata must be a unicode scalar, found {meta_array.dtype} {meta_array.shape}")
    metadata = Metadata.from_json(str(meta_array[()]), where)
    codes: np.ndarray | PackedCodes
    if metadata.packing is None:
        codes = _open_codes(path, codes_info, mmap, where, dtype=np.dtype("<i2"), opener=opener)
    else:
        p, m = metadata.packing, metadata.model
        rows = _open_codes(path, codes_info, mmap, where, dtype=np.dtype("u1"), rank=2, opener=opener)
        if rows.shape != (p.groups, p.group_bytes):
            raise ContainerError(
                f"{where}: packed codes are {rows.shape}, the packing needs {(p.groups, p.group_bytes)}"
            )
        codes = PackedCodes(rows, p, m.n_codebooks, metadata.channels)
    _check_shape(codes, metadata, where)
    metadata.check_lengths(where)
    return DacFile(metadata=metadata, codes=codes, path=path)


def _legacy(reader: Any, path: Path) -> DacFile:
    """An older layout's reader: whatever its unpickled values make fail (an array where
    a string was expected, say) is the file's fault, not ours."""
    try:
        dac: DacFile = reader(path)
    except ContainerError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise ContainerError(f"{path}: not a valid older .dac file ({type(exc).__name__}: {exc})") from exc
    if dac.frames == 0:
        raise ContainerError(f"{path}: holds no codes")
    return dac


def _check_shape(codes: np.ndarray | PackedCodes, metadata: Metadata, where: str) -> None:
    if codes.ndim != 3:
        raise ContainerError(f"{where}: codes must have rank 3 [frames, codebooks, channels], found rank {codes.ndim}")
    frames, nq, channels = codes.shape
    if nq != metadata.model.n_codebooks:
        raise ContainerError(f"{where}: codes hold {nq} codebooks, metadata says {metadata.model.n_codebooks}")
    if nq > metadata.model.model_codebooks:
        raise ContainerError(f"{where}: {nq} codebooks but the model has {metadata.model.model_codebooks}")
    if channels != metadata.channels:
        raise ContainerError(f"{where}: codes hold {channels} channels, metadata says {metadata.channels}")
    if frames != metadata.expected_frames():
        raise ContainerError(
            f"{where}: {frames} frames of codes, but {metadata.model_length} samples need {metadata.expected_frames()}"
        )


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, where: str) -> bytes:
    with zf.open(info) as entry:
        data = entry.read(limit + 1)
    if len(data) > limit:
        raise ContainerError(f"{where}: entry {info.filename} is larger than {limit} bytes; refusing")
    return data


def _local_data_offset(f: BinaryIO, info: zipfile.ZipInfo, where: str) -> int:
    """Where the bytes of a stored entry start: after its local file header."""
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ContainerError(f"{where}: damaged zip entry {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return int(info.header_offset) + 30 + int(name_len) + int(extra_len)


def _open_codes(
    path: Path,
    info: zipfile.ZipInfo,
    mmap: bool,
    where: str,
    dtype: np.dtype[Any] | None,
    rank: int = 3,
    opener: Opener = _open_rb,
) -> np.ndarray:
    if info.compress_type != zipfile.ZIP_STORED:
        raise ContainerError(f"{where}: codes entry is compressed; dacwatch stores it uncompressed")
    with opener(path) as f:
        start = _local_data_offset(f, info, where)
        f.seek(start)
        try:
            shape, fortran, found = _read_npy_header(f)
        except ValueError as exc:
            raise ContainerError(f"{where}: codes entry is not a valid .npy array ({exc})") from exc
        data_offset = f.tell()
    if found.hasobject:
        raise ContainerError(f"{where}: codes entry holds pickled objects; refusing")
    if dtype is not None and found != dtype:
        raise ContainerError(f"{where}: codes must be {dtype.name}, found {found}")
    if found.kind not in "iu":
        raise ContainerError(f"{where}: codes must be integers, found {found}")
    if fortran:
        raise ContainerError(f"{where}: codes must be in C order")
    if len(shape) != rank:
        layout = "[frames, codebooks, channels]" if rank == 3 else "[groups, group bytes]"
        raise ContainerError(f"{where}: codes must have rank {rank} {layout}, found rank {len(shape)}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * found.itemsize
    if data_offset - start + nbytes != info.file_size or data_offset + nbytes > path.stat().st_size:
        raise ContainerError(f"{where}: codes entry is truncated ({info.file_size} bytes for shape {shape})")
    if nbytes == 0:
        return np.zeros(shape, dtype=found)
    if mmap:
        return np.memmap(path, dtype=found, mode="r", offset=data_offset, shape=shape)
    with opener(path) as f:
        f.seek(data_offset)
        return np.frombuffer(f.read(nbytes), dtype=found).reshape(shape)


# ---------------------------------------------------------------------- legacy layouts


def _read_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran order and dtype of the ``.npy`` at ``f``'s position (raises ValueError)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)  # type: ignore[no-any-return]
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)  # type: ignore[no-any-return]
    raise ValueError(f".npy version {version} is not supported")


class _PickledNpy:
    """An ``.npy`` whose payload is a pickle: held unread until the restricted unpickler runs."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


def _npy_from_bytes(data: bytes, where: str, entry: str) -> np.ndarray | _PickledNpy:
    f = io.BytesIO(data)
    try:
        _shape, _fortran, dtype = _read_npy_header(f)
    except ValueError as exc:
        raise ContainerError(f"{where}: {entry} is not a valid .npy array ({exc})") from exc
    if dtype.hasobject:
        return _PickledNpy(data[f.tell() :])
    try:
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)
    except ValueError as exc:
        raise ContainerError(f"{where}: {entry} is damaged ({exc})") from exc


# Older files are pickles. The unpickler below resolves the few globals numpy's own
# pickles name to stand-ins of ours, and builds every array from its raw bytes with
# a validated plain dtype (np.frombuffer), object arrays only from lists of
# already-built values. Nothing from the file ever reaches numpy's own
# ndarray/dtype constructors or __setstate__, whose flags and buffers it could
# forge (an object array over raw bytes crashes the process).
MAX_LEGACY_ELEMENTS = 1 << 31
_PLAIN_KINDS = "biufcUS"  # bool, integers, floats, complex, fixed strings: no pointers inside


def _refuse(where: str, what: str) -> ContainerError:
    return ContainerError(f"{where}: refusing a pickle that {what} (nothing in it was run)")


class _DtypeStub:
    """``numpy.dtype(name, align, copy)`` from a pickle: only a name and a byte order."""

    def __init__(self, where: str, name: Any = None, *_args: Any) -> None:
        self.where, self.name = where, name
        self.byteorder: Any = "="
        self.structured = False

    def __setstate__(self, state: Any) -> None:
        # numpy's state: (version, byteorder, subarray, names, fields, elsize, alignment, flags);
        # only the byte order is taken, never the flags.
        if not isinstance(state, tuple) or len(state) < 2:
            raise _refuse(self.where, "holds a damaged dtype")
        self.byteorder = state[1]
        self.structured = any(part is not None for part in state[2:5])

    def resolve(self, allow_object: bool = False) -> np.dtype[Any]:
        if self.structured or not isinstance(self.name, str) or len(self.name) > 16:
            raise _refuse(self.where, f"asks for the dtype {self.name!r} (only plain numbers and strings)")
        try:
            dt = np.dtype(self.name)
        except (TypeError, ValueError) as exc:
            raise _refuse(self.where, f"asks for the unknown dtype {self.name!r}") from exc
        if dt.kind == "O" and allow_object:
            return dt
        if dt.kind not in _PLAIN_KINDS or dt.fields is not None or dt.subdtype is not None:
            raise _refuse(self.where, f"asks for the dtype {dt} (only plain numbers and strings)")
        if self.byteorder in ("<", ">") and dt.itemsize > 1:
            dt = dt.newbyteorder(self.byteorder)
        return dt


class _ArrayStub:
    """``numpy.core.multiarray._reconstruct(ndarray, ...)`` then ``BUILD``: the state is
    checked and the array built by :meth:`__setstate__`, then swapped in by ``_finish``."""

    where = ""

    def __init__(self, *_args: Any) -> None:  # ndarray(...) called directly: a forged buffer
        raise _refuse(self.where, "calls numpy.ndarray directly")

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _refuse(self.where, "holds a damaged array")
        shape, dtype, fortran, raw = state[-4:]
        if (
            not isinstance(shape, tuple)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
            or not isinstance(dtype, _DtypeStub)
        ):
            raise _refuse(self.where, "holds an array with a damaged shape or dtype")
        count = math.prod(shape)
        if count > MAX_LEGACY_ELEMENTS:
            raise _refuse(self.where, f"holds an array of {count} elements")
        dt = dtype.resolve(allow_object=True)
        order: Literal["C", "F"] = "F" if fortran else "C"
        if dt.kind == "O":
            if not isinstance(raw, list) or len(raw) != count:
                raise _refuse(self.where, "builds an object array from raw bytes")
            flat = np.empty(count, dtype=object)
            for i, item in enumerate(raw):
                flat[i] = item
            self.array = flat.reshape(shape, order=order)
            return
        self.array = _array_from_bytes(raw, dt, shape, order, self.where)


def _array_from_bytes(
    raw: Any, dt: np.dtype[Any], shape: tuple[int, ...], order: Literal["C", "F"], where: str
) -> np.ndarray:
    if isinstance(raw, str):  # protocol 0-2 spell bytes as latin-1 text
        raw = raw.encode("latin1")
    if isinstance(raw, (bytearray, memoryview, pickle.PickleBuffer)):
        raw = bytes(raw)
    if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * dt.itemsize:
        raise _refuse(where, f"holds {len(raw) if isinstance(raw, bytes) else 'no'} bytes for an array {shape} of {dt}")
    return np.frombuffer(raw, dtype=dt).reshape(shape, order=order).copy(order="K")


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds plain containers, numbers, strings and numpy arrays/scalars (through the
    stand-ins above); refuses every other global before anything of it runs."""

    def __init__(self, file: IO[bytes], where: str) -> None:
        super().__init__(file, encoding="latin1")
        self.where = where
        stub = type("_Array", (_ArrayStub,), {"where": where})

        def reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _ArrayStub:
            if cls is not stub:
                raise _refuse(where, "reconstructs something other than a plain numpy array")
            made: _ArrayStub = stub.__new__(stub)
            return made

        def scalar(dtype: Any, raw: Any = None) -> Any:
            if not isinstance(dtype, _DtypeStub):
                raise _refuse(where, "builds a numpy scalar without a dtype")
            return _array_from_bytes(raw, dtype.resolve(), (), "C", where)[()]

        def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
            if not isinstance(dtype, _DtypeStub) or not isinstance(shape, tuple) or order not in ("C", "F"):
                raise _refuse(where, "holds a damaged array")
            if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
                raise _refuse(where, "holds an array with a damaged shape")
            return _array_from_bytes(buf, dtype.resolve(), shape, order, where)

        def latin1(text: Any, encoding: Any = "latin1") -> bytes:
            if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                raise _refuse(where, "encodes text in an unexpected way")
            return text.encode("latin1")

        def to_bytes(source: Any = b"", *args: Any) -> bytes:
            if isinstance(source, int):  # bytes(n) would allocate n bytes
                raise _refuse(where, "sizes a bytes object by a number")
            return bytes(source, *args)

        self._globals: dict[tuple[str, str], Any] = {
            ("numpy", "ndarray"): stub,
            ("__builtin__", "bytes"): to_bytes,  # how protocols 0-2 spell bytes
            ("builtins", "bytes"): to_bytes,
            ("numpy", "dtype"): functools.partial(_DtypeStub, where),
            ("_codecs", "encode"): latin1,  # how protocol 2 spells bytes
        }
        for core in ("numpy.core", "numpy._core"):
            self._globals[(f"{core}.multiarray", "_reconstruct")] = reconstruct
            self._globals[(f"{core}.multiarray", "scalar")] = scalar
            self._globals[(f"{core}.numeric", "_frombuffer")] = frombuffer

    def find_class(self, module: str, name: str) -> Any:
        found = self._globals.get((module, name))
        if found is None:
            raise ContainerError(
                f"{self.where}: refusing a pickle that asks for {module}.{name}; "
                "only plain data and numpy arrays are accepted (nothing in it was run)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise ContainerError(f"{self.where}: refusing a pickle with persistent references")


def _finish(obj: Any, where: str, memo: dict[int, Any]) -> Any:
    """The unpickled value with every stand-in replaced by what it stands for."""
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, _ArrayStub):
        array = getattr(obj, "array", None)
        if array is None:
            raise _refuse(where, "holds an array without its data")
        memo[key] = array
        if array.dtype.kind == "O":
            flat = array.reshape(-1)
            for i in range(flat.size):
                flat[i] = _finish(flat[i], where, memo)
        return array
    if isinstance(obj, _DtypeStub):
        memo[key] = obj.resolve()
        return memo[key]
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        memo[key] = out
        for k, v in obj.items():
            out[_finish(k, where, memo)] = _finish(v, where, memo)
        return out
    if isinstance(obj, list):
        items: list[Any] = []
        memo[key] = items
        items.extend(_finish(v, where, memo) for v in obj)
        return items
    if isinstance(obj, (tuple, set, frozenset)):
        memo[key] = type(obj)(_finish(v, where, memo) for v in obj)
        return memo[key]
    if obj is None or isinstance(obj, (str, bytes, bytearray, int, float, complex, np.ndarray, np.generic)):
        return obj
    raise _refuse(where, f"builds a {type(obj).__name__}")


def _unpickle(payload: bytes, where: str) -> Any:
    try:
        return _finish(_RestrictedUnpickler(io.BytesIO(payload), where).load(), where, {})
    except ContainerError:
        raise
    except RecursionError as exc:
        raise ContainerError(f"{where}: refusing a pickle nested too deeply") from exc
    except Exception as exc:
        raise ContainerError(f"{where}: damaged pickle ({type(exc).__name__}: {exc})") from exc


def _touch(obj: Any, seen: set[int]) -> None:
    """Reach every value, as the reader will (a forged object crashes here, in the child)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    repr(obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            _touch(k, seen)
            _touch(v, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _touch(v, seen)
    elif isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        for v in obj.reshape(-1):
            _touch(v, seen)


def _child_main() -> None:
    """``python -m dacwatch.formats.container``: unpickle stdin in this throwaway process."""
    where = sys.argv[1] if len(sys.argv) > 1 else "file"
    try:
        _touch(_unpickle(sys.stdin.buffer.read(), where), set())
    except ContainerError as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(3)


def safe_unpickle(payload: bytes, where: str) -> Any:
    """Unpickle ``payload`` admitting only plain data and numpy arrays.

    It is unpickled first in a short-lived child process: whatever numpy or the
    pickle machinery might still do wrong with a forged file (crash, hang), that
    process pays for it, not the daemon.
    """
    try:
        child = subprocess.run(
            # -P: the current folder (perhaps the untrusted file's own) is not put on the path.
            [sys.executable, "-P", "-m", "dacwatch.formats.container", where],
            input=payload,
            capture_output=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ContainerError(f"{where}: reading its pickle took longer than {CHILD_TIMEOUT_S:g} s; refusing") from exc
    if child.returncode == 3:
        raise ContainerError(child.stderr.decode(errors="replace").strip())
    if child.returncode < 0:
        raise ContainerError(
            f"{where}: its pickle crashed the process reading it (signal {-child.returncode}); refusing it"
        )
    if child.returncode != 0:
        tail = child.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise ContainerError(f"{where}: its pickle could not be read ({tail[0]})")
    return _unpickle(payload, where)


# DAC 1.0.0 files do not name their model; the number of codebooks does.
_MODEL_BY_CODEBOOKS = {
    9: ("44khz", "8kbps", 44100, 512),
    18: ("44khz", "16kbps", 44100, 512),
    32: ("24khz", "8kbps", 24000, 320),
    12: ("16khz", "8kbps", 16000, 320),
}


def _legacy_model(n_codebooks: int, where: str, hint: dict[str, Any] | None = None) -> ModelRecord:
    """What an older file says of its model: the seed's files may name a released one;
    DAC 1.0.0's never do, so the codebook count gives a guess, and the decoder uses
    the model the user names when it fits (``CodecPool.codec_for``)."""
    hint = hint or {}
    if "model_type" in hint:
        mt = str(hint["model_type"])
        bitrate = str(hint.get("model_bitrate", "8kbps"))
        guess = next((v for v in _MODEL_BY_CODEBOOKS.values() if v[0] == mt and v[1] == bitrate), None)
        if guess is None:
            raise ContainerError(f"{where}: names DAC model {mt} {bitrate}, which was never released")
        tag = str(hint.get("model_tag", "latest"))
    else:
        guess = _MODEL_BY_CODEBOOKS.get(n_codebooks)
        tag = ""  # unnamed
    if guess is None:
        return ModelRecord("unknown", "unknown", "", 0, 0, 1024, n_codebooks, n_codebooks)
    mt, bitrate, sr, hop = guess
    model_cb = max(k for k, v in _MODEL_BY_CODEBOOKS.items() if v[:2] == (mt, bitrate))
    return ModelRecord(
        type=mt,
        bitrate=bitrate,
        tag=tag,
        sample_rate=sr,
        hop_length=hop,
        codebook_size=1024,
        n_codebooks=n_codebooks,
        model_codebooks=max(model_cb, n_codebooks),
    )


def _number(value: Any, where: str, name: str) -> float:
    try:
        out = float(np.asarray(value).reshape(-1)[0]) if np.size(value) else float("nan")
    except (TypeError, ValueError) as exc:
        raise ContainerError(f"{where}: {name} is not a number") from exc
    return out


def _floats(value: Any, where: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError) as exc:
        raise ContainerError(f"{where}: input_db is not a number or array of numbers") from exc


def _int_field(meta: dict[str, Any], key: str, where: str, minimum: int) -> int:
    if key not in meta:
        raise ContainerError(f"{where}: metadata has no {key}")
    value = meta[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ContainerError(f"{where}: {key} must be an integer of at least {minimum}, not {value!r}")
    return int(value)


def _legacy_metadata(
    meta: dict[str, Any], codes: np.ndarray, where: str, model_length: int, normalized_to: float | None
) -> Metadata:
    model = _legacy_model(codes.shape[1], where, meta)
    input_db = _number(meta.get("input_db", float("nan")), where, "input_db")
    loudness = input_db if math.isfinite(input_db) else None
    gain = normalized_to - loudness if normalized_to is not None and loudness is not None else 0.0
    return Metadata(
        model=model,
        sample_rate=_int_field(meta, "sample_rate", where, 1),
        length=_int_field(meta, "original_length", where, 0),
        channels=_int_field(meta, "channels", where, 1),
        model_length=model_length,
        loudness=loudness,
        gain_db=gain,
        dacwatch_version="legacy",
    )


def _read_dac_1_0_0(path: Path) -> DacFile:
    """DAC 1.0.0's ``DACFile.save``: ``np.save`` of a dict (so a pickle inside ``.npy``)
    with codes ``[batch*channels, n_q, frames]`` and its chunking in the metadata."""
    where = str(path)
    size = path.stat().st_size
    if size > MAX_LEGACY_BYTES:
        raise ContainerError(f"{where}: {size} bytes is too large for a DAC 1.0.0 file; refusing")
    data = _npy_from_bytes(path.read_bytes(), where, "file")
    if not isinstance(data, _PickledNpy):
        raise ContainerError(f"{where}: a .npy that is not a DAC 1.0.0 file")
    obj = safe_unpickle(data.payload, where)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.ndim == 0:
        obj = obj[()]
    if not isinstance(obj, dict) or "codes" not in obj or not isinstance(obj.get("metadata"), dict):
        raise ContainerError(f"{where}: not a DAC 1.0.0 file (no codes and metadata)")
    raw = obj["codes"]
    meta = obj["metadata"]
    if not isinstance(raw, np.ndarray) or raw.ndim != 3 or raw.dtype.kind not in "iu":
        raise ContainerError(f"{where}: codes must be an integer array [batch*channels, n_q, frames]")
    if meta.get("dac_version") != "1.0.0":
        raise ContainerError(f"{where}: DAC file version {meta.get('dac_version')!r} is not 1.0.0")
    channels = _int_field(meta, "channels", where, 1)
    if raw.shape[0] % channels:
        raise ContainerError(f"{where}: {raw.shape[0]} code rows do not split into {channels} channels")
    if raw.shape[0] != channels:
        raise ContainerError(f"{where}: batched DAC files (several signals in one) are not supported")
    codes = np.ascontiguousarray(raw.transpose(2, 1, 0)).astype(np.int16)
    chunk_length = _int_field(meta, "chunk_length", where, 1)
    padding = bool(meta.get("padding", True))
    model = _legacy_model(codes.shape[1], where)
    # DAC 1.0.0 restores loudness by measuring its reconstruction (LegacyLayout.input_db).
    metadata = _legacy_metadata(meta, codes, where, codes.shape[0] * model.hop_length, normalized_to=None)
    return DacFile(
        metadata=metadata,
        codes=codes,
        legacy=LegacyLayout(
            kind="dac-1.0.0",
            chunk_length=chunk_length,
            padding=padding,
            input_db=_floats(meta.get("input_db", [np.nan]), where),
        ),
        path=path,
    )


def _read_seed(path: Path, meta_pickle: _PickledNpy, codes_info: zipfile.ZipInfo) -> DacFile:
    """The seed script's ``.npz``: codes ``[frames, n_q, channels]`` and its metadata
    dict as a pickled 0-d object array."""
    where = str(path)
    obj = safe_unpickle(meta_pickle.payload, where)
    if isinstance(obj, np.ndarray) and obj.ndim == 0:
        obj = obj[()]
    if not isinstance(obj, dict):
        raise ContainerError(f"{where}: seed metadata is not a dict")
    codes = _open_codes(path, codes_info, True, where, dtype=None)
    if codes.shape[1] == 0 or codes.shape[2] == 0:
        raise ContainerError(f"{where}: codes have no codebooks or no channels")
    model = _legacy_model(codes.shape[1], where, obj)
    length_at_model = obj.get("model_length")
    model_length = (
        int(length_at_model) if isinstance(length_at_model, (int, np.integer)) else codes.shape[0] * model.hop_length
    )
    # The seed normalised to DAC's -16 LUFS before encoding, as DAC does.
    metadata = _legacy_metadata(obj, codes, where, model_length, normalized_to=SEED_NORMALIZED_LUFS)
    if model.hop_length:
        _check_shape(codes, replace(metadata, model=replace(metadata.model, n_codebooks=codes.shape[1])), where)
    return DacFile(
        metadata=metadata,
        codes=codes,
        legacy=LegacyLayout(kind="seed", derived_length=not isinstance(length_at_model, (int, np.integer))),
        path=path,
    )


@dataclass
class Summary:
    """What ``dacwatch info`` shows."""

    path: str
    format: str
    model: dict[str, Any]
    duration_s: float
    sample_rate: int
    channels: int
    frames: int
    codebooks: int
    bitrate_kbps: float  # the codec's: ceil(log2(codebook size)) bits per code, as DAC counts it
    file_bytes: int | None  # the file's own size
    file_kbps: float | None  # what the file costs per second of audio, headers included
    loudness_lufs: float | None
    dacwatch_version: str
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(dac: DacFile) -> Summary:
    m = dac.metadata
    frame_rate = m.model.sample_rate / m.model.hop_length
    bits = math.ceil(math.log2(m.model.codebook_size)) * m.model.n_codebooks * frame_rate * m.channels
    fmt = f"{FORMAT_NAME} {m.version}" if dac.legacy is None else dac.legacy.kind
    extra: dict[str, Any] = {}
    if dac.legacy is not None and dac.legacy.chunk_length:
        extra = {"chunk_length": dac.legacy.chunk_length, "padding": dac.legacy.padding}
    if m.packing is not None:
        extra["packing"] = (
            f"{m.packing.bits} bits a code, {m.packing.group_frames} frames in {m.packing.group_bytes} bytes"
        )
    if m.quality is not None:
        q = m.quality
        sdr = "n/a" if q.get("si_sdr_db") is None else f"{q['si_sdr_db']} dB"
        extra["quality"] = (
            f"SI-SDR {sdr}, mel distance {q.get('mel_distance')}, max error {q.get('max_error')} of peak "
            f"({q.get('mode')}, {q.get('seconds')} s compared)"
        )
    size = dac.path.stat().st_size if dac.path is not None and dac.path.exists() else None
    return Summary(
        path=str(dac.path),
        format=fmt,
        model=asdict(m.model),
        duration_s=m.duration_s,
        sample_rate=m.sample_rate,
        channels=m.channels,
        frames=dac.frames,
        codebooks=m.model.n_codebooks,
        bitrate_kbps=bits / 1000,
        file_bytes=size,
        file_kbps=size * 8 / m.duration_s / 1000 if size is not None and m.duration_s > 0 else None,
        loudness_lufs=m.loudness,
        dacwatch_version=m.dacwatch_version,
        extra=extra,
    )


def read_codes(path: str | os.PathLike[str], start_frame: int = 0, n_frames: int | None = None) -> np.ndarray:
    """Codes ``[n_frames, codebooks, channels]`` (int16) from ``start_frame`` of a ``.dac`` file of
    any layout; for dacwatch's own formats only the bytes (format 2: the groups) holding
    those frames are read."""
    dac = read(path)
    stop = dac.frames if n_frames is None else min(dac.frames, start_frame + n_frames)
    return np.array(dac.codes[max(0, start_frame) : stop], dtype=np.int16)


if __name__ == "__main__":
    _child_main()
