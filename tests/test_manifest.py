"""An archive as a BagIt bag: ``dacwatch scrub --write-manifest`` makes one that the
Library of Congress's ``bagit`` validates, and ``dacwatch scrub`` then finds what a CRC
cannot (a file replaced by another whole one, one gone, one added), each once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import bagit
import pytest

from dacwatch.codec.model import ModelSpec
from dacwatch.convert import CodecPool, CodecSettings, encode_file

from .daemon import Daemon, wav


def dacwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dacwatch", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> dict[str, Path]:
    """Three whole ``.dac`` files of different audio (each passes every scrub check)."""
    root = tmp_path_factory.mktemp("originals")
    pool = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu"))
    made = {}
    for name, seconds in (("talk", 1.5), ("song", 1.0), ("other", 0.5)):
        audio = wav(root / f"{name}.wav", seconds=seconds, rate=44100)
        made[name] = encode_file(pool, audio, root / f"{name}.dac").output
    return made


@pytest.fixture
def bag(tmp_path: Path, originals: dict[str, Path], tiny_weights: Path) -> Path:
    root = tmp_path / "archive"
    (root / "data" / "2019" / "talks").mkdir(parents=True)
    shutil.copy(originals["talk"], root / "data" / "2019" / "talks" / "talk.dac")
    shutil.copy(originals["song"], root / "data" / "song.dac")
    shutil.copy(originals["talk"], root / "data" / "2019" / "again.dac")
    out = dacwatch("scrub", "--write-manifest", str(root), "--max-read-mb-s", "100")
    assert out.returncode == 0, out.stderr
    assert "3 files" in out.stdout
    return root


def scrub_json(path: Path, tiny_weights: Path) -> dict[str, object]:
    out = dacwatch("scrub", str(path), "--weights", str(tiny_weights), "--device", "cpu", "--json")
    report: dict[str, object] = json.loads(out.stdout or "{}")
    report["returncode"] = out.returncode
    return report


def found(report: dict[str, object]) -> set[tuple[str, str]]:
    problems = report["problems"]
    assert isinstance(problems, list)
    return {(Path(p["path"]).name, p["check"]) for p in problems}


def test_the_bag_written_validates_with_bagit_and_scrubs_clean(bag: Path, tiny_weights: Path) -> None:
    bagit.Bag(str(bag)).validate()  # full validation: every hash, Payload-Oxum, bagit.txt
    lines = (bag / "manifest-sha256.txt").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in lines) == [
        "data/2019/again.dac",
        "data/2019/talks/talk.dac",
        "data/song.dac",
    ]
    report = scrub_json(bag, tiny_weights)
    assert report["returncode"] == 0 and report["problems"] == [] and report["files"] == 3, report
    # A path inside the bag is checked against the bag's manifest too.
    assert scrub_json(bag / "data" / "2019" / "talks", tiny_weights)["problems"] == []


def test_replaced_missing_and_extra_are_each_found_once(
    bag: Path, originals: dict[str, Path], tiny_weights: Path
) -> None:
    shutil.copy(originals["other"], bag / "data" / "song.dac")  # whole, CRC fine: another file
    (bag / "data" / "2019" / "again.dac").unlink()
    shutil.copy(originals["other"], bag / "data" / "2019" / "talks" / "added.dac")
    report = scrub_json(bag, tiny_weights)
    assert report["returncode"] == 1
    assert found(report) == {
        ("song.dac", "manifest-changed"),
        ("again.dac", "manifest-missing"),
        ("added.dac", "manifest-extra"),
    }, report
    assert len(report["problems"]) == 3  # type: ignore[arg-type]
    with pytest.raises(bagit.BagValidationError):
        bagit.Bag(str(bag)).validate()


def test_scrub_inside_a_bag_reports_only_what_lies_below_the_path(bag: Path, tiny_weights: Path) -> None:
    (bag / "data" / "song.dac").unlink()
    shutil.copy(bag / "data" / "2019" / "again.dac", bag / "data" / "2019" / "talks" / "copy.dac")
    report = scrub_json(bag / "data" / "2019", tiny_weights)
    assert found(report) == {("copy.dac", "manifest-extra")}, report
    out = dacwatch("scrub", str(bag / "data" / "2019"), "--weights", str(tiny_weights), "--device", "cpu")
    assert out.returncode == 1 and "manifest-extra" in out.stdout


def test_a_bag_needs_its_data_folder(tmp_path: Path) -> None:
    out = dacwatch("scrub", "--write-manifest", str(tmp_path))
    assert out.returncode == 2 and "data/" in out.stderr
    assert not (tmp_path / "manifest-sha256.txt").exists()


def test_a_daemon_with_output_manifest_keeps_its_outbox_a_bag(tmp_path: Path, tiny_weights: Path) -> None:
    d = Daemon(tmp_path, tiny_weights, output__manifest=True, codec__jobs_per_device=2)
    try:
        d.start().ready()
        assert (d.outbox / "bagit.txt").is_file()
        (d.inbox / "talks").mkdir()
        wav(d.inbox / "talks" / "one.wav", seconds=1.0, rate=44100)
        wav(d.inbox / "two.wav", seconds=0.5, rate=44100)
        d.wait_event("job.done", count=2)
        assert (d.outbox / "data" / "talks" / "one.dac").is_file() and (d.outbox / "data" / "two.dac").is_file()
        bagit.Bag(str(d.outbox)).validate()
        keys = sorted(line.split("  ")[1] for line in (d.outbox / "manifest-sha256.txt").read_text().splitlines())
        assert keys == ["data/talks/one.dac", "data/two.dac"]
        report = scrub_json(d.outbox, tiny_weights)
        assert report["returncode"] == 0 and report["problems"] == [] and report["files"] == 2, report
        assert d.stop() == 0
    finally:
        d.close()
