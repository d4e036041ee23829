"""Which kernel each decoder layer runs on this CPU: measured once, cached, then fixed.

The fastest form of a decoder convolution differs between CPUs with the same code
(DESIGN.md, "Performance notes"): on an Intel Xeon Winograd F(4, 7) by MKL's batched
sgemm halved the wide layers' time, on an AMD EPYC (Zen 5) MKL's sgemm runs at about
half of oneDNN's rate and the same layers gained little. So on a CPU each decoder
layer with a choice gets the candidate that was fastest here, timed on an input of
the length it meets in a decode:

- kernel-7 convolutions Winograd suits (:func:`kernels._winograd_suits`): oneDNN's
  direct convolution, Winograd with MKL's batched product, or Winograd with oneDNN
  1x1 convolutions for the channel mixing (one per point, or one grouped call);
  where numba runs, also Winograd F(4, 7) or F(6, 7) with numba's transforms and the
  residual unit's Snakes fused in;
- transposed convolutions: the polyphase form (:func:`kernels._transposed_forward`) or
  torch's own;
- convolutions with at most four outputs (a released decoder's last layer, one output
  channel): torch's own or one matrix product of the kernel's taps and shifted adds
  (:func:`kernels._taps_forward`).

Every candidate computes the same convolution; they differ in float32 rounding, a few
1e-6 of the output's scale, which decoding tolerates (the encoder has no choices: its
codes must not depend on the windows). A layer's choice depends on its shape only, never
on an input's length, so every window of a file, and a whole-file pass, use the same one.

The choices are written to ``kernels-<host>.json`` in a folder the caller names (the
daemon's state_dir, the user's cache for one-shot commands), keyed by the CPU, torch's
version and thread count, and each layer's shape. Once there they are read, not measured
again: output is the same run to run. A file that is unreadable, damaged, of another host
or of another version is ignored and replaced (written to a temporary name, then
renamed); a folder that cannot be written only costs the measuring at the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dacwatch.codec import fused_cpu, kernels
from dacwatch.codec.cachefiles import cache_root, write_whole

log = logging.getLogger(__name__)

TUNING_VERSION = 6  # bump when the candidates or how they are measured change
# The first of each is torch's own layer, the reference: another candidate is chosen only
# when it is faster by MARGIN, so a shared CPU's noise does not trade the plain layer for
# one that needs more memory (Winograd's weights and workspace) for nothing.
CONV_CHOICES = ("direct", "winograd", "winograd-onednn", "winograd-grouped")
# Where numba runs (fused_cpu.available()): Winograd F(4, 7) or F(6, 7) with numba's
# transforms, oneDNN's grouped mixing, and in a residual unit the Snakes on either side
# fused in.
FUSED_CHOICES = tuple(kernels.FUSED_TILES)  # "winograd-fused" (F(4, 7)), "winograd6-fused"
FUSED_CHOICE = FUSED_CHOICES[0]
TRANSPOSED_CHOICES = ("native", "polyphase")
TAPS_CHOICES = ("direct", "taps")
MARGIN = 0.9
ROUNDS = 5  # interleaved timing rounds per layer; the best of each candidate counts


def default_dir() -> Path:
    """Where one-shot commands keep the choices: ``kernels/`` under dacwatch's cache
    folder (``$CACHE_DIRECTORY`` under systemd, else ``~/.cache/dacwatch``)."""
    return cache_root() / "kernels"


def cpu_model() -> str:
    """The CPU's model name with its family, model and stepping (a VM may show only
    ``AMD EPYC``), and whether it has AVX-512."""
    fields: dict[str, str] = {}
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key in ("model name", "cpu family", "model", "stepping") and key not in fields:
                fields[key] = value
            elif key == "flags" and not flags:
                flags = value
    name = fields.get("model name") or platform.processor() or platform.machine()
    detail = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return f"{name} ({detail}, {'avx512' if 'avx512f' in flags.split() else 'no avx512'})"


def host_key() -> dict[str, Any]:
    """What a cached choice is valid for."""
    return {
        "version": TUNING_VERSION,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def cache_path(folder: Path, host: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(host, sort_keys=True).encode()).hexdigest()[:12]
    return folder / f"kernels-{digest}.json"


def layer_key(conv: nn.Conv1d | nn.ConvTranspose1d) -> str:
    """A layer's shape, all its kernels' speed depends on."""
    (k,), (s,), (d,) = conv.kernel_size, conv.stride, conv.dilation
    kind = "convT" if isinstance(conv, nn.ConvTranspose1d) else "conv"
    bias = int(conv.bias is not None)
    return f"{kind} {conv.in_channels}->{conv.out_channels} k{k} s{s} d{d} bias{bias}"


def tunable(model: Any) -> list[nn.Conv1d | nn.ConvTranspose1d]:
    """The decoder layers that have a choice, in order."""
    out: list[nn.Conv1d | nn.ConvTranspose1d] = []
    for module in model.decoder.modules():
        if isinstance(module, nn.ConvTranspose1d) or (
            isinstance(module, nn.Conv1d) and (kernels._winograd_suits(module) or kernels._taps_suits(module))
        ):
            out.append(module)
    return out


def choices_for(conv: nn.Module) -> tuple[str, ...]:
    if isinstance(conv, nn.ConvTranspose1d):
        return TRANSPOSED_CHOICES
    if isinstance(conv, nn.Conv1d) and kernels._taps_suits(conv):
        return TAPS_CHOICES
    return (*CONV_CHOICES, *FUSED_CHOICES) if fused_cpu.available() else CONV_CHOICES


def apply(conv: nn.Conv1d | nn.ConvTranspose1d, choice: str) -> None:
    """Give ``conv`` the forward of ``choice``."""
    if choice not in choices_for(conv):
        raise ValueError(f"{choice!r} is not a kernel for {layer_key(conv)}")
    forward: Callable[..., torch.Tensor]
    if isinstance(conv, nn.ConvTranspose1d):
        forward = kernels._transposed_forward if choice == "polyphase" else nn.ConvTranspose1d.forward
    elif choice in FUSED_CHOICES:
        forward = kernels._winograd_fused_forward
    elif choice == "taps":
        forward = kernels._taps_forward
    else:
        forward = nn.Conv1d.forward if choice == "direct" else kernels._winograd_forward
        conv._dacwatch_mixing = {"winograd-onednn": "onednn", "winograd-grouped": "grouped"}.get(choice, "bmm")  # type: ignore[assignment]
    conv.forward = types.MethodType(forward, conv)  # type: ignore[method-assign]
    conv._dacwatch_kernel = choice  # type: ignore[assignment]
    # Derived weights another kernel built (while measuring) are dropped: Winograd's are
    # 10/7 of the layer's weights again, 200-300 MB over a full-size decoder.
    keep = {
        "polyphase": {"_dacwatch_polyphase"},
        "taps": {"_dacwatch_taps"},
        "winograd": {"_dacwatch_winograd"},
        "winograd-onednn": {"_dacwatch_winograd", "_dacwatch_onednn"},
        "winograd-grouped": {"_dacwatch_winograd", "_dacwatch_grouped"},
        **{fused: {f"_dacwatch_wfused{m}"} for fused, m in kernels.FUSED_TILES.items()},
    }.get(choice, set())
    for name in (
        "_dacwatch_polyphase",
        "_dacwatch_taps",
        "_dacwatch_winograd",
        "_dacwatch_onednn",
        "_dacwatch_grouped",
        *(f"_dacwatch_wfused{m}" for m in kernels.FUSED_TILES.values()),
    ):
        if name not in keep and name in conv.__dict__:
            delattr(conv, name)


def current(conv: nn.Module) -> str:
    """The kernel ``conv`` runs now (installed defaults: polyphase, Winograd by bmm and
    torch's own convolution for the few-output layers)."""
    if isinstance(conv, nn.ConvTranspose1d):
        default = "polyphase"
    else:
        default = "direct" if isinstance(conv, nn.Conv1d) and kernels._taps_suits(conv) else "winograd"
    return str(getattr(conv, "_dacwatch_kernel", default))


def measure(
    conv: nn.Conv1d | nn.ConvTranspose1d, length: int, rounds: int = ROUNDS, between_snakes: bool = False
) -> dict[str, float]:
    """Best wall time (s) of each candidate on one row of ``length`` positions of
    unit-scale noise, the candidates interleaved in each round (a shared CPU's load
    then falls on all of them alike). Leaves ``conv`` as it was.

    ``between_snakes``: the layer sits between two Snakes (a residual unit's kernel-7
    convolution), so each candidate is timed with them: the fused one with both fused
    in, the others between two of :func:`fused_cpu.snake` (or torch's) passes."""
    before = current(conv)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, conv.in_channels, max(length, 1), generator=gen, dtype=conv.weight.dtype)
    best = dict.fromkeys(choices_for(conv), float("inf"))
    alpha_in = torch.ones((1, conv.in_channels, 1), dtype=conv.weight.dtype)
    alpha_out = torch.ones((1, conv.out_channels, 1), dtype=conv.weight.dtype)

    def run(choice: str) -> None:
        if not between_snakes:
            conv(x)
        elif (
            choice in FUSED_CHOICES
            and isinstance(conv, nn.Conv1d)
            and kernels._fused_winograd(conv, x, alpha_in, alpha_out) is not None
        ):
            pass
        else:
            kernels.decoder_snake(conv(kernels.decoder_snake(x, alpha_in)), alpha_out)

    try:
        with torch.no_grad():
            for choice in best:  # first calls: weight transforms, oneDNN's kernel generation
                apply(conv, choice)
                run(choice)
            for _ in range(rounds):
                for choice in best:
                    apply(conv, choice)
                    started = time.perf_counter()
                    run(choice)
                    best[choice] = min(best[choice], time.perf_counter() - started)
    finally:
        apply(conv, before)
    return best


def _is_residual_unit(module: nn.Module) -> bool:
    """DAC's ResidualUnit: ``block`` is Snake, kernel-7 convolution, Snake, 1x1 convolution."""
    block = getattr(module, "block", None)
    return (
        type(module).__name__ == "ResidualUnit"
        and isinstance(block, nn.Sequential)
        and len(block) == 4
        and [type(m).__name__ for m in block][::2] == ["Snake1d", "Snake1d"]
    )


def pick(times: Mapping[str, float], reference: str) -> str:
    """The fastest candidate if it beats ``reference`` by :data:`MARGIN`, else ``reference``."""
    fastest = min(times, key=lambda c: (times[c], c))
    return fastest if times[fastest] < MARGIN * times[reference] else reference


def _read(path: Path, host: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The layer entries in ``path`` (``{layer key: {"choice": ..., ...}}``) if it is a
    valid file of this host, else {}; entries without a usable choice are left out."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("host") != dict(host) or not isinstance(data.get("layers"), dict):
        return {}
    return {
        key: entry
        for key, entry in data["layers"].items()
        if isinstance(key, str) and isinstance(entry, dict) and isinstance(entry.get("choice"), str)
    }


def _write(path: Path, host: Mapping[str, Any], layers: Mapping[str, dict[str, Any]]) -> None:
    write_whole(path, json.dumps({"host": dict(host), "layers": dict(layers)}, indent=1, sort_keys=True) + "\n")


def tune(model: Any, lengths: Mapping[int, int], folder: Path | None) -> dict[str, str]:
    """Give each tunable decoder layer of ``model`` (on a CPU) its kernel: the cached
    choice for its shape, else the fastest candidate timed on ``lengths[id(layer)]``
    positions (layers not in ``lengths`` keep their kernel). Returns ``{layer key:
    choice}``. ``folder`` None measures without caching."""
    if next(model.parameters()).device.type != "cpu":
        return {}
    host = host_key()
    path = cache_path(folder, host) if folder is not None else None
    known = _read(path, host) if path is not None else {}
    chosen: dict[str, str] = {}
    measured: dict[str, dict[str, Any]] = {}
    between_snakes = {id(unit.block[1]) for unit in model.decoder.modules() if _is_residual_unit(unit)}
    for conv in tunable(model):
        key = layer_key(conv)
        choice = chosen.get(key) or str(known.get(key, {}).get("choice"))
        if choice not in choices_for(conv):
            if id(conv) not in lengths:
                continue
            times = measure(conv, lengths[id(conv)], between_snakes=id(conv) in between_snakes)
            choice = pick(times, choices_for(conv)[0])
            ms = {c: round(t * 1000, 3) for c, t in times.items()}
            measured[key] = {"choice": choice, "length": lengths[id(conv)], "ms": ms}
            log.info("decoder kernel for %s: %s (ms: %s)", key, choice, ms)
        chosen[key] = choice
        apply(conv, choice)
    kernels.warm_cpu_kernels()  # the decoder's Snakes are numba's wherever it runs
    if measured and path is not None:
        try:  # what the file already knew (another network's layers) stays
            _write(path, host, {**known, **measured})
        except OSError as exc:
            log.warning("could not save the decoder kernels' choice to %s (%s): measured again next time", path, exc)
    return chosen
