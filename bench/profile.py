"""``python -m bench.profile``: where a chunked encode and decode spend their time.

For each precision, one warm encode and one warm decode of the same audio
(full-size 44 kHz network, random weights, the device's default windows and
batch) under ``torch.profiler``: the wall time, the summed device and host
time, and the operators that take the most device time. Then DAC's own
TorchScript Snake against dacwatch's in-place Snake on an encoder-sized
tensor, and float32 with cuDNN's benchmark mode (deterministic algorithms
only) against the default: speed, and whether chunked still equals
whole-file. Writes ``profile-<device>-<date>.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __main__ as bench


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device: torch.device, work: Any) -> tuple[Any, float]:
    _sync(device)
    started = time.perf_counter()
    result = work()
    _sync(device)
    return result, time.perf_counter() - started


def profile_codec(model: Any, device: torch.device, audio: np.ndarray, precision: str, top: int) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    from dacwatch.codec.chunked import ChunkedCodec

    codec = ChunkedCodec(model, device, precision=precision)
    codes = codec.encode(audio)  # untimed first pass
    codec.decode(codes)
    seconds = audio.shape[0] * audio.shape[1] / codec.sample_rate
    lines = [
        f"## {precision}: windows {codec.encode_window_s:g} s / {codec.decode_window_s:g} s, batch {codec.batch_size}"
    ]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, work in (("encode", lambda: codec.encode(audio)), ("decode", lambda: codec.decode(codes))):
        _, wall = _timed(device, work)
        with profile(activities=activities) as prof:
            work()
            _sync(device)
        events = prof.key_averages()
        device_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
        host_us = sum(e.self_cpu_time_total for e in events)
        lines += [
            "",
            f"{name}: {seconds / wall:.1f}x realtime ({wall * 1000:.0f} ms wall for {seconds:g} s); "
            f"device busy {device_us / 1000:.0f} ms, host operator time {host_us / 1000:.0f} ms (under the profiler)",
            "",
            "```",
            events.table(
                sort_by="self_device_time_total" if device.type == "cuda" else "self_cpu_time_total", row_limit=top
            ),
            "```",
        ]
    return lines


def snake_variants(device: torch.device) -> list[str]:
    from dac.nn.layers import snake as dac_snake

    from dacwatch.codec.kernels import snake

    # An encoder window batch's first stage on a GPU (16 windows of 10 s); one 1 s window on a CPU.
    shape = (16, 64, 441000) if device.type == "cuda" else (1, 64, 44100)
    lines = ["", f"## Snake on {list(shape)} float32", ""]
    x = torch.randn(*shape, device=device)
    alpha = torch.rand(1, 64, 1, device=device) + 0.5
    for name, fn in (("DAC's TorchScript snake", dac_snake), ("dacwatch in-place snake", snake)):
        with torch.inference_mode():
            for _ in range(3):
                fn(x, alpha)
            _, wall = _timed(device, lambda f=fn: [f(x, alpha) for _ in range(10)])
        gbytes = 2 * x.numel() * 4 / 1e9
        lines.append(
            f"- {name}: {wall / 10 * 1000:.2f} ms per call ({gbytes / (wall / 10):.0f} GB/s of one read + one write)"
        )
    return lines


def benchmark_mode(model: Any, device: torch.device, audio: np.ndarray) -> list[str]:
    """float32 with cuDNN benchmark mode on (deterministic algorithms only): faster? still exact?"""
    from dacwatch.codec import chunked as codec_module
    from dacwatch.codec.chunked import ChunkedCodec

    lines = ["", "## float32: cuDNN benchmark mode (deterministic algorithms) against the default", ""]
    seconds = audio.shape[0] * audio.shape[1] / model.sample_rate
    original = codec_module.set_numerics

    def with_benchmark(dev: torch.device, precision: str) -> None:
        original(dev, precision)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True

    for label, numerics in (("default (benchmark off)", original), ("benchmark on", with_benchmark)):
        codec_module.set_numerics = numerics
        try:
            chunked = ChunkedCodec(model, device)
            whole = ChunkedCodec(model, device, 0, 0, 1)
            chunked.decode(chunked.encode(audio))
            codes, enc = _timed(device, lambda c=chunked: c.encode(audio))
            _, dec = _timed(device, lambda c=chunked, k=codes: c.decode(k))
            differing = int((codes != whole.encode(audio)).any(axis=(1, 2)).sum())
        finally:
            codec_module.set_numerics = original
        lines.append(
            f"- {label}: encode {seconds / enc:.1f}x, decode {seconds / dec:.1f}x realtime; "
            f"chunked vs whole-file: {differing} of {len(codes)} frames differ"
        )
    torch.backends.cudnn.benchmark = False
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="tiny random network (smoke test, not for figures)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--precisions", nargs="*", default=["float32", "tf32", "bf16"])
    p.add_argument("--top", type=int, default=12, help="operators listed per pass")
    p.add_argument("--out", type=Path, default=bench.RESULTS)
    args = p.parse_args(argv)

    from dacwatch.codec.chunked import resolve_device
    from dacwatch.codec.model import full_size_model, prepare_model, tiny_model

    device = resolve_device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = prepare_model(tiny_model() if args.tiny else full_size_model("44khz"), device)
    audio = bench.synth(args.seconds, 1, 44100, seed=4)
    name = torch.cuda.get_device_name() if device.type == "cuda" else bench.cpu_name()
    lines = [
        f"# dacwatch profile, {bench.STAMP}",
        "",
        f"`{' '.join(['python -m bench.profile', *(sys.argv[1:] if argv is None else argv)])}`",
        "",
        f"{'tiny random' if args.tiny else 'full-size 44 kHz, random weights'}; {name}; torch {torch.__version__}; "
        f"{args.seconds:g} s of synthetic audio.",
        "",
    ]
    for precision in args.precisions:
        lines += profile_codec(model, device, audio, precision, args.top)
        print(f"profile: {precision} done", file=sys.stderr)
    lines += snake_variants(device)
    lines += benchmark_mode(model, device, audio)
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile-{'cpu' if device.type == 'cpu' else 'gpu'}-{bench.STAMP}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
