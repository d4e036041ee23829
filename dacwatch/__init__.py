"""dacwatch: a folder that converts audio to Descript Audio Codec codes and back.

For library use, the names in ``__all__`` (README, "As a library")::

    from dacwatch import CodecPool, CodecSettings, ModelSpec, decode_file, encode_file, read

They load lazily: ``import dacwatch`` imports neither torch nor DAC, so the command
line can say in one sentence when they do not load (dacwatch.stack).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that owns it
_EXPORTS = {
    "ChunkedCodec": "codec.chunked",
    "CodecPool": "convert",
    "CodecSettings": "convert",
    "Result": "convert",
    "encode_file": "convert",
    "decode_file": "convert",
    "verify_file": "convert",
    "ModelSpec": "codec.model",
    "load_model": "codec.model",
    "OutputFormat": "audio",
    "DacFile": "formats.container",
    "Metadata": "formats.container",
    "read": "formats.container",
    "write": "formats.container",
    "encode_plan": "codec.windows",
    "DacwatchError": "errors",
    "PermanentError": "errors",
    "TransientError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dacwatch' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
