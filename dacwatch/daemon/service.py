"""The daemon's lifecycle: startup -> main loop -> shutdown(timeout).

Signal handlers only set flags. The first SIGTERM/SIGINT drains: no new jobs,
the running ones get ``stop_timeout_s`` to finish and are then cancelled and
requeued. A second signal cancels at once. Outputs are atomic either way.
The systemd notifier is injected; without ``NOTIFY_SOCKET`` it does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from dacwatch import __version__, logs
from dacwatch.config import Settings
from dacwatch.daemon import manifest, report
from dacwatch.daemon.metrics import Metrics
from dacwatch.daemon.watcher import IgnoreRules, Watcher
from dacwatch.daemon.worker import Worker, check_against_model, jobs_per_device, make_pool
from dacwatch.errors import ConfigError, DacwatchError
from dacwatch.fsio import sweep_temp_files
from dacwatch.queue import open_queue
from dacwatch.queue.base import BaseQueue, QueueError


class Notifier:
    """sd_notify over ``$NOTIFY_SOCKET`` (a unix datagram socket; ``@`` = abstract namespace)."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Never let a slow or stuck listener stall the main loop: a message
            # that does not fit in its queue is dropped, the next one follows.
            self._sock.setblocking(False)
            if address.startswith("@"):
                address = "\0" + address[1:]
            self._target = address

    @classmethod
    def from_env(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET"))

    def __call__(self, message: str) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):  # systemd gone or not listening: nothing to tell
            self._sock.sendto(message.encode(), self._target)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


def watchdog_interval() -> float | None:
    """Half of systemd's watchdog period, if one is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


def resolve_devices(devices: list[str]) -> list[str]:
    """The workers' devices: every GPU (else the CPU) for ``auto``; each one named must exist."""
    import torch

    from dacwatch.codec.chunked import resolve_device

    if devices == ["auto"]:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    return [str(resolve_device(d)) for d in devices]


class Service:
    def __init__(self, settings: Settings, notify: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.notify = notify or (lambda _m: None)
        self.log = logs.get("dacwatch.service")
        self.stopping = threading.Event()
        self.forced = threading.Event()
        self.queue: BaseQueue | None = None
        self.watcher: Watcher | None = None
        self.scrubber: Any = None  # dacwatch.daemon.scrubber.Scrubber, when scrub.interval_s is set
        self.workers: list[Worker] = []
        self.metrics = Metrics()
        self.beats: BaseQueue | None = None
        self.failed = False  # every worker stopped: exit 1 so the supervisor restarts us
        self._state_lock: int | None = None  # held for the process's life: one daemon per state_dir
        self.ready = threading.Event()  # READY sent, not stopping: /readyz
        self.served: str | None = None  # the status page's address, when it is served
        self._snapshot: tuple[bytes, dict[str, Any]] | None = None  # /api/status, built by the loop
        self._notes: dict[tuple[str, Any], Any] = {}  # .error.json files read for it

    # signal handlers: flags only
    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping.is_set():
            self.forced.set()
        self.stopping.set()

    def startup(self) -> None:
        s = self.settings
        self._folders()
        self._lock_state()
        self.queue, aside = open_queue(s.state_db, s.queue.url, s.queue.lease_timeout_s)
        self.log.info("queue.opened", queue=self.queue.where, node=self.queue.node, shared=self.queue.shared)
        if self.queue.shared:  # beats on a connection of their own: never queued behind a worker's call
            self.beats = open_queue(s.state_db, s.queue.url, s.queue.lease_timeout_s)[0]
        # Other hosts may be writing into shared folders: only their dead writers' files go.
        older_than = s.queue.lease_timeout_s if self.queue.shared else 0.0
        # The inbox too: a source set aside to be deleted (delete mode) by a run that died.
        for folder in (s.outbox, s.failed, s.done, s.inbox):
            for leftover in sweep_temp_files(folder, older_than):
                self.log.info("startup.removed_temp_file", path=str(leftover))
        if s.output.manifest:
            manifest.start(s.outbox)
        if aside is not None:
            self.log.error("queue.corrupt_rebuilt", moved_to=str(aside), db=str(s.state_db))
        recovered = self.queue.recover()
        if recovered:
            self.log.info("queue.recovered", jobs=recovered)
        for device in resolve_devices(s.codec.devices):
            pool = make_pool(s, device)
            started = time.monotonic()
            codec = pool.codec()  # load now: READY means the model is warm
            lanes = jobs_per_device(s, device)
            check_against_model(s, pool)
            self.log.info(
                "model.loaded",
                device=device,
                model=pool.spec.describe(),
                sample_rate=codec.sample_rate,
                encode_window_s=codec.encode_window_s,
                batch=codec.batch_size,
                jobs_at_once=lanes,
                load_s=round(time.monotonic() - started, 2),
            )
            for lane in range(lanes):
                worker = Worker(s, self.queue, pool, device, logs.get("dacwatch.worker"), lane, self.metrics)
                self.workers.append(worker)
        inside = tuple(
            p.absolute() for p in (s.outbox, s.done, s.failed) if p.absolute().is_relative_to(s.inbox.absolute())
        )
        rules = IgnoreRules(s.inbox.absolute(), inside)
        self.watcher = Watcher(
            rules,
            self._submit,
            s.watch.settle_seconds,
            s.watch.polling,
            s.watch.poll_interval_s,
            s.watch.reconcile_interval_s,
            logs.get("dacwatch.watcher"),
            s.watch.writer_check,
        )
        for worker in self.workers:
            worker.start()
        self.watcher.start()
        if s.scrub.interval_s > 0:
            from dacwatch.codec.model import fingerprint
            from dacwatch.daemon.scrubber import Scrubber
            from dacwatch.scrub import weights_here

            local = fingerprint(self.workers[0].pool.codec().model) if s.model.weights and self.workers else None
            weights = weights_here(s.model.cache_dir, local)
            self.scrubber = Scrubber(
                s.outbox, s.scrub.interval_s, s.scrub.max_read_mb_s, weights, self.metrics, logs.get("dacwatch.scrub")
            )
            self.scrubber.start()

    def serve(self) -> None:
        """Serve metrics, health and the status page (from before startup: /readyz says
        "starting" while the model loads)."""
        listen = self.settings.metrics.listen
        if not listen:
            return
        try:
            self.served = self.metrics.serve(listen, self)
            self.log.info("metrics.serving", url=f"http://{self.served}/metrics", page=f"http://{self.served}/")
        except (OSError, ValueError) as exc:  # a port taken, an address not ours: convert anyway
            self.log.error("metrics.unavailable", listen=listen, error=str(exc))

    def readiness(self) -> str | None:
        if self.stopping.is_set():
            return "stopping"
        return None if self.ready.is_set() else "starting"

    def snapshot(self) -> tuple[bytes, dict[str, Any]] | None:
        return self._snapshot

    def _report(self, problems: list[str]) -> dict[str, int]:
        """Build the status report for the page (once a second, here, never per request);
        returns the queue's counts."""
        assert self.queue is not None
        live = [
            report.Live(w.label, w.device, c.path, time.time() - (time.monotonic() - c.started), c.done_s, c.total_s)
            for w in self.workers
            if (c := w.current) is not None
        ]
        health = {"ready": self.readiness() is None, "readiness": self.readiness(), "problems": problems}
        s = self.settings
        built = report.status_of(
            self.queue,
            s.failed,
            inbox=s.inbox,
            live=live,
            history=self.metrics.history,
            health=health,
            notes=self._notes,
        )
        if len(self._notes) > 4 * report.RECENT:
            self._notes.clear()
        self._snapshot = (json.dumps(built).encode(), built)
        counts: dict[str, int] = built["counts"]
        return counts

    def _folders(self) -> None:
        """Say where everything is; make what is missing (with a warning) or refuse."""
        s = self.settings
        folders = {"inbox": s.inbox, "outbox": s.outbox, "done": s.done, "failed": s.failed, "state_dir": s.state_dir}
        for name, folder in folders.items():
            if folder.is_dir():
                continue
            if not s.create_folders:
                raise ConfigError(
                    f"{name} {folder} does not exist: create it, or set create_folders = true "
                    "(env DACWATCH_CREATE_FOLDERS) to have it made"
                )
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"{name} {folder} does not exist and cannot be made: {exc.strerror}") from exc
            self.log.warning("startup.folder_created", folder=name, path=str(folder.absolute()))
        self.log.info("service.folders", **{k: str(v.absolute()) for k, v in folders.items()})

    def _lock_state(self) -> None:
        """Take state_dir for this process alone, before anything reads or changes it: a
        second daemon's boot would requeue the first one's running jobs and sweep its
        temporary files. The kernel drops the lock when the process ends, however it ends.
        (With PostgreSQL, many daemons share the queue, but each has its own state_dir.)"""
        state_dir = self.settings.state_dir
        path = state_dir / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"state_dir {state_dir} cannot be locked ({path}): {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(
                f"another dacwatch{f' (pid {holder})' if holder else ''} is running on state_dir {state_dir}: "
                "one daemon per state_dir (give this one a state_dir of its own)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._state_lock = fd

    def _submit(self, path: Path, ident: Any) -> None:
        assert self.queue is not None
        try:
            rel = str(path.relative_to(self.settings.inbox.absolute()))
            if self.queue.submit(rel, ident):
                self.log.info("job.queued", source=str(path), size=ident.size)
        except DacwatchError as exc:
            self.log.error("queue.submit_failed", source=str(path), error=str(exc))
            assert self.watcher is not None
            self.watcher.debouncer.seen(path)  # try again on the next round
        except Exception:
            # Our bug, met with one file: said with its traceback, and intake goes on for every
            # other file (one name must never stop the watcher); the reconcile scan offers
            # this one again.
            self.log.exception("queue.submit_error", source=str(path))

    def problems(self) -> list[str]:
        """What is wrong now: a dead or hung watcher or worker (systemd's watchdog is
        fed only while this is empty, so systemd restarts a hung daemon)."""
        found = []
        if self.watcher is None or not self.watcher.healthy():
            found.append("the watcher is not running")
        for w in self.workers:
            if not w.is_alive() or w.error is not None:
                found.append(f"worker {w.label} stopped: {w.error or 'ended'}")
            elif (stall := w.stalled()) is not None:
                found.append(f"worker {w.label} looks hung: {stall}")
        return found

    def beat(self) -> None:
        """Tell the queue that this node's running jobs are alive (their leases would
        otherwise expire and another node take them over)."""
        assert self.queue is not None
        # A hung worker's job is not alive: let its lease run out, so another node takes it.
        leases = [
            c.lease
            for w in self.workers
            if (c := w.current) is not None and c.lease is not None and w.stalled() is None
        ]
        try:
            (self.beats or self.queue).beat(leases)
        except QueueError as exc:
            self.log.error("queue.unavailable", error=str(exc), retrying=True)

    def measure(self, counts: dict[str, int]) -> None:
        """Set the metrics that are read from elsewhere (once a second, from the loop)."""
        m = self.metrics
        for status, n in counts.items():
            m.queue.labels(status).set(n)
        m.running.set(sum(1 for w in self.workers if w.current is not None))
        if self.queue is not None:
            m.total(m.takeovers, "takeovers", self.queue.takeovers)
        pools = {id(w.pool): w.pool for w in self.workers}.values()
        for pool in pools:
            m.total(m.model_loads, f"loads-{pool.device}", pool.loads, str(pool.device))
            if pool.device.type == "cuda":
                import torch

                m.device_memory.labels(str(pool.device)).set(torch.cuda.memory_allocated(pool.device))

    def healthy(self) -> bool:
        return not self.problems()

    def status_line(self, counts: dict[str, int] | None = None) -> str:
        assert self.queue is not None
        counts = self.queue.counts() if counts is None else counts
        current = [w.current.path for w in self.workers if w.current is not None]
        line = (
            f"queued {counts['queued']}, running {counts['running']}, done {counts['done']}, failed {counts['failed']}"
        )
        return line + (f"; converting {', '.join(current)}" if current else "; idle")

    def loop(self) -> None:
        period = watchdog_interval()
        last_status = ""
        next_ping = next_beat = 0.0
        reported: list[str] = []
        while not self.stopping.is_set():
            now = time.monotonic()
            problems = self.problems()
            if period is not None and not problems and now >= next_ping:
                self.notify("WATCHDOG=1")
                next_ping = now + period
            if now >= next_beat:
                self.beat()
                next_beat = now + self.settings.queue.heartbeat_s
            if problems != reported:  # once per change, not once a second
                if problems:
                    self.log.error("service.unhealthy", problems=problems)
                reported = problems
            if self.workers and not any(w.is_alive() for w in self.workers):
                self.log.error("service.no_workers", problems=problems)
                self.failed = True
                return
            try:
                if self.served is not None and self.queue is not None:
                    counts = self._report(problems)
                else:
                    counts = self.queue.counts() if self.queue is not None else {}
                self.measure(counts)
                line = self.status_line(counts)
            except DacwatchError as exc:
                line = f"queue unavailable: {exc}"
            if line != last_status:
                self.notify(f"STATUS={line}")
                last_status = line
            # Wake for the next watchdog ping or queue beat, whichever is first (a heartbeat
            # under a second was beaten once a second, halving the margin of a lease).
            self.stopping.wait(max(0.05, min(1.0, period or 1.0, next_beat - time.monotonic())))

    def shutdown(self, timeout: float) -> None:
        self.ready.clear()
        self.notify("STOPPING=1")
        self.log.info("service.stopping", timeout_s=timeout)
        if self.watcher is not None:
            self.watcher.stop()
        if self.scrubber is not None:
            self.scrubber.stop()
        for worker in self.workers:
            worker.draining.set()
        deadline = time.monotonic() + timeout
        while any(w.is_alive() for w in self.workers) and time.monotonic() < deadline and not self.forced.is_set():
            time.sleep(0.05)
        for worker in self.workers:
            worker.abort.set()  # cancel what is left: requeued, temp files removed
        for worker in self.workers:
            worker.join(timeout=30)
        if self.watcher is not None:
            self.watcher.join(timeout=10)
        if self.scrubber is not None:
            self.scrubber.join(timeout=10)
        for queue in (self.queue, self.beats):
            if queue is not None:
                queue.close()
        self.metrics.close()
        if self._state_lock is not None:  # last: the state is left as it stays
            os.close(self._state_lock)
            self._state_lock = None
        self.log.info("service.stopped")


def run(settings: Settings, early_signals: list[int] | None = None) -> int:
    """``dacwatch run``: returns the process exit status. ``early_signals`` are signals
    caught (and only recorded) before this function could install its handlers."""
    logs.setup(settings.log_format, settings.log_level)
    log = logs.get("dacwatch.service")
    notify = Notifier.from_env()
    service = Service(settings, notify)
    previous = {sig: signal.signal(sig, service.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    for signum in early_signals or ():
        service.on_signal(signum, None)
    try:
        log.info(
            "service.starting",
            version=__version__,
            inbox=str(settings.inbox),
            outbox=str(settings.outbox),
            pid=os.getpid(),
        )
        service.serve()
        try:
            service.startup()
        except DacwatchError as exc:
            log.error("service.startup_failed", error=" ".join(str(exc).split()))
            service.shutdown(0)
            return 2 if isinstance(exc, ConfigError) else 1
        if service.stopping.is_set():  # asked to stop while starting: no READY, clean exit
            service.shutdown(0)
            return 0
        notify("READY=1")
        service.ready.set()
        notify(f"STATUS={service.status_line()}")
        log.info("service.ready", workers=[w.label for w in service.workers])
        service.loop()
        service.shutdown(settings.stop_timeout_s)
        return 1 if service.failed else 0
    finally:
        service.metrics.close()  # whatever stopped us: no server thread left behind
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        notify.close()


__all__ = ["Notifier", "Service", "run"]
