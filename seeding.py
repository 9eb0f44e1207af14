"""The one home of seeding: the run's seed, the global RNGs, and independent random streams.

Every random draw of the data pipeline and of the attacks comes from its own stream, a generator
seeded by `derived_seed(seed, stream, *keys)`: the same seed gives the same split, patches, batch
order and attack starts whatever the number of loader workers or processes, the order of calls, or
where a run was resumed. Each stream has its own key (`STREAMS`), and the number of keys is part of
the seed material, so no two different key tuples share a stream.
"""
from __future__ import annotations

import random

import numpy as np
import torch

DEFAULT_SEED = 919  # the released scripts' seed

# Stream keys: the first key of every derived seed; each names one kind of draw.
SPLIT = 0  # train/test split of a round: (SPLIT, round)
TRAIN_ORDER = 1  # order of the training images in an epoch (window membership): (TRAIN_ORDER, round, epoch)
TRAIN_PATCHES = 2  # crop positions and flips of a training image: (TRAIN_PATCHES, round, epoch, image)
TRAIN_SHUFFLE = 3  # permutation of the (image, patch) entries of a window: (TRAIN_SHUFFLE, round, epoch, window)
TEST_PATCHES = 4  # crop positions of a test image: (TEST_PATCHES, round, epoch, image)
ATTACK_START = 5  # random starts and draws of an attack on an image: (ATTACK_START, image)
ADVERSARIAL_TRAINING = 6  # random starts of the attacks made during training: (ADVERSARIAL_TRAINING, round, epoch, step)
UAP_TRAINING = 7  # batches and crop boxes of a universal perturbation's training: (UAP_TRAINING,)
DEFENSE_DRAWS = 8  # draws of a random input defense on an image: (DEFENSE_DRAWS, image, use), see DEFENDED_IMAGES
SMOOTHING_NOISE = 9  # the Gaussian noise of median smoothing on an image: (SMOOTHING_NOISE, image)
STREAMS = {"split": SPLIT, "train_order": TRAIN_ORDER, "train_patches": TRAIN_PATCHES, "train_shuffle": TRAIN_SHUFFLE,
           "test_patches": TEST_PATCHES, "attack_start": ATTACK_START, "adversarial_training": ADVERSARIAL_TRAINING,
           "uap_training": UAP_TRAINING, "defense_draws": DEFENSE_DRAWS, "smoothing_noise": SMOOTHING_NOISE}
# The `use` key of DEFENSE_DRAWS: the images that are scored (the clean image and every attacked version
# of it meet the same draws, as in the defense benchmark) or the forwards of an adaptive attack.
DEFENDED_IMAGES, ADAPTIVE_ATTACK = 0, 1


def seed_everything(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global RNGs (model initialization uses them)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one random stream, from the run's seed and non-negative integer keys
    (a stream key of STREAMS first, then round, epoch, image, ...).

    The count of keys is mixed in, so that `derived_seed(s, 0)` and `derived_seed(s, 0, 0)` differ
    (NumPy's SeedSequence alone pads short entropy with zeros).
    """
    if any(key < 0 for key in keys) or seed < 0:
        raise ValueError(f"seeds and stream keys must be >= 0, got {seed}, {keys}")
    state = np.random.SeedSequence([seed, len(keys), *keys]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded with `derived_seed(seed, *keys)`."""
    return torch.Generator().manual_seed(derived_seed(seed, *keys))
