"""``python -m bench.pair``: the same dacwatch encode and decode under several Python
environments (torch/torchaudio pairs), interleaved in one run, so a lock refresh that
moves torch is chosen by measurement.

    python -m bench.pair --python .venv/bin/python --python /tmp/t14/bin/python --seconds 20 --rounds 3

Each measurement runs in a fresh process of that interpreter (``bench.child``, the
module ``python -m bench`` uses), on the same weights (the full-size 44 kHz network,
random) and the same audio; the best round counts, every round is kept. Codes are
compared between the environments too: a torch that changes them is not a drop-in.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __main__ as bench

ROOT = Path(__file__).resolve().parent.parent


def child(python: str, spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [python, "-m", "bench.child", json.dumps(spec)], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench child failed under {python}: {spec['task']}\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def versions(python: str) -> str:
    code = (
        "import importlib.metadata as m; print(f\"torch {m.version('torch')}, torchaudio {m.version('torchaudio')}\")"
    )
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pair", description=__doc__.split("\n\n")[0])
    p.add_argument("--python", action="append", required=True, help="an interpreter to measure (give two or more)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=bench.RESULTS)
    args = p.parse_args(argv)

    names = {py: versions(py) for py in args.python}
    rows: dict[str, dict[str, list[float]]] = {py: {"encode": [], "decode": []} for py in args.python}
    codes: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = bench.weights_file(args, work)  # the full-size network, random
        np.save(work / "audio.npy", bench.synth(args.seconds, 1, 44100))
        base = {"weights": str(weights), "device": "cpu", "approach": "dacwatch"}
        for _ in range(args.rounds):
            for i, py in enumerate(args.python):
                enc = child(
                    py, {**base, "task": "encode", "input": str(work / "audio.npy"), "output": str(work / f"c{i}.npy")}
                )
                codes[py] = np.load(work / f"c{i}.npy")
                dec = child(py, {**base, "task": "decode", "input": str(work / f"c{i}.npy")})
                rows[py]["encode"].append(args.seconds / enc["wall_s"])
                rows[py]["decode"].append(args.seconds / dec["wall_s"])
    first = args.python[0]
    report = {
        "cpu": bench.cpu_name(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "environments": {py: {"versions": names[py], **rows[py]} for py in args.python},
        "codes_differing_from_first": {
            py: int((codes[py] != codes[first]).any(axis=(1, 2)).sum()) for py in args.python
        },
    }
    lines = [
        f"# torch pairs, CPU ({report['cpu']}), full-size 44 kHz network (random weights), "
        f"{args.seconds:g} s mono, best of {args.rounds} interleaved rounds",
        "",
        "| environment | encode x realtime | decode x realtime | vs first: encode | decode | frames with other codes |",
        "|---|---|---|---|---|---|",
    ]
    for py in args.python:
        e, d = max(rows[py]["encode"]), max(rows[py]["decode"])
        e0, d0 = max(rows[first]["encode"]), max(rows[first]["decode"])
        lines.append(
            f"| {names[py]} | {e:.2f} | {d:.2f} | {e / e0:.2f}x | {d / d0:.2f}x | "
            f"{report['codes_differing_from_first'][py]} of {len(codes[first])} |"
        )
    bench.save_result(args.out, "pair-cpu", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
