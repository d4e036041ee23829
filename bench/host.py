"""``python -m bench.host``: the host side of encoding alone, per core.

Everything :func:`dacwatch.convert.encode_file` does around the network --
opening and reading the file (soundfile, or PyAV for MP3/M4A), the loudness
pass, the gain, the streaming resampler to the model's rate, the code spill,
writing the container to a temporary file, fsync and rename -- with the
network replaced by an encoder that only counts frames and yields zero codes of
the right shape. One thread, so the process's CPU seconds are the host work's;
the figure is audio seconds per CPU second: "x realtime per core".

It answers: how many cores a host needs to feed a GPU at a given rate. A GPU
converting at 1000x realtime needs 1000 / (this figure) cores of host work.
Results go to ``--out`` as ``host-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import __main__ as bench

FORMATS = {  # name -> (sample rate, how the file is made from a 44.1 kHz WAV)
    "wav-44.1k": (44100, None),
    "wav-48k": (48000, None),
    "flac-44.1k": (44100, None),
    "mp3-44.1k": (44100, ["-c:a", "libmp3lame", "-b:a", "128k"]),
    "m4a-44.1k": (44100, ["-c:a", "aac", "-b:a", "128k"]),
}


def frame_counter(hop: int, n_codebooks: int) -> Any:
    """An encoder that reads every block and yields zero codes, one frame per ``hop``
    samples (the last one partial), as the network's encoder would."""

    def encode(blocks: Iterator[np.ndarray], channels: int, codebooks: int | None) -> Iterator[np.ndarray]:
        k = codebooks or n_codebooks
        seen = emitted = 0
        for block in blocks:
            seen += block.shape[1]
            ready = seen // hop - emitted
            if ready:
                yield np.zeros((ready, k, channels), dtype=np.int16)
                emitted += ready
        if -(-seen // hop) > emitted:
            yield np.zeros((-(-seen // hop) - emitted, k, channels), dtype=np.int16)

    return encode


def make_files(folder: Path, fmt: str, files: int, seconds: float, channels: int) -> list[Path] | None:
    """``files`` files of ``fmt`` (None when ffmpeg, needed for it, is missing)."""
    import soundfile as sf

    rate, codec_args = FORMATS[fmt]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        audio = bench.synth(seconds, channels, rate, seed=500 + i).T
        stem = folder / f"talk-{i:03d}"
        if fmt.startswith("wav"):
            path = stem.with_suffix(".wav")
            sf.write(str(path), audio, rate, subtype="PCM_16")
        elif fmt.startswith("flac"):
            path = stem.with_suffix(".flac")
            sf.write(str(path), audio, rate, subtype="PCM_16")
        else:
            if shutil.which("ffmpeg") is None or codec_args is None:
                return None
            wav = stem.with_suffix(".src.wav")
            sf.write(str(wav), audio, rate, subtype="PCM_16")
            path = stem.with_suffix("." + fmt.split("-")[0])
            subprocess.run(
                ["ffmpeg", "-v", "error", "-y", "-i", str(wav), *codec_args, str(path)], check=True, capture_output=True
            )
            wav.unlink()
        paths.append(path)
    return paths


def measure_format(pool: Any, paths: list[Path], out: Path) -> dict[str, Any]:
    from dacwatch.convert import encode_file

    codec = pool.codec()
    encoder = frame_counter(codec.hop, codec.n_codebooks)
    encode_file(pool, paths[0], out / "warm.dac", encoder=encoder)  # imports, first allocations
    audio = 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for path in paths:
        audio += encode_file(pool, path, out / (path.stem + ".dac"), encoder=encoder).audio_s
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "files": len(paths),
        "audio_s": audio,
        "cpu_s": cpu,
        "wall_s": wall,
        "x_realtime_per_core": audio / cpu,
        "x_realtime_wall": audio / wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.host", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    p.add_argument("--out", type=Path, default=bench.RESULTS)
    args = p.parse_args(argv)

    import torch

    from dacwatch.codec.model import ModelSpec, tiny_model
    from dacwatch.convert import CodecPool, CodecSettings

    torch.set_num_threads(1)
    args.device, args.tiny, args.weights = "cpu", True, None  # for the run header
    work = Path(tempfile.mkdtemp(prefix="dacwatch-bench-host-"))
    results: dict[str, Any] = {}
    try:
        weights = work / "tiny.pth"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tiny_model().save(str(weights), package=False)  # only its record and geometry are used
        pool = CodecPool(ModelSpec(weights=weights), CodecSettings("cpu"))
        for fmt in args.formats.split(","):
            paths = make_files(work / fmt, fmt, args.files, args.seconds, args.channels)
            if paths is None:
                results[fmt] = {"skipped": "ffmpeg is not installed"}
                continue
            (work / f"{fmt}-out").mkdir()
            results[fmt] = measure_format(pool, paths, work / f"{fmt}-out")
            print(f"{fmt}: {results[fmt]['x_realtime_per_core']:.0f}x realtime per core", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = {
        **bench.run_header(args, "python -m bench.host", argv),
        "files": args.files,
        "seconds_per_file": args.seconds,
        "channels": args.channels,
        "results": results,
    }
    bench.save_result(args.out, "host", report, markdown(report))
    return 0


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for fmt, v in r["results"].items():
        if "skipped" in v:
            rows.append(f"| {fmt} | skipped: {v['skipped']} | | | |")
        else:
            rows.append(
                f"| {fmt} | {v['files']} x {r['seconds_per_file']:g} s | {v['cpu_s']:.2f} | "
                f"{v['x_realtime_per_core']:.0f} | {1000 / v['x_realtime_per_core']:.1f} |"
            )
    return "\n".join(
        [
            f"# dacwatch host work per core (encoding), {r['date']}",
            "",
            f"`{r['command']}`",
            "",
            f"{r['cpu']}, one thread; torch {r['torch']}; dacwatch {r['dacwatch']}; "
            f"{r['channels']} channel(s). Everything `encode_file` does except the network: read, loudness "
            "pass, gain, resampling to 44.1 kHz, code spill, container write, fsync, rename.",
            "",
            "| input | files | CPU s | x realtime per core | cores to feed 1000x |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
