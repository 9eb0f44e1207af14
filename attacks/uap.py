"""A universal adversarial perturbation (UAP; Shumitskaya, Antsiferova and Vatolin, "Universal
Perturbation Attack on Differentiable No-Reference Image- and Video-Quality Metrics", BMVC 2022), as
the MSU metrics robustness benchmark trains and applies it (methods/uap/train.py, methods/utils):
one 256x256 perturbation per model, trained once on a folder of images, then added at several
amplitudes to every test image, without a gradient at test time.

Training (`train_uap`), the benchmark's settings: the perturbation starts at 1e-4 everywhere; each
of `epochs` epochs takes ceil(N / batch_size) steps, each on a random batch of `batch_size` of the N
training images (the benchmark draws each step's batch afresh, the first batch of a new shuffle);
a step adds the perturbation to the batch, clips the sum to [0, 1] for the forward (the gradient
passes as if unclipped, as there), minimizes 1 - direction * mean score / score_width with Adam (lr
0.001) and clips the perturbation to [-bound, bound] (bound 0.1). The training images are first
made 256x256 as the benchmark does (`training_crop`).

Applying (`apply_uap`): the perturbation tiled over the image from its top-left corner, times the
amplitude (the benchmark's 0.2, 0.4 and 0.8), added, NOT clipped to [0, 1] (as the benchmark scores
it; rounding to 8 bits clips it). In the eps grid of the other attacks, eps is the amplitude times
the bound: the l_inf bound of what is added (eps 0.02, 0.04, 0.08 for the benchmark's amplitudes).

Files (`save_uap`, `load_uap`): a .npy array (256, 256, 3) float32, height x width x channel, the
layout of the benchmark's own UAP files, which load too.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from atomic_file import atomic_write
from attacks.base import AttackResult, check_pixels, eval_mode, score_patches
from families.base import QualityModel

UAP_SIZE = 256  # side of the perturbation and of the training images, pixels
UAP_BOUND = 0.1  # l_inf bound of the perturbation, [0, 1] pixel units
UAP_LR = 0.001  # Adam learning rate of its training
UAP_EPOCHS = 5
UAP_BATCH_SIZE = 8
UAP_START = 1e-4  # every element's value before training
UAP_AMPLITUDES = (0.2, 0.4, 0.8)  # the benchmark's amplitudes: fractions of the perturbation added
CENTER_CROP_MIN_SIDE = 2 * UAP_SIZE  # below this on a side, the benchmark resizes instead of cropping

# (images (B, 3, 256, 256) in [0, 1], differentiable) -> scores (B,): the model as the UAP is trained against it
Scorer = Callable[[torch.Tensor], torch.Tensor]


def training_crop(image: torch.Tensor) -> torch.Tensor:
    """The benchmark's 256x256 training image from an image (3, H, W) in [0, 1]: its centre 256x256
    crop, or, when a side is shorter than 512 pixels (the benchmark's test), the whole image resized
    to 256x256 (bilinear, half-pixel centres, no antialiasing: OpenCV's INTER_LINEAR)."""
    height, width = image.shape[1:]
    if height < CENTER_CROP_MIN_SIDE or width < CENTER_CROP_MIN_SIDE:
        return F.interpolate(image[None].float(), size=(UAP_SIZE, UAP_SIZE), mode="bilinear",
                             align_corners=False)[0].to(image.dtype)
    top, left = int(height / 2 - UAP_SIZE / 2), int(width / 2 - UAP_SIZE / 2)
    return image[:, top:top + UAP_SIZE, left:left + UAP_SIZE]


def train_uap(score: Scorer, images: torch.Tensor, direction: float = 1.0, score_width: float = 100.0,
              epochs: int = UAP_EPOCHS, lr: float = UAP_LR, bound: float = UAP_BOUND,
              batch_size: int = UAP_BATCH_SIZE, generator: torch.Generator | None = None,
              progress: Callable[[int, int, float], None] | None = None) -> torch.Tensor:
    """Train a universal perturbation (3, 256, 256) against `score` on `images` (N, 3, 256, 256) in
    [0, 1] (see the module docstring). direction: +1 raises the scores (the benchmark's goal), -1
    lowers them; score_width: the score range (the benchmark's metric range); generator: the batches'
    draws (on the CPU); progress(step, steps, loss): called after every step."""
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, UAP_SIZE, UAP_SIZE):
        raise ValueError(f"UAP training images must be (N, 3, {UAP_SIZE}, {UAP_SIZE}), got {tuple(images.shape)}")
    if direction not in (1.0, -1.0):
        raise ValueError(f"a UAP raises (+1) or lowers (-1) every score, got direction {direction}")
    if epochs < 1 or batch_size < 1 or not lr > 0 or not bound > 0:
        raise ValueError(f"UAP training needs epochs, batch_size, lr and bound > 0, got {epochs}, {batch_size}, {lr}, "
                         f"{bound}")
    images = images.detach()
    perturbation = torch.full((1, 3, UAP_SIZE, UAP_SIZE), UAP_START, dtype=images.dtype, device=images.device)
    perturbation.requires_grad_(True)
    optimizer = torch.optim.Adam([perturbation], lr=lr)
    steps = epochs * math.ceil(len(images) / batch_size)
    with eval_mode(score):
        for step in range(steps):
            batch = images[torch.randperm(len(images), generator=generator)[:batch_size].to(images.device)]
            attacked = batch + perturbation
            with torch.no_grad():
                attacked.clamp_(0.0, 1.0)  # the forward sees the clipped images, the gradient passes unclipped
            loss = 1 - direction * score(attacked).mean() / score_width
            (perturbation.grad,) = torch.autograd.grad(loss, perturbation)
            optimizer.step()
            with torch.no_grad():
                perturbation.clamp_(-bound, bound)
            if progress is not None:
                progress(step + 1, steps, loss.item())
    return perturbation.detach()[0]


def tiled(uap: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The perturbation (3, h, w) repeated from the top-left corner to cover height x width: (3, height, width)."""
    rows, columns = math.ceil(height / uap.shape[1]), math.ceil(width / uap.shape[2])
    return uap.repeat(1, rows, columns)[:, :height, :width]


def apply_uap(pixels: torch.Tensor, uap: torch.Tensor, amplitude: float) -> torch.Tensor:
    """pixels (B, 3, H, W) + amplitude * the tiled perturbation (3, h, w): (B, 3, H, W), not clipped
    (see the module docstring)."""
    check_pixels(pixels)
    if uap.dim() != 3 or uap.shape[0] != 3:
        raise ValueError(f"a UAP is (3, H, W), got {tuple(uap.shape)}")
    return pixels.detach() + amplitude * tiled(uap.to(pixels), *pixels.shape[2:])


def save_uap(path: str | os.PathLike, uap: torch.Tensor) -> None:
    """Write the perturbation (3, H, W) to `path` as a .npy array (H, W, 3) float32 (the benchmark's layout)."""
    with atomic_write(path) as handle:
        np.save(handle, uap.detach().cpu().float().permute(1, 2, 0).numpy(), allow_pickle=False)


def load_uap(path: str | os.PathLike) -> torch.Tensor:
    """The perturbation (3, H, W) float32 of a .npy file (H, W, 3) written by `save_uap` or the benchmark."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the UAP file {path}: {exc}") from None
    if array.ndim != 3 or array.shape[2] != 3 or not np.isfinite(array).all():
        raise ValueError(f"{path}: a UAP file holds a finite (H, W, 3) array, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1).contiguous()


def uap_attack(model: QualityModel, pixels: torch.Tensor, uap: torch.Tensor, eps: float, bound: float = UAP_BOUND,
               chunk_size: int | None = None) -> AttackResult:
    """The perturbation `uap` added to pixel images (B, 3, H, W) at the amplitude eps / bound (the
    benchmark's amplitude 0.2 at eps 0.02), with `model`'s clean scores (see `apply_uap`)."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return AttackResult(apply_uap(pixels, uap, eps / bound), score_patches(model, pixels, chunk_size))
