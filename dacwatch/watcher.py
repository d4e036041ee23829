"""Watching the inbox: which paths are candidates, when a candidate is complete, and
the thread that turns file-system events (and a periodic full scan) into jobs.

The observer thread only puts paths on an unbounded in-memory queue, so a
burst of events never blocks it; the watcher thread debounces them and submits
stable files. The reconcile scan finds everything again, so a lost event
(inotify overflow, a network share that sends none) only delays a file.
"""

from __future__ import annotations

import os
import queue as stdqueue
import stat as stmod
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fsio import TEMP_PREFIX, Identity, within

IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", "~")

Clock = Callable[[], float]
Probe = Callable[[Path], "Identity | None"]


def probe(path: Path) -> Identity | None:
    """The identity of a file (not following symlinks); None if gone or a folder."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if stmod.S_ISDIR(st.st_mode):
        return None
    return Identity(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True)
class IgnoreRules:
    """What in the inbox is never a candidate."""

    inbox: Path
    excluded: tuple[Path, ...] = ()  # outbox, done, failed when they lie inside the inbox

    def ignored(self, path: Path) -> str | None:
        """The reason ``path`` is ignored, or None if it is a candidate."""
        try:
            rel = path.relative_to(self.inbox)
        except ValueError:
            return "outside the inbox"
        if not rel.parts:
            return "the inbox itself"
        for part in rel.parts:
            if part.startswith("."):
                return "hidden or temporary name"
        name = rel.name
        if name.startswith(TEMP_PREFIX) or name.lower().endswith(IGNORED_SUFFIXES):
            return "partial or temporary name"
        for folder in self.excluded:
            if path == folder or folder in path.parents:
                return "inside an output folder"
        if path.is_symlink() and not within(self.inbox, path):
            return "symlink pointing outside the inbox"
        return None


@dataclass
class _Pending:
    identity: Identity
    since: float  # when this identity was first seen
    closed: bool = False


@dataclass
class Debouncer:
    """Decides when a candidate is complete: closed after writing, or unchanged in
    size and mtime for ``settle_s``; and in both cases still unchanged when taken.

    Clock and probe are injected so tests need no sleeps.
    """

    settle_s: float
    clock: Clock = time.monotonic
    probe: Probe = probe
    _pending: dict[Path, _Pending] = field(default_factory=dict)

    def _identity(self, path: Path) -> Identity | None:
        return self.probe(path)

    def seen(self, path: Path, closed: bool = False) -> None:
        """An event (or the scan) saw ``path``; ``closed`` if it was closed after writing."""
        ident = self._identity(path)
        if ident is None:
            self._pending.pop(path, None)
            return
        entry = self._pending.get(path)
        if entry is None or entry.identity != ident:
            self._pending[path] = _Pending(ident, self.clock(), closed)
        elif closed:
            entry.closed = True

    def due(self) -> list[tuple[Path, Identity]]:
        """Paths that are complete now, with the identity they had when judged so."""
        now = self.clock()
        ready: list[tuple[Path, Identity]] = []
        for path, entry in list(self._pending.items()):
            ident = self._identity(path)
            if ident is None:
                del self._pending[path]
            elif ident != entry.identity:
                self._pending[path] = _Pending(ident, now)
            elif entry.closed or now - entry.since >= self.settle_s:
                del self._pending[path]
                ready.append((path, ident))
        return ready

    def __len__(self) -> int:
        return len(self._pending)


Submit = Callable[[Path, Identity], Any]


class Watcher(threading.Thread):
    """Events and scans in, stable files out (to ``submit``)."""

    def __init__(
        self,
        rules: IgnoreRules,
        submit: Submit,
        settle_s: float,
        polling: bool = False,
        poll_interval_s: float = 2.0,
        reconcile_interval_s: float = 60.0,
        log: Any = None,
    ) -> None:
        super().__init__(name="dacwatch-watcher", daemon=True)
        self.rules = rules
        self.submit = submit
        self.debouncer = Debouncer(settle_s)
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self.reconcile_interval_s = reconcile_interval_s
        self.log = log
        self.heartbeat = time.monotonic()
        self.error: BaseException | None = None
        self._events: stdqueue.SimpleQueue[tuple[Path, bool]] = stdqueue.SimpleQueue()
        self._stopping = threading.Event()
        self._rescan = threading.Event()
        self._observer: Any = None

    # the observer's side: never blocks, never touches the disk
    def _on_event(self, event: Any) -> None:
        from watchdog.events import FileClosedEvent, FileMovedEvent

        if event.is_directory:
            if event.event_type in ("created", "moved"):
                self._rescan.set()  # a folder moved in brings files no event announced
            return
        path = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
        self._events.put((Path(os.fsdecode(path)), isinstance(event, FileClosedEvent)))

    def start_observer(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        handler = FileSystemEventHandler()
        handler.dispatch = self._on_event  # type: ignore[method-assign]
        observer = PollingObserver(timeout=self.poll_interval_s) if self.polling else Observer()
        observer.schedule(handler, str(self.rules.inbox), recursive=True)
        observer.start()
        self._observer = observer

    def scan(self) -> int:
        """Walk the whole inbox; every candidate goes through the debouncer again."""
        count = 0
        for dirpath, dirs, files in os.walk(self.rules.inbox):
            base = Path(dirpath)
            dirs[:] = [d for d in dirs if self.rules.ignored(base / d) is None]
            for name in files:
                path = base / name
                if self.rules.ignored(path) is None:
                    self.debouncer.seen(path)
                    count += 1
        return count

    def run(self) -> None:
        try:
            self.start_observer()
            self.scan()
            next_scan = time.monotonic() + self.reconcile_interval_s
            while not self._stopping.is_set():
                self.heartbeat = time.monotonic()
                self._drain(self._events)
                if self._rescan.is_set() or time.monotonic() >= next_scan:
                    self._rescan.clear()
                    found = self.scan()
                    if self.log is not None:
                        self.log.debug("watch.reconciled", candidates=found)
                    next_scan = time.monotonic() + self.reconcile_interval_s
                for path, ident in self.debouncer.due():
                    if self.rules.ignored(path) is None:
                        self.submit(path, ident)
                self._stopping.wait(0.1)
        except BaseException as exc:  # the service sees a dead watcher and reports unhealthy
            self.error = exc
            if self.log is not None:
                self.log.exception("watch.crashed")
        finally:
            if self._observer is not None:
                self._observer.stop()
                self._observer.join(timeout=5)

    def _drain(self, events: stdqueue.SimpleQueue[tuple[Path, bool]], limit: int = 10000) -> None:
        for _ in range(limit):
            try:
                path, closed = events.get_nowait()
            except stdqueue.Empty:
                return
            if self.rules.ignored(path) is None:
                self.debouncer.seen(path, closed)

    def stop(self) -> None:
        self._stopping.set()

    def healthy(self, max_silence_s: float = 30.0) -> bool:
        observer_ok = self._observer is None or self._observer.is_alive()
        return self.is_alive() and observer_ok and time.monotonic() - self.heartbeat < max_silence_s
