"""The MAD-competition attack (Wang and Simoncelli, "Maximum differentiation (MAD) competition: A
methodology for comparing computational models of perceptual quantities", Journal of Vision 2008),
as the MSU metrics robustness benchmark runs it (methods/madc/run.py): move the score as far as
possible while holding the RMSE to the clean image, by steps along the score gradient made
orthogonal to the gradient of that RMSE.

Each of `steps` steps (the benchmark's: 8 of 0.001):
1. g = d score / d x, times the image's direction (attacks/base.py: +1 raises the score, the
   benchmark's goal); from the second step on, g loses its component along r = d RMSE / d x, which
   points along x - clean: g - (g . r) / (r . r) r, per image (the benchmark's first step takes g
   whole, RMSE's gradient being undefined at the clean image);
2. x += alpha * sign(g), not clipped;
3. while the RMSE of x to the clean image exceeds eps: x -= PULL_BACK_STEP * sign(x - clean),
   clipped to [0, 1] (the sign of d RMSE / d x);
4. x clipped to [0, 1] (which can only bring it nearer to the clean image).

eps bounds the RMSE (root mean square over pixels and channels, [0, 1] units), not each pixel.
"""
from __future__ import annotations

import math

import torch

from attacks.base import DEFAULT_SCORE_MIDDLE, AttackResult, attack_direction, check_pixels, chunks, eval_mode
from attacks.msu import MSU_EPS
from families.base import QualityModel

MADC_ALPHA = 0.001  # the benchmark's step along the projected gradient's sign, [0, 1] pixel units
MADC_STEPS = 8  # its number of steps
PULL_BACK_STEP = 0.0005  # its step back towards the clean image while the RMSE exceeds eps


def rmse_to(images: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Root mean squared difference (B,) of images (B, 3, H, W) to `clean`, over pixels and channels."""
    return (images - clean).pow(2).mean(dim=(1, 2, 3)).sqrt()


def _pull_back(adversarial: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Step the images whose RMSE to `clean` exceeds eps back towards it, PULL_BACK_STEP along the sign
    of x - clean and clipped to [0, 1], until none does. Once a pixel is within a step of its clean
    value it oscillates there, so the RMSE ends at most PULL_BACK_STEP < eps: the loop ends."""
    largest = (adversarial - clean).abs().max().item()
    for _ in range(math.ceil(largest / PULL_BACK_STEP) + 2):
        outside = rmse_to(adversarial, clean) > eps
        if not outside.any():
            break
        step = PULL_BACK_STEP * (adversarial - clean).sign()
        adversarial = torch.where(outside[:, None, None, None], (adversarial - step).clamp(0.0, 1.0), adversarial)
    return adversarial


def _madc_chunk(model: QualityModel, clean: torch.Tensor, eps: float, alpha: float, steps: int,
                middle: float) -> AttackResult:
    adversarial, direction, clean_scores = clean.clone(), None, None
    for step in range(steps):
        adversarial.requires_grad_(True)
        scores = model(adversarial)
        if direction is None:  # the first step scores the clean images: they choose the directions
            clean_scores = scores.detach().clone()
            direction = attack_direction(clean_scores, middle)
        (grad,) = torch.autograd.grad((scores * direction).sum(), adversarial)
        with torch.no_grad():
            adversarial = adversarial.detach()
            if step > 0:
                away = adversarial - clean  # along d RMSE / d x
                along = (grad * away).sum(dim=(1, 2, 3), keepdim=True)
                length = (away * away).sum(dim=(1, 2, 3), keepdim=True)
                grad = torch.where(length > 0, grad - along / length.clamp_min(torch.finfo(grad.dtype).tiny) * away,
                                   grad)
            adversarial = _pull_back(adversarial + alpha * grad.sign(), clean, eps).clamp(0.0, 1.0)
    return AttackResult(adversarial, clean_scores)


def madc(model: QualityModel, pixels: torch.Tensor, eps: float = MSU_EPS, alpha: float = MADC_ALPHA,
         steps: int = MADC_STEPS, middle: float = DEFAULT_SCORE_MIDDLE, chunk_size: int | None = None) -> AttackResult:
    """The benchmark's MAD-competition attack on pixel images (B, 3, H, W) in [0, 1] (see the module
    docstring): `steps` steps of `alpha` (pixel units), the RMSE to the clean image kept at most
    `eps` (at least 2 * PULL_BACK_STEP, so that the pull-back can get there). Each image is attacked
    on its own, as the benchmark attacks one image at a time."""
    check_pixels(pixels)
    if not eps >= 2 * PULL_BACK_STEP or not alpha > 0:
        raise ValueError(f"madc needs eps >= {2 * PULL_BACK_STEP} (an RMSE bound) and alpha > 0, got eps={eps}, "
                         f"alpha={alpha}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with eval_mode(model):
        results = [_madc_chunk(model, chunk.detach(), eps, alpha, steps, middle) for chunk in chunks(pixels, chunk_size)]
    return AttackResult(torch.cat([r.adversarial for r in results]), torch.cat([r.clean_scores for r in results]))
