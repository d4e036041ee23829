"""``python -m bench.queue``: what the queue costs per job, SQLite against PostgreSQL.

For each backend: submit N jobs, then W workers (threads, each with a connection
of its own, as separate workers or hosts have) lease, reserve an output name and
complete jobs until none is left; heartbeats run meanwhile as the daemon sends
them. Reported: submits per second, leases per second (lease + reserve +
complete per job) and milliseconds of queue work per job. PostgreSQL is a
temporary local server started for the run (Debian's ``postgresql``, as the
tests start it) unless ``--url`` names one. Results go to ``--out`` as
``queue-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __main__ as bench


def run(open_queue: Callable[[str], Any], jobs: int, workers: int) -> dict[str, Any]:
    from dacwatch.fsio import Identity

    with open_queue("submitter") as q:
        started = time.perf_counter()
        for i in range(jobs):
            q.submit(f"folder/talk-{i:05d}.wav", Identity(1000 + i, i, i))
        submit_s = time.perf_counter() - started
    done = [0] * workers

    def work(n: int) -> None:
        with open_queue(f"node{n}") as q:
            while (job := q.lease("cpu")) is not None:
                name = f"out/{job.path}.dac"
                q.reserve_output(job.id, job.path, [name], lease=job.lease)
                if done[n] % 20 == 0:
                    q.beat([job.lease])
                q.complete(job.id, name, lease=job.lease)
                done[n] += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lease_s = time.perf_counter() - started
    with open_queue("checker") as q:
        counts = q.counts()
    return {
        "jobs": jobs,
        "workers": workers,
        "submits_per_s": jobs / submit_s,
        "jobs_per_s": sum(done) / lease_s,
        "ms_per_job": 1000 * lease_s * workers / max(1, sum(done)),
        "all_done_once": counts["done"] == jobs == sum(done),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.queue", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--url", help="a PostgreSQL database to use (default: a temporary local server)")
    p.add_argument("--out", type=Path, default=bench.RESULTS)
    args = p.parse_args(argv)
    args.device, args.tiny, args.weights = "cpu", True, None  # for the run header

    from dacwatch.queue.sqlite import JobQueue

    work = Path(tempfile.mkdtemp(prefix="dacwatch-bench-queue-"))
    server = None
    results: dict[str, Any] = {}
    try:
        db = work / "queue.sqlite3"
        results["sqlite"] = run(lambda node: JobQueue(db, node=node), args.jobs, args.workers)
        print("sqlite:", results["sqlite"], flush=True)
        url = args.url
        if url is None:
            from tests.pg import PgServer, binaries

            if binaries() is None:
                results["postgresql"] = {"skipped": "PostgreSQL is not installed"}
            else:
                server = PgServer(work / "postgres", fsync=True)
                url = server.new_database()
        if url is not None:
            from dacwatch.queue.postgres import PostgresQueue

            results["postgresql"] = run(lambda node: PostgresQueue(url, node), args.jobs, args.workers)
            print("postgresql:", results["postgresql"], flush=True)
    finally:
        if server is not None:
            server.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)

    report = {**bench.run_header(args, "python -m bench.queue", argv), "results": results}
    bench.save_result(args.out, "queue", report, markdown(report))
    return 0 if all(r.get("all_done_once", True) for r in results.values()) else 1


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for backend, v in r["results"].items():
        if "skipped" in v:
            rows.append(f"| {backend} | skipped: {v['skipped']} | | | | |")
        else:
            rows.append(
                f"| {backend} | {v['jobs']} jobs, {v['workers']} workers | {v['submits_per_s']:.0f} "
                f"| {v['jobs_per_s']:.0f} | {v['ms_per_job']:.2f} | {v['all_done_once']} |"
            )
    return "\n".join(
        [
            f"# dacwatch queue overhead, {r['date']}",
            "",
            f"`{r['command']}`",
            "",
            f"{r['cpu']}, {r['cores']} cores; dacwatch {r['dacwatch']}. Per job: lease, reserve the output "
            "name, complete (a heartbeat every 20 jobs); each worker a connection of its own. PostgreSQL: a "
            "local server with fsync on; SQLite: WAL, synchronous FULL.",
            "",
            "| backend | run | submits/s | jobs leased and completed/s | ms of queue work per job | each done once |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
