"""A quality figure per file: how far the codec moved this audio, measured at encode time.

After encoding, spans of the file are decoded from the codes just made and compared
with the input the encoder saw (loudness-normalised, at the model's rate):

- ``mel_distance``: the DAC paper's multi-scale mel distance, DAC's own
  ``MelSpectrogramLoss`` with its training configuration (7 scales, windows of 32 to
  2048 samples, 5 to 320 mel bands, L1 between log10 magnitudes); 0 for identical audio;
- ``si_sdr_db``: scale-invariant signal-to-distortion ratio in dB over every channel
  (higher is better; ``None`` where it is not finite: a silent input, or an exact copy);
- ``max_error``: the largest sample error divided by the input's peak.

``sample`` compares three spans (start, middle, end) together 5% of the file, between
0.5 and 3 seconds in all; ``full`` the whole file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MODES = ("off", "sample", "full")
SAMPLE_SHARE = 0.05
SAMPLE_MIN_S, SAMPLE_MAX_S = 0.5, 3.0
# DAC's training configuration of its mel loss (descript-audio-codec, conf/base.yml).
MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
MEL_BANDS = (5, 10, 20, 40, 80, 160, 320)


@dataclass(frozen=True)
class Quality:
    mode: str
    seconds: float  # audio compared
    mel_distance: float
    si_sdr_db: float | None
    max_error: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        sdr = "n/a" if self.si_sdr_db is None else f"{self.si_sdr_db:.1f} dB"
        return (
            f"SI-SDR {sdr}, mel distance {self.mel_distance:.3f}, max error {self.max_error:.3g} of peak "
            f"({self.mode}, {self.seconds:.1f} s compared)"
        )


def spans(total: int, rate: int, mode: str) -> list[tuple[int, int]]:
    """Sample ranges ``[a, b)`` of a ``total``-sample file to compare (module doc)."""
    if mode == "full" or total == 0:
        return [(0, total)] if total else []
    want = int(min(max(SAMPLE_SHARE * total, SAMPLE_MIN_S * rate), SAMPLE_MAX_S * rate))
    if want >= total:
        return [(0, total)]
    if want < 3 * rate // 4:  # too little to cut in three: one span in the middle
        a = (total - want) // 2
        return [(a, a + want)]
    third = want // 3
    middle = (total - third) // 2
    return [(0, third), (middle, middle + third), (total - third, total)]


class Capture:
    """Copies the samples of given spans out of a stream of ``[channels, n]`` blocks."""

    def __init__(self, wanted: list[tuple[int, int]]) -> None:
        self.wanted = wanted
        self.parts: dict[tuple[int, int], list[np.ndarray]] = {s: [] for s in wanted}
        self.position = 0

    def wrap(self, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            a, b = self.position, self.position + block.shape[1]
            for s in self.wanted:
                lo, hi = max(a, s[0]), min(b, s[1])
                if lo < hi:
                    self.parts[s].append(np.array(block[:, lo - a : hi - a], dtype=np.float32))
            self.position = b
            yield block

    def span(self, s: tuple[int, int]) -> np.ndarray:
        return np.concatenate(self.parts[s], axis=1) if self.parts[s] else np.zeros((0, 0), np.float32)


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """SI-SDR in dB of ``estimate`` against ``reference`` (same shape, all channels as one
    signal); ``inf`` for an exact copy, ``nan`` for a silent reference."""
    x = reference.astype(np.float64).ravel()
    y = estimate.astype(np.float64).ravel()
    energy = float(x @ x)
    if energy == 0.0:
        return math.nan
    target = (float(y @ x) / energy) * x
    noise = y - target
    residual = float(noise @ noise)
    return math.inf if residual == 0.0 else 10.0 * math.log10(float(target @ target) / residual)


def max_error(reference: np.ndarray, estimate: np.ndarray) -> float:
    peak = float(np.abs(reference).max()) if reference.size else 0.0
    worst = float(np.abs(estimate.astype(np.float64) - reference).max()) if reference.size else 0.0
    return worst / peak if peak > 0 else worst


_MEL_LOSS: Any = None


def mel_distance(reference: np.ndarray, estimate: np.ndarray, rate: int) -> float:
    """The DAC paper's multi-scale mel distance between ``[channels, samples]`` arrays."""
    global _MEL_LOSS
    import torch
    from audiotools import AudioSignal
    from dac.nn.loss import MelSpectrogramLoss

    if _MEL_LOSS is None:
        _MEL_LOSS = MelSpectrogramLoss(
            n_mels=list(MEL_BANDS),
            window_lengths=list(MEL_WINDOWS),
            mag_weight=0.0,
            pow=1.0,
            clamp_eps=1e-5,
            mel_fmin=[0.0] * len(MEL_WINDOWS),
            mel_fmax=[None] * len(MEL_WINDOWS),
        )
    # audiotools warns each time one signal's STFT is taken at another window size: by design here.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="stft_data changed shape")
        x = AudioSignal(torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))[None], rate)
        y = AudioSignal(torch.from_numpy(np.ascontiguousarray(estimate, dtype=np.float32))[None], rate)
        return float(_MEL_LOSS(y, x))


def compare(pairs: list[tuple[np.ndarray, np.ndarray]], rate: int, mode: str) -> Quality:
    """The figures over ``(input, decoded)`` pairs of ``[channels, samples]`` spans."""
    pairs = [(x, y[:, : x.shape[1]]) for x, y in pairs if x.size]
    if not pairs:
        return Quality(mode, 0.0, 0.0, None, 0.0)
    reference = np.concatenate([x for x, _ in pairs], axis=1)
    estimate = np.concatenate([y for _, y in pairs], axis=1)
    sdr = si_sdr(reference, estimate)
    weights = [x.shape[1] for x, _ in pairs]
    mel = sum(w * mel_distance(x, y, rate) for w, (x, y) in zip(weights, pairs, strict=True)) / sum(weights)
    return Quality(
        mode=mode,
        seconds=reference.shape[1] / rate,
        mel_distance=mel,
        si_sdr_db=sdr if math.isfinite(sdr) else None,
        max_error=max_error(reference, estimate),
    )


__all__ = ["MODES", "Capture", "Quality", "compare", "max_error", "mel_distance", "si_sdr", "spans"]
