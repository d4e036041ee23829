"""``status`` and ``retry`` use the daemon's state and never create or rebuild it: what is
missing or damaged is said in one line, without a traceback, and left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from dacwatch.cli import main
from dacwatch.fsio import Identity
from dacwatch.queue.sqlite import JobQueue


def config(tmp_path: Path, state_dir: Path, url: str | None = None) -> str:
    path = tmp_path / "config.toml"
    lines = [f'{k} = "{tmp_path / k}"' for k in ("inbox", "outbox", "done", "failed")]
    lines.append(f'state_dir = "{state_dir}"')
    if url:
        lines += ["[queue]", f'url = "{url}"']
    path.write_text("\n".join(lines) + "\n")
    return str(path)


COMMANDS = [["status"], ["status", "--json"], ["retry", "--all"]]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dacwatch: error:") and not captured.out, captured
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_mistyped_state_dir_is_said_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    state = tmp_path / "sate"
    assert main([*command, "--config", config(tmp_path, state)]) == 1
    assert f"no queue database at {state}/queue.sqlite3" in one_error_line(capsys)
    assert not state.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_damaged_database_is_said_and_left_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / "queue.sqlite3"
    with JobQueue(db) as q:
        q.submit("a.wav", Identity(1, 1, 1))
    damaged = b"SQLite format 3\0" + b"\xff" * 8192
    db.write_bytes(damaged)
    assert main([*command, "--config", config(tmp_path, state)]) == 1
    assert f"queue database {db} is damaged" in one_error_line(capsys)
    assert db.read_bytes() == damaged
    assert [p.name for p in state.iterdir()] == ["queue.sqlite3"]  # no copy moved aside, no new one


@pytest.mark.parametrize("command", COMMANDS)
def test_a_fresh_postgres_database_is_said_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_url: str, command: list[str]
) -> None:
    import psycopg

    assert main([*command, "--config", config(tmp_path, tmp_path / "state", pg_url)]) == 1
    assert "holds no dacwatch queue yet" in one_error_line(capsys)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,)
    assert not (tmp_path / "state").exists()
