"""The NT defense's training objective (norm regularization training, Liu et al., CVPR 2024).

NT adds to a model's released loss (HyperIQA: L1) a penalty on the l1 norm of the gradient of the
score with respect to the model's input (the image after the family's normalization), approximated
by a finite difference along sign(gradient):

    penalty = mean_b(((f(x_b + h d_b) - f(x_b)) / h) ** 2) / 2,   d = sign(d f(x) / d x), detached,

because f(x + h sign(g)) - f(x) ~= h <g, sign(g)> = h ||g||_1. The functions here work for any
differentiable `model(x) -> (B,)` scores, not only HyperIQA (the paper also applies NT to DBCNN,
LinearityIQA and MANIQA), with any released loss (`families.base.ReleasedLoss`). A model with
Dropout (MANIQA) draws the same masks in both forwards of the finite difference: the shifted
forward replays the random state of the clean one, so the difference measures the input's effect
alone; the random stream of the rest of training is left as the clean forward left it.

Difference from the released code: the released step runs three forward passes (one for the L1 loss,
two for the penalty); here one clean forward serves both the L1 loss and the penalty. The gradients
are the same (tests compare every parameter's gradient with the released step's, in float64, with
BatchNorm in train and in eval mode); in train mode, BatchNorm's running statistics see two batches
per step instead of three. The released three-pass form is in released_reference.py.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from families.base import ReleasedLoss, l1_loss

ScoreNetwork = Callable[[torch.Tensor], torch.Tensor]  # model inputs (B, 3, H, W), normalized -> scores (B,)

NT_MODES = ("finite_difference", "exact")
DEFAULT_NT_WEIGHT = 1e-3
DEFAULT_NT_H = 1e-2


class NTLoss(NamedTuple):
    total: torch.Tensor  # released loss + weight * penalty, scalar, differentiable w.r.t. the model parameters
    released: torch.Tensor  # the family's released loss (HyperIQA: L1), scalar
    penalty: torch.Tensor  # scalar
    scores: torch.Tensor  # clean predictions (B,), attached to the graph


class RandomState(NamedTuple):
    """The global random state of the CPU and of the CUDA devices in use, to replay a forward's draws."""

    cpu: torch.Tensor
    cuda: dict[int, torch.Tensor]

    @classmethod
    def now(cls, device: torch.device) -> "RandomState":
        cuda = {device.index or 0: torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for index, state in self.cuda.items():
            torch.cuda.set_rng_state(state, index)


def _input_gradient(scores: torch.Tensor, images: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """d sum(scores) / d images, (B, 3, H, W), as the released code takes it (`grad_outputs=ones`). In
    eval mode each score depends on its own image only; in train mode BatchNorm's batch statistics
    couple the images of a batch, and this is still the released direction."""
    (grad,) = torch.autograd.grad(scores.sum(), images, retain_graph=True, create_graph=create_graph)
    return grad


def finite_difference_penalty(model: ScoreNetwork, images: torch.Tensor, scores: torch.Tensor,
                              h: float = DEFAULT_NT_H, replay: RandomState | None = None) -> torch.Tensor:
    """The paper's NT penalty from an existing clean forward.

    images: normalized inputs (B, 3, H, W) with requires_grad; scores: model(images), (B,), still
    attached to the graph; replay: the random state taken just before that forward, replayed for the
    shifted forward (the same Dropout masks), None to draw afresh. Costs one backward to the input
    and one more forward. Returns a scalar through which gradients flow into both f(x + h d) and f(x).
    """
    if h <= 0:
        raise ValueError(f"h must be > 0, got {h}")
    direction = torch.sign(_input_gradient(scores, images, create_graph=False)).detach()
    if replay is None:
        shifted = model(images.detach() + h * direction)
    else:
        after = RandomState.now(images.device)
        replay.restore()
        try:
            shifted = model(images.detach() + h * direction)
        finally:
            after.restore()
    return (((shifted - scores) / h) ** 2).mean() / 2


def exact_penalty(images: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """mean_b(||d f(x_b) / d x_b||_1 ** 2) / 2 by double backpropagation (scalar), for comparison."""
    grad = _input_gradient(scores, images, create_graph=True)
    return (grad.abs().flatten(1).sum(dim=1) ** 2).mean() / 2


def nt_loss(model: ScoreNetwork, images: torch.Tensor, mos: torch.Tensor, weight: float = DEFAULT_NT_WEIGHT,
            h: float = DEFAULT_NT_H, mode: str = "finite_difference", released_loss: ReleasedLoss = l1_loss) -> NTLoss:
    """released_loss + weight * penalty, from ONE clean forward of `images` (B, 3, H, W), normalized.

    mos: (B,) targets on the score scale; released_loss: the family's loss of that forward (default
    HyperIQA's L1); mode: 'finite_difference' (paper, default) or 'exact'.
    """
    if mode not in NT_MODES:
        raise ValueError(f"unknown NT mode {mode!r}; valid: {', '.join(NT_MODES)}")
    images = images.detach().requires_grad_(True)
    before = RandomState.now(images.device)
    loss, scores = released_loss(model, images, mos)
    if mode == "finite_difference":
        penalty = finite_difference_penalty(model, images, scores, h, replay=before)
    else:
        penalty = exact_penalty(images, scores)
    return NTLoss(loss + weight * penalty, loss, penalty, scores)
