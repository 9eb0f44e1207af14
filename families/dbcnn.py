"""DBCNN (Zhang, Ma, Yan, Deng, Wang, "Blind Image Quality Assessment Using a Deep Bilinear Convolutional
Neural Network", IEEE TCSVT 2020; code zwx8981/DBCNN-PyTorch, DBCNN.py and SCNN.py) and its released
protocol as a family of the model interface (families/base.py).

Built bottom-up: the two branches (VGG-16's conv layers without the last max-pool, for authentic
distortions; the S-CNN's conv layers, pre-trained by the authors on synthetic distortions), the
network (bilinear pooling of the two maps, `sqrt(x + 1e-8)`, l2 normalization, one linear layer: the
raw output is the score), the weights it starts training from (ImageNet VGG-16, the authors' SCNN
file), and the family: ImageNet normalization, the whole image at test time, random crops (448 on
LIVEC, 432 on LIVE) flipped left-right for training, the MSE loss, and the two released stages (the
linear layer alone with SGD, then every layer with Adam, from the first stage's best checkpoint).

State-dict keys and shapes are exactly those of the released `DBCNN` (91 entries: `features1.*`,
`features2.*`, `fc.*`), so the authors' checkpoints (bare state_dicts of `DataParallel(DBCNN)`, keys
prefixed `module.`) and pyiqa's (the same keys under `'params'`) load strictly. Differences from the
released code: scores have shape (B,) instead of (B, 1), constructing the network never downloads or
reads anything (ImageNet and SCNN weights are loaded by `build`), and the SCNN map is resized with
`F.interpolate(..., align_corners=True)`, which is what the released `F.upsample_bilinear` computes.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import CheckpointError, load_state_strictly, read_checkpoint
from families.base import (IMAGENET_MEAN, IMAGENET_STD, BuildOptions, Family, FamilyOption, InputSizes, Normalization,
                           Stage, mse_loss, same_optimizer, torchvision_state_dict)
from views import Views

# VGG-16's conv layers (torchvision `vgg16().features` without its last max-pool, index 30): output
# channels of each 3x3 conv, "M" a 2x2 max-pool. Conv modules sit at indices 0, 2, 5, ..., 28.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG_CHANNELS = 512
# The S-CNN's conv layers (SCNN.py:75-83): nine blocks conv3x3 (padding 1) -> BatchNorm -> ReLU, as
# (output channels, stride).
SCNN_LAYOUT = ((48, 1), (48, 2), (64, 1), (64, 2), (64, 1), (64, 2), (128, 1), (128, 1), (128, 2))
SCNN_CHANNELS = 128
BRANCH_STRIDE = 16  # both maps are about 1/16 of the input side (VGG floors, the S-CNN's strided convs ceil)
SQRT_EPS = 1e-8  # the released `sqrt(x + 1e-8)`: a plain root, the pooled features being >= 0
# The released training crops (DBCNN.py:129-135); other data sets take the nearest protocol (README):
# KonIQ-10k and BID (authentic distortions, like LIVEC) LIVEC's crop; CSIQ, TID2013, csv and the
# synthetic set the whole image, as the release's own (unreached) CSIQ/TID2013 branch.
RELEASED_CROPS = {"livec": 448, "live": 432}
NEAREST_CROPS = {"koniq-10k": 448, "bid": 448}
# SGD of the first stage (DBCNN.py:119-122)
FC_STAGE_MOMENTUM = 0.9
NORMALIZATION = Normalization(IMAGENET_MEAN, IMAGENET_STD)  # torchvision Normalize, in the pixels' dtype
RELEASED_CHECKPOINTS_HELP = (
    "the DBCNN authors released no trained DBCNN weights; pyiqa's DBCNN checkpoints (DBCNN_LIVEC-*.pth, "
    "DBCNN_KonIQ10k-*.pth, ...) load with --model dbcnn, or train one with "
    "train_test_IQA_sparsity.py --model dbcnn"
)


# ---------------------------------------------------------------------------------------------
# The two branches and the network


def vgg16_features() -> nn.Sequential:
    """VGG-16's conv layers up to conv5_3 + ReLU (no last max-pool): (B, 3, H, W) -> (B, 512, H // 16,
    W // 16), with torchvision's initialization of an untrained VGG."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(channels, item, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        channels = item
    return nn.Sequential(*layers)


def scnn_features() -> nn.Sequential:
    """The S-CNN's conv layers: (B, 3, H, W) -> (B, 128, ceil(H / 16), ceil(W / 16)), with the released
    initialization (SCNN.py weight_init: Kaiming normal convs, bias 0; BatchNorm weight 1, bias 0)."""
    layers: list[nn.Module] = []
    channels = 3
    for out_channels, stride in SCNN_LAYOUT:
        conv = nn.Conv2d(channels, out_channels, kernel_size=3, stride=stride, padding=1)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        channels = out_channels
    return nn.Sequential(*layers)


class DBCNN(nn.Module):
    """The released DBCNN: normalized images (B, 3, H, W), H and W >= 16 -> scores (B,).

    Both branches read the same input. Where their maps differ in size (a side not a multiple of 16:
    VGG floors, the S-CNN ceils, e.g. 23x31 against 24x32 for 500x375), the S-CNN map is resized
    (bilinear, align_corners=True) to the VGG map. Bilinear pooling: the spatial mean of the outer
    products, (B, 512, 128) flattened row-major (VGG channel first) to 65536; then `sqrt(x + 1e-8)`,
    l2 normalization and the linear layer.
    """

    def __init__(self):
        super().__init__()
        self.features1 = vgg16_features()
        self.features2 = scnn_features()
        self.fc = nn.Linear(VGG_CHANNELS * SCNN_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < BRANCH_STRIDE:
            raise ValueError(f"DBCNN needs normalized images of shape (B, 3, H, W) with H, W >= {BRANCH_STRIDE}, "
                             f"got {tuple(x.shape)}")
        vgg = self.features1(x)  # (B, 512, H1, W1)
        scnn = self.features2(x)  # (B, 128, H2, W2)
        height, width = vgg.shape[-2:]
        if scnn.shape[-2:] != vgg.shape[-2:]:
            scnn = F.interpolate(scnn, size=(height, width), mode="bilinear", align_corners=True)
        pooled = torch.bmm(vgg.flatten(2), scnn.flatten(2).transpose(1, 2)) / (height * width)  # (B, 512, 128)
        features = F.normalize(torch.sqrt(pooled.flatten(1) + SQRT_EPS))  # (B, 65536)
        return self.fc(features)[:, 0]


# ---------------------------------------------------------------------------------------------
# The weights training starts from


def load_imagenet_vgg(features: nn.Sequential, weights_path: str | None = None) -> None:
    """Copy ImageNet VGG-16 conv weights into `features` (the VGG branch).

    `weights_path`: a torchvision `vgg16` state_dict file; without it torchvision's
    VGG16_Weights.IMAGENET1K_V1 (the released `vgg16(pretrained=True)`) from the torch hub cache.
    FileNotFoundError with a one-line fix when they cannot be had; ValueError for a file that is not
    a VGG-16 state_dict.
    """
    from torchvision.models import VGG16_Weights

    weights = VGG16_Weights.IMAGENET1K_V1
    state = torchvision_state_dict(weights, weights_path, "VGG-16")
    wanted = {f"features.{key}": key for key in features.state_dict()}
    missing = [key for key in wanted if key not in state]
    if missing:
        raise ValueError(f"{weights_path or weights.url} is not a VGG-16 state_dict: missing {len(missing)} keys, "
                         f"e.g. {missing[:3]}")
    load_state_strictly(features, {own: state[theirs] for theirs, own in wanted.items()}, weights_path or weights.url,
                        "the VGG-16 branch of DBCNN")


def load_scnn_weights(features: nn.Sequential, path: str) -> None:
    """Copy the S-CNN conv and BatchNorm weights of the authors' SCNN file (`pretrained_scnn/scnn.pkl`, or
    pyiqa's copy `DBCNN_scnn-7ea73d75.pth`) into `features` (the S-CNN branch).

    The file is a bare state_dict of `DataParallel(SCNN())` (keys `module.features.*`,
    `module.projection.*`, `module.classifier.*`; a legacy torch pickle), read with weights_only=True;
    only `features.*` is used. It predates BatchNorm's `num_batches_tracked`, which starts at 0 (as
    BatchNorm fills it in for such files). CheckpointError naming the file otherwise.
    """
    state = read_checkpoint(path, map_location="cpu").state
    picked = {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}
    if not picked:
        raise CheckpointError(f"{path} is not an SCNN file: it has no features.* keys (expected the authors' "
                              "pretrained_scnn/scnn.pkl)")
    for key, value in features.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in picked:
            picked[key] = torch.zeros_like(value)
    load_state_strictly(features, picked, path, "the SCNN branch of DBCNN (the authors' scnn.pkl)")


def build(options: BuildOptions = BuildOptions()) -> DBCNN:
    """A DBCNN to train, as the released first stage starts: the VGG branch from ImageNet weights (from
    `options.backbone_weights` if given, else torchvision's cache/download) unless not `options.pretrained`,
    the S-CNN branch from the SCNN file `options.options['scnn_weights']` when given, and the linear
    layer Kaiming normal with bias 0 (DBCNN.py:65-67). A branch without its weights keeps the released
    initialization of an untrained network (VGG: torchvision's; S-CNN: SCNN.py's)."""
    network = DBCNN()
    if options.pretrained or options.backbone_weights:
        load_imagenet_vgg(network.features1, options.backbone_weights)
    scnn_weights = options.options.get("scnn_weights")
    if scnn_weights:
        load_scnn_weights(network.features2, scnn_weights)
    elif options.pretrained:
        warnings.warn("DBCNN: no --scnn_weights given, the SCNN branch starts untrained (the release starts it from "
                      "the authors' pretrained_scnn/scnn.pkl)", stacklevel=2)
    nn.init.kaiming_normal_(network.fc.weight)
    nn.init.zeros_(network.fc.bias)
    return network


# ---------------------------------------------------------------------------------------------
# The protocol


def views(dataset: str | None, train: bool, count: int) -> Views:
    """Test: the whole image, as it is. Training: `count` (released: 1) random crops of the data set's
    crop side, flipped left-right at random (DBCNN.py:129-150); the whole image, flipped, where there
    is no crop (see RELEASED_CROPS and NEAREST_CROPS)."""
    if not train:
        return Views(count=1)
    side = RELEASED_CROPS.get(dataset) or NEAREST_CROPS.get(dataset)
    return Views(count=count, crop=(side, side) if side else None, flip="horizontal")


def freeze_features(network: DBCNN) -> None:
    """The first stage trains the linear layer alone; the branches' BatchNorm statistics still move (train mode)."""
    for branch in (network.features1, network.features2):
        branch.requires_grad_(False)
    network.fc.requires_grad_(True)


def unfreeze(network: DBCNN) -> None:
    network.requires_grad_(True)


def fc_optimizer(network: DBCNN, config, epoch: int) -> torch.optim.SGD:
    """SGD on the linear layer, lr = lr * lr_ratio (released 1e-3), momentum 0.9, weight decay."""
    return torch.optim.SGD(network.fc.parameters(), lr=config.lr * config.lr_ratio, momentum=FC_STAGE_MOMENTUM,
                           weight_decay=config.weight_decay)


def all_layers_optimizer(network: DBCNN, config, epoch: int) -> torch.optim.Adam:
    """Adam on every parameter, one group, lr (released 1e-5), weight decay, default betas."""
    return torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def stages(config) -> tuple[Stage, ...]:
    """The released two stages, `config.epochs` each at a constant learning rate: the linear layer alone
    (SGD), then every layer (Adam) from the first stage's best checkpoint."""
    return (Stage("fc (the linear layer alone, SGD)", config.epochs, fc_optimizer, same_optimizer, freeze_features),
            Stage("all layers (Adam, from the best of stage 1)", config.epochs, all_layers_optimizer, same_optimizer,
                  unfreeze))


FAMILY = Family(
    name="dbcnn",
    display_name="DBCNN",
    paper="Zhang et al., \"Blind Image Quality Assessment Using a Deep Bilinear Convolutional Neural Network\", "
          "IEEE TCSVT 2020",
    normalization=NORMALIZATION,
    input_sizes=InputSizes((BRANCH_STRIDE, BRANCH_STRIDE)),
    signature_keys=("features1.28.weight", "features2.25.running_var", "fc.weight"),
    architecture=DBCNN,
    build=build,
    views=views,
    released_loss=mse_loss,
    stages=stages,
    # DBCNN.py:264-273, 334-341: stage 2 at lr 1e-5, stage 1 at 1e-3 (= lr * lr_ratio), batch 8, 50 epochs a stage
    train_defaults=dict(lr=1e-5, lr_ratio=100.0, weight_decay=5e-4, batch_size=8, epochs=50, train_patch_num=1,
                        test_patch_num=1),
    released_checkpoints=RELEASED_CHECKPOINTS_HELP,
    options=(FamilyOption("scnn_weights", None, "the authors' SCNN file (pretrained_scnn/scnn.pkl of their release, or "
                                                "pyiqa's DBCNN_scnn-7ea73d75.pth) to start the SCNN branch from",
                          type=str, in_config=False),),
)
