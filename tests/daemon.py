"""A real ``dacwatch run`` subprocess on temporary folders, for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from dacwatch.fsio import TEMP_PREFIX

from .conftest import tone


def wav(path: Path, seconds: float = 0.5, rate: int = 16000, channels: int = 1) -> Path:
    """A WAV of sine tones at ``path`` (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(rate, seconds, channels), rate, subtype="PCM_16")
    return path


def make_dac(path: Path, weights: Path, seconds: float, rate: int = 16000) -> Path:
    """A real ``.dac`` at ``path`` of ``seconds`` of tones, made with the network at ``weights``."""
    from dacwatch.codec.model import ModelSpec
    from dacwatch.convert import CodecPool, CodecSettings, encode_file

    pool = CodecPool(ModelSpec(weights=weights), CodecSettings("cpu", 2.0, None, 8))
    source = wav(path.with_name(path.stem + ".source.wav"), seconds=seconds, rate=rate)
    try:
        return encode_file(pool, source, path).output
    finally:
        source.unlink()


@contextlib.contextmanager
def tmpfs(mount: Path, size: str = "512k", fill: bool = False) -> Iterator[Path]:
    """A real small file system at ``mount`` (made if missing; CI runs as root), optionally
    filled to its last block; skips the test where mounting is not allowed."""
    mount.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()})")
    try:
        if fill:
            fill_up(mount / ".filler")
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_up(path: Path) -> Path:
    """Write zeros to ``path`` until its file system is full to the last block."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


class Daemon:
    def __init__(self, root: Path, weights: Path, **overrides: Any) -> None:
        self.root = root
        self.inbox, self.outbox = root / "inbox", root / "outbox"
        self.done, self.failed, self.state = root / "done", root / "failed", root / "state"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.toml"
        settings: dict[str, Any] = {
            "inbox": str(self.inbox),
            "outbox": str(self.outbox),
            "done": str(self.done),
            "failed": str(self.failed),
            "state_dir": str(self.state),
            "stop_timeout_s": 20.0,
            "log_format": "json",
        }
        sections: dict[str, dict[str, Any]] = {
            "model": {"weights": str(weights)},
            "codec": {"devices": ["cpu"]},
            "watch": {"settle_seconds": 0.5, "reconcile_interval_s": 5.0},
            "retry": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0, "max_attempts": 3},
            "metrics": {"listen": ""},  # many daemons at once: no port for each (test_metrics.py sets one)
        }
        for key, value in overrides.items():
            if "__" in key:
                section, name = key.split("__", 1)
                sections.setdefault(section, {})[name] = value
            else:
                settings[key] = value
        lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None

    def start(self, env: dict[str, str] | None = None, notify: bool = False) -> Daemon:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if notify:
            path = self.root / "notify.sock"
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(str(path))
            self.notify.settimeout(0.2)
            full_env["NOTIFY_SOCKET"] = str(path)
            self._received: list[str] = []
            self._listener = threading.Thread(target=self._listen, daemon=True)
            self._listener.start()
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dacwatch", "run", "--config", str(self.config)],
            stdout=log,
            stderr=log,
            env=full_env,
        )
        log.close()
        self._ready_before = len(self.events("service.ready"))
        return self

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        if not self.log_path.exists():
            return out
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                out.append(event)
        return out

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) waiting for {what}:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.tail()}")

    def wait_event(self, name: str, count: int = 1, timeout: float = 60.0) -> list[dict[str, Any]]:
        self.wait_for(lambda: len(self.events(name)) >= count, timeout, f"{count} x {name}")
        return self.events(name)

    def ready(self, timeout: float = 60.0) -> Daemon:
        """Wait for this run's READY (the log holds earlier runs' too)."""
        self.wait_event("service.ready", count=self._ready_before + 1, timeout=timeout)
        return self

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def catches(self, sig: int, timeout: float = 60.0) -> None:
        """Wait until the process has a handler for ``sig`` (``SigCgt`` in its
        /proc status): from then on the signal is the daemon's to handle, however long
        a loaded machine takes to start the interpreter and reach dacwatch's code."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = Path(f"/proc/{self.proc.pid}/status").read_text()
            except OSError:
                break
            caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
            if int(caught, 16) >> (sig - 1) & 1:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.005)
        raise AssertionError(f"the daemon never caught signal {sig}:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def _listen(self) -> None:
        """Read the socket as systemd does, as messages come."""
        assert self.notify is not None
        while self.notify.fileno() != -1:
            try:
                self._received.append(self.notify.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def messages(self) -> list[str]:
        time.sleep(0.3)
        return list(self._received)

    def temp_files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.name.startswith(TEMP_PREFIX)]

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        self.kill()
        if self.notify is not None:
            self.notify.close()
