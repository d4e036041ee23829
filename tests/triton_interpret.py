"""Checks of the Triton candidates (dacwatch.codec.triton_kernels), run through Triton's
interpreter on the CPU or compiled on a CUDA GPU. Triton decides whether to interpret
a kernel when it is defined, from ``TRITON_INTERPRET``, so these run in a fresh
process that sets it first: ``python -m tests.triton_interpret CHECK [cuda]`` prints
one line of JSON with what it measured; tests/test_triton_kernels.py runs it and
asserts on the figures (on a GPU: its tests marked ``triton_gpu``).

Checks: ``snake`` (against the in-place formula), ``convs`` (every DAC convolution
geometry against float64), ``windows`` (windows and batches of one convolution),
``encode`` and ``decode`` (the tiny network, chunked against whole-file).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.argv[2:] != ["cuda"]:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported, whoever imports it

import copy
import json
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dacwatch.codec import kernels
from dacwatch.codec import triton_kernels as tk
from dacwatch.codec.chunked import ChunkedCodec, set_numerics
from dacwatch.codec.model import prepare_model, tiny_model

DEVICE = "cpu"  # "cuda" when run so: the kernels compiled, on the GPU
INTERPRETER_SNAKE_BLOCKS = tk.SnakeBlocks(lines=8, positions=8192)


def interpreter_blocks(layer: nn.Module) -> tk.ConvBlocks:
    """Tiles for the network checks, per layer: the interpreter pays per operation,
    not per element, so few programs whose tiles fit the layer's channels exactly run
    it many times faster than the GPU's tiles. Exactness holds for any tiles fixed
    per layer; the kernel checks run GPU_BLOCKS itself."""
    if isinstance(layer, nn.ConvTranspose1d):  # the polyphase convolution's channels
        c_out, c_in = layer.out_channels * layer.stride[0], layer.in_channels
    else:
        c_out, c_in = layer.out_channels, layer.in_channels  # type: ignore[assignment]
    co, ci = (1 << max(0, (c - 1).bit_length()) for c in (c_out, c_in))
    return tk.ConvBlocks(co=co, ci=ci, t=max(128, min(16384, 2**18 // (co * ci))))


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in float32 units in the last place (same-sign values; 0 where equal)."""
    ia = a.view(torch.int32).to(torch.int64)
    ib = b.view(torch.int32).to(torch.int64)
    # Map the sign-magnitude bit patterns onto a monotonic integer line.
    ia = torch.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = torch.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return (ia - ib).abs()


def check_snake() -> dict[str, Any]:
    """The Triton Snake against ``kernels.snake`` (DAC's operations, in place) on random
    shapes: odd lengths, one and many channels, a strided input."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(1, 1, 1), (2, 1, 1000), (3, 7, 1025), (1, 64, 1499), (2, 256, 33), (1, 3, 5003)]
    worst_ulp, worst_rel, worst_operand, equal, total = 0, 0.0, 0.0, 0, 0
    for rows, channels, length in shapes:
        x = 3 * torch.randn(rows, channels, length + 2, generator=gen).to(DEVICE)[..., 1:-1]  # strided rows
        alpha = (0.05 + 2 * torch.rand(1, channels, 1, generator=gen)).to(DEVICE)
        got = tk.snake(x, alpha)
        ref = kernels.snake(x, alpha)
        d = (got - ref).abs()
        worst_ulp = max(worst_ulp, int(ulps(got, ref).max()))
        worst_rel = max(worst_rel, float((d / ref.abs().clamp_min(1e-30)).max()))
        # Against the size of what the last operation adds (x and the sine term): the
        # rounding of the sum itself, where x and the sine term nearly cancel.
        operands = x.abs() + torch.sin(alpha * x).pow(2) / alpha
        worst_operand = max(worst_operand, float((d / operands.clamp_min(1e-30)).max()))
        equal += int((got == ref).sum())
        total += got.numel()
    # The installed forward runs the kernel; with gradients on, the layer's own forward
    # (not compared by value: on a GPU that is DAC's TorchScript Snake, whose first
    # calls on a shape round differently from its later ones).
    layer = tiny_model("44khz").encoder.block[1].block[0].block[0].to(DEVICE)
    layer.requires_grad_(False)
    tk.install_fused_snake(layer)
    x = torch.randn(2, layer.alpha.shape[1], 77, generator=gen).to(DEVICE)
    with torch.inference_mode():
        installed = bool(torch.equal(layer(x), tk.snake(x, layer.alpha)))
    with torch.enable_grad():  # the layer's own forward: autograd sees it
        fallback = layer(x.clone().requires_grad_(True)).requires_grad
    return {
        "snake_max_ulp": worst_ulp,
        "snake_max_rel": worst_rel,
        "snake_max_err_over_operands": worst_operand,
        "snake_equal_share": equal / total,
        "snake_installed_runs_kernel": installed,
        "snake_grad_falls_back": fallback,
    }


# (c_in, c_out, kernel, stride, dilation, padding): every convolution geometry of DAC.
GEOMETRIES = {
    "first k7 (1 channel in)": (1, 24, 7, 1, 1, 3),
    "residual k7 d1": (40, 40, 7, 1, 1, 3),
    "residual k7 d3": (40, 40, 7, 1, 3, 9),
    "residual k7 d9": (40, 40, 7, 1, 9, 27),
    "residual k1": (40, 40, 1, 1, 1, 0),
    "strided k4 s2": (24, 48, 4, 2, 1, 1),
    "strided k8 s4": (24, 48, 8, 4, 1, 2),
    "strided k16 s8": (48, 96, 16, 8, 1, 4),
    "latent k3": (96, 64, 3, 1, 1, 1),
    "wide k7 (several channel blocks)": (100, 70, 7, 1, 1, 3),
}
# Those the windows check runs with the GPU's tiles (each costs seconds in the
# interpreter): the widest stride, several blocks of input and output channels. The
# network checks run every geometry over windows, with the interpreter's tiles.
WINDOW_GEOMETRIES = ("strided k16 s8", "wide k7 (several channel blocks)")
TRANSPOSED = {"polyphase s2": (48, 24, 2), "polyphase s8": (64, 32, 8)}


def _errors(got: torch.Tensor, ref64: torch.Tensor) -> float:
    return float((got.cpu().double() - ref64).abs().max() / ref64.abs().max())


def check_convs() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(2)
    out: dict[str, Any] = {}
    for name, (c_in, c_out, k, s, d, p) in GEOMETRIES.items():
        x = torch.randn(2, c_in, 161, generator=gen).to(DEVICE)
        w = (torch.randn(c_out, c_in, k, generator=gen) / math.sqrt(c_in * k)).to(DEVICE)
        b = (0.1 * torch.randn(c_out, generator=gen)).to(DEVICE)
        conv = nn.Conv1d(c_in, c_out, k, stride=s, dilation=d, padding=p).to(DEVICE)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        conv.requires_grad_(False)
        tk.install_tf32x3_convs(conv)
        ref64 = F.conv1d(x.cpu().double(), w.cpu().double(), b.cpu().double(), s, p, d)
        with torch.inference_mode():
            got = conv(x)
        hi, lo = tk.tf32_split(w.permute(2, 0, 1).contiguous())
        one = tk.conv1d(x, hi, lo, b, s, d, p, products=1)
        out[name] = {
            "shape_ok": got.shape == ref64.shape,
            "err_3xtf32": _errors(got, ref64),
            "err_float32": _errors(F.conv1d(x, w, b, s, p, d), ref64),
            "err_1xtf32": _errors(one, ref64),
        }
    for name, (c_in, c_out, s) in TRANSPOSED.items():
        x = torch.randn(2, c_in, 57, generator=gen).to(DEVICE)
        tconv = nn.ConvTranspose1d(c_in, c_out, 2 * s, stride=s, padding=math.ceil(s / 2), output_padding=s % 2)
        with torch.no_grad():
            tconv.weight.normal_(0, 1 / math.sqrt(c_in * 2), generator=gen)
            tconv.bias.normal_(0, 0.1, generator=gen)
        tconv.requires_grad_(False).to(DEVICE)
        kernels.install(nn.ModuleDict({"decoder": nn.Sequential(tconv)}))  # the polyphase forward, as prepare_model
        tk.install_tf32x3_convs(tconv)
        args = (tconv.stride, tconv.padding, tconv.output_padding)
        ref64 = F.conv_transpose1d(x.cpu().double(), tconv.weight.cpu().double(), tconv.bias.cpu().double(), *args)
        with torch.inference_mode():
            got = tconv(x)
        out[name] = {
            "shape_ok": got.shape == ref64.shape,
            "err_3xtf32": _errors(got, ref64),
            "err_float32": _errors(F.conv_transpose1d(x, tconv.weight, tconv.bias, *args), ref64),
        }
    return out


def check_windows() -> dict[str, Any]:
    """One convolution (GPU tiles) over a long input with padding, against valid
    convolutions over windows of it at many offsets and lengths, and rows alone
    against rows in a batch: equal bit for bit, or the kernel's sums depend on
    where an element falls."""
    gen = torch.Generator().manual_seed(3)
    found: dict[str, Any] = {}
    for name in WINDOW_GEOMETRIES:
        c_in, c_out, k, s, d, p = GEOMETRIES[name]
        x = torch.randn(2, c_in, 220, generator=gen).to(DEVICE)
        w = (torch.randn(c_out, c_in, k, generator=gen) / math.sqrt(c_in * k)).to(DEVICE)
        hi, lo = tk.tf32_split(w.permute(2, 0, 1).contiguous())
        b = (0.1 * torch.randn(c_out, generator=gen)).to(DEVICE)
        with torch.inference_mode():
            whole = tk.conv1d(x, hi, lo, b, s, d, p)
            mismatches = 0
            for start_out, count in ((0, 1), (1, 5), (37, 129), (3, 200)):
                count = min(count, whole.shape[-1] - start_out)
                if count <= 0:
                    continue
                # Output t reads padded input [t*s, t*s + (k-1)*d]; padded index i is x[i - p].
                first = start_out * s - p
                need = (count - 1) * s + (k - 1) * d + 1
                lo_in, hi_in = max(first, 0), min(first + need, x.shape[-1])
                # Zeros where the window reaches past the input: what padding reads.
                window = F.pad(x[..., lo_in:hi_in], (0, first + need - hi_in)).contiguous()
                got = tk.conv1d(window, hi, lo, b, s, d, lo_in - first)[..., :count]
                mismatches += int((got != whole[..., start_out : start_out + count]).sum())
            alone = tk.conv1d(x[1:2], hi, lo, b, s, d, p)
            mismatches += int((alone != whole[1:2]).sum())
            skip = torch.randn_like(whole)
            fused = tk.conv1d(x, hi, lo, b, s, d, p, skip=skip)
            residual_equal = bool(torch.equal(fused, skip + whole))
        found[name] = {"mismatches": mismatches, "residual_equal": residual_equal}
    return found


def _installed(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with both candidates (twice: idempotent), on ``DEVICE``; GPU
    tiles on a GPU, the interpreter's on the CPU."""
    m = copy.deepcopy(model).to(DEVICE)
    for _ in range(2):
        if DEVICE == "cpu":
            tk.install_fused_snake(m, INTERPRETER_SNAKE_BLOCKS)
            tk.install_tf32x3_convs(m, interpreter_blocks)
        else:
            tk.install_fused_snake(m)
            tk.install_tf32x3_convs(m)
    return m


def _noise(length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, length)).astype(np.float32)
    x = 0.5 * x + 0.5 * np.cumsum(x, axis=1) / np.sqrt(np.arange(1, length + 1, dtype=np.float32))
    return (0.3 * x).astype(np.float32)


def _encode_setup() -> tuple[Any, ChunkedCodec, ChunkedCodec, np.ndarray]:
    """The tiny 44 kHz network with both candidates installed, and 0.48 s of noise
    (21352 samples: a padded window at each edge and three valid interior windows of
    9 frames between them, the last overlapping), whole and chunked."""
    base = prepare_model(tiny_model("44khz"))
    model = _installed(base)
    x = _noise(21352, seed=11)
    whole = ChunkedCodec(model, DEVICE, 0, 0, 1)
    window = (whole.rf.size + 8 * whole.hop) / whole.sample_rate
    return base, whole, ChunkedCodec(model, DEVICE, window, 0, 2), x


def check_encode() -> dict[str, Any]:
    """Chunked latents and codes against whole-file ones (bit for bit and at every
    frame are the claims), the whole-file latents against the network in float64
    beside float32 torch's error, and the codes against the CPU's default path."""
    base, whole, chunked, x = _encode_setup()
    z_whole = whole.latents(x)
    z_chunked = chunked.latents(x)
    codes_whole = whole.encode(x)
    codes_chunked = chunked.encode(x)
    ref64 = ChunkedCodec(copy.deepcopy(base).double(), "cpu", 0, 0, 1).latents(x.astype(np.float64))
    torch32 = ChunkedCodec(base, "cpu", 0, 0, 1).latents(x)
    codes_cpu = ChunkedCodec(base, "cpu", 0, 0, 1).encode(x)  # the default path (oneDNN)
    scale = float(np.abs(ref64).max())
    return {
        "windows": len(chunked_plan(chunked, x.shape[1])),
        "frames": int(z_whole.shape[0]),
        "latents_equal": bool(np.array_equal(z_whole, z_chunked)),
        "latents_max_diff": float(np.abs(z_whole - z_chunked).max() / scale),
        "err_triton_vs_float64": float(np.abs(z_whole - ref64).max() / scale),
        "err_torch32_vs_float64": float(np.abs(torch32 - ref64).max() / scale),
        "codes_frames_differing": int((codes_whole != codes_chunked).any(axis=(1, 2)).sum()),
        "codes_distinct": len(np.unique(codes_whole[:, 0, 0])),
        "frames_differing_from_the_cpu_default": int((codes_whole != codes_cpu).any(axis=(1, 2)).sum()),
    }


def chunked_plan(codec: ChunkedCodec, length: int) -> list[Any]:
    from dacwatch.codec.windows import encode_plan

    return encode_plan(length, codec.rf, codec.frames_per_window())


def check_decode() -> dict[str, Any]:
    """Random codes (44 frames) decoded chunked (12 frames a window plus context)
    against whole, and the whole decode against the network's own."""
    base = prepare_model(tiny_model("44khz"))
    model = _installed(base)
    codes = np.random.default_rng(12).integers(0, 64, size=(44, 4, 1)).astype(np.int16)
    whole = ChunkedCodec(model, DEVICE, 0, 0, 1)
    window = 12 * whole.hop / whole.sample_rate
    audio_whole = whole.decode(codes)
    audio_chunked = ChunkedCodec(model, DEVICE, 0, window, 2).decode(codes)
    torch32 = ChunkedCodec(base, "cpu", 0, 0, 1).decode(codes)
    ref64 = ChunkedCodec(copy.deepcopy(base).double(), "cpu", 0, 0, 1).decode(codes)
    return {
        "samples": int(audio_whole.shape[1]),
        "chunked_vs_whole": float(np.abs(audio_whole - audio_chunked).max()),
        "err_triton_vs_float64": float(np.abs(audio_whole - ref64).max()),
        "err_torch32_vs_float64": float(np.abs(torch32 - ref64).max()),
        "scale": float(np.abs(ref64).max()),
    }


CHECKS = {
    "available": lambda: {"available": tk.available()},
    "snake": check_snake,
    "convs": check_convs,
    "windows": check_windows,
    "encode": check_encode,
    "decode": check_decode,
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    DEVICE = "cuda" if sys.argv[2:] == ["cuda"] else "cpu"
    set_numerics(torch.device(DEVICE), "float32")  # exact float32 references on a GPU
    t0 = time.monotonic()
    found = CHECKS[sys.argv[1]]()
    found["seconds"] = time.monotonic() - t0
    print(json.dumps(found))
