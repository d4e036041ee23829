"""Shared fixtures: real DAC networks with random weights, real files, synthetic audio."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from dacwatch.codec.model import prepare_model, tiny_model
from dacwatch.config import Settings

# The suite's caches (weights fingerprints) stay out of the user's home; daemons the
# tests start inherit this.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="dacwatch-test-cache-")
os.environ.pop("CACHE_DIRECTORY", None)

# Two cores: with pytest-xdist's two workers each takes one.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def tiny44() -> nn.Module:
    return prepare_model(tiny_model("44khz"))


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, nn.Module]:
    return {t: prepare_model(tiny_model(t)) for t in ("44khz", "24khz", "16khz")}


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 44 kHz network saved with DAC's own ``model.save`` (weights layout, as released)."""
    path = tmp_path_factory.mktemp("weights") / "tiny44.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_model("44khz").save(str(path), package=False)
    return path


def noise(channels: int, samples: int, seed: int = 0, level: float = 0.3) -> np.ndarray:
    """``[channels, samples]`` float32 band-limited-ish noise (random walk + noise), deterministic."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((channels, samples)).astype(np.float32)
    x = 0.5 * x + 0.5 * np.cumsum(x, axis=1) / np.sqrt(np.arange(1, samples + 1, dtype=np.float32))
    return (level * x).astype(np.float32)


def tone(sample_rate: int, seconds: float, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    """``[samples, channels]`` sine tones (a different pitch per channel), for files."""
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    return np.stack([0.3 * np.sin(2 * np.pi * freq * (1 + 0.25 * c) * t) for c in range(channels)], axis=1)


@pytest.fixture
def daemon(tmp_path: Path, tiny_weights: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A real ``dacwatch run`` on temporary folders; ``indirect`` params override config keys."""
    from .daemon import Daemon

    d = Daemon(tmp_path, tiny_weights, **getattr(request, "param", {}))
    yield d
    d.close()


@pytest.fixture
def write_wav(tmp_path: Path) -> Callable[..., Path]:
    def make(
        name: str, sample_rate: int = 44100, seconds: float = 1.0, channels: int = 1, subtype: str = "PCM_16"
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), tone(sample_rate, seconds, channels), sample_rate, subtype=subtype)
        return path

    return make


def settings_for(root: Path, weights: Path, **overrides: Any) -> Settings:
    """A daemon's settings on folders under ``root``, quick to retry, on the CPU."""
    base: dict[str, Any] = dict(
        inbox=root / "inbox",
        outbox=root / "outbox",
        done=root / "done",
        failed=root / "failed",
        state_dir=root / "state",
        model={"weights": str(weights)},
        codec={"devices": ["cpu"]},
        retry={"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "max_attempts": 3},
        watch={"settle_seconds": 0.3},
        metrics={"listen": ""},
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real PostgreSQL server per test process (see tests/pg.py)."""
    from .pg import PgServer, binaries

    if binaries() is None:
        if os.environ.get("DACWATCH_REQUIRE_POSTGRES"):  # CI: never pass with these tests skipped
            pytest.fail("DACWATCH_REQUIRE_POSTGRES is set but no PostgreSQL server is installed")
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    server = PgServer(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop("immediate")


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """A fresh database on the test server."""
    url: str = pg_server.new_database()
    return url
