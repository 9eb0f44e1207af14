"""DBCNN against the released code's numbers (tests/fixtures/dbcnn_*), its checkpoint forms (the authors',
pyiqa's, the SCNN file), its two training stages, NT on it, the attacks, and the scripts on a DBCNN
checkpoint trained here (`--model dbcnn --if_grad` on a generated LIVEC folder).

Float64 VGG-16 costs minutes at 448x448 on two CPU cores: on the CPU the suite checks the scores,
gradient norms and penalties at 224x224 and the score of one 500x375 image (where the SCNN map is
resized); every number of the fixture (448x448 and the train-mode scores too) on CUDA or with
DBCNN_ALL_FIXTURES=1. The released forward is also written out below (`released_forward`) and compared
on small non-square images, gradients included.
"""
import copy
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

import attacks
import checkpoints
import evaluate_robustness
import FGSM_demo
import models
import quality_and_norm_demo
import train_test_IQA_sparsity
from families import dbcnn
from families.base import BuildOptions
from training_step import train_step
from nt_regularizer import finite_difference_penalty, nt_loss
from released_reference import released_three_pass_nt_loss
from train_config import TrainConfig
from tests import fake_datasets, recipe
from tests.test_reliability import error_line, run_main, write_png

DBCNN = models.get_family("dbcnn")
FC_BIAS = {"fc.bias": 50.0}  # the fixture's score_bias
FLOAT64_RTOL = 1e-8  # of score - fc_bias and of gradient norms, float64, any CPU (seen: 2e-11 at worst)
FLOAT64_PENALTY_RTOL = 1e-7  # the finite difference divides a difference of two close scores by h (seen: 2e-11)
TRAIN_MODE_RTOL = 1e-7  # score - fc_bias in train mode: batch statistics summed in the CPU's order (seen: 8e-10)
GRAD_RTOL = 1e-12  # float64, the same function computed in two orders
FULL = os.environ.get("DBCNN_ALL_FIXTURES") == "1" or torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# What the CPU suite checks of each fixture size (all of it with FULL): 'gradients' = scores, gradient
# norms and both penalties; 'all' = these and the train-mode scores; 'score of image 0'; nothing.
CPU_CHECKS = {"224x224": "gradients", "448x448": None, "500x375": "score of image 0"}
SMALL = (24, 40)  # (height, width) of the cheap images: maps of 1x2 (VGG) and 2x3 (SCNN), resized


def fixture_pixels(size: str) -> torch.Tensor:
    height, width = {"224x224": (224, 224), "448x448": (448, 448), "500x375": (375, 500)}[size]
    return recipe.recipe_pixels() if size == "224x224" else recipe.inputs_sized(height, width)


@pytest.fixture(scope="module")
def recipe_state() -> OrderedDict:
    """The generic recipe weights of DBCNN with the fixture's fc bias (tests/fixtures/README.md)."""
    return OrderedDict(recipe.generic_state_dict(DBCNN.architecture(), FC_BIAS))


def recipe_network(state: OrderedDict, fc_bias: float = FC_BIAS["fc.bias"]) -> dbcnn.DBCNN:
    """DBCNN with the recipe weights, its fc bias `fc_bias` + 0.01 z."""
    network = DBCNN.architecture()
    network.load_state_dict(state, strict=True)
    with torch.no_grad():
        network.fc.bias -= FC_BIAS["fc.bias"] - fc_bias
    return network


@pytest.fixture(scope="module")
def released_float64(recipe_state) -> dbcnn.DBCNN:
    """DBCNN with the recipe weights, cast to float64 after the recipe, eval mode, as the fixture was made."""
    return recipe_network(recipe_state).double().eval()


def worst_relative(actual: torch.Tensor, expected: list[float], offset: float = 0.0) -> float:
    expected = torch.tensor(expected, dtype=torch.float64) - offset
    return ((actual.detach().cpu() - offset - expected).abs() / expected.abs()).max().item()


def test_state_dict_keys_order_shapes_and_dtypes_match_the_release():
    network = DBCNN.architecture()
    actual = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in network.state_dict().items()]
    reference = recipe.family_reference("dbcnn")
    assert actual == recipe.released_state_dict_layout("dbcnn")
    assert len(actual) == reference["state_dict_entries"]
    assert sum(p.numel() for p in network.parameters()) == reference["parameters"]


@pytest.mark.parametrize("size", list(CPU_CHECKS))
def test_scores_gradient_norms_and_penalties_match_the_release_in_float64(released_float64, size):
    """score - fc_bias (the image-dependent part; fixtures README), gradient norms in the normalized
    input space, the finite-difference and exact penalties, and the train-mode scores."""
    checks = "all" if FULL else CPU_CHECKS[size]
    if checks is None:
        pytest.skip("float64 VGG-16 at this size takes minutes on two CPU cores: checked on CUDA or with "
                    "DBCNN_ALL_FIXTURES=1")
    reference = recipe.family_reference("dbcnn")
    expected, bias = reference[size], reference["fc_bias"]
    network = released_float64.to(DEVICE)
    pixels = fixture_pixels(size).double().to(DEVICE)
    if checks == "score of image 0":
        with torch.no_grad():
            score = network(DBCNN.normalization(pixels[:1]))
        assert worst_relative(score, expected["scores"][:1], bias) < FLOAT64_RTOL
        return
    x = DBCNN.normalization(pixels).requires_grad_(True)
    scores = network(x)
    assert worst_relative(scores, expected["scores"], bias) < FLOAT64_RTOL
    (grad,) = torch.autograd.grad(scores.sum(), x, retain_graph=True)
    norms = grad.abs().flatten(1).sum(dim=1)  # eval mode: each score depends on its own image only
    assert worst_relative(norms, expected["grad_l1_model_input"]) < FLOAT64_RTOL
    penalty = finite_difference_penalty(network, x, scores, h=0.01).item()
    assert penalty == pytest.approx(expected["nt_penalty_finite_difference_h0.01"], rel=FLOAT64_PENALTY_RTOL)
    exact = (norms ** 2).mean().item() / 2  # what nt_regularizer.exact_penalty backpropagates (tests/test_nt.py)
    assert exact == pytest.approx(expected["nt_penalty_exact"], rel=FLOAT64_PENALTY_RTOL)
    if checks != "all":
        return
    with torch.no_grad():  # BatchNorm of the SCNN branch on batch statistics (no Dropout anywhere)
        train_scores = copy.deepcopy(network).train()(x)
    assert worst_relative(train_scores, expected["scores_train_mode"], bias) < TRAIN_MODE_RTOL


def released_forward(network: dbcnn.DBCNN, x: torch.Tensor) -> torch.Tensor:
    """DBCNN.forward of the release (DBCNN.py:71-96) on our modules, its calls as written there:
    `F.upsample_bilinear` of the SCNN map to the VGG map, `.view`s, the (N, 1) output."""
    n = x.size()[0]
    x1 = network.features1(x)
    h, w = x1.size()[2], x1.size()[3]
    x2 = network.features2(x)
    if (h != x2.size()[2]) | (w != x2.size()[3]):
        x2 = F.upsample_bilinear(x2, (h, w))
    x1, x2 = x1.contiguous().view(n, 512, h * w), x2.contiguous().view(n, 128, h * w)
    pooled = torch.bmm(x1, torch.transpose(x2, 1, 2)) / (h * w)
    return network.fc(F.normalize(torch.sqrt(pooled.view(n, 512 * 128) + 1e-8)))


def test_non_square_images_are_scored_as_the_released_forward_with_its_resize(released_float64):
    x = DBCNN.normalization(recipe.inputs_sized(*SMALL, count=2).double()).to(DEVICE).requires_grad_(True)
    network = released_float64.to(DEVICE)
    ours, theirs = network(x), released_forward(network, x)
    assert ours.shape == (2,) and theirs.shape == (2, 1)
    bias = network.fc.bias.item()
    assert worst_relative(ours, theirs[:, 0].tolist(), bias) < GRAD_RTOL
    grad_ours = torch.autograd.grad(ours.sum(), x)[0]
    grad_theirs = torch.autograd.grad(theirs.sum(), x)[0]
    assert ((grad_ours - grad_theirs).norm() / grad_theirs.norm()).item() < GRAD_RTOL


def test_too_small_input_is_refused_with_the_sizes_it_accepts():
    with pytest.raises(ValueError, match="H, W >= 16"):
        DBCNN.architecture()(torch.zeros(1, 3, 15, 64))


# -- checkpoints


def _same_state(network: torch.nn.Module, state: dict) -> bool:
    own = network.state_dict()
    return list(own) == list(state) and all(torch.equal(own[k], state[k]) for k in own)


@pytest.mark.parametrize("form", ["authors: DataParallel state_dict, legacy pickle", "pyiqa: {'params': ...}",
                                  "pyiqa: {'params': ...}, module. prefix"])
def test_authors_and_pyiqa_checkpoints_load_strictly(tmp_path, recipe_state, form):
    path = tmp_path / "dbcnn.pkl"
    prefixed = OrderedDict(("module." + k, v) for k, v in recipe_state.items())
    if form.startswith("authors"):  # db_models/net_params_best.pkl: torch.save(DataParallel(net).state_dict())
        torch.save(prefixed, path, _use_new_zipfile_serialization=False)
    else:
        torch.save({"params": prefixed if "prefix" in form else recipe_state}, path)
    model = models.load_model(path, "dbcnn")
    assert model.family == "dbcnn" and not model.training
    assert _same_state(model, recipe_state)


def test_a_dbcnn_checkpoint_without_model_or_of_the_wrong_shape_is_one_clear_line(tmp_path, recipe_state):
    path = tmp_path / "net_params_best.pkl"
    recipe_state = OrderedDict(recipe_state)
    torch.save(recipe_state, path)
    with pytest.raises(checkpoints.CheckpointError) as info:  # an authors' name says no family: HyperIQA
        models.load_model(path)
    message = str(info.value)
    assert str(path) in message and "does not fit HyperIQA (hyperiqa)" in message
    assert message.endswith("it has the keys of a dbcnn checkpoint: pass --model dbcnn") and "\n" not in message
    del recipe_state["fc.bias"]
    torch.save(recipe_state, path)
    with pytest.raises(checkpoints.CheckpointError, match=r"net_params_best.pkl does not fit DBCNN \(dbcnn\): "
                                                          r"1 missing keys: fc.bias$"):
        models.load_model(path, "dbcnn")


def test_the_authors_scnn_file_starts_the_scnn_branch(tmp_path):
    """pretrained_scnn/scnn.pkl: a legacy pickle of DataParallel(SCNN()).state_dict(), 68 entries, no
    num_batches_tracked; DBCNN takes its features.* (54 entries)."""
    scnn = dbcnn.scnn_features()
    state = OrderedDict((f"module.features.{k}", v) for k, v in
                        recipe.generic_state_dict(scnn).items() if not k.endswith("num_batches_tracked"))
    for name, shape in (("projection.0.weight", (256, 128, 1, 1)), ("classifier.weight", (39, 256))):
        state[f"module.{name}"] = torch.ones(shape)
    path = tmp_path / "scnn.pkl"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    network = dbcnn.build(BuildOptions(pretrained=False, options={"scnn_weights": str(path)}))
    for key, value in network.features2.state_dict().items():
        expected = state.get(f"module.features.{key}", torch.tensor(0))
        assert torch.equal(value, expected), key
    assert network.fc.bias.item() == 0 and network.fc.weight.std().item() == pytest.approx((2 / 65536) ** 0.5, rel=0.02)
    state.pop("module.features.24.weight")
    torch.save(state, path)
    with pytest.raises(checkpoints.CheckpointError, match=r"scnn.pkl does not fit the SCNN branch .*1 missing keys: "
                                                          r"24.weight"):
        dbcnn.build(BuildOptions(pretrained=False, options={"scnn_weights": str(path)}))


def test_imagenet_vgg16_from_a_file_and_offline_without_it(tmp_path, monkeypatch):
    import urllib.error

    torch.manual_seed(3)
    vgg = dbcnn.vgg16_features()
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()} | {"classifier.0.bias": torch.zeros(4)}, path)
    network = dbcnn.build(BuildOptions(backbone_weights=str(path)))
    assert _same_state(network.features1, vgg.state_dict())

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError) as info:
        dbcnn.build(BuildOptions(pretrained=True))
    message = str(info.value)
    assert "VGG-16" in message and "vgg16-397923af.pth" in message and str(tmp_path) in message
    assert "--backbone_weights" in message and "--no_pretrained" in message and "\n" not in message


# -- training: views, stages, the NT step


def test_views_of_the_released_protocol_and_of_the_nearest_one():
    assert DBCNN.views("livec", True, 1) == dbcnn.Views(count=1, crop=(448, 448), flip="horizontal")
    assert DBCNN.views("live", True, 1).crop == (432, 432)
    assert DBCNN.views("koniq-10k", True, 1).crop == (448, 448)  # nearest: LIVEC's
    assert DBCNN.views("tid2013", True, 1) == dbcnn.Views(count=1, flip="horizontal")  # whole image, flipped
    for dataset in ("livec", "live", "csiq", None):
        assert DBCNN.views(dataset, False, 25) == dbcnn.Views(count=1)  # test: the whole image, once


def test_stage_one_trains_the_linear_layer_alone_and_stage_two_everything(recipe_state):
    config = TrainConfig(model="dbcnn", lr=1e-5, lr_ratio=100.0, weight_decay=5e-4, batch_size=2)
    network = recipe_network(recipe_state).train()
    first, second = DBCNN.stages(config)
    assert first.epochs == second.epochs == config.epochs and second.from_previous_best
    pixels = recipe.inputs_sized(*SMALL, count=2)
    mos = torch.tensor([30.0, 70.0])

    def step(stage):
        stage.prepare(network)
        optimizer = stage.optimizer(network, config, 0)
        before = {k: v.clone() for k, v in network.state_dict().items()}
        train_step(network, DBCNN, optimizer, pixels, mos, config)
        return optimizer, {k for k, v in network.state_dict().items() if not torch.equal(v, before[k])}

    sgd, moved = step(first)
    assert [name for name, p in network.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["params"] == list(network.fc.parameters())
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (1e-3, 0.9, 5e-4)
    batch_statistics = {k for k in network.state_dict() if k.startswith("features2.") and "running" in k}
    assert moved == {"fc.weight", "fc.bias"} | batch_statistics | {k.replace("running_mean", "num_batches_tracked")
                                                                   for k in batch_statistics if "mean" in k}
    adam, moved = step(second)
    assert all(p.requires_grad for p in network.parameters())
    assert isinstance(adam, torch.optim.Adam) and len(adam.param_groups) == 1 and adam.defaults["lr"] == 1e-5
    assert adam.param_groups[0]["params"] == list(network.parameters())
    assert moved == set(network.state_dict())


def test_an_nt_step_gives_the_parameter_gradients_of_the_three_pass_release_in_float64(recipe_state):
    """nt_loss (two forwards: MSE and the penalty share the clean one) against the released three-pass
    formulation with DBCNN's MSE loss, on the real network at a small size, in train mode (as DBCNN
    trains: BatchNorm on batch statistics, which couple the images of the batch)."""
    network = recipe_network(recipe_state).double().train()
    images = DBCNN.normalization(recipe.inputs_sized(*SMALL, count=2).double())
    mos = torch.tensor([30.0, 70.0], dtype=torch.float64)
    parameters = list(network.parameters())

    def flat(gradients) -> torch.Tensor:
        return torch.cat([g.flatten() for g in gradients])

    two = nt_loss(network, images, mos, 0.5, 0.01, released_loss=DBCNN.released_loss)
    ours = torch.autograd.grad(two.total, parameters, retain_graph=True)
    fc_mse_only = flat(torch.autograd.grad(two.released, [network.fc.weight, network.fc.bias]))  # through fc alone
    three = released_three_pass_nt_loss(network, images, mos, 0.5, 0.01, DBCNN.released_loss)
    released = torch.autograd.grad(three.total, parameters)
    assert two.released.item() == pytest.approx(F.mse_loss(three.scores, mos).item(), rel=1e-12)
    assert two.total.item() == pytest.approx(three.total.item(), rel=1e-12) and two.penalty.item() > 0
    assert ((flat(ours) - flat(released)).norm() / flat(released).norm()).item() < GRAD_RTOL
    fc_released = flat(released[-2:])  # fc.weight, fc.bias: the last parameters
    assert ((fc_mse_only - fc_released).norm() / fc_released.norm()).item() > 1e6 * GRAD_RTOL  # the penalty counts


def test_attacks_on_dbcnn_stay_in_the_eps_ball_and_move_the_scores(recipe_state):
    # fc bias near 0, not 50: float32 resolves the small score changes of the recipe weights there
    model = DBCNN.quality_model(recipe_network(recipe_state, fc_bias=0.0)).eval()
    pixels = recipe.inputs_sized(*SMALL, count=2)
    before = pixels.clone()
    clean = attacks.score_patches(model, pixels)
    for attack, steps in (("pgd", 2), ("square", 4)):
        result = attacks.run_attack(attack, model, pixels, eps=0.03, alpha=0.01, steps=steps,
                                    generator=torch.Generator().manual_seed(0))
        assert torch.equal(pixels, before)
        assert (result.adversarial - pixels).abs().max() <= 0.03 + 1e-6
        assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
        attacked = attacks.score_patches(model, result.adversarial)
        assert ((attacked - clean) * attacks.attack_direction(clean) > 0).all(), attack  # pushed away from 50


# -- the scripts on a DBCNN checkpoint trained here


def test_training_with_nt_writes_one_checkpoint_that_the_demos_and_the_evaluation_run_on(tmp_path, capsys,
                                                                                          monkeypatch):
    """train_test_IQA_sparsity.py --model dbcnn --if_grad on a generated LIVEC folder: both stages, one
    checkpoint of the released DBCNN, named with the family; then FGSM_demo.py, quality_and_norm_demo.py
    and evaluate_robustness.py on it; a too small image stops a demo in one line, writing nothing."""
    def run(script, *args) -> tuple[int, str, str]:
        return run_main(script, [*args, "--device", "cpu"], capsys, monkeypatch)

    fake_datasets.make_livec(tmp_path / "livec", count=3, size=SMALL[::-1])
    monkeypatch.setitem(dbcnn.RELEASED_CROPS, "livec", 16)  # tiny settings: 16x16 crops of the 40x24 images
    ck = tmp_path / "ck"
    status, stdout, stderr = run(train_test_IQA_sparsity, "--model", "dbcnn", "--if_grad", "--dataset", "livec",
                                 "--dataset_path", tmp_path / "livec", "--epochs", "1", "--batch_size", "2",
                                 "--no_pretrained", "--checkpoint_dir", ck)
    assert status == 0, stderr
    name = "livec_dbcnn_bs2_grad[1]_weight[0.001]_h[0.01]"
    assert sorted(p.name for p in ck.iterdir()) == [f"{name}.log", f"{name}.pth", f"{name}.resume.pth"]
    path = ck / f"{name}.pth"
    checkpoints.load_state_strictly(dbcnn.DBCNN(), checkpoints.read_checkpoint(path).state, path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert (saved["family"], saved["stage"], saved["epoch"]) == ("dbcnn", 2, 1)
    assert saved["config"]["if_grad"] and saved["config"]["lr"] == 1e-5 and saved["config"]["lr_ratio"] == 100.0
    adam = saved["optimizer"]  # stage 2's: Adam over every parameter
    assert adam["param_groups"][0]["lr"] == 1e-5 and len(adam["state"]) == len(list(dbcnn.DBCNN().parameters()))
    assert "Model: DBCNN" in stdout and "Stage 1/2: fc" in stdout and "Stage 2/2: all layers" in stdout

    image = tmp_path / "livec" / "Images" / "10.JPG"
    status, stdout, stderr = run(FGSM_demo, "--img_name", image, "--checkpoint", path, "--no_plot",
                                 "--save_dir", tmp_path / "adv")
    assert status == 0, stderr
    assert f"1 patches of {image}" in stdout and "Predicted Score (Attacked):" in stdout
    assert [p.name for p in (tmp_path / "adv").iterdir()] == ["10_0.png"]  # the whole image, attacked
    status, stdout, stderr = run(quality_and_norm_demo, "--img_name", image, "--baseline_checkpoint", path,
                                 "--nt_checkpoint", path)
    assert status == 0, stderr
    assert f"Patches: the whole image {image}" in stdout
    norms = [line for line in stdout.splitlines() if line.startswith(("DBCNN:", "DBCNN+NT:"))]
    assert len(norms) == 4 and norms[0].split(":")[1] == norms[1].split(":")[1]  # the same model twice
    status, stdout, stderr = run(evaluate_robustness, "--dataset", "livec", "--dataset_path", tmp_path / "livec",
                                 "--split", "all", "--limit", "1", "--checkpoint", path, "--attack", "ifgsm",
                                 "--no_plot", "--out_dir", tmp_path / "eval")
    assert status == 0, stderr
    report = (tmp_path / "eval" / "robustness.json").read_text()
    assert '"family": "dbcnn"' in report and '"views": "the whole image"' in report
    assert len(stdout.splitlines()) > 3  # the table

    small = write_png(tmp_path / "small.png", size=(12, 8))
    status, _, stderr = run(FGSM_demo, "--img_name", small, "--checkpoint", path, "--no_plot",
                            "--save_dir", tmp_path / "not_written")
    assert error_line(status, stderr).endswith(f"{small}: DBCNN (--model dbcnn) needs at least 16x16 pixels, got 12x8")
    assert not (tmp_path / "not_written").exists()
    status, _, stderr = run(FGSM_demo, "--img_name", image, "--checkpoint", path, "--model", "hyperiqa", "--no_plot")
    assert error_line(status, stderr).endswith(f"{path} is a dbcnn checkpoint (it says so), not hyperiqa: drop "
                                               "--model or pass --model dbcnn")


def test_training_on_images_smaller_than_the_released_crop_stops_in_one_line_writing_nothing(tmp_path, capsys,
                                                                                            monkeypatch):
    fake_datasets.make_livec(tmp_path / "livec", count=3)  # 240x240: smaller than DBCNN's 448x448 LIVEC crops
    status, _, stderr = run_main(train_test_IQA_sparsity, [
        "--model", "dbcnn", "--dataset", "livec", "--dataset_path", tmp_path / "livec", "--no_pretrained",
        "--checkpoint_dir", tmp_path / "ck", "--device", "cpu"], capsys, monkeypatch)
    line = error_line(status, stderr)
    assert str(tmp_path / "livec" / "Images") in line
    assert line.endswith("image of 240x240 pixels is smaller than the 448x448 crop of DBCNN's protocol")
    assert not (tmp_path / "ck").exists()


def test_an_unknown_model_is_refused_with_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        train_test_IQA_sparsity.parse_args(["--model", "dbcnn2"])
    assert ("argument --model: invalid choice: 'dbcnn2' (choose from 'hyperiqa', 'dbcnn', 'linearityiqa', 'maniqa')"
            in capsys.readouterr().err)
    with pytest.raises(ValueError, match="unknown model family 'dbcnn2'; valid: hyperiqa, dbcnn, linearityiqa, maniqa"):
        models.get_family("dbcnn2")
