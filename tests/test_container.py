"""The .dac container: round trips, memory mapping, legacy layouts, hostile files."""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dacwatch.codec.model import ModelSpec, tiny_model
from dacwatch.convert import CodecPool, CodecSettings, decode_array
from dacwatch.errors import ModelUnavailableError, PermanentError
from dacwatch.formats import container
from dacwatch.formats.container import ContainerError, Metadata, ModelRecord

from .conftest import noise

RECORD = ModelRecord(
    type="44khz",
    bitrate="8kbps",
    tag="0.0.1",
    sample_rate=44100,
    hop_length=512,
    codebook_size=64,
    n_codebooks=4,
    model_codebooks=4,
)


def meta(frames: int, channels: int = 2, **kw: object) -> Metadata:
    base: dict[str, object] = dict(
        model=RECORD,
        sample_rate=48000,
        length=frames * 512 * 48000 // 44100,
        channels=channels,
        model_length=frames * 512 - 100,
        loudness=-23.5,
        gain_db=7.5,
    )
    base.update(kw)
    return Metadata(**base)  # type: ignore[arg-type]


def write(path: Path, metadata: Metadata, codes: np.ndarray, code_format: str = "packed") -> Path:
    with open(path, "wb") as f:
        container.write(f, metadata, codes, code_format)
    return path


def codes_for(frames: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 64, size=(frames, 4, channels)).astype(np.int16)


def test_writer_refuses_codes_that_disagree_with_the_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="disagree"), open(tmp_path / "x.dac", "wb") as f:
        container.write(f, meta(30), codes_for(31))


@pytest.mark.parametrize(("code_format", "version", "dtype"), [("int16", 1, np.int16), ("packed", 2, np.uint8)])
def test_round_trip_every_field(tmp_path: Path, code_format: str, version: int, dtype: type) -> None:
    codes = codes_for(30)
    m = meta(30)
    path = write(tmp_path / "a.dac", m, codes, code_format)
    back = container.read(path)
    assert replace(back.metadata, packing=None) == m and back.metadata.version == version
    assert np.array_equal(np.asarray(back.codes), codes)
    raw = np.load(path, allow_pickle=False)  # plain numpy reads it, no pickle
    assert raw["codes"].dtype == dtype and raw["codes"].flags.c_contiguous
    body = json.loads(str(raw["metadata"]))
    assert body["format"] == "dacwatch" and body["version"] == version and body["model"]["hop_length"] == 512
    for entry in zipfile.ZipFile(path).infolist():
        assert entry.compress_type == zipfile.ZIP_STORED


def test_silence_has_null_loudness(tmp_path: Path) -> None:
    path = write(tmp_path / "s.dac", meta(3, loudness=None, gain_db=0.0), codes_for(3))
    assert container.read(path).metadata.loudness is None
    assert "NaN" not in str(np.load(path)["metadata"])


@pytest.mark.parametrize("code_format", ["int16", "packed"])
def test_codes_are_memory_mapped_and_a_range_reads_only_its_frames(tmp_path: Path, code_format: str) -> None:
    frames = 200_000  # 3.2 MB of codes as int16, 1.2 MB packed
    codes = codes_for(frames, channels=2, seed=1)
    path = write(tmp_path / "long.dac", meta(frames), codes, code_format)
    before = _bytes_read()
    opened = container.read(path)
    excerpt = np.asarray(opened.codes[150_000:150_010])
    after = _bytes_read()
    mapped = opened.codes if code_format == "int16" else opened.codes.rows  # type: ignore[union-attr]
    assert isinstance(mapped, np.memmap)
    assert np.array_equal(excerpt, codes[150_000:150_010])
    assert after - before < 64 * 1024, after - before  # headers only, not 3.2 MB


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
        (lambda p: p.write_bytes(b"hello, not a dac"), "not a .dac file"),
        (lambda p: p.write_bytes(b""), "not a .dac file"),
    ],
)
def test_damaged_files_are_refused_clearly(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path / "d.dac", meta(20), codes_for(20))
    damage(path)
    with pytest.raises(ContainerError, match=message) as info:
        container.read(path)
    assert str(path) in str(info.value)


def _zip(path: Path, entries: dict[str, np.ndarray], compress: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, arr in entries.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=True)
            zf.writestr(name, buf.getvalue())
    return path


def _meta_json(**changes: object) -> np.ndarray:
    body = json.loads(meta(20).to_json())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            body[outer][inner] = value
        else:
            body[key] = value
    return np.array(json.dumps(body))


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"codes.npy": codes_for(20)}, "no 'metadata.npy'"),
        ({"metadata.npy": _meta_json()}, "no 'codes.npy'"),
        ({"metadata.npy": _meta_json(), "codes.npy": codes_for(20).astype(np.int32)}, "int16"),
        ({"metadata.npy": _meta_json(), "codes.npy": codes_for(20)[:, :, 0]}, "rank 3"),
        ({"metadata.npy": _meta_json(), "codes.npy": np.zeros((20, 4, 2), np.int16, order="F")}, None),
        ({"metadata.npy": _meta_json(version=2), "codes.npy": codes_for(20)}, "format version 2"),
        ({"metadata.npy": _meta_json(length=-5), "codes.npy": codes_for(20)}, "length must be"),
        ({"metadata.npy": _meta_json(sample_rate=0), "codes.npy": codes_for(20)}, "sample_rate must be"),
        (
            {"metadata.npy": _meta_json(**{"model.n_codebooks": 6}), "codes.npy": np.zeros((20, 6, 2), np.int16)},
            "6 codebooks",
        ),
        ({"metadata.npy": _meta_json(), "codes.npy": codes_for(21)}, "frames"),
        ({"metadata.npy": _meta_json(), "codes.npy": np.array([{"x": 1}], dtype=object)}, "pickled objects"),
        ({"metadata.npy": np.array("{not json"), "codes.npy": codes_for(20)}, "not valid JSON"),
    ],
)
def test_bad_contents_are_refused_clearly(tmp_path: Path, entries: dict[str, np.ndarray], message: str | None) -> None:
    path = _zip(tmp_path / "bad.dac", entries)
    if message is None:  # Fortran-ordered codes: refused as not C order
        message = "C order"
    with pytest.raises(ContainerError, match=message):
        container.read(path)


def test_compressed_codes_are_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path / "z.dac", {"metadata.npy": _meta_json(), "codes.npy": codes_for(20)}, compress=True)
    with pytest.raises(ContainerError, match="compressed"):
        container.read(path)


def test_out_of_range_codes_found_by_scan(tmp_path: Path) -> None:
    codes = codes_for(20)
    codes[7, 1, 0] = 999
    path = write(tmp_path / "r.dac", meta(20), codes, "int16")  # packed, 999 would not fit 6 bits
    with pytest.raises(ContainerError, match="out of range"):
        container.read(path).check_codes()


class _Evil:
    """Unpickling this opens (creates) a marker file: proof that code would have run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def test_the_evil_pickle_really_runs_code_when_unpickled_naively(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Evil(marker))).close()
    assert marker.exists()


def test_malicious_dac_1_0_0_file_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.dac"
    with open(path, "wb") as f:
        np.save(f, {"codes": np.zeros((1, 9, 4), np.uint16), "metadata": {"x": _Evil(marker)}}, allow_pickle=True)
    with pytest.raises(ContainerError, match="refusing a pickle"):
        container.read(path)
    assert not marker.exists()


def test_malicious_seed_file_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.dac"
    with open(path, "wb") as f:
        np.savez(f, codes=np.zeros((3, 9, 1), np.int16), metadata=np.array(_Evil(marker), dtype=object))
    with pytest.raises(ContainerError, match="refusing a pickle"):
        container.read(path)
    assert not marker.exists()


# ---------------------------------------------------------------------- legacy files, decoded


@pytest.fixture(scope="module")
def nine_codebook_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny widths with the released 44khz 8kbps quantizer shape (9 codebooks of 1024):
    legacy files do not name their model, the codebook count does."""
    path = tmp_path_factory.mktemp("w9") / "tiny9.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_model("44khz", seed=3, n_codebooks=9, codebook_size=1024).save(str(path), package=False)
    return path


def test_dac_1_0_0_file_decodes_as_dac_does(tmp_path: Path, nine_codebook_weights: Path) -> None:
    from audiotools import AudioSignal
    from dac.model import DAC

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dac_model = DAC.load(str(nine_codebook_weights)).eval()
    x = noise(2, 3 * 44100 + 77, seed=4)
    signal = AudioSignal(torch.from_numpy(x)[None], 44100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dac_file = dac_model.compress(signal, win_duration=1.0)
        path = dac_file.save(tmp_path / "old")
        expected = dac_model.decompress(dac_file).audio_data[0].numpy()

    opened = container.read(path)
    assert opened.legacy is not None and opened.legacy.kind == "dac-1.0.0" and not opened.legacy.padding
    assert opened.metadata.model.type == "44khz" and opened.metadata.channels == 2
    pool = CodecPool(ModelSpec(weights=nine_codebook_weights), CodecSettings("cpu"))
    got = decode_array(pool, opened, resample=True)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4


def test_seed_file_decodes_like_format_1(tmp_path: Path, nine_codebook_weights: Path) -> None:
    pool = CodecPool(ModelSpec(weights=nine_codebook_weights), CodecSettings("cpu", decode_window_s=0.1))
    codes = np.random.default_rng(2).integers(0, 1024, size=(40, 9, 1)).astype(np.int16)
    seed_meta = {"sample_rate": 44100, "original_length": 40 * 512 - 10, "channels": 1, "input_db": np.float32(-16.0)}
    path = tmp_path / "seed.dac"
    with open(path, "wb") as f:
        np.savez(f, codes=codes, metadata=np.array(seed_meta, dtype=object))
    opened = container.read(path)
    assert opened.legacy is not None and opened.legacy.kind == "seed"
    got = decode_array(pool, opened, resample=True)
    whole = pool.codec().decode(codes)[:, : 40 * 512 - 10]
    assert got.shape == whole.shape and np.abs(got - whole).max() < 1e-4


def test_file_of_another_model_is_refused_when_that_model_is_unavailable(tmp_path: Path, tiny_weights: Path) -> None:
    rec16 = ModelRecord(**{**RECORD.__dict__, "type": "16khz", "tag": "0.0.5", "sample_rate": 16000, "hop_length": 320})
    path = write(tmp_path / "a.dac", meta(10, model=rec16, model_length=10 * 320), codes_for(10))
    pool = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu"), cache_dir=tmp_path / "empty-cache")
    with pytest.raises(ModelUnavailableError, match="16khz"):
        decode_array(pool, container.read(path))


def test_file_of_another_model_uses_that_model_when_cached(tmp_path: Path, tiny_weights: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_model("16khz", seed=5).save(str(cache / "weights_16khz_8kbps_0.0.5.pth"), package=False)
    rec16 = ModelRecord(**{**RECORD.__dict__, "type": "16khz", "tag": "0.0.5", "sample_rate": 16000, "hop_length": 320})
    m = meta(10, model=rec16, model_length=10 * 320)
    path = write(tmp_path / "b.dac", m, codes_for(10))
    pool = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu"), cache_dir=cache)
    audio = decode_array(pool, container.read(path))
    assert audio.shape == (2, 10 * 320)
    assert pool.codec_for(rec16).sample_rate == 16000 and pool.codec().sample_rate == 44100


def test_file_whose_geometry_disagrees_with_the_network_is_refused(tmp_path: Path, tiny_weights: Path) -> None:
    wrong = ModelRecord(**{**RECORD.__dict__, "codebook_size": 1024})
    path = write(tmp_path / "w.dac", meta(10, model=wrong), codes_for(10))
    pool = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu"))
    with pytest.raises(PermanentError, match="does not match"):
        decode_array(pool, container.read(path))


def test_zip_bomb_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.dac"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.npy", b"\x93NUMPY" + b"\0" * (64 << 20))
        zf.writestr("codes.npy", b"")
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(ContainerError, match="refusing"):
        container.read(path)


def test_a_length_the_codes_do_not_hold_is_refused(tmp_path: Path) -> None:
    """A forged original length (10^12 samples) would make a resampling decode pad
    terabytes of silence onto the disk."""
    path = write(tmp_path / "long.dac", meta(10), codes_for(10), "int16")
    raw = json.loads(str(np.load(path, allow_pickle=False)["metadata"]))
    raw["length"] = 10**12
    forged = tmp_path / "forged.dac"
    with zipfile.ZipFile(forged, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in (("metadata.npy", np.array(json.dumps(raw))), ("codes.npy", codes_for(10))):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr)
            zf.writestr(name, buf.getvalue())
    with pytest.raises(ContainerError, match=r"claims 20833333\.333 s of audio but its codes hold 0\.114 s"):
        container.read(forged)
