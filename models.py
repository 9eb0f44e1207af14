"""HyperIQA (Su et al., "Blindly Assess Image Quality in the Wild Guided by a Self-Adaptive Hyper
Network", CVPR 2020), as used by the NT defense (Liu et al., CVPR 2024).

Built bottom-up: the ResNet-50 bottleneck, the backbone with its local distortion aware (LDA)
branches, the hyper network that generates the weights of a small per-image target network, the
target network as a pure function of those weights, and `HyperIQA`, the score-returning model.

State-dict keys and shapes are exactly those of the released `HyperNet(16, 112, 224, 112, 56, 28,
14, 7)`, so the authors' checkpoints load with `strict=True`. Differences from the released code:
scores have shape (B,) for every B (the released code returned a 0-d tensor for B = 1), the target
network is batched matrix products instead of a module built per forward, and constructing a model
never downloads anything (ImageNet weights are loaded explicitly by `load_imagenet_backbone`).

This file is also the one home of the ImageNet normalization, device choice, the score-model type,
checkpoint naming, loading and saving.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from atomic_file import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_SIZE = 224  # HyperIQA's input side in pixels; the LDA pooling sizes depend on it

# The released configuration: HyperNet(16, 112, 224, 112, 56, 28, 14, 7).
HYPERIQA_CONFIG = dict(lda_out_channels=16, hyper_in_channels=112, target_in_size=224,
                       target_fc1_size=112, target_fc2_size=56, target_fc3_size=28,
                       target_fc4_size=14, feature_size=7)

ScoreModel = Callable[[torch.Tensor], torch.Tensor]  # normalized images (B, 3, H, W) -> scores (B,)

RESNET50_LAYERS = (3, 4, 6, 3)
BACKBONE_STRIDE = 32  # input side / side of the last ResNet stage


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalize images in [0, 1]: (B, 3, H, W) -> (B, 3, H, W), differentiable.

    The mean and std are the float32 numbers of the released (float32) pipeline, also when the
    pixels are float64: so a float64 run sees the released inputs, as the float64 fixtures do.
    """
    mean, std = _imagenet_statistics(pixels)
    return (pixels - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalize`: ImageNet-normalized images (B, 3, H, W) -> pixels (B, 3, H, W),
    in [0, 1] up to float rounding (round to the 256 levels to recover 8-bit patches exactly)."""
    mean, std = _imagenet_statistics(images)
    return images * std + mean


def _imagenet_statistics(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std (1, 3, 1, 1), as float32 numbers (see `normalize`) in the dtype and on
    the device of `like`."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).to(like).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).to(like).view(1, 3, 1, 1)
    return mean, std


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


# ---------------------------------------------------------------------------------------------
# Backbone


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck block (1x1 -> 3x3 (stride) -> 1x1, expansion 4), torchvision layout."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """ResNet-50 with four LDA branches.

    forward: normalized images (B, 3, 224, 224) -> dict with
      'hyper_in_feat': last-stage features (B, 2048, 7, 7), input of the hyper network;
      'target_in_vec': concatenated LDA vectors (B, target_in_size), input of the target network.
    """

    def __init__(self, lda_out_channels: int, target_in_size: int, layers=RESNET50_LAYERS):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)

        # LDA branches: a 1x1 conv squeezes channels, a 7x7/7 average pool shrinks the map
        # (56 -> 8, 28 -> 4, 14 -> 2, 7 -> 1 for a 224 input), a linear layer maps to a vector.
        lda_pool = 7
        self.lda1_pool = nn.Sequential(nn.Conv2d(256, 16, kernel_size=1, bias=False), nn.AvgPool2d(lda_pool, stride=lda_pool))
        self.lda1_fc = nn.Linear(16 * 8 * 8, lda_out_channels)
        self.lda2_pool = nn.Sequential(nn.Conv2d(512, 32, kernel_size=1, bias=False), nn.AvgPool2d(lda_pool, stride=lda_pool))
        self.lda2_fc = nn.Linear(32 * 4 * 4, lda_out_channels)
        self.lda3_pool = nn.Sequential(nn.Conv2d(1024, 64, kernel_size=1, bias=False), nn.AvgPool2d(lda_pool, stride=lda_pool))
        self.lda3_fc = nn.Linear(64 * 2 * 2, lda_out_channels)
        self.lda4_pool = nn.AvgPool2d(lda_pool, stride=lda_pool)
        self.lda4_fc = nn.Linear(2048, target_in_size - 3 * lda_out_channels)

        # Released initialization (used when no ImageNet weights are loaded on top).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in (self.lda1_pool[0], self.lda2_pool[0], self.lda3_pool[0],
                  self.lda1_fc, self.lda2_fc, self.lda3_fc, self.lda4_fc):
            nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        lda_1 = self.lda1_fc(self.lda1_pool(x).flatten(1))
        x = self.layer2(x)
        lda_2 = self.lda2_fc(self.lda2_pool(x).flatten(1))
        x = self.layer3(x)
        lda_3 = self.lda3_fc(self.lda3_pool(x).flatten(1))
        x = self.layer4(x)
        lda_4 = self.lda4_fc(self.lda4_pool(x).flatten(1))
        return {"hyper_in_feat": x, "target_in_vec": torch.cat((lda_1, lda_2, lda_3, lda_4), dim=1)}


def init_backbone_from_scratch(backbone: ResNetBackbone) -> None:
    """The released initialization for training without ImageNet weights (`--no_pretrained`).

    Conv and linear weights: Kaiming normal. BatchNorm: weight ~ Normal(1, 0.02), bias 0; the released
    code wrote `uniform_(w, 1.0, 0.02)`, reversed bounds that current PyTorch rejects, for this intent.
    """
    for m in backbone.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# Hyper network and target network


class HyperNet(nn.Module):
    """The released hyper network: `HyperNet(16, 112, 224, 112, 56, 28, 14, 7)(x)` maps normalized
    images (B, 3, 224, 224) to the dict of generated target-network parameters:

      'target_in_vec' (B, 224, 1, 1),
      'target_fc1w' (B, 112, 224, 1, 1), 'target_fc1b' (B, 112),
      'target_fc2w' (B, 56, 112, 1, 1),  'target_fc2b' (B, 56),
      'target_fc3w' (B, 28, 56, 1, 1),   'target_fc3b' (B, 28),
      'target_fc4w' (B, 14, 28, 1, 1),   'target_fc4b' (B, 14),
      'target_fc5w' (B, 1, 14, 1, 1),    'target_fc5b' (B, 1).

    `TargetNet(paras)(paras['target_in_vec'])` then gives the scores (B,).
    """

    def __init__(self, lda_out_channels: int, hyper_in_channels: int, target_in_size: int,
                 target_fc1_size: int, target_fc2_size: int, target_fc3_size: int,
                 target_fc4_size: int, feature_size: int):
        super().__init__()
        self.hyperInChn = hyper_in_channels
        self.target_in_size = target_in_size
        self.f1, self.f2, self.f3, self.f4 = target_fc1_size, target_fc2_size, target_fc3_size, target_fc4_size
        self.feature_size = feature_size  # spatial side of the last ResNet stage (7 for a 224 input)

        self.res = ResNetBackbone(lda_out_channels, target_in_size)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv1 = nn.Sequential(
            nn.Conv2d(2048, 1024, 1), nn.ReLU(inplace=True),
            nn.Conv2d(1024, 512, 1), nn.ReLU(inplace=True),
            nn.Conv2d(512, hyper_in_channels, 1), nn.ReLU(inplace=True),
        )
        # Each target fc layer: its weight matrix from a 3x3 conv over the 7x7 feature map (the
        # map's cells hold the matrix entries), its bias from a linear layer on the pooled features.
        cells = feature_size ** 2
        self.fc1w_conv = nn.Conv2d(hyper_in_channels, target_in_size * self.f1 // cells, 3, padding=1)
        self.fc1b_fc = nn.Linear(hyper_in_channels, self.f1)
        self.fc2w_conv = nn.Conv2d(hyper_in_channels, self.f1 * self.f2 // cells, 3, padding=1)
        self.fc2b_fc = nn.Linear(hyper_in_channels, self.f2)
        self.fc3w_conv = nn.Conv2d(hyper_in_channels, self.f2 * self.f3 // cells, 3, padding=1)
        self.fc3b_fc = nn.Linear(hyper_in_channels, self.f3)
        self.fc4w_conv = nn.Conv2d(hyper_in_channels, self.f3 * self.f4 // cells, 3, padding=1)
        self.fc4b_fc = nn.Linear(hyper_in_channels, self.f4)
        self.fc5w_fc = nn.Linear(hyper_in_channels, self.f4)
        self.fc5b_fc = nn.Linear(hyper_in_channels, 1)
        for m in self.weight_generators():
            nn.init.kaiming_normal_(m.weight)

    def weight_generators(self) -> list[nn.Module]:
        """The layers that generate target-network weights and biases (the `fc*` modules)."""
        return [self.fc1w_conv, self.fc1b_fc, self.fc2w_conv, self.fc2b_fc, self.fc3w_conv,
                self.fc3b_fc, self.fc4w_conv, self.fc4b_fc, self.fc5w_fc, self.fc5b_fc]

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        side = self.feature_size * BACKBONE_STRIDE
        if img.dim() != 4 or img.shape[1] != 3 or img.shape[-2:] != (side, side):
            raise ValueError(f"HyperIQA needs normalized images of shape (B, 3, {side}, {side}) "
                             f"({side}x{side} patches), got {tuple(img.shape)}")
        batch = img.shape[0]
        res_out = self.res(img)
        hyper_in_feat = self.conv1(res_out["hyper_in_feat"])  # (B, 112, 7, 7)
        pooled = self.pool(hyper_in_feat).flatten(1)  # (B, 112)
        # reshape, not view: under channels_last the conv outputs are not NCHW-contiguous; the values
        # are read in NCHW order either way, as released.
        return {
            "target_in_vec": res_out["target_in_vec"].view(batch, self.target_in_size, 1, 1),
            "target_fc1w": self.fc1w_conv(hyper_in_feat).reshape(batch, self.f1, self.target_in_size, 1, 1),
            "target_fc1b": self.fc1b_fc(pooled).view(batch, self.f1),
            "target_fc2w": self.fc2w_conv(hyper_in_feat).reshape(batch, self.f2, self.f1, 1, 1),
            "target_fc2b": self.fc2b_fc(pooled).view(batch, self.f2),
            "target_fc3w": self.fc3w_conv(hyper_in_feat).reshape(batch, self.f3, self.f2, 1, 1),
            "target_fc3b": self.fc3b_fc(pooled).view(batch, self.f3),
            "target_fc4w": self.fc4w_conv(hyper_in_feat).reshape(batch, self.f4, self.f3, 1, 1),
            "target_fc4b": self.fc4b_fc(pooled).view(batch, self.f4),
            "target_fc5w": self.fc5w_fc(pooled).view(batch, 1, self.f4, 1, 1),
            "target_fc5b": self.fc5b_fc(pooled).view(batch, 1),
        }


TARGET_LAYERS = 5


def target_network_scores(paras: Mapping[str, torch.Tensor], target_in_vec: torch.Tensor | None = None) -> torch.Tensor:
    """Run the per-image target network given its generated parameters.

    Four fully connected layers with sigmoids, then a linear output: each image's vector goes through
    its own weights, as batched matrix products. `target_in_vec` (B, 224[, 1, 1]) defaults to
    `paras['target_in_vec']`. Returns scores of shape (B,).
    """
    x = paras["target_in_vec"] if target_in_vec is None else target_in_vec
    x = x.reshape(x.shape[0], -1, 1)  # (B, in, 1)
    for layer in range(1, TARGET_LAYERS + 1):
        weight = paras[f"target_fc{layer}w"].flatten(2)  # (B, out, in)
        bias = paras[f"target_fc{layer}b"].unsqueeze(-1)  # (B, out, 1)
        x = torch.baddbmm(bias, weight, x)
        if layer < TARGET_LAYERS:
            x = torch.sigmoid(x)
    return x.view(x.shape[0])


class TargetNet(nn.Module):
    """The released interface: `TargetNet(paras)(paras['target_in_vec'])` -> scores (B,).

    Holds no parameters of its own; it only closes over the generated ones.
    """

    def __init__(self, paras: Mapping[str, torch.Tensor]):
        super().__init__()
        self.paras = paras

    def forward(self, target_in_vec: torch.Tensor) -> torch.Tensor:
        return target_network_scores(self.paras, target_in_vec)


class HyperIQA(HyperNet):
    """HyperIQA as a score model: normalized images (B, 3, 224, 224) -> quality scores (B,).

    Same modules and state_dict as the released `HyperNet(16, 112, 224, 112, 56, 28, 14, 7)`;
    `hyper_params(x)` gives the generated target-network parameters when they are wanted.
    """

    def __init__(self, **config: int):
        super().__init__(**{**HYPERIQA_CONFIG, **config})

    def hyper_params(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().forward(img)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return target_network_scores(super().forward(img))


def place(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move `model` to `device`; on the CPU, with its 4-d weights in channels_last (NHWC) memory format,
    in which oneDNN's convolutions run faster (benchmark.py measures it; on CUDA in float32 it was no
    faster, so the weights stay NCHW there). Values, state_dict keys and shapes are unchanged; inputs
    may stay NCHW. Returns `model`."""
    device = torch.device(device)
    if device.type == "cpu":
        return model.to(device=device, memory_format=torch.channels_last)
    return model.to(device)


def build_model(pretrained_backbone: bool = False, backbone_weights: str | None = None,
                device: torch.device | str = "cpu") -> HyperIQA:
    """A fresh HyperIQA for training on `device`.

    With `pretrained_backbone`, the ResNet-50 stages get ImageNet weights (from `backbone_weights`
    if given, else torchvision's cache/download); otherwise the backbone is initialized from scratch.
    """
    model = HyperIQA()
    if pretrained_backbone or backbone_weights:
        load_imagenet_backbone(model.res, backbone_weights)
    else:
        init_backbone_from_scratch(model.res)
    return place(model, device)


# ---------------------------------------------------------------------------------------------
# ImageNet weights for the backbone


def load_imagenet_backbone(backbone: ResNetBackbone, weights_path: str | None = None) -> None:
    """Copy ImageNet ResNet-50 weights into the backbone's ResNet stages (LDA layers keep their init).

    `weights_path`: a torchvision `resnet50` state_dict file. Without it, torchvision's
    ResNet50_Weights.IMAGENET1K_V1 (the weights the released code used) come from the torch hub cache,
    downloaded there if needed. Raises FileNotFoundError with a one-line fix when they cannot be had.
    """
    from torchvision.models import ResNet50_Weights

    weights = ResNet50_Weights.IMAGENET1K_V1
    if weights_path is not None:
        state = read_checkpoint_state(weights_path, map_location="cpu")
    else:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:  # offline: URLError, socket errors, hash mismatch of a partial file
            raise FileNotFoundError(
                f"cannot get the ImageNet ResNet-50 weights ({type(exc).__name__}): download {weights.url} "
                f"to {cached}, or pass --backbone_weights PATH, or train from scratch with --no_pretrained"
            ) from None
    own = backbone.state_dict()
    resnet_keys = [k for k in own if not k.startswith("lda")]
    missing = [k for k in resnet_keys if k not in state]
    if missing:
        raise ValueError(f"{weights_path or weights.url} is not a ResNet-50 state_dict: "
                         f"missing {len(missing)} keys, e.g. {missing[:3]}")
    backbone.load_state_dict({k: state[k] for k in resnet_keys}, strict=False)


# ---------------------------------------------------------------------------------------------
# Checkpoints

RELEASED_CHECKPOINTS_HELP = (
    "the authors' HyperIQA+NT and baseline checkpoints are in the Google Drive folder linked from the README of "
    "https://github.com/YangiD/DefenseIQA-NT; download them into checkpoints/ under the names listed in "
    "checkpoints/README.md, or pass the path of a checkpoint explicitly"
)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""


ADVERSARIAL_EPS_DECIMALS = 4  # eps in a checkpoint name: 4/255 -> 0.0157


def checkpoint_name(dataset: str, batch_size: int, if_grad: bool, weight: float = 0.0, h: float = 0.01,
                    adv_train: str = "none", adv_eps: float | None = None, adv_steps: int | None = None) -> str:
    """The checkpoint file name of a training run: the one function that builds these names.

    Released names: baseline `{dataset}_bs{bs}_grad[0]_weight[0.0].pth`, NT
    `{dataset}_bs{bs}_grad[1]_weight[{weight}]_h[{h}].pth` (the name the released demos load).
    Adversarial training adds its attack and eps (pixel units, 4 decimals) before `.pth`:
    `_adv[fgsm-0.0157]`, or with PGD its number of steps, `_adv[pgd10-0.0157]`; e.g. AT with NT:
    `livec_bs16_grad[1]_weight[0.001]_h[0.01]_adv[pgd10-0.0157].pth`.
    """
    name = f"{dataset}_bs{batch_size}_grad[0]_weight[0.0]"
    if if_grad:
        name = f"{dataset}_bs{batch_size}_grad[1]_weight[{float(weight)}]_h[{float(h)}]"
    if adv_train == "none":
        return name + ".pth"
    if adv_train not in ("fgsm", "pgd") or adv_eps is None or (adv_train == "pgd" and adv_steps is None):
        raise ValueError(f"an adversarial-training name needs fgsm and eps, or pgd, eps and steps; got "
                         f"{adv_train!r}, eps {adv_eps}, steps {adv_steps}")
    attack = "fgsm" if adv_train == "fgsm" else f"pgd{adv_steps}"
    return name + f"_adv[{attack}-{adv_eps:.{ADVERSARIAL_EPS_DECIMALS}f}].pth"


def read_checkpoint_state(path: str | os.PathLike, map_location: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The model state_dict stored in `path`, whatever the released form.

    Accepts `{'model': state_dict, ...}` (NT release and our training), a bare state_dict (HyperIQA
    release), and `module.`-prefixed keys (DataParallel). Loads with `weights_only=True`, so a file
    that would run code is refused. Raises CheckpointError with a one-line reason.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} ({RELEASED_CHECKPOINTS_HELP})")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it contains Python objects other than tensors, and loading it could run code; refused"
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict (expected a dict of tensors or {{'model': state_dict}})")
    return OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in obj.items())


def load_checkpoint(model: nn.Module, path: str | os.PathLike, map_location: torch.device | str = "cpu") -> nn.Module:
    """Load a checkpoint (any released form, see `read_checkpoint_state`) into `model`, strictly.

    Raises CheckpointError listing missing/unexpected keys or mismatched shapes. Returns `model`.
    """
    state = read_checkpoint_state(path, map_location)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
                   if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        def listed(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = [f"{len(missing)} missing keys: {listed(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected keys: {listed(unexpected)}" if unexpected else "",
                 f"{len(wrong_shape)} shape mismatches: {listed(wrong_shape)}" if wrong_shape else ""]
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
    return model


def load_hyperiqa(path: str | os.PathLike, device: torch.device | str = "cpu") -> HyperIQA:
    """A HyperIQA in eval mode on `device` (channels_last, see `place`) with the weights of checkpoint `path`."""
    model = HyperIQA()
    load_checkpoint(model, path, map_location=device)
    return place(model, device).eval()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    **extra: Any) -> None:
    """Write `{'model': state_dict, 'optimizer': state_dict or None, **extra}` atomically.

    The file is written next to `path` under a temporary name, flushed, then renamed over `path`, so an
    interruption never leaves a truncated checkpoint. `extra` must hold only tensors, numbers,
    strings, lists, dicts or None (so it reloads with weights_only=True).
    """
    payload = {"model": model.state_dict(), "optimizer": None if optimizer is None else optimizer.state_dict(), **extra}
    with atomic_write(path) as handle:
        torch.save(payload, handle)
