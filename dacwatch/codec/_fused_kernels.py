"""The numba kernels behind :mod:`fused_cpu` (imported only by it, on first use).

Module-level functions, not closures: numba keys its on-disk cache by a closure's
captured values, and a captured dispatcher pickles differently in every process,
so closures were compiled afresh by every process (5 s of a first decode).
:func:`fused_cpu._kernels` sets ``numba.config.CACHE_DIR`` around this module's
import (the cache locator is chosen at decoration).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

# |alpha*x| from here on (unseen in a decoder: its activations are a few hundred
# at most) takes the C library's sine instead of the reduction by pi in parts,
# which is exact for |k| < 2**27 (k*PI_HI has at most 53 significant bits).
REDUCTION_LIMIT = 2.0**26

INV_PI = 1.0 / math.pi
PI_HI = float((np.array(math.pi).view(np.uint64) & np.uint64(0xFFFFFFFFF8000000)).view(np.float64))
PI_LO = math.pi - PI_HI  # the rest of float64's pi (PI_HI has 26 significant bits)
PI_REST = 1.2246467991473532e-16  # pi minus float64's pi
LIMIT = REDUCTION_LIMIT
MAGIC = 6755399441055744.0  # 1.5 * 2**52: (v + MAGIC) - MAGIC rounds v to an integer
OPTIONS: dict[str, Any] = {"nogil": True, "boundscheck": False, "error_model": "numpy"}


def _jit(function: Callable[..., None]) -> Any:
    """A parallel kernel, cached on disk where a cache folder can be written."""
    try:
        return numba.njit(parallel=True, cache=True, **OPTIONS)(function)
    except RuntimeError:  # no cache folder can be written: compiled per process
        return numba.njit(parallel=True, **OPTIONS)(function)


@numba.njit(inline="always", **OPTIONS)  # type: ignore[untyped-decorator]
def snake_span(src: Any, s0: int, dst: Any, d0: int, n: int, a: Any, r: Any) -> None:  # pragma: no cover
    """``dst[d0:d0+n] = Snake(src[s0:s0+n])`` (distinct arrays): one pass LLVM
    vectorises, then the C library's sine for any |alpha*x| past the reduction's
    range (or infinite), element by element."""
    # Slices indexed from 0: numba then knows no index is negative (no wraparound
    # test per element, which kept LLVM from vectorising and cost 3x).
    xs = src[s0 : s0 + n]
    ys = dst[d0 : d0 + n]
    big: Any = 0
    for i in range(n):
        v = xs[i]
        u = np.float64(np.float32(v * a))
        big += abs(u) >= LIMIT
        k = (u * INV_PI + MAGIC) - MAGIC
        red = ((u - k * PI_HI) - k * PI_LO) - k * PI_REST
        r2 = red * red
        p = -7.647163731819816e-13
        p = p * r2 + 1.6059043836821613e-10
        p = p * r2 - 2.505210838544172e-08
        p = p * r2 + 2.755731922398589e-06
        p = p * r2 - 0.0001984126984126984
        p = p * r2 + 0.008333333333333333
        p = p * r2 - 0.16666666666666666
        t = np.float32(red + red * (r2 * p))
        t = np.float32(t * t)
        t = np.float32(t * r)
        ys[i] = np.float32(t + v)
    if big:
        for i in range(n):
            v = xs[i]
            u = np.float64(np.float32(v * a))
            if abs(u) >= LIMIT:
                t = np.float32(math.sin(u))
                t = np.float32(t * t)
                t = np.float32(t * r)
                ys[i] = np.float32(t + v)


@_jit
def snake_rows(x: Any, starts: Any, alpha: Any, inv: Any, out: Any, n: int) -> None:  # pragma: no cover
    for c in numba.prange(starts.shape[0]):
        snake_span(x, starts[c], out, c * n, n, alpha[c], inv[c])


@_jit
def winograd_input(
    x: Any, starts: Any, n_in: int, pad: int, d: int, tiles: int, bt: Any, alpha: Any, inv: Any, v: Any
) -> None:  # pragma: no cover - numba
    """``v [rows, 10, channels, d*tiles]``: F(4, 7)'s input transform of each (row,
    channel) at ``starts``, zero-padded by ``pad``, phase by phase; Snake first where
    ``alpha`` has entries (0 pads stay 0: Snake(0) = 0)."""
    channels = v.shape[2]
    kq = tiles + 2
    snake = alpha.shape[0] > 0
    for rc in numba.prange(starts.shape[0]):
        row = rc // channels
        c = rc - row * channels
        zq = np.empty((4, kq), dtype=np.float32)  # one phase, split by position mod 4
        src = x
        base = starts[rc]
        if snake:  # the row's Snake into a buffer the size of L2, read from there
            src = np.empty(n_in, dtype=np.float32)
            snake_span(x, base, src, 0, n_in, alpha[c], inv[c])
            base = 0
        for ph in range(d):
            for q in range(4):
                # zq[q, k] = x[off + step * k] where that is inside the row, else 0
                off = ph + d * q - pad
                step = 4 * d
                lo = min(kq, max(0, (-off + step - 1) // step))
                hi = max(lo, min(kq, (n_in - off + step - 1) // step))
                zrow = zq[q]
                zrow[:lo] = 0.0
                zrow[hi:] = 0.0
                if hi > lo:
                    seg = src[base + off + step * lo : base + off + step * (hi - 1) + 1 : step]
                    mid = zrow[lo:hi]
                    for k in range(hi - lo):
                        mid[k] = seg[k]
            # Window element j of tile t is zq[j % 4, t + j // 4]: ten slices, unit stride.
            w0, w1, w2, w3 = zq[0, :tiles], zq[1, :tiles], zq[2, :tiles], zq[3, :tiles]
            w4, w5, w6, w7 = zq[0, 1 : tiles + 1], zq[1, 1 : tiles + 1], zq[2, 1 : tiles + 1], zq[3, 1 : tiles + 1]
            w8, w9 = zq[0, 2 : tiles + 2], zq[1, 2 : tiles + 2]
            for pt in range(10):
                b0, b1, b2, b3, b4 = bt[pt, 0], bt[pt, 1], bt[pt, 2], bt[pt, 3], bt[pt, 4]
                b5, b6, b7, b8, b9 = bt[pt, 5], bt[pt, 6], bt[pt, 7], bt[pt, 8], bt[pt, 9]
                vr = v[row, pt, c, ph * tiles : (ph + 1) * tiles]
                for t in range(tiles):
                    vr[t] = (
                        b0 * w0[t]
                        + b1 * w1[t]
                        + b2 * w2[t]
                        + b3 * w3[t]
                        + b4 * w4[t]
                        + b5 * w5[t]
                        + b6 * w6[t]
                        + b7 * w7[t]
                        + b8 * w8[t]
                        + b9 * w9[t]
                    )


@_jit
def winograd_output(
    prod: Any, att: Any, bias: Any, d: int, tiles: int, alpha: Any, inv: Any, out: Any
) -> None:  # pragma: no cover - numba
    """``out [rows, channels, length]`` from the products ``prod [rows, 10, channels,
    d*tiles]``: F(4, 7)'s output transform, the bias added, phases interleaved;
    Snake last where ``alpha`` has entries."""
    rows, _, channels, _ = prod.shape
    length = out.shape[2]
    snake = alpha.shape[0] > 0
    for rc in numba.prange(rows * channels):
        row = rc // channels
        c = rc - row * channels
        yq = np.empty(4 * tiles, dtype=np.float32)  # one phase's outputs, by position mod 4
        ys = np.empty(4 * tiles if snake else 0, dtype=np.float32)
        b = bias[c]
        orow = out[row, c]
        for ph in range(d):
            span = slice(ph * tiles, (ph + 1) * tiles)
            p0, p1, p2, p3, p4 = (
                prod[row, 0, c, span],
                prod[row, 1, c, span],
                prod[row, 2, c, span],
                prod[row, 3, c, span],
                prod[row, 4, c, span],
            )
            p5, p6, p7, p8, p9 = (
                prod[row, 5, c, span],
                prod[row, 6, c, span],
                prod[row, 7, c, span],
                prod[row, 8, c, span],
                prod[row, 9, c, span],
            )
            for i in range(4):
                a0, a1, a2, a3, a4 = att[0, i], att[1, i], att[2, i], att[3, i], att[4, i]
                a5, a6, a7, a8, a9 = att[5, i], att[6, i], att[7, i], att[8, i], att[9, i]
                yr = yq[i * tiles : (i + 1) * tiles]
                for t in range(tiles):
                    yr[t] = (
                        a0 * p0[t]
                        + a1 * p1[t]
                        + a2 * p2[t]
                        + a3 * p3[t]
                        + a4 * p4[t]
                        + a5 * p5[t]
                        + a6 * p6[t]
                        + a7 * p7[t]
                        + a8 * p8[t]
                        + a9 * p9[t]
                    ) + b
            done = yq
            if snake:
                snake_span(yq, 0, ys, 0, 4 * tiles, alpha[c], inv[c])
                done = ys
            for t in range(tiles):
                for i in range(4):
                    pos = ph + d * (4 * t + i)
                    if pos < length:
                        orow[pos] = done[i * tiles + t]
