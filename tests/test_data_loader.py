"""Splits, split files, patches and loaders (data_loader.py) on tiny fake data sets."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision

import data_loader
import folders
import models
from folders import ImageError, Sample
from tests import fake_datasets


def scenes(count: int, per_scene: int = 3) -> list[Sample]:
    """In-memory samples (no files needed for splitting): `count` scenes of `per_scene` images."""
    return [Sample(f"s{scene}_{i}.png", float(scene + i), f"scene{scene}") for scene in range(count) for i in range(per_scene)]


def unnormalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(models.IMAGENET_STD).view(1, 3, 1, 1)
    return images * std + mean


# -- splits


@pytest.mark.parametrize("dataset, build", [("live", fake_datasets.make_live), ("csiq", fake_datasets.make_csiq),
                                            ("tid2013", fake_datasets.make_tid2013)])
def test_reference_image_split_keeps_each_scene_on_one_side(tmp_path, dataset, build):
    build(tmp_path)
    samples = folders.list_samples(dataset, tmp_path)
    train, test = data_loader.split_samples(samples, dataset, seed=5)
    assert {s.content for s in train}.isdisjoint({s.content for s in test})
    assert len({s.content for s in train}) == 2 and len({s.content for s in test}) == 1  # round(0.8 * 3)
    assert sorted(train + test) == sorted(samples)


def test_split_by_content_on_a_larger_set_and_rounds_reshuffle():
    samples = scenes(20)
    train, test = data_loader.split_samples(samples, "synthetic", seed=1)
    assert len(train) == 16 * 3 and len(test) == 4 * 3
    assert {s.content for s in train}.isdisjoint({s.content for s in test})
    assert data_loader.split_samples(samples, "synthetic", seed=1) == (train, test)
    assert data_loader.split_samples(samples, "synthetic", seed=1, round_index=1) != (train, test)
    assert data_loader.split_samples(samples, "synthetic", seed=2) != (train, test)


def test_images_split_one_by_one_when_content_is_the_path():
    samples = [Sample(f"{i}.jpg", float(i), f"{i}.jpg") for i in range(10)]
    train, test = data_loader.split_samples(samples, "koniq-10k", seed=0)
    assert len(train) == 8 and len(test) == 2 and not set(train) & set(test)


def test_too_few_images_to_split():
    with pytest.raises(ValueError, match="at least 3 images"):
        data_loader.split_samples(scenes(2), "live")


def test_paper_livec_split_from_a_pickle_first_930_train(tmp_path):
    samples = [Sample(f"{i}.bmp", float(i), f"{i}.bmp") for i in range(1162)]
    order = np.random.default_rng(0).permutation(1162).tolist()
    path = tmp_path / "CLIVE_traintest_index.pkl"
    path.write_bytes(pickle.dumps(order))
    train, test = data_loader.split_samples(samples, "livec", split_file=str(path))
    assert [s.path for s in train] == [f"{i}.bmp" for i in order[:930]]
    assert [s.path for s in test] == [f"{i}.bmp" for i in order[930:]]
    # the same split in every round: the file fixes it
    assert data_loader.split_samples(samples, "livec", round_index=3, split_file=str(path)) == (train, test)


@pytest.mark.parametrize("form", ["json", "numpy_array", "numpy_scalars"])
def test_split_file_forms(tmp_path, form):
    order = [4, 0, 3, 1, 2]
    path = tmp_path / "split"
    if form == "json":
        path.write_text(json.dumps(order))
    elif form == "numpy_array":
        path.write_bytes(pickle.dumps(np.array(order)))
    else:
        path.write_bytes(pickle.dumps([np.int64(i) for i in order]))
    assert data_loader.read_split_file(str(path)) == order


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_split_file_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    RunsCode.marker = marker
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([1, 2, RunsCode()]))
    with pytest.raises(ValueError, match="cannot read split file .*refusing"):
        data_loader.read_split_file(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [("[0, 1, 9]", "index 9, out of range for the 5"),
                                              ("[0, 1, 1]", "more than once"),
                                              ('{"a": 1}', "list of integers"),
                                              ("[0.5, 1]", "list of integers")])
def test_bad_split_files(tmp_path, content, message):
    path = tmp_path / "split.json"
    path.write_text(content)
    samples = [Sample(f"{i}.jpg", 1.0, f"{i}.jpg") for i in range(5)]
    with pytest.raises(ValueError, match=message):
        data_loader.split_samples(samples, "livec", split_file=str(path))


def test_missing_split_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="split file not found: .*nope.pkl"):
        data_loader.read_split_file(str(tmp_path / "nope.pkl"))


# -- patches and loaders


@pytest.fixture
def four_images(tmp_path):
    fake_datasets.make_csv(tmp_path, count=4)
    return folders.list_samples("csv", tmp_path)


def all_batches(loader, epoch=0, start_batch=0):
    return list(loader.batches(epoch, start_batch))


def test_train_batches_shapes_labels_and_normalization(four_images):
    loader = data_loader.make_train_loader(four_images, "csv", patch_num=3, batch_size=5, seed=0)
    batches = all_batches(loader)
    assert len(batches) == len(loader) == 3  # 12 patches: 5 + 5 + 2, the last one smaller as released
    assert [b[0].shape for b in batches] == [(5, 3, 224, 224)] * 2 + [(2, 3, 224, 224)]
    images, mos, index = (torch.cat(parts) for parts in zip(*batches))
    assert images.dtype == torch.float32 and mos.dtype == torch.float32 and index.dtype == torch.int64
    assert sorted(index.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # every patch once
    assert mos.tolist() == pytest.approx([four_images[i].mos for i in index.tolist()])
    pixels = unnormalize(images)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert index.tolist() != sorted(index.tolist())  # patches of different images are mixed


def test_a_patch_is_a_crop_of_the_decoded_image(tmp_path):
    fake_datasets.write_image(tmp_path / "images" / "a.png", seed=1, size=(224, 224))
    sample = Sample(str(tmp_path / "images" / "a.png"), 50.0, "a")
    whole = data_loader.image_to_tensor(folders.load_image(sample.path))
    test_patches = unnormalize(all_batches(data_loader.make_test_loader([sample], "csv", 2, 2))[0][0])
    assert torch.allclose(test_patches, whole.expand(2, -1, -1, -1), atol=1e-5)  # the only 224 crop, no flip
    train_patches = unnormalize(all_batches(data_loader.make_train_loader([sample], "csv", 8, 8, seed=3))[0][0])
    flipped = [torch.allclose(p, whole.flip(-1), atol=1e-5) for p in train_patches]
    assert all(f or torch.allclose(p, whole, atol=1e-5) for f, p in zip(flipped, train_patches))
    assert 0 < sum(flipped) < 8  # random horizontal flips


def test_flipped_crops_mirror_the_crop_at_the_drawn_position():
    # Positions are drawn first (tops, then lefts), flips after them: the patches of a seed are fixed.
    image = torch.arange(3 * 40 * 50).view(3, 40, 50)
    crops = data_loader.random_crops(image, 12, 16, torch.Generator().manual_seed(4), flip=True)
    generator = torch.Generator().manual_seed(4)
    tops = torch.randint(0, 40 - 16 + 1, (12,), generator=generator).tolist()
    lefts = torch.randint(0, 50 - 16 + 1, (12,), generator=generator).tolist()
    flips = (torch.rand(12, generator=generator) < 0.5).tolist()
    assert 0 < sum(flips) < 12
    for crop, top, left, flip in zip(crops, tops, lefts, flips):
        expected = image[:, top:top + 16, left:left + 16]
        assert torch.equal(crop, expected.flip(-1) if flip else expected)


def test_test_batches_keep_images_in_order(four_images):
    loader = data_loader.make_test_loader(four_images, "csv", patch_num=3, batch_size=4)
    index = torch.cat([b[2] for b in all_batches(loader)])
    assert index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_each_image_is_decoded_once_per_epoch(four_images, monkeypatch):
    decoded = []
    monkeypatch.setattr(data_loader, "load_image", lambda path: decoded.append(path) or folders.load_image(path))
    loader = data_loader.make_train_loader(four_images, "csv", patch_num=25, batch_size=16)
    assert sum(len(b[0]) for b in loader.batches(0)) == 100
    assert sorted(decoded) == sorted(s.path for s in four_images)


def test_same_seed_same_patches_whatever_the_workers(four_images):
    def epoch(seed, workers, number=0):
        loader = data_loader.make_train_loader(four_images, "csv", 2, 3, seed=seed, num_workers=workers)
        return torch.cat([b[0] for b in loader.batches(number)]), torch.cat([b[2] for b in loader.batches(number)])

    reference = epoch(7, 0)
    assert all(torch.equal(a, b) for a, b in zip(reference, epoch(7, 0)))
    assert all(torch.equal(a, b) for a, b in zip(reference, epoch(7, 2)))
    assert not torch.equal(reference[0], epoch(8, 0)[0])
    assert not torch.equal(reference[0], epoch(7, 0, number=1)[0])  # new patches every epoch


def test_resuming_inside_an_epoch_gives_the_remaining_batches(four_images, monkeypatch):
    loader = data_loader.PatchLoader(four_images, "csv", patch_num=3, batch_size=2, train=True, seed=1, shuffle_images=2)
    full = all_batches(loader, epoch=2)
    decoded = []
    monkeypatch.setattr(data_loader, "load_image", lambda path: decoded.append(path) or folders.load_image(path))
    rest = all_batches(loader, epoch=2, start_batch=4)
    assert len(rest) == len(full) - 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(full[4:], rest))
    assert len(decoded) == 2  # the first group of two images was consumed entirely: not decoded again


def test_koniq_and_bid_are_resized_as_released():
    img = folders.Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    for dataset, size in (("koniq-10k", (512, 384)), ("bid", (512, 512))):
        expected = torchvision.transforms.Resize(size)(img)  # the released transform
        resized = data_loader.resize_as_released(img, dataset)
        assert resized.size == expected.size == (size[1], size[0])
        assert np.array_equal(np.asarray(resized), np.asarray(expected))
    assert data_loader.resize_as_released(img, "livec") is img


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_image_is_named_with_its_index(four_images, workers):
    with open(four_images[2].path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    loader = data_loader.make_test_loader(four_images, "csv", 1, 2, num_workers=workers)
    with pytest.raises(ImageError) as error:
        all_batches(loader)
    message = str(error.value)
    assert message.startswith("image 2 of the csv test set: ") and four_images[2].path in message
    assert "Traceback" not in message and "\n" not in message


def test_an_image_smaller_than_a_patch_is_named(tmp_path):
    fake_datasets.write_image(tmp_path / "small.png", seed=0, size=(300, 200))
    sample = Sample(str(tmp_path / "small.png"), 1.0, "small")
    with pytest.raises(ImageError, match=r"image 0 of the livec training set \(.*small\.png\): .*300x200.*at least 224"):
        all_batches(data_loader.make_train_loader([sample], "livec", 1, 1))
