"""HyperIQA (Su et al., "Blindly Assess Image Quality in the Wild Guided by a Self-Adaptive Hyper
Network", CVPR 2020; code SSL92/hyperIQA), the model of the NT paper (Liu et al., CVPR 2024), and its
released protocol as a family of the model interface (families/base.py).

Built bottom-up: the ResNet-50 bottleneck, the backbone with its local distortion aware (LDA)
branches, the hyper network that generates the weights of a small per-image target network, the
target network as a pure function of those weights, `HyperIQA`, the score-returning network, and
the family: 224x224 patches (25 random crops, flipped left-right for training; KonIQ-10k and BID
resized first), ImageNet normalization, the L1 loss, the released Adam schedule (schedule.py).

State-dict keys and shapes are exactly those of the released `HyperNet(16, 112, 224, 112, 56, 28,
14, 7)`, so the authors' checkpoints load with `strict=True`. Differences from the released code:
scores have shape (B,) for every B (the released code returned a 0-d tensor for B = 1), the target
network is batched matrix products instead of a module built per forward, and constructing a model
never downloads anything (ImageNet weights are loaded explicitly by `load_imagenet_backbone`).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn

from families.base import (IMAGENET_MEAN, IMAGENET_STD, BuildOptions, Family, InputSizes, Normalization, Stage,
                           l1_loss, torchvision_state_dict)
from schedule import advance_schedule, build_optimizer
from views import Views

PATCH_SIZE = 224  # HyperIQA's input side in pixels; the LDA pooling sizes depend on it
# Released data-set resizes before cropping: torchvision Resize((512, 384)) and Resize((512, 512)), bilinear.
RESIZE_BEFORE_CROP = {"koniq-10k": (512, 384), "bid": (512, 512)}  # (height, width)

# The released configuration: HyperNet(16, 112, 224, 112, 56, 28, 14, 7).
HYPERIQA_CONFIG = dict(lda_out_channels=16, hyper_in_channels=112, target_in_size=224,
                       target_fc1_size=112, target_fc2_size=56, target_fc3_size=28,
                       target_fc4_size=14, feature_size=7)

RESNET50_LAYERS = (3, 4, 6, 3)
BACKBONE_STRIDE = 32  # input side / side of the last ResNet stage
# The released float32 pipeline's ImageNet normalization, in float32 also for float64 pixels (the
# float64 fixtures were made so).
NORMALIZATION = Normalization(IMAGENET_MEAN, IMAGENET_STD, float32_constants=True)
RELEASED_CHECKPOINTS_HELP = (
    "the authors' HyperIQA+NT and baseline checkpoints are in the Google Drive folder linked from the README of "
    "https://github.com/YangiD/DefenseIQA-NT; download them into checkpoints/ under the names listed in "
    "checkpoints/README.md, or pass the path of a checkpoint explicitly"
)


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
    state = torchvision_state_dict(weights, weights_path, "ResNet-50")
    own = backbone.state_dict()
    resnet_keys = [k for k in own if not k.startswith("lda")]
    missing = [k for k in resnet_keys if k not in state]
    if missing:
        raise ValueError(f"{weights_path or weights.url} is not a ResNet-50 state_dict: "
                         f"missing {len(missing)} keys, e.g. {missing[:3]}")
    backbone.load_state_dict({k: state[k] for k in resnet_keys}, strict=False)


def build(options: BuildOptions = BuildOptions()) -> HyperIQA:
    """A fresh HyperIQA for training: ImageNet ResNet-50 stages (from `options.backbone_weights` if given,
    else torchvision's cache/download) when `options.pretrained`, else the from-scratch initialization."""
    model = HyperIQA()
    if options.pretrained or options.backbone_weights:
        load_imagenet_backbone(model.res, options.backbone_weights)
    else:
        init_backbone_from_scratch(model.res)
    return model


def views(dataset: str | None, train: bool, count: int) -> Views:
    """`count` random 224x224 patches, flipped left-right at random for training; KonIQ-10k and BID
    images resized first, as released."""
    resize = (RESIZE_BEFORE_CROP[dataset],) if dataset in RESIZE_BEFORE_CROP else ()
    return Views(count=count, crop=(PATCH_SIZE, PATCH_SIZE), flip="horizontal" if train else "none", resize=resize)


def stages(config) -> tuple[Stage, ...]:
    """One stage: the released Adam and its schedule (`--schedule`, schedule.py) over `config.epochs`."""
    return (Stage("all", config.epochs, build_optimizer, advance_schedule),)


FAMILY = Family(
    name="hyperiqa",
    display_name="HyperIQA",
    paper="Su et al., \"Blindly Assess Image Quality in the Wild Guided by a Self-Adaptive Hyper Network\", CVPR 2020",
    normalization=NORMALIZATION,
    input_sizes=InputSizes((PATCH_SIZE, PATCH_SIZE), exact=True),
    signature_keys=("fc1w_conv.weight", "res.lda1_fc.weight"),
    architecture=HyperIQA,
    build=build,
    views=views,
    released_loss=l1_loss,
    stages=stages,
    train_defaults=dict(lr=2e-5, lr_ratio=10.0, weight_decay=5e-4, batch_size=16, epochs=16, train_patch_num=25,
                        test_patch_num=25),
    released_checkpoints=RELEASED_CHECKPOINTS_HELP,
)
