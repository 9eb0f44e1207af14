"""Adversarial training (AT), the natural competitor of NT, in the same training step.

After Chistyakova et al., "Increasing the Robustness of Image Quality Assessment Models through
Adversarial Training" (Technologies, 2024): the model trains on adversarial patches made against
itself during training, and the label of an adversarial patch is lowered in proportion to the
damage the perturbation does to it, measured by SSIM.

One training step with `--adv_train fgsm|pgd` (`adversarial_batch`):

1. The loader's batch, B ImageNet-normalized 8-bit patches, is mapped back to pixels in [0, 1]:
   denormalized, then rounded to the 256 levels, which recovers the loader's patches exactly.
2. The first k = round(adv_ratio * B) patches (halves rounded up, at least one) are attacked. The
   loader's batches are already a random permutation of all patches, so the first k are a random
   share of the batch, with no further random draw.
3. They are attacked through `attacks.run_attack` against the current model: fgsm is one step of
   eps; pgd starts uniformly in the eps-ball, its draw from the stream (seed,
   seeding.ADVERSARIAL_TRAINING, round, epoch, step), so a resumed run crafts the same examples.
   Direction (`adv_direction`): 'away' is the evaluation attacks' rule, push a score above the
   middle of the data set's score range down and the others up; 'up' raises the predicted quality
   (on DMOS scales, where higher is worse, it lowers the score). The attacks run the model in eval
   mode, so BatchNorm uses its running statistics while the examples are crafted; the model's
   training mode is restored before the loss.
4. Labels (`adv_label`): 'keep', the MOS; 'ssim', mos - adv_lambda * (1 - SSIM(x, x_adv)) *
   (high - low), with [low, high] the data set's score range, clamped to that range (on DMOS scales
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
import models
from models import ScoreModel
from ssim import ssim
from train_config import TrainConfig


class AdversarialBatch(NamedTuple):
    images: torch.Tensor  # (B, 3, H, W) normalized: the first `count` patches adversarial, the rest as given
    labels: torch.Tensor  # (B,) the training targets: corrected labels, then the MOS of the clean patches
    count: int  # adversarial patches, at the front of the batch
    similarity: torch.Tensor  # (count,) SSIM between each adversarial patch and its clean version


def adversarial_count(batch_size: int, ratio: float) -> int:
    """How many of a batch's `batch_size` patches are made adversarial: round(ratio * batch_size),
    halves rounded up, at least 1 and at most batch_size."""
    return min(batch_size, max(1, math.floor(ratio * batch_size + 0.5)))


def normalized_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalized 8-bit patches (B, 3, H, W), as the loader makes them, back to their pixels
    in [0, 1] (same shape): exactly the loader's uint8 values / 255."""
    return attacks.quantize_8bit(models.denormalize(images))


def attack_middle(direction: str, dataset: str) -> float:
    """The `middle` of attacks.run_attack for `direction` on `dataset`'s scale: 'away', the middle of
    its score range; 'up', whatever makes every attack raise the predicted quality (+inf on MOS
    scales: always raise the score; -inf on DMOS scales: always lower it)."""
    if direction == "away":
        low, high = folders.SCORE_RANGES[dataset]
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


def adversarial_batch(score_model: ScoreModel, images: torch.Tensor, mos: torch.Tensor, config: TrainConfig,
                      generator: torch.Generator | None = None) -> AdversarialBatch:
    """The batch a step of adversarial training learns from (see the module docstring).

    score_model: the model to attack (the plain module, not a DistributedDataParallel wrapper);
    images: (B, 3, H, W) ImageNet-normalized 8-bit patches; mos: (B,) labels; config: the run's
    adv_* settings and data set; generator: PGD's random start (None: torch's global generator).
    """
    count = adversarial_count(images.shape[0], config.adv_ratio)
    clean = normalized_to_pixels(images[:count])
    alpha, steps = config.adversarial_attack()
    result = attacks.run_attack(config.adv_train, score_model, clean, config.adv_eps, alpha, steps,
                                middle=attack_middle(config.adv_direction, config.dataset), generator=generator)
    similarity = ssim(clean, result.adversarial)
    labels = mos[:count]
    if config.adv_label == "ssim":
        labels = corrected_labels(labels, similarity, config.adv_lambda, folders.SCORE_RANGES[config.dataset],
                                  higher_is_better=config.dataset not in folders.HIGHER_IS_WORSE)
    mixed = torch.cat([models.normalize(result.adversarial).to(images.dtype), images[count:]])
    return AdversarialBatch(mixed, torch.cat([labels, mos[count:]]), count, similarity)
