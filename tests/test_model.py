"""Loading through the same path the daemon uses; a clear error when weights are missing."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from dacwatch.codec.chunked import ChunkedCodec
from dacwatch.codec.model import ModelSpec, load_model, prepare_model, tiny_model
from dacwatch.errors import ModelUnavailableError

from .conftest import noise


@pytest.mark.parametrize("package", [True, False])
def test_saved_model_loads_back_identically(tmp_path: Path, package: bool) -> None:
    original = tiny_model("44khz", seed=7)
    path = tmp_path / "m.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original.save(str(path), package=package)
    loaded = load_model(ModelSpec(weights=path), "cpu")
    x = noise(1, 20000, seed=2)
    a = ChunkedCodec(prepare_model(original), "cpu", encode_window_s=0.3).encode(x)
    b = ChunkedCodec(loaded, "cpu", encode_window_s=0.3).encode(x)
    assert np.array_equal(a, b)


def test_missing_weights_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_model(ModelSpec(weights=tmp_path / "nope.pth"))


def test_corrupt_weights_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelUnavailableError, match="could not load DAC weights"):
        load_model(ModelSpec(weights=bad))


def test_offline_download_says_how_to_point_at_local_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        load_model(ModelSpec("44khz", "8kbps"), "cpu", cache_dir=tmp_path)
    message = str(info.value)
    assert "--weights" in message and str(tmp_path) in message


def test_cached_release_is_loaded_without_network(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_model("16khz").save(str(tmp_path / "weights_16khz_8kbps_0.0.5.pth"), package=False)
    model = load_model(ModelSpec("16khz", "8kbps", "latest"), "cpu", cache_dir=tmp_path)
    assert model.sample_rate == 16000


def test_invalid_specs() -> None:
    with pytest.raises(ValueError, match="16kbps"):
        ModelSpec("24khz", "16kbps")
    with pytest.raises(ValueError, match="model type"):
        ModelSpec("48khz")
    with pytest.raises(ModelUnavailableError, match="no released"):
        load_model(ModelSpec("44khz", "8kbps", "9.9.9"))


def test_fast_snake_is_bit_identical_to_dacs() -> None:
    import torch
    from dac.nn.layers import snake as dac_snake

    from dacwatch.codec.kernels import snake

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 5000, generator=gen) * 3
    alpha = torch.rand(1, 16, 1, generator=gen) + 0.2
    with torch.inference_mode():
        assert torch.equal(snake(x.clone(), alpha), dac_snake(x, alpha))


@pytest.mark.parametrize("stride", [2, 4, 5, 8])
def test_polyphase_transposed_convolution_matches_torchs(stride: int) -> None:
    """The decoder's transposed convolutions run as ordinary convolutions over the
    stride's phases: same output length and values (to float rounding), with and
    without output padding, for several rows; with gradients on, torch's own."""
    import types

    import torch
    from torch import nn

    from dacwatch.codec.kernels import _transposed_forward

    torch.manual_seed(stride)
    for bias in (True, False):
        conv = nn.ConvTranspose1d(6, 5, 2 * stride, stride, math.ceil(stride / 2), stride % 2, bias=bias)
        fast = nn.ConvTranspose1d(6, 5, 2 * stride, stride, math.ceil(stride / 2), stride % 2, bias=bias)
        fast.load_state_dict(conv.state_dict())
        fast.forward = types.MethodType(_transposed_forward, fast)  # type: ignore[method-assign]
        for rows, n in ((1, 1), (3, 2), (2, 37)):
            x = torch.randn(rows, 6, n)
            with torch.inference_mode():
                want, got = conv(x), fast(x)
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-6, rtol=0)
        for change in ("weight", "bias"):  # changed parameters are not served from the cache
            with torch.no_grad():
                for layer in (fast, conv):
                    if getattr(layer, change) is not None:
                        getattr(layer, change).add_(0.5)
            with torch.inference_mode():
                assert torch.allclose(fast(x), conv(x), atol=1e-5, rtol=0)
        assert torch.equal(fast(x), conv(x))  # gradients on: torch's own layer


def test_winograd_matrices_compute_a_correlation() -> None:
    """The Toom-Cook matrices give the correlation for F(4, 7) and F(6, 7) as used and
    for the textbook F(2, 3), and refuse point sets of the wrong size or with repeats."""
    import torch

    from dacwatch.codec.kernels import WINOGRAD6_POINTS, WINOGRAD_POINTS, winograd_matrices

    gen = torch.Generator().manual_seed(0)
    for m, r, points in ((4, 7, WINOGRAD_POINTS), (6, 7, WINOGRAD6_POINTS), (2, 3, (0, 1, -1))):
        at, g, bt = winograd_matrices(m, r, points)
        assert at.shape == (m, m + r - 1) and g.shape == (m + r - 1, r) and bt.shape == (m + r - 1,) * 2
        for _ in range(5):
            taps = torch.randn(r, generator=gen, dtype=torch.float64)
            data = torch.randn(m + r - 1, generator=gen, dtype=torch.float64)
            want = torch.stack([(taps * data[i : i + r]).sum() for i in range(m)])
            assert torch.allclose(at @ ((g @ taps) * (bt @ data)), want, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="distinct"):
        winograd_matrices(4, 7, (0, 1, 1, 2, -2, 3, -3, 4, -4))
    with pytest.raises(ValueError, match="needs 7"):
        winograd_matrices(2, 7, (0, 1))


@pytest.mark.parametrize("dilation", [1, 3, 9])
def test_winograd_convolution_matches_torchs(dilation: int) -> None:
    """The decoder's kernel-7 convolutions by Winograd F(4, 7): the same output length,
    values within float32 rounding of a float64 direct sum (the direct float32 sum is
    about 1e-6 off), for several rows, lengths shorter than one tile (torch's own) up
    to many tiles, with and without bias; changed weights are not served from the
    cache; gradients on, or float64, run torch's own layer."""
    import types

    import torch
    from torch import nn

    from dacwatch.codec.kernels import _winograd_forward, _winograd_suits

    torch.manual_seed(dilation)
    for bias in (True, False):
        conv = nn.Conv1d(64, 72, 7, dilation=dilation, padding=3 * dilation, bias=bias)
        fast = nn.Conv1d(64, 72, 7, dilation=dilation, padding=3 * dilation, bias=bias)
        fast.load_state_dict(conv.state_dict())
        assert _winograd_suits(fast)
        fast.forward = types.MethodType(_winograd_forward, fast)  # type: ignore[method-assign]
        reference = nn.Conv1d(64, 72, 7, dilation=dilation, padding=3 * dilation, bias=bias).double()
        for change in (None, "weight", "bias"):
            if change is not None and getattr(conv, change) is not None:
                with torch.no_grad():
                    for layer in (fast, conv):
                        getattr(layer, change).mul_(-1.5)
            reference.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
            for rows, n in ((1, 1), (2, 4 * dilation + 1), (3, 37), (1, 1000), (2, 4099)):
                x = torch.randn(rows, 64, n)
                with torch.inference_mode():
                    want, got = reference(x.double()), fast(x)
                assert got.shape == want.shape and got.dtype == torch.float32
                assert (got.double() - want).abs().max() <= 2e-5 * want.abs().max()
        x = torch.randn(2, 64, 300)
        assert torch.equal(fast(x), conv(x))  # gradients on: torch's own layer
        with torch.inference_mode():
            assert torch.equal(fast.double()(x.double()), conv.double()(x.double()))
            fast.float(), conv.float()
    assert not _winograd_suits(nn.Conv1d(64, 1, 7, padding=3))  # too narrow: direct is as fast
    assert not _winograd_suits(nn.Conv1d(64, 64, 7, padding="same"))
    assert not _winograd_suits(nn.Conv1d(1024, 1536, 7, padding=3))  # too much memory for its gain


def test_prepared_wide_decoder_matches_dacs_own() -> None:
    """A decoder wide enough for Winograd layers (512 channels down to 64) decodes,
    chunked, to within 1e-5 of DAC's own decoder on the untouched network."""
    import torch
    from torch import nn

    from dacwatch.codec import kernels

    original = tiny_model("44khz", seed=5, decoder_dim=1024)
    prepared = prepare_model(tiny_model("44khz", seed=5, decoder_dim=1024))
    fast = [c for c in prepared.decoder.modules() if isinstance(c, nn.Conv1d) and kernels._winograd_suits(c)]
    assert len(fast) == 13  # the first layer and every residual unit's kernel-7 convolution
    codes = np.random.default_rng(6).integers(0, 64, size=(120, 4, 1)).astype(np.int16)
    with torch.inference_mode():
        z = original.quantizer.from_codes(torch.from_numpy(codes[:, :, 0].T[None].astype(np.int64)))[0]
        want = original.decode(z)[0].numpy()
    got = ChunkedCodec(prepared, "cpu", decode_window_s=40 * 512 / 44100).decode(codes)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_prepared_model_matches_dacs_own_forward() -> None:
    """Folding weight norm and the in-place Snake change nothing: whole-file codes and
    audio equal DAC's own encode/decode of the untouched network."""
    import torch

    original = tiny_model("44khz", seed=3)
    prepared = prepare_model(tiny_model("44khz", seed=3))  # the same weights, built again
    x = noise(1, 30000, seed=4)
    codec = ChunkedCodec(prepared, "cpu", encode_window_s=0, decode_window_s=0)
    with torch.inference_mode():
        padded = original.preprocess(torch.from_numpy(x)[None], 44100)
        z, codes = original.encode(padded)[:2]
        audio = original.decode(z)
    ours = codec.encode(x)
    assert np.array_equal(ours[:, :, 0].T, codes[0].numpy())
    assert np.abs(codec.decode(ours)[0] - audio[0, 0].numpy()).max() < 1e-5


def test_out_of_memory_shrinks_batch_then_windows_and_grows_back(tiny_weights: Path) -> None:
    from dacwatch.codec.chunked import MIN_WINDOW_FRAMES
    from dacwatch.convert import GROW_AFTER, CodecPool, CodecSettings

    pool = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu", batch_size=8))
    codec = pool.codec()
    x = noise(2, 3 * 44100, seed=9)
    reference = codec.encode(x)
    geometries = [codec.geometry()]
    while pool.shrink() is not None:
        geometries.append(codec.geometry())
        assert np.array_equal(codec.encode(x), reference)  # no step changes a code
    batches = [g[0] for g in geometries]
    assert batches[:4] == [8, 4, 2, 1] and set(batches[4:]) == {1}
    # At batch 1 the windows halve, down to the smallest window, then nothing is left.
    assert geometries[4][1:] == (0.5, 2.0)
    smallest_encode = (codec.rf.size + (MIN_WINDOW_FRAMES - 1) * codec.hop) / codec.sample_rate
    assert geometries[-1][1:] == (smallest_encode, MIN_WINDOW_FRAMES * codec.hop / codec.sample_rate)
    assert pool.shrink() is None
    # A run of successes takes back one step at a time, the last step first.
    for step in reversed(geometries[:-1]):
        assert [pool.succeeded() for _ in range(GROW_AFTER - 1)] == [None] * (GROW_AFTER - 1)
        assert pool.succeeded() is not None
        assert codec.geometry() == step
    assert pool.succeeded() is None and codec.geometry() == (8, 1.0, 4.0)


def test_whole_file_windows_shrink_to_the_device_default(tiny_weights: Path) -> None:
    from dacwatch.convert import CodecPool, CodecSettings

    pool = CodecPool(ModelSpec(weights=tiny_weights), CodecSettings("cpu", 0, 0, 1))
    codec = pool.codec()
    assert pool.shrink() == "batch 1, windows 1 s encode / 4 s decode"
    assert codec.geometry() == (1, 1.0, 4.0)


@pytest.mark.parametrize(
    "change",
    [{"dilation": 2}, {"groups": 2}, {"kernel_size": 6}, {"padding": 0, "output_padding": 1}],
    ids=["dilation", "groups", "kernel", "output-padding-past-padding"],
)
def test_polyphase_refuses_the_layers_it_would_get_wrong(change: dict[str, int]) -> None:
    """A transposed convolution outside the polyphase geometry keeps torch's forward."""
    import copy
    import types

    import torch
    from torch import nn

    from dacwatch.codec.kernels import _polyphase_suits, _transposed_forward

    torch.manual_seed(0)
    conv = nn.ConvTranspose1d(6, 4, **{"kernel_size": 8, "stride": 4, "padding": 2, **change})
    assert not _polyphase_suits(conv)
    fast = copy.deepcopy(conv)
    fast.forward = types.MethodType(_transposed_forward, fast)  # type: ignore[method-assign]
    x = torch.randn(2, 6, 9)
    with torch.inference_mode():
        assert torch.equal(fast(x), conv(x))
