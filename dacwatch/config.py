"""Configuration: a TOML file plus ``DACWATCH_*`` environment overrides, validated once at the edge.

Precedence: environment over file over defaults. Nested keys use ``__`` in
the environment (``codec.batch_size`` is ``DACWATCH_CODEC__BATCH_SIZE``).
Validation here has no side effects: nothing is created and no model loaded.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from dacwatch.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/dacwatch/config.toml")
ENV_PREFIX = "DACWATCH_"


def _default_state_dir() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY.
    env = os.environ.get("STATE_DIRECTORY")
    return Path(env.split(":")[0]) if env else Path("/var/lib/dacwatch")


# Upper bounds: far beyond any sensible value, low enough that every later sum,
# product and timer stays finite (inf and nan are refused everywhere).
DAY_S = 86400.0
HOUR_S = 3600.0


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ModelConfig(_Section):
    type: Literal["44khz", "24khz", "16khz"] = "44khz"
    bitrate: Literal["8kbps", "16kbps"] = "8kbps"
    tag: str = Field(default="latest", pattern=r"^[^\s/]+$")  # a release tag, or latest
    weights: Path | None = None
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _bitrate_fits(self) -> ModelConfig:
        if self.bitrate == "16kbps" and self.type != "44khz":
            raise ValueError("only the 44khz model comes in 16kbps")
        return self


DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+)$"  # whether the GPU exists is checked at startup


class CodecConfig(_Section):
    # NoDecode: the environment may say cpu, cuda:0,cuda:1 or ["cpu"] (_device_list).
    devices: Annotated[list[Annotated[str, Field(pattern=DEVICE_PATTERN)]], NoDecode] = Field(
        default_factory=lambda: ["auto"], min_length=1
    )
    encode_window_s: float | None = Field(default=None, ge=0, le=HOUR_S)
    decode_window_s: float | None = Field(default=None, ge=0, le=HOUR_S)
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    codebooks: int | None = Field(default=None, ge=1, le=64)
    # Files converted at once on each device: their reading, loudness pass, resampling
    # and writing overlap the device work of the others, and their windows share
    # forward passes (dacwatch.codec.gate). None: 2 on a CPU, 4 on a GPU.
    jobs_per_device: int | None = Field(default=None, ge=1, le=64)
    # float32: exact (chunked equals whole-file); tf32 and bf16: faster on a GPU, by choice.
    precision: Literal["float32", "tf32", "bf16"] = "float32"
    # A quality figure per encoded file (dacwatch.codec.quality): "sample" decodes about 5% of
    # the file to compare with the input, "full" all of it. min_quality: files whose
    # SI-SDR falls below this many dB go to failed/ with the figures (needs quality on).
    quality: Literal["off", "sample", "full"] = "off"
    min_quality: float | None = Field(default=None, ge=-100, le=100)

    @field_validator("devices", mode="before")
    @classmethod
    def _device_list(cls, value: Any) -> Any:
        """A list as TOML gives it, or a string as the environment does: JSON, or names separated by commas."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f'{value!r} is not a list: write cpu, cuda:0,cuda:1 or ["cuda:0"]') from exc
        return [d.strip() for d in text.split(",") if d.strip()]

    @model_validator(mode="after")
    def _devices_distinct(self) -> CodecConfig:
        if "auto" in self.devices and len(self.devices) > 1:
            raise ValueError("'auto' stands for every GPU (or the CPU) and cannot be listed with others")
        named = ["cuda:0" if d == "cuda" else d for d in self.devices]
        if len(set(named)) != len(named):
            raise ValueError(f"a device is listed twice: {self.devices}")
        if self.min_quality is not None and self.quality == "off":
            raise ValueError('codec.min_quality needs codec.quality = "sample" or "full" (it judges their figures)')
        return self


class OutputConfig(_Section):
    format: Literal["wav", "flac"] = "wav"
    sample_format: Literal["float", "pcm16", "pcm24"] = "float"
    resample: bool = True  # decode back to the original sample rate and exact length
    # .dac files: "packed" (format 2, at the codec's own bitrate) or "int16" (format 1, for
    # tools that expect it; both are read forever).
    code_format: Literal["packed", "int16"] = "packed"
    # The outbox as a BagIt bag: outputs under outbox/data/, each listed with its SHA-256
    # in outbox/manifest-sha256.txt as it is written (dacwatch scrub checks against it).
    manifest: bool = False


class WatchConfig(_Section):
    # Only where writers cannot be seen (polling, a file found by a scan under the
    # hardened unit): how long size and mtime must hold still.
    settle_seconds: float = Field(default=2.0, ge=0, le=DAY_S)
    # Look for processes holding a candidate open for writing in /proc, as fuser
    # does (only sees what this process may see; events and settle cover the rest).
    writer_check: bool = True
    polling: bool = False
    poll_interval_s: float = Field(default=2.0, gt=0, le=HOUR_S)
    reconcile_interval_s: float = Field(default=60.0, gt=0, le=DAY_S)


class QueueConfig(_Section):
    # Unset: SQLite under state_dir (one host). postgresql://user@host/db: every daemon
    # naming the same database shares one queue (many hosts on one inbox).
    url: str | None = Field(default=None, pattern=r"^(postgresql|postgres)://")
    # A running job whose node has not beaten for this long is taken over by another.
    lease_timeout_s: float = Field(default=120.0, gt=0, le=DAY_S)
    heartbeat_s: float = Field(default=10.0, gt=0, le=DAY_S)

    @model_validator(mode="after")
    def _beats_fit_the_lease(self) -> QueueConfig:
        if self.heartbeat_s * 3 > self.lease_timeout_s:
            raise ValueError(
                f"queue.heartbeat_s ({self.heartbeat_s}) must be at most a third of queue.lease_timeout_s "
                f"({self.lease_timeout_s}): a lease would expire between two beats"
            )
        return self


class MetricsConfig(_Section):
    # host:port of the Prometheus endpoint (/metrics); "" turns it off. Loopback by
    # default: expose it further only on purpose (README, "Many hosts").
    listen: str = Field(default="127.0.0.1:9464", pattern=r"^$|^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):\d{1,5}$")

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, value: str) -> str:
        # Port 0 takes any free port (tests; the address is logged as metrics.serving).
        if value and not 0 <= int(value.rpartition(":")[2]) <= 65535:
            raise ValueError(f'{value!r}: the port must be 0-65535 ("" turns metrics off)')
        return value


class ScrubConfig(_Section):
    # The daemon checks its outbox in the background (dacwatch scrub's checks without
    # decoding: CRC-32s, metadata, codes, weights): a full pass every interval_s, 0 = off.
    interval_s: float = Field(default=0.0, ge=0, le=366 * DAY_S)
    max_read_mb_s: float = Field(default=20.0, gt=0, le=10_000)  # never competing with conversion for the disk


class RetryConfig(_Section):
    max_attempts: int = Field(default=5, ge=1, le=1000)
    backoff_initial_s: float = Field(default=5.0, ge=0, le=DAY_S)
    backoff_max_s: float = Field(default=300.0, ge=0, le=DAY_S)

    def delay(self, attempt: int) -> float:
        """Exponential backoff after the ``attempt``-th failure (1-based)."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, attempt - 1)))


class Settings(BaseSettings):
    """The effective configuration of one daemon."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        case_sensitive=False,
        allow_inf_nan=False,
    )

    inbox: Path = Path("/srv/dacwatch/inbox")
    outbox: Path = Path("/srv/dacwatch/outbox")
    done: Path = Path("/srv/dacwatch/done")
    failed: Path = Path("/srv/dacwatch/failed")
    state_dir: Path = Field(default_factory=_default_state_dir)
    on_success: Literal["keep", "move", "delete"] = "move"
    # Make missing folders at startup (with a warning); false: refuse to start instead.
    create_folders: bool = True
    stop_timeout_s: float = Field(default=30.0, ge=0, le=DAY_S)
    # A job that reports no progress for this long before its first block (loading a
    # model, a slow share), or for ten times its longest gap between blocks (at least
    # a tenth of this) afterwards, counts as hung: systemd's watchdog is no longer fed.
    stall_timeout_s: float = Field(default=600.0, gt=0, le=DAY_S)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    model: ModelConfig = ModelConfig()
    codec: CodecConfig = CodecConfig()
    output: OutputConfig = OutputConfig()
    watch: WatchConfig = WatchConfig()
    retry: RetryConfig = RetryConfig()
    queue: QueueConfig = QueueConfig()
    metrics: MetricsConfig = MetricsConfig()
    scrub: ScrubConfig = ScrubConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init arguments; the environment wins over them.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _folders_distinct(self) -> Settings:
        """No folder may equal or lie inside another (symbolic links followed where they
        exist), except that outbox, done and failed may lie inside the inbox: the watcher
        ignores them there. A state_dir inside the inbox would have its own queue
        quarantined; an inbox inside the outbox would convert its own outputs."""
        folders = {"inbox": self.inbox, "outbox": self.outbox, "failed": self.failed, "state_dir": self.state_dir}
        if self.on_success == "move":
            folders["done"] = self.done
        real = {name: path.resolve() for name, path in folders.items()}
        for name, path in real.items():
            for other, other_path in real.items():
                if name == other or not path.is_relative_to(other_path):
                    continue
                if path == other_path:
                    if list(real).index(name) < list(real).index(other):
                        raise ValueError(f"{name} and {other} must be different folders (both {path})")
                elif not (other == "inbox" and name in ("outbox", "done", "failed")):
                    raise ValueError(f"{name} ({folders[name]}) must not lie inside {other} ({folders[other]})")
        return self

    @property
    def state_db(self) -> Path:
        return self.state_dir / "queue.sqlite3"


class ModelEnv(ModelConfig, BaseSettings):
    """The ``[model]`` section alone, from ``DACWATCH_MODEL__*``: one-shot commands read the
    very variables (and rules) the daemon reads for its model."""

    model_config = SettingsConfigDict(
        env_prefix=f"{ENV_PREFIX}MODEL__", case_sensitive=False, extra="ignore", frozen=True
    )


def model_from_env() -> ModelConfig:
    """``DACWATCH_MODEL__*`` validated as the daemon validates ``model.*``; a :class:`ConfigError`
    naming the variable otherwise."""
    try:
        return ModelEnv()
    except ValidationError as exc:
        errors = [{**e, "loc": ("model", *e.get("loc", ()))} for e in exc.errors()]
        raise ConfigError("invalid environment: " + "; ".join(_explain(e) for e in errors)) from exc


def config_path(path: Path | None) -> Path:
    if path is not None:
        return path
    env = os.environ.get(f"{ENV_PREFIX}CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def load_settings(path: Path | None = None) -> Settings:
    """Read, merge and validate; one :class:`ConfigError` naming every bad key (as TOML and as env var)."""
    path = config_path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config file {path} does not exist (give --config PATH or set {ENV_PREFIX}CONFIG; "
            "config.example.toml lists every key)"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration in {path}: " + "; ".join(_explain(e) for e in exc.errors())) from exc
    except SettingsError as exc:  # an environment value that is not the JSON its key needs
        raise ConfigError(f"invalid configuration in the environment: {exc} (nested keys take JSON)") from exc


def _explain(error: Any) -> str:
    loc = [str(part) for part in error.get("loc", ()) if not isinstance(part, int)]
    if not loc:
        return str(error.get("msg")).removeprefix("Value error, ")
    key = ".".join(loc)
    env = ENV_PREFIX + "__".join(p.upper() for p in loc)
    msg = str(error.get("msg", "invalid"))
    if error.get("type") == "extra_forbidden":
        msg = "unknown key"
    elif error.get("type") == "string_pattern_mismatch" and "devices" in loc:
        msg = f"unknown device {error.get('input')!r}: use auto, cpu, cuda or cuda:N"
    elif error.get("type") == "string_pattern_mismatch" and loc == ["model", "tag"]:
        msg = f"{error.get('input')!r} is not a release tag: use latest or a tag such as 0.0.1"
    elif error.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{key} (env {env}): {msg}"


def describe(settings: Settings, as_json: bool = False) -> str:
    """The effective configuration, as TOML (or JSON)."""
    data = settings.model_dump(mode="json")
    if as_json:
        return json.dumps(data, indent=2)
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items() if v is not None]
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
            lines += [f"# {k} = (default: chosen at run time)" for k, v in values.items() if v is None]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
