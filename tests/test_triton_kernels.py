"""The Triton candidates (dacwatch.codec.triton_kernels, issue #24) proven on the CPU
through Triton's interpreter: Snake against DAC's formula, the 3xTF32 convolution
against float64 on every DAC geometry, and chunked against whole-file passes of the
tiny network with both installed. The interpreter must be switched on before triton
is first imported, and another test in this worker may have imported it already,
so each check runs in a fresh process (tests/triton_interpret.py) that prints JSON.
The same checks run compiled on a GPU where there is one (marked ``triton_gpu``:
``pytest -m triton_gpu -n 0 tests/test_triton_kernels.py``), and the kernels are
compiled here for Ampere and Hopper.

Measured here (AMD EPYC, 2 cores): Snake within 2.2e-7 of its operands' size of
kernels.snake (numpy's sine against torch's; 95% of elements bit-identical, at most
8 ulp of the result where x and the sine term cancel); the convolutions' error
against float64 0.6-1.7x float32 F.conv1d's, one TF32 product's 800-4400x; chunked
latents and codes equal to whole-file ones bit for bit, decoding too. The file takes
about 60 s of CPU (the encode check 20 s of it): about 35 s on two idle cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dacwatch.codec import triton_kernels
from dacwatch.codec.chunked import ChunkedCodec
from dacwatch.codec.model import prepare_model, tiny_model

from .conftest import noise

ROOT = Path(__file__).resolve().parents[1]
HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed: its interpreter cannot run")
# The same checks compiled on a GPU: `pytest -m triton_gpu -n 0 tests/test_triton_kernels.py`
# there. Not marked cuda: the device kit's tests step has no time for their compiles yet.
on_cuda = [pytest.mark.triton_gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# 3xTF32 is float32's accuracy: its error against float64 within this factor of float32
# F.conv1d's (measured 0.6-1.7x), where one TF32 product is 800x or more.
CONV_ERROR_RATIO = 3.0
TF32_ERROR_RATIO = 100.0


def interpret(check: str, device: str = "cpu") -> dict[str, Any]:
    """Run ``python -m tests.triton_interpret CHECK`` under ``TRITON_INTERPRET=1`` (or,
    with ``device="cuda"``, compiled on the GPU) in a fresh process."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # the checker sets it itself, for the CPU
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.triton_interpret", check, *(["cuda"] if device == "cuda" else [])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@needs_triton
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=on_cuda)])
def test_snake_kernel_is_dacs_formula(device: str) -> None:
    found = interpret("snake", device)
    # The same operations in the same order; only the sine differs (numpy's, torch's):
    # each result within two float32 roundings of its operands' size.
    assert found["snake_max_err_over_operands"] <= 2.5 * 2.0**-23, found
    assert found["snake_equal_share"] > 0.9, found
    assert found["snake_installed_runs_kernel"] and found["snake_grad_falls_back"], found


@needs_triton
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=on_cuda)])
def test_3xtf32_convolution_is_as_accurate_as_float32(device: str) -> None:
    convs = interpret("convs", device)
    convs.pop("seconds")
    assert len(convs) == 12  # every geometry of DAC, transposed ones as polyphase convolutions
    for name, found in convs.items():
        assert found["shape_ok"], name
        assert found["err_3xtf32"] <= CONV_ERROR_RATIO * found["err_float32"], (name, found)
        if "err_1xtf32" in found:  # the check can tell: one TF32 product is far worse
            assert found["err_1xtf32"] >= TF32_ERROR_RATIO * found["err_float32"], (name, found)


@needs_triton
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=on_cuda)])
def test_convolution_does_not_depend_on_window_or_batch(device: str) -> None:
    """GPU tiles: valid convolutions over windows at many offsets and a row alone give
    the bits of one padded pass over the whole batch; the fused skip add the bits of
    a separate one."""
    windows = interpret("windows", device)
    windows.pop("seconds")
    assert len(windows) == 2
    for name, found in windows.items():
        assert found["mismatches"] == 0, (name, found)
        assert found["residual_equal"], name


@needs_triton
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=on_cuda)])
def test_chunked_encoding_equals_whole_with_the_candidates(device: str) -> None:
    """0.48 s through the tiny network: the padded edge windows and valid interior ones
    give the latents of one whole-file pass bit for bit (tiny codebooks hide small
    errors: the encoder's continuous output is compared, every frame) and its codes."""
    assert interpret("available", device)["available"] is None  # the interpreter counts as usable
    found = interpret("encode", device)
    print("frames differing from the CPU's default path:", found["frames_differing_from_the_cpu_default"])
    assert found["windows"] == 5 and found["frames"] == 42, found
    assert found["latents_equal"], found  # bit for bit, not just within rounding
    assert found["codes_distinct"] > 10, found
    assert found["codes_frames_differing"] == 0, found
    # And the network is as accurate as in float32 torch (against float64).
    assert found["err_triton_vs_float64"] <= CONV_ERROR_RATIO * found["err_torch32_vs_float64"], found


@needs_triton
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=on_cuda)])
def test_chunked_decoding_equals_whole_with_the_candidates(device: str) -> None:
    found = interpret("decode", device)
    # Bit for bit too (within 1e-4 is all decoding promises elsewhere): every layer is
    # ours and position-independent, and the decoder's crops between stages must not
    # send a strided activation to another Snake (one did: 3e-7 off).
    assert found["chunked_vs_whole"] == 0, found
    assert found["err_triton_vs_float64"] <= CONV_ERROR_RATIO * found["err_torch32_vs_float64"] + 1e-7, found


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "0", reason="the interpreter is on in this process")
def test_installed_layers_fall_back_where_the_kernels_cannot_run() -> None:
    """No GPU and no interpreter (this process): ``available`` says why, and a network
    with both candidates installed gives the bits of one without them."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernels would run")
    reason = triton_kernels.available()
    assert reason is not None
    plain = prepare_model(tiny_model("44khz"))
    candidate = prepare_model(tiny_model("44khz"))
    assert triton_kernels.install_fused_snake(candidate) > 0
    assert triton_kernels.install_tf32x3_convs(candidate) > 0
    assert triton_kernels.install_fused_snake(candidate) == triton_kernels.install_tf32x3_convs(candidate) == 0
    x = noise(1, 20000, seed=4)
    codec = ChunkedCodec(candidate, "cpu", 0.25, 0.1, 2)
    ref = ChunkedCodec(plain, "cpu", 0.25, 0.1, 2)
    codes = codec.encode(x)
    assert np.array_equal(codes, ref.encode(x))
    assert np.array_equal(codec.decode(codes), ref.decode(codes))


def test_dacwatch_runs_without_triton() -> None:
    """Importing the module imports no triton; with triton unimportable, the module says
    why, and installing is harmless."""
    code = (
        "import sys\n"
        "from dacwatch.codec import triton_kernels as tk\n"
        "assert 'triton' not in sys.modules\n"
        "sys.modules['triton'] = None\n"
        "import numpy as np\n"
        "from dacwatch.codec.chunked import ChunkedCodec\n"
        "from dacwatch.codec.model import prepare_model, tiny_model\n"
        "reason = tk.available(); assert reason and 'triton cannot be imported' in reason, reason\n"
        "x = np.ones((1, 3000), np.float32)\n"
        "m = prepare_model(tiny_model('44khz')); ref = ChunkedCodec(m, 'cpu', 0, 0, 1).encode(x)\n"
        "tk.install_fused_snake(m); tk.install_tf32x3_convs(m)\n"
        "assert np.array_equal(ChunkedCodec(m, 'cpu', 0, 0, 1).encode(x), ref)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


# Kernels compiled for Ampere and Hopper here, on the CPU (triton ships ptxas): the GPU
# path (tensor-core dots, libdevice's sine, 32-bit integer rounding) at least builds.
CONV_CASES = {  # (C_IN, K, STRIDE, DILATION, HAS_SKIP)
    "k7 d9": (64, 7, 1, 9, False),
    "k1 with the skip": (64, 1, 1, 1, True),
    "k16 s8": (32, 16, 8, 1, False),
    "k7, one channel in": (1, 7, 1, 1, False),
}


@needs_triton
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "0", reason="the interpreter is on in this process")
@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_for_the_gpu(arch: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dacwatch.codec import _triton_jit as jit

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    target = GPUTarget("cuda", arch, 32)
    runtime = ["length_in", "c_out", "length_out", "x_stride_row", "x_stride_ch", "skip_stride_row", "skip_stride_ch"]
    pointers = ["x_ptr", "w_hi_ptr", "w_lo_ptr", "bias_ptr", "skip_ptr", "out_ptr"]
    blocks = triton_kernels.GPU_BLOCKS
    for name, (c_in, k, stride, dilation, skip) in CONV_CASES.items():
        constants = dict(C_IN=c_in, K=k, STRIDE=stride, DILATION=dilation, HAS_BIAS=True, HAS_SKIP=skip)
        constants |= dict(PRODUCTS=3, BLOCK_CO=blocks.co, BLOCK_CI=blocks.ci, BLOCK_T=blocks.t, INTERPRETED=False)
        signature = {p: "*fp32" for p in pointers} | {a: "i32" for a in [*runtime, "padding"]}
        signature |= {c: "constexpr" for c in constants}
        source = ASTSource(fn=jit.conv1d_kernel, signature=signature, constexprs=constants)
        options = {"num_warps": blocks.warps, "num_stages": blocks.stages}
        ptx = triton.compile(source, target=target, options=options).asm["ptx"]
        assert ".tf32.tf32" in ptx, name  # TF32 tensor-core products (mma.sync or wgmma)
        assert "cvt.rna.tf32" not in ptx, name  # operands go in as split by the kernel
    snake = jit.snake_kernel
    signature = {p: "*fp32" for p in ("x_ptr", "alpha_ptr", "recip_ptr", "out_ptr")}
    signature |= {a: "i32" for a in ("lines", "channels", "length", "x_stride_row", "x_stride_ch")}
    signature |= {c: "constexpr" for c in ("LINES", "BLOCK", "LIBDEVICE_SIN")}
    source = ASTSource(fn=snake, signature=signature, constexprs=dict(LINES=1, BLOCK=1024, LIBDEVICE_SIN=True))
    ptx = triton.compile(source, target=target, options={"num_warps": 4, "enable_fp_fusion": False}).asm["ptx"]
    assert "sin.approx" not in ptx  # libdevice's accurate sine, not the approximation
