"""Batches of views (patches, crops or whole images, as a family's protocol says: views.py) for
training and testing any quality model: `make_train_loader`, `make_test_loader`.

Training batches are those of the released `DataLoader(shuffle=True)`: HyperIQA's released data set
listed every image `patch_num` (25) times, so each epoch one random permutation of all N x patch_num
(image, view) entries was cut into batches of `batch_size` (the last one smaller). A batch of 16 on
LIVEC's 930 training images thus holds about 15.9 different images. Here the same rule draws the
entries (with one view per image, as DBCNN's, it is the released shuffle of the images), and each
image is decoded at most once per epoch instead of once per entry:

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

Test batches hold the views of consecutive images in order, and carry each view's image index, so
that predictions are averaged per image; a batch never mixes views of different sizes (whole images
of different sizes go in batches of their own).

Batches hold pixels in [0, 1]: the family's quality model normalizes them (families/base.py).

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
from families.base import InputSizes
from folders import Sample
from images import ImageError, image_size, image_to_uint8_tensor, load_image
from views import CropBox, Views, cut_view, random_crop_boxes, resize_as_released

DEFAULT_CACHE_GIB = 2.0  # memory for decoded training images; LIVEC's 930 need 0.65 GiB
MIN_WINDOW_IMAGES = 512  # past the budget, patches are shuffled among at least this many images
GIB = 2 ** 30
# Loader worker processes by default: none. Each image being decoded at most once per epoch, the main
# process cuts and converts its patches faster than a worker hands them over through shared memory
# (benchmark.py's loading job). Workers pay off where decoding dominates: --num_workers.
DEFAULT_NUM_WORKERS = 0

# pixels (B, 3, h, w) in [0, 1], mos (B,), image index (B,): -1 for a placeholder (see share_of)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Decoder = Callable[[str], Image.Image]  # image file -> 8-bit RGB PIL image (images.load_image)


class DecodedImage(NamedTuple):
    index: int  # position of the image in the loader's sample list
    pixels: torch.Tensor  # uint8 (3, H, W), resized as released; empty when `error` is set
    error: str  # "" when the image decoded, else the message (raised in the main process)


class DecodedImages(torch.utils.data.Dataset):
    """Item `index`: image `index` of `samples`, decoded by `decode` and resized as `views` say."""

    def __init__(self, samples: Sequence[Sample], views: Views, decode: Decoder, describe: Callable[[int], str]):
        self.samples, self.views, self.decode, self.describe = samples, views, decode, describe

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> DecodedImage:
        try:
            img = resize_as_released(self.decode(self.samples[index].path), self.views)
            return DecodedImage(index, image_to_uint8_tensor(img), "")
        except ImageError as exc:
            return DecodedImage(index, torch.empty(0, dtype=torch.uint8), f"{self.describe(index)}: {exc}")


def share_bounds(length: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, stop): the positions in a global training batch of `length` entries that process
    `rank` of `world_size` takes. A full batch is cut into `world_size` equal consecutive shares; the
    smaller last batch of an epoch into shares that differ by at most one entry, the larger ones
    first; a share may be empty (start == stop)."""
    sizes = [length // world_size + (r < length % world_size) for r in range(world_size)]
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def share_of(batch: list, rank: int, world_size: int) -> tuple[list, bool]:
    """Process `rank`'s entries of a global training batch (`share_bounds`), and whether they are a
    placeholder: a process whose share would be empty gets the batch's first entry as a placeholder,
    which it runs with a loss weight of 0 (its index is -1) and outside BatchNorm's statistics
    (distributed.outside_batchnorm_statistics), so that every process takes part in every step.
    """
    start, stop = share_bounds(len(batch), rank, world_size)
    share = batch[start:stop]
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


class ViewLoader:
    """Batches of views, one epoch at a time: `for pixels, mos, index in loader.batches(epoch)`.

    pixels: float (B, 3, h, w) in [0, 1] on `device`, the views of the protocol `views`; mos: float32
    (B,); index: int64 (B,), the position of each view's image in `samples`. Training loaders draw the
    released batches (see the module docstring), test loaders keep the images in order. `num_workers`
    processes decode images ahead (0: decode in this process); `decode` reads an image file.
    Every image's size is read from its file header at construction, so a missing, unreadable or too
    small image (smaller than the crop, or than `input_sizes`, what the model accepts, for whole-image
    views; `model_name` names the model in that message) stops the run before the first step.
    Training loaders give each process at least `min_share` views a step (Family.min_batch_per_process):
    the epoch's last, smaller batch is dropped when a process's share of it would be fewer (said once),
    and a batch size that gives fewer is refused. With `drop_last` (training) each epoch's last partial
    batch is dropped, as a DataLoader(drop_last=True).
    """

    def __init__(self, samples: Sequence[Sample], dataset: str, views: Views, batch_size: int, train: bool,
                 seed: int = seeding.DEFAULT_SEED, round_index: int = 0, num_workers: int = 0,
                 device: torch.device | str = "cpu", cache_gib: float = DEFAULT_CACHE_GIB,
                 decode: Decoder = load_image, rank: int = 0, world_size: int = 1,
                 input_sizes: InputSizes | None = None, model_name: str = "the model", min_share: int = 1,
                 drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if train:
            check_global_batch(batch_size, world_size)
            if batch_size // world_size < min_share:
                raise ValueError(f"{model_name} trains on at least {min_share} views per process and step (BatchNorm "
                                 f"statistics of one view fail): --batch_size {batch_size} over {world_size} "
                                 f"process(es) gives {batch_size // world_size}; use at least {min_share * world_size}")
        if not cache_gib >= 0:
            raise ValueError(f"the image cache budget must be >= 0 GiB, got {cache_gib}")
        self.samples, self.dataset, self.views, self.batch_size = list(samples), dataset, views, batch_size
        self.patch_num = views.count
        self.train, self.seed, self.round_index = train, seed, round_index
        self.num_workers, self.device = num_workers, torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.input_sizes, self.model_name = input_sizes, model_name
        self.images = DecodedImages(self.samples, views, decode, self.describe)
        self.sizes = [self._size(index) for index in range(len(self.samples))]  # (height, width) after resizing
        if train:
            self._check_one_view_size()
        self.decoded_bytes = sum(3 * height * width for height, width in self.sizes)
        # where each kept image starts in `_slab`, in bytes
        self._offsets = list(itertools.accumulate((3 * height * width for height, width in self.sizes[:-1]),
                                                  initial=0))
        self.window_images, self.keep_decoded = self._windowing(cache_gib * GIB)
        last = len(self.samples) * self.patch_num % batch_size
        # (min_share 1: a process left without an entry runs a placeholder, see share_of)
        share_too_small = min_share > 1 and last // world_size < min_share
        self.drops_last = train and last > 0 and (drop_last or share_too_small)
        if train and len(self) == 0:
            why = ("the last partial batch is dropped" if drop_last else
                   f"{model_name} needs at least {min_share} views per process in a step")
            raise ValueError(f"{len(self.samples)} training images x {self.patch_num} views make no full batch of "
                             f"{batch_size}, and {why}: nothing to train on")
        if self.drops_last and share_too_small and not drop_last and rank == 0:
            print(f"the last training batch of each epoch ({last} of the {len(self.samples) * self.patch_num} views) "
                  f"is dropped: {model_name} needs at least {min_share} views per process in a step", file=sys.stderr,
                  flush=True)
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
            width, height = image_size(path)
        except ImageError as exc:
            raise ImageError(f"{self.describe(index)}: {exc}") from None
        height, width = self.views.resized_size(height, width)
        problem = ""
        if self.views.crop is not None and (height < self.views.crop[0] or width < self.views.crop[1]):
            problem = (f"image of {width}x{height} pixels is smaller than the {self.views.crop[1]}x{self.views.crop[0]} "
                       f"crop of {self.model_name}'s protocol")
        elif self.input_sizes is not None:
            view_height, view_width = self.views.view_size(height, width)
            problem = self.input_sizes.problem(view_height, view_width)
            problem = f"{self.model_name} {problem}" if problem else ""
        if problem:
            raise ImageError(f"{self.describe(index)} ({path}): {problem}")
        return height, width

    def _check_one_view_size(self) -> None:
        """Training batches stack views of any images: they must all have one size."""
        sizes = sorted({self.views.view_size(height, width) for height, width in self.sizes})
        if len(sizes) > 1:
            (h1, w1), (h2, w2) = sizes[0], sizes[-1]
            raise ImageError(f"the {self.dataset} training images give views of {len(sizes)} sizes (e.g. {w1}x{h1} "
                             f"and {w2}x{h2}): {self.views.describe()} cannot be batched; the images must have one "
                             "size, or the protocol a crop")

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
        """Training batches per epoch (test loaders: at least this many, as a batch holds one view size)."""
        entries = len(self.samples) * self.patch_num
        return entries // self.batch_size if self.drops_last else math.ceil(entries / self.batch_size)

    # -- what an epoch draws

    def crop_boxes(self, index: int, epoch: int) -> list[CropBox]:
        """The views of image `index` in `epoch`."""
        stream = seeding.TRAIN_PATCHES if self.train else seeding.TEST_PATCHES
        generator = seeding.seeded_generator(self.seed, stream, self.round_index, epoch, index)
        height, width = self.sizes[index]
        return random_crop_boxes(height, width, self.views, generator)

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
        """Every (image index, view number) of `epoch` once, in the order batches take them."""
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

    def _test_batches(self, stream: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """Consecutive entries in batches of up to `batch_size`, a new batch where the view size changes."""
        batches: list[list[tuple[int, int]]] = []
        for entry in stream:
            size = self.views.view_size(*self.sizes[entry[0]])
            last = batches[-1] if batches else None
            if last and len(last) < self.batch_size and self.views.view_size(*self.sizes[last[0][0]]) == size:
                last.append(entry)
            else:
                batches.append([entry])
        return batches

    def batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of `epoch`, from batch number `start_batch` on. Images whose views all fall in
        the skipped batches are not decoded; none is decoded twice in an epoch.

        With several processes, a training loader yields this process's share of each global batch
        (`share_of`; `start_batch` counts global batches), and a test loader the images whose
        index is congruent to this process's rank modulo their number.
        """
        stream = self.entries(epoch)
        if self.train:
            stream = stream[start_batch * self.batch_size:len(self) * self.batch_size]
            batches = [stream[k:k + self.batch_size] for k in range(0, len(stream), self.batch_size)]
        else:
            if self.world_size > 1:
                stream = [entry for entry in stream if entry[0] % self.world_size == self.rank]
            batches = self._test_batches(stream)[start_batch:]
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

    def decoded_image(self, index: int) -> torch.Tensor:
        """uint8 image `index` (3, H, W), decoded and resized as the protocol says: what its views are cut from."""
        item = self.images[index]
        if item.error:
            raise ImageError(item.error)
        self._check_size(item)
        return item.pixels

    def patches_of(self, index: int, epoch: int = 0) -> torch.Tensor:
        """uint8 views (count, 3, h, w) of image `index` in `epoch`: those its batches carry."""
        image = self.decoded_image(index)
        return torch.stack([cut_view(image, box, self.views) for box in self.crop_boxes(index, epoch)])

    def _decoded(self, indices: list[int]) -> Iterator[DecodedImage]:
        if self.num_workers == 0 or not indices:
            return (self.images[index] for index in indices)
        loader = torch.utils.data.DataLoader(self.images, batch_size=None, sampler=indices,
                                             num_workers=min(self.num_workers, len(indices)),
                                             worker_init_fn=_ignore_sigint)
        return iter(loader)

    def _batch(self, views: list[tuple[torch.Tensor, CropBox, int]]) -> Batch:
        height, width = cut_view(views[0][0], views[0][1], self.views).shape[1:]
        out = torch.empty((len(views), 3, height, width), dtype=torch.uint8)
        for row, (image, box, _) in enumerate(views):
            out[row] = cut_view(image, box, self.views)  # the one copy of each view
        mos = torch.tensor([self.samples[index].mos if index >= 0 else 0.0 for _, _, index in views],
                           dtype=torch.float32)
        index = torch.tensor([index for _, _, index in views], dtype=torch.int64)
        # Views travel as uint8 (4x less than float) and are converted on the device.
        pixels = out.to(self.device, non_blocking=True).float().div_(255.0)
        return pixels, mos.to(self.device), index.to(self.device)


def make_train_loader(samples: Sequence[Sample], dataset: str, views: Views, batch_size: int,
                      seed: int = seeding.DEFAULT_SEED, round_index: int = 0, num_workers: int = 0,
                      device: torch.device | str = "cpu", cache_gib: float = DEFAULT_CACHE_GIB,
                      decode: Decoder = load_image, rank: int = 0, world_size: int = 1,
                      input_sizes: InputSizes | None = None, model_name: str = "the model",
                      min_share: int = 1, drop_last: bool = False) -> ViewLoader:
    """Training batches as the released shuffling loader draws them, with the training `views` of a
    family (see ViewLoader); `batch_size` is the global batch, dealt to the `world_size` processes,
    each getting at least `min_share` views a step; `drop_last`: without each epoch's last partial batch."""
    return ViewLoader(samples, dataset, views, batch_size, True, seed, round_index, num_workers, device,
                      cache_gib=cache_gib, decode=decode, rank=rank, world_size=world_size, input_sizes=input_sizes,
                      model_name=model_name, min_share=min_share, drop_last=drop_last)


def make_test_loader(samples: Sequence[Sample], dataset: str, views: Views, batch_size: int,
                     seed: int = seeding.DEFAULT_SEED, round_index: int = 0, num_workers: int = 0,
                     device: torch.device | str = "cpu", decode: Decoder = load_image, rank: int = 0,
                     world_size: int = 1, input_sizes: InputSizes | None = None,
                     model_name: str = "the model") -> ViewLoader:
    """Test batches: images in order, with the test `views` of a family (see ViewLoader); with several
    processes, each takes every `world_size`-th image."""
    return ViewLoader(samples, dataset, views, batch_size, False, seed, round_index, num_workers, device,
                      decode=decode, rank=rank, world_size=world_size, input_sizes=input_sizes, model_name=model_name)
