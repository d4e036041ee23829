"""The GPU kernel candidates' names, their installation where they cannot run, and the
rule that picks the one float32 uses from the kit's measurements (bench.variants.choose)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.variants import choose
from dacwatch.codec import variants
from dacwatch.codec.chunked import ChunkedCodec
from dacwatch.codec.model import prepare_model, tiny_model

from .conftest import noise


@pytest.mark.parametrize("name", variants.CANDIDATES)
def test_every_candidate_the_kit_measures_is_a_valid_name(name: str) -> None:
    assert variants.parts(name)


@pytest.mark.parametrize("name", ["", "cudnn+tf32x3", "tf32", "fused-snake+nope"])
def test_a_misspelt_candidate_is_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=r"candidate|joins nothing"):
        variants.parts(name)


def test_triton_candidates_on_a_cpu_leave_the_codes_exactly_as_they_were() -> None:
    # No GPU and no interpreter here: every installed forward falls back to the one before.
    assert variants.unavailable("tf32x3+fused-snake") is not None
    x = noise(1, 30000, seed=4)
    plain = ChunkedCodec(prepare_model(tiny_model()), "cpu", encode_window_s=0.3).encode(x)
    model = variants.apply(prepare_model(tiny_model()), "tf32x3+fused-snake")
    assert np.array_equal(ChunkedCodec(model, "cpu", encode_window_s=0.3).encode(x), plain)


def _row(variant: str, enc: float, dec: float, chunked: int = 0, cpu: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "approach": "dacwatch",
        "variant": variant,
        "precision": "float32",
        "encode_x": enc,
        "decode_x": dec,
        "frames_chunked_vs_whole_on_device": chunked,
        "frames_differing_from_cpu_float32": cpu,
        **extra,
    }


def test_the_fastest_exact_candidate_is_chosen() -> None:
    rows = [
        _row("cudnn", 300, 170),
        _row("tf32x3", 700, 450),
        _row("fused-snake", 900, 900, chunked=2),  # fastest, but chunked differs from whole
        _row("compile", 800, 800, cpu=3),  # further from the CPU's codes than cuDNN
        {"approach": "dacwatch", "variant": "tf32x3+fused-snake", "precision": "float32", "not_run": "out of time"},
        {"approach": "seed", "variant": "stock DAC", "precision": "float32", "encode_x": 2000, "decode_x": 2000},
    ]
    chosen = choose(rows)
    assert chosen is not None and chosen["variant"] == "tf32x3"


def test_nothing_is_chosen_without_the_cudnn_baseline_or_an_exact_candidate() -> None:
    assert choose([_row("tf32x3", 700, 450)]) is None
    assert choose([_row("cudnn", 300, 170, chunked=1)]) is None
