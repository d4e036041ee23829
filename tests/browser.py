"""Headless Chromium, driven from the command line: the DOM after the page's script
ran (``--dump-dom``) and screenshots. Loopback addresses only."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",  # root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
]


def chromium() -> str:
    """The browser's path; skips (fails, with ``DACWATCH_REQUIRE_CHROMIUM`` set) without one."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    if os.environ.get("DACWATCH_REQUIRE_CHROMIUM"):
        pytest.fail("DACWATCH_REQUIRE_CHROMIUM is set but no chromium is installed")
    pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")


def _run(url: str, *extra: str, budget_ms: int = 3000) -> str:
    assert url.startswith(("http://127.0.0.1:", "http://[::1]:")), url
    with tempfile.TemporaryDirectory(prefix="dacwatch-chromium-") as profile:
        done = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dom(url: str, budget_ms: int = 3000) -> str:
    """The page's DOM once its script has had ``budget_ms`` of (virtual) time."""
    return _run(url, "--dump-dom", budget_ms=budget_ms)


def screenshot(url: str, path: Path, size: str = "1100,1300") -> Path:
    _run(url, f"--screenshot={path}", f"--window-size={size}", "--hide-scrollbars")
    assert path.stat().st_size > 1000
    return path
