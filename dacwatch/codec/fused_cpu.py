"""Fused elementwise kernels for the CPU decoder, compiled by numba.

The decoder's Snake, ``x + sin(alpha*x)**2 / (alpha + 1e-9)``, is five passes
over memory in torch, and torch's ``sin`` alone costs about twelve multiply
passes on a Zen 5 EPYC: Snake was 15% of a CPU decode after the convolutions
were tuned (``bench/results/decode-profile-cpu-20261202-1630.md``). Here it is
one pass, vectorised by LLVM for the host's own instruction set: ``alpha*x``
rounded to float32 as torch rounds it, then ``sin`` in float32 (range reduced
by pi in four parts, an odd polynomial of degree 11 fitted for the least
relative error: within 2.3 float32 steps of the true sine where a decoder's
activations lie; ``_fused_kernels`` has the constants), and the square, the
scale and the add each rounded to float32 in torch's order. Against a float64
reference its error is that of torch's (float32 rounding of the last add);
about 10% of outputs differ from torch's by an ulp or two. A float64 sine,
rounded once (correctly rounded but for a near-tie now and then), took twice as
long: 16 float32 lanes of AVX-512 against 8 float64 ones (with the Winograd
input transform reading whole tiles, a decode 1.07x faster on a 2-core Zen 4
EPYC, in one process, interleaved).

Each element's result depends on that element alone (no fused multiply-adds:
numba compiles without fast-math, so the vector body and the scalar tail do
the same operations), so a window and a whole file compute every sample the
same way.

Threads: the rows are shared out by numba's ``prange`` on its OpenMP layer,
which loads the ``libgomp.so.1`` torch has already loaded, so Snake runs on
torch's own OpenMP threads (``torch.get_num_threads()`` of them). Threads of a
pool of our own fought torch's spinning OpenMP workers for the two cores and
gained nothing in a decode; on the shared threads the decode was 8-10% faster
(2-core Zen 5 EPYC, in-process, interleaved with torch's passes).

numba comes with DAC 1.0.0 (through librosa). Compiled code is cached under
dacwatch's cache folder (``cachefiles.cache_root() / "numba"``), so only a
host's first decode compiles (under a second); where numba cannot be imported,
compile or load its OpenMP layer, ``snake`` returns None and the caller keeps
torch's passes. Only the decoder uses it: the encoder's Snake stays
bit-identical to DAC's (its codes are compared with DAC's own).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .cachefiles import cache_root

log = logging.getLogger(__name__)
_lock = threading.Lock()
_compiled: dict[str, Callable[..., None]] | None = None
_failed = False
_max_threads = 1


def _compile() -> dict[str, Callable[..., None]]:
    global _max_threads
    numba: Any = importlib.import_module("numba")  # typed loosely: its stubs lag its API

    # Torch's OpenMP runtime, shared (see the module doc); numba picks its layer once,
    # at its first parallel call, and dacwatch makes none elsewhere.
    numba.config.THREADING_LAYER = "omp"
    _max_threads = int(numba.config.NUMBA_NUM_THREADS)
    saved = numba.config.CACHE_DIR
    try:
        # Our cache folder for our functions only (the locator is chosen at decoration,
        # on import), unless the user named one with NUMBA_CACHE_DIR.
        if not saved:
            numba.config.CACHE_DIR = str(cache_root() / "numba")
        from . import _fused_kernels as k
    finally:
        numba.config.CACHE_DIR = saved
    return {"snake_rows": k.snake_rows, "winograd_input": k.winograd_input, "winograd_output": k.winograd_output}


def _kernels() -> dict[str, Callable[..., None]] | None:
    global _compiled, _failed
    if _compiled is None and not _failed:
        with _lock:
            if _compiled is None and not _failed:
                try:
                    _compiled = _compile()
                except Exception:  # numba missing or broken here: torch's passes serve
                    _failed = True
    return _compiled


def available() -> bool:
    """Whether the fused kernels can run here (numba imports; set False after any
    kernel failed, e.g. no OpenMP layer loads)."""
    return _kernels() is not None


def _run(name: str, *args: Any) -> bool:
    """Run kernel ``name`` on torch's thread count; False (and torch's passes from
    then on) if numba fails here."""
    global _compiled, _failed
    compiled = _kernels()
    if compiled is None:
        return False
    numba: Any = importlib.import_module("numba")
    threads = torch.get_num_threads()
    for attempt in range(2):
        try:
            numba.set_num_threads(max(1, min(threads, _max_threads)))
            compiled[name](*args)
            return True
        except OSError as exc:
            # Compiled, but its cache file could not be written (a full cache folder):
            # numba keeps the compiled code in memory, so the second call runs it.
            if attempt == 0:
                log.warning("numba could not cache the CPU kernel %s (%s): compiled again next process", name, exc)
        except Exception:  # e.g. no OpenMP layer loads here
            break
        finally:
            _keep_threads(threads)
    with _lock:
        _compiled, _failed = None, True
    return False


def _keep_threads(threads: int) -> None:
    """Give torch back its ``threads`` on this thread if numba changed them: launching
    its OpenMP pool sets the calling thread's OpenMP thread count to numba's own
    (``NUMBA_NUM_THREADS``, all the cores by default), which is torch's count too
    (OMP_NUM_THREADS=1 or ``torch.set_num_threads(1)`` became 2 on a 2-core host at
    the first decode; ``NUMBA_NUM_THREADS=1`` took torch from 2 to 1)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _rows(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``x [rows, channels, n]`` (unit stride in time) as one flat float32 view of its
    storage from its first element and each (row, channel)'s start in it: the kernels
    read every row at unit stride, so LLVM vectorises them even for a cropped view."""
    rows, channels, n = x.shape
    starts = (torch.arange(rows)[:, None] * x.stride(0) + torch.arange(channels)[None, :] * x.stride(1)).reshape(-1)
    span = int(starts.max()) + n
    return torch.as_strided(x, (span,), (1,), x.storage_offset()).numpy(), starts.numpy()


def _snake_args(alpha: torch.Tensor | None, channels: int, rows: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """Snake's ``alpha`` and ``1 / (alpha + 1e-9)`` per (row, channel), float32 as torch
    computes them; empty arrays for no Snake, None if alpha does not fit."""
    if alpha is None:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    a = alpha.detach().reshape(-1).float()
    if a.numel() != channels:
        return None
    inv = (a + 1e-9).reciprocal()
    return np.tile(a.numpy(), rows), np.tile(inv.numpy(), rows)


def _fits(x: torch.Tensor) -> bool:
    return (
        x.dtype == torch.float32
        and x.dim() == 3
        and x.device.type == "cpu"
        and x.stride(-1) == 1
        and x.numel() > 0
        and not x.requires_grad
    )


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor | None:
    """Snake of ``x [rows, channels, n]`` (float32, CPU, unit stride in time) with
    ``alpha [1, channels, 1]`` in one fused pass; None where it does not apply."""
    if not _fits(x) or _kernels() is None:
        return None
    rows, channels, n = x.shape
    args = _snake_args(alpha, channels, rows)
    if args is None:
        return None
    out = torch.empty((rows, channels, n), dtype=torch.float32)
    flat, starts = _rows(x)
    return out if _run("snake_rows", flat, starts, *args, out.numpy().reshape(-1), n) else None


def winograd_conv(
    x: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: int,
    padding: int,
    transforms: tuple[torch.Tensor, torch.Tensor],
    snake_in: torch.Tensor | None = None,
    snake_out: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """A kernel-7 convolution of ``x [rows, c_in, n]`` by Winograd F(m, 7), m 4 or 6:
    the input and output transforms here, the channel mixing one grouped oneDNN 1x1
    convolution (``weights [(m + 6) * c_out, c_in, 1]``, the transformed kernel).
    ``transforms`` is ``(BT [m + 6, m + 6], AT^T [m + 6, m])``. With ``snake_in`` Snake
    (that alpha) is applied to ``x`` first, with ``snake_out`` to the result (the
    residual units' Snake, conv, Snake, fused: two passes over memory fewer). None
    where it does not apply."""
    if not _fits(x) or _kernels() is None:
        return None
    bt, att = (t.numpy() for t in transforms)
    a, m = att.shape
    rows, c_in, n_in = x.shape
    c_out = weights.shape[0] // a
    length = n_in + 2 * padding - 6 * dilation
    if m not in (4, 6) or weights.shape[1:] != (c_in, 1) or length < m * dilation:
        return None
    sin, sout = _snake_args(snake_in, c_in), _snake_args(snake_out, c_out)
    if sin is None or sout is None:
        return None
    tiles = -(-length // (m * dilation))
    v = torch.empty((rows, a, c_in, dilation * tiles), dtype=torch.float32)
    flat, starts = _rows(x)
    if not _run("winograd_input", flat, starts, n_in, padding, dilation, tiles, bt, *sin, v.numpy(), m):
        return None
    prod = F.conv1d(v.view(rows, a * c_in, -1), weights, groups=a)
    del v
    out = torch.empty((rows, c_out, length), dtype=torch.float32)
    b = np.zeros(c_out, np.float32) if bias is None else bias.detach().float().numpy()
    ok = _run("winograd_output", prod.view(rows, a, c_out, -1).numpy(), att, b, dilation, tiles, *sout, out.numpy(), m)
    return out if ok else None
