"""Faster inference forwards for DAC's layers, installed by ``model.prepare_model``.

Each replaces a layer's ``forward`` on that one module and falls back to the
layer's own forward whenever gradients are on or the layer is not the shape
the fast form assumes, so the network stays a plain DAC network.

- Snake: the same operations in the same order as DAC's, so bit-identical, on
  one temporary instead of four; the decoder's on a GPU is DAC's own fused
  TorchScript Snake (faster there, not exact, see ``_decoder_snake_forward``).
- The decoder's transposed convolutions (kernel twice the stride) as one
  ordinary convolution over ``stride`` phases, interleaved afterwards: oneDNN
  runs ordinary convolutions 1.3-1.7x faster than transposed ones on a CPU
  (about 4% of a decode), and in exact float32 cuDNN's transposed form took
  half of an H100's decode (its deterministic dgrad kernels). The
  sums run in another order than DAC's, so audio differs from DAC's own
  decoder by about 1e-6, which decoding tolerates; the encoder, whose codes
  must be exact, has no transposed convolutions.
- The decoder's wide kernel-7 convolutions (64 channels or more, at most 8M
  weights: the twelve residual units of a released decoder, not its first
  layer) by Winograd's minimal filtering F(4, 7), on a CPU in float32: per four
  outputs, ten channel-mixing products instead of twenty-eight, as ten matrix
  products over all tiles, the small input and output transforms as matrix
  products too. Per layer about half the time of oneDNN's direct convolution
  at 384-768 channels and 1.15-1.5x faster at 96-192; a full-size decode about
  1.25x faster for 200-300 MB more RSS while decoding (weights, workspace).
  Its float32 rounding is larger than a direct sum's (about 4e-5 of the
  output's scale per layer against 1.5e-6 on random data) and depends on where
  a tile starts, so chunked and whole-file decoding differ by a few 1e-6
  (1.4e-6 measured on the full-size network; up to 6e-7 with direct sums):
  far below the codec's own error and the 1e-4 the tests allow. The encoder
  keeps direct sums: its codes must be the same whichever window a frame
  falls in.
- Which of these a decoder layer runs is measured per host
  (:mod:`dacwatch.codec.tuning`): the figures above are an Intel Xeon's. On an
  AMD EPYC (Zen 5, AVX-512) MKL's sgemm, which does Winograd's channel mixing,
  ran at 40-90 GFLOP/s where oneDNN's direct convolution ran at up to 370, so
  there the direct form wins at 96-192 channels, Winograd at 384 and 768 only
  with its channel mixing as one grouped oneDNN 1x1 convolution (``_mix``,
  "grouped": 1.4-1.9x faster than direct), and torch's own transposed
  convolutions beat the polyphase form (63 against 157 ms for the first one).
- With numba (:mod:`dacwatch.codec.fused_cpu`, the lever named below): the
  decoder's Snake in one pass, its sine float32's (eager ``sin``
  costs about twelve multiply passes on the Zen 5 EPYC), and a further
  per-host choice for the residual units, "winograd-fused": F(4, 7) with its
  transforms in numba, the Snake before and after the convolution fused into
  them (two passes over memory fewer) and the mixing oneDNN's grouped 1x1
  convolution; timed between its Snakes. On the Zen 5 EPYC it won at 192-768
  channels (9 against 11.5 ms at 192), a decode 1.13-1.18x faster in one
  process; on a Zen 4 EPYC at 96-384 and once at 768. Each Snake element is
  computed alike wherever a window starts; without numba, torch's passes.
- The last layer (one output channel) as one matrix product of its taps and seven
  shifted adds, "taps" (``_taps_forward``): 0.77 against 2.1 ms per depth-first tile
  on a Zen 4 EPYC, where oneDNN's convolution ran at 9 GFLOP/s.
- A second fused choice, "winograd6-fused": the same with F(6, 7), twelve
  products per six outputs, a fifth fewer than F(4, 7), for about twice its
  rounding in RMS and three times at worst (points searched for the least error,
  ``WINOGRAD6_POINTS``): 3e-6 of the output's RMS against 1.5e-6 on unit-scale
  data, 7e-6 on a full-size decode's audio against F(4, 7), far below 16-bit
  audio's step (3e-5). On the Zen 4 EPYC it won at every width: a decode 1.06x
  faster than with F(4, 7) everywhere, in one process, interleaved.

Tried and dropped (full-size decoder, 2 cores): Winograd F(6, 2) for the
polyphase upsamplers (2.5% of a decode for 350 MB more RSS; again on a Zen 4
EPYC with numba's transforms and the block's Snake fused in, points searched:
0.86x oneDNN's time at 384 -> 192 channels, 0.95x at 192 -> 96, slower at 768 ->
384 and 1536 -> 768, where a tile of the depth-first decode leaves the channel
mixing too few columns; about 1% of a decode) and for the decoder's first layer
(1% for 118 MB); F(7, 7) with numba's transforms (0.96-0.99x F(6, 7)'s time per
layer, 1.09x at 192 channels, for 2.2x its rounding); F(5, 7) (12% fewer
products for 2x the rounding; F(6, 7) was dropped with it then, and taken up
since, above); F(8, 7)
(3.8x F(6, 7)'s rounding); torch.compile of Snake (2.5x faster alone, 4% in place,
a 10-20 s compile and a C++ compiler at run time). The channel mixing on
time-major products (Zen 4 EPYC, F(6, 7)): oneDNN's grouped 1x1 convolution on
channels-last tensors with weights packed ahead
(``torch.ops.mkldnn._reorder_convolution_weight``, ``_convolution_pointwise``) ran
1.2-1.6x faster than on channel-major ones, which it reorders on the way in and out;
but numba's transforms then run along channels (a block of up to 192 channels through
an L2-sized buffer) and gave most of it back: the fused layer 1.01-1.12x, about 1.04x
typical, so about 2% of a decode. The packed layout also depends on oneDNN's length
hint: packed for 2048 columns the mixing ran 3-7x slower at 192 and 768 channels,
packed for 512 5x slower at 384 (342 columns), so it would need packing per length.
Again on an AMD EPYC (Zen 5), against the per-host kernels, in one process,
interleaved, under a load of 3.2-3.9 from other work
(bench/results/decode-profile-cpu-20261202-1630.md): torch.compile (inductor,
dynamic shapes) of the decoder's Snake made a decode 1.20x faster best over
best (1.24x the median of per-round ratios): eager ``sin`` costs about twelve
multiply passes there (1.73 ms against 0.146 ms on 1.58M floats, one thread)
and Snake was a fifth of a decode; but its first call took 50 s (a recompile
per stride pattern; torch's limit of 8 was reached), with a C++ compiler at run
time; kept out, and the largest lever left (a fused Snake built ahead of time).
torch.compile of the decoder's residual units (convolutions left to oneDNN,
Snake and the skip fused): 0.86x, slower, after a 35 s compile. Larger decode
windows (8 s) and depth-first tiles of 8192 or 32768 samples: within the noise
of 16384 and 4 s (context frames recompute 1% of the convolutions' work at
4 s and 16384; none of the layouts moves much). On a Zen 4 EPYC with the fused
kernels, tiles of 32768 made a decode 1.09x faster than 16384 (``chunked.CPU_DECODE_TILE``
has the figures), and are the default now.
"""

from __future__ import annotations

import functools
import threading
import types
from collections.abc import Callable
from fractions import Fraction
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_cpu

T = TypeVar("T")


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """DAC's Snake activation, ``x + sin(alpha*x)**2 / (alpha + 1e-9)``, in the same
    operations and order as ``dac.nn.layers.snake`` (so bit-identical) but in place
    on one temporary: it is a fifth of the decoder's time, and memory-bound."""
    t = x * alpha
    t.sin_()
    t.mul_(t)
    t.mul_((alpha + 1e-9).reciprocal())
    return t.add_(x)


def install(model: nn.Module) -> None:
    """Give ``model``'s layers their fast inference forwards (see the module doc)."""
    decoder = getattr(model, "decoder", None)
    in_decoder = {id(m) for m in decoder.modules()} if decoder is not None else set()
    for module in model.modules():
        if type(module).__name__ == "Snake1d":
            forward = _decoder_snake_forward if id(module) in in_decoder else _snake_forward
            module.forward = types.MethodType(forward, module)
        elif type(module).__name__ == "ResidualUnit":
            module.forward = types.MethodType(_residual_forward, module)
    if decoder is None:
        return
    for module in decoder.modules():
        if isinstance(module, nn.ConvTranspose1d):
            module.forward = types.MethodType(_transposed_forward, module)  # type: ignore[method-assign]
        elif isinstance(module, nn.Conv1d) and _winograd_suits(module):
            module.forward = types.MethodType(_winograd_forward, module)  # type: ignore[method-assign]


def decoder_snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The decoder's Snake on a CPU without gradients: one fused pass
    (:func:`fused_cpu.snake`) where numba runs, else :func:`snake`."""
    fused = fused_cpu.snake(x, alpha)
    return snake(x, alpha) if fused is None else fused


def _snake_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled():  # in-place ops are for inference only
        from dac.nn.layers import snake as dac_snake

        return dac_snake(x, self.alpha)  # type: ignore[no-any-return]
    alpha: torch.Tensor = self.alpha  # type: ignore[assignment]
    return snake(x, alpha)


def _decoder_snake_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The decoder's Snake. On a GPU it is bound by memory traffic, and DAC's TorchScript
    snake runs fused as one kernel, 3.2-3.7x faster than five in-place passes on an
    H100. Its rounding differs between its first, unfused calls on a new shape and the
    fused ones, so the encoder never uses it (an H100 then gave 3 of 3447 frames
    differing from a whole-file pass); decoded audio only has to agree within float
    tolerance, and does."""
    if x.device.type != "cpu":
        from dac.nn.layers import snake as dac_snake

        return dac_snake(x, self.alpha)  # type: ignore[no-any-return]
    if not torch.is_grad_enabled():
        return decoder_snake(x, self.alpha)  # type: ignore[arg-type]
    return _snake_forward(self, x)


def _residual_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DAC's ``ResidualUnit.forward``, adding the skip into the block's fresh output
    in place of a new tensor (the same sum, so bit-identical)."""
    y = _residual_block_fused(self.block, x)  # type: ignore[arg-type]
    if y is None:
        y = self.block(x)  # type: ignore[operator]
    pad = (x.shape[-1] - y.shape[-1]) // 2
    if pad > 0:
        x = x[..., pad:-pad]
    if torch.is_grad_enabled() or x.shape != y.shape or y.data_ptr() == x.data_ptr():
        return x + y
    return y.add_(x)


def _residual_block_fused(block: nn.Sequential, x: torch.Tensor) -> torch.Tensor | None:
    """A decoder residual unit's Snake, kernel-7 convolution, Snake and 1x1 convolution
    with the first three fused (:func:`_fused_winograd`), where its kernel-7 layer runs
    "winograd-fused" or "winograd6-fused"; None otherwise."""
    if len(block) != 4 or getattr(block[1], "_dacwatch_kernel", None) not in FUSED_TILES:
        return None
    first, conv, second, last = block
    if type(first).__name__ != "Snake1d" or type(second).__name__ != "Snake1d":
        return None
    h = _fused_winograd(conv, x, first.alpha, second.alpha)  # type: ignore[arg-type]
    return None if h is None else last(h)  # type: ignore[no-any-return]


def _parameter_key(conv: nn.Conv1d | nn.ConvTranspose1d) -> tuple[Any, ...]:
    """What a layer's derived weights depend on: its weight and bias tensors as they
    are now (an in-place change bumps ``_version``)."""
    weight, bias = conv.weight, conv.bias
    bias_key = None if bias is None else (bias.data_ptr(), bias._version)
    return (weight.data_ptr(), weight.device, weight.dtype, weight._version, bias_key)


def _cached(conv: nn.Conv1d | nn.ConvTranspose1d, name: str, build: Callable[[], T]) -> T:
    """``build()``'s result, kept on ``conv`` under ``name`` until its parameters change."""
    key = _parameter_key(conv)
    cached: tuple[Any, T] | None = getattr(conv, name, None)
    if cached is None or cached[0] != key:
        cached = (key, build())
        setattr(conv, name, cached)
    return cached[1]


def _polyphase_weights(conv: nn.ConvTranspose1d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The transposed convolution's weights as an ordinary convolution with kernel 2
    and ``stride * out_channels`` outputs, phase-major; cached per weight tensor."""

    def build() -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = conv.weight
        (s,) = conv.stride
        c_in, c_out, _ = weight.shape
        # Output position q*s + r takes x[q] through tap r and x[q-1] through tap r + s.
        taps = weight.detach().reshape(c_in, c_out, 2, s).permute(3, 1, 0, 2).flip(-1)
        poly = taps.reshape(s * c_out, c_in, 2).contiguous()
        bias = None if conv.bias is None else conv.bias.detach().repeat(s)
        return poly, bias

    return _cached(conv, "_dacwatch_polyphase", build)


def _polyphase_suits(conv: nn.ConvTranspose1d) -> bool:
    """Whether ``conv`` computes as an ordinary kernel-2 convolution over its stride's
    phases (:func:`_polyphase_weights`, :func:`_polyphase_output`): kernel twice the
    stride, no dilation, no groups, numeric padding at least the output padding."""
    (k,), (s,), (op,), (d,) = conv.kernel_size, conv.stride, conv.output_padding, conv.dilation
    p = -1 if isinstance(conv.padding, str) else conv.padding[0]
    return k == 2 * s and d == 1 and conv.groups == 1 and 0 <= op <= p


def _polyphase_output(conv: nn.ConvTranspose1d, phases: torch.Tensor) -> torch.Tensor:
    """``conv``'s output from its phases ``[rows, stride * c_out, n + 1]`` (the polyphase
    weights' convolution with padding 1 of an input of length ``n``): interleaved, then
    cropped by the padding, with the output padding kept at the end."""
    padding = conv.padding
    assert not isinstance(padding, str)  # _polyphase_suits rules out string padding
    (s,), (op,), (p,) = conv.stride, conv.output_padding, padding
    rows, _, m = phases.shape
    full = phases.reshape(rows, s, -1, m).permute(0, 2, 3, 1).reshape(rows, -1, m * s)
    return full[..., p : p + m * s - 2 * p + op]


def _transposed_forward(self: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    if (
        torch.is_grad_enabled()
        or not _polyphase_suits(self)
        or x.dim() != 3
        or torch.is_autocast_enabled(x.device.type)
    ):
        return nn.ConvTranspose1d.forward(self, x)
    weight, bias = _polyphase_weights(self)
    return _polyphase_output(self, F.conv1d(x, weight, bias, padding=1))


# The decoder's last layer (96 channels to one, kernel 7, at the output rate): oneDNN's
# convolution with one output channel ran at 9 GFLOP/s on a Zen 4 EPYC, 65 ms of a 10 s
# decode. As one matrix product of the kernel's taps with the input ([out * 7, in] x
# [in, n]) and seven shifted adds ("taps") the tuning timed it 2.7x faster (0.77
# against 2.1 ms per depth-first tile), 40 ms of the same decode. Layers with at most
# TAPS_MAX_OUTPUTS outputs have the choice.
TAPS_MAX_OUTPUTS = 4


def _plain(conv: nn.Conv1d) -> bool:
    """Stride 1, one group, zero padding by a number: what the taps and Winograd forms
    compute (each adds its own bounds)."""
    return (
        conv.stride == (1,) and conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    )


def _taps_suits(conv: nn.Conv1d) -> bool:
    return _plain(conv) and conv.out_channels <= TAPS_MAX_OUTPUTS and conv.kernel_size[0] > 1


def _taps_forward(self: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``self(x)`` as ``W [out * k, in] @ x``, then row j of each output shifted by
    ``j * dilation`` and summed (the bias first): the sums in another order than
    oneDNN's, a few float32 steps apart."""
    if (
        torch.is_grad_enabled()
        or not _taps_suits(self)
        or x.dim() != 3
        or x.dtype != self.weight.dtype
        or torch.is_autocast_enabled(x.device.type)
    ):
        return nn.Conv1d.forward(self, x)
    padding = self.padding
    assert not isinstance(padding, str)  # _taps_suits rules out string padding
    (k,), (d,), (p,) = self.kernel_size, self.dilation, padding
    rows, _, n = x.shape
    length = n + 2 * p - d * (k - 1)
    if length <= 0:
        return nn.Conv1d.forward(self, x)
    taps = _cached(self, "_dacwatch_taps", lambda: self.weight.detach().permute(0, 2, 1).reshape(-1, self.in_channels))
    prod = torch.matmul(taps, x).view(rows, -1, k, n)  # [rows, out, k, n]
    if self.bias is None:
        y = x.new_zeros((rows, self.out_channels, length))
    else:
        y = self.bias.detach().view(1, -1, 1).expand(rows, -1, length).clone()
    for j in range(k):
        # output t takes tap j of input t + j*d - p, where that is inside x
        lo, hi = max(0, p - j * d), min(length, n + p - j * d)
        if hi > lo:
            y[..., lo:hi] += prod[:, :, j, lo + j * d - p : hi + j * d - p]
    return y


# Winograd F(4, 7): four outputs of a kernel-7 correlation from ten products. The
# ten interpolation points (nine finite and infinity) were chosen by a search over
# small fractions for the least float32 error on unit-scale data.
WINOGRAD_OUTPUTS = 4
WINOGRAD_TAPS = 7
WINOGRAD_POINTS = (
    0,
    2,
    -2,
    Fraction(1, 2),
    Fraction(-1, 2),
    Fraction(5, 4),
    Fraction(-5, 4),
    Fraction(4, 5),
    Fraction(-4, 5),
)
# F(6, 7) for the fused kernel ("winograd6-fused"): twelve products per six outputs,
# a fifth fewer than F(4, 7). Its points: 0, infinity and the five pairs +-p out of
# 19 small fractions (1, 2, 3, 1/2, 1/3, 2/3, 3/2, 3/4, 4/3, 5/4, 4/5, ...) that gave
# the least float32 RMS error through a 192-channel layer on unit-scale data (all
# 11,628 sets tried): 2.1x F(4, 7)'s in RMS and 3.3x at worst (4.7e-6 and 5.7e-5 of
# the output's RMS, against 2.2e-6 and 1.7e-5; a direct sum 2.0e-7 and 1.2e-6).
WINOGRAD6_POINTS = (
    0,
    1,
    -1,
    Fraction(3, 2),
    Fraction(-3, 2),
    Fraction(2, 3),
    Fraction(-2, 3),
    3,
    -3,
    Fraction(1, 3),
    Fraction(-1, 3),
)
WINOGRAD_TILE_POINTS = {WINOGRAD_OUTPUTS: WINOGRAD_POINTS, 6: WINOGRAD6_POINTS}
WINOGRAD_MIN_CHANNELS = 64  # narrower layers gain nothing over the direct convolution
# The transformed weights take 10/7 (F(6, 7): 12/7) of a layer's memory again. The decoder's first
# layer (1024 -> 1536 channels, 11M weights, at the code frame rate) would add
# 118 MB of RSS for about 1% of a decode, so layers that large keep the direct form.
WINOGRAD_MAX_WEIGHTS = 8 * 2**20


@functools.cache
def winograd_matrices(m: int, r: int, points: tuple[Fraction | int, ...]) -> tuple[torch.Tensor, ...]:
    """Toom-Cook matrices ``(AT [m, a], G [a, r], BT [a, a])`` with ``a = m + r - 1``,
    for correlation: ``y = AT @ ((G @ g) * (BT @ d))`` gives ``y[i] = sum_k g[k] d[i+k]``.

    Correlation is the transpose of polynomial multiplication, whose Toom-Cook form
    evaluates both factors at the points (and infinity) and interpolates: so ``AT``
    and ``G`` are evaluation matrices and ``BT`` the transposed inverse of the
    ``a``-point evaluation matrix, computed exactly in fractions.
    """
    a = m + r - 1
    if len(points) != a - 1 or len(set(points)) != a - 1:
        raise ValueError(f"F({m}, {r}) needs {a - 1} distinct finite points")

    def evaluation(n: int) -> list[list[Fraction]]:
        rows = [[Fraction(p) ** k for k in range(n)] for p in points]
        return [*rows, [Fraction(0)] * (n - 1) + [Fraction(1)]]

    # Gauss-Jordan inverse of the square evaluation matrix, exactly.
    aug = [row + [Fraction(int(i == j)) for j in range(a)] for i, row in enumerate(evaluation(a))]
    for col in range(a):
        pivot = next(i for i in range(col, a) if aug[i][col] != 0)
        aug[col], aug[pivot] = aug[pivot], aug[col]
        aug[col] = [v / aug[col][col] for v in aug[col]]
        for i in range(a):
            if i != col and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [v - f * w for v, w in zip(aug[i], aug[col], strict=True)]
    inverse = [row[a:] for row in aug]

    def tensor(rows: list[list[Fraction]]) -> torch.Tensor:
        return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)

    at = tensor(evaluation(m)).t()
    g = tensor(evaluation(r))
    bt = tensor(inverse).t()
    return at, g, bt


def _winograd_suits(conv: nn.Conv1d) -> bool:
    return (
        _plain(conv)
        and conv.kernel_size == (WINOGRAD_TAPS,)
        and min(conv.in_channels, conv.out_channels) >= WINOGRAD_MIN_CHANNELS
        and conv.weight.numel() <= WINOGRAD_MAX_WEIGHTS
    )


@functools.cache
def _winograd_transforms(
    device: torch.device, m: int = WINOGRAD_OUTPUTS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(G [a, r], BT [a, a], AT^T [a, m])`` of F(m, 7), m 4 or 6, in float32 on ``device``."""
    at, g, bt = winograd_matrices(m, WINOGRAD_TAPS, WINOGRAD_TILE_POINTS[m])
    return g.float().to(device), bt.float().to(device), at.t().float().contiguous().to(device)


def _winograd_weights(conv: nn.Conv1d) -> torch.Tensor:
    """``U [a, out, in (+1)]`` for this layer, float32; cached per weight and bias
    tensor like the polyphase weights. With a bias, U has one more input channel
    carrying it: the forward feeds that channel ones, so the bias rides in the
    channel mixing instead of taking a pass of its own."""

    def build() -> torch.Tensor:
        weight, bias = conv.weight, conv.bias
        g = _winograd_transforms(weight.device)[0]
        # U[p] = sum_k G[p, k] W[:, :, k], as one product (no float64 or permuted
        # temporaries: the widest layers' weights are tens of MB).
        c_out, c_in, r = weight.shape
        u = torch.mm(g, weight.detach().reshape(-1, r).t()).view(-1, c_out, c_in)
        if bias is not None:  # the ones channel's kernel is the bias at tap 0
            u = torch.cat([u, g[:, :1, None] * bias.detach().view(1, c_out, 1)], dim=2)
        return u

    return _cached(conv, "_dacwatch_winograd", build)


def _winograd_forward(self: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    if (
        torch.is_grad_enabled()
        or x.dim() != 3
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")  # bf16 by choice: autocast's own convolutions
    ):
        return nn.Conv1d.forward(self, x)
    padding = self.padding
    assert not isinstance(padding, str)  # _winograd_suits rules out string padding
    (d,), (p,) = self.dilation, padding
    m, r = WINOGRAD_OUTPUTS, WINOGRAD_TAPS
    a = m + r - 1
    rows, c_in, n_in = x.shape
    length = n_in + 2 * p - (r - 1) * d  # output samples
    if length < m * d:
        return nn.Conv1d.forward(self, x)
    u = _winograd_weights(self)
    _, bt, att = _winograd_transforms(x.device)
    c_out, channels = u.shape[1:]  # channels: c_in, plus the ones channel with a bias
    # Dilation d splits the signal into d interleaved phases, each an undilated
    # correlation; every phase gets `tiles` tiles of m outputs.
    tiles = -(-length // (m * d))
    per_phase = tiles * m + r - 1
    padded = x.new_empty((rows, channels, d * per_phase))
    padded[:, :c_in, :p].zero_()
    padded[:, :c_in, p : p + n_in].copy_(x)
    padded[:, :c_in, p + n_in :].zero_()
    padded[:, c_in:].fill_(1.0)
    result = torch.empty((rows, c_out, tiles * m * d), dtype=x.dtype)
    for row, out in zip(padded, result, strict=True):
        phases = row.view(channels, per_phase, d).transpose(1, 2) if d > 1 else row[:, None]
        windows = phases.unfold(-1, a, m).reshape(-1, a)  # [(channels, d, tiles), a]
        v = torch.mm(bt, windows.t()).view(a, channels, -1)  # input transform
        del windows  # each of these is 2.5x the activation: hold no more than two at once
        prod = _mix(self, u, v)  # [a, c_out, d * tiles]: the channel mixing, all the FLOPs
        del v
        if d == 1:  # output transform straight into place
            torch.mm(prod.view(a, -1).t(), att, out=out.view(-1, m))
        else:  # output transform, then interleave the phases again
            y = torch.mm(prod.view(a, -1).t(), att).view(c_out, d, tiles * m).transpose(1, 2)
            out.view(c_out, tiles * m, d).copy_(y)
    return result[..., :length]


# The fused kernels, by the outputs of their tile: F(4, 7) and F(6, 7).
FUSED_TILES = {"winograd-fused": 4, "winograd6-fused": 6}


def _winograd_fused_weights(conv: nn.Conv1d, m: int) -> torch.Tensor:
    """F(m, 7)'s transformed kernel as one grouped 1x1 convolution's weights ``[(m + 6)
    * out, in, 1]``, without the bias channel (the fused output transform adds the bias)."""

    def build() -> torch.Tensor:
        g = _winograd_transforms(conv.weight.device, m)[0]
        _, c_in, r = conv.weight.shape
        u = torch.mm(g, conv.weight.detach().reshape(-1, r).t())  # [a, out * in]
        return u.view(-1, c_in, 1)

    return _cached(conv, f"_dacwatch_wfused{m}", build)


def _fused_winograd(
    conv: nn.Conv1d,
    x: torch.Tensor,
    snake_in: torch.Tensor | None = None,
    snake_out: torch.Tensor | None = None,
    m: int | None = None,
) -> torch.Tensor | None:
    """``conv(x)`` by :func:`fused_cpu.winograd_conv` with F(m, 7) (by default the tile
    of the layer's fused kernel, else 4), Snakes fused in where given; None where it
    does not apply (the caller then runs the unfused layers)."""
    if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return None
    if m is None:
        m = FUSED_TILES.get(getattr(conv, "_dacwatch_kernel", ""), WINOGRAD_OUTPUTS)
    padding = conv.padding
    assert not isinstance(padding, str)  # _winograd_suits rules out string padding
    (d,), (p,) = conv.dilation, padding
    _, bt, att = _winograd_transforms(x.device, m)
    weights = _winograd_fused_weights(conv, m)
    return fused_cpu.winograd_conv(x, weights, conv.bias, d, p, (bt, att), snake_in, snake_out)


_warm_lock = threading.Lock()
_warmed: bool | None = None  # once per process: None until the warm-up has run
_warming: threading.Thread | None = None


def warm_cpu_kernels() -> bool:
    """Load numba's CPU kernels now, each with the argument types a decode passes, so
    that a daemon pays for them at start and not in its first job (a cache load is
    about 0.3-0.6 s; the first compile on a host 4 to 5 s). Once per process; waits
    for a warm-up already running in the background. False where they cannot run."""
    global _warmed
    with _warm_lock:
        if _warmed is None:
            _warmed = _warm()
        return _warmed


def warm_cpu_kernels_soon() -> None:
    """Start :func:`warm_cpu_kernels` in a background thread (once): a one-shot decode
    calls it before it loads the weights, which numba's import and cache load then
    overlap (0.15-0.25 s of a 1.5 s start-up on a Zen 4 EPYC)."""
    global _warming
    with _warm_lock:
        if _warmed is not None or _warming is not None:
            return
        _warming = threading.Thread(target=warm_cpu_kernels, name="dacwatch-warm-kernels", daemon=True)
    _warming.start()


def _warm() -> bool:
    if not fused_cpu.available():
        return False
    conv = nn.Conv1d(4, 4, 7, padding=3)
    x, alpha = torch.zeros(1, 4, 64), torch.ones(1, 4, 1)
    with torch.no_grad():
        return fused_cpu.snake(x, alpha) is not None and all(
            _fused_winograd(conv, x, alpha, alpha, m) is not None for m in FUSED_TILES.values()
        )


def _winograd_fused_forward(self: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """Winograd F(4, 7) or F(6, 7) with numba's transforms and oneDNN's grouped mixing
    (:mod:`fused_cpu`); inside a residual unit ``_residual_forward`` also fuses the
    Snakes on either side."""
    y = _fused_winograd(self, x)
    return nn.Conv1d.forward(self, x) if y is None else y


# How a Winograd layer does its channel mixing (``_dacwatch_mixing`` on the layer; set by
# dacwatch.codec.tuning from measurements on the host): "bmm" is one batched matrix product
# (MKL's sgemm), "onednn" one 1x1 convolution per Winograd point (oneDNN's JIT kernels),
# "grouped" one grouped 1x1 convolution with a group per point (oneDNN, no copy). On an AMD
# EPYC (Zen 5) MKL's sgemm ran at about half of oneDNN's rate.
MIXINGS = ("bmm", "onednn", "grouped")


def _mix(conv: nn.Conv1d, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``bmm(u [a, out, in], v [a, in, n]) -> [a, out, n]`` by the layer's mixing."""
    mixing = getattr(conv, "_dacwatch_mixing", "bmm")
    if mixing == "grouped":  # one grouped 1x1 convolution, a groups: the product lands in place
        a, c_out, channels = u.shape
        grouped = _cached(conv, "_dacwatch_grouped", lambda: _winograd_weights(conv).view(a * c_out, channels, 1))
        return F.conv1d(v.reshape(1, a * channels, -1), grouped, groups=a).view(a, c_out, -1)
    if mixing != "onednn":
        return torch.bmm(u, v)
    a, c_out, _ = u.shape
    prod = torch.empty((a, c_out, v.shape[-1]), dtype=v.dtype, device=v.device)
    weights = _cached(conv, "_dacwatch_onednn", lambda: [w[..., None] for w in _winograd_weights(conv)])
    for point in range(a):  # conv1d has no out=: each point's product is copied into place
        prod[point] = F.conv1d(v[point][None], weights[point])[0]
    return prod
