"""FGSM_demo.py and quality_and_norm_demo.py through the command line, against the same functions run
here on the same 8-bit image (recipe weights from checkpoints in both release forms, tests/conftest.py)."""
import re

import pytest
import torch

from PIL import Image

import attacks
import FGSM_demo
import models
import plots
from images import image_to_tensor, load_image, tensor_to_image
from views import image_views
from tests import recipe
from tests.stand_in import StandInScoreModel
from tests.test_reliability import run_main, write_png

HYPERIQA = models.get_family("hyperiqa")

RTOL = 1e-4
PRINT_ATOL = 5e-5  # the quality demo prints 4 decimals


def printed(stdout: str, label: str) -> list[float]:
    """The numbers printed after `label:` at the start of a line, in order."""
    return [float(v) for v in re.findall(rf"^{re.escape(label)}:\s*(\S+)$", stdout, flags=re.M)]


def save_recipe_png(tmp_path, index: int):
    path = tmp_path / f"recipe_{index}.png"
    tensor_to_image(recipe.recipe_pixels()[index]).save(path)
    pixels = image_to_tensor(load_image(path)).unsqueeze(0)  # what the demo sees: the 8-bit image
    torch.testing.assert_close(pixels, attacks.quantize_8bit(recipe.recipe_pixels()[index:index + 1]), rtol=0, atol=0)
    return path, pixels


def test_fgsm_demo_prints_and_saves_what_the_attack_gives(tmp_path, recipe_checkpoints, run_cli):
    image, pixels = save_recipe_png(tmp_path, 0)
    checkpoint = recipe_checkpoints["fc5b_offset_40"]  # bare state_dict; scores near 42: raised
    (run,) = run_cli(["FGSM_demo.py", "--img_name", image, "--checkpoint", checkpoint,
                      "--save_dir", tmp_path / "adv", "--mos", "61.5", "--device", "cpu"])
    assert run.returncode == 0, run.stderr

    model = models.load_hyperiqa(checkpoint)
    result = attacks.iterative_fgsm(model, pixels, eps=0.03, alpha=0.01, steps=1)
    saved = attacks.quantize_8bit(result.adversarial)
    assert printed(run.stdout, "Predicted Score (Unattacked)") == pytest.approx(result.clean_scores.tolist(), rel=RTOL)
    assert printed(run.stdout, "Predicted Score (Attacked)") == pytest.approx(
        attacks.score_patches(model, saved).tolist(), rel=RTOL)
    assert printed(run.stdout, "Predicted Score (Attacked, before rounding to 8 bits)") == pytest.approx(
        attacks.score_patches(model, result.adversarial).tolist(), rel=RTOL)
    assert printed(run.stdout, "For " + str(image) + ", MOS (without normalization)") == [61.5]
    assert printed(run.stdout, "Predicted Score (Attacked)")[0] > printed(run.stdout, "Predicted Score (Unattacked)")[0]

    png = image_to_tensor(load_image(tmp_path / "adv" / "recipe_0_0.png")).unsqueeze(0)
    assert (png == saved).float().mean() > 0.999  # lossless (a near-zero gradient may flip a sign)
    assert (png - pixels).abs().max() <= 0.03 + 0.5 / 255
    assert f"saved to: {tmp_path / 'adv'}" in run.stdout


def test_fgsm_demo_draws_clean_adversarial_and_perturbation_of_up_to_four_patches(tmp_path, capsys, monkeypatch):
    patch_num, rows = 5, plots.MAX_COMPARISON_PATCHES  # one row per patch, at most 4
    stand_in = HYPERIQA.quality_model(StandInScoreModel().eval())
    monkeypatch.setattr(models, "load_model", lambda path, family, device: stand_in)
    image = write_png(tmp_path / "photo.png", size=(260, 240))
    common = ["--img_name", image, "--checkpoint", "model.pth", "--patch_num", patch_num, "--device", "cpu"]
    status, stdout, stderr = run_main(FGSM_demo, common + ["--save_dir", tmp_path / "adv"], capsys, monkeypatch)
    assert status == 0, stderr
    assert f"{tmp_path / 'adv' / 'comparison.png'}" in stdout
    panel = plots.PANEL_INCHES * plots.DPI  # pixels
    with Image.open(tmp_path / "adv" / "comparison.png") as picture:
        assert picture.format == "PNG" and picture.size == (round(3 * panel), round(rows * panel))  # 3 columns

    status, _, stderr = run_main(FGSM_demo, common + ["--save_dir", tmp_path / "quiet", "--no_plot"], capsys, monkeypatch)
    assert status == 0, stderr
    assert len(list((tmp_path / "quiet").glob("photo_*.png"))) == patch_num
    assert not (tmp_path / "quiet" / "comparison.png").exists()


def test_quality_demo_prints_norms_then_scores_of_baseline_then_nt(tmp_path, recipe_checkpoints, run_cli):
    image, pixels = save_recipe_png(tmp_path, 1)
    baseline, nt = recipe_checkpoints["fc5b_offset_50"], recipe_checkpoints["fc5b_offset_40"]
    (run,) = run_cli(["quality_and_norm_demo.py", "--img", image, "--baseline_checkpoint", baseline,
                      "--nt_checkpoint", nt, "--device", "cpu"])
    assert run.returncode == 0, run.stderr

    expected = [attacks.scores_and_gradient_norms(models.load_hyperiqa(path), pixels) for path in (baseline, nt)]
    norms = [norm.item() for _, norm in expected]
    scores = [score.item() for score, _ in expected]
    lines = [line for line in run.stdout.splitlines() if line.startswith("HyperIQA")]
    assert [line.split(":")[0] for line in lines] == ["HyperIQA", "HyperIQA+NT"] * 2
    values = [float(line.split(":")[1]) for line in lines]
    assert values[:2] == pytest.approx(norms, rel=RTOL, abs=PRINT_ATOL)
    assert values[2:] == pytest.approx(scores, rel=RTOL, abs=PRINT_ATOL)
    # the fixture's numbers for the float image are close to those of its 8-bit copy
    released = recipe.reference()["variants"]["fc5b_offset_50"]["grad_l1_normalized_input"][1]
    assert values[:2] == pytest.approx([released, released], rel=0.01)
    assert "Patches: 1 random 224x224 crops" in run.stdout  # a 224x224 image is its own single patch


def test_quality_demo_regenerates_crops_then_reuses_them(tmp_path, hyperiqa_checkpoint, run_cli):
    image = tmp_path / "photo.png"
    torch.manual_seed(3)
    tensor_to_image(torch.rand(3, 230, 241)).save(image)
    crops = tmp_path / "crops"
    common = ["quality_and_norm_demo.py", "--img_name", image, "--patch_size", "2", "--crop_dir", crops,
              "--baseline_checkpoint", hyperiqa_checkpoint, "--nt_checkpoint", hyperiqa_checkpoint, "--device", "cpu"]
    (first,) = run_cli(common + ["--regenerate_crops", "--seed", "5"])
    assert first.returncode == 0, first.stderr
    expected = image_views(image, HYPERIQA.views(None, False, 2), torch.Generator().manual_seed(5))
    saved = torch.stack([image_to_tensor(load_image(crops / f"photo_{i}.bmp")) for i in range(2)])
    assert torch.equal(saved, expected)

    (second,) = run_cli(common + ["--seed", "6"])  # another seed, but the saved crops are used
    assert second.returncode == 0, second.stderr
    assert "2 saved crops" in second.stdout
    numbers = [line for line in first.stdout.splitlines() if line.startswith("HyperIQA")]
    assert numbers == [line for line in second.stdout.splitlines() if line.startswith("HyperIQA")]


def test_help_explains_every_flag(run_cli):
    runs = run_cli(["FGSM_demo.py", "--help"], ["quality_and_norm_demo.py", "--help"], ["evaluate_robustness.py", "--help"])
    assert all(run.returncode == 0 for run in runs)
    fgsm, quality, evaluate = (run.stdout for run in runs)
    for flag in ("--img_name", "--attacked_model", "--eps", "--alp", "--step", "--patch_num", "--checkpoint",
                 "--mos", "--save_dir", "--device", "--seed", "--upscale_small", "--no_plot"):
        assert flag in fgsm
    assert "grad[1]_weight[0.001]_h[0.01].pth" in fgsm and "grad[0]_weight[0.0].pth" in fgsm
    for flag in ("--img_name", "--img", "--patch_num", "--patch_size", "--regenerate_crops",
                 "--baseline_checkpoint", "--nt_checkpoint", "--upscale_small"):
        assert flag in quality
    for flag in ("--checkpoint", "--dataset", "--attack", "--eps", "--jpeg_quality", "--out_dir", "--queries",
                 "--restarts", "--no_plot", "mifgsm", "square"):
        assert flag in evaluate
