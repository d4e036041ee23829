"""Every block of commands the docs mark runnable is run, so the docs cannot drift.

A fenced block right after a line ``<!-- runnable -->`` in README.md or docs/*.md runs
in a fresh folder holding ``weights.pth`` (a tiny DAC network with random weights)
and ``talk.wav`` (two seconds of tones): ``sh`` blocks with bash (``set -e``, this
venv's ``dacwatch`` first on PATH), ``python`` blocks with this interpreter. Exit 0 or
the test fails with what the block printed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .daemon import wav

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^<!-- runnable -->\n```(sh|python)\n(.*?)^```", re.M | re.S)


def runnable_blocks() -> list[tuple[str, int, str, str]]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for m in BLOCK.finditer(text):
            line = text[: m.start()].count("\n") + 1
            found.append((doc.relative_to(ROOT).as_posix(), line, m.group(1), m.group(2)))
    return found


BLOCKS = runnable_blocks()


def test_the_docs_have_runnable_blocks() -> None:
    assert len(BLOCKS) >= 2  # the marker and the pattern still meet


@pytest.mark.parametrize(("doc", "line", "language", "body"), BLOCKS, ids=[f"{d}:{n}" for d, n, _, _ in BLOCKS])
def test_a_runnable_block_runs(
    doc: str, line: int, language: str, body: str, tmp_path: Path, tiny_weights: Path
) -> None:
    shutil.copy(tiny_weights, tmp_path / "weights.pth")
    wav(tmp_path / "talk.wav", seconds=2.0, rate=44100)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cmd = ["bash", "-e", "-c", body] if language == "sh" else [sys.executable, "-c", body]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, f"{doc}:{line} failed:\n{body}\n--- output\n{out.stdout}\n{out.stderr}"
