"""The Prometheus endpoint of a real daemon, scraped over HTTP and parsed with
prometheus_client's own parser: its counters match what was converted."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .daemon import Daemon, wav
from .pg import free_port


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_what_was_converted(tmp_path: Path, tiny_weights: Path) -> None:
    port = free_port()
    d = Daemon(tmp_path, tiny_weights, metrics__listen=f"127.0.0.1:{port}")
    try:
        d.start().ready()
        served = d.wait_event("metrics.serving")[0]["url"]
        assert served == f"http://127.0.0.1:{port}/metrics"
        for i in range(3):
            wav(d.inbox / f"talk{i}.wav", seconds=1.0, rate=16000)
        (d.inbox / "bad.wav").write_text("not audio\n" * 20)
        d.wait_event("job.done", 3)
        d.wait_event("job.failed")
        d.wait_for(lambda: scrape(served).get(("dacwatch_queue_jobs", (("status", "done"),))) == 3.0, 10, "gauges")
        m = scrape(served)
        assert m[("dacwatch_jobs_total", (("kind", "encode"), ("outcome", "done")))] == 3
        assert m[("dacwatch_jobs_total", (("kind", "encode"), ("outcome", "failed")))] == 1
        audio = sum(e["audio_s"] for e in d.events("job.done"))
        assert abs(m[("dacwatch_audio_seconds_total", (("kind", "encode"),))] - audio) < 1e-6
        assert m[("dacwatch_job_realtime_factor_count", (("kind", "encode"),))] == 3
        assert m[("dacwatch_queue_jobs", (("status", "failed"),))] == 1
        assert m[("dacwatch_model_loads_total", (("device", "cpu"),))] == 1
        assert m[("dacwatch_running_jobs", ())] == 0 and m[("dacwatch_lease_takeovers_total", ())] == 0
        assert m[("process_resident_memory_bytes", ())] > 0
        assert d.stop() == 0
    finally:
        d.close()


def test_a_taken_port_does_not_stop_the_conversions(tmp_path: Path, tiny_weights: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        d = Daemon(tmp_path, tiny_weights, metrics__listen=f"127.0.0.1:{port}")
        try:
            d.start().ready()
            assert d.events("metrics.unavailable")
            wav(d.inbox / "talk.wav", seconds=0.5)
            d.wait_event("job.done")
            assert d.stop() == 0
        finally:
            d.close()


def test_the_sample_dashboard_asks_only_for_metrics_that_exist() -> None:
    """examples/grafana-dacwatch.json must not rot: every metric its queries name is one
    a daemon exports."""
    import json
    import re

    from dacwatch.daemon.metrics import Metrics

    exported = set()
    for family in Metrics().registry.collect():
        exported |= {family.name + suffix for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    dashboard = json.loads((Path(__file__).parents[1] / "examples" / "grafana-dacwatch.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = {m for q in queries for m in re.findall(r"\b((?:dacwatch|process)_[a-z_]+)", q)}
    assert len(named) >= 8 and named <= exported, named - exported
