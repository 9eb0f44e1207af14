"""The solver of the released training, for every model family: the training step, the test, and the
rounds that train_test_IQA_sparsity.py runs, with best-checkpoint saving, a resumable state, Ctrl-C
handling and several processes (torchrun). What differs between families (views, loss, optimizer
stages) comes from the family (families/base.py); HyperIQA's optimizer schedule is in schedule.py.

`train_step` (training_step.py) and `predict_images` are plain functions over a
network, an optimizer and a loader (with `--adv_train`, the step first swaps a share of the batch for
adversarial views: adversarial_training.py);
`HyperIQASolver` runs the stages and epochs of one round around them and keeps its position in a
`RunState`, which is saved and restored whole; `train_and_test` runs the rounds.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import asdict
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn

import folders
import metrics
from adversarial_training import label_range, share_crafting
from checkpoints import read_checkpoint, save_checkpoint
from data_loader import DEFAULT_CACHE_GIB, ViewLoader, make_test_loader, make_train_loader
from distributed import (Processes, all_concatenated, all_sum, share_buffers_of_rank_zero, share_state_of_rank_zero,
                         wrap_for_training)
from families.base import BuildOptions, QualityModel, Stage
from folders import Sample
from models import build_network, get_family
from seeding import seed_everything
from splits import round_split
from train_config import RunFiles, TrainConfig
from training_state import STATE_FORMAT, RunState, StopRequest, load_training_state
from training_step import Crafting, NonFiniteLoss, share_step

SINGLE_PROCESS = Processes()


class TrainingDiverged(ValueError):
    """The loss or the test predictions stopped being finite numbers."""


def correlations(predictions: np.ndarray, mos: np.ndarray) -> tuple[float, float]:
    """(SROCC, PLCC) of predictions against MOS; NaN when fewer than 2 images or a constant list."""
    if len(predictions) < 2:
        return float("nan"), float("nan")
    return metrics.srocc(predictions, mos), metrics.plcc(predictions, mos)


TABLE_HEADER = "Epoch\tTrain_Loss\tTrain_SRCC\tTest_SRCC\tTest_PLCC"  # Val_ for a family with a validation split


def table_row(epoch: int, loss: float, train_srcc: float, test_srcc: float, test_plcc: float) -> str:
    """One line of the released per-epoch table (epoch counted from 1)."""
    return "%d\t%4.3f\t\t%4.4f\t\t%4.4f\t\t%4.4f" % (epoch, loss, train_srcc, test_srcc, test_plcc)


# ---------------------------------------------------------------------------------------------
# The test


@torch.inference_mode()
def predict_images(model: QualityModel, loader: ViewLoader, epoch: int, processes: Processes = SINGLE_PROCESS,
                   outputs: Callable[[torch.Tensor], torch.Tensor] | None = None, width: int = 1) -> np.ndarray:
    """Per-image mean prediction (N,) over the views `loader` draws in `epoch`, in eval mode (the
    model's mode is restored). With several processes, each predicts its share of the images and
    every process gets all the predictions. `outputs`: what to average instead of the scores, a
    function of the pixels (B, 3, h, w) giving `width` values per view (B, width), run with `model`
    in eval mode; (N, width) is then returned."""
    was_training = model.training
    model.eval()
    sums = torch.zeros((len(loader.samples), width), dtype=torch.float64, device=loader.device)
    counts = torch.zeros((len(loader.samples), 1), dtype=torch.float64, device=loader.device)
    for images, _, index in loader.batches(epoch):
        sums.index_add_(0, index, (model if outputs is None else outputs)(images).double().reshape(len(index), width))
        counts.index_add_(0, index, torch.ones((len(index), 1), dtype=torch.float64, device=counts.device))
    model.train(was_training)
    all_sum(processes, sums)
    all_sum(processes, counts)
    means = (sums / counts).cpu().numpy()
    return means[:, 0] if outputs is None else means


# ---------------------------------------------------------------------------------------------
# One round


def mos_of(loader: ViewLoader) -> np.ndarray:
    """The MOS (N,) of a loader's images, float64."""
    return np.array([sample.mos for sample in loader.samples], dtype=np.float64)


class RoundLoaders(NamedTuple):
    train: ViewLoader
    test: ViewLoader
    validation: ViewLoader | None = None  # where the checkpoint is selected (None: on `test`)
    fit: ViewLoader | None = None  # the training images in order, for Family.calibration


def round_loaders(config: TrainConfig, train_samples: Sequence[Sample], test_samples: Sequence[Sample],
                  round_index: int, processes: Processes = SINGLE_PROCESS, num_workers: int = 0,
                  cache_gib: float = DEFAULT_CACHE_GIB,
                  validation_samples: Sequence[Sample] | None = None) -> RoundLoaders:
    """The loaders of round `round_index` for this process, with the views of `config.model`'s family
    (as its options make it), their random streams keyed by the round (the same batches and views
    whatever the number of processes): training, test, validation (of `validation_samples`, if any),
    and for a family with a calibration the training images in order, with their training views.
    A family's `split_labels` rescales each split's labels; with its `drop_last`, the last partial
    batch of each training epoch is dropped, and so are the test images past the last full test batch
    (after the rescaling, as released)."""
    family = get_family(config.model).configured(config.options)
    if family.split_labels is not None:
        train_samples, test_samples = family.split_labels(train_samples), family.split_labels(test_samples)
        if validation_samples is not None:
            validation_samples = family.split_labels(validation_samples)
    if family.drop_last:
        test_samples = test_samples[:len(test_samples) // config.batch_size * config.batch_size]
        if not test_samples:
            raise ValueError(f"{family.display_name}'s released test loader drops the last partial batch: the test "
                             f"split needs at least --batch_size {config.batch_size} images")
    where = dict(device=processes.device, rank=processes.rank, world_size=processes.world_size,
                 input_sizes=family.input_sizes, model_name=family.display_name)
    train_views = family.views(config.dataset, True, config.train_patch_num)
    test_views = family.views(config.dataset, False, config.test_patch_num)

    def in_order(samples: Sequence[Sample], views) -> ViewLoader:
        return make_test_loader(samples, config.dataset, views, config.batch_size, config.seed, round_index,
                                num_workers, **where)

    return RoundLoaders(
        make_train_loader(train_samples, config.dataset, train_views, config.batch_size, config.seed, round_index,
                          num_workers, cache_gib=cache_gib, min_share=family.min_batch_per_process,
                          drop_last=family.drop_last, **where),
        in_order(test_samples, test_views),
        None if validation_samples is None else in_order(validation_samples, test_views),
        None if family.calibration is None else in_order(train_samples, train_views))


def check_images(config: TrainConfig, samples: Sequence[Sample], split_file: str | None = None) -> None:
    """Build (and drop) the first round's loaders, which read every image header and check it against
    the family's views: a missing, unreadable or too small image raises ImageError naming it, so that
    the training script stops on bad data before it writes anything. Decodes nothing."""
    train, test, validation = round_split(samples, config.dataset, config.seed, 0, split_file,
                                          get_family(config.model).validation_split(config.dataset))
    round_loaders(config, train, test, 0, validation_samples=validation)


class HyperIQASolver:
    """Trains and tests one model of any family on one train/test split (one round), as the released
    solver, through the stages of the family's released training (one for HyperIQA; DBCNN trains its
    last layer, then everything).

    Each epoch: a pass over the training batches (`train_step`), then the test (`predict_images`;
    SROCC and PLCC against MOS; on the validation loader when there is one). The model with the best
    test (validation) result so far in the stage (the family's `selection_score` of SROCC and PLCC:
    SROCC, LinearityIQA's |SROCC|, MANIQA's sum; NaN never beats a number) is saved atomically to `files.checkpoint` as
    {'model', 'optimizer', 'family', 'stage', 'epoch', 'srocc', 'plcc', 'config'} and the family's
    extras; unlike the released code (which started from best = 0), the first epoch of a stage is
    always saved, so a run whose SROCC is never positive still leaves a checkpoint. A stage after the
    first starts from the best checkpoint of the one before (`Stage.from_previous_best`). Then the
    stage prepares the next epoch's optimizer and the resumable state (model, optimizer, RunState) is
    written to `files.state`; it is also written when `stop` is requested, at the next step boundary.
    After the last stage, a family with a calibration or a validation split gets `_finish`.

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
        self.family = get_family(config.model).configured(config.options)
        self.stages: Sequence[Stage] = self.family.stages(config)
        self.quality = self.family.quality_model(network)  # the plain network behind its normalization
        self.label_range = None if config.adv_train == "none" else label_range(
            config, [sample.mos for sample in loaders.train.samples],
            folders.score_range(config.dataset, self.family.score_range))
        self.state = state or RunState()
        self.selection = loaders.test if loaders.validation is None else loaders.validation  # tested each epoch
        self.test_mos = mos_of(self.selection)
        self.network.train()
        self._enter_stage(self.state.stage)
        self._use_saved_window()
        self._stop_agreed = False

    def _enter_stage(self, index: int) -> None:
        """Make stage `index` the current one: its parameters prepared, the network wrapped for training
        (after the preparation: DistributedDataParallel syncs the parameters that train), and the
        optimizer of the state's epoch."""
        self.stage = self.stages[index]
        self.stage.prepare(self.network)
        self.model = wrap_for_training(self.processes, self.network, self.config.sync_bn)  # what the steps run
        self.optimizer = self.stage.optimizer(self.network, self.config, self.state.epoch)

    def _use_saved_window(self) -> None:
        """A resumed run keeps the shuffling windows it started with, whatever the cache budget now."""
        if self.state.train_window == 0:
            self.state.train_window = self.loaders.train.window_images
        elif self.state.train_window != self.loaders.train.window_images:
            self.loaders.train.set_window(self.state.train_window)

    def _where(self, epoch: int, step: int | None = None) -> str:
        where = f"epoch {epoch + 1}" + (f", step {step}" if step is not None else "")
        if len(self.stages) > 1:
            where = f"stage {self.state.stage + 1}, " + where
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

    def _log_header(self, stage: int) -> None:
        if len(self.stages) > 1:
            self.log(f"Stage {stage + 1}/{len(self.stages)}: {self.stages[stage].name}")
        self.log(TABLE_HEADER if self.loaders.validation is None else TABLE_HEADER.replace("Test_", "Val_"))

    def train(self) -> tuple[float, float]:
        """Train from the current position to the last epoch of the last stage; return the best (SROCC,
        PLCC) of the last stage."""
        for stage in range(self.state.stage + 1):  # resumed: the part of the table printed before
            self._log_header(stage)
            for row in self.state.rows:
                if int(row[5]) == stage:
                    self.log(table_row(int(row[0]), *row[1:5]))
        while True:
            for epoch in range(self.state.epoch, self.stage.epochs):
                self.run_epoch(epoch)
            if self.state.stage + 1 == len(self.stages):
                break
            self._next_stage()
        best_srcc, best_plcc = self.state.best if self.state.best is not None else (float("nan"), float("nan"))
        on = "test" if self.loaders.validation is None else "validation"
        self.log("Best %s SRCC %f, PLCC %f" % (on, best_srcc, best_plcc))
        return self._finish() or (best_srcc, best_plcc)

    def _finish(self) -> tuple[float, float] | None:
        """The end of a round for a family with a calibration or a validation split: a copy of the
        network takes the saved checkpoint's weights (rank 0 reads them); the calibration is fitted on
        the training images (their training views); the checkpoint is tested; rank 0 writes it again
        with the fitted map (the family's extras) and the test result. Returns the test (SROCC, PLCC),
        or None (HyperIQA: nothing to do). The training network and the resumable state stay as they are."""
        calibration, tested = self.family.calibration, self.loaders.validation is not None
        if calibration is None and not tested:
            return None
        final = copy.deepcopy(self.network)
        if self.processes.is_main:
            saved = read_checkpoint(self.files.checkpoint)
            final.load_state_dict(saved.state)
        share_state_of_rank_zero(self.processes, final)
        quality, extras, result = self.family.quality_model(final), {}, None
        if calibration is not None:
            raw = predict_images(quality, self.loaders.fit, 0, self.processes,
                                 lambda pixels: calibration.raw_outputs(final, quality.inputs(pixels)),
                                 calibration.width)
            calibration.fit(final, raw, mos_of(self.loaders.fit))
            extras = self.family.checkpoint_extras(final)
            self.log(f"Fitted on the {len(raw)} training images: " + ", ".join(f"{k} {v}" for k, v in extras.items()))
        if tested:
            predictions = predict_images(quality, self.loaders.test, 0, self.processes)
            result = correlations(predictions, mos_of(self.loaders.test))
            extras.update(test_srocc=result[0], test_plcc=result[1])
            self.log("Test SRCC %f, PLCC %f (%d images, the checkpoint of the best validation SRCC)"
                     % (*result, len(self.loaders.test.samples)))
        if self.processes.is_main:
            meta = {**saved.meta, **extras}
            save_checkpoint(self.files.checkpoint, final, meta.pop("optimizer", None), **meta)
        return result

    def _next_stage(self) -> None:
        """Move on to the next stage, from the best checkpoint of this one (read by rank 0, sent to all)."""
        self.state.next_stage()
        if self.stages[self.state.stage].from_previous_best:
            if self.processes.is_main:
                self.network.load_state_dict(read_checkpoint(self.files.checkpoint).state)
            share_state_of_rank_zero(self.processes, self.network)
        self._enter_stage(self.state.stage)
        self._log_header(self.state.stage)
        self.save_state()

    def run_epoch(self, epoch: int) -> None:
        """Train `epoch` (from the current step), test, keep the best checkpoint, prepare the next epoch."""
        state, steps, world = self.state, len(self.loaders.train), self.processes.world_size
        report_every = max(1, steps // 10)
        started, first_step = time.perf_counter(), state.step
        for pixels, mos, index in self.loaders.train.batches(epoch, start_batch=state.step):
            index = index.cpu()
            real = index >= 0  # placeholders (index -1) of a process left without an entry carry no score
            if self.stage.per_step is not None:
                self.stage.per_step(self.optimizer, epoch * steps + state.step)
            try:
                loss, scores = share_step(self.model, self.family, self.optimizer, pixels, mos, index,
                                          self.loaders.train.global_batch_length(state.step), world, self.config,
                                          self._agree, self.crafting(epoch, state.step))
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
        predictions = predict_images(self.quality, self.selection, epoch, self.processes)
        if not np.isfinite(predictions).all():
            raise TrainingDiverged(f"the test predictions are not finite numbers after {self._where(epoch)}; "
                                   f"stopped ({self._kept()}); try a lower --lr")
        test_srcc, test_plcc = correlations(predictions, self.test_mos)
        score = self.family.selection_score
        if state.best is None or score(test_srcc, test_plcc) > score(*state.best):  # NaN never beats a number
            state.best = [test_srcc, test_plcc]
            if self.processes.is_main:
                save_checkpoint(self.files.checkpoint, self.network, self.optimizer, family=self.family.name,
                                stage=state.stage + 1, epoch=epoch + 1, srocc=test_srcc, plcc=test_plcc,
                                config=asdict(self.config), **self.family.checkpoint_extras(self.network))
        row = [epoch + 1, float(np.mean(state.epoch_losses)), train_srcc, test_srcc, test_plcc, state.stage]
        state.rows.append(row)
        self.log(table_row(*row[:5]))
        self.optimizer = self.stage.next_epoch(self.optimizer, self.network, self.config, epoch + 1)
        state.next_epoch()
        self.save_state()
        if self._agreed_stop():  # every process must take the same way: the next epoch, or _stop's save
            self._stop(epoch + 1)

    def crafting(self, epoch: int, step: int) -> Crafting | None:
        """How the step `step` (0-based) of `epoch` crafts its adversarial views under adversarial
        training: against the plain network, this process's part of the global batch's adversarial
        views, each PGD start from a stream keyed by (round, epoch, step, the view's position in the
        global batch, and the stage after the first; adversarial_training.share_crafting), so that a
        resumed run, and a run with any number of processes, crafts what the uninterrupted one did;
        labels corrected within `label_range`."""
        if self.config.adv_train == "none":
            return None
        keys = (self.state.round_index, epoch, step) + ((self.state.stage,) if self.state.stage else ())
        share = share_crafting(self.config, keys, self.loaders.train.global_batch_length(step), self.processes.rank,
                               self.processes.world_size)
        return Crafting(self.quality, share.generators, share.views, self.label_range)

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
        save_checkpoint(self.files.state, self.network, self.optimizer, family=self.family.name,
                        config=asdict(self.config), progress={"format": STATE_FORMAT, **asdict(self.state)})

    def restore(self, saved: Mapping) -> None:
        """Continue from a state written by `save_state` (see `load_training_state`); with several
        processes, rank 0 takes the saved records, and the batches are the same global batches."""
        self.state = RunState.from_saved(saved)
        if not self.processes.is_main:
            self.state.epoch_scores, self.state.epoch_mos = [], []
        self.network.load_state_dict(saved["model"])
        self._enter_stage(self.state.stage)
        self.optimizer.load_state_dict(saved["optimizer"])
        self._use_saved_window()


def train_and_test(config: TrainConfig, samples: Sequence[Sample], processes: Processes,
                   checkpoint_dir: str | os.PathLike, split_file: str | None = None, pretrained: bool = True,
                   backbone_weights: str | None = None, num_workers: int = 0, cache_gib: float = DEFAULT_CACHE_GIB,
                   resume: str | os.PathLike | None = None, log: Callable[[str], None] = print,
                   build_options: Mapping[str, object] | None = None) -> list[tuple[float, float]]:
    """All `config.train_test_num` rounds: split, fresh network of `config.model`'s family (ImageNet
    backbone unless not `pretrained`, `build_options` the family's file options, see
    families.base.BuildOptions), `HyperIQASolver.train()`, in this process of `processes`
    (distributed.process_group).

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
        stage = f"stage {saved_state.stage + 1}, " if len(get_family(config.model).stages(config)) > 1 else ""
        where = (f"round {saved_state.round_index + 1}, {stage}epoch {saved_state.epoch + 1}, step {saved_state.step}"
                 if saved_state.round_index == len(results) else f"round {len(results) + 1}")
        print(f"resuming from {resume} at {where}", file=sys.stderr, flush=True)
    with StopRequest(quiet=not processes.is_main, patient=processes.launched) as stop:
        for round_index in range(len(results), config.train_test_num):
            log("Round %d" % (round_index + 1))
            train, test, validation = round_split(samples, config.dataset, config.seed, round_index, split_file,
                                                  get_family(config.model).validation_split(config.dataset))
            if validation is not None:
                log("Split: %d training, %d validation, %d test images" % (len(train), len(validation), len(test)))
            resuming = saved_state is not None and saved_state.round_index == round_index
            seed_everything(config.seed + round_index)
            options = BuildOptions(pretrained and not resuming, None if resuming else backbone_weights,
                                   {**config.options, **(build_options or {})})
            network = build_network(config.model, options, processes.device)
            loaders = round_loaders(config, train, test, round_index, processes, num_workers, cache_gib, validation)
            state = RunState(round_index=round_index, rounds_done=[list(r) for r in results])
            solver = HyperIQASolver(config, network, loaders, files, state, stop, log, processes)
            if resuming:
                solver.restore(saved)
            results.append(solver.train())
            solver.finish_round(results[-1])
    return results
