"""One device, several files at once: every forward pass on a device goes through its
gate, one at a time, and passes of the same shape from different files run as one.

Several workers share a device (``codec.jobs_per_device``) so that one file's host
work (reading, the loudness pass, resampling, writing) overlaps another's device
work. The network itself is used by one thread at a time: its layers' padding is
switched per window (:func:`dacwatch.codec.model.layer_padding`), which is state on the
model, and one device gains nothing from two passes racing.

The gate combines: a worker that finds the device free runs its own pass and, in
the same forward pass, every waiting pass of the same key (same network, same
operation, same window shape) up to the batch limit; the others wait and get
their rows back. Nobody waits to gather a batch: passes merge only when they
queue up behind a busy device, which is exactly when one more batch slot is
free work. Each row of a batch is computed on its own (the batch dimension never
mixes rows), so a file's codes do not depend on what it shared a pass with.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RowsPass = Callable[[np.ndarray], tuple[np.ndarray, Any]]  # stacked rows -> (stacked outputs, shared extra)


@dataclass(eq=False)
class _Request:
    key: Hashable
    rows: np.ndarray
    windows: int
    result: np.ndarray | None = None
    extra: Any = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class GateStats:
    """What the gate did (for logs and bench/): passes run, requests served, requests
    that rode along in another file's pass."""

    passes: int = 0
    requests: int = 0
    merged: int = 0
    by_key: dict[str, int] = field(default_factory=dict)


class DeviceGate:
    """Serialises one device's forward passes and merges equal ones (module doc)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._pending: list[_Request] = []
        self._busy = False
        self.stats = GateStats()
        # Liveness (Worker.stalled): the threads inside the gate, waiting or running a
        # pass, and when the device last moved (a pass started or ended). A thread in
        # the gate makes progress as long as the device does.
        self._inside: dict[int, float] = {}
        self._left: dict[int, float] = {}
        self.moved_at = time.monotonic()

    def progress(self, thread: int | None) -> tuple[bool, float | None]:
        """For a thread (its ident): whether it is inside the gate now, and the last time
        it or the device made progress there (it entered, a pass started or ended while
        it was inside, or it left). ``(False, None)`` for a thread never seen here."""
        with self._cv:
            entered = self._inside.get(thread) if thread is not None else None
            if entered is not None:
                return True, max(entered, self.moved_at)
            return False, self._left.get(thread) if thread is not None else None

    @contextlib.contextmanager
    def _entered(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cv:
            self._inside[me] = time.monotonic()
        try:
            yield
        finally:
            with self._cv:
                self._inside.pop(me, None)
                self._left[me] = time.monotonic()

    def run(self, key: Hashable, rows: np.ndarray, windows: int, limit: int, fn: RowsPass) -> tuple[np.ndarray, Any]:
        """``fn(rows)``, perhaps with other callers' rows of the same ``key`` stacked after
        along axis 0 (up to ``limit`` windows in all); returns this caller's part of the
        output (axis 0 split back by row count) and ``fn``'s shared extra value.

        ``fn`` must treat rows independently and return as many as it was given; callers
        passing the same ``key`` must pass equivalent ``fn``\\ s and equal trailing shapes.
        An exception in the pass is raised in every caller whose rows were in it.
        """
        request = _Request(key, rows, windows)
        with self._entered():
            with self._cv:
                self._pending.append(request)
                while self._busy and not request.done:
                    self._cv.wait()
                if not request.done:
                    self._busy = True
                    self.moved_at = time.monotonic()
                    group = self._take(request, limit)
            if not request.done:
                self._execute(group, fn)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result, request.extra

    def waiting(self) -> int:
        """Passes queued behind the one running now."""
        with self._cv:
            return len(self._pending)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the device for work that cannot be merged (DAC 1.0.0's own chunks)."""
        with self._entered():
            with self._cv:
                while self._busy:
                    self._cv.wait()
                self._busy = True
                self.moved_at = time.monotonic()
            try:
                yield
            finally:
                with self._cv:
                    self._busy = False
                    self.moved_at = time.monotonic()
                    self._cv.notify_all()

    def _take(self, request: _Request, limit: int) -> list[_Request]:
        """``request`` and the waiting requests of its key that fit, in arrival order
        (called with the condition held; removes them from the waiting list)."""
        group, total = [request], request.windows
        for other in self._pending:
            if other is not request and other.key == request.key and total + other.windows <= limit:
                group.append(other)
                total += other.windows
        self._pending = [r for r in self._pending if r not in group]
        return group

    def _execute(self, group: list[_Request], fn: RowsPass) -> None:
        try:
            rows = group[0].rows if len(group) == 1 else np.concatenate([r.rows for r in group], axis=0)
            out, extra = fn(rows)
            at = 0
            for r in group:
                r.result, r.extra = out[at : at + r.rows.shape[0]], extra
                at += r.rows.shape[0]
        except BaseException as exc:
            for r in group:
                r.error = exc if r is group[0] else _copied(exc)
        finally:
            with self._cv:
                self.stats.passes += 1
                self.stats.requests += len(group)
                self.stats.merged += len(group) - 1
                name = str(group[0].key[1]) if isinstance(group[0].key, tuple) and len(group[0].key) > 1 else "pass"
                self.stats.by_key[name] = self.stats.by_key.get(name, 0) + 1
                for r in group:
                    r.done = True
                self._busy = False
                self.moved_at = time.monotonic()
                self._cv.notify_all()


def _copied(exc: BaseException) -> BaseException:
    """An exception of its own for each waiting caller (one instance raised in several
    threads would collect all their tracebacks), caused by the original."""
    try:
        mine = copy.copy(exc)
    except Exception:
        mine = RuntimeError(f"the shared forward pass failed: {exc}")
    mine.__cause__ = exc
    mine.__traceback__ = None
    return mine


__all__ = ["DeviceGate", "GateStats"]
