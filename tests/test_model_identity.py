"""A .dac file names exactly the network that made it, and decoding refuses any other;
an older file that names none is decoded with the model the user names, if it fits."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dacwatch.codec.model import ModelSpec, fingerprint, prepare_model, tiny_model
from dacwatch.convert import CodecPool, CodecSettings, decode_array, encode_file
from dacwatch.errors import ModelMismatchError
from dacwatch.formats import container
from dacwatch.formats.container import LOCAL_TAG

from .conftest import noise, tone


def save(model: object, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(str(path), package=False)  # type: ignore[attr-defined]
    return path


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two weights files of the same shape (as two fine-tunings of one model would be)."""
    folder = tmp_path_factory.mktemp("weights")
    return save(tiny_model(seed=11), folder / "a.pth"), save(tiny_model(seed=12), folder / "b.pth")


def test_the_fingerprint_survives_save_and_load_and_tells_weights_apart(tmp_path: Path) -> None:
    from dac.model import DAC

    model = tiny_model(seed=11)
    before = fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = DAC.load(str(save(model, tmp_path / "m.pth")))
    assert fingerprint(loaded) == before == fingerprint(prepare_model(loaded))  # folding keeps it
    assert fingerprint(tiny_model(seed=12)) != before
    other = tiny_model(seed=11)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-6  # one weight, barely moved
    assert fingerprint(other) != before


def test_a_local_weights_file_is_recorded_as_itself(tmp_path: Path, two_weights: tuple[Path, Path]) -> None:
    a, _ = two_weights
    wav = tmp_path / "t.wav"
    sf.write(str(wav), tone(44100, 1.0), 44100)
    pool = CodecPool(ModelSpec(weights=a), CodecSettings("cpu"))
    encode_file(pool, wav, tmp_path / "t.dac")
    model = container.read(tmp_path / "t.dac").metadata.model
    assert model.tag == LOCAL_TAG and model.weights_file == "a.pth"
    assert model.weights == fingerprint(pool.codec().model)


def test_decoding_with_other_weights_of_the_same_shape_is_refused(
    tmp_path: Path, two_weights: tuple[Path, Path]
) -> None:
    a, b = two_weights
    wav = tmp_path / "t.wav"
    sf.write(str(wav), tone(44100, 1.0), 44100)
    cli = [sys.executable, "-m", "dacwatch"]
    subprocess.run([*cli, "encode", str(wav), str(tmp_path / "t.dac"), "--weights", str(a)], check=True)
    refused = subprocess.run(
        [*cli, "decode", str(tmp_path / "t.dac"), str(tmp_path / "t.wav.out.wav"), "--weights", str(b)],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert "made with the weights file a.pth" in refused.stderr and "--weights" in refused.stderr
    assert not (tmp_path / "t.wav.out.wav").exists()
    subprocess.run([*cli, "decode", str(tmp_path / "t.dac"), str(tmp_path / "ok.wav"), "--weights", str(a)], check=True)
    info = subprocess.run([*cli, "info", str(tmp_path / "t.dac")], capture_output=True, text=True, check=True)
    assert "the weights file a.pth" in info.stdout and fingerprint(tiny_model(seed=11))[:19] in info.stdout


def test_a_release_name_with_other_weights_behind_it_is_refused(tmp_path: Path, two_weights: tuple[Path, Path]) -> None:
    """The file names DAC 44khz 8kbps 0.0.1 and its weights; this host's cache holds
    another file under that name (a retrained or corrupted download)."""
    a, b = two_weights
    made, here = tmp_path / "made", tmp_path / "here"
    for cache, weights in ((made, a), (here, b)):
        cache.mkdir()
        (cache / "weights_44khz_8kbps_0.0.1.pth").write_bytes(weights.read_bytes())
    wav = tmp_path / "t.wav"
    sf.write(str(wav), tone(44100, 1.0), 44100)
    release = ModelSpec("44khz", "8kbps", "0.0.1")
    encode_file(CodecPool(release, CodecSettings("cpu"), cache_dir=made), wav, tmp_path / "t.dac")
    dac = container.read(tmp_path / "t.dac")
    assert (dac.metadata.model.tag, dac.metadata.model.weights_file) == ("0.0.1", None)
    with pytest.raises(ModelMismatchError, match=r"tag 0\.0\.1 weights sha256:"):
        decode_array(CodecPool(release, CodecSettings("cpu"), cache_dir=here), dac)
    decode_array(CodecPool(release, CodecSettings("cpu"), cache_dir=made), dac)


def dac_1_0_0_file(model: object, tmp_path: Path, n_quantizers: int | None) -> tuple[Path, np.ndarray]:
    """A file written by DAC 1.0.0's own ``compress`` (as ``--n_quantizers N`` does), and
    what its own ``decompress`` gives."""
    from audiotools import AudioSignal

    signal = AudioSignal(torch.from_numpy(noise(1, 2 * 44100 + 31, seed=8))[None], 44100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dac_file = model.compress(signal, win_duration=1.0, n_quantizers=n_quantizers)  # type: ignore[attr-defined]
        path = Path(dac_file.save(tmp_path / "old"))
        expected = model.decompress(dac_file).audio_data[0].numpy()  # type: ignore[attr-defined]
    return path, expected


@pytest.mark.parametrize("model_codebooks, n_quantizers", [(4, None), (9, 4)])
def test_dac_1_0_0_file_with_an_unlisted_codebook_count_uses_the_named_model(
    tmp_path: Path, model_codebooks: int, n_quantizers: int | None
) -> None:
    from dac.model import DAC

    weights = save(tiny_model(seed=5, n_codebooks=model_codebooks, codebook_size=1024), tmp_path / "w.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DAC.load(str(weights)).eval()
    path, expected = dac_1_0_0_file(model, tmp_path, n_quantizers)
    opened = container.read(path)
    assert opened.metadata.model.n_codebooks == 4 and not opened.metadata.model.named
    got = decode_array(CodecPool(ModelSpec(weights=weights), CodecSettings("cpu")), opened, resample=True)
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4


def test_dac_1_0_0_file_that_fits_no_named_model_says_how_to_name_it(tmp_path: Path) -> None:
    from dac.model import DAC

    weights = save(tiny_model(seed=5, n_codebooks=5, codebook_size=1024), tmp_path / "w5.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, _ = dac_1_0_0_file(DAC.load(str(weights)).eval(), tmp_path, None)
    small = save(tiny_model(seed=6, n_codebooks=4, codebook_size=1024), tmp_path / "w4.pth")
    with pytest.raises(ModelMismatchError, match=r"5 codebooks of codes.*4 codebooks, the file has 5.*--weights"):
        decode_array(CodecPool(ModelSpec(weights=small), CodecSettings("cpu")), container.read(path))


def test_a_release_file_decodes_beside_local_weights_of_its_type(
    tmp_path: Path, two_weights: tuple[Path, Path]
) -> None:
    """A host configured with its own fine-tuned 44khz weights still decodes a file of the
    44khz release with the release (from its cache), not with its own weights."""
    a, b = two_weights
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "weights_44khz_8kbps_0.0.1.pth").write_bytes(a.read_bytes())
    wav = tmp_path / "t.wav"
    sf.write(str(wav), tone(44100, 1.0), 44100)
    encode_file(
        CodecPool(ModelSpec("44khz", "8kbps", "0.0.1"), CodecSettings("cpu"), cache_dir=cache), wav, tmp_path / "t.dac"
    )
    local = CodecPool(ModelSpec(weights=b), CodecSettings("cpu"), cache_dir=cache)
    got = decode_array(local, container.read(tmp_path / "t.dac"))
    expected = decode_array(CodecPool(ModelSpec(weights=a), CodecSettings("cpu")), container.read(tmp_path / "t.dac"))
    assert np.array_equal(got, expected)
