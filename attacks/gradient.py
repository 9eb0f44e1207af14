"""Gradient attacks (untargeted, l_inf, pixel space), batched over images in chunks.

- `iterative_fgsm`: the released FGSM demo's attack (Kurakin et al., "Adversarial examples in the
  physical world", 2016): `steps` steps of `alpha * sign(grad)`, each followed by projection onto
  the eps-ball around the clean image and clipping to [0, 1].
- `fgsm`: one step of size eps (Goodfellow et al., "Explaining and Harnessing Adversarial
  Examples", ICLR 2015).
- `pgd`: iterative FGSM from a uniform random start in the eps-ball (Madry et al., "Towards Deep
  Learning Models Resistant to Adversarial Attacks", ICLR 2018); with `restarts`, several starts, and
  per image the one that moved the score most.
- `mifgsm`: iterative FGSM along the sign of a momentum of l1-normalized gradients (Dong et al.,
  "Boosting Adversarial Attacks with Momentum", CVPR 2018).

Direction, per image: lower the score when the clean score is above the middle of the score range
(50 by default), raise it otherwise, as released; every attack maximizes the score change in that
direction. The released demo judged the clean score of the un-normalized image; here it is the
model's real score of the normalized image. The model is a quality model (pixels -> scores, see
attacks/base.py), whatever its family.
"""
from __future__ import annotations

from typing import Sequence

import torch

from attacks.base import (DEFAULT_EPS, DEFAULT_SCORE_MIDDLE, AttackResult, attack_direction, check_pixels, chunks,
                          eval_mode, keep_better, score_patches)
from families.base import QualityModel

DEFAULT_ALPHA = 0.01  # step size in pixel units, the released default
DEFAULT_STEPS = 1  # the released default: one step of 0.01
PGD_STEPS = 10  # PGD's default number of steps in a sweep
PGD_STEP_FRACTION = 2.5  # PGD's default step size: 2.5 * eps / steps (Madry et al.), so the steps can cross the ball
MIFGSM_STEPS = 10  # MI-FGSM's default: 10 steps of eps / 10 (Dong et al.)
MIFGSM_MOMENTUM = 1.0  # decay factor mu of the accumulated gradient (Dong et al.)


def _projected_sign_steps(model: QualityModel, pixels: torch.Tensor, eps: float, alpha: float, steps: int,
                          middle: float, start: torch.Tensor | None, momentum: float | None = None, *,
                          normalized: bool = True, whole_perturbation: bool = False) -> AttackResult:
    """The attack on one chunk (B, 3, H, W) in [0, 1]; `start`: None (the clean image) or a start point;
    `momentum`: None (step along the gradient's sign) or MI-FGSM's decay factor, of a momentum of
    l1-normalized gradients (`normalized`) or of raw ones; `whole_perturbation`: the perturbation is
    kept whole (projected onto the eps-ball only) and the image clipped to [0, 1] where it is scored,
    rather than the image clipped after every step (the two differ where a pixel meets 0 or 1)."""
    clean = pixels.detach()
    direction = None
    if start is not None:
        with torch.inference_mode():
            clean_scores = model(clean)
        clean_scores = clean_scores.clone()
        direction = attack_direction(clean_scores, middle)
    adversarial = clean.clone() if start is None else start.detach().clone()
    accumulated = torch.zeros_like(clean)  # MI-FGSM's momentum of (l1-normalized) gradients
    perturbation = adversarial - clean  # kept whole with `whole_perturbation`
    for _ in range(steps):
        adversarial.requires_grad_(True)
        scores = model(adversarial)
        if direction is None:  # first step from the clean image: its scores choose the directions
            clean_scores = scores.detach().clone()
            direction = attack_direction(clean_scores, middle)
        (grad,) = torch.autograd.grad((scores * direction).sum(), adversarial)
        with torch.no_grad():
            if momentum is not None:
                if normalized:  # a vanishing gradient adds nothing (rather than 0 / 0)
                    grad = grad / grad.abs().sum(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
                accumulated = momentum * accumulated + grad
                grad = accumulated
            if whole_perturbation:
                perturbation = (perturbation + alpha * grad.sign()).clamp_(-eps, eps)
                adversarial = (clean + perturbation).clamp_(0.0, 1.0)
            else:
                adversarial = adversarial + alpha * grad.sign()
                adversarial = torch.min(torch.max(adversarial, clean - eps), clean + eps).clamp_(0.0, 1.0)
    return AttackResult(adversarial.detach(), clean_scores)


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def _check_budget(eps: float, alpha: float, steps: int) -> None:
    if not eps > 0 or not alpha > 0:
        raise ValueError(f"eps and alpha must be > 0, got eps={eps}, alpha={alpha}")
    _check_steps(steps)


def pgd_step_size(eps: float, steps: int) -> float:
    """PGD's default step size (pixel units) at l_inf radius `eps` in `steps` steps:
    PGD_STEP_FRACTION * eps / steps. ValueError for steps < 1."""
    _check_steps(steps)
    return PGD_STEP_FRACTION * eps / steps


def mifgsm_step_size(eps: float, steps: int) -> float:
    """MI-FGSM's default step size (pixel units): eps / steps (Dong et al.). ValueError for steps < 1."""
    _check_steps(steps)
    return eps / steps


def _uniform_noise(shape: torch.Size, generator: torch.Generator | Sequence[torch.Generator] | None,
                   dtype: torch.dtype) -> torch.Tensor:
    """Uniform noise in [0, 1) of `shape` (B, ...) on the CPU: from one generator for the whole batch,
    or image i's from generator i alone (then an image's draw does not depend on its batch)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"one generator per image: got {len(generator)} generators for {shape[0]} images")
    noise = torch.empty(shape, dtype=dtype)
    for image, image_generator in zip(noise, generator):  # filled in place: what torch.rand would draw
        image.uniform_(0.0, 1.0, generator=image_generator)
    return noise


def _attack(model: QualityModel, pixels: torch.Tensor, eps: float, alpha: float, steps: int, middle: float,
            chunk_size: int | None, start: torch.Tensor | None = None, momentum: float | None = None,
            **variant: bool) -> AttackResult:
    """The projected sign steps on every chunk; `variant`: `_projected_sign_steps`'s keyword options."""
    check_pixels(pixels)
    _check_budget(eps, alpha, steps)
    starts = [None] * len(chunks(pixels, chunk_size)) if start is None else chunks(start, chunk_size)
    with eval_mode(model):
        results = [_projected_sign_steps(model, chunk, eps, alpha, steps, middle, chunk_start, momentum, **variant)
                   for chunk, chunk_start in zip(chunks(pixels, chunk_size), starts)]
    return AttackResult(torch.cat([r.adversarial for r in results]), torch.cat([r.clean_scores for r in results]))


def iterative_fgsm(model: QualityModel, pixels: torch.Tensor, eps: float = DEFAULT_EPS, alpha: float = DEFAULT_ALPHA,
                   steps: int = DEFAULT_STEPS, middle: float = DEFAULT_SCORE_MIDDLE,
                   chunk_size: int | None = None) -> AttackResult:
    """Iterative FGSM, the released demo's attack, on pixel images (B, 3, H, W) in [0, 1].

    eps: l_inf radius (pixel units); alpha: step size (pixel units); steps: number of steps;
    middle: the score above which an image's score is pushed down (else up). Returns the adversarial
    images (unrounded) and the clean scores.
    """
    return _attack(model, pixels, eps, alpha, steps, middle, chunk_size)


def fgsm(model: QualityModel, pixels: torch.Tensor, eps: float = DEFAULT_EPS, middle: float = DEFAULT_SCORE_MIDDLE,
         chunk_size: int | None = None) -> AttackResult:
    """FGSM: one step of size `eps` (pixel units) along the gradient sign, clipped to [0, 1]."""
    return _attack(model, pixels, eps, eps, 1, middle, chunk_size)


def pgd(model: QualityModel, pixels: torch.Tensor, eps: float = DEFAULT_EPS, alpha: float | None = None,
        steps: int = PGD_STEPS, middle: float = DEFAULT_SCORE_MIDDLE,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        chunk_size: int | None = None, restarts: int = 1) -> AttackResult:
    """PGD: iterative FGSM from a start drawn uniformly in the eps-ball (clipped to [0, 1]), `steps`
    steps of `alpha` (default `pgd_step_size(eps, steps)`, pixel units).

    The start is drawn for the whole batch from `generator` (on the CPU), so the result does not
    depend on `chunk_size`; or, given one generator per image, each image's start from its own
    generator, so that it does not depend on the other images of the batch. Directions come from the clean images' scores. With `restarts` > 1 the
    attack runs from that many starts (drawn one after the other, the first one as with one restart)
    and keeps, per image, the adversarial image whose (unrounded) score moved most in its direction:
    one extra forward pass per restart.
    """
    check_pixels(pixels)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    alpha = pgd_step_size(eps, steps) if alpha is None else alpha
    best, best_gain = None, None
    for _ in range(restarts):
        noise = _uniform_noise(pixels.shape, generator, pixels.dtype).to(pixels.device)
        start = (pixels.detach() + (2 * noise - 1) * eps).clamp(0.0, 1.0)
        result = _attack(model, pixels, eps, alpha, steps, middle, chunk_size, start)
        if restarts == 1:
            return result
        gain = attack_direction(result.clean_scores, middle) * (
            score_patches(model, result.adversarial, chunk_size) - result.clean_scores)
        if best is None:
            best, best_gain = result.adversarial, gain
        else:
            best, best_gain = keep_better(best, best_gain, result.adversarial, gain)
    return AttackResult(best, result.clean_scores)


def mifgsm(model: QualityModel, pixels: torch.Tensor, eps: float = DEFAULT_EPS, alpha: float | None = None,
           steps: int = MIFGSM_STEPS, middle: float = DEFAULT_SCORE_MIDDLE, chunk_size: int | None = None,
           momentum: float = MIFGSM_MOMENTUM) -> AttackResult:
    """MI-FGSM on pixel images (B, 3, H, W) in [0, 1]: `steps` steps of `alpha` (default eps / steps,
    pixel units) along the sign of g_t = momentum * g_(t-1) + grad_t / ||grad_t||_1 (l1 norm per
    image), each followed by projection onto the eps-ball and clipping to [0, 1]. With momentum 0
    it is iterative FGSM."""
    alpha = mifgsm_step_size(eps, steps) if alpha is None else alpha
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    return _attack(model, pixels, eps, alpha, steps, middle, chunk_size, momentum=momentum)
