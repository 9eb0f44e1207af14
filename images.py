"""The single image loader, and conversions between images and tensors.

`load_image` is the one way images enter the project: it decodes fully (so a truncated file fails
here, naming the file), and converts grayscale, palette, RGBA, CMYK and 16-bit images to 8-bit RGB.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

SIXTEEN_BIT_TO_EIGHT = 257.0  # 65535 / 255


class ImageError(ValueError):
    """An image file that is missing, not a file, empty, truncated, not an image or too small."""


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise ImageError(f"image not found: {path}")
    if os.path.isdir(path):
        raise ImageError(f"expected an image file, got a directory: {path}")
    if os.path.getsize(path) == 0:
        raise ImageError(f"image file is empty: {path}")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode `path` into an 8-bit RGB PIL image; raise ImageError naming the file and the problem."""
    path = os.fspath(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except UnidentifiedImageError:
        extension = os.path.splitext(path)[1].lower()
        if extension and extension not in Image.registered_extensions():  # e.g. .heic, .svg, camera raw
            raise ImageError(f"unsupported image format {extension}: {path} (convert it to PNG or JPEG)") from None
        raise ImageError(f"not an image, or a format Pillow cannot read: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot decode image {path}: {exc}") from None


def image_files(folder: str | os.PathLike) -> list[str]:
    """The paths of every image file (by an extension Pillow knows) directly in `folder`, sorted by
    name, hidden files left out; raises FileNotFoundError for a missing folder, ImageError for one
    without images."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    extensions = set(Image.registered_extensions())
    names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and os.path.splitext(n)[1].lower() in extensions)
    if not names:
        raise ImageError(f"no image files in {folder}")
    return [os.path.join(folder, name) for name in names]


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, read from its header without decoding the pixels; a file
    whose header cannot be read raises the ImageError that `load_image` gives for it."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError):
        load_image(path)  # raises the precise error
        raise


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


def image_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> uint8 tensor (3, H, W), values 0-255."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    return image_to_uint8_tensor(img).float().div_(255.0)


def tensor_to_image(pixels: torch.Tensor) -> Image.Image:
    """Pixel image (3, H, W) in [0, 1] -> 8-bit RGB PIL image, each value rounded to the nearest level."""
    levels = (pixels.detach().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return Image.fromarray(levels.permute(1, 2, 0).numpy())
