"""folders.list_samples on tiny fake copies of every released data set layout (tests/fake_datasets.py)."""
import csv
import os

import pytest

import folders
from tests import fake_datasets

BUILDERS = {
    "livec": (fake_datasets.make_livec, "Images"),
    "koniq-10k": (fake_datasets.make_koniq, "1024x768"),
    "bid": (fake_datasets.make_bid, ""),
    "live": (fake_datasets.make_live, ""),
    "csiq": (fake_datasets.make_csiq, "dst_imgs_all"),
    "tid2013": (fake_datasets.make_tid2013, "distorted_images"),
}
BY_REFERENCE = ("live", "csiq", "tid2013")


@pytest.mark.parametrize("dataset", sorted(BUILDERS))
def test_released_layouts_give_paths_labels_and_content(tmp_path, dataset):
    build, image_folder = BUILDERS[dataset]
    written = build(tmp_path / dataset)
    samples = folders.list_samples(dataset, tmp_path / dataset)
    assert [s.path for s in samples] == [os.path.join(tmp_path / dataset, image_folder, name) if image_folder
                                         else os.path.join(tmp_path / dataset, name) for name, _, _ in written]
    assert [s.mos for s in samples] == pytest.approx([mos for _, mos, _ in written])
    if dataset in BY_REFERENCE:
        assert [s.content for s in samples] == [content for _, _, content in written]
    else:
        assert [s.content for s in samples] == [s.path for s in samples]
    assert folders.list_samples(dataset, tmp_path / dataset) == samples  # deterministic


def test_livec_skips_the_seven_training_entries_of_the_release(tmp_path):
    fake_datasets.make_livec(tmp_path, count=5)
    samples = folders.list_samples("livec", tmp_path)
    assert len(samples) == 5
    assert not any("trainingImages" in s.path for s in samples)
    assert samples[0].mos == 90.0  # the 8th entry of AllMOS_release, not the 1st (1.0)


def test_live_keeps_distorted_images_only_with_their_reference(tmp_path):
    fake_datasets.make_live(tmp_path)
    samples = folders.list_samples("live", tmp_path)
    assert len(samples) == 6  # 976 of the 982 DMOS entries are flagged as reference copies
    assert samples[2].path.endswith(os.path.join("jpeg", "img1.bmp"))  # entry 227 is jpeg/img1.bmp
    assert [s.content for s in samples] == ["bikes.bmp"] * 2 + ["house.bmp"] * 2 + ["sail.bmp"] * 2


def test_csiq_and_tid2013_reference_ids(tmp_path):
    fake_datasets.make_csiq(tmp_path / "csiq")
    fake_datasets.make_tid2013(tmp_path / "tid")
    assert {s.content for s in folders.list_samples("csiq", tmp_path / "csiq")} == {"1600.png", "boston.png", "fisher.png"}
    assert [s.content for s in folders.list_samples("tid2013", tmp_path / "tid")] == ["01", "01", "02", "02", "03", "03"]


def test_csv_from_a_file_or_a_folder_with_optional_content(tmp_path):
    fake_datasets.make_csv(tmp_path / "plain", count=3)
    from_folder = folders.list_samples("csv", tmp_path / "plain")
    assert from_folder == folders.list_samples("csv", tmp_path / "plain" / "labels.csv")
    assert from_folder[1].path == os.path.join(tmp_path / "plain", "images", "img01.png")
    assert from_folder[1].content == from_folder[1].path
    fake_datasets.make_csv(tmp_path / "scenes", count=4, contents=["a", "a", "b", "c"], labels_name="my.csv")
    assert [s.content for s in folders.list_samples("csv", tmp_path / "scenes" / "my.csv")] == ["a", "a", "b", "c"]


def test_synthetic_is_built_then_read_as_a_csv_set(tmp_path):
    synthetic = pytest.importorskip("synthetic")
    samples = folders.list_samples("synthetic", tmp_path / "synth", seed=3)
    with open(synthetic.build_synthetic_dataset(tmp_path / "synth", seed=3), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(samples) == len(rows) > 0
    assert [s.content for s in samples] == [row["content"] for row in rows]
    assert all(os.path.isfile(s.path) for s in samples)


def test_score_ranges_cover_every_data_set():
    assert set(folders.SCORE_RANGES) == set(folders.DATASETS)
    assert folders.SCORE_RANGES["livec"] == (0, 100) and folders.SCORE_RANGES["csiq"] == (0, 1)
    assert all(low < high for low, high in folders.SCORE_RANGES.values())


def test_unknown_data_set_lists_the_valid_names(tmp_path):
    with pytest.raises(ValueError, match="valid: livec, koniq-10k, bid, live, csiq, tid2013, csv, synthetic"):
        folders.list_samples("clive", tmp_path)


@pytest.mark.parametrize("dataset, label_file", [
    ("livec", "AllImages_release.mat"), ("koniq-10k", "koniq10k_scores_and_distributions.csv"),
    ("bid", "DatabaseGrades.xlsx"), ("live", "dmos_realigned.mat"), ("csiq", "csiq_label.txt"),
    ("tid2013", "mos_with_names.txt"), ("csv", "labels.csv")])
def test_missing_label_file_is_named_with_the_expected_layout(tmp_path, dataset, label_file):
    with pytest.raises(FileNotFoundError) as error:
        folders.list_samples(dataset, tmp_path)
    assert label_file in str(error.value)
    assert folders.LAYOUTS[dataset] in str(error.value)


def test_missing_folder_and_missing_image_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="livec folder not found: .*nowhere"):
        folders.list_samples("livec", tmp_path / "nowhere")
    fake_datasets.make_livec(tmp_path / "livec", count=3)
    os.remove(tmp_path / "livec" / "Images" / "11.JPG")
    with pytest.raises(FileNotFoundError, match=r"1 of the 3 images .* missing, e\.g\. .*11\.JPG"):
        folders.list_samples("livec", tmp_path / "livec")


@pytest.mark.parametrize("label", ["good", "nan", ""])
def test_a_bad_label_names_the_file_and_line(tmp_path, label):
    fake_datasets.make_csv(tmp_path, count=2)
    (tmp_path / "labels.csv").write_text(f"image,mos\nimages/img00.png,50\nimages/img01.png,{label}\n")
    with pytest.raises(ValueError, match=r"labels\.csv line 3: the label .* not a (finite )?number"):
        folders.list_samples("csv", tmp_path)


def test_csv_without_the_required_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("file,score\na.png,3\n")
    with pytest.raises(ValueError, match="no column 'image'.*needed: image, mos"):
        folders.list_samples("csv", tmp_path)
