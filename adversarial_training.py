"""Adversarial training (AT), the natural competitor of NT, in the same training step.

After Chistyakova et al., "Increasing the Robustness of Image Quality Assessment Models through
Adversarial Training" (Technologies, 2024; code: wianluna/metrics_at): the model trains on
adversarial patches made against itself during training, and the label of an adversarial patch is
lowered in proportion to the damage the perturbation does to it, measured by SSIM.

One training step with `--adv_train fgsm|pgd` (`adversarial_batch`), for any family:

1. The global batch (over all processes) holds B views (patches, crops or whole images) as pixels in
   [0, 1]. K = round(adv_ratio * B) of them (halves rounded up, at least one) are attacked: those at
   the evenly spaced positions floor(j * B / K), j < K, of the global batch (`adversarial_positions`).
   The loader's batches are already a random permutation of all patches, so these are a random share
   of the batch, with no further random draw; being spread over the batch, they fall evenly on the
   processes' consecutive shares, and they are the same entries whatever the number of processes.
2. They are attacked through `attacks.run_attack` against the current model: fgsm is one step of
   eps; pgd starts uniformly in the eps-ball, each view's start drawn from its own stream (seed,
   seeding.ADVERSARIAL_TRAINING, round, epoch, step, the view's position in the global batch[,
   stage]; `share_crafting`), so a resumed run, and a run with another number of processes, crafts the
   same examples. Direction (`adv_direction`): 'away' is the evaluation attacks' rule, push a score
   above the middle of the model's nominal score range (the data set's, or the family's own) down and
   the others up; 'up' raises the predicted quality (on DMOS scales, where higher is worse, it lowers
   the score). The attacks run the model in eval mode, so BatchNorm uses its running statistics
   while the examples are crafted; the model's training mode is restored before the loss.
3. Labels (`adv_label`): 'keep', the MOS; 'ssim', as Chistyakova et al.'s code,
   clamp(mos - adv_lambda * (1 - SSIM(x, x_adv)) * (MAX - MIN), MIN, MAX), with MIN and MAX the
   lowest and highest MOS of the training set (`adv_label_range` 'train', the default;
   `label_range`), or the ends of the nominal scale ('nominal'). On DMOS scales the correction is
   added: a damaged image is worse.
4. The batch keeps its B patches: the K adversarial ones stand in place of their clean versions,
   the other B - K stay clean. The training loss (training_step.training_loss) is the L1 loss on
   this mixed batch; with `--if_grad`, NT's penalty is also taken on the mixed batch, at the points
   the model trains on. (Chistyakova et al. append an adversarial copy of every patch, a batch of
   2B; keeping B patches gives every step as many patches as the baseline's and NT's.)
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

import attacks
import folders
from data_loader import share_bounds
from families.base import QualityModel
from seeding import ADVERSARIAL_TRAINING, seeded_generator
from ssim import ssim
from train_config import TrainConfig


class AdversarialBatch(NamedTuple):
    pixels: torch.Tensor  # (B, 3, H, W) in [0, 1]: the views at `views` adversarial, the others as given
    labels: torch.Tensor  # (B,) the training targets: corrected labels at `views`, the MOS elsewhere
    views: torch.Tensor  # (K,) int64: the positions in the batch of the adversarial views, increasing
    similarity: torch.Tensor  # (K,) SSIM between each adversarial view and its clean version


def adversarial_count(batch_size: int, ratio: float) -> int:
    """How many of a batch's `batch_size` patches are made adversarial: round(ratio * batch_size),
    halves rounded up, at least 1 and at most batch_size."""
    return min(batch_size, max(1, math.floor(ratio * batch_size + 0.5)))


def adversarial_positions(batch_size: int, ratio: float) -> list[int]:
    """The positions (increasing) of the views made adversarial in a (global) batch of `batch_size`:
    K = adversarial_count(batch_size, ratio) of them, evenly spaced, floor(j * batch_size / K) for
    j < K (0, 2, 4, ... at ratio 0.5)."""
    count = adversarial_count(batch_size, ratio)
    return [j * batch_size // count for j in range(count)]


class ShareCrafting(NamedTuple):
    """The adversarial views of one process's share of a global batch: their positions in the share,
    and for PGD the generator of each one's start (None for fgsm)."""

    views: list[int]
    generators: list[torch.Generator] | None


def share_crafting(config: TrainConfig, keys: Sequence[int], global_length: int, rank: int = 0,
                   world_size: int = 1) -> ShareCrafting:
    """Which views of process `rank`'s share (data_loader.share_of) of a global batch of
    `global_length` entries are made adversarial, and their PGD starts: those at the global batch's
    `adversarial_positions`, the start of the view at global position p drawn from the stream
    (config.seed, ADVERSARIAL_TRAINING, *keys[:3], p, *keys[3:]), keys being (round, epoch, step) and
    the stage after the first. Over the processes, the same entries and starts for any number of them;
    a placeholder share has none."""
    start, stop = share_bounds(global_length, rank, world_size)
    positions = [p for p in adversarial_positions(global_length, config.adv_ratio) if start <= p < stop]
    generators = None
    if config.adv_train == "pgd":
        round_epoch_step, stage = tuple(keys[:3]), tuple(keys[3:])
        generators = [seeded_generator(config.seed, ADVERSARIAL_TRAINING, *round_epoch_step, p, *stage)
                      for p in positions]
    return ShareCrafting([p - start for p in positions], generators)


def label_range(config: TrainConfig, training_mos: Sequence[float],
                nominal: tuple[float, float]) -> tuple[float, float]:
    """[MIN, MAX] of the SSIM label correction: with `config.adv_label_range` 'train', the lowest and
    highest MOS of the training set (`training_mos`), as Chistyakova et al.; with 'nominal', the ends
    of the nominal score scale `nominal` (folders.score_range)."""
    if config.adv_label_range == "nominal":
        return nominal
    values = [float(m) for m in training_mos if math.isfinite(m)]
    if not values:
        raise ValueError("--adv_label_range train needs the MOS of the training images; none has one")
    low, high = min(values), max(values)
    if not high > low:
        raise ValueError(f"every training image has the MOS {low}: --adv_label_range train needs a range; "
                         "use --adv_label_range nominal")
    return low, high


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
    weight * (1 - similarity) * (MAX - MIN), clamped to [MIN, MAX] = `score_range`.
    similarity (k,): SSIM between each adversarial patch and its clean version."""
    low, high = score_range
    damage = weight * (1 - similarity.to(mos.dtype)) * (high - low)
    return (mos - damage if higher_is_better else mos + damage).clamp(low, high)


def adversarial_batch(model: QualityModel, pixels: torch.Tensor, mos: torch.Tensor, config: TrainConfig,
                      score_range: tuple[float, float],
                      generator: torch.Generator | Sequence[torch.Generator] | None = None, *,
                      views: Sequence[int] | None = None,
                      labels_range: tuple[float, float] | None = None) -> AdversarialBatch:
    """The batch a step of adversarial training learns from (see the module docstring).

    model: the quality model to attack (its plain network, not a DistributedDataParallel wrapper);
    pixels: (B, 3, H, W) views in [0, 1]; mos: (B,) labels; config: the run's adv_* settings and data
    set; score_range: (low, high) of the model's nominal score scale (the middle of the 'away'
    direction); generator: PGD's random start, one generator for all the views attacked or one per
    view (None: torch's global generator); views: the positions of the views to attack (None: this
    batch's own `adversarial_positions`; may be empty); labels_range: [MIN, MAX] of the label
    correction (None: score_range; see `label_range`).
    """
    chosen = adversarial_positions(pixels.shape[0], config.adv_ratio) if views is None else list(views)
    index = torch.tensor(chosen, dtype=torch.int64, device=pixels.device)
    if not chosen:  # nothing of this share is attacked
        return AdversarialBatch(pixels, mos, index, pixels.new_zeros(0))
    clean = pixels[index]
    alpha, steps = config.adversarial_attack()
    result = attacks.run_attack(config.adv_train, model, clean, config.adv_eps, alpha, steps,
                                middle=attack_middle(config.adv_direction, config.dataset, score_range),
                                generator=generator)
    similarity = ssim(clean, result.adversarial)
    labels = mos[index]
    if config.adv_label == "ssim":
        labels = corrected_labels(labels, similarity, config.adv_lambda, labels_range or score_range,
                                  higher_is_better=config.dataset not in folders.HIGHER_IS_WORSE)
    mixed, targets = pixels.clone(), mos.clone()
    mixed[index], targets[index] = result.adversarial.to(pixels.dtype), labels.to(mos.dtype)
    return AdversarialBatch(mixed, targets, index, similarity)
