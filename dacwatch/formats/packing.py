"""Format 2's codes: bit-packed at the codec's own bitrate, random access kept.

Codes ``[frames, codebooks, channels]`` are cut into groups of ``group_frames``
frames, the fewest whose bits fill whole bytes (``group_frames * codebooks *
channels * bits`` a multiple of 8: at most 8 frames). Each group's values, in C
order (frame, then codebook, then channel), are written as ``bits``-bit unsigned
numbers, most significant bit first, one after another; the group is then
``group_bytes`` bytes. The codes entry is a ``uint8`` array ``[groups,
group_bytes]``, so frame ``t`` lies in row ``t // group_frames`` and an excerpt is
one contiguous range of rows. The last group is padded with zero values; the
metadata's ``packing.frames`` says how many frames are real.

The rule in a few lines of numpy (README, "The .dac file")::

    bits = np.unpackbits(rows, axis=1).reshape(-1, p["bits"])            # one row per value, MSB first
    values = bits.astype(np.int64) @ (1 << np.arange(p["bits"] - 1, -1, -1))
    codes = values.reshape(-1, codebooks, channels)[:p["frames"]]        # [frames, codebooks, channels]

This module knows numpy and the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Packing:
    """How format 2 stores its codes (recorded in the metadata as ``packing``)."""

    bits: int  # per code: ceil(log2(codebook_size))
    group_frames: int
    group_bytes: int
    frames: int  # real frames (the last group may be padded)

    @classmethod
    def for_codes(cls, codebook_size: int, codebooks: int, channels: int, frames: int) -> Packing:
        bits = max(1, math.ceil(math.log2(codebook_size)))
        per_frame = bits * codebooks * channels
        group = 8 // math.gcd(per_frame, 8)
        return cls(bits, group, per_frame * group // 8, frames)

    @property
    def groups(self) -> int:
        return -(-self.frames // self.group_frames)

    def check(self, codebook_size: int, codebooks: int, channels: int, where: str) -> None:
        """Raise ValueError unless this packing is the one these codes get."""
        want = Packing.for_codes(codebook_size, codebooks, channels, self.frames)
        if self != want:
            raise ValueError(f"{where}: packing {self} does not match the codes' geometry (expected {want})")


def pack(codes: np.ndarray, p: Packing) -> np.ndarray:
    """Codes ``[frames, codebooks, channels]`` (a whole number of groups, or the end of
    the file) -> rows ``[groups, group_bytes]`` (uint8)."""
    frames = codes.shape[0]
    groups = -(-frames // p.group_frames)
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= 1 << p.bits):
        raise ValueError(f"codes out of range for {p.bits}-bit packing")
    values = np.zeros(groups * p.group_frames * int(np.prod(codes.shape[1:])), dtype=np.uint16)
    values[: codes.size] = np.asarray(codes, dtype=np.uint16).reshape(-1)
    bits = np.empty((values.size, p.bits), dtype=np.uint8)
    for column in range(p.bits):  # MSB first
        bits[:, column] = (values >> (p.bits - 1 - column)) & 1
    rows: np.ndarray = np.packbits(bits.reshape(groups, -1), axis=1)
    return rows


def unpack(rows: np.ndarray, p: Packing, codebooks: int, channels: int) -> np.ndarray:
    """Rows ``[groups, group_bytes]`` -> codes ``[groups * group_frames, codebooks, channels]`` (int16)."""
    if rows.shape[0] == 0:
        return np.zeros((0, codebooks, channels), dtype=np.int16)
    bits = np.unpackbits(np.asarray(rows, dtype=np.uint8), axis=1).reshape(-1, p.bits)
    values = np.zeros(bits.shape[0], dtype=np.int16)  # bits <= 15: int16 holds every code
    for column in range(p.bits):  # MSB first: the README's matrix product, column by column
        values <<= 1
        values |= bits[:, column]
    codes: np.ndarray = values.reshape(-1, codebooks, channels)
    return codes


class PackedCodes:
    """Format 2 codes, read like the int16 array ``[frames, codebooks, channels]``:
    slicing frames unpacks only the groups holding them (rows of a memory map)."""

    ndim = 3
    dtype = np.dtype(np.int16)

    def __init__(self, rows: np.ndarray, packing: Packing, codebooks: int, channels: int) -> None:
        self.rows = rows  # [groups, group_bytes] uint8, usually a memmap
        self.packing = packing
        self.shape = (packing.frames, codebooks, channels)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("packed codes are read by frame ranges: codes[a:b]")
        a, b, _ = key.indices(self.shape[0])
        if b <= a:
            return np.zeros((0, *self.shape[1:]), dtype=np.int16)
        g = self.packing.group_frames
        first, last = a // g, -(-b // g)
        block = unpack(self.rows[first:last], self.packing, self.shape[1], self.shape[2])
        return block[a - first * g : b - first * g]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[0 : self.shape[0]]
        return whole if dtype is None else whole.astype(dtype)


__all__ = ["PackedCodes", "Packing", "pack", "unpack"]
