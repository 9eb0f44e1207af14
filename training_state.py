"""Where a training run stands and how it stops: `RunState` (saved whole in the resumable state and
restored whole), `load_training_state` (which refuses a state of other settings), and `StopRequest`
(Ctrl-C stops at the next step boundary, after saving)."""
from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from train_config import TrainConfig

STATE_FORMAT = 3  # version of the resumable-state payload


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



@dataclass
class RunState:
    """Where a run stands: saved whole in the resumable state, restored whole."""

    round_index: int = 0
    stage: int = 0  # the stage in progress (0-based; Family.stages)
    epoch: int = 0  # the epoch in progress (0-based, within the stage)
    step: int = 0  # steps done in `epoch`
    best: list[float] | None = None  # [SROCC, PLCC] of the saved checkpoint (of the stage in progress)
    rows: list[list[float]] = field(default_factory=list)  # the table so far: epoch, loss, SRCCs, PLCC, stage
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

    def next_stage(self) -> None:
        self.next_epoch()
        self.stage, self.epoch, self.best = self.stage + 1, 0, None


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
