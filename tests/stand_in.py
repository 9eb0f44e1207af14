"""The one tiny differentiable score model of the tests, for where HyperIQA's cost buys nothing."""
import torch
from torch import nn

import models
from families.base import QualityModel


class StandInScoreModel(nn.Module):
    """Normalized images (B, 3, H, W) -> scores (B,) around 50, `spread` wide.

    `res` is its backbone, as in HyperIQA (the solver trains it as the second parameter group), and
    holds a BatchNorm, so train and eval mode differ. Weights are seeded: every instance is the same
    function. Once `poison` is set, every train-mode forward after the first `poison_after`
    multiplies the scores by it (to make a training loss diverge).
    """

    def __init__(self, spread: float = 20.0, poison: float | None = None, poison_after: int = 0):
        super().__init__()
        torch.manual_seed(0)
        self.res = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Tanh())
        self.head = nn.Linear(8, 1)
        self.spread, self.poison, self.poison_after, self.training_forwards = spread, poison, poison_after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = 50 + self.spread * self.head(self.res(x).mean(dim=(2, 3))).view(x.shape[0])
        if self.training:
            self.training_forwards += 1
            if self.poison is not None and self.training_forwards > self.poison_after:
                scores = scores * self.poison
        return scores


def stand_in_quality_model(**settings) -> QualityModel:
    """The stand-in behind HyperIQA's normalization, as a quality model (pixels -> scores) of the
    HyperIQA family: what the attacks and the evaluation take."""
    return models.get_family("hyperiqa").quality_model(StandInScoreModel(**settings))


def linearityiqa_stand_in() -> nn.Module:
    """A LinearityIQA of the released structure with a tiny backbone: the released heads (dr6, dr7 with
    BatchNorm1d, regr6, regr7, regression: the keys and shapes of the release) on a backbone of eight
    children whose 7th and 8th give maps of 1024 and 2048 channels, as ResNeXt-101's layer3 and
    layer4 do (at strides 64 and 128), for a few thousandths of the cost. Seeded: every instance is
    the same function."""
    from families.linearityiqa import LinearityIQA

    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 8, 8, stride=8), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.Conv2d(16, 1024, 1, stride=2), nn.Sequential(nn.Conv2d(1024, 16, 1, stride=2), nn.Conv2d(16, 2048, 1)))
    return LinearityIQA(features)
TINY_VIT = dict(img_size=224, patch_size=28, embed_dim=16, depth=12, num_heads=2)  # an 8 x 8 grid of tokens


def tiny_maniqa(scale: float = 0.8) -> nn.Module:
    """A MANIQA of the released structure and state_dict key names (12 ViT blocks read at 6-9, two
    TABlocks and two Swin layers of two blocks per stage, the shifted windows with their mask) at a
    tiny width: timm's ViT with 28-pixel patches of 224x224 inputs, width 16. Seeded."""
    import timm

    from families.maniqa import MANIQA

    torch.manual_seed(0)
    return MANIQA(timm.create_model("vit_base_patch8_224", pretrained=False, **TINY_VIT), embed_dim=16, dim_mlp=16,
                  scale=scale)
