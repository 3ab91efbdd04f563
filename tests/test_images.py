"""data.images.decode_image: every user image (image folders, uploads, `query --image`) is either
decoded correctly to 8-bit L / RGB or refused with a one-line ImageError."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from influence_core.data.images import MAX_PIXELS, ImageError, decode_image
from influence_core.data.registry import load_dataset

FUZZ_EXAMPLES = 60  # a few seconds
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = ["PNG", "TIFF", "BMP", "GIF", "JPEG", "WEBP"]


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit grey) and which holds no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _digit(mode: str) -> Image.Image:
    """A black square 'digit' on a fully transparent background, in RGBA or LA."""
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[4:12, 6:10, 3] = 255  # opaque black strokes; the rest is transparent black
    return Image.fromarray(arr, mode="RGBA").convert(mode)


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (b"GIF89a but not really" * 3, "not"),
    (b"hello, I am a text file\n" * 10, "is not an image"),
    (_png_header_only(100_000, 100_000), "refused before decoding"),
    (_png_header_only(7000, 7000), "refused before decoding"),  # 49M: over MAX_PIXELS only
])
def test_unusable_files_are_refused_with_one_line(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as refused:
        decode_image(data)
    assert "\n" not in str(refused.value)


def test_a_truncated_file_is_refused() -> None:
    rng = np.random.default_rng(0)
    png = _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(png[: len(png) // 2])


def test_16_bit_grey_is_scaled_to_8_bits_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    decoded = decode_image(_encode(Image.fromarray(ramp)))  # saved as a 16-bit PNG
    assert decoded.mode == "L"
    got = np.asarray(decoded).astype(int)
    assert np.abs(got - np.rint(ramp / 257.0)).max() <= 1  # clipping would make ~all 255
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 200


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
@pytest.mark.parametrize("background, ink", [((0,), 255), ((255,), 0)])
def test_a_black_digit_on_transparency_stays_visible(mode: str, background, ink: int) -> None:
    image = _digit("RGBA" if mode == "P" else mode)
    if mode == "P":
        image = image.convert("P")  # palette with a transparent entry (PNG tRNS)
        image.info["transparency"] = image.getpixel((0, 0))
    decoded = np.asarray(decode_image(_encode(image), background).convert("L")).astype(int)
    assert abs(decoded[8, 8] - ink) <= 2 and abs(decoded[0, 0] - background[0]) <= 2


def test_cmyk_becomes_rgb_with_its_colour() -> None:
    red = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    decoded = decode_image(_encode(red, "JPEG"))
    assert decoded.mode == "RGB"
    r, g, b = np.asarray(decoded)[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


@pytest.mark.filterwarnings("ignore:imagefolder")
def test_an_image_folder_skips_and_names_the_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(5):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    _digit("RGBA").save(tmp_path / "a" / "digit.png")
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "b" / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    (tmp_path / "b" / "notes.png").write_text("not an image")
    train, test = load_dataset(f"imagefolder:{tmp_path}")
    skipped = dict(train.skipped)
    assert {Path(p).name for p in skipped} == {"empty.png", "bomb.png", "notes.png"}
    assert "is empty" in skipped[str(tmp_path / "a" / "empty.png")]
    assert "refused before decoding" in skipped[str(tmp_path / "b" / "bomb.png")]
    assert len(train) + len(test) == 11


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL on TIFFs cut short (EXIF, tags)
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), fmt=st.sampled_from(FORMATS),
       size=st.tuples(st.integers(1, 24), st.integers(1, 24)), seed=st.integers(0, 2**16),
       cut=st.one_of(st.none(), st.integers(0, 999)), flip=st.one_of(st.none(), st.integers(0)))
def test_fuzz_decode_gives_8_bit_l_or_rgb_or_an_image_error(mode, fmt, size, seed, cut, flip
                                                            ) -> None:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    try:
        data = _encode(image.convert(mode), fmt)
    except (OSError, ValueError, KeyError):
        return  # this format cannot store this mode: nothing to decode
    data = bytearray(data if cut is None else data[: len(data) * cut // 1000])  # per mille;
    # integers, not floats: torch may have set flush-to-zero, which hypothesis's floats refuse
    if flip is not None and data:
        data[flip % len(data)] ^= 0xFF
    try:
        decoded = decode_image(bytes(data), (0,))
    except ImageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert decoded.mode in ("L", "RGB") and decoded.size[0] * decoded.size[1] <= MAX_PIXELS
    assert np.asarray(decoded).dtype == np.uint8
