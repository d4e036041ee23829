"""Block-wise audio: resampling and loudness equal their one-shot forms; every input format round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import soxr

from dacwatch.audio import AudioError, LoudnessMeter, Measurement, StreamResampler, measure, open_audio

from .conftest import noise, tone


@pytest.mark.parametrize("length", [0, 100, 31999, 44100, 166151])
@pytest.mark.parametrize("block", [17, 509, 44100])
def test_stream_resampling_equals_one_shot(length: int, block: int) -> None:
    x = noise(2, length, seed=length)
    expected = soxr.resample(x.T, 48000, 44100, quality="HQ").T if length else np.zeros((2, 0), np.float32)
    resampler = StreamResampler(48000, 44100, 2)
    parts = list(resampler.stream(x[:, i : i + block] for i in range(0, length, block)))
    got = np.concatenate(parts, axis=1) if parts else np.zeros((2, 0), np.float32)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("block", [100, 4410, 96000])
def test_block_loudness_equals_one_shot(block: int) -> None:
    x = noise(2, 44100 * 4, seed=1)
    whole = LoudnessMeter(44100, 2)
    whole.add(x)
    parts = LoudnessMeter(44100, 2)
    for i in range(0, x.shape[1], block):
        parts.add(x[:, i : i + block])
    assert parts.result() == whole.result()
    # and it is BS.1770: agrees with pyloudnorm's independent implementation
    reference = pyloudnorm.Meter(44100).integrated_loudness(x.T.astype(np.float64))
    assert abs(whole.result().loudness - reference) < 0.1  # type: ignore[operator]


def test_silence_and_tiny_files_have_no_loudness_and_no_nan() -> None:
    for samples in (0, 441, 44100):
        meter = LoudnessMeter(44100, 1)
        meter.add(np.zeros((1, samples), np.float32))
        result = meter.result()
        assert result.loudness is None and result.gain_db() == 0.0


def test_gain_targets_minus_16_lufs_but_never_clips() -> None:
    assert Measurement(loudness=-26.0, peak=0.1, frames=1).gain_db() == pytest.approx(10.0)
    loud_peak = Measurement(loudness=-30.0, peak=0.5, frames=1).gain_db()
    assert loud_peak == pytest.approx(-20 * np.log10(0.5))


FORMATS = [
    ("wav", dict(format="WAV", subtype="PCM_16")),
    ("flac", dict(format="FLAC", subtype="PCM_24")),
    ("ogg", dict(format="OGG", subtype="VORBIS")),
    ("opus", dict(format="OGG", subtype="OPUS")),
    ("mp3", dict(format="MP3", subtype="MPEG_LAYER_III")),
]


@pytest.mark.parametrize("suffix, kwargs", FORMATS)
def test_soundfile_formats_read_in_blocks(tmp_path: Path, suffix: str, kwargs: dict[str, str]) -> None:
    rate = 48000 if suffix == "opus" else 44100
    path = tmp_path / f"a.{suffix}"
    sf.write(str(path), tone(rate, 1.0, 2), rate, **kwargs)
    reader = open_audio(path)
    blocks = list(reader.blocks(1000))
    reader.close()
    audio = np.concatenate(blocks, axis=1)
    assert reader.info.channels == 2 and reader.info.sample_rate == rate
    assert abs(audio.shape[1] - rate) < rate * 0.06  # lossy codecs pad a little
    assert 0.15 < float(np.abs(audio).max()) < 0.8  # lossy codecs overshoot a 0.3 tone a little


def _write_m4a(path: Path, rate: int, channels: int, seconds: float) -> None:
    import av

    data = tone(rate, seconds, channels).T.astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate, layout="stereo" if channels == 2 else "mono")
        for i in range(0, data.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, i : i + 1024]), format="fltp", layout=stream.layout.name
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_m4a_is_read_through_ffmpeg(tmp_path: Path) -> None:
    path = tmp_path / "a.m4a"
    _write_m4a(path, 44100, 2, 1.0)
    reader = open_audio(path)
    audio = np.concatenate(list(reader.blocks()), axis=1)
    reader.close()
    assert reader.info.backend == "ffmpeg" and audio.shape[0] == 2
    assert abs(audio.shape[1] - 44100) < 4096 and 0.1 < float(np.abs(audio).max()) < 0.6


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"this is text, not audio\n" * 20, "not audio")])
def test_not_audio_is_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message):
        open_audio(path)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    path = tmp_path / "pipe.wav"
    os.mkfifo(path)
    with pytest.raises(AudioError, match="not a regular file"):
        open_audio(path)


def test_nan_samples_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    x = tone(8000, 0.5, 1)
    x[100] = np.nan
    sf.write(str(path), x, 8000, subtype="FLOAT")
    reader = open_audio(path)
    with pytest.raises(AudioError, match="NaN"):
        measure(reader, str(path))


def test_truncated_wav_reads_what_is_there_or_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "t.wav"
    sf.write(str(path), tone(44100, 1.0, 2), 44100, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:20000])
    try:
        reader = open_audio(path)
        total = sum(b.shape[1] for b in reader.blocks())
        assert 0 < total <= 44100
    except AudioError as exc:
        assert str(path) in str(exc)
