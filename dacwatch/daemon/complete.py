"""When is a file in the inbox complete? One rule, in one place, as a pure function.

:func:`judge` takes what is known of a candidate (:class:`Evidence`: what inotify
said, what the ``/proc`` writer scan saw, how long it has been unchanged, whether
it is a regular file) and returns take, wait or refuse with the reason. The rule
is the ordered table :data:`RULES`: the first row whose condition holds decides.
docs/service.md's list ("When is a file complete?") is generated from it
(``python -m dacwatch.daemon.complete``) and a test keeps the two equal.

A close event is lost only when the kernel's inotify queue overflows; then the
watcher forgets every pending file's events (:meth:`Debouncer.forget_events`), so
those files are judged by the writer scan and the settle time, never held for
good by a "modified, not closed" that no close will ever clear.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class Verdict(enum.Enum):
    TAKE = "take"  # complete: submit it
    WAIT = "wait"  # look again later
    REFUSE = "refuse"  # never a conversion: submitted at once, the worker refuses it with the reason


class Scan(enum.Enum):
    """What the ``/proc`` writer scan (as ``fuser`` does) saw of this file."""

    NONE = "none"  # no scan (watch.writer_check = false)
    WRITER = "writer"  # a process holds it open for writing
    CLEAR = "clear"  # every process was visible, and none holds it open for writing
    CLEAR_PARTIAL = "clear_partial"  # no writer among the processes visible, but not all were


@dataclass(frozen=True)
class Evidence:
    """Everything the rule looks at, for one candidate at one moment."""

    regular: bool  # a regular file (a FIFO or a device is never audio to convert)
    empty: bool  # size 0
    quiet: bool  # size and mtime unchanged for a moment (watcher.QUIET_S, or settle_s if shorter)
    settled: bool  # size and mtime unchanged for watch.settle_seconds
    events: bool  # inotify reported opens or closes of this file (not in polling mode)
    writing: bool  # modified since a writer last closed it
    closed: bool  # a writer closed it, or it was renamed into place
    open_elsewhere: bool  # more opens than closes seen
    scan: Scan


@dataclass(frozen=True)
class Rule:
    when: str  # the condition, as docs/service.md says it
    verdict: Verdict
    reason: str  # what the watcher logs
    holds: Callable[[Evidence], bool]


RULES: tuple[Rule, ...] = (
    Rule(
        "it is a FIFO, a device or a socket",
        Verdict.REFUSE,
        "not a regular file",
        lambda e: not e.regular,
    ),
    Rule("it is empty", Verdict.WAIT, "empty", lambda e: e.empty),
    Rule(
        "its size or mtime changed within the last moment",
        Verdict.WAIT,
        "changing",
        lambda e: not e.quiet,
    ),
    Rule(
        "inotify saw it modified and not closed since (a writer between writes, however long it stalls; "
        "trusted over a scan, which cannot see a writer in another PID namespace)",
        Verdict.WAIT,
        "being written",
        lambda e: e.writing,
    ),
    Rule(
        "the writer scan sees a process holding it open for writing",
        Verdict.WAIT,
        "open for writing",
        lambda e: e.scan is Scan.WRITER,
    ),
    Rule(
        "the writer scan saw every process and none holds it open for writing",
        Verdict.TAKE,
        "no writer",
        lambda e: e.scan is Scan.CLEAR,
    ),
    Rule(
        "inotify saw its writer close it (or it was renamed into place) and nothing else has it open",
        Verdict.TAKE,
        "closed after writing",
        lambda e: e.events and e.closed and not e.open_elsewhere,
    ),
    Rule(
        "its size and mtime held still for watch.settle_seconds (where writers cannot be seen: "
        "polling on a network share, a file found by a scan with no events)",
        Verdict.TAKE,
        "settled",
        lambda e: e.settled,
    ),
    Rule("otherwise", Verdict.WAIT, "not settled yet", lambda e: True),
)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


def judge(evidence: Evidence, rules: tuple[Rule, ...] = RULES) -> Judgement:
    """Take, wait or refuse ``evidence``'s file: the first of ``rules`` that holds decides."""
    for rule in rules:
        if rule.holds(evidence):
            return Judgement(rule.verdict, rule.reason)
    return Judgement(Verdict.WAIT, "no rule")


def readme_list() -> str:
    """docs/service.md's list of the rule, generated from :data:`RULES` (tests/test_complete.py keeps them equal)."""
    lines = ["In order, the first that holds decides:", ""]
    for i, rule in enumerate(RULES, 1):
        lines.append(f"{i}. {rule.when[0].upper()}{rule.when[1:]}: **{rule.verdict.value}** (`{rule.reason}`).")
    return "\n".join(lines)


if __name__ == "__main__":
    print(readme_list())
