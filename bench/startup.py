"""``python -m bench.startup``: what a one-shot command costs before it converts anything.

Each round is a fresh process that imports what ``dacwatch encode`` / ``decode``
import (timed: "imports"), then runs the command on a short file twice through
``dacwatch.cli.main``. The first call pays loading the weights, the fingerprint,
preparing the network and the first pass; the second, in the same process, is
the conversion alone. Start-up beyond imports is their difference. Rounds run
with dacwatch's cache empty (``first``: a host's first run, which also measures
the CPU decoder's kernels), with only the fingerprint forgotten (``cold``: a new
weights file) and filled (``warm``), interleaved; the median counts, every round
is kept.

    python -m bench.startup                 # full-size 44 kHz network, random weights
    python -m bench.startup --rounds 5 --seconds 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __main__ as bench

ROOT = Path(__file__).resolve().parent.parent

# Runs in the fresh process: argv[1] is a JSON spec.
_PROBE = """
import json, sys, time
spec = json.loads(sys.argv[1])
t0 = time.perf_counter()
import dacwatch.cli, dacwatch.convert, dacwatch.stack, dac.model, audiotools, torch, torchaudio
t1 = time.perf_counter()
calls = []
for _ in range(2):
    started = time.perf_counter()
    rc = dacwatch.cli.main(spec["argv"])
    calls.append(time.perf_counter() - started)
    assert rc == 0, rc
print(json.dumps({"imports_s": t1 - t0, "first_s": calls[0], "second_s": calls[1]}))
"""


def probe(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps({"argv": argv})],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench.startup: {' '.join(argv)} failed\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["startup_s"] = result["first_s"] - result["second_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    bench.network_args(p)
    p.add_argument("--seconds", type=float, default=1.0, help="audio converted by each call")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=bench.RESULTS)
    args = p.parse_args(argv)

    import soundfile as sf

    rows: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = bench.weights_file(args, work)
        wav = work / "in.wav"
        sf.write(str(wav), bench.synth(args.seconds, 1, 44100).T, 44100)
        common = ["--weights", str(weights), "--device", args.device]
        commands = {
            "encode": ["encode", *common, str(wav), str(work / "out.dac"), "--overwrite"],
            "decode": ["decode", *common, str(work / "out.dac"), str(work / "out.wav"), "--overwrite"],
        }
        cache = work / "cache"
        env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
        env.pop("CACHE_DIRECTORY", None)
        probe(commands["encode"], env)  # makes out.dac; warms the page cache for the weights
        for _ in range(args.rounds):
            for state in ("first", "cold", "warm"):
                for name, command in commands.items():
                    if state == "first":  # a host's first run: no fingerprint, no decoder kernels measured
                        shutil.rmtree(cache, ignore_errors=True)
                    elif state == "cold":  # the fingerprint forgotten (a new weights file)
                        shutil.rmtree(cache / "dacwatch" / "fingerprints", ignore_errors=True)
                    r = probe(command, env)
                    rows.setdefault(f"{name}/{state}", []).append(r)
                    print(
                        f"  {name} {state}: imports {r['imports_s']:.2f} s, start-up {r['startup_s']:.2f} s "
                        f"(first call {r['first_s']:.2f} s, second {r['second_s']:.2f} s)",
                        file=sys.stderr,
                    )
        load = os.getloadavg()
    report: dict[str, Any] = {
        **bench.run_header(args, "python -m bench.startup", argv),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "load_average_at_end": load,
        "runs": rows,
        "medians": {k: {f: float(np.median([r[f] for r in v])) for f in v[0]} for k, v in rows.items()},
    }
    m = report["medians"]
    lines = [
        f"# dacwatch one-shot start-up, {report['date']}",
        "",
        f"`{report['command']}`",
        "",
        f"{report['network']}; device {report['device']} ({report['cpu']}, {report['cores']} cores); "
        f"torch {report['torch']}; {args.seconds:g} s of audio per call; medians of {args.rounds} rounds, "
        f"each a fresh process; load average {load[0]:.1f} at the end.",
        "",
        "Start-up beyond imports = first call - second call in the same process (loading the weights, "
        "the fingerprint, preparing the network, first-pass set-up). first: dacwatch's cache empty (a host's "
        "first run: the CPU decoder's kernels are measured then); cold: the fingerprint forgotten (a new "
        "weights file); warm: both remembered from an earlier process.",
        "",
        "| command | cache | imports s | start-up beyond imports s | first call s | second call s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {key.split('/')[0]} | {key.split('/')[1]} | {v['imports_s']:.2f} | {v['startup_s']:.2f} "
        f"| {v['first_s']:.2f} | {v['second_s']:.2f} |"
        for key, v in m.items()
    ]
    bench.save_result(args.out, f"startup-{'cpu' if args.device == 'cpu' else 'gpu'}", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
