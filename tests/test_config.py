"""Configuration: values that would crash or misbehave later are refused at the edge (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dacwatch.cli import main
from dacwatch.config import Settings, load_settings
from dacwatch.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, **top: str) -> Path:
    """A config file with ``text`` (sections) after the top-level keys ``top`` (and an inbox and state_dir)."""
    path = tmp_path / "config.toml"
    keys = {"inbox": f"{tmp_path}/inbox", "state_dir": f"{tmp_path}/state"} | top
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in keys.items()) + text)
    return path


@pytest.mark.parametrize(
    "text, key, env",
    [
        ('[metrics]\nlisten = "127.0.0.1:99999"', "metrics.listen", "DACWATCH_METRICS__LISTEN"),
        ("[codec]\nencode_window_s = inf", "codec.encode_window_s", "DACWATCH_CODEC__ENCODE_WINDOW_S"),
        ("[codec]\ndecode_window_s = nan", "codec.decode_window_s", "DACWATCH_CODEC__DECODE_WINDOW_S"),
        ("[watch]\nreconcile_interval_s = inf", "watch.reconcile_interval_s", "DACWATCH_WATCH__RECONCILE_INTERVAL_S"),
        ("[watch]\nsettle_seconds = inf", "watch.settle_seconds", "DACWATCH_WATCH__SETTLE_SECONDS"),
        ("stop_timeout_s = inf", "stop_timeout_s", "DACWATCH_STOP_TIMEOUT_S"),
        ("stall_timeout_s = 1e300", "stall_timeout_s", "DACWATCH_STALL_TIMEOUT_S"),
        ("[retry]\nbackoff_max_s = inf", "retry.backoff_max_s", "DACWATCH_RETRY__BACKOFF_MAX_S"),
        ("[queue]\nlease_timeout_s = inf", "queue.lease_timeout_s", "DACWATCH_QUEUE__LEASE_TIMEOUT_S"),
        ('[model]\ntag = ""', "model.tag", "DACWATCH_MODEL__TAG"),
        ('[model]\ntag = "0.0.1 "', "model.tag", "DACWATCH_MODEL__TAG"),
    ],
)
def test_values_that_would_crash_later_are_refused_naming_key_and_variable(
    tmp_path: Path, text: str, key: str, env: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert f"{key} (env {env})" in str(info.value)


def test_the_example_file_is_valid_and_shows_the_defaults(tmp_path: Path) -> None:
    example = load_settings(ROOT / "config.example.toml")
    defaults = Settings()
    for section in ("model", "codec", "output", "watch", "retry", "queue", "metrics"):
        assert getattr(example, section) == getattr(defaults, section), section


@pytest.mark.parametrize(
    "value, devices",
    [("cpu", ["cpu"]), ("cuda:0, cuda:1", ["cuda:0", "cuda:1"]), ('["cpu"]', ["cpu"])],
)
def test_devices_from_the_environment_take_a_plain_name_a_comma_list_or_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, devices: list[str]
) -> None:
    monkeypatch.setenv("DACWATCH_CODEC__DEVICES", value)
    assert load_settings(write(tmp_path, "")).codec.devices == devices


@pytest.mark.parametrize("value", ["gpu", "[cpu", ""])
def test_a_bad_device_list_in_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DACWATCH_CODEC__DEVICES", value)
    with pytest.raises(ConfigError, match=r"codec\.devices \(env DACWATCH_CODEC__DEVICES\)"):
        load_settings(write(tmp_path, ""))


def test_config_check_refuses_an_impossible_port_with_exit_2_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[metrics]\nlisten = "127.0.0.1:99999"')
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.listen (env DACWATCH_METRICS__LISTEN)" in err[0] and "0-65535" in err[0]


def folders(tmp_path: Path, **changed: str) -> Path:
    names = {k: f"{tmp_path}/{k}" for k in ("outbox", "done", "failed")}
    return write(tmp_path, "", **names | {k: v.format(t=tmp_path) for k, v in changed.items()})


@pytest.mark.parametrize(
    "changed, message",
    [
        ({"state_dir": "{t}/inbox/.state"}, "state_dir ({t}/inbox/.state) must not lie inside inbox"),
        ({"inbox": "{t}/outbox/in"}, "inbox ({t}/outbox/in) must not lie inside outbox"),
        ({"failed": "{t}/outbox/failed"}, "failed ({t}/outbox/failed) must not lie inside outbox"),
        ({"outbox": "{t}/state/out"}, "outbox ({t}/state/out) must not lie inside state_dir"),
        ({"state_dir": "{t}/failed"}, "failed and state_dir must be different folders"),
        ({"done": "{t}/inbox"}, "inbox and done must be different folders"),
        ({"state_dir": "{t}/link/state"}, "state_dir ({t}/link/state) must not lie inside inbox"),
    ],
)
def test_overlapping_folders_are_refused(tmp_path: Path, changed: dict[str, str], message: str) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "inbox")  # a symbolic link is followed
    with pytest.raises(ConfigError, match=re.escape(message.format(t=tmp_path))):
        load_settings(folders(tmp_path, **changed))


@pytest.mark.parametrize(
    "changed",
    [
        {"outbox": "{t}/inbox/out", "done": "{t}/inbox/done", "failed": "{t}/inbox/failed"},
        {"done": "{t}/inbox", "on_success": "keep"},
        {"done": "{t}/outbox", "on_success": "delete"},
    ],
)
def test_outputs_inside_the_inbox_and_an_unused_done_are_allowed(tmp_path: Path, changed: dict[str, str]) -> None:
    load_settings(folders(tmp_path, **changed))


def test_one_shot_commands_read_the_model_variables_as_the_daemon_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One reader (config.ModelEnv) for DACWATCH_MODEL__*: the same rules, the same message."""
    monkeypatch.setenv("DACWATCH_MODEL__TYPE", "16khz")
    monkeypatch.setenv("DACWATCH_MODEL__BITRATE", "16kbps")
    assert main(["encode", "a.wav", "a.dac"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only the 44khz model comes in 16kbps" in err[0]
    with pytest.raises(ConfigError, match="only the 44khz model comes in 16kbps"):
        load_settings(write(tmp_path, ""))
    monkeypatch.setenv("DACWATCH_MODEL__BITRATE", "8kbps")
    monkeypatch.setenv("DACWATCH_MODEL__TAG", "0.0.5")
    from dacwatch.cli import build_parser

    args = build_parser().parse_args(["decode", "a.dac", "a.wav"])
    assert (args.model_type, args.model_bitrate, args.model_tag) == ("16khz", "8kbps", "0.0.5")
