"""What happened to a job, and what the worker does about it: one table.

A job is looked at twice: when it is **taken** (leased, before converting), and once
it is **converted** (its output written: just before the output's rename, and again
after it, before the source is moved or deleted). What is known then
(:class:`Facts`: is the source still the version the job names, did the job's last
holder die, does this worker still hold the lease, is the output it claimed in place)
goes through :data:`TABLE`; the first row that holds says what to do (:class:`Act`)
and what to log. Crash recovery (a holder killed between the rename and recording
it), lease takeover (another node's job now) and a source that changed or vanished
are rows of this one table, each tested in ``tests/test_interrupted.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class When(enum.Enum):
    TAKEN = "taken"  # leased, nothing converted yet
    CONVERTED = "converted"  # the output is written (before or after its rename)


class Source(enum.Enum):
    SAME = "same"  # the version the job names
    CHANGED = "changed"  # another version under the same name
    GONE = "gone"  # no file under the name
    OUTSIDE = "outside"  # a symlink leading out of the inbox: never read, never moved


class Act(enum.Enum):
    CONVERT = "convert"
    FINISH = "finish"  # move or delete the source, record the job done
    RECORD_DONE = "record done"  # an earlier holder did the work: record it, keep its output
    DROP = "drop"  # forget the job: the watcher submits whatever is under the name now
    DROP_OUTPUT = "drop output"  # this worker's output is of a version that is no more: unlink it (if still
    # ours), then forget the job
    GIVE_UP = "give up"  # the daemon died converting it, attempt after attempt: the file's fault
    LEAVE = "leave"  # another node holds the job now: change nothing, the queue is its to update


@dataclass(frozen=True)
class Facts:
    when: When
    source: Source
    crashed: bool  # the job's last holder died with it (recovered at boot, or taken over)
    crash_loop: bool  # ... more often than retry.max_attempts
    lease_held: bool  # this worker still holds the job
    output_in_place: bool  # the output the job claimed exists


@dataclass(frozen=True)
class Row:
    when: When
    holds: Callable[[Facts], bool]
    act: Act
    event: str | None  # the log event (None: the caller's own line)
    reason: str


TABLE: tuple[Row, ...] = (
    # Taken: is the job's file still there, as it was?
    Row(
        When.TAKEN,
        lambda f: f.source is Source.GONE and f.crashed and f.output_in_place,
        Act.RECORD_DONE,
        "job.recovered_done",
        "killed between the output's rename (and the source's move) and recording it: the work is done",
    ),
    Row(When.TAKEN, lambda f: f.source is Source.GONE, Act.DROP, "job.vanished", "the source is gone"),
    Row(
        When.TAKEN,
        lambda f: f.source is Source.OUTSIDE,
        Act.DROP,
        "job.ignored",
        "symlink pointing outside the inbox",
    ),
    Row(
        When.TAKEN,
        lambda f: f.source is Source.CHANGED,
        Act.DROP,
        "job.superseded",
        "changed before it was taken",
    ),
    Row(
        When.TAKEN,
        lambda f: f.crashed and f.crash_loop,
        Act.GIVE_UP,
        None,
        "the daemon died converting this file on every attempt",
    ),
    Row(When.TAKEN, lambda f: True, Act.CONVERT, None, "the version the job names"),
    # Converted: may the output stay, and the source go?
    Row(
        When.CONVERTED,
        lambda f: not f.lease_held,
        Act.LEAVE,
        "job.lease_lost",
        "the lease expired and another node took the job over",
    ),
    Row(When.CONVERTED, lambda f: f.source is Source.SAME, Act.FINISH, None, "the version converted is still there"),
    Row(
        When.CONVERTED,
        lambda f: f.source is Source.GONE and f.crashed and f.output_in_place,
        Act.RECORD_DONE,
        "job.recovered_done",
        "a holder thought dead finished the job meanwhile: its output is a whole conversion of this version",
    ),
    Row(
        When.CONVERTED,
        lambda f: f.source is Source.CHANGED,
        Act.DROP_OUTPUT,
        "job.superseded",
        "changed while it was converted",
    ),
    Row(When.CONVERTED, lambda f: True, Act.DROP_OUTPUT, "job.superseded", "vanished while it was converted"),
)


def decide(facts: Facts, table: tuple[Row, ...] = TABLE) -> Row:
    """The first row of ``table`` for ``facts.when`` that holds."""
    for row in table:
        if row.when is facts.when and row.holds(facts):
            return row
    raise AssertionError(f"no row for {facts}")  # every moment ends in a catch-all row


__all__ = ["TABLE", "Act", "Facts", "Row", "Source", "When", "decide"]
