"""Input-transform defenses: a transform applied to every image before the quality model, and the
defended model that the attacks, adaptive ones included, take as they take any quality model.

| `--defense` | the transform (pixels in [0, 1], shape kept) | differentiable | random |
|---|---|---|---|
| `jpeg:Q` | JPEG encoding at quality Q (1-95, Pillow, 4:2:0) and decoding | no (BPDA) | no |
| `blur:SIGMA` | Gaussian blur, SIGMA pixels, kernel 2 ceil(3 SIGMA) + 1, reflected borders | yes | no |
| `median:K` | median of each K x K window (K odd >= 3), reflected borders | no (BPDA) | no |
| `resize:SCALE` | bilinear down to SCALE (0 < SCALE < 1) of each side (antialiased), bilinear back up | yes | no |
| `quantize:LEVELS` | each channel rounded to LEVELS evenly spaced levels (2-256) | no (BPDA) | no |
| `noise:SIGMA` | Gaussian noise of SIGMA (pixel units), clipped to [0, 1] | yes | yes |
| `crop:FRACTION` | a random crop of FRACTION (0 < F <= 1) of each side, bilinear back to the full size | yes | yes |
| `flip` | a horizontal flip with probability 1/2 | yes | yes |

The defenses of the IQA defense benchmark (Gushchin et al., ICML 2025, msu-video-group/
adversarial-defenses-for-iqa) that purify the input, with its parameters (its random crop keeps the
crop's size; here the crop is resized back, so the model sees an image of the size it expects).

`DefendedModel(model, defense, generator, eot)` is the model behind the transform. For scores (no
gradient) it applies the transform as it is, one random draw per image and call. Where a gradient is
taken through it (an adaptive attack; Athalye et al., "Obfuscated Gradients Give a False Sense of
Security", ICML 2018), a non-differentiable transform t passes the gradient through as the identity
(BPDA: `x + (t(x) - x).detach()`, t(x) forward, identity backward), and a random one is averaged over
`eot` draws (EOT: the mean score over the draws, whose gradient is the mean gradient); the draws are
stacked into one batch, so memory grows with `eot` times the images of a forward.

Random draws come from the `generator` given (CPU), one image after the other in the order of the
batch, so that the draws of a batch do not depend on how it is chunked; the evaluation seeds one
stream per image (seeding.DEFENSE_DRAWS), the same for its clean and its attacked version.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from attacks.base import check_pixels
from families.base import QualityModel
from images import image_to_tensor, tensor_to_image

JPEG_QUALITIES = (1, 95)  # Pillow's useful range
BLUR_TRUNCATE = 3.0  # the Gaussian kernel reaches this many sigmas on each side
QUANTIZE_LEVELS = (2, 256)
FLIP_PROBABILITY = 0.5
DEFAULT_EOT = 8  # random draws averaged per gradient by an adaptive attack


def jpeg_recompress(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """Each pixel image (B, 3, H, W) in [0, 1] encoded as a JPEG of `quality` (1-95, Pillow's default
    4:2:0 chroma subsampling) and decoded again: the JPEG defense of the NT authors' follow-up work.
    Returns (B, 3, H, W) in [0, 1] (8-bit levels), in the dtype and on the device of `pixels`."""
    if not JPEG_QUALITIES[0] <= quality <= JPEG_QUALITIES[1]:
        raise ValueError(f"JPEG quality must be between {JPEG_QUALITIES[0]} and {JPEG_QUALITIES[1]}, got {quality}")
    check_pixels(pixels)
    decoded = []
    for image in pixels.detach().cpu():
        buffer = io.BytesIO()
        tensor_to_image(image).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as jpeg:
            decoded.append(image_to_tensor(jpeg.convert("RGB")))
    return torch.stack(decoded).to(device=pixels.device, dtype=pixels.dtype)


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Pixel images (B, 3, H, W) blurred by a Gaussian of `sigma` pixels (separable kernel of
    2 ceil(BLUR_TRUNCATE sigma) + 1 taps, at most the image's side, weights summing to 1; borders
    reflected). Differentiable; stays in [0, 1] (a convex combination of pixels)."""
    check_pixels(pixels)
    radius = min(math.ceil(BLUR_TRUNCATE * sigma), min(pixels.shape[-2:]) - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    weights = (weights / weights.sum()).to(pixels)
    padded = F.pad(pixels, (radius, radius, radius, radius), mode="reflect")
    rows = weights.view(1, 1, 1, -1).expand(3, 1, 1, -1)
    columns = weights.view(1, 1, -1, 1).expand(3, 1, -1, 1)
    return F.conv2d(F.conv2d(padded, rows, groups=3), columns, groups=3)


def median_filter(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """The median of each `size` x `size` window (odd size) of every channel, borders reflected:
    (B, 3, H, W) -> (B, 3, H, W)."""
    check_pixels(pixels)
    pad = size // 2
    padded = F.pad(pixels, (pad, pad, pad, pad), mode="reflect")
    windows = padded.unfold(2, size, 1).unfold(3, size, 1)  # (B, 3, H, W, size, size)
    return windows.flatten(-2).median(dim=-1).values


def resize_down_up(pixels: torch.Tensor, scale: float) -> torch.Tensor:
    """Pixel images (B, 3, H, W) resized (bilinear, antialiased) to round(scale * side) pixels a side
    (at least 1) and back to H x W (bilinear). Differentiable."""
    check_pixels(pixels)
    height, width = pixels.shape[-2:]
    small = (max(1, round(scale * height)), max(1, round(scale * width)))
    down = F.interpolate(pixels, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(down, size=(height, width), mode="bilinear", align_corners=False).clamp(0.0, 1.0)


def quantize_colors(pixels: torch.Tensor, levels: int) -> torch.Tensor:
    """Each channel value in [0, 1] rounded to the nearest of `levels` evenly spaced levels 0, 1 /
    (levels - 1), ..., 1 (the benchmark's colour quantization)."""
    steps = levels - 1
    return torch.round(pixels.clamp(0.0, 1.0) * steps) / steps


def _per_image(count: int, draw: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`draw()` once per image, in order, stacked: the draws of an image do not depend on the batch."""
    return torch.stack([draw() for _ in range(count)])


def gaussian_noise(pixels: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """Pixel images plus Gaussian noise of standard deviation `sigma` (pixel units), clipped to [0, 1];
    the noise of each image drawn in turn from `generator` (CPU)."""
    check_pixels(pixels)
    noise = _per_image(len(pixels), lambda: torch.randn(pixels.shape[1:], generator=generator))
    return (pixels + sigma * noise.to(pixels)).clamp(0.0, 1.0)


def random_crop_resize(pixels: torch.Tensor, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    """A crop of round(fraction * side) pixels a side (at least 1) at a random place (uniform over the
    places, each image its own, drawn from `generator`), resized back to H x W (bilinear)."""
    check_pixels(pixels)
    height, width = pixels.shape[-2:]
    crop_height, crop_width = max(1, round(fraction * height)), max(1, round(fraction * width))
    def corner() -> torch.Tensor:  # (top, left) of one image's crop
        return torch.cat([torch.randint(0, height - crop_height + 1, (1,), generator=generator),
                          torch.randint(0, width - crop_width + 1, (1,), generator=generator)])

    corners = _per_image(len(pixels), corner)
    crops = torch.stack([image[:, top:top + crop_height, left:left + crop_width]
                         for image, (top, left) in zip(pixels, corners.tolist())])
    if (crop_height, crop_width) == (height, width):
        return crops
    return F.interpolate(crops, size=(height, width), mode="bilinear", align_corners=False).clamp(0.0, 1.0)


def random_flip(pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Each image mirrored left-right with probability FLIP_PROBABILITY (drawn from `generator`)."""
    check_pixels(pixels)
    flipped = _per_image(len(pixels), lambda: torch.rand((), generator=generator) < FLIP_PROBABILITY)
    return torch.where(flipped.to(pixels.device)[:, None, None, None], pixels.flip(-1), pixels)


@dataclass(frozen=True)
class Transform:
    """One kind of defense: what its parameter is (`kind` int or float, '' when it takes none, with
    the rule it must meet), whether gradients pass through it and whether it draws at random."""

    parameter: str  # what PARAM means, for messages
    kind: type | None  # int, float, or None (no parameter)
    valid: Callable[[float], bool]
    rule: str
    differentiable: bool
    randomized: bool
    apply: Callable[[torch.Tensor, float | None, torch.Generator | None], torch.Tensor]


TRANSFORMS = {
    "jpeg": Transform("quality", int, lambda q: JPEG_QUALITIES[0] <= q <= JPEG_QUALITIES[1], "between 1 and 95",
                      False, False, lambda x, q, g: jpeg_recompress(x, int(q))),
    "blur": Transform("sigma (pixels)", float, lambda s: s > 0, "> 0", True, False, lambda x, s, g: gaussian_blur(x, s)),
    "median": Transform("window side K", int, lambda k: k >= 3 and k % 2 == 1, "odd and >= 3", False, False,
                        lambda x, k, g: median_filter(x, int(k))),
    "resize": Transform("scale", float, lambda s: 0 < s < 1, "> 0 and < 1", True, False,
                        lambda x, s, g: resize_down_up(x, s)),
    "quantize": Transform("levels", int, lambda n: QUANTIZE_LEVELS[0] <= n <= QUANTIZE_LEVELS[1], "between 2 and 256",
                          False, False, lambda x, n, g: quantize_colors(x, int(n))),
    "noise": Transform("sigma (pixel units)", float, lambda s: s > 0, "> 0", True, True, gaussian_noise),
    "crop": Transform("fraction of each side", float, lambda f: 0 < f <= 1, "> 0 and <= 1", True, True,
                      random_crop_resize),
    "flip": Transform("", None, lambda _: True, "", True, True, lambda x, _, g: random_flip(x, g)),
}
DEFENSES = tuple(TRANSFORMS)


@dataclass(frozen=True)
class Defense:
    """A transform of TRANSFORMS with its parameter (None for `flip`): `defense(pixels, generator)`."""

    name: str
    parameter: float | None = None

    @property
    def transform(self) -> Transform:
        return TRANSFORMS[self.name]

    @property
    def differentiable(self) -> bool:
        return self.transform.differentiable

    @property
    def randomized(self) -> bool:
        return self.transform.randomized

    def __str__(self) -> str:
        return self.name if self.parameter is None else f"{self.name}:{self.parameter:g}"

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The defended images (B, 3, H, W) in [0, 1] of pixel images (B, 3, H, W) in [0, 1]; a random
        transform draws from `generator` (None: torch's global generator)."""
        return self.transform.apply(pixels, self.parameter, generator)


def parse_defense(text: str) -> Defense:
    """`NAME[:PARAM]` (e.g. `jpeg:50`, `flip`) -> Defense; ValueError saying what is valid."""
    name, _, value = text.partition(":")
    if name not in TRANSFORMS:
        raise ValueError(f"unknown defense {name!r}; valid: {', '.join(DEFENSES)}")
    transform = TRANSFORMS[name]
    if transform.kind is None:
        if value:
            raise ValueError(f"defense {name} takes no parameter, got {text!r}")
        return Defense(name)
    if not value:
        raise ValueError(f"defense {name} needs its {transform.parameter}: {name}:VALUE")
    try:
        parameter = transform.kind(value)
    except ValueError:
        kind = "a whole number" if transform.kind is int else "a number"
        raise ValueError(f"defense {name}: its {transform.parameter} must be {kind}, got {value!r}") from None
    if not (math.isfinite(parameter) and transform.valid(parameter)):
        raise ValueError(f"defense {name}: its {transform.parameter} must be {transform.rule}, got {value}")
    return Defense(name, parameter)


def bpda(pixels: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """transform(pixels) in the forward pass, the identity in the backward pass (Backward Pass
    Differentiable Approximation, Athalye et al. 2018)."""
    return pixels + (transform(pixels) - pixels).detach()


class DefendedModel(nn.Module):
    """A quality model behind a defense: pixels (B, 3, H, W) in [0, 1] -> scores (B,) of the defended
    images. Without gradients: one draw of the transform. With gradients (an adaptive attack): BPDA
    through a non-differentiable transform, and the mean over `eot` draws of a random one (see the
    module docstring). `generator` (CPU) feeds the random draws. It starts in the mode of `model`."""

    def __init__(self, model: QualityModel, defense: Defense, generator: torch.Generator | None = None,
                 eot: int = DEFAULT_EOT):
        super().__init__()
        if eot < 1:
            raise ValueError(f"eot must be >= 1 draw, got {eot}")
        self.model, self.defense, self.generator, self.eot = model, defense, generator, eot
        self.train(model.training)  # the model's mode, which the attacks' eval_mode restores afterwards

    def _defended(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.defense(pixels, self.generator)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.model(self._defended(pixels))
        draws = self.eot if self.defense.randomized else 1
        defended = [self._defended(pixels) if self.defense.differentiable else bpda(pixels, self._defended)
                    for _ in range(draws)]
        return self.model(torch.cat(defended)).view(draws, len(pixels)).mean(dim=0)  # (draws * B,) -> (B,)
