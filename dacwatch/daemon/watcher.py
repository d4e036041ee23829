"""Watching the inbox: which paths are candidates, when a candidate is complete, and
the thread that turns file-system events (and a periodic full scan) into jobs.

The observer thread only puts paths on an unbounded in-memory queue, so a
burst of events never blocks it; the watcher thread debounces them and submits
stable files. The reconcile scan finds everything again, so a lost event
(inotify overflow, a network share that sends none) only delays a file.
"""

from __future__ import annotations

import enum
import logging
import os
import queue as stdqueue
import stat as stmod
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dacwatch.daemon.complete import Evidence, Scan, Verdict, judge
from dacwatch.daemon.writers import WriterScan, scan_writers
from dacwatch.fsio import TEMP_PREFIX, Identity, within

IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", "~")

QUIET_S = 0.5  # even with nobody writing, a file's size and mtime must hold this long
Clock = Callable[[], float]
Probe = Callable[[Path], "Identity | None"]


def probe(path: Path) -> Identity | None:
    """The identity of a file (of a symlink's target: that is what gets read, and what
    a writer writes); None if gone or a folder."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stmod.S_ISDIR(st.st_mode):
        return None
    return Identity.of(st)


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


class Seen(enum.Enum):
    """What the watcher learnt about a path."""

    SCAN = "scan"  # found by a scan, or a polling observer's difference: no writer seen
    CHANGED = "changed"  # created, attributes changed: look again
    OPENED = "opened"  # IN_OPEN: by anyone, for reading or writing
    MODIFIED = "modified"  # IN_MODIFY: a writer holds it open
    CLOSED_WRITE = "closed_write"  # IN_CLOSE_WRITE: a writer closed it
    CLOSED_NOWRITE = "closed_nowrite"  # IN_CLOSE_NOWRITE: a reader closed it
    MOVED_IN = "moved_in"  # renamed into place: delivered whole


@dataclass
class _Pending:
    identity: Identity
    since: float  # when this identity was first seen
    events: bool = False  # inotify told us of this file's opens and closes
    opens: int = 0  # opens minus closes seen (inotify coalesces repeats: a hint, not a count)
    writing: bool = False  # modified since a writer last closed it
    closed: bool = False  # a writer closed it, or it was renamed into place


WriterCheck = Callable[[list[str]], WriterScan]
SCAN_INTERVAL_S = 1.0  # the /proc walk runs at most this often


@dataclass
class Debouncer:
    """Gathers what is known of each candidate (events, identity over time, the writer
    scan) and asks :func:`dacwatch.daemon.complete.judge` whether it is complete. In every case
    the file must still be unchanged at the moment it is taken.

    Clock, probe and writer check are injected so tests need no sleeps; ``beat`` is
    called for every path looked at (the watcher's heartbeat: progress, however many).
    """

    settle_s: float
    clock: Clock = time.monotonic
    probe: Probe = probe
    writers: WriterCheck | None = scan_writers
    quiet_s: float = QUIET_S
    beat: Callable[[], None] = field(default=lambda: None)
    _pending: dict[Path, _Pending] = field(default_factory=dict)
    _scan: WriterScan | None = None
    _scanned: frozenset[str] = frozenset()
    _scanned_at: float = float("-inf")

    def seen(self, path: Path, what: Seen = Seen.SCAN) -> None:
        """An event or a scan saw ``path``."""
        self.beat()
        ident = self.probe(path)
        if ident is None:
            self._pending.pop(path, None)
            return
        entry = self._pending.get(path)
        if entry is None:
            entry = self._pending[path] = _Pending(ident, self.clock())
        elif entry.identity != ident:
            entry.identity, entry.since = ident, self.clock()
        if what in (Seen.SCAN, Seen.CHANGED):
            return
        entry.events = True
        if what is Seen.OPENED:
            entry.opens += 1
        elif what is Seen.MODIFIED:
            entry.writing = True
        elif what in (Seen.CLOSED_WRITE, Seen.CLOSED_NOWRITE):
            entry.opens = max(0, entry.opens - 1)
            if what is Seen.CLOSED_WRITE:
                entry.writing, entry.closed = False, True
        elif what is Seen.MOVED_IN:
            entry.writing, entry.closed = False, True

    def due(self) -> list[tuple[Path, Identity]]:
        """Paths that are complete now (or to be refused at once), with the identity they had
        when judged so. The rule itself is :func:`dacwatch.daemon.complete.judge`."""
        now = self.clock()
        looked: list[tuple[Path, _Pending]] = []
        for path, entry in list(self._pending.items()):
            self.beat()
            ident = self.probe(path)
            if ident is None:
                del self._pending[path]
            elif ident != entry.identity:
                entry.identity, entry.since = ident, now
            else:
                looked.append((path, entry))
        quiet = min(self.quiet_s, self.settle_s)
        # The /proc scan only for files it can decide: regular, not empty, still, not
        # being written (the rule's earlier rows decide the others).
        real: dict[Path, str] = {}
        for path, entry in looked if self.writers is not None else ():
            i = entry.identity
            if i.regular and i.size > 0 and now - entry.since >= quiet and not entry.writing:
                self.beat()
                real[path] = _real(path)
        scan = self._writers(set(real.values()), now) if real else None
        ready: list[tuple[Path, Identity]] = []
        for path, entry in looked:
            self.beat()
            i = entry.identity
            if scan is None or path not in real:
                seen = Scan.NONE
            elif real[path] in scan.writers:
                seen = Scan.WRITER
            else:
                seen = Scan.CLEAR if scan.complete else Scan.CLEAR_PARTIAL
            evidence = Evidence(
                regular=i.regular,
                empty=i.size == 0,
                quiet=now - entry.since >= quiet,
                settled=now - entry.since >= self.settle_s,
                events=entry.events,
                writing=entry.writing,
                closed=entry.closed,
                open_elsewhere=entry.opens > 0,
                scan=seen,
            )
            if judge(evidence).verdict is not Verdict.WAIT:
                del self._pending[path]
                ready.append((path, i))
        return ready

    def forget_events(self) -> None:
        """inotify lost events (its queue overflowed): what it said of pending files may miss
        a close, so every pending file is judged by the writer scan and the settle time."""
        for entry in self._pending.values():
            entry.events, entry.opens, entry.writing, entry.closed = False, 0, False, False

    def _writers(self, paths: set[str], now: float) -> WriterScan | None:
        """The /proc scan for ``paths``: at most once a second, again sooner only for a
        path the last one did not look for."""
        if self.writers is None:
            return None
        if now - self._scanned_at >= SCAN_INTERVAL_S or not paths <= self._scanned:
            self._scan, self._scanned, self._scanned_at = self.writers(sorted(paths)), frozenset(paths), now
        return self._scan

    def __len__(self) -> int:
        return len(self._pending)


def _real(path: Path) -> str:
    """The path an open descriptor's /proc link names for this file."""
    return os.path.realpath(path)


Submit = Callable[[Path, Identity], Any]

# watchdog's event types (inotify) -> what they tell about writers.
_SEEN = {
    "opened": Seen.OPENED,
    "modified": Seen.MODIFIED,
    "closed": Seen.CLOSED_WRITE,
    "closed_no_write": Seen.CLOSED_NOWRITE,
    "moved": Seen.MOVED_IN,
}


class _Overflowed(logging.Handler):
    """watchdog tells of a lost inotify queue (IN_Q_OVERFLOW) only in a log record."""

    LOGGER = "watchdog.observers.inotify_c"

    def __init__(self, flag: threading.Event) -> None:
        super().__init__(logging.WARNING)
        self.flag = flag

    def emit(self, record: logging.LogRecord) -> None:
        if "overflowed" in record.getMessage():
            self.flag.set()


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
        writer_check: bool = True,
    ) -> None:
        super().__init__(name="dacwatch-watcher", daemon=True)
        self.rules = rules
        self.submit = submit
        # Every look at a candidate is progress: a scan or a burst of 50,000 new files on
        # a slow disk takes many seconds of probes, and must not read as a dead watcher.
        self.debouncer = Debouncer(settle_s, writers=scan_writers if writer_check else None, beat=self._beat)
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self.reconcile_interval_s = reconcile_interval_s
        self.log = log
        self.heartbeat = time.monotonic()
        self.error: BaseException | None = None
        self._events: stdqueue.SimpleQueue[tuple[Path, Seen]] = stdqueue.SimpleQueue()
        self._stopping = threading.Event()
        self._rescan = threading.Event()
        self._overflowed = threading.Event()
        self._alarm = _Overflowed(self._overflowed)
        self._observer: Any = None

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()

    # the observer's side: never blocks, never touches the disk
    def _on_event(self, event: Any) -> None:
        if event.is_directory:
            if event.event_type in ("created", "moved"):
                self._rescan.set()  # a folder moved in brings files no event announced
            return
        moved = event.event_type == "moved"
        path = event.dest_path if moved else event.src_path
        # A polling observer's "events" are differences between two listings: they
        # say nothing about writers.
        what = Seen.SCAN if self.polling else _SEEN.get(event.event_type, Seen.CHANGED)
        self._events.put((Path(os.fsdecode(path)), what))

    def start_observer(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        handler = FileSystemEventHandler()
        handler.dispatch = self._on_event  # type: ignore[method-assign]
        logging.getLogger(_Overflowed.LOGGER).addHandler(self._alarm)
        observer = PollingObserver(timeout=self.poll_interval_s) if self.polling else Observer()
        observer.schedule(handler, str(self.rules.inbox), recursive=True)
        observer.start()
        self._observer = observer

    def scan(self) -> int:
        """Walk the whole inbox; every candidate goes through the debouncer again."""
        count = 0
        for dirpath, dirs, files in os.walk(self.rules.inbox):
            base = Path(dirpath)
            self.heartbeat = time.monotonic()
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
                if self._overflowed.is_set():
                    # Events were lost, a writer's close among them perhaps: judge every
                    # pending file by the scan and settle time, and look at everything again.
                    self._overflowed.clear()
                    self.debouncer.forget_events()
                    self._rescan.set()
                    if self.log is not None:
                        self.log.warning("watch.events_lost", reason="inotify queue overflowed")
                if self._rescan.is_set() or time.monotonic() >= next_scan:
                    self._rescan.clear()
                    found = self.scan()
                    if self.log is not None:
                        self.log.debug("watch.reconciled", candidates=found)
                    next_scan = time.monotonic() + self.reconcile_interval_s
                for path, ident in self.debouncer.due():
                    self.heartbeat = time.monotonic()  # a queue on a loaded disk takes its time
                    if self.rules.ignored(path) is None:
                        self.submit(path, ident)
                self._stopping.wait(0.1)
        except BaseException as exc:  # the service sees a dead watcher and reports unhealthy
            self.error = exc
            if self.log is not None:
                self.log.exception("watch.crashed")
        finally:
            logging.getLogger(_Overflowed.LOGGER).removeHandler(self._alarm)
            if self._observer is not None:
                self._observer.stop()
                self._observer.join(timeout=5)

    def _drain(self, events: stdqueue.SimpleQueue[tuple[Path, Seen]], limit: int = 10000) -> None:
        for _ in range(limit):
            try:
                path, what = events.get_nowait()
            except stdqueue.Empty:
                return
            if self.rules.ignored(path) is None:
                self.debouncer.seen(path, what)

    def stop(self) -> None:
        self._stopping.set()

    def healthy(self, max_silence_s: float = 30.0) -> bool:
        observer_ok = self._observer is None or self._observer.is_alive()
        return self.is_alive() and observer_ok and time.monotonic() - self.heartbeat < max_silence_s
