"""``python -m bench.decode_cpu``: dacwatch's CPU decode against DAC 1.0.0's, interleaved.

Each round runs, each in a fresh process (``bench.child``): dacwatch with the decoder
kernels measured on this host (``dacwatch.codec.tuning``), dacwatch with the installed
defaults (Winograd by MKL everywhere: the decode before per-host kernels), DAC 1.0.0's
``decompress`` (its own codes of the same audio, loudness step included) and DAC 1.0.0's
chunk loop alone. The best of the rounds counts and every round is kept; the ratios are
also given per round (same round, same load). The 1-minute load average is noted
before every process: on a shared machine, name it beside each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __main__ as bench

APPROACHES = ("dacwatch", "dacwatch-installed", "dac", "dac_chunks")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decode_cpu", description=__doc__)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kernels-dir", type=Path, default=None, help="the tuning cache (default: the user cache)")
    p.add_argument("--out", type=Path, default=bench.RESULTS)
    args = p.parse_args(argv)
    args.device, args.tiny, args.weights = "cpu", False, None
    work = Path(tempfile.mkdtemp(prefix="dacwatch-decode-cpu-"))
    try:
        return _run(args, argv, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # 300 MB of weights per run


def _run(args: argparse.Namespace, argv: list[str] | None, work: Path) -> int:
    weights = bench.weights_file(args, work)
    base: dict[str, Any] = {"weights": str(weights), "device": "cpu"}
    if args.kernels_dir is not None:
        base["kernels_dir"] = str(args.kernels_dir)
    np.save(work / "audio.npy", bench.synth(args.seconds, 1, 44100))
    report: dict[str, Any] = {**bench.run_header(args, "python -m bench.decode_cpu", argv), "audio_s": args.seconds}
    enc = bench.child(
        {
            **base,
            "task": "encode",
            "approach": "dacwatch",
            "input": str(work / "audio.npy"),
            "output": str(work / "codes.npy"),
        }
    )
    dac = bench.child(
        {
            **base,
            "task": "encode",
            "approach": "dac",
            "input": str(work / "audio.npy"),
            "output": str(work / "dac-codes.npy"),
        }
    )
    report["kernels"] = enc.get("kernels")
    rounds: dict[str, list[dict[str, Any]]] = {a: [] for a in APPROACHES}
    for i in range(args.rounds):
        for approach in APPROACHES:
            spec = {
                **base,
                "task": "decode",
                "approach": approach.split("-")[0],
                "input": str(work / "codes.npy"),
                "output": str(work / f"dec-{approach}.npy"),
            }
            if approach == "dacwatch-installed":
                spec["kernels"] = "installed"
            if approach == "dac":
                spec["dacfile"] = dac["dacfile"]
            if approach == "dac_chunks":
                spec["chunk_length"] = dac["chunk_length"]
            load = os.getloadavg()[0]
            r = bench.child(spec)
            r.update(x_realtime=args.seconds / r["wall_s"], load_1min_before=load)
            rounds[approach].append(r)
            print(f"  round {i + 1} {approach:20s} {r['x_realtime']:.2f}x realtime (load {load:.2f})", file=sys.stderr)
    ref = np.load(work / "dec-dacwatch-installed.npy")
    got = np.load(work / "dec-dacwatch.npy")
    report["tuned_vs_installed_max_abs_diff"] = float(np.abs(got - ref).max())
    report["rounds"] = rounds
    best = {a: max(r["x_realtime"] for r in rs) for a, rs in rounds.items()}
    per_round = {
        a: [x["x_realtime"] / d["x_realtime"] for x, d in zip(rounds[a], rounds["dac"], strict=True)]
        for a in ("dacwatch", "dacwatch-installed")
    }
    report.update(best=best, ratio_vs_dac_per_round=per_round)
    lines = [
        f"# CPU decode against DAC 1.0.0, {bench.STAMP}",
        "",
        f"{report['cpu']}; torch threads {rounds['dacwatch'][0]['threads']}; full-size 44 kHz, random weights; "
        f"{args.seconds:g} s mono; best of {args.rounds} interleaved rounds, each a fresh process.",
        "",
        "| approach | best x realtime | rounds | peak RSS MB | 1-min load before each |",
        "|---|---|---|---|---|",
    ]
    for a, rs in rounds.items():
        xs = ", ".join(f"{r['x_realtime']:.2f}" for r in rs)
        loads = ", ".join(f"{r['load_1min_before']:.1f}" for r in rs)
        lines.append(f"| {a} | {best[a]:.2f} | {xs} | {max(r['peak_rss_mb'] for r in rs):.0f} | {loads} |")
    lines += [
        "",
        f"Best over best: dacwatch {best['dacwatch'] / best['dac']:.2f}x DAC 1.0.0 decompress "
        f"(installed defaults {best['dacwatch-installed'] / best['dac']:.2f}x); "
        f"{best['dacwatch'] / best['dac_chunks']:.2f}x DAC's chunk loop alone.",
        "Per round (same load): " + "; ".join(f"{a} {', '.join(f'{x:.2f}' for x in v)}" for a, v in per_round.items()),
        f"Tuned against installed kernels: max abs diff {report['tuned_vs_installed_max_abs_diff']:.1e}.",
        f"Kernels: {json.dumps(report['kernels'])}",
    ]
    bench.save_result(args.out, "decode-cpu", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
