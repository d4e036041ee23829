"""End to end: the real daemon as a subprocess, real folders, real signals, a real notify socket."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dacwatch.formats.container import read
from dacwatch.fsio import TEMP_PREFIX

from .conftest import tone
from .daemon import Daemon, wav


def test_present_moved_renamed_bad_and_decoded_files(daemon: Daemon, tmp_path: Path) -> None:
    wav(daemon.inbox / "before.wav")
    daemon.start().ready()
    outside = wav(tmp_path / "staging" / "moved.wav")
    os.rename(outside, daemon.inbox / "moved.wav")
    wav(tmp_path / "staging" / "r.wav")
    (daemon.inbox / "sub").mkdir()
    shutil.copy(tmp_path / "staging" / "r.wav", daemon.inbox / "sub" / "renamed.wav.part")
    os.rename(daemon.inbox / "sub" / "renamed.wav.part", daemon.inbox / "sub" / "renamed.wav")
    (daemon.inbox / "broken.wav").write_text("not audio at all\n" * 10)
    daemon.wait_event("job.done", 3)
    daemon.wait_event("job.failed", 1)
    for name in ("before.dac", "moved.dac", "sub/renamed.dac"):
        assert read(daemon.outbox / name).metadata.sample_rate == 16000
    assert (daemon.done / "sub" / "renamed.wav").exists()  # source moved to done, mirrored
    note = (daemon.failed / "broken.wav.error.json").read_text()
    assert "not audio" in note and (daemon.failed / "broken.wav").exists()
    # a .dac dropped in comes back as audio at the original rate and length
    shutil.copy(daemon.outbox / "moved.dac", daemon.inbox / "back.dac")
    daemon.wait_event("job.done", 4)
    info = sf.info(str(daemon.outbox / "back.wav"))
    assert (info.samplerate, info.frames) == (16000, 8000)
    done = daemon.events("job.done")[0]
    for key in ("source", "output", "kind", "audio_s", "wall_s", "rtf", "device", "attempts"):
        assert key in done
    assert daemon.stop() == 0
    assert daemon.temp_files() == []


def test_status_and_retry_work_against_the_state_of_a_running_daemon(daemon: Daemon) -> None:
    daemon.start().ready()
    (daemon.inbox / "bad.wav").write_bytes(b"\0" * 100)
    daemon.wait_event("job.failed")
    status = subprocess.run(
        [sys.executable, "-m", "dacwatch", "status", "--config", str(daemon.config), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"failed": 1' in status.stdout and "bad.wav" in status.stdout
    retried = subprocess.run(
        [sys.executable, "-m", "dacwatch", "retry", "--config", str(daemon.config), "--all"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "re-queued 1" in retried.stdout
    daemon.wait_event("job.failed", 2)  # taken again from the inbox, and quarantined again
    assert daemon.stop() == 0


def test_file_written_slowly_in_pieces_is_taken_only_when_complete(daemon: Daemon) -> None:
    daemon.start().ready()
    data = (tone(16000, 2.0, 1) * 32767).astype(np.int16)
    target = daemon.inbox / "slow.wav"
    with sf.SoundFile(str(target), "w", 16000, 1, subtype="PCM_16") as f:
        for i in range(0, len(data), 4000):  # a piece every 0.3 s, for longer than settle_seconds
            f.write(data[i : i + 4000])
            f.flush()
            time.sleep(0.3)
            assert daemon.events("job.queued") == []
    daemon.wait_event("job.done")
    assert read(daemon.outbox / "slow.dac").metadata.length == len(data)
    assert len(daemon.events("job.queued")) == 1
    daemon.stop()


@pytest.mark.parametrize("daemon", [{"watch__polling": True, "watch__poll_interval_s": 0.3}], indirect=True)
def test_polling_mode_converts_without_inotify(daemon: Daemon) -> None:
    daemon.start().ready()
    for i in range(5):
        wav(daemon.inbox / f"p{i}.wav")
    daemon.wait_event("job.done", 5)
    daemon.stop()


@pytest.mark.parametrize("daemon", [{"watch__settle_seconds": 0.3}], indirect=True)
def test_a_flood_of_200_files_is_converted_exactly_once(daemon: Daemon, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    for i in range(200):
        wav(staging / f"f{i:03d}.wav", seconds=0.1)
    daemon.start().ready()
    for p in sorted(staging.iterdir()):
        os.rename(p, daemon.inbox / p.name)
    done = daemon.wait_event("job.done", 200, timeout=240)
    time.sleep(1.5)  # any duplicate would show up now
    assert len(daemon.events("job.done")) == 200
    assert sorted(e["source"] for e in done) == sorted({e["source"] for e in done})
    assert len(list(daemon.outbox.glob("*.dac"))) == 200
    assert daemon.stop() == 0


@pytest.mark.parametrize("daemon", [{"stop_timeout_s": 0.5, "codec__encode_window_s": 0.2}], indirect=True)
def test_sigterm_during_a_job_requeues_it_and_exits_0(daemon: Daemon) -> None:
    wav(daemon.inbox / "long.wav", seconds=20.0, rate=44100, channels=2)
    daemon.start().ready()
    daemon.wait_event("job.queued")
    time.sleep(1.0)
    assert daemon.stop(signal.SIGTERM) == 0
    assert daemon.events("job.requeued")
    assert not (daemon.outbox / "long.dac").exists() and daemon.temp_files() == []
    assert (daemon.inbox / "long.wav").exists()
    daemon.start()
    daemon.wait_event("job.done", timeout=180)
    assert read(daemon.outbox / "long.dac").metadata.length == 20 * 44100
    assert daemon.stop() == 0


@pytest.mark.parametrize("daemon", [{"codec__encode_window_s": 0.2}], indirect=True)
def test_second_signal_stops_at_once_without_partial_output(daemon: Daemon) -> None:
    wav(daemon.inbox / "long.wav", seconds=20.0, rate=44100, channels=2)
    daemon.start().ready()
    daemon.wait_event("job.queued")
    time.sleep(1.0)
    daemon.send(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    assert daemon.stop(signal.SIGINT) == 0
    assert time.monotonic() - started < 10
    assert not (daemon.outbox / "long.dac").exists() and daemon.temp_files() == []


@pytest.mark.parametrize("daemon", [{"codec__encode_window_s": 0.2}], indirect=True)
def test_kill_9_during_a_job_leaves_no_partial_output_and_it_completes_after_restart(daemon: Daemon) -> None:
    wav(daemon.inbox / "long.wav", seconds=20.0, rate=44100, channels=2)
    daemon.start().ready()
    daemon.wait_event("job.queued")
    time.sleep(2.0)
    daemon.kill()
    assert not (daemon.outbox / "long.dac").exists()
    daemon.start()
    daemon.wait_event("job.done", timeout=180)
    assert daemon.events("queue.recovered")
    assert read(daemon.outbox / "long.dac").metadata.length == 20 * 44100
    assert daemon.temp_files() == []
    assert daemon.stop() == 0


def test_notify_protocol(daemon: Daemon) -> None:
    daemon.start(env={"WATCHDOG_USEC": "400000"}, notify=True).ready()
    wav(daemon.inbox / "a.wav")
    daemon.wait_event("job.done")
    time.sleep(1.0)
    assert daemon.stop() == 0
    messages = daemon.messages()
    assert messages.index("READY=1") < messages.index("STOPPING=1")
    assert any(m.startswith("STATUS=") and "queued" in m for m in messages)
    assert any("done 1" in m for m in messages if m.startswith("STATUS="))
    assert messages.count("WATCHDOG=1") >= 2


def test_invalid_config_exits_non_zero_before_ready(daemon: Daemon) -> None:
    daemon.config.write_text("bogus_key = 1\n" + daemon.config.read_text())
    daemon.start(notify=True)
    assert daemon.proc is not None and daemon.proc.wait(timeout=60) == 2
    assert "READY=1" not in daemon.messages()
    assert "bogus_key (env DACWATCH_BOGUS_KEY): unknown key" in daemon.log_path.read_text()


def test_missing_weights_exit_non_zero_before_ready(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start(env={"DACWATCH_MODEL__WEIGHTS": str(tmp_path / "missing.pth")}, notify=True)
    assert daemon.proc is not None and daemon.proc.wait(timeout=60) == 1
    assert "READY=1" not in daemon.messages()
    assert daemon.events("service.startup_failed")


def test_a_listener_that_never_reads_does_not_stall_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    import socket as socketlib

    deaf = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    deaf.bind(str(tmp_path / "deaf.sock"))
    try:
        daemon.start(env={"NOTIFY_SOCKET": str(tmp_path / "deaf.sock"), "WATCHDOG_USEC": "100000"}).ready()
        time.sleep(3.0)  # far more messages than the socket queue holds
        assert daemon.stop() == 0
    finally:
        deaf.close()


def test_sigterm_while_starting_exits_0_without_ready(daemon: Daemon) -> None:
    daemon.start(notify=True)
    # As soon as dacwatch's code runs it catches SIGTERM; torch's import comes after, so
    # the signal lands while it imports, before any handler of the service exists. (A
    # fixed sleep raced a loaded machine: the interpreter itself had not started yet.)
    daemon.catches(signal.SIGTERM)
    assert daemon.proc is not None
    assert "libtorch" not in Path(f"/proc/{daemon.proc.pid}/maps").read_text(), "SIGTERM caught only once torch loaded"
    assert daemon.stop() == 0
    assert "READY=1" not in daemon.messages()
    assert not daemon.events("service.ready")


def test_folders_are_logged_and_a_missing_one_is_made_with_a_warning(daemon: Daemon) -> None:
    daemon.start().ready()
    folders = daemon.events("service.folders")[0]
    assert folders["inbox"] == str(daemon.inbox) and folders["outbox"] == str(daemon.outbox)
    created = {e["folder"] for e in daemon.events("startup.folder_created")}
    assert created == {"outbox", "done", "failed", "state_dir"}  # the fixture made only the inbox
    assert daemon.stop() == 0


@pytest.mark.parametrize("daemon", [{"create_folders": False}], indirect=True)
def test_a_mistyped_folder_refuses_to_start_when_asked_to(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.proc is not None and daemon.proc.wait(timeout=60) == 2  # configuration
    error = daemon.events("service.startup_failed")[0]["error"]
    assert f"outbox {daemon.outbox} does not exist" in error and "create_folders" in error
    assert not daemon.outbox.exists()


def test_short_files_are_not_held_up_by_a_long_one(daemon: Daemon) -> None:
    """Two files at once on a CPU (codec.jobs_per_device): while one worker of the device
    converts a long recording, the other takes the short files queued after it."""
    daemon.start(notify=True).ready()
    assert daemon.events("model.loaded")[0]["jobs_at_once"] == 2
    wav(daemon.inbox / "long.wav", seconds=40.0, rate=44100, channels=2)
    daemon.wait_for(lambda: any("converting long.wav" in m for m in daemon.messages()), what="long.wav running")
    for i in range(3):
        wav(daemon.inbox / f"short{i}.wav", seconds=0.5)
    done = daemon.wait_event("job.done", 4, timeout=180)
    order = [Path(e["source"]).name for e in done]
    assert order[-1] == "long.wav", order
    lanes = {e["lane"] for e in daemon.events("job.done")}
    assert lanes == {0, 1}, lanes
    assert daemon.stop() == 0


def test_a_second_daemon_on_the_same_state_dir_refuses_and_touches_nothing(
    daemon: Daemon, tmp_path: Path, tiny_weights: Path
) -> None:
    daemon.start().ready()
    leftover = daemon.outbox / f"{TEMP_PREFIX}being-written.dac"  # as if the first were writing it
    leftover.write_bytes(b"partial")
    folders = {k: str(getattr(daemon, k)) for k in ("inbox", "outbox", "done", "failed")}
    second = Daemon(tmp_path / "second", tiny_weights, state_dir=str(daemon.state), **folders)
    try:
        second.start()
        assert second.proc is not None and second.proc.wait(timeout=60) == 2
        (error,) = [e["error"] for e in second.events("service.startup_failed")]
        assert f"(pid {daemon.proc.pid}) is running on state_dir {daemon.state}" in error  # type: ignore[union-attr]
        assert not second.events("queue.opened") and not second.events("startup.removed_temp_file")
        assert leftover.exists()
        wav(daemon.inbox / "a.wav")  # the first goes on serving
        daemon.wait_for(lambda: (daemon.outbox / "a.dac").exists(), what="a.dac")
    finally:
        second.close()
    assert daemon.stop() == 0
    restarted = Daemon(tmp_path / "second", tiny_weights, state_dir=str(daemon.state), **folders)
    restarted.start().ready()  # the lock went with the first process
    assert restarted.stop() == 0


def test_a_state_dir_inside_the_inbox_is_refused_before_ready(tmp_path: Path, tiny_weights: Path) -> None:
    daemon = Daemon(tmp_path, tiny_weights, state_dir=str(tmp_path / "inbox" / ".state"))
    try:
        daemon.start(notify=True)
        assert daemon.proc is not None and daemon.proc.wait(timeout=60) == 2
        assert "READY=1" not in daemon.messages()
        assert f"state_dir ({tmp_path}/inbox/.state) must not lie inside inbox" in daemon.tail()
        assert not (daemon.inbox / ".state").exists()
    finally:
        daemon.close()


def test_retry_brings_back_every_quarantined_version_from_where_it_went(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    from dacwatch.cli import main

    daemon.start().ready()
    (daemon.inbox / "x.wav").write_bytes(b"\0" * 100)
    daemon.wait_event("job.failed")
    (daemon.inbox / "x.wav").write_bytes(b"\1" * 200)  # a second bad version of the same name
    daemon.wait_event("job.failed", 2)
    assert daemon.stop() == 0
    assert (daemon.failed / "x.wav").read_bytes() == b"\0" * 100
    assert (daemon.failed / "x.1.wav").read_bytes() == b"\1" * 200
    capsys.readouterr()
    assert main(["retry", "--config", str(daemon.config), str(daemon.failed / "x.1.wav")]) == 0
    assert "re-queued 1 job(s); moved 1 file(s)" in capsys.readouterr().out
    assert (daemon.inbox / "x.wav").read_bytes() == b"\1" * 200
    assert main(["retry", "--config", str(daemon.config), "--all"]) == 0
    assert "re-queued 1 job(s); moved 1 file(s)" in capsys.readouterr().out
    assert (daemon.inbox / "x.1.wav").read_bytes() == b"\0" * 100  # beside the other, a job of its own
    assert not [p for p in daemon.failed.rglob("*") if p.is_file()]
    daemon.start().ready()
    daemon.wait_event("job.failed", 4)  # both converted again (and bad again), neither lost
    assert daemon.stop() == 0
    assert not daemon.events("job.vanished")
    assert sorted(p.name for p in daemon.failed.iterdir() if not p.name.endswith(".json")) == ["x.1.wav", "x.wav"]
