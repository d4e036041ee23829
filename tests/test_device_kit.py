"""The GPU device kit, dry-run on the CPU with the tiny network, so it does not rot
between the sessions that are lent a GPU (bench/README.md, "GPU")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_device_kit_dry_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = _kit(tmp_path, out)
    for step in ("env", "tests", "variants", "bench", "daemon"):
        assert f"{step}: exit 0 in" in summary, summary + (out / "steps.log").read_text()[-3000:]
    # What comes back from a device call: at most 8 files, none deeper than two folders.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    bench = json.loads(next(out.glob("cpu-*.json")).read_text())
    assert bench["complete"] and bench["runs"]["encode/dacwatch"]["frames_differing"] == 0
    assert {row["precision"] for row in bench["precision"]} == {"float32", "bf16"}
    exact = next(r for r in bench["precision"] if r["precision"] == "float32" and r["approach"] == "dacwatch")
    assert exact["frames_differing_from_cpu_float32"] == 0 and exact["frames_chunked_vs_whole_on_device"] == 0
    daemon = json.loads(next(out.glob("daemon-cpu-*.json")).read_text())
    assert daemon["daemon"]["files_done"] == 3 and daemon["daemon"]["finished"]
    # one file at a time, then the device's default: before and after, in one call
    assert [r["geometry"]["jobs_at_once"] for r in daemon["daemon_runs"]] == [1, 2]
    assert all(r["files_done"] == 3 for r in daemon["daemon_runs"])
    assert daemon["codec_only"]["x_realtime"] > 0
    candidates = json.loads(next(out.glob("variants-cpu-*.json")).read_text())
    names = [row["variant"] for row in candidates["rows"] if row["approach"] == "dacwatch"]
    assert names == ["cudnn", "fused-snake", "tf32x3", "tf32x3+fused-snake"]
    assert candidates["chosen"]["float32"]["frames_chunked_vs_whole_on_device"] == 0
    # The profile and the daemon decoding, asked for by name (a second call in a session).
    again = tmp_path / "again"
    summary = _kit(tmp_path, again, "--steps", "profile daemon-decode")
    assert "profile: exit 0 in" in summary and "daemon-decode: exit 0 in" in summary, summary
    assert "tests:" not in summary and "daemon:" not in summary, summary
    assert len(list(again.glob("profile-*.md"))) == 1
    written = list(again.glob("daemon-decode-cpu-*.json"))
    assert len(written) == 1, (summary, sorted(p.name for p in again.iterdir()))
    decoding = json.loads(written[0].read_text())
    assert decoding["direction"] == "decode"
    assert [r["files_done"] for r in decoding["daemon_runs"]] == [3, 3]
    assert all(r["finished"] and r["files_failed"] == 0 for r in decoding["daemon_runs"])
    assert decoding["codec_only"]["files"] == 2 and decoding["codec_only"]["x_realtime"] > 0


def _kit(tmp_path: Path, out: Path, *extra: str) -> str:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "KIT_WHEELS": str(tmp_path / "no-wheels")}
    proc = subprocess.run(
        [str(ROOT / "bench" / "device" / "run"), "--device", "cpu", "--tiny", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (out / "summary.txt").read_text()


def test_device_kit_fails_fast_without_out() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(
        [str(ROOT / "bench" / "device" / "run"), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "OUT must name the folder" in proc.stderr
