"""Adversarial training (AT): SSIM, the adversarial batch, its labels, the step, resume, names and files.

Most cases use the stand-in score model on small images; one runs the training script in this
process with HyperIQA on a fake LIVEC folder, to check the file it writes.
"""
import math

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

import attacks
import checkpoints
import data_loader
import folders
import HyperIQASolver as HyperIQASolver_module
import models
import train_test_IQA_sparsity
from adversarial_training import (adversarial_batch, adversarial_count, adversarial_positions, attack_middle,
                                  corrected_labels, label_range, share_crafting)
from HyperIQASolver import HyperIQASolver, StopRequest, load_training_state, round_loaders
from training_step import train_step
from schedule import build_optimizer
from nt_regularizer import nt_loss
from splits import split_samples
from ssim import ssim
from tests import fake_datasets
from tests.stand_in import StandInScoreModel, stand_in_quality_model
from tests.test_reliability import TINY_TRAINING, run_main
from train_config import RunFiles, TrainConfig

HYPERIQA = models.get_family("hyperiqa")
EPS_TOLERANCE = 1e-6  # float32 rounding of a pixel moved by eps and clipped
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # Wang et al.'s constants for a dynamic range of 1


def uint8_batch(count: int, side: int, seed: int, smooth: bool = False) -> torch.Tensor:
    """(count, 3, side, side) uint8 images: noise over the whole range (some pixels at 0 and 255), or
    with `smooth` gentle ramps, where an attack's perturbation costs SSIM much more."""
    generator = torch.Generator().manual_seed(seed)
    if not smooth:
        noise = torch.randint(0, 256, (count, 3, side, side), generator=generator, dtype=torch.uint8)
        noise[:, :, 0, 0], noise[:, :, 0, 1] = 0, 255
        return noise
    ramp = torch.linspace(100, 130, side).view(1, 1, 1, side)
    levels = ramp + torch.randint(-60, 60, (count, 3, 1, 1), generator=generator)
    return levels.expand(count, 3, side, side).round().to(torch.uint8)


def as_loaded(pixels_uint8: torch.Tensor) -> torch.Tensor:
    """Pixels exactly as data_loader makes them from uint8 patches."""
    return pixels_uint8.float().div_(255.0)


# -- SSIM


def direct_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s SSIM of two (C, H, W) float64 images in [0, 1], written from the paper with
    scipy's Gaussian filter (sigma 1.5 cut at radius 5: the 11x11 window), on the valid positions."""
    radius = 5

    def local_mean(a):
        return scipy.ndimage.gaussian_filter(a, 1.5, truncate=radius / 1.5)[radius:-radius, radius:-radius]

    values = []
    for a, b in zip(x, y):
        mu_a, mu_b = local_mean(a), local_mean(b)
        var_a, var_b = local_mean(a * a) - mu_a ** 2, local_mean(b * b) - mu_b ** 2
        cov = local_mean(a * b) - mu_a * mu_b
        values.append(np.mean((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
                              / ((mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2))))
    return float(np.mean(values))


def test_ssim_is_wang_et_al_computed_independently():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 30, 37, generator=generator, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64) * torch.tensor([0.02, 0.1, 0.3]).view(3, 1, 1, 1)
    y = (x + noise).clamp(0, 1)
    expected = [direct_ssim(a.numpy(), b.numpy()) for a, b in zip(x, y)]
    torch.testing.assert_close(ssim(x, y), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ssim(x.float(), y.float()).double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=0, atol=1e-5)
    assert expected[0] > expected[1] > expected[2]  # more noise, less similar
    torch.testing.assert_close(ssim(y, x), ssim(x, y))  # symmetric
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    # Two flat images a and b: no structure, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.2, 0.6
    flat = ssim(torch.full((1, 3, 11, 11), a, dtype=torch.float64), torch.full((1, 3, 11, 11), b, dtype=torch.float64))
    assert flat.item() == pytest.approx((2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1), rel=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :10], y[..., :10])


# -- the adversarial batch


def test_adversarial_count_rounds_halves_up_and_keeps_at_least_one():
    cases = {(16, 0.5): 8, (15, 0.5): 8, (1, 0.5): 1, (10, 0.3): 3, (2, 0.01): 1, (3, 1.0): 3, (4, 0.6): 2}
    assert {case: adversarial_count(*case) for case in cases} == cases


def test_adversarial_positions_are_evenly_spaced_over_the_global_batch():
    assert adversarial_positions(6, 0.5) == [0, 2, 4]
    assert adversarial_positions(16, 0.25) == [0, 4, 8, 12]
    assert adversarial_positions(10, 0.3) == [0, 3, 6] and adversarial_positions(3, 1.0) == [0, 1, 2]
    assert adversarial_positions(2, 0.01) == [0]


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_the_adversarial_views_of_a_global_batch_and_their_starts_do_not_depend_on_the_processes(method):
    """Global batch 6 at ratio 0.5: 3 views (0, 2, 4), whether 1, 2 or 3 processes share the batch
    (2 on the first of two processes and 1 on the second), each PGD start drawn for its position."""
    config = TrainConfig(dataset="csv", adv_train=method, adv_ratio=0.5)
    keys = (1, 2, 3)  # round, epoch, step

    def over_the_processes(length: int, world_size: int) -> tuple[list[int], list[list[float]]]:
        positions, starts = [], []
        for rank in range(world_size):
            start = data_loader.share_bounds(length, rank, world_size)[0]
            share = share_crafting(config, keys, length, rank, world_size)
            positions += [start + view for view in share.views]
            starts += [torch.rand(4, generator=g).tolist() for g in share.generators or []]
        return positions, starts

    for length in (6, 5, 1):
        alone = over_the_processes(length, 1)
        assert alone[0] == adversarial_positions(length, 0.5)
        assert len(alone[1]) == (len(alone[0]) if method == "pgd" else 0)
        for world_size in (2, 3, 4):
            assert over_the_processes(length, world_size) == alone, (length, world_size)
    assert [len(share_crafting(config, keys, 6, rank, 2).views) for rank in range(2)] == [2, 1]
    if method == "pgd":  # another step, or the second stage, draws other starts
        first = share_crafting(config, keys, 6).generators[0]
        for other in ((1, 2, 4), (1, 2, 3, 1)):
            assert not torch.equal(torch.rand(4, generator=share_crafting(config, other, 6).generators[0]),
                                   torch.rand(4, generator=first))


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_adversarial_batches_stay_within_eps_and_in_range(method):
    model = stand_in_quality_model(spread=200.0).train()
    clean_uint8 = uint8_batch(5, 16, seed=1)
    images, mos = as_loaded(clean_uint8), torch.tensor([10.0, 30.0, 50.0, 70.0, 90.0])
    config = TrainConfig(dataset="csv", adv_train=method, adv_eps=8 / 255, adv_ratio=0.6, adv_steps=None)
    batch = adversarial_batch(model, images, mos, config, (0.0, 100.0), torch.Generator().manual_seed(2))
    chosen, kept = [0, 1, 3], [2, 4]  # 3 of 5, evenly spaced: floor(j * 5 / 3)
    assert batch.views.tolist() == chosen and model.training  # the attack restored train mode
    adversarial = batch.pixels[chosen]
    change = adversarial - clean_uint8[chosen].float() / 255
    assert change.abs().max() <= 8 / 255 + EPS_TOLERANCE and change.abs().max() > 7 / 255
    assert adversarial.min() >= -EPS_TOLERANCE and adversarial.max() <= 1 + EPS_TOLERANCE
    assert torch.equal(batch.pixels[kept], images[kept]) and torch.equal(batch.labels[kept], mos[kept])  # clean
    assert (batch.labels[chosen] < mos[chosen]).all() and batch.similarity.shape == (3,)


def test_up_raises_every_score_and_away_pushes_from_the_middle():
    model = stand_in_quality_model(spread=200.0).eval()
    images, mos = as_loaded(uint8_batch(6, 16, seed=3)), torch.full((6,), 50.0)
    with torch.no_grad():  # centre the scores on the middle of the range, 50
        model.network.head.bias -= (model(images).median() - 50 + 0.01) / model.network.spread
    clean_scores = model(images).detach()
    assert (clean_scores > 50).any() and (clean_scores < 50).any()
    for direction in ("up", "away"):
        config = TrainConfig(dataset="csv", adv_train="fgsm", adv_ratio=1.0, adv_direction=direction)
        moved = model(adversarial_batch(model, images, mos, config, (0.0, 100.0)).pixels).detach() - clean_scores
        expected = torch.ones(6) if direction == "up" else torch.where(clean_scores > 50, -1.0, 1.0)
        assert torch.equal(torch.sign(moved), expected)
    assert attack_middle("away", "bid", (0.0, 5.0)) == 2.5 and attack_middle("up", "livec", (0.0, 100.0)) == math.inf
    assert attack_middle("up", "csiq", (0.0, 1.0)) == -math.inf  # a DMOS: higher quality is a lower score


def test_the_label_range_is_the_training_sets_lowest_and_highest_mos_unless_nominal():
    config = TrainConfig(dataset="koniq-10k", adv_train="fgsm")
    assert label_range(config, [61.2, 12.5, 80.0, 33.0], (0.0, 100.0)) == (12.5, 80.0)
    nominal = TrainConfig(dataset="koniq-10k", adv_train="fgsm", adv_label_range="nominal")
    assert label_range(nominal, [61.2, 12.5, 80.0], (0.0, 100.0)) == (0.0, 100.0)
    # KonIQ's extremes, as Chistyakova et al.'s code hard-codes them: 80 - 0.1 * (88.39 - 3.91)
    koniq = (3.91, 88.39)
    assert corrected_labels(torch.tensor([80.0, 5.0]), torch.tensor([0.9, 0.5]), 1.0, koniq).tolist() == \
        pytest.approx([80.0 - 0.1 * 84.48, 3.91])
    with pytest.raises(ValueError, match="use --adv_label_range nominal"):
        label_range(config, [50.0, 50.0], (0.0, 100.0))
    with pytest.raises(ValueError, match="unknown adv_label_range 'test'; valid: train, nominal"):
        TrainConfig(adv_label_range="test")


def test_the_solver_corrects_labels_within_the_training_sets_range(tmp_path):
    fake_datasets.make_csv(tmp_path / "data", count=5)
    split = split_samples(folders.list_samples("csv", tmp_path / "data"), "csv", seed=0)
    training_mos = [sample.mos for sample in split[0]]
    for setting, expected in (("train", (min(training_mos), max(training_mos))), ("nominal", (0.0, 100.0))):
        config = TrainConfig(dataset="csv", batch_size=2, train_patch_num=1, adv_train="fgsm", adv_label_range=setting)
        crafting = solver(config, split, tmp_path / setting).crafting(0, 0)
        assert crafting.label_range == pytest.approx(expected) and crafting.views == [0]
    assert (min(training_mos), max(training_mos)) != (0.0, 100.0)  # the two ranges differ


def test_the_label_correction_by_hand():
    mos, similarity = torch.tensor([80.0, 10.0, 50.0]), torch.tensor([0.9, 0.5, 1.0])
    # 80 - 0.5 * 0.1 * 100 = 75; 10 - 0.5 * 0.5 * 100 = -15, clamped to the bottom of the scale; SSIM 1: unchanged
    assert corrected_labels(mos, similarity, 0.5, (0.0, 100.0)).tolist() == pytest.approx([75.0, 0.0, 50.0])
    assert corrected_labels(torch.tensor([4.0]), torch.tensor([0.8]), 1.0, (0.0, 5.0)).item() == pytest.approx(3.0)
    # a DMOS scale (higher is worse): the damage raises the label, up to the top of the scale
    assert corrected_labels(torch.tensor([0.5, 0.9]), torch.tensor([0.9, 0.5]), 1.0, (0.0, 1.0),
                            higher_is_better=False).tolist() == pytest.approx([0.6, 1.0])
    assert corrected_labels(mos, similarity, 0.0, (0.0, 100.0)).tolist() == mos.tolist()


# -- the training step


@pytest.mark.parametrize("if_grad", [False, True])
def test_an_at_step_follows_its_loss_and_lowers_the_loss_on_its_adversarial_examples(if_grad):
    """The step's parameter gradients are those of L1 on the mixed batch (adversarial patches with
    their SSIM-corrected labels in place of views 0 and 2, the others clean), plus NT's penalty on it with --if_grad,
    rebuilt here from attacks.fgsm and ssim on a copy of the model; the step then lowers that loss."""
    config = TrainConfig(dataset="csv", batch_size=4, adv_train="fgsm", adv_eps=16 / 255, adv_ratio=0.5,
                         if_grad=if_grad, weight=0.5, lr=1e-3, lr_ratio=1.0)
    clean_uint8, mos = uint8_batch(4, 16, seed=4, smooth=True), torch.tensor([20.0, 80.0, 40.0, 60.0])
    images, pixels = as_loaded(clean_uint8), clean_uint8.float() / 255
    model, reference = StandInScoreModel().train(), StandInScoreModel().train()

    chosen = [0, 2]  # half of 4, evenly spaced
    adversarial = attacks.fgsm(HYPERIQA.quality_model(reference), pixels[chosen], eps=16 / 255, middle=50.0).adversarial
    labels = (mos[chosen] - (1 - ssim(pixels[chosen], adversarial)) * 100).clamp(0, 100)  # the nominal 0-100
    assert (mos[chosen] - labels).min() > 1  # the correction matters
    mixed, targets = pixels.clone(), mos.clone()
    mixed[chosen], targets[chosen] = adversarial, labels
    mixed = models.normalize(mixed)

    def loss_of(net):
        return nt_loss(net, mixed, targets, weight=0.5).total if if_grad else F.l1_loss(net(mixed), targets)

    loss = loss_of(reference)
    expected, before = torch.autograd.grad(loss, list(reference.parameters())), loss.item()
    optimizer = build_optimizer(model, config, 0)
    value, scores = train_step(model, HYPERIQA, optimizer, images, mos, config)
    assert value == pytest.approx(before, rel=1e-5) and scores.shape == (4,)
    for param, grad in zip(model.parameters(), expected):
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6)
    assert loss_of(model).item() < before - 1e-3


def solver(config: TrainConfig, split, folder, stop: StopRequest | None = None) -> HyperIQASolver:
    """A solver of round 0 of `split` training a fresh stand-in, writing its files in `folder`."""
    folder.mkdir(exist_ok=True)
    loaders = round_loaders(config, *split, round_index=0)
    files = RunFiles(folder / "best.pth", folder / "state.pth", folder / "log")
    return HyperIQASolver(config, StandInScoreModel(), loaders, files, stop=stop, log=lambda line: None)


def test_resume_under_adversarial_training_is_exact(tmp_path):
    """PGD (random starts) with NT: stopped after the first of two steps, then resumed, the run ends
    with exactly the weights of the uninterrupted run."""
    fake_datasets.make_csv(tmp_path / "data", count=5)  # 4 training images: 2 steps per epoch
    split = split_samples(folders.list_samples("csv", tmp_path / "data"), "csv", seed=0)
    config = TrainConfig(dataset="csv", batch_size=2, epochs=2, train_patch_num=1, test_patch_num=1,
                         adv_train="pgd", adv_steps=2, if_grad=True)
    whole = solver(config, split, tmp_path / "whole")
    whole.train()

    stop = StopRequest()
    stop.requested = True  # as after Ctrl-C: save at the end of the next step and stop
    with pytest.raises(KeyboardInterrupt):
        solver(config, split, tmp_path / "cut", stop).run_epoch(0)
    resumed = solver(config, split, tmp_path / "cut")
    resumed.restore(load_training_state(tmp_path / "cut" / "state.pth", config))
    assert (resumed.state.epoch, resumed.state.step) == (0, 1)
    resumed.train()
    final, expected = resumed.model.state_dict(), whole.model.state_dict()
    assert all(torch.equal(final[key], expected[key]) for key in expected)
    np.testing.assert_array_equal(resumed.state.rows, whole.state.rows)  # the table (NaN SROCC of 1 test image)


# -- settings, names and files


def test_checkpoint_names_say_the_defense():
    assert TrainConfig().checkpoint_name() == "livec_bs16_grad[0]_weight[0.0].pth"  # the released names stay
    assert TrainConfig(if_grad=True).checkpoint_name() == "livec_bs16_grad[1]_weight[0.001]_h[0.01].pth"
    assert TrainConfig(adv_train="fgsm").checkpoint_name() == "livec_bs16_grad[0]_weight[0.0]_adv[fgsm-0.0157].pth"
    assert (TrainConfig(adv_train="pgd", if_grad=True, adv_eps=8 / 255).checkpoint_name()
            == "livec_bs16_grad[1]_weight[0.001]_h[0.01]_adv[pgd10-0.0314].pth")
    assert TrainConfig(adv_train="pgd", adv_steps=3).checkpoint_name().endswith("_adv[pgd3-0.0157].pth")
    assert checkpoints.checkpoint_name("koniq-10k", 8, False, adv_train="fgsm", adv_eps=0.03) == \
        "koniq-10k_bs8_grad[0]_weight[0.0]_adv[fgsm-0.0300].pth"
    with pytest.raises(ValueError, match="needs fgsm and eps, or pgd, eps and steps"):
        checkpoints.checkpoint_name("livec", 16, False, adv_train="pgd", adv_eps=0.01)


@pytest.mark.parametrize("changes, message", [
    (dict(adv_train="bim"), "unknown adv_train 'bim'; valid: none, fgsm, pgd"),
    (dict(adv_train="fgsm", adv_eps=0.0), r"adv_eps must be in \(0, 1\]"),
    (dict(adv_train="fgsm", adv_eps=8.0), r"adv_eps must be in \(0, 1\]"),
    (dict(adv_train="fgsm", adv_ratio=0.0), r"adv_ratio must be in \(0, 1\]"),
    (dict(adv_train="fgsm", adv_steps=3), "adv_steps and adv_alpha apply to --adv_train pgd only"),
    (dict(adv_train="pgd", adv_alpha=-0.01), "adv_alpha must be > 0"),
    (dict(adv_direction="down"), "unknown adv_direction 'down'; valid: away, up"),
    (dict(adv_label="lpips"), "unknown adv_label 'lpips'; valid: ssim, keep"),
    (dict(adv_lambda=-1.0), "adv_lambda must be >= 0"),
])
def test_invalid_adversarial_settings_say_what_is_valid(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_the_flags_are_the_config_fields():
    args = train_test_IQA_sparsity.parse_args(
        ["--adv_train", "pgd", "--adv_eps", "0.03", "--adv_steps", "3", "--adv_alpha", "0.01", "--adv_direction", "up",
         "--adv_label", "keep", "--adv_lambda", "0.5", "--adv_ratio", "0.25"])
    config, _ = train_test_IQA_sparsity.training_config(args)
    assert (config.adv_train, config.adv_eps, config.adv_steps, config.adv_alpha, config.adv_direction,
            config.adv_label, config.adv_lambda, config.adv_ratio) == ("pgd", 0.03, 3, 0.01, "up", "keep", 0.5, 0.25)
    assert config.adversarial_attack() == (0.01, 3)
    assert train_test_IQA_sparsity.training_config(train_test_IQA_sparsity.parse_args([]))[0] == TrainConfig()


class StopAfterTheFirstStep(StopRequest):
    """As if Ctrl-C came during the first step: the run saves a resumable state after it and stops."""

    def __enter__(self) -> "StopAfterTheFirstStep":
        self.requested = True
        return self


def test_a_tiny_at_run_resumes_and_writes_a_checkpoint_that_loads_strictly(tmp_path, capsys, monkeypatch):
    fake_datasets.make_livec(tmp_path / "livec", count=3)  # 2 training images: one step per epoch
    argv = ["--dataset", "livec", "--dataset_path", tmp_path / "livec", "--checkpoint_dir", tmp_path / "ck",
            "--adv_train", "fgsm", "--epochs", "1", *TINY_TRAINING]
    path = tmp_path / "ck" / "livec_bs2_grad[0]_weight[0.0]_adv[fgsm-0.0157].pth"
    monkeypatch.setattr(HyperIQASolver_module, "StopRequest", StopAfterTheFirstStep)
    status, out, err = run_main(train_test_IQA_sparsity, argv, capsys, monkeypatch)
    assert status == 130 and "Adversarial training: fgsm, eps 0.0157, 1 step(s) of 0.0157" in out
    assert "label ssim (lambda 1, range train)" in out
    monkeypatch.setattr(HyperIQASolver_module, "StopRequest", StopRequest)
    status, out, err = run_main(train_test_IQA_sparsity, [*argv, "--resume"], capsys, monkeypatch)
    assert status == 0, err
    assert f"resuming from {path.with_name(path.stem + '.resume.pth')} at round 1, epoch 1, step 1" in err
    model = models.load_hyperiqa(path)  # strict: every key and shape of the released model
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1,)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["config"]["adv_train"] == "fgsm" and saved["epoch"] == 1
