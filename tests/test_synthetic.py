"""The synthetic data set: sizes, labels, determinism from the seed, and the cache."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # the stems of examples/*.jpg
LEVELS = 4
IMAGES_PER_PHOTO = 1 + len(synthetic.DISTORTIONS) * LEVELS
SEED = 919


def read_rows(labels_path: Path) -> list[dict[str, str]]:
    with open(labels_path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def by_name(rows: list[dict[str, str]]) -> dict[tuple[str, str, int], dict[str, str]]:
    return {(row["content"], row["distortion"], int(row["level"])): row for row in rows}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return synthetic.build_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), seed=SEED)


def test_layout_sizes_and_columns(built):
    assert built.name == synthetic.LABELS_FILE
    with open(built, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header[:3] == ["image", "mos", "content"]
    rows = read_rows(built)
    assert len(rows) == len(PHOTOS) * IMAGES_PER_PHOTO == 68
    assert sorted({row["content"] for row in rows}) == list(PHOTOS)
    for content in PHOTOS:
        assert sum(row["content"] == content for row in rows) == IMAGES_PER_PHOTO
    assert len({row["image"] for row in rows}) == len(rows)
    for row in rows:
        path = built.parent / row["image"]  # relative to the CSV
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.mode == "RGB"
            assert img.size == (synthetic.IMAGE_SIDE, synthetic.IMAGE_SIDE) == (256, 256)


def test_labels_fall_with_level_and_pristine_is_best(built):
    rows = by_name(read_rows(built))
    low, high = synthetic.SYNTHETIC_SCORE_RANGE
    assert all(low <= float(row["mos"]) <= high for row in rows.values())
    for content in PHOTOS:
        pristine = float(rows[(content, synthetic.PRISTINE, 0)]["mos"])
        photo_scores = [float(row["mos"]) for key, row in rows.items() if key[0] == content]
        assert pristine == max(photo_scores)
        assert photo_scores.count(pristine) == 1
        for distortion in synthetic.DISTORTIONS:
            scores = [float(rows[(content, distortion.name, level)]["mos"]) for level in range(1, LEVELS + 1)]
            assert all(a > b for a, b in zip([pristine] + scores, scores)), (content, distortion.name, scores)
            # The documented formula, within the jitter.
            for level, score in enumerate(scores, start=1):
                expected = synthetic.PRISTINE_MOS - distortion.mos_drop_per_level * level
                assert abs(score - expected) <= synthetic.MOS_JITTER


def test_distortions_change_the_image_more_at_higher_levels(built):
    rows = by_name(read_rows(built))
    for content in PHOTOS:
        clean = pixels(built.parent / rows[(content, synthetic.PRISTINE, 0)]["image"])
        for distortion in synthetic.DISTORTIONS:
            changes = [np.abs(pixels(built.parent / rows[(content, distortion.name, level)]["image"]) - clean).mean()
                       for level in range(1, LEVELS + 1)]
            assert changes[0] > 0.5, (content, distortion.name)
            assert all(a < b for a, b in zip(changes, changes[1:])), (content, distortion.name, changes)


def test_noise_has_the_documented_strength(built):
    rows = by_name(read_rows(built))
    clean = pixels(built.parent / rows[("coffee", synthetic.PRISTINE, 0)]["image"])
    noisy = pixels(built.parent / rows[("coffee", "noise", 1)]["image"])
    sigma = dict((d.name, d.strengths) for d in synthetic.DISTORTIONS)["noise"][0]
    assert abs((noisy - clean).std() - sigma) < 0.1 * sigma  # level 1 is barely clipped


def test_same_seed_same_files_other_seed_other_noise(built, tmp_path):
    again = synthetic.build_synthetic_dataset(tmp_path / "again", seed=SEED)
    assert again.read_bytes() == built.read_bytes()
    for row in read_rows(built):
        assert np.array_equal(pixels(built.parent / row["image"]), pixels(again.parent / row["image"])), row["image"]

    other = synthetic.build_synthetic_dataset(tmp_path / "other", seed=SEED + 1)
    assert other.read_bytes() != built.read_bytes()
    for row in read_rows(built):
        same = np.array_equal(pixels(built.parent / row["image"]), pixels(other.parent / row["image"]))
        # Only the noise is random; the other distortions depend on the photo and level alone.
        assert same == (row["distortion"] != "noise"), row["image"]


def test_complete_cache_is_reused_without_rewriting(tmp_path):
    root = tmp_path / "cache"
    labels = synthetic.build_synthetic_dataset(root, seed=SEED)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert len(before) == len(PHOTOS) * IMAGES_PER_PHOTO + 2  # images, labels, manifest
    assert synthetic.build_synthetic_dataset(root, seed=SEED) == labels
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert after == before


def test_incomplete_or_stale_cache_is_rebuilt(tmp_path):
    root = tmp_path / "cache"
    labels = synthetic.build_synthetic_dataset(root, seed=SEED)
    reference = labels.read_bytes()
    manifest = root / synthetic.MANIFEST_FILE
    lost_image = root / read_rows(labels)[5]["image"]

    # An interrupted build: the manifest (written last) and an image are missing.
    manifest.unlink()
    lost_image.unlink()
    assert synthetic.build_synthetic_dataset(root, seed=SEED) == labels
    assert manifest.is_file() and lost_image.is_file()
    assert labels.read_bytes() == reference

    # A damaged labels file does not match the manifest's hash.
    labels.write_text("image,mos,content\n", encoding="utf-8")
    synthetic.build_synthetic_dataset(root, seed=SEED)
    assert labels.read_bytes() == reference

    # Another seed replaces the set and records the new seed.
    synthetic.build_synthetic_dataset(root, seed=SEED + 1)
    assert json.loads(manifest.read_text(encoding="utf-8"))["seed"] == SEED + 1
    assert labels.read_bytes() != reference
    assert not list(root.rglob("*.tmp"))


def test_missing_examples_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no example photos"):
        synthetic.example_photos(tmp_path / "nowhere")
