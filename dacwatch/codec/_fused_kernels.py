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


# Winograd's tiles for the kernel-7 convolutions: F(m, 7) takes m + 6 points. The
# kernels below are written once for any m and compiled for m = 4 and m = 6: each entry
# point passes m as a constant inside its parallel loop (a value from outside the loop
# reaches the loop's body as a run-time argument), so LLVM unrolls the sums over the
# points and vectorises over the tiles, as fast as sums written out term by term.
TAPS = 7


@numba.njit(inline="always", **OPTIONS)  # type: ignore[untyped-decorator]
def _input_row(
    x: Any, starts: Any, rc: int, n_in: int, pad: int, d: int, tiles: int, bt: Any, alpha: Any, inv: Any, v: Any, m: int
) -> None:  # pragma: no cover - numba
    """F(m, 7)'s input transform of (row, channel) ``rc`` of ``x`` (at ``starts[rc]``),
    zero-padded by ``pad``, phase by phase, into ``v[row, :, c]``; Snake first where
    ``alpha`` has entries (0 pads stay 0: Snake(0) = 0)."""
    a = m + TAPS - 1
    channels = v.shape[2]
    row = rc // channels
    c = rc - row * channels
    kq = tiles + (a - 1) // m
    zq = np.empty((m, kq), dtype=np.float32)  # one phase, split by position mod m
    src = x
    base = starts[rc]
    if alpha.shape[0] > 0:  # the row's Snake into a buffer the size of L2, read from there
        src = np.empty(n_in, dtype=np.float32)
        snake_span(x, base, src, 0, n_in, alpha[c], inv[c])
        base = 0
    for ph in range(d):
        for q in range(m):
            # zq[q, k] = x[off + step * k] where that is inside the row, else 0
            off = ph + d * q - pad
            step = m * d
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
        # Window element j of tile t is zq[j % m, t + j // m]: unit stride in t.
        for pt in range(a):
            vr = v[row, pt, c, ph * tiles : (ph + 1) * tiles]
            for t in range(tiles):
                acc = bt[pt, 0] * zq[0, t]
                for j in range(1, a):
                    acc += bt[pt, j] * zq[j % m, t + j // m]
                vr[t] = acc


@_jit
def winograd_input(
    x: Any, starts: Any, n_in: int, pad: int, d: int, tiles: int, bt: Any, alpha: Any, inv: Any, v: Any, m: int
) -> None:  # pragma: no cover - numba
    """``v [rows, m + 6, channels, d*tiles]``: F(m, 7)'s input transform, m 4 or 6, of
    each (row, channel) of ``x`` at ``starts`` (:func:`_input_row`). One kernel for
    both (each branch its own loop, m a constant in it): one cache entry to load."""
    if m == 4:
        for rc in numba.prange(starts.shape[0]):
            _input_row(x, starts, rc, n_in, pad, d, tiles, bt, alpha, inv, v, 4)
    else:
        for rc in numba.prange(starts.shape[0]):
            _input_row(x, starts, rc, n_in, pad, d, tiles, bt, alpha, inv, v, 6)


@numba.njit(inline="always", **OPTIONS)  # type: ignore[untyped-decorator]
def _output_row(
    prod: Any, att: Any, bias: Any, d: int, tiles: int, alpha: Any, inv: Any, out: Any, rc: int, m: int
) -> None:  # pragma: no cover - numba
    """(row, channel) ``rc`` of ``out`` from ``prod``: F(m, 7)'s output transform, the
    bias added, phases interleaved; Snake last where ``alpha`` has entries."""
    a = m + TAPS - 1
    channels = prod.shape[2]
    row = rc // channels
    c = rc - row * channels
    length = out.shape[2]
    snake = alpha.shape[0] > 0
    yq = np.empty(m * tiles, dtype=np.float32)  # one phase's outputs, by position mod m
    ys = np.empty(m * tiles if snake else 0, dtype=np.float32)
    b = bias[c]
    orow = out[row, c]
    for ph in range(d):
        first = ph * tiles
        for i in range(m):
            yr = yq[i * tiles : (i + 1) * tiles]
            for t in range(tiles):
                # prod indexed whole (C order, unit stride in t): a view across the
                # points would have strides LLVM cannot see, and it would not vectorise
                acc = att[0, i] * prod[row, 0, c, first + t]
                for j in range(1, a):
                    acc += att[j, i] * prod[row, j, c, first + t]
                yr[t] = acc + b
        done = yq
        if snake:
            snake_span(yq, 0, ys, 0, m * tiles, alpha[c], inv[c])
            done = ys
        for t in range(tiles):
            for i in range(m):
                pos = ph + d * (m * t + i)
                if pos < length:
                    orow[pos] = done[i * tiles + t]


@_jit
def winograd_output(
    prod: Any, att: Any, bias: Any, d: int, tiles: int, alpha: Any, inv: Any, out: Any, m: int
) -> None:  # pragma: no cover - numba
    """``out [rows, channels, length]`` from the products ``prod [rows, m + 6, channels,
    d*tiles]``, m 4 or 6 (:func:`_output_row`; one kernel for both, as the input's)."""
    if m == 4:
        for rc in numba.prange(prod.shape[0] * prod.shape[2]):
            _output_row(prod, att, bias, d, tiles, alpha, inv, out, rc, 4)
    else:
        for rc in numba.prange(prod.shape[0] * prod.shape[2]):
            _output_row(prod, att, bias, d, tiles, alpha, inv, out, rc, 6)
