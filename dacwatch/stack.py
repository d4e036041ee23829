"""Does the machine-learning stack (torch, torchaudio, DAC) load, and if not, one sentence why.

torchaudio's binary loads only against the torch it was built with, and
descript-audiotools imports torchaudio as soon as ``dac`` is imported, so a
mismatched pair (torch upgraded by hand, an install that ignored the lock
file) fails deep inside a ``.so`` loader. This module turns that into one line
naming the versions installed and the command that restores the locked set.
It imports nothing heavy at module level: it must work when torch does not.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

from dacwatch.errors import ConfigError

# The set requirements/lock.txt installs (tests/test_stack.py keeps the two in step).
LOCKED = {"torch": "2.11.0", "torchaudio": "2.11.0"}
RESTORE = "pip install --require-hashes -r requirements/lock.txt"
# What must import for encoding, decoding and the daemon, in the order that names the culprit.
MODULES = ("numpy", "torch", "torchaudio", "dac")
DISTRIBUTIONS = {"numpy": "numpy", "torch": "torch", "torchaudio": "torchaudio", "dac": "descript-audio-codec"}


class StackError(ConfigError):
    """torch, torchaudio or DAC does not import on this host: an installation fault (exit 2)."""


def installed(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def restore_command() -> str:
    """The command that reinstalls the locked set into this interpreter's environment."""
    pip = Path(sys.executable).with_name("pip")
    return f"{pip if pip.exists() else 'pip'} {RESTORE.removeprefix('pip ')} (in a dacwatch checkout)"


def _release(version: str | None) -> tuple[str, ...]:
    return tuple((version or "").split("+")[0].split(".")[:3])


def problem() -> str | None:
    """None when the stack imports; otherwise one sentence saying what is wrong and how to fix it."""
    torch_v, audio_v = installed("torch"), installed("torchaudio")
    for module in MODULES:
        try:
            importlib.import_module(module)
        except (ImportError, OSError, RuntimeError, AttributeError) as exc:
            failing = module
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            break
    else:
        return None
    if torch_v is None or audio_v is None:
        missing = " and ".join(d for d, v in (("torch", torch_v), ("torchaudio", audio_v)) if v is None)
        return f"{missing} is not installed; install the locked set: {restore_command()}"
    pair = f"torch {torch_v} and torchaudio {audio_v}"
    if failing in ("torchaudio", "dac") and _release(torch_v) != _release(audio_v):
        return (
            f"{pair} do not match (torchaudio's library does not load against this torch; "
            f"dacwatch is locked to torch {LOCKED['torch']} and torchaudio {LOCKED['torchaudio']}); "
            f"restore the locked set: {restore_command()}"
        )
    version = installed(DISTRIBUTIONS[failing])
    return (
        f"{failing} {version or '(not installed)'} does not load beside {pair} ({reason}); "
        f"restore the locked set: {restore_command()}"
    )


def require() -> None:
    """Raise :class:`StackError` with :func:`problem`'s sentence when the stack does not load."""
    why = problem()
    if why is not None:
        raise StackError(why)
