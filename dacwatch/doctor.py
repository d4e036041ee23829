"""``dacwatch doctor``: is this host ready to convert, and if not, what to do about it.

Checks, in the order a fix has to happen: the ML stack loads (torch and
torchaudio match), the devices torch sees, the configured weights (present,
in the cache, or where they would be fetched from), and whether every folder
of the configuration is writable by the current user. Reports; changes nothing.
"""

from __future__ import annotations

import os
import platform
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dacwatch import __version__, stack


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: int = 0
    broken_stack: bool = False

    def ok(self, what: str, text: str) -> None:
        self.lines.append(f"ok       {what:<10} {text}")

    def bad(self, what: str, text: str) -> None:
        self.problems += 1
        self.lines.append(f"PROBLEM  {what:<10} {text}")

    def info(self, what: str, text: str) -> None:
        self.lines.append(f"         {what:<10} {text}")

    @property
    def status(self) -> int:
        """0: ready; 2: the ML stack does not load (an installation fault, as in every command); 1: other problems."""
        if self.broken_stack:
            return 2
        return 1 if self.problems else 0


def examine(settings: Any | None, network: bool = False) -> Report:
    """Every check this host allows; ``settings`` None checks the host alone."""
    report = Report()
    report.info("dacwatch", f"{__version__} on Python {platform.python_version()} ({sys.executable})")
    versions = ", ".join(f"{d} {stack.installed(d) or 'missing'}" for d in ("torch", "torchaudio", "numpy"))
    why = stack.problem()
    if why is None:
        locked = all(stack.installed(d) == v for d, v in stack.LOCKED.items())
        report.ok("stack", versions + ("" if locked else " (loads, but is not the locked set)"))
        _devices(report)
    else:
        report.broken_stack = True
        report.bad("stack", why)
    if settings is None:
        report.info("config", "none given (--config PATH or DACWATCH_CONFIG): weights and folders not checked")
    else:
        if why is None:
            _weights(report, settings, network)
        _folders(report, settings)
    report.lines.append("ready" if report.status == 0 else f"{report.problems} problem(s)")
    return report


def _devices(report: Report) -> None:
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    report.ok("devices", ", ".join(names) + f"; torch built for CUDA {torch.version.cuda or 'none'}")


def _weights(report: Report, settings: Any, network: bool) -> None:
    from dacwatch.codec.model import resolve_release, weights_path
    from dacwatch.daemon.worker import model_spec
    from dacwatch.errors import ModelUnavailableError

    spec = model_spec(settings)
    try:
        report.ok("weights", f"{spec.describe()}: {weights_path(spec, settings.model.cache_dir, download=False)}")
        return
    except ModelUnavailableError as exc:
        if spec.weights is not None:
            report.bad("weights", str(exc))
            return
        missing = str(exc)
    try:
        _tag, url = resolve_release(spec)
    except ModelUnavailableError as exc:
        report.bad("weights", str(exc))
        return
    if not network:
        report.info("weights", f"{missing}; the first start fetches {url} (--network tries that address now)")
        return
    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as response:
            report.ok("weights", f"{missing}; fetchable: {url} answered {response.status}")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        report.bad(
            "weights",
            f"{missing}, and {url} cannot be reached ({exc}); copy the weights file into the cache "
            "or set model.weights (env DACWATCH_MODEL__WEIGHTS)",
        )


def _folders(report: Report, settings: Any) -> None:
    folders = {"inbox": settings.inbox, "outbox": settings.outbox, "done": settings.done}
    folders |= {"failed": settings.failed, "state_dir": settings.state_dir}
    if settings.on_success != "move":
        folders.pop("done")
    for name, path in folders.items():
        path = Path(path)
        if path.is_dir():
            if os.access(path, os.W_OK | os.X_OK):
                report.ok(name, f"{path} is writable")
            else:
                report.bad(name, f"{path} is not writable by this user (uid {os.getuid()})")
            continue
        parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
        if not settings.create_folders:
            report.bad(name, f"{path} does not exist, and create_folders is false")
        elif os.access(parent, os.W_OK | os.X_OK):
            report.ok(name, f"{path} does not exist yet; it will be made at startup (under {parent})")
        else:
            report.bad(name, f"{path} does not exist, and {parent} is not writable by this user (uid {os.getuid()})")
