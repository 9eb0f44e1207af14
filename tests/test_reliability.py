"""Bad input and failures as a user meets them, through the scripts' command lines: a subprocess of
the script, or its `main` run by cli.run_main in this process (the same code path, much faster).

Images (missing, a directory, empty, truncated, not an image, an unsupported format; the modes that
are converted; images smaller than a patch), checkpoints (missing, another architecture, a pickle
that would run code, truncated), training (divergence, a crash while saving), invalid arguments and
determinism. tests/test_training.py holds Ctrl-C and --resume, tests/test_checkpoints.py the loading
functions themselves.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import evaluate_robustness
import FGSM_demo
import checkpoints
import folders
import HyperIQASolver
import images
import models
import quality_and_norm_demo
import train_test_IQA_sparsity
from splits import split_samples
from tests import fake_datasets
from tests.stand_in import StandInScoreModel
from train_config import TrainConfig, resume_state_path

HYPERIQA = models.get_family("hyperiqa")

RTOL = 1e-4
TINY_TRAINING = ["--no_pretrained", "--train_patch_num", "1", "--test_patch_num", "1", "--batch_size", "2",
                 "--num_workers", "0", "--device", "cpu"]


def run_main(script, argv: list, capsys, monkeypatch) -> tuple[int, str, str]:
    """`script.main` run as its command line runs it (parse_args, then cli.run_main):
    (exit status, stdout, stderr)."""
    monkeypatch.delenv("HYPERIQA_DEBUG", raising=False)
    args = script.parse_args([str(a) for a in argv])
    with pytest.raises(SystemExit) as exit_status:
        cli.run_main(script.main, args)
    captured = capsys.readouterr()
    return exit_status.value.code, captured.out, captured.err


def error_line(status: int, stderr: str) -> str:
    """The one-line error of a failed run: exit status 1, no traceback."""
    assert status == 1, stderr
    assert "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    assert ": error: " in line
    return line


def write_png(path, side: int = 224, seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    """A noise PNG of `size` (width, height), or `side` x `side`."""
    path = Path(path)
    fake_datasets.write_image(path, seed=seed, size=size or (side, side))
    return path


def use_model(monkeypatch, model: torch.nn.Module) -> None:
    """Make the training script train `model` instead of a fresh HyperIQA."""
    monkeypatch.setattr(HyperIQASolver, "build_network", lambda *args, **kwargs: model)


# -- images


def truncated_png(path):
    write_png(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


HEIC_HEADER = b"\x00\x00\x00\x14ftypheic\x00\x00\x00\x00heic\x00\x00\x00\x08free"  # an iPhone photo's first box

BAD_IMAGES = {  # name: (how to make it under tmp_path, the problem the error line states)
    "missing": (lambda path: None, "image not found: {path}"),
    "directory": (lambda path: path.mkdir(), "expected an image file, got a directory: {path}"),
    "empty": (lambda path: path.write_bytes(b""), "image file is empty: {path}"),
    "truncated": (truncated_png, "cannot decode image {path}: image file is truncated"),
    "not an image": (lambda path: path.write_text("MOS,image\n"), "not an image, or a format Pillow cannot read: {path}"),
    "unsupported format": (lambda path: path.write_bytes(HEIC_HEADER), "unsupported image format .heic: {path}"),
}


@pytest.mark.parametrize("problem", sorted(BAD_IMAGES))
def test_a_bad_image_is_one_line_naming_the_file_and_the_problem(tmp_path, capsys, monkeypatch, problem):
    make, expected = BAD_IMAGES[problem]
    path = tmp_path / ("photo.heic" if problem == "unsupported format" else "photo.png")
    make(path)
    status, _, stderr = run_main(FGSM_demo, ["--img_name", path, "--checkpoint", tmp_path / "unused.pth",
                                             "--save_dir", tmp_path / "adv", "--device", "cpu"], capsys, monkeypatch)
    assert expected.format(path=path) in error_line(status, stderr)
    assert len(stderr.strip().splitlines()) == 1


def mode_images(folder) -> dict[str, np.ndarray]:
    """224x224 images in the modes that must be converted, written to `folder`; returns, per file name,
    the 8-bit RGB pixels (224, 224, 3) each must become, computed here without Pillow's conversions."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (224, 224), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (224, 224), dtype=np.uint16)
    alpha = rng.integers(0, 256, (224, 224, 1), dtype=np.uint8)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    indices = rng.integers(0, 16, (224, 224), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)

    Image.fromarray(gray, mode="L").save(folder / "gray.png")
    paletted = Image.fromarray(indices, mode="P")
    paletted.putpalette(palette.reshape(-1).tolist())
    paletted.save(folder / "palette.png")
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA").save(folder / "rgba.png")
    cmyk = np.concatenate([255 - rgb, np.zeros_like(alpha)], axis=2)  # no black: RGB = 255 - CMY exactly
    Image.frombytes("CMYK", (224, 224), cmyk.tobytes()).save(folder / "cmyk.tif")
    Image.fromarray(gray16).save(folder / "gray16.png")
    assert [Image.open(folder / name).mode for name in ("gray.png", "palette.png", "rgba.png", "cmyk.tif", "gray16.png")] \
        == ["L", "P", "RGBA", "CMYK", "I;16"]
    level16 = np.round(gray16 / 257.0).astype(np.uint8)  # 0-65535 -> 0-255
    return {"cmyk.tif": rgb, "gray.png": np.repeat(gray[..., None], 3, axis=2),
            "gray16.png": np.repeat(level16[..., None], 3, axis=2), "palette.png": palette[indices], "rgba.png": rgb}


def test_grayscale_palette_rgba_cmyk_and_16_bit_images_become_8_bit_rgb(tmp_path):
    for name, expected in mode_images(tmp_path).items():
        img = images.load_image(tmp_path / name)
        assert img.mode == "RGB", name
        assert np.array_equal(np.asarray(img), expected), name


def test_every_mode_trains_through_the_command_line(tmp_path, capsys, monkeypatch):
    expected = mode_images(tmp_path / "data")
    with open(tmp_path / "data" / "labels.csv", "w") as f:
        f.write("image,mos\n" + "".join(f"{name},{10 * (i + 1)}\n" for i, name in enumerate(sorted(expected))))
    use_model(monkeypatch, StandInScoreModel())
    status, stdout, stderr = run_main(train_test_IQA_sparsity, [
        "--dataset", "csv", "--dataset_path", tmp_path / "data", "--epochs", "1", "--checkpoint_dir", tmp_path / "ck",
        *TINY_TRAINING], capsys, monkeypatch)
    assert status == 0, stderr
    assert "Images: 5" in stdout and [row.split("\t")[0] for row in stdout.splitlines() if row[:1].isdigit()] == ["1"]


def test_an_image_smaller_than_a_patch_stops_unless_upscaling_is_asked(tmp_path, capsys, monkeypatch):
    image = write_png(tmp_path / "small.png", size=(300, 200))  # width x height
    any_score_model = HYPERIQA.quality_model(StandInScoreModel().eval())
    monkeypatch.setattr(models, "load_model", lambda path, family, device: any_score_model)
    common = ["--img_name", image, "--checkpoint", "model.pth", "--patch_num", "2", "--device", "cpu",
              "--save_dir", tmp_path / "adv"]
    status, _, stderr = run_main(FGSM_demo, common, capsys, monkeypatch)
    line = error_line(status, stderr)
    assert f"{image}: image of 300x200 pixels is smaller than the 224x224 crop" in line and "--upscale_small" in line

    status, stdout, stderr = run_main(FGSM_demo, common + ["--upscale_small"], capsys, monkeypatch)
    assert status == 0, stderr
    assert "2 patches of" in stdout
    saved = sorted((tmp_path / "adv").glob("small_*.png"))
    assert [Image.open(path).size for path in saved] == [(224, 224)] * 2  # crops of the 336x224 upscaled image


@pytest.mark.parametrize("script", [FGSM_demo, quality_and_norm_demo])
def test_help_says_what_happens_to_small_images(script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("--upscale_small upscale an image smaller than the model's crop on a side (bicubic; for HyperIQA: "
            "smaller than 224 on a side, shorter side to 224) instead of stopping with an error") in text


def test_a_bad_or_small_image_of_a_data_set_names_its_index_and_path(tmp_path, capsys, monkeypatch):
    fake_datasets.make_csv(tmp_path / "data", count=5)
    train, _ = split_samples(folders.list_samples("csv", tmp_path / "data"), "csv", seed=919)
    common = ["--dataset", "csv", "--dataset_path", tmp_path / "data", "--epochs", "1",
              "--checkpoint_dir", tmp_path / "ck", *TINY_TRAINING]
    use_model(monkeypatch, StandInScoreModel())
    write_png(train[2].path, size=(300, 200))
    status, _, stderr = run_main(train_test_IQA_sparsity, common, capsys, monkeypatch)
    assert (f"image 2 of the csv training set ({train[2].path}): image of 300x200 pixels is smaller than the "
            f"224x224 crop") in error_line(status, stderr)

    with open(train[3].path, "r+b") as f:
        f.truncate(60)
    os.remove(train[2].path)
    write_png(train[2].path)
    status, _, stderr = run_main(train_test_IQA_sparsity, common, capsys, monkeypatch)
    assert f"image 3 of the csv training set: cannot decode image {train[3].path}" in error_line(status, stderr)


# -- checkpoints


class RunsCode:
    """Pickled, this is a call to os.system: loading the file without weights_only runs the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_bad_checkpoint(path, problem: str, marker) -> None:
    if problem == "another architecture":
        torch.save({"model": {"fc.weight": torch.zeros(1, 4), "fc.bias": torch.zeros(1)}, "optimizer": None}, path)
    elif problem == "runs code":
        torch.save({"model": {"fc.weight": torch.zeros(1)}, "payload": RunsCode(f"touch {marker}")}, path)
    elif problem == "truncated":
        torch.save({"model": {f"w{i}": torch.rand(64, 64) for i in range(4)}}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


BAD_CHECKPOINTS = {
    "missing": "checkpoint not found: {path} (the authors' HyperIQA+NT and baseline checkpoints are in the "
               "Google Drive folder linked from the README of https://github.com/YangiD/DefenseIQA-NT; "
               "download them into checkpoints/ under the names listed in checkpoints/README.md",
    "another architecture": "{path} does not fit HyperIQA (hyperiqa): ",
    "runs code": "cannot read checkpoint {path}: it contains Python objects other than tensors, and loading it "
                 "could run code (the pickle asks for " + os.system.__module__ + ".system, which a data file has no "
                 "need of); refused",
    "truncated": "cannot read checkpoint {path}: ",
}


@pytest.mark.parametrize("problem", sorted(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_one_line_saying_what_is_wrong(tmp_path, capsys, monkeypatch, problem):
    image, path, marker = write_png(tmp_path / "photo.png"), tmp_path / "model.pth", tmp_path / "code_ran"
    write_bad_checkpoint(path, problem, marker)
    status, _, stderr = run_main(FGSM_demo, ["--img_name", image, "--checkpoint", path, "--save_dir", tmp_path / "adv",
                                             "--device", "cpu"], capsys, monkeypatch)
    line = error_line(status, stderr)
    assert BAD_CHECKPOINTS[problem].format(path=path) in line
    assert len(stderr.strip().splitlines()) == 1
    assert not marker.exists()  # the pickled command never ran
    if problem == "another architecture":
        assert "2 unexpected keys: fc.weight, fc.bias" in line
        count = len(models.HyperIQA().state_dict())
        assert f"{count} missing keys: res.conv1.weight, res.bn1.weight" in line and f"(+{count - 5} more)" in line


def test_missing_default_checkpoint_names_the_file_and_the_readme_lists_it(tmp_path, capsys, monkeypatch):
    image = write_png(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)  # a folder without the released checkpoints
    status, _, stderr = run_main(FGSM_demo, ["--img_name", image, "--device", "cpu"], capsys, monkeypatch)
    nt_name = checkpoints.checkpoint_name("livec", 16, True, 1e-3, 0.01)
    line = error_line(status, stderr)
    assert f"checkpoint not found: {os.path.join('checkpoints', nt_name)} (" in line and "checkpoints/README.md" in line

    readme = Path(__file__).resolve().parents[1] / "checkpoints" / "README.md"
    text = readme.read_text()
    for name in (nt_name, checkpoints.checkpoint_name("livec", 16, False), "koniq_pretrained.pkl",
                 "https://github.com/YangiD/DefenseIQA-NT", "{'model': state_dict, 'optimizer': ...}"):
        assert name in text
    ignored = subprocess.run(["git", "check-ignore", "-q", str(readme)], cwd=readme.parent)
    assert ignored.returncode == 1  # tracked, unlike the checkpoint files beside it
    assert subprocess.run(["git", "check-ignore", "-q", str(readme.parent / nt_name)], cwd=readme.parent).returncode == 0


def test_bad_inputs_through_the_real_command_line(tmp_path, run_cli):
    image, truncated, evil, marker = tmp_path / "ok.png", tmp_path / "cut.png", tmp_path / "evil.pth", tmp_path / "ran"
    write_png(image)
    truncated_png(truncated)
    write_bad_checkpoint(evil, "runs code", marker)
    runs = run_cli(["FGSM_demo.py", "--img_name", truncated, "--device", "cpu"],
                   ["FGSM_demo.py", "--img_name", image, "--checkpoint", evil, "--device", "cpu"],
                   ["quality_and_norm_demo.py", "--img", image, "--baseline_checkpoint", tmp_path / "none.pth",
                    "--device", "cpu"],
                   ["FGSM_demo.py", "--eps", "0"])
    lines = [error_line(run.returncode, run.stderr) for run in runs[:3]]
    assert lines[0] == f"FGSM_demo.py: error: cannot decode image {truncated}: image file is truncated"
    assert lines[1].startswith(f"FGSM_demo.py: error: cannot read checkpoint {evil}: ") and lines[1].endswith("refused")
    assert lines[2].startswith(f"quality_and_norm_demo.py: error: checkpoint not found: {tmp_path / 'none.pth'} (")
    assert all(len(run.stderr.strip().splitlines()) == 1 for run in runs[:3])
    assert not marker.exists()
    assert runs[3].returncode == 2 and "argument --eps: must be > 0, got 0" in runs[3].stderr


# -- training


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_diverging_loss_stops_the_script_naming_epoch_and_step(tmp_path, capsys, monkeypatch, poison):
    fake_datasets.make_csv(tmp_path / "data", count=3)  # 2 training images: one step per epoch
    use_model(monkeypatch, StandInScoreModel(poison=poison, poison_after=1))  # the first step of epoch 2 diverges
    status, stdout, stderr = run_main(train_test_IQA_sparsity, [
        "--dataset", "csv", "--dataset_path", tmp_path / "data", "--epochs", "3", "--checkpoint_dir", tmp_path / "ck",
        *TINY_TRAINING], capsys, monkeypatch)
    best = tmp_path / "ck" / checkpoints.checkpoint_name("csv", 2, False)
    line = error_line(status, stderr)
    assert f"the training loss became {poison} at epoch 2, step 1; stopped (the best checkpoint so far stays at {best})" in line
    assert torch.load(best, weights_only=True)["epoch"] == 1  # the last good checkpoint is kept
    state = torch.load(resume_state_path(best), weights_only=True)["progress"]
    assert (state["epoch"], state["step"]) == (1, 0)  # and the state resumes from the end of epoch 1
    assert [row.split("\t")[0] for row in stdout.splitlines() if row[:1].isdigit()] == ["1"]


def test_a_crash_while_saving_keeps_the_files_of_the_last_epoch(tmp_path, capsys, monkeypatch):
    fake_datasets.make_csv(tmp_path / "data", count=3)
    use_model(monkeypatch, StandInScoreModel())
    save, calls = torch.save, []

    def disk_full_after_epoch_one(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) <= 2:  # epoch 1: the best checkpoint, then the resumable state
            return save(obj, f, *args, **kwargs)
        f.write(b"the first bytes of a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full_after_epoch_one)
    status, _, stderr = run_main(train_test_IQA_sparsity, [
        "--dataset", "csv", "--dataset_path", tmp_path / "data", "--epochs", "2", "--checkpoint_dir", tmp_path / "ck",
        *TINY_TRAINING], capsys, monkeypatch)
    line = error_line(status, stderr)
    assert "No space left on device" in line and f"cannot write {tmp_path / 'ck'}" in line  # names the file
    assert len(calls) == 3
    best = tmp_path / "ck" / checkpoints.checkpoint_name("csv", 2, False)
    assert torch.load(best, weights_only=True)["epoch"] == 1
    assert torch.load(resume_state_path(best), weights_only=True)["progress"]["epoch"] == 1
    assert sorted(p.suffix for p in (tmp_path / "ck").iterdir()) == [".log", ".pth", ".pth"]  # no temporary file


# -- arguments


@pytest.mark.parametrize("script, args, message", [
    (FGSM_demo, ["--eps", "0"], "argument --eps: must be > 0, got 0"),
    (FGSM_demo, ["--eps", "-0.03"], "argument --eps: must be > 0, got -0.03"),
    (FGSM_demo, ["--eps", "nan"], "argument --eps: must be a number, got 'nan'"),
    (FGSM_demo, ["--alp", "0"], "argument --alp/--alpha: must be > 0, got 0"),
    (FGSM_demo, ["--alpha", "-1"], "argument --alp/--alpha: must be > 0, got -1"),
    (FGSM_demo, ["--step", "0"], "argument --step/--steps: must be a whole number >= 1, got 0"),
    (FGSM_demo, ["--patch_num", "0"], "argument --patch_num: must be a whole number >= 1, got 0"),
    (FGSM_demo, ["--attacked_model", "hyperiqa"], "argument --attacked_model: invalid choice: 'hyperiqa' (choose from"),
    (quality_and_norm_demo, ["--patch_num", "0"], "argument --patch_num/--patch_size: must be a whole number >= 1, got 0"),
    (evaluate_robustness, ["--checkpoint", "a.pth", "--dataset_path", "x", "--eps", "0.01", "0"],
     "argument --eps: must be > 0, got 0"),
    (evaluate_robustness, ["--checkpoint", "a.pth", "--dataset_path", "x", "--step", "0"],
     "argument --step/--steps: must be a whole number >= 1, got 0"),
    (evaluate_robustness, ["--checkpoint", "a.pth", "--dataset_path", "x", "--dataset", "clive"],
     "argument --dataset: invalid choice: 'clive' (choose from 'livec', 'koniq-10k'"),
    (train_test_IQA_sparsity, ["--batch_size", "0"], "argument --batch_size: must be a whole number >= 1, got 0"),
    (train_test_IQA_sparsity, ["--dataset", "clive"], "argument --dataset: invalid choice: 'clive' (choose from 'livec'"),
    (train_test_IQA_sparsity, ["--h", "0"], "argument --h: must be > 0, got 0"),
    (train_test_IQA_sparsity, ["--patch_size", "96"], "argument --patch_size: must be 224: HyperIQA's pooling layers"),
])
def test_invalid_values_are_rejected_saying_what_is_valid(script, args, message, capsys):
    with pytest.raises(SystemExit) as exit_status:
        script.parse_args(args)
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err


# -- determinism


def test_same_seed_same_split_patches_and_attack_results(tmp_path, capsys, monkeypatch):
    fake_datasets.make_csv(tmp_path / "data", count=5)
    samples = folders.list_samples("csv", tmp_path / "data")
    test_919, test_3 = (split_samples(samples, "csv", seed=seed)[1] for seed in (919, 3))
    assert test_919 != test_3  # the seed decides the split
    model = StandInScoreModel().eval()  # the pipeline's randomness does not depend on the model: a cheap one
    monkeypatch.setattr(models, "load_model", lambda path, family, device: HYPERIQA.quality_model(model))

    def evaluate(seed: int, out: str) -> dict:
        status, _, stderr = run_main(evaluate_robustness, [
            "--dataset", "csv", "--dataset_path", tmp_path / "data", "--checkpoint", "model.pth", "--attack", "pgd",
            "--step", "3", "--patch_num", "4", "--seed", seed, "--out_dir", tmp_path / out, "--device", "cpu"],
            capsys, monkeypatch)
        assert status == 0, stderr
        torch.seed()  # leave the global generator in a random state: only the seed may decide
        return json.loads((tmp_path / out / "robustness.json").read_text())

    a, b, c = evaluate(919, "a"), evaluate(919, "b"), evaluate(3, "c")
    assert a["images"] == b["images"] == [{"path": s.path, "mos": s.mos} for s in test_919]
    assert c["images"] == [{"path": s.path, "mos": s.mos} for s in test_3]
    assert a["scores"] == b["scores"]  # clean scores (so the patches), gradient norms and PGD results
    assert a["scores"]["model"]["clean"] != c["scores"]["model"]["clean"]


@pytest.mark.parametrize("round_index", [0, 1])
def test_evaluation_patches_are_those_of_the_training_scripts_test_loader(tmp_path, capsys, monkeypatch, round_index):
    fake_datasets.make_csv(tmp_path / "data", count=6)
    model = StandInScoreModel().eval()
    monkeypatch.setattr(models, "load_model", lambda path, family, device: HYPERIQA.quality_model(model))
    status, _, stderr = run_main(evaluate_robustness, [
        "--dataset", "csv", "--dataset_path", tmp_path / "data", "--checkpoint", "model.pth", "--attack", "fgsm",
        "--patch_num", "3", "--seed", "5", "--round", round_index, "--out_dir", tmp_path / "out", "--device", "cpu"],
        capsys, monkeypatch)
    assert status == 0, stderr
    report = json.loads((tmp_path / "out" / "robustness.json").read_text())
    # the test loader of that round, as the training script's solver gets it (HyperIQASolver.train_and_test)
    train, test = split_samples(folders.list_samples("csv", tmp_path / "data"), "csv", seed=5, round_index=round_index)
    config = TrainConfig(dataset="csv", test_patch_num=3, batch_size=2, seed=5, train_test_num=2)
    test_loader = HyperIQASolver.round_loaders(config, train, test, round_index).test
    assert [image["path"] for image in report["images"]] == [s.path for s in test]
    first_epoch = HyperIQASolver.predict_images(HYPERIQA.quality_model(model), test_loader, epoch=0)
    assert report["scores"]["model"]["clean"] == pytest.approx(first_epoch.tolist(), rel=RTOL)
    later_epoch = HyperIQASolver.predict_images(HYPERIQA.quality_model(model), test_loader, epoch=1)
    assert report["scores"]["model"]["clean"] != pytest.approx(later_epoch.tolist(), rel=RTOL)
