"""The daemon's background scrub: ``dacwatch scrub``'s checks over the outbox, every
``scrub.interval_s``, without decoding (the device stays the conversions'), held to
``scrub.max_read_mb_s``; a ``scrub.problem`` log line per damaged file, counters by
outcome, and the time of the last full pass. Nothing is ever modified or moved."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from dacwatch.daemon.metrics import Metrics
from dacwatch.scrub import RateLimit, WeightsCheck, check_file, dac_files


class Scrubber(threading.Thread):
    def __init__(
        self, outbox: Path, interval_s: float, max_read_mb_s: float, weights: WeightsCheck, metrics: Metrics, log: Any
    ) -> None:
        super().__init__(name="dacwatch-scrub", daemon=True)
        self.outbox, self.interval_s, self.max_read_mb_s = outbox, interval_s, max_read_mb_s
        self.weights, self.metrics, self.log = weights, metrics, log
        self.stopping = threading.Event()
        self.passes = 0

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):  # the first pass one interval after startup
            try:
                self.scrub_once()
            except Exception:  # a bug of ours: said, and the next pass tries again
                self.log.exception("scrub.crashed")

    def scrub_once(self) -> None:
        limit = RateLimit(self.max_read_mb_s, sleep=self.stopping.wait)
        started, files, problems = time.monotonic(), 0, 0
        for path in dac_files([self.outbox]):
            if self.stopping.is_set():
                return
            found = check_file(path, limit, self.weights, None)
            files += 1
            problems += bool(found)
            self.metrics.scrubbed.labels("problem" if found else "ok").inc()
            for p in found:
                self.log.error("scrub.problem", path=p.path, check=p.check, detail=p.detail)
        self.passes += 1
        self.metrics.scrub_completed.set(time.time())
        self.log.info(
            "scrub.completed",
            files=files,
            problems=problems,
            read_mb=round(limit.total / 1e6, 1),
            wall_s=round(time.monotonic() - started, 1),
        )

    def stop(self) -> None:
        self.stopping.set()
