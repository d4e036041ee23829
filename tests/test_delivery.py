"""Files delivered by the programs people use (curl from a server that stalls, ffmpeg,
rsync --inplace with a bandwidth limit) are taken only once complete; a source that
changes while it is converted is converted again, never lost."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dacwatch.audio import open_audio
from dacwatch.formats.container import read

from .conftest import tone
from .daemon import Daemon, wav

SETTLE_S = 0.5
STALL_S = 6 * SETTLE_S  # the server, ffmpeg and rsync all go quiet for longer than settle_seconds

needs = pytest.mark.skipif(
    not all(shutil.which(p) for p in ("curl", "ffmpeg", "rsync")),
    reason="needs curl, ffmpeg and rsync (.ci/run installs them)",
)


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("Content-Type", "audio/wav")
        self.end_headers()
        half = len(self.body) * 6 // 10
        self.wfile.write(self.body[:half])
        self.wfile.flush()
        time.sleep(STALL_S)  # a slow or busy server
        self.wfile.write(self.body[half:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stalling_server(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    source = wav(tmp_path / "served" / "talk.wav", seconds=3.0, rate=44100)
    _StallingHandler.body = source.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/talk.wav", _StallingHandler.body
    server.shutdown()
    server.server_close()
    thread.join()


def frames(path: Path) -> int:
    reader = open_audio(path)
    try:
        return sum(block.shape[1] for block in reader.blocks())
    finally:
        reader.close()


@needs
@pytest.mark.parametrize("writer_check", [True, False], ids=["proc-scan", "inotify-only"])
def test_curl_ffmpeg_and_rsync_deliveries_are_taken_only_when_complete(
    tmp_path: Path, tiny_weights: Path, stalling_server: tuple[str, bytes], writer_check: bool
) -> None:
    url, served = stalling_server
    d = Daemon(tmp_path / "d", tiny_weights, watch__settle_seconds=SETTLE_S, watch__writer_check=writer_check).start()
    try:
        d.ready()
        # -re: ffmpeg reads its input in real time, so it writes for 4 s (MP3 stays 0 bytes at first).
        recording = wav(tmp_path / "rec-src.wav", seconds=4.0, rate=44100)
        synced = wav(tmp_path / "sync" / "sync.wav", seconds=2.0, rate=44100)  # 176 KB
        clients = [
            ["curl", "-sS", "-o", str(d.inbox / "talk.wav"), url],
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(recording), "-c:a", "libmp3lame",
             str(d.inbox / "rec.mp3")],
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(recording), "-c:a", "aac",
             str(d.inbox / "song.m4a")],
            ["rsync", "--inplace", "--bwlimit=40", str(synced), str(d.inbox / "sync.wav")],
        ]  # fmt: skip
        procs = [subprocess.Popen(c, stderr=subprocess.PIPE) for c in clients]
        for proc, command in zip(procs, clients, strict=True):
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, (command[0], err)  # nothing was moved away under a writer
        done = d.wait_event("job.done", 4, timeout=120)
        time.sleep(1.0)  # a second conversion of anything would show now
        assert sorted(Path(e["source"]).name for e in d.events("job.done")) == sorted(
            ["talk.wav", "rec.mp3", "song.m4a", "sync.wav"]
        ), done
        assert not d.events("job.failed") and not list(d.failed.rglob("*"))
        assert (d.done / "talk.wav").read_bytes() == served
        assert (d.done / "sync.wav").read_bytes() == synced.read_bytes()
        for name in ("talk.wav", "rec.mp3", "song.m4a", "sync.wav"):
            meta = read(d.outbox / (Path(name).stem + ".dac")).metadata
            assert meta.length == frames(d.done / name), name  # the whole file, not a prefix
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.parametrize(
    "daemon", [{"on_success": "delete", "codec__encode_window_s": 0.2, "watch__settle_seconds": SETTLE_S}],
    indirect=True,
)  # fmt: skip
def test_a_source_changed_during_conversion_is_converted_again_and_never_lost(daemon: Daemon) -> None:
    target = daemon.inbox / "talk.wav"
    wav(target, seconds=6.0, rate=44100, channels=2)
    daemon.start().ready()
    daemon.wait_event("job.queued")
    time.sleep(1.0)  # the worker is reading it (0.2 s windows: several seconds of work)
    longer = (tone(44100, 7.0, 2) * 0.5 * 32767).astype(np.int16)
    with sf.SoundFile(str(target), "w", 44100, 2, subtype="PCM_16") as f:  # rewritten in place
        f.write(longer)
    superseded = daemon.wait_event("job.superseded", timeout=120)
    assert "changed while it was converted" in superseded[0]["reason"]
    daemon.wait_event("job.done", timeout=180)
    # The output is the new version's, the old one's was dropped, and the source went
    # (on_success = delete) only after the version that was converted.
    assert read(daemon.outbox / "talk.dac").metadata.length == 7 * 44100
    assert not target.exists()
    assert len(daemon.events("job.done")) == 1 and daemon.temp_files() == []
    assert daemon.stop() == 0


def test_an_empty_file_waits_for_its_writer(daemon: Daemon, tmp_path: Path) -> None:
    """A 0-byte file is never taken (ffmpeg's output before its first flush)."""
    daemon.start().ready()
    empty = daemon.inbox / "rec.wav"
    with open(empty, "wb") as f:
        time.sleep(4 * 0.5)  # longer than settle_seconds, open and empty
        f.write(wav(tmp_path / "src.wav").read_bytes())
    daemon.wait_event("job.done")
    assert not daemon.events("job.failed")
    assert os.path.exists(daemon.outbox / "rec.dac")
    daemon.stop()
