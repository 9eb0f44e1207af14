"""Splits and split files (splits.py) on tiny fake data sets and in-memory samples."""
import json
import os
import pickle

import numpy as np
import pytest

import folders
import splits
from folders import Sample
from tests import fake_datasets


def scenes(count: int, per_scene: int = 3) -> list[Sample]:
    """In-memory samples (no files needed for splitting): `count` scenes of `per_scene` images."""
    return [Sample(f"s{scene}_{i}.png", float(scene + i), f"scene{scene}") for scene in range(count) for i in range(per_scene)]


@pytest.mark.parametrize("dataset, build", [("live", fake_datasets.make_live), ("csiq", fake_datasets.make_csiq),
                                            ("tid2013", fake_datasets.make_tid2013)])
def test_reference_image_split_keeps_each_scene_on_one_side(tmp_path, dataset, build):
    build(tmp_path)
    samples = folders.list_samples(dataset, tmp_path)
    train, test = splits.split_samples(samples, dataset, seed=5)
    assert {s.content for s in train}.isdisjoint({s.content for s in test})
    assert len({s.content for s in train}) == 2 and len({s.content for s in test}) == 1  # round(0.8 * 3)
    assert sorted(train + test) == sorted(samples)


def test_split_by_content_on_a_larger_set_and_rounds_reshuffle():
    samples = scenes(20)
    train, test = splits.split_samples(samples, "synthetic", seed=1)
    assert len(train) == 16 * 3 and len(test) == 4 * 3
    assert {s.content for s in train}.isdisjoint({s.content for s in test})
    assert splits.split_samples(samples, "synthetic", seed=1) == (train, test)
    assert splits.split_samples(samples, "synthetic", seed=1, round_index=1) != (train, test)
    assert splits.split_samples(samples, "synthetic", seed=2) != (train, test)


def test_images_split_one_by_one_when_content_is_the_path():
    samples = [Sample(f"{i}.jpg", float(i), f"{i}.jpg") for i in range(10)]
    train, test = splits.split_samples(samples, "koniq-10k", seed=0)
    assert len(train) == 8 and len(test) == 2 and not set(train) & set(test)


def test_too_few_images_to_split():
    with pytest.raises(ValueError, match="at least 3 images"):
        splits.split_samples(scenes(2), "live")


def test_paper_livec_split_from_a_pickle_first_930_train(tmp_path):
    samples = [Sample(f"{i}.bmp", float(i), f"{i}.bmp") for i in range(1162)]
    order = np.random.default_rng(0).permutation(1162).tolist()
    path = tmp_path / "CLIVE_traintest_index.pkl"
    path.write_bytes(pickle.dumps(order))
    train, test = splits.split_samples(samples, "livec", split_file=str(path))
    assert [s.path for s in train] == [f"{i}.bmp" for i in order[:930]]
    assert [s.path for s in test] == [f"{i}.bmp" for i in order[930:]]
    # the same split in every round: the file fixes it
    assert splits.split_samples(samples, "livec", round_index=3, split_file=str(path)) == (train, test)


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
    assert splits.read_split_file(str(path)) == order


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_split_file_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    RunsCode.marker = marker
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([1, 2, RunsCode()]))
    with pytest.raises(ValueError, match="cannot read split file .*refusing"):
        splits.read_split_file(str(path))
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
        splits.split_samples(samples, "livec", split_file=str(path))


def test_missing_split_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="split file not found: .*nope.pkl"):
        splits.read_split_file(str(tmp_path / "nope.pkl"))
