"""What happened to a job that was interrupted: the table (dacwatch.daemon.interrupted) for
every combination of what can be known, against the promises written out one by one; and
each row shown to matter. The worker's use of it is exercised end to end by
test_crashes (a crash at each step), test_queue_moves (takeovers) and test_delivery
(sources changed while converted)."""

from __future__ import annotations

import itertools

import pytest

from dacwatch.daemon.interrupted import TABLE, Act, Facts, Row, Source, When, decide


def every_fact() -> list[Facts]:
    out = []
    for when, source, crashed, loop, held, output in itertools.product(
        When, Source, (False, True), (False, True), (False, True), (False, True)
    ):
        if when is When.TAKEN and not held:
            continue  # a job just leased is held
        if loop and not crashed:
            continue  # only crashes loop
        out.append(Facts(when, source, crashed, loop, held, output))
    return out


def promised(f: Facts) -> Act:
    """The promises, one sentence each (not the ordered table)."""
    if f.when is When.TAKEN:
        # Killed after the rename and before recording: the work is done, record it.
        if f.source is Source.GONE:
            return Act.RECORD_DONE if f.crashed and f.output_in_place else Act.DROP
        # Never read a symlink leading out; never convert another version than the job's.
        if f.source in (Source.OUTSIDE, Source.CHANGED):
            return Act.DROP
        # Stop a crash loop: the file's fault.
        return Act.GIVE_UP if f.crash_loop else Act.CONVERT
    # A job another node holds now is its to finish: change nothing.
    if not f.lease_held:
        return Act.LEAVE
    if f.source is Source.SAME:
        return Act.FINISH
    # A holder thought dead finished it meanwhile: keep its output, record it done.
    if f.source is Source.GONE and f.crashed and f.output_in_place:
        return Act.RECORD_DONE
    # Otherwise the output is of a version that is no more (the log says which way).
    return Act.DROP_OUTPUT


def kept(f: Facts, row: Row) -> bool:
    """``row`` keeps the promise for ``f``: the act, and for a dropped output the reason."""
    act = promised(f)
    if row.act is not act:
        return False
    if act is Act.DROP_OUTPUT:
        return ("changed" if f.source is Source.CHANGED else "vanished") in row.reason
    return True


def test_every_situation_gets_the_promised_act() -> None:
    cases = every_fact()
    assert len(cases) > 60
    wrong = [(f, decide(f).act) for f in cases if not kept(f, decide(f))]
    assert wrong == []
    assert {decide(f).reason for f in cases} == {row.reason for row in TABLE}  # no dead row


@pytest.mark.parametrize("index", range(len(TABLE)), ids=lambda i: f"{TABLE[i].when.value}: {TABLE[i].reason[:40]}")
def test_every_row_matters(index: int) -> None:
    """Drop any one row (the catch-all rows replaced by their moment's next best) and some
    situation gets another act than promised."""
    fewer = TABLE[:index] + TABLE[index + 1 :]
    broken = []
    for f in every_fact():
        try:
            if not kept(f, decide(f, fewer)):
                broken.append(f)
        except AssertionError:  # no row left for this moment
            broken.append(f)
    assert broken


def test_events_are_the_ones_the_logs_promise() -> None:
    events = {row.event for row in TABLE} - {None}
    assert events == {"job.recovered_done", "job.vanished", "job.ignored", "job.superseded", "job.lease_lost"}
