"""Adversarial training (AT), the natural competitor of NT, in the same training step.

After Chistyakova et al., "Increasing the Robustness of Image Quality Assessment Models through
Adversarial Training" (Technologies, 2024): the model trains on adversarial patches made against
itself during training, and the label of an adversarial patch is lowered in proportion to the
damage the perturbation does to it, measured by SSIM.

One training step with `--adv_train fgsm|pgd` (`adversarial_batch`), for any family:

1. The loader's batch holds B views (patches, crops or whole images) as pixels in [0, 1].
2. The first k = round(adv_ratio * B) patches (halves rounded up, at least one) are attacked. The
   loader's batches are already a random permutation of all patches, so the first k are a random
   share of the batch, with no further random draw.
3. They are attacked through `attacks.run_attack` against the current model: fgsm is one step of
   eps; pgd starts uniformly in the eps-ball, its draw from the stream (seed,
   seeding.ADVERSARIAL_TRAINING, round, epoch, step), so a resumed run crafts the same examples.
   Direction (`adv_direction`): 'away' is the evaluation attacks' rule, push a score above the
   middle of the model's score range (the data set's, or the family's own) down and the others up; 'up' raises the predicted quality
   (on DMOS scales, where higher is worse, it lowers the score). The attacks run the model in eval
   mode, so BatchNorm uses its running statistics while the examples are crafted; the model's
   training mode is restored before the loss.
4. Labels (`adv_label`): 'keep', the MOS; 'ssim', mos - adv_lambda * (1 - SSIM(x, x_adv)) *
   (high - low), with [low, high] the model's score range, clamped to that range (on DMOS scales
   the correction is added: a damaged image is worse).
5. The batch keeps its B patches: the k adversarial ones stand in place of their clean versions,
   the other B - k stay clean. The training loss (HyperIQASolver.training_loss) is the L1 loss on
   this mixed batch; with `--if_grad`, NT's penalty is also taken on the mixed batch, at the points
   the model trains on. (Chistyakova et al. append an adversarial copy of every patch, a batch of
   2B; keeping B patches gives every step as many patches as the baseline's and NT's.)
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

import attacks
import folders
from families.base import QualityModel
from ssim import ssim
from train_config import TrainConfig


class AdversarialBatch(NamedTuple):
    pixels: torch.Tensor  # (B, 3, H, W) in [0, 1]: the first `count` views adversarial, the rest as given
    labels: torch.Tensor  # (B,) the training targets: corrected labels, then the MOS of the clean patches
    count: int  # adversarial patches, at the front of the batch
    similarity: torch.Tensor  # (count,) SSIM between each adversarial patch and its clean version


def adversarial_count(batch_size: int, ratio: float) -> int:
    """How many of a batch's `batch_size` patches are made adversarial: round(ratio * batch_size),
    halves rounded up, at least 1 and at most batch_size."""
    return min(batch_size, max(1, math.floor(ratio * batch_size + 0.5)))


def attack_middle(direction: str, dataset: str, score_range: tuple[float, float]) -> float:
    """The `middle` of attacks.run_attack for `direction` on `dataset`, whose scores span `score_range`:
    'away', the middle of that range; 'up', whatever makes every attack raise the predicted quality
    (+inf on MOS scales: always raise the score; -inf on DMOS scales: always lower it)."""
    if direction == "away":
        low, high = score_range
        return (low + high) / 2
    if direction == "up":
        return -math.inf if dataset in folders.HIGHER_IS_WORSE else math.inf
    raise ValueError(f"unknown attack direction {direction!r}; valid: away, up")


def corrected_labels(mos: torch.Tensor, similarity: torch.Tensor, weight: float, score_range: tuple[float, float],
                     higher_is_better: bool = True) -> torch.Tensor:
    """Labels (k,) of adversarial patches: mos (k,) moved towards worse quality by
    weight * (1 - similarity) * (high - low), clamped to the score range [low, high].
    similarity (k,): SSIM between each adversarial patch and its clean version."""
    low, high = score_range
    damage = weight * (1 - similarity.to(mos.dtype)) * (high - low)
    return (mos - damage if higher_is_better else mos + damage).clamp(low, high)


def adversarial_batch(model: QualityModel, pixels: torch.Tensor, mos: torch.Tensor, config: TrainConfig,
                      score_range: tuple[float, float], generator: torch.Generator | None = None) -> AdversarialBatch:
    """The batch a step of adversarial training learns from (see the module docstring).

    model: the quality model to attack (its plain network, not a DistributedDataParallel wrapper);
    pixels: (B, 3, H, W) views in [0, 1]; mos: (B,) labels; config: the run's adv_* settings and data
    set; score_range: (low, high) of the model's scores; generator: PGD's random start (None:
    torch's global generator).
    """
    count = adversarial_count(pixels.shape[0], config.adv_ratio)
    clean = pixels[:count]
    alpha, steps = config.adversarial_attack()
    result = attacks.run_attack(config.adv_train, model, clean, config.adv_eps, alpha, steps,
                                middle=attack_middle(config.adv_direction, config.dataset, score_range),
                                generator=generator)
    similarity = ssim(clean, result.adversarial)
    labels = mos[:count]
    if config.adv_label == "ssim":
        labels = corrected_labels(labels, similarity, config.adv_lambda, score_range,
                                  higher_is_better=config.dataset not in folders.HIGHER_IS_WORSE)
    mixed = torch.cat([result.adversarial.to(pixels.dtype), pixels[count:]])
    return AdversarialBatch(mixed, torch.cat([labels, mos[count:]]), count, similarity)
