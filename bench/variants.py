"""``python -m bench.variants``: the kernel candidates for exact float32 on a GPU, measured in one run.

For each candidate of ``dacwatch.codec.variants`` (cuDNN, fused Snake, 3xTF32
convolutions, torch.compile, and their combinations), on the same weights and
audio: encode and decode x realtime (best of ``--repeats`` after an untimed
first pass, whose time is reported too: it includes compiling), frames whose
codes differ between chunked and whole-file encoding on the device, frames
differing from CPU float32 codes, and decoding's SNR against the CPU's float32
audio. The seed approach runs once at each precision for the like-for-like ratio.

Candidates run in order until ``--budget-s`` is spent, so the GPU kit's step
ends inside its limit; the rest are listed as not run. The result names the
candidate ``codec.precision = "float32"`` should use on this GPU: the fastest
(encode and decode together) with no frame differing between chunked and whole
and no more frames differing from the CPU than ``cudnn`` shows.

    python -m bench.variants --device cuda                        # the kit's step
    python -m bench.variants --device cpu --tiny --variants cudnn  # smoke test
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dacwatch.codec import variants

from . import __main__ as bench


def choose(rows: list[dict[str, Any]], precision: str = "float32") -> dict[str, Any] | None:
    """The candidate ``precision`` should use: the fastest (harmonic mean of encode and
    decode x realtime) of those exact between chunked and whole, and no further from
    the CPU's codes than ``cudnn``; None when nothing qualifies."""
    ran = [q for q in rows if q["precision"] == precision and q.get("approach") == "dacwatch" and "encode_x" in q]
    baseline = next((q for q in ran if q["variant"] == variants.DEFAULT), None)
    if baseline is None:
        return None
    exact = [
        q
        for q in ran
        if q["frames_chunked_vs_whole_on_device"] == 0
        and q["frames_differing_from_cpu_float32"] <= baseline["frames_differing_from_cpu_float32"]
    ]
    return max(exact, key=lambda q: 2 / (1 / q["encode_x"] + 1 / q["decode_x"]), default=None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.variants", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    bench.network_args(p, device="cuda")
    p.add_argument("--seconds", type=float, default=30.0, help="mono audio per measurement")
    p.add_argument("--variants", nargs="*", default=list(variants.CANDIDATES))
    p.add_argument("--precisions", nargs="*", default=["float32"])
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per measurement (best counts)")
    p.add_argument("--budget-s", type=float, default=1e9, help="start no candidate after this many seconds")
    p.add_argument("--no-seed", action="store_true", help="skip the seed approach's rows")
    p.add_argument("--out", type=Path, default=bench.RESULTS)
    args = p.parse_args(argv)
    for name in args.variants:
        variants.parts(name)  # a misspelt candidate stops here, not after minutes of work

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = bench.weights_file(args, work)
        np.save(work / "audio.npy", bench.synth(args.seconds, 1, 44100, seed=3))
        rows = bench.child(
            {
                "weights": str(weights),
                "device": args.device,
                "task": "precision",
                "input": str(work / "audio.npy"),
                "precisions": args.precisions,
                "variants": args.variants,
                "seed": not args.no_seed,
                "repeats": args.repeats,
                "budget_s": args.budget_s,
            }
        )["rows"]
    report: dict[str, Any] = {
        **bench.run_header(args, "python -m bench.variants", argv),
        "seconds": args.seconds,
        "rows": rows,
        "chosen": {precision: choose(rows, precision) for precision in args.precisions},
    }
    lines = [
        f"# dacwatch kernel candidates, {report['date']}",
        "",
        f"`{report['command']}`",
        "",
        f"{report['network']}; device {report['device']} (host CPU {report['cpu']}, {report['cores']} cores); "
        f"torch {report['torch']}; {args.seconds:g} s of mono audio; best of {args.repeats} timed passes "
        "after an untimed one.",
        *bench.precision_markdown(rows, report["device"]),
        "",
        "| kernels | precision | first pass s (set-up, compiling) | peak device MB |",
        "|---|---|---|---|",
        *(
            f"| {q['variant']} | {q['precision']} | {q['first_pass_s']:.1f} | {q.get('peak_device_mb', float('nan')):.0f} |"
            for q in rows
            if "first_pass_s" in q
        ),
        "",
    ]
    for precision, q in report["chosen"].items():
        lines.append(
            f"Chosen for {precision}: **{q['variant']}** (encode {q['encode_x']:.1f}x, decode {q['decode_x']:.1f}x; "
            f"0 frames differ chunked vs whole; {q['frames_differing_from_cpu_float32']} differ from CPU float32)."
            if q
            else f"Chosen for {precision}: none qualifies (no candidate is exact chunked vs whole)."
        )
    tag = "cpu" if args.device == "cpu" else "gpu"
    bench.save_result(args.out, f"variants-{tag}", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
