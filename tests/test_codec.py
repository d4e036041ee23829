"""Chunked encoding equals whole-file encoding at every frame; chunked decoding equals
whole-file decoding to float tolerance. Real DAC networks with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dacwatch.codec.chunked import ChunkedCodec
from dacwatch.codec.model import (
    decoder_output_length,
    encoder_receptive_field,
    full_size_model,
    layer_padding,
    prepare_model,
)

from .conftest import noise

DECODE_TOL = 1e-4  # full-size networks (Winograd's rounding on a CPU is a few 1e-6)
# The tiny networks (no Winograd layers) round to at most 4e-7 here (AMD EPYC), while a
# decoder context one frame short is off by 2e-6 to 7e-6 at 44 kHz: a tolerance that
# lets that through would test nothing there.
TINY_DECODE_TOL = 1.5e-6


def whole(model: nn.Module) -> ChunkedCodec:
    return ChunkedCodec(model, "cpu", encode_window_s=0, decode_window_s=0, batch_size=1)


def frames_differing(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int((a != b).any(axis=(1, 2)).sum())


def test_receptive_field_is_walked_from_the_layers(tiny_models: dict[str, nn.Module]) -> None:
    rf = encoder_receptive_field(tiny_models["44khz"])
    assert (rf.size, rf.stride, rf.padding) == (7978, 512, 3733)
    rf24 = encoder_receptive_field(tiny_models["24khz"])
    assert rf24.stride == 320 and rf24.size < rf.size


def test_full_size_geometry_matches_tiny() -> None:
    big = full_size_model("44khz")
    rf = encoder_receptive_field(big)
    assert (rf.size, rf.stride, rf.padding) == (7978, 512, 3733)
    assert decoder_output_length(big, 7) == 7 * 512


def test_odd_decoder_length_of_the_24khz_network(tiny_models: dict[str, nn.Module]) -> None:
    m = tiny_models["24khz"]
    with torch.inference_mode():
        z = m.quantizer.from_codes(torch.zeros(1, 4, 9, dtype=torch.long))[0]
        real = m.decoder(z).shape[-1]
    assert decoder_output_length(m, 9) == real != 9 * 320


def _lengths(codec: ChunkedCodec) -> list[int]:
    rf, hop = codec.rf, codec.hop
    window = rf.size + 3 * hop  # the 4-frame window used below
    return sorted(
        {
            1,
            hop - 1,
            hop,
            hop + 1,
            rf.size - 1,
            rf.size,
            rf.size + 1,
            window - 1,
            window,
            window + 1,
            2 * rf.size + 8 * hop + 7,  # just past the whole-file cut-over
            9 * window + 123,  # many windows
        }
    )


@pytest.mark.parametrize("channels", [1, 2])
def test_chunked_encode_equals_whole_at_every_frame_44khz(tiny44: nn.Module, channels: int) -> None:
    ref_codec = whole(tiny44)
    rf, sr = ref_codec.rf, ref_codec.sample_rate
    windows = [rf.size / sr, (rf.size + 3 * 512) / sr, 0.37, 60.0]  # smallest, 4 frames, odd, larger than the file
    for length in _lengths(ref_codec):
        x = noise(channels, length, seed=length)
        ref = ref_codec.encode(x)
        assert ref.shape == (-(-length // 512), 4, channels)
        for window in windows:
            for batch in (1, 3):
                got = ChunkedCodec(tiny44, "cpu", encode_window_s=window, batch_size=batch).encode(x)
                assert frames_differing(got, ref) == 0, (length, window, batch)


@pytest.mark.parametrize("model_type", ["24khz", "16khz"])
def test_chunked_encode_equals_whole_other_architectures(tiny_models: dict[str, nn.Module], model_type: str) -> None:
    m = tiny_models[model_type]
    ref_codec = whole(m)
    for length in _lengths(ref_codec)[::2]:
        x = noise(2, length, seed=length + 1)
        ref = ref_codec.encode(x)
        for window, batch in ((ref_codec.rf.size / ref_codec.sample_rate, 2), (0.5, 1)):
            got = ChunkedCodec(m, "cpu", encode_window_s=window, batch_size=batch).encode(x)
            assert frames_differing(got, ref) == 0, (model_type, length, window, batch)


def test_stream_blocks_do_not_matter(tiny44: nn.Module) -> None:
    x = noise(2, 40000, seed=5)
    codec = ChunkedCodec(tiny44, "cpu", encode_window_s=0.3, batch_size=2)
    ref = codec.encode(x)
    for block in (1, 17, 509, 44100):
        blocks = (x[:, i : i + block] for i in range(0, x.shape[1], block))
        got = np.concatenate(list(codec.encode_stream(blocks, 2)), axis=0)
        assert frames_differing(got, ref) == 0, block


def test_fewer_codebooks_are_a_prefix(tiny44: nn.Module) -> None:
    x = noise(1, 20000, seed=9)
    codec = ChunkedCodec(tiny44, "cpu", encode_window_s=0.25)
    full = codec.encode(x)
    two = codec.encode(x, n_quantizers=2)
    assert two.shape == (full.shape[0], 2, 1)
    assert np.array_equal(two, full[:, :2])
    with pytest.raises(ValueError, match="codebooks"):
        codec.encode(x, n_quantizers=5)


def test_empty_input_gives_no_frames(tiny44: nn.Module) -> None:
    codec = ChunkedCodec(tiny44, "cpu")
    assert codec.encode(np.zeros((2, 0), np.float32)).shape == (0, 4, 2)
    assert codec.decode(np.zeros((0, 4, 2), np.int16)).shape == (2, 0)


@pytest.mark.parametrize("model_type", ["44khz", "24khz", "16khz"])
def test_chunked_decode_equals_whole(tiny_models: dict[str, nn.Module], model_type: str) -> None:
    m = tiny_models[model_type]
    ref_codec = whole(m)
    rng = np.random.default_rng(3)
    hop = ref_codec.hop
    for frames in (1, 2, 11, 21, 22, 60):
        codes = rng.integers(0, 64, size=(frames, 4, 2)).astype(np.int16)
        ref = ref_codec.decode(codes)
        assert ref.shape == (2, decoder_output_length(m, frames))
        for window, batch in ((hop / m.sample_rate, 1), (5 * hop / m.sample_rate, 3), (0.2, 2), (100.0, 1)):
            got = ChunkedCodec(m, "cpu", decode_window_s=window, batch_size=batch).decode(codes)
            assert got.shape == ref.shape
            assert float(np.abs(got - ref).max()) <= TINY_DECODE_TOL, (model_type, frames, window, batch)


def test_decode_excerpt_equals_span_of_full_decode(tiny44: nn.Module) -> None:
    codes = np.random.default_rng(4).integers(0, 64, size=(80, 4, 1)).astype(np.int16)
    ref = whole(tiny44).decode(codes)
    codec = ChunkedCodec(tiny44, "cpu", decode_window_s=0.1, batch_size=2)
    for start, stop in ((0, 1), (1000, 5000), (512 * 30 + 7, 512 * 61 - 3), (40000, 10**9)):
        got = np.concatenate(list(codec.decode_stream(codes, start, stop)), axis=1)
        assert np.abs(got - ref[:, start:stop]).max() <= DECODE_TOL


def test_out_of_range_codes_are_refused(tiny44: nn.Module) -> None:
    from dacwatch.errors import PermanentError

    codes = np.zeros((10, 4, 1), np.int16)
    codes[5, 2, 0] = 64
    with pytest.raises(PermanentError, match="out of range"):
        ChunkedCodec(tiny44, "cpu").decode(codes)
    with pytest.raises(PermanentError, match="codebooks"):
        ChunkedCodec(tiny44, "cpu").decode(np.zeros((10, 5, 1), np.int16))


def test_layer_padding_is_restored_even_after_errors(tiny44: nn.Module) -> None:
    original = [m.padding for m in tiny44.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    # Nested switches: DAC's own setter would lose the padding on the second one.
    with pytest.raises(RuntimeError), layer_padding(tiny44, False), layer_padding(tiny44, False):
        raise RuntimeError("boom")
    after = [m.padding for m in tiny44.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    assert after == original and any(p != (0,) for p in after)


@pytest.mark.slow
def test_full_size_network_chunked_equals_whole() -> None:
    big = prepare_model(full_size_model("44khz", seed=1))
    x = noise(1, 2 * 7978 + 9 * 512 + 301, seed=11)
    ref = whole(big).encode(x)
    got = ChunkedCodec(big, "cpu", encode_window_s=7978 / 44100, batch_size=2).encode(x)
    assert frames_differing(got, ref) == 0
    audio_ref = whole(big).decode(ref[:40])
    audio = ChunkedCodec(big, "cpu", decode_window_s=4 * 512 / 44100, batch_size=2).decode(ref[:40])
    assert np.abs(audio - audio_ref).max() <= DECODE_TOL


def test_these_networks_make_edge_handling_matter(tiny44: nn.Module) -> None:
    """Guards the tests above against passing vacuously: the random networks use many
    codes, and padding the input with zeros (the seed's approach) instead of running
    each layer's own padding changes the edge frames."""
    codec = whole(tiny44)
    rf, hop = codec.rf, codec.hop
    x = noise(1, 30 * hop, seed=21)
    ref = codec.encode(x)
    assert len(np.unique(ref[:, 0, 0])) > 10
    total = ref.shape[0]
    signal = np.pad(x, ((0, 0), (rf.padding, total * hop - x.shape[1] + rf.size)))
    with torch.inference_mode(), layer_padding(tiny44.encoder, False):
        z = tiny44.encoder(torch.from_numpy(signal[:, : rf.size + (total - 1) * hop])[:, None, :])
        naive = tiny44.quantizer(z)[1].numpy().transpose(2, 1, 0)
    differing = np.nonzero((naive != ref).any(axis=(1, 2)))[0]
    assert differing.size and differing.min() < 8 and differing.max() > total - 8  # edges differ
    assert not ((naive != ref).any(axis=(1, 2))[10:-10]).any()  # the interior agrees


@pytest.mark.parametrize("model_type", ["44khz", "24khz", "16khz"])
def test_chunked_latents_equal_whole_file_latents_in_float64(
    tiny_models: dict[str, nn.Module], model_type: str
) -> None:
    """Tiny codebooks (64 entries) hide small errors in the latents: compare the encoder's
    continuous output itself, at every frame, edges included, in float64. A padded and
    a valid convolution sum in different orders, so they agree to rounding (about 1e-15
    of the latents' scale here), not bit for bit; a misplaced window is off by 1e-4 of
    it or more."""
    import copy

    m = copy.deepcopy(tiny_models[model_type]).double()
    ref_codec = whole(m)
    rf, sr = ref_codec.rf, ref_codec.sample_rate
    for length in [*_lengths(ref_codec)[::2], 9 * rf.size + 5 * ref_codec.hop + 3]:
        x = noise(2, length, seed=length + 7).astype(np.float64)
        ref = ref_codec.latents(x)
        assert ref.shape[0] == -(-length // ref_codec.hop) and np.abs(ref).max() > 0.1
        for window, batch in ((rf.size / sr, 2), (0.37, 1), (1.0, 3)):
            got = ChunkedCodec(m, "cpu", encode_window_s=window, batch_size=batch).latents(x)
            assert got.shape == ref.shape
            off = np.abs(got - ref).max(axis=(1, 2)) / np.abs(ref).max()
            differing = np.nonzero(off > 1e-12)[0]
            assert differing.size == 0, (model_type, length, window, batch, differing[:10], off.max())


def test_chunking_is_exact_in_float64(tiny_models: dict[str, nn.Module]) -> None:
    """In double precision chunked decoding equals whole-file decoding bit for bit:
    the float32 tolerance covers rounding only, not the method."""
    import copy

    for model_type in ("44khz", "24khz"):
        m = copy.deepcopy(tiny_models[model_type]).double()
        x = noise(2, 25000, seed=2).astype(np.float64)
        ref_codec = whole(m)
        codes = ref_codec.encode(x)
        assert frames_differing(ChunkedCodec(m, "cpu", encode_window_s=0.2, batch_size=2).encode(x), codes) == 0
        ref = ref_codec.decode(codes)
        got = ChunkedCodec(m, "cpu", decode_window_s=3 * ref_codec.hop / m.sample_rate, batch_size=2).decode(codes)
        assert np.array_equal(got, ref)


@pytest.mark.parametrize("model_type", ["44khz", "24khz"])
def test_depth_first_tiles_do_not_change_decoding(tiny_models: dict[str, nn.Module], model_type: str) -> None:
    import copy

    m = copy.deepcopy(tiny_models[model_type]).double()
    codes = np.random.default_rng(8).integers(0, 64, size=(50, 4, 2)).astype(np.int16)
    ref = whole(m).decode(codes)
    hop = whole(m).hop
    for tile_after in (0, 1, 2):
        for tile in (hop, 3 * hop + 7, 1000, 10**6):
            codec = ChunkedCodec(m, "cpu", decode_window_s=12 * hop / m.sample_rate, batch_size=2)
            codec.tile_after, codec.tile_samples = tile_after, tile
            assert np.array_equal(codec.decode(codes), ref), (tile_after, tile)
            start, stop = 5 * hop + 3, 31 * hop - 11
            part = np.concatenate(list(codec.decode_stream(codes, start, stop)), axis=1)
            assert np.array_equal(part, ref[:, start:stop])
