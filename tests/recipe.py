"""The deterministic weights and inputs of tests/fixtures/README.md (the released code's numbers on
them are in tests/fixtures/hyperiqa_reference.json, and in float64 in the *float64.json files)."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

import models

FIXTURES = Path(__file__).parent / "fixtures"
OFFSETS = {"fc5b_offset_50": 50.0, "fc5b_offset_40": 40.0}


def reference() -> dict:
    return json.loads((FIXTURES / "hyperiqa_reference.json").read_text())


def released_state_dict_layout() -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of every entry of the released state_dict, in order."""
    rows = (FIXTURES / "hyperiqa_state_dict.tsv").read_text().strip().splitlines()[1:]
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


# ---------------------------------------------------------------------------------------------
# The generic recipe of the other families (tests/fixtures/README.md, "Generic weights recipe")


def _recipe_z(key: str, tensor: torch.Tensor) -> np.ndarray:
    return np.random.RandomState(zlib.crc32(key.encode())).standard_normal(tensor.numel()).reshape(tensor.shape)


def generic_state_dict(template: torch.nn.Module,
                       score_bias: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The generic recipe's weights for every entry of `template`'s state_dict: parameters and
    BatchNorm statistics drawn from the key's seeded normal numbers, every other buffer (index
    tables, attention masks) kept; `score_bias` maps keys to an offset added after the recipe
    (DBCNN: {'fc.bias': 50}). Cast to each entry's dtype."""
    state = template.state_dict()
    parameters = {name for name, _ in template.named_parameters()}
    out = {}
    for key, tensor in state.items():
        leaf = key.rsplit(".", 1)[-1]
        is_bn = key.rsplit(".", 1)[0] + ".running_mean" in state
        if key not in parameters and not is_bn:
            out[key] = tensor.clone()
            continue
        z = _recipe_z(key, tensor)
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
        elif leaf == "weight" and tensor.dim() >= 2:
            value = z * np.sqrt(1.0 / int(np.prod(tensor.shape[1:])))
        elif leaf == "weight":
            value = 1 + 0.05 * z
        elif leaf == "bias":
            value = 0.01 * z
        else:
            value = 0.02 * z
        value = value + (score_bias or {}).get(key, 0.0)
        out[key] = torch.from_numpy(np.asarray(value)).to(tensor.dtype)
    return out


def inputs_sized(height: int, width: int, count: int = 2, seed: int = 2025) -> torch.Tensor:
    """The recipe's images of another size (count, 3, height, width) in [0, 1], float32: even ones a
    ramp, odd ones a 16-pixel checkerboard, each with seeded noise."""
    rs = np.random.RandomState(seed)
    noise = rs.standard_normal((count, 3, height, width))
    yy, xx = np.mgrid[0:height, 0:width]
    images = []
    for i in range(count):
        if i % 2 == 0:
            images.append(0.2 + 0.6 * (xx + yy) / (height + width - 2) + 0.02 * noise[i])
        else:
            images.append(np.where(((xx // 16) + (yy // 16)) % 2 == 0, 0.1, 0.9) + 0.05 * noise[i])
    return torch.from_numpy(np.stack(images).clip(0, 1).astype(np.float32))
