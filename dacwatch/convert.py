"""One file in, one file out: audio -> ``.dac`` and ``.dac`` -> audio.

Shared by the one-shot CLI and the daemon's worker. Memory is bounded by the
window and batch sizes: audio is read in blocks (twice: loudness, then
encoding), codes are spilled to a temporary file, decoded audio is written
block by block.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dacwatch import __version__, fsops
from dacwatch.audio import (
    AudioError,
    AudioReader,
    Measurement,
    OutputFormat,
    StreamResampler,
    fit_length,
    measure,
    open_audio,
    scaled,
    write_audio,
)
from dacwatch.codec.chunked import ChunkedCodec, resolve_device
from dacwatch.codec.gate import DeviceGate
from dacwatch.codec.model import (
    ARCHITECTURE_BY_RATE,
    DacNet,
    ModelSpec,
    fingerprint,
    layer_padding,
    load_model,
    model_info,
    resolve_release,
    short,
)
from dacwatch.codec.quality import Capture, Quality, compare
from dacwatch.codec.quality import spans as quality_spans
from dacwatch.errors import ModelMismatchError, ModelUnavailableError, OutOfMemoryError, PermanentError, UsageError
from dacwatch.faults import os_fault
from dacwatch.formats.container import LOCAL_TAG, CodeSpill, DacFile, Metadata, ModelRecord
from dacwatch.formats.container import read as read_dac
from dacwatch.formats.container import write as write_dac
from dacwatch.fsio import atomic_output, ensure_dir

Progress = Callable[[float], None]  # called with seconds of audio done
# (blocks at the model rate, channels, codebooks) -> code blocks [frames, codebooks, channels]
Encoder = Callable[[Iterator[np.ndarray], int, "int | None"], Iterator[np.ndarray]]
Check = Callable[[], None]  # raises if the output must not be renamed into place
GROW_AFTER = 20  # jobs in a row without running out of memory before a step is taken back


@dataclass(frozen=True)
class CodecSettings:
    """How windows are cut and batched; ``None`` picks the device's default."""

    device: str = "auto"
    encode_window_s: float | None = None
    decode_window_s: float | None = None
    batch_size: int | None = None
    precision: str = "float32"


@dataclass
class CodecPool:
    """Loaded networks for one device, by model: the configured one, and others on
    demand when a ``.dac`` file names a different model. Each stays warm."""

    spec: ModelSpec
    settings: CodecSettings = field(default_factory=CodecSettings)
    cache_dir: Path | None = None
    loader: Callable[[ModelSpec, torch.device], DacNet] | None = None
    # Where the CPU decoder's measured kernel choices are kept (dacwatch.codec.tuning):
    # the daemon's state_dir, the user's cache for one-shot commands; None keeps the
    # installed defaults and measures nothing. Measured (or read) at a network's first
    # decode, or when it loads with tune_at_load (the daemon: before READY, not in a job).
    kernels_dir: Path | None = None
    tune_at_load: bool = False
    _codecs: dict[tuple[str, str, str], ChunkedCodec] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    # Out-of-memory recovery: the geometries each codec had before each shrink.
    _stack: dict[tuple[str, str, str], list[tuple[int, float, float]]] = field(default_factory=dict)
    _successes: int = 0
    # Every pass on this device goes through one gate, shared by all its networks and
    # by every worker of the device (codec.jobs_per_device): see dacwatch.codec.gate.
    gate: DeviceGate = field(default_factory=DeviceGate)
    generation: int = 0  # geometry changes so far (shrinks and growths)
    loads: int = 0  # networks loaded so far (for metrics)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.settings.device)

    def key(self, spec: ModelSpec) -> tuple[str, str, str]:
        """Which loaded network ``spec`` means: a weights file of one's own is itself, never
        the release of its type (a file naming the release may need the release beside it)."""
        if spec.weights is not None:
            return LOCAL_TAG, str(spec.weights), ""
        # "latest" is recorded as the release it means today, so a file keeps
        # naming the network that made it after a newer release appears.
        return spec.model_type, spec.model_bitrate, resolve_release(spec)[0]

    def codec(self, spec: ModelSpec | None = None) -> ChunkedCodec:
        spec = spec or self.spec
        key = self.key(spec)
        with self._lock:
            if key not in self._codecs:
                loader = self.loader or (lambda s, d: load_model(s, d, self.cache_dir))
                try:
                    model = loader(spec, self.device)
                except torch.OutOfMemoryError as exc:
                    raise OutOfMemoryError(f"out of memory loading {spec.describe()} onto {self.device}") from exc
                s = self.settings
                codec = ChunkedCodec(
                    model, self.device, s.encode_window_s, s.decode_window_s, s.batch_size, s.precision
                )
                codec.gate = self.gate
                codec.kernels_dir = self.kernels_dir
                if self.kernels_dir is not None and self.tune_at_load:
                    codec.tune_kernels(self.kernels_dir)
                self._codecs[key] = codec
                self.loads += 1
            return self._codecs[key]

    def record(self, n_codebooks: int | None = None) -> ModelRecord:
        """What a file encoded with the configured network says of it: the release's
        name, or the weights file's, and the weights' fingerprint either way."""
        codec = self.codec()
        info = model_info(codec.model)
        mtype, bitrate, tag = self.key(self.spec)
        weights_file = None
        if self.spec.weights is not None:
            tag, weights_file = LOCAL_TAG, self.spec.weights.name
            mtype = ARCHITECTURE_BY_RATE.get(info["sample_rate"], self.spec.model_type)
            bitrate = self.spec.model_bitrate
        return ModelRecord(
            type=mtype,
            bitrate=bitrate,
            tag=tag,
            sample_rate=info["sample_rate"],
            hop_length=info["hop_length"],
            codebook_size=info["codebook_size"],
            n_codebooks=n_codebooks or info["n_codebooks"],
            model_codebooks=info["n_codebooks"],
            weights=fingerprint(codec.model),
            weights_file=weights_file,
        )

    def codec_for(self, record: ModelRecord, largest: int | None = None) -> ChunkedCodec:
        """The network a file was made with, never a different one: the same weights
        (by fingerprint) when the file records them, else the release it names. An
        older file that names no model gets the configured network if it fits: its
        geometry, and (such a file records no codebook size) every code, ``largest``
        the greatest, below the network's codebook size."""
        if not record.named:
            return self._unnamed(record, largest)
        codec = self._by_fingerprint(record.weights) if record.weights else None
        if codec is None:
            if record.tag == LOCAL_TAG:
                here = self.codec()
                raise ModelMismatchError(
                    f"the file was made with {record.describe()} (weights {short(record.weights)}), which is not "
                    f"loaded here: this host has {self.spec.describe()} (weights {short(fingerprint(here.model))}); "
                    "decode it with --weights (daemon: model.weights) naming that file"
                )
            codec = self._release(record)
        self._check_geometry(codec, record)
        return codec

    def _by_fingerprint(self, weights: str | None) -> ChunkedCodec | None:
        self.codec()  # the configured network first
        with self._lock:
            return next((c for c in self._codecs.values() if fingerprint(c.model) == weights), None)

    def _release(self, record: ModelRecord) -> ChunkedCodec:
        try:
            spec = ModelSpec(record.type, record.bitrate, record.tag)
        except ValueError as exc:
            raise PermanentError(f"the file names an unknown model: {exc}") from exc
        named_here = (self.spec.model_type, self.spec.model_bitrate) == (record.type, record.bitrate)
        try:
            if record.weights is None and self.spec.weights is not None and named_here:
                # A file from before fingerprints were recorded, when weights of one's own
                # were recorded under their release's name: the configured file is trusted.
                codec = self.codec()
            else:
                codec = self.codec(spec)
        except ModelUnavailableError as exc:
            raise ModelUnavailableError(
                f"the file was made with {record.describe()}, which is not available here: {exc}"
            ) from exc
        if record.weights and fingerprint(codec.model) != record.weights:
            raise ModelMismatchError(
                f"the file was made with {record.describe()} weights {short(record.weights)}, but the weights "
                f"of that name here are {short(fingerprint(codec.model))} (a different download or a retrained "
                "file); decode it with --weights (daemon: model.weights) naming the weights it was made with"
            )
        return codec

    def _unnamed(self, record: ModelRecord, largest: int | None) -> ChunkedCodec:
        """An older file that names no model: the configured one if the codes fit it,
        else the release its codebook count suggests."""
        configured = self.codec()
        misfit = self._misfit(configured, record, largest)
        if misfit is None:
            return configured
        if record.hop_length:  # a release's geometry was guessed from the codebook count
            codec = self._release(replace(record, tag="latest"))
            self._check_geometry(codec, record)
            return codec
        raise ModelMismatchError(
            f"the file does not say which DAC model made its {record.n_codebooks} codebooks of codes, and "
            f"{self.spec.describe()} does not fit ({misfit}); name the model that made it with --model-type, "
            "--model-bitrate and --model-tag or --weights (daemon: the model.* keys)"
        )

    @staticmethod
    def _misfit(codec: ChunkedCodec, record: ModelRecord, largest: int | None = None) -> str | None:
        """Why ``record``'s codes cannot come from ``codec``'s network (None if they can).
        ``largest``: the greatest code of a file that records no codebook size."""
        info = model_info(codec.model)
        for key in ("sample_rate", "hop_length"):
            wanted = getattr(record, key)
            if wanted and wanted != info[key]:
                return f"{key.replace('_', ' ')} {info[key]}, the file's is {wanted}"
        if largest is not None:
            if largest >= info["codebook_size"]:
                return f"codebooks of {info['codebook_size']} entries, the file has code {largest}"
        elif record.codebook_size != info["codebook_size"]:
            return f"codebooks of {info['codebook_size']} entries, the file's have {record.codebook_size}"
        if record.n_codebooks > info["n_codebooks"]:
            return f"{info['n_codebooks']} codebooks, the file has {record.n_codebooks}"
        return None

    def _check_geometry(self, codec: ChunkedCodec, record: ModelRecord) -> None:
        misfit = self._misfit(codec, record)
        if misfit is not None:
            raise PermanentError(
                f"the file's model ({record.describe()}: {record.sample_rate} Hz, hop {record.hop_length}, "
                f"{record.n_codebooks} of {record.model_codebooks} codebooks of {record.codebook_size}) "
                f"does not match the network loaded for it ({misfit})"
            )

    def bound(self, dac: DacFile) -> tuple[ChunkedCodec, DacFile]:
        """The network for ``dac``, and ``dac`` read as made by it (older files name none)."""
        if dac.metadata.model.named:
            return self.codec_for(dac.metadata.model), dac
        largest = max((int(b.max()) for b in dac.iter_code_blocks() if b.size), default=0)
        codec = self.codec_for(dac.metadata.model, largest)
        info = model_info(codec.model)
        record = replace(
            dac.metadata.model,
            sample_rate=info["sample_rate"],
            hop_length=info["hop_length"],
            codebook_size=info["codebook_size"],
            model_codebooks=info["n_codebooks"],
        )
        return codec, dac.bind(record)

    def shrink(self, seen: int | None = None) -> str | None:
        """After running out of memory: a smaller batch, then smaller windows, for every
        loaded network, and the device's cached blocks handed back. Returns the new
        geometry, or None when nothing is left to shrink.

        ``seen`` is the :attr:`generation` the failed work started under: when the
        geometry has changed since (another worker of the device, failing in the same
        shared pass, already shrank it) it is left as it is and the work retried.
        """
        with self._lock:
            if seen is not None and seen != self.generation and self._codecs:
                return self._describe()
            shrunk = False
            for key, codec in self._codecs.items():
                before = codec.geometry()
                if codec.shrink():
                    self._stack.setdefault(key, []).append(before)
                    shrunk = True
            self._successes = 0
            if shrunk:
                self.generation += 1
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return self._describe() if shrunk else None

    def succeeded(self) -> str | None:
        """After a job went through: once ``GROW_AFTER`` jobs in a row have since the
        last shrink, take back one step. Returns the new geometry when it grew."""
        with self._lock:
            if not any(self._stack.values()):
                return None
            self._successes += 1
            if self._successes < GROW_AFTER:
                return None
            self._successes = 0
            for key, stack in self._stack.items():
                if stack:
                    codec = self._codecs[key]
                    codec.batch_size, codec.encode_window_s, codec.decode_window_s = stack.pop()
            self.generation += 1
            return self._describe()

    def _describe(self) -> str:
        batch, encode, decode = next(iter(self._codecs.values())).geometry()
        return f"batch {batch}, windows {encode:.3g} s encode / {decode:.3g} s decode"


@dataclass(frozen=True)
class Result:
    """What one conversion did (for the canonical log line)."""

    kind: str  # encode | decode
    output: Path
    audio_s: float
    frames: int
    quality: Quality | None = None


def _naming(source: Path, exc: PermanentError) -> PermanentError:
    """The same error, with the file it is about in front if it does not say."""
    if str(source) in str(exc):
        return exc
    return type(exc)(f"{source}: {exc}")


def encode_file(
    pool: CodecPool,
    source: Path,
    output: Path,
    n_codebooks: int | None = None,
    overwrite: bool = True,
    progress: Progress | None = None,
    before_rename: Check | None = None,
    written: Callable[[], None] | None = None,
    encoder: Encoder | None = None,
    code_format: str = "packed",
    quality: str = "off",
    min_quality_db: float | None = None,
) -> Result:
    """Audio file -> ``.dac`` (format 2, or format 1 with ``code_format="int16"``), through a
    temporary file renamed into place (``written`` runs once the data is written,
    ``before_rename`` just before the rename, which it may stop). ``encoder`` replaces the
    pool's network (bench.host measures everything around it with one that only counts frames).
    ``quality`` (``sample``, ``full``) decodes spans of the codes just made and records how
    far they are from the input (dacwatch.codec.quality); below ``min_quality_db`` of SI-SDR the
    file is refused (a :class:`PermanentError` with the figures) and nothing is written."""
    try:
        return _encode_file(
            pool,
            source,
            output,
            n_codebooks,
            overwrite,
            progress,
            before_rename,
            written,
            encoder,
            code_format,
            quality,
            min_quality_db,
        )
    except PermanentError as exc:
        raise _naming(source, exc) from exc


def _encode_file(
    pool: CodecPool,
    source: Path,
    output: Path,
    n_codebooks: int | None,
    overwrite: bool,
    progress: Progress | None,
    before_rename: Check | None,
    written: Callable[[], None] | None,
    encoder: Encoder | None,
    code_format: str,
    quality: str = "off",
    min_quality_db: float | None = None,
) -> Result:
    codec = pool.codec()
    encode = encoder or codec.encode_stream
    ensure_dir(output.parent)  # fail before the work, not after it
    reader = open_audio(source)
    try:
        info = reader.info
        measurement, gain, at_model_rate = _prepared(reader, codec.sample_rate, source, progress)
        counted = _Counter()
        blocks = counted.wrap(at_model_rate)
        capture = None
        if quality != "off":  # the spans of the input the encoder sees, copied on the way
            expected = round(measurement.frames * codec.sample_rate / info.sample_rate)
            capture = Capture(quality_spans(expected, codec.sample_rate, quality))
            blocks = capture.wrap(blocks)
        try:
            with CodeSpill(
                codec.n_codebooks if n_codebooks is None else n_codebooks,
                info.channels,
                file=fsops.temporary(output.parent),
            ) as spill:
                for codes in encode(blocks, info.channels, n_codebooks):
                    spill.append(codes)
                figures = None
                if capture is not None:
                    figures = _quality(codec, spill, capture, counted.samples, quality)
                    if min_quality_db is not None and (figures.si_sdr_db or math.inf) < min_quality_db:
                        raise PermanentError(
                            f"{source}: does not survive this codec: {figures.describe()}, below "
                            f"codec.min_quality {min_quality_db:g} dB"
                        )
                metadata = Metadata(
                    model=pool.record(spill.n_codebooks),
                    sample_rate=info.sample_rate,
                    length=measurement.frames,
                    channels=info.channels,
                    model_length=counted.samples,
                    loudness=measurement.loudness,
                    gain_db=gain,
                    dacwatch_version=__version__,
                    quality=None if figures is None else figures.as_dict(),
                )
                with atomic_output(output, overwrite, before_rename) as tmp:
                    with fsops.open_write(tmp) as f:
                        write_dac(f, metadata, spill, code_format)
                    if written is not None:
                        written()
                frames = spill.frames
        except OSError as exc:  # the spill's disk: the reader and atomic_output classify their own
            raise os_fault(exc, f"spilling the codes of {source} into {output.parent}") from exc
    finally:
        reader.close()
    return Result("encode", output, measurement.frames / info.sample_rate, frames, figures)


def _quality(codec: ChunkedCodec, spill: CodeSpill, capture: Capture, total: int, mode: str) -> Quality:
    """Decode the captured spans from the codes just made (no loudness restored: the
    encoder's input was normalised) and compare."""
    codes = spill.array()
    pairs = []
    for span in capture.wanted:
        a, b = span[0], min(span[1], total)  # the length was estimated from the header
        if b > a:
            decoded = np.concatenate(list(codec.decode_stream(codes, a, b)), axis=1)
            pairs.append((capture.span(span), decoded))
    return compare(pairs, codec.sample_rate, mode)


def _prepared(
    reader: AudioReader, rate: int, source: Path, progress: Progress | None = None
) -> tuple[Measurement, float, Iterator[np.ndarray]]:
    """Pass one over the file (loudness, peak); then pass two as a stream of blocks at
    the model's ``rate``, normalised as DAC normalises before encoding."""
    info = reader.info
    measurement = measure(reader, str(source), None if progress is None else lambda: progress(0.0))
    if measurement.frames == 0:
        raise AudioError(f"{source}: holds no samples")
    gain = measurement.gain_db()
    resampler = StreamResampler(info.sample_rate, rate, info.channels)
    return measurement, gain, resampler.stream(_progressed(scaled(reader.blocks(), gain), info.sample_rate, progress))


def decode_file(
    pool: CodecPool,
    source: Path,
    output: Path,
    fmt: OutputFormat | None = None,
    resample: bool = False,
    start_s: float = 0.0,
    duration_s: float | None = None,
    overwrite: bool = True,
    progress: Progress | None = None,
    before_rename: Check | None = None,
    written: Callable[[], None] | None = None,
) -> Result:
    """``.dac`` file -> audio, through a temporary file renamed into place.

    Without ``resample`` the audio stays at the model's rate (``model_length``
    samples); with it, the original rate and exact original length come back.
    ``start_s``/``duration_s`` decode an excerpt, reading only its frames.
    """
    try:
        return _decode_file(
            pool,
            source,
            output,
            fmt or OutputFormat(),
            resample,
            start_s,
            duration_s,
            overwrite,
            progress,
            before_rename,
            written,
        )
    except PermanentError as exc:
        raise _naming(source, exc) from exc


def _decode_file(
    pool: CodecPool,
    source: Path,
    output: Path,
    fmt: OutputFormat,
    resample: bool,
    start_s: float,
    duration_s: float | None,
    overwrite: bool,
    progress: Progress | None,
    before_rename: Check | None,
    written: Callable[[], None] | None,
) -> Result:
    codec, dac = pool.bound(read_dac(source, opener=fsops.open_read))
    ensure_dir(output.parent)
    meta = dac.metadata
    rate = meta.sample_rate if resample else codec.sample_rate
    total = meta.length if resample else meta.model_length
    if start_s < 0 or (duration_s is not None and duration_s < 0):
        raise PermanentError("start and duration must not be negative")
    if start_s > 0 and round(start_s * rate) >= total:
        raise UsageError(f"{source}: the excerpt starts at {start_s:g} s, past the file's end at {total / rate:.3f} s")
    first = min(total, round(start_s * rate))
    last = total if duration_s is None else min(total, first + round(duration_s * rate))
    blocks = _decoded(codec, dac, rate, first, last)
    blocks = _progressed(blocks, rate, progress)
    with atomic_output(output, overwrite, before_rename) as tmp:
        samples = write_audio(tmp, blocks, rate, meta.channels, fmt, frames_hint=last - first)
        if written is not None:
            written()
    return Result("decode", output, samples / rate, dac.frames)


def decode_array(pool: CodecPool, dac: DacFile, resample: bool = False) -> np.ndarray:
    """The decoded audio of ``dac`` as one array ``[channels, samples]`` (for tests and verify)."""
    codec, dac = pool.bound(dac)
    meta = dac.metadata
    rate = meta.sample_rate if resample else codec.sample_rate
    total = meta.length if resample else meta.model_length
    parts = list(_decoded(codec, dac, rate, 0, total))
    return np.concatenate(parts, axis=1) if parts else np.zeros((meta.channels, 0), np.float32)


def decode_excerpt(pool: CodecPool, dac: DacFile, first: int, last: int) -> np.ndarray:
    """Samples ``[first, last)`` at the model's rate of ``dac``'s decode ``[channels, samples]``
    (loudness restored), reading only the frames they need."""
    codec, dac = pool.bound(dac)
    parts = list(_decoded(codec, dac, codec.sample_rate, first, last))
    return np.concatenate(parts, axis=1) if parts else np.zeros((dac.metadata.channels, 0), np.float32)


def _decoded(codec: ChunkedCodec, dac: DacFile, rate: int, first: int, last: int) -> Iterator[np.ndarray]:
    """Samples ``[first, last)`` at ``rate`` of the file's decode, loudness restored."""
    meta = dac.metadata
    if dac.legacy is not None and dac.legacy.kind == "dac-1.0.0":
        yield from _decoded_dac_1_0_0(codec, dac, rate, first, last)
        return
    if last <= first:
        return
    gain = -meta.gain_db
    if rate == codec.sample_rate:
        body = codec.decode_stream(dac.codes, first, min(last, meta.model_length))
        yield from fit_length(scaled(body, gain), last - first, meta.channels)
        return
    # Resampling an excerpt: decode a margin around it at the model rate so
    # the resampler's filter sees the same neighbours as in a full decode,
    # starting on a sample that maps to a whole sample at the output rate.
    ratio = rate / codec.sample_rate
    step = codec.sample_rate // math.gcd(codec.sample_rate, rate)
    margin = int(0.05 * codec.sample_rate)
    m_first = max(0, ((int(first / ratio) - margin) // step) * step)
    m_last = min(meta.model_length, math.ceil(last / ratio) + margin)
    out_first = round(m_first * ratio)
    resampler = StreamResampler(codec.sample_rate, rate, meta.channels)
    body = codec.decode_stream(dac.codes, m_first, m_last)
    pieces = resampler.stream(fit_length(scaled(body, gain), m_last - m_first, meta.channels))
    yield from fit_length(_skip(pieces, first - out_first), last - first, meta.channels)


def _decoded_dac_1_0_0(codec: ChunkedCodec, dac: DacFile, rate: int, first: int, last: int) -> Iterator[np.ndarray]:
    """DAC 1.0.0's own ``decompress``, step for step: its chunks with its padding flag,
    loudness back to ``input_db`` and resampling with audiotools, in memory as DAC does."""
    from audiotools import AudioSignal

    legacy = dac.legacy
    assert legacy is not None and legacy.chunk_length
    meta = dac.metadata
    codes = np.asarray(dac.codes)
    parts = []
    model = codec.model
    try:
        with codec.exclusive(), torch.inference_mode(), layer_padding(model, legacy.padding):
            for i in range(0, codes.shape[0], legacy.chunk_length):
                chunk = codec._checked(codes[i : i + legacy.chunk_length])
                rows = torch.from_numpy(chunk.transpose(2, 1, 0).astype(np.int64)).to(codec.device)
                parts.append(model.decoder(model.quantizer.from_codes(rows)[0]).to("cpu", torch.float32))
    except torch.OutOfMemoryError as exc:
        raise OutOfMemoryError(f"out of memory decoding DAC 1.0.0 chunks of {legacy.chunk_length} frames") from exc
    with torch.inference_mode():
        signal = AudioSignal(torch.cat(parts, dim=-1), codec.sample_rate)
        signal.normalize(torch.tensor(legacy.input_db, dtype=torch.float32))
        length = signal.signal_length
        if rate != codec.sample_rate:
            signal.resample(rate)
            length = meta.length
        audio = signal.audio_data[..., :length].reshape(meta.channels, -1).numpy()
    yield from fit_length([audio[:, first:last]], last - first, meta.channels)


def _skip(blocks: Iterator[np.ndarray], count: int) -> Iterator[np.ndarray]:
    for block in blocks:
        if count >= block.shape[1]:
            count -= block.shape[1]
            continue
        yield block[:, count:]
        count = 0


def _progressed(blocks: Iterator[np.ndarray], rate: int, progress: Progress | None) -> Iterator[np.ndarray]:
    for block in blocks:
        yield block
        if progress is not None:
            progress(block.shape[1] / rate)


class _Counter:
    def __init__(self) -> None:
        self.samples = 0

    def wrap(self, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            self.samples += block.shape[1]
            yield block


def verify_file(pool: CodecPool, source: Path, n_codebooks: int | None = None) -> dict[str, int | float]:
    """Encode ``source`` chunked and as one whole-file window; count frames that differ."""
    codec = pool.codec()
    reader = open_audio(source)
    try:
        parts = list(_prepared(reader, codec.sample_rate, source)[2])
    finally:
        reader.close()
    audio = np.concatenate(parts, axis=1)
    chunked = codec.encode(audio, n_codebooks)
    whole = ChunkedCodec(codec.model, codec.device, 0, 0, 1).encode(audio, n_codebooks)
    differing = (
        int((chunked != whole).any(axis=(1, 2)).sum())
        if chunked.shape == whole.shape
        else max(len(chunked), len(whole))
    )
    return {
        "frames_compared": int(whole.shape[0]),
        "frames_differing": differing,
        "window_s": codec.encode_window_s,
        "batch": codec.batch_size,
    }


__all__ = [
    "CodecPool",
    "CodecSettings",
    "Encoder",
    "Result",
    "decode_array",
    "decode_file",
    "encode_file",
    "verify_file",
]
