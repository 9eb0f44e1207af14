"""MANIQA: the released architecture against the release's float64 numbers (tests/fixtures/
maniqa_reference_float64.json, one image: the real ViT-B/8 in float64 costs about a minute of CPU),
its state_dict layout, the transposed attention's reshape, the released protocol (views, the
OpenCV-like resize, per-split MOS scaling, the dropped last batches, the cosine stepped every
batch), NT on it (parameter gradients against the three-pass form; the shifted forward sees the
clean forward's Dropout masks) and a `--model maniqa --if_grad` training run on a generated
KonIQ-10k folder, with a tiny MANIQA of the same structure (tests/stand_in.py) wherever the
numbers of the real one are not the point."""
import csv
import json
import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import HyperIQASolver
import training_step
import models
import train_test_IQA_sparsity
from checkpoints import load_state_strictly, read_checkpoint
from data_loader import make_train_loader
from families import maniqa
from folders import Sample
from nt_regularizer import nt_loss
from released_reference import released_three_pass_nt_loss
from tests import recipe
from tests.fake_datasets import write_image
from tests.stand_in import TINY_VIT, tiny_maniqa
from train_config import TrainConfig
from views import random_crop_boxes, resize_like_opencv_cubic

FAMILY = models.get_family("maniqa")
TAB_QK_TEMPER = 0.05  # the fixture's factor on every TABlock query/key parameter (fixtures README)
RTOL = 1e-9  # float64, the release's operations in another order (seen: 5e-15)
GRAD_RTOL = 1e-10  # float64, the same function computed in two orders
CHECKSUMS = ("vit.blocks.6", "vit.blocks.7", "vit.blocks.8", "vit.blocks.9", "tablock1.1", "conv1", "swintransformer1",
             "tablock2.1", "conv2", "swintransformer2", "fc_score", "fc_weight")


def reference() -> dict:
    return json.loads((recipe.FIXTURES / "maniqa_reference_float64.json").read_text())


def released_layout() -> list[tuple[str, str, str]]:
    rows = (recipe.FIXTURES / "maniqa_state_dict.tsv").read_text().strip().splitlines()[1:]
    return [tuple(row.split("\t")) for row in rows]


def layout_of(network: torch.nn.Module) -> list[tuple[str, str, str]]:
    return [(key, str(tuple(value.shape)), str(value.dtype).removeprefix("torch."))
            for key, value in network.state_dict().items()]


class Released(NamedTuple):
    layout: list[tuple[str, str, str]]  # of the freshly built network
    parameters: int
    network: torch.nn.Module  # the fixture's weights, float64, eval mode


@pytest.fixture(scope="module")
def released() -> Released:
    """The released MANIQA with the fixture's weights (generic recipe, TAB q/k tempered), in float64."""
    network = FAMILY.architecture()
    layout, parameters = layout_of(network), sum(p.numel() for p in network.parameters())
    state = recipe.generic_state_dict(network)
    for key in state:
        if ".c_q." in key or ".c_k." in key:
            state[key] = state[key] * TAB_QK_TEMPER
    network.load_state_dict(state, strict=True)
    return Released(layout, parameters, network.double().eval().requires_grad_(False))


def test_state_dict_keys_order_shapes_and_dtypes_are_the_releases(released):
    assert released.layout == released_layout()
    assert released.parameters == reference()["parameters"] == 135_747_530


def test_score_gradient_norm_shifted_score_and_inner_outputs_of_image_0_are_the_releases(released):
    """One image at batch 1 (the release's scores do not depend on the batch: no BatchNorm), one
    forward, one input backward and the shifted forward of the NT penalty, in float64."""
    expected, h = reference()["224x224"], 0.01
    quality = FAMILY.quality_model(released.network)
    pixels = recipe.recipe_pixels()[:1].double()
    inputs = quality.inputs(pixels).requires_grad_(True)
    assert torch.equal(inputs.detach(), (pixels - 0.5) / 0.5)
    sums = {}

    def checksum(name):
        def hook(module, args, out) -> None:
            sums[name] = (out.sum().item(), out.abs().sum().item())
        return hook
    modules = dict(released.network.named_modules())
    handles = [modules[name].register_forward_hook(checksum(name)) for name in CHECKSUMS]
    score = released.network(inputs)
    for handle in handles:
        handle.remove()
    (grad,) = torch.autograd.grad(score.sum(), inputs)
    with torch.no_grad():
        shifted = released.network(inputs.detach() + h * grad.sign())
    for name in CHECKSUMS:
        total, l1 = sums[name]
        assert l1 == pytest.approx(expected["intermediate_checksums"][name]["l1"][0], rel=RTOL), name
        assert abs(total - expected["intermediate_checksums"][name]["sum"][0]) < RTOL * l1, name
    assert score.item() == pytest.approx(expected["scores"][0], rel=RTOL)
    assert grad.abs().sum().item() == pytest.approx(expected["grad_l1_model_input"][0], rel=RTOL)
    assert shifted.item() == pytest.approx(expected["scores_perturbed_x_plus_h_sign_grad"][0], rel=RTOL)


def test_the_transposed_attention_keeps_the_releases_transpose_then_reshape():
    """y = attn @ v is (B, C, N); the release returns y.transpose(1, 2).reshape(B, C, N): element
    [b, i, j] is y[b, k mod C, k div C] with k = i N + j (not y itself)."""
    block = maniqa.TABlock(6).double().eval()
    x = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    attn = (block.c_q(x) @ block.c_k(x).transpose(1, 2) / math.sqrt(6)).softmax(dim=-1)
    y = attn @ block.c_v(x)
    scrambled = torch.empty_like(y)
    for i in range(4):
        for j in range(6):
            k = i * 6 + j
            scrambled[:, i, j] = y[:, k % 4, k // 4]
    torch.testing.assert_close(block(x), x + scrambled, rtol=1e-13, atol=1e-13)


def test_vit_weights_come_from_a_file_and_offline_the_error_says_what_to_do(tmp_path, monkeypatch):
    import timm

    create = timm.create_model
    source, target = (create("vit_base_patch8_224", pretrained=False, **TINY_VIT) for _ in range(2))
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    maniqa.load_vit_weights(target, str(tmp_path / "vit.pth"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise ConnectionError("no network")
        return create(name, pretrained=False, **kwargs)
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(FileNotFoundError, match="augreg_in21k_ft_in1k .*--backbone_weights PATH .*--no_pretrained"):
        maniqa.vit_b8(pretrained=True)


def test_a_wrong_input_size_is_refused_naming_the_size():
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\).*got \(1, 3, 200, 224\)"):
        tiny_maniqa()(torch.zeros(1, 3, 200, 224))


# -- the released protocol


def test_resize_equals_opencvs_inter_cubic():
    """cv2.resize(img, (5, 4), interpolation=cv2.INTER_CUBIC) of this seeded image, computed with
    OpenCV 4.14 and 5.0 (both gave these bytes); PIL's antialiased bicubic gives other values."""
    image = np.random.default_rng(2025).integers(0, 256, (9, 12, 3), dtype=np.uint8)
    opencv = np.frombuffer(bytes.fromhex(
        "c85b7c4f8a67488884a1c0804ac3bf0ed0a20065e39d516ad32424bad49f8fcc36385bed4b1a0f3ba2001b48827c5471fd2052b68ec1"
        "460bde482479"), np.uint8).reshape(4, 5, 3)
    assert np.array_equal(np.asarray(resize_like_opencv_cubic(Image.fromarray(image), 4, 5)), opencv)
    assert not np.array_equal(np.asarray(Image.fromarray(image).resize((5, 4), Image.BICUBIC)), opencv)


@pytest.mark.parametrize("dataset, probability", [("koniq-10k", 0.7), ("livec", 0.5)])
def test_training_views_are_flipped_up_down_with_the_releases_probability(dataset, probability):
    views = FAMILY.views(dataset, True, 1)
    boxes = random_crop_boxes(224, 224, views, torch.Generator().manual_seed(0), count=4000)
    assert abs(sum(box.flip for box in boxes) / 4000 - probability) < 0.025
    assert views.flip == "vertical"


def test_koniq_images_are_resized_whole_and_other_images_cropped_without_the_last_offset():
    koniq_train, koniq_test = FAMILY.views("koniq-10k", True, 1), FAMILY.views("koniq-10k", False, 1)
    assert koniq_train.resize == koniq_test.resize == ((224, 224),) and koniq_train.crop is None
    assert koniq_test.resample == "opencv_cubic" and koniq_test.flip == "none"
    one_image = FAMILY.views("koniq-10k", False, 20)  # predict_one_image.py: 20 crops of the image as it is
    assert one_image.resize == () and one_image.crop == (224, 224) and one_image.count == 20
    crops = FAMILY.views("livec", True, 1)
    tops = {box.top for box in random_crop_boxes(226, 226, crops, torch.Generator().manual_seed(0), count=200)}
    assert tops == {0, 1}  # randint(0, 226 - 224): offset 2 is never drawn


def samples_with_mos(values) -> list[Sample]:
    return [Sample(f"/nowhere/{i}.jpg", float(v), f"{i}") for i, v in enumerate(values)]


def test_each_split_is_min_max_scaled_on_its_own_and_the_last_partial_batches_are_dropped(tmp_path):
    for i in range(13):
        write_image(tmp_path / f"{i}.png", seed=i, size=(64, 48))
    train = [Sample(str(tmp_path / f"{i}.png"), 2.0 + i, str(i)) for i in range(8)]
    test = [Sample(str(tmp_path / f"{i}.png"), 10.0 * i, str(i)) for i in range(8, 13)]
    config = TrainConfig(model="maniqa", dataset="koniq-10k", batch_size=3, train_patch_num=1, test_patch_num=1)
    loaders = HyperIQASolver.round_loaders(config, train, test, 0)
    assert [s.mos for s in loaders.train.samples] == pytest.approx([i / 7 for i in range(8)])
    assert [s.mos for s in loaders.test.samples] == pytest.approx([0.0, 0.25, 0.5])  # 80..120 scaled, 2 dropped
    assert len(loaders.train) == 2 and [len(m) for _, m, _ in loaders.train.batches(0)] == [3, 3]
    with pytest.raises(ValueError, match="the label 5.0"):
        maniqa.min_max_labels(samples_with_mos([5, 5]))
    with pytest.raises(ValueError, match="no full batch of 9"):
        make_train_loader(train, "koniq-10k", FAMILY.views("koniq-10k", True, 1), 9, drop_last=True)


def test_one_adam_group_the_cosine_stepped_every_batch_and_the_best_epoch_as_released():
    network = torch.nn.Linear(2, 1)
    config = TrainConfig(model="maniqa", lr=1e-5, weight_decay=1e-5)
    (stage,) = FAMILY.stages(config)
    ours = stage.optimizer(network, config, 0)
    released = torch.optim.Adam(network.parameters(), lr=1e-5, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(released, T_max=50, eta_min=0)
    assert len(ours.param_groups) == 1 and ours.param_groups[0]["weight_decay"] == 1e-5
    for step in range(250):  # through a zero at 50 and back up at 100
        stage.per_step(ours, step)
        assert ours.param_groups[0]["lr"] == pytest.approx(released.param_groups[0]["lr"], rel=1e-9, abs=1e-18)
        released.step()
        scheduler.step()
    assert FAMILY.selection_score(0.5, 0.9) > FAMILY.selection_score(0.6, 0.6)  # the best epoch: SROCC + PLCC, as released


# -- NT on MANIQA


def parameter_gradients(network: torch.nn.Module) -> torch.Tensor:
    """All parameter gradients in one vector, 0 for those the score does not reach (ViT blocks 10-11,
    its norm and head, the unused downsample convolutions)."""
    return torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if p.grad is None else p.grad.flatten()
                      for p in network.parameters()])


def test_nt_step_parameter_gradients_equal_the_three_pass_form_with_dropout_off():
    network = tiny_maniqa().double().eval()
    pixels = recipe.inputs_sized(224, 224, count=2).double()
    mos = torch.tensor([0.2, 0.7], dtype=torch.float64)
    config = TrainConfig(model="maniqa", if_grad=True, weight=0.5, h=0.01)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
    training_step.train_step(network, FAMILY, optimizer, pixels, mos, config)
    ours = parameter_gradients(network)
    network.zero_grad(set_to_none=True)
    released = released_three_pass_nt_loss(network, FAMILY.normalization(pixels), mos, 0.5, 0.01, FAMILY.released_loss)
    released.total.backward()
    reference_grad = parameter_gradients(network)
    assert ((ours - reference_grad).norm() / reference_grad.norm()).item() < GRAD_RTOL
    network.zero_grad(set_to_none=True)
    F.mse_loss(network(FAMILY.normalization(pixels)), mos).backward()  # the penalty's share is far above the tolerance
    assert ((parameter_gradients(network) - reference_grad).norm() / reference_grad.norm()).item() > 1e-4


def test_the_shifted_forward_of_nt_sees_the_dropout_masks_of_the_clean_one():
    """In train mode (Dropout and DropPath on), nt_loss's penalty equals the one computed with the
    random state of the clean forward set again for the shifted forward; with fresh masks the
    finite difference would measure the masks, not the input."""
    network = tiny_maniqa().double().train()
    inputs = FAMILY.normalization(recipe.inputs_sized(224, 224, count=2).double())
    mos, h = torch.tensor([0.2, 0.7], dtype=torch.float64), 0.01
    torch.manual_seed(7)
    ours = nt_loss(network, inputs, mos, 1.0, h, released_loss=FAMILY.released_loss).penalty.item()
    x = inputs.detach().requires_grad_(True)
    torch.manual_seed(7)
    scores = network(x)
    (grad,) = torch.autograd.grad(scores.sum(), x)
    torch.manual_seed(7)
    with torch.no_grad():
        same_masks = (((network(x + h * grad.sign()) - scores) / h) ** 2).mean().item() / 2
        fresh_masks = (((network(x + h * grad.sign()) - scores) / h) ** 2).mean().item() / 2
    assert ours == pytest.approx(same_masks, rel=1e-12)
    assert abs(fresh_masks - same_masks) > 0.01 * same_masks


# -- training


def write_koniq(root, count: int) -> None:
    """A KonIQ-10k folder: the CSV with MOS_zscore and `count` small images in 1024x768/."""
    (root / "1024x768").mkdir(parents=True)
    with open(root / "koniq10k_scores_and_distributions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_name", "MOS", "MOS_zscore"])
        for i in range(count):
            writer.writerow([f"{i}.jpg", 3.0, 20.0 + 60.0 * ((i * 7) % count) / count])
            write_image(root / "1024x768" / f"{i}.jpg", seed=i, size=(64, 48))


def test_nt_training_writes_a_checkpoint_with_the_releases_keys(tmp_path, monkeypatch):
    write_koniq(tmp_path / "koniq", 10)
    monkeypatch.setattr(HyperIQASolver, "build_network", lambda *args, **kwargs: tiny_maniqa())
    args = train_test_IQA_sparsity.parse_args([
        "--model", "maniqa", "--if_grad", "--dataset", "koniq-10k", "--dataset_path", str(tmp_path / "koniq"),
        "--epochs", "1", "--batch_size", "2", "--no_pretrained", "--device", "cpu",
        "--checkpoint_dir", str(tmp_path / "out")])
    train_test_IQA_sparsity.main(args)
    checkpoint = read_checkpoint(tmp_path / "out" / "koniq-10k_maniqa_bs2_grad[1]_weight[0.001]_h[0.01].pth")
    assert checkpoint.meta["family"] == "maniqa" and checkpoint.meta["config"]["options"] == {"swin_scale": 0.8}
    assert list(checkpoint.state) == [key for key, _, _ in released_layout()]
    trained = load_state_strictly(tiny_maniqa(), checkpoint.state, "the checkpoint")
    assert not torch.equal(trained.conv1.weight, tiny_maniqa().conv1.weight)
    # 8 training images in batches of 2: 4 steps, the last one at the cosine's lr of step 3
    assert checkpoint.meta["optimizer"]["param_groups"][0]["lr"] == pytest.approx(maniqa.cosine_lr(1e-5, 3))
