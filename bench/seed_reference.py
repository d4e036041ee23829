"""The seed script's approach, written out as a reference to measure against.

What the seed did (as the project's issues describe it): hold the whole
signal in memory, encode it one window at a time (batch 1) with the layer
padding off and the signal padded by the model's delay -- DAC 1.0.0's
chunking, whose frames line up with a whole-file pass except near the edges --
and decode all codes in a single unchunked pass. It runs DAC's stock network, as
the seed did. Nothing here is used by dacwatch itself.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch

from dacwatch.codec.chunked import set_numerics
from dacwatch.codec.model import DacNet, encoder_receptive_field, layer_padding

SEED_WINDOW_S = 5.0  # the seed's window (DESIGN.md's 5 s CPU figure)


def numerics(device: str, precision: str | None) -> contextlib.AbstractContextManager[Any]:
    """The seed at one of dacwatch's precisions, for a like-for-like comparison: the
    same CUDA flags, and bf16 autocast around the network (not the quantizer). None
    leaves PyTorch's defaults, which is what the seed itself ran (cuDNN may use TF32)."""
    if precision is None:
        return contextlib.nullcontext()
    set_numerics(torch.device(device), precision)
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def encode(
    model: DacNet,
    audio: np.ndarray,
    window_s: float = SEED_WINDOW_S,
    device: str = "cpu",
    precision: str | None = None,
) -> np.ndarray:
    """``[channels, samples]`` at the model rate -> codes ``[frames, nq, channels]``.

    Valid convolutions over a signal zero-padded by the receptive field: the
    interior matches a whole-file pass, the frames near each edge do not
    (zero samples are not what each layer's own padding sees).
    """
    rf = encoder_receptive_field(model)
    hop = rf.stride
    channels, length = audio.shape
    total = math.ceil(length / hop)
    n = max(1, (round(window_s * model.sample_rate) - rf.size) // hop + 1)
    right = total * hop - length + rf.size
    signal = np.pad(np.asarray(audio, np.float32), ((0, 0), (rf.padding, right)))
    out = np.zeros((total, int(model.n_codebooks), channels), np.int16)
    with torch.inference_mode(), layer_padding(model.encoder, False):
        for t0 in range(0, total, n):
            count = min(n, total - t0)
            a = t0 * hop  # frame t0 starts at t0*hop - padding, i.e. t0*hop in the padded signal
            for c in range(channels):  # one window, one channel at a time
                x = torch.from_numpy(signal[c : c + 1, a : a + rf.size + (count - 1) * hop])[:, None, :]
                with numerics(device, precision):
                    z = model.encoder(x.to(device))
                codes = model.quantizer(z.float())[1]
                out[t0 : t0 + count, :, c] = codes[0, :, :count].cpu().numpy().T
    return out


def decode(model: DacNet, codes: np.ndarray, device: str = "cpu", precision: str | None = None) -> np.ndarray:
    """Codes ``[frames, nq, channels]`` -> audio ``[channels, samples]``, one unchunked pass."""
    rows = torch.from_numpy(codes.transpose(2, 1, 0).astype(np.int64)).to(device)
    with torch.inference_mode():
        z = model.quantizer.from_codes(rows)[0]
        with numerics(device, precision):
            audio: np.ndarray = model.decode(z)[:, 0].float().cpu().numpy()
    return audio
