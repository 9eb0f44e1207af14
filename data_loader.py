"""Patches, transforms, splits and loaders for training and testing HyperIQA; the one home of seeding.

Transforms, as released: training patches are random 224x224 crops, each flipped horizontally with
probability 1/2; test patches are random crops without flips; KonIQ-10k images are first resized to
height 512 x width 384 and BID images to 512 x 512 (torchvision's `Resize((512, 384))` and
`Resize((512, 512))` in the released code, bilinear).

How batches are made, compared with the released loader: the released data set listed every image
`patch_num` times (25), decoded the image again for each entry and let a shuffling DataLoader draw
batches from all N x 25 entries, so a batch mixed patches of up to `batch_size` images from anywhere in
the set. Here each image is decoded once per epoch and all its patches are cut from that one decode
(`ImagePatches`). For training, the images are visited in a seeded random order, in groups of
`SHUFFLE_BUFFER_IMAGES` (32) consecutive images whose patches are pooled and shuffled; batches are
consecutive `batch_size` slices of that stream. A batch thus still mixes patches of different images,
drawn from a window of 32 images instead of the whole set; the patches themselves (positions and
flips) follow the same distribution, and an epoch has the same number of batches (the last one may
be smaller, as released). Test batches hold the patches of consecutive images in order and carry each
patch's image index, so the solver averages the predictions of each image.

Every random draw comes from its own stream derived from (seed, round, epoch, image): the same seed
gives the same split and the same patches whatever the number of loader workers, and a run resumed in
the middle of an epoch sees exactly the batches it would have seen.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import random
import signal
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

import folders
from folders import ImageError, Sample, load_image
from models import PATCH_SIZE, normalize

DEFAULT_SEED = 919  # the released scripts' seed


def seed_everything(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def image_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> uint8 tensor (3, H, W), values 0-255."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    return image_to_uint8_tensor(img).float().div_(255.0)


def random_crops(image: torch.Tensor, count: int, size: int, generator: torch.Generator | None = None,
                 flip: bool = False) -> torch.Tensor:
    """`count` random `size` x `size` crops of one image (3, H, W) -> (count, 3, size, size).

    Positions are uniform over the valid offsets, drawn from `generator` (seed it for reproducible
    patches); with `flip`, each crop is then mirrored left-right with probability 1/2 (drawn after all
    positions). Raises ValueError if the image is smaller than `size` on a side.
    """
    _, height, width = image.shape
    if height < size or width < size:
        raise ValueError(f"image of {width}x{height} pixels is smaller than the {size}x{size} patch")
    tops = torch.randint(0, height - size + 1, (count,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (count,), generator=generator).tolist()
    flips = (torch.rand(count, generator=generator) < 0.5).tolist() if flip else [False] * count
    # A flipped crop at `left` is the crop of the mirrored image at `width - size - left`: mirroring the
    # image once lets every patch be a single copy.
    mirror = image.flip(-1) if any(flips) else image
    return torch.stack([mirror[:, t:t + size, width - size - l:width - l] if f else image[:, t:t + size, l:l + size]
                        for t, l, f in zip(tops, lefts, flips)])


# ---------------------------------------------------------------------------------------------
# Patches of one image file (demos and robustness evaluation)


def tensor_to_image(pixels: torch.Tensor) -> Image.Image:
    """Pixel image (3, H, W) in [0, 1] -> 8-bit RGB PIL image, each value rounded to the nearest level."""
    levels = (pixels.detach().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return Image.fromarray(levels.permute(1, 2, 0).numpy())


def image_patches(path: str, count: int, size: int, generator: torch.Generator | None = None,
                  upscale_small: bool = False) -> torch.Tensor:
    """`count` random `size` x `size` crops of the image file `path` -> (count, 3, size, size) in [0, 1].

    Crop positions come from `generator` (seed it for reproducible patches). An image of exactly
    `size` x `size` is its own single patch, whatever `count`. An image smaller than `size` on a side
    raises ValueError naming the file, unless `upscale_small`: then it is resized (bicubic) so that
    its shorter side is `size`, keeping the aspect ratio.
    """
    img = load_image(path)
    width, height = img.size
    if min(width, height) < size:
        if not upscale_small:
            raise ValueError(f"{path}: image of {width}x{height} pixels is smaller than the {size}x{size} "
                             f"patch on a side; pass --upscale_small to upscale it")
        scale = size / min(width, height)
        img = img.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    image = image_to_tensor(img)
    if image.shape[1:] == (size, size):
        return image.unsqueeze(0)
    return random_crops(image, count, size, generator)


# ---------------------------------------------------------------------------------------------
# Random streams

TRAIN_RATIO = 0.8  # share of the images (of the reference images for LIVE/CSIQ/TID2013) used for training
SHUFFLE_BUFFER_IMAGES = 32  # training patches are shuffled among this many consecutive images
RESIZE_BEFORE_CROP = {"koniq-10k": (512, 384), "bid": (512, 512)}  # (height, width), as released

# Independent random streams derived from one seed (see `derived_seed`).
SPLIT_STREAM, ORDER_STREAM, PATCH_STREAM, SHUFFLE_STREAM = range(4)


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one random stream, from the run's seed and non-negative integer keys
    (stream, round, epoch, image, ...): streams never overlap and do not depend on call order."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded with `derived_seed(seed, *keys)`."""
    return torch.Generator().manual_seed(derived_seed(seed, *keys))


# ---------------------------------------------------------------------------------------------
# Splits


def split_samples(samples: Sequence[Sample], dataset: str, seed: int = DEFAULT_SEED, round_index: int = 0,
                  train_ratio: float = TRAIN_RATIO, split_file: str | None = None) -> tuple[list[Sample], list[Sample]]:
    """Split `samples` into (train, test) lists.

    The units of the split are the distinct `content` values in order of first appearance: the
    reference images for live, csiq, tid2013 and synthetic (no scene on both sides), single images
    for the other data sets (whose content is the image path). The first round(train_ratio x units)
    units of an order go to training, the rest to testing. The order is read from `split_file` (a
    list of unit indices, e.g. the paper's LIVEC split: 1162 indices, the first 930 for training), or
    else is a permutation seeded by (seed, round_index).
    """
    if dataset not in folders.DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; valid: {', '.join(folders.DATASETS)}")
    if not 0 < train_ratio < 1:
        raise ValueError(f"train_ratio must be between 0 and 1, got {train_ratio}")
    units: dict[str, list[int]] = {}
    for position, sample in enumerate(samples):
        units.setdefault(sample.content, []).append(position)
    groups = list(units.values())
    if split_file is not None:
        order = read_split_file(split_file)
        bad = [i for i in order if not 0 <= i < len(groups)]
        if bad:
            raise ValueError(f"split file {split_file} holds index {bad[0]}, out of range for the "
                             f"{len(groups)} {'reference images' if len(groups) < len(samples) else 'images'} of {dataset}")
        if len(set(order)) != len(order):
            raise ValueError(f"split file {split_file} lists an index more than once")
    else:
        order = np.random.default_rng(derived_seed(seed, SPLIT_STREAM, round_index)).permutation(len(groups)).tolist()
    train_units = int(round(train_ratio * len(order)))  # Python's round, as released
    if not 0 < train_units < len(order):
        raise ValueError(f"cannot split {len(order)} unit(s) of {dataset} into non-empty training and test sets; "
                         "the data set needs at least 3 images (3 reference images for live, csiq, tid2013, synthetic)")
    train = [samples[i] for unit in order[:train_units] for i in groups[unit]]
    test = [samples[i] for unit in order[train_units:] for i in groups[unit]]
    return train, test


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only. Every class or function reference, the way a pickle runs code, is
    refused, except the NumPy constructors of arrays, scalars and dtypes (a split saved from NumPy)."""

    NUMPY_CONSTRUCTORS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                          ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                          ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.NUMPY_CONSTRUCTORS:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a split file may hold only a list of integers")
        if module == "numpy":
            return getattr(np, name)
        return getattr(np._core.multiarray, name)


def read_split_file(path: str) -> list[int]:
    """The list of integer indices stored in `path`: JSON (a list) or a pickle of a list/array of ints.

    The pickle is read without running code (see `_DataOnlyUnpickler`). Raises FileNotFoundError,
    or ValueError naming the file and what is wrong with it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"split file not found: {path}") from None
    try:
        if data.lstrip()[:1] == b"[":
            values = json.loads(data.decode("utf-8"))
        else:
            values = _DataOnlyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, ValueError, EOFError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"cannot read split file {path} (expected a JSON list or a pickled list of integers): {exc}") from None
    if isinstance(values, np.ndarray):
        values = values.tolist() if values.ndim == 1 and values.dtype.kind in "iu" else None
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"split file {path} must hold a non-empty list of integers")
    return [int(v) for v in values]


# ---------------------------------------------------------------------------------------------
# Patches and loaders


def resize_as_released(img: Image.Image, dataset: str) -> Image.Image:
    """KonIQ-10k -> height 512 x width 384, BID -> 512 x 512 (bilinear), other data sets unchanged."""
    if dataset not in RESIZE_BEFORE_CROP:
        return img
    height, width = RESIZE_BEFORE_CROP[dataset]
    return img.resize((width, height), Image.Resampling.BILINEAR)


class PatchItem(NamedTuple):
    patches: torch.Tensor  # uint8 (patch_num, 3, size, size); empty when `error` is set
    mos: float
    index: int  # position of the image in the loader's sample list
    error: str  # "" when the image loaded, else the message (raised in the main process)


class ImagePatches(torch.utils.data.Dataset):
    """Image-level data set: item `(index, epoch)` is image `index` of `samples`, decoded once, and
    `patch_num` random `patch_size` crops of it (flipped at random for training), as uint8.

    Crop positions and flips are drawn from a generator seeded by (seed, epoch, index), so they do
    not depend on the order in which images are read or on which worker reads them.
    """

    def __init__(self, samples: Sequence[Sample], dataset: str, patch_num: int, train: bool,
                 seed: int = DEFAULT_SEED, patch_size: int = PATCH_SIZE):
        self.samples, self.dataset, self.patch_num = list(samples), dataset, patch_num
        self.train, self.seed, self.patch_size = train, seed, patch_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> PatchItem:
        index, epoch = key
        try:
            return PatchItem(self.patches(index, epoch), self.samples[index].mos, index, "")
        except ImageError as exc:
            return PatchItem(torch.empty(0, dtype=torch.uint8), self.samples[index].mos, index, str(exc))

    def patches(self, index: int, epoch: int) -> torch.Tensor:
        """uint8 patches (patch_num, 3, patch_size, patch_size) of image `index` for `epoch`."""
        sample = self.samples[index]
        where = f"image {index} of the {self.dataset} {'training' if self.train else 'test'} set"
        try:
            img = load_image(sample.path)
        except ImageError as exc:
            raise ImageError(f"{where}: {exc}") from None
        img = resize_as_released(img, self.dataset)
        generator = seeded_generator(self.seed, PATCH_STREAM, epoch, index)
        try:
            return random_crops(image_to_uint8_tensor(img), self.patch_num, self.patch_size, generator, flip=self.train)
        except ValueError as exc:
            raise ImageError(f"{where} ({sample.path}): {exc}; HyperIQA needs images of at least "
                             f"{self.patch_size} pixels on each side") from None


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C in a terminal reaches every process of the group: workers ignore it, the main process
    # stops the run at the next step and shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images (B, 3, S, S) normalized, mos (B,), image index (B,)


class PatchLoader:
    """Batches of patches for one epoch at a time: `for images, mos, index in loader.batches(epoch)`.

    images: ImageNet-normalized float (B, 3, patch_size, patch_size) on `device`; mos: float32 (B,);
    index: int64 (B,), the position of each patch's image in `samples`. Training loaders shuffle (see
    the module docstring); test loaders keep the images in order. `num_workers` processes decode
    images ahead (0: decode in this process); each image is decoded once per epoch.
    """

    def __init__(self, samples: Sequence[Sample], dataset: str, patch_num: int, batch_size: int, train: bool,
                 seed: int = DEFAULT_SEED, num_workers: int = 0, device: torch.device | str = "cpu",
                 patch_size: int = PATCH_SIZE, shuffle_images: int = SHUFFLE_BUFFER_IMAGES):
        if batch_size < 1 or patch_num < 1:
            raise ValueError(f"batch_size and patch_num must be >= 1, got {batch_size} and {patch_num}")
        self.images = ImagePatches(samples, dataset, patch_num, train, seed, patch_size)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.num_workers, self.device = num_workers, torch.device(device)
        self.images_per_group = shuffle_images if train else 1

    def __len__(self) -> int:
        return math.ceil(len(self.images) * self.images.patch_num / self.batch_size)

    def batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of `epoch`, from batch number `start_batch` on (images whose patches all fall
        in the skipped batches are not decoded)."""
        patch_num = self.images.patch_num
        if self.train:
            order = torch.randperm(len(self.images), generator=seeded_generator(self.seed, ORDER_STREAM, epoch)).tolist()
        else:
            order = list(range(len(self.images)))
        groups = [order[i:i + self.images_per_group] for i in range(0, len(order), self.images_per_group)]
        skip = start_batch * self.batch_size  # patches of the stream already consumed
        first = 0
        while first < len(groups) and skip >= len(groups[first]) * patch_num:
            skip -= len(groups[first]) * patch_num
            first += 1
        items = self._decoded([(index, epoch) for group in groups[first:] for index in group])
        # The stream of patches, as (item, patch number) pairs: each batch copies its patches once,
        # straight from the items (no shuffled copy of a whole group).
        pending: list[tuple[PatchItem, int]] = []
        for number in range(first, len(groups)):
            got = [next(items) for _ in groups[number]]
            failed = next((item.error for item in got if item.error), None)
            if failed:
                raise ImageError(failed)
            stream = range(len(got) * patch_num)
            if self.train:
                stream = torch.randperm(len(stream), generator=seeded_generator(self.seed, SHUFFLE_STREAM, epoch, number)).tolist()
            pending += [(got[k // patch_num], k % patch_num) for k in stream[skip:]]
            skip = 0
            full = len(pending) // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                yield self._batch(pending[start:start + self.batch_size])
            pending = pending[full:]
        if pending:
            yield self._batch(pending)

    def _decoded(self, keys: list[tuple[int, int]]) -> Iterator[PatchItem]:
        if self.num_workers == 0 or not keys:
            return (self.images[key] for key in keys)
        loader = torch.utils.data.DataLoader(self.images, batch_size=None, sampler=keys,
                                             num_workers=min(self.num_workers, len(keys)),
                                             worker_init_fn=_ignore_sigint)
        return iter(loader)

    def _batch(self, pairs: list[tuple[PatchItem, int]]) -> Batch:
        patches = torch.stack([item.patches[number] for item, number in pairs])
        mos = torch.tensor([item.mos for item, _ in pairs], dtype=torch.float32)
        index = torch.tensor([item.index for item, _ in pairs], dtype=torch.int64)
        # Patches travel as uint8 (4x less than float) and are converted on the device.
        pixels = patches.to(self.device, non_blocking=True).float().div_(255.0)
        return normalize(pixels), mos.to(self.device), index.to(self.device)


def make_train_loader(samples: Sequence[Sample], dataset: str, patch_num: int, batch_size: int, seed: int = DEFAULT_SEED,
                 num_workers: int = 0, device: torch.device | str = "cpu") -> PatchLoader:
    """Shuffled, flipped training batches (see PatchLoader)."""
    return PatchLoader(samples, dataset, patch_num, batch_size, True, seed, num_workers, device)


def make_test_loader(samples: Sequence[Sample], dataset: str, patch_num: int, batch_size: int, seed: int = DEFAULT_SEED,
                num_workers: int = 0, device: torch.device | str = "cpu") -> PatchLoader:
    """Test batches: images in order, `patch_num` random crops each, no flips (see PatchLoader)."""
    return PatchLoader(samples, dataset, patch_num, batch_size, False, seed, num_workers, device)


# Loader worker processes by default: none. Each image being decoded once per epoch, the main process
# cuts and converts an image's patches (about 3 ms for a 500x500 JPEG) faster than a worker hands them
# over through shared memory: benchmark.py measured an epoch of 40 such images at 0.13 s without workers
# and 0.53 s with one (2 cores); 0.20 s without and 0.31-0.43 s with four (16 cores). Workers pay off
# only where decoding dominates (much larger images): --num_workers.
DEFAULT_NUM_WORKERS = 0
