"""One measurement in a fresh process, so its peak RSS is its own.

``python -m bench.child '{"task": ..., ...}'`` prints one JSON line with the
wall time of the work (model already loaded), the peak RSS of the process,
and the RSS once the model and input were loaded.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

warnings.simplefilter("ignore")


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Sampler:
    """Samples this process's RSS every 20 ms while work runs: the process peak
    (ru_maxrss) is often set by loading the model, not by the work."""

    def __init__(self) -> None:
        import threading

        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _load(spec: dict[str, Any], prepared: bool = True) -> Any:
    from dac.model import DAC

    from dacwatch.codec.model import prepare_model

    model = DAC.load(spec["weights"]).eval()
    model.requires_grad_(False)
    return prepare_model(model, spec.get("device", "cpu")) if prepared else model.to(spec.get("device", "cpu"))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    task = spec["task"]
    if spec.get("approach") not in ("seed", "dac", "dac_chunks"):
        # dacwatch as its command line runs it; the others as their users run them.
        from dacwatch import allocator

        allocator.tune()
    device = spec.get("device", "cpu")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    out: dict[str, Any] = {"task": task, "approach": spec.get("approach")}

    if task in ("encode", "decode"):
        # The seed script and DAC 1.0.0 ran DAC's stock network (weight norm, TorchScript
        # Snake); what dacwatch does to the network is part of what is measured.
        model = _load(spec, prepared=spec["approach"] in ("dacwatch", "whole"))
        data = np.load(spec["input"], mmap_mode=None)
        if spec["approach"] in ("dacwatch", "whole") and device == "cpu" and spec.get("kernels") != "installed":
            # The decoder's kernels as the one-shot commands get them: measured once per
            # host into the cache folder (outside the timed work), read thereafter.
            from dacwatch.codec.chunked import ChunkedCodec
            from dacwatch.codec.tuning import default_dir

            folder = Path(spec["kernels_dir"]) if spec.get("kernels_dir") else default_dir()
            out["kernels"] = ChunkedCodec(model, device, None, spec.get("window")).tune_kernels(folder)
        baseline = _rss_mb()
        if device.startswith("cuda"):
            # The first pass on a GPU pays for cuDNN's set-up and kernel loading:
            # every approach gets one untimed pass first, then the timed one.
            _work(task, spec, model, data)
            _sync(device)
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result, extra = _work(task, spec, model, data)
        _sync(device)
        out["wall_s"] = time.perf_counter() - started
        out.update(extra)
        if spec.get("output"):
            np.save(spec["output"], result)
    elif task in ("encode_file", "decode_file"):
        from dacwatch.audio import OutputFormat
        from dacwatch.codec.model import ModelSpec
        from dacwatch.convert import CodecPool, CodecSettings, decode_file, encode_file

        pool = CodecPool(
            ModelSpec(weights=Path(spec["weights"])),
            CodecSettings(device, spec.get("window"), spec.get("window"), spec.get("batch")),
            kernels_dir=Path(spec["kernels_dir"]) if spec.get("kernels_dir") else None,
        )
        pool.codec()
        baseline = _rss_mb()
        started = time.perf_counter()
        with _Sampler() as sampler:
            if task == "encode_file":
                encode_file(pool, Path(spec["input"]), Path(spec["output"]))
            else:
                decode_file(
                    pool, Path(spec["input"]), Path(spec["output"]), OutputFormat("wav", "pcm16"), resample=True
                )
        out["wall_s"] = time.perf_counter() - started
        out["work_growth_mb"] = sampler.peak - baseline
    elif task == "sweep":
        return _sweep(spec)
    elif task == "precision":
        return _precision(spec)
    else:
        raise SystemExit(f"unknown task {task}")
    out["baseline_rss_mb"] = baseline
    out["peak_rss_mb"] = _peak_mb()
    if device.startswith("cuda"):
        out["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["threads"] = torch.get_num_threads()
    return out


def _work(task: str, spec: dict[str, Any], model: Any, data: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    from dacwatch.codec.chunked import ChunkedCodec

    from . import seed_reference

    approach = spec["approach"]
    device = spec.get("device", "cpu")
    precision = spec.get("precision", "float32")
    if task == "encode":
        if approach == "dacwatch":
            codec = ChunkedCodec(model, device, spec.get("window"), None, spec.get("batch"), precision)
            return codec.encode(data), {"window_s": codec.encode_window_s, "batch": codec.batch_size}
        if approach == "whole":
            return ChunkedCodec(model, device, 0, 0, 1, precision).encode(data), {}
        if approach == "seed":
            window = spec.get("window", seed_reference.SEED_WINDOW_S)
            return seed_reference.encode(model, data, window, device), {
                "window_s": spec.get("window", seed_reference.SEED_WINDOW_S)
            }
        if approach == "dac":
            from audiotools import AudioSignal

            signal = AudioSignal(torch.from_numpy(data)[None], model.sample_rate)
            dac_file = model.compress(signal, win_duration=spec.get("window", 1.0))
            saved = dac_file.save(spec["output"] + ".dacfile")  # DAC picks the suffix
            codes = dac_file.codes.numpy().transpose(2, 1, 0).astype(np.int16)
            return codes, {
                "window_s": spec.get("window", 1.0),
                "chunk_length": dac_file.chunk_length,
                "dacfile": str(saved),
            }
    if task == "decode":
        if approach == "dacwatch":
            codec = ChunkedCodec(model, device, None, spec.get("window"), spec.get("batch"), precision)
            return codec.decode(data), {"window_s": codec.decode_window_s, "batch": codec.batch_size}
        if approach == "seed":
            return seed_reference.decode(model, data, device), {}
        if approach == "dac":
            from dac.model.base import DACFile

            audio = model.decompress(DACFile.load(spec["dacfile"])).audio_data[0].numpy()
            return audio, {}
        if approach == "dac_chunks":
            # DAC 1.0.0's decompress loop without its loudness step, on the same codes
            # as everyone else, to measure how far its chunking is from a whole pass.
            from dacwatch.codec.model import layer_padding

            chunk = int(spec["chunk_length"])
            rows = torch.from_numpy(data.transpose(2, 1, 0).astype(np.int64)).to(device)
            parts = []
            with torch.inference_mode(), layer_padding(model, False):
                for i in range(0, rows.shape[-1], chunk):
                    parts.append(model.decode(model.quantizer.from_codes(rows[..., i : i + chunk])[0]))
            return torch.cat(parts, -1)[:, 0].cpu().numpy(), {}
    raise SystemExit(f"unknown approach {approach} for {task}")


def _sweep(spec: dict[str, Any]) -> dict[str, Any]:
    from dacwatch.codec.chunked import ChunkedCodec

    model = _load(spec)
    data = np.load(spec["input"])
    codes = ChunkedCodec(model, spec.get("device", "cpu"), 2.0, 1.0, 1).encode(data)
    seconds = data.shape[1] / model.sample_rate * data.shape[0]
    rows = []
    for window in spec["windows"]:
        for batch in spec["batches"]:
            codec = ChunkedCodec(model, spec.get("device", "cpu"), window, window, batch)
            if spec.get("device", "cpu").startswith("cuda"):  # untimed first pass per shape
                codec.decode(codec.encode(data[:, : round(2 * window * model.sample_rate) or None]))
            started = time.perf_counter()
            codec.encode(data)
            _sync(spec.get("device", "cpu"))
            enc = time.perf_counter() - started
            started = time.perf_counter()
            codec.decode(codes)
            _sync(spec.get("device", "cpu"))
            dec = time.perf_counter() - started
            rows.append({"window_s": window, "batch": batch, "encode_x": seconds / enc, "decode_x": seconds / dec})
    return {"task": "sweep", "rows": rows, "threads": torch.get_num_threads()}


def _snr_db(audio: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """SNR of ``audio`` against ``ref`` in dB, and the largest difference."""
    n = min(audio.shape[-1], ref.shape[-1])
    err = audio[:, :n].astype(np.float64) - ref[:, :n]
    snr = 10 * np.log10(np.sum(ref[:, :n].astype(np.float64) ** 2) / max(float(np.sum(err**2)), 1e-300))
    return float(snr), float(np.abs(err).max())


def _timed(device: str, work: Any, repeats: int) -> tuple[float, Any]:
    """The best of ``repeats`` timed calls of ``work`` (after one untimed call), and its result."""
    result = work()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best, result


def _precision(spec: dict[str, Any]) -> dict[str, Any]:
    """Kernel candidates x precisions on ``device``, each against float32 on the CPU
    (the exact reference): speed, frames whose codes differ from the CPU's, frames
    that differ between chunked and whole-file encoding on the device, and decoding's
    SNR. With ``seed``, the seed approach runs at each precision too (the same flags,
    bf16 autocast around its network), so every ratio is at equal precision.
    ``float32-nocudnn`` is float32 with cuDNN off (diagnostic). Candidates run in
    order until ``budget_s`` is spent; the rest are reported as not run."""
    from dacwatch.codec import variants
    from dacwatch.codec.chunked import ChunkedCodec

    from . import seed_reference

    device = spec.get("device", "cpu")
    repeats = int(spec.get("repeats", 1))
    deadline = time.monotonic() + float(spec.get("budget_s", 1e9))
    data = np.load(spec["input"])
    cpu = ChunkedCodec(_load({**spec, "device": "cpu"}), "cpu")
    ref_codes = cpu.encode(data)
    ref_audio = cpu.decode(ref_codes)
    seconds = data.shape[0] * data.shape[1] / cpu.model.sample_rate
    frames = len(ref_codes)

    def differing(codes: np.ndarray, other: np.ndarray) -> int:
        n = min(len(codes), len(other))
        return int((codes[:n] != other[:n, : codes.shape[1]]).any(axis=(1, 2)).sum()) + abs(len(codes) - len(other))

    rows: list[dict[str, Any]] = []
    for name in spec["precisions"]:
        precision = name.removesuffix("-nocudnn")
        cudnn = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = not name.endswith("-nocudnn")
        try:
            if spec.get("seed"):
                stock = _load({**spec, "device": device}, prepared=False)
                window = seed_reference.SEED_WINDOW_S
                enc_s, codes = _timed(
                    device, partial(seed_reference.encode, stock, data, window, device, precision), repeats
                )
                dec_s, audio = _timed(
                    device, partial(seed_reference.decode, stock, ref_codes, device, precision), repeats
                )
                whole = ChunkedCodec(_load({**spec, "device": device}), device, 0, 0, 1, precision).encode(data)
                snr, diff = _snr_db(audio, ref_audio)
                rows.append(
                    {
                        "approach": "seed",
                        "variant": "stock DAC",
                        "precision": name,
                        "encode_x": seconds / enc_s,
                        "decode_x": seconds / dec_s,
                        "frames": frames,
                        "frames_differing_from_cpu_float32": differing(codes, ref_codes),
                        "codes_differing_from_cpu_float32": float((codes[:frames] != ref_codes[: len(codes)]).mean()),
                        "frames_chunked_vs_whole_on_device": differing(codes, whole),
                        "decode_snr_db_vs_cpu_float32": snr,
                        "decode_max_abs_diff_vs_cpu_float32": diff,
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
                del stock
            for variant in spec.get("variants", [variants.DEFAULT]):
                row: dict[str, Any] = {"approach": "dacwatch", "variant": variant, "precision": name}
                why = variants.unavailable(variant) if time.monotonic() < deadline else "out of time"
                if why is not None:
                    rows.append({**row, "not_run": why})
                    print(json.dumps(rows[-1]), file=sys.stderr)
                    continue
                model = variants.apply(_load({**spec, "device": device}), variant)
                codec = ChunkedCodec(model, device, None, None, spec.get("batch"), precision)
                started = time.perf_counter()
                codec.decode(codec.encode(data))  # untimed first pass: compiles, sets up
                _sync(device)
                row["first_pass_s"] = time.perf_counter() - started
                enc_s, codes = _timed(device, partial(codec.encode, data), repeats)
                dec_s, audio = _timed(device, partial(codec.decode, ref_codes), repeats)
                whole = ChunkedCodec(model, device, 0, 0, 1, precision).encode(data)
                snr, diff = _snr_db(audio, ref_audio)
                row.update(
                    {
                        "encode_x": seconds / enc_s,
                        "decode_x": seconds / dec_s,
                        "frames": frames,
                        "frames_differing_from_cpu_float32": differing(codes, ref_codes),
                        "codes_differing_from_cpu_float32": float((codes != ref_codes).mean()),
                        "frames_chunked_vs_whole_on_device": differing(codes, whole),
                        "decode_snr_db_vs_cpu_float32": snr,
                        "decode_max_abs_diff_vs_cpu_float32": diff,
                    }
                )
                if device.startswith("cuda"):
                    row["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
                    torch.cuda.reset_peak_memory_stats()
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
                del model, codec
        finally:
            torch.backends.cudnn.enabled = cudnn
    return {"task": "precision", "rows": rows, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
