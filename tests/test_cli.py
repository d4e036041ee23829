"""The one-shot CLI on real files with a real (tiny, random) network loaded from a weights file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dacwatch.cli import main
from dacwatch.formats.container import read
from dacwatch.fsio import TEMP_PREFIX

from .conftest import tone


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


@pytest.mark.parametrize(
    "rate, channels, seconds",
    [(8000, 1, 1.2), (44100, 2, 2.5), (96000, 6, 0.6), (44100, 1, 0.01), (22050, 2, 0.0)],
)
def test_encode_decode_round_trip_restores_rate_and_length(
    tmp_path: Path, tiny_weights: Path, rate: int, channels: int, seconds: float
) -> None:
    src = tmp_path / "in.wav"
    data = tone(rate, seconds, channels) if seconds else np.zeros((0, channels))
    sf.write(str(src), data, rate, subtype="PCM_24")
    if seconds == 0:
        assert run("encode", src, tmp_path / "x.dac", "--weights", tiny_weights) == 1
        return
    assert run("encode", src, tmp_path / "x.dac", "--weights", tiny_weights, "--window", "0.5") == 0
    dac = read(tmp_path / "x.dac")
    assert dac.metadata.sample_rate == rate and dac.metadata.channels == channels
    assert dac.metadata.length == len(data)
    assert run("decode", tmp_path / "x.dac", tmp_path / "out.wav", "--weights", tiny_weights, "--resample") == 0
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.samplerate, info.channels, info.frames) == (rate, channels, len(data))
    out, _ = sf.read(str(tmp_path / "out.wav"))
    assert np.isfinite(out).all()


def test_silent_file_round_trips_without_nan(tmp_path: Path, tiny_weights: Path) -> None:
    src = tmp_path / "silence.wav"
    sf.write(str(src), np.zeros((44100, 1)), 44100)
    assert run("encode", src, tmp_path / "s.dac", "--weights", tiny_weights) == 0
    assert read(tmp_path / "s.dac").metadata.loudness is None
    assert run("decode", tmp_path / "s.dac", tmp_path / "s.wav", "--weights", tiny_weights) == 0
    assert np.isfinite(sf.read(str(tmp_path / "s.wav"))[0]).all()


def test_chunked_file_equals_whole_file_reference(
    tmp_path: Path, tiny_weights: Path, write_wav: Callable[..., Path]
) -> None:
    src = write_wav("a.wav", 48000, 2.3, 2)
    assert (
        run("encode", src, tmp_path / "chunked.dac", "--weights", tiny_weights, "--window", "0.3", "--batch", "3") == 0
    )
    assert run("encode", src, tmp_path / "whole.dac", "--weights", tiny_weights, "--window", "0") == 0
    assert np.array_equal(
        np.asarray(read(tmp_path / "chunked.dac").codes), np.asarray(read(tmp_path / "whole.dac").codes)
    )


def test_excerpt_equals_span_of_full_decode(tmp_path: Path, tiny_weights: Path, write_wav: Callable[..., Path]) -> None:
    src = write_wav("a.wav", 44100, 3.0, 1)
    assert run("encode", src, tmp_path / "a.dac", "--weights", tiny_weights) == 0
    for extra in ([], ["--resample"]):
        assert (
            run("decode", tmp_path / "a.dac", tmp_path / "full.wav", "--weights", tiny_weights, "--overwrite", *extra)
            == 0
        )
        args = ["--start", "1.25", "--duration", "0.5", "--overwrite", "--window", "0.2"]
        assert run("decode", tmp_path / "a.dac", tmp_path / "part.wav", "--weights", tiny_weights, *args, *extra) == 0
        full, rate = sf.read(str(tmp_path / "full.wav"))
        part, _ = sf.read(str(tmp_path / "part.wav"))
        start = round(1.25 * rate)
        assert part.shape[0] == round(0.5 * rate)
        assert np.abs(part - full[start : start + part.shape[0]]).max() <= 1e-4


def test_fewer_codebooks(tmp_path: Path, tiny_weights: Path, write_wav: Callable[..., Path]) -> None:
    src = write_wav("a.wav", 44100, 1.0, 1)
    assert run("encode", src, tmp_path / "a.dac", "--weights", tiny_weights, "--codebooks", "2") == 0
    assert read(tmp_path / "a.dac").codes.shape[1] == 2
    assert run("decode", tmp_path / "a.dac", tmp_path / "a.flac", "--weights", tiny_weights) == 0
    assert sf.info(str(tmp_path / "a.flac")).format == "FLAC"


def test_folder_mode_mirrors_skips_and_reports(
    tmp_path: Path, tiny_weights: Path, write_wav: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    write_wav("in/a.wav", 16000, 0.5, 1)
    write_wav("in/sub/deeper/b.wav", 16000, 0.5, 2)
    (tmp_path / "in/sub/broken.wav").write_bytes(b"RIFF....garbage")
    (tmp_path / "in/notes.txt").write_text("not audio, not taken")
    assert run("encode", tmp_path / "in", tmp_path / "out", "--weights", tiny_weights) == 1
    err = capsys.readouterr().err
    assert "broken.wav" in err and "1 of 3 files failed" in err
    assert (tmp_path / "out/a.dac").is_file() and (tmp_path / "out/sub/deeper/b.dac").is_file()
    assert not (tmp_path / "out/notes.dac").exists()
    before = (tmp_path / "out/a.dac").stat().st_mtime_ns
    (tmp_path / "in/sub/broken.wav").unlink()
    assert run("encode", tmp_path / "in", tmp_path / "out", "--weights", tiny_weights) == 0
    assert (tmp_path / "out/a.dac").stat().st_mtime_ns == before  # existing outputs skipped
    assert run("decode", tmp_path / "out", tmp_path / "back", "--weights", tiny_weights) == 0
    assert (tmp_path / "back/sub/deeper/b.wav").is_file()
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert leftovers == []


def test_existing_output_needs_overwrite(
    tmp_path: Path, tiny_weights: Path, write_wav: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_wav("a.wav")
    (tmp_path / "a.dac").write_text("keep me")
    assert run("encode", src, tmp_path / "a.dac", "--weights", tiny_weights) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "a.dac").read_text() == "keep me"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"hello world\n" * 50), "not audio"),
        (lambda p: None, "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path: Path, tiny_weights: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "bad.wav"
    make(src)
    proc = subprocess.run(
        [sys.executable, "-m", "dacwatch", "encode", str(src), str(tmp_path / "o.dac"), "--weights", str(tiny_weights)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dacwatch: error:") and message.lower() in lines[0].lower(), (
        proc.stderr
    )
    assert not (tmp_path / "o.dac").exists()


def test_unwritable_output_folder_is_one_clear_error(
    tmp_path: Path, tiny_weights: Path, write_wav: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_wav("a.wav")
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    assert run("encode", src, blocker / "a.dac", "--weights", tiny_weights) == 1
    assert "cannot create" in capsys.readouterr().err


def test_info_json_and_verify(
    tmp_path: Path, tiny_weights: Path, write_wav: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_wav("a.wav", 44100, 1.5, 2)
    assert run("encode", src, tmp_path / "a.dac", "--weights", tiny_weights) == 0
    capsys.readouterr()
    assert run("info", tmp_path / "a.dac", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["channels"] == 2
        and info["codebooks"] == 4
        and info["frames"] == 130
        and abs(info["duration_s"] - 1.5) < 1e-9
    )
    assert run("info", tmp_path / "a.dac") == 0
    assert "bitrate" in capsys.readouterr().out
    assert run("verify", src, "--weights", tiny_weights, "--window", "0.2", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"frames_compared": 130, "frames_differing": 0, "window_s": 0.2, "batch": 1}


def test_interrupted_encode_leaves_no_partial_output(
    tmp_path: Path, tiny_weights: Path, write_wav: Callable[..., Path]
) -> None:
    import signal
    import time

    src = write_wav("long.wav", 44100, 30.0, 2)
    out = tmp_path / "long.dac"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dacwatch",
            "encode",
            str(src),
            str(out),
            "--weights",
            str(tiny_weights),
            "--window",
            "0.2",
        ]
    )
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)] == []
    assert os.path.exists(src)


def test_one_shot_commands_read_the_weights_from_the_environment(tmp_path: Path, tiny_weights: Path) -> None:
    """One export serves the daemon and the one-shot commands alike (and the offline
    error says exactly what works where)."""
    source = tmp_path / "a.wav"
    sf.write(str(source), tone(16000, 0.5), 16000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DACWATCH_")}
    env["HOME"] = str(tmp_path / "home")  # an empty weights cache
    cli = [sys.executable, "-m", "dacwatch", "encode", str(source), str(tmp_path / "a.dac"), "--device", "cpu"]
    offline = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert offline.returncode != 0
    assert "DACWATCH_MODEL__WEIGHTS=PATH (every command), --weights PATH (encode, decode, verify)" in offline.stderr
    subprocess.run(cli, env={**env, "DACWATCH_MODEL__WEIGHTS": str(tiny_weights)}, check=True)
    decoded = subprocess.run(
        [sys.executable, "-m", "dacwatch", "decode", str(tmp_path / "a.dac"), str(tmp_path / "b.wav")],
        env={**env, "DACWATCH_MODEL__WEIGHTS": str(tiny_weights)},
        capture_output=True,
        text=True,
    )
    assert decoded.returncode == 0, decoded.stderr


@pytest.mark.parametrize(
    "command, option, value",
    [
        ("encode", "--window", "inf"),
        ("encode", "--window", "-1"),
        ("decode", "--start", "inf"),
        ("decode", "--duration", "inf"),
        ("decode", "--start", "nan"),
        ("decode", "--duration", "-0.5"),
        ("encode", "--batch", "0"),
    ],
)
def test_non_finite_or_negative_numbers_are_refused_at_parsing_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, option: str, value: str
) -> None:
    with pytest.raises(SystemExit) as info:
        run(command, tmp_path / "in", tmp_path / "out", option, value)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and value in err[0], err


def test_info_on_a_fifo_is_refused_at_once(tmp_path: Path, tiny_weights: Path) -> None:
    os.mkfifo(tmp_path / "x.dac")
    os.mkfifo(tmp_path / "f.wav")
    encode = ["encode", str(tmp_path / "f.wav"), str(tmp_path / "o.dac"), "--weights", str(tiny_weights)]
    for command in (["info", str(tmp_path / "x.dac")], encode):
        proc = subprocess.run(
            [sys.executable, "-m", "dacwatch", *command], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"dacwatch: error: {command[1]} is not a regular file"


def test_an_excerpt_past_the_end_is_refused_and_nothing_written(
    tmp_path: Path, tiny_weights: Path, write_wav: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_wav("a.wav", 44100, 1.0, 1)
    assert run("encode", src, tmp_path / "a.dac", "--weights", tiny_weights) == 0
    for extra in ([], ["--resample"]):
        capsys.readouterr()
        args = ("decode", tmp_path / "a.dac", tmp_path / "x.wav", "--weights", tiny_weights, "--start", "100", *extra)
        assert run(*args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "past the file's end at 1.0" in err[0], err
        assert not (tmp_path / "x.wav").exists()
    assert run("decode", tmp_path / "a.dac", tmp_path / "x.wav", "--weights", tiny_weights, "--start", "0.5") == 0
