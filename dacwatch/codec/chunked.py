"""Exact chunked DAC encoding and decoding over arrays and streams of blocks.

Encoding (DESIGN.md, "Exact chunking"): encoder frame ``t`` reads padded-file
samples ``[t*S - P, t*S - P + F)``. Frames whose whole receptive field lies
inside the file (*interior* frames) do not see any layer's zero padding in a
whole-file pass, so a window run with padding off ("valid" convolutions) over
exactly their samples gives the same numbers. The few frames at each edge do
see padding; they come from one window at each end run with padding on,
starting at the file's own edge and aligned to the hop, keeping only frames
that do not reach the window's inner edge.

Decoding: every output sample depends on a bounded interval of code frames
(:func:`dacwatch.codec.model.decoder_context`). Each window decodes its own frames
plus that context on both sides with padding on and keeps the centre; windows
touching the file's edges see the same padding as the whole-file pass.

Shapes: audio is ``[channels, samples]`` float32 at the model's rate; codes
are ``[frames, codebooks, channels]`` int16, time first like the container.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dacwatch.codec import tuning
from dacwatch.codec.gate import DeviceGate
from dacwatch.codec.model import (
    DacNet,
    DecoderContext,
    back_interval,
    decoder_context,
    decoder_output_length,
    decoder_stages,
    encoder_receptive_field,
    layer_padding,
)
from dacwatch.codec.windows import (
    MIN_WINDOW_FRAMES,
    ReceptiveField,
    WindowSpec,
    ceil_to,
    encode_plan,
    halved,
    long_file_prefix,
    lookahead,
)
from dacwatch.errors import ConfigError, OutOfMemoryError, PermanentError

# Per-device defaults, chosen by bench/ (DESIGN.md, "Performance notes"): on a
# CPU small windows stay in cache; on a GPU large windows in big batches.
CPU_ENCODE_WINDOW_S = 1.0
CPU_DECODE_WINDOW_S = 4.0
# Samples per depth-first tile after the first decoder block (0 = off). 32768: on a 2-core
# Zen 4 EPYC with the fused Winograd kernels a 10 s decode ran faster than with 16384 in 18
# of 19 rounds (three runs in one process, interleaved; medians of the per-round ratios
# 1.09x, 1.16x and 1.09x), with 10-30 MB more peak RSS; 4096 and 8192 ran at 0.70x and
# 0.85x, 49152 and 65536 no faster than 32768. On a Zen 5, before the fused kernels, 16384
# and 32768 ran alike.
CPU_DECODE_TILE = 32768
GPU_ENCODE_WINDOW_S = 10.0
GPU_DECODE_WINDOW_S = 5.0
CPU_BATCH = 1
GPU_BATCH = 16

# Numerics (DESIGN.md, "GPU"). float32 is exact: no TF32 in convolutions or
# matrix products, cuDNN limited to deterministic algorithms and never
# benchmarking (which could pick another algorithm per window shape). tf32 lets
# cuDNN and cuBLAS use TF32 tensor cores and pick the fastest algorithm per
# shape; bf16 runs encoder and decoder under bfloat16 autocast, with the
# quantizer (nearest codebook entry, code lookup) kept in float32. On a CPU
# tf32 is float32 (there is no TF32 there). Only float32 promises that the
# codes do not depend on the windows; bench/ measures how far the others move.
PRECISIONS: tuple[str, ...] = ("float32", "tf32", "bf16")


DEVICE_NAMES = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def devices_present() -> str:
    """The devices this host has, for error messages: ``cpu, cuda:0 (NVIDIA H100 80GB HBM3)``."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(count)]
    return ", ".join(["cpu", *gpus])


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU; ``cuda`` is
    ``cuda:0``. Anything else, or a GPU this host does not have, is a :class:`ConfigError`
    naming the devices present."""
    if not DEVICE_NAMES.match(device):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N (here: {devices_present()})")
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dev = torch.device("cuda:0" if device == "cuda" else device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise ConfigError(f"device {device} does not exist on this host (here: {devices_present()})")
    return dev


def set_numerics(device: torch.device, precision: str) -> None:
    """Set the process-wide CUDA math flags for ``precision`` (no effect on a CPU).

    They are global to the process, so they are set before every forward pass of
    a codec: one daemon runs one precision on all its devices.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if device.type != "cuda":
        return
    exact = precision == "float32"
    # bf16 runs the network under autocast; what stays in float32 (the quantizer's
    # search and code lookup) stays IEEE.
    fp32 = "tf32" if precision == "tf32" else "ieee"
    torch.backends.cudnn.conv.fp32_precision = fp32  # type: ignore[attr-defined]
    torch.backends.cuda.matmul.fp32_precision = fp32
    torch.backends.cudnn.deterministic = exact
    torch.backends.cudnn.benchmark = not exact


class CodeArray(Protocol):
    """What decoding reads codes from: an ndarray or a memmap ``[frames, codebooks, channels]``."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: slice) -> np.ndarray: ...


# What an encoder pass computes: ("codes", codebooks) or ("latents", 0); rows in,
# [rows, K, frames] out.
RowPass = tuple[str, int]


@dataclass
class _Window:
    first_frame: int  # global index of the first frame this window keeps
    skip: int  # frames of the window's output to drop before that
    count: int  # frames kept
    samples: np.ndarray  # [channels, window samples]


class ChunkedCodec:
    """A loaded DAC network wrapped for exact windowed inference.

    ``encode_window_s``/``decode_window_s`` of 0 mean one window for the whole
    file (the whole-file reference). ``batch_size`` is how many windows share
    one forward pass (each channel of a window is one row). Neither changes
    the result.
    """

    def __init__(
        self,
        model: DacNet,
        device: str | torch.device = "cpu",
        encode_window_s: float | None = None,
        decode_window_s: float | None = None,
        batch_size: int | None = None,
        precision: str = "float32",
    ) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        set_numerics(torch.device("cpu"), precision)  # validates the name
        self.precision = precision
        self.model = model.to(self.device)
        gpu = self.device.type == "cuda"
        self.sample_rate = int(model.sample_rate)
        self.hop = int(model.hop_length)
        self.n_codebooks = int(model.n_codebooks)
        self.codebook_size = int(model.codebook_size)
        self.dtype = next(model.parameters()).dtype  # precision follows the network
        self.rf: ReceptiveField = encoder_receptive_field(model)
        self.context: DecoderContext = decoder_context(model)
        self._stages = decoder_stages(model)
        # Depth-first decoding: stages after `tile_after` run on tiles of this many
        # output samples (0 = whole windows). On a CPU it keeps the late, high-rate
        # activations in cache; a GPU wants whole windows for parallelism.
        self.tile_after = 1
        self.tile_samples = 0 if gpu else CPU_DECODE_TILE
        if self.rf.stride != self.hop or self.context.hop != self.hop:
            raise ValueError("encoder stride, decoder upsampling and hop length disagree")
        self.encode_window_s = (
            (GPU_ENCODE_WINDOW_S if gpu else CPU_ENCODE_WINDOW_S) if encode_window_s is None else encode_window_s
        )
        self.decode_window_s = (
            (GPU_DECODE_WINDOW_S if gpu else CPU_DECODE_WINDOW_S) if decode_window_s is None else decode_window_s
        )
        self.batch_size = (GPU_BATCH if gpu else CPU_BATCH) if batch_size is None else batch_size
        if self.encode_window_s < 0 or self.decode_window_s < 0:
            raise ValueError("window length must be 0 (whole file) or positive seconds")
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        # Set when several files share the device (dacwatch.codec.gate): every model call goes
        # through it, and equal passes of different files run as one batch.
        self.gate: DeviceGate | None = None
        # Where the CPU decoder's kernel choice is cached (dacwatch.codec.tuning); with a
        # folder set, the first decode measures or reads it, so an encode never pays for it.
        self.kernels_dir: Path | None = None
        self._tuned = False
        self._tune_lock = threading.Lock()

    # ------------------------------------------------------------------ memory

    def geometry(self) -> tuple[int, float, float]:
        """``(batch, encode window s, decode window s)``: all that sets device memory."""
        return self.batch_size, self.encode_window_s, self.decode_window_s

    def shrink(self) -> bool:
        """After running out of memory: halve the batch; at batch 1, halve the windows
        (a whole-file window becomes the device's default first). False when batch and
        windows are already as small as they go. Neither changes any result."""
        if self.batch_size > 1:
            self.batch_size //= 2
            return True
        gpu = self.device.type == "cuda"
        smallest_encode = (self.rf.size + (MIN_WINDOW_FRAMES - 1) * self.hop) / self.sample_rate
        smallest_decode = MIN_WINDOW_FRAMES * self.hop / self.sample_rate
        encode = self.encode_window_s or (GPU_ENCODE_WINDOW_S if gpu else CPU_ENCODE_WINDOW_S)
        decode = self.decode_window_s or (GPU_DECODE_WINDOW_S if gpu else CPU_DECODE_WINDOW_S)
        encode = max(smallest_encode, encode / 2 if self.encode_window_s else encode)
        decode = max(smallest_decode, decode / 2 if self.decode_window_s else decode)
        if (encode, decode) == (self.encode_window_s, self.decode_window_s):
            return False
        self.encode_window_s, self.decode_window_s = encode, decode
        return True

    # ------------------------------------------------------------------ kernels

    def tune_kernels(self, folder: Path | None) -> dict[str, str]:
        """On a CPU, give each decoder layer with a choice of kernel the one measured
        fastest here (:mod:`dacwatch.codec.tuning`), cached in ``folder``; timed on the
        length each layer meets in this codec's decode windows and tiles."""
        with self._tune_lock:
            self._tuned = True
            if self.device.type != "cpu":
                return {}
            return tuning.tune(self.model, self.decoder_lengths(), folder)

    def _ensure_tuned(self) -> None:
        if not self._tuned and self.kernels_dir is not None:
            with self._tune_lock:
                if self._tuned:
                    return
            self.tune_kernels(self.kernels_dir)

    def decoder_lengths(self) -> dict[int, int]:
        """``{id(conv): positions}``: the input length each decoder convolution meets in
        one of this codec's decode windows (before the depth-first split) or tiles (after)."""
        frames = self.decode_frames_per_window() or round(CPU_DECODE_WINDOW_S * self.sample_rate / self.hop)
        window = (frames + self.context.left + self.context.right) * self.hop
        lengths: dict[int, int] = {}
        rate = 1  # positions per code frame at the current layer's input
        for i, (stage, _up, _later) in enumerate(self._stages):
            span = self.tile_samples if self.tile_samples and i > self.tile_after else window
            for conv in stage.modules():
                if isinstance(conv, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                    lengths[id(conv)] = max(1, span * rate // self.hop)
                    if isinstance(conv, torch.nn.ConvTranspose1d):
                        rate *= conv.stride[0]
        return lengths

    # ------------------------------------------------------------------ geometry

    def frames_per_window(self) -> int:
        """Frames one interior encode window yields; 0 means whole file."""
        if self.encode_window_s == 0:
            return 0
        samples = round(self.encode_window_s * self.sample_rate)
        return max(1, (samples - self.rf.size) // self.hop + 1)

    def decode_frames_per_window(self) -> int:
        if self.decode_window_s == 0:
            return 0
        return max(1, round(self.decode_window_s * self.sample_rate / self.hop))

    # ------------------------------------------------------------------ model calls

    def _numerics(self) -> contextlib.AbstractContextManager[Any]:
        """Inference under this codec's precision: flags set, bf16 autocast where asked."""
        set_numerics(self.device, self.precision)
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _upload(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """A host array as a ``dtype`` tensor on the device. To a GPU it goes through
        pinned memory, copied without blocking the host: the copy queues behind the
        device work already issued instead of waiting for it."""
        x = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return x.to(dtype)
        return x.pin_memory().to(self.device, non_blocking=True).to(dtype)

    def _latent_pass(self, rows: np.ndarray, padded: bool) -> torch.Tensor:
        """``[rows, samples]`` -> the encoder's continuous latents ``z`` ``[rows, D, frames]``
        (on the device, in the network's dtype)."""
        with layer_padding(self.model.encoder, padded):
            x = self._upload(rows, self.dtype)
            with self._numerics():
                z: torch.Tensor = self.model.encoder(x[:, None, :])
            return z.to(self.dtype)  # the quantizer's nearest-entry search stays in full precision

    def _encode_rows(self, rows: np.ndarray, padded: bool, n_quantizers: int) -> np.ndarray:
        """``[rows, samples]`` -> codes ``[rows, n_quantizers, frames]`` (int16)."""
        try:
            with torch.inference_mode():
                codes = self.model.quantizer(self._latent_pass(rows, padded), n_quantizers)[1]
                out: np.ndarray = codes.to("cpu", torch.int16).numpy()
                return out
        except torch.OutOfMemoryError as exc:
            raise OutOfMemoryError(f"out of memory encoding {rows.shape[0]} rows of {rows.shape[1]} samples") from exc

    def _latent_rows(self, rows: np.ndarray, padded: bool) -> np.ndarray:
        """``[rows, samples]`` -> latents ``[rows, D, frames]`` as float64."""
        with torch.inference_mode():
            out: np.ndarray = self._latent_pass(rows, padded).to("cpu", torch.float64).numpy()
            return out

    def _shared(
        self, key: tuple[Any, ...], rows: np.ndarray, windows: int, fn: Callable[[np.ndarray], tuple[np.ndarray, Any]]
    ) -> tuple[np.ndarray, Any]:
        """``fn(rows)``, through the device's gate when there is one (where a pass of
        another file with the same ``key`` may share the forward pass)."""
        if self.gate is None:
            return fn(rows)
        return self.gate.run((id(self), *key), rows, windows, self.batch_size, fn)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the device (and the network's padding state) for direct use of the model."""
        with self.gate.exclusive() if self.gate is not None else contextlib.nullcontext():
            yield

    def _rows(self, what: RowPass, rows: np.ndarray, padded: bool) -> tuple[np.ndarray, None]:
        kind, n_quantizers = what
        if kind == "latents":
            return self._latent_rows(rows, padded), None
        return self._encode_rows(rows, padded, n_quantizers), None

    def _run_encode(self, windows: Sequence[_Window], padded: bool, what: RowPass) -> Iterator[np.ndarray]:
        """Run windows of equal length in batches (``what``: codes or latents, ``[rows,
        samples]`` -> ``[rows, K, frames]``); yield what each window keeps, ``[frames, K, C]``."""
        for i in range(0, len(windows), self.batch_size):
            group = windows[i : i + self.batch_size]
            channels = group[0].samples.shape[0]
            rows = np.concatenate([w.samples for w in group], axis=0)
            key = ("encode", what, padded, channels, rows.shape[1])
            out, _ = self._shared(key, rows, len(group), lambda r: self._rows(what, r, padded))
            out = out.reshape(len(group), channels, out.shape[1], -1)
            for w, c in zip(group, out, strict=True):
                yield np.ascontiguousarray(c[..., w.skip : w.skip + w.count].transpose(2, 1, 0))

    def _check_quantizers(self, n_quantizers: int | None) -> int:
        n = self.n_codebooks if n_quantizers is None else int(n_quantizers)
        if not 1 <= n <= self.n_codebooks:
            raise ValueError(f"codebooks must be between 1 and {self.n_codebooks}, not {n}")
        return n

    # ------------------------------------------------------------------ encoding

    def encode(self, audio: np.ndarray, n_quantizers: int | None = None) -> np.ndarray:
        """Encode ``[channels, samples]`` at the model rate to codes ``[frames, nq, channels]``."""
        if audio.ndim != 2:
            raise ValueError("audio must be [channels, samples]")
        step = max(1, self.sample_rate)
        blocks = (audio[:, i : i + step] for i in range(0, audio.shape[1], step))
        return self._collect(self.encode_stream(blocks, audio.shape[0], n_quantizers), audio.shape[0], n_quantizers)

    def _collect(self, parts: Iterable[np.ndarray], channels: int, n_quantizers: int | None) -> np.ndarray:
        nq = self._check_quantizers(n_quantizers)
        chunks = list(parts)
        if not chunks:
            return np.zeros((0, nq, channels), dtype=np.int16)
        return np.concatenate(chunks, axis=0)

    def latents(self, audio: np.ndarray) -> np.ndarray:
        """The encoder's continuous latents ``[frames, D, channels]`` (float64) of ``[channels,
        samples]``, cut into windows exactly as :meth:`encode` cuts them: equal to one
        whole-file pass at every frame, which tiny codebooks alone would not show."""
        step = max(1, self.sample_rate)
        blocks = (audio[:, i : i + step] for i in range(0, audio.shape[1], step))
        parts = list(self._windows(blocks, audio.shape[0], ("latents", 0)))
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0, audio.shape[0]))

    def encode_stream(
        self, blocks: Iterable[np.ndarray], channels: int, n_quantizers: int | None = None
    ) -> Iterator[np.ndarray]:
        """Encode a stream of ``[channels, n]`` blocks; yield code blocks ``[frames, nq, channels]`` in order.

        Memory is bounded by the window and batch size, not by the stream's length.
        """
        nq = self._check_quantizers(n_quantizers)
        yield from self._windows(blocks, channels, ("codes", nq))

    def _windows(self, blocks: Iterable[np.ndarray], channels: int, what: RowPass) -> Iterator[np.ndarray]:
        """Run a stream through its window plan (:mod:`dacwatch.codec.windows`), each batch
        computing ``what``. A stream long enough for full windows starts on the plan's
        prefix as the samples arrive; the rest of the plan, which depends on the length,
        runs once the stream has ended."""
        rf, n = self.rf, self.frames_per_window()
        buf = _RollingBuffer(channels)
        source = iter(blocks)

        def fill(until: int) -> bool:
            """Read until ``until`` samples are buffered; False if the stream ended first."""
            while buf.end < until:
                block = next(source, None)
                if block is None:
                    return False
                buf.append(block)
            return True

        done: list[WindowSpec] = []
        pending: list[WindowSpec] = []
        if n and fill(lookahead(rf, n)):
            prefix = long_file_prefix(rf, n)
            spec = next(prefix)
            while True:
                while spec.padded or spec.stop <= buf.end:  # every sample of the window is here
                    pending.append(spec)
                    spec = next(prefix)
                    if len(pending) >= self.batch_size:  # another lane may have shrunk it meanwhile
                        yield from self._run_plan(buf, pending, what)
                        done += pending
                        buf.discard_before(pending[-1].start)
                        pending = []
                if not fill(buf.end + 1):
                    break
        else:
            fill(np.iinfo(np.int64).max)
        length = buf.end
        plan = encode_plan(length, rf, n)
        done += pending
        if plan[: len(done)] != done:
            raise AssertionError("the streamed windows left the window plan")  # a bug of ours, never a file's
        buf.append(np.zeros((channels, ceil_to(length, self.hop) - length), dtype=np.float32))
        # What is left of the prefix runs with the plan's last windows: equal shapes share a batch.
        yield from self._run_plan(buf, pending + plan[len(done) :], what)

    def _run_plan(self, buf: _RollingBuffer, specs: Sequence[WindowSpec], what: RowPass) -> Iterator[np.ndarray]:
        """Run ``specs`` in order, batching neighbours of one shape (edges, with layer padding
        on, apart from interior windows); yield each window's kept frames ``[frames, K, C]``."""
        for (padded, _samples), group in itertools.groupby(specs, key=lambda w: (w.padded, w.samples)):
            windows = [_Window(w.first_frame, w.skip, w.count, buf.get(w.start, w.stop)) for w in group]
            for i in range(0, len(windows), self.batch_size):
                yield from self._run_encode(windows[i : i + self.batch_size], padded, what)

    # ------------------------------------------------------------------ decoding

    def output_length(self, frames: int) -> int:
        """Samples a whole-file decode of ``frames`` frames yields at the model rate."""
        return decoder_output_length(self.model, frames) if frames > 0 else 0

    def decode(self, codes: CodeArray) -> np.ndarray:
        """Decode codes ``[frames, nq, channels]`` to audio ``[channels, samples]`` at the model rate."""
        channels = codes.shape[2]
        parts = list(self.decode_stream(codes))
        if not parts:
            return np.zeros((channels, 0), dtype=np.float32)
        return np.concatenate(parts, axis=1)

    def decode_stream(self, codes: CodeArray, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Yield audio blocks ``[channels, n]`` for model-rate samples ``[start, stop)`` of the
        whole-file decode, reading only the code frames those samples need."""
        frames, nq, _channels = codes.shape
        self._ensure_tuned()
        if nq > self.n_codebooks:
            raise PermanentError(f"codes use {nq} codebooks but the model has {self.n_codebooks}")
        total = self.output_length(frames)
        stop = total if stop is None else min(stop, total)
        start = max(0, start)
        if frames == 0 or start >= stop:
            return
        hop, ctx = self.hop, self.context
        n = self.decode_frames_per_window() or frames
        if self.decode_window_s:
            # A short file takes the longest halved window that fits it with its
            # context (as in encoding: few shapes, which files sharing a device batch
            # together); one shorter than the smallest such window runs whole.
            n = halved(n, lambda k: k + ctx.left + ctx.right <= frames)
            if n + ctx.left + ctx.right > frames:
                n = frames
        first, last = start // hop, min(frames, math.ceil(stop / hop))
        span = min(frames, n + ctx.left + ctx.right)
        owned = [(c0, min(c0 + n, last)) for c0 in range(first, last, n)]
        for i in range(0, len(owned), self.batch_size):
            group = owned[i : i + self.batch_size]
            offsets = [min(max(0, c0 - ctx.left), frames - span) for c0, _ in group]
            # Window-local output samples each window keeps; the batch computes their union.
            keeps = [
                (max(c0 * hop, start) - o * hop, min(c1 * hop, stop) - o * hop)
                for (c0, c1), o in zip(group, offsets, strict=True)
            ]
            batch = np.stack([self._checked(codes[o : o + span]) for o in offsets])
            keep = (min(k[0] for k in keeps), max(k[1] for k in keeps))
            key = ("decode", batch.shape[1:], keep)
            # [windows, channels, samples] from window-local sample `first`
            audio, first = self._shared(key, batch, len(group), functools.partial(self._decode_rows, keep=keep))
            for (a, b), out in zip(keeps, audio, strict=True):
                if b > a:
                    yield out[:, a - first : b - first]

    def _checked(self, window: np.ndarray) -> np.ndarray:
        window = np.asarray(window)
        if window.size and (window.min() < 0 or window.max() >= self.codebook_size):
            raise PermanentError(
                f"codes out of range: found {int(window.min())}..{int(window.max())}, "
                f"the codebooks have {self.codebook_size} entries"
            )
        return window

    def _decode_rows(self, batch: np.ndarray, keep: tuple[int, int]) -> tuple[np.ndarray, int]:
        """Codes ``[windows, frames, nq, channels]`` -> audio ``[windows, channels, samples]``
        covering at least window-local output samples ``[keep[0], keep[1])``; also returns
        the window-local index of the first sample returned.

        Between the decoder's stages each activation is cropped to the positions the
        kept samples still depend on (the context frames matter to the early,
        low-rate stages; the late, high-rate ones -- most of the cost -- need almost
        none). The cut-off edges are zero-padded by the next layers, but nothing kept
        reads them, so the result is unchanged.
        """
        windows, frames, nq, channels = batch.shape
        rows = batch.transpose(0, 3, 2, 1).reshape(windows * channels, nq, frames)
        try:
            with torch.inference_mode():
                codes = self._upload(rows.astype(np.int64), torch.int64)
                set_numerics(self.device, self.precision)
                x = self.model.quantizer.from_codes(codes)[0]
                split = self.tile_after + 1 if self.tile_samples else len(self._stages)
                with self._numerics():
                    x, first = self._decode_stages(x, split, keep)
                out = x.to("cpu", torch.float32).numpy()
        except torch.OutOfMemoryError as exc:
            raise OutOfMemoryError(f"out of memory decoding {windows} windows of {frames} frames") from exc
        shaped: np.ndarray = out.reshape(windows, channels, -1)
        return shaped, first

    def _decode_stages(self, x: torch.Tensor, split: int, keep: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Latents through the decoder's stages, cropped to ``keep`` (tiled after ``split``)."""
        x, first = self._through(x, 0, 0, split, keep)
        if split < len(self._stages):
            # Depth first: the late, high-rate stages run tile by tile so their
            # activations stay in cache; each tile is cropped like a window.
            pieces = []
            for a in range(keep[0], keep[1], self.tile_samples):
                tile = (a, min(a + self.tile_samples, keep[1]))
                part, at = self._crop(x, first, self._stages[split - 1][2], tile)
                y, y_first = self._through(part, at, split, len(self._stages), tile)
                pieces.append(y[..., tile[0] - y_first : tile[1] - y_first])
            x, first = torch.cat(pieces, dim=-1), keep[0]
        return x, first

    def _through(
        self, x: torch.Tensor, first: int, start: int, stop: int, keep: tuple[int, int]
    ) -> tuple[torch.Tensor, int]:
        """Run decoder stages ``[start, stop)`` on ``x`` (whose first position is window-local
        ``first``), cropping after each to what output samples ``keep`` depend on."""
        for stage, up, later in self._stages[start:stop]:
            x = stage(x)
            x, first = self._crop(x, first * up, later, keep)
        return x, first

    @staticmethod
    def _crop(x: torch.Tensor, first: int, later: list[Any], keep: tuple[int, int]) -> tuple[torch.Tensor, int]:
        lo, hi = back_interval(later, keep[0], keep[1] - 1)
        lo, hi = max(lo, first), min(hi, first + x.shape[-1] - 1)
        if lo > first or hi < first + x.shape[-1] - 1:
            return x[..., lo - first : hi - first + 1], lo
        return x, first


class _RollingBuffer:
    """Samples ``[channels, n]`` of a stream, addressable by global sample index,
    forgetting what lies before the oldest position still needed."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.start = 0
        self.end = 0  # one past the last sample appended
        self._parts: list[np.ndarray] = []
        self._data = np.zeros((channels, 0), dtype=np.float32)

    def append(self, block: np.ndarray) -> None:
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected a [{self.channels}, n] block, got {block.shape}")
        if block.shape[1]:
            self._parts.append(np.asarray(block, dtype=np.float32))
            self.end += int(block.shape[1])

    def _flatten(self) -> None:
        if self._parts:
            self._data = np.concatenate([self._data, *self._parts], axis=1)
            self._parts = []

    def get(self, a: int, b: int) -> np.ndarray:
        """Samples ``[a, b)``; both must lie in what is buffered."""
        self._flatten()
        if a < self.start or b > self.end:
            raise IndexError(f"samples {a}..{b} not buffered ({self.start}..{self.end})")
        return self._data[:, a - self.start : b - self.start]

    def discard_before(self, position: int) -> None:
        self._flatten()
        drop = min(max(0, position - self.start), self._data.shape[1])
        if drop:
            self._data = self._data[:, drop:].copy()
            self.start += drop
