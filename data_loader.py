"""Batches of patches for training and testing HyperIQA: `make_train_loader`, `make_test_loader`.

Training batches are those of the released `DataLoader(shuffle=True)`: the released data set listed
every image `patch_num` (25) times, so each epoch one random permutation of all N x patch_num
(image, patch) entries was cut into batches of `batch_size` (the last one smaller). A batch of 16 on
LIVEC's 930 training images thus holds about 15.9 different images. Here the same rule draws the
entries, and each image is decoded at most once per epoch instead of once per entry:

- The decoded training images (uint8, resized as released) are kept in memory, under a budget
  (`cache_gib`, 2 GiB by default; LIVEC's 930 training images take 0.65 GiB): then each image is
  decoded once for the whole run, and every epoch is one global permutation, exactly the released
  rule.
- A training set larger than the budget is shuffled in windows: each epoch the images are put in a
  random order and cut into nearly equal windows of at most the budget's worth of images (but at
  least `MIN_WINDOW_IMAGES`, 512); the entries of a window are permuted together and the windows
  follow each other. Each image is decoded once per epoch. KonIQ-10k's 8,058 training images,
  resized to 512x384, take 4.4 GiB: with the default budget, 3 windows of about 2,686 images give
  15.96 different images per batch of 16 on average, against 15.99 for a global shuffle (15.78 for
  windows of 512). The loader says so once when this happens.

Test batches hold the patches of consecutive images in order, `patch_num` random crops each, and
carry each patch's image index, so that predictions are averaged per image.

Every random draw comes from its own stream (seeding.py) keyed by (seed, round, epoch, image or
window): the same seed gives the same batches whatever the number of loader workers, and a run
resumed in the middle of an epoch sees exactly the batches it would have seen.
"""
from __future__ import annotations

import itertools
import math
import signal
import sys
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from PIL import Image

import seeding
from folders import Sample
from images import ImageError, image_size, image_to_uint8_tensor, load_image
from models import PATCH_SIZE, normalize
from patches import CropBox, cut_patch, random_crop_boxes, resize_as_released, resized_size

DEFAULT_CACHE_GIB = 2.0  # memory for decoded training images; LIVEC's 930 need 0.65 GiB
MIN_WINDOW_IMAGES = 512  # past the budget, patches are shuffled among at least this many images
GIB = 2 ** 30
# Loader worker processes by default: none. Each image being decoded at most once per epoch, the main
# process cuts and converts its patches faster than a worker hands them over through shared memory
# (benchmark.py's loading job). Workers pay off where decoding dominates: --num_workers.
DEFAULT_NUM_WORKERS = 0

# images (B, 3, S, S) normalized, mos (B,), image index (B,): -1 for a placeholder (see share_of)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Decoder = Callable[[str], Image.Image]  # image file -> 8-bit RGB PIL image (images.load_image)


class DecodedImage(NamedTuple):
    index: int  # position of the image in the loader's sample list
    pixels: torch.Tensor  # uint8 (3, H, W), resized as released; empty when `error` is set
    error: str  # "" when the image decoded, else the message (raised in the main process)


class DecodedImages(torch.utils.data.Dataset):
    """Item `index`: image `index` of `samples`, decoded by `decode` and resized as released."""

    def __init__(self, samples: Sequence[Sample], dataset: str, decode: Decoder, describe: Callable[[int], str]):
        self.samples, self.dataset, self.decode, self.describe = samples, dataset, decode, describe

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> DecodedImage:
        try:
            img = resize_as_released(self.decode(self.samples[index].path), self.dataset)
            return DecodedImage(index, image_to_uint8_tensor(img), "")
        except ImageError as exc:
            return DecodedImage(index, torch.empty(0, dtype=torch.uint8), f"{self.describe(index)}: {exc}")


def share_of(batch: list, rank: int, world_size: int) -> tuple[list, bool]:
    """Process `rank`'s entries of a global training batch, and whether they are a placeholder.

    A full batch is cut into `world_size` equal consecutive shares; the smaller last batch of an
    epoch into shares that differ by at most one entry. A process whose share would be empty gets the
    batch's first entry as a placeholder, which it runs with a loss weight of 0 (its index is -1), so
    that every process takes part in every step.
    """
    length = len(batch)
    sizes = [length // world_size + (r < length % world_size) for r in range(world_size)]
    start = sum(sizes[:rank])
    share = batch[start:start + sizes[rank]]
    return (share, False) if share else (batch[:1], True)


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C in a terminal reaches every process of the group: workers ignore it, the main process
    # stops the run at the next step and shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_global_batch(batch_size: int, world_size: int) -> None:
    """Raise ValueError unless the global training batch can be dealt evenly to `world_size` processes."""
    if batch_size % world_size:
        raise ValueError(f"--batch_size {batch_size} is the batch over all {world_size} processes and must be "
                         f"divisible by their number; use a multiple of {world_size}")


def _window_count(count: int, window_images: int) -> int:
    """How many nearly equal shuffling windows `count` images are cut into, for windows of at most
    `window_images`."""
    return math.ceil(count / window_images)


class PatchLoader:
    """Batches of patches, one epoch at a time: `for images, mos, index in loader.batches(epoch)`.

    images: ImageNet-normalized float (B, 3, patch_size, patch_size) on `device`; mos: float32 (B,);
    index: int64 (B,), the position of each patch's image in `samples`. Training loaders draw the
    released batches (see the module docstring), test loaders keep the images in order. `num_workers`
    processes decode images ahead (0: decode in this process); `decode` reads an image file.
    Every image's size is read from its file header at construction, so a missing, unreadable or too
    small image stops the run before the first step.
    """

    def __init__(self, samples: Sequence[Sample], dataset: str, patch_num: int, batch_size: int, train: bool,
                 seed: int = seeding.DEFAULT_SEED, round_index: int = 0, num_workers: int = 0,
                 device: torch.device | str = "cpu", patch_size: int = PATCH_SIZE,
                 cache_gib: float = DEFAULT_CACHE_GIB, decode: Decoder = load_image, rank: int = 0,
                 world_size: int = 1):
        if batch_size < 1 or patch_num < 1:
            raise ValueError(f"batch_size and patch_num must be >= 1, got {batch_size} and {patch_num}")
        if train:
            check_global_batch(batch_size, world_size)
        if not cache_gib >= 0:
            raise ValueError(f"the image cache budget must be >= 0 GiB, got {cache_gib}")
        self.samples, self.dataset, self.patch_num, self.batch_size = list(samples), dataset, patch_num, batch_size
        self.train, self.seed, self.round_index, self.patch_size = train, seed, round_index, patch_size
        self.num_workers, self.device = num_workers, torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.images = DecodedImages(self.samples, dataset, decode, self.describe)
        self.sizes = [self._size(index) for index in range(len(self.samples))]  # (height, width)
        self.decoded_bytes = sum(3 * height * width for height, width in self.sizes)
        # where each kept image starts in `_slab`, in bytes
        self._offsets = list(itertools.accumulate((3 * height * width for height, width in self.sizes[:-1]),
                                                  initial=0))
        self.window_images, self.keep_decoded = self._windowing(cache_gib * GIB)
        self._cache: dict[int, torch.Tensor] = {}  # decoded images kept across epochs, views of `_slab`
        self._slab: torch.Tensor | None = None  # one buffer for all kept images (no heap fragmentation)

    def set_window(self, images: int) -> None:
        """Shuffle training patches within windows of `images` images (all of them: one global
        permutation, decoded images kept across epochs)."""
        self.window_images, self.keep_decoded = min(images, len(self.samples)), images >= len(self.samples)

    def describe(self, index: int) -> str:
        return f"image {index} of the {self.dataset} {'training' if self.train else 'test'} set"

    def _size(self, index: int) -> tuple[int, int]:
        path = self.samples[index].path
        try:
            width, height = resized_size(self.dataset, *image_size(path))
        except ImageError as exc:
            raise ImageError(f"{self.describe(index)}: {exc}") from None
        if min(width, height) < self.patch_size:
            raise ImageError(f"{self.describe(index)} ({path}): image of {width}x{height} pixels is smaller than "
                             f"the {self.patch_size}x{self.patch_size} patch; HyperIQA needs images of at least "
                             f"{self.patch_size} pixels on each side")
        return height, width

    def _windowing(self, budget_bytes: float) -> tuple[int, bool]:
        """(images per shuffling window, whether decoded images are kept across epochs)."""
        count = len(self.samples)
        if not self.train:
            return 1, False
        if self.decoded_bytes <= budget_bytes:
            return count, True
        per_image = self.decoded_bytes / count
        window = min(count, max(MIN_WINDOW_IMAGES, int(budget_bytes // per_image)))
        print(f"the {count} training images need {self.decoded_bytes / GIB:.2f} GiB decoded, more than the "
              f"image cache's {budget_bytes / GIB:.2f} GiB (--cache_gib): each epoch, patches are shuffled "
              f"within windows of about {round(count / _window_count(count, window))} images instead of across "
              f"the whole set, and each image is decoded once per epoch", file=sys.stderr, flush=True)
        return window, False

    def __len__(self) -> int:
        return math.ceil(len(self.samples) * self.patch_num / self.batch_size)

    # -- what an epoch draws

    def crop_boxes(self, index: int, epoch: int) -> list[CropBox]:
        """The `patch_num` crops of image `index` in `epoch` (flipped at random for training)."""
        stream = seeding.TRAIN_PATCHES if self.train else seeding.TEST_PATCHES
        generator = seeding.seeded_generator(self.seed, stream, self.round_index, epoch, index)
        height, width = self.sizes[index]
        return random_crop_boxes(height, width, self.patch_num, self.patch_size, generator, flip=self.train)

    def windows(self, epoch: int) -> list[list[int]]:
        """The images of each shuffling window of `epoch`, in stream order (test: one image each)."""
        count = len(self.samples)
        if not self.train:
            return [[index] for index in range(count)]
        order = torch.randperm(count, generator=seeding.seeded_generator(
            self.seed, seeding.TRAIN_ORDER, self.round_index, epoch)).tolist()
        parts = _window_count(count, self.window_images)
        bounds = [round(k * count / parts) for k in range(parts + 1)]  # nearly equal windows
        return [order[bounds[k]:bounds[k + 1]] for k in range(parts)]

    def entries(self, epoch: int) -> list[tuple[int, int]]:
        """Every (image index, patch number) of `epoch` once, in the order batches take them."""
        stream = []
        for number, window in enumerate(self.windows(epoch)):
            pairs = [(index, patch) for index in window for patch in range(self.patch_num)]
            if self.train:
                generator = seeding.seeded_generator(self.seed, seeding.TRAIN_SHUFFLE, self.round_index, epoch, number)
                pairs = [pairs[k] for k in torch.randperm(len(pairs), generator=generator).tolist()]
            stream += pairs
        return stream

    # -- batches

    def global_batch_length(self, number: int) -> int:
        """Entries in training batch `number` over all processes (`batch_size`, the last one fewer)."""
        return min(self.batch_size, len(self.samples) * self.patch_num - number * self.batch_size)

    def batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of `epoch`, from batch number `start_batch` on. Images whose patches all fall in
        the skipped batches are not decoded; none is decoded twice in an epoch.

        With several processes, a training loader yields this process's share of each global batch
        (`share_of`; `start_batch` counts global batches), and a test loader the images whose
        index is congruent to this process's rank modulo their number.
        """
        stream = self.entries(epoch)
        if not self.train and self.world_size > 1:
            stream = [entry for entry in stream if entry[0] % self.world_size == self.rank]
        stream = stream[start_batch * self.batch_size:]
        batches = [stream[k:k + self.batch_size] for k in range(0, len(stream), self.batch_size)]
        placeholders = [False] * len(batches)
        if self.train and self.world_size > 1:
            shares = [share_of(batch, self.rank, self.world_size) for batch in batches]
            batches, placeholders = [share for share, _ in shares], [placeholder for _, placeholder in shares]
        last_batch = {index: number for number, batch in enumerate(batches) for index, _ in batch}
        first_use = list(dict.fromkeys(index for batch in batches for index, _ in batch))
        decoded = self._decoded([index for index in first_use if index not in self._cache])
        held = self._cache if self.keep_decoded else {}
        boxes: dict[int, list[CropBox]] = {}
        for number, batch in enumerate(batches):
            for index, _ in batch:
                while index not in held:
                    item = next(decoded)
                    if item.error:
                        raise ImageError(item.error)
                    self._check_size(item)  # the crop boxes come from the header's size
                    held[item.index] = self._kept(item) if self.keep_decoded else item.pixels
                if index not in boxes:
                    boxes[index] = self.crop_boxes(index, epoch)
            yield self._batch([(held[index], boxes[index][patch], -1 if placeholders[number] else index)
                               for index, patch in batch])
            if not self.keep_decoded:
                for index in {index for index, _ in batch if last_batch[index] == number}:
                    del held[index]

    def _kept(self, item: DecodedImage) -> torch.Tensor:
        """The decoded image copied into its place in one buffer holding every kept image: allocated once,
        so that thousands of image-sized allocations between batch-sized ones do not fragment the heap
        (measured: 1.1-1.4 GiB held for LIVEC's 0.65 GiB of images without it)."""
        if self._slab is None:
            self._slab = torch.empty(self.decoded_bytes, dtype=torch.uint8)
        height, width = self.sizes[item.index]
        start = self._offsets[item.index]
        place = self._slab[start:start + 3 * height * width].view(height, width, 3)
        place.copy_(item.pixels.permute(1, 2, 0))
        return place.permute(2, 0, 1)

    def _check_size(self, item: DecodedImage) -> None:
        height, width = self.sizes[item.index]
        if tuple(item.pixels.shape) != (3, height, width):
            raise ImageError(f"{self.describe(item.index)}: decoded as {item.pixels.shape[2]}x{item.pixels.shape[1]} "
                             f"pixels, but its header says {width}x{height}")

    def patches_of(self, index: int, epoch: int = 0) -> torch.Tensor:
        """uint8 patches (patch_num, 3, S, S) of image `index` in `epoch`: those its batches carry."""
        item = self.images[index]
        if item.error:
            raise ImageError(item.error)
        self._check_size(item)
        return torch.stack([cut_patch(item.pixels, box, self.patch_size) for box in self.crop_boxes(index, epoch)])

    def _decoded(self, indices: list[int]) -> Iterator[DecodedImage]:
        if self.num_workers == 0 or not indices:
            return (self.images[index] for index in indices)
        loader = torch.utils.data.DataLoader(self.images, batch_size=None, sampler=indices,
                                             num_workers=min(self.num_workers, len(indices)),
                                             worker_init_fn=_ignore_sigint)
        return iter(loader)

    def _batch(self, patches: list[tuple[torch.Tensor, CropBox, int]]) -> Batch:
        size = self.patch_size
        out = torch.empty((len(patches), 3, size, size), dtype=torch.uint8)
        for row, (image, box, _) in enumerate(patches):
            out[row] = cut_patch(image, box, size)  # the one copy of each patch
        mos = torch.tensor([self.samples[index].mos if index >= 0 else 0.0 for _, _, index in patches],
                           dtype=torch.float32)
        index = torch.tensor([index for _, _, index in patches], dtype=torch.int64)
        # Patches travel as uint8 (4x less than float) and are converted on the device.
        pixels = out.to(self.device, non_blocking=True).float().div_(255.0)
        return normalize(pixels), mos.to(self.device), index.to(self.device)


def make_train_loader(samples: Sequence[Sample], dataset: str, patch_num: int, batch_size: int,
                      seed: int = seeding.DEFAULT_SEED, round_index: int = 0, num_workers: int = 0,
                      device: torch.device | str = "cpu", cache_gib: float = DEFAULT_CACHE_GIB,
                      decode: Decoder = load_image, rank: int = 0, world_size: int = 1) -> PatchLoader:
    """Training batches as the released shuffling loader draws them, flipped at random (see PatchLoader);
    `batch_size` is the global batch, dealt to the `world_size` processes."""
    return PatchLoader(samples, dataset, patch_num, batch_size, True, seed, round_index, num_workers, device,
                       cache_gib=cache_gib, decode=decode, rank=rank, world_size=world_size)


def make_test_loader(samples: Sequence[Sample], dataset: str, patch_num: int, batch_size: int,
                     seed: int = seeding.DEFAULT_SEED, round_index: int = 0, num_workers: int = 0,
                     device: torch.device | str = "cpu", decode: Decoder = load_image, rank: int = 0,
                     world_size: int = 1) -> PatchLoader:
    """Test batches: images in order, `patch_num` random crops each, no flips (see PatchLoader); with
    several processes, each takes every `world_size`-th image."""
    return PatchLoader(samples, dataset, patch_num, batch_size, False, seed, round_index, num_workers, device,
                       decode=decode, rank=rank, world_size=world_size)
