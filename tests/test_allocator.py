"""The allocator setting that spares every window its page faults (dacwatch/allocator.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# A worker thread allocating and freeing what a codec pass does: blocks of a few MB, over and over.
PROBE = """
import json, resource, sys, threading
import numpy as np
if sys.argv[1] == "cli":
    import dacwatch.allocator, dacwatch.cli
    dacwatch.cli.main(["info", "/nonexistent.dac"])
    tuned = dacwatch.allocator._done
else:
    import dacwatch.allocator
    tuned = dacwatch.allocator.tune()
faults = []
def work():
    for _ in range(3):  # warm
        [np.ones(2_000_000, np.float32) for _ in range(4)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        [np.ones(2_000_000, np.float32) for _ in range(4)]
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work); t.start(); t.join()
print(json.dumps({"tuned": tuned, "faults": faults[0]}))
"""


def _probe(how: str, allocator: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if allocator is not None:
        env["DACWATCH_ALLOCATOR"] = allocator
    out = subprocess.run([sys.executable, "-c", PROBE, how], env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_memory_instead_of_faulting_it_in_again() -> None:
    tuned = _probe("library", None)
    system = _probe("library", "system")
    assert tuned["tuned"] is True and system["tuned"] is False
    # 40 rounds of 32 MB: with glibc's defaults every round maps fresh pages (about 7,800
    # faults a round); tuned, the heap's pages are reused.
    assert isinstance(system["faults"], int) and system["faults"] > 40 * 1000, system
    assert isinstance(tuned["faults"], int) and tuned["faults"] < 1000, tuned


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_command_line_tunes_it_before_anything_else() -> None:
    assert _probe("cli", None)["tuned"] is True
    assert _probe("cli", "system")["tuned"] is False
