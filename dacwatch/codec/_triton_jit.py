"""The Triton kernels themselves; imported only by :mod:`dacwatch.codec.triton_kernels`,
lazily, because importing this module imports triton (and whether triton interprets
kernels on the CPU is fixed when they are decorated, from ``TRITON_INTERPRET``).

Every launch uses block sizes fixed by its caller whatever the tensor's length: no
autotuning, no heuristics on the length. See ``triton_kernels`` for why that,
and the order of each sum, is what makes chunked results equal whole-file ones.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def snake_kernel(
    x_ptr,
    alpha_ptr,
    recip_ptr,
    out_ptr,
    lines,
    channels,
    length,
    x_stride_row,
    x_stride_ch,
    LINES: tl.constexpr,
    BLOCK: tl.constexpr,
    LIBDEVICE_SIN: tl.constexpr,
):
    """One program: ``BLOCK`` positions of ``LINES`` consecutive (row, channel) lines;
    ``x`` has unit stride in time, ``out`` is contiguous. ``recip`` is ``1 / (alpha +
    1e-9)``, computed by torch as DAC does. On a GPU the sine is libdevice's
    ``__nv_sinf``, the one CUDA's ``sinf`` (and so torch's) calls; the interpreter has
    no libdevice and runs ``tl.sin`` (numpy's)."""
    line = (tl.program_id(0) * LINES + tl.arange(0, LINES)).to(tl.int64)
    offs = (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    line_ok = line < lines
    c = line % channels
    a = tl.load(alpha_ptr + c, mask=line_ok, other=1.0)[:, None]
    r = tl.load(recip_ptr + c, mask=line_ok, other=1.0)[:, None]
    mask = line_ok[:, None] & (offs < length)[None, :]
    src = (line // channels) * x_stride_row + c * x_stride_ch
    x = tl.load(x_ptr + src[:, None] + offs[None, :], mask=mask, other=0.0)
    t = x * a
    if LIBDEVICE_SIN:  # noqa: SIM108 (a constexpr branch: only one side is compiled)
        t = libdevice.sin(t)
    else:
        t = tl.sin(t)
    t = t * t
    t = t * r
    tl.store(out_ptr + line[:, None] * length + offs[None, :], t + x, mask=mask)


@triton.jit
def _tf32(v, INTERPRETED: tl.constexpr):
    """``v`` rounded to TF32 (10 explicit mantissa bits), to nearest, ties away from
    zero: PTX's ``cvt.rna.tf32.f32``, by integer arithmetic on the bits, so the
    interpreter rounds exactly as the GPU path does. Tensor cores read only these
    bits of a float32 operand, so the rounded value is what they multiply.

    Interpreted, the integer add runs in 64 bits: the interpreter checks every
    integer add narrower than that for overflow, at great cost. The low 32 bits of
    a sum do not depend on the width it is computed in, so both give the same bits."""
    u = v.to(tl.uint32, bitcast=True)
    if INTERPRETED:  # noqa: SIM108 (a constexpr branch: only one side is compiled)
        u = ((u.to(tl.uint64) + 0x1000) & 0xFFFFE000).to(tl.uint32)
    else:
        u = (u + 0x1000) & 0xFFFFE000
    return u.to(tl.float32, bitcast=True)


@triton.jit
def _mma(a, b, acc, INTERPRETED: tl.constexpr):
    """``acc + a @ b`` on TF32 tensor cores. Interpreted, as products summed over the
    inner dimension in order (``numpy.sum`` down axis 1, elementwise across the
    rest): the interpreter's own ``tl.dot`` is a float32 ``numpy.matmul``, whose
    BLAS sums one column in a different order depending on where in the tile it
    sits, which would make the interpreter's results depend on an element's
    position where the GPU's do not (a tensor core computes every element of a tile
    by the same datapath). The operands are TF32 values, so every product is exact
    in float32 either way; only the order of the additions differs from the GPU's."""
    if INTERPRETED:
        return acc + tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        return tl.dot(a, b, acc, input_precision="tf32")


@triton.jit
def conv1d_kernel(
    x_ptr,
    w_hi_ptr,
    w_lo_ptr,
    bias_ptr,
    skip_ptr,
    out_ptr,
    length_in,
    c_out,
    length_out,
    x_stride_row,
    x_stride_ch,
    skip_stride_row,
    skip_stride_ch,
    padding,
    C_IN: tl.constexpr,
    K: tl.constexpr,
    STRIDE: tl.constexpr,
    DILATION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    PRODUCTS: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    BLOCK_CI: tl.constexpr,
    BLOCK_T: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """``out[b, co, t] = (sum_{k, ci} w[k, co, ci] * x[b, ci, t*STRIDE + k*DILATION - padding]) + bias[co] (+ skip[b, co, t])``.

    Weights come split: ``w_hi`` = TF32(w), ``w_lo`` = TF32(w - w_hi), laid out
    ``[K, c_out, c_in]``. The input tile is split the same way in registers. With
    ``PRODUCTS == 3`` each step adds lo*hi, hi*lo, hi*hi (3xTF32, the lo*lo term
    dropped: about 2**-22 of a product); with 1, hi*hi only (plain TF32).
    """
    pid_t = tl.program_id(0)
    pid_co = tl.program_id(1)
    row = tl.program_id(2).to(tl.int64)
    # Indices in 64 bits: no overflow on long batches (and the interpreter does not
    # check 64-bit arithmetic for overflow, which costs it more than the convolution).
    co = (pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)).to(tl.int64)
    t = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    co_ok = co < c_out
    x_row = x_ptr + row * x_stride_row
    acc = tl.zeros((BLOCK_CO, BLOCK_T), dtype=tl.float32)
    w_rows = co[:, None] * C_IN
    # The reduction: taps outer, input channels in blocks of BLOCK_CI inner, each
    # block one tl.dot per product; the same sequence for every output element.
    for k in range(K):
        pos = t * STRIDE + (k * DILATION - padding)
        pos_ok = (pos >= 0) & (pos < length_in)
        x_k = x_row + pos[None, :]
        w_k = k * c_out * C_IN + w_rows
        for c0 in range(0, C_IN, BLOCK_CI):
            ci = c0 + tl.arange(0, BLOCK_CI).to(tl.int64)
            ci_ok = ci < C_IN
            xv = tl.load(x_k + ci[:, None] * x_stride_ch, mask=ci_ok[:, None] & pos_ok[None, :], other=0.0)
            w_off = w_k + ci[None, :]
            w_mask = co_ok[:, None] & ci_ok[None, :]
            w_hi = tl.load(w_hi_ptr + w_off, mask=w_mask, other=0.0)
            x_hi = _tf32(xv, INTERPRETED)
            if PRODUCTS == 3:
                w_lo = tl.load(w_lo_ptr + w_off, mask=w_mask, other=0.0)
                x_lo = _tf32(xv - x_hi, INTERPRETED)
                acc = _mma(w_lo, x_hi, acc, INTERPRETED)
                acc = _mma(w_hi, x_lo, acc, INTERPRETED)
            acc = _mma(w_hi, x_hi, acc, INTERPRETED)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + co, mask=co_ok, other=0.0)[:, None]
    t_ok = t < length_out
    mask = co_ok[:, None] & t_ok[None, :]
    if HAS_SKIP:
        skip = tl.load(
            skip_ptr + row * skip_stride_row + co[:, None] * skip_stride_ch + t[None, :],
            mask=mask,
            other=0.0,
        )
        acc = acc + skip
    tl.store(out_ptr + row * c_out * length_out + co[:, None] * length_out + t[None, :], acc, mask=mask)
