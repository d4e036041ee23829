"""``python -m bench.fleet``: one daemon against several on one shared queue, same cores.

The scaling issue 15 asks to show on a CPU: the same folder of WAVs converted by
``--configs`` (``DAEMONSxTHREADS``: ``1x2`` is one daemon whose torch uses two
threads; ``2x1`` is two daemons of one thread each on one inbox, sharing a
PostgreSQL queue, as two hosts or two devices would). Each configuration gets a
fresh copy of the folder and, when it has several daemons, a fresh database on
a temporary local server (Debian's ``postgresql``, as the tests start it).
Throughput is audio seconds per wall second from the last READY to the last
``job.done``; cores used are all daemons' CPU seconds per wall second. Results
go to ``--out`` as ``fleet-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from . import __main__ as bench
from .daemon import run_daemon, write_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.fleet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--configs", default="1x2,2x1", help="comma-separated DAEMONSxTHREADS")
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--seconds", type=float, default=15.0, help="the longest file")
    p.add_argument("--shortest", type=float, default=5.0)
    p.add_argument("--jobs-per-device", type=int, default=1, help="files at once in each daemon")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", type=Path, default=bench.RESULTS)
    args = p.parse_args(argv)
    args.device, args.tiny, args.weights, args.precision = "cpu", True, None, "float32"

    from dacwatch.codec.model import tiny_model

    work = Path(tempfile.mkdtemp(prefix="dacwatch-bench-fleet-"))
    server = None
    runs: list[dict[str, Any]] = []
    try:
        weights = work / "tiny.pth"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tiny_model().save(str(weights), package=False)
        staged = write_folder(work / "staged", args.files, args.seconds, args.shortest)
        for config in args.configs.split(","):
            daemons, threads = (int(x) for x in config.split("x"))
            url = None
            if daemons > 1:
                if server is None:
                    from tests.pg import PgServer

                    server = PgServer(work / "postgres", fsync=True)
                url = server.new_database()
            run_dir = work / f"run-{config}"
            folder = [run_dir / "staged" / s.name for s in staged]
            folder[0].parent.mkdir(parents=True)
            for src, dst in zip(staged, folder, strict=True):
                os.link(src, dst)
            result = run_daemon(args, weights, run_dir, folder, args.jobs_per_device, daemons, url, threads)
            runs.append({"config": config, **result})
            print(f"{config}: {result['x_realtime']:.1f}x realtime, {result['cores_used']:.2f} cores", flush=True)
    finally:
        if server is not None:
            server.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)

    report = {
        **bench.run_header(args, "python -m bench.fleet", argv),
        "files": args.files,
        "seconds_per_file": [args.shortest, args.seconds],
        "jobs_per_device": args.jobs_per_device,
        "runs": runs,
    }
    bench.save_result(args.out, "fleet", report, markdown(report))
    return 0 if all(r["finished"] and r["converted_once"] and r["files_failed"] == 0 for r in runs) else 1


def markdown(r: dict[str, Any]) -> str:
    base = r["runs"][0]["x_realtime"] or float("nan")
    rows = [
        f"| {x['daemons']} daemon(s) x {x['threads']} thread(s){' , shared PostgreSQL queue' if x['daemons'] > 1 else ''} "
        f"| {x['files_done']} done, {x['files_failed']} failed, each once: {x['converted_once']} | {x['audio_s']:.0f} "
        f"| {x['wall_s']:.1f} | {x['x_realtime']:.1f} | {x['cores_used']:.2f} | {x['x_realtime'] / base:.2f} |"
        for x in r["runs"]
    ]
    lo, hi = r["seconds_per_file"]
    return "\n".join(
        [
            f"# dacwatch: one daemon against several on one queue, {r['date']}",
            "",
            f"`{r['command']}`",
            "",
            f"{r['network']} network on the CPU ({r['cpu']}, {r['cores']} cores); torch {r['torch']}; dacwatch "
            f"{r['dacwatch']}; {r['files']} WAVs of {lo:g}-{hi:g} s, {r['jobs_per_device']} file(s) at once per daemon.",
            "",
            "| configuration | files | audio s | wall s | x realtime | cores used | vs the first |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
