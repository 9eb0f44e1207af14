"""LinearityIQA (Li, Jiang, Jiang, "Norm-in-Norm Loss with Faster Convergence and Better Performance for
Image Quality Assessment", ACM MM 2020; code lidq92/LinearityIQA, IQAmodel.py, main.py, IQAdataset.py)
and its released protocol as a family of the model interface (families/base.py).

Built bottom-up: the heads (Linear and BatchNorm1d layers, one ReLU), the network (a ResNeXt-101
32x8d backbone whose layer3 and layer4 maps are averaged and fed to a head each; three outputs: a
regressor on each head and one on both), the linear map of the last output to the MOS scale (k, b,
fitted on the training set after training), the ImageNet weights it starts from, and the family:
ImageNet normalization, the whole image resized to 498x664 (CLIVE first to 500x500), the Norm-in-Norm
loss on the three outputs (norm_in_norm.py), Adam with the backbone at a tenth of the heads'
learning rate, divided by 10 every 10 of 30 epochs, model selection on a validation split (KonIQ-10k's
7058 / 1000 / 2015), and `--augment` (a rotation of up to 2 degrees, a left-right flip, a 498x498 crop).

State-dict keys and shapes are exactly those of the released `IQAModel('resnext101_32x8d', 'avg',
False, 1, 1)` (672 entries), so the authors' p1q2.pth and p1q2plus0.1variant.pth
(`{'model': ..., 'k': [...], 'b': [...]}`) load strictly, their k and b kept. Differences from the
released code: the forward returns the user's score k[0] * out[-1] + b[0] as (B,) (the released one
returned the list of three raw (B, 1) outputs; `all_outputs=True` gives them too); constructing the
network never downloads anything; the k/b fit solves the least squares with `numpy.linalg.lstsq`
instead of inverting the normal equations (the same solution, better conditioned); training runs in
float32 instead of apex AMP O1; the seed is the training script's --seed.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import Checkpoint, CheckpointError, load_state_strictly
from families.base import (IMAGENET_MEAN, IMAGENET_STD, BuildOptions, Calibration, Family, FamilyOption, InputSizes,
                           Normalization, Stage, torchvision_state_dict)
from norm_in_norm import MONOTONICITY_GAMMA, RELEASED_ALPHA, monotonicity, norm_in_norm
from views import Views

TAPS = (6, 7)  # children of `features` whose maps the heads read: layer3 (stride 16) and layer4 (stride 32)
TAP_CHANNELS = (1024, 2048)  # channels of those maps in ResNeXt-101
HEAD_WIDTHS = (1024, 256, 64)  # the Linear layers of a head (IQAmodel.py:69-80)
OUTPUTS = 3  # the forward's list: [layer3 regressor, layer4 regressor, regressor on both]; the score is the last
# Loss weights of the outputs in that order (main.py's --beta [.1, .1, 1])
BETA = (0.1, 0.1, 1.0)
# k[i], b[i] of the released checkpoints belong to output MAP_OUTPUTS[i] (IQAperformance.py:30-49)
MAP_OUTPUTS = (2, 0, 1)
RESIZE = (498, 664)  # (height, width) of --resize, the released default of every command
CLIVE_SIDE = 500  # CLIVE images that are not 500x500 are resized to it first (IQAdataset.py:46-49)
AUGMENT_ANGLE = 2.0  # --augment: rotation uniform in [-2, 2] degrees, then a flip (p 0.5), then a crop
AUGMENT_CROP = (498, 498)
# StepLR: the lr is divided by LR_DECAY every int(epochs / (1 + ln(OVERALL_LR_DECAY) / ln(LR_DECAY))) epochs
LR_DECAY, OVERALL_LR_DECAY = 0.1, 0.01
# KonIQ-10k's own split, 7058 / 1000 / 2015 of 10073 images (main.py:266-269); other data sets 60 / 20 / 20
KONIQ_SHARES = (7058 / 10073, 8058 / 10073)
DEFAULT_SHARES = (0.6, 0.8)
MIN_INPUT = 32  # layer4's map is 1x1 at 32x32 pixels
NORMALIZATION = Normalization(IMAGENET_MEAN, IMAGENET_STD)  # torchvision normalize, in the pixels' dtype
RELEASED_CHECKPOINTS_HELP = (
    "the authors' KonIQ-10k checkpoints p1q2.pth and p1q2plus0.1variant.pth are linked from the README of "
    "https://github.com/lidq92/LinearityIQA (Baidu Pan or Google Drive); load them with --model linearityiqa, or "
    "train one with train_test_IQA_sparsity.py --model linearityiqa"
)


# ---------------------------------------------------------------------------------------------
# The network


def head(channels: int, widths: Sequence[int] = HEAD_WIDTHS) -> nn.Sequential:
    """A released head `dr6` / `dr7`: pooled features (B, channels) -> (B, widths[-1]); Linear and
    BatchNorm1d pairs with no activation between them, one ReLU at the end."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(channels, width), nn.BatchNorm1d(width)]
        channels = width
    return nn.Sequential(*layers, nn.ReLU())


def resnext_features(resnext: nn.Module) -> nn.Sequential:
    """torchvision's ResNeXt (or ResNet) without its global pooling and classifier: the released
    `features` (0 conv1, 1 bn1, 2 relu, 3 maxpool, 4-7 layer1-layer4)."""
    return nn.Sequential(*list(resnext.children())[:-2])


def resnext101_features() -> nn.Sequential:
    """An untrained ResNeXt-101 32x8d backbone (torchvision's initialization; nothing downloaded)."""
    from torchvision.models import resnext101_32x8d

    return resnext_features(resnext101_32x8d(weights=None))


class LinearityIQA(nn.Module):
    """The released IQAModel: normalized images (B, 3, H, W), H and W >= 32 -> the score
    k[0] * out[-1] + b[0], (B,).

    `forward(x, all_outputs=True)` returns (scores (B,), raw (B, 3)), raw the released three outputs
    before any map, [layer3 head, layer4 head, both heads], from the same forward (the loss needs all
    three). `k`, `b`: the map of each output, in the released order (index 0 for the last output, 1
    for layer3's, 2 for layer4's), plain floats outside the state_dict (checkpoints carry them beside
    it); 1 and 0 while training. `features`: the backbone, a Sequential whose children TAPS[0] and
    TAPS[1] give maps of `tap_channels` channels (default: ResNeXt-101 32x8d).
    """

    def __init__(self, features: nn.Sequential | None = None, tap_channels: tuple[int, int] = TAP_CHANNELS):
        super().__init__()
        self.features = resnext101_features() if features is None else features
        self.dr6, self.dr7 = head(tap_channels[0]), head(tap_channels[1])
        self.regr6, self.regr7 = nn.Linear(HEAD_WIDTHS[-1], 1), nn.Linear(HEAD_WIDTHS[-1], 1)
        self.regression = nn.Linear(2 * HEAD_WIDTHS[-1], 1)
        self.k, self.b = [1.0] * OUTPUTS, [0.0] * OUTPUTS

    def raw_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The three released outputs (B, 3) of normalized images (B, 3, H, W)."""
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < MIN_INPUT:
            raise ValueError(f"LinearityIQA needs normalized images of shape (B, 3, H, W) with H, W >= {MIN_INPUT}, "
                             f"got {tuple(x.shape)}")
        pooled = {}
        for index, child in enumerate(self.features):
            x = child(x)
            if index in TAPS:  # the released SPSP with P = 1, 'avg': one average pool over the whole map
                pooled[index] = F.avg_pool2d(x, tuple(x.shape[-2:])).flatten(1)
        layer3, layer4 = self.dr6(pooled[TAPS[0]]), self.dr7(pooled[TAPS[1]])
        both = self.regression(torch.cat((layer3, layer4), dim=1))
        return torch.cat((self.regr6(layer3), self.regr7(layer4), both), dim=1)

    def forward(self, x: torch.Tensor, all_outputs: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raw = self.raw_outputs(x)
        scores = raw[:, -1] * self.k[0] + self.b[0]
        return (scores, raw) if all_outputs else scores


def fit_linear_map(network: LinearityIQA, raw: np.ndarray, mos: np.ndarray) -> None:
    """The released k/b fit (IQAperformance.linear_mapping, status 'train'): for each output, the
    least-squares MOS ~ k * output + b over the training images; raw (N, 3) in the forward's order,
    mos (N,). Sets network.k and network.b (the released order, see MAP_OUTPUTS)."""
    for index, column in enumerate(MAP_OUTPUTS):
        design = np.stack((raw[:, column], np.ones(len(mos))), axis=1)
        (k, b), *_ = np.linalg.lstsq(design, mos, rcond=None)
        network.k[index], network.b[index] = float(k), float(b)


def linear_map(network: nn.Module) -> dict[str, list[float]]:
    """What our checkpoints store beside the weights: {'k': [3 floats], 'b': [3 floats]}, as released."""
    return {"k": list(network.k), "b": list(network.b)}


def _map_values(value: Any, name: str, source: str) -> list[float]:
    values = value.tolist() if isinstance(value, torch.Tensor) else value
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise CheckpointError(f"{source}: its {name!r} must be a list of finite numbers (the released [3 floats]), "
                              f"got {value!r}")
    return [float(v) for v in values] + [1.0 if name == "k" else 0.0] * (OUTPUTS - len(values))


def from_checkpoint(family: Family, checkpoint: Checkpoint, source: str) -> LinearityIQA:
    """The network with a checkpoint's weights (strictly) and its k and b (the released checkpoint's,
    or ours); without them the raw last output is the score (k 1, b 0), with a warning."""
    network = load_state_strictly(family.architecture(), checkpoint.state, source,
                                  f"{family.display_name} ({family.name})")
    if "k" not in checkpoint.meta or "b" not in checkpoint.meta:
        warnings.warn(f"{source} holds no k and b (the linear map fitted after training): its scores are the raw "
                      "last output, not on the MOS scale", stacklevel=2)
        return network
    network.k = _map_values(checkpoint.meta["k"], "k", source)
    network.b = _map_values(checkpoint.meta["b"], "b", source)
    return network


def load_imagenet_resnext(resnext: nn.Module, weights_path: str | None = None) -> None:
    """ImageNet weights into torchvision's `resnext101_32x8d` (strictly): `weights_path`, a state_dict
    file, or torchvision's ResNeXt101_32X8D_Weights.IMAGENET1K_V1 (the release's `pretrained=True`)."""
    from torchvision.models import ResNeXt101_32X8D_Weights

    state = torchvision_state_dict(ResNeXt101_32X8D_Weights.IMAGENET1K_V1, weights_path, "ResNeXt-101 32x8d")
    load_state_strictly(resnext, state, weights_path or ResNeXt101_32X8D_Weights.IMAGENET1K_V1.url,
                        "torchvision's resnext101_32x8d")


def build(options: BuildOptions = BuildOptions()) -> LinearityIQA:
    """A LinearityIQA to train: the backbone from ImageNet weights (from `options.backbone_weights` if
    given, else torchvision's cache/download) unless not `options.pretrained` (then torchvision's
    initialization); the heads with PyTorch's default initialization, as released."""
    from torchvision.models import resnext101_32x8d

    resnext = resnext101_32x8d(weights=None)
    if options.pretrained or options.backbone_weights:
        load_imagenet_resnext(resnext, options.backbone_weights)
    return LinearityIQA(resnext_features(resnext))


# ---------------------------------------------------------------------------------------------
# The protocol


def released_loss(network: nn.Module, inputs: torch.Tensor, mos: torch.Tensor,
                  alpha: tuple[float, float] = RELEASED_ALPHA, with_monotonicity: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The released IQALoss from one forward: sum over the three outputs of beta x Norm-in-Norm
    (p = 1, q = 2, `alpha`), each with gamma x the monotonicity term when `with_monotonicity`;
    (loss, scores (B,)), the scores those the forward returns (k 1, b 0 while training)."""
    scores, raw = network(inputs, all_outputs=True)
    mos = mos.to(raw.dtype)

    def term(output: torch.Tensor) -> torch.Tensor:
        loss = norm_in_norm(output, mos, alpha)
        return loss + MONOTONICITY_GAMMA * monotonicity(output, mos) if with_monotonicity else loss

    # the released order of the sum: the last output first (IQAloss.py:20-30)
    loss = BETA[2] * term(raw[:, 2]) + BETA[0] * term(raw[:, 0]) + BETA[1] * term(raw[:, 1])
    return loss, scores


def views(dataset: str | None, train: bool, count: int, augment: bool = False) -> Views:
    """The whole image resized to 498x664 (CLIVE first to 500x500), one view per image; for training
    with `augment`, `count` views, each rotated by up to 2 degrees, flipped left-right at random and
    cropped to 498x498 at random (main.py:237-245, IQAdataset.py:63-74)."""
    resize = ((CLIVE_SIDE, CLIVE_SIDE), RESIZE) if dataset == "livec" else (RESIZE,)
    if train and augment:
        return Views(count=count, crop=AUGMENT_CROP, flip="horizontal", resize=resize, rotation=AUGMENT_ANGLE)
    return Views(count=count if train else 1, resize=resize)


def lr_decay_step(epochs: int) -> int:
    """Epochs between the StepLR decays (main.py:261-264): 10 of 30; every epoch the same below 3."""
    if epochs < 3:
        return epochs
    return int(epochs / (1 + math.log(OVERALL_LR_DECAY) / math.log(LR_DECAY)))


def head_lr(config, epoch: int) -> float:
    """The heads' learning rate in `epoch` (0-based): config.lr divided by 10 every lr_decay_step epochs."""
    return config.lr * LR_DECAY ** (epoch // lr_decay_step(config.epochs))


def parameter_groups(network: LinearityIQA, config, epoch: int) -> list[dict]:
    """The released six Adam groups: regression, dr6, dr7, regr6, regr7 at the heads' rate, the
    backbone at lr_ratio (the released ft_lr_ratio, 0.1) times it (main.py:37-43)."""
    lr = head_lr(config, epoch)
    heads = [{"params": list(module.parameters()), "lr": lr}
             for module in (network.regression, network.dr6, network.dr7, network.regr6, network.regr7)]
    return heads + [{"params": list(network.features.parameters()), "lr": lr * config.lr_ratio}]


def adam(network: LinearityIQA, config, epoch: int) -> torch.optim.Adam:
    return torch.optim.Adam(parameter_groups(network, config, epoch), lr=head_lr(config, epoch),
                            weight_decay=config.weight_decay)


def step_lr(optimizer: torch.optim.Optimizer, network: LinearityIQA, config, epoch: int) -> torch.optim.Optimizer:
    """The same Adam (its moments kept) with the learning rates of `epoch`, as StepLR sets them."""
    for group, fresh in zip(optimizer.param_groups, parameter_groups(network, config, epoch)):
        group["lr"] = fresh["lr"]
    return optimizer


def stages(config) -> tuple[Stage, ...]:
    """One stage of `config.epochs` (released 30) epochs: Adam under StepLR."""
    return (Stage("all", config.epochs, adam, step_lr),)


def validation_shares(dataset: str) -> tuple[float, float]:
    return KONIQ_SHARES if dataset == "koniq-10k" else DEFAULT_SHARES


def configure(family: Family, options: Mapping[str, Any]) -> Family:
    """The family under its options: the Norm-in-Norm alpha and the monotonicity term in the loss,
    --augment in the training views."""
    loss = functools.partial(released_loss, alpha=(RELEASED_ALPHA[0], float(options["nin_alpha"])),
                             with_monotonicity=bool(options["monotonicity"]))
    return dataclasses.replace(family, released_loss=loss,
                               views=functools.partial(views, augment=bool(options["augment"])))


def nonnegative_weight(text: str) -> float:
    """A loss weight >= 0 from the command line."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


FAMILY = Family(
    name="linearityiqa",
    display_name="LinearityIQA",
    paper="Li et al., \"Norm-in-Norm Loss with Faster Convergence and Better Performance for Image Quality "
          "Assessment\", ACM MM 2020",
    normalization=NORMALIZATION,
    input_sizes=InputSizes((MIN_INPUT, MIN_INPUT)),
    signature_keys=("dr6.0.weight", "dr7.5.running_var", "regression.weight"),
    architecture=LinearityIQA,
    build=build,
    views=views,
    released_loss=released_loss,
    stages=stages,
    # main.py:170-184: lr 1e-4 (heads), ft_lr_ratio 0.1 (backbone), no weight decay, batch 8, 30 epochs
    train_defaults=dict(lr=1e-4, lr_ratio=0.1, weight_decay=0.0, batch_size=8, epochs=30, train_patch_num=1,
                        test_patch_num=1),
    released_checkpoints=RELEASED_CHECKPOINTS_HELP,
    from_checkpoint=from_checkpoint,
    checkpoint_extras=linear_map,
    options=(
        FamilyOption("nin_alpha", 0.0, "the second weight of the Norm-in-Norm alpha = [1, NIN_ALPHA], on its "
                     "rho-scaled term; 0.1 is the authors' p1q2plus0.1variant.pth", type=nonnegative_weight),
        FamilyOption("monotonicity", False, f"add the released monotonicity term ({MONOTONICITY_GAMMA:g} x the share "
                     "of wrongly ranked pairs) to the loss of each output", action="store_true"),
        FamilyOption("augment", False, f"augment the training images: a rotation of up to {AUGMENT_ANGLE:g} degrees, "
                     f"a left-right flip, a random {AUGMENT_CROP[1]}x{AUGMENT_CROP[0]} crop", action="store_true"),
    ),
    configure=configure,
    validation_shares=validation_shares,
    calibration=Calibration(lambda network, inputs: network(inputs, all_outputs=True)[1], OUTPUTS, fit_linear_map),
    min_batch_per_process=2,  # BatchNorm1d in train mode fails on a batch of one
    selection_score=lambda srocc, plcc: abs(srocc),  # main.py:106: abs(val SROCC)
)
