"""Format 2: codes at the codec's own bitrate, random access kept, repack exact."""

from __future__ import annotations

import json
import math
import re
import resource
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dacwatch.formats import container
from dacwatch.formats.container import Metadata, ModelRecord, read_codes
from dacwatch.formats.packing import Packing, pack, unpack

# The three released model types: sample rate, hop, codebooks (all 1024 entries).
MODELS = {"44khz": (44100, 512, 9), "24khz": (24000, 320, 32), "16khz": (16000, 320, 12)}


def record(model: str, codebook_size: int = 1024) -> ModelRecord:
    rate, hop, books = MODELS[model]
    return ModelRecord(model, "8kbps", "0.0.1", rate, hop, codebook_size, books, books)


def metadata(rec: ModelRecord, frames: int, channels: int) -> Metadata:
    length = frames * rec.hop_length
    return Metadata(rec, rec.sample_rate, length, channels, length, -20.0, 4.0)


def codes(frames: int, books: int, channels: int, size: int = 1024, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, size, (frames, books, channels)).astype(np.int16)


def written(path: Path, meta: Metadata, data: np.ndarray, code_format: str = "packed") -> Path:
    with open(path, "wb") as f:
        container.write(f, meta, data, code_format)
    return path


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip_at_odd_lengths(tmp_path: Path, model: str, channels: int) -> None:
    rec = record(model)
    group = Packing.for_codes(1024, rec.n_codebooks, channels, 1).group_frames
    for frames in sorted({1, group - 1, group, group + 1, 7 * group + 3, 1000}):
        if frames < 1:
            continue
        data = codes(frames, rec.n_codebooks, channels, seed=frames)
        path = written(tmp_path / f"{frames}.dac", metadata(rec, frames, channels), data)
        back = container.read(path)
        assert back.metadata.version == 2 and np.array_equal(np.asarray(back.codes), data), frames
        for a, b in [(0, 1), (frames // 3, frames // 3 + group + 1), (frames - 1, frames)]:
            assert np.array_equal(back.codes[a:b], data[a:b])


@pytest.mark.parametrize("size", [2, 3, 64, 100, 1000, 1024, 4096, 32768])
def test_every_codebook_size_packs_exactly(size: int) -> None:
    data = codes(37, 5, 2, size=size, seed=size)
    data[0, 0, 0], data[-1, -1, -1] = 0, size - 1  # both ends of the range
    p = Packing.for_codes(size, 5, 2, 37)
    assert p.bits == math.ceil(math.log2(size)) and (p.group_frames * 5 * 2 * p.bits) % 8 == 0
    assert np.array_equal(unpack(pack(data, p), p, 5, 2)[:37], data)
    with pytest.raises(ValueError, match="out of range"):
        pack(np.full((1, 5, 2), 1 << p.bits, dtype=np.int32), p)


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def test_an_excerpt_reads_only_its_groups(tmp_path: Path) -> None:
    rec = record("44khz")
    frames = 310_000  # an hour of mono: 3.5 MB packed
    data = codes(frames, 9, 1, seed=3)
    path = written(tmp_path / "hour.dac", metadata(rec, frames, 1), data)
    read_codes(path, 0, 1)  # warm: imports, the page cache
    before, faults = _bytes_read(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    excerpt = read_codes(path, 200_000, 86)  # one second
    after, faulted = _bytes_read(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    assert np.array_equal(excerpt, data[200_000:200_086])
    assert after - before < 64 * 1024, after - before  # zip and npy headers, metadata
    # The codes come through the memory map: pages touched, not read() calls. Unpacking all
    # 3.5 MB faults in thousands of pages (the map and the bit arrays); 22 groups, a few.
    assert faulted < 300, faulted


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("seconds", [10, 60, 3600])
def test_size_is_the_nominal_bitrate_plus_a_fixed_header(
    tmp_path: Path, model: str, channels: int, seconds: int
) -> None:
    rec = record(model)
    frames = math.ceil(seconds * rec.sample_rate / rec.hop_length)
    data = np.zeros((frames, rec.n_codebooks, channels), dtype=np.int16)
    path = written(tmp_path / "x.dac", metadata(rec, frames, channels), data)
    nominal = frames * rec.n_codebooks * channels * 10 / 8  # bytes at 10 bits a code
    with zipfile.ZipFile(path) as zf:
        payload = zf.getinfo("codes.npy").file_size - 128  # the .npy header is 128 bytes
    header = path.stat().st_size - payload
    assert 0 <= payload - nominal <= Packing.for_codes(1024, rec.n_codebooks, channels, 1).group_bytes
    assert header < 3072  # zip and .npy headers, and the metadata (JSON as a numpy unicode scalar: UTF-32)
    assert path.stat().st_size <= 1.01 * nominal + header


def test_plain_numpy_unpacks_it_with_the_readme_rule(tmp_path: Path) -> None:
    """docs/format.md: the unpacking rule in a few lines of numpy, run as written."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text()
    found = re.search(r"<!-- unpacking rule -->\n( *)```python\n(.*?)\n *```", readme, re.S)
    assert found is not None
    rule = textwrap.dedent(found.group(2))
    rec = record("44khz")
    data = codes(123, 9, 2, seed=9)
    path = written(tmp_path / "talk.dac", metadata(rec, 123, 2), data)
    scope: dict[str, object] = {}
    exec(rule.replace('"talk.dac"', repr(str(path))), scope)  # our own README's code, run as written
    assert np.array_equal(np.asarray(scope["codes"]), data)


def test_repack_is_exact_both_ways_and_atomic(tmp_path: Path) -> None:
    rec = record("24khz")
    data = codes(501, 32, 2, seed=5)
    tree = tmp_path / "archive" / "deep"
    tree.mkdir(parents=True)
    one = written(tree / "one.dac", metadata(rec, 501, 2), data, "int16")
    two = written(tmp_path / "archive" / "two.dac", metadata(rec, 501, 2), data, "int16")
    broken = tmp_path / "archive" / "broken.dac"
    broken.write_bytes(one.read_bytes()[:-100])
    sizes = {p: p.stat().st_size for p in (one, two, broken)}

    def repack(code_format: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dacwatch", "repack", str(tmp_path / "archive"), "--code-format", code_format],
            capture_output=True,
            text=True,
        )

    out = repack("packed")
    assert out.returncode == 1  # the broken file
    assert "2 rewritten" in out.stdout and "1 failed" in out.stdout and f"failed: {broken}" in out.stdout
    assert broken.stat().st_size == sizes[broken]  # left exactly as it was
    for path in (one, two):
        back = container.read(path)
        assert back.metadata.version == 2 and np.array_equal(np.asarray(back.codes), data)
        assert path.stat().st_size < 0.65 * sizes[path]  # 10 bits of 16, plus the header
    assert not [p for p in tmp_path.rglob(".dacwatch-tmp-*")]
    broken.unlink()
    out = repack("int16")
    assert out.returncode == 0 and "2 rewritten" in out.stdout
    for path in (one, two):
        back = container.read(path)
        assert back.metadata.version == 1 and np.array_equal(np.asarray(back.codes), data)
        assert path.stat().st_size == sizes[path]  # byte-for-byte the size it had
    assert "2 already int16" in repack("int16").stdout


def test_info_shows_the_codecs_bitrate_and_the_files_own(tmp_path: Path) -> None:
    rec = record("44khz")
    frames = math.ceil(20 * 44100 / 512)
    meta = replace(metadata(rec, frames, 1), length=20 * 44100, model_length=20 * 44100)
    path = written(tmp_path / "talk.dac", meta, codes(frames, 9, 1))
    out = subprocess.run(
        [sys.executable, "-m", "dacwatch", "info", str(path), "--json"], capture_output=True, text=True
    )
    info = json.loads(out.stdout)
    assert info["format"] == "dacwatch 2"
    assert info["bitrate_kbps"] == pytest.approx(7.75, abs=0.01)
    assert info["file_kbps"] == pytest.approx(info["file_bytes"] * 8 / 20 / 1000)
    assert 7.75 < info["file_kbps"] < 7.75 + 3072 * 8 / 20 / 1000  # the codes, and a header under 3 KB
