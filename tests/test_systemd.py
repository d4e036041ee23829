"""The systemd unit: it verifies, its exposure stays under the stated threshold, and the
daemon started the way the unit starts it speaks the notify protocol."""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from .conftest import tone

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "dacwatch.service"
# The README states this score; a change that raises exposure above it fails here.
EXPOSURE_THRESHOLD = 1.7
# Keys systemd 252 (Debian 12) does not know yet; newer systemd uses them.
NEWER_KEYS = ("RestartSteps", "RestartMaxDelaySec")

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed (.ci/run installs it)")


def unit_with_real_binary(tmp_path: Path) -> Path:
    """verify checks that ExecStart exists: point it at this environment's dacwatch."""
    text = UNIT.read_text().replace("/opt/dacwatch/venv/bin/dacwatch", str(Path(sys.executable).parent / "dacwatch"))
    path = tmp_path / "dacwatch.service"
    path.write_text(text)
    return path


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    proc = subprocess.run(
        [analyze, "verify", str(unit_with_real_binary(tmp_path))], capture_output=True, text=True, check=False
    )  # type: ignore[list-item]
    assert proc.returncode == 0, proc.stderr
    problems = [line for line in proc.stderr.splitlines() if line.strip() and not any(k in line for k in NEWER_KEYS)]
    assert problems == []


@needs_analyze
def test_exposure_stays_under_threshold(tmp_path: Path) -> None:
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit_with_real_binary(tmp_path))],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-500:]
    assert float(match.group(1)) <= EXPOSURE_THRESHOLD


def test_unit_has_the_promised_settings() -> None:
    text = UNIT.read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify" and settings["KillMode"] == "mixed" and settings["Restart"] == "on-failure"
    assert settings["ProtectSystem"] == "strict" and settings["NoNewPrivileges"] == "yes"
    assert settings["DevicePolicy"] == "closed" and "PrivateDevices" not in settings
    assert settings["MemoryDenyWriteExecute"] == "no"
    stop = float(settings["TimeoutStopSec"].rstrip("s"))
    from dacwatch.config import Settings

    assert stop > Settings.model_fields["stop_timeout_s"].default + 5


def test_daemon_started_as_the_unit_starts_it(tmp_path: Path, tiny_weights: Path) -> None:
    text = UNIT.read_text()
    exec_start = shlex.split(re.search(r"^ExecStart=(.*)$", text, re.M).group(1))  # type: ignore[union-attr]
    env_line = re.search(r"^Environment=(.*)$", text, re.M).group(1)  # type: ignore[union-attr]
    state, cache, conf, srv = (tmp_path / n for n in ("lib", "cache", "etc", "srv"))
    for d in (state, cache, conf, srv / "inbox"):
        d.mkdir(parents=True)
    # systemd's directories become these variables; HOME and the rest come from Environment=.
    env = dict(kv.split("=", 1) for kv in shlex.split(env_line))
    env = {k: str(cache) if k == "HOME" else v for k, v in env.items()}
    env |= {"STATE_DIRECTORY": str(state), "CACHE_DIRECTORY": str(cache), "CONFIGURATION_DIRECTORY": str(conf)}
    env |= {"PATH": "/usr/bin:/bin", "WATCHDOG_USEC": "500000"}
    config = conf / "config.toml"
    config.write_text(
        "\n".join(f'{k} = "{srv / k}"' for k in ("inbox", "outbox", "done", "failed"))
        + f'\nlog_format = "json"\n[model]\nweights = "{tiny_weights}"\n[codec]\ndevices = ["cpu"]\n[watch]\nsettle_seconds = 0.3\n'
    )
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(0.1)
    env["NOTIFY_SOCKET"] = str(sock_path)
    argv = [str(Path(sys.executable).parent / "dacwatch"), *exec_start[1:]]
    argv[argv.index("/etc/dacwatch/config.toml")] = str(config)
    log_path = tmp_path / "journal.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    messages: list[str] = []

    def collect(until: float) -> None:
        while time.monotonic() < until:
            with contextlib.suppress(TimeoutError):
                messages.append(listener.recv(4096).decode())

    try:
        deadline = time.monotonic() + 60
        while "READY=1" not in messages and time.monotonic() < deadline and proc.poll() is None:
            collect(time.monotonic() + 0.2)
        assert "READY=1" in messages, log_path.read_text()
        sf.write(str(srv / "inbox" / "a.wav"), tone(16000, 0.5), 16000)
        deadline = time.monotonic() + 60
        while not (srv / "outbox" / "a.dac").exists() and time.monotonic() < deadline:
            collect(time.monotonic() + 0.2)
        collect(time.monotonic() + 1.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        collect(time.monotonic() + 0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert (srv / "outbox" / "a.dac").exists()
    assert (state / "queue.sqlite3").exists()  # state_dir defaults to $STATE_DIRECTORY
    assert messages.count("WATCHDOG=1") >= 2
    assert any(m.startswith("STATUS=") and "done 1" in m for m in messages)
    assert messages[-1] == "STOPPING=1"


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit)],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-500:]
    return float(match.group(1))


@needs_analyze
def test_the_offline_drop_in_really_removes_internet_sockets(tmp_path: Path) -> None:
    """A drop-in's lines come after the unit's, as lines appended to it do: allow-lists
    merge, so only a drop-in that resets the list first takes AF_INET away."""
    base = unit_with_real_binary(tmp_path)
    text = base.read_text()
    drop_in = (UNIT.parent / "offline.conf").read_text()
    variants = {}
    for name, extra in (("offline", drop_in), ("without the reset", "[Service]\nRestrictAddressFamilies=AF_UNIX\n")):
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        (folder / "dacwatch.service").write_text(text + "\n" + extra)
        variants[name] = exposure(folder / "dacwatch.service")
    assert variants["without the reset"] == exposure(base)  # the advice it replaces did nothing
    assert variants["offline"] <= exposure(base) - 0.3
    out = subprocess.run(
        [analyze, "security", "--offline=yes", str(tmp_path / "offline" / "dacwatch.service")],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert re.search(r"✓ RestrictAddressFamilies=~AF_\(INET\|INET6\)", out)


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="systemd-tmpfiles is not installed")
def test_tmpfiles_make_a_shared_setgid_inbox(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("dacwatch:x:990:990::/var/lib/dacwatch:/usr/sbin/nologin\n")
    (tmp_path / "etc" / "group").write_text("dacwatch:x:990:\n")
    config = UNIT.parent / "dacwatch.tmpfiles"
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={tmp_path}", str(config)], check=True)
    srv = tmp_path / "srv" / "dacwatch"
    modes = {p.name: (p.stat().st_mode & 0o7777, p.stat().st_uid, p.stat().st_gid) for p in [srv, *srv.iterdir()]}
    assert modes == {
        "dacwatch": (0o750, 990, 990),
        "inbox": (0o2770, 990, 990),
        "outbox": (0o2750, 990, 990),
        "done": (0o2750, 990, 990),
        "failed": (0o2750, 990, 990),
    }
