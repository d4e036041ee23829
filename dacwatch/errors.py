"""The one exception tree of dacwatch.

A :class:`PermanentError` means the input itself is bad: converting it again
will fail again, so the file is quarantined with the reason. A
:class:`TransientError` means the machine was in the way (out of memory, disk
full, a folder that vanished): the job is retried later and the source kept.
"""

from __future__ import annotations


class DacwatchError(Exception):
    """Base of every error dacwatch raises on purpose."""


class PermanentError(DacwatchError):
    """Bad input: retrying cannot help, quarantine the file."""


class TransientError(DacwatchError):
    """A fault of the moment: retry with backoff, keep the source."""


class OutOfMemoryError(TransientError):
    """The device ran out of memory: retry, first with a smaller batch."""


class SourceChanged(DacwatchError):
    """The source changed while it was being converted: the output is dropped, and the
    new version is a job of its own."""


class ModelUnavailableError(DacwatchError):
    """The requested model cannot be loaded (no weights, offline, bad file)."""


class ModelMismatchError(DacwatchError):
    """A file's codes were made by a network other than any this host may use for it:
    decoding would give wrong audio, so it is refused, naming the network needed. Not
    the file's fault (it is the host's weights), so the daemon keeps the file."""


class ConfigError(DacwatchError):
    """The configuration is missing or invalid."""


class UsageError(DacwatchError):
    """A command asked for what its input cannot give (an excerpt past the file's end):
    the command line is wrong, as with a bad argument (exit 2)."""
