"""A broken ML stack ends every command in one sentence, and the lock is the one the code names.

The mismatched pair is a real package on the path: a ``torchaudio`` 2.11.1
distribution whose import fails as the real one does against torch 2.11.0
(``OSError: Could not load this library: .../libtorchaudio.so``), shadowing
the installed one in a real ``dacwatch`` process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dacwatch import stack

ROOT = Path(__file__).resolve().parents[1]


def locked_versions(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", path.read_text(), flags=re.M)
    return {name.lower(): version for name, version in pins}


def test_the_code_names_the_locked_pair() -> None:
    for lock in ("lock.txt", "dev-lock.txt"):
        pins = locked_versions(ROOT / "requirements" / lock)
        assert {d: pins[d] for d in stack.LOCKED} == stack.LOCKED, lock


def test_the_locks_agree_and_pin_the_linters() -> None:
    run, dev = (locked_versions(ROOT / "requirements" / f) for f in ("lock.txt", "dev-lock.txt"))
    assert {name: dev[name] for name in run} == run  # one version of everything the application installs
    for tool in ("ruff", "mypy", "pytest", "setuptools"):
        assert tool in dev
    # Every pin carries a hash: pip installs them with --require-hashes.
    text = (ROOT / "requirements" / "dev-lock.txt").read_text()
    assert text.count("==") <= text.count("--hash=sha256:")


def test_this_environment_is_the_locked_set() -> None:
    assert stack.problem() is None
    assert {d: stack.installed(d) for d in stack.LOCKED} == stack.LOCKED


@pytest.fixture
def mismatched(tmp_path: Path) -> dict[str, str]:
    """An environment where torchaudio 2.11.1 shadows the locked one and fails to load."""
    site = tmp_path / "site"
    package = site / "torchaudio"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise OSError('Could not load this library: ' + __file__.replace('__init__.py', 'lib/libtorchaudio.so'))\n"
    )
    info = site / "torchaudio-2.11.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 2.11.1\n")
    (info / "RECORD").write_text("")
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    return env


COMMANDS = [
    ["encode", "in.wav", "out.dac"],
    ["decode", "in.dac", "out.wav"],
    ["verify", "in.wav"],
    ["run", "--config", "c.toml"],
    ["retry", "--all", "--config", "c.toml"],
    ["config", "check", "--config", "c.toml"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_mismatched_pair_ends_every_command_in_one_sentence(
    mismatched: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dacwatch", *command], env=mismatched, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert "Traceback" not in out.stderr and ".so" not in line
    assert f"torch {stack.installed('torch')} and torchaudio 2.11.1 do not match" in line
    assert "pip install --require-hashes -r requirements/lock.txt" in line


def test_doctor_reports_the_mismatch(mismatched: dict[str, str], tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dacwatch", "doctor"], env=mismatched, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert re.search(r"PROBLEM\s+stack\s+torch \S+ and torchaudio 2.11.1 do not match", out.stdout), out.stdout


@pytest.fixture
def readonly(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write to: a read-only tmpfs (root writes anywhere else), else mode 0555."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.getuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({proc.stderr.decode().strip()})")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_doctor_checks_devices_weights_and_folders(tmp_path: Path, readonly: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'inbox = "{tmp_path / "in"}"\noutbox = "{readonly / "out"}"\ndone = "{tmp_path / "done"}"\n'
        f'failed = "{tmp_path / "failed"}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[model]\ncache_dir = "{tmp_path / "cache"}"\n'
    )
    (tmp_path / "in").mkdir()
    env = dict(os.environ)
    env.pop("DACWATCH_CONFIG", None)
    out = subprocess.run(
        [sys.executable, "-m", "dacwatch", "doctor", "--config", str(config)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    text = out.stdout
    assert out.returncode == 1, text + out.stderr
    assert re.search(r"ok\s+stack\s+torch", text)
    assert re.search(r"ok\s+devices\s+cpu", text)
    assert re.search(r"ok\s+inbox\s+.* is writable", text)
    assert re.search(r"ok\s+done\s+.* will be made at startup", text)
    assert re.search(r"PROBLEM\s+outbox\s+.*/ro/out does not exist, and .*/ro is not writable", text)
    assert re.search(
        r"weights\s+DAC 44khz 8kbps tag latest is not in the cache .*; the first start fetches https://", text
    )
    assert text.strip().endswith("1 problem(s)")
