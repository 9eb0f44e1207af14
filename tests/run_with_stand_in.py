"""The scripts with the tests' stand-in model, as one process or as one of several under torchrun.

    python tests/run_with_stand_in.py train ARGS...
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/run_with_stand_in.py train ARGS...
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/run_with_stand_in.py evaluate ARGS...
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/run_with_stand_in.py gradients OUT.pt ...

`train ARGS...` / `evaluate ARGS...`: train_test_IQA_sparsity.py's / evaluate_robustness.py's main on
ARGS, through cli.run_main as the scripts run it, with the stand-in model in place of HyperIQA (for
evaluate, every --checkpoint loads as the stand-in). HARNESS_FAIL_RANK and HARNESS_FAIL_FORWARD make
that rank's stand-in raise a ValueError at that training forward (a failing process);
HARNESS_FORWARD_SECONDS makes every training forward last that long (time to interrupt a run).
HARNESS_STOP_RANK and HARNESS_STOP_AFTER_EPOCH ask that rank alone to stop (as a Ctrl-C reaching only
that process would) right after it saved the state at the end of that epoch (1-based).

`gradients OUT.pt BATCH CSV COUNT...`: for the first COUNT images of the CSV data set, one training
step on each global batch of BATCH entries through the solver's functions (each process's share, its
loss weight, its adversarial views, share_step on the DistributedDataParallel model), float64 with
BatchNorm in eval mode, for each config of tests/gradient_steps.py (NT; adversarial training with
PGD); rank 0 saves {config name: the averaged parameter gradients of every step}.
"""
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cli  # noqa: E402
import distributed  # noqa: E402
import evaluate_robustness  # noqa: E402
import HyperIQASolver  # noqa: E402
import models  # noqa: E402
import train_test_IQA_sparsity  # noqa: E402
from tests.stand_in import StandInScoreModel, stand_in_quality_model  # noqa: E402

torch.set_num_threads(1)


class HarnessStandIn(StandInScoreModel):
    """The stand-in, doing in its training forwards what the environment asks of this process."""

    def __init__(self):
        super().__init__()
        failing = os.environ.get("HARNESS_FAIL_RANK") == os.environ.get("RANK", "0")
        self.fail_at = int(os.environ["HARNESS_FAIL_FORWARD"]) if failing else 0
        self.seconds = float(os.environ.get("HARNESS_FORWARD_SECONDS", "0"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.training_forwards + 1 == self.fail_at:
            raise ValueError(f"simulated failure at training forward {self.fail_at}")
        if self.training:
            time.sleep(self.seconds)
        return super().forward(x)


def ask_to_stop_after_an_epoch() -> None:
    """On the rank HARNESS_STOP_RANK names, request a stop right after the end-of-epoch save of epoch
    HARNESS_STOP_AFTER_EPOCH: the moment when the other processes may already be in the next epoch."""
    if os.environ.get("HARNESS_STOP_RANK") != os.environ.get("RANK", "0"):
        return
    epoch, save_state = int(os.environ["HARNESS_STOP_AFTER_EPOCH"]), HyperIQASolver.HyperIQASolver.save_state

    def save_then_ask_to_stop(solver) -> None:
        save_state(solver)
        if solver.state.epoch == epoch and solver.state.step == 0:
            solver.stop.requested = True

    HyperIQASolver.HyperIQASolver.save_state = save_then_ask_to_stop


def save_gradients(out: str, batch_size: int, dataset_csv: str, counts: list[int]) -> None:
    """tests/gradient_steps.py's gradients of every step of every config, in this process's share."""
    import folders
    from tests.gradient_steps import STEP_CONFIGS, gradients_of_each_step

    with distributed.process_group("cpu") as processes:
        samples = folders.list_samples("csv", dataset_csv)
        steps = {name: gradients_of_each_step(processes, samples, batch_size, counts, name) for name in STEP_CONFIGS}
        if processes.is_main:
            torch.save(steps, out)


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "gradients":
        save_gradients(rest[0], int(rest[1]), rest[2], [int(count) for count in rest[3:]])
    elif command == "evaluate":
        models.load_model = lambda path, family, device: stand_in_quality_model().to(device).eval()
        sys.argv = ["evaluate_robustness.py", *rest]
        cli.run_main(evaluate_robustness.main, evaluate_robustness.parse_args(rest))
    else:
        HyperIQASolver.build_network = lambda *args, **kwargs: HarnessStandIn()
        ask_to_stop_after_an_epoch()
        sys.argv = ["train_test_IQA_sparsity.py", *rest]
        cli.run_main(train_test_IQA_sparsity.main, train_test_IQA_sparsity.parse_args(rest))
