"""GPU kernel candidates in Triton (issue #24): a fused Snake and a 3xTF32 implicit-GEMM
convolution, installed on a network by opt-in functions. Not used by default; GPU
speed is unmeasured (docs/exactness.md, "GPU kernel candidates in Triton").

Importing this module never imports triton: :func:`available` and the installed
forwards import it on first use, and every installed forward falls back to the
layer's previous forward wherever the kernels cannot run (no triton, a CPU without
``TRITON_INTERPRET=1``, gradients on, autocast on, not float32, an unsupported shape).

Why chunked equals whole with these kernels. Every output element is computed by the
same sequence of float32 operations whatever the window, batch or position it falls
in, because

- the block sizes (:data:`GPU_BLOCKS` or the ``blocks`` given at install) are fixed
  for every shape: no autotuning, nothing keyed on the length;
- Snake is elementwise: one element, one fixed sequence of operations;
- the convolution sums each output element over taps ``k`` (outer loop) and input
  channels in blocks of ``blocks.ci`` (inner loop), each block one ``tl.dot`` per
  product term, accumulated into the same float32 register, then adds the bias and
  (fused residual) the skip: an order that depends on neither the output length nor
  the batch nor the position of the element (a tensor core computes every element
  of a tile by the same datapath; positions outside the input read as zero, exactly
  the zero padding of a whole-file pass; channels past ``c_in`` add exact zeros).
  Interpreted, each block's products are summed in order instead of by
  ``tl.dot`` (``_triton_jit._mma`` says why).

So a valid convolution over a window and a padded one over the whole file give the
same bits at every position both compute, which direct cuDNN/oneDNN sums do not
promise (the algorithm may change with the shape).

3xTF32: each float32 operand ``a`` is split into ``hi = tf32(a)`` and ``lo = tf32(a -
hi)`` (round to nearest, ties away, by bit arithmetic: PTX's ``cvt.rna.tf32.f32``),
and each step adds ``lo*hi + hi*lo + hi*hi`` (the ``lo*lo`` term, about 2**-22 of a
product, is dropped) with ``input_precision="tf32"``: tensor-core products of values
that TF32 represents exactly, accumulated in float32. Triton's interpreter ignores
``input_precision`` (its ``tl.dot`` is a float32 ``numpy.matmul``), so the explicit
split is what makes a CPU check exercise the real arithmetic: the operands it
multiplies are bit for bit the ones a GPU's tensor cores get; only the order of the
float32 additions inside one dot differs. Measured on the CPU (interpreter) on DAC's
convolution geometries: error against a float64 reference 0.6-1.7x that of float32
``F.conv1d``; plain TF32 (one product) 800-4400x.

Memory: each convolution keeps its TF32 hi and lo weights (twice its float32
weights; a transposed one also keeps its polyphase weights), built on first use and
rebuilt when the parameters change.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dacwatch.codec import kernels

MAX_GRID_YZ = 65535  # CUDA's limit on a grid's second and third dimensions


@dataclass(frozen=True)
class ConvBlocks:
    """The convolution kernel's fixed tile: output channels, input channels summed per
    step, output positions; warps and pipeline stages. One configuration serves every
    shape of a model (the exactness argument needs that); ``ci`` sets the summation
    order, ``co`` and ``t`` only which program computes an element."""

    co: int = 64
    ci: int = 32
    t: int = 128
    warps: int = 4
    stages: int = 3

    def __post_init__(self) -> None:
        for size in (self.co, self.ci, self.t):
            if size < 1 or size & (size - 1):
                raise ValueError("tile sizes must be powers of two")

    def compiles(self) -> bool:
        """Whether a GPU can compile these tiles (``tl.dot`` needs 16 or more each way);
        smaller ones serve the interpreter only."""
        return min(self.co, self.ci, self.t) >= 16


GPU_BLOCKS = ConvBlocks()
# Tiles per layer: one ConvBlocks for every layer, or a function of the layer (its
# channel counts, kernel size: never of the input).
Tiling = ConvBlocks | Callable[[nn.Module], ConvBlocks]


@dataclass(frozen=True)
class SnakeBlocks:
    """The Snake kernel's tile: ``lines`` (row, channel) lines by ``positions``."""

    lines: int = 1
    positions: int = 1024
    warps: int = 4

    def __post_init__(self) -> None:
        for size in (self.lines, self.positions):
            if size < 1 or size & (size - 1):
                raise ValueError("tile sizes must be powers of two")


GPU_SNAKE_BLOCKS = SnakeBlocks()


@functools.cache
def _jit() -> tuple[Any, bool] | str:
    """``(the kernels module, interpreted)``, or why triton cannot be used."""
    try:
        from triton.runtime.interpreter import InterpretedFunction

        from dacwatch.codec import _triton_jit
    except Exception as exc:  # not installed, or broken
        return f"triton cannot be imported ({type(exc).__name__}: {exc})"
    return _triton_jit, isinstance(_triton_jit.snake_kernel, InterpretedFunction)


def available() -> str | None:
    """None when the kernels can run here (a CUDA GPU of compute capability 8.0 or
    later, or the CPU under ``TRITON_INTERPRET=1``), else the reason they cannot."""
    found = _jit()
    if isinstance(found, str):
        return found
    _, interpreted = found
    if interpreted:
        return None
    if not torch.cuda.is_available():
        return "no CUDA GPU (and TRITON_INTERPRET=1 was not set when triton's kernels were built)"
    if torch.cuda.get_device_capability() < (8, 0):
        return "the GPU predates TF32 tensor cores (compute capability 8.0)"
    return None


def _runs_on(x: torch.Tensor) -> Any | None:
    """The kernels module when the kernels can take ``x`` (float32 ``[rows, channels,
    time]`` on a device they run on, not needing gradients, no autocast), else None."""
    if x.requires_grad or x.dtype != torch.float32 or x.dim() != 3 or x.numel() == 0:
        return None
    found = _jit()
    if isinstance(found, str):
        return None
    jit, interpreted = found
    if interpreted:
        ok = x.device.type == "cpu"
    else:
        ok = x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) >= (8, 0)
    if not ok or torch.is_autocast_enabled(x.device.type):
        return None
    return jit


# ---------------------------------------------------------------------- Snake


def snake(x: torch.Tensor, alpha: torch.Tensor, blocks: SnakeBlocks = GPU_SNAKE_BLOCKS) -> torch.Tensor:
    """DAC's Snake ``x + sin(alpha*x)**2 * (1 / (alpha + 1e-9))`` of a float32 ``[rows,
    channels, time]`` (unit stride in time) as one Triton kernel (one read, one
    write), in DAC's operations and order; the reciprocal is torch's, per channel.
    Returns a new contiguous tensor. Raises if the kernels cannot run on ``x`` (see
    :func:`available`)."""
    a = alpha.detach().reshape(-1).to(torch.float32).contiguous()
    return _snake(x, a, (a + 1e-9).reciprocal(), blocks)


def _snake(x: torch.Tensor, a: torch.Tensor, recip: torch.Tensor, blocks: SnakeBlocks) -> torch.Tensor:
    jit = _runs_on(x)
    if jit is None or x.stride(-1) != 1:
        raise RuntimeError("the Triton Snake needs a float32 [rows, channels, time] tensor it can run on")
    rows, channels, length = x.shape
    if a.numel() != channels:
        raise ValueError(f"alpha has {a.numel()} channels, x has {channels}")
    out = torch.empty((rows, channels, length), dtype=torch.float32, device=x.device)
    grid = (-(-rows * channels // blocks.lines), -(-length // blocks.positions))
    if grid[1] > MAX_GRID_YZ:
        raise ValueError("too long for one launch")
    interpreted = jit.snake_kernel.__class__.__name__ == "InterpretedFunction"
    jit.snake_kernel[grid](
        x,
        a,
        recip,
        out,
        rows * channels,
        channels,
        length,
        x.stride(0),
        x.stride(1),
        LINES=blocks.lines,
        BLOCK=blocks.positions,
        LIBDEVICE_SIN=not interpreted,
        num_warps=blocks.warps,
        enable_fp_fusion=False,  # no fused multiply-add: DAC's roundings, one per operation
    )
    return out


def _snake_fits(x: torch.Tensor, alpha: torch.Tensor, blocks: SnakeBlocks) -> bool:
    return (
        not torch.is_grad_enabled()
        and _runs_on(x) is not None
        and x.stride(-1) == 1
        and alpha.numel() == x.shape[1]
        and alpha.dtype == torch.float32
        and -(-x.shape[-1] // blocks.positions) <= MAX_GRID_YZ
    )


def _triton_snake_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    alpha: torch.Tensor = self.alpha  # type: ignore[assignment]
    blocks: SnakeBlocks = self._dacwatch_triton_blocks  # type: ignore[assignment]
    if _snake_fits(x, alpha, blocks) and alpha.device == x.device:
        # alpha and 1 / (alpha + 1e-9) per channel, kept until alpha changes: no small
        # launches of their own on every call.
        key = (alpha.data_ptr(), alpha.device, alpha._version)
        cached: tuple[Any, torch.Tensor, torch.Tensor] | None = getattr(self, "_dacwatch_snake_params", None)
        if cached is None or cached[0] != key:
            a = alpha.detach().reshape(-1).contiguous()
            cached = (key, a, (a + 1e-9).reciprocal())
            self._dacwatch_snake_params = cached  # type: ignore[assignment]
        return _snake(x, cached[1], cached[2], blocks)
    before: Callable[[torch.Tensor], torch.Tensor] = self._dacwatch_triton_before  # type: ignore[assignment]
    return before(x)


def install_fused_snake(model: nn.Module, blocks: SnakeBlocks = GPU_SNAKE_BLOCKS) -> int:
    """Run every ``Snake1d`` of ``model`` (encoder and decoder) as one fused Triton kernel.

    Takes effect only where :func:`available` says the kernels run: on CUDA tensors
    (compute capability 8.0+), or on CPU tensors when triton was imported under
    ``TRITON_INTERPRET=1`` (tests). Elsewhere, and with gradients or autocast on, for
    an input not float32 ``[rows, channels, time]`` with unit stride in time, each
    layer runs its previous forward (``kernels.install``'s in-place Snake, or DAC's). Idempotent; composes with
    :func:`install_tf32x3_convs` in either order. ``blocks``: the tiles (any give the
    same numbers; the interpreter's tests use large ones for speed). Returns how
    many layers it changed.

    Exactness: one element, one fixed sequence of float32 operations, so chunked and
    whole-file passes agree bit for bit through this layer. Against torch's Snake:
    the same operations in the same order without fused multiply-adds; the sine is
    libdevice's ``__nv_sinf`` on a GPU (as CUDA's ``sinf``: bit-identical expected,
    to be confirmed on a GPU) and numpy's under the interpreter (measured against
    ``kernels.snake``: 95% of elements bit-identical, the rest within 2.2e-7 of the
    operands' size: tests/test_triton_kernels.py).
    """
    changed = 0
    for module in model.modules():
        if type(module).__name__ == "Snake1d" and not hasattr(module, "_dacwatch_triton_before"):
            module._dacwatch_triton_before = module.forward  # type: ignore[assignment]
            module._dacwatch_triton_blocks = blocks  # type: ignore[assignment]
            module.forward = types.MethodType(_triton_snake_forward, module)
            changed += 1
    return changed


# ---------------------------------------------------------------------- convolution


def tf32_split(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` of a float32 tensor: ``hi = tf32(w)``, ``lo = tf32(w - hi)``, rounded
    to nearest, ties away from zero, as the kernel splits its input tiles."""

    def rna(v: torch.Tensor) -> torch.Tensor:
        u = v.contiguous().view(torch.int32)
        return (((u + 0x1000) >> 13) << 13).view(torch.float32)

    hi = rna(w)
    return hi, rna(w - hi)


def conv1d(
    x: torch.Tensor,
    w_hi: torch.Tensor,
    w_lo: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    dilation: int = 1,
    padding: int = 0,
    skip: torch.Tensor | None = None,
    blocks: ConvBlocks = GPU_BLOCKS,
    products: int = 3,
) -> torch.Tensor:
    """``F.conv1d(x, w, bias, stride, padding, dilation) (+ skip)`` by the Triton kernel.

    ``x`` float32 ``[rows, c_in, n]`` with unit stride in time; ``w_hi``/``w_lo`` the
    :func:`tf32_split` of the weight laid out ``[k, c_out, c_in]``; ``skip`` (fused
    residual add) ``[rows, c_out, n_out]`` with unit stride in time. ``products``: 3
    for 3xTF32, 1 for plain TF32 (a measurement aid). Raises if the kernels cannot
    run on ``x``.
    """
    jit = _runs_on(x)
    if jit is None or x.stride(-1) != 1:
        raise RuntimeError("the Triton convolution needs a float32 [rows, channels, time] tensor it can run on")
    interpreted = jit.conv1d_kernel.__class__.__name__ == "InterpretedFunction"
    if not interpreted and not blocks.compiles():
        raise ValueError(f"{blocks} are tiles for the interpreter only (tl.dot needs 16 or more)")
    if products not in (1, 3):
        raise ValueError("products must be 3 (3xTF32) or 1 (TF32)")
    k, c_out, c_in = w_hi.shape
    rows, channels, n = x.shape
    if channels != c_in:
        raise ValueError(f"x has {channels} channels, the weights {c_in}")
    n_out = (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    out = torch.empty((rows, c_out, max(n_out, 0)), dtype=torch.float32, device=x.device)
    if n_out <= 0:
        return out
    if skip is not None and (skip.shape != out.shape or skip.stride(-1) != 1 or skip.dtype != torch.float32):
        raise ValueError("the skip must be float32, shaped like the output, unit stride in time")
    grid = (-(-n_out // blocks.t), -(-c_out // blocks.co), rows)
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise ValueError("too many rows or output channels for one launch")
    jit.conv1d_kernel[grid](
        x,
        w_hi,
        w_lo,
        bias if bias is not None else w_hi,  # never read without HAS_BIAS
        skip if skip is not None else x,  # never read without HAS_SKIP
        out,
        n,
        c_out,
        n_out,
        x.stride(0),
        x.stride(1),
        0 if skip is None else skip.stride(0),
        0 if skip is None else skip.stride(1),
        padding,
        C_IN=c_in,
        K=k,
        STRIDE=stride,
        DILATION=dilation,
        HAS_BIAS=bias is not None,
        HAS_SKIP=skip is not None,
        PRODUCTS=products,
        BLOCK_CO=blocks.co,
        BLOCK_CI=blocks.ci,
        BLOCK_T=blocks.t,
        INTERPRETED=interpreted,
        num_warps=blocks.warps,
        num_stages=blocks.stages,
    )
    return out


def _split_weights(conv: nn.Conv1d | nn.ConvTranspose1d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(w_hi, w_lo, bias)`` in the kernel's layout, cached until the parameters change;
    a transposed convolution's are its polyphase weights (``kernels._polyphase_weights``)."""

    def build() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if isinstance(conv, nn.ConvTranspose1d):
            weight, bias = kernels._polyphase_weights(conv)
        else:
            weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
        hi, lo = tf32_split(weight.to(torch.float32).permute(2, 0, 1).contiguous())
        return hi, lo, None if bias is None else bias.to(torch.float32).contiguous()

    return kernels._cached(conv, "_dacwatch_tf32x3", build)


def _conv_fits(conv: nn.Conv1d, x: torch.Tensor) -> bool:
    return (
        not torch.is_grad_enabled()
        and _runs_on(x) is not None
        and x.stride(-1) == 1
        and conv.weight.dtype == torch.float32
        and conv.weight.device == x.device
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and x.shape[1] == conv.in_channels
        and x.shape[0] <= MAX_GRID_YZ
    )


def _blocks(module: nn.Module) -> ConvBlocks:
    tiling: Tiling = getattr(module, "_dacwatch_triton_blocks", GPU_BLOCKS)
    return tiling if isinstance(tiling, ConvBlocks) else tiling(module)


def _triton_conv_forward(self: nn.Conv1d, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    if not _conv_fits(self, x):
        before: Callable[[torch.Tensor], torch.Tensor] = self._dacwatch_triton_before  # type: ignore[assignment]
        y = before(x)
        return y if skip is None else skip + y
    hi, lo, bias = _split_weights(self)
    (s,), (d,), padding = self.stride, self.dilation, self.padding
    assert not isinstance(padding, str)  # _conv_fits rules it out
    return conv1d(x, hi, lo, bias, s, d, padding[0], skip=skip, blocks=_blocks(self))


def _triton_transposed_forward(self: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """``kernels._transposed_forward`` with its polyphase convolution on the Triton kernel."""
    fits = (
        not torch.is_grad_enabled()
        and _runs_on(x) is not None
        and x.stride(-1) == 1
        and kernels._polyphase_suits(self)
        and self.weight.dtype == torch.float32
        and x.shape[1] == self.in_channels
        and x.shape[0] <= MAX_GRID_YZ
    )
    if not fits:
        before: Callable[[torch.Tensor], torch.Tensor] = self._dacwatch_triton_before  # type: ignore[assignment]
        return before(x)
    hi, lo, bias = _split_weights(self)
    return kernels._polyphase_output(self, conv1d(x, hi, lo, bias, padding=1, blocks=_blocks(self)))


def _triton_residual_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DAC's ``ResidualUnit.forward`` with the skip added in the epilogue of the unit's
    last convolution: the same two roundings (convolution plus bias, then plus the
    skip) as a separate add, so the same bits, one pass fewer."""
    block: nn.Sequential = self.block  # type: ignore[assignment]
    last = block[-1]
    if (
        torch.is_grad_enabled()
        or _runs_on(x) is None
        or not isinstance(last, nn.Conv1d)
        or not hasattr(last, "_dacwatch_triton_before")
    ):
        before: Callable[[torch.Tensor], torch.Tensor] = self._dacwatch_triton_before  # type: ignore[assignment]
        return before(x)
    h = x
    for layer in list(block)[:-1]:
        h = layer(h)
    (k,), (s,), (d,), padding = last.kernel_size, last.stride, last.dilation, last.padding
    assert not isinstance(padding, str)
    n_out = (h.shape[-1] + 2 * padding[0] - d * (k - 1) - 1) // s + 1
    pad = (x.shape[-1] - n_out) // 2
    skip = x[..., pad : x.shape[-1] - pad] if pad > 0 else x
    if skip.shape != (x.shape[0], last.out_channels, n_out):
        return _crop_add(x, last(h))
    return _triton_conv_forward(last, h, skip=skip)


def _crop_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    pad = (x.shape[-1] - y.shape[-1]) // 2
    if pad > 0:
        x = x[..., pad:-pad]
    return x + y


def install_tf32x3_convs(model: nn.Module, blocks: Tiling = GPU_BLOCKS) -> int:
    """Run ``model``'s convolutions by the 3xTF32 Triton kernel: every ``Conv1d`` (encoder
    and decoder, all of DAC's kernel sizes, dilations and strides), every decoder
    ``ConvTranspose1d`` with kernel ``2 * stride`` (DAC's upsamplers, as the polyphase
    ordinary convolution of ``kernels``), and each ``ResidualUnit``'s skip add, fused
    into its last convolution.

    Takes effect only where :func:`available` says the kernels run (CUDA tensors on
    compute capability 8.0+, or CPU tensors under ``TRITON_INTERPRET=1``) and only
    for float32 without gradients or autocast; everywhere else each layer runs its
    previous forward (``kernels.install``'s, or torch's). The kernels do not read
    the TF32 flags ``set_numerics`` sets: under ``codec.precision`` ``float32`` and
    ``tf32`` alike they run 3xTF32; ``bf16`` (autocast) keeps its own convolutions. Idempotent (a second call keeps the first's
    ``blocks``); composes with :func:`install_fused_snake`. ``blocks``: the tiles,
    one :class:`ConvBlocks` for all layers or a function of the layer (never of its
    input). Returns how many layers it changed.

    Exactness: every output element is summed in one fixed order (taps outer,
    ``blocks.ci`` input channels per step), whatever the window, batch or position,
    so chunked encoding equals a whole-file pass bit for bit, codes and latents, for
    fixed ``blocks`` (``ci`` sets the order of the sums: other tiles round
    differently, each consistently). The quantizer's projections are convolutions
    too and run here. Accuracy: 3xTF32 is about float32's (measured 0.6-1.7x the
    error of float32 ``F.conv1d`` against float64 on DAC's geometries, on the CPU);
    it is not bit-identical to cuDNN or oneDNN, so codes may differ from the default
    path's on rare frames near a codebook boundary (to be measured on a GPU).
    """
    changed = 0
    for module in model.modules():
        if hasattr(module, "_dacwatch_triton_before"):
            continue
        if isinstance(module, nn.ConvTranspose1d):
            forward: Callable[..., torch.Tensor] = _triton_transposed_forward
        elif isinstance(module, nn.Conv1d):
            forward = _triton_conv_forward
        elif type(module).__name__ == "ResidualUnit":
            forward = _triton_residual_forward
        else:
            continue
        module._dacwatch_triton_before = module.forward  # type: ignore[assignment]
        module._dacwatch_triton_blocks = blocks  # type: ignore[assignment]
        module.forward = types.MethodType(forward, module)
        changed += 1
    return changed
