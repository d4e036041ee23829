"""Audio in and out, block by block, never the whole file.

Reading goes through soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, Opus, MP3)
and falls back to PyAV (ffmpeg: M4A/AAC, MP4 and the rest). Resampling is
soxr's streaming resampler, loudness is libebur128's gated BS.1770 meter fed
block by block. Blocks are ``[channels, samples]`` float32.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import soundfile as sf
import soxr

from dacwatch import fsops
from dacwatch.errors import PermanentError
from dacwatch.faults import os_fault

BLOCK_FRAMES = 65536
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000
MAX_CHANNELS = 256
TARGET_LUFS = -16.0  # what DAC normalises to before encoding

AUDIO_FORMATS = ("wav", "flac")
WAV_SUBTYPES = {"float": "FLOAT", "pcm16": "PCM_16", "pcm24": "PCM_24"}


class AudioError(PermanentError):
    """Input that is not usable audio."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int | None  # None when the container does not say
    backend: str

    @property
    def duration_s(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate


class AudioReader(Protocol):
    info: AudioInfo

    def blocks(self, frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]: ...

    def close(self) -> None: ...


def check_regular_file(path: Path) -> os.stat_result:
    """Refuse FIFOs, devices and sockets before anything opens them (opening a FIFO blocks).

    A file that cannot be looked at (gone, no permission, a failing disk) is not bad
    audio: that is a fault of the moment, the file is kept."""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise os_fault(exc, f"{path}: does not exist") from exc
    except OSError as exc:
        raise os_fault(exc, f"{path}: cannot be read") from exc
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"{path}: not a regular file")
    return st


def _validate(info: AudioInfo, where: str) -> AudioInfo:
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{where}: sample rate {info.sample_rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(f"{where}: {info.channels} channels (1..{MAX_CHANNELS} supported)")
    return info


class _Kept:
    """A file object for libsndfile's virtual I/O that keeps the first ``OSError``.

    An exception cannot cross libsndfile's C callbacks (cffi prints it and returns 0,
    which reads as the end of the file or a short write), so it is kept here and
    raised by :meth:`check` once libsndfile returns: a failing disk must never pass
    for a short file, nor a full one for damaged audio."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None

    def _keep(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc

    def readinto(self, buffer: Any) -> int:
        if self.error is not None:
            return 0
        try:
            return self.file.readinto(buffer)  # type: ignore[attr-defined,no-any-return]
        except OSError as exc:
            self._keep(exc)
            return 0

    def write(self, data: bytes) -> int:
        if self.error is not None:
            return 0
        try:
            return self.file.write(data)
        except OSError as exc:
            self._keep(exc)
            return 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        try:
            return self.file.seek(offset, whence)
        except OSError as exc:
            self._keep(exc)
            return self.file.tell()

    def tell(self) -> int:
        return self.file.tell()

    def check(self, what: str) -> None:
        """Raise the kept error, classified, if there is one."""
        if self.error is not None:
            raise os_fault(self.error, what) from self.error


class _SoundfileReader:
    def __init__(self, path: Path) -> None:
        self._raw = fsops.open_read(path)
        self._kept = _Kept(self._raw)
        try:
            self._file = sf.SoundFile(self._kept)
        except BaseException:
            self._raw.close()
            self._kept.check(f"reading {path}")
            raise
        self._path = path
        try:
            self.info = _validate(
                AudioInfo(self._file.samplerate, self._file.channels, self._file.frames, "soundfile"), str(path)
            )
        except BaseException:
            self.close()
            raise

    def blocks(self, frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        self._file.seek(0)
        while True:
            try:
                data = self._file.read(frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                self._kept.check(f"reading {self._path}")
                raise AudioError(f"{self._path}: damaged audio ({exc})") from exc
            self._kept.check(f"reading {self._path}")
            if not len(data):
                return
            yield np.ascontiguousarray(data.T)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._raw.close()

    def __del__(self) -> None:  # as soundfile's own files close when dropped, so does the one under it
        with contextlib.suppress(Exception):
            self.close()


class _AvReader:
    def __init__(self, path: Path) -> None:
        import av

        self._av = av
        self._path = path
        try:
            self._container = av.open(str(path))
        except OSError as exc:  # ffmpeg's errors of the system (EACCES, EIO...) are OSErrors too
            raise os_fault(exc, f"{path}: cannot be read") from exc
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise AudioError(f"{path}: not audio that libsndfile or ffmpeg can read ({reason})") from exc
        if not self._container.streams.audio:
            self._container.close()
            raise AudioError(f"{path}: has no audio stream")
        stream = self._container.streams.audio[0]
        channels = (
            stream.codec_context.channels if hasattr(stream.codec_context, "channels") else stream.layout.nb_channels
        )
        frames = None
        if stream.duration is not None and stream.time_base is not None:
            frames = round(float(stream.duration * stream.time_base) * stream.sample_rate)
        self.info = _validate(AudioInfo(int(stream.sample_rate or 0), int(channels or 0), frames, "ffmpeg"), str(path))

    def blocks(self, frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        av = self._av
        self._container.seek(0)
        stream = self._container.streams.audio[0]
        pending: list[np.ndarray] = []
        count = 0
        try:
            for frame in self._container.decode(stream):
                data = _frame_to_planar(frame)
                if data.shape[0] != self.info.channels:
                    raise AudioError(f"{self._path}: channel count changes inside the stream")
                pending.append(data)
                count += data.shape[1]
                if count >= frames:
                    yield np.concatenate(pending, axis=1)
                    pending, count = [], 0
        except OSError as exc:
            raise os_fault(exc, f"reading {self._path}") from exc
        except av.error.FFmpegError as exc:
            raise AudioError(f"{self._path}: damaged audio ({getattr(exc, 'strerror', None) or exc})") from exc
        if pending:
            yield np.concatenate(pending, axis=1)

    def close(self) -> None:
        self._container.close()


def _frame_to_planar(frame: Any) -> np.ndarray:
    """An ffmpeg audio frame as float32 ``[channels, n]``, whatever its sample format."""
    data = frame.to_ndarray()
    fmt = frame.format
    channels = len(frame.layout.channels)
    if not fmt.is_planar:
        data = data.reshape(-1, channels).T
    data = np.asarray(data)
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    info = np.iinfo(data.dtype)
    if info.min == 0:  # unsigned 8-bit
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    return (data.astype(np.float32) / float(-info.min)).astype(np.float32)


def open_audio(path: str | os.PathLike[str]) -> AudioReader:
    """Open ``path`` for block reading; a clear :class:`AudioError` if it is not audio."""
    path = Path(path)
    st = check_regular_file(path)
    if st.st_size == 0:
        raise AudioError(f"{path}: empty file")
    try:
        return _SoundfileReader(path)
    except OSError as exc:  # opening it: the file system's fault, not the file's
        raise os_fault(exc, f"{path}: cannot be read") from exc
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    return _AvReader(path)


# ---------------------------------------------------------------------- loudness


@dataclass(frozen=True)
class Measurement:
    """First pass over the input: loudness, peak, length, and whether all samples are finite."""

    loudness: float | None  # LUFS; None when gating leaves nothing (silence, under 400 ms)
    peak: float
    frames: int

    def gain_db(self, target: float = TARGET_LUFS) -> float:
        """The gain DAC's preprocessing applies: to ``target`` LUFS, then down so no sample exceeds 1."""
        gain = 0.0 if self.loudness is None else target - self.loudness
        if self.peak > 0 and self.peak * 10 ** (gain / 20) > 1.0:
            gain = -20 * math.log10(self.peak)
        return gain


class LoudnessMeter:
    """Streaming integrated loudness (ITU-R BS.1770, gated) through libebur128."""

    def __init__(self, sample_rate: int, channels: int) -> None:
        from pyebur128 import ChannelType, MeasurementMode, R128State

        self._state = R128State(channels, sample_rate, MeasurementMode.MODE_I)
        if channels > 6:  # beyond 5.1 there is no standard layout: weigh every channel alike
            for c in range(channels):
                self._state.set_channel(c, ChannelType.LEFT)
        self.channels = channels
        self.frames = 0
        self.peak = 0.0

    def add(self, block: np.ndarray) -> None:
        if block.shape[1] == 0:
            return
        self._state.add_frames(np.ascontiguousarray(block.T, dtype=np.float64).ravel(), block.shape[1])
        self.frames += block.shape[1]
        self.peak = max(self.peak, float(np.abs(block).max()))

    def result(self) -> Measurement:
        from pyebur128 import get_loudness_global

        value = float(get_loudness_global(self._state)) if self.frames else -math.inf
        return Measurement(loudness=value if math.isfinite(value) else None, peak=self.peak, frames=self.frames)


def measure(reader: AudioReader, where: str = "input", tick: Callable[[], None] | None = None) -> Measurement:
    """Pass one: loudness and peak, refusing NaN or infinite samples (``tick`` after each block)."""
    meter = LoudnessMeter(reader.info.sample_rate, reader.info.channels)
    for block in reader.blocks():
        if tick is not None:
            tick()
        if not np.isfinite(block).all():
            raise AudioError(
                f"{where}: has NaN or infinite samples near {meter.frames / reader.info.sample_rate:.3f} s"
            )
        meter.add(block)
    return meter.result()


# ---------------------------------------------------------------------- resampling


class StreamResampler:
    """soxr's streaming resampler over ``[channels, n]`` blocks; equal to one-shot ``soxr.resample``."""

    def __init__(self, in_rate: int, out_rate: int, channels: int, quality: str = "HQ") -> None:
        self.passthrough = in_rate == out_rate
        self.channels = channels
        if not self.passthrough:
            self._stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality=quality)

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.passthrough:
            return block
        out = self._stream.resample_chunk(np.ascontiguousarray(block.T, dtype=np.float32), last=last)
        return np.ascontiguousarray(np.asarray(out).reshape(-1, self.channels).T)

    def stream(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            out = self.process(block)
            if out.shape[1]:
                yield out
        tail = self.process(np.zeros((self.channels, 0), dtype=np.float32), last=True)
        if tail.shape[1]:
            yield tail


def scaled(blocks: Iterable[np.ndarray], gain_db: float) -> Iterator[np.ndarray]:
    factor = np.float32(10 ** (gain_db / 20))
    for block in blocks:
        yield block * factor if gain_db else block


def fit_length(blocks: Iterable[np.ndarray], length: int, channels: int) -> Iterator[np.ndarray]:
    """Cut the stream at ``length`` samples, or pad it with silence up to there."""
    done = 0
    for block in blocks:
        take = min(block.shape[1], length - done)
        if take > 0:
            yield block[:, :take]
            done += take
    while done < length:
        n = min(BLOCK_FRAMES, length - done)
        yield np.zeros((channels, n), dtype=np.float32)
        done += n


# ---------------------------------------------------------------------- writing


@dataclass(frozen=True)
class OutputFormat:
    container: str = "wav"  # wav | flac
    sample_format: str = "float"  # float | pcm16 | pcm24

    def __post_init__(self) -> None:
        if self.container not in AUDIO_FORMATS:
            raise ValueError(f"output format must be one of {', '.join(AUDIO_FORMATS)}, not {self.container!r}")
        if self.sample_format not in WAV_SUBTYPES:
            raise ValueError(f"sample format must be one of {', '.join(WAV_SUBTYPES)}, not {self.sample_format!r}")

    @property
    def suffix(self) -> str:
        return "." + self.container

    def soundfile_args(self, frames_hint: int) -> tuple[str, str]:
        if self.container == "flac":
            return "FLAC", "PCM_16" if self.sample_format == "pcm16" else "PCM_24"
        subtype = WAV_SUBTYPES[self.sample_format]
        # Plain WAV stops at 4 GiB; RF64 carries on where a long file needs it.
        width = {"FLOAT": 4, "PCM_16": 2, "PCM_24": 3}[subtype]
        return ("RF64" if frames_hint * width >= (1 << 32) - (1 << 20) else "WAV"), subtype


def write_audio(
    path: str | os.PathLike[str],
    blocks: Iterable[np.ndarray],
    sample_rate: int,
    channels: int,
    fmt: OutputFormat,
    frames_hint: int = 0,
) -> int:
    """Write ``[channels, n]`` blocks to ``path`` as they come; returns the samples written."""
    container, subtype = fmt.soundfile_args(frames_hint * channels)
    written = 0
    # Through the seam (libsndfile's virtual I/O): a full disk is an OSError of ours,
    # raised as such, never libsndfile's "System error".
    with fsops.open_write(path) as raw:
        kept = _Kept(raw)
        try:
            with sf.SoundFile(
                kept, "w", samplerate=sample_rate, channels=channels, format=container, subtype=subtype
            ) as out:
                for block in blocks:
                    if fmt.sample_format != "float":
                        block = np.clip(block, -1.0, 1.0)
                    out.write(np.ascontiguousarray(block.T))
                    if kept.error is not None:
                        raise kept.error
                    written += block.shape[1]
        except (sf.LibsndfileError, AssertionError):  # soundfile asserts on a short write
            if kept.error is not None:
                raise kept.error from None
            raise
        if kept.error is not None:
            raise kept.error
    return written
