"""Thumbnails as PNG bytes: small images (8x8 digits, 28x28 MNIST) are upscaled with
nearest-neighbour so their pixels stay crisp; larger photos are shrunk smoothly. No Streamlit
here: dashboard.state caches `thumbnail_pngs` (st.image would re-encode on every run)."""

from __future__ import annotations

import io

from PIL import Image

from influence_core import load_dataset

THUMB_PX = 96  # longest thumbnail edge, in pixels; small images are upscaled with nearest
LARGE_PX = 256  # the review card's image


def png(img: Image.Image, px: int) -> bytes:
    """`img` resized so its longest edge is `px` pixels, encoded as PNG."""
    scale = px / max(img.size)
    size = (round(img.width * scale), round(img.height * scale))
    # Nearest keeps 8x8 and 28x28 pixels crisp; larger photos are shrunk smoothly.
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    buf = io.BytesIO()
    img.resize(size, resample).save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_pngs(dataset: str, data_root: str, split: str, indices: tuple[int, ...],
                   px: int = THUMB_PX) -> list[bytes]:
    """PNG thumbnails (longest edge px) of examples `indices` of `split` ("train" or "test")."""
    train, test = load_dataset(dataset, data_root)
    data = train if split == "train" else test
    return [png(data.image(int(i)), px) for i in indices]
