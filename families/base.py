"""The model interface: what a quality-model family is, and the quality model every other part uses.

A family (HyperIQA, DBCNN, ...) is data: its network (the released architecture, so the authors'
checkpoints load strictly), the input normalization of its released pipeline, the input sizes its
network accepts, how an image becomes the views it scores for training and for testing, its released
loss, its optimizer stages, its default training settings, and how its checkpoints are read. The
training, the attacks, NT and the scripts read these fields; none of them branches on a family name.

`QualityModel` puts a family's network behind its normalization: pixels in [0, 1] (B, 3, H, W) ->
scores (B,). Its state_dict is the network's, so checkpoints keep the released keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import Checkpoint, load_state_strictly, read_checkpoint
from views import Views

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Per-channel input normalization x = (pixels - mean) / std of pixels in [0, 1].

    float32_constants: the mean and std are the float32 numbers of a float32 pipeline, also when the
    pixels are float64 (HyperIQA's float64 fixtures were made so); otherwise they are constants of the
    pixels' dtype (torchvision's `normalize` in that dtype).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    float32_constants: bool = False

    def constants(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std), each (1, 3, 1, 1) in the dtype and on the device of `like`."""
        dtype = torch.float32 if self.float32_constants else like.dtype
        mean = torch.tensor(self.mean, dtype=dtype).to(like).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=dtype).to(like).view(1, 3, 1, 1)
        return mean, std

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalized images (B, 3, H, W) from pixels (B, 3, H, W) in [0, 1]; differentiable."""
        mean, std = self.constants(pixels)
        return (pixels - mean) / std

    def inverse(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) from normalized images, in [0, 1] up to float rounding."""
        mean, std = self.constants(images)
        return images * std + mean


@dataclass(frozen=True)
class InputSizes:
    """The image sizes a network accepts: at least `minimum` (height, width) pixels, or exactly it."""

    minimum: tuple[int, int]
    exact: bool = False

    def problem(self, height: int, width: int) -> str:
        """Why a `height` x `width` input does not fit ('' when it does)."""
        low_height, low_width = self.minimum
        if self.exact and (height, width) != (low_height, low_width):
            return f"needs exactly {low_width}x{low_height} pixels, got {width}x{height}"
        if height < low_height or width < low_width:
            return f"needs at least {low_width}x{low_height} pixels, got {width}x{height}"
        return ""


class QualityModel(nn.Module):
    """A family's network behind its input normalization: pixels in [0, 1] (B, 3, H, W) -> scores (B,).

    `network` takes the normalized input (the family's own input space, where NT and the gradient
    norms are measured); `inputs(pixels)` gives that input. The state_dict is the network's own.
    """

    def __init__(self, network: nn.Module, normalization: Normalization, family: str = ""):
        super().__init__()
        self.network, self.normalization, self.family = network, normalization, family
        self.training = network.training  # the wrapper's mode is the network's (eval_mode restores it)

    def inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """The network's input (B, 3, H, W) for pixels (B, 3, H, W) in [0, 1]."""
        return self.normalization(pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalization(pixels))

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)


def torchvision_state_dict(weights: Any, weights_path: str | None, what: str) -> Mapping[str, torch.Tensor]:
    """The ImageNet weights of a backbone: the state_dict file `weights_path` when given, else
    torchvision's `weights` (a Weights enum member, e.g. ResNet50_Weights.IMAGENET1K_V1) from the torch
    hub cache, downloaded there if needed. FileNotFoundError with a one-line fix, naming `what` (e.g.
    'ResNet-50') and the file to place where, when they cannot be had (offline)."""
    if weights_path is not None:
        return read_checkpoint(weights_path, map_location="cpu").state
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # offline: URLError, socket errors, hash mismatch of a partial file
        raise FileNotFoundError(
            f"cannot get the ImageNet {what} weights ({type(exc).__name__}): download {weights.url} to {cached}, "
            "or pass --backbone_weights PATH, or train from scratch with --no_pretrained"
        ) from None


# (network, inputs (B, 3, H, W) normalized, mos (B,)) -> (loss, scores (B,) attached to the graph): one forward
ReleasedLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def l1_loss(network: nn.Module, inputs: torch.Tensor, mos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HyperIQA's released loss: mean |f(x) - mos|."""
    scores = network(inputs)
    return F.l1_loss(scores, mos.to(scores.dtype)), scores


def mse_loss(network: nn.Module, inputs: torch.Tensor, mos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The released loss of DBCNN and MANIQA: mean (f(x) - mos)^2."""
    scores = network(inputs)
    return F.mse_loss(scores, mos.to(scores.dtype)), scores


class Stage(NamedTuple):
    """One stage of a family's released training (DBCNN trains its last layer, then everything).

    optimizer(network, config, epoch): the optimizer in use during `epoch` (0-based, within the
    stage), built fresh (at the start, or to restore a saved state); next_epoch(optimizer, network,
    config, epoch): the optimizer for `epoch` from the one of `epoch - 1` (the same object with new
    learning rates, or a new one); prepare(network): run before the stage starts or resumes (freeze
    or unfreeze parameters); per_step(optimizer, step): set the learning rate before step `step`
    (0-based, counted over the stage), for schedules stepped every batch. A stage after the first
    starts from the best checkpoint of the one before when `from_previous_best`.
    """

    name: str
    epochs: int
    optimizer: Callable[[nn.Module, Any, int], torch.optim.Optimizer]
    next_epoch: Callable[[torch.optim.Optimizer, nn.Module, Any, int], torch.optim.Optimizer]
    prepare: Callable[[nn.Module], None] = lambda network: None
    per_step: Callable[[torch.optim.Optimizer, int], None] | None = None
    from_previous_best: bool = True


def same_optimizer(optimizer: torch.optim.Optimizer, network: nn.Module, config: Any,
                   epoch: int) -> torch.optim.Optimizer:
    """`Stage.next_epoch` of a constant schedule: the same optimizer, unchanged."""
    return optimizer


@dataclass(frozen=True)
class FamilyOption:
    """A setting only one family has, offered as `--{name}` by the scripts that build or train it.

    `in_config`: it decides the numbers of a run (kept in TrainConfig.options and the checkpoint);
    otherwise it only says where a file is (passed to the builder, like --backbone_weights).
    """

    name: str
    default: Any
    help: str
    type: Callable[[str], Any] | None = None
    action: str | None = None
    in_config: bool = True


class Calibration(NamedTuple):
    """A map from a network's raw outputs to the score a user sees, fitted on the training set after
    training (LinearityIQA's least-squares k and b), for a family whose loss ignores the scale of its
    predictions.

    raw_outputs(network, inputs): the `width` outputs the map is fitted on, (B, width), for normalized
    inputs (B, 3, H, W), in eval mode; fit(network, raw, mos): fit the map from the training images'
    raw outputs (N, width) (float64, the mean over each image's training views) and MOS (N,) and set
    it on the network, whose forward then returns the mapped score. What it sets must be in the
    family's `checkpoint_extras`, so that the checkpoint carries it.
    """

    raw_outputs: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    width: int
    fit: Callable[[nn.Module, np.ndarray, np.ndarray], None]


class BuildOptions(NamedTuple):
    """How to build a network for training: ImageNet weights for its backbone (from torchvision's cache
    or `backbone_weights`, a file) or from scratch, and the family's own options (FamilyOption)."""

    pretrained: bool = True
    backbone_weights: str | None = None
    options: Mapping[str, Any] = {}


@dataclass(frozen=True)
class Family:
    """A quality-model family: everything that differs between families (see the module docstring).

    name: the registry key (`--model`), also the family part of checkpoint names; display_name: how
    the demos print it; paper: the citation; signature_keys: state_dict keys no other family has,
    to recognise its checkpoints; architecture(): the released network with its default
    initialization, never downloading anything (to load a checkpoint into); build(BuildOptions): a
    network to train; views(dataset, train, count): the views of an image of `dataset` (None: a
    single image file, as the family's demo does) for training or testing, `count` where the
    protocol takes the number of views from --train_patch_num / --test_patch_num; released_loss: the
    loss of one forward (ReleasedLoss); stages(config): the released optimizer stages;
    train_defaults: the TrainConfig fields of the released protocol; released_checkpoints: where the
    authors' files are found; score_range: the (low, high) of its scores when they are not on the
    data set's MOS scale; from_checkpoint(checkpoint, source): the network with a checkpoint's
    weights (default: strictly into `architecture()`); checkpoint_extras(network): what our
    checkpoints store beside the weights (LinearityIQA's k and b); options: its own settings.

    The hooks of a family whose protocol differs more from HyperIQA's (all optional, unused by
    HyperIQA): configure(family, options): the family as its options (TrainConfig.options, the
    FamilyOption values, defaults where absent) make it, e.g. another loss or augmented views
    (`configured`); validation_shares(dataset): the (train, train + validation) shares of the units
    of a split, cut as `splits.split_with_validation` does, when the family selects its checkpoint on
    a validation split (None: on the test split); calibration: the map fitted on the training set
    after training (Calibration); min_batch_per_process: the fewest training views a process may
    see in a step (2 with BatchNorm1d, which fails on one value per channel in train mode): a last
    batch with a share below it is dropped, a full batch below it refused; split_labels(samples): the
    samples of one split (train, validation or test) with the labels the family trains and tests on,
    when it rescales them per split (MANIQA: MOS min-max scaled to [0, 1]); drop_last: its released
    loaders drop the last partial batch, of training and of test (the test images past the last full
    batch are not scored); selection_score(srocc, plcc): the number an epoch's test (validation)
    result is ranked by to keep the best checkpoint (default: SROCC; LinearityIQA: |SROCC|, as its map
    fitted after training turns a negative correlation positive; MANIQA: SROCC + PLCC).
    """

    name: str
    display_name: str
    paper: str
    normalization: Normalization
    input_sizes: InputSizes
    signature_keys: tuple[str, ...]
    architecture: Callable[[], nn.Module]
    build: Callable[[BuildOptions], nn.Module]
    views: Callable[[str | None, bool, int], Views]
    released_loss: ReleasedLoss
    stages: Callable[[Any], Sequence[Stage]]
    train_defaults: Mapping[str, Any]
    released_checkpoints: str = ""
    score_range: tuple[float, float] | None = None
    from_checkpoint: Callable[["Family", Checkpoint, str], nn.Module] | None = None
    checkpoint_extras: Callable[[nn.Module], dict[str, Any]] = lambda network: {}
    options: tuple[FamilyOption, ...] = field(default_factory=tuple)
    configure: Callable[["Family", Mapping[str, Any]], "Family"] | None = None
    validation_shares: Callable[[str], tuple[float, float]] | None = None
    calibration: Calibration | None = None
    min_batch_per_process: int = 1
    split_labels: Callable[[Sequence[Any]], list[Any]] | None = None
    drop_last: bool = False
    selection_score: Callable[[float, float], float] = lambda srocc, plcc: srocc

    def configured(self, options: Mapping[str, Any]) -> "Family":
        """This family as `options` (its FamilyOption values by name; defaults where absent) make it."""
        if self.configure is None:
            return self
        chosen = {option.name: options.get(option.name, option.default) for option in self.options}
        return self.configure(self, chosen)

    def validation_split(self, dataset: str) -> tuple[float, float] | None:
        """The (train, train + validation) shares of `dataset`'s split, or None: selected on the test split."""
        return None if self.validation_shares is None else self.validation_shares(dataset)

    def network_from(self, checkpoint: Checkpoint, source: str) -> nn.Module:
        """The family's network holding `checkpoint`'s weights (strictly), `source` naming the file in errors."""
        if self.from_checkpoint is not None:
            return self.from_checkpoint(self, checkpoint, source)
        return load_state_strictly(self.architecture(), checkpoint.state, source, f"{self.display_name} ({self.name})")

    def check_size(self, height: int, width: int, source: str) -> None:
        """ValueError naming `source` (an image file), the family and the sizes it accepts, when a view of
        `height` x `width` pixels does not fit its network."""
        problem = self.input_sizes.problem(height, width)
        if problem:
            raise ValueError(f"{source}: {self.display_name} (--model {self.name}) {problem}")

    def quality_model(self, network: nn.Module) -> QualityModel:
        """`network` behind this family's normalization."""
        return QualityModel(network, self.normalization, self.name)

    def recognises(self, state: Mapping[str, torch.Tensor]) -> bool:
        """Whether `state` has this family's signature keys."""
        return all(key in state for key in self.signature_keys)
