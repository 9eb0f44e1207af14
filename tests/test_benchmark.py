"""benchmark.py compares like with like: the released one-patch loops and released loader
(released_reference.py) compute what ours compute (no timings are asserted)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attacks
import benchmark
import data_loader
import models
import released_reference
from images import image_to_tensor, load_image
from tests.stand_in import stand_in_quality_model
from views import cut_view

MAIN = Path(__file__).resolve().parents[1]


@pytest.fixture
def model():
    return stand_in_quality_model(spread=200.0).eval()


@pytest.fixture
def pixels():
    return torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def test_released_loops_compute_what_ours_compute(model, pixels):
    network = model.network  # the released loops normalize for themselves
    torch.testing.assert_close(released_reference.released_scores(network, pixels), attacks.score_patches(model, pixels))
    _, norms = attacks.scores_and_gradient_norms(model, pixels)
    torch.testing.assert_close(released_reference.released_gradient_norms(network, pixels), norms)
    middle = attacks.score_patches(model, pixels).median().item()  # some patches pushed down, some up
    for steps in (1, 10):
        ours = attacks.iterative_fgsm(model, pixels, steps=steps, middle=middle)
        released = released_reference.released_iterative_fgsm(network, pixels, steps, middle=middle)
        torch.testing.assert_close(released, ours.adversarial)
        assert (released - pixels).abs().max() > 0.009


def test_released_loader_and_ours_cut_exact_crops_of_the_same_decoded_images(tmp_path):
    samples = benchmark.write_livec_like_folder(tmp_path, 2)
    decoded = [image_to_tensor(load_image(s.path)) for s in samples]
    side = models.PATCH_SIZE
    released = released_reference.ReleasedPatchDataset(samples)
    torch.manual_seed(5)
    items = [released[i] for i in range(len(released))]
    assert len(items) == 2 * benchmark.PATCHES_PER_IMAGE and released.decodes == len(items)  # a decode per patch
    torch.manual_seed(5)  # replay the released transforms' draws: flip, then crop top and left
    for k, (patch, mos) in enumerate(items):
        flip = torch.rand(1).item() < 0.5
        top, left = (torch.randint(0, benchmark.LIVEC_SIDE - side + 1, (1,)).item() for _ in range(2))
        image = decoded[k // benchmark.PATCHES_PER_IMAGE]
        image = image.flip(-1) if flip else image
        expected = models.normalize(image[None, :, top:top + side, left:left + side])[0]
        torch.testing.assert_close(patch, expected, rtol=0, atol=1e-5)
        assert mos == samples[k // benchmark.PATCHES_PER_IMAGE].mos

    decodes = []
    views = models.get_family("hyperiqa").views("livec", True, benchmark.PATCHES_PER_IMAGE)
    loader = data_loader.make_train_loader(samples, "livec", views, 4,
                                           decode=lambda path: decodes.append(path) or load_image(path))
    seen = {0: 0, 1: 0}
    for images, _, index in loader.batches(0):
        for patch, i in zip(images, index.tolist()):
            boxes = loader.crop_boxes(i, 0)
            matches = [torch.allclose(patch, cut_view(decoded[i], box, views), atol=1e-5) for box in boxes]
            assert any(matches)
            seen[i] += 1
    assert seen == {0: benchmark.PATCHES_PER_IMAGE, 1: benchmark.PATCHES_PER_IMAGE} and len(decodes) == 2


def test_the_loading_job_runs_from_the_command_line():
    done = subprocess.run([sys.executable, "benchmark.py", "--device", "cpu", "--jobs", "loading", "--quick",
                           "--images", "2", "--num_workers", "0"], cwd=MAIN, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| data loading, first epoch | 50 |" in done.stdout
    assert "Decodes per image and epoch (data loading, first epoch): ours 1, released 25" in done.stdout


def test_unknown_job_is_a_one_line_error():
    done = subprocess.run([sys.executable, "benchmark.py", "--jobs", "train,score"], cwd=MAIN,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "unknown job train; valid: train_baseline" in done.stderr


def test_another_family_times_only_the_training_steps(capsys):
    assert benchmark.parse_args(["--model", "maniqa"]).jobs == list(benchmark.TRAINING_JOBS)
    assert "score" not in benchmark.TRAINING_JOBS and "train_nt_vs_baseline" in benchmark.TRAINING_JOBS
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--model", "maniqa", "--jobs", "train_nt,score"])
    assert "argument --jobs: score: HyperIQA's released loops only; with --model maniqa only the training-step " \
        "jobs run" in capsys.readouterr().err
