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

# Snake's sine in float32 (16 lanes of AVX-512 where float64 had 8; Snake took half
# the time of a fused Winograd transform in float64): ``alpha*x`` reduced by pi in
# four float32 parts, Cody and Waite's, the first three with at most 8 significant
# bits, so each ``k*PI_i`` is exact for |k| < 2**15 (the four sum to float64's pi);
# then an odd polynomial of degree 11 fitted to sin on [-pi/2, pi/2] for the least
# relative error: within 2.2 float32 steps of the true sine there, 2.3 with the
# reduction (|alpha*x| < 700, 2M points). Near a multiple of pi at large k the last
# two parts round to about 1e-12, a larger relative error in a sine that small, but
# Snake adds its square to x. The sign of sin(u) is (-1)**k times that of the
# reduced sine; Snake squares it. |alpha*x| from REDUCTION_LIMIT on (a decoder's
# activations are a few hundred at most) takes the C library's float64 sine
# instead, rounded once.
REDUCTION_LIMIT = 65536.0  # k at most 20861

F32 = np.float32
INV_PI = F32(1.0 / math.pi)
MAGIC = F32(12582912.0)  # 1.5 * 2**23: (v + MAGIC) - MAGIC rounds a float32 v to an integer
PI_1 = F32(3.140625)
PI_2 = F32(0.000965118408203125)
PI_3 = F32(2.5331974029541016e-06)
PI_4 = F32(1.984187036896401e-09)
S3 = F32(-0.1666666716337204)
S5 = F32(0.008333330973982811)
S7 = F32(-0.0001984086848096922)
S9 = F32(2.7525411496753804e-06)
S11 = F32(-2.388933317831743e-08)
LIMIT = F32(REDUCTION_LIMIT)
OPTIONS: dict[str, Any] = {"nogil": True, "boundscheck": False, "error_model": "numpy"}


def _jit(function: Callable[..., None]) -> Any:
    """A parallel kernel, cached on disk where a cache folder can be written."""
    try:
        return numba.njit(parallel=True, cache=True, **OPTIONS)(function)
    except RuntimeError:  # no cache folder can be written: compiled per process
        return numba.njit(parallel=True, **OPTIONS)(function)


@numba.njit(inline="always", **OPTIONS)  # type: ignore[untyped-decorator]
def snake_span(src: Any, s0: int, dst: Any, d0: int, n: int, a: Any, r: Any) -> None:  # pragma: no cover
    """``dst[d0:d0+n] = Snake(src[s0:s0+n])`` (distinct arrays; ``a`` and ``r`` float32):
    one pass LLVM vectorises, then the C library's sine for any |alpha*x| past the
    reduction's range (or infinite), element by element."""
    # Slices indexed from 0: numba then knows no index is negative (no wraparound
    # test per element, which kept LLVM from vectorising and cost 3x).
    xs = src[s0 : s0 + n]
    ys = dst[d0 : d0 + n]
    big: Any = 0
    for i in range(n):
        v = xs[i]
        u = v * a  # float32 throughout: every constant is one
        big += abs(u) >= LIMIT
        k = (u * INV_PI + MAGIC) - MAGIC
        red = (((u - k * PI_1) - k * PI_2) - k * PI_3) - k * PI_4
        r2 = red * red
        p = S11
        p = p * r2 + S9
        p = p * r2 + S7
        p = p * r2 + S5
        p = p * r2 + S3
        t = red + red * (r2 * p)
        t = t * t
        t = t * r
        ys[i] = t + v
    if big:
        for i in range(n):
            v = xs[i]
            u = v * a
            if abs(u) >= LIMIT:
                t = np.float32(math.sin(np.float64(u)))  # float32 from here, as above
                t = t * t
                t = t * r
                ys[i] = t + v


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
    step = m * d
    for ph in range(d):
        # zq[q, k] = x[ph - pad + d*q + step*k] where that is inside the row, else 0:
        # by rows near the row's ends, by whole tiles between them ([klo, khi): every q
        # inside), each tile's m samples read together (a quarter faster than by rows).
        klo = min(kq, max(0, (pad - ph + step - 1) // step))
        khi = max(klo, min(kq, (n_in - (ph - pad + d * (m - 1)) + step - 1) // step))
        for q in range(m):
            off = ph + d * q - pad
            lo = min(kq, max(0, (-off + step - 1) // step))
            hi = max(lo, min(kq, (n_in - off + step - 1) // step))
            zrow = zq[q]
            zrow[:lo] = 0.0
            zrow[hi:] = 0.0
            for k in range(lo, min(hi, klo)):
                zrow[k] = src[base + off + step * k]
            for k in range(max(lo, khi), hi):
                zrow[k] = src[base + off + step * k]
        if khi > klo:
            seg = src[base + ph - pad + step * klo : base + ph - pad + step * khi]
            for k in range(khi - klo):
                for q in range(m):
                    zq[q, klo + k] = seg[step * k + d * q]
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
