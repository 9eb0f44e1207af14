"""LinearityIQA's protocol on the model interface, with a stand-in of the released structure (a tiny
backbone, the released heads with BatchNorm1d, three outputs: tests/stand_in.py): the Norm-in-Norm
loss, the NT step, the k/b fit and its checkpoints, views, splits, the last batch, the schedule, and
a training run through the training script. The real ResNeXt-101 is checked against the released
code in tests/test_linearityiqa_release.py.
"""
import csv
import dataclasses
import math

import numpy as np
import pytest
import torch

import checkpoints
import folders
import metrics
import models
import splits
import train_test_IQA_sparsity
from checkpoints import Checkpoint, CheckpointError
from data_loader import make_test_loader, make_train_loader
from families import linearityiqa
from folders import Sample
import HyperIQASolver
from HyperIQASolver import HyperIQASolver as Solver, round_loaders
from training_step import train_step
from norm_in_norm import monotonicity, norm_in_norm
from released_reference import released_three_pass_nt_loss
from tests import fake_datasets, recipe
from tests.stand_in import linearityiqa_stand_in
from tests.test_reliability import run_main, use_model
from train_config import RunFiles, TrainConfig
from views import Views, cut_view, random_crop_boxes

FAMILY = models.get_family("linearityiqa")
STAND_IN_FAMILY = dataclasses.replace(FAMILY, architecture=linearityiqa_stand_in)
FLOAT64_RTOL = 1e-9
F64 = dict(dtype=torch.float64)


# -- the Norm-in-Norm loss and the monotonicity term

PREDICTION, TARGET = [1.0, 2.0, 4.0], [10.0, 30.0, 20.0]
# By hand: the centred prediction [-4/3, -1/3, 5/3] over its l2 norm sqrt(42)/3 is [-4, -1, 5] / sqrt(42);
# the centred target [-10, 10, 0] over sqrt(200) is [-1, 1, 0] / sqrt(2); p = 1, q = 2: s = 2 sqrt(3).
A_HAT = np.array([-4.0, -1.0, 5.0]) / math.sqrt(42)
C_HAT = np.array([-1.0, 1.0, 0.0]) / math.sqrt(2)
RHO = 3 / math.sqrt(84)  # cos(A_HAT, C_HAT) = (4 - 1) / (sqrt(42) sqrt(2))
PLAIN = np.abs(A_HAT - C_HAT).sum() / (2 * math.sqrt(3))
SCALED = np.abs(RHO * A_HAT - C_HAT).sum() / (2 * math.sqrt(3))


def test_norm_in_norm_equals_the_hand_computed_values():
    prediction, target = torch.tensor(PREDICTION, **F64), torch.tensor(TARGET, **F64)
    assert norm_in_norm(prediction, target).item() == pytest.approx(PLAIN, rel=1e-7)  # eps 1e-8 in the norms
    variant = (PLAIN + 0.1 * SCALED) / 1.1  # alpha = [1, 0.1], the p1q2plus0.1variant
    assert norm_in_norm(prediction, target, alpha=(1.0, 0.1)).item() == pytest.approx(variant, rel=1e-7)
    assert norm_in_norm(prediction, target, alpha=(0.0, 1.0)).item() == pytest.approx(SCALED, rel=1e-7)


def test_norm_in_norm_ignores_the_shift_and_scale_of_the_predictions_and_targets():
    prediction = torch.tensor([0.3, -1.2, 2.5, 0.9, 0.0], **F64)
    target = torch.tensor([40.0, 20.0, 90.0, 55.0, 35.0], **F64)
    reference = norm_in_norm(prediction, target, alpha=(1.0, 0.1)).item()
    assert reference > 0.01
    for scale, shift in ((3.0, 0.0), (0.01, 50.0), (250.0, -7.0)):
        assert norm_in_norm(scale * prediction + shift, target, alpha=(1.0, 0.1)).item() == pytest.approx(reference,
                                                                                                          rel=1e-6)
        assert norm_in_norm(prediction, scale * target + shift, alpha=(1.0, 0.1)).item() == pytest.approx(
            reference, rel=1e-6)
    assert norm_in_norm(-prediction, target).item() > reference  # not invariant to the order of the images
    assert norm_in_norm(2 * target - 1, target).item() == pytest.approx(0.0, abs=1e-7)


def test_a_batch_of_one_gives_zero_with_a_zero_gradient():
    prediction = torch.tensor([0.7], requires_grad=True, **F64)
    for loss in (norm_in_norm(prediction, torch.tensor([55.0], **F64)), monotonicity(prediction, torch.tensor([1.0]))):
        (grad,) = torch.autograd.grad(loss, prediction)
        assert loss.item() == 0 and grad.item() == 0


def test_monotonicity_counts_the_wrongly_ranked_pairs():
    # images 2 and 3 are ranked the wrong way: relu((2 - 4) sign(20 - 30)) = relu((4 - 2) sign(30 - 20)) = 2;
    # sum 4 over 3 x 2 ordered pairs, divided by 1 + the largest entry, 2
    term = monotonicity(torch.tensor(PREDICTION, **F64), torch.tensor(TARGET, **F64))
    assert term.item() == pytest.approx(4 / 6 / 3)
    assert monotonicity(torch.tensor([1.0, 3.0, 2.0], **F64), torch.tensor(TARGET, **F64)).item() == 0


# -- the family's loss, NT step and linear map, on the stand-in

def stand_in_batch(count: int = 4):
    pixels = torch.rand(count, 3, 64, 96, generator=torch.Generator().manual_seed(3), **F64)
    mos = torch.tensor([20.0, 75.0, 40.0, 60.0, 10.0, 90.0][:count], **F64)
    return pixels, mos


@pytest.mark.parametrize("options", [{}, {"nin_alpha": 0.1, "monotonicity": True}])
def test_the_released_loss_weighs_the_three_outputs_from_one_forward(options):
    network = linearityiqa_stand_in().double().train()
    pixels, mos = stand_in_batch()
    inputs = FAMILY.normalization(pixels)
    forwards = []
    network.register_forward_hook(lambda module, args, output: forwards.append(1))
    loss, scores = FAMILY.configured(options).released_loss(network, inputs, mos)
    assert len(forwards) == 1
    with torch.no_grad():
        raw = network.raw_outputs(inputs)  # train mode: the same batch statistics

    def term(output):
        value = norm_in_norm(output, mos, alpha=(1.0, options.get("nin_alpha", 0.0)))
        return value + 0.1 * monotonicity(output, mos) if options.get("monotonicity") else value

    expected = 0.1 * term(raw[:, 0]) + 0.1 * term(raw[:, 1]) + term(raw[:, 2])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(scores.detach(), raw[:, 2], rtol=0, atol=0)  # k 1, b 0 while training
    network.k[0], network.b[0] = 2.0, 5.0  # the scores (NT's and the attacks') are the mapped ones
    mapped_loss, mapped = FAMILY.configured(options).released_loss(network, inputs, mos)
    torch.testing.assert_close(mapped.detach(), 2 * raw[:, 2] + 5)
    assert mapped_loss.item() == pytest.approx(loss.item(), rel=1e-12)  # the loss is that of the raw outputs


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_an_nt_step_has_the_parameter_gradients_of_the_three_pass_reference(mode):
    """float64: the step's Norm-in-Norm + weight x penalty from two forwards against the released way,
    three forwards (the loss, then the penalty's clean and shifted forwards), BatchNorm in `mode`."""
    config = TrainConfig(model="linearityiqa", batch_size=4, if_grad=True, weight=0.5)
    ours, reference = linearityiqa_stand_in().double(), linearityiqa_stand_in().double()
    ours.train(mode == "train"), reference.train(mode == "train")
    pixels, mos = stand_in_batch()
    family = FAMILY.configured(config.options)
    value, _ = train_step(ours, family, torch.optim.SGD(ours.parameters(), lr=0.0), pixels, mos, config)
    released = released_three_pass_nt_loss(reference, FAMILY.normalization(pixels), mos, 0.5, config.h,
                                           family.released_loss)
    released.total.backward()
    assert value == pytest.approx(released.total.item(), rel=1e-12)
    assert released.penalty.item() > 1e-3 * released.released.item()  # the penalty weighs in the gradients
    # atol: gradients that are 0 but for rounding (biases before a BatchNorm in train mode) differ by ~1e-12,
    # against gradients of up to ~1e3
    for (name, param), expected in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, expected.grad, rtol=FLOAT64_RTOL, atol=1e-10, msg=name)


def test_the_fit_maps_each_output_by_least_squares_in_the_released_order():
    rng = np.random.default_rng(0)
    mos = rng.uniform(0, 100, 50)
    noise = rng.normal(0, 1e-3, (50, 3))
    # output 0 (layer3) = (mos - 5) / 2, output 1 (layer4) = (mos + 1) / -4, output 2 (the score) = (mos - 50) / 0.01
    raw = np.stack(((mos - 5) / 2, (mos + 1) / -4, (mos - 50) / 0.01), axis=1) + noise
    network = linearityiqa_stand_in()
    linearityiqa.fit_linear_map(network, raw, mos)
    assert network.k == pytest.approx([0.01, 2.0, -4.0], rel=1e-4)  # index 0: the last output
    assert network.b == pytest.approx([50.0, 5.0, -1.0], abs=1e-2)
    assert FAMILY.checkpoint_extras(network) == {"k": network.k, "b": network.b}
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    network.eval()
    with torch.no_grad():
        scores, raw_outputs = network(FAMILY.normalization(pixels), all_outputs=True)
    torch.testing.assert_close(scores, raw_outputs[:, 2] * network.k[0] + network.b[0])


def test_checkpoints_keep_k_and_b_and_refuse_bad_ones():
    state = linearityiqa_stand_in().state_dict()
    network = STAND_IN_FAMILY.network_from(Checkpoint(state, {"k": [2.0, 3.0, 4.0], "b": [1.0, 0.0, 0.0]}), "a.pth")
    assert (network.k, network.b) == ([2.0, 3.0, 4.0], [1.0, 0.0, 0.0])
    with pytest.warns(UserWarning, match="no k and b"):
        assert STAND_IN_FAMILY.network_from(Checkpoint(state, {}), "bare.pth").k == [1.0, 1.0, 1.0]
    with pytest.raises(CheckpointError, match="'k' must be a list of finite numbers"):
        STAND_IN_FAMILY.network_from(Checkpoint(state, {"k": "x", "b": [0.0]}), "bad.pth")
    with pytest.raises(CheckpointError, match="missing keys: regression.weight"):
        STAND_IN_FAMILY.network_from(Checkpoint({k: v for k, v in state.items() if k != "regression.weight"}, {}), "c")


# -- views, splits, the last batch, the schedule

def test_views_the_whole_image_resized_and_the_augmented_crops():
    assert FAMILY.views("koniq-10k", False, 25) == Views(count=1, resize=((498, 664),))
    assert FAMILY.views("livec", True, 1).resize == ((500, 500), (498, 664))  # CLIVE: 500x500 first
    assert FAMILY.views(None, False, 1).describe() == "the whole image resized to 664x498"
    augmented = FAMILY.configured({"augment": True}).views("koniq-10k", True, 1)
    assert (augmented.crop, augmented.flip, augmented.rotation) == ((498, 498), "horizontal", 2.0)
    assert FAMILY.configured({"augment": True}).views("koniq-10k", False, 1).crop is None  # tests see the whole image

    boxes = random_crop_boxes(498, 664, dataclasses.replace(augmented, count=200), torch.Generator().manual_seed(0))
    angles = np.array([box.angle for box in boxes])
    assert angles.min() >= -2 and angles.max() <= 2 and angles.std() > 0.9  # uniform in [-2, 2]: std 1.15
    assert {box.top for box in boxes} == {0} and max(box.left for box in boxes) <= 166
    image = torch.arange(3 * 498 * 664, dtype=torch.float32).reshape(3, 498, 664).remainder(251).to(torch.uint8)
    box = boxes[0]._replace(flip=True)
    import torchvision.transforms.functional as TF
    rotated = TF.rotate(image, box.angle, interpolation=TF.InterpolationMode.NEAREST)
    torch.testing.assert_close(cut_view(image, box, augmented),
                               rotated[:, :, box.left:box.left + 498].flip(-1), rtol=0, atol=0)


def test_koniq_splits_into_its_7058_1000_2015_from_a_split_file_or_seeded(tmp_path):
    samples = [Sample(f"{i}.jpg", float(i), f"{i}.jpg") for i in range(10073)]
    shares = FAMILY.validation_shares("koniq-10k")
    order = np.random.default_rng(1).permutation(10073).tolist()
    (tmp_path / "koniq_split.json").write_text(str(order))
    split = splits.round_split(samples, "koniq-10k", split_file=str(tmp_path / "koniq_split.json"),
                               validation_shares=shares)
    assert (len(split.train), len(split.validation), len(split.test)) == (7058, 1000, 2015)
    assert [s.path for s in split.validation] == [f"{i}.jpg" for i in order[7058:8058]]
    seeded = splits.round_split(samples, "koniq-10k", seed=3, validation_shares=shares)
    assert (len(seeded.train), len(seeded.validation), len(seeded.test)) == (7058, 1000, 2015)
    assert sorted(seeded.train + seeded.validation + seeded.test) == sorted(samples)
    assert splits.round_split(samples, "koniq-10k", seed=3, round_index=1, validation_shares=shares) != seeded
    other = splits.round_split(samples[:100], "livec", validation_shares=FAMILY.validation_shares("livec"))
    assert (len(other.train), len(other.validation), len(other.test)) == (60, 20, 20)
    assert splits.round_split(samples[:100], "livec").validation is None  # HyperIQA: train and test only
    with pytest.raises(ValueError, match="non-empty training, validation and test"):
        splits.round_split(samples[:3], "koniq-10k", validation_shares=shares)  # 2, 0, 1


def test_a_last_batch_of_one_image_is_dropped_and_a_batch_of_one_refused(tmp_path, capsys):
    fake_datasets.make_csv(tmp_path / "data", count=7)
    samples = folders.list_samples("csv", tmp_path / "data")
    views = FAMILY.views("csv", True, 1)
    loader = make_train_loader(samples, "csv", views, 3, min_share=2)
    assert len(loader) == 2 and [len(b[2]) for b in loader.batches(0)] == [3, 3]  # 7 = 2 x 3 + 1
    assert "the last training batch of each epoch (1 of the 7 views) is dropped" in capsys.readouterr().err
    assert len(make_train_loader(samples[:6], "csv", views, 4, min_share=2)) == 2  # a last batch of 2 is kept
    assert len(make_train_loader(samples, "csv", views, 3)) == 3  # HyperIQA keeps it
    shares = make_train_loader(samples, "csv", views, 4, min_share=2, rank=1, world_size=2)  # last 3: shares 2, 1
    assert len(shares) == 1
    with pytest.raises(ValueError, match="at least 2 views per process"):
        make_train_loader(samples, "csv", views, 1, min_share=2)


def test_the_schedule_divides_the_learning_rates_by_10_every_10_of_30_epochs():
    config = TrainConfig(model="linearityiqa", lr=1e-4, lr_ratio=0.1, epochs=30)
    network = linearityiqa_stand_in()
    (stage,) = FAMILY.stages(config)
    optimizer = stage.optimizer(network, config, 0)
    assert stage.epochs == 30 and len(optimizer.param_groups) == 6
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(network.parameters()))
    assert optimizer.param_groups[-1]["params"] == list(network.features.parameters())
    seen = []
    for epoch in range(30):
        optimizer = stage.next_epoch(optimizer, network, config, epoch) if epoch else optimizer
        seen.append([group["lr"] for group in optimizer.param_groups])
    heads = [1e-4] * 10 + [1e-5] * 10 + [1e-6] * 10
    assert [lrs[:5] for lrs in seen] == [pytest.approx([lr] * 5, rel=1e-12) for lr in heads]
    assert [lrs[5] for lrs in seen] == pytest.approx([lr / 10 for lr in heads], rel=1e-12)  # ft_lr_ratio 0.1
    assert [linearityiqa.lr_decay_step(e) for e in (1, 2, 3, 16, 30)] == [1, 2, 1, 5, 10]


# -- training

def test_the_epoch_of_the_largest_absolute_validation_srocc_is_kept(tmp_path, monkeypatch):
    """The released criterion, |validation SROCC| (its k/b fit turns a negative correlation positive):
    epoch 1 at -0.9 beats epoch 2 at 0.5 (the validation SROCCs are imposed, the rest is real)."""
    fake_datasets.make_csv(tmp_path / "data", count=12)  # 7 training, 2 validation, 3 test images
    config = TrainConfig(model="linearityiqa", dataset="csv", batch_size=3, epochs=2, train_patch_num=1,
                         test_patch_num=1)
    split = splits.round_split(folders.list_samples("csv", tmp_path / "data"), "csv",
                               validation_shares=FAMILY.validation_shares("csv"))
    imposed, real = iter([(-0.9, -0.8), (0.5, 0.4)]), HyperIQASolver.correlations
    monkeypatch.setattr(HyperIQASolver, "correlations", lambda predictions, mos: next(imposed)
                        if len(mos) == len(split.validation) else real(predictions, mos))
    best = tmp_path / "best.pth"
    loaders = round_loaders(config, split.train, split.test, 0, validation_samples=split.validation)
    solver = Solver(config, linearityiqa_stand_in(), loaders, RunFiles(best, None, best.with_suffix(".log")),
                    log=lambda line: None)
    test_result = solver.train()
    meta = checkpoints.read_checkpoint(best).meta
    assert (meta["epoch"], meta["srocc"], meta["plcc"]) == (1, -0.9, -0.8)
    assert test_result == (meta["test_srocc"], meta["test_plcc"])  # the round reports the test split


# -- training through the script

def make_koniq_layout(root, count: int) -> None:
    """A KonIQ-10k folder of `count` small images (64x48) and MOS_zscore labels in 5-95."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    with open(root / "koniq10k_scores_and_distributions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_name", "MOS", "SD", "MOS_zscore"])
        for index in range(count):
            writer.writerow([f"{index}.jpg", 3.0, 0.5, round(float(rng.uniform(5, 95)), 2)])
            fake_datasets.write_image(root / "1024x768" / f"{index}.jpg", seed=index, size=(64, 48))


def test_nt_training_selects_on_validation_fits_k_and_b_and_saves_the_released_layout(tmp_path, capsys, monkeypatch):
    make_koniq_layout(tmp_path / "koniq", 25)  # 17 training (4 batches of 4 and one of 1), 2 validation, 6 test
    use_model(monkeypatch, linearityiqa_stand_in())
    status, stdout, stderr = run_main(train_test_IQA_sparsity, [
        "--model", "linearityiqa", "--dataset", "koniq-10k", "--dataset_path", tmp_path / "koniq", "--if_grad",
        "--epochs", "2", "--batch_size", "4", "--no_pretrained", "--device", "cpu", "--checkpoint_dir", tmp_path / "ck",
        "--log_file", ""], capsys, monkeypatch)
    assert status == 0, stderr
    assert "Split: 17 training, 2 validation, 6 test images" in stdout
    assert "the last training batch of each epoch (1 of the 17 views) is dropped" in stderr
    rows = [line.split() for line in stdout.splitlines() if line[:1].isdigit()]
    assert "Epoch\tTrain_Loss\tTrain_SRCC\tVal_SRCC\tVal_PLCC" in stdout and len(rows) == 2

    path = tmp_path / "ck" / checkpoints.checkpoint_name("koniq-10k", 4, True, 1e-3, 1e-2, family="linearityiqa")
    checkpoint = checkpoints.read_checkpoint(path)
    meta = checkpoint.meta
    validation_srocc = [abs(float(row[-2])) for row in rows]  # the released criterion: |SROCC|
    assert meta["epoch"] == 1 + validation_srocc.index(max(validation_srocc))  # selected on validation
    assert meta["family"] == "linearityiqa" and meta["config"]["options"] == {
        "nin_alpha": 0.0, "monotonicity": False, "augment": False}
    # the released layout: {'model', 'k', 'b'}, the heads' keys and shapes those of the release
    released = {key: (shape, dtype) for key, shape, dtype in recipe.released_state_dict_layout("linearityiqa")}
    heads = [(key, tuple(value.shape)) for key, value in checkpoint.state.items() if not key.startswith("features.")]
    assert heads == [(key, shape) for key, (shape, _) in released.items() if not key.startswith("features.")]

    # k and b: the least squares of the training MOS on the selected network's outputs, recomputed here
    network = STAND_IN_FAMILY.network_from(checkpoint, str(path)).eval()
    samples = folders.list_samples("koniq-10k", tmp_path / "koniq")
    split = splits.round_split(samples, "koniq-10k", 919, 0, validation_shares=FAMILY.validation_shares("koniq-10k"))
    quality = FAMILY.quality_model(network)

    def outputs(part):
        loader = make_test_loader(part, "koniq-10k", FAMILY.views("koniq-10k", False, 1), 4)
        with torch.no_grad():
            return torch.cat([network(quality.inputs(pixels), all_outputs=True)[1] for pixels, _, _ in
                              loader.batches(0)]).double().numpy()

    # the SROCC the checkpoint was selected by is that of the validation images
    assert meta["srocc"] == pytest.approx(metrics.srocc(outputs(split.validation)[:, 2],
                                                        np.array([s.mos for s in split.validation])))
    mos = np.array([s.mos for s in split.train])
    for index, column in enumerate((2, 0, 1)):
        k, b = np.polyfit(outputs(split.train)[:, column], mos, 1)
        assert (meta["k"][index], meta["b"][index]) == (pytest.approx(k, rel=1e-4), pytest.approx(b, rel=1e-4))
    assert meta["k"][0] != 1.0
    test_scores = outputs(split.test)[:, 2] * meta["k"][0] + meta["b"][0]
    test_mos = np.array([s.mos for s in split.test])
    assert meta["test_srocc"] == pytest.approx(metrics.srocc(test_scores, test_mos), abs=1e-9)
    assert meta["test_plcc"] == pytest.approx(metrics.plcc(test_scores, test_mos), rel=1e-5)
    assert f"Test SRCC {meta['test_srocc']:f}" in stdout
