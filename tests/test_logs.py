"""The log events README promises, field for field, and a service that leaves no
thread behind when it stops."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from structlog.testing import capture_logs

from dacwatch.daemon.service import Service

from .conftest import settings_for
from .daemon import wav

DONE_FIELDS = {"source", "output", "kind", "audio_s", "wall_s", "rtf", "device", "lane", "attempts"}
FAILED_FIELDS = {"source", "error", "attempts", "wall_s", "device", "lane", "quarantined"}


def test_one_canonical_line_per_file_and_no_thread_left_behind(tmp_path: Path, tiny_weights: Path) -> None:
    before = set(threading.enumerate())
    settings = settings_for(tmp_path, tiny_weights)
    service = Service(settings)
    with capture_logs() as logs:
        service.startup()
        loop = threading.Thread(target=service.loop)
        loop.start()
        good = wav(settings.inbox / "good.wav", seconds=1.0, rate=16000)
        (settings.inbox / "bad.wav").write_text("not audio\n" * 20)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            any(e["event"] == "job.done" for e in logs) and any(e["event"] == "job.failed" for e in logs)
        ):
            time.sleep(0.05)
        service.stopping.set()
        loop.join(30)
        service.shutdown(10)
    done = [e for e in logs if e["event"] == "job.done"]
    failed = [e for e in logs if e["event"] == "job.failed"]
    assert len(done) == 1 and len(failed) == 1, [e["event"] for e in logs]
    assert set(done[0]) - {"event", "log_level"} == DONE_FIELDS
    assert done[0]["source"] == str(good) and done[0]["output"] == str(settings.outbox / "good.dac")
    assert (done[0]["kind"], done[0]["audio_s"], done[0]["device"], done[0]["attempts"]) == ("encode", 1.0, "cpu", 1)
    assert done[0]["rtf"] > 0 and done[0]["log_level"] == "info"
    assert set(failed[0]) - {"event", "log_level"} == FAILED_FIELDS and failed[0]["log_level"] == "error"
    assert failed[0]["quarantined"] == str(settings.failed / "bad.wav.error.json")
    assert [e["event"] for e in logs if e["event"].startswith("service.")][-2:] == [
        "service.stopping",
        "service.stopped",
    ]
    deadline = time.monotonic() + 10
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, left
