"""A tiny differentiable score model for tests where HyperIQA's cost buys nothing."""
import torch
from torch import nn


class StandInScoreModel(nn.Module):
    """Normalized images (B, 3, H, W) -> scores (B,) around 50, `spread` wide; its BatchNorm makes
    train and eval mode differ. Weights are seeded, so every instance is the same function."""

    def __init__(self, spread: float = 20.0):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Tanh())
        self.head = nn.Linear(8, 1)
        self.spread = spread

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 50 + self.spread * self.head(self.features(x).mean(dim=(2, 3))).view(x.shape[0])
