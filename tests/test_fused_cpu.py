"""The CPU decoder's numba kernels (dacwatch.codec.fused_cpu): the fused Snake and the
Winograd transforms against float64 references, each element independent of where a
window starts, compiled code cached across processes, and torch's passes wherever
numba cannot run. No test asserts a timing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dacwatch.codec import fused_cpu, kernels, tuning

from .daemon import tmpfs


def snake64(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    x, alpha = x.double(), alpha.double()
    return x + torch.sin(alpha * x) ** 2 / (alpha + 1e-9)


def test_numba_runs_here() -> None:
    """CI's machine has numba (it comes with DAC): the fused path is what the suite tests."""
    assert fused_cpu.available()


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0, 3000.0])
def test_fused_snake_is_as_accurate_as_torchs(scale: float) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 48, 1001, generator=gen) * scale
    alpha = torch.rand(1, 48, 1, generator=gen) * 4 + 0.05
    got = fused_cpu.snake(x, alpha)
    assert got is not None and got.shape == x.shape and got.dtype == torch.float32
    want = snake64(x, alpha)
    torch_error = (kernels.snake(x, alpha).double() - want).abs().max()
    error = (got.double() - want).abs().max()
    assert error <= max(torch_error * 1.01, 1e-30)
    # Mostly the very same floats: both round the same operations, only the sines differ
    # (two float32 sines each within a step or two of the true one: 89.5% the same at
    # scale 1, more at the others).
    assert (got == kernels.snake(x, alpha)).float().mean() > 0.85


def kernel_module() -> Any:
    """``_fused_kernels``, imported the way ``fused_cpu`` imports it (its numba cache
    folder chosen then): never first from a test."""
    assert fused_cpu.available()
    from dacwatch.codec import _fused_kernels

    return _fused_kernels


def sine_as_fused(u: np.ndarray) -> np.ndarray:
    """The fused Snake's float32 sine of ``u`` in numpy, step by step, each step rounded
    to float32 as numba rounds it (no fused multiply-adds)."""
    k = kernel_module()
    f = np.float32
    assert u.dtype == f
    n = (u * k.INV_PI + k.MAGIC).astype(f) - k.MAGIC
    red = (((u - n * k.PI_1) - n * k.PI_2) - n * k.PI_3) - n * k.PI_4
    r2 = red * red
    p = np.full_like(u, k.S11)
    for c in (k.S9, k.S7, k.S5, k.S3):
        p = p * r2 + c
    assert red.dtype == p.dtype == f
    return red + red * (r2 * p)  # the sine of the reduced argument: +-sin(u)


def snake_rounded_as_fused(x: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
    """The fused Snake's own operations in numpy, every one in float32."""
    xs = x.numpy().astype(np.float32)
    a = alpha.numpy().astype(np.float32)
    r = (alpha + 1e-9).reciprocal().numpy().astype(np.float32)
    t = sine_as_fused((xs * a).astype(np.float32))
    return (t * t * r + xs).astype(np.float32)


def test_the_fused_snake_is_its_float32_steps_and_its_sine_within_2_5_ulps() -> None:
    """Every element exactly as the float32 steps in numpy (the kernel computes what the
    module says), and those steps' sine within 2.5 float32 steps of the true one over
    many periods and every part of the reduced range (2.11 measured here; a wrong
    coefficient or reduction constant shows there). Torch's float32 sine is only
    close, so it cannot be the judge."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(4, 64, 4001, generator=gen) - 0.5) * 400
    alpha = torch.rand(1, 64, 1, generator=gen) * 3 + 0.05
    got = fused_cpu.snake(x, alpha)
    assert got is not None
    want = snake_rounded_as_fused(x, alpha)
    differ = int((got.numpy() != want).sum())
    assert differ == 0, f"{differ} of {want.size} elements differ"
    u = (x.numpy() * alpha.numpy()).astype(np.float32)
    sine = np.abs(sine_as_fused(u)).astype(np.float64)
    true = np.abs(np.sin(u.astype(np.float64)))
    ulps = np.abs(sine - true) / np.spacing(true.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 2.5, f"the sine is {ulps.max():.2f} float32 steps off"


def test_each_element_is_computed_alike_wherever_a_window_starts() -> None:
    """Offsets and lengths move elements between LLVM's vector body and scalar tail,
    cropped views read through the flat path: every element must come out the same."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 8, 517, generator=gen) * 5
    alpha = torch.rand(1, 8, 1, generator=gen) + 0.2
    whole = fused_cpu.snake(x, alpha)
    assert whole is not None
    for start, stop in [(0, 517), (1, 517), (3, 200), (16, 33), (5, 6), (511, 517)]:
        part = fused_cpu.snake(x[..., start:stop], alpha)
        assert part is not None
        assert torch.equal(part, whole[..., start:stop])
        assert torch.equal(fused_cpu.snake(x[..., start:stop].contiguous(), alpha), part)  # type: ignore[arg-type]


def test_huge_infinite_and_nan_inputs_come_out_as_torchs() -> None:
    """Past the reduction's range the C library's sine takes over, element by element."""
    limit = kernel_module().REDUCTION_LIMIT
    values = [1e9, -3e12, limit, limit - 8, 1e30, -3e38, float("inf"), -float("inf"), float("nan"), 0.5, 1e-30]
    values += [-0.0, 0.0, -limit * 0.9, limit * 0.51]
    x = torch.tensor(values).view(1, 1, -1).repeat(1, 3, 1)
    alpha = torch.tensor([1.0, 0.37, 2.5]).view(1, 3, 1)
    got = fused_cpu.snake(x, alpha)
    want = kernels.snake(x, alpha)
    assert got is not None
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    finite = ~torch.isnan(want)
    reference = snake64(x, alpha)[finite]
    assert ((got[finite].double() - reference).abs() <= (want[finite].double() - reference).abs() * 1.01 + 1e-6).all()
    # One huge element does not change how its finite neighbours are computed.
    small = fused_cpu.snake(x[..., 9:], alpha)
    assert small is not None and torch.equal(small, got[..., 9:])


def test_what_the_fused_snake_does_not_take_is_left_to_torch() -> None:
    alpha = torch.ones(1, 4, 1)
    assert fused_cpu.snake(torch.randn(1, 4, 10, dtype=torch.float64), alpha) is None
    assert fused_cpu.snake(torch.randn(1, 10, 4).transpose(1, 2), alpha) is None  # time not unit stride
    assert fused_cpu.snake(torch.randn(1, 4, 10, requires_grad=True), alpha) is None
    assert fused_cpu.snake(torch.randn(1, 5, 10), alpha) is None  # alpha of another width
    assert fused_cpu.snake(torch.randn(1, 4, 0), alpha) is None


def _conv(c_in: int, c_out: int, dilation: int, seed: int) -> tuple[nn.Conv1d, nn.Conv1d]:
    torch.manual_seed(seed)
    conv = nn.Conv1d(c_in, c_out, 7, dilation=dilation, padding=3 * dilation)
    reference = nn.Conv1d(c_in, c_out, 7, dilation=dilation, padding=3 * dilation).double()
    reference.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
    return conv, reference


# F(6, 7)'s float32 rounding is about three times F(4, 7)'s at worst (kernels.py).
TILE_TOLERANCE = {4: 2e-5, 6: 6e-5}


@pytest.mark.parametrize("m", [4, 6])
@pytest.mark.parametrize("dilation", [1, 3, 9])
def test_fused_winograd_with_its_snakes_matches_float64(dilation: int, m: int) -> None:
    """Snake, kernel-7 convolution, Snake by F(m, 7), against float64, on rows of a
    cropped view, lengths from one tile to many and one not a multiple of the tile."""
    conv, reference = _conv(64, 72, dilation, seed=dilation)
    gen = torch.Generator().manual_seed(5)
    a_in = torch.rand(1, 64, 1, generator=gen) + 0.1
    a_out = torch.rand(1, 72, 1, generator=gen) + 0.1
    base = torch.randn(2, 64, 1200, generator=gen) * 2
    with torch.no_grad():
        for n in (m * dilation, m * dilation + 1, 1001):
            x = base[..., 11 : 11 + n]
            plain = kernels._fused_winograd(conv, x, m=m)
            fused = kernels._fused_winograd(conv, x, a_in, a_out, m)
            assert plain is not None and fused is not None
            want_plain = reference(x.double())
            want_fused = snake64(reference(snake64(x, a_in)), a_out)
            assert plain.shape == want_plain.shape == fused.shape
            tolerance = TILE_TOLERANCE[m]
            assert (plain.double() - want_plain).abs().max() <= tolerance * want_plain.abs().max()
            assert (fused.double() - want_fused).abs().max() <= tolerance * want_fused.abs().max()


def test_too_short_for_a_tile_falls_back_to_the_direct_convolution() -> None:
    conv, reference = _conv(64, 64, 9, seed=1)
    tuning.apply(conv, tuning.FUSED_CHOICE)
    x = torch.randn(1, 64, 20)  # 20 outputs < one tile of 4 outputs at dilation 9
    with torch.no_grad():
        assert kernels._fused_winograd(conv, x) is None
        got = conv(x)
    assert (got.double() - reference(x.double())).abs().max() <= 1e-5


def _python(code: str, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


FIRST_CALLS = """
    import torch
    from dacwatch.codec import fused_cpu, kernels
    x = torch.randn(1, 64, 300)
    a = torch.ones(1, 64, 1)
    conv = torch.nn.Conv1d(64, 64, 7, padding=3)
    with torch.no_grad():
        assert fused_cpu.snake(x, a) is not None
        assert kernels._fused_winograd(conv, x, a, a, 4) is not None
        assert kernels._fused_winograd(conv, x, a, a, 6) is not None
    print("ok")
"""


def test_compiled_kernels_are_cached_and_read_by_the_next_process(tmp_path: Path) -> None:
    """The second process finds every kernel in the cache folder and writes nothing:
    closures (keyed by a dispatcher that pickles differently per process) recompiled
    in every process, 5 s of each first decode."""
    env = {"XDG_CACHE_HOME": str(tmp_path), "NUMBA_CACHE_DIR": ""}
    assert _python(FIRST_CALLS, env).strip() == "ok"
    folder = tmp_path / "dacwatch" / "numba"
    first = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert any(name.endswith(".nbc") for name in first)
    assert all(any(kernel in n for n in first) for kernel in ("snake_rows", "winograd_input", "winograd_output"))
    assert _python(FIRST_CALLS, env).strip() == "ok"
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == first


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="numba's pool would take the one core torch has")
@pytest.mark.parametrize("how", ["env", "call"])
def test_the_kernels_leave_torchs_thread_count_as_it_was(tmp_path: Path, how: str) -> None:
    """numba's first parallel call launches its OpenMP pool, which sets the calling
    thread's OpenMP thread count to all the cores: torch's count with it. A daemon or
    user that gave torch one thread (OMP_NUM_THREADS=1, ``torch.set_num_threads(1)``)
    keeps one through the first decode and after it."""
    first = "import torch\n" + ("" if how == "env" else "torch.set_num_threads(1)\n")
    code = (
        first
        + textwrap.dedent(FIRST_CALLS).replace('print("ok")', "")
        + "assert fused_cpu.snake(x, a) is not None\n"
        + "print(torch.get_num_threads())\n"
    )
    env = {"XDG_CACHE_HOME": str(tmp_path), "NUMBA_CACHE_DIR": "", "NUMBA_NUM_THREADS": "2"}
    if how == "env":
        env["OMP_NUM_THREADS"] = "1"
    assert _python(code, env).strip() == "1"


def test_a_cache_folder_that_cannot_be_made_still_runs_compiled(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {"XDG_CACHE_HOME": str(blocker), "NUMBA_CACHE_DIR": "", "HOME": str(blocker)}
    assert _python(FIRST_CALLS, env).strip() == "ok"


def test_a_full_cache_folder_still_runs_compiled_and_says_so(tmp_path: Path) -> None:
    """numba compiles, then cannot write the cache file (ENOSPC on a full tmpfs): the
    compiled code runs all the same (no call falls back to torch's passes), with a
    warning naming the kernel; nothing stops the decode."""
    with tmpfs(tmp_path / "full", "256k", fill=True) as full:
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(FIRST_CALLS)],
            env={**os.environ, "NUMBA_CACHE_DIR": str(full)},
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    assert "numba could not cache the CPU kernel snake_rows" in result.stderr
    assert "No space left on device" in result.stderr


def test_without_numba_the_decoder_runs_torchs_passes(tmp_path: Path) -> None:
    """numba missing (its import fails): no fused choice is offered, Snake is torch's,
    and a wide decoder still decodes."""
    out = _python(
        """
        import sys
        sys.modules["numba"] = None  # import numba now raises ImportError
        import numpy as np, torch
        from dacwatch.codec import fused_cpu, kernels, tuning
        from dacwatch.codec.chunked import ChunkedCodec
        from dacwatch.codec.model import prepare_model, tiny_model
        assert not fused_cpu.available()
        x, a = torch.randn(1, 4, 50), torch.ones(1, 4, 1)
        assert fused_cpu.snake(x, a) is None
        assert torch.equal(kernels.decoder_snake(x, a), kernels.snake(x, a))
        model = prepare_model(tiny_model("44khz", seed=11, decoder_dim=256))
        codec = ChunkedCodec(model, "cpu")
        chosen = codec.tune_kernels(None)
        assert not set(tuning.FUSED_CHOICES) & set(chosen.values())
        assert all(not set(tuning.FUSED_CHOICES) & set(tuning.choices_for(c)) for c in tuning.tunable(model))
        codes = np.random.default_rng(1).integers(0, 64, size=(30, 4, 1)).astype(np.int16)
        audio = codec.decode(codes)
        assert audio.shape[0] == 1 and np.isfinite(audio).all()
        print("ok")
        """,
        {"XDG_CACHE_HOME": str(tmp_path)},
    )
    assert out.strip().endswith("ok")


@pytest.mark.parametrize("choice", tuning.FUSED_CHOICES)
def test_a_wide_decoder_decodes_the_same_fused_or_not(tiny44: nn.Module, choice: str) -> None:
    """The fused residual units (Snake, Winograd F(4, 7) or F(6, 7), Snake in one)
    against the same decoder with torch's Snake and the direct convolution: within
    float tolerance."""
    from dacwatch.codec.chunked import ChunkedCodec
    from dacwatch.codec.model import prepare_model, tiny_model

    model = prepare_model(tiny_model("44khz", seed=11, decoder_dim=256))
    codes = np.random.default_rng(4).integers(0, 64, size=(50, 4, 2)).astype(np.int16)
    layers = [c for c in tuning.tunable(model) if choice in tuning.choices_for(c)]
    assert layers
    for c in layers:
        tuning.apply(c, "direct")
    plain = ChunkedCodec(model, "cpu").decode(codes)
    for c in layers:
        tuning.apply(c, choice)
    fused = ChunkedCodec(model, "cpu").decode(codes)
    scale = max(1.0, float(np.abs(plain).max()))
    assert np.abs(fused - plain).max() <= 1e-4 * scale
    assert np.abs(fused - plain).max() > 0  # the fused path really ran


def test_tuning_loads_every_kernel_a_decode_then_runs(tmp_path: Path) -> None:
    """The daemon tunes at start: from then on no decode compiles or loads a kernel
    (every signature a decode dispatches was loaded by the tuning, also where its
    choices come from the cache file and nothing is timed)."""
    code = """
        import sys
        from pathlib import Path
        import numpy as np, torch
        from dacwatch.codec import _fused_kernels as k, tuning
        from dacwatch.codec.chunked import ChunkedCodec
        from dacwatch.codec.model import prepare_model, tiny_model
        kernels = (k.snake_rows, k.winograd_input, k.winograd_output)
        model = prepare_model(tiny_model("44khz", seed=11, decoder_dim=256))
        codec = ChunkedCodec(model, "cpu")
        codec.tune_kernels(Path(sys.argv[1]))
        residual = [c for c in tuning.tunable(model) if tuning.FUSED_CHOICE in tuning.choices_for(c)]
        for i, conv in enumerate(residual):  # every one the fused way, both tiles
            tuning.apply(conv, tuning.FUSED_CHOICES[i % 2])
        warmed = [list(f.signatures) for f in kernels]
        assert all(warmed), warmed
        codes = np.random.default_rng(1).integers(0, 64, size=(30, 4, 1)).astype(np.int16)
        codec.decode(codes)
        assert [list(f.signatures) for f in kernels] == warmed
        print("ok")
    """
    env = {"XDG_CACHE_HOME": str(tmp_path), "NUMBA_CACHE_DIR": ""}
    for _ in range(2):  # the second process reads the kernels' choices: nothing is timed
        assert _python(code, env, str(tmp_path / "kernels")).strip() == "ok"
    assert list((tmp_path / "kernels").iterdir())


def test_a_one_shot_decode_loads_the_kernels_beside_the_weights_and_encode_never(
    tmp_path: Path, tiny_weights: Path
) -> None:
    """``dacwatch decode`` on the CPU starts numba's import and cache load in a thread
    (before the weights load, which it overlaps); ``dacwatch encode`` never imports
    numba (its Snake is torch's, bit-identical to DAC's)."""
    out = _python(
        """
        import sys
        import numpy as np, soundfile as sf
        import dacwatch.cli
        from dacwatch.codec import kernels
        weights, tmp = sys.argv[1], sys.argv[2]
        sf.write(tmp + "/in.wav", np.random.default_rng(1).standard_normal(22050).astype("float32") * 0.1, 44100)
        common = ["--weights", weights, "--device", "cpu"]
        assert dacwatch.cli.main(["encode", *common, tmp + "/in.wav", tmp + "/in.dac"]) == 0
        assert "numba" not in sys.modules and kernels._warming is None
        assert dacwatch.cli.main(["decode", *common, tmp + "/in.dac", tmp + "/out.wav"]) == 0
        assert kernels._warming is not None and kernels._warming.name == "dacwatch-warm-kernels"
        assert kernels._warmed is True and "numba" in sys.modules
        print("ok")
        """,
        {"XDG_CACHE_HOME": str(tmp_path)},
        str(tiny_weights),
        str(tmp_path),
    )
    assert out.strip() == "ok"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="numba's pool would take the one core torch has")
def test_a_kernel_that_fails_after_numbas_pool_started_leaves_torchs_thread_count(tmp_path: Path) -> None:
    """numba.set_num_threads launches the pool (torch's count changes), then the call
    fails to type: torch's passes from then on, on torch's own thread count."""
    code = """
        import torch
        from dacwatch.codec import fused_cpu
        assert fused_cpu.available()
        assert fused_cpu._run("snake_rows", "not an array") is False
        print(torch.get_num_threads(), fused_cpu.available())
    """
    env = {"XDG_CACHE_HOME": str(tmp_path), "NUMBA_CACHE_DIR": "", "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}
    assert _python(code, env).split() == ["1", "False"]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch needs two threads to lose one")
def test_a_smaller_numba_pool_leaves_torchs_thread_count_and_a_worker_thread_keeps_its_own(tmp_path: Path) -> None:
    """NUMBA_NUM_THREADS=1 under torch's two: numba's launch lowered torch's count to 1.
    And on a worker thread (the daemon's), torch's count there is what it was."""
    code = """
        import threading, torch
        torch.set_num_threads(2)
        from dacwatch.codec import fused_cpu
        x, a = torch.randn(1, 64, 300), torch.ones(1, 64, 1)
        seen = []
        def work():
            seen.append(torch.get_num_threads())
            assert fused_cpu.snake(x, a) is not None
            seen.append(torch.get_num_threads())
        t = threading.Thread(target=work); t.start(); t.join()
        assert fused_cpu.snake(x, a) is not None
        print(*seen, torch.get_num_threads())
    """
    env = {"XDG_CACHE_HOME": str(tmp_path), "NUMBA_CACHE_DIR": "", "NUMBA_NUM_THREADS": "1"}
    assert _python(code, env).split() == ["2", "2", "2"]
