"""The bad inputs of `bench faults`, built from nothing but PIL, numpy and torch: image files in
awkward modes or broken ways, checkpoints that must not load, a pickle that carries code."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIDE = 16  # every test image is SIDE x SIDE
BOMB_SIDE = 100_000  # the dimensions a bomb's header claims: 10^10 pixels


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def digit_image(mode: str = "L") -> Image.Image:
    """A bright square on a dark background (the dataset's look), as `mode`."""
    arr = np.zeros((SIDE, SIDE), dtype=np.uint8)
    arr[4:12, 4:12] = 255
    return Image.fromarray(arr, mode="L").convert(mode)


def grey16_png() -> bytes:
    """16-bit grey: background 0, square 65535 (clipping would make 65535 white, scaling too;
    a mid value 32768 tells them apart: 128 scaled, 255 clipped)."""
    arr = np.zeros((SIDE, SIDE), dtype=np.uint16)
    arr[4:12, 4:12] = 65535
    arr[0, 0] = 32768
    return encode(Image.fromarray(arr))  # numpy uint16 -> PIL "I;16"


def rgba_png() -> bytes:
    """A white square, opaque, on a transparent background."""
    rgba = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    rgba[4:12, 4:12] = 255
    return encode(Image.fromarray(rgba, mode="RGBA"))


def palette_png() -> bytes:
    return encode(digit_image("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4))


def cmyk_jpeg() -> bytes:
    return encode(digit_image("RGB").convert("CMYK"), "JPEG")


def corrupt_png() -> bytes:
    """A PNG signature followed by noise."""
    noise = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    return b"\x89PNG\r\n\x1a\n" + noise


def truncated_png() -> bytes:
    data = encode(Image.fromarray(np.random.default_rng(1).integers(
        0, 256, (64, 64), dtype=np.uint8), mode="L"))
    return data[: len(data) // 2]


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A 1 x 1 PNG whose header claims side x side pixels (a decompression bomb's header; its
    CRC is valid, so only the size gives it away)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = 8 + 4  # after the signature and the chunk length
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[ihdr: ihdr + 4 + 13])) & 0xFFFFFFFF
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def describe(image: Image.Image) -> str:
    """"L 16x16, values 0..255" and the like."""
    arr = np.asarray(image)
    return f"{image.mode} {image.size[0]}x{image.size[1]}, values {arr.min()}..{arr.max()}"


class _Payload:
    """Unpickling this calls Path.touch(marker): code a checkpoint must never get to run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def code_pickle(path: Path, marker: Path) -> Path:
    """A torch.save file whose state_dict holds a payload that creates `marker` when loaded
    without weights_only."""
    torch.save({"fc.weight": _Payload(marker)}, path)
    return path


def nan_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    state = {k: v.clone() for k, v in state.items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    torch.save(state, path)
    return path


def truncated_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
