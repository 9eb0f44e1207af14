"""Image quality data sets: one `Sample(path, mos, content)` per labelled image.

`list_samples(dataset, root)` reads the label files of the released layouts (LIVEC, KonIQ-10k, BID,
LIVE, CSIQ, TID2013), of a generic CSV, or of the locally built synthetic set, and returns one
`Sample(path, mos, content)` per image. Nothing here lists directories: the order is that of the
label file, so it is the same on every machine. Images are decoded by images.load_image; patches,
splits and loaders are in patches.py, splits.py and data_loader.py.
"""
from __future__ import annotations

import csv
import os
from typing import NamedTuple

import numpy as np

import synthetic
from seeding import DEFAULT_SEED

class Sample(NamedTuple):
    path: str  # absolute or root-relative path of the image file
    mos: float  # quality label on the data set's own scale (MOS or DMOS)
    content: str  # reference-image id: images that share it must stay on the same side of a split


DATASETS = ("livec", "koniq-10k", "bid", "live", "csiq", "tid2013", "csv", "synthetic")

# (lowest, highest) value of each data set's label scale. The middle decides the direction of the
# attacks (push a score that is above it down) and the ends bound the R robustness score.
SCORE_RANGES = {
    "livec": (0.0, 100.0),  # MOS
    "koniq-10k": (0.0, 100.0),  # MOS (the `MOS_zscore` column, rescaled to 0-100 by the authors)
    "bid": (0.0, 5.0),  # MOS
    "live": (0.0, 100.0),  # DMOS: higher is worse
    "csiq": (0.0, 1.0),  # DMOS: higher is worse
    "tid2013": (0.0, 9.0),  # MOS
    "csv": (0.0, 100.0),
    "synthetic": (0.0, 100.0),
}
# The data sets whose label is a DMOS: a higher label means a WORSE image. (Elsewhere higher is better.)
HIGHER_IS_WORSE = frozenset({"live", "csiq"})


def score_range(dataset: str, model_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """(low, high) of a model's scores on `dataset`: `model_range` when the model's family scores on a
    scale of its own (`Family.score_range`), else the data set's label scale (SCORE_RANGES; 0-100
    for a data set not listed there)."""
    return model_range if model_range is not None else SCORE_RANGES.get(dataset, (0.0, 100.0))

# What `root` must hold, quoted in every "not found" message.
LAYOUTS = {
    "livec": "Data/AllImages_release.mat, Data/AllMOS_release.mat and Images/ (ChallengeDB_release)",
    "koniq-10k": "koniq10k_scores_and_distributions.csv (columns image_name, MOS_zscore) and 1024x768/",
    "bid": "DatabaseGrades.xlsx (image number, MOS) and the images DatabaseImage%04d.JPG beside it",
    "live": "refimgs/, jp2k/, jpeg/, wn/, gblur/, fastfading/ (img1.bmp, img2.bmp, ...), "
            "dmos_realigned.mat and refnames_all.mat (databaserelease2)",
    "csiq": "csiq_label.txt (lines 'image dmos'), src_imgs/ and dst_imgs_all/",
    "tid2013": "mos_with_names.txt (lines 'mos image'), reference_images/ and distorted_images/",
    "csv": "a CSV file, or a folder holding labels.csv, with columns image (path relative to the CSV) "
           "and mos, and optionally content",
    "synthetic": "nothing: the set is built there from examples/ on first use",
}

# LIVE In the Wild (LIVEC): the release lists 7 extra images first (its trainingImages/); the released
# code skips them, leaving the 1162 images of the data set.
LIVEC_SKIPPED = 7
# LIVE (release 2): the DMOS files list the distorted images of each folder in this order, with
# these counts, as img1.bmp ... imgN.bmp; entries flagged in `orgs` are reference copies (skipped).
LIVE_DISTORTIONS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
# BID: DatabaseGrades.xlsx has a header row, then one row per image (586 images).
BID_IMAGES = 586
CSV_LABELS_FILE = "labels.csv"


def list_samples(dataset: str, root: str | os.PathLike, seed: int = DEFAULT_SEED) -> list[Sample]:
    """Every labelled image of `dataset` under `root`, one Sample per image, in label-file order.

    `content` is the reference image for live, csiq, tid2013 and synthetic (images of one scene must
    stay on one side of a split) and the image path otherwise. `seed` only matters for 'synthetic'
    (the seed of the set built under `root`). Raises ValueError for an unknown
    data set or a malformed label file, FileNotFoundError naming a missing file and the layout.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; valid: {', '.join(DATASETS)}")
    root = os.fspath(root)
    if dataset == "synthetic":
        # builds (or reuses) the set, then it is read as any CSV set
        return _check_images(_csv_samples(os.fspath(synthetic.build_synthetic_dataset(root, seed)), dataset), dataset)
    if dataset == "csv":
        path = os.path.join(root, CSV_LABELS_FILE) if os.path.isdir(root) else root
        return _check_images(_csv_samples(_require(path, dataset), dataset), dataset)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{dataset} folder not found: {root} (expected a folder holding {LAYOUTS[dataset]})")
    readers = {"livec": _livec, "koniq-10k": _koniq, "bid": _bid, "live": _live, "csiq": _csiq, "tid2013": _tid2013}
    return _check_images(readers[dataset](root), dataset)


def _require(path: str, dataset: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; a {dataset} data set holds {LAYOUTS[dataset]}")
    return path


def _check_images(samples: list[Sample], dataset: str) -> list[Sample]:
    """Fail before training starts when the label file names images that are not there."""
    missing = [s.path for s in samples if not os.path.isfile(s.path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(samples)} images of the {dataset} data set are missing, "
                                f"e.g. {missing[0]} (expected layout: {LAYOUTS[dataset]})")
    if not samples:
        raise ValueError(f"the {dataset} data set lists no images")
    return samples


def _label(text: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the label {text!r} is not a number") from None
    if not np.isfinite(value):
        raise ValueError(f"{where}: the label {text!r} is not a finite number")
    return value


def _mat_strings(cells: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings, as scipy.io.loadmat returns it, as a flat list of str."""
    return [str(np.asarray(cell).reshape(-1)[0]) for cell in cells.reshape(-1)]


def _load_mat(path: str, dataset: str, *keys: str) -> list[np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(_require(path, dataset))
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    absent = [key for key in keys if key not in mat]
    if absent:
        raise ValueError(f"{path} has no variable {absent[0]!r} (found: {', '.join(k for k in mat if not k.startswith('__'))})")
    return [mat[key] for key in keys]


def _livec(root: str) -> list[Sample]:
    names_path = os.path.join(root, "Data", "AllImages_release.mat")
    mos_path = os.path.join(root, "Data", "AllMOS_release.mat")
    (names,) = _load_mat(names_path, "livec", "AllImages_release")
    (mos,) = _load_mat(mos_path, "livec", "AllMOS_release")
    names, mos = _mat_strings(names)[LIVEC_SKIPPED:], mos.reshape(-1)[LIVEC_SKIPPED:]
    if len(names) != len(mos):
        raise ValueError(f"{names_path} lists {len(names)} images but {mos_path} has {len(mos)} scores")
    samples = []
    for name, label in zip(names, mos):
        path = os.path.join(root, "Images", name)
        samples.append(Sample(path, _label(label, mos_path), path))
    return samples


def _koniq(root: str) -> list[Sample]:
    path = _require(os.path.join(root, "koniq10k_scores_and_distributions.csv"), "koniq-10k")
    rows = _read_csv(path, ("image_name", "MOS_zscore"))
    samples = []
    for line, row in rows:
        image = os.path.join(root, "1024x768", row["image_name"])
        samples.append(Sample(image, _label(row["MOS_zscore"], f"{path} line {line}"), image))
    return samples


def _bid(root: str) -> list[Sample]:
    path = _require(os.path.join(root, "DatabaseGrades.xlsx"), "bid")
    try:
        from openpyxl import load_workbook
    except ImportError:
        raise ValueError("reading the BID grades (DatabaseGrades.xlsx) needs openpyxl: pip install openpyxl") from None
    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several unrelated types for a damaged file
        raise ValueError(f"cannot read {path}: {exc}") from None
    samples = []
    try:
        for row_number, row in enumerate(workbook.active.iter_rows(min_row=2, max_col=2, values_only=True), start=2):
            number, mos = (tuple(row) + (None, None))[:2]
            if number is None or len(samples) == BID_IMAGES:
                break
            where = f"{path} row {row_number}"
            image = os.path.join(root, "DatabaseImage%04d.JPG" % int(_label(number, where)))
            samples.append(Sample(image, _label(mos, where), image))
    finally:
        workbook.close()
    return samples


def _live(root: str) -> list[Sample]:
    dmos_path = os.path.join(root, "dmos_realigned.mat")
    refnames_path = os.path.join(root, "refnames_all.mat")
    dmos, orgs = _load_mat(dmos_path, "live", "dmos_new", "orgs")
    (refnames,) = _load_mat(refnames_path, "live", "refnames_all")
    paths = [os.path.join(root, folder, f"img{number}.bmp")
             for folder, count in LIVE_DISTORTIONS for number in range(1, count + 1)]
    dmos, orgs, refnames = dmos.reshape(-1), orgs.reshape(-1), _mat_strings(refnames)
    for path, values in ((dmos_path, dmos), (dmos_path, orgs), (refnames_path, refnames)):
        if len(values) != len(paths):
            raise ValueError(f"{path} has {len(values)} entries, expected {len(paths)} "
                             f"({' + '.join(f'{count} {folder}' for folder, count in LIVE_DISTORTIONS)})")
    return [Sample(path, _label(label, dmos_path), ref)
            for path, label, is_reference, ref in zip(paths, dmos, orgs, refnames) if not is_reference]


def _csiq(root: str) -> list[Sample]:
    path = _require(os.path.join(root, "csiq_label.txt"), "csiq")
    samples = []
    for line, (name, label) in _read_columns(path):
        parts = name.split(".")  # scene.distortion.level.png; the reference is scene.png
        samples.append(Sample(os.path.join(root, "dst_imgs_all", name), _label(label, f"{path} line {line}"),
                              parts[0] + "." + parts[-1]))
    return samples


def _tid2013(root: str) -> list[Sample]:
    path = _require(os.path.join(root, "mos_with_names.txt"), "tid2013")
    samples = []
    for line, (label, name) in _read_columns(path):
        reference = name.split("_")[0][1:]  # i01_01_1.bmp: reference image 01
        samples.append(Sample(os.path.join(root, "distorted_images", name), _label(label, f"{path} line {line}"),
                              reference))
    return samples


def _read_columns(path: str) -> list[tuple[int, tuple[str, str]]]:
    """(line number, first two whitespace-separated fields) of each non-empty line of a text file."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line, text in enumerate(f, start=1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"{path} line {line}: expected two fields (image and score), got {text.strip()!r}")
            rows.append((line, (fields[0], fields[1])))
    return rows


def _read_csv(path: str, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of each data row of a CSV file that has the `required` columns."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        absent = [c for c in required if c not in columns]
        if absent:
            raise ValueError(f"{path} has no column {absent[0]!r} (columns: {', '.join(columns) or 'none'}; "
                             f"needed: {', '.join(required)})")
        return [(reader.line_num, row) for row in reader]


def _csv_samples(path: str, dataset: str) -> list[Sample]:
    """Samples of a CSV with columns `image` (relative to the CSV's folder), `mos`, optional `content`."""
    folder = os.path.dirname(path)
    samples = []
    for line, row in _read_csv(path, ("image", "mos")):
        if not (row["image"] or "").strip():
            raise ValueError(f"{path} line {line}: empty image path")
        image = os.path.join(folder, row["image"].strip())
        content = (row.get("content") or "").strip() or image
        samples.append(Sample(image, _label(row["mos"], f"{path} line {line}"), content))
    return samples
