"""Adversarial attacks on quality models, and the batched scoring and gradient norms of images.

Every attack takes a quality model (families.base.QualityModel: pixels in [0, 1] (B, 3, H, W) ->
scores (B,), the family's normalization inside) of any family, and pixel images; it never modifies
its input and stays in the eps-ball and in [0, 1]. One file per kind of attack, one registry here:

- attacks/gradient.py: fgsm, ifgsm (the released demo's), pgd (with restarts), mifgsm;
- attacks/square.py: the gradient-free square attack;
- attacks/base.py: the result type, the direction rule, chunking, scoring, gradient norms, rounding
  to 8 bits (the input defenses, JPEG re-compression among them, are in defenses.py).

`run_attack(name, ...)` runs any of ATTACKS; `attack_settings` gives each one's default step size and
number of steps at an eps.

Example:
    model = models.load_model("checkpoints/livec_bs16_grad[0]_weight[0.0].pth")
    result = iterative_fgsm(model, patches, eps=0.03, alpha=0.01, steps=1)   # patches in [0, 1]
    attacked = score_patches(model, quantize_8bit(result.adversarial))
    gradient_free = square(model, patches, eps=0.03, queries=1000, generator=torch.Generator().manual_seed(0))
"""
from __future__ import annotations

import math

import torch

from attacks.base import (CPU_CHUNK_SIZE, CUDA_CHUNK_SIZE, DEFAULT_EPS, DEFAULT_SCORE_MIDDLE, LOWER, RAISE,  # noqa: F401
                          AttackResult, attack_direction, default_chunk_size, quantize_8bit,
                          score_patches, scores_and_gradient_norms)
from attacks.gradient import (DEFAULT_ALPHA, DEFAULT_STEPS, MIFGSM_MOMENTUM, MIFGSM_STEPS, PGD_STEP_FRACTION,  # noqa: F401
                              PGD_STEPS, fgsm, iterative_fgsm, mifgsm, pgd)
from attacks.square import (SQUARE_HALVING_MILESTONES, SQUARE_P_INIT, SQUARE_QUERIES, SQUARE_SCHEDULE_QUERIES,  # noqa: F401
                            square, square_fraction, square_side)
from families.base import QualityModel

ATTACKS = ("fgsm", "ifgsm", "pgd", "mifgsm", "square")


def attack_settings(name: str, eps: float, alpha: float | None = None, steps: int | None = None,
                    queries: int | None = None) -> tuple[float, int]:
    """(step size, steps) that attack `name` runs with at `eps`, `alpha`, `steps` and `queries` filling
    in what is given: fgsm is one step of eps; ifgsm defaults to the released demo's one step of 0.01;
    pgd to PGD_STEPS steps of PGD_STEP_FRACTION * eps / steps; mifgsm to MIFGSM_STEPS steps of
    eps / steps. square has no step size (NaN; each pixel sits at clean +- eps) and runs `queries`
    queries (default SQUARE_QUERIES) whatever `alpha` and `steps` say."""
    if name == "fgsm":
        return eps, 1
    if name == "ifgsm":
        return (DEFAULT_ALPHA if alpha is None else alpha), (DEFAULT_STEPS if steps is None else steps)
    if name == "pgd":
        steps = PGD_STEPS if steps is None else steps
        return (PGD_STEP_FRACTION * eps / steps if alpha is None else alpha), steps
    if name == "mifgsm":
        steps = MIFGSM_STEPS if steps is None else steps
        return (eps / steps if alpha is None else alpha), steps
    if name == "square":
        return math.nan, (SQUARE_QUERIES if queries is None else queries)
    raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")


def run_attack(name: str, model: QualityModel, pixels: torch.Tensor, eps: float, alpha: float, steps: int,
               middle: float = DEFAULT_SCORE_MIDDLE, generator: torch.Generator | None = None,
               chunk_size: int | None = None, *, restarts: int = 1) -> AttackResult:
    """Run attack `name` (one of ATTACKS) at l_inf radius `eps` with step size `alpha` (both pixel
    units) and `steps` steps; for square, `steps` is the number of queries per image and `alpha` is
    ignored. fgsm ignores alpha and steps; only pgd and square draw from `generator`; only pgd uses
    `restarts`. The other settings (momentum, p_init) are the defaults of `mifgsm` and `square`."""
    if name == "fgsm":
        return fgsm(model, pixels, eps, middle, chunk_size)
    if name == "ifgsm":
        return iterative_fgsm(model, pixels, eps, alpha, steps, middle, chunk_size)
    if name == "pgd":
        return pgd(model, pixels, eps, alpha, steps, middle, generator, chunk_size, restarts)
    if name == "mifgsm":
        return mifgsm(model, pixels, eps, alpha, steps, middle, chunk_size)
    if name == "square":
        return square(model, pixels, eps, steps, middle, generator, chunk_size)
    raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
