"""The status report: one builder for ``dacwatch status`` and the daemon's status page.

The queue says what every node knows (counts, running jobs with their heartbeats,
recent jobs, bytes pending); a running daemon adds what only it knows (each
worker's progress through its file, the realtime factor and audio seconds of
the jobs it finished, its health). Names come from the inbox, so they are
attacker-controlled and may not be UTF-8: every name leaves here printable.
"""

from __future__ import annotations

import collections
import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECENT = 50  # finished and failed jobs shown
WINDOW_S = 3600.0  # throughput and the drain estimate look back this far
NOTE_LIMIT = 64 * 1024  # the most of an .error.json shown


def printable(name: str | os.PathLike[str] | None) -> str:
    """A name as text that can always be encoded: undecodable bytes as ``\\xff``."""
    if name is None:
        return ""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def audio_length(path: Path) -> float | None:
    """Seconds of audio in ``path`` from its header (a regular file only), or None."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        if path.suffix.lower() == ".dac":
            from dacwatch.formats.container import read

            meta = read(path).metadata
            return meta.length / meta.sample_rate if meta.sample_rate else None
        # The header only, for the progress bar, outside the conversion's file system seam
        # (a fault injected for the conversion is the conversion's to meet). Formats only
        # ffmpeg reads give no length here: no bar for them, nothing more.
        import soundfile

        return float(soundfile.info(os.fsencode(path)).duration)
    except Exception:  # any file at all may be dropped in: no length is no progress bar, nothing more
        return None


@dataclass(frozen=True)
class Finished:
    at: float  # wall clock
    kind: str
    outcome: str
    audio_s: float
    wall_s: float
    source: str


class History:
    """The jobs this daemon finished lately (the report's throughput and realtime factors)."""

    def __init__(self, keep: int = 20000) -> None:
        self._jobs: collections.deque[Finished] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, job: Finished) -> None:
        with self._lock:
            self._jobs.append(job)

    def recent(self, since: float) -> list[Finished]:
        with self._lock:
            return [j for j in self._jobs if j.at >= since]


@dataclass(frozen=True)
class Live:
    """What one worker is doing now (only the daemon knows)."""

    worker: str
    device: str
    path: str
    started: float  # wall clock
    done_s: float
    total_s: float | None


def _note(failed: Path | None, path: str, cache: dict[tuple[str, Any], Any]) -> Any:
    """The ``.error.json`` beside a quarantined file (parsed; its text if it is not JSON)."""
    if failed is None:
        return None
    note = failed / (path + ".error.json")
    try:
        st = note.stat()
    except (OSError, ValueError):
        return None
    key = (path, st.st_mtime_ns)
    if key in cache:
        return cache[key]
    try:
        with open(note, "rb") as f:
            raw = f.read(NOTE_LIMIT)
        text = raw.decode("utf-8", "backslashreplace")
        value: Any = json.loads(text)
    except OSError:
        return None
    except ValueError:
        value = text
    cache[key] = value
    return value


def throughput(history: History, now: float, minutes: int = 60) -> list[float]:
    """Audio seconds converted in each of the last ``minutes`` minutes, oldest first."""
    bins = [0.0] * minutes
    for job in history.recent(now - minutes * 60):
        if job.outcome == "done":
            age = int((now - job.at) // 60)
            if 0 <= age < minutes:
                bins[minutes - 1 - age] += job.audio_s
    return bins


def build(
    queue_report: dict[str, Any],
    *,
    node: str | None = None,
    failed: Path | None = None,
    inbox: Path | None = None,
    live: list[Live] | None = None,
    history: History | None = None,
    health: dict[str, Any] | None = None,
    now: float | None = None,
    notes: dict[tuple[str, Any], Any] | None = None,
) -> dict[str, Any]:
    """The report from the queue's :meth:`~dacwatch.queue.base.BaseQueue.report` and, in the daemon,
    its workers' ``live`` progress, its ``history`` and its ``health``. ``notes`` caches
    the ``.error.json`` files read (the daemon builds this once a second)."""
    now = time.time() if now is None else now
    notes = {} if notes is None else notes
    q = queue_report
    mine = {(node, w.worker): w for w in live or []}
    running = []
    for job in q["running"]:
        row = dict(job) | {"path": printable(job["path"])}
        w = mine.get((job.get("node"), job.get("worker")))
        if w is not None and w.path == job["path"]:
            row |= _progress(w, now)
        running.append(row)
    rtf: dict[str, Finished] = {}
    per_minute: list[float] = []
    if history is not None:
        rtf = {j.source: j for j in history.recent(now - WINDOW_S) if j.outcome == "done"}
        per_minute = throughput(history, now)
    done = []
    for job in q.get("recent_done", []):
        row = dict(job) | {"path": printable(job["path"]), "output": printable(job.get("output"))}
        mine_done = rtf.get(str(inbox / job["path"])) if inbox is not None else None
        if mine_done is not None:
            row |= {
                "audio_s": round(mine_done.audio_s, 3),
                "rtf": round(mine_done.audio_s / mine_done.wall_s, 2) if mine_done.wall_s > 0 else None,
            }
        done.append(row)
    failures = [
        dict(job)
        | {"path": printable(job["path"]), "last_error": printable(job.get("last_error"))}
        | {"error_note": _note(failed, job["path"], notes)}
        for job in q["recent_failures"]
    ]
    hosts: dict[str, dict[str, Any]] = {}
    for job in running:
        host = hosts.setdefault(
            str(job.get("node") or "?"), {"node": job.get("node"), "jobs": [], "heartbeat_at": None}
        )
        host["jobs"].append(job["path"])
        host["heartbeat_at"] = max(filter(None, (host["heartbeat_at"], job.get("heartbeat_at"))), default=None)
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "node": node,
        "health": health,
        "counts": q["counts"],
        "running": running,
        "recent_failures": failures,
        "retrying": q.get("retrying", []),  # faults of the moment: kept, retried, with why
        "recent_done": done,
        "hosts": sorted(hosts.values(), key=lambda h: str(h["node"])),
        "throughput": {
            "audio_s_per_minute": [round(x, 3) for x in per_minute],
            "audio_s_last_hour": round(sum(per_minute), 3),
            "of": "this daemon" if history is not None else None,
        },
        "drain": drain(q.get("bytes")),
    }


def _progress(w: Live, now: float) -> dict[str, Any]:
    elapsed = max(0.0, now - w.started)
    out: dict[str, Any] = {"device": w.device, "done_s": round(w.done_s, 3), "total_s": w.total_s}
    if w.total_s:
        fraction = min(1.0, w.done_s / w.total_s)
        out["progress"] = round(fraction, 4)
        # The realtime rate of this file so far (the loudness pass before the first
        # reported second makes the first estimates long, never short).
        out["eta_s"] = round(elapsed * (1 - fraction) / fraction, 1) if fraction > 0 else None
    else:
        out["progress"] = out["eta_s"] = None
    return out


def drain(stats: dict[str, Any] | None) -> dict[str, Any]:
    """When the queue is empty at the rate of the last hour, reckoned in bytes (the audio
    in a queued file is not known until it is opened; bytes are, on every node)."""
    if not stats:
        return {"pending_bytes": None, "bytes_per_s": None, "eta_s": None}
    pending, since = stats["pending"], stats["since_s"]
    rate = stats["done_recently"] / since if since else None
    eta = 0.0 if pending == 0 else (round(pending / rate, 1) if rate else None)
    return {"pending_bytes": pending, "bytes_per_s": round(rate, 1) if rate else None, "eta_s": eta}


def duration(seconds: float | None) -> str:
    """``2 h 05 min``, ``4 min 10 s``, ``12 s``; ``unknown`` for None."""
    if seconds is None:
        return "unknown"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def eta_line(report: dict[str, Any]) -> str:
    d = report["drain"]
    if d["pending_bytes"] == 0:
        return "eta: nothing queued"
    if d["eta_s"] is None:
        return "eta: unknown (nothing finished in the last hour to measure the rate by)"
    rate = d["bytes_per_s"] * 60 / 1e6
    return f"eta: the queue drains in about {duration(d['eta_s'])} at the last hour's rate ({rate:.1f} MB/min)"


def text(report: dict[str, Any], failures: int = 10) -> list[str]:
    """``dacwatch status`` as lines."""
    counts = report["counts"]
    lines = ["queue: " + ", ".join(f"{k} {v}" for k, v in counts.items()), eta_line(report)]
    for job in report["running"]:
        where = f"{job['node']}, {job['worker']}" if job.get("node") else job["worker"]
        line = (
            f"running: {job['path']} on {where} (attempt {job['attempts']}, since {job['started_at']}, "
            f"last heartbeat {job['heartbeat_at']})"
        )
        if job.get("progress") is not None:
            line += f" {job['progress']:.0%}, {duration(job['eta_s'])} left"
        lines.append(line)
    lines += [
        f"retrying: {job['path']}: {job['last_error']} (attempt {job['attempts']}, next at {job['not_before']})"
        for job in report.get("retrying", [])
    ]
    lines += [f"failed: {job['path']}: {job['last_error']}" for job in report["recent_failures"][:failures]]
    return lines


def status_of(queue: Any, failed: Path | None = None, **daemon: Any) -> dict[str, Any]:
    """The report as ``dacwatch status`` and ``/api/status`` give it."""
    q = queue.report(failures=RECENT, finished=RECENT, window_s=WINDOW_S)
    return build(q, node=queue.node, failed=failed, **daemon)


__all__ = ["History", "Live", "audio_length", "build", "eta_line", "printable", "status_of", "text"]
