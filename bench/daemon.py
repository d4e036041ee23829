"""``python -m bench.daemon``: the daemon's throughput on a folder, against the codec alone.

A real ``dacwatch run`` (a separate process) converts a folder of WAV files
(synthetic speech-like audio, 44.1 kHz mono) on one device; with ``--direction
decode``, a folder of ``.dac`` files encoded from them here first, back to WAV.
Its throughput is the audio converted per wall second from READY to the last
``job.done``. The reference is the codec alone on the same audio (or codes), in
memory, in this process, with the same device, windows, batch and precision (no
reading, loudness, resampling or writing): the daemon's share of it is what the
pipeline around the codec costs. Results go to ``--out`` as
``daemon-<device>-<date>.json`` and ``.md`` (``daemon-decode-...`` for decoding).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from . import __main__ as bench

HERE = Path(__file__).resolve().parent


def write_folder(
    folder: Path, files: int, seconds: float, shortest: float | None = None, rate: int = 44100, distinct: int = 10
) -> list[Path]:
    """``files`` mono PCM16 WAVs of ``seconds`` each, or of lengths spread evenly from
    ``shortest`` to ``seconds`` (cut from ``distinct`` different signals, cycled:
    synthesising 200 takes longer than converting them on a GPU)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    signals = [bench.synth(seconds, 1, rate, seed=1000 + i).T for i in range(min(files, distinct))]
    lengths = np.full(files, seconds) if shortest is None else np.linspace(shortest, seconds, files)
    paths = []
    for i in range(files):
        path = folder / f"talk-{i:04d}.wav"
        sf.write(str(path), signals[i % len(signals)][: round(lengths[i] * rate)], rate, subtype="PCM_16")
        paths.append(path)
    return paths


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


def stamp(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def run_daemon(
    args: argparse.Namespace,
    weights: Path,
    work: Path,
    staged: list[Path],
    jobs: int | None = None,
    daemons: int = 1,
    queue_url: str | None = None,
    threads: int | None = None,
    page_loads: float = 0.0,
    listen: bool = False,
) -> dict[str, Any]:
    """Start ``daemons`` x ``dacwatch run`` on one inbox (``jobs`` files at once each; None:
    the default; several share the PostgreSQL queue at ``queue_url``; ``threads``: torch's
    threads in each), drop the files into the inbox once all are READY, wait for them.
    ``page_loads``: load the first daemon's status page and /api/status this many times a
    second while it converts (the page's cost to the daemon); ``listen``: serve the page
    (and build its snapshot once a second) even with no loads, so runs differ in loads only."""
    inbox = work / "inbox"
    inbox.mkdir()
    logs, procs = [], []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    for i in range(daemons):
        config = work / f"config-{i}.toml"
        config.write_text(
            "\n".join(
                [
                    f'inbox = "{inbox}"',
                    f'outbox = "{work / "outbox"}"',
                    f'done = "{work / "done"}"',
                    f'failed = "{work / "failed"}"',
                    f'state_dir = "{work / f"state-{i}"}"',
                    'log_format = "json"',
                    "[model]",
                    f'weights = "{weights}"',
                    "[codec]",
                    f'devices = ["{args.device}"]',
                    f'precision = "{args.precision}"',
                    *([f"jobs_per_device = {jobs}"] if jobs is not None else []),
                    "[watch]",
                    "settle_seconds = 0.5",
                    "[metrics]",
                    f'listen = "{"127.0.0.1:0" if (page_loads or listen) and i == 0 else ""}"',
                    *(["[queue]", f'url = "{queue_url}"'] if queue_url else []),
                ]
            )
            + "\n"
        )
        log = work / f"daemon-{i}.log"
        with open(log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        *shlex.split(getattr(args, "wrap", "")),
                        sys.executable,
                        "-m",
                        "dacwatch",
                        "run",
                        "--config",
                        str(config),
                    ],
                    stdout=out,
                    stderr=out,
                    env=env,
                )
            )
        logs.append(log)
    deadline = time.monotonic() + args.timeout

    def collect(name: str) -> list[dict[str, Any]]:
        return [e for log in logs for e in events(log, name)]

    try:
        while len(collect("service.ready")) < daemons:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise SystemExit(f"a daemon did not become ready:\n{logs[0].read_text()[-3000:]}")
            time.sleep(0.1)
        ready = max(stamp(e) for e in collect("service.ready"))
        watched = [psutil.Process(p.pid) for p in procs]
        cpu_at_ready = sum(sum(d.cpu_times()[:2]) for d in watched)
        loader = PageLoader(collect("metrics.serving")[0]["page"], page_loads) if page_loads else None
        for path in staged:  # a rename into the inbox: each file appears whole
            os.rename(path, inbox / path.name)
        ends = ('"event": "job.done"', '"event": "job.failed"', '"event": "job.gave_up"')
        while sum(log.read_text(errors="replace").count(e) for log in logs for e in ends) < len(staged):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        alive = all(p.poll() is None for p in procs)
        cpu_s = sum(sum(d.cpu_times()[:2]) for d in watched) - cpu_at_ready if alive else float("nan")
        loads = loader.stop() if loader is not None else None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if getattr(args, "wrap", "") else signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    done = collect("job.done")
    failed = collect("job.failed") + collect("job.gave_up")
    oom = collect("job.out_of_memory")
    loaded = collect("model.loaded")
    audio = sum(float(e["audio_s"]) for e in done)
    wall = (max(stamp(e) for e in done) - ready) if done else float("nan")
    return {
        "daemons": daemons,
        "threads": threads,
        "files_done": len(done),
        "files_failed": len(failed),
        "out_of_memory_events": len(oom),
        "finished": len(done) + len(failed) == len(staged),
        "converted_once": len({e["source"] for e in done}) == len(done),
        "audio_s": audio,
        "wall_s": wall,
        "x_realtime": audio / wall if done else 0.0,
        "cores_used": cpu_s / wall if done else 0.0,  # the daemons' CPU seconds per wall second
        "median_job_rtf": float(np.median([e["rtf"] for e in done])) if done else None,
        "geometry": {k: loaded[0].get(k) for k in ("encode_window_s", "batch", "jobs_at_once")} if loaded else {},
        "exit_code": [p.returncode for p in procs],
        "page_loads": loads,
        "log_tail": logs[0].read_text(errors="replace").splitlines()[-5:],
    }


class PageLoader:
    """Loads ``/`` and ``/api/status`` in turn, ``rate`` times a second, on a thread of its own."""

    def __init__(self, page: str, rate: float) -> None:
        import threading

        self.page, self.period = page.rstrip("/"), 1.0 / rate
        self.ok = self.failed = 0
        self.slowest = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()
        self.thread.start()

    def _run(self) -> None:
        import urllib.request

        paths = ["/", "/api/status"]
        n = 0
        while not self.stopping.wait(max(0.0, self.started + n * self.period - time.monotonic())):
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self.page + paths[n % 2], timeout=5) as response:
                    response.read()
                self.ok += 1
            except OSError:
                self.failed += 1
            self.slowest = max(self.slowest, time.monotonic() - t0)
            n += 1

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        self.thread.join(10)
        wall = time.monotonic() - self.started
        return {"loads": self.ok, "failed": self.failed, "per_s": self.ok / wall, "slowest_s": self.slowest}


def codec_pool(args: argparse.Namespace, weights: Path) -> Any:
    """The daemon's codec pool for ``weights`` on ``args.device``, in this process, with the
    allocator set as the daemon sets it; decoding, with the decoder's kernels tuned as the
    daemon tunes them (measured on this host at load, or read from the user's cache)."""
    from dacwatch import allocator

    allocator.tune()

    from dacwatch.codec import tuning
    from dacwatch.codec.model import ModelSpec
    from dacwatch.convert import CodecPool, CodecSettings

    settings = CodecSettings(args.device, precision=args.precision)
    decoding = args.direction == "decode"  # encoding never runs the decoder's kernels
    kernels = tuning.default_dir() if decoding else None
    return CodecPool(ModelSpec(weights=weights), settings, kernels_dir=kernels, tune_at_load=decoding)


def encode_folder(pool: Any, wavs: list[Path], folder: Path) -> list[Path]:
    """Each WAV as a ``.dac`` file in ``folder`` (``--direction decode``'s input), encoded
    here by dacwatch's own file pipeline."""
    import torch

    from dacwatch.convert import encode_file

    folder.mkdir(parents=True, exist_ok=True)
    written = [encode_file(pool, wav, folder / f"{wav.stem}.dac").output for wav in wavs]
    if torch.cuda.is_available():  # the daemons need the device's memory next, not our cache
        torch.cuda.empty_cache()
    return written


def codec_only(pool: Any, sources: list[Path], direction: str = "encode") -> dict[str, Any]:
    """The codec alone on the same audio (already in memory at the model rate) or, decoding,
    on the same codes (read into memory)."""
    import soundfile as sf
    import torch

    from dacwatch.formats.container import read as read_dac

    codec = pool.codec()
    if direction == "decode":
        inputs = [np.asarray(read_dac(p).codes) for p in sources]
        run = codec.decode
    else:
        inputs = [np.ascontiguousarray(sf.read(str(p), dtype="float32")[0][None]) for p in sources]
        run = codec.encode
    run(inputs[0])  # untimed first pass
    sync = torch.cuda.synchronize if codec.device.type == "cuda" else (lambda: None)
    sync()
    samples = 0
    started = time.perf_counter()
    for a in inputs:
        out = run(a)
        samples += a.shape[1] if direction == "encode" else out.shape[-1]  # per channel, as the daemon counts
    sync()
    wall = time.perf_counter() - started
    audio = samples / codec.sample_rate
    return {"files": len(inputs), "audio_s": audio, "wall_s": wall, "x_realtime": audio / wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.daemon", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    bench.network_args(p)  # --device: the daemon's one device, cpu or cuda:N
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--seconds", type=float, default=30.0, help="length of each file (the longest, with --shortest)")
    p.add_argument("--shortest", type=float, default=None, help="spread the lengths from this to --seconds")
    p.add_argument(
        "--wrap",
        default="",
        help="a command line the daemon runs under, e.g. a sampling profiler: "
        "'py-spy record --idle -f raw -o daemon.txt --' (SIGINT ends the daemon through it)",
    )
    p.add_argument(
        "--direction",
        choices=("encode", "decode"),
        default="encode",
        help="encode: WAV -> .dac; decode: .dac -> WAV (the .dac files encoded here first, untimed)",
    )
    p.add_argument("--reference-files", type=int, default=20, help="files the codec-only reference converts")
    p.add_argument("--precision", default="float32")
    p.add_argument(
        "--jobs-per-device",
        default="default",
        help="comma-separated codec.jobs_per_device values, one daemon run each ('default': the daemon's own); "
        "e.g. 1,2 compares one file at a time with two",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="stop the daemon after this many seconds")
    p.add_argument(
        "--page-loads",
        default="0",
        help="comma-separated status-page loads per second while converting, one run each (e.g. 0,10: the "
        "page's cost, same run; the page is served in every run, so they differ in loads alone); with several "
        "--jobs-per-device values, the last is used",
    )
    p.add_argument("--out", type=Path, default=bench.RESULTS)
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dacwatch-bench-daemon-"))
    try:
        weights = bench.weights_file(args, work)
        staged = write_folder(work / "staged", args.files, args.seconds, args.shortest)
        pool = codec_pool(args, weights)
        if args.direction == "decode":
            staged = encode_folder(pool, staged, work / "staged-dac")
        step = max(1, len(staged) // max(1, args.reference_files))  # spread over the lengths
        reference_sources = [work / "reference" / p.name for p in staged[::step][: args.reference_files]]
        (work / "reference").mkdir()
        for src, dst in zip(staged[::step], reference_sources, strict=False):
            shutil.copyfile(src, dst)
        runs = []
        plan = [(value, 0.0) for value in args.jobs_per_device.split(",")]
        loads = [float(v) for v in args.page_loads.split(",")]
        if loads != [0.0]:
            plan = [(plan[-1][0], rate) for rate in loads]
        for n, (value, rate) in enumerate(plan):
            jobs = None if value == "default" else int(value)
            run_dir = work / f"run-{n}-{value}"
            run_dir.mkdir()
            folder = [run_dir / "staged" / p.name for p in staged]
            folder[0].parent.mkdir()
            for src, dst in zip(staged, folder, strict=True):
                os.link(src, dst)
            result = run_daemon(args, weights, run_dir, folder, jobs, page_loads=rate, listen=loads != [0.0])
            runs.append({"jobs_per_device": value, "page_loads_per_s": rate, **result})
        reference = codec_only(pool, reference_sources, args.direction)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    daemon = runs[-1]

    report = {
        **bench.run_header(args, "python -m bench.daemon", argv),
        "files": args.files,
        "seconds_per_file": args.seconds if args.shortest is None else [args.shortest, args.seconds],
        "precision": args.precision,
        "direction": args.direction,
        "daemon": daemon,  # the last run
        "daemon_runs": runs,
        "codec_only": reference,
        "daemon_share_of_codec_only": daemon["x_realtime"] / reference["x_realtime"],
    }
    prefix = "daemon-decode" if args.direction == "decode" else "daemon"
    bench.save_result(args.out, f"{prefix}-{'cpu' if args.device == 'cpu' else 'gpu'}", report, markdown(report))
    return 0 if all(r["finished"] and r["files_failed"] == 0 for r in runs) else 1


def lengths(value: float | list[float]) -> str:
    return f"{value[0]:g}-{value[1]:g}" if isinstance(value, list) else f"{value:g}"


def markdown(r: dict[str, Any]) -> str:
    c = r["codec_only"]
    runs = r.get("daemon_runs") or [{"jobs_per_device": "default", **r["daemon"]}]
    decoding = r.get("direction") == "decode"
    kind = ".dac files (decoded to WAV)" if decoding else "WAVs"
    rows = []
    for d in runs:
        at_once = d.get("geometry", {}).get("jobs_at_once") or d["jobs_per_device"]
        pages = d.get("page_loads") or {}
        loading = (
            f", status page loaded {pages['per_s']:.1f}/s (slowest {pages['slowest_s'] * 1000:.0f} ms)" if pages else ""
        )
        rows.append(
            f"| daemon, {at_once} file(s) at once{loading}: {r['files']} {kind} of {lengths(r['seconds_per_file'])} s, "
            f"READY to last job.done | {d['files_done']} done, {d['files_failed']} failed | {d['audio_s']:.0f} "
            f"| {d['wall_s']:.1f} | {d['x_realtime']:.1f} | {d.get('cores_used', float('nan')):.2f} "
            f"| {100 * d['x_realtime'] / c['x_realtime']:.0f}% |"
        )
    return "\n".join(
        [
            f"# dacwatch daemon throughput{', decoding' if decoding else ''}, {r['date']}",
            "",
            f"`{r['command']}`",
            "",
            f"{r['network']}; device {r['device']} ({r['cpu']}, {r['cores']} cores); torch {r['torch']}; "
            f"dacwatch {r['dacwatch']}; precision {r['precision']}.",
            "",
            "| | files | audio s | wall s | x realtime | cores used | of codec alone |",
            "|---|---|---|---|---|---|---|",
            *rows,
            f"| codec alone, same {'codes' if decoding else 'audio'} in memory | {c['files']} | {c['audio_s']:.0f} | {c['wall_s']:.1f} "
            f"| {c['x_realtime']:.1f} | | 100% |",
            "",
            "Cores used: the daemon's CPU seconds per wall second. "
            + "; ".join(
                f"{d['jobs_per_device']}: out-of-memory events {d['out_of_memory_events']}, all files finished "
                f"{d['finished']}"
                for d in runs
            )
            + ".",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
