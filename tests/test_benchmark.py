"""benchmark.py compares like with like: its released one-patch loops and released loader compute what
ours compute (no timings are asserted)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attacks
import benchmark
import data_loader
from tests.stand_in import StandInScoreModel

MAIN = Path(__file__).resolve().parents[1]


@pytest.fixture
def model():
    return StandInScoreModel(spread=200.0).eval()


@pytest.fixture
def pixels():
    return torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def test_released_loops_compute_what_ours_compute(model, pixels):
    torch.testing.assert_close(benchmark.released_scores(model, pixels), attacks.score_patches(model, pixels))
    _, norms = attacks.scores_and_gradient_norms(model, pixels)
    torch.testing.assert_close(benchmark.released_gradient_norms(model, pixels), norms)
    middle = attacks.score_patches(model, pixels).median().item()  # some patches pushed down, some up
    for steps in (1, 10):
        ours = attacks.iterative_fgsm(model, pixels, steps=steps, middle=middle)
        released = benchmark.released_iterative_fgsm(model, pixels, steps, middle=middle)
        torch.testing.assert_close(released, ours.adversarial)
        assert (released - pixels).abs().max() > 0.009


def test_released_loader_decodes_every_patch_and_ours_each_image_once(tmp_path, monkeypatch):
    samples = benchmark.write_livec_like_folder(tmp_path, 2)
    released = benchmark.ReleasedPatchDataset(samples)
    images = torch.stack([released[i][0] for i in range(len(released))])
    assert len(released) == 2 * benchmark.PATCHES_PER_IMAGE and released.decodes == len(released)
    assert images.shape == (50, 3, 224, 224)
    decoded = []
    monkeypatch.setattr(data_loader, "load_image", lambda path: decoded.append(path) or benchmark.Image.open(path).convert("RGB"))
    loader = data_loader.make_train_loader(samples, "livec", benchmark.PATCHES_PER_IMAGE, 4)
    ours = torch.cat([batch[0] for batch in loader.batches(0)])
    assert len(decoded) == 2
    # the same distribution of values: both are ImageNet-normalized crops of the same photos
    assert abs(ours.mean() - images.mean()) < 0.1 and abs(ours.std() - images.std()) < 0.1


def test_the_loading_job_runs_from_the_command_line():
    done = subprocess.run([sys.executable, "benchmark.py", "--device", "cpu", "--jobs", "loading", "--quick",
                           "--images", "2", "--num_workers", "0"], cwd=MAIN, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| data loading, epoch | 50 |" in done.stdout
    assert "Decodes per image and epoch (data loading): ours 1, released 25" in done.stdout


def test_unknown_job_is_a_one_line_error():
    done = subprocess.run([sys.executable, "benchmark.py", "--jobs", "train,score"], cwd=MAIN,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "unknown job train; valid: train_baseline" in done.stderr
