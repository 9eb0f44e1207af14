"""The settings that decide the numbers of a training run, and the files named after them."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

from models import checkpoint_name
from nt_regularizer import DEFAULT_NT_H, DEFAULT_NT_WEIGHT, NT_MODES
from seeding import DEFAULT_SEED

SCHEDULES = ("released", "corrected")
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
    """Everything that decides the numbers of a training run; defaults are the released ones."""

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

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """The config whose every field is the argument of the same name."""
        return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})

    def checkpoint_name(self) -> str:
        """The file name of the run's best checkpoint (the released names, see models.checkpoint_name)."""
        return checkpoint_name(self.dataset, self.batch_size, self.if_grad, self.weight, self.h)

    def run_files(self, checkpoint_dir: str | os.PathLike) -> RunFiles:
        """The files of the run in `checkpoint_dir`, named after its best checkpoint."""
        checkpoint = Path(checkpoint_dir) / self.checkpoint_name()
        return RunFiles(checkpoint, resume_state_path(checkpoint), checkpoint.with_suffix(LOG_SUFFIX))
