"""One worker per device: lease a job, convert, write atomically, dispose of the source, record.

Errors are classified in one place (:meth:`Worker._settle`): bad input is
quarantined with its reason, transient faults are retried with backoff (out
of memory first with a smaller batch), and a shutdown request requeues the
job without counting the attempt.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dacwatch import __version__, fsops
from dacwatch.audio import OutputFormat, check_regular_file
from dacwatch.codec.model import ModelSpec
from dacwatch.config import Settings
from dacwatch.convert import CodecPool, CodecSettings, Result, decode_file, encode_file
from dacwatch.daemon import manifest
from dacwatch.daemon.interrupted import Act, Facts, Row, Source, When, decide
from dacwatch.daemon.metrics import Metrics
from dacwatch.daemon.report import audio_length
from dacwatch.errors import (
    ConfigError,
    ModelMismatchError,
    OutOfMemoryError,
    PermanentError,
    SourceChanged,
    TransientError,
)
from dacwatch.faults import Fault, FileSystemFault, classify, crosses_devices, label, os_fault
from dacwatch.fsio import (
    Identity,
    atomic_output,
    discard,
    ensure_dir,
    folds_case,
    identity,
    mirror,
    move_across,
    temp_name,
    within,
)
from dacwatch.names import fit_path, output_candidates, printable
from dacwatch.queue.base import CRASHED, BaseQueue, Job, QueueError, Status

T = TypeVar("T")
UNEXPECTED_IN_A_ROW = 3  # unexpected failures in a row after which a worker stops taking work
JOBS_PER_CPU = 2  # files at once on a CPU: one reads or writes while the other computes
JOBS_PER_GPU = 4  # on a GPU: enough host work in flight to keep the device fed
ERROR_NOTE = ".error.json"  # beside a quarantined file: why


class WorkerStopped(Exception):
    """A worker stopped taking work after unexpected failures in a row."""


class Interrupted(Exception):
    """The table of dacwatch.daemon.interrupted said to stop converting ``row``'s way."""

    def __init__(self, row: Row) -> None:
        super().__init__(row.reason)
        self.row = row


class Cancelled(Exception):
    """The service asked running work to stop (second signal or stop timeout)."""


def model_spec(settings: Settings) -> ModelSpec:
    m = settings.model
    return ModelSpec(m.type, m.bitrate, m.tag, m.weights)


def check_against_model(settings: Settings, pool: CodecPool) -> None:
    """What only the loaded network can tell: a :class:`ConfigError` (before READY, so no
    file is ever blamed for it) if the configuration asks for more than it has."""
    codec = pool.codec()
    wanted = settings.codec.codebooks
    if wanted is not None and wanted > codec.n_codebooks:
        raise ConfigError(
            f"codec.codebooks (env DACWATCH_CODEC__CODEBOOKS) is {wanted}, but {pool.spec.describe()} "
            f"has {codec.n_codebooks} codebooks"
        )


def make_pool(settings: Settings, device: str) -> CodecPool:
    c = settings.codec
    return CodecPool(
        model_spec(settings),
        CodecSettings(device, c.encode_window_s, c.decode_window_s, c.batch_size, c.precision),
        cache_dir=settings.model.cache_dir,
        kernels_dir=settings.state_dir,
        tune_at_load=True,
    )


@dataclass
class Current:
    path: str
    started: float
    ticks: int = 0  # progress reports so far
    longest_gap: float = 0.0  # the longest time between two of them, seconds
    finishing: bool = False  # written: syncing, renaming, moving the source (no reports)
    lease: str | None = None  # the job's lease (the service beats it; every record names it)
    generation: int = 0  # the pool's geometry generation when the job started
    target: Path | None = None  # the output name it claimed
    done_s: float = 0.0  # seconds of audio read (encoding) or written (decoding) so far
    total_s: float | None = None  # the file's length in seconds, when its header says


def jobs_per_device(settings: Settings, device: str) -> int:
    """Workers sharing ``device`` (``codec.jobs_per_device``; by default 2 on a CPU, 4 on a GPU)."""
    wanted = settings.codec.jobs_per_device
    if wanted is not None:
        return wanted
    return JOBS_PER_CPU if device == "cpu" else JOBS_PER_GPU


class Worker(threading.Thread):
    """Takes jobs one at a time for one device. Several workers may share a device and its
    :class:`CodecPool` (``lane`` tells them apart): the pool's gate runs their forward
    passes one at a time, merged where they match, while their host work overlaps."""

    def __init__(
        self,
        settings: Settings,
        queue: BaseQueue,
        pool: CodecPool,
        name: str,
        log: Any,
        lane: int = 0,
        metrics: Metrics | None = None,
        fold_case: bool | None = None,
    ) -> None:
        self.label = name if lane == 0 else f"{name}/{lane}"
        super().__init__(name=f"dacwatch-worker-{self.label}", daemon=True)
        self.settings = settings
        self.queue = queue
        self.pool = pool
        self.device = name
        self.lane = lane
        self.metrics = metrics
        self.log = log.bind(device=name, lane=lane)
        self.draining = threading.Event()  # stop taking jobs
        self.abort = threading.Event()  # stop the job in hand
        self.current: Current | None = None
        self.heartbeat = time.monotonic()
        self.error: BaseException | None = None
        self.unexpected_in_a_row = 0
        # Output-name claims compare case-folded where the outbox folds case (None: ask it).
        self.fold_case = folds_case(settings.outbox) if fold_case is None else fold_case

    def run(self) -> None:
        try:
            while not self.draining.is_set():
                self.heartbeat = time.monotonic()
                try:
                    job = self.queue.lease(self.label)
                except QueueError as exc:
                    self.log.error("queue.unavailable", error=str(exc))
                    self.draining.wait(1.0)
                    continue
                if job is None:
                    self.draining.wait(0.2)
                    continue
                self.process(job)
                if self.unexpected_in_a_row >= UNEXPECTED_IN_A_ROW:
                    # Not the files: something in this process is wrong. Stop taking
                    # work (the jobs stay queued, the files in place) and say so.
                    raise WorkerStopped(
                        f"{self.unexpected_in_a_row} unexpected failures in a row; "
                        "the last one's traceback is in the log (job.unexpected_error)"
                    )
        except WorkerStopped as exc:
            self.error = exc
            self.log.error("worker.stopped", reason=str(exc))
        except BaseException as exc:
            self.error = exc
            self.log.exception("worker.crashed")

    def _record(self, action: Callable[..., bool], *args: Any, **kwargs: Any) -> None:
        """Write a job's outcome under its lease, waiting out a locked or unreachable
        database: the outcome must not be lost. If the lease was taken over meanwhile (this
        node was silent past ``queue.lease_timeout_s``), nothing is written: the job is
        another node's now."""
        lease = self.current.lease if self.current is not None else None
        if not self._queue_call(action, *args, lease=lease, **kwargs):
            self.log.warning("job.lease_lost", job=args[0] if args else None, action=action.__name__)

    def _queue_call(self, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``action(*args)``, retried while the database is locked or unreachable."""
        while True:
            try:
                return action(*args, **kwargs)
            except QueueError as exc:
                self.heartbeat = time.monotonic()
                self.log.error("queue.unavailable", error=str(exc), retrying=True)
                if self.abort.wait(1.0):
                    raise

    def _tick(self, seconds: float = 0.0) -> None:
        now = time.monotonic()
        if self.current is not None:
            self.current.done_s += seconds  # the status page's progress and ETA
            if self.current.ticks:  # the wait for the first report is not a gap between two
                # Time in the device's gate is judged there (stalled), not as a gap.
                since = max(self.heartbeat, self.pool.gate.progress(self.ident)[1] or 0.0)
                self.current.longest_gap = max(self.current.longest_gap, now - since)
            self.current.ticks += 1
        self.heartbeat = now
        if self.abort.is_set():
            raise Cancelled("stop requested")

    def _finishing(self) -> None:
        """The output is written: what is left (fsync, rename, moving the source to done/,
        perhaps across file systems) reports no progress, so it gets the first-block
        allowance again."""
        self.heartbeat = time.monotonic()
        if self.current is not None:
            self.current.finishing = True

    def stalled(self, now: float | None = None) -> str | None:
        """Why this worker looks hung (no progress for longer than its job allows), or None.

        Work reports progress after every block it reads, decodes or writes. Before
        its first block a job may load another model or read a slow share, so it gets
        ``stall_timeout_s``; after that, ten times the longest gap between its blocks
        so far, at least a tenth of ``stall_timeout_s``. Inside the device's gate it
        makes progress while the device does, and each forward pass (a whole file's,
        with window 0) gets ``stall_timeout_s``. Between jobs the loop beats every 0.2 s.
        """
        now = time.monotonic() if now is None else now
        current = self.current
        first = self.settings.stall_timeout_s
        inside, device = self.pool.gate.progress(self.ident)
        last = max(self.heartbeat, device or 0.0)
        if inside:
            # In the device's gate: waiting behind other files' passes (progress is the
            # device's) or running one pass, which may be a whole file (window 0) and
            # reports nothing until it ends: each pass gets the first-block allowance.
            bound = first
        elif current is None or current.ticks == 0 or current.finishing:
            bound = first
        else:
            bound = max(first / 10, 10 * current.longest_gap)
        silent = now - last
        if silent <= bound:
            return None
        what = f"converting {current.path}" if current is not None else "between jobs"
        return f"no progress for {silent:.0f} s {what} (allowed {bound:.0f} s)"

    def process(self, job: Job) -> None:
        s = self.settings
        source = s.inbox / job.path
        self.heartbeat = time.monotonic()
        self.current = Current(job.path, self.heartbeat, lease=job.lease, generation=self.pool.generation)
        started = time.monotonic()
        mine: Identity | None = None  # what this worker renamed into place, once it has
        try:
            taken = decide(self._facts(job, source, When.TAKEN))
            if taken.act is Act.GIVE_UP:
                raise PermanentError(f"the daemon died {job.attempts - 1} times converting this file")
            if taken.act is not Act.CONVERT:
                raise Interrupted(taken)
            result = self._convert(source, job)  # checks When.CONVERTED before the rename too
            mine = output_identity(result.output)
            self._finishing()
            crash_point("after_rename")
            # Never move or delete a version that was not converted, nor act on a job that
            # is another node's now.
            converted = decide(self._facts(job, source, When.CONVERTED))
            if converted.act is not Act.FINISH:
                raise Interrupted(converted)
            if s.output.manifest:  # only an output that stays: after the source is known unchanged
                manifest.record(s.outbox, result.output)
            self._dispose(source, job.identity)
            crash_point("after_dispose")
            self._record(self.queue.complete, job.id, str(result.output))
            crash_point("after_commit")
            self.unexpected_in_a_row = 0
            grown = self.pool.succeeded()
            if grown:
                self.log.info("codec.grown", geometry=grown)
            wall = time.monotonic() - started
            self._count(source, "done", result.audio_s, wall)
            self.log.info(
                "job.done",
                source=str(source),
                output=str(result.output),
                kind=result.kind,
                audio_s=round(result.audio_s, 3),
                wall_s=round(wall, 3),
                rtf=round(result.audio_s / wall, 3) if wall > 0 else None,
                attempts=job.attempts,
                **({} if result.quality is None else {"quality": result.quality.as_dict()}),
            )
            if self.metrics is not None and result.quality is not None and result.quality.si_sdr_db is not None:
                self.metrics.quality.observe(result.quality.si_sdr_db)
        except Cancelled:
            self._record(self.queue.requeue, job.id)
            self.log.info("job.requeued", source=str(source), reason="shutdown")
        except Interrupted as exc:
            self._interrupted(exc.row, job, source, mine)
        except SourceChanged as exc:
            # The source changed as it was to be deleted (delete mode): the output is a whole
            # conversion of the version that was; the new one is a job of its own.
            self._record(self.queue.drop, job.id)
            self.log.info("job.superseded", source=str(source), reason=str(exc))
        except QueueError:
            raise  # _record gave up only because of a shutdown; the job is recovered at boot
        except Exception as exc:
            self._settle(job, source, exc, time.monotonic() - started)
        finally:
            self.current = None

    def _interrupted(self, row: Row, job: Job, source: Path, mine: Identity | None) -> None:
        """Do what the table (dacwatch.daemon.interrupted) said, and say so."""
        claimed = self.current.target if self.current is not None else None
        if row.act is Act.LEAVE:
            # Lost before the rename: nothing was renamed; lost between the rename and moving
            # the source: the output stays (the other node writes the same name) and the
            # source is left alone. The queue is the other node's to update.
            self.log.warning(row.event, source=str(source), reason=row.reason)
            return
        if row.act is Act.RECORD_DONE:
            output = claimed if claimed is not None else Path(job.output) if job.output else self._output_of(source)
            self._record(self.queue.complete, job.id, str(output))
            self.log.info(row.event, source=str(source), output=str(output), reason=row.reason)
            return
        if row.act is Act.DROP_OUTPUT and claimed is not None:
            # Whole, of the earlier version; if it cannot go now, the new version's own
            # job replaces it. Only if it is still the file this worker renamed.
            with contextlib.suppress(OSError):
                drop_output(claimed, mine)
        # Forget the job; the watcher submits whatever is under the name now (its writes
        # bring events, and the reconcile scan finds it in any case) as a job of its own.
        self._record(self.queue.drop, job.id)
        log = self.log.warning if row.event == "job.ignored" else self.log.info
        log(row.event, source=str(source), reason=row.reason)

    def _count(self, source: Path, outcome: str, audio_s: float = 0.0, wall_s: float = 0.0) -> None:
        if self.metrics is not None:
            kind = "decode" if source.suffix.lower() == ".dac" else "encode"
            self.metrics.finished(kind, outcome, audio_s, wall_s, str(source))

    def _version(self, path: Path) -> Identity:
        """The identity of ``path`` as the queue compares it (without the inode when shared).
        A file that is gone raises FileNotFoundError (callers act on it); any other error
        of the system comes out classified."""
        try:
            return self.queue.version(identity(path))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise os_fault(exc, f"cannot look at {path}") from exc

    def _facts(self, job: Job, source: Path, when: When) -> Facts:
        """What the table of dacwatch.daemon.interrupted looks at, for ``job`` now."""
        # The lease first: a source that vanished because another node finished the job
        # is that node's business, not a change to act on.
        held = when is When.TAKEN or self._queue_call(self.queue.holds, job.id, job.lease)
        try:
            state = Source.SAME if self._version(source) == job.identity else Source.CHANGED
            if source.is_symlink() and not within(self.settings.inbox, source):
                state = Source.OUTSIDE
        except FileNotFoundError:
            state = Source.GONE
        if when is When.TAKEN:
            output: Path | None = Path(job.output) if job.output else self._output_of(source)
        else:
            output = self.current.target if self.current is not None else None
        return Facts(
            when=when,
            source=state,
            crashed=job.last_error == CRASHED,
            crash_loop=job.attempts > self.settings.retry.max_attempts,
            lease_held=held,
            output_in_place=output is not None and output.exists(),
        )

    def _before_rename(self, source: Path, job: Job) -> None:
        """Just before the output's rename: the table again; anything but "finish" stops it."""
        row = decide(self._facts(job, source, When.CONVERTED))
        if row.act is not Act.FINISH:
            raise Interrupted(row)

    def _reserve(self, source: Path, job: Job) -> Path:
        """The output name this job may write, claimed in the queue (README, "Output names"):
        ``talk.dac`` for ``talk.wav``; if another source holds it (``talk.flac`` was first),
        ``talk.wav.dac``, then ``talk.wav.1.dac``...; never another source's output."""
        candidates = output_candidates(self._output_of(source), source.name)
        claimed = self._queue_call(
            self.queue.reserve_output,
            job.id,
            job.path,
            [str(c) for c in candidates],
            lease=job.lease,
            fold_case=self.fold_case,
        )
        if not claimed:
            raise TransientError(
                f"no free output name for {source}: {candidates[0]} and {len(candidates) - 1} others "
                "belong to other sources"
            )
        return Path(claimed)

    def _output_of(self, source: Path) -> Path:
        s = self.settings
        outbox = manifest.payload(s.outbox) if s.output.manifest else s.outbox
        if source.suffix.lower() == ".dac":
            return mirror(source, s.inbox, outbox, "." + s.output.format)
        return mirror(source, s.inbox, outbox, ".dac")

    def _convert(self, source: Path, job: Job) -> Result:
        s = self.settings
        check_regular_file(source)
        target = self._reserve(source, job)
        if self.current is not None:
            self.current.target = target
            self.current.total_s = audio_length(source)  # a regular file in the inbox: its header only
        check = functools.partial(self._before_rename, source, job)
        if source.suffix.lower() == ".dac":
            fmt = OutputFormat(s.output.format, s.output.sample_format)
            return decode_file(
                self.pool,
                source,
                target,
                fmt,
                resample=s.output.resample,
                progress=self._tick,
                before_rename=check,
                written=self._finishing,
            )
        return encode_file(
            self.pool,
            source,
            target,
            s.codec.codebooks,
            progress=self._tick,
            before_rename=check,
            written=self._finishing,
            code_format=s.output.code_format,
            quality=s.codec.quality,
            min_quality_db=s.codec.min_quality,
        )

    def _settle(self, job: Job, source: Path, exc: Exception, wall: float) -> None:
        """The one place where a failure becomes quarantine, retry or giving up.

        :func:`dacwatch.faults.classify` names the class. Only the file's own faults
        quarantine it. Faults of the moment (out of memory, any error of the file
        system: disk full, read-only, permissions, a folder at the output's name; a
        model not available now) are retried with backoff and counted in
        ``dacwatch_faults``; so is anything unexpected (a bug, a configuration the checks
        missed), which is logged with its traceback. After ``retry.max_attempts`` the
        job gives up and the file stays where it is (``dacwatch retry`` takes it up
        again); several unexpected failures in a row stop this worker.
        """
        s = self.settings
        error = " ".join(str(exc).split()) or type(exc).__name__
        fields = dict(source=str(source), error=error, attempts=job.attempts, wall_s=round(wall, 3))
        if isinstance(exc, OutOfMemoryError):
            release_frames(exc)  # the failed pass's tensors, before the cache is emptied
            if self.metrics is not None:
                self.metrics.out_of_memory.labels(self.device).inc()
            shrunk = self.pool.shrink(self.current.generation if self.current is not None else None)
            self.log.warning("job.out_of_memory", geometry=shrunk or "smallest", **fields)
            if shrunk:  # a smaller batch or window: again at once, the attempt not counted
                self._record(self.queue.retry_later, job.id, error, 0.0, False)
                self.log.info("job.retry_scheduled", delay_s=0.0, transient=True, **fields)
                return
        if isinstance(exc, ModelMismatchError):  # the host's weights, not the file: retrying cannot help
            self.unexpected_in_a_row = 0
            self._record(self.queue.fail, job.id, f"gave up: {error}")
            self._count(source, "gave_up")
            self.log.error("job.gave_up", kept=str(source), transient=False, **fields)
            return
        fault = classify(exc)
        if fault is Fault.FILE:
            self.unexpected_in_a_row = 0
            self._quarantine_job(job, source, error, fields)
            return
        transient = fault is Fault.MOMENT
        self._fault(exc)
        if transient:
            self.unexpected_in_a_row = 0
            if isinstance(exc, OSError):  # a call outside the seam: classified here, but say where
                self.log.warning("job.unclassified_os_error", exc_info=exc, **fields)
        else:
            self.unexpected_in_a_row += 1
            self.log.error("job.unexpected_error", exc_info=exc, in_a_row=self.unexpected_in_a_row, **fields)
        if job.attempts >= s.retry.max_attempts:
            self._record(self.queue.fail, job.id, f"gave up after {job.attempts} attempts: {error}")
            self._count(source, "gave_up")
            self.log.error("job.gave_up", kept=str(source), transient=transient, **fields)
            return
        delay = s.retry.delay(job.attempts)
        self._record(self.queue.retry_later, job.id, error, delay)
        self.log.warning("job.retry_scheduled", delay_s=delay, transient=transient, fault=label(exc), **fields)

    def _fault(self, exc: BaseException) -> None:
        """Count a failure that kept the file, by its class and label (``ENOSPC``)."""
        if self.metrics is not None:
            self.metrics.faults.labels(classify(exc).name.lower(), label(exc)).inc()

    def _quarantine_job(self, job: Job, source: Path, error: str, fields: dict[str, Any]) -> None:
        try:
            note = self.quarantine(source, error, job.attempts)
        except Exception as move_exc:
            # Whatever stops the move (a full or read-only failed/, a name too long, a
            # special file that cannot cross file systems, a bug), the file stays where
            # it is and the worker serves on: retried later, then given up, never lost.
            why = f"{error}; quarantine failed: {' '.join(str(move_exc).split())}"
            self._fault(move_exc)
            if job.attempts >= self.settings.retry.max_attempts:
                self._record(self.queue.fail, job.id, f"gave up after {job.attempts} attempts: {why}")
                self._count(source, "gave_up")
                self.log.error("job.gave_up", kept=str(source), transient=True, **{**fields, "error": why})
                return
            delay = self.settings.retry.delay(job.attempts)
            self._record(self.queue.retry_later, job.id, why, delay)
            self.log.error("job.quarantine_failed", delay_s=delay, **{**fields, "error": why})
            return
        # Where this version went (x.1.wav when x.wav was taken), for retry.
        away = os.path.relpath(note.with_name(note.name.removesuffix(".error.json")), self.settings.failed)
        self._record(self.queue.fail, job.id, error, quarantined=away)
        self._count(source, "failed")
        self.log.error("job.failed", quarantined=str(note), **fields)

    # ------------------------------------------------------------------ moving sources

    def _dispose(self, source: Path, job_identity: Identity) -> None:
        s = self.settings
        if s.on_success == "keep":
            return
        if s.on_success == "delete":
            # Renamed aside first (a name the watcher ignores), checked there, then deleted:
            # a writer that reopens the file by name meanwhile makes a new file, never
            # loses its data to the unlink.
            aside = temp_name(source, "delete")
            try:
                fsops.rename(source, aside)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise os_fault(exc, f"cannot delete {source}") from exc
            why: Exception
            try:
                if self._version(aside) == job_identity:
                    fsops.unlink(aside)
                    return
                why = SourceChanged(f"{source} changed as it was to be deleted")
            except OSError as exc:
                why = os_fault(exc, f"cannot delete {source}")
            except TransientError as exc:
                why = exc
            # Back under its name, kept (a hidden name would be swept at startup). Not a
            # call of the seam: undoing our own rename is no work a fault should refuse.
            with contextlib.suppress(OSError):
                os.rename(aside, source)
            raise why
        move_within(source, unique(mirror(source, s.inbox, s.done)))

    def quarantine(self, source: Path, error: str, attempts: int) -> Path:
        """Move the source to the failed folder (mirrored) with ``<name>.error.json`` beside it."""
        s = self.settings
        target = unique(mirror(source, s.inbox, s.failed))
        note = error_note(target)
        body = {
            "source": printable(source),
            "error": error,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "attempts": attempts,
            "dacwatch_version": __version__,
        }
        with atomic_output(note) as tmp, fsops.open_write(tmp) as f:
            f.write((json.dumps(body, indent=2) + "\n").encode())
        try:
            if os.path.lexists(source):
                move_within(source, target)
        except BaseException:
            discard(note)  # no note for a file that is not there
            raise
        return note


CRASH_AT = "DACWATCH_CRASH_AT"


def crash_point(step: str) -> None:
    """Die here at once, as ``kill -9`` would, when ``$DACWATCH_CRASH_AT`` names this step:
    the recovery tests restart from each step between the rename of the output and the
    record of the job, which random kills almost never hit."""
    if os.environ.get(CRASH_AT) == step:
        os._exit(86)


def release_frames(exc: BaseException) -> None:
    """Drop the local variables of the frames an exception (and its causes) passed
    through: after running out of memory they hold the failed pass's tensors."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


def output_identity(path: Path) -> Identity | None:
    """The identity of the output just renamed into place (None if it is gone already)."""
    try:
        return identity(path)
    except FileNotFoundError:
        return None


def drop_output(path: Path, mine: Identity | None) -> bool:
    """Unlink ``path`` only if it is still the file this worker wrote (``mine``): while a
    lane or host stalled after its rename, a newer version of the source may have been
    converted under the same name, and that output is not this worker's to delete."""
    if mine is None or output_identity(path) != mine:
        return False
    with contextlib.suppress(FileNotFoundError):
        fsops.unlink(path)
    return True


def error_note(target: Path) -> Path:
    """The ``.error.json`` note beside a quarantined ``target`` (fitted to the folder's limit)."""
    return fit_path(target.with_name(target.name + ERROR_NOTE), suffix=ERROR_NOTE)


def unique(path: Path) -> Path:
    """``path``, or ``name.1.ext``, ``name.2.ext``... if taken (each fitted to the folder's limit)."""
    if not os.path.lexists(path):
        return path
    for i in range(1, 100000):
        candidate = fit_path(path.with_name(f"{path.stem}.{i}{path.suffix}"))
        if not os.path.lexists(candidate):
            return candidate
    raise TransientError(f"no free name for {path}")


def move_within(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` without ever opening it; across file systems a
    regular file is copied durably (:func:`~dacwatch.fsio.move_across`), a special file
    cannot be (a fault of the moment: the folders' layout, not the file, is at fault)."""
    ensure_dir(target.parent)
    try:
        fsops.rename(source, target)
        return
    except OSError as exc:
        if not crosses_devices(exc):
            raise os_fault(exc, f"cannot move {source} to {target}") from exc
        try:
            regular = stat.S_ISREG(os.lstat(source).st_mode)
        except OSError as gone:
            raise os_fault(gone, f"cannot move {source}") from gone
        if not regular:
            raise FileSystemFault(
                f"cannot move the special file {source} to {target}: another file system (EXDEV)", "EXDEV"
            ) from exc
    move_across(source, target)


def retry(settings: Settings, queue: BaseQueue, path: str | None) -> tuple[int, int]:
    """Re-queue failed jobs and move their sources back from the failed folder.

    ``path``: a source's name in the inbox, or the name a quarantined version has
    in the failed folder. Each version comes back from where it was quarantined; one
    whose name another version now holds in the inbox comes back beside it under a
    free name (a job of its own, queued by the watcher). Returns (jobs re-queued,
    files moved back).
    """
    failed = [j for j in queue.jobs(Status.FAILED) if path is None or path in (j.path, j.quarantined)]
    again: list[int] = []
    renamed: list[int] = []
    moved = 0
    for job in failed:
        home = settings.inbox / job.path
        away = settings.failed / (job.quarantined or job.path)
        if not os.path.lexists(away):
            again.append(job.id)  # kept in the inbox (gave up on a fault of the moment)
            continue
        target = unique(home)
        move_within(away, target)
        moved += 1
        (again if target == home else renamed).append(job.id)
        with contextlib.suppress(FileNotFoundError):
            error_note(away).unlink()
    count = queue.retry_failed(ids=again)
    count += sum(queue.drop(job_id) for job_id in renamed)  # the watcher queues it under its new name
    return count, moved
