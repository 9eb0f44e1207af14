"""The training step of any model family: the loss of a batch (the family's released loss, NT's
penalty with --if_grad, adversarial views with --adv_train) and one optimizer step on it, on one
process or on a process's share of a global batch (torchrun). HyperIQASolver.py runs it epoch by
epoch; benchmark.py times it.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn as nn

import folders
from adversarial_training import adversarial_batch
from distributed import outside_batchnorm_statistics
from families.base import Family, QualityModel
from nt_regularizer import nt_loss
from train_config import TrainConfig


class NonFiniteLoss(ArithmeticError):
    """A training step's loss is NaN or infinite (`value`); nothing was updated."""

    def __init__(self, value: float):
        super().__init__(f"the training loss became {value}")
        self.value = value


class Crafting(NamedTuple):
    """How a step under adversarial training crafts its adversarial views: against `model` (the quality
    model of the plain network, also when the step runs it in DistributedDataParallel), PGD's starts
    drawn from `generator` (one for all, or one per view attacked), the views at positions `views` of
    the batch (None: the batch's own adversarial_training.adversarial_positions), their labels
    corrected within `label_range` (None: the nominal score range; adversarial_training.label_range)."""

    model: QualityModel
    generator: torch.Generator | Sequence[torch.Generator] | None
    views: Sequence[int] | None = None
    label_range: tuple[float, float] | None = None


def training_loss(model: nn.Module, family: Family, pixels: torch.Tensor, mos: torch.Tensor, config: TrainConfig,
                  crafting: Crafting | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, scores (B,)) of a batch of pixels (B, 3, h, w) in [0, 1]: the family's released loss, plus
    weight x the NT penalty (in the family's input space) with `config.if_grad`. `model` is the
    family's network (or its DistributedDataParallel wrapper).

    With `config.adv_train`, a share of the batch is first replaced by adversarial views and their
    labels (adversarial_training.adversarial_batch), made as `crafting` says (default: against
    `model`, the batch's own adversarial positions, PGD's start from the global generator, labels
    corrected within the nominal score range); the loss and the returned scores are then those of
    the mixed batch.
    """
    if config.adv_train != "none":
        crafting = crafting or Crafting(family.quality_model(model), None)
        score_range = folders.score_range(config.dataset, family.score_range)
        pixels, mos, _, _ = adversarial_batch(crafting.model, pixels, mos, config, score_range, crafting.generator,
                                              views=crafting.views, labels_range=crafting.label_range)
    inputs = family.normalization(pixels)
    if config.if_grad:
        loss = nt_loss(model, inputs, mos, config.weight, config.h, config.nt_mode, family.released_loss)
        return loss.total, loss.scores
    return family.released_loss(model, inputs, mos)


def train_step(model: nn.Module, family: Family, optimizer: torch.optim.Optimizer, pixels: torch.Tensor,
               mos: torch.Tensor, config: TrainConfig, loss_scale: float = 1.0,
               agree: Callable[[float], float] | None = None,
               crafting: Crafting | None = None) -> tuple[float, torch.Tensor]:
    """One optimizer step on a batch: pixels (B, 3, h, w) in [0, 1] (the family's training views), mos (B,).

    loss_scale: a factor on the loss (a process's share of a global batch, see HyperIQASolver);
    agree: maps this process's loss value to the one all processes agree on (their mean), called
    before anything is updated; crafting: how adversarial views are made (see `training_loss`).
    Returns (that loss value, detached scores (B,) on the CPU: of the clean batch, or under
    adversarial training of the mixed batch). Raises NonFiniteLoss, before anything is updated, when
    the loss is not a finite number.
    """
    optimizer.zero_grad()
    loss, scores = training_loss(model, family, pixels, mos, config, crafting)
    if loss_scale != 1.0:
        loss = loss * loss_scale
    value = loss.item() if agree is None else agree(loss.item())
    if not math.isfinite(value):
        raise NonFiniteLoss(value)
    loss.backward()
    optimizer.step()
    return value, scores.detach().cpu()


def loss_share(index: torch.Tensor, global_length: int, world_size: int) -> float:
    """The weight of a process's loss (a mean over its entries) so that the mean over the processes,
    which DistributedDataParallel takes of the gradients, is the global batch's mean: its real
    entries (index >= 0) x world_size / the global batch's entries. 1 for equal shares, 0 for a
    placeholder (data_loader.share_of)."""
    return int((index >= 0).sum()) * world_size / global_length


def share_step(model: nn.Module, family: Family, optimizer: torch.optim.Optimizer, pixels: torch.Tensor,
               mos: torch.Tensor, index: torch.Tensor, global_length: int, world_size: int, config: TrainConfig,
               agree: Callable[[float], float] | None = None,
               crafting: Crafting | None = None) -> tuple[float, torch.Tensor]:
    """`train_step` of this process on its share of a global batch of `global_length` entries
    (data_loader.share_of; index (B,) the images, -1 for a placeholder): the loss weighted by
    `loss_share`, and a placeholder kept outside BatchNorm's statistics
    (distributed.outside_batchnorm_statistics)."""
    share = loss_share(index, global_length, world_size)
    placeholder = not bool((index >= 0).any())
    with outside_batchnorm_statistics(model) if placeholder else contextlib.nullcontext():
        return train_step(model, family, optimizer, pixels, mos, config, share, agree, crafting)
