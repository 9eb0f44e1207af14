"""Random 224x224 patches of images, with the released transforms.

Training patches are random crops, each mirrored left-right with probability 1/2; test patches are
random crops without flips; KonIQ-10k images are first resized to height 512 x width 384 and BID
images to 512 x 512 (torchvision's `Resize((512, 384))` and `Resize((512, 512))` in the released
code, bilinear). A patch is described by a `CropBox` drawn from a seeded generator and cut from the
decoded image when a batch needs it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from PIL import Image

from images import image_to_tensor, load_image

RESIZE_BEFORE_CROP = {"koniq-10k": (512, 384), "bid": (512, 512)}  # (height, width), as released


class CropBox(NamedTuple):
    top: int  # pixels from the top of the image
    left: int  # pixels from the left
    flip: bool  # mirrored left-right after cropping


def resized_size(dataset: str, width: int, height: int) -> tuple[int, int]:
    """(width, height) of an image of `width` x `height` after `resize_as_released`."""
    if dataset in RESIZE_BEFORE_CROP:
        height, width = RESIZE_BEFORE_CROP[dataset]
    return width, height


def resize_as_released(img: Image.Image, dataset: str) -> Image.Image:
    """KonIQ-10k -> height 512 x width 384, BID -> 512 x 512 (bilinear), other data sets unchanged."""
    if dataset not in RESIZE_BEFORE_CROP:
        return img
    height, width = RESIZE_BEFORE_CROP[dataset]
    return img.resize((width, height), Image.Resampling.BILINEAR)


def random_crop_boxes(height: int, width: int, count: int, size: int, generator: torch.Generator | None = None,
                      flip: bool = False) -> list[CropBox]:
    """`count` random `size` x `size` crops of an image of `height` x `width` pixels.

    Positions are uniform over the valid offsets, drawn from `generator` (tops, then lefts); with
    `flip`, each crop is then mirrored with probability 1/2 (drawn after all positions). Raises
    ValueError if the image is smaller than `size` on a side.
    """
    if height < size or width < size:
        raise ValueError(f"image of {width}x{height} pixels is smaller than the {size}x{size} patch")
    tops = torch.randint(0, height - size + 1, (count,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (count,), generator=generator).tolist()
    flips = (torch.rand(count, generator=generator) < 0.5).tolist() if flip else [False] * count
    return [CropBox(t, l, f) for t, l, f in zip(tops, lefts, flips)]


def cut_patch(image: torch.Tensor, box: CropBox, size: int) -> torch.Tensor:
    """The `size` x `size` patch of `image` (3, H, W) at `box`, a view when not flipped."""
    patch = image[:, box.top:box.top + size, box.left:box.left + size]
    return patch.flip(-1) if box.flip else patch


def random_crops(image: torch.Tensor, count: int, size: int, generator: torch.Generator | None = None,
                 flip: bool = False) -> torch.Tensor:
    """`count` random crops of one image (3, H, W) -> (count, 3, size, size); see `random_crop_boxes`."""
    boxes = random_crop_boxes(image.shape[1], image.shape[2], count, size, generator, flip)
    return torch.stack([cut_patch(image, box, size) for box in boxes])


def image_patches(path: str, count: int, size: int, generator: torch.Generator | None = None,
                  upscale_small: bool = False) -> torch.Tensor:
    """`count` random `size` x `size` crops of the image file `path` -> (count, 3, size, size) in [0, 1].

    Crop positions come from `generator` (seed it for reproducible patches). An image of exactly
    `size` x `size` is its own single patch, whatever `count`. An image smaller than `size` on a side
    raises ValueError naming the file, unless `upscale_small`: then it is resized (bicubic) so that
    its shorter side is `size`, keeping the aspect ratio.
    """
    img = load_image(path)
    width, height = img.size
    if min(width, height) < size:
        if not upscale_small:
            raise ValueError(f"{path}: image of {width}x{height} pixels is smaller than the {size}x{size} "
                             f"patch on a side; pass --upscale_small to upscale it")
        scale = size / min(width, height)
        img = img.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    image = image_to_tensor(img)
    if image.shape[1:] == (size, size):
        return image.unsqueeze(0)
    return random_crops(image, count, size, generator)
