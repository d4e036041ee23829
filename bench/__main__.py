"""``python -m bench``: dacwatch against the seed approach and DAC 1.0.0, in one run.

Everything is measured in the same run, on the same weights (the full-size
44 kHz architecture with random weights unless ``--weights`` names a real
file) and the same synthetic audio, each measurement in its own process.
Results go to ``bench/results/<device>-<date>.json`` and ``.md``, and
``bench/results/latest-<device>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PRECISIONS = ("float32", "tf32", "bf16", "float32-nocudnn")
STAMP = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench child failed: {spec['task']} {spec.get('approach')}\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def network_args(p: argparse.ArgumentParser, device: str = "cpu") -> None:
    """The options every bench shares: which network (``--weights`` or ``--tiny``, else the
    random full-size 44 kHz one :func:`weights_file` makes) on which ``--device``."""
    p.add_argument("--weights", type=Path, help="real DAC weights (default: random full-size 44 kHz network)")
    p.add_argument("--tiny", action="store_true", help="tiny random network (smoke test, not for figures)")
    p.add_argument("--device", default=device)


def weights_file(args: argparse.Namespace, work: Path) -> Path:
    """``--weights`` when given, else a random network saved under ``work``: the full-size
    44 kHz architecture, or the tiny one with ``--tiny`` (no weights can be downloaded here)."""
    if getattr(args, "weights", None) is not None:
        return Path(args.weights)
    from dacwatch.codec.model import full_size_model, tiny_model

    path = work / "weights.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (tiny_model() if getattr(args, "tiny", False) else full_size_model("44khz")).save(str(path), package=False)
    return path


def best_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of a measurement's rounds, with every round's figure and their median."""
    speeds = [r["x_realtime"] for r in rounds]
    best = max(rounds, key=lambda r: r["x_realtime"])
    return {**best, "x_realtime_rounds": speeds, "x_realtime_median": float(np.median(speeds))}


def synth(seconds: float, channels: int, rate: int, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: harmonic tones under a syllable-rate envelope, plus noise."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    out = np.zeros((channels, n), np.float32)
    for c in range(channels):
        f0 = 110 + 40 * np.sin(2 * np.pi * 0.3 * t + c)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        voice = sum(np.sin(k * phase) / k for k in range(1, 8))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)) ** 2
        out[c] = (0.1 * voice * envelope + 0.01 * rng.standard_normal(n)).astype(np.float32)
    return out


def write_wav(path: Path, seconds: float, channels: int, rate: int) -> None:
    """A long WAV written block by block (never the whole signal in memory)."""
    import soundfile as sf

    with sf.SoundFile(str(path), "w", rate, channels, subtype="PCM_16") as f:
        for start in range(0, round(seconds), 60):
            block = synth(min(60.0, seconds - start), channels, rate, seed=start)
            f.write(block.T)


def cpu_name() -> str:
    """The CPU's model name (figures differ between CPUs: name it beside each)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save_result(out: Path, name: str, report: dict[str, Any], md: str) -> None:
    """Write ``<name>-<stamp>.json`` and ``.md`` under ``out`` and print the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-{STAMP}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}-{STAMP}.md").write_text(md)
    print(md)


def run_header(args: argparse.Namespace, program: str, argv: list[str] | None) -> dict[str, Any]:
    """What every result file says of its run: when, on which device and CPU, which
    versions, which network, and the command that made it."""
    import torch

    from dacwatch import __version__

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "dacwatch": __version__,
        "network": "real weights"
        if args.weights
        else ("tiny random" if args.tiny else "full-size 44 kHz, random weights"),
        "command": " ".join([program, *(sys.argv[1:] if argv is None else argv)]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    network_args(p)
    p.add_argument("--seconds", type=float, default=20.0, help="audio for the throughput runs")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the throughput runs (best counts)")
    p.add_argument("--sweep-seconds", type=float, default=10.0)
    p.add_argument("--windows", type=float, nargs="*", default=[0.5, 1.0, 2.0, 5.0])
    p.add_argument("--batches", type=int, nargs="*", default=[1, 4])
    p.add_argument(
        "--long-minutes", type=float, nargs="*", default=[10.0, 30.0], help="stereo lengths for the memory check"
    )
    p.add_argument(
        "--long-network",
        choices=["tiny", "same"],
        default="tiny",
        help="network for the long-file memory check: 'same' is the benchmark's (hours on a CPU)",
    )
    p.add_argument("--seed-memory-seconds", type=float, nargs="*", default=[10.0, 30.0])
    p.add_argument("--only-long", action="store_true", help="only the long-file memory check")
    p.add_argument(
        "--precisions",
        nargs="*",
        default=None,
        help="precision sweep against float32 on the CPU (default: float32 tf32 bf16 on a GPU, none on a CPU)",
    )
    p.add_argument("--precision-seconds", type=float, default=20.0, help="audio for the precision sweep")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from dacwatch.codec.model import tiny_model

    work = Path(tempfile.mkdtemp(prefix="dacwatch-bench-"))
    weights = weights_file(args, work)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_weights = work / "tiny.pth"
        tiny_model().save(str(tiny_weights), package=False)
    base = {"weights": str(weights), "device": args.device}
    rate = 44100
    audio = synth(args.seconds, args.channels, rate)
    np.save(work / "audio.npy", audio)
    audio_s = args.seconds * args.channels  # mono-equivalent seconds of audio

    report: dict[str, Any] = {
        **run_header(args, "python -m bench", argv),
        "audio_s": args.seconds,
        "channels": args.channels,
        "rounds": args.rounds,
    }
    print(f"bench: {report['network']} on {report['device']}, {args.seconds} s x {args.channels} ch", file=sys.stderr)
    if args.only_long:
        report["long_file"] = long_files(args, base, weights, tiny_weights, work, report["network"])
        return save(args, report, markdown_long(report))

    # Reference: one whole-file pass (dacwatch with window 0 is exactly DAC's forward).
    ref = child(
        {
            **base,
            "task": "encode",
            "approach": "whole",
            "input": str(work / "audio.npy"),
            "output": str(work / "ref.npy"),
        }
    )
    reference = np.load(work / "ref.npy")
    # Throughput on a shared, noisy machine: every approach runs in each of
    # `rounds` interleaved rounds (a fresh process each time); the best round
    # counts, as timeit's does, and every round is kept in the JSON.
    tries: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for approach in ("dacwatch", "seed", "dac"):
            out = str(work / f"enc-{approach}.npy")
            spec = {**base, "task": "encode", "approach": approach, "input": str(work / "audio.npy"), "output": out}
            r = child(spec)
            codes = np.load(out)
            n = min(len(codes), len(reference))
            r["frames_compared"] = len(reference)
            r["frames_differing"] = int((codes[:n] != reference[:n, : codes.shape[1]]).any(axis=(1, 2)).sum())
            r["extra_frames"] = int(len(codes) - len(reference))
            r["x_realtime"] = audio_s / r["wall_s"]
            tries.setdefault(f"encode/{approach}", []).append(r)
            print(
                f"  encode {approach:9s} {r['x_realtime']:.2f}x realtime, {r['frames_differing']} frames differ",
                file=sys.stderr,
            )

    # Decoding: everyone decodes the same codes; the seed's unchunked pass is the reference audio.
    chunk_length = tries["encode/dac"][0].get("chunk_length", 1)
    for _ in range(args.rounds):
        for approach in ("seed", "dacwatch", "dac_chunks", "dac"):
            out = str(work / f"dec-{approach}.npy")
            spec = {**base, "task": "decode", "approach": approach, "input": str(work / "ref.npy"), "output": out}
            if approach == "dac":
                spec["dacfile"] = tries["encode/dac"][0]["dacfile"]
            if approach == "dac_chunks":
                spec["chunk_length"] = chunk_length
            r = child(spec)
            r["x_realtime"] = audio_s / r["wall_s"]
            if approach in ("dacwatch", "dac_chunks"):
                a, b = np.load(out), np.load(work / "dec-seed.npy")
                n = min(a.shape[-1], b.shape[-1])
                r["max_abs_diff"] = float(np.abs(a[..., :n] - b[..., :n]).max())
                r["length_diff"] = int(a.shape[-1] - b.shape[-1])
            tries.setdefault(f"decode/{approach}", []).append(r)
            print(f"  decode {approach:10s} {r['x_realtime']:.2f}x realtime", file=sys.stderr)
    runs = {key: best_round(rounds) for key, rounds in tries.items()}
    checkpoint(args, report, {"runs": runs})
    runs["encode/whole"] = {**ref, "x_realtime": audio_s / ref["wall_s"]}
    report["runs"] = runs
    pairs = {
        "encode_vs_seed": ("encode/dacwatch", "encode/seed"),
        "encode_vs_dac": ("encode/dacwatch", "encode/dac"),
        "decode_vs_seed": ("decode/dacwatch", "decode/seed"),
        "decode_vs_dac": ("decode/dacwatch", "decode/dac"),
    }
    report["ratios"] = {k: runs[a]["x_realtime"] / runs[b]["x_realtime"] for k, (a, b) in pairs.items()}
    report["median_ratios"] = {
        k: runs[a]["x_realtime_median"] / runs[b]["x_realtime_median"] for k, (a, b) in pairs.items()
    }

    # Window and batch sweep for dacwatch.
    sweep_audio = synth(args.sweep_seconds, args.channels, rate, seed=1)
    np.save(work / "sweep.npy", sweep_audio)
    report["sweep"] = child(
        {**base, "task": "sweep", "input": str(work / "sweep.npy"), "windows": args.windows, "batches": args.batches}
    )["rows"]
    checkpoint(args, report)

    precisions = args.precisions if args.precisions is not None else ([] if args.device == "cpu" else PRECISIONS)
    if precisions:
        np.save(work / "precision.npy", synth(args.precision_seconds, args.channels, rate, seed=3))
        report["precision"] = child(
            {
                **base,
                "task": "precision",
                "input": str(work / "precision.npy"),
                "precisions": list(precisions),
                "seed": True,
                "repeats": 2,
            }
        )["rows"]
        checkpoint(args, report)

    # Memory: the seed holds the whole signal and decodes in one pass, so it grows with length.
    seed_mem = []
    for seconds in args.seed_memory_seconds:
        np.save(work / "mem.npy", synth(seconds, 2, rate, seed=2))
        enc = child(
            {
                **base,
                "task": "encode",
                "approach": "seed",
                "input": str(work / "mem.npy"),
                "output": str(work / "mem-codes.npy"),
            }
        )
        dec = child({**base, "task": "decode", "approach": "seed", "input": str(work / "mem-codes.npy")})
        seed_mem.append(
            {"seconds": seconds, "encode_peak_mb": enc["peak_rss_mb"], "decode_peak_mb": dec["peak_rss_mb"]}
        )
    report["seed_memory"] = seed_mem
    if len(seed_mem) >= 2:
        (a, b) = seed_mem[0], seed_mem[-1]
        slope = (b["decode_peak_mb"] - a["decode_peak_mb"]) / (b["seconds"] - a["seconds"])
        report["seed_decode_mb_per_stereo_s"] = slope
        report["seed_decode_30min_estimate_mb"] = b["decode_peak_mb"] + slope * (1800 - b["seconds"])

    report["long_file"] = long_files(args, base, weights, tiny_weights, work, report["network"])
    return save(args, report, markdown(report))


def long_files(
    args: argparse.Namespace, base: dict[str, Any], weights: Path, tiny_weights: Path, work: Path, network: str
) -> dict[str, Any]:
    """Memory of dacwatch on long stereo files read from and written to disk."""
    long_weights = str(tiny_weights) if args.long_network == "tiny" else str(weights)
    rows = []
    for minutes in args.long_minutes:
        wav = work / f"long-{minutes:g}.wav"
        write_wav(wav, minutes * 60, 2, 48000)
        spec = {"weights": long_weights, "device": args.device}
        enc = child({**spec, "task": "encode_file", "input": str(wav), "output": str(work / "long.dac")})
        dec = child(
            {**spec, "task": "decode_file", "input": str(work / "long.dac"), "output": str(work / "long-out.wav")}
        )
        rows.append(
            {
                "minutes": minutes,
                "encode_peak_mb": enc["peak_rss_mb"],
                "decode_peak_mb": dec["peak_rss_mb"],
                "encode_growth_mb": enc["work_growth_mb"],
                "decode_growth_mb": dec["work_growth_mb"],
                "encode_x": minutes * 60 / enc["wall_s"],
                "decode_x": minutes * 60 / dec["wall_s"],
            }
        )
        wav.unlink()
        print(
            f"  long {minutes:g} min: encode peak {enc['peak_rss_mb']:.0f} MB, decode peak {dec['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
        )
    return {"network": "tiny random (same strides)" if args.long_network == "tiny" else network, "rows": rows}


def _tag(args: argparse.Namespace) -> str:
    return ("cpu" if args.device == "cpu" else "gpu") + ("-long" if args.only_long else "")


def checkpoint(args: argparse.Namespace, report: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """The JSON so far, so a run stopped at its time limit still leaves its figures."""
    args.out.mkdir(parents=True, exist_ok=True)
    partial = {**report, **(extra or {}), "complete": False}
    (args.out / f"{_tag(args)}-{STAMP}.json").write_text(json.dumps(partial, indent=2) + "\n")


def save(args: argparse.Namespace, report: dict[str, Any], md: str) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    tag = _tag(args)
    report["complete"] = True
    (args.out / f"{tag}-{STAMP}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{tag}-{STAMP}.md").write_text(md)
    (args.out / f"latest-{tag}.md").write_text(md)
    print(md)
    return 0


def markdown(r: dict[str, Any]) -> str:
    runs = r["runs"]
    lines = [
        f"# dacwatch benchmark, {r['date']}",
        "",
        f"`{r.get('command', 'python -m bench')}`",
        "",
        f"{r['network']}; device {r['device']} ({r['cpu']}, {r['cores']} cores, {runs['encode/dacwatch']['threads']} torch threads); "
        f"torch {r['torch']}; dacwatch {r['dacwatch']}; {r['audio_s']:g} s of synthetic audio x {r['channels']} channel(s).",
        "",
        f"x realtime: the best of {r.get('rounds', 1)} interleaved rounds, each a fresh process "
        "(all rounds in the JSON); the whole-file pass ran once.",
        "",
        "| | approach | x realtime | peak RSS MB | agreement with one whole-file pass |",
        "|---|---|---|---|---|",
    ]
    for key, label in (
        ("encode/dacwatch", "dacwatch (exact chunking)"),
        ("encode/seed", "seed approach"),
        ("encode/dac", "DAC 1.0.0 compress"),
        ("encode/whole", "one whole-file pass"),
    ):
        x = runs[key]
        agree = (
            "reference" if key == "encode/whole" else f"{x['frames_differing']} of {x['frames_compared']} frames differ"
        )
        if x.get("extra_frames"):
            agree += f", {x['extra_frames']:+d} frames in all"
        lines.append(f"| encode | {label} | {x['x_realtime']:.2f} | {x['peak_rss_mb']:.0f} | {agree} |")
    for key, label in (
        ("decode/dacwatch", "dacwatch (exact chunking)"),
        ("decode/seed", "seed approach (unchunked)"),
        ("decode/dac", "DAC 1.0.0 decompress"),
        ("decode/dac_chunks", "DAC 1.0.0 chunk loop only"),
    ):
        x = runs[key]
        if key == "decode/seed":
            agree = "reference"
        elif "max_abs_diff" in x:
            agree = f"max abs diff {x['max_abs_diff']:.2g}" + (
                f", length {x['length_diff']:+d}" if x.get("length_diff") else ""
            )
        else:
            agree = "(own codes, loudness step included)"
        lines.append(f"| decode | {label} | {x['x_realtime']:.2f} | {x['peak_rss_mb']:.0f} | {agree} |")
    q = r["ratios"]
    lines += [
        "",
        f"Ratios (dacwatch / reference, same run): encode {q['encode_vs_seed']:.2f}x the seed, {q['encode_vs_dac']:.2f}x DAC 1.0.0; "
        f"decode {q['decode_vs_seed']:.2f}x the seed, {q['decode_vs_dac']:.2f}x DAC 1.0.0.",
        *(
            [
                "",
                f"Ratios of the medians: encode {m['encode_vs_seed']:.2f}x the seed, {m['encode_vs_dac']:.2f}x DAC 1.0.0; "
                f"decode {m['decode_vs_seed']:.2f}x the seed, {m['decode_vs_dac']:.2f}x DAC 1.0.0.",
            ]
            if (m := r.get("median_ratios"))
            else []
        ),
        "",
        "Window and batch sweep (dacwatch; x realtime):",
        "",
        "| window s | batch | encode | decode |",
        "|---|---|---|---|",
    ]
    lines += [f"| {w['window_s']:g} | {w['batch']} | {w['encode_x']:.2f} | {w['decode_x']:.2f} |" for w in r["sweep"]]
    if any("peak_device_mb" in x for x in runs.values()):
        lines += ["", "Peak device memory (MB, the timed pass):", "", "| run | peak device MB |", "|---|---|"]
        lines += [f"| {k} | {x['peak_device_mb']:.0f} |" for k, x in runs.items() if "peak_device_mb" in x]
    if r.get("precision"):
        lines += precision_markdown(r["precision"], r["device"])
    lines += [
        "",
        "Memory of the seed approach (stereo, peak RSS MB; grows with length):",
        "",
        "| seconds | encode | decode |",
        "|---|---|---|",
    ]
    lines += [f"| {m['seconds']:g} | {m['encode_peak_mb']:.0f} | {m['decode_peak_mb']:.0f} |" for m in r["seed_memory"]]
    if "seed_decode_30min_estimate_mb" in r:
        lines += [
            "",
            f"Seed decode grows by {r['seed_decode_mb_per_stereo_s']:.0f} MB per stereo second: a 30-minute file would need about {r['seed_decode_30min_estimate_mb'] / 1024:.0f} GB (linear extrapolation; it cannot run here).",
        ]
    return "\n".join(lines) + "\n" + markdown_long(r)


def precision_markdown(rows: list[dict[str, Any]], device: str) -> list[str]:
    """The precision (and kernel candidate) rows against float32 on the CPU, and, where
    the seed approach ran at the same precisions, the like-for-like ratios."""
    lines = [
        "",
        f"On {device}, each against float32 on the CPU (the same codes decoded; chunked vs whole: frames "
        "that differ between the default windows and one whole-file pass on the device; seed: the seed "
        "approach at the same flags, bf16 autocast around its network):",
        "",
        "| approach | kernels | precision | encode x | decode x | frames differing from CPU float32 "
        "| codes differing | chunked vs whole | decode SNR dB | decode max diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for q in rows:
        head = f"| {q.get('approach', 'dacwatch')} | {q.get('variant', 'cudnn')} | {q['precision']} "
        if "not_run" in q:
            lines.append(head + f"| not run: {q['not_run']} | | | | | | |")
            continue
        same = q["decode_max_abs_diff_vs_cpu_float32"] == 0
        snr = "identical" if same else f"{q['decode_snr_db_vs_cpu_float32']:.1f}"
        lines.append(
            head
            + f"| {q['encode_x']:.1f} | {q['decode_x']:.1f} | {q['frames_differing_from_cpu_float32']} of {q['frames']} "
            f"| {100 * q['codes_differing_from_cpu_float32']:.3f}% | {q['frames_chunked_vs_whole_on_device']} "
            f"| {snr} | {q['decode_max_abs_diff_vs_cpu_float32']:.2g} |"
        )
    seed = {q["precision"]: q for q in rows if q.get("approach") == "seed" and "encode_x" in q}
    ours = [
        q for q in rows if q.get("approach", "dacwatch") == "dacwatch" and q["precision"] in seed and "encode_x" in q
    ]
    if ours:
        lines += [
            "",
            "Like for like (dacwatch / the seed approach, same precision, same run):",
            "",
            "| kernels | precision | encode | decode |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {q.get('variant', 'cudnn')} | {q['precision']} | {q['encode_x'] / seed[q['precision']]['encode_x']:.2f}x "
            f"| {q['decode_x'] / seed[q['precision']]['decode_x']:.2f}x |"
            for q in ours
        ]
    return lines


def markdown_long(r: dict[str, Any]) -> str:
    lf = r["long_file"]
    lines = [""]
    if "runs" not in r:
        lines = [
            f"# dacwatch long-file memory, {r['date']}",
            "",
            f"device {r['device']} ({r['cpu']}, {r['cores']} cores); torch {r['torch']}; dacwatch {r['dacwatch']}.",
        ]
    lines += [
        "",
        f"Memory of dacwatch on long stereo 48 kHz files through the file pipeline, WAV -> .dac -> WAV ({lf['network']} network). "
        "Peak RSS of the process (MB; loading the model usually sets it), RSS growth while converting (MB, sampled every 20 ms), "
        "and stereo seconds converted per wall second:",
        "",
        "| minutes | encode peak | decode peak | encode growth | decode growth | encode x | decode x |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m['minutes']:g} | {m['encode_peak_mb']:.0f} | {m['decode_peak_mb']:.0f} | {m.get('encode_growth_mb', float('nan')):.0f} "
        f"| {m.get('decode_growth_mb', float('nan')):.0f} | {m['encode_x']:.1f} | {m['decode_x']:.1f} |"
        for m in lf["rows"]
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
