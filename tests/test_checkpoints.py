"""Checkpoint forms of the releases, strict loading, naming and atomic saving."""
import os
from collections import OrderedDict

import pytest
import torch

import checkpoints
import models
from tests import recipe


@pytest.fixture(scope="module")
def recipe_model():
    model = models.HyperIQA().eval()
    model.load_state_dict(recipe.recipe_state_dict(model.state_dict(), 40.0))
    return model


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_nt_release_form_round_trips_strictly(tmp_path, recipe_model):
    path = tmp_path / "nt.pth"
    optimizer = torch.optim.Adam([next(recipe_model.parameters())], lr=1e-3)
    torch.save({"model": recipe_model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    loaded = models.load_hyperiqa(path)
    _assert_same_state(loaded, recipe_model)
    assert not loaded.training


def test_hyperiqa_release_form_bare_state_dict_round_trips(tmp_path, recipe_model):
    path = tmp_path / "koniq_pretrained.pkl"
    torch.save(recipe_model.state_dict(), path)
    _assert_same_state(models.load_hyperiqa(path), recipe_model)


def test_dataparallel_prefix_is_stripped(tmp_path, recipe_model):
    path = tmp_path / "dp.pth"
    torch.save(OrderedDict(("module." + k, v) for k, v in recipe_model.state_dict().items()), path)
    _assert_same_state(models.load_hyperiqa(path), recipe_model)


def test_save_checkpoint_writes_the_nt_release_form_atomically(tmp_path, recipe_model):
    path = tmp_path / "sub" / "ckpt.pth"
    checkpoints.save_checkpoint(path, recipe_model, None, epoch=3, best_srocc=0.5)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model", "optimizer", "epoch", "best_srocc"}
    assert payload["epoch"] == 3
    assert os.listdir(path.parent) == ["ckpt.pth"]  # no temporary file left behind
    _assert_same_state(models.load_hyperiqa(path), recipe_model)


def test_save_checkpoint_failure_keeps_the_previous_file(tmp_path, recipe_model, monkeypatch):
    path = tmp_path / "ckpt.pth"
    checkpoints.save_checkpoint(path, recipe_model)
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        checkpoints.save_checkpoint(path, recipe_model)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path, recipe_model):
    state = recipe_model.state_dict()
    state.pop("fc5b_fc.bias")
    state["extra.head.weight"] = torch.zeros(2)
    path = tmp_path / "other.pth"
    torch.save({"model": state}, path)
    with pytest.raises(checkpoints.CheckpointError) as info:
        models.load_hyperiqa(path)
    message = str(info.value)
    assert "1 missing keys: fc5b_fc.bias" in message
    assert "1 unexpected keys: extra.head.weight" in message


def test_shape_mismatch_is_reported(tmp_path, recipe_model):
    state = recipe_model.state_dict()
    state["fc5b_fc.weight"] = torch.zeros(2, 112)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(checkpoints.CheckpointError, match=r"fc5b_fc.weight \(2, 112\) != \(1, 112\)"):
        models.load_hyperiqa(path)


def test_missing_checkpoint_says_where_released_ones_go(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="checkpoint not found.*checkpoints/"):
        models.load_model(tmp_path / "nope.pth")


def test_truncated_checkpoint_is_a_clear_error(tmp_path, recipe_model):
    path = tmp_path / "cut.pth"
    checkpoints.save_checkpoint(path, recipe_model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(checkpoints.CheckpointError, match="cannot read checkpoint"):
        checkpoints.read_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch SHOULD_NOT_EXIST",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _RunsCode()}, path)
    with pytest.raises(checkpoints.CheckpointError, match="refused"):
        checkpoints.read_checkpoint(path)
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()


def test_checkpoint_names_are_the_released_ones():
    assert checkpoints.checkpoint_name("livec", 16, False) == "livec_bs16_grad[0]_weight[0.0].pth"
    assert checkpoints.checkpoint_name("livec", 16, True, 1e-3, 0.01) == "livec_bs16_grad[1]_weight[0.001]_h[0.01].pth"
