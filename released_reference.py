"""The released code's way of doing each job, written out: the references that tests and benchmark.py
hold our code against.

The released training step (three forward passes for NT, PyTorch's default Adam), its data set (each
image listed `patch_num` times and decoded again for every entry, then PIL and torchvision
transforms, in a shuffling DataLoader), and its demos' one-patch-at-a-time scoring, gradient norms
and iterative FGSM. The one-patch loops are written generously: gradients are taken with respect to
the input only (the released demos also computed parameter gradients) and the attack direction
comes from the first step's forward (the released demo ran one more forward of the un-normalized
image for it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

import attacks
import models
from folders import Sample
from nt_regularizer import DEFAULT_NT_H, DEFAULT_NT_WEIGHT, NTLoss, ScoreNetwork, finite_difference_penalty
from train_config import TrainConfig

RELEASED_PATCH_NUM = 25  # the released train/test patch number


def released_three_pass_nt_loss(model: ScoreNetwork, images: torch.Tensor, mos: torch.Tensor,
                                weight: float = DEFAULT_NT_WEIGHT, h: float = DEFAULT_NT_H,
                                criterion=F.l1_loss) -> NTLoss:
    """The released NT formulation, three forward passes per step: one for the loss (`criterion`:
    HyperIQA's L1; F.mse_loss for a family trained with MSE), and a separate clean forward plus a
    shifted forward for the penalty (nt_regularizer.nt_loss needs two)."""
    scores = model(images)
    loss = criterion(scores, mos.to(scores.dtype))
    probe = images.detach().requires_grad_(True)
    penalty = finite_difference_penalty(model, probe, model(probe), h)
    return NTLoss(loss + weight * penalty, loss, penalty, scores)


def released_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                        mos: torch.Tensor, nt: bool, config: TrainConfig) -> float:
    """One released training step on normalized images (B, 3, 224, 224) and mos (B,): L1 loss, or with
    `nt` the three-pass NT loss. Returns the loss value."""
    optimizer.zero_grad()
    if nt:
        loss = released_three_pass_nt_loss(model, images, mos, config.weight, config.h).total
    else:
        loss = F.l1_loss(model(images), mos)
    loss.backward()
    optimizer.step()
    return loss.item()


def released_scores(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Scores (N,) of pixel patches (N, 3, 224, 224) in [0, 1], one patch per forward."""
    with torch.no_grad():
        return torch.cat([model(models.normalize(patch.unsqueeze(0))) for patch in pixels])


def released_gradient_norms(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """l1 norms (N,) of d score / d normalized input, one patch per forward and backward."""
    norms = []
    for patch in pixels:
        normalized = models.normalize(patch.unsqueeze(0)).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(normalized).sum(), normalized)
        norms.append(grad.abs().sum())
    return torch.stack(norms)


def released_iterative_fgsm(model: torch.nn.Module, pixels: torch.Tensor, steps: int,
                            eps: float = attacks.DEFAULT_EPS, alpha: float = attacks.DEFAULT_ALPHA,
                            middle: float = attacks.DEFAULT_SCORE_MIDDLE) -> torch.Tensor:
    """Iterative FGSM (N, 3, 224, 224) -> adversarial patches, one patch at a time, as the released demo."""
    adversarial = []
    for patch in pixels:
        clean = patch.unsqueeze(0)
        image, direction = clean.clone(), None
        for _ in range(steps):
            image.requires_grad_(True)
            score = model(models.normalize(image))
            if direction is None:
                direction = attacks.LOWER if score.item() > middle else attacks.RAISE
            (grad,) = torch.autograd.grad(score.sum() * direction, image)
            with torch.no_grad():
                image = torch.min(torch.max(image + alpha * grad.sign(), clean - eps), clean + eps).clamp_(0.0, 1.0)
        adversarial.append(image.detach())
    return torch.cat(adversarial)


class ReleasedPatchDataset(torch.utils.data.Dataset):
    """The released training data set: each image listed `patch_num` times; every item opens and
    decodes its image again and applies the released LIVEC training transforms (random horizontal
    flip, random 224x224 crop, ToTensor, ImageNet Normalize). `decodes` counts the decodes."""

    def __init__(self, samples: list[Sample], patch_num: int = RELEASED_PATCH_NUM):
        self.items = [(s.path, s.mos) for s in samples for _ in range(patch_num)]
        self.transform = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(models.PATCH_SIZE), T.ToTensor(),
                                    T.Normalize(models.IMAGENET_MEAN, models.IMAGENET_STD)])
        self.decodes = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        path, mos = self.items[index]
        with open(path, "rb") as f:  # the released pil_loader
            img = Image.open(f).convert("RGB")
        self.decodes += 1
        return self.transform(img), mos
