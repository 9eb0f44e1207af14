"""Several processes: torchrun started by the tests themselves, 2 processes with gloo on the CPU, on tiny
fake data sets, with the stand-in model in place of HyperIQA (tests/run_with_stand_in.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data_loader
import checkpoints
import distributed
import folders
import training_step
import models
from tests import fake_datasets, gradient_steps
from tests.interrupt import interrupt_when
from tests.stand_in import StandInScoreModel
from train_config import TrainConfig

MAIN = Path(__file__).resolve().parents[1]
HARNESS = str(MAIN / "tests" / "run_with_stand_in.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TABLE_HEADER = "Epoch\tTrain_Loss\tTrain_SRCC\tTest_SRCC\tTest_PLCC"
# 8 training images x 2 patches, global batches of 4: 4 steps per epoch, 2 patches per process
TINY = ["--no_pretrained", "--train_patch_num", "2", "--test_patch_num", "1", "--batch_size", "4", "--device", "cpu",
        "--if_grad"]
NAME = checkpoints.checkpoint_name("livec", 4, True, 1e-3, 1e-2)
TIMEOUT = 240


def environment(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYPERIQA_DEBUG", "RANK", "WORLD_SIZE")}
    return {**env, "OMP_NUM_THREADS": "1", **changes}


def torchrun(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, HARNESS, *map(str, args)], cwd=MAIN, env=env or environment(),
                          capture_output=True, text=True, timeout=TIMEOUT)


def table(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line == TABLE_HEADER or line[:1].isdigit()]


@pytest.fixture
def livec(tmp_path) -> Path:
    fake_datasets.make_livec(tmp_path / "livec", count=10)  # 8 training, 2 test images
    return tmp_path / "livec"


def test_nt_and_at_gradients_of_two_processes_are_those_of_one_process_on_the_global_batch(tmp_path):
    fake_datasets.make_csv(tmp_path / "data", count=9)
    labels = tmp_path / "data" / "labels.csv"
    # 7 images in batches of 4: 4 + 3 (shares 2 + 2, then 2 + 1); 9 images: 4 + 4 + 1 (a placeholder)
    run = torchrun("gradients", tmp_path / "steps.pt", 4, labels, 7, 9)
    assert run.returncode == 0, run.stderr[-4000:]
    two_processes = torch.load(tmp_path / "steps.pt", weights_only=True)

    samples = folders.list_samples("csv", labels)
    assert sorted(two_processes) == sorted(gradient_steps.STEP_CONFIGS) == ["nt", "pgd"]
    for name, steps in two_processes.items():  # NT, and adversarial training with PGD (random starts)
        one_process = gradient_steps.gradients_of_each_step(distributed.Processes(), samples, 4, [7, 9], name)
        assert len(steps) == len(one_process) == 5
        for step, (ours, reference) in enumerate(zip(steps, one_process)):
            for a, b in zip(ours, reference):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{name}, step {step}")


def test_two_processes_print_one_table_and_resume_after_ctrl_c_to_the_same_checkpoint(livec, tmp_path):
    common = ["train", "--dataset", "livec", "--dataset_path", livec, "--epochs", "3", *TINY]
    whole = torchrun(*common, "--checkpoint_dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-4000:]
    lines = whole.stdout.splitlines()
    assert lines[0] == "Processes: 2" and lines.count(TABLE_HEADER) == 1  # rank 0 alone prints
    assert [row.split("\t")[0] for row in table(whole.stdout)[1:]] == ["1", "2", "3"]
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == sorted(
        [NAME, NAME.replace(".pth", ".resume.pth"), NAME.replace(".pth", ".log")])
    checkpoints.load_state_strictly(StandInScoreModel(), checkpoints.read_checkpoint(tmp_path / "whole" / NAME).state, tmp_path / "whole" / NAME)  # strict: plain keys, no 'module.'

    # Ctrl-C to torchrun in epoch 2: one resumable state, every process stops
    slow = environment(HARNESS_FORWARD_SECONDS="0.2")  # Ctrl-C lands in epoch 2, step 2
    status, stderr = interrupt_when([*TORCHRUN, HARNESS, *common, "--checkpoint_dir", tmp_path / "cut"],
                                    "epoch 2, step 1/4", MAIN, slow, TIMEOUT)
    assert status != 0
    assert "resumable state saved" in stderr and stderr.count("train_test_IQA_sparsity.py: interrupted") == 2
    state = tmp_path / "cut" / NAME.replace(".pth", ".resume.pth")
    progress = torch.load(state, weights_only=True)["progress"]
    assert (progress["epoch"], progress["step"]) == (1, 2)  # stopped at the end of the step in progress
    assert len(progress["epoch_scores"]) == 2 * progress["step"] * 2  # both processes' records, on rank 0

    resumed = torchrun(*common, "--checkpoint_dir", tmp_path / "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert table(resumed.stdout) == table(whole.stdout)
    final = [torch.load(folder / NAME.replace(".pth", ".resume.pth"), weights_only=True)["model"]
             for folder in (tmp_path / "whole", tmp_path / "cut")]
    assert all(torch.equal(final[0][key], final[1][key]) for key in final[0])


def test_a_stop_seen_by_one_process_at_the_end_of_an_epoch_stops_every_process_there(livec, tmp_path):
    env = environment(HARNESS_STOP_RANK="1", HARNESS_STOP_AFTER_EPOCH="1")  # rank 0 never sees it
    run = torchrun("train", "--dataset", "livec", "--dataset_path", livec, "--epochs", "3", *TINY,
                   "--checkpoint_dir", tmp_path / "ck", env=env)
    assert run.returncode != 0
    assert run.stderr.count("train_test_IQA_sparsity.py: interrupted") == 2, run.stderr[-4000:]
    assert "stopped at the start of epoch 2; resumable state saved" in run.stderr
    progress = torch.load(tmp_path / "ck" / NAME.replace(".pth", ".resume.pth"), weights_only=True)["progress"]
    assert (progress["epoch"], progress["step"]) == (1, 0)


def test_a_failing_process_ends_the_run_with_its_message_and_the_last_checkpoint_stays(livec, tmp_path):
    # NT: 2 training forwards per step, 4 steps per epoch: forward 9 is epoch 2's first
    env = environment(HARNESS_FAIL_RANK="1", HARNESS_FAIL_FORWARD="9")
    run = torchrun("train", "--dataset", "livec", "--dataset_path", livec, "--epochs", "3", *TINY,
                   "--checkpoint_dir", tmp_path / "ck", env=env)
    assert run.returncode != 0
    assert "[rank 1/2] train_test_IQA_sparsity.py: error: simulated failure at training forward 9" in run.stderr
    assert torch.load(tmp_path / "ck" / NAME, weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "ck" / NAME.replace(".pth", ".resume.pth"), weights_only=True)["progress"]["epoch"] == 1
    assert [row.split("\t")[0] for row in table(run.stdout)[1:]] == ["1"]


def test_evaluation_with_two_processes_writes_what_one_process_writes(tmp_path):
    fake_datasets.make_csv(tmp_path / "data", count=5)
    common = ["evaluate", "--dataset", "csv", "--dataset_path", tmp_path / "data", "--split", "all",
              "--checkpoint", "stand_in.pth", "--attack", "fgsm", "pgd", "--eps", "0.01", "0.02", "--step", "2",
              "--patch_num", "2", "--device", "cpu", "--no_plot"]
    two = torchrun(*common, "--out_dir", tmp_path / "two")
    one = subprocess.run([sys.executable, HARNESS, *map(str, common), "--out_dir", str(tmp_path / "one")], cwd=MAIN,
                         env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert two.returncode == 0 and one.returncode == 0, (two.stderr + one.stderr)[-4000:]
    for name in ("robustness.csv", "summary.csv", "robustness.json"):  # the same numbers, to the last digit
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    assert two.stdout.count("grad_norm") == one.stdout.count("grad_norm") == 2  # rank 0 alone prints the tables


def test_batches_of_several_processes_deal_every_entry_once():
    batch = [(i, 0) for i in range(7)]
    shares = [data_loader.share_of(batch, rank, 3) for rank in range(3)]
    assert [entries for entries, _ in shares] == [batch[0:3], batch[3:5], batch[5:7]]
    assert data_loader.share_of(batch[:1], 1, 2) == (batch[:1], True)  # a placeholder, weighted 0
    index = torch.tensor([-1])
    assert training_step.loss_share(index, 1, 2) == 0.0
    assert training_step.loss_share(torch.tensor([3, 4]), 3, 2) == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="--batch_size 6 is the batch over all 4 processes"):
        data_loader.ViewLoader([], "csv", models.get_family("hyperiqa").views("csv", True, 1), 6, train=True,
                               world_size=4)


class CountingBatchNorm(torch.nn.BatchNorm2d):
    """A BatchNorm that notes how many entries each of its own forwards computes statistics over."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entries.append(x.shape[0])
        return super().forward(x)


class CountingSyncBatchNorm(torch.nn.SyncBatchNorm):
    """The same for SyncBatchNorm (outside a process group, on the CPU, it computes as a BatchNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entries.append(x.shape[0])
        return super().forward(x)


@pytest.mark.parametrize("layer", [CountingBatchNorm, CountingSyncBatchNorm])
def test_a_placeholder_stays_out_of_batchnorms_batch_and_running_statistics(layer):
    """The placeholder of a process left without an entry (index -1, loss weight 0) takes part in the
    step (forwards, NT's input gradient, backward) while BatchNorm's statistics see none of it: its
    layers compute their statistics over 0 entries (what a SyncBatchNorm then sends the others, and
    PyTorch leaves out), their running statistics stay, and its gradients are zeros."""
    family = models.get_family("hyperiqa")
    network = StandInScoreModel().train()
    norm = layer(8)
    norm.load_state_dict(network.res[1].state_dict())
    norm.entries, network.res[1] = [], norm
    with torch.no_grad():  # running statistics of a trained model, not the initial 0 and 1
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
    config = TrainConfig(dataset="csv", batch_size=2, if_grad=True, train_patch_num=1)
    pixels, mos = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([40.0])

    def step(index: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        before = (norm.running_mean.clone(), norm.running_var.clone())
        loss, _ = training_step.share_step(network, family, optimizer, pixels, mos, torch.tensor([index]), 2, 2,
                                            config)
        moved = [not torch.equal(a, b) for a, b in zip(before, (norm.running_mean, norm.running_var))]
        return loss, moved, [p.grad for p in network.parameters()]

    loss, moved, grads = step(-1)  # the placeholder
    assert norm.entries == [0, 0]  # NT's clean and shifted forwards, each over no entry
    assert moved == [False, False] and network.training
    assert loss == 0 and all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    norm.entries = []
    loss, moved, grads = step(3)  # a real entry of the same process: counted, and the running statistics move
    assert norm.entries == [1, 1] and moved == [True, True] and loss > 0
    assert any(g.abs().sum() > 0 for g in grads)


def test_a_batch_size_refused_under_torchrun_is_said_once(tmp_path, capsys, monkeypatch):
    """--batch_size 4 with 3 processes: rank 0 says why; the other ranks end with status 1, silently."""
    from train_test_IQA_sparsity import main, parse_args
    from cli import run_main
    monkeypatch.setattr(sys, "argv", ["train_test_IQA_sparsity.py"])
    monkeypatch.setattr(distributed, "start", lambda device: distributed.Processes(
        int(os.environ["RANK"]), 3, launched=True))
    monkeypatch.setattr(distributed, "stop", lambda processes: None)
    args = parse_args(["--dataset", "csv", "--dataset_path", str(tmp_path), "--batch_size", "4"])
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        with pytest.raises(SystemExit) as stopped:
            run_main(main, args)
        assert stopped.value.code == 1
        said = capsys.readouterr().err
        assert said == ("train_test_IQA_sparsity.py: error: --batch_size 4 is the batch over all 3 processes and "
                        "must be divisible by their number; use a multiple of 3\n" if rank == 0 else ""), rank
