"""The restricted reader of pickles (safe_pickle.py) and the checkpoints it reads: a pickle that would
run code is refused and nothing runs; a whole pickled DataParallel(MANIQA), written as the PIPAL22
release was (torch.save of the model object, with the release's forward hooks on the ViT blocks),
in the zip and in the legacy format, gives its state_dict and Swin scale, which load strictly."""
import os
import pickle

import pytest
import torch
import torch.nn as nn

import checkpoints
import models
import safe_pickle
from checkpoints import CheckpointError, read_checkpoint
from families import maniqa
from tests.stand_in import tiny_maniqa


class RunsCommand:
    """Pickled, this is a call of os.system: an ordinary torch.load runs the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Evaluates:
    """Pickled, a call of eval on Python source that creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


class CallsFunction:
    """Pickled, a call of a function of an ordinary module (here torch.hub's downloader)."""

    def __reduce__(self):
        return (torch.hub.download_url_to_file, ("http://127.0.0.1:9/x", "/tmp/never_written"))


class SaveOutput:
    """The release's forward hook object (models/maniqa.py), pickled with the model it is hooked on."""

    def __init__(self):
        self.outputs = []

    def __call__(self, module, module_in, module_out):
        self.outputs.append(module_out)


@pytest.mark.parametrize("payload, asked", [(RunsCommand, f"{os.system.__module__}.system"), (Evaluates, "eval"),
                                            (CallsFunction, "torch.hub.download_url_to_file(...), a function")])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, payload, asked):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "payload": payload() if payload is CallsFunction else payload(marker)}, path)
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(path)
    line = str(refused.value)
    assert line.startswith(f"cannot read checkpoint {path}: it contains Python objects other than tensors")
    assert asked in line and line.endswith("refused")
    assert not marker.exists() and not os.path.exists("/tmp/never_written")


def test_split_files_are_read_by_the_same_reader_without_classes():
    assert safe_pickle.load_data(pickle.dumps([3, 1, 2])) == [3, 1, 2]
    with pytest.raises(safe_pickle.PickleRefused, match="torch._utils._rebuild_tensor_v2"):
        safe_pickle.load_data(pickle.dumps(torch.zeros(1)))


def pickled_release(scale: float) -> tuple[nn.Module, nn.DataParallel]:
    """A tiny MANIQA wrapped as the 2022 script wrapped it, with its hooks; (network, wrapper)."""
    network = tiny_maniqa(scale).eval()
    hooks = SaveOutput()
    for block in network.vit.blocks:
        block.register_forward_hook(hooks)
    return network, nn.DataParallel(network)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_whole_pickled_dataparallel_maniqa_gives_its_state_dict_and_scale(tmp_path, legacy):
    network, wrapper = pickled_release(maniqa.PIPAL_SWIN_SCALE)
    path = tmp_path / "ckpt_valid"
    torch.save(wrapper, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(Exception, match="weights_only"):
        torch.load(path, weights_only=True)
    checkpoint = read_checkpoint(path)
    expected = network.state_dict()
    assert list(checkpoint.state) == list(expected)  # `module.` stripped, buffers included, in order
    assert all(torch.equal(checkpoint.state[key], value) for key, value in expected.items())
    assert checkpoint.meta["pickled_model"] == "families.maniqa.MANIQA"
    assert checkpoint.meta["module_attributes"]["swintransformer1.scale"] == maniqa.PIPAL_SWIN_SCALE
    assert maniqa.checkpoint_swin_scale(checkpoint) == maniqa.PIPAL_SWIN_SCALE


def test_the_authors_pickled_model_loads_strictly_as_maniqa_with_its_scale(tmp_path, monkeypatch):
    network, wrapper = pickled_release(maniqa.PIPAL_SWIN_SCALE)
    torch.save(wrapper, tmp_path / "ckpt_valid")
    monkeypatch.setattr(maniqa, "released_network", lambda scale=maniqa.SWIN_SCALE: tiny_maniqa(scale))
    loaded = models.load_model(tmp_path / "ckpt_valid", "maniqa")
    assert loaded.family == "maniqa" and loaded.network.swintransformer1.scale == maniqa.PIPAL_SWIN_SCALE
    pixels = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), network((pixels - 0.5) / 0.5), rtol=1e-6, atol=1e-7)
    # pyiqa's form, {'params': state_dict}, and the authors' bare state_dicts load with weights_only
    torch.save({"params": network.state_dict()}, tmp_path / "pyiqa.pth")
    assert models.load_model(tmp_path / "pyiqa.pth", "maniqa").network.swintransformer1.scale == maniqa.SWIN_SCALE


def test_a_pickled_object_that_is_not_a_model_is_named(tmp_path):
    torch.save(SaveOutput(), tmp_path / "hooks.pth")
    with pytest.raises(CheckpointError, match=r"holds a pickled tests.test_safe_pickle.SaveOutput, neither"):
        checkpoints.read_checkpoint(tmp_path / "hooks.pth")
