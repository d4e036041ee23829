"""The window plan (dacwatch.codec.windows), property-tested: for every length from 0 samples to
several windows, every geometry and window size, the plan covers every frame exactly once,
interior windows sit on the whole file's frame grid and never see padding, and edge
windows start at the file's edges and keep only frames their inner edge cannot change."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dacwatch.codec.chunked import ChunkedCodec
from dacwatch.codec.windows import MIN_WINDOW_FRAMES, ReceptiveField, ceil_to, encode_plan, lookahead

GEOMETRIES = [
    ReceptiveField(size=7978, stride=512, padding=3733),  # DAC 44 kHz (walked from the network in test_model)
    ReceptiveField(size=13, stride=4, padding=5),
    ReceptiveField(size=7, stride=2, padding=0),  # no left padding: no left edge window
    ReceptiveField(size=5, stride=5, padding=2),
]


@st.composite
def cases(draw: st.DrawFn) -> tuple[ReceptiveField, int, int]:
    rf = draw(st.sampled_from(GEOMETRIES))
    frames = draw(st.sampled_from([0, 1, 2, 3, MIN_WINDOW_FRAMES, 17, 40, 86]))
    longest = 4 * lookahead(rf, max(frames, 1)) + 3 * rf.stride
    return rf, frames, draw(st.integers(min_value=0, max_value=longest))


def check(rf: ReceptiveField, frames: int, length: int) -> None:
    hop = rf.stride
    padded_len = ceil_to(length, hop)
    total = padded_len // hop
    plan = encode_plan(length, rf, frames)
    # Every frame once, in order.
    kept = [t for w in plan for t in range(w.first_frame, w.first_frame + w.count)]
    assert kept == list(range(total))
    interior = [w for w in plan if not w.padded]
    for w in plan:
        assert 0 <= w.start < w.stop <= padded_len and w.count > 0 and w.skip >= 0
        yielded = (w.samples - rf.size) // hop + 1 if not w.padded else w.samples // hop
        assert w.skip + w.count <= yielded
    for w in interior:
        # On the whole file's frame grid: the window's first output frame reads from its first sample...
        assert w.start == rf.first(w.first_frame - w.skip)
        assert (w.samples - rf.size) % hop == 0
        # ...and every frame it keeps sees neither end's padding (valid convolutions are exact).
        assert rf.first(w.first_frame) >= 0 and rf.end(w.first_frame + w.count - 1) <= padded_len
    # One shape for every interior window but perhaps the last.
    assert len({w.samples for w in interior[:-1]}) <= 1
    if interior:
        assert len({w.samples for w in interior}) <= 2
    # Edge windows (layer padding on) start at the file's edges and keep only frames
    # whose receptive field stays inside the window on the inner side.
    for w in plan:
        if not w.padded:
            continue
        assert w.start == 0 or w.stop == padded_len
        assert w.start % hop == 0
        if w.start == 0 and w.stop < padded_len:  # the left edge
            assert rf.end(w.first_frame + w.count - 1) <= w.stop
        if w.stop == padded_len and w.start > 0:  # the right edge
            assert rf.first(w.first_frame) >= w.start and w.first_frame - w.skip == w.start // hop
    # Short files take a halved window (or, shortest of all, one pass); long ones the full one.
    if frames and length >= lookahead(rf, frames):
        assert any(w.samples == rf.size + (frames - 1) * hop for w in interior)


@settings(max_examples=1500, deadline=None)
@given(cases())
def test_the_plan_covers_every_frame_once_on_the_files_grid(case: tuple[ReceptiveField, int, int]) -> None:
    check(*case)


@pytest.mark.parametrize("rf", GEOMETRIES, ids=lambda rf: f"F{rf.size}-S{rf.stride}-P{rf.padding}")
def test_every_length_up_to_several_windows(rf: ReceptiveField) -> None:
    """Exhaustive where it is cheap: every length from 0 to three full windows and a few hops."""
    if rf.size > 100:
        lengths = range(0, 3 * lookahead(rf, MIN_WINDOW_FRAMES) + 3 * rf.stride, 61)  # a prime step over 44 kHz
    else:
        lengths = range(0, 3 * lookahead(rf, 17) + 3 * rf.stride)
    for frames in (0, 1, MIN_WINDOW_FRAMES, 17):
        for length in lengths:
            check(rf, frames, length)


@pytest.mark.parametrize("block", [17, 509, 44100])
def test_the_streaming_codec_follows_the_plan(tiny44: nn.Module, block: int) -> None:
    """The codec streams: it starts on the plan's prefix before it knows the length, and
    checks that what it ran is the plan (it raises otherwise). Streams in awkward block
    sizes, at lengths around the look-ahead where the plan changes shape."""
    codec = ChunkedCodec(tiny44, "cpu", encode_window_s=0.2, decode_window_s=0, batch_size=2)
    rf, n = codec.rf, codec.frames_per_window()
    whole = ChunkedCodec(tiny44, "cpu", encode_window_s=0, decode_window_s=0, batch_size=1)
    rng = np.random.default_rng(block)
    for length in (1, lookahead(rf, n) - 1, lookahead(rf, n), lookahead(rf, n) + rf.stride + 1):
        audio = (0.1 * rng.standard_normal((1, length))).astype(np.float32)
        blocks = (audio[:, i : i + block] for i in range(0, length, block))
        codes = np.concatenate(list(codec.encode_stream(blocks, 1)), axis=0)
        assert np.array_equal(codes, whole.encode(audio))
