"""Files sharing a device (dacwatch.codec.gate): their windows run in shared forward passes,
and each file still gets exactly the codes it gets alone, and whole-file codes.

Real tiny DAC networks, real threads. The device is held while the files queue their
first passes, so that merging is certain to happen, not left to scheduling luck."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch import nn

from dacwatch.codec.chunked import MIN_WINDOW_FRAMES, ChunkedCodec
from dacwatch.codec.gate import DeviceGate
from dacwatch.codec.model import ModelSpec
from dacwatch.convert import CodecPool, CodecSettings
from dacwatch.errors import OutOfMemoryError

from .conftest import noise
from .test_codec import TINY_DECODE_TOL, frames_differing, whole

SR = 44100
# mono and stereo, whole-file short (0.3 s), halved windows (0.6-0.9 s), several windows
SIGNALS = [(1, 0.3), (1, 0.6), (1, 0.9), (1, 1.7), (1, 2.6), (2, 1.7), (2, 3.1), (1, 4.2)]


def inputs(dtype: type = np.float32) -> list[np.ndarray]:
    return [noise(c, round(s * SR), seed=i + 40).astype(dtype) for i, (c, s) in enumerate(SIGNALS)]


def concurrently(gate: DeviceGate, work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``work`` on every item, each in its own thread, all released at once: the gate is
    held until every thread waits at it with its first pass."""
    results: list[Any] = [None] * len(items)

    def one(i: int) -> None:
        try:
            results[i] = work(items[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(items))]
    with gate.exclusive():
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while gate.waiting() < len(items):
            assert time.monotonic() < deadline, f"only {gate.waiting()} of {len(items)} passes queued"
            time.sleep(0.01)
    for t in threads:
        t.join(timeout=120)
    return results


def shared_codec(model: nn.Module, **kw: Any) -> ChunkedCodec:
    codec = ChunkedCodec(model, "cpu", **kw)
    codec.gate = DeviceGate()
    return codec


def test_files_sharing_passes_get_the_codes_they_get_alone(tiny44: nn.Module) -> None:
    geometry = dict(encode_window_s=0.5, batch_size=8)
    shared = shared_codec(tiny44, **geometry)
    xs = inputs()
    got = concurrently(shared.gate, shared.encode, xs)  # type: ignore[arg-type]
    stats = shared.gate.stats  # type: ignore[union-attr]
    assert stats.merged >= 4, stats  # the first windows of six files ran together, at least
    alone = ChunkedCodec(tiny44, "cpu", **geometry)
    for x, codes in zip(xs, got, strict=True):
        assert not isinstance(codes, BaseException), codes
        assert np.array_equal(codes, alone.encode(x))
        assert frames_differing(codes, whole(tiny44).encode(x)) == 0


def test_shared_passes_keep_every_files_latents_in_float64(tiny44: nn.Module) -> None:
    """Tiny codebooks could hide a window of one file landing in another's place: the
    continuous latents of each file equal its own whole-file latents at every frame."""
    m = copy.deepcopy(tiny44).double()
    shared = shared_codec(m, encode_window_s=0.4, batch_size=6)
    xs = inputs(np.float64)
    got = concurrently(shared.gate, shared.latents, xs)  # type: ignore[arg-type]
    assert shared.gate.stats.merged >= 4  # type: ignore[union-attr]
    for x, latents in zip(xs, got, strict=True):
        ref = whole(m).latents(x)
        assert latents.shape == ref.shape
        assert np.abs(latents - ref).max() <= 1e-12 * np.abs(ref).max()


def test_shared_decoding_equals_each_files_own_decode(tiny44: nn.Module) -> None:
    """Files of three windows each (20 frames and their context): two fit one pass of 8."""
    rng = np.random.default_rng(3)
    shapes = [(30, 1), (55, 1), (55, 1), (70, 2), (60, 1), (58, 1), (52, 2)]
    files = [rng.integers(0, 64, size=(f, 4, c)).astype(np.int16) for f, c in shapes]
    shared = shared_codec(tiny44, decode_window_s=20 * 512 / SR, batch_size=8)
    got = concurrently(shared.gate, shared.decode, files)  # type: ignore[arg-type]
    assert shared.gate.stats.merged >= 3, shared.gate.stats  # type: ignore[union-attr]
    for codes, audio in zip(files, got, strict=True):
        ref = whole(tiny44).decode(codes)
        assert audio.shape == ref.shape
        assert np.abs(audio - ref).max() <= TINY_DECODE_TOL


def test_a_failing_shared_pass_fails_every_file_in_it(tiny44: nn.Module) -> None:
    m = copy.deepcopy(tiny44)
    calls: list[int] = []

    def out_of_memory(_module: nn.Module, args: Any) -> None:
        calls.append(args[0].shape[0])
        if len(calls) == 1:
            raise OutOfMemoryError(f"out of memory on {args[0].shape[0]} rows")

    m.encoder.register_forward_pre_hook(out_of_memory)
    shared = shared_codec(m, encode_window_s=0.5, batch_size=8)
    xs = [noise(1, 2 * SR, seed=i) for i in range(3)]
    got = concurrently(shared.gate, shared.encode, xs)  # type: ignore[arg-type]
    assert calls[0] == 3  # one pass held all three files' first windows
    errors = [r for r in got if isinstance(r, BaseException)]
    assert len(errors) == 3 and all(isinstance(e, OutOfMemoryError) for e in errors)
    assert len({id(e) for e in errors}) == 3  # each thread raised its own
    assert shared.gate.waiting() == 0 and shared.encode(xs[0]).shape[0] > 0  # the gate is free again


def test_out_of_memory_in_a_shared_pass_shrinks_once(tiny_weights: Path) -> None:
    """Every worker whose rows were in the failed pass reports it; the geometry steps down
    once, and the others just retry under the new one."""
    pool = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu", batch_size=8))
    pool.codec()
    seen = pool.generation
    assert pool.shrink(seen) is not None and pool.codec().batch_size == 4
    assert pool.shrink(seen) is not None and pool.codec().batch_size == 4  # already done: retry as is
    assert pool.shrink(pool.generation) is not None and pool.codec().batch_size == 2


@pytest.mark.parametrize("seconds", [0.7, 1.5, 4.0, 9.0])
def test_short_files_take_halved_windows_and_stay_exact(tiny44: nn.Module, seconds: float) -> None:
    """With a GPU's 10 s window a short file is cut with the longest halved window that
    fits it (one of a few shapes, which other files share), not run whole; its latents
    equal the whole-file latents in float64 all the same."""
    m = copy.deepcopy(tiny44).double()
    lengths: list[int] = []
    m.encoder.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[-1]))
    codec = ChunkedCodec(m, "cpu", encode_window_s=10.0, batch_size=4)
    x = noise(1, round(seconds * SR), seed=5).astype(np.float64)
    got = codec.latents(x)
    rf, hop = codec.rf, codec.hop
    ladder = {max(MIN_WINDOW_FRAMES, codec.frames_per_window() >> k) for k in range(8)}
    interior = {rf.size + (n - 1) * hop for n in ladder}
    assert len(lengths) >= 3 and set(lengths[1:-1]) <= interior, lengths  # halved windows, edges apart
    assert rf.size + (codec.frames_per_window() - 1) * hop not in lengths  # not the full 10 s window
    ref = whole(m).latents(x)
    assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()


def test_the_shortest_files_still_run_whole(tiny44: nn.Module) -> None:
    lengths: list[int] = []
    m = copy.deepcopy(tiny44)
    m.encoder.register_forward_pre_hook(lambda _m, args: lengths.append(args[0].shape[-1]))
    x = noise(1, round(0.3 * SR), seed=6)
    codes = ChunkedCodec(m, "cpu", encode_window_s=10.0).encode(x)
    assert len(lengths) == 1 and frames_differing(codes, whole(tiny44).encode(x)) == 0


def test_short_files_decode_in_halved_windows_and_stay_within_tolerance(tiny44: nn.Module) -> None:
    """A file shorter than a 4 s window and its context is decoded with the longest halved
    window that fits (345 -> 172 -> 86 -> 43 -> 21 frames for 60), not as one pass."""
    spans: list[int] = []
    codes = np.random.default_rng(9).integers(0, 64, size=(60, 4, 1)).astype(np.int16)
    codec = ChunkedCodec(copy.deepcopy(tiny44), "cpu", decode_window_s=4.0, batch_size=1)
    first_stage = codec._stages[0][0]  # the decoder's first layer sees each window's frames
    first_stage.register_forward_pre_hook(lambda _m, args: spans.append(args[0].shape[-1]))
    audio = codec.decode(codes)
    context = codec.context.left + codec.context.right
    assert codec.decode_frames_per_window() == 345 and spans == [21 + context] * 3, spans
    ref = whole(tiny44).decode(codes)
    assert np.abs(audio - ref).max() <= TINY_DECODE_TOL
