"""Older .dac files are pickles: a corpus of hostile ones (code-running gadgets, and
forged numpy objects that crash a naive reader) in both older layouts and every
pickle protocol. Each is refused with a clear error; nothing in it runs; the
process survives. Genuine arrays in every protocol still read back exactly."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dacwatch.formats import container
from dacwatch.formats.container import ContainerError

from .daemon import Daemon, wav

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
MULTIARRAY = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray


class Reduce:
    """Pickles as ``func(*args)`` (then ``BUILD state`` if given), whatever func is."""

    def __init__(self, func: Any, args: tuple[Any, ...], state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> Any:
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def forged_dtype(name: str, state: tuple[Any, ...]) -> Reduce:
    """A numpy.dtype whose pickled state (its flags above all) says what we like."""
    return Reduce(np.dtype, (name, False, True), state)


OBJECT_FLAGS_0 = forged_dtype("O8", (3, "|", None, None, None, -1, -1, 0))
OBJECT_FIELD_FLAGS_0 = forged_dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))
RAW = b"AAAAAAAA"  # a "pointer" 0x4141414141414141


def code_gadgets(marker: Path) -> dict[str, Any]:
    """Each would create ``marker`` (or run a command) if it were unpickled naively."""
    touch = f"open({str(marker)!r}, 'w')"
    import builtins
    import subprocess as sp

    return {
        "builtins.eval": Reduce(builtins.eval, (touch,)),
        "builtins.exec": Reduce(builtins.exec, (touch,)),
        "builtins.open": Reduce(builtins.open, (str(marker), "w")),
        "builtins.getattr": Reduce(builtins.getattr, ("", "join")),
        "builtins.__import__": Reduce(builtins.__import__, ("os",)),
        "os.system": Reduce(os.system, (f"touch {marker}",)),
        "subprocess.Popen": Reduce(sp.Popen, (["touch", str(marker)],)),
        "subprocess.check_output": Reduce(sp.check_output, (["touch", str(marker)],)),
        "numpy.load (unpickles a file)": Reduce(np.load, (str(marker),)),
        "numpy.frombuffer (raw memory)": Reduce(np.frombuffer, (RAW, "O")),
        "numpy.testing.assert_ (a function)": Reduce(np.testing.assert_, (True,)),
        # numpy's own reconstruct, but not of a plain ndarray.
        "_reconstruct of a masked array": Reduce(MULTIARRAY._reconstruct, (np.ma.MaskedArray, (0,), b"b")),
        # A code gadget nested in an array's BUILD state: refused before the array is built.
        "eval inside an array's state": Reduce(
            MULTIARRAY._reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), np.dtype("i1"), False, Reduce(eval, (touch,)))
        ),
    }


FORGED = {
    # The 46-byte file of the report: ndarray((), 'O', raw bytes).
    "ndarray called directly": Reduce(np.ndarray, ((), "O", RAW)),
    "object array over raw bytes": Reduce(
        MULTIARRAY._reconstruct, (np.ndarray, (0,), b"b"), (1, (), np.dtype("O"), False, RAW)
    ),
    "object dtype with flags 0": Reduce(MULTIARRAY._reconstruct, (np.ndarray, (0,), b"b"), (1, (), OBJECT_FLAGS_0, False, RAW)),
    "object field with flags 0": Reduce(
        MULTIARRAY._reconstruct, (np.ndarray, (0,), b"b"), (1, (), OBJECT_FIELD_FLAGS_0, False, RAW)
    ),
    "object scalar from raw bytes": Reduce(MULTIARRAY.scalar, (OBJECT_FLAGS_0, RAW)),
    "object field scalar": Reduce(MULTIARRAY.scalar, (OBJECT_FIELD_FLAGS_0, RAW)),
    "more elements than bytes": Reduce(
        MULTIARRAY._reconstruct, (np.ndarray, (0,), b"b"), (1, (1 << 20,), np.dtype("i8"), False, RAW)
    ),
}  # fmt: skip


def raw_opcodes(marker: Path) -> dict[str, bytes]:
    """Spellings a pickler never emits for these (protocol 4+ pickles above already use
    STACK_GLOBAL), and the 46-byte file of the report."""
    cmd = f"touch {marker}".encode()
    return {
        "INST (protocol 0)": b"(S'" + cmd + b"'\nios\nsystem\n.",
        "OBJ (protocol 1)": b"(cos\nsystem\nS'" + cmd + b"'\no.",
        "46-byte file of the report": b"\x80\x03cnumpy\nndarray\n)X\x01\x00\x00\x00OC\x08AAAAAAAA\x87R.",
    }


def dac_1_0_0_layout(path: Path, payload: bytes) -> Path:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    path.write_bytes(header.getvalue() + payload)
    return path


def seed_layout(path: Path, payload: bytes) -> Path:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    codes = io.BytesIO()
    np.lib.format.write_array(codes, np.zeros((3, 9, 1), np.int16))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("codes.npy", codes.getvalue())
        zf.writestr("metadata.npy", header.getvalue() + payload)
    return path


LAYOUTS = {"dac-1.0.0": dac_1_0_0_layout, "seed": seed_layout}


def as_file(layout: str, gadget: Any, protocol: int, tmp_path: Path) -> Path:
    body = {"codes": gadget, "metadata": {"dac_version": "1.0.0"}} if layout == "dac-1.0.0" else gadget
    return LAYOUTS[layout](tmp_path / f"{layout}-{protocol}.dac", pickle.dumps(body, protocol=protocol))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_code_running_gadgets_are_refused_in_every_protocol(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    for name, gadget in code_gadgets(marker).items():
        with pytest.raises(ContainerError, match="refusing a pickle"):
            container._unpickle(pickle.dumps({"codes": gadget}, protocol=protocol), name)
        assert not marker.exists(), name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_code_running_gadgets_are_refused_in_both_layouts(tmp_path: Path, layout: str) -> None:
    marker = tmp_path / "pwned"
    for protocol in (2, 5):
        for name, gadget in code_gadgets(marker).items():
            with pytest.raises(ContainerError, match="refusing a pickle"):
                container.read(as_file(layout, gadget, protocol, tmp_path))
            assert not marker.exists(), (name, protocol)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forged_numpy_objects_are_refused_and_never_crash(tmp_path: Path, layout: str, protocol: int) -> None:
    for name, gadget in FORGED.items():
        with pytest.raises(ContainerError, match="refusing a pickle"):
            container.read(as_file(layout, gadget, protocol, tmp_path))
            pytest.fail(f"{name} was read")
    # ...and one in a separate process, as the CLI meets it: an error, not a crash.
    path = as_file(layout, FORGED["object dtype with flags 0"], protocol, tmp_path)
    cli = subprocess.run([sys.executable, "-m", "dacwatch", "info", str(path)], capture_output=True, text=True)
    assert cli.returncode == 1 and "refusing a pickle" in cli.stderr


def test_raw_opcode_spellings_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, payload in raw_opcodes(marker).items():
        for layout, write in LAYOUTS.items():
            with pytest.raises(ContainerError, match="refusing a pickle"):
                container.read(write(tmp_path / f"{layout}.dac", payload))
        assert not marker.exists(), name


GENUINE = {
    "int16 codes": np.arange(24, dtype=np.int16).reshape(2, 3, 4),
    "big-endian int64": np.arange(6, dtype=">i8"),
    "fortran order": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    "unicode": np.array(["44khz", "8kbps"]),
    "empty": np.zeros((0, 9, 2), np.int16),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_genuine_arrays_and_scalars_read_back_exactly(protocol: int) -> None:
    body = {
        **GENUINE,
        "scalar": np.float32(-16.5),
        "nested": [{"a": (1, 2.5, "x", b"y", None, True)}],
        "object array": np.array({"inner": np.int64(7)}, dtype=object),
    }
    got = container._unpickle(pickle.dumps(body, protocol=protocol), "genuine")
    for key, value in GENUINE.items():
        assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key
        assert got[key].flags.f_contiguous == value.flags.f_contiguous or value.ndim < 2
    assert got["scalar"] == np.float32(-16.5) and got["scalar"].dtype == np.float32
    assert got["nested"] == [{"a": (1, 2.5, "x", b"y", None, True)}]
    assert got["object array"][()] == {"inner": 7}


def test_a_forged_file_in_the_inbox_is_quarantined_and_the_daemon_runs_on(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start().ready()
    forged = dac_1_0_0_layout(tmp_path / "x.dac", raw_opcodes(tmp_path / "m")["46-byte file of the report"])
    os.rename(forged, daemon.inbox / "x.dac")
    failed = daemon.wait_event("job.failed")
    assert "refusing a pickle" in failed[0]["error"]
    assert (daemon.failed / "x.dac").exists()
    wav(daemon.inbox / "next.wav")
    daemon.wait_event("job.done")
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"dac_version": np.array([1, 2]), "channels": 1, "chunk_length": 9}, "not a valid older .dac file"),
        ({"dac_version": "1.0.0", "channels": 1, "chunk_length": 9, "padding": np.zeros(3)}, "not a valid older"),
    ],
)
def test_values_of_the_wrong_kind_are_the_files_fault(tmp_path: Path, metadata: dict[str, Any], message: str) -> None:
    """Arrays where DAC 1.0.0 wrote strings make comparisons fail: that is a bad file
    (quarantined), not a bug in dacwatch (which would stop the worker)."""
    body = {
        "codes": np.zeros((1, 9, 4), np.uint16),
        "metadata": {"sample_rate": 44100, "original_length": 9, **metadata},
    }
    path = dac_1_0_0_layout(tmp_path / "odd.dac", pickle.dumps(body, protocol=3))
    with pytest.raises(ContainerError, match=message):
        container.read(path)


def test_a_file_with_no_codes_is_refused(tmp_path: Path) -> None:
    body = {
        "codes": np.zeros((1, 9, 0), np.uint16),
        "metadata": {
            "dac_version": "1.0.0",
            "channels": 1,
            "chunk_length": 9,
            "sample_rate": 44100,
            "original_length": 0,
        },
    }
    with pytest.raises(ContainerError, match="holds no codes"):
        container.read(dac_1_0_0_layout(tmp_path / "empty.dac", pickle.dumps(body, protocol=3)))
