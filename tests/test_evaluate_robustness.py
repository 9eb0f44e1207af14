"""evaluate_robustness.py end to end on tiny fake data sets, through the command line."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attacks
import evaluate_robustness
import folders
import metrics
import models
from data_loader import make_test_loader
from evaluate_robustness import COLUMNS, SUMMARY_COLUMNS
from images import tensor_to_image
from splits import split_samples
from tests.stand_in import StandInScoreModel
from tests.test_reliability import run_main

HYPERIQA = models.get_family("hyperiqa")
SCORE_TOL = 1e-4  # score units: float32 scores of the same images computed in another order

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


def ranks(values) -> np.ndarray:
    """Ranks 0..n-1 of distinct values."""
    return np.argsort(np.argsort(values)).astype(np.float64)


def kendall_tau(a, b) -> float:
    """Kendall's tau of two lists without ties: (concordant - discordant pairs) / all pairs."""
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    return sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in pairs) / len(pairs)


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
        # Each metric written out here from its definition, not with metrics.py
        assert row["clean_srocc"] == pytest.approx(np.corrcoef(ranks(clean), ranks(mos))[0, 1])
        assert row["attacked_plcc"] == pytest.approx(np.corrcoef(attacked, mos)[0, 1])
        assert row["krocc"] == pytest.approx(kendall_tau(clean, attacked))
        assert row["mae"] == pytest.approx(np.abs(attacked - clean).mean())
        room, change = np.maximum(100 - clean, clean - 0), np.maximum(np.abs(attacked - clean), 1e-5 * 100)
        assert row["R"] == pytest.approx(np.mean(np.log10(room / change)))
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
    scores = json.loads((out / "robustness.json").read_text())["scores"]["hyperiqa"]
    (clean,) = scores["clean"]
    for r in table:
        (attacked,) = scores["attacked"][f"{r['attack']} eps={r['eps']}"]
        assert r["mae"] == pytest.approx(abs(attacked - clean)) and r["mae"] > 0
        # R of one image on the 0-100 scale: log10(room to the far end / score change)
        assert r["R"] == pytest.approx(np.log10(max(100 - clean, clean) / abs(attacked - clean)))


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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_sweep_gives_integral_scores_and_plots_and_no_plot_skips_them(tmp_path, capsys, monkeypatch):
    labels, _ = make_csv_dataset(tmp_path / "set", 3)
    spreads = {"smooth": 20.0, "steep": 200.0}  # two stand-in "checkpoints" of different sensitivity
    monkeypatch.setattr(models, "load_model", lambda path, family, device:
                        HYPERIQA.quality_model(StandInScoreModel(spreads[Path(path).stem]).eval()))
    out = tmp_path / "out"
    argv = ["--dataset", "csv", "--dataset_path", labels, "--split", "all", "--checkpoint", "smooth.pth", "steep.pth",
            "--attack", "fgsm", "square", "--eps", "0.02", "0.01", "--queries", "3", "--patch_num", "1",
            "--out_dir", out, "--device", "cpu"]
    status, stdout, stderr = run_main(evaluate_robustness, argv, capsys, monkeypatch)
    assert status == 0, stderr
    assert "Integral robustness" in stdout

    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert list(summary[0]) == list(SUMMARY_COLUMNS) and sum("integral" in c for c in SUMMARY_COLUMNS) == 2
    report = json.loads((out / "robustness.json").read_text())
    assert [(r["model"], r["attack"]) for r in report["summary"]] == [
        ("smooth", "fgsm"), ("smooth", "square"), ("steep", "fgsm"), ("steep", "square")]
    assert report["settings"]["square_queries"] == 3
    for row in report["summary"]:
        scores = report["scores"][row["model"]]
        clean = np.array(scores["clean"])
        attacked = [np.array(scores["attacked"][f"{row['attack']} eps={eps}"]) for eps in (0.01, 0.02)]
        srocc = [metrics.srocc(clean, a) for a in attacked]
        change = [np.abs(a - clean).mean() for a in attacked]
        # trapezoids from (0, 1) over [0, 0.02], divided by 0.02
        assert row["integral_srocc"] == pytest.approx(((1 + srocc[0]) / 2 + (srocc[0] + srocc[1]) / 2) / 2)
        stability = [1 - c / 100 for c in change]
        assert row["integral_stability"] == pytest.approx(((1 + stability[0]) / 2 + (stability[0] + stability[1]) / 2) / 2)
        assert (row["eps_max"], row["eps_count"], row["images"]) == (0.02, 2, 3)
        assert row["mae_at_eps_max"] == pytest.approx(change[1])
    for row in report["table"]:  # the agreement of clean and attacked scores, from the definitions
        scores = report["scores"][row["model"]]
        clean, attacked = np.array(scores["clean"]), np.array(scores["attacked"][f"{row['attack']} eps={row['eps']}"])
        assert row["krocc"] == pytest.approx(kendall_tau(clean, attacked))
        assert row["srocc"] == pytest.approx(np.corrcoef(ranks(clean), ranks(attacked))[0, 1])
    assert any(row["krocc"] != pytest.approx(row["srocc"]) for row in report["table"])  # tau and rho differ here
    steep_fgsm, smooth_fgsm = report["summary"][2], report["summary"][0]
    assert steep_fgsm["integral_stability"] < smooth_fgsm["integral_stability"] < 1

    # The attacked score is that of the adversarial image as saved: rounded to 8 bits, here by numpy.
    views = HYPERIQA.views("csv", False, 1)
    loader = make_test_loader(folders.list_samples("csv", labels), "csv", views, 1)
    unrounded_gap = 0.0
    for name in ("smooth", "steep"):
        model = HYPERIQA.quality_model(StandInScoreModel(spreads[name])).eval()  # as scored: BatchNorm in eval mode
        for index in range(3):
            pixels = loader.patches_of(index).float() / 255
            adversarial = attacks.fgsm(model, pixels, eps=0.02, middle=50.0).adversarial
            saved = torch.from_numpy(np.round(adversarial.numpy() * 255).astype(np.uint8)).float() / 255
            reported = report["scores"][name]["attacked"]["fgsm eps=0.02"][index]
            with torch.no_grad():
                assert reported == pytest.approx(model(saved).mean().item(), abs=SCORE_TOL), (name, index)
                unrounded_gap = max(unrounded_gap, abs(reported - model(adversarial).mean().item()))
    assert unrounded_gap > 20 * SCORE_TOL  # rounding matters here: scoring the unrounded image would fail

    for name, (min_width, min_height) in (("robustness_vs_eps.png", (600, 300)), ("score_shift.png", (600, 250))):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(out / name) as picture:
            assert picture.width >= min_width and picture.height >= min_height, name

    quiet = tmp_path / "quiet"
    status, _, stderr = run_main(evaluate_robustness, [
        "--dataset", "csv", "--dataset_path", labels, "--split", "all", "--checkpoint", "smooth.pth", "--attack", "fgsm",
        "--limit", "2", "--patch_num", "1", "--out_dir", quiet, "--device", "cpu", "--no_plot"], capsys, monkeypatch)
    assert status == 0, stderr
    assert (quiet / "summary.csv").exists() and not list(quiet.glob("*.png"))


def test_an_eps_given_twice_is_refused():
    with pytest.raises(SystemExit):
        evaluate_robustness.parse_args(["--checkpoint", "a.pth", "--dataset_path", "x", "--eps", "0.01", "0.01"])
