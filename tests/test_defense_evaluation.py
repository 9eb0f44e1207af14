"""evaluate_robustness.py with --defense, --adaptive and --certify, end to end on a tiny CSV data set
with the stand-in model."""
import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import attacks
import defense_evaluation
import defense_scores
import evaluate_robustness
import models
from defenses import parse_defense, quantize_colors
from tests.stand_in import stand_in_quality_model
from tests.test_evaluate_robustness import make_csv_dataset
from tests.test_reliability import run_main


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def evaluate(tmp_path, capsys, monkeypatch):
    """Run the evaluation of the stand-in on 2 images with extra flags: (its JSON report, its folder)."""
    labels, _ = make_csv_dataset(tmp_path / "set", 2)
    monkeypatch.setattr(models, "load_model", lambda path, family, device: stand_in_quality_model().eval())

    def run(name: str, *flags) -> tuple[dict, Path]:
        out = tmp_path / name
        status, _, stderr = run_main(evaluate_robustness, [
            "--dataset", "csv", "--dataset_path", labels, "--split", "all", "--checkpoint", "standin.pth",
            "--attack", "ifgsm", "--eps", "0.02", "--alp", "0.01", "--step", "2", "--patch_num", "1", "--out_dir", out,
            "--device", "cpu", "--no_plot", *flags], capsys, monkeypatch)
        assert status == 0, stderr
        return json.loads((out / "robustness.json").read_text()), out
    return run


def test_a_defense_scores_defended_images_attacked_without_or_with_the_defense_and_certifies(evaluate):
    bare, _ = evaluate("bare")
    defended, out = evaluate("jpeg", "--defense", "jpeg:50", "--certify", "--samples", "30",
                             "--certify_eps", "0.01", "0.05")
    adaptive, _ = evaluate("adaptive", "--jpeg_quality", "50", "--adaptive")
    setting = "ifgsm eps=0.02"
    plain, through, attacked_through = (report["scores"]["standin"] for report in (bare, defended, adaptive))
    # The undefended scores are those of the run without a defense; the non-adaptive attack is the same one.
    assert through["undefended_clean"] == plain["clean"]
    assert through["undefended_attacked"][setting] == plain["attacked"][setting]
    assert attacked_through["undefended_clean"] == plain["clean"]
    assert attacked_through["undefended_attacked"][setting] != plain["attacked"][setting]  # made through the defense
    # The table's clean and attacked columns are the defended images' (the same draws in both runs).
    assert through["clean"] == attacked_through["clean"] and through["clean"] != plain["clean"]
    assert [row["defense"] for row in read_csv(out / "robustness.csv")] == ["jpeg:50"]
    assert (defended["table"][0]["adaptive"], adaptive["table"][0]["adaptive"]) == (False, True)

    clean, attacked = np.array(plain["clean"]), np.array(through["undefended_attacked"][setting])
    defended_clean, defended_attacked = np.array(through["clean"]), np.array(through["attacked"][setting])
    (row,) = defended["defense_scores"]
    assert row["robust_abs_gain"] == pytest.approx(np.abs(clean - defended_attacked).mean() / 100)
    assert row["nonpurified_abs_gain"] == pytest.approx(np.abs(clean - attacked).mean() / 100)
    both_defended = np.mean(np.abs(defended_clean - defended_attacked) / defended_clean)
    assert row["both_defended_rel_gain"] == pytest.approx(both_defended)
    assert row["similarity_score"] == pytest.approx(np.mean(np.array(through["ssim_attacked"][setting])
                                                            + np.array(through["psnr_attacked"][setting]) / 40))
    assert 20 < np.mean(through["psnr_clean"]) < 60 and 0 < np.mean(through["ssim_clean"]) < 1
    assert [r["model"] for r in read_csv(out / "defense_scores.csv")] == ["standin"]

    widths, images = defended["certified"], defended["certified_images"]
    assert [(w["radius"], w["images"], w["samples"]) for w in widths] == [(0.01, 2, 30), (0.05, 2, 30)]
    assert widths[0]["mean_width"] < widths[1]["mean_width"]
    for w in widths:
        mine = [image for image in images if image["radius"] == w["radius"]]
        assert len(mine) == 2 and w["mean_width"] == pytest.approx(np.mean([i["upper"] - i["lower"] for i in mine]))
        assert all(i["lower"] < i["smoothed"] < i["upper"] for i in mine)
        assert w["width_share"] == pytest.approx(w["mean_width"] / 100)
    assert len(read_csv(out / "certified_images.csv")) == 4 and "certified" not in bare


@pytest.mark.parametrize("flags, message", [
    (["--defense", "blur"], "argument --defense: defense blur needs its sigma"),
    (["--jpeg_quality", "96"], "argument --jpeg_quality: defense jpeg: its quality must be between 1 and 95, got 96"),
    (["--adaptive"], "argument --adaptive: needs a --defense"),
    (["--certify", "--confidence", "1"], "argument --confidence: must be below 1")])
def test_bad_defense_flags_are_refused_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_status:
        evaluate_robustness.parse_args(["--checkpoint", "a.pth", "--dataset_path", "x", *flags])
    assert exit_status.value.code == 2 and message in capsys.readouterr().err


def test_records_keep_the_undefended_score_and_compare_the_clean_views_with_the_defended_ones():
    args = argparse.Namespace(defense=parse_defense("quantize:4"), adaptive=False, certify=False, seed=919, eot=8)
    records, model = defense_evaluation.Records(args, 1, 1, 1), stand_in_quality_model().eval()
    clean = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    adversarial = (clean + 0.05).clamp(0, 1)
    assert records.attack_target(model, 0) is model  # not adaptive: the bare model is attacked
    score = records.attacked(0, 0, 0, model, adversarial, clean, 55.0, None)
    defended = quantize_colors(adversarial, 4)
    assert score == pytest.approx(attacks.score_patches(model, defended).mean().item())
    ssim, psnr = defense_scores.view_similarity(clean.numpy(), defended.numpy())
    assert records.arrays["undefended_attacked"][0, 0, 0] == 55.0
    assert records.arrays["ssim_attacked"][0, 0, 0] == pytest.approx(ssim)
    assert records.arrays["psnr_attacked"][0, 0, 0] == pytest.approx(psnr)
