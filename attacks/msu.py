"""The sign attacks of the MSU metrics robustness benchmark (Antsiferova et al., "Comparing the
Robustness of Modern No-Reference Image- and Video-Quality Metrics to Adversarial Attacks", AAAI
2024; code: msu-video-group/MSU_Metrics_Robustness_Benchmark, methods/*/run.py), as that code runs
them: the mathematics of attacks/gradient.py (one code path), with the benchmark's defaults.

- `msu_ifgsm`: 10 steps of 1/255 along the gradient's sign within the l_inf ball of 10/255. The
  benchmark keeps the perturbation whole (clipped to the ball only) and clips the image to [0, 1]
  where it is scored, where our `iterative_fgsm` clips the image after every step: the two differ
  where a pixel meets 0 or 1.
- `msu_mifgsm`: the same along the sign of a momentum (decay 1.0) of the RAW gradients (Dong et al.
  normalize each gradient by its l1 norm; the benchmark does not).
- `amifgsm`: 10 steps of eps / 10 along the sign of the same momentum, the image clipped to [0, 1]
  after every step, and no projection: the steps alone keep it in the eps-ball.
- `std_fgsm`: one step of 10/255 (our `fgsm`).

The benchmark raises the score (its loss is 1 - score / range); here the direction follows `middle`
like every attack (attacks/base.py): +inf raises every score, as the benchmark does. Its loss divides
the score by the metric's range; a positive scale changes no sign, so it is left out.
"""
from __future__ import annotations

import math

import torch

from attacks.base import DEFAULT_SCORE_MIDDLE, AttackResult
from attacks.gradient import _attack, fgsm
from families.base import QualityModel

MSU_EPS = 10 / 255  # the benchmark's l_inf bound of its sign attacks, [0, 1] pixel units
MSU_ALPHA = 1 / 255  # its step size of I-FGSM and MI-FGSM
MSU_STEPS = 10  # its number of steps of the iterative attacks
MSU_MOMENTUM = 1.0  # its decay factor of the momentum of raw gradients


def msu_ifgsm(model: QualityModel, pixels: torch.Tensor, eps: float = MSU_EPS, alpha: float = MSU_ALPHA,
              steps: int = MSU_STEPS, middle: float = DEFAULT_SCORE_MIDDLE,
              chunk_size: int | None = None) -> AttackResult:
    """The benchmark's I-FGSM on pixel images (B, 3, H, W) in [0, 1]: `steps` steps of `alpha` (pixel
    units) along the gradient's sign, the perturbation clipped to [-eps, eps], the image
    clean + perturbation clipped to [0, 1] where it is scored and at the end."""
    return _attack(model, pixels, eps, alpha, steps, middle, chunk_size, whole_perturbation=True)


def msu_mifgsm(model: QualityModel, pixels: torch.Tensor, eps: float = MSU_EPS, alpha: float = MSU_ALPHA,
               steps: int = MSU_STEPS, middle: float = DEFAULT_SCORE_MIDDLE, chunk_size: int | None = None,
               momentum: float = MSU_MOMENTUM) -> AttackResult:
    """The benchmark's MI-FGSM: `msu_ifgsm` along the sign of g_t = momentum * g_(t-1) + grad_t, the
    raw gradients (not l1-normalized)."""
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    return _attack(model, pixels, eps, alpha, steps, middle, chunk_size, momentum=momentum, normalized=False,
                   whole_perturbation=True)


def amifgsm(model: QualityModel, pixels: torch.Tensor, eps: float = MSU_EPS, alpha: float | None = None,
            steps: int = MSU_STEPS, middle: float = DEFAULT_SCORE_MIDDLE, chunk_size: int | None = None,
            momentum: float = MSU_MOMENTUM) -> AttackResult:
    """The benchmark's AMI-FGSM: `steps` steps of `alpha` (default eps / steps, pixel units) along the
    sign of the momentum of raw gradients, the image clipped to [0, 1] after each step and never
    projected onto the eps-ball: with the default step it stays in the ball by construction; a
    larger `alpha` takes it out."""
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    alpha = eps / steps if alpha is None else alpha
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return _attack(model, pixels, math.inf, alpha, steps, middle, chunk_size, momentum=momentum, normalized=False)


def std_fgsm(model: QualityModel, pixels: torch.Tensor, eps: float = MSU_EPS, middle: float = DEFAULT_SCORE_MIDDLE,
             chunk_size: int | None = None) -> AttackResult:
    """The benchmark's FGSM: one step of `eps` (default 10/255) along the gradient's sign, clipped to
    [0, 1]; our `fgsm` with the benchmark's eps."""
    return fgsm(model, pixels, eps, middle, chunk_size)
