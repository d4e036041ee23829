"""The CPU decoder's per-layer kernel choice (dacwatch.codec.tuning): every candidate
decodes chunked within tolerance of whole-file; the choice is measured once, cached and
then read (the same choice every run); damaged, foreign or unwritable caches are
ignored and replaced, never a crash. No test asserts a timing."""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dacwatch.codec import tuning
from dacwatch.codec.chunked import ChunkedCodec
from dacwatch.codec.model import prepare_model, tiny_model

# A decoder wide enough for Winograd layers: channels 128, 64 (Winograd-suited), 32, 16.
WIDE = {"decoder_dim": 256}


@pytest.fixture(scope="module")
def wide() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_model(tiny_model("44khz", seed=11, **WIDE))


def codes(frames: int = 60, channels: int = 1, seed: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 64, size=(frames, 4, channels)).astype(np.int16)


def set_all(model: nn.Module, conv: str, transposed: str, taps: str = "direct") -> None:
    """``conv`` for the kernel-7 layers, ``transposed`` for the upsamplers, ``taps`` for
    the few-output last layer."""
    for layer in tuning.tunable(model):
        if isinstance(layer, nn.ConvTranspose1d):
            tuning.apply(layer, transposed)
        else:
            tuning.apply(layer, taps if tuning.choices_for(layer) == tuning.TAPS_CHOICES else conv)


def test_the_wide_tiny_decoder_has_every_kind_of_choice(wide: nn.Module) -> None:
    kinds = {tuning.choices_for(c) for c in tuning.tunable(wide)}
    assert kinds == {(*tuning.CONV_CHOICES, *tuning.FUSED_CHOICES), tuning.TRANSPOSED_CHOICES, tuning.TAPS_CHOICES}
    keys = [tuning.layer_key(c) for c in tuning.tunable(wide)]
    assert len(keys) == len(set(keys))  # one shape, one key: dilations differ


@pytest.mark.parametrize(
    ("conv", "transposed"),
    list(itertools.product((*tuning.CONV_CHOICES, *tuning.FUSED_CHOICES), tuning.TRANSPOSED_CHOICES)),
)
def test_every_kernel_decodes_chunked_within_tolerance_of_whole(wide: nn.Module, conv: str, transposed: str) -> None:
    """Each candidate, chunked (small windows and tiles, stereo, batch 2) against the
    whole-file pass with the same kernels, and against the installed defaults' whole pass
    (the last layer by its taps with the polyphase upsamplers, torch's with the native)."""
    c = codes(70, channels=2)
    set_all(wide, "winograd", "polyphase")
    default = ChunkedCodec(wide, "cpu", decode_window_s=0).decode(c)
    set_all(wide, conv, transposed, "taps" if transposed == "polyphase" else "direct")
    try:
        reference = ChunkedCodec(wide, "cpu", decode_window_s=0).decode(c)
        chunked = ChunkedCodec(wide, "cpu", decode_window_s=9 * 512 / 44100, batch_size=2)
        chunked.tile_samples = 1500
        got = chunked.decode(c)
    finally:
        set_all(wide, "winograd", "polyphase")
    scale = max(1.0, float(np.abs(reference).max()))
    assert got.shape == reference.shape == default.shape
    assert np.abs(got - reference).max() <= 1e-4 * scale
    assert np.abs(reference - default).max() <= 1e-4 * scale


@pytest.mark.parametrize("choice", ["winograd-onednn", "winograd-grouped", *tuning.FUSED_CHOICES])
def test_onednn_mixing_matches_a_float64_convolution(choice: str) -> None:
    torch.manual_seed(3)
    for dilation in (1, 3):
        conv = nn.Conv1d(64, 72, 7, dilation=dilation, padding=3 * dilation)
        reference = nn.Conv1d(64, 72, 7, dilation=dilation, padding=3 * dilation).double()
        reference.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
        tuning.apply(conv, choice)
        for n in (1, 37, 1000):
            x = torch.randn(2, 64, n)
            with torch.inference_mode():
                want, got = reference(x.double()), conv(x)
            assert got.shape == want.shape
            assert (got.double() - want).abs().max() <= 2e-5 * want.abs().max()


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "dilation", "padding"),
    [(96, 1, 7, 1, 3), (16, 2, 5, 2, 4), (8, 4, 3, 1, 0), (8, 1, 7, 3, 9)],
)
def test_the_taps_form_matches_a_float64_convolution(
    c_in: int, c_out: int, kernel: int, dilation: int, padding: int
) -> None:
    """The few-output layers' matrix product of taps and shifted adds, on rows of a cropped
    view, from inputs shorter than the kernel's reach (padding alone makes the outputs)
    to long ones; no output left is the direct convolution's error."""
    torch.manual_seed(4)
    conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=padding)
    reference = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=padding).double()
    reference.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
    tuning.apply(conv, "taps")
    base = torch.randn(2, c_in, 1100)
    for n in (1, 2, kernel, 37, 1000):
        x = base[..., 5 : 5 + n]
        if n + 2 * padding - dilation * (kernel - 1) <= 0:
            with torch.inference_mode(), pytest.raises(RuntimeError):
                conv(x)  # torch's own error, as the direct convolution gives it
            continue
        with torch.inference_mode():
            want, got = reference(x.double()), conv(x)
        assert got.shape == want.shape
        assert (got.double() - want).abs().max() <= 1e-6 * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize(
    ("make", "taps"),
    [
        (lambda: nn.Conv1d(8, 1, 7, padding=3), True),
        (lambda: nn.Conv1d(8, 1, 7, stride=2, padding=3), False),
        (lambda: nn.Conv1d(8, 2, 7, padding=3, groups=2), False),
        (lambda: nn.Conv1d(8, 1, 1), False),
        (lambda: nn.Conv1d(8, 1, 7, padding="same"), False),
        (lambda: nn.Conv1d(8, 1, 7, padding=3, padding_mode="reflect"), False),
        (lambda: nn.Conv1d(8, 5, 7, padding=3), False),
    ],
    ids=["fits", "stride2", "groups2", "k1", "same", "reflect", "five-outputs"],
)
def test_the_taps_form_is_a_choice_only_where_it_computes_the_layer(make: Callable[[], nn.Conv1d], taps: bool) -> None:
    """Only layers the taps form computes correctly have it (torch's own runs until
    tuned), and there every choice computes torch's convolution."""
    torch.manual_seed(0)
    conv = make()
    assert ("taps" in tuning.choices_for(conv)) is taps
    if not taps:
        with pytest.raises(ValueError):
            tuning.apply(conv, "taps")
        return
    assert tuning.current(conv) == "direct"
    x = torch.randn(2, 8, 60)[..., 3:50]
    with torch.no_grad():
        want = nn.Conv1d.forward(conv, x)
        for choice in tuning.choices_for(conv):
            tuning.apply(conv, choice)
            got = conv(x)
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-5), choice


def test_choices_are_measured_once_then_read(wide: nn.Module, tmp_path: Path) -> None:
    codec = ChunkedCodec(wide, "cpu")
    first = codec.tune_kernels(tmp_path)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [tuning.cache_path(tmp_path, tuning.host_key()).name]  # no temp files left
    data = json.loads(files[0].read_text())
    assert data["host"] == tuning.host_key()
    assert set(first) == {tuning.layer_key(c) for c in tuning.tunable(wide)}
    for layer in tuning.tunable(wide):
        key = tuning.layer_key(layer)
        assert first[key] in tuning.choices_for(layer) and tuning.current(layer) == first[key]
        entry = data["layers"][key]
        assert entry["choice"] == first[key] and set(entry["ms"]) == set(tuning.choices_for(layer))
    # A choice in the file is what runs, whatever a measurement would say now: write
    # choices no measurement made, and load a fresh network.
    few = {tuning.layer_key(c) for c in tuning.tunable(wide) if tuning.choices_for(c) == tuning.TAPS_CHOICES}
    forced = {k: "native" if k.startswith("convT") else "taps" if k in few else "winograd-onednn" for k in first}
    data["layers"] = {k: {"choice": v} for k, v in forced.items()}
    files[0].write_text(json.dumps(data))
    before = files[0].read_bytes()
    for _ in range(2):
        fresh = prepare_model(tiny_model("44khz", seed=11, **WIDE))
        assert ChunkedCodec(fresh, "cpu").tune_kernels(tmp_path) == forced
        assert {tuning.layer_key(c): tuning.current(c) for c in tuning.tunable(fresh)} == forced
    assert files[0].read_bytes() == before  # read, not rewritten


@pytest.mark.parametrize(
    "damage", ["garbage", "empty", "truncated", "not an object", "foreign host", "old version", "unknown choice"]
)
def test_a_damaged_or_foreign_cache_is_ignored_and_replaced(wide: nn.Module, tmp_path: Path, damage: str) -> None:
    host = tuning.host_key()
    path = tuning.cache_path(tmp_path, host)
    good = {"host": host, "layers": {tuning.layer_key(c): {"choice": "direct"} for c in tuning.tunable(wide)}}
    text = {
        "garbage": "\x00\xff not json",
        "empty": "",
        "truncated": json.dumps(good)[:40],
        "not an object": "[1, 2, 3]",
        "foreign host": json.dumps({**good, "host": {**host, "cpu": "Some Other CPU"}}),
        "old version": json.dumps({**good, "host": {**host, "version": 0}}),
        "unknown choice": json.dumps(
            {"host": host, "layers": {tuning.layer_key(c): {"choice": "fft"} for c in tuning.tunable(wide)}}
        ),
    }[damage]
    path.write_text(text, errors="surrogateescape")
    chosen = ChunkedCodec(wide, "cpu").tune_kernels(tmp_path)
    data = json.loads(path.read_text())  # rewritten whole, this host's
    assert data["host"] == host
    assert {k: v["choice"] for k, v in data["layers"].items()} == chosen
    assert all(chosen[tuning.layer_key(c)] in tuning.choices_for(c) for c in tuning.tunable(wide))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_unwritable_cache_folder_costs_only_the_measuring(wide: nn.Module, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the folder should be")
    chosen = ChunkedCodec(wide, "cpu").tune_kernels(blocked)
    assert all(chosen[tuning.layer_key(c)] == tuning.current(c) for c in tuning.tunable(wide))
    assert blocked.read_text() == "a file where the folder should be"


def test_without_a_folder_nothing_is_written_and_the_network_still_decodes(wide: nn.Module) -> None:
    chosen = ChunkedCodec(wide, "cpu").tune_kernels(None)
    assert set(chosen) == {tuning.layer_key(c) for c in tuning.tunable(wide)}
    out = ChunkedCodec(wide, "cpu", decode_window_s=9 * 512 / 44100).decode(codes(30))
    assert np.isfinite(out).all()


def test_encoder_layers_are_never_tuned(wide: nn.Module) -> None:
    encoder = {id(m) for m in wide.encoder.modules()}
    assert not any(id(c) in encoder for c in tuning.tunable(wide))


def test_pick_keeps_torchs_own_layer_unless_another_is_clearly_faster() -> None:
    assert tuning.pick({"direct": 1.0, "winograd": 0.95, "winograd-onednn": 0.99}, "direct") == "direct"
    assert tuning.pick({"direct": 1.0, "winograd": 0.5, "winograd-onednn": 0.6}, "direct") == "winograd"
    assert tuning.pick({"native": 2.0, "polyphase": 1.0}, "native") == "polyphase"
    assert tuning.pick({"native": 1.0, "polyphase": 1.0}, "native") == "native"


def test_a_layer_keeps_only_the_derived_weights_its_kernel_uses() -> None:
    conv = nn.Conv1d(64, 64, 7, padding=3)
    x = torch.randn(1, 64, 50)
    with torch.inference_mode():
        for choice in tuning.CONV_CHOICES:  # every kernel builds what it needs
            tuning.apply(conv, choice)
            conv(x)
        tuning.apply(conv, "direct")
        derived = {"_dacwatch_polyphase", "_dacwatch_winograd", "_dacwatch_onednn", "_dacwatch_grouped"}
        assert not derived & set(conv.__dict__)
        tuning.apply(conv, "winograd-onednn")
        conv(x)
        tuning.apply(conv, "winograd")
        assert "_dacwatch_winograd" in conv.__dict__ and "_dacwatch_onednn" not in conv.__dict__
    last = nn.Conv1d(64, 1, 7, padding=3)
    with torch.inference_mode():
        tuning.apply(last, "taps")
        last(x)
        assert "_dacwatch_taps" in last.__dict__
        tuning.apply(last, "direct")
        assert "_dacwatch_taps" not in last.__dict__


def test_a_folder_where_the_cache_file_should_be_is_no_crash(wide: nn.Module, tmp_path: Path) -> None:
    path = tuning.cache_path(tmp_path, tuning.host_key())
    path.mkdir()
    chosen = ChunkedCodec(wide, "cpu").tune_kernels(tmp_path)
    assert all(chosen[tuning.layer_key(c)] == tuning.current(c) for c in tuning.tunable(wide))
    assert path.is_dir() and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_one_shot_pools_tune_at_the_first_decode_only(tiny_weights: Path, tmp_path: Path) -> None:
    """An encode never pays for the decoder's measuring; the first decode measures and
    caches; a daemon's pool (tune_at_load) has its choice before any job."""
    from dacwatch.codec.model import ModelSpec
    from dacwatch.convert import CodecPool, CodecSettings

    folder = tmp_path / "kernels"
    codec = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu"), kernels_dir=folder).codec()
    encoded = codec.encode(np.zeros((1, 44100), dtype=np.float32))
    assert not folder.exists()
    codec.decode(encoded)
    assert [p.name for p in folder.iterdir()] == [tuning.cache_path(folder, tuning.host_key()).name]
    daemon_folder = tmp_path / "state"
    CodecPool(
        ModelSpec(weights=tiny_weights), CodecSettings("cpu"), kernels_dir=daemon_folder, tune_at_load=True
    ).codec()
    assert [p.name for p in daemon_folder.iterdir()] == [tuning.cache_path(daemon_folder, tuning.host_key()).name]
