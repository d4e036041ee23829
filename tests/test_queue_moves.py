"""A queue that never sticks: out of memory at every size, unexpected errors, a hung
worker, configuration errors, name clashes. Real workers on real queues and files;
faults enter through torch's own forward hooks on the DAC network (a memory budget,
an exception, a hang), never by replacing dacwatch code."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
import torch
from structlog.testing import capture_logs

from dacwatch.codec.model import ModelSpec
from dacwatch.config import Settings
from dacwatch.convert import CodecPool, CodecSettings, encode_file
from dacwatch.daemon.service import Service
from dacwatch.daemon.worker import Worker
from dacwatch.formats.container import read
from dacwatch.fsio import identity
from dacwatch.queue.base import BaseQueue, Status
from dacwatch.queue.sqlite import JobQueue

from .conftest import settings_for
from .daemon import Daemon, wav


def memory_budget(model: Any, samples: int) -> Any:
    """Make the encoder run out of memory (torch's own error) above ``samples`` in a pass."""

    def hook(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
        if args[0].numel() > samples:
            raise torch.OutOfMemoryError(f"budget of {samples} samples (test)")

    return model.encoder.register_forward_pre_hook(hook)


class Running:
    """A real worker thread on a real queue; submit files, wait, stop."""

    def __init__(self, settings: Settings, pool: CodecPool, queue: BaseQueue | None = None) -> None:
        self.settings = settings
        self.queue = queue or JobQueue(settings.state_db)
        self.worker = Worker(settings, self.queue, pool, "cpu", structlog.get_logger("test"))

    def submit(self, *paths: Path) -> None:
        for p in paths:
            self.queue.submit(str(p.relative_to(self.settings.inbox)), identity(p))

    def run_until(self, done: Callable[[], bool], timeout: float = 120.0) -> None:
        self.worker.start()
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline and self.worker.is_alive():
            time.sleep(0.05)
        self.worker.draining.set()
        self.worker.join(30)
        assert not self.worker.is_alive()

    def settled(self, n: int) -> Callable[[], bool]:
        return lambda: self.queue.counts()["done"] + self.queue.counts()["failed"] >= n


@pytest.fixture
def pool(tiny_weights: Path) -> Iterator[CodecPool]:
    pool = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu", 2.0, None, 8))
    yield pool


def test_out_of_memory_shrinks_until_it_fits_and_the_codes_stay_exact(
    tmp_path: Path, tiny_weights: Path, pool: CodecPool
) -> None:
    s = settings_for(tmp_path, tiny_weights)
    source = wav(s.inbox / "long.wav", seconds=6.0, rate=44100, channels=2)
    budget = memory_budget(pool.codec().model, 2 * 44100)  # two rows of 1 s: batch 8 of 2 s windows cannot fit
    run = Running(s, pool)
    run.submit(source)
    with capture_logs() as logs:
        run.run_until(run.settled(1))
    budget.remove()
    events = [e["event"] for e in logs]
    assert run.queue.counts()["done"] == 1, events
    assert events.count("job.out_of_memory") >= 3 and "job.failed" not in events
    assert pool.codec().geometry()[0] == 1  # batch 1, and the windows halved at least once
    assert run.queue.jobs()[0].attempts == 1  # the retries with a smaller geometry did not count
    reference = tmp_path / "reference.dac"
    encode_file(CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu")), s.done / "long.wav", reference)
    assert np.array_equal(np.asarray(read(s.outbox / "long.dac").codes), np.asarray(read(reference).codes))


def test_out_of_memory_at_every_size_gives_up_keeps_the_file_and_the_queue_moves(
    tmp_path: Path, tiny_weights: Path, pool: CodecPool
) -> None:
    s = settings_for(tmp_path, tiny_weights)
    big = wav(s.inbox / "big.wav", seconds=4.0, rate=44100, channels=2)
    small = [wav(s.inbox / f"s{i}.wav", seconds=0.25, rate=44100) for i in range(4)]
    # Even the smallest window (about 15,660 samples) is over budget; a 0.25 s file is not.
    budget = memory_budget(pool.codec().model, 12000)
    run = Running(s, pool)
    run.submit(big, *small)  # the big one first: it must not hold up the others
    with capture_logs() as logs:
        run.run_until(run.settled(5))
    budget.remove()
    jobs = {j.path: j for j in run.queue.jobs()}
    assert all(jobs[p.name].status is Status.DONE for p in small)
    assert jobs["big.wav"].status is Status.FAILED and "gave up after 3 attempts" in str(jobs["big.wav"].last_error)
    assert big.exists() and not list(s.failed.rglob("*"))  # kept where it was: not the file's fault
    gave_up = [e for e in logs if e["event"] == "job.gave_up"]
    assert len(gave_up) == 1 and gave_up[0]["transient"] is True
    # Sent back after its first failure, the big file waits behind every file already queued.
    order = [e["event"] for e in logs if e["event"] in ("job.done", "job.out_of_memory")]
    assert order[:5] == ["job.out_of_memory"] + ["job.done"] * 4, order


def test_unexpected_errors_stop_the_worker_and_keep_every_file(tmp_path: Path, tiny_weights: Path) -> None:
    """A bug (here: an exception from inside the network) is not the files' fault: they
    stay in the inbox, queued; after three in a row a worker stops, and with none left the
    daemon exits 1."""
    s = settings_for(tmp_path, tiny_weights)
    sources = [wav(s.inbox / f"f{i}.wav", seconds=0.5, rate=44100) for i in range(4)]
    service = Service(s)
    service.startup()
    try:

        def bug(*_: Any) -> None:
            raise RuntimeError("a bug")

        service.workers[0].pool.codec().model.encoder.register_forward_pre_hook(bug)
        with capture_logs() as logs:
            service.loop()  # returns when no worker is left
    finally:
        service.shutdown(5)
    assert service.failed
    events = [e["event"] for e in logs]
    lanes = len(service.workers)  # codec.jobs_per_device: each stops after its own three
    assert lanes == 2 and events.count("job.unexpected_error") == 3 * lanes
    assert events.count("worker.stopped") == lanes
    assert "service.no_workers" in events and "job.failed" not in events
    assert all(p.exists() for p in sources) and not list(s.failed.rglob("*"))


def test_a_hung_worker_is_reported_and_the_watchdog_is_no_longer_fed(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    s = settings_for(tmp_path, tiny_weights, stall_timeout_s=1.0, codec={"devices": ["cpu"], "encode_window_s": 0.4})
    messages: list[tuple[float, str]] = []
    service = Service(s, notify=lambda m: messages.append((time.monotonic(), m)))
    service.startup()
    release = threading.Event()
    calls = 0

    def hang(*_: Any) -> None:  # the fourth window never returns (until released)
        nonlocal calls
        calls += 1
        if calls == 4:
            release.wait(60)

    service.workers[0].pool.codec().model.encoder.register_forward_pre_hook(hang)
    loop = threading.Thread(target=service.loop)
    with capture_logs() as logs:
        loop.start()
        wav(s.inbox / "stuck.wav", seconds=6.0, rate=44100)
        deadline = time.monotonic() + 60
        while not any(e["event"] == "service.unhealthy" for e in logs) and time.monotonic() < deadline:
            time.sleep(0.05)
        hung_at = time.monotonic()
        time.sleep(1.0)
        fed_while_hung = [t for t, m in messages if m == "WATCHDOG=1" and t > hung_at]
        release.set()
        time.sleep(1.0)
        service.stopping.set()
        loop.join(30)
    service.shutdown(10)
    unhealthy = [e for e in logs if e["event"] == "service.unhealthy"]
    assert unhealthy and "looks hung" in unhealthy[0]["problems"][0], [e["event"] for e in logs]
    assert fed_while_hung == []
    assert any(m == "WATCHDOG=1" and t > hung_at + 1.0 for t, m in messages)  # fed again once it moved


def test_a_configuration_error_fails_before_ready_and_quarantines_nothing(tmp_path: Path, tiny_weights: Path) -> None:
    d = Daemon(tmp_path, tiny_weights, codec__codebooks=9)  # the tiny network has 4
    wav(d.inbox / "good.wav")
    d.start()
    assert d.proc is not None and d.proc.wait(timeout=60) == 2  # configuration, as config check says
    failed = d.events("service.startup_failed")
    assert failed and "codec.codebooks" in failed[0]["error"] and "has 4 codebooks" in failed[0]["error"]
    assert not d.events("service.ready") and (d.inbox / "good.wav").exists() and not list(d.failed.rglob("*"))
    check = subprocess.run(
        [sys.executable, "-m", "dacwatch", "config", "check", "--config", str(d.config)], capture_output=True, text=True
    )
    assert check.returncode == 2 and "has 4 codebooks" in check.stderr


@pytest.mark.parametrize(
    "devices, message",
    [(["gpu"], "unknown device 'gpu': use auto, cpu, cuda or cuda:N"), (["cuda:7"], "cuda:7 does not exist")],
)
def test_devices_are_named_clearly(tmp_path: Path, tiny_weights: Path, devices: list[str], message: str) -> None:
    d = Daemon(tmp_path, tiny_weights, codec__devices=devices)
    check = subprocess.run(
        [sys.executable, "-m", "dacwatch", "config", "check", "--config", str(d.config)], capture_output=True, text=True
    )
    assert check.returncode == 2 and message in check.stderr and "Traceback" not in check.stderr
    if devices == ["cuda:7"] and not torch.cuda.is_available():
        assert "(here: cpu)" in check.stderr
    one_shot = subprocess.run(
        [sys.executable, "-m", "dacwatch", "encode", str(wav(tmp_path / "a.wav")), str(tmp_path / "a.dac"),
         "--weights", str(tiny_weights), "--device", devices[0]],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert one_shot.returncode == 2 and "Traceback" not in one_shot.stderr
    assert ("unknown device" in one_shot.stderr) or ("does not exist" in one_shot.stderr)


def test_sources_that_want_the_same_output_name_each_get_their_own(tmp_path: Path, tiny_weights: Path) -> None:
    d = Daemon(tmp_path, tiny_weights, codec__devices=["cpu"])
    staging = tmp_path / "staging"
    wav(staging / "talk.wav", seconds=1.0, rate=16000)
    wav(staging / "talk.flac", seconds=2.0, rate=16000)
    d.start().ready()
    try:
        for p in sorted(staging.iterdir()):
            p.rename(d.inbox / p.name)
        done = d.wait_event("job.done", 2)
        outputs = {Path(e["source"]).name: Path(e["output"]).name for e in done}
        # Two files at once: whichever reserved the name first has talk.dac, the other its own.
        first = next(name for name, out in outputs.items() if out == "talk.dac")
        later = next(name for name in outputs if name != first)
        assert outputs[later] == f"{later}.dac"
        lengths = {name: read(d.outbox / out).metadata.length for name, out in outputs.items()}
        assert lengths == {"talk.wav": 16000, "talk.flac": 32000}
        assert d.stop() == 0
    finally:
        d.close()


def test_a_worker_whose_lease_was_taken_over_renames_nothing(tmp_path: Path, pool: CodecPool, pg_url: str) -> None:
    """Mid-conversion, another node takes the job over (this one looked silent past the
    lease timeout). The worker finishes its work but must not rename its output into
    place, move the source or touch the queue row: the job is the other node's now."""
    from dacwatch.queue.postgres import PostgresQueue

    s = settings_for(tmp_path, pool.spec.weights)
    src = wav(s.inbox / "talk.wav", seconds=3.0, rate=44100)
    run = Running(s, pool, PostgresQueue(pg_url, "this-host"))
    run.submit(src)
    other = PostgresQueue(pg_url, "other-host", lease_timeout_s=0.001)
    stolen: list[Any] = []

    def take_over(_module: Any, _args: Any) -> None:
        if not stolen:
            time.sleep(0.01)
            stolen.append(other.lease("cpu"))  # the heartbeat is older than the timeout: due

    hook = pool.codec().model.encoder.register_forward_pre_hook(take_over)
    try:
        with capture_logs() as logs:
            run.run_until(lambda: any(e["event"] == "job.lease_lost" for e in logs), timeout=60)
    finally:
        hook.remove()
        other.close()
    assert stolen and stolen[0] is not None and stolen[0].path == "talk.wav"
    assert [e["event"] for e in logs if e["event"].startswith("job.")] == ["job.lease_lost"]
    assert not (s.outbox / "talk.dac").exists() and src.exists() and not list(s.outbox.glob(".dacwatch-tmp-*"))
    job = run.queue.jobs()[0]
    assert job.status is Status.RUNNING and job.lease == stolen[0].lease  # the other node's, untouched
    run.queue.close()


def test_a_taken_over_job_finished_by_its_first_holder_is_recorded_done(
    tmp_path: Path, pool: CodecPool, pg_url: str
) -> None:
    """This worker took a job over from a node that was not dead after all: while it
    converts, that node renames its output into place and moves the source to done/.
    The job is done (its output name stays claimed, so no other source can take it),
    not dropped, and the first holder's output is left as it is."""
    from dacwatch.queue.postgres import PostgresQueue

    s = settings_for(tmp_path, pool.spec.weights)
    src = wav(s.inbox / "talk.wav", seconds=3.0, rate=44100)
    first = PostgresQueue(pg_url, "first-host")
    first.submit("talk.wav", identity(src))
    held = first.lease("cpu")  # ... and then it went quiet
    assert held is not None
    output = s.outbox / "talk.dac"
    assert first.reserve_output(held.id, "talk.wav", [str(output)], lease=held.lease) == str(output)
    run = Running(s, pool, PostgresQueue(pg_url, "this-host", lease_timeout_s=0.001))
    finished: list[bool] = []

    def first_host_finishes(_module: Any, _args: Any) -> None:
        if not finished:
            finished.append(True)
            encode_file(CodecPool(ModelSpec(weights=pool.spec.weights), CodecSettings("cpu")), src, output)
            s.done.mkdir(parents=True, exist_ok=True)
            src.rename(s.done / "talk.wav")

    hook = pool.codec().model.encoder.register_forward_pre_hook(first_host_finishes)
    try:
        with capture_logs() as logs:
            run.run_until(lambda: run.queue.counts()["done"] == 1, timeout=60)
    finally:
        hook.remove()
        first.close()
    events = [e["event"] for e in logs if e["event"].startswith("job.")]
    assert events == ["job.recovered_done"], events
    job = run.queue.jobs()[0]
    assert job.status is Status.DONE and job.output == str(output) and job.attempts == 2
    assert read(output).metadata.length == 3 * 44100 and not list(s.outbox.glob(".dacwatch-tmp-*"))
    run.queue.close()
