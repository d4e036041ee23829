"""Kernel candidates for a GPU: named sets of forwards a prepared network can take.

A candidate is one name or several joined by ``+`` (``tf32x3+fused-snake``):

- ``cudnn``: what :func:`~dacwatch.codec.model.prepare_model` installs, cuDNN's
  convolutions under the precision's flags (in ``float32``: no TF32,
  deterministic algorithms). Today's default.
- ``fused-snake``: Snake, and the residual add after a unit, as one Triton
  elementwise kernel with one configuration for every shape, so a window and a
  whole file compute each element with the same code (DAC's TorchScript Snake
  does not: its first calls on a new shape run unfused, with other rounding).
- ``tf32x3``: the convolutions as a Triton implicit GEMM on tensor cores, each
  float32 operand split into a TF32 high part and a residual, three products
  summed (CUTLASS's 3xTF32): float32-level error at tensor-core speed, one
  reduction order for every output element whatever the window.
- ``compile``: ``torch.compile`` (inductor) of every residual unit.

Which one ``float32`` uses on a GPU is chosen by measurement: the GPU kit's
``variants`` step (``python -m bench.variants``) reports, per candidate, speed,
frames whose codes differ between chunked and whole-file encoding, frames
differing from CPU float32 codes, and decoding's SNR. Until a GPU has measured
them, only ``cudnn`` is used by the codec; the others are for the bench.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

DEFAULT = "cudnn"
PARTS = ("cudnn", "fused-snake", "tf32x3", "compile")
# What the GPU kit measures, most promising first (a step out of time drops the last).
CANDIDATES = (
    "cudnn",
    "tf32x3",
    "fused-snake",
    "tf32x3+fused-snake",
    "compile",
    "tf32x3+compile",
)


def parts(name: str) -> tuple[str, ...]:
    """The parts of a candidate's name, checked."""
    found = tuple(p.strip() for p in name.split("+"))
    unknown = [p for p in found if p not in PARTS]
    if unknown or not found:
        raise ValueError(f"unknown kernel candidate {name!r}: use {', '.join(PARTS)}, joined by '+'")
    if "cudnn" in found and len(found) > 1:
        raise ValueError(f"{name!r}: 'cudnn' is the plain network and joins nothing")
    return found


def unavailable(name: str) -> str | None:
    """Why ``name`` cannot run in this process, or None if it can."""
    needs_triton = {"fused-snake", "tf32x3"} & set(parts(name))
    if needs_triton:
        from dacwatch.codec import triton_kernels

        return triton_kernels.available()
    return None


def apply(model: Any, name: str) -> Any:
    """Give a prepared network the forwards of candidate ``name`` (in place; returns it).
    Each part leaves the others' layers alone, so parts compose in any order."""
    chosen = parts(name)
    if "tf32x3" in chosen or "fused-snake" in chosen:
        from dacwatch.codec import triton_kernels

        if "tf32x3" in chosen:
            triton_kernels.install_tf32x3_convs(model)
        if "fused-snake" in chosen:
            triton_kernels.install_fused_snake(model)
    if "compile" in chosen:
        compile_residual_units(model)
    return model


def compile_residual_units(model: nn.Module) -> None:
    """Each residual unit's forward (as installed now) through ``torch.compile``;
    gradients or a shape it cannot trace fall back to eager, as torch.compile does."""
    for module in model.modules():
        if type(module).__name__ == "ResidualUnit" and not hasattr(module, "_dacwatch_compiled"):
            forward: Callable[..., torch.Tensor] = module.forward
            module._dacwatch_compiled = True  # type: ignore[assignment]
            compiled = torch.compile(forward)
            module.forward = types.MethodType(lambda self, x, f=compiled: f(x), module)
