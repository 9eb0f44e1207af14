"""The NT defense's training objective (norm regularization training, Liu et al., CVPR 2024).

NT adds to the L1 loss a penalty on the l1 norm of the gradient of the score with respect to the
(normalized) input image, approximated by a finite difference along sign(gradient):

    penalty = mean_b(((f(x_b + h d_b) - f(x_b)) / h) ** 2) / 2,   d = sign(d f(x) / d x), detached,

because f(x + h sign(g)) - f(x) ~= h <g, sign(g)> = h ||g||_1. The functions here work for any
differentiable `model(x) -> (B,)` scores, not only HyperIQA (the paper also applies NT to DBCNN,
LinearityIQA and MANIQA).

Difference from the released code: the released step runs three forward passes (one for the L1 loss,
two for the penalty); here one clean forward serves both the L1 loss and the penalty. The gradients
are the same (tests compare every parameter's gradient with the released step's, in float64, with
BatchNorm in train and in eval mode); in train mode, BatchNorm's running statistics see two batches
per step instead of three. The released three-pass form is in released_reference.py.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from models import ScoreModel

NT_MODES = ("finite_difference", "exact")
DEFAULT_NT_WEIGHT = 1e-3
DEFAULT_NT_H = 1e-2


class NTLoss(NamedTuple):
    total: torch.Tensor  # L1 + weight * penalty, scalar, differentiable w.r.t. the model parameters
    l1: torch.Tensor  # scalar
    penalty: torch.Tensor  # scalar
    scores: torch.Tensor  # clean predictions (B,), attached to the graph


def _input_gradient(scores: torch.Tensor, images: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d sum(scores) / d images, (B, 3, H, W), as the released code takes it (`grad_outputs=ones`). In
    eval mode each score depends on its own image only; in train mode BatchNorm's batch statistics
    couple the images of a batch, and this is still the released direction."""
    (grad,) = torch.autograd.grad(scores.sum(), images, retain_graph=True, create_graph=create_graph)
    return grad


def finite_difference_penalty(model: ScoreModel, images: torch.Tensor, scores: torch.Tensor,
                              h: float = DEFAULT_NT_H) -> torch.Tensor:
    """The paper's NT penalty from an existing clean forward.

    images: normalized inputs (B, 3, H, W) with requires_grad; scores: model(images), (B,), still
    attached to the graph. Costs one backward to the input and one more forward. Returns a scalar
    through which gradients flow into both f(x + h d) and f(x).
    """
    if h <= 0:
        raise ValueError(f"h must be > 0, got {h}")
    direction = torch.sign(_input_gradient(scores, images, create_graph=False)).detach()
    shifted = model(images.detach() + h * direction)
    return (((shifted - scores) / h) ** 2).mean() / 2


def exact_penalty(images: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """mean_b(||d f(x_b) / d x_b||_1 ** 2) / 2 by double backpropagation (scalar), for comparison."""
    grad = _input_gradient(scores, images, create_graph=True)
    return (grad.abs().flatten(1).sum(dim=1) ** 2).mean() / 2


def nt_loss(model: ScoreModel, images: torch.Tensor, mos: torch.Tensor, weight: float = DEFAULT_NT_WEIGHT,
            h: float = DEFAULT_NT_H, mode: str = "finite_difference") -> NTLoss:
    """L1(f(x), mos) + weight * penalty, from ONE clean forward of `images` (B, 3, H, W), normalized.

    mos: (B,) targets on the score scale. mode: 'finite_difference' (paper, default) or 'exact'.
    """
    if mode not in NT_MODES:
        raise ValueError(f"unknown NT mode {mode!r}; valid: {', '.join(NT_MODES)}")
    images = images.detach().requires_grad_(True)
    scores = model(images)
    l1 = F.l1_loss(scores, mos.to(scores.dtype))
    if mode == "finite_difference":
        penalty = finite_difference_penalty(model, images, scores, h)
    else:
        penalty = exact_penalty(images, scores)
    return NTLoss(l1 + weight * penalty, l1, penalty, scores)
