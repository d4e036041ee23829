"""The weights fingerprint is remembered by the weights file's identity, never trusted
for a file that changed, and the cache can only ever save time."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

from dacwatch.codec import fingerprint_cache
from dacwatch.codec.model import FINGERPRINT_ATTR, ModelSpec, fingerprint, load_model, tiny_model

FORGED = "sha256:" + "ab" * 32


def _save(path: Path, seed: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_model("44khz", seed=seed).save(str(path), package=False)


def _truth(path: Path) -> str:
    from dac.model import DAC

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fingerprint(DAC.load(str(path)))


def _loaded(path: Path) -> str:
    value: str = getattr(load_model(ModelSpec(weights=path), "cpu"), FINGERPRINT_ATTR)
    return value


def _forge(path: Path) -> Path:
    """Replace the cache entry for ``path`` as it is now with another fingerprint."""
    ident = fingerprint_cache.identity(path)
    assert ident is not None
    entries = list(fingerprint_cache.cache_dir().glob("*.json"))
    assert fingerprint_cache.store(path, ident, FORGED)
    (entry,) = set(fingerprint_cache.cache_dir().glob("*.json")) - set(entries) or [
        e for e in entries if json.loads(e.read_text())["fingerprint"] == FORGED
    ]
    return entry


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)


def test_first_load_records_the_true_fingerprint_and_the_next_uses_it(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    _save(weights, 1)
    truth = _truth(weights)
    assert _loaded(weights) == truth
    (entry,) = fingerprint_cache.cache_dir().glob("*.json")
    assert json.loads(entry.read_text())["fingerprint"] == truth
    # The next load takes the remembered value (shown by forging it) ...
    _forge(weights)
    assert _loaded(weights) == FORGED


@pytest.mark.parametrize("change", ["touch", "rewrite-same-times", "rename-over", "copy-over"])
def test_a_changed_file_is_never_given_a_remembered_fingerprint(tmp_path: Path, change: str) -> None:
    weights = tmp_path / "w.pth"
    _save(weights, 1)
    _loaded(weights)
    _forge(weights)
    other = tmp_path / "other.pth"
    _save(other, 2)
    st = os.stat(weights)
    if change == "touch":
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    elif change == "rewrite-same-times":  # new bytes in place, times put back as they were
        weights.write_bytes(other.read_bytes())
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "rename-over":  # what rsync and downloads do
        shutil.copy2(other, tmp_path / "tmp")
        os.utime(tmp_path / "tmp", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp_path / "tmp", weights)
    else:
        shutil.copyfile(other, weights)
    assert _loaded(weights) == _truth(weights)


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"identity": [1], "fingerprint": "sha256:00"}', b"[]"])
def test_a_damaged_entry_is_ignored_and_replaced(tmp_path: Path, damage: bytes) -> None:
    weights = tmp_path / "w.pth"
    _save(weights, 1)
    truth = _loaded(weights)
    (entry,) = fingerprint_cache.cache_dir().glob("*.json")
    entry.write_bytes(damage)
    assert _loaded(weights) == truth
    assert json.loads(entry.read_text())["fingerprint"] == truth


def test_an_entry_with_a_malformed_fingerprint_is_ignored(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    _save(weights, 1)
    truth = _loaded(weights)
    ident = fingerprint_cache.identity(weights)
    assert ident is not None
    fingerprint_cache.store(weights, ident, "sha256:short")
    assert _loaded(weights) == truth


def test_an_unwritable_cache_costs_only_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    weights = tmp_path / "w.pth"
    _save(weights, 1)
    assert _loaded(weights) == _truth(weights)
    assert _loaded(weights) == _truth(weights)
    assert blocker.is_file()


def test_the_systemd_cache_directory_is_used_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path / 'unit'}:{tmp_path / 'second'}")
    weights = tmp_path / "w.pth"
    _save(weights, 1)
    _loaded(weights)
    assert len(list((tmp_path / "unit" / "fingerprints").glob("*.json"))) == 1
