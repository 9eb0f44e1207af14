"""Train/test (and validation) splits of a data set, and the reading of split files.

The units of a split are the distinct `content` values of the samples: the reference images for
live, csiq, tid2013 and synthetic (no scene on both sides), single images otherwise. The paper's
LIVEC split comes as a pickled list of 1162 image indices (the first 930 for training); it is read
without running any pickle code (safe_pickle.load_data: plain data and NumPy arrays only). A family
that selects its checkpoint on a validation split (LinearityIQA) cuts the same unit order in three
(`split_with_validation`; KonIQ-10k's 7058 / 1000 / 2015); `round_split` gives each family its split.
"""
from __future__ import annotations

import json
import pickle
from typing import NamedTuple, Sequence

import numpy as np

import folders
import safe_pickle
from folders import Sample
from seeding import DEFAULT_SEED, SPLIT, derived_seed

TRAIN_RATIO = 0.8  # share of the units (images, or reference images) used for training


class Split(NamedTuple):
    train: list[Sample]
    test: list[Sample]
    validation: list[Sample] | None = None  # where the checkpoint is selected; None: on `test`


def _units_in_order(samples: Sequence[Sample], dataset: str, seed: int, round_index: int,
                    split_file: str | None) -> tuple[list[list[int]], list[int]]:
    """(the positions in `samples` of each unit, the order of the units): read from `split_file`, or
    a permutation seeded by (seed, round_index)."""
    if dataset not in folders.DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; valid: {', '.join(folders.DATASETS)}")
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
        order = np.random.default_rng(derived_seed(seed, SPLIT, round_index)).permutation(len(groups)).tolist()
    return groups, order


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
    if not 0 < train_ratio < 1:
        raise ValueError(f"train_ratio must be between 0 and 1, got {train_ratio}")
    groups, order = _units_in_order(samples, dataset, seed, round_index, split_file)
    train_units = int(round(train_ratio * len(order)))  # Python's round, as released
    if not 0 < train_units < len(order):
        raise ValueError(f"cannot split {len(order)} unit(s) of {dataset} into non-empty training and test sets; "
                         "the data set needs at least 3 images (3 reference images for live, csiq, tid2013, synthetic)")
    train = [samples[i] for unit in order[:train_units] for i in groups[unit]]
    test = [samples[i] for unit in order[train_units:] for i in groups[unit]]
    return train, test


def split_with_validation(samples: Sequence[Sample], dataset: str, shares: tuple[float, float],
                          seed: int = DEFAULT_SEED, round_index: int = 0, split_file: str | None = None) -> Split:
    """Split `samples` into training, validation and test lists, as the released LinearityIQA does.

    The units and their order are those of `split_samples` (a split file, or the seeded permutation of
    the round); with shares (train, train_and_validation), the first int(train x units) units train
    (Python's int: KonIQ-10k's 7058/10073 of its 10073 images gives 7058), the units up to
    int(train_and_validation x units) validate, the rest test. ValueError when a part would be empty.
    """
    train_share, train_and_validation = shares
    if not 0 < train_share < train_and_validation < 1:
        raise ValueError(f"split shares must satisfy 0 < train < train + validation < 1, got {shares}")
    groups, order = _units_in_order(samples, dataset, seed, round_index, split_file)
    ends = (int(train_share * len(order)), int(train_and_validation * len(order)))
    if not 0 < ends[0] < ends[1] < len(order):
        raise ValueError(f"cannot split {len(order)} unit(s) of {dataset} into non-empty training, validation and "
                         f"test sets by the shares {train_share:.4f} and {train_and_validation:.4f} (the first "
                         f"{ends[0]} units train, up to {ends[1]} validate); the data set needs more images")

    def part(units: list[int]) -> list[Sample]:
        return [samples[i] for unit in units for i in groups[unit]]

    return Split(part(order[:ends[0]]), part(order[ends[1]:]), part(order[ends[0]:ends[1]]))


def round_split(samples: Sequence[Sample], dataset: str, seed: int = DEFAULT_SEED, round_index: int = 0,
                split_file: str | None = None, validation_shares: tuple[float, float] | None = None) -> Split:
    """The split of round `round_index` for a family: with `validation_shares` (Family.validation_shares
    of the data set) training, validation and test (`split_with_validation`), else training and test
    (`split_samples`), the checkpoint then being selected on the test split."""
    if validation_shares is None:
        return Split(*split_samples(samples, dataset, seed, round_index, split_file=split_file))
    return split_with_validation(samples, dataset, validation_shares, seed, round_index, split_file)


def read_split_file(path: str) -> list[int]:
    """The list of integer indices stored in `path`: JSON (a list) or a pickle of a list/array of ints.

    The pickle is read without running code (safe_pickle.load_data: containers, numbers and NumPy
    arrays; any other class or function it names is refused). Raises FileNotFoundError, or
    ValueError naming the file and what is wrong with it.
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
            values = safe_pickle.load_data(data)
    except safe_pickle.PickleRefused as exc:
        raise ValueError(f"cannot read split file {path}: refusing it, {exc} (a split file holds a list of "
                         "integers)") from None
    except (pickle.UnpicklingError, ValueError, EOFError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"cannot read split file {path} (expected a JSON list or a pickled list of integers): {exc}") from None
    if isinstance(values, np.ndarray):
        values = values.tolist() if values.ndim == 1 and values.dtype.kind in "iu" else None
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"split file {path} must hold a non-empty list of integers")
    return [int(v) for v in values]
