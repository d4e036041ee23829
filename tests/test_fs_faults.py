"""Every file system call of the conversion path fails, in turn, with every errno that
matters: nothing is lost, nothing half-written has a final name, nothing good is
quarantined, and the daemon serves on (in the spirit of SQLite's I/O-error tests).

Faults enter through the one seam, :mod:`dacwatch.fsops`, by its test hook
``DACWATCH_FAULT`` read by a real daemon subprocess; nothing of ours is replaced."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf

from dacwatch import fsops
from dacwatch.errors import ConfigError, PermanentError, TransientError
from dacwatch.faults import BugError, Fault, FileSystemFault, classify, os_fault
from dacwatch.formats.container import read
from dacwatch.fsio import TEMP_PREFIX, atomic_output, move_across

from .daemon import Daemon, make_dac, tmpfs, wav

ERRNOS = ("ENOSPC", "EIO", "EACCES", "EROFS", "ENAMETOOLONG", "EXDEV")
ALWAYS = ERRNOS  # the "always" variant too, for every errno (a few seconds each)
SECONDS, RATE = 0.2, 16000


# ---------------------------------------------------------------------- the seam itself


Rules = Callable[[str], None]


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Rules:
    """Set ``$DACWATCH_FAULT`` for this test (the seam reads it at each call)."""

    def set_rules(spec: str) -> None:
        monkeypatch.setenv(fsops.FAULT_ENV, spec)

    return set_rules


def test_rules_are_parsed_strictly() -> None:
    rule = fsops.Rule.parse("write:ENOSPC:once:/outbox/a")
    assert (rule.call, rule.errno, rule.always, rule.substring) == ("write", errno.ENOSPC, False, "/outbox/a")
    assert fsops.Rule.parse("fsync:5:always").errno == errno.EIO
    for bad in ("write:ENOSPC", "chmod:EIO:once", "write:ENOPE:once", "write:EIO:sometimes"):
        with pytest.raises(ValueError):
            fsops.Rule.parse(bad)


def test_once_fails_the_first_matching_call_only_and_always_every_one(tmp_path: Path, fault: Rules) -> None:
    fault("mkdir:EIO:once:/a;mkdir:EROFS:always:/b")
    fsops.mkdir(tmp_path / "x")  # matches neither
    with pytest.raises(OSError) as first:
        fsops.mkdir(tmp_path / "a")
    assert first.value.errno == errno.EIO
    fsops.mkdir(tmp_path / "a")
    for _ in range(2):
        with pytest.raises(OSError) as again:
            fsops.mkdir(tmp_path / "b")
        assert again.value.errno == errno.EROFS


def test_reads_and_writes_of_open_files_pass_the_seam(tmp_path: Path, fault: Rules) -> None:
    fault("write:ENOSPC:always:/w.bin;read:EIO:always:/r.bin")
    (tmp_path / "r.bin").write_bytes(b"x" * 10)
    with fsops.open_read(tmp_path / "r.bin") as f, pytest.raises(OSError, match="Input/output"):
        f.read()
    with pytest.raises(OSError, match="No space"), fsops.open_write(tmp_path / "w.bin") as g:
        g.write(b"y" * 10)


def test_a_disk_failing_mid_file_never_passes_for_a_short_file(tmp_path: Path, fault: Rules) -> None:
    """libsndfile reads through the seam; an error inside its callback (where it would
    read as the end of the file) is kept and raised as a fault of the moment."""
    from dacwatch.audio import BLOCK_FRAMES, open_audio

    path = wav(tmp_path / "mid.wav", seconds=3 * BLOCK_FRAMES / 16000, rate=16000)
    reader = open_audio(path)
    try:
        blocks = reader.blocks()
        assert next(blocks).shape[1] == BLOCK_FRAMES
        fault("read:EIO:always:/mid.wav")
        with pytest.raises(FileSystemFault, match="EIO"):
            list(blocks)
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (PermanentError("not audio"), Fault.FILE),
        (TransientError("busy"), Fault.MOMENT),
        (FileSystemFault("full", "ENOSPC"), Fault.MOMENT),
        (OSError(errno.ENOSPC, "full"), Fault.MOMENT),
        (OSError(errno.EACCES, "denied"), Fault.MOMENT),
        (OSError(errno.EBADF, "bad fd"), Fault.BUG),
        (ConfigError("bad"), Fault.CONFIG),
        (ValueError("oops"), Fault.BUG),
    ],
)
def test_one_classification(exc: BaseException, expected: Fault) -> None:
    assert classify(exc) is expected


@pytest.mark.parametrize("code", sorted({*ERRNOS, "EISDIR", "EPERM", "ENOENT", "EDQUOT", "ENOTDIR"}))
def test_no_errno_of_the_file_system_is_the_files_fault(code: str) -> None:
    made = os_fault(OSError(getattr(errno, code), os.strerror(getattr(errno, code))), "writing x")
    assert isinstance(made, FileSystemFault) and classify(made) is Fault.MOMENT
    assert made.errno_name == code and code in str(made)
    assert isinstance(os_fault(OSError(errno.EBADF, "bad"), "x"), BugError)


@pytest.mark.parametrize("call", ["open", "write", "fsync", "replace", "mkdir"])
def test_atomic_output_under_a_failing_call_leaves_no_name(tmp_path: Path, fault: Rules, call: str) -> None:
    final = tmp_path / "out" / "a.dac"
    fault(f"{call}:EIO:always")
    with pytest.raises(FileSystemFault, match="EIO"), atomic_output(final) as tmp, fsops.open_write(tmp) as f:
        f.write(b"data")
    assert not final.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("call", ["open", "read", "write", "fsync", "link", "unlink", "copy"])
def test_a_move_across_file_systems_that_fails_leaves_the_source_and_no_copy(
    tmp_path: Path,
    fault: Rules,
    call: str,
) -> None:
    source, target = tmp_path / "in" / "a.wav", tmp_path / "done" / "a.wav"
    source.parent.mkdir()
    target.parent.mkdir()
    source.write_bytes(b"RIFF" + os.urandom(3000))
    original = source.read_bytes()
    fault(f"{call}:ENOSPC:always")
    with pytest.raises(FileSystemFault, match="ENOSPC"):
        move_across(source, target)
    assert source.read_bytes() == original
    assert list(target.parent.iterdir()) == []
    fault("")
    move_across(source, target)
    assert target.read_bytes() == original and not source.exists()


# ---------------------------------------------------------------------- through the daemon


@pytest.fixture(scope="module")
def short_dac(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Path:
    return make_dac(tmp_path_factory.mktemp("dac") / "short.dac", tiny_weights, SECONDS, RATE)


def _settled(d: Daemon) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("job.done", "job.gave_up", "job.failed"):
        out.update({e["source"]: name for e in d.events(name)})
    return out


@pytest.mark.parametrize(
    ("code", "on_success"), [*((code, "move") for code in ERRNOS), ("EIO", "delete"), ("ENOSPC", "delete")]
)
def test_every_call_of_the_conversion_path_may_fail_with(
    tmp_path: Path, tiny_weights: Path, short_dac: Path, code: str, on_success: str
) -> None:
    """One daemon per errno. For each call of the seam (open, read, write, fsync, rename,
    replace, link, unlink, mkdir, copy) an encode and a decode, each in a folder of its
    own that the call's rule names, fail that call once; another pair fails it on every
    attempt (``ALWAYS``: every errno, since the whole matrix takes under a minute). done/ is a tmpfs, so moving a source
    crosses file systems and copies (copy, link, unlink are on the path). Afterwards:
    each source whole in exactly one place (the inbox, or done/), every output under a
    final name whole, nothing in failed/, no temporary file, no failure taken for a bug,
    each once-fault seen and retried; and the daemon converts the next file. With
    ``on_success = "delete"`` (EIO, ENOSPC) a source is in the inbox, or gone once
    converted."""
    d = Daemon(
        tmp_path,
        tiny_weights,
        retry__backoff_initial_s=0.05,
        retry__backoff_max_s=0.2,
        retry__max_attempts=3,
        watch__settle_seconds=0.2,
        on_success=on_success,
    )
    modes = ("once", "always") if code in ALWAYS else ("once",)
    rules: list[str] = []
    sources: dict[Path, tuple[str, str, bytes]] = {}  # source -> (call, mode, bytes)
    for mode in modes:
        for call in fsops.CALLS:
            for kind in ("enc", "dec"):
                key = f"k-{call}-{mode}-{kind}"
                rules.append(f"{call}:{code}:{mode}:/{key}")
                if kind == "enc":
                    p = wav(d.inbox / key / "a.wav", seconds=SECONDS, rate=RATE)
                else:
                    p = d.inbox / key / "b.dac"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(short_dac.read_bytes())
                sources[p] = (call, mode, p.read_bytes())
    try:
        with tmpfs(d.done, "16m"):
            d.start(env={fsops.FAULT_ENV: ";".join(rules)}).ready()
            d.wait_for(
                lambda: {str(p) for p in sources} <= set(_settled(d)),
                timeout=240,
                what=f"every source settled; missing {sorted({str(p) for p in sources} - set(_settled(d)))}",
            )
            wav(d.inbox / "next.wav", seconds=SECONDS, rate=RATE)
            d.wait_for(lambda: str(d.inbox / "next.wav") in _settled(d), what="the next file")
            assert _settled(d)[str(d.inbox / "next.wav")] == "job.done"
            _check(d, sources, code, on_success)
            assert d.stop() == 0
    finally:
        d.close()
    print(
        f"{code}, {on_success}: {len(fsops.CALLS)} calls x (encode, decode) once"
        + (", and always" if code in ALWAYS else "")
        + f": {len(sources)} conversions, all sources kept"
    )


def _check(d: Daemon, sources: dict[Path, tuple[str, str, bytes]], code: str, on_success: str) -> None:
    for name in ("job.unexpected_error", "job.unclassified_os_error", "worker.stopped", "worker.crashed", "job.failed"):
        assert d.events(name) == [], (name, d.events(name)[:1])
    settled = _settled(d)
    retried = {e["source"]: e for e in d.events("job.retry_scheduled")}
    for source, (call, mode, original) in sources.items():
        rel = source.relative_to(d.inbox)
        places = [p for p in (source, d.done / rel) if os.path.lexists(p)]
        if on_success == "delete" and settled[str(source)] == "job.done":
            assert places == [], (rel, places)
        else:
            assert len(places) == 1, (rel, places)
            assert places[0].read_bytes() == original, rel
        if mode == "once":
            assert settled[str(source)] == "job.done", (rel, settled[str(source)])
            assert on_success == "delete" or places[0] == d.done / rel
            if (call, code) != ("rename", "EXDEV") and not (on_success == "delete" and call in ("link", "copy")):
                # (a rename refused as EXDEV copies instead; deleting never links or copies)
                assert retried.get(str(source), {}).get("fault") == code, (rel, retried.get(str(source)))
    assert not d.failed.exists() or list(d.failed.rglob("*")) == []
    assert d.temp_files() == []
    for out in d.outbox.rglob("*"):
        if out.suffix == ".dac":
            assert read(out).metadata.length == round(SECONDS * RATE), out
        elif out.suffix == ".wav":
            assert sf.info(str(out)).frames == round(SECONDS * RATE), out
        else:
            assert out.is_dir(), out
    faults = {e.get("fault") for e in d.events("job.retry_scheduled")}
    assert faults <= {code}, faults
