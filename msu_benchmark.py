"""The MSU metrics robustness benchmark inside evaluate_robustness.py: its preset, its universal
perturbations, and its scores and per-image CSV written beside our table.

- `--preset msu` (`apply_preset`, `attack_plan`): the benchmark's attack list with its settings
  (msu-ifgsm, msu-mifgsm, amifgsm, std-fgsm, korhonen and madc at eps 10/255, korhonen ignoring it;
  uap at amplitudes 0.2, 0.4, 0.8, eps 0.02, 0.04, 0.08, when a UAP is trained or given), each
  image attacked whole (`--attack_on image`), every score raised (`--direction up`), the attacked
  image scored as the float tensor the attack returns (`--unrounded`, as the benchmark does; our
  default rounds it to 8 bits, as a saved file would be).
- `prepare_uaps`: one universal perturbation per checkpoint, trained on `--uap_train_dir` (each
  image made 256x256 as the benchmark does, scored by the model's test views cut from it: the same
  seeded boxes for every training image) and saved to `{out_dir}/uap_{model}.npy`, or read from
  `--uap_file`.
- `write_benchmark_files`: benchmark_scores.csv, one row per checkpoint x attack x eps with every
  score of msu_scores.py, and benchmark_images.csv, one row per checkpoint x attack x eps x image
  in the benchmark's own columns (msu_scores.IMAGE_COLUMNS) after ours (model, attack, eps).
  PSNR, SSIM and MSE compare what was attacked (the image, or the patches of the image taken
  together: the MSE over all of them, its PSNR, the mean SSIM) with the attacked version as scored.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import attacks
import folders
import msu_scores
import seeding
from families.base import QualityModel
from images import image_files, image_to_tensor, load_image
from protocol import protocol_model
from views import Views, random_crop_boxes

PRESET = "msu"
PRESET_ATTACKS = ("msu-ifgsm", "msu-mifgsm", "amifgsm", "std-fgsm", "korhonen", "madc")  # at eps MSU_EPS
PRESET_UAP_EPS = tuple(amplitude * attacks.UAP_BOUND for amplitude in attacks.UAP_AMPLITUDES)
SETTING_COLUMNS = ("model", "attack", "eps", "alpha", "steps", "attack_on", "direction", "rounded", "images")
SIMILARITY = ("psnr", "ssim", "mse")  # per image and setting, in this order
PRINTED_COLUMNS = ("model", "attack", "eps", "normalized_absolute_gain", "normalized_relative_gain",
                   "robustness_score", "relative_gain_classic", "wasserstein_score", "energy_distance_score")
UAP_PROGRESS_EVERY = 10  # training steps between two progress lines

Setting = tuple[str, float, float, int]  # (attack, eps, step size, steps): a column of the evaluation


def apply_preset(args: argparse.Namespace) -> None:
    """Set what `--preset msu` fixes: image attacks, the direction up, unrounded scoring."""
    if args.preset == PRESET:
        args.attack_on, args.direction, args.unrounded = "image", "up", True


def attack_plan(args: argparse.Namespace) -> list[Setting]:
    """The run's settings: every --attack at every --eps (step sizes and steps from
    attacks.attack_settings), or the preset's list; uap needs a perturbation (--uap_*): the preset
    leaves it out without one, saying so."""
    if args.preset != PRESET:
        return [(attack, eps, *attacks.attack_settings(attack, eps, args.alp, args.step, args.queries))
                for attack in args.attack for eps in args.eps]
    plan = [(attack, attacks.MSU_EPS) for attack in PRESET_ATTACKS]
    if args.uap_file or args.uap_train_dir:
        plan += [("uap", eps) for eps in PRESET_UAP_EPS]
    else:
        print("--preset msu: no --uap_train_dir or --uap_file, so the uap rows are left out", file=sys.stderr)
    return [(attack, eps, *attacks.attack_settings(attack, eps)) for attack, eps in plan]


def uap_direction(args: argparse.Namespace) -> float:
    """+1 when the UAP must raise the scores, -1 to lower them: --direction up raises the predicted
    quality (the score on a MOS scale, lowers it on a DMOS one); a universal perturbation has no
    per-image direction, so 'away' is refused."""
    if args.direction != "up":
        raise ValueError("the uap attack raises every score: it needs --direction up (--preset msu sets it)")
    return -1.0 if args.dataset in folders.HIGHER_IS_WORSE else 1.0


def training_images(folder: str) -> torch.Tensor:
    """The images of `folder`, each made 256x256 as the benchmark does (attacks.training_crop): (N, 3, 256, 256)."""
    return torch.stack([attacks.training_crop(image_to_tensor(load_image(path))) for path in image_files(folder)])


def train_for(name: str, model: QualityModel, views: Views, images: torch.Tensor, args: argparse.Namespace,
              score_width: float) -> torch.Tensor:
    """A UAP (3, 256, 256) trained against `model` scoring each training image by the views `views`
    (one seeded set of boxes for all), showing progress on stderr."""
    generator = seeding.seeded_generator(args.seed, seeding.UAP_TRAINING)
    boxes = random_crop_boxes(attacks.uap.UAP_SIZE, attacks.uap.UAP_SIZE, views, generator)
    scorer = protocol_model(model, views, boxes, args.chunk_size)

    def progress(step: int, steps: int, loss: float) -> None:
        if step % UAP_PROGRESS_EVERY == 0 or step == steps:
            print(f"[uap {name}] step {step}/{steps}, loss {loss:.6f}", file=sys.stderr, flush=True)

    return attacks.train_uap(scorer, images.to(next(model.parameters()).device), uap_direction(args), score_width,
                             generator=generator, progress=progress)


def prepare_uaps(args: argparse.Namespace, nets: Sequence, settings: Sequence[Setting],
                 main_process: bool = True) -> list[torch.Tensor | None]:
    """Per checkpoint of `nets` (evaluate_robustness.Evaluated: name, model, views, score_range), the UAP the uap settings add (None when the run has none): read from
    --uap_file (one for every checkpoint, or one per checkpoint) or trained on --uap_train_dir and
    saved to {out_dir}/uap_{name}.npy (by the main process)."""
    if not any(attack == "uap" for attack, *_ in settings):
        return [None] * len(nets)
    if args.uap_file:
        if len(args.uap_file) not in (1, len(nets)):
            raise ValueError(f"--uap_file: one file for every checkpoint or one per checkpoint ({len(nets)}), "
                             f"got {len(args.uap_file)}")
        paths = args.uap_file * (len(nets) // len(args.uap_file))
        return [attacks.load_uap(path) for path in paths]
    if not args.uap_train_dir:
        raise ValueError("the uap attack needs a trained perturbation: --uap_train_dir DIR to train one per "
                         "checkpoint, or --uap_file FILE")
    uap_direction(args)  # fails before any work
    images = training_images(args.uap_train_dir)
    uaps = []
    for net in nets:
        low, high = net.score_range
        uap = train_for(net.name, net.model, net.views.views, images, args, high - low)
        if main_process:
            path = Path(args.out_dir) / f"uap_{net.name}.npy"
            attacks.save_uap(path, uap)
            print(f"Saved {path}", file=sys.stderr)
        uaps.append(uap)
    return uaps


def similarity(clean: torch.Tensor, attacked: torch.Tensor) -> tuple[float, float, float]:
    """(PSNR, SSIM, MSE) of `attacked` against `clean`, both (B, 3, H, W): the MSE over all B images
    together, its PSNR and the mean SSIM (msu_scores; for B = 1, the benchmark's three columns)."""
    pairs = [(a.permute(1, 2, 0).double().cpu().numpy(), b.permute(1, 2, 0).double().cpu().numpy())
             for a, b in zip(clean.detach(), attacked.detach())]
    mse = float(np.mean([msu_scores.image_mse(a, b) for a, b in pairs]))
    psnr = math.inf if mse == 0 else float(10 * np.log10(1.0 / mse))
    return psnr, float(np.mean([msu_scores.image_ssim(a, b) for a, b in pairs])), mse


def _cell(value) -> object:
    return "" if isinstance(value, float) and math.isnan(value) else value


def write_benchmark_files(out_dir: Path, args: argparse.Namespace, samples: Sequence[folders.Sample],
                          names: Sequence[str], settings: Sequence[Setting], clean: np.ndarray,
                          attacked: np.ndarray, similarities: np.ndarray) -> list[dict]:
    """benchmark_scores.csv and benchmark_images.csv in `out_dir` (see the module docstring); returns
    the rows of benchmark_scores. clean: (checkpoints, images); attacked: (checkpoints, settings,
    images); similarities: (checkpoints, settings, images, 3) PSNR, SSIM, MSE."""
    lower_is_better = args.dataset in folders.HIGHER_IS_WORSE
    shared = dict(attack_on=args.attack_on, direction=args.direction, rounded=not args.unrounded, images=len(samples))
    rows, image_rows = [], []
    for k, name in enumerate(names):
        for a, (attack, eps, alpha, steps) in enumerate(settings):
            scores = msu_scores.benchmark_scores(clean[k], attacked[k, a], lower_is_better)
            rows.append(dict(model=name, attack=attack, eps=eps, alpha=alpha, steps=steps, **shared, **scores))
            for index, sample in enumerate(samples):
                psnr, ssim, mse = similarities[k, a, index]
                image_rows.append(dict(model=name, attack=attack, eps=eps, image_name=os.path.basename(sample.path),
                                       test_dataset=args.dataset, clear=clean[k, index], attacked=attacked[k, a, index],
                                       rel_gain=msu_scores.rel_gain(clean[k, index], attacked[k, a, index]),
                                       psnr=psnr, ssim=ssim, mse=mse))
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = (("benchmark_scores.csv", rows, SETTING_COLUMNS + msu_scores.SCORE_COLUMNS),
              ("benchmark_images.csv", image_rows, ("model", "attack", "eps") + msu_scores.IMAGE_COLUMNS))
    for file_name, table, columns in tables:
        with open(out_dir / file_name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({c: _cell(row[c]) for c in columns} for row in table)
    print(f"Saved {out_dir / 'benchmark_scores.csv'} and {out_dir / 'benchmark_images.csv'} (the MSU benchmark's scores)")
    return rows

