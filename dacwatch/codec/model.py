"""Loading DAC models and describing their geometry.

Everything the chunked codec needs to know about a network (hop, receptive
field, decoder context, output length) is computed here by walking the
model's ``Conv1d``/``ConvTranspose1d`` layers, never hard-coded per model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dacwatch.codec import fingerprint_cache, kernels
from dacwatch.codec.windows import ReceptiveField
from dacwatch.errors import ModelUnavailableError

ModelType = Literal["44khz", "24khz", "16khz"]
ModelBitrate = Literal["8kbps", "16kbps"]

# A ``dac.model.DAC`` network. descript-audio-codec ships no type hints, and
# its submodules (encoder, quantizer, decoder) are reached by attribute.
DacNet = Any

MODEL_TYPES: tuple[str, ...] = ("44khz", "24khz", "16khz")
ARCHITECTURE_BY_RATE = {44100: "44khz", 24000: "24khz", 16000: "16khz"}
MODEL_BITRATES: tuple[str, ...] = ("8kbps", "16kbps")


@dataclass(frozen=True)
class ModelSpec:
    """Which DAC model to use: a released one by type/bitrate/tag, or a local file."""

    model_type: str = "44khz"
    model_bitrate: str = "8kbps"
    tag: str = "latest"
    weights: Path | None = None

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model type must be one of {', '.join(MODEL_TYPES)}, not {self.model_type!r}")
        if self.model_bitrate not in MODEL_BITRATES:
            raise ValueError(f"model bitrate must be one of {', '.join(MODEL_BITRATES)}, not {self.model_bitrate!r}")
        if self.model_bitrate == "16kbps" and self.model_type != "44khz":
            raise ValueError("only the 44khz model comes in 16kbps")

    def describe(self) -> str:
        if self.weights is not None:
            return f"weights file {self.weights}"
        return f"DAC {self.model_type} {self.model_bitrate} tag {self.tag}"


def default_cache_dir() -> Path:
    """Where downloaded weights live.

    systemd's ``CacheDirectory=`` sets ``$CACHE_DIRECTORY``; otherwise DAC's own
    cache folder, so weights fetched with ``python -m dac download`` are found.
    """
    env = os.environ.get("CACHE_DIRECTORY")
    if env:
        return Path(env.split(":")[0]) / "weights"
    return Path.home() / ".cache" / "descript" / "dac"


def resolve_release(spec: ModelSpec) -> tuple[str, str]:
    """The concrete tag and download URL of a released model."""
    from dac.utils import __MODEL_LATEST_TAGS__, __MODEL_URLS__

    tag = spec.tag.lower()
    if tag == "latest":
        tag = __MODEL_LATEST_TAGS__[(spec.model_type, spec.model_bitrate)]
    url = __MODEL_URLS__.get((spec.model_type, tag, spec.model_bitrate))
    if url is None:
        raise ModelUnavailableError(
            f"there is no released DAC model {spec.model_type} {spec.model_bitrate} with tag {spec.tag!r}"
        )
    return tag, url


def weights_path(spec: ModelSpec, cache_dir: Path | None = None, download: bool = True) -> Path:
    """A local weights file for ``spec``, downloading it into the cache if needed."""
    if spec.weights is not None:
        path = Path(spec.weights)
        if not path.is_file():
            raise ModelUnavailableError(f"weights file {path} does not exist")
        return path
    tag, url = resolve_release(spec)
    cache = cache_dir or default_cache_dir()
    # Same file name as DAC's own download, so a pre-fetched cache is shared.
    path = cache / f"weights_{spec.model_type}_{spec.model_bitrate}_{tag}.pth"
    if path.is_file():
        return path
    if not download:
        raise ModelUnavailableError(f"{spec.describe()} is not in the cache {cache}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=30) as response:
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=".dacwatch-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    while block := response.read(1 << 20):
                        out.write(block)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ModelUnavailableError(
            f"could not download the weights of {spec.describe()} ({exc}); on an offline host, "
            f"copy the weights file to {path}, or point at it: env DACWATCH_MODEL__WEIGHTS=PATH "
            f"(every command), --weights PATH (encode, decode, verify) or model.weights in the "
            f"config file (run)"
        ) from exc
    return path


def load_model(spec: ModelSpec, device: str | torch.device = "cpu", cache_dir: Path | None = None) -> DacNet:
    """Load a DAC network through descript-audio-codec's own ``DAC.load``, ready for inference.

    Weight norm is folded into plain weights: the folded weight is the same
    number weight norm computes on every forward pass, so results do not change.
    """
    from dac.model import DAC

    path = weights_path(spec, cache_dir)
    before = fingerprint_cache.identity(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = DAC.load(str(path))
    except Exception as exc:  # a corrupt or foreign file: say which and why
        raise ModelUnavailableError(f"could not load DAC weights from {path}: {exc}") from exc
    # The fingerprint of an unchanged file is remembered by its identity; one that
    # changed while it was read is hashed as loaded and not remembered.
    if before is not None and fingerprint_cache.identity(path) == before:
        known = fingerprint_cache.lookup(path, before)
        if known is not None:
            setattr(model, FINGERPRINT_ATTR, known)
        else:
            fingerprint_cache.store(path, before, fingerprint(model))
    return prepare_model(model, device)


FINGERPRINT_ATTR = "dacwatch_weights"


def fingerprint(model: DacNet) -> str:
    """``sha256:<hex>`` of the network's weights as loaded: every tensor of its state
    dict (name, dtype, shape, bytes, in name order) and its sample rate and hop.

    The same weights file gives the same fingerprint on any host and device, after
    any save and load; retrained or fine-tuned weights of the same shape do not.
    Taken before :func:`prepare_model` folds weight norm (folding rounds
    differently on different hardware), and kept on the model.
    """
    known: str | None = getattr(model, FINGERPRINT_ATTR, None)
    if known is not None:
        return known
    digest = hashlib.sha256()
    digest.update(json.dumps(model_info(model), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    value = "sha256:" + digest.hexdigest()
    setattr(model, FINGERPRINT_ATTR, value)
    return value


def short(weights: str | None) -> str:
    """A fingerprint shortened for people (``sha256:1a2b3c4d5e6f``)."""
    return "unrecorded" if not weights else weights[:19]


def prepare_model(model: DacNet, device: str | torch.device = "cpu") -> DacNet:
    """Put a DAC network in inference shape: eval mode, weight norm folded, on ``device``
    (its weights' :func:`fingerprint` taken first)."""
    if not getattr(model, "padding", True):
        raise ModelUnavailableError("the model's layer padding is switched off; load a fresh copy")
    fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and hasattr(module, "weight_g"):
                torch.nn.utils.remove_weight_norm(module)
    kernels.install(model)
    model.eval()
    model.requires_grad_(False)
    return model.to(device)


def model_info(model: DacNet) -> dict[str, Any]:
    """The facts about a network that go into a ``.dac`` file's metadata."""
    return {
        "sample_rate": int(model.sample_rate),
        "hop_length": int(model.hop_length),
        "n_codebooks": int(model.n_codebooks),
        "codebook_size": int(model.codebook_size),
    }


def _convs(module: nn.Module) -> list[Any]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]


@contextlib.contextmanager
def layer_padding(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Run the block with every conv layer's own zero padding on or off.

    DAC's ``model.padding = False`` stores the original padding on each layer
    and loses it if called twice; here the originals live in this frame and
    are always restored, whatever happens inside.
    """
    if enabled:
        yield
        return
    saved = [(m, m.padding) for m in _convs(model)]
    try:
        for m, _ in saved:
            m.padding = (0,)
        yield
    finally:
        for m, padding in saved:
            m.padding = padding


def encoder_receptive_field(model: DacNet) -> ReceptiveField:
    """Walk the encoder's convolutions (residual branches are centre-cropped
    chains, so the walk in module order is exact)."""
    size, stride, padding = 1, 1, 0
    for conv in _convs(model.encoder):
        if isinstance(conv, nn.ConvTranspose1d):
            raise ValueError("the encoder is expected to hold no transposed convolutions")
        (k,), (s,), (d,), (p,) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
        size += (k - 1) * d * stride
        padding += p * stride
        stride *= s
    return ReceptiveField(size=size, stride=stride, padding=padding)


@dataclass(frozen=True)
class DecoderContext:
    """How many code frames before and after its own frame an output sample needs."""

    left: int
    right: int
    hop: int


def decoder_context(model: DacNet) -> DecoderContext:
    """Propagate each output sample of one hop back through the decoder to the
    interval of code frames it reads; the pattern repeats every hop."""
    convs = _convs(model.decoder)
    hop = 1
    for conv in convs:
        if isinstance(conv, nn.ConvTranspose1d):
            hop *= conv.stride[0]
        elif conv.stride[0] != 1:
            raise ValueError("the decoder is expected to downsample nowhere")
    left = right = 0
    for out in range(hop):
        lo, hi = back_interval(convs, out, out)
        home = out // hop
        left, right = max(left, home - lo), max(right, hi - home)
    return DecoderContext(left=left, right=right, hop=hop)


def back_interval(convs: list[Any], lo: int, hi: int) -> tuple[int, int]:
    """Positions ``[lo, hi]`` at the output of the chain ``convs`` (layer padding on)
    depend on input positions in the returned interval (negative = padding)."""
    for conv in reversed(convs):
        (k,), (s,), (d,), (p,) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
        if isinstance(conv, nn.ConvTranspose1d):
            lo, hi = math.ceil((lo + p - (k - 1) * d) / s), math.floor((hi + p) / s)
        else:
            lo, hi = lo * s - p, hi * s - p + (k - 1) * d
    return lo, hi


def decoder_stages(model: DacNet) -> list[tuple[nn.Module, int, list[Any]]]:
    """The decoder's top-level stages: (module, upsampling factor, convs after it)."""
    stages = list(model.decoder.model)
    out = []
    for i, stage in enumerate(stages):
        up = 1
        for conv in _convs(stage):
            if isinstance(conv, nn.ConvTranspose1d):
                up *= conv.stride[0]
        later = [c for s in stages[i + 1 :] for c in _convs(s)]
        out.append((stage, up, later))
    return out


def decoder_output_length(model: DacNet, frames: int) -> int:
    """Samples a whole-file decode of ``frames`` code frames yields (layer padding on).

    Residual units keep the length with padding on, so only the length
    formulas of the chain matter; 24/16 kHz decoders lose a sample per
    stride-5 layer, which is why this is computed rather than ``frames*hop``.
    """
    length = frames
    for conv in _convs(model.decoder):
        (k,), (s,), (d,), (p,) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
        if isinstance(conv, nn.ConvTranspose1d):
            (op,) = conv.output_padding
            length = (length - 1) * s - 2 * p + d * (k - 1) + op + 1
        else:
            length = (length + 2 * p - d * (k - 1) - 1) // s + 1
    return max(length, 0)


def tiny_model(model_type: str = "44khz", seed: int = 0, **overrides: Any) -> DacNet:
    """A real DAC network with random weights and small widths (same strides,
    hop and receptive field as the released model of that type): for tests
    and offline benchmarks, never for real audio."""
    from dac.model import DAC

    kwargs = dict(RELEASED_ARCHITECTURES[model_type])
    kwargs.update(encoder_dim=4, decoder_dim=32, n_codebooks=4, codebook_size=64)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return randomize(DAC(**kwargs), seed)


def full_size_model(model_type: str = "44khz", seed: int = 0) -> DacNet:
    """The released architecture of ``model_type`` with random weights."""
    from dac.model import DAC

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return randomize(DAC(**RELEASED_ARCHITECTURES[model_type]), seed)


def randomize(model: DacNet, seed: int = 0) -> DacNet:
    """Random weights that behave like a trained network's, for tests and benchmarks.

    DAC's own initialisation (weights of std 0.02, biases zero) shrinks the
    signal at every layer: a fresh network emits one code for every frame,
    and, since Snake(0) = 0, maps silence to silence, so zero-padding the
    input is indistinguishable from each layer's own padding. Tests on such a
    network would pass whatever the edge handling did. Here every
    weight-normed filter gets a norm near 1 (the signal keeps its scale), and
    biases and Snake alphas get random values.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    decoder = {id(m) for m in model.decoder.modules()}
    with torch.no_grad():
        for module in model.modules():
            weight_g = getattr(module, "weight_g", None)
            if isinstance(weight_g, nn.Parameter):
                # The decoder a little below unit gain: a random network at
                # unit gain amplifies float32 rounding far more than a trained one.
                low, span = (0.4, 0.3) if id(module) in decoder else (0.7, 0.6)
                weight_g.copy_(low + span * torch.rand(weight_g.shape, generator=gen))
            bias = getattr(module, "bias", None)
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and bias is not None:
                bias.copy_(0.05 * torch.randn(bias.shape, generator=gen))
            alpha = getattr(module, "alpha", None)
            if isinstance(alpha, nn.Parameter):
                alpha.copy_(0.5 + torch.rand(alpha.shape, generator=gen))
        # Keep the decoder's final tanh out of saturation, so decoded audio
        # varies like real audio and decode comparisons are sensitive.
        last = _convs(model.decoder)[-1]
        if isinstance(getattr(last, "weight_g", None), nn.Parameter):
            last.weight_g.mul_(8.0)
    return model


# The constructor arguments of the released networks (from their weight files' metadata).
RELEASED_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "44khz": dict(
        encoder_dim=64,
        encoder_rates=[2, 4, 8, 8],
        decoder_dim=1536,
        decoder_rates=[8, 8, 4, 2],
        n_codebooks=9,
        codebook_size=1024,
        codebook_dim=8,
        sample_rate=44100,
    ),
    "24khz": dict(
        encoder_dim=64,
        encoder_rates=[2, 4, 5, 8],
        decoder_dim=1536,
        decoder_rates=[8, 5, 4, 2],
        n_codebooks=32,
        codebook_size=1024,
        codebook_dim=8,
        sample_rate=24000,
    ),
    "16khz": dict(
        encoder_dim=64,
        encoder_rates=[2, 4, 5, 8],
        decoder_dim=1536,
        decoder_rates=[8, 5, 4, 2],
        n_codebooks=12,
        codebook_size=1024,
        codebook_dim=8,
        sample_rate=16000,
    ),
}
