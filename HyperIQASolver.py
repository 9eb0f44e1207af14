"""The solver of the released training: the training step, the test, and the rounds that
train_test_IQA_sparsity.py runs, with best-checkpoint saving, a resumable state, Ctrl-C handling and
several processes (torchrun); the optimizer and its schedules are in schedule.py.

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
from distributed import Processes, all_concatenated, all_sum, share_buffers_of_rank_zero, wrap_for_training
from folders import Sample
from models import ScoreModel, build_model, save_checkpoint
from nt_regularizer import nt_loss
from schedule import advance_schedule, build_optimizer
from seeding import ADVERSARIAL_TRAINING, seed_everything, seeded_generator
from splits import split_samples
from train_config import RunFiles, TrainConfig

STATE_FORMAT = 2  # version of the resumable-state payload
SINGLE_PROCESS = Processes()


class TrainingDiverged(ValueError):
    """The loss or the test predictions stopped being finite numbers."""


class NonFiniteLoss(ArithmeticError):
    """A training step's loss is NaN or infinite (`value`); nothing was updated."""

    def __init__(self, value: float):
        super().__init__(f"the training loss became {value}")
        self.value = value


def correlations(predictions: np.ndarray, mos: np.ndarray) -> tuple[float, float]:
    """(SROCC, PLCC) of predictions against MOS; NaN when fewer than 2 images or a constant list."""
    if len(predictions) < 2:
        return float("nan"), float("nan")
    return metrics.srocc(predictions, mos), metrics.plcc(predictions, mos)


class StopRequest:
    """While active (a `with` block), the first Ctrl-C (SIGINT) only sets `requested`: the training
    loop saves a resumable state at the next step boundary and stops. A second Ctrl-C interrupts at once,
    unless `patient`: under torchrun a process gets the terminal's SIGINT and the one torchrun forwards,
    and torchrun itself ends processes that do not stop in time. `quiet`: say nothing (ranks > 0)."""

    def __init__(self, quiet: bool = False, patient: bool = False):
        self.requested, self.quiet, self.patient = False, quiet, patient
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
            if self.patient:
                return
            raise KeyboardInterrupt
        self.requested = True
        if not self.quiet:
            again = "" if self.patient else " (Ctrl-C again to quit now)"
            print(f"Ctrl-C: stopping after the current step and saving a resumable state{again}",
                  file=sys.stderr, flush=True)


TABLE_HEADER = "Epoch\tTrain_Loss\tTrain_SRCC\tTest_SRCC\tTest_PLCC"


def table_row(epoch: int, loss: float, train_srcc: float, test_srcc: float, test_plcc: float) -> str:
    """One line of the released per-epoch table (epoch counted from 1)."""
    return "%d\t%4.3f\t\t%4.4f\t\t%4.4f\t\t%4.4f" % (epoch, loss, train_srcc, test_srcc, test_plcc)


# ---------------------------------------------------------------------------------------------
# The step and the test


class Crafting(NamedTuple):
    """How a step under adversarial training crafts its adversarial patches: against `model` (the plain
    network, also when the step runs it in DistributedDataParallel), PGD's starts drawn from `generator`."""

    model: ScoreModel
    generator: torch.Generator | None


def training_loss(model: ScoreModel, images: torch.Tensor, mos: torch.Tensor, config: TrainConfig,
                  crafting: Crafting | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, scores (B,)) of a batch: L1, plus weight x the NT penalty with `config.if_grad`.

    With `config.adv_train`, a share of the batch is first replaced by adversarial patches and their
    labels (adversarial_training.adversarial_batch), made as `crafting` says (default: against
    `model`, PGD's start from the global generator); the loss and the returned scores are then those
    of the mixed batch.
    """
    if config.adv_train != "none":
        crafting = crafting or Crafting(model, None)
        images, mos, _, _ = adversarial_batch(crafting.model, images, mos, config, crafting.generator)
    if config.if_grad:
        loss = nt_loss(model, images, mos, config.weight, config.h, config.nt_mode)
        return loss.total, loss.scores
    scores = model(images)
    return F.l1_loss(scores, mos), scores


def train_step(model: ScoreModel, optimizer: torch.optim.Optimizer, images: torch.Tensor, mos: torch.Tensor,
               config: TrainConfig, loss_scale: float = 1.0, agree: Callable[[float], float] | None = None,
               crafting: Crafting | None = None) -> tuple[float, torch.Tensor]:
    """One optimizer step on a batch: images (B, 3, 224, 224) normalized, mos (B,).

    loss_scale: a factor on the loss (a process's share of a global batch, see HyperIQASolver);
    agree: maps this process's loss value to the one all processes agree on (their mean), called
    before anything is updated; crafting: how adversarial patches are made (see `training_loss`).
    Returns (that loss value, detached scores (B,) on the CPU: of the clean batch, or under
    adversarial training of the mixed batch). Raises NonFiniteLoss, before anything is updated, when
    the loss is not a finite number.
    """
    optimizer.zero_grad()
    loss, scores = training_loss(model, images, mos, config, crafting)
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


@torch.inference_mode()
def predict_images(model: nn.Module, loader: PatchLoader, epoch: int,
                   processes: Processes = SINGLE_PROCESS) -> np.ndarray:
    """Per-image mean prediction (N,) over the patches `loader` draws in `epoch`, in eval mode (the
    model's mode is restored). With several processes, each predicts its share of the images and
    every process gets all the predictions."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(loader.samples), dtype=torch.float64, device=loader.device)
    counts = torch.zeros_like(sums)
    for images, _, index in loader.batches(epoch):
        sums.index_add_(0, index, model(images).double())
        counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
    model.train(was_training)
    all_sum(processes, sums)
    all_sum(processes, counts)
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
                  round_index: int, processes: Processes = SINGLE_PROCESS, num_workers: int = 0,
                  cache_gib: float = DEFAULT_CACHE_GIB) -> RoundLoaders:
    """The training and test loaders of round `round_index` for this process, their random streams keyed
    by the round (the same batches and patches whatever the number of processes)."""
    where = dict(device=processes.device, rank=processes.rank, world_size=processes.world_size)
    return RoundLoaders(
        make_train_loader(train_samples, config.dataset, config.train_patch_num, config.batch_size, config.seed,
                          round_index, num_workers, cache_gib=cache_gib, **where),
        make_test_loader(test_samples, config.dataset, config.test_patch_num, config.batch_size, config.seed,
                         round_index, num_workers, **where))


class HyperIQASolver:
    """Trains and tests one model on one train/test split (one round), as the released solver.

    Each epoch: a pass over the training batches (`train_step`), then the test (`predict_images`;
    SROCC and PLCC against MOS). The model with the best test SROCC so far is saved atomically to
    `files.checkpoint` as {'model', 'optimizer', 'epoch', 'srocc', 'plcc', 'config'}; unlike the
    released code (which started from best = 0), the first epoch is always saved, so a run whose
    SROCC is never positive still leaves a checkpoint. Then the schedule prepares the next epoch and
    the resumable state (model, optimizer, RunState) is written to `files.state`; it is also written
    when `stop` is requested, at the next step boundary.

    Several processes (torchrun): each trains on its share of every global batch, in
    DistributedDataParallel, with its loss weighted by its share (so the averaged gradient is the
    global batch's); every step they agree on the loss and on stopping; the test images are shared
    out and the predictions summed; rank 0 alone logs and writes files.

    Loss and test predictions are checked: a NaN or infinite value raises TrainingDiverged naming the
    epoch and step, leaving the checkpoint and state of the last good epoch untouched.
    """

    def __init__(self, config: TrainConfig, network: nn.Module, loaders: RoundLoaders, files: RunFiles,
                 state: RunState | None = None, stop: StopRequest | None = None, log: Callable[[str], None] = print,
                 processes: Processes = SINGLE_PROCESS):
        self.config, self.network, self.loaders, self.files = config, network, loaders, files
        self.stop, self.log, self.processes = stop or StopRequest(), log, processes
        self.state = state or RunState()
        self.test_mos = np.array([s.mos for s in loaders.test.samples], dtype=np.float64)
        self.model = wrap_for_training(processes, network, config.sync_bn)  # what the steps run
        self.network.train()
        self.optimizer = build_optimizer(network, config, 0)
        self._use_saved_window()
        self._stop_agreed = False

    def _use_saved_window(self) -> None:
        """A resumed run keeps the shuffling windows it started with, whatever the cache budget now."""
        if self.state.train_window == 0:
            self.state.train_window = self.loaders.train.window_images
        elif self.state.train_window != self.loaders.train.window_images:
            self.loaders.train.set_window(self.state.train_window)

    def _where(self, epoch: int, step: int | None = None) -> str:
        where = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
        return (f"round {self.state.round_index + 1}, " if self.config.train_test_num > 1 else "") + where

    def _agree(self, loss: float) -> float:
        """The mean loss of the step over the processes; also agrees on whether to stop after it."""
        values = all_sum(self.processes, torch.tensor([loss, float(self.stop.requested)], dtype=torch.float64))
        self._stop_agreed = bool(values[1] > 0)
        return values[0].item() / self.processes.world_size

    def _agreed_stop(self) -> bool:
        """Whether any process was asked to stop (the same answer on every process)."""
        return bool(all_sum(self.processes, torch.tensor([float(self.stop.requested)], dtype=torch.float64))[0] > 0)

    def _gather_records(self) -> None:
        """Rank 0 takes the training scores and MOS of every process (for Train_SRCC and the state)."""
        state = self.state
        scores = all_concatenated(self.processes, state.epoch_scores)
        mos = all_concatenated(self.processes, state.epoch_mos)
        keep = self.processes.is_main
        state.epoch_scores, state.epoch_mos = (scores, mos) if keep else ([], [])

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
        state, steps, world = self.state, len(self.loaders.train), self.processes.world_size
        report_every = max(1, steps // 10)
        started, first_step = time.perf_counter(), state.step
        for images, mos, index in self.loaders.train.batches(epoch, start_batch=state.step):
            index = index.cpu()
            real = index >= 0  # placeholders (index -1) of a process left without an entry carry no score
            share = loss_share(index, self.loaders.train.global_batch_length(state.step), world)
            try:
                loss, scores = train_step(self.model, self.optimizer, images, mos, self.config, share, self._agree,
                                          self.crafting(epoch, state.step))
            except NonFiniteLoss as exc:
                raise TrainingDiverged(f"{exc} at {self._where(epoch, state.step + 1)}; stopped ({self._kept()}); "
                                       "try a lower --lr") from None
            state.step += 1
            state.epoch_losses.append(loss)
            state.epoch_scores += scores[real].tolist()
            state.epoch_mos += mos.cpu()[real].tolist()
            if self.processes.is_main and (state.step == first_step + 1 or state.step % report_every == 0
                                           or state.step == steps):
                seconds = (time.perf_counter() - started) / (state.step - first_step)
                print(f"{self._where(epoch, state.step)}/{steps}: loss {np.mean(state.epoch_losses):.3f}, "
                      f"{seconds:.2f} s/step", file=sys.stderr, flush=True)
            # Alone, stop as soon as asked; with others, at the step where all agreed (see _agree).
            if self._stop_agreed or (world == 1 and self.stop.requested):
                self._stop(epoch)
        self._gather_records()
        train_srcc = correlations(np.array(state.epoch_scores), np.array(state.epoch_mos))[0]
        share_buffers_of_rank_zero(self.processes, self.network)
        predictions = predict_images(self.network, self.loaders.test, epoch, self.processes)
        if not np.isfinite(predictions).all():
            raise TrainingDiverged(f"the test predictions are not finite numbers after {self._where(epoch)}; "
                                   f"stopped ({self._kept()}); try a lower --lr")
        test_srcc, test_plcc = correlations(predictions, self.test_mos)
        if state.best is None or test_srcc > state.best[0]:  # NaN never beats a number
            state.best = [test_srcc, test_plcc]
            if self.processes.is_main:
                save_checkpoint(self.files.checkpoint, self.network, self.optimizer, epoch=epoch + 1,
                                srocc=test_srcc, plcc=test_plcc, config=asdict(self.config))
        row = [epoch + 1, float(np.mean(state.epoch_losses)), train_srcc, test_srcc, test_plcc]
        state.rows.append(row)
        self.log(table_row(*row))
        self.optimizer = advance_schedule(self.optimizer, self.network, self.config, epoch + 1)
        state.next_epoch()
        self.save_state()
        if self._agreed_stop():  # every process must take the same way: the next epoch, or _stop's save
            self._stop(epoch + 1)

    def crafting(self, epoch: int, step: int) -> Crafting | None:
        """How the step `step` (0-based) of `epoch` crafts its adversarial patches under adversarial
        training: against the plain network, with the random stream keyed by (round, epoch, step,
        rank), so a resumed run draws what the uninterrupted one drew and each process its own."""
        if self.config.adv_train == "none":
            return None
        return Crafting(self.network, seeded_generator(self.config.seed, ADVERSARIAL_TRAINING, self.state.round_index,
                                                       epoch, step, self.processes.rank))

    def _kept(self) -> str:
        if self.state.best is None:
            return "no checkpoint was written"
        return f"the best checkpoint so far stays at {self.files.checkpoint}"

    def _stop(self, epoch: int) -> None:
        self.save_state()
        where = self._where(epoch, self.state.step) if self.state.step else f"the start of {self._where(epoch)}"
        if self.processes.is_main:
            print(f"stopped at {where}; resumable state saved to {self.files.state}; continue with --resume",
                  file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    def finish_round(self, result: tuple[float, float]) -> None:
        """Record the round's result in the state, so that a resumed run starts the next round."""
        self.state.rounds_done.append(list(result))
        self.save_state()

    # -- resumable state

    def save_state(self) -> None:
        """Write the resumable state (atomically) to `files.state`, if there is one (rank 0; every
        process takes part, to hand over its records)."""
        self._gather_records()
        if self.files.state is None or not self.processes.is_main:
            return
        save_checkpoint(self.files.state, self.network, self.optimizer, config=asdict(self.config),
                        progress={"format": STATE_FORMAT, **asdict(self.state)})

    def restore(self, saved: Mapping) -> None:
        """Continue from a state written by `save_state` (see `load_training_state`); with several
        processes, rank 0 takes the saved records, and the batches are the same global batches."""
        self.state = RunState.from_saved(saved)
        if not self.processes.is_main:
            self.state.epoch_scores, self.state.epoch_mos = [], []
        self.network.load_state_dict(saved["model"])
        self.optimizer = build_optimizer(self.network, self.config, self.state.epoch)
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


def train_and_test(config: TrainConfig, samples: Sequence[Sample], processes: Processes,
                   checkpoint_dir: str | os.PathLike, split_file: str | None = None, pretrained: bool = True,
                   backbone_weights: str | None = None, num_workers: int = 0, cache_gib: float = DEFAULT_CACHE_GIB,
                   resume: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> list[tuple[float, float]]:
    """All `config.train_test_num` rounds: split, fresh model, `HyperIQASolver.train()`, in this process
    of `processes` (distributed.process_group).

    Returns the best (SROCC, PLCC) of each round. The best checkpoint of each round is written to
    `config.run_files(checkpoint_dir).checkpoint` (a later round overwrites it, as released) and the
    resumable state beside it. With `resume` (a state path), the run continues where that state
    stopped, with any number of processes (the same global batches; see HyperIQASolver.restore).
    Ctrl-C stops after saving the state (KeyboardInterrupt is raised).
    """
    files = config.run_files(checkpoint_dir)
    saved = load_training_state(resume, config) if resume is not None else None
    saved_state = RunState.from_saved(saved) if saved else None
    results = [tuple(r) for r in saved_state.rounds_done] if saved_state else []
    if saved_state and processes.is_main:
        where = (f"round {saved_state.round_index + 1}, epoch {saved_state.epoch + 1}, step {saved_state.step}"
                 if saved_state.round_index == len(results) else f"round {len(results) + 1}")
        print(f"resuming from {resume} at {where}", file=sys.stderr, flush=True)
    with StopRequest(quiet=not processes.is_main, patient=processes.launched) as stop:
        for round_index in range(len(results), config.train_test_num):
            log("Round %d" % (round_index + 1))
            train, test = split_samples(samples, config.dataset, config.seed, round_index, split_file=split_file)
            resuming = saved_state is not None and saved_state.round_index == round_index
            seed_everything(config.seed + round_index)
            network = build_model(pretrained_backbone=pretrained and not resuming,
                                  backbone_weights=None if resuming else backbone_weights, device=processes.device)
            loaders = round_loaders(config, train, test, round_index, processes, num_workers, cache_gib)
            state = RunState(round_index=round_index, rounds_done=[list(r) for r in results])
            solver = HyperIQASolver(config, network, loaders, files, state, stop, log, processes)
            if resuming:
                solver.restore(saved)
            results.append(solver.train())
            solver.finish_round(results[-1])
    return results
