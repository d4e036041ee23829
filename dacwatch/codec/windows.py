"""Which windows a file gets: the exact encode window plan, as a pure function.

One rule, in one place (DESIGN.md, "Exact chunking"): encoder frame ``t`` reads
padded-file samples ``[t*S - P, t*S - P + F)`` (a :class:`ReceptiveField`). A
file of ``length`` samples is right-padded to a multiple of the hop ``S`` and
cut into:

1. a left edge window, run with layer padding on, from sample 0 to the first
   hop boundary past the receptive field of the last frame that sees the left
   padding (frames ``[0, t_lo)``; none when ``P = 0``);
2. interior windows of ``n`` frames (``F + (n-1)*S`` samples), run with layer
   padding off, hopping by exactly ``n*S`` samples from frame ``t_lo``, so their
   frame grid is the whole file's;
3. where the interior frames run out before a whole window, one last interior
   window of the same length that overlaps the previous one and skips the
   frames already produced (one shape for the batch); a shorter one only when
   the file holds no earlier window to overlap;
4. a right edge window, padding on, starting on a hop boundary, for the
   frames whose receptive field reaches past the padded file.

A file too short for an edge window, one interior window and the other edge
takes the longest halved window (``n/2``, ``n/4``... down to
:data:`MIN_WINDOW_FRAMES`) that fits, so files of any length run in a few
shapes; one shorter still is one padded pass over the whole file, exactly
DAC's own forward.

The chunked codec (:mod:`dacwatch.codec.chunked`) streams: it must start on interior
windows before it knows the length. It runs :func:`long_file_prefix` as the
samples arrive and the rest of :func:`encode_plan` once the stream ends;
``tests/test_windows.py`` checks the plan's properties for every length and
that the streaming run follows it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MIN_WINDOW_FRAMES = 16  # the smallest window the ladder (and out-of-memory recovery) goes down to


@dataclass(frozen=True)
class ReceptiveField:
    """Where encoder frame ``t`` looks: input samples ``[t*stride - padding, t*stride - padding + size)``."""

    size: int
    stride: int
    padding: int

    def first(self, frame: int) -> int:
        """First input sample (in the padded file) that ``frame`` depends on."""
        return frame * self.stride - self.padding

    def end(self, frame: int) -> int:
        """One past the last input sample that ``frame`` depends on."""
        return self.first(frame) + self.size


@dataclass(frozen=True)
class WindowSpec:
    """One window of the plan: samples ``[start, stop)`` of the padded file, run with layer
    padding on (``padded``, the edges) or off; of the frames it yields, the first ``skip``
    are dropped and the next ``count`` kept, global frames ``[first_frame, first_frame + count)``."""

    first_frame: int
    skip: int
    count: int
    start: int
    stop: int
    padded: bool

    @property
    def samples(self) -> int:
        return self.stop - self.start


def ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def halved(n: int, fits: Callable[[int], bool]) -> int:
    """The window ladder for short files: ``n`` frames, halved until ``fits`` or down to
    :data:`MIN_WINDOW_FRAMES` (only a few shapes occur, which files sharing a device
    batch together)."""
    while n > MIN_WINDOW_FRAMES and not fits(n):
        n = max(MIN_WINDOW_FRAMES, n // 2)
    return n


def _first_frame_and_edge(rf: ReceptiveField) -> tuple[int, int]:
    """``(t_lo, edge)``: the first interior frame and the left edge window's length."""
    t_lo = math.ceil(rf.padding / rf.stride)
    return t_lo, ceil_to(rf.end(t_lo - 1), rf.stride) if t_lo > 0 else 0


def lookahead(rf: ReceptiveField, frames: int) -> int:
    """Samples a stream must hold to know the file is long enough for ``frames``-frame
    windows: then its plan starts with :func:`long_file_prefix`. 0 for a whole-file plan."""
    if frames == 0:
        return 0
    _t_lo, edge = _first_frame_and_edge(rf)
    return edge + rf.size + (frames - 1) * rf.stride + 2 * rf.stride


def long_file_prefix(rf: ReceptiveField, frames: int) -> Iterator[WindowSpec]:
    """The plan of every file of at least :func:`lookahead` samples, up to where its length
    matters: the left edge window, then interior windows without end."""
    t_lo, edge = _first_frame_and_edge(rf)
    if edge:
        yield WindowSpec(0, 0, t_lo, 0, edge, True)
    length = rf.size + (frames - 1) * rf.stride
    for t in itertools.count(t_lo, frames):
        yield WindowSpec(t, 0, frames, rf.first(t), rf.first(t) + length, False)


def encode_plan(length: int, rf: ReceptiveField, frames: int) -> list[WindowSpec]:
    """The windows of a file of ``length`` samples, ``frames`` frames per interior window
    (0: one pass over the whole file), in frame order (module doc)."""
    hop = rf.stride
    padded_len = ceil_to(length, hop)
    whole = [WindowSpec(0, 0, padded_len // hop, 0, padded_len, True)] if length else []
    if frames == 0:
        return whole
    t_lo = _first_frame_and_edge(rf)[0]
    if length < lookahead(rf, frames):

        def fits(k: int) -> bool:
            return length >= lookahead(rf, k)

        frames = halved(frames, fits)
        if not fits(frames):
            return whole
    window_len = rf.size + (frames - 1) * hop
    plan: list[WindowSpec] = []
    for spec in long_file_prefix(rf, frames):
        if not spec.padded and spec.stop > length:  # interior windows: every sample in the file
            break
        plan.append(spec)
    next_frame = plan[-1].first_frame + plan[-1].count if plan else t_lo
    total = padded_len // hop
    t_hi = (padded_len - rf.size + rf.padding) // hop  # the last frame inside the padded file
    remaining = t_hi + 1 - next_frame
    if remaining > 0:
        overlap = frames - remaining if t_hi + 1 - frames >= t_lo else 0
        if overlap:
            start = rf.first(next_frame - overlap)
            plan.append(WindowSpec(next_frame, overlap, remaining, start, start + window_len, False))
        else:
            plan.append(WindowSpec(next_frame, 0, remaining, rf.first(next_frame), rf.end(t_hi), False))
        next_frame = t_hi + 1
    if next_frame < total:
        start = max(0, (rf.first(next_frame) // hop) * hop)
        plan.append(WindowSpec(next_frame, next_frame - start // hop, total - next_frame, start, padded_len, True))
    return plan


__all__ = [
    "MIN_WINDOW_FRAMES",
    "ReceptiveField",
    "WindowSpec",
    "ceil_to",
    "encode_plan",
    "halved",
    "long_file_prefix",
    "lookahead",
]
