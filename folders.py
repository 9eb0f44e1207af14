"""Image quality data sets and the single image loader.

`load_image` is the one way images enter the project: it decodes fully (so a truncated file fails
here, naming the file), and converts grayscale, palette, RGBA, CMYK and 16-bit images to 8-bit RGB.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

SIXTEEN_BIT_TO_EIGHT = 257.0  # 65535 / 255


class ImageError(ValueError):
    """An image file that is missing, not a file, empty, truncated or not an image."""


class Sample(NamedTuple):
    path: str  # absolute or root-relative path of the image file
    mos: float  # quality label on the data set's own scale (MOS or DMOS)
    content: str  # reference-image id: images that share it must stay on the same side of a split


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode `path` into an 8-bit RGB PIL image; raise ImageError naming the file and the problem."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"image not found: {path}")
    if os.path.isdir(path):
        raise ImageError(f"expected an image file, got a directory: {path}")
    if os.path.getsize(path) == 0:
        raise ImageError(f"image file is empty: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except UnidentifiedImageError:
        raise ImageError(f"not an image, or a format Pillow cannot read: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot decode image {path}: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's RGB conversion clips 16-bit values at 255; rescale to 8 bits first.
        values = np.asarray(img, dtype=np.float64) / SIXTEEN_BIT_TO_EIGHT
        img = Image.fromarray(values.clip(0, 255).round().astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.asarray(img).clip(0, 255).round().astype(np.uint8), mode="L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")
