"""Whole-image attacks: an image scored by its family's test protocol, as one differentiable model.

A family scores an image through the views of its test protocol (views.py): HyperIQA the mean of 25
random 224x224 patches, DBCNN the whole image. `protocol_model` turns a quality model and the crop
boxes of an image's views into a quality model of the WHOLE image (pixels (B, 3, H, W) in [0, 1] ->
scores (B,)): it cuts the views, scores them and averages, the gradient flowing back through every
view into the image. An attack on it perturbs the image itself, as the MSU benchmark and real
attackers do (`--attack_on image`), and the attacked image is scored by the same views (the same
seeded boxes) as the clean one. The image is the decoded file after the protocol's resizes (HyperIQA
on KonIQ-10k: 512x384), what the views are cut from; pixels outside every view get no gradient.

The views of an image go through the network in chunks of `chunk_size`; with more than one chunk,
each chunk's activations are recomputed in the backward pass (torch.utils.checkpoint) instead of
kept, so a whole-image attack holds the memory of one chunk, at the cost of a second forward.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from attacks.base import chunks
from families.base import QualityModel
from views import CropBox, Views, cut_view


class ProtocolNetwork(nn.Module):
    """A network of views behind the mean over an image's views: normalized images (B, 3, H, W) ->
    scores (B,), each image cut into the views `boxes` of the protocol `views` (the same boxes for
    every image of the batch: images of one size)."""

    def __init__(self, network: nn.Module, views: Views, boxes: Sequence[CropBox], chunk_size: int | None = None):
        super().__init__()
        if not boxes:
            raise ValueError("a protocol needs at least one view")
        self.network, self.views, self.boxes, self.chunk_size = network, views, list(boxes), chunk_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scores = []
        for image in images:
            stacked = torch.stack([cut_view(image, box, self.views) for box in self.boxes])  # (views, 3, h, w)
            parts = chunks(stacked, self.chunk_size)
            if len(parts) > 1 and torch.is_grad_enabled():
                parts = [checkpoint(self.network, part, use_reentrant=False) for part in parts]
            else:
                parts = [self.network(part) for part in parts]
            scores.append(torch.cat(parts).mean())
        return torch.stack(scores)


def protocol_model(model: QualityModel, views: Views, boxes: Sequence[CropBox],
                   chunk_size: int | None = None) -> QualityModel:
    """`model` scoring whole images (B, 3, H, W) by the mean over the views `boxes` of the protocol
    `views` (see the module docstring); same normalization and family, so gradient norms and NT's
    input space are those of the image."""
    return QualityModel(ProtocolNetwork(model.network, views, boxes, chunk_size), model.normalization, model.family)
