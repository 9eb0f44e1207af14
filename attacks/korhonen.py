"""The attack of Korhonen and You ("Adversarial Attacks against Blind Image Quality Assessment
Models", QoEVMA 2022), as the MSU metrics robustness benchmark runs it (methods/korhonen-et-al/run.py):
Adam on the image itself, its gradient masked by a spatial-activity map so that the perturbation
hides in textured regions, where it is least visible. No eps: the number of steps bounds it.

The map, per image (`spatial_activity_map`), as that code computes it with OpenCV (here numpy and
scipy.ndimage, the same numbers up to float32 rounding):
1. the luma Y = 0.299 R + 0.587 G + 0.114 B of the image scaled to 0-255, then mapped to the studio
   range as that code does: (Y * 219 + 16) / 255;
2. scipy's `ndimage.sobel` of Y along the last axis (horizontal differences; signed, not a magnitude);
3. its one-pixel border set to 0, then divided by its maximum (a map whose maximum is 0 becomes all
   ones, as there);
4. grey dilation (the maximum) over the 5x5 disk `DILATION_FOOTPRINT`, then divided by 255.

A region farther than 3 pixels from any change of Y has zero activity: its pixels never move.
Each of the `steps` Adam steps (lr 0.005, torch's defaults otherwise) minimizes
1 - direction * score / score_width, its gradient multiplied by the map; the image is clipped to
[0, 1] after each step. score_width (the benchmark's metric range, 100 by default) matters here:
Adam's epsilon (1e-8) is not small against the masked gradients of a model with small gradients.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from attacks.base import DEFAULT_SCORE_MIDDLE, AttackResult, attack_direction, check_pixels, chunks, eval_mode
from families.base import QualityModel

KORHONEN_LR = 0.005  # the benchmark's Adam learning rate, [0, 1] pixel units
KORHONEN_STEPS = 10  # its number of Adam steps
DEFAULT_SCORE_WIDTH = 100.0  # the benchmark's metric range when it knows none
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B (OpenCV's RGB -> YCrCb)
STUDIO_SCALE, STUDIO_OFFSET = 235 - 16, 16  # the code's mapping of Y to the studio range, then / 255
DILATION_FOOTPRINT = np.array([[0, 1, 1, 1, 0],
                               [1, 1, 1, 1, 1],
                               [1, 1, 1, 1, 1],
                               [1, 1, 1, 1, 1],
                               [0, 1, 1, 1, 0]], dtype=bool)


def _activity(rgb: np.ndarray) -> np.ndarray:
    """The map (H, W) float32 of one image (H, W, 3) float32 on the 0-255 scale."""
    weights = [np.float32(weight) for weight in LUMA]
    luma = rgb[:, :, 0] * weights[0] + rgb[:, :, 1] * weights[1] + rgb[:, :, 2] * weights[2]
    luma = (luma * STUDIO_SCALE + STUDIO_OFFSET) / np.float32(255)
    edges = ndimage.sobel(luma)  # along the last axis, mode 'reflect', float32
    inner = np.zeros_like(edges)
    inner[1:-1, 1:-1] = edges[1:-1, 1:-1]
    largest = inner.max()
    if largest == 0:
        inner, largest = inner + 1, 1
    # The footprint is symmetric and its rows and columns shrink towards its edges, so reflecting the
    # border (scipy's default) finds the maximum OpenCV finds over the pixels inside the image.
    return ndimage.grey_dilation(inner / largest, footprint=DILATION_FOOTPRINT) / np.float32(255)


def spatial_activity_map(pixels: torch.Tensor) -> torch.Tensor:
    """The spatial-activity map (B, 1, H, W) float32 of pixel images (B, 3, H, W) in [0, 1] (see the
    module docstring), on the images' device."""
    check_pixels(pixels)
    scaled = (pixels.detach().float() * 255).cpu().permute(0, 2, 3, 1).numpy()
    maps = np.stack([_activity(np.ascontiguousarray(image)) for image in scaled])[:, None]
    return torch.from_numpy(maps.astype(np.float32)).to(pixels.device)


def _korhonen_chunk(model: QualityModel, clean: torch.Tensor, lr: float, steps: int, middle: float,
                    score_width: float) -> AttackResult:
    activity = spatial_activity_map(clean).to(clean.dtype)
    adversarial = clean.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([adversarial], lr=lr)
    direction, clean_scores = None, None
    for _ in range(steps):
        scores = model(adversarial)
        if direction is None:  # the first step scores the clean images: they choose the directions
            clean_scores = scores.detach().clone()
            direction = attack_direction(clean_scores, middle)
        loss = (1 - direction * scores / score_width).sum()  # the benchmark's loss, per image
        (grad,) = torch.autograd.grad(loss, adversarial)
        adversarial.grad = grad * activity
        optimizer.step()
        with torch.no_grad():
            adversarial.clamp_(0.0, 1.0)
    return AttackResult(adversarial.detach(), clean_scores)


def korhonen(model: QualityModel, pixels: torch.Tensor, lr: float = KORHONEN_LR, steps: int = KORHONEN_STEPS,
             middle: float = DEFAULT_SCORE_MIDDLE, chunk_size: int | None = None,
             score_width: float = DEFAULT_SCORE_WIDTH) -> AttackResult:
    """The benchmark's Korhonen-You attack on pixel images (B, 3, H, W) in [0, 1] (see the module
    docstring): `steps` Adam steps of learning rate `lr` on the image, the gradient of
    1 - direction * score / score_width masked by the image's spatial-activity map. No eps bound.
    Adam works per pixel, so each image's result is that of the image alone."""
    check_pixels(pixels)
    if not lr > 0 or not score_width > 0:
        raise ValueError(f"lr and score_width must be > 0, got lr={lr}, score_width={score_width}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with eval_mode(model):
        results = [_korhonen_chunk(model, chunk.detach(), lr, steps, middle, score_width)
                   for chunk in chunks(pixels, chunk_size)]
    return AttackResult(torch.cat([r.adversarial for r in results]), torch.cat([r.clean_scores for r in results]))
