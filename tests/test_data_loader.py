"""Views and loaders (views.py, data_loader.py) on tiny fake data sets, with HyperIQA's views (random
224x224 patches), whole-image views, and the batch composition of the released shuffling loader on a
LIVEC-sized training set."""
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import data_loader
import folders
import models
import seeding
import views
from folders import Sample
from images import ImageError, image_to_tensor, image_to_uint8_tensor, load_image
from tests import fake_datasets

HYPERIQA = models.get_family("hyperiqa")


def hyperiqa_train_loader(samples, dataset: str, patch_num: int, batch_size: int, **settings) -> data_loader.ViewLoader:
    """A training loader with HyperIQA's views: `patch_num` random 224x224 patches, flipped at random."""
    return data_loader.make_train_loader(samples, dataset, HYPERIQA.views(dataset, True, patch_num), batch_size,
                                         input_sizes=HYPERIQA.input_sizes, model_name="HyperIQA", **settings)


def hyperiqa_test_loader(samples, dataset: str, patch_num: int, batch_size: int, **settings) -> data_loader.ViewLoader:
    """A test loader with HyperIQA's views: `patch_num` random 224x224 patches."""
    return data_loader.make_test_loader(samples, dataset, HYPERIQA.views(dataset, False, patch_num), batch_size,
                                        input_sizes=HYPERIQA.input_sizes, model_name="HyperIQA", **settings)


class CountingDecoder:
    """images.load_image, counting the decodes of each path."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, path: str) -> Image.Image:
        self.counts[path] = self.counts.get(path, 0) + 1
        return load_image(path)

    def reset(self) -> dict[str, int]:
        counts, self.counts = self.counts, {}
        return counts


@pytest.fixture
def four_images(tmp_path):
    fake_datasets.make_csv(tmp_path, count=4)
    return folders.list_samples("csv", tmp_path)


def all_batches(loader, epoch=0, start_batch=0):
    return list(loader.batches(epoch, start_batch))


def test_train_batches_shapes_labels_and_pixels(four_images):
    loader = hyperiqa_train_loader(four_images, "csv", 3, batch_size=5, seed=0)
    batches = all_batches(loader)
    assert len(batches) == len(loader) == 3  # 12 patches: 5 + 5 + 2, the last one smaller as released
    assert [b[0].shape for b in batches] == [(5, 3, 224, 224)] * 2 + [(2, 3, 224, 224)]
    images, mos, index = (torch.cat(parts) for parts in zip(*batches))
    assert images.dtype == torch.float32 and mos.dtype == torch.float32 and index.dtype == torch.int64
    assert sorted(index.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # every patch once
    assert mos.tolist() == pytest.approx([four_images[i].mos for i in index.tolist()])
    assert images.min() >= 0 and images.max() <= 1  # pixels: the model normalizes them
    assert torch.equal(images * 255, (images * 255).round())  # the 8-bit levels of the decoded images
    # patches of the whole set meet in a batch: without mixing, the first batch of 5 would hold the
    # 3 patches of one image and 2 of another
    assert len(set(batches[0][2].tolist())) >= 3


def test_a_patch_is_a_crop_of_the_decoded_image(tmp_path):
    fake_datasets.write_image(tmp_path / "images" / "a.png", seed=1, size=(224, 224))
    sample = Sample(str(tmp_path / "images" / "a.png"), 50.0, "a")
    whole = image_to_tensor(load_image(sample.path))
    test_patches = all_batches(hyperiqa_test_loader([sample], "csv", 2, 2))[0][0]
    assert torch.allclose(test_patches, whole.expand(2, -1, -1, -1), atol=1e-5)  # the only 224 crop, no flip
    train_patches = all_batches(hyperiqa_train_loader([sample], "csv", 8, 8, seed=3))[0][0]
    flipped = [torch.allclose(p, whole.flip(-1), atol=1e-5) for p in train_patches]
    assert all(f or torch.allclose(p, whole, atol=1e-5) for f, p in zip(flipped, train_patches))
    assert 0 < sum(flipped) < 8  # random horizontal flips


def test_flipped_crops_mirror_the_crop_at_the_drawn_position():
    # Positions are drawn first (tops, then lefts), flips after them: the patches of a seed are fixed.
    image = torch.arange(3 * 40 * 50).view(3, 40, 50)
    crops = views.random_views(image, views.Views(12, (16, 16), "horizontal"), torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    tops = torch.randint(0, 40 - 16 + 1, (12,), generator=generator).tolist()
    lefts = torch.randint(0, 50 - 16 + 1, (12,), generator=generator).tolist()
    flips = (torch.rand(12, generator=generator) < 0.5).tolist()
    assert 0 < sum(flips) < 12
    for crop, top, left, flip in zip(crops, tops, lefts, flips):
        expected = image[:, top:top + 16, left:left + 16]
        assert torch.equal(crop, expected.flip(-1) if flip else expected)


def test_test_batches_keep_images_in_order_and_carry_the_patches_of_patches_of(four_images):
    loader = hyperiqa_test_loader(four_images, "csv", 3, batch_size=4, seed=5, round_index=1)
    batches = all_batches(loader, epoch=2)
    assert torch.cat([b[2] for b in batches]).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    carried = torch.cat([b[0] for b in batches])
    expected = torch.cat([loader.patches_of(index, epoch=2) for index in range(4)]).float().div(255)
    torch.testing.assert_close(carried, expected)


def test_train_and_test_images_and_rounds_draw_their_own_crops(four_images):
    def boxes(train, round_index=0, epoch=0, seed=919):
        make = hyperiqa_train_loader if train else hyperiqa_test_loader
        return make(four_images, "csv", 5, 4, seed=seed, round_index=round_index).crop_boxes(1, epoch)

    positions = [[(b.top, b.left) for b in boxes(*key)] for key in
                 [(True,), (False,), (True, 1), (True, 0, 1), (True, 0, 0, 3)]]
    assert all(positions[i] != positions[j] for i in range(5) for j in range(i))
    assert seeding.derived_seed(919, 0) != seeding.derived_seed(919, 0, 0)  # no zero padding collision
    assert len(set(seeding.STREAMS.values())) == len(seeding.STREAMS)


def test_decoded_training_images_are_kept_and_each_is_decoded_once(four_images):
    decode = CountingDecoder()
    loader = hyperiqa_train_loader(four_images, "csv", 25, batch_size=16, decode=decode)
    assert loader.keep_decoded and loader.window_images == 4
    for epoch in range(3):
        assert sum(len(b[0]) for b in loader.batches(epoch)) == 100
        assert decode.reset() == ({s.path: 1 for s in four_images} if epoch == 0 else {})


def test_past_the_memory_budget_windows_decode_each_image_once_per_epoch(four_images, capsys):
    decode = CountingDecoder()
    loader = hyperiqa_train_loader(four_images, "csv", 5, batch_size=3, cache_gib=0, decode=decode)
    assert "need 0.00 GiB decoded, more than the image cache's 0.00 GiB (--cache_gib)" in capsys.readouterr().err
    assert loader.window_images == 4 and not loader.keep_decoded  # never below MIN_WINDOW_IMAGES (or the set)
    loader.set_window(2)
    for epoch in range(2):
        windows = loader.windows(epoch)
        assert sorted(map(len, windows)) == [2, 2] and sorted(sum(windows, [])) == [0, 1, 2, 3]
        index = torch.cat([b[2] for b in loader.batches(epoch)]).tolist()
        first_window = {i for i in index[:10]}
        assert first_window == set(windows[0])  # the 10 entries of a window are shuffled among themselves
        assert decode.reset() == {s.path: 1 for s in four_images}


def test_same_seed_same_patches_whatever_the_workers(four_images):
    def epoch(seed, workers, number=0):
        loader = hyperiqa_train_loader(four_images, "csv", 2, 3, seed=seed, num_workers=workers, cache_gib=0)
        loader.set_window(2)
        return torch.cat([b[0] for b in loader.batches(number)]), torch.cat([b[2] for b in loader.batches(number)])

    reference = epoch(7, 0)
    assert all(torch.equal(a, b) for a, b in zip(reference, epoch(7, 0)))
    assert all(torch.equal(a, b) for a, b in zip(reference, epoch(7, 2)))
    assert not torch.equal(reference[0], epoch(8, 0)[0])
    assert not torch.equal(reference[0], epoch(7, 0, number=1)[0])  # new patches every epoch


@pytest.mark.parametrize("window", [2, 4])
def test_resuming_inside_an_epoch_gives_the_remaining_batches(four_images, window):
    decode = CountingDecoder()
    loader = hyperiqa_train_loader(four_images, "csv", 3, batch_size=2, seed=1, decode=decode)
    loader.set_window(window)
    full = all_batches(loader, epoch=2)
    resumed = hyperiqa_train_loader(four_images, "csv", 3, batch_size=2, seed=1, decode=decode)
    resumed.set_window(window)
    decode.reset()
    rest = all_batches(resumed, epoch=2, start_batch=4)
    assert len(rest) == len(full) - 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(full[4:], rest))
    needed = {four_images[i].path for b in full[4:] for i in b[2].tolist()}
    assert decode.reset() == {path: 1 for path in needed}  # images only in skipped batches are not decoded
    if window == 2:
        assert len(needed) == 2  # the first window of two images was consumed entirely


def test_a_process_resumed_after_the_last_batch_of_an_epoch_gets_no_batch(four_images):
    for rank in range(2):  # a stop on the epoch's last step saves start_batch == len(loader)
        loader = hyperiqa_train_loader(four_images, "csv", 3, batch_size=2, seed=1, rank=rank,
                                               world_size=2)
        assert all_batches(loader, epoch=1, start_batch=len(loader)) == []
        assert len(all_batches(loader, epoch=1, start_batch=len(loader) - 1)) == 1


@pytest.mark.parametrize("cache_gib", [2.0, 0.0])  # decoded images kept, or decoded each epoch
def test_an_image_decoded_at_another_size_than_its_header_is_named(four_images, cache_gib):
    def enlarging(path):
        image = load_image(path)
        return image.resize((image.width + 7, image.height + 5))

    loader = hyperiqa_train_loader(four_images, "csv", 3, batch_size=2, seed=1, decode=enlarging,
                                           cache_gib=cache_gib)
    with pytest.raises(ImageError, match=r"image \d of the csv training set: decoded as \d+x\d+ pixels, but its "
                                         r"header says \d+x\d+"):
        all_batches(loader)
    with pytest.raises(ImageError, match="but its header says"):
        loader.patches_of(0)


def test_koniq_and_bid_are_resized_as_released():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    for dataset, size in (("koniq-10k", (512, 384)), ("bid", (512, 512))):
        expected = torchvision.transforms.Resize(size)(img)  # the released transform
        protocol = HYPERIQA.views(dataset, True, 25)
        resized = views.resize_as_released(img, protocol)
        assert resized.size == expected.size == (size[1], size[0])
        assert protocol.resized_size(img.height, img.width) == size
        assert np.array_equal(np.asarray(resized), np.asarray(expected))
    assert views.resize_as_released(img, HYPERIQA.views("livec", True, 25)) is img


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_image_is_named_with_its_index(four_images, workers):
    with open(four_images[2].path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageError) as error:
        all_batches(hyperiqa_test_loader(four_images, "csv", 1, 2, num_workers=workers))
    message = str(error.value)
    assert message.startswith("image 2 of the csv test set: ") and four_images[2].path in message
    assert "Traceback" not in message and "\n" not in message


def test_an_image_smaller_than_a_patch_is_named_before_any_batch(tmp_path):
    fake_datasets.write_image(tmp_path / "small.png", seed=0, size=(300, 200))
    sample = Sample(str(tmp_path / "small.png"), 1.0, "small")
    with pytest.raises(ImageError, match=r"image 0 of the livec training set \(.*small\.png\): image of 300x200 pixels "
                                         r"is smaller than the 224x224 crop"):
        hyperiqa_train_loader([sample], "livec", 1, 1)


# -- the released batch composition, on LIVEC's training set size

LIVEC_TRAIN, PATCH_NUM, BATCH = 930, 25, 16
TINY_SIDE, TINY_PATCH = 12, 8  # pixels: tiny images and patches, the batch composition is what matters


def global_shuffle_distinct_images() -> float:
    """Expected distinct images in a full batch of a global shuffle of LIVEC_TRAIN x PATCH_NUM entries:
    N (1 - C(M - P, B) / C(M, B)), each image being absent with that hypergeometric probability."""
    entries = LIVEC_TRAIN * PATCH_NUM
    absent = math.comb(entries - PATCH_NUM, BATCH) / math.comb(entries, BATCH)
    return LIVEC_TRAIN * (1 - absent)


@pytest.fixture(scope="module")
def livec_sized_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("livec_sized")
    rng = np.random.default_rng(0)
    samples = []
    for index in range(LIVEC_TRAIN):
        path = folder / f"{index:04d}.png"
        Image.fromarray(rng.integers(0, 256, (TINY_SIDE, TINY_SIDE, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(str(path), float(index % 100), str(path)))
    return samples


@pytest.mark.parametrize("cache_gib", [data_loader.DEFAULT_CACHE_GIB, 0.0])
def test_batch_composition_is_that_of_the_released_global_shuffle(livec_sized_set, cache_gib):
    decode = CountingDecoder()
    protocol = views.Views(PATCH_NUM, (TINY_PATCH, TINY_PATCH), "horizontal")
    loader = data_loader.ViewLoader(livec_sized_set, "csv", protocol, BATCH, train=True, seed=919,
                                    cache_gib=cache_gib, decode=decode)
    assert loader.window_images == (LIVEC_TRAIN if cache_gib else data_loader.MIN_WINDOW_IMAGES)
    decoded = {s.path: image_to_uint8_tensor(load_image(s.path)) for s in livec_sized_set}
    distinct = []
    for epoch in range(2):
        carried: dict[int, list[bytes]] = {}
        for images, _, index in loader.batches(epoch):
            if len(index) == BATCH:
                distinct.append(len(set(index.tolist())))
            levels = (images * 255).round().to(torch.uint8)
            for i, patch in zip(index.tolist(), levels):
                carried.setdefault(i, []).append(patch.numpy().tobytes())
        # every (image, patch) entry exactly once: each image's carried patches are its 25 crops
        for i, sample in enumerate(livec_sized_set):
            generator = seeding.seeded_generator(919, seeding.TRAIN_PATCHES, 0, epoch, i)
            crops = views.random_views(decoded[sample.path], protocol, generator)
            assert sorted(carried[i]) == sorted(crop.numpy().tobytes() for crop in crops)
        counts = decode.reset()
        assert set(counts.values()) <= {1}  # no image decoded twice in an epoch
        assert len(counts) == (LIVEC_TRAIN if epoch == 0 or not cache_gib else 0)
    assert np.mean(distinct) == pytest.approx(global_shuffle_distinct_images(), rel=0.01)
    assert min(distinct) >= 10
