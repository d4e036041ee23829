"""When is a file complete: the rule (dacwatch/daemon/complete.py) over every combination of what
can be known, against the promise stated independently; the debouncer forgetting lost
events; and docs/service.md's list equal to the rule's table."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dacwatch.daemon.complete import RULES, Evidence, Scan, Verdict, judge, readme_list
from dacwatch.daemon.watcher import Debouncer, IgnoreRules, Seen, Watcher
from dacwatch.fsio import Identity

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("regular", "empty", "quiet", "settled", "events", "writing", "closed", "open_elsewhere")


def possible(e: Evidence) -> bool:
    """Combinations that can occur: settled implies quiet; without events, inotify said nothing."""
    if e.settled and not e.quiet:
        return False
    return e.events or not (e.writing or e.closed or e.open_elsewhere)


def every_evidence() -> list[Evidence]:
    out = []
    for values in itertools.product((False, True), repeat=len(FLAGS)):
        for scan in Scan:
            e = Evidence(**dict(zip(FLAGS, values, strict=True)), scan=scan)
            if possible(e):
                out.append(e)
    return out


def promised(e: Evidence) -> Verdict:
    """The promise in README's words, written as one formula (not as the ordered table)."""
    if not e.regular:
        return Verdict.REFUSE
    unsafe = e.empty or not e.quiet or e.writing or e.scan is Scan.WRITER
    safe = e.scan is Scan.CLEAR or (e.events and e.closed and not e.open_elsewhere) or e.settled
    return Verdict.TAKE if safe and not unsafe else Verdict.WAIT


def test_the_rule_keeps_the_promise_for_every_combination() -> None:
    cases = every_evidence()
    assert len(cases) > 300
    wrong = [(e, judge(e)) for e in cases if judge(e).verdict is not promised(e)]
    assert wrong == []
    # Every row of the table decides some case (none is dead).
    reasons = {judge(e).reason for e in cases}
    assert reasons == {rule.reason for rule in RULES}


@pytest.mark.parametrize("row", range(len(RULES) - 1), ids=lambda i: RULES[i].reason)
def test_every_row_matters(row: int) -> None:
    """Drop any one row and some combination breaks the promise: the test above fails
    for each such plant."""
    fewer = RULES[:row] + RULES[row + 1 :]
    assert any(judge(e, fewer).verdict is not promised(e) for e in every_evidence())


def test_readme_lists_the_rule_as_the_code_has_it() -> None:
    text = (ROOT / "docs" / "service.md").read_text()
    assert readme_list() in text
    out = subprocess.run([sys.executable, "-m", "dacwatch.daemon.complete"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == readme_list()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lost_events_never_hold_a_file_for_good() -> None:
    """A writer's close lost with an inotify overflow: 'modified, not closed' would hold the
    file forever; once the events are forgotten, the settle time takes it."""
    clock, path = Clock(), Path("/inbox/talk.wav")
    ident = Identity(size=100, mtime_ns=1, inode=7)
    d = Debouncer(settle_s=2.0, clock=clock, probe=lambda _p: ident, writers=None)
    d.seen(path, Seen.OPENED)
    d.seen(path, Seen.MODIFIED)
    clock.now = 3600.0
    assert d.due() == []  # an hour later: still 'being written'
    d.forget_events()
    assert d.due() == [(path, ident)]  # settled long ago


def test_an_inotify_overflow_makes_the_watcher_forget_events(tmp_path: Path) -> None:
    """watchdog reports IN_Q_OVERFLOW only by logging it: the watcher hears that record
    and forgets what inotify said of pending files, which are then judged by the settle
    time as on a share that sends no events (writer scan off here, so that is all)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    talk = inbox / "talk.wav"
    submitted: list[Path] = []
    watcher = Watcher(IgnoreRules(inbox), lambda p, _i: submitted.append(p), settle_s=0.2, writer_check=False)
    watcher.start()
    try:
        time.sleep(0.5)  # the observer is watching
        with open(talk, "wb") as writer:  # modified, and (as far as inotify knows) never closed
            writer.write(b"RIFF" + bytes(100))
            writer.flush()
            time.sleep(1.5)
            assert submitted == []  # held: 'being written'
            logging.getLogger("watchdog.observers.inotify_c").warning(
                "Inotify queue overflowed; filesystem events were lost"
            )
            deadline = time.monotonic() + 10
            while not submitted and time.monotonic() < deadline:
                time.sleep(0.05)
            assert submitted == [talk]
    finally:
        watcher.stop()
        watcher.join(10)
