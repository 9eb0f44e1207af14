"""evaluate_robustness.py end to end on tiny fake data sets, through the command line."""
import csv
import json

import numpy as np
import pytest
import torch

import folders
import metrics
from evaluate_robustness import COLUMNS
from images import tensor_to_image
from splits import split_samples

def make_csv_dataset(folder, count: int) -> tuple:
    """`count` noise images of 240x232 pixels (smoother ones get a higher MOS) and labels.csv."""
    folder.mkdir()
    torch.manual_seed(0)
    rows = []
    for index in range(count):
        coarse = torch.rand(3, 240 // (2 + 4 * index) + 1, 232 // (2 + 4 * index) + 1)
        image = torch.nn.functional.interpolate(coarse[None], size=(240, 232), mode="bilinear")[0]
        tensor_to_image(image).save(folder / f"img{index}.png")
        rows.append((f"img{index}.png", 30.0 + 10 * index))
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "mos"), *rows])
    return folder / "labels.csv", [mos for _, mos in rows]


def test_two_checkpoints_on_a_csv_dataset(tmp_path, recipe_checkpoints, run_cli):
    labels, mos = make_csv_dataset(tmp_path / "set", 3)
    down, up = recipe_checkpoints["fc5b_offset_50"], recipe_checkpoints["fc5b_offset_40"]  # scores ~52 and ~42
    out = tmp_path / "out"
    (run,) = run_cli(["evaluate_robustness.py", "--dataset", "csv", "--dataset_path", labels, "--split", "all",
                      "--checkpoint", down, up, "--attack", "ifgsm", "--patch_num", "1", "--out_dir", out,
                      "--device", "cpu"])
    assert run.returncode == 0, run.stderr
    assert "[3/3]" in run.stderr  # progress

    with open(out / "robustness.csv", newline="") as f:
        table = list(csv.DictReader(f))
    report = json.loads((out / "robustness.json").read_text())
    assert [row["model"] for row in table] == ["fc5b_offset_50", "fc5b_offset_40"]
    assert list(table[0]) == list(COLUMNS)
    assert [image["mos"] for image in report["images"]] == mos

    for row, name, sign in zip(report["table"], ("fc5b_offset_50", "fc5b_offset_40"), (-1, 1)):
        scores = report["scores"][name]
        clean, attacked = np.array(scores["clean"]), np.array(scores["attacked"]["ifgsm eps=0.03"])
        assert (np.sign(attacked - clean) == sign).all()  # pushed away from the middle, 50
        assert row["clean_srocc"] == pytest.approx(metrics.srocc(clean, mos))
        assert row["attacked_plcc"] == pytest.approx(metrics.plcc(attacked, mos))
        assert row["krocc"] == pytest.approx(metrics.krocc(clean, attacked))
        assert row["mae"] == pytest.approx(np.abs(attacked - clean).mean())
        assert row["R"] == pytest.approx(metrics.robustness_r(clean, attacked, 0, 100))
        assert row["grad_norm"] == pytest.approx(np.mean(scores["grad_norm"]))
        assert (row["images"], row["eps"], row["alpha"], row["steps"]) == (3, 0.03, 0.01, 1)
    assert "fc5b_offset_40" in run.stdout and "grad_norm" in run.stdout


def test_several_attacks_and_eps_give_one_row_each(tmp_path, hyperiqa_checkpoint, run_cli):
    labels, _ = make_csv_dataset(tmp_path / "set", 1)
    out = tmp_path / "out"
    (run,) = run_cli(["evaluate_robustness.py", "--dataset", "csv", "--dataset_path", labels, "--split", "all",
                      "--checkpoint", hyperiqa_checkpoint, "--attack", "fgsm", "pgd", "--eps", "0.01", "0.02",
                      "--alp", "0.005", "--step", "2", "--patch_num", "1", "--out_dir", out, "--device", "cpu"])
    assert run.returncode == 0, run.stderr
    table = json.loads((out / "robustness.json").read_text())["table"]
    assert [(r["attack"], r["eps"], r["alpha"], r["steps"]) for r in table] == [
        ("fgsm", 0.01, 0.01, 1), ("fgsm", 0.02, 0.02, 1), ("pgd", 0.01, 0.005, 2), ("pgd", 0.02, 0.005, 2)]
    assert all(r["srocc"] is None and r["clean_srocc"] is None for r in table)  # undefined for one image
    assert all(r["mae"] > 0 and np.isfinite(r["R"]) for r in table)


def test_a_bad_image_of_the_test_split_is_named_with_its_index(tmp_path, hyperiqa_checkpoint, run_cli):
    labels, _ = make_csv_dataset(tmp_path / "set", 5)
    _, test = split_samples(folders.list_samples("csv", labels), "csv", seed=919)
    with open(test[0].path, "r+b") as f:
        f.truncate(100)
    (run,) = run_cli(["evaluate_robustness.py", "--dataset", "csv", "--dataset_path", labels,
                      "--checkpoint", hyperiqa_checkpoint, "--patch_num", "1", "--out_dir", tmp_path / "out"])
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("evaluate_robustness.py: error: image 0 of the csv test set")
    assert test[0].path in error
