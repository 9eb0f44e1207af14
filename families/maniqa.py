"""MANIQA (Yang et al., "MANIQA: Multi-dimension Attention Network for No-Reference Image Quality
Assessment", CVPR Workshops 2022, winner of the NTIRE 2022 NR-IQA challenge; code IIGROUP/MANIQA) and
its released protocol as a family of the model interface (families/base.py).

Built bottom-up: the transposed attention block (TABlock, attention between channels), the weighted
score of the patch tokens, the network (a ViT-B/8 read after its blocks 6-9, two stages of TABlocks,
a 1x1 convolution and a Swin stage (families/maniqa_swin.py), and the two heads), then the family:
inputs normalized to [-1, 1], KonIQ-10k images resized whole to 224x224 (an OpenCV-like bicubic,
views.py), random 224 crops elsewhere, the release's up-down flip, MOS min-max scaled to [0, 1] per
split, MSE, one Adam group with a cosine schedule stepped every batch.

State-dict keys and shapes are those of the released `MANIQA(embed_dim=768, num_outputs=1,
dim_mlp=768, patch_size=8, img_size=224, window_size=4, depths=[2, 2], num_heads=[4, 4], num_tab=2,
scale=0.8)` on timm's `vit_base_patch8_224`, so the authors' and pyiqa's checkpoints load strictly
(the ViT's blocks 10-11, final norm and head included, which do not reach the score). Differences
from the released code, none of which changes a number: the ViT's blocks 6-9 are read with timm's
`forward_intermediates` (stopping after block 9) instead of forward hooks on all twelve blocks that
fill a list kept on the module; the per-image score loop is one batched weighted mean; nothing is
moved to CUDA by the model. timm is imported only when a MANIQA network is built.
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from checkpoints import Checkpoint, load_state_strictly, read_checkpoint
from families.base import (BuildOptions, Family, FamilyOption, InputSizes, Normalization, Stage, mse_loss,
                           same_optimizer)
from families.maniqa_swin import SwinTransformer
from folders import Sample
from views import OPENCV_CUBIC, Views

INPUT_SIDE = 224  # the ViT-B/8's input side in pixels: 28 x 28 patch tokens
RELEASED_VIT = "vit_base_patch8_224"  # timm's architecture name, as released
# The ImageNet weights the release started from (its timm 0.5.5's only B/8 file); today's timm
# defaults to another fine-tuning of the same network ('augreg2'), so the tag is named.
RELEASED_VIT_WEIGHTS = "vit_base_patch8_224.augreg_in21k_ft_in1k"
READ_BLOCKS = (6, 7, 8, 9)  # the ViT blocks whose outputs (0-based) MANIQA concatenates
SWIN_SCALE = 0.8  # the release's residual weight of each Swin layer (KonIQ-10k and KADID-10k)
PIPAL_SWIN_SCALE = 0.13  # the 2022 PIPAL script's (and the PIPAL22 checkpoint's)
DROPOUT = 0.1  # TABlock and head Dropout (`drop`)
NORMALIZATION = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # pixels [0, 1] -> [-1, 1], as released
# The released training configuration (train_maniqa.py Config, HEAD).
MANIQA_CONFIG = dict(embed_dim=768, dim_mlp=768, depths=(2, 2), heads=(4, 4), window=4, num_tab=2)
RELEASED_CHECKPOINTS_HELP = (
    "the authors' MANIQA checkpoints (ckpt_koniq10k.pt, ckpt_kadid10k.pt, the PIPAL22 ckpt_valid) are linked from "
    "the README of https://github.com/IIGROUP/MANIQA, pyiqa's copies from https://github.com/chaofengc/IQA-PyTorch; "
    "pass the path of one explicitly"
)


# ---------------------------------------------------------------------------------------------
# The network


class TABlock(nn.Module):
    """The release's transposed attention block on x (B, C, N), C channels of N tokens: queries, keys
    and values are Linear(N, N) maps of each channel's token vector, the attention is C x C,
    softmax(q k^T / sqrt(N)); y = attn @ v (B, C, N) is then transposed and reshaped back to
    (B, C, N) (which interleaves channels and tokens, exactly as released), Dropout, plus x."""

    def __init__(self, tokens: int, drop: float = DROPOUT):
        super().__init__()
        self.c_q = nn.Linear(tokens, tokens)
        self.c_k = nn.Linear(tokens, tokens)
        self.c_v = nn.Linear(tokens, tokens)
        self.norm_fact = tokens ** -0.5
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, tokens = x.shape
        attn = (self.c_q(x) @ self.c_k(x).transpose(-2, -1) * self.norm_fact).softmax(dim=-1)  # (B, C, C)
        y = (attn @ self.c_v(x)).transpose(1, 2).reshape(batch, channels, tokens)
        return x + self.proj_drop(y)


def weighted_score(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per image, sum_p(f_p w_p) / sum_p(w_p) over the patch tokens: scores and weights (B, P, 1) -> (B,)."""
    return (scores * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2))


def head(dim: int, last: nn.Module) -> nn.Sequential:
    """fc_score / fc_weight: Linear(dim, dim), ReLU, Dropout, Linear(dim, 1), then `last`."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(DROPOUT), nn.Linear(dim, 1), last)


class MANIQA(nn.Module):
    """MANIQA as a score model: images (B, 3, S, S) normalized to [-1, 1] -> quality scores (B,).

    vit: a timm VisionTransformer (released: vit_base_patch8_224, width 768, S = 224, a 28 x 28 grid);
    `embed_dim` must be its width. The outputs of its blocks `read_blocks` (class token dropped) are
    concatenated over channels (B, 4 embed_dim, tokens) -> 2 TABlocks -> conv1 (1x1, to embed_dim) ->
    Swin stage -> 2 TABlocks -> conv2 (1x1, to embed_dim / 2) -> Swin stage -> per token, a score
    (fc_score, >= 0) and a weight (fc_weight, in (0, 1)) -> their weighted mean. `scale`: the
    residual weight of each Swin layer (0.8; the PIPAL22 release 0.13). Dropout (TABlocks, heads,
    Swin inputs) and DropPath act in train mode only; there is no BatchNorm.
    """

    def __init__(self, vit: nn.Module, embed_dim: int = 768, dim_mlp: int = 768, depths: Sequence[int] = (2, 2),
                 heads: Sequence[int] = (4, 4), window: int = 4, num_tab: int = 2, scale: float = SWIN_SCALE,
                 read_blocks: Sequence[int] = READ_BLOCKS):
        super().__init__()
        self.vit = vit
        self.read_blocks = tuple(read_blocks)
        self.side = vit.patch_embed.img_size[0]
        self.grid = tuple(vit.patch_embed.grid_size)  # (28, 28)
        tokens = self.grid[0] * self.grid[1]
        channels = embed_dim * len(self.read_blocks)
        self.tablock1 = nn.ModuleList([TABlock(tokens) for _ in range(num_tab)])
        self.conv1 = nn.Conv2d(channels, embed_dim, 1, 1, 0)
        self.swintransformer1 = SwinTransformer(self.grid, embed_dim, depths, heads, window, dim_mlp, scale)
        self.tablock2 = nn.ModuleList([TABlock(tokens) for _ in range(num_tab)])
        self.conv2 = nn.Conv2d(embed_dim, embed_dim // 2, 1, 1, 0)
        self.swintransformer2 = SwinTransformer(self.grid, embed_dim // 2, depths, heads, window, dim_mlp, scale)
        self.fc_score = head(embed_dim // 2, nn.ReLU())
        self.fc_weight = head(embed_dim // 2, nn.Sigmoid())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ViT's blocks `read_blocks` outputs, class token dropped, side by side: (B, tokens, 4 dim)."""
        read = self.vit.forward_intermediates(x, indices=list(self.read_blocks), stop_early=True, output_fmt="NLC",
                                              intermediates_only=True)
        return torch.cat(read, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.side, self.side):
            raise ValueError(f"MANIQA needs normalized images of shape (B, 3, {self.side}, {self.side}) "
                             f"({self.side}x{self.side} crops), got {tuple(x.shape)}")
        batch = x.shape[0]
        x = self.features(x).transpose(1, 2)  # (B, 4 dim, tokens)
        for tab in self.tablock1:
            x = tab(x)
        x = self.swintransformer1(self.conv1(x.reshape(batch, -1, *self.grid)))  # (B, dim, 28, 28)
        x = x.flatten(2)  # (B, dim, tokens)
        for tab in self.tablock2:
            x = tab(x)
        x = self.swintransformer2(self.conv2(x.reshape(batch, -1, *self.grid)))  # (B, dim / 2, 28, 28)
        tokens = x.flatten(2).transpose(1, 2)  # (B, tokens, dim / 2)
        return weighted_score(self.fc_score(tokens), self.fc_weight(tokens))


# ---------------------------------------------------------------------------------------------
# Building the network: timm's ViT-B/8, with or without its ImageNet weights


def vit_b8(pretrained: bool = False, weights_path: str | None = None) -> nn.Module:
    """timm's vit_base_patch8_224: with timm's default initialization, or with the ImageNet weights the
    release started from (`weights_path`: a file of them; else timm's download and cache). Never
    downloads unless `pretrained` and no `weights_path`. FileNotFoundError with the fixes when the
    weights cannot be had."""
    import timm  # only MANIQA needs timm

    if pretrained and weights_path is None:
        try:
            return timm.create_model(RELEASED_VIT_WEIGHTS, pretrained=True)
        except Exception as exc:  # offline: connection errors of the Hugging Face hub, a partial file
            raise FileNotFoundError(
                f"cannot get timm's ImageNet ViT-B/8 weights {RELEASED_VIT_WEIGHTS} from the Hugging Face hub "
                f"({type(exc).__name__}): let timm download them once (into the hub cache, HF_HOME), or pass "
                "--backbone_weights PATH (that model.safetensors, a timm state_dict, or the release's "
                "B_8-i21k-...npz), or train from scratch with --no_pretrained") from None
    vit = timm.create_model(RELEASED_VIT, pretrained=False)
    if weights_path is not None:
        load_vit_weights(vit, weights_path)
    return vit


def load_vit_weights(vit: nn.Module, path: str) -> None:
    """Load ViT-B/8 ImageNet weights from `path` strictly: Google's .npz (through timm's reader), a
    .safetensors file (timm's hub file) or a torch state_dict (read with weights_only=True)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ViT weights not found: {path}")
    if path.endswith(".npz"):
        vit.load_pretrained(path)
        return
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file  # installed with timm

        state = load_file(path)
    else:
        state = read_checkpoint(path).state
    load_state_strictly(vit, state, path, f"timm's {RELEASED_VIT}")


def released_network(scale: float = SWIN_SCALE, vit: nn.Module | None = None) -> MANIQA:
    """The released MANIQA (MANIQA_CONFIG) on `vit` (default: timm's ViT-B/8, default initialization)."""
    return MANIQA(vit if vit is not None else vit_b8(), scale=scale, **MANIQA_CONFIG)


def build(options: BuildOptions = BuildOptions()) -> MANIQA:
    """A fresh MANIQA for training: the ViT from ImageNet weights (`options.backbone_weights`, else timm's
    cache or download) when `options.pretrained`, else from timm's initialization; everything else
    from PyTorch's default initialization, as released; the Swin scale from `options.options`."""
    vit = vit_b8(options.pretrained or options.backbone_weights is not None, options.backbone_weights)
    return released_network(float(options.options.get("swin_scale", SWIN_SCALE)), vit)


def checkpoint_swin_scale(checkpoint: Checkpoint) -> float:
    """The Swin scale a checkpoint was trained with: our training's config (option swin_scale), or
    the attribute of a whole pickled model (the PIPAL22 release: 0.13); else the default 0.8."""
    config = checkpoint.meta.get("config")
    options = config.get("options", {}) if isinstance(config, dict) else {}
    attributes = checkpoint.meta.get("module_attributes", {})
    for value in (options.get("swin_scale"), attributes.get("swintransformer1.scale")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return SWIN_SCALE


def network_from_checkpoint(family: Family, checkpoint: Checkpoint, source: str) -> MANIQA:
    """The released MANIQA with its checkpoint's Swin scale, holding the checkpoint's weights (strictly)."""
    return load_state_strictly(released_network(checkpoint_swin_scale(checkpoint)), checkpoint.state, source,
                               f"{family.display_name} ({family.name})")


# ---------------------------------------------------------------------------------------------
# The released protocol

KONIQ = "koniq-10k"
KONIQ_SIZE = (INPUT_SIDE, INPUT_SIDE)  # cv2.resize(img, (224, 224), INTER_CUBIC) of the whole image
KONIQ_FLIP_PROBABILITY = 0.7  # prob_aug of the KonIQ-10k config (HEAD)
CROP_FLIP_PROBABILITY = 0.5  # prob_aug of the KADID-10k config, the release's protocol of random crops
COSINE_PERIOD = 50  # CosineAnnealingLR T_max, in batches: the lr reaches 0 after 50 batches, is back after 100
COSINE_FLOOR = 0.0  # eta_min


def views(dataset: str | None, train: bool, count: int) -> Views:
    """The release's views. KonIQ-10k: the whole image resized to 224x224 (OpenCV's bicubic), for
    training flipped up-down with probability 0.7. Other data sets (the KADID-10k protocol): random
    224x224 crops (the last offset never drawn, as numpy's randint(0, h - 224)), for training flipped
    up-down with probability 0.5 (the release's `RandHorizontalFlip` flips the height axis). Test:
    with `count` 1 the release's test score (KonIQ: the resized image; else one random crop per
    epoch); with more, predict_one_image.py's: the mean of `count` random crops of the image at its
    own size (also for KonIQ, and for a single image file, dataset None)."""
    crops = Views(count=count, crop=(INPUT_SIDE, INPUT_SIDE), crop_last_offset=False)
    if dataset == KONIQ and (train or count == 1):
        whole = Views(count=count, resize=(KONIQ_SIZE,), resample=OPENCV_CUBIC)
        return replace(whole, flip="vertical", flip_probability=KONIQ_FLIP_PROBABILITY) if train else whole
    return replace(crops, flip="vertical", flip_probability=CROP_FLIP_PROBABILITY) if train else crops


def min_max_labels(samples: Sequence[Sample]) -> list[Sample]:
    """The samples of one split with their MOS min-max scaled to [0, 1] over that split, as each
    released Dataset scales its own list. ValueError when every label is the same."""
    mos = np.array([sample.mos for sample in samples], dtype=np.float64)
    low, high = float(mos.min()), float(mos.max())
    if not high > low:
        raise ValueError(f"MANIQA scales each split's MOS to [0, 1] by its min and max, but all {len(samples)} "
                         f"images of a split have the label {low}")
    return [sample._replace(mos=(sample.mos - low) / (high - low)) for sample in samples]


def build_adam(network: nn.Module, config, epoch: int) -> torch.optim.Adam:
    """The release's optimizer: Adam over all parameters in one group, lr and weight decay (Adam's L2
    term) of `config`; the base lr is kept in the group as 'initial_lr' for `cosine_step`."""
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["initial_lr"] = config.lr
    return optimizer


def cosine_lr(base_lr: float, step: int) -> float:
    """CosineAnnealingLR(T_max=COSINE_PERIOD, eta_min=COSINE_FLOOR)'s lr after `step` scheduler steps
    (its closed form; it keeps following the cosine past T_max, back up to base_lr at 2 T_max)."""
    return COSINE_FLOOR + (base_lr - COSINE_FLOOR) * (1 + math.cos(math.pi * step / COSINE_PERIOD)) / 2


def cosine_step(optimizer: torch.optim.Optimizer, step: int) -> None:
    """Stage.per_step: the lr of batch `step` (0-based over the run), the release stepping its
    scheduler after every batch and never resetting it."""
    for group in optimizer.param_groups:
        group["lr"] = cosine_lr(group["initial_lr"], step)


def stages(config) -> tuple[Stage, ...]:
    """One stage: Adam over everything, the cosine stepped every batch, `config.epochs` epochs."""
    return (Stage("all", config.epochs, build_adam, same_optimizer, per_step=cosine_step),)


FAMILY = Family(
    name="maniqa",
    display_name="MANIQA",
    paper="Yang et al., \"MANIQA: Multi-dimension Attention Network for No-Reference Image Quality Assessment\", "
          "CVPR Workshops 2022",
    normalization=NORMALIZATION,
    input_sizes=InputSizes((INPUT_SIDE, INPUT_SIDE), exact=True),
    signature_keys=("tablock1.0.c_q.weight", "swintransformer1.downsample.weight"),
    architecture=released_network,
    build=build,
    views=views,
    released_loss=mse_loss,
    stages=stages,
    train_defaults=dict(lr=1e-5, lr_ratio=1.0, weight_decay=1e-5, batch_size=8, epochs=300, train_patch_num=1,
                        test_patch_num=1),
    released_checkpoints=RELEASED_CHECKPOINTS_HELP,
    score_range=(0.0, 1.0),
    from_checkpoint=network_from_checkpoint,
    split_labels=min_max_labels,
    drop_last=True,
    selection_score=lambda srocc, plcc: srocc + plcc,  # train_maniqa.py keeps the epoch of the best SRCC + PLCC
    options=(FamilyOption("swin_scale", SWIN_SCALE, "residual weight of each Swin layer (the release: 0.8; its "
                          f"PIPAL22 model: {PIPAL_SWIN_SCALE}); a checkpoint keeps its own", type=float),),
)
