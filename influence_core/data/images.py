"""Decoding one image file (an image folder's, or an upload) into 8-bit "L" or "RGB", or a clear
ImageError. Every user image goes through `decode_image`:

  size:         read from the header, before any pixel is decoded; more than MAX_PIXELS is
                refused (a decompression bomb: a few KB of PNG can claim 10^10 pixels). PIL's own
                Image.MAX_IMAGE_PIXELS is set to the same cap for every other Image.open.
  16-bit grey:  modes I;16* (and I holding 16-bit values) are scaled by 255/65535, not clipped
                (clipping, what convert("L") does, turns most 16-bit images white).
  transparency: RGBA, LA, PA and palette or grey images with a transparent colour are composited
                onto `background`, the dataset's background colour. When that hides the content
                (a black digit on a transparent background over MNIST's black), the alpha channel
                is the drawing: ink of the opposite colour where the image is opaque.
  CMYK, YCbCr, LAB, HSV, palettes without transparency: converted to RGB; 1-bit and float grey
                to L.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .datasets import DatasetError

MAX_PIXELS = 40_000_000  # the largest image accepted (e.g. 8000 x 5000), checked before decoding
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL warns above this and refuses above twice it
GREY = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
HIDDEN_CONTRAST = 8.0  # std (0..255) below which a composited image has lost its content


class ImageError(DatasetError):
    """An image file that cannot be used: not an image, empty, truncated, or too large."""


def decode_image(source: bytes | str | Path, background: tuple[int, ...] = (255, 255, 255),
                 draft: tuple[str, tuple[int, int]] | None = None,
                 max_pixels: int | None = None) -> Image.Image:
    """The image in `source` (encoded bytes or a path), fully decoded, as mode "L" (grey
    sources) or "RGB", transparency composited onto `background` (one or three 0..255 values).
    `draft` = (mode, size) lets JPEG decode at a reduced scale; `max_pixels` (at most
    MAX_PIXELS) lowers the size cap read from the header. Raises ImageError (one line, naming
    the file when a path is given)."""
    limit = min(max_pixels or MAX_PIXELS, MAX_PIXELS)
    name = str(source) if isinstance(source, str | Path) else "the image"
    try:
        data = Path(source).read_bytes() if isinstance(source, str | Path) else bytes(source)
    except OSError as exc:
        raise ImageError(f"cannot read {name}: {exc.strerror or exc}") from None
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(f"{name} is not an image PIL can read") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name} has more than {MAX_PIXELS:,} pixels: refused before "
                             "decoding") from None
        except Exception as exc:
            raise ImageError(f"{name} is not a readable image ({exc})") from None
        width, height = im.size
        if width < 1 or height < 1 or width * height > limit:
            raise ImageError(f"{name} is {width} x {height} = {width * height:,} pixels; the "
                             f"limit is {limit:,}: refused before decoding")
        try:
            if draft is not None:
                im.draft(*draft)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return _to_8bit(im, background)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name} has more than {MAX_PIXELS:,} pixels: refused") from None
        except Exception as exc:  # truncated data, bad chunks, unsupported modes
            raise ImageError(f"{name} cannot be decoded (truncated or corrupt?): {exc}") from None


def _to_8bit(im: Image.Image, background: tuple[int, ...]) -> Image.Image:
    grey = im.mode in GREY or (im.mode in ("P", "PA") and _grey_palette(im))
    if im.mode.startswith("I") or im.mode == "F":
        im = _scale_to_8bit(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        return _composite(im.convert("RGBA"), background, grey)
    return im.convert("L" if grey else "RGB")


def _grey_palette(im: Image.Image) -> bool:
    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _scale_to_8bit(im: Image.Image) -> Image.Image:
    """I;16* -> x * 255 / 65535; I: the same when its values fit 16 bits (8-bit values kept),
    else min-max; F: [0, 1] scaled by 255, anything else min-max. Never clipped."""
    arr = np.asarray(im, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ImageError("the image holds non-finite pixel values")
    low, high = float(arr.min()), float(arr.max())
    if im.mode.startswith("I;16") or (im.mode == "I" and 255 < high <= 65535 and low >= 0):
        arr = arr * 255.0 / 65535.0
    elif im.mode == "F" and low >= 0.0 and high <= 1.0:
        arr = arr * 255.0
    elif low < 0 or high > 255:
        arr = (arr - low) * (255.0 / (high - low)) if high > low else np.zeros_like(arr)
    return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")


def _composite(rgba: Image.Image, background: tuple[int, ...], grey: bool) -> Image.Image:
    arr = np.asarray(rgba, dtype=np.float64)
    alpha = arr[..., 3:] / 255.0
    bg = np.broadcast_to(np.asarray(background, dtype=np.float64)[:3], (3,))
    out = alpha * arr[..., :3] + (1.0 - alpha) * bg
    if out.std() < HIDDEN_CONTRAST <= alpha.std() * 255.0:  # the content vanished into bg
        out = bg + alpha * ((255.0 - bg) - bg)  # the shape as ink of the opposite colour
    image = Image.fromarray(np.rint(out).clip(0, 255).astype(np.uint8), mode="RGB")
    return image.convert("L") if grey else image
