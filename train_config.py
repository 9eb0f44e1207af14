"""The settings that decide the numbers of a training run, and the files named after them."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from attacks import attack_settings
from checkpoints import DEFAULT_FAMILY, checkpoint_name
from nt_regularizer import DEFAULT_NT_H, DEFAULT_NT_WEIGHT, NT_MODES
from seeding import DEFAULT_SEED

SCHEDULES = ("released", "corrected")
# Adversarial training (see adversarial_training.py)
ADV_TRAIN_METHODS = ("none", "fgsm", "pgd")  # 'none': no adversarial patches
ADV_DIRECTIONS = ("away", "up")  # away from the middle of the score range (as evaluated), or raise the quality
ADV_LABELS = ("ssim", "keep")  # the label of an adversarial patch: lowered by its SSIM damage, or the MOS
# [MIN, MAX] of the SSIM label correction: the training set's lowest and highest MOS, or the nominal scale
ADV_LABEL_RANGES = ("train", "nominal")
DEFAULT_ADV_EPS = 4 / 255  # l_inf radius in [0, 1] pixel units
DEFAULT_ADV_LAMBDA = 1.0  # weight of the SSIM label correction: 1 - SSIM times the whole score range
DEFAULT_ADV_RATIO = 0.5  # share of adversarial patches in a batch
RESUME_SUFFIX = ".resume.pth"
LOG_SUFFIX = ".log"


class RunFiles(NamedTuple):
    checkpoint: Path  # the best checkpoint so far
    state: Path | None  # the resumable state (None: not written)
    log: Path  # the printed results, appended


def resume_state_path(checkpoint_path: str | os.PathLike) -> Path:
    """Where the resumable state of a run whose best checkpoint is `checkpoint_path` is kept."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + RESUME_SUFFIX)


@dataclass
class TrainConfig:
    """Everything that decides the numbers of a training run; defaults are HyperIQA's released ones (the
    training script fills in a family's own, `Family.train_defaults`, for the fields not given)."""

    model: str = DEFAULT_FAMILY  # the quality-model family (models.FAMILIES)
    dataset: str = "livec"
    lr: float = 2e-5  # Adam learning rate of the backbone (`res.*`, LDA layers included)
    lr_ratio: float = 10.0  # the hyper network starts at lr * lr_ratio
    weight_decay: float = 5e-4  # Adam's L2 penalty on every parameter
    batch_size: int = 16  # patches per step, over all processes
    epochs: int = 16
    train_patch_num: int = 25  # random patches per training image per epoch
    test_patch_num: int = 25  # random patches per test image; their predictions are averaged
    train_test_num: int = 1  # rounds, each on its own split; the median over rounds is reported
    if_grad: bool = False  # NT: add weight * the gradient-norm penalty to the L1 loss
    weight: float = DEFAULT_NT_WEIGHT
    h: float = DEFAULT_NT_H  # finite-difference step, in normalized-input units
    nt_mode: str = "finite_difference"  # or 'exact' (double backpropagation)
    schedule: str = "released"  # or 'corrected', see HyperIQASolver.build_optimizer
    sync_bn: bool = False  # several processes: BatchNorm statistics over the global batch (CUDA)
    seed: int = DEFAULT_SEED
    adv_train: str = "none"  # adversarial training: 'none', 'fgsm' or 'pgd'
    adv_eps: float = DEFAULT_ADV_EPS  # l_inf radius of the training attacks, [0, 1] pixel units
    adv_steps: int | None = None  # pgd only; None: attacks.PGD_STEPS
    adv_alpha: float | None = None  # pgd only, pixel units; None: attacks.PGD_STEP_FRACTION * eps / steps
    adv_direction: str = "away"  # or 'up' (raise the predicted quality)
    adv_label: str = "ssim"  # or 'keep'
    adv_lambda: float = DEFAULT_ADV_LAMBDA
    adv_ratio: float = DEFAULT_ADV_RATIO  # in (0, 1]
    adv_label_range: str = "train"  # or 'nominal' (adversarial_training.label_range)
    options: dict[str, Any] = field(default_factory=dict)  # the family's own settings (Family.options)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.nt_mode not in NT_MODES:
            raise ValueError(f"unknown NT mode {self.nt_mode!r}; valid: {', '.join(NT_MODES)}")
        counts = ("batch_size", "epochs", "train_patch_num", "test_patch_num", "train_test_num")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.lr_ratio > 0 and self.h > 0 and self.weight >= 0 and self.weight_decay >= 0):
            raise ValueError("lr, lr_ratio and h must be > 0; weight and weight_decay must be >= 0")
        self._check_adversarial_training()

    def _check_adversarial_training(self) -> None:
        for name, value, valid in (("adv_train", self.adv_train, ADV_TRAIN_METHODS),
                                   ("adv_direction", self.adv_direction, ADV_DIRECTIONS),
                                   ("adv_label", self.adv_label, ADV_LABELS),
                                   ("adv_label_range", self.adv_label_range, ADV_LABEL_RANGES)):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if not 0 < self.adv_eps <= 1:
            raise ValueError(f"adv_eps must be in (0, 1] (pixel units), got {self.adv_eps}")
        if not 0 < self.adv_ratio <= 1:
            raise ValueError(f"adv_ratio must be in (0, 1], got {self.adv_ratio}")
        if not self.adv_lambda >= 0:
            raise ValueError(f"adv_lambda must be >= 0, got {self.adv_lambda}")
        if self.adv_train != "pgd" and (self.adv_steps is not None or self.adv_alpha is not None):
            raise ValueError(f"adv_steps and adv_alpha apply to --adv_train pgd only (adv_train is {self.adv_train!r})")
        if self.adv_steps is not None and self.adv_steps < 1:
            raise ValueError(f"adv_steps must be >= 1, got {self.adv_steps}")
        if self.adv_alpha is not None and not self.adv_alpha > 0:
            raise ValueError(f"adv_alpha must be > 0, got {self.adv_alpha}")

    def adversarial_attack(self) -> tuple[float, int]:
        """(step size in pixel units, steps) of the training attack: fgsm, one step of adv_eps; pgd,
        adv_alpha and adv_steps where given, else the defaults of attacks.attack_settings."""
        if self.adv_train == "none":
            raise ValueError("no adversarial training in this config (adv_train is 'none')")
        return attack_settings(self.adv_train, self.adv_eps, self.adv_alpha, self.adv_steps)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """The config whose every field is the argument of the same name."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def checkpoint_name(self) -> str:
        """The file name of the run's best checkpoint (the released names, and the defense, see
        models.checkpoint_name)."""
        steps = self.adversarial_attack()[1] if self.adv_train != "none" else None
        return checkpoint_name(self.dataset, self.batch_size, self.if_grad, self.weight, self.h,
                               self.adv_train, self.adv_eps, steps, family=self.model)

    def run_files(self, checkpoint_dir: str | os.PathLike) -> RunFiles:
        """The files of the run in `checkpoint_dir`, named after its best checkpoint."""
        checkpoint = Path(checkpoint_dir) / self.checkpoint_name()
        return RunFiles(checkpoint, resume_state_path(checkpoint), checkpoint.with_suffix(LOG_SUFFIX))
