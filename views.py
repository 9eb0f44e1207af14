"""Views: how an image becomes what a quality model scores, with the released transforms of each family.

A `Views` protocol says, for training or testing, how many views an image gives, whether each is a
random crop (of which size) or the whole image, whether it is flipped at random (left-right or
up-down), rotated by a small random angle (LinearityIQA's --augment), and which resizes the decoded
image goes through first (HyperIQA resizes KonIQ-10k images to 512x384 before cropping 224x224
patches; LinearityIQA scores the whole image resized to 498x664; DBCNN tests the whole image as it
is). A view is described by a `CropBox` drawn from a seeded generator and cut from the decoded (and
resized) image when a batch needs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from images import image_to_tensor, load_image

FLIPS = ("none", "horizontal", "vertical")  # horizontal: left-right (mirror); vertical: up-down
RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
OPENCV_CUBIC = "opencv_cubic"  # cv2.resize(..., interpolation=INTER_CUBIC), see `resize_like_opencv_cubic`


@dataclass(frozen=True)
class Views:
    """How one image becomes the views a model scores (see the module docstring).

    count: views per image; crop: (height, width) of a random crop, None for the whole image; flip:
    one of FLIPS, each view flipped with `flip_probability`; resize: (height, width) sizes the decoded
    image is resized to, in turn, before any crop, by `resample`: PIL's 'bilinear' or 'bicubic'
    (antialiased when shrinking, as torchvision's Resize of a PIL image), or OPENCV_CUBIC (OpenCV's
    INTER_CUBIC, no antialiasing: MANIQA's KonIQ-10k pipeline); crop_last_offset: whether a crop may
    start at the last offset (side - crop), as torchvision's RandomCrop allows; rotation: the largest
    angle in degrees of a random rotation of the (resized) image about its centre before the flip and
    the crop, the angle uniform in [-rotation, rotation] (nearest neighbour, the corners black, the
    size kept: torchvision's `rotate`, as LinearityIQA's --augment); 0 for none.
    """

    count: int = 1
    crop: tuple[int, int] | None = None
    flip: str = "none"
    flip_probability: float = 0.5
    resize: tuple[tuple[int, int], ...] = ()
    resample: str = "bilinear"
    crop_last_offset: bool = True
    rotation: float = 0.0

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"views per image must be >= 1, got {self.count}")
        if self.flip not in FLIPS:
            raise ValueError(f"unknown flip {self.flip!r}; valid: {', '.join(FLIPS)}")
        if self.resample not in RESAMPLING and self.resample != OPENCV_CUBIC:
            raise ValueError(f"unknown resampling {self.resample!r}; valid: {', '.join(RESAMPLING)}, {OPENCV_CUBIC}")
        if not self.rotation >= 0:
            raise ValueError(f"the largest rotation must be >= 0 degrees, got {self.rotation}")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of an image of `height` x `width` pixels after the resizes."""
        return self.resize[-1] if self.resize else (height, width)

    def view_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of each view of an image of `height` x `width` pixels (before resizing)."""
        return self.crop if self.crop is not None else self.resized_size(height, width)

    def describe(self) -> str:
        """A few words for messages, e.g. '25 random 224x224 crops' or 'the whole image resized to 498x664'."""
        if self.crop is None:
            whole = "the whole image" + (" resized to %dx%d" % self.resize[-1][::-1] if self.resize else "")
            return whole if self.count == 1 else f"{self.count} copies of {whole}"
        return f"{self.count} random {self.crop[1]}x{self.crop[0]} crop{'s' if self.count > 1 else ''}"


class CropBox(NamedTuple):
    top: int  # pixels from the top of the (resized) image
    left: int  # pixels from the left
    flip: bool  # flipped after cropping, along the axis of the protocol's `flip`
    angle: float = 0.0  # degrees (counter-clockwise) the whole image is rotated by before the crop


def resize_like_opencv_cubic(img: Image.Image, height: int, width: int) -> Image.Image:
    """An 8-bit RGB image resized to `height` x `width` as `cv2.resize(img, (width, height),
    interpolation=cv2.INTER_CUBIC)` does it, without OpenCV: bicubic convolution with a = -0.75,
    half-pixel centres, source indices clamped at the borders and no antialiasing when shrinking,
    which is what torch's bicubic interpolation computes (here in float64), rounded to 8 bits.
    OpenCV computes in fixed point (11-bit weights), so a few values differ by one level (the
    README gives the measured share)."""
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)[None].double()
    resized = F.interpolate(pixels, size=(height, width), mode="bicubic", align_corners=False)
    levels = resized.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    return Image.fromarray(levels.numpy(), mode="RGB")


def resize_as_released(img: Image.Image, views: Views) -> Image.Image:
    """The decoded image after the protocol's resizes (each (height, width), by `views.resample`)."""
    for height, width in views.resize:
        if views.resample == OPENCV_CUBIC:
            img = resize_like_opencv_cubic(img, height, width)
        else:
            img = img.resize((width, height), RESAMPLING[views.resample])
    return img


def random_crop_boxes(height: int, width: int, views: Views, generator: torch.Generator | None = None,
                      count: int | None = None) -> list[CropBox]:
    """`count` (default views.count) crop boxes of an image of `height` x `width` pixels (after the
    resizes), for the protocol's crop size (the whole image when it has none).

    Positions are uniform over the valid offsets, drawn from `generator` (tops, then lefts); with a
    flip, each view is then flipped with probability views.flip_probability (drawn after all
    positions); with a rotation, the angles are drawn last. Raises ValueError if the image is smaller
    than the crop on a side.
    """
    count = views.count if count is None else count
    crop_height, crop_width = views.crop or (height, width)
    if height < crop_height or width < crop_width:
        raise ValueError(f"image of {width}x{height} pixels is smaller than the {crop_width}x{crop_height} crop")
    extra = 1 if views.crop_last_offset else 0
    tops = torch.randint(0, max(1, height - crop_height + extra), (count,), generator=generator).tolist()
    lefts = torch.randint(0, max(1, width - crop_width + extra), (count,), generator=generator).tolist()
    flipped = [False] * count
    if views.flip != "none":
        flipped = (torch.rand(count, generator=generator) < views.flip_probability).tolist()
    angles = [0.0] * count
    if views.rotation:
        angles = ((2 * torch.rand(count, generator=generator, dtype=torch.float64) - 1) * views.rotation).tolist()
    return [CropBox(t, l, f, a) for t, l, f, a in zip(tops, lefts, flipped, angles)]


def cut_view(image: torch.Tensor, box: CropBox, views: Views) -> torch.Tensor:
    """The view of `image` (3, H, W) at `box` (3, h, w): a view of the tensor when neither flipped nor
    rotated. A rotation turns the whole image first (then the crop), as torchvision's RandomRotation
    before a crop; a crop then a flip cuts what a flip then the mirrored crop would."""
    if box.angle:
        import torchvision.transforms.functional as TF  # only here: importing torchvision takes a second

        image = TF.rotate(image, box.angle, interpolation=TF.InterpolationMode.NEAREST)
    crop_height, crop_width = views.crop or image.shape[1:]
    patch = image[:, box.top:box.top + crop_height, box.left:box.left + crop_width]
    if not box.flip:
        return patch
    return patch.flip(-1) if views.flip == "horizontal" else patch.flip(-2)


def random_views(image: torch.Tensor, views: Views, generator: torch.Generator | None = None) -> torch.Tensor:
    """The views of one (resized) image (3, H, W) -> (views.count, 3, h, w); see `random_crop_boxes`."""
    boxes = random_crop_boxes(image.shape[1], image.shape[2], views, generator)
    return torch.stack([cut_view(image, box, views) for box in boxes])


def image_views(path: str, views: Views, generator: torch.Generator | None = None,
                upscale_small: bool = False, decoded: Image.Image | None = None) -> torch.Tensor:
    """The views of the image file `path` (`decoded` when it was already decoded) -> (N, 3, h, w) in
    [0, 1]: views.count random crops of the resized image (or the whole image).

    Crop positions come from `generator` (seed it for reproducible views). An image of exactly the
    crop size is its own single view, whatever the count. An image smaller than the crop on a side
    raises ValueError naming the file, unless `upscale_small`: then it is resized (bicubic) so that
    it covers the crop, keeping the aspect ratio.
    """
    img = resize_as_released(load_image(path) if decoded is None else decoded, views)
    width, height = img.size
    if views.crop is not None and (height < views.crop[0] or width < views.crop[1]):
        crop_height, crop_width = views.crop
        if not upscale_small:
            raise ValueError(f"{path}: image of {width}x{height} pixels is smaller than the {crop_width}x{crop_height} "
                             f"crop on a side; pass --upscale_small to upscale it")
        scale = max(crop_height / height, crop_width / width)
        img = img.resize((max(crop_width, round(width * scale)), max(crop_height, round(height * scale))),
                         Image.BICUBIC)
    image = image_to_tensor(img)
    if views.crop is None or tuple(image.shape[1:]) == tuple(views.crop):
        return image.unsqueeze(0)
    return random_views(image, views, generator)
