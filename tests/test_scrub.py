"""dacwatch scrub over a real archive tree: every kind of damage found once, nothing else
flagged, nothing modified."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dacwatch.codec.model import ModelSpec
from dacwatch.convert import CodecPool, CodecSettings, encode_file
from dacwatch.scrub import RateLimit

from .conftest import noise
from .daemon import Daemon, wav


def digests(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scrub")
    tree = root / "archive"
    (tree / "2019" / "talks").mkdir(parents=True)
    audio = wav(root / "talk.wav", seconds=4.0, rate=44100)
    pool = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu"))
    files = {
        "packed": encode_file(pool, audio, tree / "2019" / "talks" / "good.dac").output,
        "int16": encode_file(pool, audio, tree / "good-int16.dac", code_format="int16").output,
    }
    # Damage: one flipped byte in the middle of the codes, a file cut short.
    flipped = tree / "2019" / "flipped.dac"
    data = bytearray(files["packed"].read_bytes())
    with zipfile.ZipFile(files["packed"]) as zf:
        info = zf.getinfo("codes.npy")
    data[info.header_offset + 200] ^= 0x10
    flipped.write_bytes(bytes(data))
    truncated = tree / "truncated.dac"
    truncated.write_bytes(files["packed"].read_bytes()[:-700])
    # Weights this host does not have: a network of the same shape with other weights.
    other = root / "elsewhere.pth"
    from dacwatch.codec.model import tiny_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_model("44khz", seed=77).save(str(other), package=False)
    absent = encode_file(CodecPool(ModelSpec(weights=other), CodecSettings("cpu")), audio, tree / "absent.dac").output
    other.unlink()
    # DAC 1.0.0's own compress, and the seed script's .npz.
    from audiotools import AudioSignal
    from dac.model import DAC

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dac_model = DAC.load(str(tiny_weights)).eval()
        signal = AudioSignal(torch.from_numpy(noise(1, 2 * 44100, seed=3))[None], 44100)
        old = Path(dac_model.compress(signal, win_duration=1.0).save(tree / "dac100"))
    seed = tree / "seed.dac"
    codes = np.random.default_rng(1).integers(0, 64, size=(40, 4, 1)).astype(np.int16)
    seed_meta = {"sample_rate": 44100, "original_length": 40 * 512 - 10, "channels": 1, "input_db": np.float32(-16.0)}
    with open(seed, "wb") as f:
        np.savez(f, codes=codes, metadata=np.array(seed_meta, dtype=object))
    return {**files, "flipped": flipped, "truncated": truncated, "absent": absent, "dac100": old, "seed": seed}


def scrub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dacwatch", "scrub", *args], capture_output=True, text=True)


def test_each_problem_is_found_once_and_nothing_else(archive: dict[str, Path], tiny_weights: Path) -> None:
    tree = archive["packed"].parents[2]
    before = digests(tree)
    out = scrub(str(tree), "--weights", str(tiny_weights), "--device", "cpu", "--decode", "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    found = {(Path(p["path"]).name, p["check"]) for p in report["problems"]}
    assert found == {("flipped.dac", "crc"), ("truncated.dac", "crc"), ("absent.dac", "weights")}, report
    assert len(report["problems"]) == 3 and report["files"] == 7 and report["clean"] == 4
    assert "elsewhere.pth" in next(p["detail"] for p in report["problems"] if p["check"] == "weights")
    assert digests(tree) == before  # nothing modified, moved or touched


def test_a_clean_tree_passes_in_words(archive: dict[str, Path], tiny_weights: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in ("packed", "int16", "dac100", "seed"):
        shutil.copy(archive[name], clean / archive[name].name)
    out = scrub(str(clean), "--weights", str(tiny_weights), "--device", "cpu", "--decode", "full")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().startswith("scrub: 4 files, 4 clean, 0 with a problem")


def test_codes_out_of_range_and_a_decode_that_fails_are_found(
    archive: dict[str, Path], tiny_weights: Path, tmp_path: Path
) -> None:
    """A file whose CRC is right (rewritten whole) but whose codes lie outside the codebook."""
    from dacwatch.formats import container

    dac = container.read(archive["int16"])
    codes = np.asarray(dac.codes).copy()
    codes[5, 0, 0] = 1000  # the tiny network's codebooks have 64 entries
    bad = tmp_path / "range.dac"
    with open(bad, "wb") as f:
        container.write(f, dac.metadata, codes, "int16")
    out = scrub(str(bad), "--weights", str(tiny_weights), "--device", "cpu")
    assert out.returncode == 1 and f"PROBLEM {bad}: codes: " in out.stdout, out.stdout


def test_the_read_rate_is_held() -> None:
    clock = [0.0]
    slept: list[float] = []
    limit = RateLimit(2.0, clock=lambda: clock[0], sleep=slept.append)
    limit.spend(1_000_000)  # half a second's worth at 2 MB/s, at time 0
    assert slept == [pytest.approx(0.5)]
    clock[0] = 10.0
    limit.spend(1_000_000)  # far behind the allowance: no wait
    assert len(slept) == 1
    assert RateLimit(None).total == 0


def test_the_daemon_scrubs_its_outbox_in_the_background(tmp_path: Path, tiny_weights: Path) -> None:
    d = Daemon(tmp_path, tiny_weights, scrub__interval_s=1.0, scrub__max_read_mb_s=50.0)
    try:
        d.start().ready()
        wav(d.inbox / "talk.wav", seconds=1.0, rate=44100)
        d.wait_event("job.done")
        good = d.outbox / "talk.dac"
        rotten = d.outbox / "old" / "rotten.dac"
        rotten.parent.mkdir()
        data = bytearray(good.read_bytes())
        data[len(data) // 2] ^= 0x01  # bit rot in a file converted long ago
        rotten.write_bytes(bytes(data))
        before = digests(d.outbox)
        problems = d.wait_event("scrub.problem", timeout=30)
        d.wait_event("scrub.completed", count=2, timeout=30)
        assert {(Path(p["path"]).name, p["check"]) for p in d.events("scrub.problem")} == {("rotten.dac", "crc")}
        assert problems[0]["detail"]
        assert digests(d.outbox) == before  # nothing modified or moved
        assert d.stop() == 0
    finally:
        d.close()
