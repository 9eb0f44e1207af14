"""Training objective of the NT defense (norm regularization training, Liu et al., CVPR 2024).

The NT loss adds to the L1 loss a penalty on the l1 norm of the gradient of the score with respect to
the (normalized) input image, approximated by a finite difference along sign(gradient):

    penalty = mean_b(((f(x_b + h d_b) - f(x_b)) / h) ** 2) / 2,   d = sign(d f(x) / d x), detached,

because f(x + h sign(g)) - f(x) ~= h <g, sign(g)> = h ||g||_1. The functions here work for any
differentiable `model(x) -> (B,)` scores, not only HyperIQA.

Difference from the released code: the released step runs three forward passes (one for the L1 loss,
two for the penalty); here one clean forward serves both the L1 loss and the penalty. The mathematics
is the same; in train mode, BatchNorm running statistics see two batches per step instead of three.

Below the loss: the solver of the released training (`HyperIQASolver`, `TrainConfig`, the
'released' and 'corrected' schedules of `build_optimizer`) and `train_and_test`, the rounds that
train_test_IQA_sparsity.py runs, with best-checkpoint saving, a resumable state and Ctrl-C handling.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import metrics
from data_loader import DEFAULT_SEED, derived_seed, make_test_loader, make_train_loader, seed_everything, split_samples
from folders import Sample
from models import build_model, checkpoint_name, save_checkpoint

ScoreModel = Callable[[torch.Tensor], torch.Tensor]  # normalized images (B, 3, H, W) -> scores (B,)

NT_MODES = ("finite_difference", "exact")
DEFAULT_NT_WEIGHT = 1e-3
DEFAULT_NT_H = 1e-2


class NTLoss(NamedTuple):
    total: torch.Tensor  # L1 + weight * penalty, scalar, differentiable w.r.t. the model parameters
    l1: torch.Tensor  # scalar
    penalty: torch.Tensor  # scalar
    scores: torch.Tensor  # clean predictions (B,), attached to the graph


def _input_gradient(scores: torch.Tensor, images: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d sum(scores) / d images, (B, 3, H, W); each score depends on its own image only."""
    (grad,) = torch.autograd.grad(scores.sum(), images, retain_graph=True, create_graph=create_graph)
    return grad


def finite_difference_penalty(model: ScoreModel, images: torch.Tensor, scores: torch.Tensor,
                              h: float = DEFAULT_NT_H) -> torch.Tensor:
    """The paper's NT penalty from an existing clean forward.

    images: normalized inputs (B, 3, H, W) with requires_grad; scores: model(images), (B,), still
    attached to the graph. Costs one backward to the input and one more forward. Returns a scalar
    through which gradients flow into both f(x + h d) and f(x).
    """
    if h <= 0:
        raise ValueError(f"h must be > 0, got {h}")
    direction = torch.sign(_input_gradient(scores, images, create_graph=False)).detach()
    shifted = model(images.detach() + h * direction)
    return (((shifted - scores) / h) ** 2).mean() / 2


def exact_penalty(images: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """mean_b(||d f(x_b) / d x_b||_1 ** 2) / 2 by double backpropagation (scalar), for comparison."""
    grad = _input_gradient(scores, images, create_graph=True)
    return (grad.abs().flatten(1).sum(dim=1) ** 2).mean() / 2


def nt_loss(model: ScoreModel, images: torch.Tensor, mos: torch.Tensor, weight: float = DEFAULT_NT_WEIGHT,
            h: float = DEFAULT_NT_H, mode: str = "finite_difference") -> NTLoss:
    """L1(f(x), mos) + weight * penalty, from ONE clean forward of `images` (B, 3, H, W), normalized.

    mos: (B,) targets on the score scale. mode: 'finite_difference' (paper, default) or 'exact'.
    """
    if mode not in NT_MODES:
        raise ValueError(f"unknown NT mode {mode!r}; valid: {', '.join(NT_MODES)}")
    images = images.detach().requires_grad_(True)
    scores = model(images)
    l1 = F.l1_loss(scores, mos.to(scores.dtype))
    if mode == "finite_difference":
        penalty = finite_difference_penalty(model, images, scores, h)
    else:
        penalty = exact_penalty(images, scores)
    return NTLoss(l1 + weight * penalty, l1, penalty, scores)


def released_three_pass_nt_loss(model: ScoreModel, images: torch.Tensor, mos: torch.Tensor,
                                weight: float = DEFAULT_NT_WEIGHT, h: float = DEFAULT_NT_H) -> NTLoss:
    """The released formulation, three forward passes per step: one for the L1 loss, and a separate
    clean forward plus a shifted forward for the penalty. Kept as the reference that `nt_loss` is
    tested and benchmarked against; use `nt_loss` for training."""
    scores = model(images)
    l1 = F.l1_loss(scores, mos.to(scores.dtype))
    probe = images.detach().requires_grad_(True)
    penalty = finite_difference_penalty(model, probe, model(probe), h)
    return NTLoss(l1 + weight * penalty, l1, penalty, scores)


# ---------------------------------------------------------------------------------------------
# The solver: optimizer, schedule, train and test loops, checkpoints (DESIGN section 4)

SCHEDULES = ("released", "corrected")
LR_DECAY_EPOCHS = 6  # the hyper-network lr is divided by 10 every 6 epochs
LAST_EPOCH_WITH_LR_RATIO = 8  # after the update at the end of 0-based epoch 8, the lr ratio is 1
STATE_FORMAT = 1  # version of the resumable-state payload


@dataclass
class TrainConfig:
    """Everything that decides the numbers of a training run; defaults are the released ones."""

    dataset: str = "livec"
    lr: float = 2e-5  # Adam learning rate of the backbone (`res.*`, LDA layers included)
    lr_ratio: float = 10.0  # the hyper network starts at lr * lr_ratio
    weight_decay: float = 5e-4  # Adam's L2 penalty on every parameter
    batch_size: int = 16  # patches per step
    epochs: int = 16
    train_patch_num: int = 25  # random patches per training image per epoch
    test_patch_num: int = 25  # random patches per test image; their predictions are averaged
    train_test_num: int = 1  # rounds, each on its own split; the median over rounds is reported
    if_grad: bool = False  # NT: add weight * the gradient-norm penalty to the L1 loss
    weight: float = DEFAULT_NT_WEIGHT
    h: float = DEFAULT_NT_H  # finite-difference step, in normalized-input units
    nt_mode: str = "finite_difference"  # or 'exact' (double backpropagation)
    schedule: str = "released"  # or 'corrected', see `build_optimizer`
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


class TrainingDiverged(ValueError):
    """The loss or the test predictions stopped being finite numbers."""


def hyper_network_lr(config: TrainConfig, epoch: int) -> float:
    """Learning rate of the hyper-network group during `epoch` (0-based).

    Released rule, applied at the end of epoch t for the next one: lr / 10 ** (t // 6), times lr_ratio
    while t <= 8, times 1 afterwards. Epoch 0 uses lr * lr_ratio.
    """
    if epoch == 0:
        return config.lr * config.lr_ratio
    t = epoch - 1
    ratio = config.lr_ratio if t <= LAST_EPOCH_WITH_LR_RATIO else 1.0
    return config.lr / 10 ** (t // LR_DECAY_EPOCHS) * ratio


def parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hyper-network parameters, backbone parameters): the backbone is `model.res`, the rest is the
    hyper network (its 1x1 convs and the weight generators)."""
    backbone = list(model.res.parameters())
    in_backbone = {id(p) for p in backbone}
    return [p for p in model.parameters() if id(p) not in in_backbone], backbone


def build_optimizer(model: nn.Module, config: TrainConfig, epoch: int) -> torch.optim.Adam:
    """The Adam optimizer in use during `epoch`: groups [hyper network, backbone].

    'released': the released code rebuilt Adam at the end of every epoch from the same one-shot
    iterator of hyper-network parameters, which the first Adam had consumed; so from epoch 1 on the
    hyper-network group is EMPTY (those weights never change again), only the backbone trains, at a
    constant lr, and Adam's moments restart each epoch. The paper's numbers were obtained this way.
    'corrected': one Adam for the whole run (moments kept), both groups train; the hyper-network lr
    follows `hyper_network_lr` (see `advance_schedule`), the backbone lr stays at lr, as written in
    the released update rule.
    """
    hyper, backbone = parameter_groups(model)
    if config.schedule == "released" and epoch > 0:
        hyper = []
    groups = [{"params": hyper, "lr": hyper_network_lr(config, epoch)}, {"params": backbone, "lr": config.lr}]
    try:  # the fused update (CUDA; CPU since PyTorch 2.4): same mathematics, one pass over memory
        return torch.optim.Adam(groups, weight_decay=config.weight_decay, fused=True)
    except RuntimeError:  # this PyTorch has no fused Adam for the parameters' device
        return torch.optim.Adam(groups, weight_decay=config.weight_decay)


def advance_schedule(optimizer: torch.optim.Adam, model: nn.Module, config: TrainConfig, epoch: int) -> torch.optim.Adam:
    """The optimizer for `epoch`, from the one used in epoch - 1 (a new one under 'released')."""
    if config.schedule == "released":
        return build_optimizer(model, config, epoch)
    optimizer.param_groups[0]["lr"] = hyper_network_lr(config, epoch)
    return optimizer


def correlations(predictions: np.ndarray, mos: np.ndarray) -> tuple[float, float]:
    """(SROCC, PLCC) of predictions against MOS; NaN when fewer than 2 images or a constant list."""
    if len(predictions) < 2:
        return float("nan"), float("nan")
    return metrics.srocc(predictions, mos), metrics.plcc(predictions, mos)


class StopRequest:
    """While active (a `with` block), the first Ctrl-C (SIGINT) only sets `requested`: the training
    loop saves a resumable state at the next step boundary and stops. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("Ctrl-C: stopping after the current step and saving a resumable state (Ctrl-C again to quit now)",
              file=sys.stderr, flush=True)


TABLE_HEADER = "Epoch\tTrain_Loss\tTrain_SRCC\tTest_SRCC\tTest_PLCC"


def table_row(epoch: int, loss: float, train_srcc: float, test_srcc: float, test_plcc: float) -> str:
    """One line of the released per-epoch table (epoch counted from 1)."""
    return "%d\t%4.3f\t\t%4.4f\t\t%4.4f\t\t%4.4f" % (epoch, loss, train_srcc, test_srcc, test_plcc)


class HyperIQASolver:
    """Trains and tests one model on one train/test split (one round), as the released solver.

    Each epoch: a pass over the training batches (L1 loss; with `if_grad`, plus weight x the NT
    penalty from one clean forward, see `nt_loss`), then the test (mean prediction over each test
    image's patches; SROCC and PLCC against MOS). The model with the best test SROCC so far is saved
    atomically to `checkpoint_path` as {'model', 'optimizer', 'epoch', 'srocc', 'plcc', 'config'};
    unlike the released code (which started from best = 0), the first epoch is always saved, so a run
    whose SROCC is never positive still leaves a checkpoint. Then the schedule prepares the next
    epoch and a resumable state (model, optimizer, position, partial-epoch records) is written to
    `state_path`; it is also written when `stop` is requested, at the next step boundary.

    Loss and test predictions are checked: a NaN or infinite value raises TrainingDiverged naming the
    epoch and step, leaving the checkpoint and state of the last good epoch untouched.
    """

    def __init__(self, config: TrainConfig, train_samples: Sequence[Sample], test_samples: Sequence[Sample],
                 model: nn.Module, device: torch.device | str, checkpoint_path: str | os.PathLike,
                 state_path: str | os.PathLike | None = None, round_index: int = 0, rounds_done: Sequence = (),
                 num_workers: int = 0, stop: StopRequest | None = None, log: Callable[[str], None] = print):
        self.config, self.model, self.device = config, model, torch.device(device)
        self.checkpoint_path, self.state_path = Path(checkpoint_path), state_path and Path(state_path)
        self.round_index, self.rounds_done = round_index, [list(r) for r in rounds_done]
        self.stop, self.log = stop or StopRequest(), log
        round_seed = derived_seed(config.seed, round_index)
        self.train_loader = make_train_loader(train_samples, config.dataset, config.train_patch_num,
                                              config.batch_size, round_seed, num_workers, self.device)
        self.test_loader = make_test_loader(test_samples, config.dataset, config.test_patch_num,
                                            config.batch_size, round_seed, num_workers, self.device)
        self.test_mos = np.array([s.mos for s in test_samples], dtype=np.float64)
        self.model.train()
        self.optimizer = build_optimizer(model, config, 0)
        # Position and records of the run; saved in the resumable state.
        self.epoch, self.step = 0, 0
        self.best: tuple[float, float] | None = None  # (SROCC, PLCC) of the saved checkpoint
        self.rows: list[list[float]] = []  # the table so far
        self._new_epoch_records()

    def _new_epoch_records(self) -> None:
        self.epoch_losses: list[float] = []
        self.epoch_scores: list[float] = []  # per training patch, for Train_SRCC
        self.epoch_mos: list[float] = []

    def _where(self, epoch: int, step: int | None = None) -> str:
        where = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
        return (f"round {self.round_index + 1}, " if self.config.train_test_num > 1 else "") + where

    def train(self) -> tuple[float, float]:
        """Train from the current position to the last epoch; return the best (SROCC, PLCC)."""
        self.log(TABLE_HEADER)
        for row in self.rows:  # resumed: the part of the table printed before the interruption
            self.log(table_row(int(row[0]), *row[1:]))
        for epoch in range(self.epoch, self.config.epochs):
            self.run_epoch(epoch)
        best_srcc, best_plcc = self.best if self.best is not None else (float("nan"), float("nan"))
        self.log("Best test SRCC %f, PLCC %f" % (best_srcc, best_plcc))
        return best_srcc, best_plcc

    def run_epoch(self, epoch: int) -> None:
        """Train `epoch` (from the current step), test, keep the best checkpoint, prepare the next epoch."""
        steps = len(self.train_loader)
        report_every = max(1, steps // 10)
        started = time.perf_counter()
        first_step = self.step
        for images, mos, _ in self.train_loader.batches(epoch, start_batch=self.step):
            loss, scores = self.train_step(images, mos, epoch)
            self.step += 1
            self.epoch_losses.append(loss)
            self.epoch_scores += scores.tolist()
            self.epoch_mos += mos.tolist()
            if self.step == first_step + 1 or self.step % report_every == 0 or self.step == steps:
                seconds = (time.perf_counter() - started) / (self.step - first_step)
                print(f"{self._where(epoch, self.step)}/{steps}: loss {np.mean(self.epoch_losses):.3f}, "
                      f"{seconds:.2f} s/step", file=sys.stderr, flush=True)
            if self.stop.requested:
                self._stop(epoch)
        train_srcc = correlations(np.array(self.epoch_scores), np.array(self.epoch_mos))[0]
        test_srcc, test_plcc = self.test(epoch)
        if self.best is None or test_srcc > self.best[0]:  # NaN never beats a number
            self.best = (test_srcc, test_plcc)
            save_checkpoint(self.checkpoint_path, self.model, self.optimizer, epoch=epoch + 1, srocc=test_srcc,
                            plcc=test_plcc, config=asdict(self.config))
        row = [epoch + 1, float(np.mean(self.epoch_losses)), train_srcc, test_srcc, test_plcc]
        self.rows.append(row)
        self.log(table_row(*row))
        self.optimizer = advance_schedule(self.optimizer, self.model, self.config, epoch + 1)
        self.epoch, self.step = epoch + 1, 0
        self._new_epoch_records()
        self.save_state()
        if self.stop.requested:
            self._stop(epoch + 1)

    def train_step(self, images: torch.Tensor, mos: torch.Tensor, epoch: int) -> tuple[float, torch.Tensor]:
        """One optimizer step on a batch: images (B, 3, 224, 224) normalized, mos (B,).
        Returns (loss value, detached scores (B,) on the CPU)."""
        self.optimizer.zero_grad()
        if self.config.if_grad:
            loss, _, _, scores = nt_loss(self.model, images, mos, self.config.weight, self.config.h, self.config.nt_mode)
        else:
            scores = self.model(images)
            loss = F.l1_loss(scores, mos)
        value = loss.item()
        if not math.isfinite(value):
            kept = f"the best checkpoint so far stays at {self.checkpoint_path}" if self.best is not None \
                else "no checkpoint was written"
            raise TrainingDiverged(f"the training loss became {value} at {self._where(epoch, self.step + 1)}; "
                                   f"stopped ({kept}); try a lower --lr")
        loss.backward()
        self.optimizer.step()
        return value, scores.detach().cpu()

    @torch.inference_mode()
    def test(self, epoch: int) -> tuple[float, float]:
        """(SROCC, PLCC) of the per-image mean prediction over the test patches, against MOS."""
        self.model.eval()
        sums = torch.zeros(len(self.test_mos), dtype=torch.float64, device=self.device)
        counts = torch.zeros_like(sums)
        for images, _, index in self.test_loader.batches(epoch):
            sums.index_add_(0, index, self.model(images).double())
            counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
        self.model.train()
        predictions = (sums / counts).cpu().numpy()
        if not np.isfinite(predictions).all():
            raise TrainingDiverged(f"the test predictions are not finite numbers after {self._where(epoch)}; "
                                   f"stopped (the best checkpoint so far stays at {self.checkpoint_path}); try a lower --lr")
        return correlations(predictions, self.test_mos)

    def _stop(self, epoch: int) -> None:
        self.save_state()
        where = self._where(epoch, self.step) if self.step else f"the start of {self._where(epoch)}"
        print(f"stopped at {where}; resumable state saved to {self.state_path}; continue with --resume",
              file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    # -- resumable state

    def save_state(self) -> None:
        """Write the resumable state (atomically) to `state_path`, if there is one."""
        if self.state_path is None:
            return
        progress = {
            "format": STATE_FORMAT, "config": asdict(self.config),
            "round": self.round_index, "rounds_done": self.rounds_done,
            "epoch": self.epoch, "step": self.step,
            "best": None if self.best is None else list(self.best), "rows": self.rows,
            "epoch_losses": torch.tensor(self.epoch_losses, dtype=torch.float64),
            "epoch_scores": torch.tensor(self.epoch_scores, dtype=torch.float64),
            "epoch_mos": torch.tensor(self.epoch_mos, dtype=torch.float64),
        }
        save_checkpoint(self.state_path, self.model, self.optimizer, progress=progress)

    def restore(self, state: Mapping) -> None:
        """Continue from a state written by `save_state` (see `load_training_state`)."""
        progress = state["progress"]
        self.model.load_state_dict(state["model"])
        self.epoch, self.step = int(progress["epoch"]), int(progress["step"])
        self.optimizer = build_optimizer(self.model, self.config, self.epoch)
        self.optimizer.load_state_dict(state["optimizer"])
        self.best = None if progress["best"] is None else tuple(progress["best"])
        self.rows = [list(row) for row in progress["rows"]]
        self.epoch_losses = progress["epoch_losses"].tolist()
        self.epoch_scores = progress["epoch_scores"].tolist()
        self.epoch_mos = progress["epoch_mos"].tolist()


def resume_state_path(checkpoint_path: str | os.PathLike) -> Path:
    """Where the resumable state of a run whose best checkpoint is `checkpoint_path` is kept."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + ".resume.pth")


def load_training_state(path: str | os.PathLike, config: TrainConfig) -> dict:
    """Read a resumable state (tensors and plain data only: weights_only=True) and check that it was
    written by a run with the same settings as `config` (only `epochs` may differ)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no resumable state at {path}: it is written to --checkpoint_dir after each epoch "
                                "and when training is stopped with Ctrl-C (pass its path to --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read the resumable state {path}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    progress = state.get("progress") if isinstance(state, Mapping) else None
    if not isinstance(progress, Mapping) or progress.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a resumable training state (a best-model checkpoint cannot be resumed)")
    saved, current = dict(progress["config"]), asdict(config)
    differ = [k for k in current if k != "epochs" and saved.get(k) != current[k]]
    if differ:
        raise ValueError(f"{path} was saved with different settings: " + ", ".join(
            f"--{k} {saved.get(k)} (now {current[k]})" for k in differ) + "; rerun with the same settings")
    return state


def train_and_test(config: TrainConfig, samples: Sequence[Sample], device: torch.device | str,
                   checkpoint_dir: str | os.PathLike, split_file: str | None = None, pretrained: bool = True,
                   backbone_weights: str | None = None, num_workers: int = 0, resume: str | os.PathLike | None = None,
                   log: Callable[[str], None] = print) -> list[tuple[float, float]]:
    """All `config.train_test_num` rounds: split, fresh model, `HyperIQASolver.train()`.

    Returns the best (SROCC, PLCC) of each round. The best checkpoint of each round is written to
    `checkpoint_dir/models.checkpoint_name(...)` (a later round overwrites it, as released) and the
    resumable state beside it (`resume_state_path`). With `resume` (a state path), the run continues
    where that state stopped. Ctrl-C stops after saving the state (KeyboardInterrupt is raised).
    """
    checkpoint_path = Path(checkpoint_dir) / checkpoint_name(config.dataset, config.batch_size, config.if_grad,
                                                             config.weight, config.h)
    state_path = resume_state_path(checkpoint_path)
    state = load_training_state(resume, config) if resume is not None else None
    rounds_done = [tuple(r) for r in state["progress"]["rounds_done"]] if state else []
    if state:
        progress = state["progress"]
        where = (f"round {progress['round'] + 1}, epoch {progress['epoch'] + 1}, step {progress['step']}"
                 if progress["round"] == len(rounds_done) else f"round {len(rounds_done) + 1}")
        print(f"resuming from {resume} at {where}", file=sys.stderr, flush=True)
    with StopRequest() as stop:
        for round_index in range(len(rounds_done), config.train_test_num):
            log("Round %d" % (round_index + 1))
            train, test = split_samples(samples, config.dataset, config.seed, round_index, split_file=split_file)
            resuming = state is not None and state["progress"]["round"] == round_index
            seed_everything(config.seed + round_index)
            model = build_model(pretrained_backbone=pretrained and not resuming,
                                backbone_weights=None if resuming else backbone_weights, device=device)
            solver = HyperIQASolver(config, train, test, model, device, checkpoint_path, state_path, round_index,
                                    rounds_done, num_workers, stop, log)
            if resuming:
                solver.restore(state)
            rounds_done.append(solver.train())
            solver.rounds_done = [list(r) for r in rounds_done]
            solver.save_state()
    return rounds_done
