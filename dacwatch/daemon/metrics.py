"""Prometheus metrics for people running a fleet (``metrics.listen``, 127.0.0.1 by default).

One registry per daemon (never the process-global one), served over HTTP at
``/metrics`` beside the status page (:mod:`dacwatch.daemon.web`). Workers count what they finish; the service's loop sets
what is read from elsewhere once a second (the queue's depth by status: every
node's jobs when the queue is shared; running jobs; lease takeovers; networks
loaded; device memory).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from dacwatch.daemon.report import Finished, History

RTF_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # resident memory, CPU seconds, open files
        self.jobs = Counter(
            "dacwatch_jobs", "Jobs finished by this daemon, by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.audio = Counter("dacwatch_audio_seconds", "Seconds of audio converted", ["kind"], registry=r)
        self.rtf = Histogram(
            "dacwatch_job_realtime_factor",
            "Audio seconds per wall second of each finished job",
            ["kind"],
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.quality = Histogram(
            "dacwatch_job_quality_si_sdr_db",
            "SI-SDR in dB of each encoded file's decode against its input (codec.quality)",
            buckets=(-10, 0, 5, 10, 15, 20, 25, 30, 40, 60),
            registry=r,
        )
        self.scrubbed = Counter(
            "dacwatch_scrub_files", "Outbox files the background scrub checked, by outcome", ["outcome"], registry=r
        )
        self.scrub_completed = Gauge(
            "dacwatch_scrub_last_completed_timestamp_seconds",
            "When the background scrub last finished a pass over the outbox (Unix time)",
            registry=r,
        )
        self.faults = Counter(
            "dacwatch_faults",
            "Failures that kept the file (retried or given up), by class (moment, bug, config) and reason (ENOSPC...)",
            ["fault", "reason"],
            registry=r,
        )
        self.out_of_memory = Counter("dacwatch_out_of_memory", "Out-of-memory events", ["device"], registry=r)
        self.queue = Gauge("dacwatch_queue_jobs", "Jobs in the queue by status (every node's)", ["status"], registry=r)
        self.running = Gauge("dacwatch_running_jobs", "Jobs this daemon is converting now", registry=r)
        self.takeovers = Counter(
            "dacwatch_lease_takeovers", "Jobs this daemon took over from a node whose lease expired", registry=r
        )
        self.model_loads = Counter("dacwatch_model_loads", "Networks loaded, by device", ["device"], registry=r)
        self.device_memory = Gauge(
            "dacwatch_device_memory_bytes", "Device memory held by tensors, by device (GPUs)", ["device"], registry=r
        )
        self.history = History()  # the status page's throughput and realtime factors
        self._seen: dict[str, float] = {}
        self._server: Any = None

    def serve(self, listen: str, site: Any = None) -> str:
        """Serve ``/metrics`` (and, given a ``site``, the status page and health endpoints:
        :class:`dacwatch.daemon.web.Site`) on ``host:port``; returns the address served."""
        from dacwatch.daemon.web import serve

        self._server = serve(listen, self.registry, site)
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.shutdown()
                self._server.server_close()
            self._server = None

    def finished(self, kind: str, outcome: str, audio_s: float = 0.0, wall_s: float = 0.0, source: str = "") -> None:
        self.jobs.labels(kind, outcome).inc()
        self.history.add(Finished(time.time(), kind, outcome, audio_s, wall_s, source))
        if outcome == "done":
            self.audio.labels(kind).inc(audio_s)
            if wall_s > 0:
                self.rtf.labels(kind).observe(audio_s / wall_s)

    def total(self, counter: Counter, key: str, value: float, *labels: str) -> None:
        """Bring ``counter`` up to ``value``, a running total kept elsewhere."""
        delta = value - self._seen.get(key, 0.0)
        if delta > 0:
            (counter.labels(*labels) if labels else counter).inc(delta)
            self._seen[key] = value


__all__ = ["Metrics"]
