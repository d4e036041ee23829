"""The codec and the daemon on a CUDA GPU (skipped without one; ``bench/device/run`` runs them
on a lent GPU machine). float32 is the exact mode: the claims of the CPU tests must hold."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from dacwatch.codec.chunked import ChunkedCodec
from dacwatch.codec.model import full_size_model, prepare_model, tiny_model

from .conftest import noise, settings_for
from .daemon import Daemon, wav

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = "cuda:0"


@pytest.fixture(scope="module")
def full44() -> Any:
    """The full-size 44 kHz network with random weights, on the GPU."""
    return prepare_model(full_size_model("44khz"), CUDA)


def frames_differing(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int((a != b).any(axis=(1, 2)).sum())


def test_chunked_equals_whole_file_at_every_frame_full_size(full44: Any) -> None:
    x = noise(2, 44100 * 40 + 777, seed=11)
    whole = ChunkedCodec(full44, CUDA, 0, 0, 1).encode(x)
    for window, batch in [(None, None), (1.0, 3), (3.7, 1), (20.0, 32)]:
        codes = ChunkedCodec(full44, CUDA, window, None, batch).encode(x)
        assert frames_differing(codes, whole) == 0, (window, batch)


def test_window_and_batch_never_change_the_codes_tiny() -> None:
    model = prepare_model(tiny_model("44khz"), CUDA)
    x = noise(2, 44100 * 6 + 123, seed=12)
    whole = ChunkedCodec(model, CUDA, 0, 0, 1).encode(x)
    for window, batch in [(0.5, 1), (1.0, 4), (2.3, 2), (5.0, 16)]:
        assert frames_differing(ChunkedCodec(model, CUDA, window, None, batch).encode(x), whole) == 0, (window, batch)


def test_files_sharing_passes_on_the_gpu_get_the_codes_they_get_alone(full44: Any) -> None:
    """Windows of several files stacked into one pass (dacwatch.codec.gate) on the full-size
    network: cuDNN may pick another algorithm for another batch size, and the codes of
    each file must still equal its own whole-file codes at every frame."""
    from dacwatch.codec.gate import DeviceGate

    from .test_gate import concurrently

    shared = ChunkedCodec(full44, CUDA, batch_size=16)
    shared.gate = DeviceGate()
    xs = [noise(1, round(44100 * s), seed=20 + i) for i, s in enumerate((0.4, 1.3, 3.0, 7.5, 7.9, 12.0, 25.0))]
    got = concurrently(shared.gate, shared.encode, xs)
    assert shared.gate.stats.merged >= 3, shared.gate.stats
    for x, codes in zip(xs, got, strict=True):
        assert not isinstance(codes, BaseException), codes
        assert frames_differing(codes, ChunkedCodec(full44, CUDA, 0, 0, 1).encode(x)) == 0


def test_gpu_float32_codes_agree_with_the_cpu(full44: Any) -> None:
    x = noise(1, 44100 * 20, seed=13)
    gpu = ChunkedCodec(full44, CUDA).encode(x)
    cpu_model = prepare_model(full_size_model("44khz"))
    cpu = ChunkedCodec(cpu_model, "cpu").encode(x)
    with torch.inference_mode():
        xt = torch.from_numpy(x)[None]
        z_cpu = cpu_model.encoder(xt)
        z_gpu = full44.encoder(xt.to(CUDA)).cpu()
    scale = float(z_cpu.abs().max())
    assert float((z_cpu - z_gpu).abs().max()) < 1e-4 * scale
    # A latent within rounding of two codebook entries may round either way.
    assert frames_differing(gpu, cpu) <= 0.01 * len(cpu)


def test_decode_matches_whole_file_and_cpu(full44: Any) -> None:
    x = noise(1, 44100 * 12, seed=14)
    codes = ChunkedCodec(full44, CUDA).encode(x)
    whole = ChunkedCodec(full44, CUDA, 0, 0, 1).decode(codes)
    for window, batch in [(None, None), (0.7, 3), (2.0, 1)]:
        audio = ChunkedCodec(full44, CUDA, None, window, batch).decode(codes)
        assert audio.shape == whole.shape
        assert np.abs(audio - whole).max() < 1e-4, (window, batch)
    cpu = ChunkedCodec(prepare_model(full_size_model("44khz")), "cpu").decode(codes)
    assert np.abs(cpu - whole).max() < 1e-3


def test_precision_flags_are_set_per_pass_and_bf16_runs(full44: Any) -> None:
    x = noise(1, 44100 * 10, seed=15)
    exact = ChunkedCodec(full44, CUDA).encode(x)
    fast = ChunkedCodec(full44, CUDA, precision="tf32")
    fast.encode(x)
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # type: ignore[attr-defined]
    assert np.array_equal(ChunkedCodec(full44, CUDA).encode(x), exact)  # nothing sticks from tf32
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"  # type: ignore[attr-defined]
    assert torch.backends.cudnn.deterministic
    bf16 = ChunkedCodec(full44, CUDA, precision="bf16")
    codes = bf16.encode(x)
    assert codes.shape == exact.shape and codes.dtype == np.int16
    audio = bf16.decode(exact)
    assert audio.dtype == np.float32 and np.isfinite(audio).all()


@pytest.fixture
def memory_limit() -> Iterator[None]:
    """Allow this process about 1.5 GB of the GPU, restored afterwards."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.5 * 2**30 / total, 0)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


def test_out_of_memory_shrinks_and_the_queue_keeps_moving(tmp_path: Path, memory_limit: None) -> None:
    """A real worker on a real queue: out of memory halves the batch, then the windows;
    nothing is quarantined, every file is converted, and the codes are exact."""
    import structlog

    from dacwatch.codec.model import ModelSpec
    from dacwatch.convert import CodecPool, CodecSettings, encode_file
    from dacwatch.daemon.worker import Worker
    from dacwatch.formats.container import read
    from dacwatch.fsio import identity
    from dacwatch.queue.sqlite import JobQueue

    weights = tmp_path / "full.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full_size_model("44khz").save(str(weights), package=False)
    settings = settings_for(tmp_path, weights, codec={"devices": [CUDA], "encode_window_s": 20.0, "batch_size": 16})
    sources = [wav(settings.inbox / f"long{i}.wav", seconds=180, rate=44100) for i in range(2)]
    queue = JobQueue(settings.state_db)
    for s in sources:
        queue.submit(s.name, identity(s))
    pool = CodecPool(ModelSpec(weights=weights), CodecSettings(CUDA, 20.0, None, 16))
    pool.codec()
    worker = Worker(settings, queue, pool, CUDA, structlog.get_logger("test"))
    with capture_logs() as logs:
        worker.start()
        deadline = time.monotonic() + 120
        while queue.counts()["done"] < 2 and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.2)
        worker.draining.set()
        worker.join(30)
    events = [e["event"] for e in logs]
    assert queue.counts()["done"] == 2, events
    assert "job.failed" not in events and not list(settings.failed.glob("*"))
    shrinks = [e for e in logs if e["event"] == "job.out_of_memory"]
    assert len(shrinks) >= 2, events  # batch 16 of 20 s windows cannot fit in 1.5 GB
    torch.cuda.set_per_process_memory_fraction(1.0, 0)
    unconstrained = CodecPool(ModelSpec(weights=weights), CodecSettings(CUDA))
    for s in sources:
        encode_file(unconstrained, settings.done / s.name, tmp_path / "reference.dac")
        expected = read(tmp_path / "reference.dac").codes
        assert frames_differing(np.asarray(read(settings.outbox / f"{s.stem}.dac").codes), np.asarray(expected)) == 0
    assert not any(t.name.startswith("dacwatch-worker") for t in threading.enumerate())


def test_daemon_converts_a_folder_on_cuda(tmp_path: Path, tiny_weights: Path) -> None:
    d = Daemon(tmp_path, tiny_weights, codec__devices=[CUDA])
    try:
        d.start().ready()
        for i in range(3):
            wav(d.inbox / f"a{i}.wav", seconds=2.0, rate=44100)
        done = d.wait_event("job.done", count=3, timeout=120)
        assert {e["device"] for e in done} == {CUDA}
        dac = d.outbox / "a0.dac"
        dac.rename(d.inbox / "back.dac")
        d.wait_event("job.done", count=4, timeout=60)
        assert (d.outbox / "back.wav").exists() and not list(d.failed.glob("*"))
        assert d.stop() == 0
    finally:
        d.close()
