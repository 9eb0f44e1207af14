"""Training: the released schedule, checkpoints, Ctrl-C and --resume, divergence and bad input.

End-to-end cases run train_test_IQA_sparsity.py as a user would (a subprocess in the repository) on
tiny fake data sets: 240x240 images, one patch per image, batch size 2, --no_pretrained.
"""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import checkpoints
import folders
import models
from HyperIQASolver import HyperIQASolver, TrainingDiverged, load_training_state, round_loaders
from training_step import train_step
from schedule import build_optimizer, hyper_network_lr, parameter_groups
from nt_regularizer import nt_loss
from splits import split_samples
from tests import fake_datasets
from tests.interrupt import interrupt_when
from tests.stand_in import StandInScoreModel
from train_config import RunFiles, TrainConfig

MAIN = Path(__file__).resolve().parents[1]
TINY_RUN = ["--no_pretrained", "--train_patch_num", "1", "--test_patch_num", "1", "--batch_size", "2",
            "--num_workers", "0"]
TABLE_HEADER = "Epoch\tTrain_Loss\tTrain_SRCC\tTest_SRCC\tTest_PLCC"


def run_script(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train_test_IQA_sparsity.py", *map(str, args)], cwd=MAIN,
                          capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one-line error of a failed run (after argparse's usage line, if any); no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def results_table(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines()
            if line.startswith((TABLE_HEADER, "Best test", "Testing median")) or line[:1].isdigit()]


@pytest.fixture
def three_image_split(tmp_path):
    """(train, test) of a fake CSV set of 3 images: 2 for training (one step per epoch), 1 for testing."""
    fake_datasets.make_csv(tmp_path / "data", count=3)
    return split_samples(folders.list_samples("csv", tmp_path / "data"), "csv", seed=0)


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig(**{**dict(dataset="csv", batch_size=2, epochs=2, train_patch_num=1, test_patch_num=1), **changes})


def tiny_solver(config: TrainConfig, split, model, best: Path, state: Path | None = None) -> HyperIQASolver:
    """A solver of round 0 of `split` (train, test) writing `best` and `state`, printing nothing."""
    loaders = round_loaders(config, *split, round_index=0)
    return HyperIQASolver(config, model, loaders, RunFiles(best, state, best.with_suffix(".log")),
                          log=lambda line: None)


# -- end to end


def test_one_epoch_with_and_without_nt_saves_checkpoints_that_load_strictly(tmp_path):
    fake_datasets.make_livec(tmp_path / "livec", count=3)
    for if_grad in (False, True):
        result = run_script("--dataset", "livec", "--dataset_path", tmp_path / "livec", "--epochs", "1",
                            "--checkpoint_dir", tmp_path / "ck", *TINY_RUN, *(["--if_grad"] if if_grad else []))
        assert result.returncode == 0, result.stderr
        path = tmp_path / "ck" / checkpoints.checkpoint_name("livec", 2, if_grad, 1e-3, 1e-2)
        checkpoints.load_state_strictly(models.HyperIQA(), checkpoints.read_checkpoint(path).state, path)  # strict: every key and shape of the released model
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert payload["epoch"] == 1 and payload["config"]["if_grad"] is if_grad and payload["optimizer"] is not None
        table = results_table(result.stdout)
        assert table[0] == TABLE_HEADER and table[1].split("\t")[0] == "1" and float(table[1].split()[1]) > 0
        assert table[-1].startswith("Testing median SRCC")
        assert "epoch 1, step 1/1" in result.stderr  # progress
        assert path.with_suffix(".log").read_text().splitlines() == result.stdout.splitlines()


@pytest.mark.parametrize("if_grad", [False, True])
def test_a_training_step_follows_the_gradient_of_its_loss(if_grad):
    """The step's parameter gradients are those of L1 (+ weight x the NT penalty), computed here
    independently on a copy of the model; the step then moves the weights."""
    config = TrainConfig(batch_size=3, if_grad=if_grad, weight=0.5)
    model, reference = StandInScoreModel().train(), StandInScoreModel().train()
    pixels, mos = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([20.0, 50.0, 80.0])
    images = models.normalize(pixels)  # the step normalizes as HyperIQA's family does
    loss = nt_loss(reference, images, mos, weight=0.5).total if if_grad else F.l1_loss(reference(images), mos)
    expected = torch.autograd.grad(loss, list(reference.parameters()))
    plain = torch.autograd.grad(F.l1_loss(reference(images), mos), list(reference.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    value, scores = train_step(model, models.get_family("hyperiqa"), build_optimizer(model, config, 0), pixels, mos,
                               config)
    assert value == pytest.approx(loss.item(), rel=1e-6) and scores.shape == (3,)
    for param, grad, l1_grad, old in zip(model.parameters(), expected, plain, before):
        torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-7)
        assert not torch.equal(param.detach(), old)
    # the penalty moves the gradient away from the L1 one (and without NT it is exactly the L1 one)
    difference = max((g - p).abs().max().item() for g, p in zip(expected, plain))
    assert difference > 1e-3 if if_grad else difference == 0


# -- the schedule


def test_hyper_network_lr_follows_the_released_update_rule():
    config = TrainConfig()
    expected = [2e-4] * 7 + [2e-5] * 3 + [2e-6] * 3 + [2e-7] * 4  # epochs 0..16, lr 2e-5, ratio 10
    assert [hyper_network_lr(config, epoch) for epoch in range(17)] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("schedule", ["released", "corrected"])
def test_released_schedule_freezes_the_hyper_network_after_epoch_one(three_image_split, tmp_path, schedule):
    torch.manual_seed(0)
    model = models.build_model()
    solver = tiny_solver(tiny_config(schedule=schedule), three_image_split, model, tmp_path / "best.pth")

    def snapshot():
        return [[p.detach().clone() for p in group] for group in parameter_groups(model)]

    def changed(a, b):
        return any(not torch.equal(x, y) for x, y in zip(a, b))

    before = snapshot()
    solver.run_epoch(0)
    after_one = snapshot()
    solver.run_epoch(1)
    after_two = snapshot()
    hyper, backbone = 0, 1
    assert changed(before[hyper], after_one[hyper]) and changed(before[backbone], after_one[backbone])
    assert changed(after_one[backbone], after_two[backbone])
    if schedule == "released":
        assert not changed(after_one[hyper], after_two[hyper])
        assert solver.optimizer.param_groups[0]["params"] == [] and solver.optimizer.state == {}  # rebuilt, empty
    else:
        assert changed(after_one[hyper], after_two[hyper])
        first_hyper = solver.optimizer.param_groups[0]["params"][0]
        assert int(solver.optimizer.state[first_hyper]["step"]) == 2  # Adam's moments kept across epochs
    assert solver.optimizer.param_groups[1]["lr"] == 2e-5  # the backbone lr is constant


# -- interruptions, divergence, atomic files


def test_ctrl_c_saves_a_state_and_resume_gives_the_uninterrupted_results(tmp_path):
    # the training script with the stand-in model (tests/run_with_stand_in.py): HyperIQA is not the point
    fake_datasets.make_csv(tmp_path / "data", count=5)  # 4 training images x 2 patches: 4 steps per epoch
    script = [sys.executable, MAIN / "tests" / "run_with_stand_in.py", "train"]
    common = ["--dataset", "csv", "--dataset_path", tmp_path / "data", "--epochs", "2", *TINY_RUN,
              "--train_patch_num", "2"]

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run(list(map(str, [*script, *common, *args])), cwd=MAIN, capture_output=True, text=True,
                              timeout=300)

    whole = run("--checkpoint_dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    slow = {**os.environ, "HARNESS_FORWARD_SECONDS": "0.3"}  # Ctrl-C lands in step 2's forward
    status, stderr = interrupt_when([*script, *common, "--checkpoint_dir", tmp_path / "cut"], "step 1/4", MAIN, slow)
    assert status == 130, stderr
    assert "resumable state saved" in stderr and "Traceback" not in stderr
    name = checkpoints.checkpoint_name("csv", 2, False).replace(".pth", ".resume.pth")
    progress = torch.load(tmp_path / "cut" / name, weights_only=True)["progress"]
    # stopped at a step boundary: the steps done are those whose progress line was printed (the Ctrl-C
    # lands in step 2's forward, or on a loaded machine before it; a step begun is finished, none is lost)
    done = [line for line in stderr.splitlines() if line.startswith("epoch 1, step ")]
    assert progress["epoch"] == 0 and progress["step"] == len(done) and progress["step"] in (1, 2)

    resumed = run("--checkpoint_dir", tmp_path / "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert results_table(resumed.stdout) == results_table(whole.stdout)
    final = [torch.load(tmp_path / run / name, map_location="cpu", weights_only=True)["model"] for run in ("whole", "cut")]
    assert all(torch.equal(final[0][key], final[1][key]) for key in final[0])


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_diverging_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_files(three_image_split, tmp_path, poison):
    model = StandInScoreModel()
    best, state = tmp_path / "best.pth", tmp_path / "state.pth"
    solver = tiny_solver(tiny_config(), three_image_split, model, best, state)
    solver.run_epoch(0)
    kept = {path: path.read_bytes() for path in (best, state)}
    model.poison = poison
    with pytest.raises(TrainingDiverged, match=rf"loss became {poison} at epoch 2, step 1; .*stays at .*best\.pth"):
        solver.run_epoch(1)
    assert all(path.read_bytes() == data for path, data in kept.items())


def test_a_crash_while_saving_leaves_the_previous_files_whole(three_image_split, tmp_path, monkeypatch):
    best, state = tmp_path / "best.pth", tmp_path / "state.pth"
    solver = tiny_solver(tiny_config(), three_image_split, StandInScoreModel(), best, state)
    solver.run_epoch(0)
    kept = {path: path.read_bytes() for path in (best, state)}

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        solver.run_epoch(1)
    assert all(path.read_bytes() == data for path, data in kept.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "data", "state.pth"]  # no temporary files left


def test_resume_refuses_other_settings_and_non_state_files(three_image_split, tmp_path):
    state = tmp_path / "state.pth"
    solver = tiny_solver(tiny_config(), three_image_split, StandInScoreModel(), tmp_path / "best.pth", state)
    solver.save_state()
    assert load_training_state(state, tiny_config(epochs=5))["progress"]["epoch"] == 0  # more epochs are fine
    with pytest.raises(ValueError, match=r"--lr 2e-05 \(now 0.001\)"):
        load_training_state(state, dataclasses.replace(tiny_config(), lr=1e-3))
    checkpoints.save_checkpoint(tmp_path / "best.pth", StandInScoreModel())
    with pytest.raises(ValueError, match="not a resumable training state"):
        load_training_state(tmp_path / "best.pth", tiny_config())
    with pytest.raises(FileNotFoundError, match="no resumable state at .*missing.pth"):
        load_training_state(tmp_path / "missing.pth", tiny_config())


# -- bad input at the command line


@pytest.mark.parametrize("args, message", [
    (["--batch_size", "0"], "argument --batch_size: must be a whole number >= 1, got 0"),
    (["--dataset", "clive"], "argument --dataset: invalid choice: 'clive' (choose from 'livec', 'koniq-10k'"),
    (["--h", "0"], "argument --h: must be > 0, got 0"),
    (["--h", "-0.01"], "argument --h: must be > 0, got -0.01"),
    (["--patch_size", "256"], "argument --patch_size: must be 224"),
    (["--lr", "0"], "argument --lr: must be > 0"),
    (["--weight", "-1"], "argument --weight: must be >= 0"),
    (["--epochs", "two"], "argument --epochs: must be a whole number, got 'two'"),
])
def test_invalid_arguments_say_what_is_valid(args, message, capsys):
    import train_test_IQA_sparsity as script

    with pytest.raises(SystemExit) as exit_status:
        script.parse_args(["--dataset_path", "x", *args])
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err


def test_invalid_argument_through_the_command_line():
    assert "--batch_size: must be a whole number >= 1, got 0" in error_line(run_script("--batch_size", "0"))


@pytest.mark.parametrize("layout", ["missing folder", "empty folder"])
def test_wrong_dataset_path_is_one_line(tmp_path, layout):
    path = tmp_path / "ChallengeDB_release"
    if layout == "empty folder":
        path.mkdir()
    result = run_script("--dataset", "livec", "--dataset_path", path, "--checkpoint_dir", tmp_path / "ck", *TINY_RUN)
    assert result.returncode == 1
    expected = "livec folder not found" if layout == "missing folder" else "AllImages_release.mat not found; a livec data set holds"
    assert error_line(result).startswith("train_test_IQA_sparsity.py: error: ") and expected in error_line(result)


def test_missing_dataset_path_is_explained():
    import train_test_IQA_sparsity as script

    with pytest.raises(ValueError, match="--dataset_path is required: the koniq-10k folder, holding koniq10k_scores"):
        script.main(script.parse_args(["--dataset", "koniq-10k"]))


def test_a_bad_image_in_the_data_set_is_named_with_its_index(tmp_path):
    fake_datasets.make_csv(tmp_path / "data", count=3)
    for image in (tmp_path / "data" / "images").iterdir():
        image.write_bytes(b"not an image")
    result = run_script("--dataset", "csv", "--dataset_path", tmp_path / "data", "--epochs", "1",
                        "--checkpoint_dir", tmp_path / "ck", *TINY_RUN)
    line = error_line(result)
    assert result.returncode == 1
    assert "error: image " in line and "of the csv training set: not an image" in line
    assert str(tmp_path / "data" / "images" / "img0") in line
