"""The deterministic weights and inputs of tests/fixtures/README.md (the released code's numbers on
them are in tests/fixtures/hyperiqa_reference.json, and in float64 in the *float64.json files): HyperIQA's
recipe, and the generic recipe of the other families (`generic_state_dict`, `inputs_sized`)."""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

import models

FIXTURES = Path(__file__).parent / "fixtures"
OFFSETS = {"fc5b_offset_50": 50.0, "fc5b_offset_40": 40.0}


def reference() -> dict:
    return json.loads((FIXTURES / "hyperiqa_reference.json").read_text())


def released_state_dict_layout(family: str = "hyperiqa") -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of every entry of the released state_dict of `family`, in order."""
    rows = (FIXTURES / f"{family}_state_dict.tsv").read_text().strip().splitlines()[1:]
    layout = []
    for row in rows:
        key, shape, dtype = row.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        layout.append((key, dims, dtype))
    return layout


def recipe_state_dict(template: dict[str, torch.Tensor], offset: float) -> dict[str, torch.Tensor]:
    """Recipe weights for every entry of `template` (a state_dict), fc5b_fc.bias offset by `offset`."""
    out = {}
    for key, tensor in template.items():
        z = np.random.RandomState(zlib.crc32(key.encode())).standard_normal(tensor.numel()).reshape(tensor.shape)
        is_bn = key.rsplit(".", 1)[0] + ".running_mean" in template
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            value = np.zeros(tensor.shape)
        elif leaf == "running_var":
            value = 1 + 0.1 * np.abs(z)
        elif leaf == "running_mean":
            value = 0.1 * z
        elif is_bn and leaf == "weight":
            value = 0.5 + 0.05 * z
        elif is_bn and leaf == "bias":
            value = 0.05 * z
        elif key == "fc5b_fc.bias":
            value = offset + z
        elif leaf == "weight":
            fan_in = int(np.prod(tensor.shape[1:]))
            gain = 25.0 if key.startswith("fc") else 1.0
            value = gain * z * np.sqrt(1.0 / fan_in)
        else:
            value = 0.01 * z
        out[key] = torch.from_numpy(np.asarray(value)).to(tensor.dtype)
    return out


def _z(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The recipe's standard normal draws (float64) of the entry `key`, of `shape`."""
    return np.random.RandomState(zlib.crc32(key.encode())).standard_normal(int(np.prod(shape))).reshape(shape)


def generic_state_dict(template: torch.nn.Module | Mapping[str, torch.Tensor],
                       score_bias: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The generic weights recipe of tests/fixtures/README.md (every family but HyperIQA) for `template`.

    template: the model (its parameters and BatchNorm statistics are drawn, its other buffers keep
    their values), or a state_dict (then every floating-point entry counts as a parameter);
    score_bias: offsets added to entries after the recipe, e.g. {'fc.bias': 50.0} for DBCNN.
    Returns a state_dict of the template's keys, in its dtypes.
    """
    if isinstance(template, torch.nn.Module):
        state, parameters = template.state_dict(), {name for name, _ in template.named_parameters()}
    else:
        state = template
        parameters = {key for key, value in state.items() if value.is_floating_point()}
    out = {}
    for key, tensor in state.items():
        leaf = key.rsplit(".", 1)[-1]
        is_bn = key.rsplit(".", 1)[0] + ".running_mean" in state
        shape = tuple(tensor.shape)
        if is_bn and leaf == "num_batches_tracked":
            value = np.zeros(shape)
        elif is_bn and leaf == "running_var":
            value = 1 + 0.1 * np.abs(_z(key, shape))
        elif is_bn and leaf == "running_mean":
            value = 0.1 * _z(key, shape)
        elif key not in parameters:
            out[key] = tensor.clone()  # index tables, masks: the model's own
            continue
        elif is_bn and leaf == "weight":
            value = 0.5 + 0.05 * _z(key, shape)
        elif is_bn and leaf == "bias":
            value = 0.05 * _z(key, shape)
        elif leaf == "weight" and len(shape) >= 2:
            value = _z(key, shape) * np.sqrt(1.0 / int(np.prod(shape[1:])))
        elif leaf == "weight":  # LayerNorm, GroupNorm
            value = 1 + 0.05 * _z(key, shape)
        elif leaf == "bias":
            value = 0.01 * _z(key, shape)
        else:  # position embeddings, class tokens, relative position tables
            value = 0.02 * _z(key, shape)
        value = value + (score_bias or {}).get(key, 0.0)
        out[key] = torch.from_numpy(np.asarray(value)).to(tensor.dtype)
    return out


def inputs_sized(height: int, width: int, count: int = 2, seed: int = 2025) -> torch.Tensor:
    """The recipe images of another size (fixtures README): (count, 3, height, width) float32 in [0, 1],
    a ramp (even i) or a 16-pixel checkerboard (odd i), with noise."""
    rs = np.random.RandomState(seed)
    noise = rs.standard_normal((count, 3, height, width))
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = 0.2 + 0.6 * (xx + yy) / (height + width - 2)
    checker = np.where(((xx // 16) + (yy // 16)) % 2 == 0, 0.1, 0.9)
    images = [(ramp + 0.02 * noise[i]) if i % 2 == 0 else (checker + 0.05 * noise[i]) for i in range(count)]
    return torch.from_numpy(np.stack(images).clip(0, 1).astype(np.float32))


def family_reference(family: str) -> dict:
    """The released code's float64 numbers of a family other than HyperIQA ({family}_reference_float64.json)."""
    return json.loads((FIXTURES / f"{family}_reference_float64.json").read_text())


def recipe_pixels() -> torch.Tensor:
    """The three recipe images in [0, 1], (3, 3, 224, 224) float32, before normalization."""
    rs = np.random.RandomState(2024)
    noise = rs.standard_normal((3, 3, 224, 224))
    yy, xx = np.mgrid[0:224, 0:224]
    ramp = 0.2 + 0.6 * (xx + yy) / 446 + 0.02 * noise[0]
    grey = 0.5 + 0.25 * noise[1]
    checker = np.where(((xx // 16) + (yy // 16)) % 2 == 0, 0.1, 0.9) + 0.05 * noise[2]
    images = np.stack([ramp, grey, checker]).clip(0, 1).astype(np.float32)
    return torch.from_numpy(images)


def reference_float64() -> dict:
    """The released code's numbers in float64 (fixtures README): scores, norms, penalties, FGSM."""
    return json.loads((FIXTURES / "hyperiqa_reference_float64.json").read_text())


def nt_step_float64() -> dict:
    """One released NT training step in float64, BatchNorm in train and in eval mode (fixtures README)."""
    return json.loads((FIXTURES / "nt_step_float64.json").read_text())


def recipe_model_float64(offset: float = 50.0) -> torch.nn.Module:
    """HyperIQA with the recipe weights, cast to float64 after the recipe, as the float64 fixtures were made."""
    model = models.HyperIQA()
    model.load_state_dict(recipe_state_dict(model.state_dict(), offset), strict=True)
    return model.double()
