"""Patches, transforms, splits and loaders for training and testing HyperIQA; the one home of seeding."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

DEFAULT_SEED = 919  # the released scripts' seed


def seed_everything(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def random_crops(image: torch.Tensor, count: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`count` random `size` x `size` crops of one image (3, H, W) -> (count, 3, size, size).

    Positions are uniform over the valid offsets, drawn from `generator` (seed it for reproducible
    patches). Raises ValueError if the image is smaller than `size` on a side.
    """
    _, height, width = image.shape
    if height < size or width < size:
        raise ValueError(f"image of {width}x{height} pixels is smaller than the {size}x{size} patch")
    tops = torch.randint(0, height - size + 1, (count,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (count,), generator=generator).tolist()
    return torch.stack([image[:, t:t + size, l:l + size] for t, l in zip(tops, lefts)])
