"""The solver of the released training: optimizer schedules, the training step, the test, and the
rounds that train_test_IQA_sparsity.py runs, with best-checkpoint saving, a resumable state and
Ctrl-C handling.

`train_step` and `predict_images` are plain functions over a model, an optimizer and a loader (with
`--adv_train`, the step first swaps a share of the batch for adversarial patches: adversarial_training.py);
`HyperIQASolver` runs the epochs of one round around them and keeps its position in a `RunState`,
which is saved and restored whole; `train_and_test` runs the rounds.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import metrics
from adversarial_training import adversarial_batch
from data_loader import DEFAULT_CACHE_GIB, PatchLoader, make_test_loader, make_train_loader
from folders import Sample
from models import ScoreModel, build_model, save_checkpoint
from nt_regularizer import nt_loss
from seeding import ADVERSARIAL_TRAINING, seed_everything, seeded_generator
from splits import split_samples
from train_config import RunFiles, TrainConfig

LR_DECAY_EPOCHS = 6  # the hyper-network lr is divided by 10 every 6 epochs
LAST_EPOCH_WITH_LR_RATIO = 8  # after the update at the end of 0-based epoch 8, the lr ratio is 1
STATE_FORMAT = 2  # version of the resumable-state payload


class TrainingDiverged(ValueError):
    """The loss or the test predictions stopped being finite numbers."""


class NonFiniteLoss(ArithmeticError):
    """A training step's loss is NaN or infinite (`value`); nothing was updated."""

    def __init__(self, value: float):
        super().__init__(f"the training loss became {value}")
        self.value = value


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

    Under 'released' Adam is built by the released call, `torch.optim.Adam(groups, weight_decay=...)`:
    PyTorch's default update for the device (a loop over tensors on the CPU, the multi-tensor update
    on CUDA), the arithmetic of the released code. Under 'corrected' the fused update is used where
    PyTorch has it: the same mathematics in one pass over memory, equal to the default update up to
    rounding (about 1e-10 relative after 20 steps).
    """
    hyper, backbone = parameter_groups(model)
    if config.schedule == "released" and epoch > 0:
        hyper = []
    groups = [{"params": hyper, "lr": hyper_network_lr(config, epoch)}, {"params": backbone, "lr": config.lr}]
    if config.schedule == "released":
        return torch.optim.Adam(groups, weight_decay=config.weight_decay)
    try:
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


# ---------------------------------------------------------------------------------------------
# The step and the test


def training_loss(model: ScoreModel, images: torch.Tensor, mos: torch.Tensor, config: TrainConfig,
                  generator: torch.Generator | None = None,
                  crafting_model: ScoreModel | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, scores (B,)) of a batch: L1, plus weight x the NT penalty with `config.if_grad`.

    With `config.adv_train`, a share of the batch is first replaced by adversarial patches and their
    labels (adversarial_training.adversarial_batch), crafted against `crafting_model` (default
    `model`; under DistributedDataParallel, the wrapped module) with PGD's start drawn from
    `generator`; the loss and the returned scores are then those of the mixed batch.
    """
    if config.adv_train != "none":
        images, mos, _, _ = adversarial_batch(crafting_model or model, images, mos, config, generator)
    if config.if_grad:
        loss = nt_loss(model, images, mos, config.weight, config.h, config.nt_mode)
        return loss.total, loss.scores
    scores = model(images)
    return F.l1_loss(scores, mos), scores


def train_step(model: ScoreModel, optimizer: torch.optim.Optimizer, images: torch.Tensor, mos: torch.Tensor,
               config: TrainConfig, generator: torch.Generator | None = None,
               crafting_model: ScoreModel | None = None) -> tuple[float, torch.Tensor]:
    """One optimizer step on a batch: images (B, 3, 224, 224) normalized, mos (B,); `generator` and
    `crafting_model` serve adversarial training (see `training_loss`).

    Returns (loss value, detached scores (B,) on the CPU: of the clean batch, or under adversarial
    training of the mixed batch). Raises NonFiniteLoss, before anything is updated, when the loss is
    not a finite number.
    """
    optimizer.zero_grad()
    loss, scores = training_loss(model, images, mos, config, generator, crafting_model)
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(value)
    loss.backward()
    optimizer.step()
    return value, scores.detach().cpu()


@torch.inference_mode()
def predict_images(model: nn.Module, loader: PatchLoader, epoch: int) -> np.ndarray:
    """Per-image mean prediction (N,) over the patches `loader` draws in `epoch`, in eval mode (the
    model's mode is restored)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(loader.samples), dtype=torch.float64, device=loader.device)
    counts = torch.zeros_like(sums)
    for images, _, index in loader.batches(epoch):
        sums.index_add_(0, index, model(images).double())
        counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
    model.train(was_training)
    return (sums / counts).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# One round


@dataclass
class RunState:
    """Where a run stands: saved whole in the resumable state, restored whole."""

    round_index: int = 0
    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # steps done in `epoch`
    best: list[float] | None = None  # [SROCC, PLCC] of the saved checkpoint
    rows: list[list[float]] = field(default_factory=list)  # the table so far
    rounds_done: list[list[float]] = field(default_factory=list)  # best [SROCC, PLCC] of finished rounds
    epoch_losses: list[float] = field(default_factory=list)  # per step of `epoch`
    epoch_scores: list[float] = field(default_factory=list)  # per training patch, for Train_SRCC
    epoch_mos: list[float] = field(default_factory=list)
    train_window: int = 0  # images per shuffling window of the training loader (0: not set yet)

    @classmethod
    def from_saved(cls, saved: Mapping) -> "RunState":
        """The state stored in a resumable state file's payload (see `HyperIQASolver.save_state`)."""
        return cls(**{key: value for key, value in saved["progress"].items() if key != "format"})

    def next_epoch(self) -> None:
        self.epoch, self.step = self.epoch + 1, 0
        self.epoch_losses, self.epoch_scores, self.epoch_mos = [], [], []


class RoundLoaders(NamedTuple):
    train: PatchLoader
    test: PatchLoader


def round_loaders(config: TrainConfig, train_samples: Sequence[Sample], test_samples: Sequence[Sample],
                  round_index: int, device: torch.device | str, num_workers: int = 0,
                  cache_gib: float = DEFAULT_CACHE_GIB) -> RoundLoaders:
    """The training and test loaders of round `round_index`, their random streams keyed by the round."""
    return RoundLoaders(
        make_train_loader(train_samples, config.dataset, config.train_patch_num, config.batch_size, config.seed,
                          round_index, num_workers, device, cache_gib),
        make_test_loader(test_samples, config.dataset, config.test_patch_num, config.batch_size, config.seed,
                         round_index, num_workers, device))


class HyperIQASolver:
    """Trains and tests one model on one train/test split (one round), as the released solver.

    Each epoch: a pass over the training batches (`train_step`), then the test (`predict_images`;
    SROCC and PLCC against MOS). The model with the best test SROCC so far is saved atomically to
    `files.checkpoint` as {'model', 'optimizer', 'epoch', 'srocc', 'plcc', 'config'}; unlike the
    released code (which started from best = 0), the first epoch is always saved, so a run whose
    SROCC is never positive still leaves a checkpoint. Then the schedule prepares the next epoch and
    the resumable state (model, optimizer, RunState) is written to `files.state`; it is also written
    when `stop` is requested, at the next step boundary.

    Loss and test predictions are checked: a NaN or infinite value raises TrainingDiverged naming the
    epoch and step, leaving the checkpoint and state of the last good epoch untouched.
    """

    def __init__(self, config: TrainConfig, model: nn.Module, loaders: RoundLoaders, files: RunFiles,
                 state: RunState | None = None, stop: StopRequest | None = None, log: Callable[[str], None] = print):
        self.config, self.model, self.loaders, self.files = config, model, loaders, files
        self.stop, self.log = stop or StopRequest(), log
        self.state = state or RunState()
        self.test_mos = np.array([s.mos for s in loaders.test.samples], dtype=np.float64)
        self.model.train()
        self.optimizer = build_optimizer(model, config, 0)
        self._use_saved_window()

    def _use_saved_window(self) -> None:
        """A resumed run keeps the shuffling windows it started with, whatever the cache budget now."""
        if self.state.train_window == 0:
            self.state.train_window = self.loaders.train.window_images
        elif self.state.train_window != self.loaders.train.window_images:
            self.loaders.train.set_window(self.state.train_window)

    def _where(self, epoch: int, step: int | None = None) -> str:
        where = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
        return (f"round {self.state.round_index + 1}, " if self.config.train_test_num > 1 else "") + where

    def train(self) -> tuple[float, float]:
        """Train from the current position to the last epoch; return the best (SROCC, PLCC)."""
        self.log(TABLE_HEADER)
        for row in self.state.rows:  # resumed: the part of the table printed before the interruption
            self.log(table_row(int(row[0]), *row[1:]))
        for epoch in range(self.state.epoch, self.config.epochs):
            self.run_epoch(epoch)
        best_srcc, best_plcc = self.state.best if self.state.best is not None else (float("nan"), float("nan"))
        self.log("Best test SRCC %f, PLCC %f" % (best_srcc, best_plcc))
        return best_srcc, best_plcc

    def run_epoch(self, epoch: int) -> None:
        """Train `epoch` (from the current step), test, keep the best checkpoint, prepare the next epoch."""
        state, steps = self.state, len(self.loaders.train)
        report_every = max(1, steps // 10)
        started, first_step = time.perf_counter(), state.step
        for images, mos, _ in self.loaders.train.batches(epoch, start_batch=state.step):
            try:
                loss, scores = train_step(self.model, self.optimizer, images, mos, self.config,
                                          self.adversarial_generator(epoch, state.step))
            except NonFiniteLoss as exc:
                raise TrainingDiverged(f"{exc} at {self._where(epoch, state.step + 1)}; stopped ({self._kept()}); "
                                       "try a lower --lr") from None
            state.step += 1
            state.epoch_losses.append(loss)
            state.epoch_scores += scores.tolist()
            state.epoch_mos += mos.tolist()
            if state.step == first_step + 1 or state.step % report_every == 0 or state.step == steps:
                seconds = (time.perf_counter() - started) / (state.step - first_step)
                print(f"{self._where(epoch, state.step)}/{steps}: loss {np.mean(state.epoch_losses):.3f}, "
                      f"{seconds:.2f} s/step", file=sys.stderr, flush=True)
            if self.stop.requested:
                self._stop(epoch)
        train_srcc = correlations(np.array(state.epoch_scores), np.array(state.epoch_mos))[0]
        predictions = predict_images(self.model, self.loaders.test, epoch)
        if not np.isfinite(predictions).all():
            raise TrainingDiverged(f"the test predictions are not finite numbers after {self._where(epoch)}; "
                                   f"stopped ({self._kept()}); try a lower --lr")
        test_srcc, test_plcc = correlations(predictions, self.test_mos)
        if state.best is None or test_srcc > state.best[0]:  # NaN never beats a number
            state.best = [test_srcc, test_plcc]
            save_checkpoint(self.files.checkpoint, self.model, self.optimizer, epoch=epoch + 1, srocc=test_srcc,
                            plcc=test_plcc, config=asdict(self.config))
        row = [epoch + 1, float(np.mean(state.epoch_losses)), train_srcc, test_srcc, test_plcc]
        state.rows.append(row)
        self.log(table_row(*row))
        self.optimizer = advance_schedule(self.optimizer, self.model, self.config, epoch + 1)
        state.next_epoch()
        self.save_state()
        if self.stop.requested:
            self._stop(epoch + 1)

    def adversarial_generator(self, epoch: int, step: int) -> torch.Generator | None:
        """The random stream of the attack made at `step` (0-based) of `epoch` under adversarial
        training, keyed by (round, epoch, step): a resumed run draws what the uninterrupted one drew."""
        if self.config.adv_train == "none":
            return None
        return seeded_generator(self.config.seed, ADVERSARIAL_TRAINING, self.state.round_index, epoch, step)

    def _kept(self) -> str:
        if self.state.best is None:
            return "no checkpoint was written"
        return f"the best checkpoint so far stays at {self.files.checkpoint}"

    def _stop(self, epoch: int) -> None:
        self.save_state()
        where = self._where(epoch, self.state.step) if self.state.step else f"the start of {self._where(epoch)}"
        print(f"stopped at {where}; resumable state saved to {self.files.state}; continue with --resume",
              file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    def finish_round(self, result: tuple[float, float]) -> None:
        """Record the round's result in the state, so that a resumed run starts the next round."""
        self.state.rounds_done.append(list(result))
        self.save_state()

    # -- resumable state

    def save_state(self) -> None:
        """Write the resumable state (atomically) to `state_path`, if there is one."""
        if self.files.state is None:
            return
        save_checkpoint(self.files.state, self.model, self.optimizer, config=asdict(self.config),
                        progress={"format": STATE_FORMAT, **asdict(self.state)})

    def restore(self, saved: Mapping) -> None:
        """Continue from a state written by `save_state` (see `load_training_state`)."""
        self.state = RunState.from_saved(saved)
        self.model.load_state_dict(saved["model"])
        self.optimizer = build_optimizer(self.model, self.config, self.state.epoch)
        self.optimizer.load_state_dict(saved["optimizer"])
        self._use_saved_window()


def load_training_state(path: str | os.PathLike, config: TrainConfig) -> dict:
    """Read a resumable state (tensors and plain data only: weights_only=True) and check that it was
    written by a run with the same settings as `config` (only `epochs` may differ; a setting the
    state does not name, being older, had its default value)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no resumable state at {path}: it is written to --checkpoint_dir after each epoch "
                                "and when training is stopped with Ctrl-C (pass its path to --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read the resumable state {path}: {reason}") from None
    progress = state.get("progress") if isinstance(state, Mapping) else None
    if not isinstance(progress, Mapping) or progress.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a resumable training state of this version "
                         "(a best-model checkpoint, or a state of an older version, cannot be resumed)")
    saved, current, defaults = dict(state["config"]), asdict(config), asdict(TrainConfig())
    differ = [k for k in current if k != "epochs" and saved.get(k, defaults[k]) != current[k]]
    if differ:
        raise ValueError(f"{path} was saved with different settings: " + ", ".join(
            f"--{k} {saved.get(k, defaults[k])} (now {current[k]})" for k in differ) + "; rerun with the same settings")
    return state


def train_and_test(config: TrainConfig, samples: Sequence[Sample], device: torch.device | str,
                   checkpoint_dir: str | os.PathLike, split_file: str | None = None, pretrained: bool = True,
                   backbone_weights: str | None = None, num_workers: int = 0, cache_gib: float = DEFAULT_CACHE_GIB,
                   resume: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> list[tuple[float, float]]:
    """All `config.train_test_num` rounds: split, fresh model, `HyperIQASolver.train()`.

    Returns the best (SROCC, PLCC) of each round. The best checkpoint of each round is written to
    `config.run_files(checkpoint_dir).checkpoint` (a later round overwrites it, as released) and the
    resumable state beside it. With `resume` (a state path), the run continues
    where that state stopped. Ctrl-C stops after saving the state (KeyboardInterrupt is raised).
    """
    files = config.run_files(checkpoint_dir)
    saved = load_training_state(resume, config) if resume is not None else None
    saved_state = RunState.from_saved(saved) if saved else None
    results = [tuple(r) for r in saved_state.rounds_done] if saved_state else []
    if saved_state:
        where = (f"round {saved_state.round_index + 1}, epoch {saved_state.epoch + 1}, step {saved_state.step}"
                 if saved_state.round_index == len(results) else f"round {len(results) + 1}")
        print(f"resuming from {resume} at {where}", file=sys.stderr, flush=True)
    with StopRequest() as stop:
        for round_index in range(len(results), config.train_test_num):
            log("Round %d" % (round_index + 1))
            train, test = split_samples(samples, config.dataset, config.seed, round_index, split_file=split_file)
            resuming = saved_state is not None and saved_state.round_index == round_index
            seed_everything(config.seed + round_index)
            model = build_model(pretrained_backbone=pretrained and not resuming,
                                backbone_weights=None if resuming else backbone_weights, device=device)
            loaders = round_loaders(config, train, test, round_index, device, num_workers, cache_gib)
            state = RunState(round_index=round_index, rounds_done=[list(r) for r in results])
            solver = HyperIQASolver(config, model, loaders, files, state, stop, log)
            if resuming:
                solver.restore(saved)
            results.append(solver.train())
            solver.finish_round(results[-1])
    return results
