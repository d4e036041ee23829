"""Paths are bytes on Linux: names that are not UTF-8, names with newlines, 255-byte
names, case-insensitive outboxes; on a real SQLite file and a real PostgreSQL server,
real folders, the real CLI and a real daemon."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from dacwatch.cli import main
from dacwatch.daemon.worker import error_note, unique
from dacwatch.formats.container import read
from dacwatch.fsio import TEMP_PREFIX, Identity, folds_case, mirror, temp_name
from dacwatch.names import NAME_MAX, fit, output_candidates, printable
from dacwatch.queue.base import SCHEMA_VERSION, BaseQueue
from dacwatch.queue.sqlite import JobQueue

from .daemon import Daemon, wav
from .pg import V2_POSTGRES_SCHEMA

A = Identity(size=10, mtime_ns=1, inode=5)
B = Identity(size=20, mtime_ns=2, inode=6)
Opener = Callable[[], BaseQueue]

LATIN1 = b"d\xe9j\xe0"  # "déjà" in Latin-1: not UTF-8
CP1252 = b"caf\x80 \x93quoted\x94"  # euro sign and curly quotes in CP-1252
INVALID = b"x\xff\xfe\xc3("  # bytes no encoding makes
CJK = "語"  # 3 bytes in UTF-8


def wav_at(path: Path, seconds: float = 0.5) -> Path:
    """A WAV under any name (soundfile itself takes only UTF-8 names as ``str``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = next(p for p in path.parents if printable(p) == str(p))  # same file system, a UTF-8 name
    os.rename(wav(staging / f".staging-{os.getpid()}.wav", seconds), path)
    return path


def fsname(raw: bytes) -> str:
    """The ``str`` Python gives for the name ``raw``."""
    return os.fsdecode(raw)


def nbytes(name: str) -> int:
    return len(os.fsencode(name))


@pytest.fixture(params=["sqlite", "postgresql"])
def open_q(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        return lambda: JobQueue(tmp_path / "q.db", node="n1")
    from dacwatch.queue.postgres import PostgresQueue

    url = request.getfixturevalue("pg_url")
    return lambda: PostgresQueue(url, "n1")


# ---------------------------------------------------------------------- storing names


def test_names_that_are_not_utf8_are_stored_and_given_back_byte_for_byte(open_q: Opener) -> None:
    weird = fsname(LATIN1 + b"/" + INVALID + b"\nline.wav")
    with open_q() as q:
        assert q.submit(weird, A) is True  # was: UnicodeEncodeError, surrogates not allowed
        assert q.submit(weird, A) is False  # the same version is the same job
        assert q.submit("good.wav", B) is True
        job = q.lease("w")
        assert job is not None and os.fsencode(job.path) == LATIN1 + b"/" + INVALID + b"\nline.wav"
        out = fsname(b"out/" + LATIN1 + b"/" + INVALID + b"\nline.dac")
        assert q.reserve_output(job.id, job.path, [out], lease=job.lease) == out
        q.fail(job.id, f"{weird}: not audio", lease=job.lease)  # an error naming the file is stored printably
        report = q.report()
        json.dumps(report, ensure_ascii=False).encode("utf-8")  # strict UTF-8: no lone surrogates
        failure = report["recent_failures"][0]
        assert failure["path"] == printable(weird) == "d\\xe9j\\xe0/x\\xff\\xfe\\xc3(\nline.wav"
        assert failure["last_error"] == f"{printable(weird)}: not audio"
        assert q.retry_failed(weird) == 1  # retry by name finds it
        again = q.lease("w")
        assert again is not None and again.path == weird and again.output == out


def _v2_sqlite(path: Path) -> None:
    """A queue database as dacwatch with schema version 2 made it: names as TEXT."""
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE jobs (id INTEGER PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, output TEXT, worker TEXT,
            not_before REAL NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL,
            started_at REAL, finished_at REAL, node TEXT, lease TEXT, heartbeat_at REAL,
            UNIQUE (path, size, mtime_ns, inode));
        INSERT INTO jobs (path, size, mtime_ns, inode, status, output, created_at, updated_at)
            VALUES ('café.wav', 10, 1, 5, 'done', '/out/café.dac', 0, 0);
        PRAGMA user_version = 2;
        """
    )
    db.commit()
    db.close()


def test_a_version_2_sqlite_queue_is_migrated_and_keeps_its_jobs_and_claims(tmp_path: Path) -> None:
    _v2_sqlite(tmp_path / "q.db")
    with JobQueue(tmp_path / "q.db", node="n1") as q:
        assert q.submit("café.wav", A) is False  # the converted version is still known
        assert [(j.path, j.output) for j in q.jobs()] == [("café.wav", "/out/café.dac")]
        assert q.submit("café.flac", B) is True
        job = q.lease("w")
        assert job is not None
        # The old job's output is still claimed: the new source takes the next name.
        got = q.reserve_output(job.id, job.path, ["/out/café.dac", "/out/café.flac.dac"], lease=job.lease)
        assert got == "/out/café.flac.dac"
    db = sqlite3.connect(tmp_path / "q.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT DISTINCT typeof(path) FROM jobs").fetchall() == [("blob",)]


def test_a_version_2_postgresql_queue_is_migrated_and_keeps_its_jobs_and_claims(pg_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    from dacwatch.queue.postgres import PostgresQueue

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            V2_POSTGRES_SCHEMA
            + """
            CREATE INDEX jobs_by_output ON jobs (output);
            INSERT INTO jobs (path, size, mtime_ns, inode, status, output, created_at, updated_at)
                VALUES ('café.wav', 10, 1, 0, 'done', '/out/café.dac', 0, 0);
            """
        )
    with PostgresQueue(pg_url, "n1") as q:
        assert q.submit("café.wav", A) is False
        assert [(j.path, j.output) for j in q.jobs()] == [("café.wav", "/out/café.dac")]
        assert q.submit("café.flac", B) is True
        job = q.lease("w")
        assert job is not None
        got = q.reserve_output(job.id, job.path, ["/out/café.dac", "/out/café.flac.dac"], lease=job.lease)
        assert got == "/out/café.flac.dac"
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM dacwatch_schema").fetchone() == (SCHEMA_VERSION,)


# ---------------------------------------------------------------------- case-insensitive outboxes


def test_claims_fold_case_where_the_outbox_folds_it(open_q: Opener) -> None:
    """No case-insensitive file system can be made on this machine (no vfat module, no
    kernel unicode tables for casefold): the detector's answer is passed as the parameter."""
    with open_q() as q:
        for i, name in enumerate(["Talk.wav", "talk.flac", "Song.wav", "song.flac"]):
            q.submit(name, Identity(10 + i, 1, i))
        talk, talk2, song, song2 = (q.lease("w") for _ in range(4))
        assert talk and talk2 and song and song2
        # Where the outbox does not fold, Talk.dac and talk.dac are two files.
        assert q.reserve_output(talk.id, talk.path, ["/o/Talk.dac"], talk.lease) == "/o/Talk.dac"
        assert q.reserve_output(talk2.id, talk2.path, ["/o/talk.dac"], talk2.lease) == "/o/talk.dac"
        # Where it folds, song.dac IS Song.dac: the next name is taken.
        assert q.reserve_output(song.id, song.path, ["/o/Song.dac"], song.lease, True) == "/o/Song.dac"
        got = q.reserve_output(song2.id, song2.path, ["/o/song.dac", "/o/song.flac.dac"], song2.lease, True)
        assert got == "/o/song.flac.dac"
        # Folding also finds a claim made before the outbox was seen to fold.
        q.submit("TALK.ogg", Identity(99, 1, 9))
        talk3 = q.lease("w")
        assert talk3 is not None
        got = q.reserve_output(talk3.id, talk3.path, ["/o/TALK.dac", "/o/TALK.ogg.dac"], talk3.lease, True)
        assert got == "/o/TALK.ogg.dac"


def test_the_detector_answers_for_a_real_case_sensitive_folder(tmp_path: Path) -> None:
    assert folds_case(tmp_path) is False
    assert os.listdir(tmp_path) == []  # the probe is gone
    assert folds_case(tmp_path / "missing") is False


# ---------------------------------------------------------------------- limits in bytes


LONG_NAMES = [
    "a" * 251 + ".wav",  # 255 bytes of ASCII
    CJK * 83 + "é.wav",  # 255 bytes, 88 characters (the last 80 are 231 bytes)
    fsname(b"\xe9" * 251 + b".wav"),  # 255 bytes that are not UTF-8
    "b" * 255,  # no suffix at all
]


@pytest.mark.parametrize("name", LONG_NAMES, ids=["ascii", "cjk", "latin1", "nosuffix"])
def test_every_derived_name_fits_255_bytes(tmp_path: Path, name: str) -> None:
    assert nbytes(name) == 255
    source = tmp_path / name
    source.write_bytes(b"x")  # the file system takes it
    first = mirror(source, tmp_path, tmp_path / "out", ".dac")
    derived = [
        *output_candidates(first, name)[:4],
        temp_name(first, "0123456789ab"),
        temp_name(source, "delete"),
        error_note(source),
        unique(source),
    ]
    for path in derived:
        assert nbytes(path.name) <= NAME_MAX, path.name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"y")  # and so does it
    assert len({p.name for p in derived}) == len(derived)  # never two the same
    assert temp_name(first, "t").name.startswith(TEMP_PREFIX)
    assert error_note(source).name.endswith(".error.json")
    assert unique(source).suffix == (source.suffix or ".2")  # name.1.wav was made above


def test_the_shortening_rule_keeps_the_suffix_a_whole_character_and_tells_names_apart() -> None:
    one, two = fit(CJK * 100 + "1.wav.dac"), fit(CJK * 100 + "2.wav.dac")
    assert one != two and one.endswith(".dac") and two.endswith(".dac")
    assert nbytes(one) <= NAME_MAX
    one.encode("utf-8")  # no character cut in half (that would be a lone surrogate)
    assert fit("short.dac") == "short.dac"
    assert fit("x" * 300, limit=100)[-9:-8] == "~" and nbytes(fit("x" * 300, limit=100)) == 100


# ---------------------------------------------------------------------- the CLI


def test_cli_encodes_a_name_that_is_not_utf8(tmp_path: Path, tiny_weights: Path) -> None:
    source = wav_at(Path(fsname(bytes(tmp_path) + b"/" + LATIN1 + b".wav")))
    target = Path(fsname(bytes(tmp_path) + b"/" + LATIN1 + b".dac"))
    assert main(["encode", str(source), str(target), "--weights", str(tiny_weights)]) == 0
    assert read(target).metadata.sample_rate == 16000


def test_two_sources_of_one_output_name_in_a_folder_encode(tmp_path: Path, tiny_weights: Path) -> None:
    wav(tmp_path / "music" / "a.wav", seconds=0.3)
    wav(tmp_path / "music" / "a.flac", seconds=0.6)
    args = ["encode", str(tmp_path / "music"), str(tmp_path / "codes"), "--weights", str(tiny_weights)]
    assert main(args) == 0
    assert sorted(os.listdir(tmp_path / "codes")) == ["a.dac", "a.wav.dac"]  # the daemon's rule
    seconds = {n: read(tmp_path / "codes" / n).metadata.length / 16000 for n in ("a.dac", "a.wav.dac")}
    assert seconds == {"a.dac": 0.6, "a.wav.dac": 0.3}  # a.flac first in sorted order
    assert main([*args, "--overwrite"]) == 0  # neither replaces the other
    assert sorted(os.listdir(tmp_path / "codes")) == ["a.dac", "a.wav.dac"]
    assert read(tmp_path / "codes" / "a.wav.dac").metadata.length == 0.3 * 16000


# ---------------------------------------------------------------------- the daemon


def _listing(root: Path) -> set[bytes]:
    """Every file under ``root``, relative, as the kernel's bytes."""
    found = set()
    for dirpath, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            found.add(os.path.relpath(os.path.join(dirpath, name), os.fsencode(root)))
    return found


def test_the_daemon_converts_and_mirrors_any_name_the_kernel_takes(daemon: Daemon) -> None:
    inbox = os.fsencode(daemon.inbox)
    good = [
        LATIN1 + b"/" + CP1252 + b".wav",  # Latin-1 folder, CP-1252 file
        CP1252 + b"/" + INVALID + b".wav",
        b"new\nline/and\nagain.wav",  # newlines in a folder and a file name
        b"a" * 251 + b".wav",  # 255 bytes: the temporary name must be shortened
        (CJK * 83 + "é").encode() + b".wav",  # 255 bytes, multi-byte
        INVALID + b"z" * (251 - len(INVALID)) + b".wav",  # 255 bytes, not UTF-8
    ]
    bad = (CJK * 83 + "ü").encode() + b".wav"  # 255 bytes, not audio: quarantined with its note
    for raw in good:
        wav_at(Path(fsname(inbox + b"/" + raw)))
    Path(fsname(inbox + b"/" + bad)).write_bytes(b"not audio at all\n" * 10)
    daemon.start().ready()
    daemon.wait_event("job.done", len(good))
    daemon.wait_event("job.failed", 1)
    expected = {raw[: -len(b".wav")] + b".dac" for raw in good}
    assert _listing(daemon.outbox) == expected  # the mirror, byte for byte
    for raw in expected:
        assert read(Path(fsname(os.fsencode(daemon.outbox) + b"/" + raw))).metadata.sample_rate == 16000
    assert _listing(daemon.done) == set(good)
    note_name = fit(fsname(bad) + ".error.json", suffix=".error.json")
    assert nbytes(note_name) <= NAME_MAX and _listing(daemon.failed) == {bad, os.fsencode(note_name)}
    note = json.loads((daemon.failed / note_name).read_text())
    assert note["source"] == printable(daemon.inbox / fsname(bad))
    # Logs name every file printably; none of it stopped the watcher.
    sources = {e["source"] for e in daemon.events("job.done")}
    assert printable(daemon.inbox / fsname(good[1])) in sources
    assert not daemon.events("watch.crashed") and not daemon.events("service.unhealthy")
    # Still serving: a plain file dropped in afterwards is converted too.
    wav(daemon.inbox / "good.wav")
    daemon.wait_event("job.done", len(good) + 1)
    assert (daemon.outbox / "good.dac").exists()
    assert daemon.stop() == 0
    assert daemon.temp_files() == []
