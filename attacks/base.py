"""What every attack shares: its result, the direction rule, eval mode, chunking, and the scoring of
pixel images: scores, input-gradient norms and 8-bit rounding (the defenses, JPEG re-compression
among them, are in defenses.py).

A model here is a quality model (families.base.QualityModel): pixels in [0, 1] (B, 3, H, W) ->
scores (B,), the family's normalization inside. Functions never modify their input; the model is
put in eval mode and its previous mode restored; gradients are taken with `torch.autograd.grad`, so
no parameter `.grad` accumulates. Large batches are processed in chunks of `chunk_size` images (the
result does not depend on it: in eval mode each image is scored on its own); `chunk_size=None`
picks the chunk by device (`default_chunk_size`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import torch

from families.base import QualityModel

DEFAULT_SCORE_MIDDLE = 50.0  # middle of LIVEC's 0-100 MOS range: the released direction threshold
DEFAULT_EPS = 0.03  # l_inf radius in [0, 1] pixel units (about 8 / 255), the released default
# Images per forward/backward pass, by device (`default_chunk_size`). CPU: on 2 cores of an Intel Xeon,
# chunks of 1, 2, 4, 8, 13 and 25 HyperIQA patches gave 6.4, 7.7, 8.7, 9.7, 9.3 and 8.3 input gradients
# per second; a chunk of 8 needs about 1.1 GB for its backward.
CPU_CHUNK_SIZE = 8
# CUDA: the 25 patches of an image in one pass; the input-gradient pass of 32 HyperIQA patches holds
# about 3 GB of activations, which any recent GPU has.
CUDA_CHUNK_SIZE = 32
LOWER, RAISE = -1.0, 1.0


class AttackResult(NamedTuple):
    adversarial: torch.Tensor  # (B, 3, H, W) in [0, 1], detached, unrounded
    clean_scores: torch.Tensor  # (B,) scores of the clean images that chose each direction


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with `model` (if it is an nn.Module) in eval mode, then restore its mode."""
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        yield
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)


def default_chunk_size(device: torch.device | str) -> int:
    """Images per forward/backward pass on `device`: CUDA_CHUNK_SIZE on CUDA, CPU_CHUNK_SIZE elsewhere."""
    return CUDA_CHUNK_SIZE if torch.device(device).type == "cuda" else CPU_CHUNK_SIZE


def chunks(pixels: torch.Tensor, chunk_size: int | None) -> list[torch.Tensor]:
    """`pixels` (B, ...) cut into consecutive chunks of `chunk_size` images (None: by device)."""
    if chunk_size is None:
        chunk_size = default_chunk_size(pixels.device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return list(pixels.split(chunk_size))


def check_pixels(pixels: torch.Tensor) -> None:
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected pixel images of shape (B, 3, H, W), got {tuple(pixels.shape)}")


def attack_direction(clean_scores: torch.Tensor, middle: float = DEFAULT_SCORE_MIDDLE) -> torch.Tensor:
    """Per-image step direction (B,): -1 (lower the score) where the clean score is above `middle`,
    +1 (raise it) otherwise."""
    return torch.where(clean_scores > middle, LOWER, RAISE).to(clean_scores.dtype)


def keep_better(best: torch.Tensor, best_gain: torch.Tensor, candidate: torch.Tensor,
                gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, `candidate` (B, 3, H, W) where its gain (B,) beats `best_gain`, else `best`: the
    images and their gains."""
    better = gain > best_gain
    return torch.where(better[:, None, None, None], candidate, best), torch.where(better, gain, best_gain)


def score_patches(model: QualityModel, pixels: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Scores (B,) of pixel images (B, 3, H, W) in [0, 1], without gradients."""
    check_pixels(pixels)
    with eval_mode(model), torch.inference_mode():
        scores = torch.cat([model(chunk) for chunk in chunks(pixels, chunk_size)])
    return scores.clone()  # a normal tensor again, usable outside inference mode


def scores_and_gradient_norms(model: QualityModel, pixels: torch.Tensor,
                              chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B,) and the l1 norms (B,) of d score / d input, with the input in the model's own
    input space (after its family's normalization; the quantity the released quality-and-norm demo
    prints), of pixel images (B, 3, H, W) in [0, 1]."""
    check_pixels(pixels)
    scores, norms = [], []
    with eval_mode(model):
        for chunk in chunks(pixels, chunk_size):
            inputs = model.inputs(chunk.detach()).requires_grad_(True)
            chunk_scores = model.network(inputs)
            (grad,) = torch.autograd.grad(chunk_scores.sum(), inputs)  # each score sees only its image
            scores.append(chunk_scores.detach())
            norms.append(grad.abs().flatten(1).sum(dim=1))
    return torch.cat(scores), torch.cat(norms)


def quantize_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """Round pixel images in [0, 1] to the nearest of the 256 levels an 8-bit file stores (same shape)."""
    return torch.round(pixels.clamp(0.0, 1.0) * 255.0) / 255.0

