"""HyperIQA against the released code's numbers (tests/fixtures), its state_dict layout and API."""
import math

import pytest
import torch

import models
from tests import recipe

SCORE_RTOL = 1e-4  # float32 against the float32 fixture
FLOAT64_RTOL = 1e-8  # float64 against the float64 fixture, any CPU (fixtures README: about 1e-8 at worst)
FLOAT64_PENALTY_RTOL = 1e-7  # the finite difference divides a difference of two close scores by h


@pytest.fixture(scope="module")
def model():
    return models.HyperIQA().eval()


@pytest.fixture(scope="module")
def pixels():
    return recipe.recipe_pixels()


def test_state_dict_keys_order_shapes_and_dtypes_match_the_release(model):
    expected = recipe.released_state_dict_layout()
    actual = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    assert actual == expected
    assert len(actual) == recipe.reference()["state_dict_entries"]
    assert sum(p.numel() for p in model.parameters()) == recipe.reference()["parameters"]


def test_released_hypernet_has_the_same_layout(model):
    hyper = models.HyperNet(16, 112, 224, 112, 56, 28, 14, 7)
    assert [(k, v.shape) for k, v in hyper.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("variant", list(recipe.OFFSETS))
def test_scores_gradient_norms_and_penalties_match_the_release_in_float64(variant):
    # float64: these numbers then agree to ~1e-14 on any CPU (tests/fixtures/README.md)
    from nt_regularizer import exact_penalty, finite_difference_penalty

    expected = recipe.reference_float64()["variants"][variant]
    model = recipe.recipe_model_float64(recipe.OFFSETS[variant]).eval()
    x = models.normalize(recipe.recipe_pixels().double()).requires_grad_(True)
    scores = model(x)
    float64 = dict(dtype=torch.float64)
    torch.testing.assert_close(scores.detach(), torch.tensor(expected["scores"], **float64), rtol=FLOAT64_RTOL, atol=0)
    (grad,) = torch.autograd.grad(scores.sum(), x, retain_graph=True)
    norms = grad.abs().flatten(1).sum(dim=1)
    torch.testing.assert_close(norms, torch.tensor(expected["grad_l1_normalized_input"], **float64),
                               rtol=FLOAT64_RTOL, atol=0)
    penalty = finite_difference_penalty(model, x, scores, h=0.01)
    assert penalty.item() == pytest.approx(expected["nt_penalty_finite_difference_h0.01"], rel=FLOAT64_PENALTY_RTOL)
    assert exact_penalty(x, model(x)).item() == pytest.approx(expected["nt_penalty_exact"], rel=FLOAT64_PENALTY_RTOL)


def test_channels_last_placement_keeps_the_released_numbers(pixels):
    # The scripts run the model as `models.place` lays it out (channels_last); the numbers must not move.
    model = models.place(models.HyperIQA(), "cpu").eval()
    model.load_state_dict(recipe.recipe_state_dict(model.state_dict(), 50.0), strict=True)
    assert model.res.layer1[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    expected = recipe.reference()["variants"]["fc5b_offset_50"]
    x = models.normalize(pixels).requires_grad_(True)
    scores = model(x)
    (grad,) = torch.autograd.grad(scores.sum(), x)
    torch.testing.assert_close(scores.detach(), torch.tensor(expected["scores"]), rtol=SCORE_RTOL, atol=0)
    torch.testing.assert_close(grad.abs().flatten(1).sum(dim=1), torch.tensor(expected["grad_l1_normalized_input"]),
                               rtol=SCORE_RTOL, atol=0)


def test_models_for_training_and_for_the_demos_are_placed_channels_last(hyperiqa_checkpoint):
    for model in (models.build_model(), models.load_hyperiqa(hyperiqa_checkpoint).network):
        assert model.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert model.res.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_released_interface_hypernet_then_targetnet_gives_the_scores(model, pixels):
    model.load_state_dict(recipe.recipe_state_dict(model.state_dict(), 50.0))
    x = models.normalize(pixels)
    with torch.no_grad():
        paras = model.hyper_params(x)
        scores = models.TargetNet(paras)(paras["target_in_vec"])
        direct = model(x)
    assert paras["target_in_vec"].shape == (3, 224, 1, 1)
    assert paras["target_fc1w"].shape == (3, 112, 224, 1, 1)
    assert paras["target_fc5w"].shape == (3, 1, 14, 1, 1)
    assert paras["target_fc5b"].shape == (3, 1)
    torch.testing.assert_close(scores, direct)
    torch.testing.assert_close(scores, torch.tensor(recipe.reference()["variants"]["fc5b_offset_50"]["scores"]),
                               rtol=SCORE_RTOL, atol=0)


def test_target_network_equals_the_released_grouped_convolution(model, pixels):
    """The released target network ran each fc layer as a grouped 1x1 convolution; ours is bmm."""
    model.load_state_dict(recipe.recipe_state_dict(model.state_dict(), 50.0))
    with torch.no_grad():
        paras = model.hyper_params(models.normalize(pixels))
        q = paras["target_in_vec"]
        batch = q.shape[0]
        for layer in range(1, 6):
            w, b = paras[f"target_fc{layer}w"], paras[f"target_fc{layer}b"]
            out = torch.nn.functional.conv2d(q.reshape(1, -1, 1, 1), w.reshape(-1, w.shape[2], 1, 1),
                                             b.reshape(-1), groups=batch)
            q = out.view(batch, w.shape[1], 1, 1)
            q = torch.sigmoid(q) if layer < 5 else q
        torch.testing.assert_close(models.target_network_scores(paras), q.view(batch))


def test_batch_of_one_gives_shape_one_and_the_same_score(model, pixels):
    model.load_state_dict(recipe.recipe_state_dict(model.state_dict(), 50.0))
    with torch.no_grad():
        single = model(models.normalize(pixels[1:2]))
    assert single.shape == (1,)
    assert single.item() == pytest.approx(recipe.reference()["variants"]["fc5b_offset_50"]["scores"][1], rel=SCORE_RTOL)


def test_wrong_input_size_is_rejected_with_the_expected_size(model):
    with pytest.raises(ValueError, match="224x224"):
        model(torch.zeros(1, 3, 256, 256))


def test_normalize_uses_imagenet_statistics():
    x = torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(models.normalize(x), torch.zeros(1, 3, 2, 2))
    one = models.normalize(torch.ones(1, 3, 1, 1)).flatten()
    expected = [(1 - m) / s for m, s in zip(models.IMAGENET_MEAN, models.IMAGENET_STD)]
    assert one.tolist() == pytest.approx(expected, rel=1e-6)


def test_select_device():
    assert models.select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.select_device(None).type == expected
    with pytest.raises(ValueError, match="unknown device"):
        models.select_device("tpu7")


def test_from_scratch_init_uses_normal_one_std_002_for_batchnorm():
    torch.manual_seed(0)
    model = models.build_model(pretrained_backbone=False)
    weights = torch.cat([m.weight.detach() for m in model.res.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert weights.mean().item() == pytest.approx(1.0, abs=0.002)
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(m.bias.abs().max() == 0 for m in model.res.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = model.res.layer2[0].conv2.weight  # Kaiming normal: std sqrt(2 / fan_in)
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.05)


def test_imagenet_backbone_from_a_file_copies_the_resnet_stages(tmp_path):
    import torchvision

    torch.manual_seed(1)
    resnet = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), path)
    model = models.build_model(backbone_weights=str(path))
    assert torch.equal(model.res.layer3[2].conv2.weight, resnet.layer3[2].conv2.weight)
    assert torch.equal(model.res.bn1.running_var, resnet.bn1.running_var)


def test_imagenet_backbone_offline_says_which_file_to_put_where(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError) as info:
        models.load_imagenet_backbone(models.HyperIQA().res)
    message = str(info.value)
    assert "resnet50-0676ba61.pth" in message and str(tmp_path) in message
    assert "--backbone_weights" in message and "--no_pretrained" in message
    assert "\n" not in message
