"""The MSU metrics robustness benchmark: its scores on hand-computed arrays, its attacks and UAP
against the numbers of its own code (tests/fixtures/msu_benchmark_reference.json), their invariants,
whole-image attacks, and the preset end to end."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import attacks
import evaluate_robustness
import models
import msu_scores
from attacks.uap import UAP_LR, UAP_SIZE, UAP_START
from protocol import protocol_model
from tests.stand_in import StandInScoreModel, stand_in_quality_model
from tests.test_evaluate_robustness import make_csv_dataset
from tests.test_reliability import run_main
from views import CropBox, Views

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "msu_benchmark_reference.json").read_text())
T_975_2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom
SCORE_RTOL = 1e-6  # float32 scores (a few ulps at 150) against the benchmark's float32 run
# float64 against its float64 run: korhonen's float32 activity map differs from OpenCV's by an ulp
# (4e-9 of the score, 5e-10 of the mean change); one pixel moved by 1/255 more or less is 4e-7
FLOAT64_SCORE_RTOL, CHANGE_ATOL = 1e-8, 2e-9
SIMILARITY_RTOL = 1e-5  # our float64 PSNR/SSIM/MSE against scikit-image's float32 ones
HYPERIQA = models.get_family("hyperiqa")


def comparison_image() -> torch.Tensor:
    """The fixture's image (1, 3, 48, 64) (tests/fixtures/README.md)."""
    levels = torch.randint(0, 256, (3, 48, 64), generator=torch.Generator().manual_seed(2024))
    levels[:, :, :20] = 128  # flat: no spatial activity
    levels[:, :8, 40:] = 255  # clipped at 1
    levels[:, 40:, 40:] = 0  # clipped at 0
    return (levels.float() / 255)[None]


def uap_image(index: int, height: int, width: int) -> torch.Tensor:
    """The fixture's UAP images: 8-bit levels (3, height, width) of smooth colour plus noise."""
    generator = torch.Generator().manual_seed(100 + index)
    coarse = torch.rand(3, height // 16 + 1, width // 16 + 1, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    noise = torch.rand(3, height, width, generator=generator)
    return ((0.8 * smooth + 0.2 * noise) * 255).round().byte()


UAP_TRAIN_SIZES = [(520, 530), (530, 600), (512, 512), (600, 520), (300, 320), (256, 256), (400, 280), (290, 300)]
UAP_TEST_SIZES = [(64, 80), (300, 270)]


# -- the scores


def test_scores_on_hand_computed_arrays():
    clean, attacked = [1.0, 2.0, 3.0], [2.0, 2.0, 5.0]  # min-max on the clean only: s_hat 0, .5, 1; s'_hat .5, .5, 2
    assert msu_scores.min_max_fit(clean) == (0.5, -0.5)
    np.testing.assert_allclose(msu_scores.normalized_absolute_gain(clean, attacked), [0.5, 0.0, 1.0])
    np.testing.assert_allclose(msu_scores.normalized_relative_gain(clean, attacked), [0.5, 0.0, 0.5])
    np.testing.assert_allclose(msu_scores.robustness_score(clean, attacked),
                               np.log10([1 / (0.5 + 1e-6), 0.5 / 1e-6, 1 / (1 + 1e-6)]))
    np.testing.assert_allclose(msu_scores.relative_gain_classic(clean, attacked), [1 / (1 + 1e-6), 0, 2 / (3 + 1e-6)])
    assert msu_scores.wasserstein_score(clean, attacked) == pytest.approx(0.5)  # sorted: |0-.5|, 0, |1-2|
    # 2 E|X-Y| - E|X-X'| - E|Y-Y'| = 2 * 6.5/9 - 4/9 - 6/9 = 1/3
    assert msu_scores.energy_distance_score(clean, attacked) == pytest.approx(math.sqrt(1 / 3))
    assert msu_scores.wasserstein_score(clean, attacked, lower_is_better=True) == pytest.approx(-0.5)
    np.testing.assert_allclose(msu_scores.normalized_absolute_gain(clean, attacked, lower_is_better=True), [-0.5, 0, -1])
    lowered = [0.0, 2.0, 1.0]  # the mean moved down: the distance scores turn negative
    assert msu_scores.wasserstein_score(clean, lowered) == pytest.approx(-(0.5 + 0 + 1) / 3)
    # 95% Student t interval of the absolute gains 0.5, 0, 1: mean 0.5, sd 0.5
    row = msu_scores.benchmark_scores(clean, attacked)
    half = T_975_2 * 0.5 / math.sqrt(3)
    assert (row["normalized_absolute_gain"], row["normalized_absolute_gain_low"],
            row["normalized_absolute_gain_high"]) == pytest.approx((0.5, 0.5 - half, 0.5 + half))
    assert set(row) == set(msu_scores.SCORE_COLUMNS)
    assert math.isnan(msu_scores.mean_interval([0.3])[1])
    assert msu_scores.min_max_fit([4.0, 4.0]) == (1.0, -4.0)  # a constant set: scale 1, as scikit-learn's
    assert msu_scores.rel_gain(50.0, 55.0) == 1.1 and msu_scores.rel_gain(1e-4, 2.0) == math.inf


@pytest.mark.parametrize("order", ["higher_is_better", "lower_is_better"])
def test_scores_match_the_benchmark_code(order):
    expected = FIXTURE["scores"][order]
    clean, attacked = FIXTURE["scores"]["clean"], FIXTURE["scores"]["attacked"]
    row = msu_scores.benchmark_scores(clean, attacked, lower_is_better=order == "lower_is_better")
    for name, values in expected.items():
        assert row[name] == pytest.approx(values["mean"], rel=1e-12, abs=1e-15), name
        if "low" in values:
            assert (row[f"{name}_low"], row[f"{name}_high"]) == pytest.approx((values["low"], values["high"]), rel=1e-12)


# -- the attacks against the benchmark's own code


@pytest.mark.parametrize("spread", [20.0, 1000.0])
@pytest.mark.parametrize("name", ["msu-ifgsm", "msu-mifgsm", "amifgsm", "std-fgsm", "madc", "korhonen", "madc eps=0.0015"])
def test_attack_matches_the_benchmark_code(name, spread):
    expected = FIXTURE["attacks"][f"float64 spread {spread:g}"]
    model, image = stand_in_quality_model(spread=spread).double().eval(), comparison_image().double()
    attack, eps = (name, attacks.MSU_EPS) if " " not in name else ("madc", 0.0015)
    alpha, steps = attacks.attack_settings(attack, eps)
    result = attacks.run_attack(attack, model, image, eps, alpha, steps, middle=math.inf, score_width=100.0)
    change = (result.adversarial - image).double()
    assert attacks.score_patches(model, image).item() == pytest.approx(expected["clean"], rel=FLOAT64_SCORE_RTOL)
    assert attacks.score_patches(model, result.adversarial).item() == pytest.approx(expected[name]["attacked"],
                                                                                    rel=FLOAT64_SCORE_RTOL)
    assert change.mean().item() == pytest.approx(expected[name]["mean_change"], abs=CHANGE_ATOL)
    assert change.abs().mean().item() == pytest.approx(expected[name]["mean_abs_change"], abs=CHANGE_ATOL)
    assert change.abs().max().item() == pytest.approx(expected[name]["max_abs_change"], abs=CHANGE_ATOL)
    assert change.pow(2).mean().sqrt().item() == pytest.approx(expected[name]["rmse"], abs=CHANGE_ATOL)


def test_the_image_row_matches_the_benchmark_code():
    model, image = stand_in_quality_model().eval(), comparison_image()
    adversarial = attacks.msu_ifgsm(model, image, middle=math.inf).adversarial
    clean, attacked = attacks.score_patches(model, image).item(), attacks.score_patches(model, adversarial).item()
    a, b = image[0].permute(1, 2, 0).numpy(), adversarial[0].permute(1, 2, 0).numpy()
    expected = FIXTURE["image_row"]
    assert msu_scores.rel_gain(clean, attacked) == pytest.approx(expected["rel_gain"], rel=SCORE_RTOL)
    for name, value in (("psnr", msu_scores.image_psnr(a, b)), ("ssim", msu_scores.image_ssim(a, b)),
                        ("mse", msu_scores.image_mse(a, b))):
        assert value == pytest.approx(expected[name], rel=SIMILARITY_RTOL), name


def test_uap_matches_the_benchmark_code():
    model = stand_in_quality_model().eval()
    train = torch.stack([attacks.training_crop(uap_image(i, h, w).float() / 255) for i, (h, w) in enumerate(UAP_TRAIN_SIZES)])
    uap = attacks.train_uap(model, train, generator=torch.Generator().manual_seed(0))
    assert uap.abs().mean().item() == pytest.approx(FIXTURE["uap"]["mean_abs"], rel=1e-5)
    assert uap.abs().max().item() == pytest.approx(FIXTURE["uap"]["max_abs"], rel=1e-5)
    for row in FIXTURE["uap"]["applied"]:
        image = (uap_image(50 + row["image"], *UAP_TEST_SIZES[row["image"]]).float() / 255)[None]
        adversarial = attacks.apply_uap(image, uap, row["amplitude"])
        assert attacks.score_patches(model, image).item() == pytest.approx(row["clear"], rel=SCORE_RTOL)
        assert attacks.score_patches(model, adversarial).item() == pytest.approx(row["attacked"], rel=SCORE_RTOL)
        assert msu_scores.image_mse(image[0].permute(1, 2, 0).numpy(), adversarial[0].permute(1, 2, 0).numpy()) == \
            pytest.approx(row["mse"], rel=1e-3)  # the benchmark adds our perturbation's float32 rounding twin


# -- invariants


@pytest.fixture
def pixels():
    torch.manual_seed(1)
    x = torch.rand(4, 3, 16, 16)
    x[0] = 0.0
    x[1] = 1.0
    return x


@pytest.mark.parametrize("name", attacks.BENCHMARK_ATTACKS)
def test_every_benchmark_attack_leaves_its_input(pixels, name):
    before = pixels.clone()
    alpha, steps = attacks.attack_settings(name, 0.03)
    uap = torch.full((3, 8, 8), 0.05)
    attacks.run_attack(name, stand_in_quality_model(), pixels, 0.03, alpha, steps, uap=uap)
    assert torch.equal(pixels, before)


def test_madc_keeps_the_rmse_bound_and_moves_up_to_it(pixels):
    model = stand_in_quality_model(spread=1000.0)
    eps = 0.0015  # below what 8 steps of 0.001 reach: the pull-back has work to do
    result = attacks.madc(model, pixels, eps=eps, middle=math.inf)
    rmse = attacks.rmse_to(result.adversarial, pixels)
    assert (rmse <= eps + 1e-7).all() and (rmse[2:] > 0.5 * eps).all()
    assert (attacks.score_patches(model, result.adversarial)[2:] > result.clean_scores[2:]).all()
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    with pytest.raises(ValueError, match="eps >= 0.001"):
        attacks.madc(model, pixels, eps=0.0005)


def test_korhonen_leaves_flat_regions_unchanged():
    image = comparison_image()
    activity = attacks.spatial_activity_map(image)
    assert activity.shape == (1, 1, 48, 64)
    assert (activity[..., :17] == 0).all() and (activity[..., 1:-1, 21:] > 0).any()  # 3 pixels: Sobel 1, disk 2
    assert activity.max().item() == pytest.approx(1 / 255)
    result = attacks.korhonen(stand_in_quality_model(), image, middle=math.inf)
    moved = (result.adversarial != image).any(dim=1)[0]
    assert not moved[:, :17].any() and moved[:, 21:].float().mean() > 0.5
    flat = torch.full((1, 3, 16, 16), 0.5)  # no activity anywhere: the map is all ones, as the benchmark's
    assert torch.equal(attacks.spatial_activity_map(flat), torch.full((1, 1, 16, 16), 1 / 255))


def test_amifgsm_stays_in_the_eps_ball_without_a_projection(pixels):
    model = stand_in_quality_model(spread=1000.0)
    eps = 0.02
    adversarial = attacks.amifgsm(model, pixels, eps=eps, middle=math.inf).adversarial
    assert (adversarial - pixels).abs().max() <= eps + 1e-6
    assert ((adversarial - pixels).abs() > eps - 1e-6).float().mean() > 0.3  # many pixels walked all ten steps one way
    unbounded = attacks.amifgsm(model, pixels, eps=eps, alpha=2 * eps / 10, middle=math.inf).adversarial
    assert (unbounded - pixels).abs().max() > 1.5 * eps  # nothing projects it back


class StepwiseLinear(StandInScoreModel):
    """score = c_t * sum(x) at the t-th forward (a gradient of c_t everywhere), `slopes` c_1, c_2, ..."""

    def __init__(self, slopes):
        super().__init__()
        self.slopes, self.calls = slopes, 0

    def forward(self, x):
        self.calls += 1
        return self.slopes[self.calls - 1] * x.sum(dim=(1, 2, 3))


def test_the_benchmark_ifgsm_keeps_its_perturbation_whole_at_the_pixel_range():
    # A white pixel pushed up, then down: the benchmark's perturbation is still eps - alpha > 0, so the
    # image stays at 1; our ifgsm clips the image after each step, so it comes down by alpha.
    white = torch.ones(1, 3, 4, 4)
    whole = attacks.msu_ifgsm(HYPERIQA.quality_model(StepwiseLinear([1, 1, -1])), white, eps=0.03, alpha=0.01, steps=3,
                              middle=math.inf).adversarial
    clipped = attacks.iterative_fgsm(HYPERIQA.quality_model(StepwiseLinear([1, 1, -1])), white, eps=0.03, alpha=0.01,
                                     steps=3, middle=math.inf).adversarial
    assert torch.equal(whole, white)
    torch.testing.assert_close(clipped, white - 0.01)


def test_the_benchmark_mifgsm_accumulates_raw_gradients():
    # Gradients 1, 1, then -5 everywhere: the raw momentum goes 1, 2, -3 (up, up, down), the
    # l1-normalized one (Dong et al.'s, our mifgsm) u, 2u, u (up three times).
    grey = torch.full((1, 3, 4, 4), 0.5)
    settings = dict(eps=0.05, alpha=0.01, steps=3, middle=math.inf)
    raw = attacks.msu_mifgsm(HYPERIQA.quality_model(StepwiseLinear([1, 1, -5])), grey, **settings).adversarial
    normalized = attacks.mifgsm(HYPERIQA.quality_model(StepwiseLinear([1, 1, -5])), grey, **settings).adversarial
    torch.testing.assert_close(raw, grey + 0.01)
    torch.testing.assert_close(normalized, grey + 0.03)


# -- whole-image attacks and the UAP


def test_whole_image_attacks_move_the_protocol_score_through_every_view():
    model = stand_in_quality_model(spread=1000.0)
    torch.manual_seed(3)
    image = torch.rand(1, 3, 40, 44)
    views = Views(count=2, crop=(24, 24))
    boxes = [CropBox(0, 0, False), CropBox(10, 16, False)]
    whole = protocol_model(model, views, boxes, chunk_size=1)  # two chunks: the checkpointed path
    clean = attacks.score_patches(whole, image)
    patches = torch.stack([image[0, :, 0:24, 0:24], image[0, :, 10:34, 16:40]])
    torch.testing.assert_close(clean, attacks.score_patches(model, patches).mean()[None])
    for middle, sign in ((math.inf, 1), (-math.inf, -1)):
        result = attacks.msu_ifgsm(whole, image, middle=middle)
        assert sign * (attacks.score_patches(whole, result.adversarial) - clean).item() > 1.0
        moved = (result.adversarial != image).any(dim=1)[0]
        assert moved[0:24, 0:24].all() and moved[10:34, 16:40].all()  # the gradient of both views
        assert not moved[34:, :].any() and not moved[:, 40:].any()  # outside every view: no gradient


def test_a_uap_raises_held_out_scores_and_round_trips_through_its_file(tmp_path):
    model = stand_in_quality_model(spread=1000.0)
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(7, 3, 256, 256, generator=generator)
    train, held_out = images[:5], images[5:, :, :100, :120]
    steps = []
    uap = attacks.train_uap(model, train, generator=generator, progress=lambda step, total, loss: steps.append(step))
    assert steps == list(range(1, 6)) and uap.shape == (3, 256, 256) and uap.abs().max() <= attacks.UAP_BOUND
    clean = attacks.score_patches(model, held_out)
    result = attacks.run_attack("uap", model, held_out, 0.08, *attacks.attack_settings("uap", 0.08), uap=uap)
    assert (attacks.score_patches(model, result.adversarial) > clean).all()
    torch.testing.assert_close(result.adversarial, held_out + 0.8 * uap[:, :100, :120])  # amplitude 0.08 / 0.1
    attacks.save_uap(tmp_path / "uap.npy", uap)
    assert np.load(tmp_path / "uap.npy").shape == (256, 256, 3)  # the benchmark's layout
    assert torch.equal(attacks.load_uap(tmp_path / "uap.npy"), uap)
    np.save(tmp_path / "bad.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="holds a finite"):
        attacks.load_uap(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match="needs a trained perturbation"):
        attacks.run_attack("uap", model, held_out, 0.08, 0.8, 1)


def test_uap_training_scores_the_clipped_images_and_trains_the_perturbation_as_if_unclipped():
    # The benchmark clips image + perturbation to [0, 1] for the forward only: a white pixel is scored
    # at 1, while its element of the perturbation gets the gradient of an unclipped one.
    image = torch.full((3, UAP_SIZE, UAP_SIZE), 0.5)
    image[:, :128] = 1.0  # white: the perturbation's first step (+) is clipped away
    image[:, 128:, :64] = 0.0
    seen = []

    def score(batch):  # the mean pixel, times 100: the same gradient for every element of the perturbation
        seen.append(batch.detach().clone())
        return 100 * batch.mean(dim=(1, 2, 3))
    uap = attacks.train_uap(score, image.expand(4, -1, -1, -1), epochs=3, batch_size=4,
                            generator=torch.Generator().manual_seed(0))
    assert len(seen) == 3
    assert torch.equal(seen[0], (image + UAP_START).clamp(0, 1).expand(4, -1, -1, -1))
    for batch in seen:
        assert batch.min() >= 0 and batch.max() <= 1
        assert torch.equal(batch[:, :, :128], torch.ones_like(batch[:, :, :128]))
    assert torch.equal(uap, uap[0, 0, 0].expand_as(uap))  # white pixels' elements moved as much as the others
    assert uap[0, 0, 0] > UAP_START + 2 * UAP_LR  # three Adam steps up, about lr each


def test_the_preset_writes_the_benchmark_scores_and_images(tmp_path, capsys, monkeypatch):
    labels, _ = make_csv_dataset(tmp_path / "set", 3)
    (tmp_path / "uap_train").mkdir()
    for index in range(2):
        (tmp_path / "set" / f"img{index}.png").rename(tmp_path / "uap_train" / f"img{index}.png")
    with open(labels, "w") as f:
        f.write("image,mos\nimg2.png,50\n")
    monkeypatch.setattr(models, "load_model", lambda path, family, device: stand_in_quality_model(spread=1000.0).eval())
    out = tmp_path / "out"
    status, stdout, stderr = run_main(evaluate_robustness, [
        "--dataset", "csv", "--dataset_path", labels, "--split", "all", "--checkpoint", "stand_in.pth",
        "--preset", "msu", "--uap_train_dir", tmp_path / "uap_train", "--patch_num", "1", "--out_dir", out,
        "--device", "cpu", "--no_plot"], capsys, monkeypatch)
    assert status == 0, stderr
    assert "[uap stand_in] step 5/5" in stderr and (out / "uap_stand_in.npy").exists()
    with open(out / "benchmark_scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / "benchmark_images.csv", newline="") as f:
        images = list(csv.DictReader(f))
    report = json.loads((out / "robustness.json").read_text())
    assert [(r["attack"], float(r["eps"])) for r in rows] == [
        *[(name, pytest.approx(10 / 255)) for name in ("msu-ifgsm", "msu-mifgsm", "amifgsm", "std-fgsm", "korhonen", "madc")],
        *[("uap", pytest.approx(eps)) for eps in (0.02, 0.04, 0.08)]]
    assert {(r["attack_on"], r["direction"], r["rounded"]) for r in rows} == {("image", "up", "False")}
    assert list(images[0]) == ["model", "attack", "eps", *msu_scores.IMAGE_COLUMNS] and len(images) == len(rows)
    clean = report["scores"]["stand_in"]["clean"]
    for row, image in zip(rows, images):
        attacked = report["scores"]["stand_in"]["attacked"][f"{row['attack']} eps={row['eps']}"]
        assert float(image["attacked"]) == pytest.approx(attacked[0]) and attacked[0] > clean[0]  # raised
        assert float(row["relative_gain_classic"]) == pytest.approx((attacked[0] - clean[0]) / (clean[0] + 1e-6))
        assert float(image["psnr"]) > 20 and 0 < float(image["ssim"]) < 1
    assert "normalized_absolute_gain" in stdout
