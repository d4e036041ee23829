"""Crashes at the worst moments: kill -9 in the middle of a long decode (CLI and
daemon), and a process that dies at each step between the output's rename and the
job's record (``$DACWATCH_CRASH_AT``), restarted from there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from dacwatch.formats.container import read
from dacwatch.fsio import TEMP_PREFIX
from dacwatch.queue.sqlite import JobQueue

from .daemon import Daemon, wav

CLI = [sys.executable, "-m", "dacwatch"]


@pytest.fixture(scope="module")
def long_dac(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Path:
    """30 s of stereo codes: decoding them in 0.05 s windows takes seconds."""
    folder = tmp_path_factory.mktemp("long")
    source = wav(folder / "long.wav", seconds=30.0, rate=44100, channels=2)
    subprocess.run([*CLI, "encode", str(source), str(folder / "long.dac"), "--weights", str(tiny_weights)], check=True)
    return folder / "long.dac"


def wait_for_temp_file(folder: Path, proc: subprocess.Popen[bytes] | None, timeout: float = 60.0) -> None:
    """Until the output is being written (its temporary file, or any file, exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.is_dir() and any(p.is_file() and p.stat().st_size > 0 for p in folder.rglob("*")):
            return
        assert proc is None or proc.poll() is None, "finished before it could be killed"
        time.sleep(0.02)
    raise AssertionError("no temporary output appeared")


def test_kill_9_during_a_cli_decode_leaves_no_file_under_the_final_name(
    tmp_path: Path, long_dac: Path, tiny_weights: Path
) -> None:
    out = tmp_path / "out" / "long.wav"
    proc = subprocess.Popen(
        [*CLI, "decode", str(long_dac), str(out), "--weights", str(tiny_weights), "--window", "0.05"],
        stderr=subprocess.DEVNULL,
    )
    wait_for_temp_file(out.parent, proc)
    time.sleep(0.5)  # well into writing the audio
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    left = [p.name for p in out.parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(TEMP_PREFIX), left  # the killed run's temporary file
    # Run again: the dead writer's temporary file is swept, the output is whole.
    again = subprocess.run(
        [*CLI, "decode", str(long_dac), str(out), "--weights", str(tiny_weights)], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "removed 1 temporary file(s) a killed dacwatch left behind" in again.stderr
    assert sf.info(str(out)).frames == read(long_dac).metadata.model_length
    assert [p.name for p in out.parent.iterdir()] == ["long.wav"]


def test_a_live_writers_temporary_file_is_never_swept(tmp_path: Path) -> None:
    """Only a dead process of this host: a live one's file (this test's), and one whose tag
    names another host, stay."""
    from dacwatch.fsio import sweep_dead_writers, temp_beside, writer_tag

    live = temp_beside(tmp_path / "a.wav")
    live.write_bytes(b"being written")
    other_host = tmp_path / f"{TEMP_PREFIX}p999999@000000-abcdef-b.wav"
    other_host.write_bytes(b"another host's")
    dead = tmp_path / f"{TEMP_PREFIX}p999999@{writer_tag().split('@')[1]}-abcdef-c.wav"
    dead.write_bytes(b"left by kill -9")
    assert sweep_dead_writers(tmp_path) == [dead]
    assert live.exists() and other_host.exists() and not dead.exists()


@pytest.mark.parametrize("daemon", [{"codec__decode_window_s": 0.05}], indirect=True)
def test_kill_9_during_a_daemon_decode_leaves_no_file_under_the_final_name(daemon: Daemon, long_dac: Path) -> None:
    daemon.start().ready()
    (daemon.inbox / "long.dac").write_bytes(long_dac.read_bytes())
    wait_for_temp_file(daemon.outbox, daemon.proc)
    time.sleep(0.5)
    daemon.kill()
    assert not (daemon.outbox / "long.wav").exists()
    daemon.start().ready()
    daemon.wait_event("job.done", timeout=240)
    meta = read(long_dac).metadata
    assert sf.info(str(daemon.outbox / "long.wav")).frames == meta.length  # resampled back, whole
    assert daemon.temp_files() == [] and daemon.stop() == 0


@pytest.mark.parametrize("step", ["after_rename", "after_dispose", "after_commit"])
def test_a_crash_at_each_step_after_the_rename_is_recovered_once(daemon: Daemon, step: str) -> None:
    source = wav(daemon.inbox / "a.wav", seconds=1.0)
    original = source.read_bytes()
    daemon.start(env={"DACWATCH_CRASH_AT": step})
    daemon.ready()
    assert daemon.proc is not None and daemon.proc.wait(timeout=60) == 86  # died at that step
    assert (daemon.outbox / "a.dac").exists()  # the rename happened before each step
    daemon.start(env={"DACWATCH_CRASH_AT": ""}).ready()
    daemon.wait_for(
        lambda: JobQueue(daemon.state / "queue.sqlite3").counts()["done"] == 1, timeout=60, what="the job recorded"
    )
    time.sleep(1.0)  # a second conversion would show now
    recovered = daemon.events("job.recovered_done")
    assert len(recovered) == (1 if step == "after_dispose" else 0)
    # after_rename: the source was still in the inbox, so it is converted again (once).
    assert len(daemon.events("job.done")) == (1 if step == "after_rename" else 0)
    assert [p.name for p in daemon.done.iterdir()] == ["a.wav"] and (daemon.done / "a.wav").read_bytes() == original
    assert not (daemon.inbox / "a.wav").exists() and not daemon.events("job.failed")
    assert read(daemon.outbox / "a.dac").metadata.length == 16000
    assert daemon.stop() == 0
    assert os.listdir(daemon.outbox) == ["a.dac"]
