"""Faults, hostile input and load against the real daemon: nothing lost, nothing
half-written, nobody let in. docs/faults.md summarises what this suite shows."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf

from dacwatch.errors import PermanentError
from dacwatch.formats.container import read
from dacwatch.fsio import TEMP_PREFIX, mirror
from dacwatch.queue.sqlite import JobQueue

from .conftest import tone
from .daemon import Daemon, fill_up, make_dac, tmpfs, wav
from .test_metrics import scrape


def outcomes(d: Daemon) -> dict[str, str]:
    """source path -> 'converted' or 'quarantined'."""
    out = {e["source"]: "converted" for e in d.events("job.done")}
    out.update({e["source"]: "quarantined" for e in d.events("job.failed")})
    return out


# ---------------------------------------------------------------------- crashes


def test_kill_9_at_random_points_during_50_conversions(daemon: Daemon, tmp_path: Path) -> None:
    rng = random.Random(20261125)
    staging = tmp_path / "staging"
    for i in range(50):
        wav(staging / f"s{i:02d}.wav", seconds=rng.uniform(0.2, 1.5))
    for p in staging.iterdir():
        os.rename(p, daemon.inbox / p.name)
    for _ in range(6):
        daemon.start().ready()
        time.sleep(rng.uniform(0.2, 2.0))
        daemon.kill()
    daemon.start().ready()
    daemon.wait_for(lambda: len(list(daemon.done.glob("*.wav"))) == 50, timeout=180, what="50 sources done")
    daemon.wait_for(
        lambda: JobQueue(daemon.state / "queue.sqlite3").counts()["done"] == 50, timeout=30, what="queue settled"
    )
    assert daemon.stop() == 0
    outputs = sorted(daemon.outbox.glob("*.dac"))
    assert [p.stem for p in outputs] == [f"s{i:02d}" for i in range(50)]
    for p in outputs:  # every output whole: it reads, and its length matches its source
        source = daemon.done / (p.stem + ".wav")
        assert read(p).metadata.length == sf.info(str(source)).frames
    assert list(daemon.inbox.iterdir()) == [] and daemon.temp_files() == []
    with JobQueue(daemon.state / "queue.sqlite3") as q:
        assert q.counts() == {"queued": 0, "running": 0, "done": 50, "failed": 0}


# ---------------------------------------------------------------------- the file system


@pytest.fixture
def small_outbox(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "outbox") as mount:
        yield mount


def test_disk_full_is_retried_and_recovers_when_space_returns(daemon: Daemon, small_outbox: Path) -> None:
    filler = fill_up(small_outbox / "filler")
    daemon.start().ready()
    wav(daemon.inbox / "a.wav", seconds=2.0)
    daemon.wait_event("job.retry_scheduled", 2)
    assert "No space left" in daemon.events("job.retry_scheduled")[0]["error"]
    assert (daemon.inbox / "a.wav").exists() and daemon.temp_files() == []
    assert not (small_outbox / "a.dac").exists() and daemon.proc is not None and daemon.proc.poll() is None
    filler.unlink()
    daemon.wait_event("job.done")
    assert read(small_outbox / "a.dac").metadata.length == 32000
    assert daemon.events("job.failed") == [] and daemon.stop() == 0


# Issue #20 section 2: a fault at the file system never stops the daemon and never
# quarantines good audio. Each test below reproduces one reviewer's report on real
# small file systems (tmpfs: CI runs as root) or through the seam's DACWATCH_FAULT.

SURVIVING = 30  # attempts: long enough to put the fault right while it is retried


def healthy(d: Daemon) -> None:
    """No failure that kept a file was treated as a bug, and every worker still serves."""
    for name in ("job.unexpected_error", "job.unclassified_os_error", "worker.stopped", "worker.crashed"):
        assert d.events(name) == [], (name, d.events(name))
    assert d.proc is not None and d.proc.poll() is None


def final_names(folder: Path) -> list[str]:
    """What ``folder`` holds under final names (a retry in flight may hold a temporary one)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(TEMP_PREFIX))


@pytest.fixture(scope="module")
def small_dac(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Path:
    """A 2 s 44.1 kHz ``.dac`` of the daemon's network (decodes to 353 kB of float WAV)."""
    return make_dac(tmp_path_factory.mktemp("dac") / "talk.dac", tiny_weights, 2.0, rate=44100)


@pytest.mark.parametrize("daemon", [{"retry__max_attempts": SURVIVING}], indirect=True)
def test_a_full_outbox_is_a_fault_of_the_moment_for_encoding_and_decoding(
    daemon: Daemon, tmp_path: Path, small_dac: Path
) -> None:
    """30 s into a full outbox (the codes spill beside the output: a raw ENOSPC
    stopped the worker) and a decode into it (libsndfile's own error): retried with
    ENOSPC named, files kept, then both converted once space returns."""
    with tmpfs(daemon.outbox, "1m", fill=True) as outbox:
        daemon.start().ready()
        wav(daemon.inbox / "talk.wav", seconds=30.0, rate=8000)
        shutil.copy(small_dac, daemon.inbox / "back.dac")
        daemon.wait_for(
            lambda: (
                {e["source"] for e in daemon.events("job.retry_scheduled") if e.get("attempts", 0) >= 2}
                >= {str(daemon.inbox / "talk.wav"), str(daemon.inbox / "back.dac")}
            ),
            what="both retried twice",
        )
        for event in daemon.events("job.retry_scheduled"):
            assert event["transient"] and event["fault"] == "ENOSPC", event
            assert "No space left" in event["error"]
        healthy(daemon)
        assert (daemon.inbox / "talk.wav").exists() and (daemon.inbox / "back.dac").exists()
        assert final_names(outbox) == [".filler"]
        (outbox / ".filler").unlink()
        daemon.wait_event("job.done", 2)
        assert read(outbox / "talk.dac").metadata.length == 240000
        assert sf.info(str(outbox / "back.wav")).frames == 88200
        healthy(daemon)
        assert daemon.events("job.failed") == [] and daemon.stop() == 0


def test_the_cli_decoding_onto_a_full_disk_says_so_in_one_line(
    tmp_path: Path, small_dac: Path, tiny_weights: Path
) -> None:
    """It raised libsndfile's own error with a traceback; now one sentence, exit 1, and
    nothing under the output's name."""
    with tmpfs(tmp_path / "full", "256k", fill=True) as full:
        command = [sys.executable, "-m", "dacwatch", "decode", str(small_dac), str(full / "talk.wav")]
        proc = subprocess.run(
            [*command, "--weights", str(tiny_weights)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "No space left on device (ENOSPC)" in proc.stderr, proc.stderr
        assert sorted(p.name for p in full.iterdir()) == [".filler"]


@pytest.mark.parametrize("daemon", [{"retry__max_attempts": SURVIVING}], indirect=True)
def test_a_read_only_outbox_is_a_fault_of_the_moment(daemon: Daemon, tmp_path: Path, small_dac: Path) -> None:
    with tmpfs(daemon.outbox, "4m") as outbox:
        subprocess.run(["mount", "-o", "remount,ro", str(outbox)], check=True)
        daemon.start().ready()
        wav(daemon.inbox / "talk.wav", seconds=1.0)
        shutil.copy(small_dac, daemon.inbox / "back.dac")
        daemon.wait_for(
            lambda: len({e["source"] for e in daemon.events("job.retry_scheduled")}) == 2, what="both retried"
        )
        assert {e["fault"] for e in daemon.events("job.retry_scheduled")} == {"EROFS"}
        healthy(daemon)
        subprocess.run(["mount", "-o", "remount,rw", str(outbox)], check=True)
        daemon.wait_event("job.done", 2)
        assert (outbox / "talk.dac").exists() and (outbox / "back.wav").exists()
        healthy(daemon)
        assert daemon.events("job.failed") == [] and daemon.stop() == 0


def test_a_failed_quarantine_keeps_the_file_and_the_worker(daemon: Daemon) -> None:
    """A FIFO cannot be moved to a failed/ on another file system, a note whose name the
    file system refuses (ENAMETOOLONG, injected on the note's rename) cannot be written,
    and a failed/sub that is a symlink out of failed/ is refused: each job is retried, then given up with the file kept where it was; the
    workers live on, no job is left running, and bad files that can move still do."""
    with tmpfs(daemon.failed, "1m"):
        os.mkfifo(daemon.inbox / "pipe.wav")
        (daemon.inbox / "long-note.wav").write_text("not audio\n" * 50)
        (daemon.inbox / "text.wav").write_text("not audio either\n" * 50)
        (daemon.inbox / "sub").mkdir()  # failed/sub leads out of failed/: mirror() refuses it
        (daemon.inbox / "sub" / "escape.wav").write_text("not audio\n" * 50)
        (daemon.root / "elsewhere").mkdir()
        os.symlink(daemon.root / "elsewhere", daemon.failed / "sub")
        daemon.start(env={"DACWATCH_FAULT": "replace:ENAMETOOLONG:always:long-note.wav.error.json"}).ready()
        daemon.wait_event("job.gave_up", 3)
        daemon.wait_event("job.failed")
        wav(daemon.inbox / "after.wav")
        daemon.wait_event("job.done")
        healthy(daemon)
        gave_up = {e["source"]: e["error"] for e in daemon.events("job.gave_up")}
        assert "cannot move the special file" in gave_up[str(daemon.inbox / "pipe.wav")]
        assert "File name too long" in gave_up[str(daemon.inbox / "long-note.wav")]
        assert "would escape" in gave_up[str(daemon.inbox / "sub" / "escape.wav")]
        assert (daemon.inbox / "pipe.wav").is_fifo() and (daemon.inbox / "long-note.wav").exists()
        assert (daemon.inbox / "sub" / "escape.wav").exists() and list((daemon.root / "elsewhere").iterdir()) == []
        assert sorted(p.name for p in daemon.failed.iterdir()) == ["sub", "text.wav", "text.wav.error.json"]
        assert daemon.stop() == 0
    with JobQueue(daemon.state / "queue.sqlite3") as q:
        assert q.counts()["running"] == 0


@pytest.mark.parametrize("daemon", [{"retry__max_attempts": SURVIVING}], indirect=True)
def test_a_move_to_a_full_done_on_another_file_system_leaves_the_source_whole(daemon: Daemon) -> None:
    """done/ on a full tmpfs: the cross-device move (copy, fsync, link, fsync, unlink)
    fails with nothing under any name in done/ (64 KiB tmpfs: a truncated talk.wav and empty
    talk.1.wav, talk.2.wav), the source untouched; with space back it is moved whole."""
    with tmpfs(daemon.done, "256k", fill=True) as done:
        source = wav(daemon.inbox / "talk.wav", seconds=4.0)
        original = source.read_bytes()
        assert 64 * 1024 < len(original) < 200 * 1024
        daemon.start().ready()
        daemon.wait_event("job.retry_scheduled", 2)
        assert {e["fault"] for e in daemon.events("job.retry_scheduled")} == {"ENOSPC"}
        assert source.read_bytes() == original
        assert final_names(done) == [".filler"]
        healthy(daemon)
        (done / ".filler").unlink()
        daemon.wait_event("job.done")
        assert sorted(p.name for p in done.iterdir()) == ["talk.wav"]
        assert (done / "talk.wav").read_bytes() == original and not source.exists()
        assert daemon.temp_files() == [] and daemon.stop() == 0


@pytest.mark.parametrize(
    "daemon", [{"retry__max_attempts": SURVIVING, "metrics__listen": "127.0.0.1:0"}], indirect=True
)
def test_a_folder_at_the_output_name_keeps_the_source_and_says_why(daemon: Daemon) -> None:
    """Not the source's fault: retried and kept, and said so in the log, in ``dacwatch
    status`` and in the ``dacwatch_faults`` metric."""
    (daemon.outbox / "talk.dac").mkdir(parents=True)
    wav(daemon.inbox / "talk.wav")
    daemon.start().ready()
    daemon.wait_event("job.retry_scheduled", 2)
    assert "Is a directory" in daemon.events("job.retry_scheduled")[0]["error"]
    assert daemon.events("job.failed") == [] and (daemon.inbox / "talk.wav").exists()
    healthy(daemon)

    seen: list[str] = []

    def retrying() -> bool:
        command = [sys.executable, "-m", "dacwatch", "status", "--config", str(daemon.config)]
        seen.append(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        return "retrying: talk.wav: " in seen[-1]

    daemon.wait_for(retrying, what="the retry in dacwatch status")
    assert "Is a directory (EISDIR)" in seen[-1], seen[-1]
    metrics = scrape(daemon.events("metrics.serving")[0]["url"])
    assert metrics[("dacwatch_faults_total", (("fault", "moment"), ("reason", "EISDIR")))] >= 2
    (daemon.outbox / "talk.dac").rmdir()
    daemon.wait_event("job.done")
    assert read(daemon.outbox / "talk.dac").metadata.length == 8000
    assert daemon.stop() == 0


def test_a_source_the_daemon_may_not_read_is_kept_not_quarantined(daemon: Daemon, small_dac: Path) -> None:
    """EACCES on opening the source (injected: CI runs as root, whom permissions never
    stop) is not the content's fault: retried, given up, kept; never "not audio"."""
    wav(daemon.inbox / "secret.wav")
    shutil.copy(small_dac, daemon.inbox / "secret.dac")
    daemon.start(env={"DACWATCH_FAULT": "open:EACCES:always:/inbox/secret."}).ready()
    daemon.wait_event("job.gave_up", 2)
    assert {e["fault"] for e in daemon.events("job.retry_scheduled")} == {"EACCES"}
    assert daemon.events("job.failed") == [] and list(daemon.failed.iterdir()) == []
    assert (daemon.inbox / "secret.wav").exists() and (daemon.inbox / "secret.dac").exists()
    wav(daemon.inbox / "after.wav")
    daemon.wait_event("job.done")
    healthy(daemon)
    assert daemon.stop() == 0


def test_output_folder_removed_while_running(daemon: Daemon) -> None:
    daemon.start().ready()
    wav(daemon.inbox / "a.wav")
    daemon.wait_event("job.done")
    shutil.rmtree(daemon.outbox)
    wav(daemon.inbox / "sub" / "b.wav")
    daemon.wait_event("job.done", 2)
    assert (daemon.outbox / "sub" / "b.dac").exists() and daemon.stop() == 0


def test_locked_queue_is_a_clear_error_and_nothing_is_lost(daemon: Daemon) -> None:
    daemon.start().ready()
    db = sqlite3.connect(daemon.state / "queue.sqlite3", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    wav(daemon.inbox / "a.wav")
    daemon.wait_for(
        lambda: daemon.events("queue.unavailable") or daemon.events("queue.submit_failed"),
        timeout=30,
        what="a queue error",
    )
    time.sleep(1.0)
    db.execute("COMMIT")
    db.close()
    daemon.wait_event("job.done", timeout=60)
    assert daemon.stop() == 0


def test_corrupted_queue_is_moved_aside_and_rebuilt(daemon: Daemon) -> None:
    daemon.start().ready()
    assert daemon.stop() == 0
    db = daemon.state / "queue.sqlite3"
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    db.write_bytes(b"SQLite format 3\0" + os.urandom(16384))
    wav(daemon.inbox / "a.wav")
    daemon.start().ready()
    daemon.wait_event("job.done")
    rebuilt = daemon.events("queue.corrupt_rebuilt")
    assert rebuilt and Path(rebuilt[0]["moved_to"]).exists()
    assert daemon.stop() == 0


# ---------------------------------------------------------------------- hostile input


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _rewrite_dac(source: Path, target: Path, codes: np.ndarray | None = None, **meta_changes: object) -> None:
    with zipfile.ZipFile(source) as zf:
        meta = json.loads(str(np.load(io.BytesIO(zf.read("metadata.npy")))))
        original = np.load(io.BytesIO(zf.read("codes.npy")))
    meta.update(meta_changes)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in (
            ("metadata.npy", np.array(json.dumps(meta))),
            ("codes.npy", original if codes is None else codes),
        ):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr)
            zf.writestr(name, buf.getvalue())


def _hostile_corpus(inbox: Path, scratch: Path, weights: Path) -> dict[str, set[str]]:
    """Write every case; returns name -> the outcomes that are acceptable."""
    Q, C = {"quarantined"}, {"converted"}
    cases: dict[str, set[str]] = {}

    def case(name: str, allowed: set[str]) -> Path:
        cases[name] = allowed
        return inbox / name

    case("empty.wav", {"ignored"}).write_bytes(b"")  # an empty file waits for its writer, however long
    case("text.wav", Q).write_text("Dear diary, this is not a WAV file.\n" * 30)
    good = wav(scratch / "good.wav", seconds=1.0, rate=44100, channels=2)
    data = good.read_bytes()
    case("truncated.wav", C | Q).write_bytes(data[: len(data) // 3])
    flac, mp3 = scratch / "g.flac", scratch / "g.mp3"
    sf.write(str(flac), tone(44100, 1.0, 2), 44100, format="FLAC")
    sf.write(str(mp3), tone(44100, 1.0, 2), 44100, format="MP3")
    case("truncated.flac", C | Q).write_bytes(flac.read_bytes()[: flac.stat().st_size // 3])
    case("truncated.mp3", C | Q).write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 3])
    # An 8-bit mono WAV whose header claims 2^31 frames, with 1 s of data behind it.
    u8 = scratch / "u8.wav"
    sf.write(str(u8), tone(8000, 1.0, 1), 8000, subtype="PCM_U8")
    raw = bytearray(u8.read_bytes())
    assert raw[36:40] == b"data"
    struct.pack_into("<I", raw, 40, 2**31)
    struct.pack_into("<I", raw, 4, 36 + 2**31)
    case("claims-2^31-frames.wav", C | Q).write_bytes(bytes(raw))
    nan = tone(8000, 0.5, 1).astype(np.float32)
    nan[100], nan[200] = np.nan, np.inf
    sf.write(str(case("nan-inf.wav", Q)), nan, 8000, subtype="FLOAT")
    sf.write(str(case("zero-samples.wav", Q)), np.zeros((0, 1)), 8000)
    sf.write(str(case("one-sample.wav", C)), np.full((1, 1), 0.5), 8000)
    sf.write(str(case("64-channels.wav", C)), tone(8000, 0.2, 64), 8000, subtype="PCM_16")
    sf.write(str(case("1-hz.wav", Q)), np.zeros((4, 1)), 1)
    sf.write(str(case("768-khz.wav", C)), tone(768000, 0.05, 1), 768000)
    for name in ("-rf --no-preserve-root.wav", "new\nline.wav", "ünïcødé 音.wav", "a..b.wav", "...wav"):
        shutil.copy(good, case(name, {"ignored"} if name.startswith(".") else C))
    # .dac files: a real one made with the daemon's network, then damaged.
    real = scratch / "real.dac"
    subprocess.run(
        [sys.executable, "-m", "dacwatch", "encode", str(good), str(real), "--weights", str(weights)], check=True
    )
    shutil.copy(real, case("fine.dac", C))
    codes = np.asarray(read(real).codes).copy()
    codes[3, 1, 0] = 4000
    _rewrite_dac(real, case("codes-out-of-range.dac", Q), codes=codes)
    _rewrite_dac(real, case("wrong-rank.dac", Q), codes=codes[:, :, 0])
    _rewrite_dac(real, case("negative-length.dac", Q), length=-44100)
    _rewrite_dac(real, case("format-version-9.dac", Q), version=9)
    with open(case("evil-dac-1.0.0.dac", Q), "wb") as f:
        np.save(
            f,
            {"codes": np.zeros((1, 9, 4), np.uint16), "metadata": {"x": _Evil(scratch / "pwned-1")}},
            allow_pickle=True,
        )
    with open(case("evil-seed.dac", Q), "wb") as f:
        np.savez(f, codes=np.zeros((3, 9, 1), np.int16), metadata=np.array(_Evil(scratch / "pwned-2"), dtype=object))
    with zipfile.ZipFile(case("zip-bomb.dac", Q), "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.npy", b"\x93NUMPY" + b"\0" * (256 << 20))
        zf.writestr("codes.npy", b"\0" * (256 << 20))
    os.mkfifo(case("fifo.wav", Q))
    os.mknod(case("device-node.wav", Q), 0o600 | 0o020000, os.makedev(1, 3))  # a character device (/dev/null)
    return cases


def test_hostile_corpus_is_converted_or_quarantined_and_the_daemon_keeps_serving(
    daemon: Daemon, tmp_path: Path, tiny_weights: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    passwd_before = Path("/etc/passwd").read_bytes()
    os.symlink("/etc/passwd", daemon.inbox / "passwd.wav")  # outside the inbox: never read, never moved
    cases = _hostile_corpus(daemon.inbox, scratch, tiny_weights)
    daemon.start().ready()
    sources = {str(daemon.inbox / name): name for name in cases if cases[name] != {"ignored"}}
    daemon.wait_for(
        lambda: set(sources) <= set(outcomes(daemon)),
        timeout=120,
        what=f"an outcome for every case; missing {sorted(set(sources) - set(outcomes(daemon)))}",
    )
    wav(daemon.inbox / "after.wav")  # still serving
    daemon.wait_for(lambda: str(daemon.inbox / "after.wav") in outcomes(daemon), timeout=60, what="the next good file")
    got = outcomes(daemon)
    table = {name: got[src] for src, name in sources.items()}
    wrong = {name: outcome for name, outcome in table.items() if outcome not in cases[name]}
    assert wrong == {}, wrong
    for name, outcome in table.items():
        if outcome == "quarantined":
            note = json.loads((daemon.failed / (name + ".error.json")).read_text())
            assert note["error"] and note["dacwatch_version"]
            assert os.path.lexists(daemon.failed / name)
        else:
            output = mirror(
                daemon.inbox / name, daemon.inbox, daemon.outbox, ".wav" if name.endswith(".dac") else ".dac"
            )
            assert output.exists(), name
    assert not (scratch / "pwned-1").exists() and not (scratch / "pwned-2").exists()
    # dotfiles ("...wav" starts with a dot) are never taken: left exactly as they were
    assert (daemon.inbox / "...wav").read_bytes() == (scratch / "good.wav").read_bytes()
    # truncated.wav and truncated.mp3 both want truncated.dac: the later one is named after its whole name
    names = {p.name for p in daemon.outbox.glob("truncated*.dac")}
    assert names in ({"truncated.dac", "truncated.wav.dac"}, {"truncated.dac", "truncated.mp3.dac"}), names
    assert (daemon.inbox / "empty.wav").exists() and (daemon.inbox / "empty.wav").stat().st_size == 0
    assert (daemon.inbox / "passwd.wav").is_symlink() and Path("/etc/passwd").read_bytes() == passwd_before
    assert str(daemon.inbox / "passwd.wav") not in outcomes(daemon)
    assert daemon.temp_files() == [] and daemon.stop() == 0
    summary = {
        "tried": len(cases) + 1,
        "converted": sum(v == "converted" for v in table.values()),
        "quarantined": sum(v == "quarantined" for v in table.values()),
        "ignored": 1 + sum(v == {"ignored"} for v in cases.values()),
        "lost": sum(v != {"ignored"} for v in cases.values()) - len(table),
    }
    print("hostile corpus:", json.dumps(summary), json.dumps(table, ensure_ascii=False))
    assert summary["lost"] == 0


@pytest.mark.parametrize("daemon", [{"codec__encode_window_s": 2.0}], indirect=True)
def test_a_long_silent_file_converts_in_bounded_memory(daemon: Daemon) -> None:
    path = daemon.inbox / "silence.wav"
    minutes = 10
    with sf.SoundFile(str(path), "w", 8000, 1, subtype="PCM_16") as f:
        for _ in range(minutes):
            f.write(np.zeros(8000 * 60, np.int16))
    daemon.start().ready()
    assert daemon.proc is not None
    proc = psutil.Process(daemon.proc.pid)
    baseline = proc.memory_info().rss
    peak = baseline
    while not daemon.events("job.done"):
        peak = max(peak, proc.memory_info().rss)
        assert daemon.proc.poll() is None, daemon.tail()
        time.sleep(0.2)
    assert read(daemon.outbox / "silence.dac").metadata.length == 8000 * 60 * minutes
    # the decoded 10 minutes at 44.1 kHz alone would be 106 MB as float32; we stay well under
    assert peak - baseline < 150 * 2**20, (peak - baseline) / 2**20
    assert daemon.stop() == 0


# ---------------------------------------------------------------------- load


@pytest.mark.parametrize("daemon", [{"watch__settle_seconds": 0.5}], indirect=True)
def test_2000_files_at_once_are_converted_exactly_once_in_bounded_memory(daemon: Daemon, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    one = wav(staging / "one.wav", seconds=0.05, rate=8000)
    for i in range(2000):
        shutil.copy(one, staging / f"f{i:04d}.wav")
    one.unlink()
    daemon.start().ready()
    assert daemon.proc is not None
    proc = psutil.Process(daemon.proc.pid)
    baseline = proc.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(proc.memory_info().rss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    for p in staging.iterdir():
        os.rename(p, daemon.inbox / p.name)
    burst = time.monotonic() - started
    try:
        done = daemon.wait_event("job.done", 2000, timeout=600)
    finally:
        stop.set()
        sampler.join()
    time.sleep(1.0)
    assert len(daemon.events("job.done")) == 2000
    assert len({e["source"] for e in done}) == 2000
    assert len(list(daemon.outbox.glob("*.dac"))) == 2000
    assert max(peak) - baseline < 300 * 2**20, (max(peak) - baseline) / 2**20
    print(
        f"2000 files: burst {burst:.2f} s, all done after {time.monotonic() - started:.1f} s, peak RSS +{(max(peak) - baseline) / 2**20:.0f} MB"
    )
    assert daemon.stop() == 0


# ---------------------------------------------------------------------- paths


@pytest.mark.parametrize("name", ["../escape.wav", "../../etc/cron.d/x.wav", "/etc/passwd"])
def test_output_paths_never_escape(tmp_path: Path, name: str) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    with pytest.raises(PermanentError):
        mirror(inbox / name, inbox, outbox, ".dac")


def test_a_symlinked_folder_inside_the_outbox_cannot_redirect_outputs(tmp_path: Path) -> None:
    inbox, outbox, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    for d in (inbox / "sub", outbox, elsewhere):
        d.mkdir(parents=True)
    os.symlink(elsewhere, outbox / "sub")
    with pytest.raises(PermanentError, match="escape"):
        mirror(inbox / "sub" / "a.wav", inbox, outbox, ".dac")


def test_odd_names_stay_inside(tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for name in ("..wav", "-rf.wav", "new\nline.wav", "a..b.wav", "x/..y.wav"):
        target = mirror(inbox / name, inbox, outbox, ".dac")
        assert target.resolve().is_relative_to(outbox.resolve())


def test_a_symlink_higher_up_cannot_redirect_a_deeper_output(tmp_path: Path) -> None:
    inbox, outbox, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    for d in (outbox, elsewhere):
        d.mkdir(parents=True)
    os.symlink(elsewhere, outbox / "sub")
    with pytest.raises(PermanentError, match="escape"):
        mirror(inbox / "sub" / "deeper" / "still" / "a.wav", inbox, outbox, ".dac")
