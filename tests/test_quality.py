"""The quality figure: metrics with known answers, and the figure through encode, info and
the daemon's min_quality."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dacwatch.codec.model import ModelSpec
from dacwatch.codec.quality import MEL_BANDS, MEL_WINDOWS, compare, max_error, mel_distance, si_sdr, spans
from dacwatch.convert import CodecPool, CodecSettings, encode_file
from dacwatch.formats import container

from .daemon import Daemon, wav

RATE = 16000


def tone(freq: float, amplitude: float, seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return np.tile(amplitude * np.sin(2 * np.pi * freq * t), (channels, 1)).astype(np.float64)


def test_identical_audio_has_no_distance() -> None:
    x = tone(440, 0.5) + tone(1250, 0.1)
    assert si_sdr(x, x) == math.inf
    assert mel_distance(x, x, RATE) == 0.0
    assert max_error(x, x) == 0.0
    q = compare([(x, x)], RATE, "full")
    assert q.si_sdr_db is None and q.mel_distance == 0.0 and q.seconds == 1.0  # inf is not a JSON number


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.05), (0.3, 0.3), (0.2, 0.002)])
def test_si_sdr_of_known_added_noise(a: float, b: float) -> None:
    """Two sines of whole cycles at other frequencies are orthogonal: SI-SDR = 20 log10(a/b)."""
    x = tone(100, a, channels=2)
    n = tone(310, b, channels=2)
    assert si_sdr(x, x + n) == pytest.approx(20 * math.log10(a / b), abs=0.01)
    assert si_sdr(x, 3.0 * (x + n)) == pytest.approx(20 * math.log10(a / b), abs=0.01)  # scale-invariant
    assert max_error(x, x + n) == pytest.approx(b / a, rel=1e-3)


def test_a_time_shift_costs_sdr_more_than_mel_distance() -> None:
    x = tone(220, 0.5) + tone(1000, 0.2)
    shifted = np.roll(x, 8, axis=1)
    noisy = x + 0.05 * np.random.default_rng(0).standard_normal(x.shape)
    assert si_sdr(x, shifted) < 5.0 < si_sdr(x, noisy)
    assert 0.0 < mel_distance(x, shifted, RATE) < mel_distance(x, noisy, RATE)


def test_silence() -> None:
    silent = np.zeros((1, RATE))
    assert math.isnan(si_sdr(silent, silent))
    q = compare([(silent, silent)], RATE, "sample")
    assert q.si_sdr_db is None and q.mel_distance == 0.0 and q.max_error == 0.0


def test_mel_distance_is_audiotools_own_mel_loss() -> None:
    """DAC's copy of the loss, with DAC's training configuration, against audiotools'."""
    from audiotools import AudioSignal
    from audiotools.metrics.spectral import MelSpectrogramLoss

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, RATE)) * 0.1
    y = x + rng.standard_normal((2, RATE)) * 0.02
    theirs = MelSpectrogramLoss(
        n_mels=list(MEL_BANDS),
        window_lengths=list(MEL_WINDOWS),
        mag_weight=0.0,
        pow=1.0,
        mel_fmin=[0.0] * 7,
        mel_fmax=[None] * 7,
    )
    as_signal = lambda a: AudioSignal(torch.from_numpy(a.astype(np.float32))[None], RATE)  # noqa: E731
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="stft_data changed shape")
        expected = float(theirs(as_signal(y), as_signal(x)))
    assert mel_distance(x, y, RATE) == pytest.approx(expected, rel=1e-5)


def test_sample_spans_are_a_small_spread_share() -> None:
    rate = 44100
    for seconds in (0.3, 5, 12, 60, 600, 3 * 3600):
        total = int(seconds * rate)
        got = spans(total, rate, "sample")
        covered = sum(b - a for a, b in got)
        assert all(0 <= a < b <= total for a, b in got)
        assert covered <= max(0.05 * total, 0.5 * rate) + 3 or covered == total
        assert covered <= 3 * rate
        if seconds >= 60:
            assert len(got) == 3 and got[0][0] == 0 and got[-1][1] == total
    assert spans(1000, rate, "full") == [(0, 1000)]


def test_an_encode_records_its_quality_and_info_shows_it(tmp_path: Path, tiny_weights: Path) -> None:
    source = wav(tmp_path / "talk.wav", seconds=12.0, rate=44100)
    pool = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu"))
    result = encode_file(pool, source, tmp_path / "talk.dac", quality="sample")
    assert result.quality is not None and result.quality.mode == "sample"
    assert 0.5 <= result.quality.seconds <= 0.7  # 5% of 12 s, at least half a second
    recorded = container.read(tmp_path / "talk.dac").metadata.quality
    assert recorded == result.quality.as_dict()
    assert math.isfinite(recorded["mel_distance"]) and recorded["mel_distance"] > 0  # random weights: lossy
    out = subprocess.run(
        [sys.executable, "-m", "dacwatch", "info", str(tmp_path / "talk.dac")], capture_output=True, text=True
    )
    assert "quality    SI-SDR" in out.stdout and "sample, 0.6 s compared" in out.stdout, out.stdout
    full = encode_file(pool, source, tmp_path / "full.dac", quality="full").quality
    assert full is not None and full.seconds == pytest.approx(12.0, abs=0.02)


def test_min_quality_sends_the_file_to_failed_with_its_figures(tmp_path: Path, tiny_weights: Path) -> None:
    d = Daemon(tmp_path, tiny_weights, codec__quality="sample", codec__min_quality=90.0)  # no codec reaches 90 dB
    try:
        d.start().ready()
        wav(d.inbox / "hiss.wav", seconds=2.0, rate=44100)
        d.wait_event("job.failed")
        note = json.loads((d.failed / "hiss.wav.error.json").read_text())
        assert "does not survive this codec" in note["error"] and "SI-SDR" in note["error"]
        assert "below codec.min_quality 90 dB" in note["error"]
        assert (d.failed / "hiss.wav").exists() and not list(d.outbox.rglob("*.dac"))
    finally:
        d.close()
