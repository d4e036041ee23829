"""Which of four classes a failure belongs to, decided here and nowhere else.

==================  =====================================================  ===========================
class               examples                                               what the worker does
==================  =====================================================  ===========================
the file's fault    not audio, a damaged ``.dac``, below the quality floor  ``failed/`` + ``.error.json``
a fault of the      any error of the file system (ENOSPC, EIO, EROFS,       back off, keep the file,
moment              EACCES, ENAMETOOLONG, EXDEV, EISDIR...), out of memory  keep serving; counted
configuration       an invalid setting                                     refused before READY
our bug             anything else                                          traceback, keep the file
==================  =====================================================  ===========================

An error of the operating system is never the file's fault: whatever the kernel
refused (space, permissions, a name, a folder where the output should go, a
failing disk) may be put right without touching the file, and the file's bytes
were never judged. Only what was *read* and found wrong makes a file bad. The
few errnos that can only come from a wrong call (a bad descriptor, a bad address)
are our bug. Callers never inspect ``errno`` themselves: they pass what they
caught to :func:`classify` or :func:`os_fault`.
"""

from __future__ import annotations

import enum
import errno

from dacwatch.errors import (
    ConfigError,
    DacwatchError,
    ModelMismatchError,
    ModelUnavailableError,
    PermanentError,
    TransientError,
)


class Fault(enum.Enum):
    FILE = "the file's fault"
    MOMENT = "a fault of the moment"
    CONFIG = "configuration"
    BUG = "our bug"


# Only a wrong call of ours can make the kernel say these.
_BUG_ERRNOS = frozenset({errno.EBADF, errno.EFAULT})


class FileSystemFault(TransientError):
    """An error of the file system met on the conversion path: a fault of the moment.

    The message says what was being done to which path, the kernel's reason and the
    errno's name; ``errno_name`` ("ENOSPC") labels the log and the metric."""

    def __init__(self, message: str, errno_name: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "OSError")


def os_fault(exc: OSError, what: str) -> DacwatchError:
    """The dacwatch error for ``exc``, met while doing ``what`` ("writing /out/a.dac").

    Every errno but a wrong call's is a fault of the moment; a wrong call's is our
    bug (:class:`BugError`; raise it ``from exc`` to keep the original)."""
    reason = exc.strerror or str(exc)
    if exc.errno in _BUG_ERRNOS:
        return BugError(f"{what}: {reason}")
    return FileSystemFault(f"{what}: {reason} ({errno_name(exc)})", errno_name(exc))


class BugError(DacwatchError):
    """An error that only a mistake in dacwatch can cause."""


def classify(exc: BaseException) -> Fault:
    """The class of any exception that reached the worker."""
    if isinstance(exc, PermanentError):
        return Fault.FILE
    if isinstance(exc, (TransientError, ModelUnavailableError)):
        return Fault.MOMENT
    if isinstance(exc, (ConfigError, ModelMismatchError)):  # the host's settings or weights
        return Fault.CONFIG
    if isinstance(exc, OSError):
        return Fault.BUG if exc.errno in _BUG_ERRNOS else Fault.MOMENT
    return Fault.BUG


def label(exc: BaseException) -> str:
    """A short label for a fault of the moment (the errno's name, or the error's type)."""
    if isinstance(exc, FileSystemFault):
        return exc.errno_name
    if isinstance(exc, OSError):
        return errno_name(exc)
    return type(exc).__name__


def crosses_devices(exc: OSError) -> bool:
    """A rename refused only because source and target lie on different file systems."""
    return exc.errno == errno.EXDEV


__all__ = ["BugError", "Fault", "FileSystemFault", "classify", "crosses_devices", "label", "os_fault"]
