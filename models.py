"""The entry points of the model interface: the one registry of quality-model families, device choice,
building a family's network for training and loading any checkpoint into its family's model; and
HyperIQA's released API (`HyperNet`, `TargetNet`, `HyperIQA`, `normalize`), which lives in
families/hyperiqa.py.

A family is named by `--model` (FAMILIES); `get_family(name)` gives its `families.base.Family`,
importing its file only then (so MANIQA's timm is imported only when MANIQA is used). The rest of the
code reaches families only through this file.

Which family a checkpoint belongs to: the `--model` given, else the `family` field our training
writes, else the family part of its name (`livec_dbcnn_bs8_...`), else HyperIQA (the released
names). A checkpoint that does not fit is refused in one line naming the file, the family and the
keys that differ, and the family whose keys it has, if another.
"""
from __future__ import annotations

import importlib
import os

import torch
import torch.nn as nn

from checkpoints import DEFAULT_FAMILY, CheckpointError, read_checkpoint, family_in_name
from families.base import IMAGENET_MEAN, IMAGENET_STD, BuildOptions, Family, QualityModel  # noqa: F401
from families.hyperiqa import (HYPERIQA_CONFIG, NORMALIZATION, PATCH_SIZE, HyperIQA, HyperNet, TargetNet,  # noqa: F401
                               load_imagenet_backbone, target_network_scores)

# --model name -> the module holding its FAMILY
FAMILY_MODULES = {
    "hyperiqa": "families.hyperiqa",
    "dbcnn": "families.dbcnn",
    "linearityiqa": "families.linearityiqa",
    "maniqa": "families.maniqa",
}
FAMILIES = tuple(FAMILY_MODULES)

normalize = NORMALIZATION  # HyperIQA's ImageNet normalization: pixels (B, 3, H, W) in [0, 1] -> its input
denormalize = NORMALIZATION.inverse


def get_family(name: str) -> Family:
    """The family registered as `name`; ValueError listing the known names otherwise."""
    if name not in FAMILY_MODULES:
        raise ValueError(f"unknown model family {name!r}; valid: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY


def select_device(name: str | None = None) -> torch.device:
    """The device to run on: `name` ('cpu', 'cuda', 'cuda:1', ...) or, if None/'auto', CUDA when present."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine; use --device cpu")
    return device


def place(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move `model` to `device`; on the CPU, with its 4-d weights in channels_last (NHWC) memory format,
    in which oneDNN's convolutions run faster (benchmark.py measures it; on CUDA in float32 it was no
    faster, so the weights stay NCHW there). Values, state_dict keys and shapes are unchanged; inputs
    may stay NCHW. Returns `model`."""
    device = torch.device(device)
    if device.type == "cpu":
        return model.to(device=device, memory_format=torch.channels_last)
    return model.to(device)


def build_network(family: str = DEFAULT_FAMILY, options: BuildOptions = BuildOptions(),
                  device: torch.device | str = "cpu") -> nn.Module:
    """A fresh network of `family` for training, placed on `device` (see `place`): its backbone from
    ImageNet weights or from scratch, as `options` say."""
    return place(get_family(family).build(options), device)


def build_model(pretrained_backbone: bool = False, backbone_weights: str | None = None,
                device: torch.device | str = "cpu") -> HyperIQA:
    """A fresh HyperIQA network for training on `device` (see `build_network`)."""
    return build_network(DEFAULT_FAMILY, BuildOptions(pretrained_backbone, backbone_weights), device)


def checkpoint_family(path: str | os.PathLike, said: str | None, requested: str | None = None) -> Family:
    """The family of the checkpoint `path` whose `family` field is `said` (None for the authors' files):
    `requested` (--model) when given, else `said`, else its name's, else HyperIQA. CheckpointError
    when `requested` and `said` disagree."""
    if requested is not None:
        family = get_family(requested)
        if said is not None and said != requested:
            raise CheckpointError(f"{path} is a {said} checkpoint (it says so), not {requested}: "
                                  f"drop --model or pass --model {said}")
        return family
    if said is not None:
        return get_family(said)
    return get_family(family_in_name(path, FAMILIES) or DEFAULT_FAMILY)


def load_model(path: str | os.PathLike, family: str | None = None,
               device: torch.device | str = "cpu") -> QualityModel:
    """The quality model (pixels -> scores) of checkpoint `path`, in eval mode on `device`: the
    network of its family (see `checkpoint_family`; `family` is --model) with the checkpoint's
    weights loaded strictly, behind the family's normalization. Loading never runs code from the
    file. CheckpointError with a one-line reason otherwise (see the module docstring)."""
    checkpoint = read_checkpoint(path, map_location="cpu", missing_help=get_family(family or DEFAULT_FAMILY).released_checkpoints)
    said = checkpoint.meta.get("family")
    chosen = checkpoint_family(path, said if isinstance(said, str) else None, family)
    try:
        network = chosen.network_from(checkpoint, str(path))
    except CheckpointError as exc:
        fits = [name for name in FAMILIES if name != chosen.name and get_family(name).recognises(checkpoint.state)]
        if fits:
            raise CheckpointError(f"{exc}; it has the keys of a {fits[0]} checkpoint: pass --model {fits[0]}") from None
        raise
    return chosen.quality_model(place(network, device)).eval()


def load_hyperiqa(path: str | os.PathLike, device: torch.device | str = "cpu") -> QualityModel:
    """The HyperIQA quality model of checkpoint `path` (any released form), in eval mode on `device`."""
    return load_model(path, DEFAULT_FAMILY, device)
