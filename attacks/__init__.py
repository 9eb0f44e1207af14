"""Adversarial attacks on quality models, and the batched scoring and gradient norms of images.

Every attack takes a quality model (families.base.QualityModel: pixels in [0, 1] (B, 3, H, W) ->
scores (B,), the family's normalization inside) of any family, and pixel images; it never modifies
its input and, unless its file says otherwise, stays in the eps-ball and in [0, 1]. One file per
kind of attack, one registry here:

- attacks/gradient.py: fgsm, ifgsm (the released demo's), pgd (with restarts), mifgsm;
- attacks/square.py: the gradient-free square attack;
- the attacks of the MSU metrics robustness benchmark, as its code runs them: attacks/msu.py
  (msu-ifgsm, msu-mifgsm, amifgsm, std-fgsm: gradient.py's code path with the benchmark's
  defaults), attacks/madc.py (madc: eps bounds the RMSE, not each pixel), attacks/korhonen.py
  (korhonen: Adam masked by spatial activity, no eps bound) and attacks/uap.py (uap: a universal
  perturbation trained once per model, added at amplitude eps / 0.1, not clipped to [0, 1]);
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
from typing import Sequence

import torch

from attacks.base import (CPU_CHUNK_SIZE, CUDA_CHUNK_SIZE, DEFAULT_EPS, DEFAULT_SCORE_MIDDLE, LOWER, RAISE,  # noqa: F401
                          AttackResult, attack_direction, default_chunk_size, quantize_8bit,
                          score_patches, scores_and_gradient_norms)
from attacks.gradient import (DEFAULT_ALPHA, DEFAULT_STEPS, MIFGSM_MOMENTUM, MIFGSM_STEPS, PGD_STEP_FRACTION,  # noqa: F401
                              PGD_STEPS, fgsm, iterative_fgsm, mifgsm, mifgsm_step_size, pgd, pgd_step_size)
from attacks.korhonen import KORHONEN_LR, KORHONEN_STEPS, korhonen, spatial_activity_map  # noqa: F401
from attacks.madc import MADC_ALPHA, MADC_STEPS, madc, rmse_to  # noqa: F401
from attacks.msu import MSU_ALPHA, MSU_EPS, MSU_MOMENTUM, MSU_STEPS, amifgsm, msu_ifgsm, msu_mifgsm, std_fgsm  # noqa: F401
from attacks.uap import (UAP_AMPLITUDES, UAP_BOUND, apply_uap, load_uap, save_uap, train_uap,  # noqa: F401
                         training_crop, uap_attack)
from attacks.square import (SQUARE_HALVING_MILESTONES, SQUARE_P_INIT, SQUARE_QUERIES, SQUARE_SCHEDULE_QUERIES,  # noqa: F401
                            square, square_fraction, square_side)
from families.base import QualityModel

# The MSU benchmark's attacks, by the names of this project (the benchmark's directories: ifgsm,
# mifgsm, amifgsm, std-fgsm, madc, korhonen-et-al, uap).
BENCHMARK_ATTACKS = ("msu-ifgsm", "msu-mifgsm", "amifgsm", "std-fgsm", "madc", "korhonen", "uap")
ATTACKS = ("fgsm", "ifgsm", "pgd", "mifgsm", "square") + BENCHMARK_ATTACKS
# Those whose result stays in the l_inf eps-ball and in [0, 1] whatever their step size and steps.
LINF_ATTACKS = ("fgsm", "ifgsm", "pgd", "mifgsm", "square", "msu-ifgsm", "msu-mifgsm", "std-fgsm")


def attack_settings(name: str, eps: float, alpha: float | None = None, steps: int | None = None,
                    queries: int | None = None) -> tuple[float, int]:
    """(step size, steps) that attack `name` runs with at `eps`, `alpha`, `steps` and `queries` filling
    in what is given: fgsm is one step of eps; ifgsm defaults to the released demo's one step of 0.01;
    pgd to PGD_STEPS steps of PGD_STEP_FRACTION * eps / steps; mifgsm to MIFGSM_STEPS steps of
    eps / steps (ValueError for steps < 1). square has no step size (NaN; each pixel sits at clean +- eps) and
    runs `queries` queries (default SQUARE_QUERIES) whatever `alpha` and `steps` say. The benchmark's:
    msu-ifgsm and msu-mifgsm default to MSU_STEPS steps of MSU_ALPHA (1/255), amifgsm to MSU_STEPS of
    eps / steps, std-fgsm is one step of eps, madc defaults to MADC_STEPS of MADC_ALPHA, korhonen to
    KORHONEN_STEPS Adam steps of learning rate KORHONEN_LR, and uap is one addition at amplitude
    eps / UAP_BOUND (its "step size")."""
    if name == "fgsm":
        return eps, 1
    if name == "ifgsm":
        return (DEFAULT_ALPHA if alpha is None else alpha), (DEFAULT_STEPS if steps is None else steps)
    if name == "pgd":
        steps = PGD_STEPS if steps is None else steps
        return (pgd_step_size(eps, steps) if alpha is None else alpha), steps
    if name == "mifgsm":
        steps = MIFGSM_STEPS if steps is None else steps
        return (mifgsm_step_size(eps, steps) if alpha is None else alpha), steps
    if name == "square":
        return math.nan, (SQUARE_QUERIES if queries is None else queries)
    defaults = {"msu-ifgsm": (MSU_ALPHA, MSU_STEPS), "msu-mifgsm": (MSU_ALPHA, MSU_STEPS), "madc": (MADC_ALPHA, MADC_STEPS),
                "korhonen": (KORHONEN_LR, KORHONEN_STEPS)}
    if name in defaults:
        return (defaults[name][0] if alpha is None else alpha), (defaults[name][1] if steps is None else steps)
    if name == "amifgsm":
        steps = MSU_STEPS if steps is None else steps
        return (mifgsm_step_size(eps, steps) if alpha is None else alpha), steps
    if name in ("std-fgsm", "uap"):
        return (eps if name == "std-fgsm" else eps / UAP_BOUND), 1
    raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")


def run_attack(name: str, model: QualityModel, pixels: torch.Tensor, eps: float, alpha: float, steps: int,
               middle: float = DEFAULT_SCORE_MIDDLE,
               generator: torch.Generator | Sequence[torch.Generator] | None = None,
               chunk_size: int | None = None, *, restarts: int = 1, score_width: float = 100.0,
               uap: torch.Tensor | None = None) -> AttackResult:
    """Run attack `name` (one of ATTACKS) at l_inf radius `eps` with step size `alpha` (both pixel
    units) and `steps` steps; for square, `steps` is the number of queries per image and `alpha` is
    ignored. fgsm ignores alpha and steps; only pgd and square draw from `generator` (pgd also takes
    one generator per image, see `pgd`); only pgd uses `restarts`. The other settings (momentum,
    p_init) are the defaults of `mifgsm` and `square`. The benchmark's: std-fgsm ignores alpha and
    steps; madc's eps bounds the RMSE; korhonen ignores eps, `alpha` is its Adam learning rate and
    `score_width` (the width of the score range) scales its loss; uap adds the trained perturbation
    `uap` (3, h, w) at amplitude eps / UAP_BOUND and ignores alpha and steps."""
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
    if name == "msu-ifgsm":
        return msu_ifgsm(model, pixels, eps, alpha, steps, middle, chunk_size)
    if name == "msu-mifgsm":
        return msu_mifgsm(model, pixels, eps, alpha, steps, middle, chunk_size)
    if name == "amifgsm":
        return amifgsm(model, pixels, eps, alpha, steps, middle, chunk_size)
    if name == "std-fgsm":
        return std_fgsm(model, pixels, eps, middle, chunk_size)
    if name == "madc":
        return madc(model, pixels, eps, alpha, steps, middle, chunk_size)
    if name == "korhonen":
        return korhonen(model, pixels, alpha, steps, middle, chunk_size, score_width)
    if name == "uap":
        if uap is None:
            raise ValueError("the uap attack needs a trained perturbation (--uap_file, or --uap_train_dir to train one)")
        return uap_attack(model, pixels, uap, eps, chunk_size=chunk_size)
    raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
