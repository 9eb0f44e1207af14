"""Robustness of quality models over a test set: clean vs attacked predictions, per checkpoint and attack.

    python evaluate_robustness.py --dataset livec --dataset_path /PATH/ChallengeDB_release \\
        --split_file CLIVE_traintest_index.pkl --checkpoint checkpoints/a.pth checkpoints/b.pth \\
        --attack fgsm ifgsm pgd mifgsm square --eps 0.00392 0.00784 0.01569 0.03137
    python evaluate_robustness.py --dataset folder --dataset_path my_images/ --checkpoint a.pth --patch_num 5
    torchrun --standalone --nproc_per_node 4 evaluate_robustness.py ...   # the images shared out over 4 GPUs

Checkpoints of any family (each says its own; `--model` for an authors' file of another family than
HyperIQA). For every image and checkpoint: the views of the family's test protocol (HyperIQA:
`--patch_num` seeded random 224x224 patches, with the same --seed and --round the very patches the
training script's test loader draws at its first epoch; DBCNN: the whole image), the clean scores
and the l1 gradient norm (in the model's own input space, after its normalization), then every
attack at every eps. An image's score is the mean over its views; attacked images are scored as
saved (rounded to 8 bits), and with `--defense NAME[:PARAM]` through that input defense. Printed and
saved (`--out_dir`/robustness.csv and .json, the JSON with the per-image scores), one row per
checkpoint x attack x eps:

- clean_srocc, clean_plcc / attacked_srocc, attacked_plcc: clean / attacked predictions vs MOS;
- srocc, plcc, krocc, rmse, mae, R: attacked vs clean predictions (R: metrics.robustness_r over the
  score range of the data set; higher is more robust);
- grad_norm: mean l1 norm of d score / d normalized input over all patches (lower: smoother model).

Per checkpoint x attack, over the eps of the run, the integral robustness scores (metrics.py: the
normalized trapezoid area over [0, eps_max] under a curve that is 1 at eps 0), printed and saved to
summary.csv and the JSON's "summary":

- integral_srocc: under SROCC(clean, attacked);
- integral_stability: under 1 - mean|s' - s| / (high - low of the score range).

Pictures (unless `--no_plot`): robustness_vs_eps.png (SROCC and mean |score change| against eps, one
line per checkpoint x attack) and score_shift.png (histograms of the per-image score changes at the
largest eps, one panel per checkpoint).

With `--defense` (defense_evaluation.py; `--jpeg_quality Q` is `--defense jpeg:Q`), the defense sees
every input: clean views go through it too and the clean columns are their scores, so R measures the
attack, not the defense; the attacks are made against the bare model, or through the defense with
`--adaptive`; defense_scores.csv holds the defense benchmark's scores. `--certify`: median-smoothing
certified score intervals of every checkpoint (certified.csv, certified_images.csv).

Beside these, the MSU metrics robustness benchmark's scores (msu_scores.py) in benchmark_scores.csv
and its per-image CSV, benchmark_images.csv (msu_benchmark.py). `--attack_on image` attacks the
image itself, scored through its test views (protocol.py), instead of each patch on its own (a
defense then sees the whole image); `--direction up` raises every predicted quality; `--preset msu`
runs the benchmark's attacks with its settings, whole images, upwards, scored unrounded (`--unrounded`).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import attacks
import cli
import defense_evaluation
import distributed
import folders
import metrics
import models
import msu_benchmark
import plots
import seeding
from adversarial_training import attack_middle
from data_loader import ViewLoader, make_test_loader
from families.base import QualityModel
from images import image_files
from protocol import protocol_model
from splits import round_split

FOLDER = "folder"  # --dataset value for a plain folder of images without MOS
COLUMNS = ("model", "attack", "eps", "alpha", "steps", "defense", "adaptive", "images", "clean_srocc", "clean_plcc",
           "attacked_srocc", "attacked_plcc", "srocc", "plcc", "krocc", "rmse", "mae", "R", "grad_norm")
SUMMARY_COLUMNS = ("model", "attack", "eps_max", "eps_count", "images", "grad_norm", "mae_at_eps_max",
                   "srocc_at_eps_max", "integral_srocc", "integral_stability")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="PATH",
                        help="one or more checkpoints to evaluate, of any family (any released form)")
    cli.add_model_argument(parser, several=True)
    parser.add_argument("--dataset", default="livec", choices=folders.DATASETS + (FOLDER,),
                        help=f"data set layout of --dataset_path; '{FOLDER}': every image of a folder, no MOS")
    parser.add_argument("--dataset_path", required=True,
                        help="root of the data set, a CSV file for 'csv', or a folder of images for 'folder'")
    parser.add_argument("--split", choices=("test", "train", "all"), default="test",
                        help="which images of the data set to use (the split of the training script, same "
                             "seed and round, as the checkpoints' family splits: LinearityIQA keeps a validation "
                             f"part out of both); '{FOLDER}' always uses all")
    parser.add_argument("--split_file", default=None,
                        help="fixed split (e.g. the paper's LIVEC split), as for the training script")
    parser.add_argument("--round", dest="round_index", type=cli.nonnegative_int, default=0,
                        help="training round whose split to use (0 for the first)")
    parser.add_argument("--attack", nargs="+", choices=attacks.ATTACKS, default=["ifgsm"],
                        help="attacks: fgsm (one step of eps), ifgsm (--step steps of --alp; by default the demo's "
                             f"one step of {attacks.DEFAULT_ALPHA}), pgd (ifgsm from a random start in the eps-ball; "
                             f"by default {attacks.PGD_STEPS} steps of {attacks.PGD_STEP_FRACTION} * eps / steps; "
                             f"--restarts), mifgsm (momentum {attacks.MIFGSM_MOMENTUM:g}; by default "
                             f"{attacks.MIFGSM_STEPS} steps of eps / steps), square (gradient-free: --queries "
                             "score queries per image); the MSU benchmark's msu-ifgsm, msu-mifgsm, amifgsm, std-fgsm, "
                             "madc, korhonen, uap (see attacks/__init__.py and the README)")
    cli.add_attack_arguments(parser, sweep=True)
    parser.add_argument("--attack_on", choices=("patches", "image"), default="patches",
                        help="patches: attack each test view on its own (the paper's table); image: attack the image "
                             "itself, scored by the mean over its test views, the gradient through all of them")
    parser.add_argument("--direction", choices=("away", "up"), default="away",
                        help="away: push scores above the middle down and the others up (as released); up: raise "
                             "every predicted quality (the MSU benchmark's goal; on a DMOS scale, lower the score)")
    parser.add_argument("--unrounded", action="store_true",
                        help="score the attacked images as the float tensors the attacks return, not rounded to 8 "
                             "bits as a saved file would be (the MSU benchmark's way)")
    parser.add_argument("--preset", choices=(msu_benchmark.PRESET,), default=None,
                        help="msu: the MSU benchmark's attacks with its settings (replacing --attack, --eps, --alp and "
                             "--step), --attack_on image, --direction up, --unrounded")
    parser.add_argument("--uap_train_dir", default=None, metavar="DIR",
                        help="folder of images to train the uap attack's universal perturbation on, once per "
                             "checkpoint (saved to --out_dir as uap_{model}.npy)")
    parser.add_argument("--uap_file", nargs="+", default=None, metavar="NPY",
                        help="a trained universal perturbation (.npy, height x width x 3, ours or the benchmark's), "
                             "one for every checkpoint or one per checkpoint")
    parser.add_argument("--patch_num", type=cli.positive_int, default=None,
                        help="random patches (views) per image, for a family that crops (default: the family's "
                             "released test number, 25 for HyperIQA's 224x224 patches)")
    parser.add_argument("--score_range", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None,
                        help="bottom and top of the score scale, for R and the attack direction (default: the "
                             "data set's, 0 100 for LIVEC and for a folder, or the family's own scale)")
    parser.add_argument("--score_middle", type=float, default=None,
                        help="scores above this are attacked downwards, others upwards (default: middle of the range)")
    parser.add_argument("--limit", type=cli.positive_int, default=None, help="use only the first N images")
    parser.add_argument("--out_dir", default=os.path.join("results", "robustness"),
                        help="folder for robustness.csv, robustness.json, summary.csv and the plots (overwritten)")
    cli.add_no_plot_argument(parser)
    cli.add_chunk_size_argument(parser)
    cli.add_device_argument(parser)
    parser.add_argument("--seed", type=cli.nonnegative_int, default=seeding.DEFAULT_SEED,
                        help="seed of the split, the patches and the PGD starts")
    defense_evaluation.add_arguments(parser)
    args = parser.parse_args(argv)
    defense_evaluation.check_arguments(args, parser)
    if len(set(args.eps)) != len(args.eps):
        parser.error(f"argument --eps: each value once, got {' '.join(map(str, args.eps))}")
    if args.score_range is not None and not args.score_range[0] < args.score_range[1]:
        parser.error(f"argument --score_range: needs LOW < HIGH, got {args.score_range[0]} {args.score_range[1]}")
    if args.uap_train_dir and args.uap_file:
        parser.error("argument --uap_file: give --uap_train_dir or --uap_file, not both")
    msu_benchmark.apply_preset(args)
    if args.direction == "up" and args.score_middle is not None:
        parser.error("argument --score_middle: --direction up raises every score; it has no middle")
    if args.model is not None and len(args.model) not in (1, len(args.checkpoint)):
        parser.error(f"argument --model: one family for every checkpoint, or one per checkpoint "
                     f"({len(args.checkpoint)}); got {len(args.model)}")
    return args


def folder_samples(folder: str) -> list[folders.Sample]:
    """Every image file (by extension Pillow knows) directly in `folder`, sorted, with MOS NaN."""
    return [folders.Sample(path, math.nan, os.path.basename(path)) for path in image_files(folder)]


def evaluation_samples(args: argparse.Namespace,
                       validation_shares: tuple[float, float] | None = None) -> list[folders.Sample]:
    """The images of the run: --split of the data set as the training script splits it for a family
    with these `validation_shares` (Family.validation_shares; None: train and test only)."""
    if args.dataset == FOLDER:
        samples = folder_samples(args.dataset_path)
    else:
        samples = folders.list_samples(args.dataset, args.dataset_path, args.seed)
        if args.split != "all":
            split = round_split(samples, args.dataset, args.seed, args.round_index, args.split_file, validation_shares)
            samples = split.test if args.split == "test" else split.train
    return samples[:args.limit]


def shared_validation_shares(args: argparse.Namespace, loaded: list[QualityModel]) -> tuple[float, float] | None:
    """The validation shares of the checkpoints' families on --dataset (see evaluation_samples);
    ValueError when they split it differently and --split takes a part of it."""
    shares = {}
    for model in loaded:
        family = models.get_family(model.family)
        shares[family.display_name] = family.validation_split(args.dataset)
    if args.split != "all" and args.dataset != FOLDER and len(set(shares.values())) > 1:
        raise ValueError(f"the checkpoints' families split {args.dataset} differently ({', '.join(shares)}): "
                         "evaluate them in separate runs, or pass --split all")
    return next(iter(shares.values()), None)


def table_row(mos: np.ndarray, clean: np.ndarray, attacked: np.ndarray, grad_norm: float,
              score_range: tuple[float, float], **setting) -> dict:
    """One row of the table (see COLUMNS) from per-image MOS, clean and attacked predictions (N,)."""
    row = dict(setting, images=len(clean),
               clean_srocc=metrics.defined_or_nan(metrics.srocc, clean, mos),
               clean_plcc=metrics.defined_or_nan(metrics.plcc, clean, mos),
               attacked_srocc=metrics.defined_or_nan(metrics.srocc, attacked, mos),
               attacked_plcc=metrics.defined_or_nan(metrics.plcc, attacked, mos))
    for name in ("srocc", "plcc", "krocc"):
        row[name] = metrics.defined_or_nan(metrics.AGREEMENT_METRICS[name], clean, attacked)
    row["rmse"], row["mae"] = metrics.rmse(clean, attacked), metrics.mae(clean, attacked)
    row["R"] = metrics.robustness_r(clean, attacked, *score_range)
    row["grad_norm"] = grad_norm
    return row


def sweeps(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The table's rows (see table_row) per (model, attack), each list by increasing eps."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["model"], row["attack"]), []).append(row)
    return {key: sorted(group, key=lambda row: row["eps"]) for key, group in grouped.items()}


def summary_rows(rows: list[dict], score_ranges: dict[str, tuple[float, float]]) -> list[dict]:
    """One row (see SUMMARY_COLUMNS) per checkpoint x attack of the table's rows, over that attack's
    eps of the run: integral robustness (metrics.integral_robustness) of SROCC(clean, attacked) and
    of metrics.score_stability (over the score range of each model, `score_ranges`), and the MAE and
    SROCC at the largest eps."""
    summary = []
    for (model, attack), sweep in sweeps(rows).items():
        eps, largest = [row["eps"] for row in sweep], sweep[-1]
        stability = [metrics.score_stability(row["mae"], *score_ranges[model]) for row in sweep]
        summary.append(dict(model=model, attack=attack, eps_max=eps[-1], eps_count=len(eps), images=largest["images"],
                            grad_norm=largest["grad_norm"], mae_at_eps_max=largest["mae"],
                            srocc_at_eps_max=largest["srocc"],
                            integral_srocc=metrics.integral_robustness(eps, [row["srocc"] for row in sweep]),
                            integral_stability=metrics.integral_robustness(eps, stability)))
    return summary


def format_table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.4f}"
        return "-" if value is None else str(value)
    cells = [list(columns)] + [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in cells)


def main(args: argparse.Namespace) -> None:
    with distributed.process_group(args.device) as processes:
        evaluate(args, processes)


class Evaluated(NamedTuple):
    """A checkpoint under evaluation: its quality model, its family's test views of every image, and
    its score range (for R and the direction) and direction threshold."""

    name: str
    model: QualityModel
    views: ViewLoader
    score_range: tuple[float, float]
    middle: float


def loaded_models(args: argparse.Namespace, device: torch.device) -> list[QualityModel]:
    """The checkpoints of the run, loaded (which fails early on a bad one), each in its family (--model)."""
    paths = args.checkpoint
    families = [None] * len(paths) if args.model is None else args.model * (len(paths) // len(args.model))
    return [models.load_model(path, requested, device) for path, requested in zip(paths, families)]


def evaluated_models(args: argparse.Namespace, samples: list[folders.Sample],
                     loaded: list[QualityModel]) -> list[Evaluated]:
    """The loaded checkpoints of the run, each with its family's test views of `samples`."""
    paths = args.checkpoint
    stems = [Path(path).stem for path in paths]
    evaluated = []
    for path, stem, model in zip(paths, stems, loaded):
        family = models.get_family(model.family)
        count = args.patch_num or family.train_defaults.get("test_patch_num", 1)
        # The training script's test loader of this seed and round: its first epoch's views.
        views = make_test_loader(samples, args.dataset, family.views(args.dataset, False, count), count, args.seed,
                                 args.round_index, input_sizes=family.input_sizes, model_name=family.display_name)
        low, high = args.score_range or folders.score_range(args.dataset, family.score_range)
        middle = attack_middle(args.direction, args.dataset, (low, high)) if args.score_middle is None else args.score_middle
        evaluated.append(Evaluated(str(path) if stems.count(stem) > 1 else stem, model, views, (low, high), middle))
    return evaluated


def evaluate(args: argparse.Namespace, processes: distributed.Processes) -> None:
    """The evaluation in this process: under torchrun, each process attacks the images whose index is
    congruent to its rank modulo their number, and rank 0 gathers the scores, prints and writes."""
    device = processes.device
    seeding.seed_everything(args.seed)
    if not args.no_plot:
        plots.check_matplotlib()  # before the work, not after it
    loaded = loaded_models(args, device)
    shares = shared_validation_shares(args, loaded)
    samples = distributed.main_first(processes, lambda: evaluation_samples(args, shares))
    nets = evaluated_models(args, samples, loaded)
    settings = msu_benchmark.attack_plan(args)  # (attack, eps, step size, steps)
    uaps = msu_benchmark.prepare_uaps(args, nets, settings, processes.is_main)

    clean = torch.zeros((len(nets), len(samples)), dtype=torch.float64)
    norms = torch.zeros_like(clean)
    attacked = torch.zeros((len(nets), len(settings), len(samples)), dtype=torch.float64)
    similarities = torch.zeros((*attacked.shape, len(msu_benchmark.SIMILARITY)), dtype=torch.float64)
    extra = defense_evaluation.Records(args, len(nets), len(settings), len(samples))  # --defense, --certify
    mine = list(range(processes.rank, len(samples), processes.world_size))
    if processes.is_main:
        views = ", ".join(dict.fromkeys(net.views.views.describe() for net in nets))
        print(f"Evaluating {len(nets)} checkpoint(s) on {len(samples)} images ({views}), "
              f"{len(settings)} attack setting(s), on {device}"
              + (f", {processes.world_size} processes" if processes.world_size > 1 else ""), file=sys.stderr, flush=True)
    started, report_every = time.monotonic(), max(1, len(mine) // 20)
    for done, index in enumerate(mine, start=1):
        for k, net in enumerate(nets):
            pixels = net.views.patches_of(index, epoch=0).to(device).float().div_(255.0)
            scores, grad_norms = attacks.scores_and_gradient_norms(net.model, pixels, args.chunk_size)
            norms[k, index] = grad_norms.mean().item()
            target, model = pixels, net.model  # what is attacked (and defended), and the model that scores it
            if args.attack_on == "image":  # the image itself, scored through the same views
                target = net.views.decoded_image(index).to(device).float().div_(255.0)[None]
                model = protocol_model(net.model, net.views.views, net.views.crop_boxes(index, 0), args.chunk_size)
            clean[k, index] = extra.clean(k, index, model, target, scores.mean().item(), args.chunk_size)
            extra.certify(k, index, net.model, pixels, args.chunk_size)
            low, high = net.score_range
            for a, (attack, eps, alpha, steps) in enumerate(settings):
                result = attacks.run_attack(attack, extra.attack_target(model, index), target, eps, alpha, steps,
                                            net.middle, seeding.seeded_generator(args.seed, seeding.ATTACK_START, index),
                                            args.chunk_size, restarts=args.restarts, score_width=high - low, uap=uaps[k])
                shown = result.adversarial if args.unrounded else attacks.quantize_8bit(result.adversarial)
                score = attacks.score_patches(model, shown, args.chunk_size).mean().item()
                attacked[k, a, index] = extra.attacked(k, a, index, model, shown, target, score, args.chunk_size)
                similarities[k, a, index] = torch.tensor(msu_benchmark.similarity(target, shown))
        if processes.is_main and (done % report_every == 0 or done == len(mine)):
            elapsed = time.monotonic() - started
            left = elapsed / done * (len(mine) - done)
            print(f"[{done}/{len(mine)}] {elapsed:.0f} s elapsed, about {left:.0f} s left",
                  file=sys.stderr, flush=True)
    for scores in (clean, norms, attacked, similarities, *extra.arrays.values()):  # each image was scored by one
        distributed.all_sum(processes, scores)  # process, zeros elsewhere
    if processes.is_main:
        report(args, samples, nets, settings, clean.numpy(), norms.numpy(), attacked.numpy(), extra)
        rows = msu_benchmark.write_benchmark_files(Path(args.out_dir), args, samples, [net.name for net in nets],
                                                   settings, clean.numpy(), attacked.numpy(), similarities.numpy())
        print("\nThe MSU benchmark's scores (msu_scores.py; gains: higher is a stronger attack):")
        print(format_table(rows, msu_benchmark.PRINTED_COLUMNS))


def report(args: argparse.Namespace, samples: list[folders.Sample], nets: list[Evaluated],
           settings: list[tuple[str, float, float, int]], clean: np.ndarray, norms: np.ndarray,
           attacked: np.ndarray, extra: defense_evaluation.Records) -> None:
    """Print the tables and write the files and plots: clean, norms (checkpoints, images), attacked
    (checkpoints, settings, images), extra (the defense's and the certificates')."""
    mos = np.array([sample.mos for sample in samples], dtype=np.float64)
    rows = []
    for k, net in enumerate(nets):
        for a, (attack, eps, alpha, steps) in enumerate(settings):
            rows.append(table_row(mos, clean[k], attacked[k, a], float(norms[k].mean()), net.score_range,
                                  model=net.name, attack=attack, eps=eps, alpha=alpha, steps=steps,
                                  defense=args.defense and str(args.defense), adaptive=args.adaptive))
    summary = summary_rows(rows, {net.name: net.score_range for net in nets})
    print(format_table(rows))
    print(f"\nIntegral robustness over eps {' '.join(f'{eps:g}' for eps in sorted({s[1] for s in settings}))} "
          "(1: the attack moved nothing; see metrics.integral_robustness):")
    print(format_table(summary, SUMMARY_COLUMNS))
    tables = extra.tables([net.name for net in nets], [net.score_range for net in nets], [s.path for s in samples], mos,
                          [(attack, eps) for attack, eps, _, _ in settings], clean, attacked)
    for table in tables:
        if table.title:
            print(f"\n{table.title}:\n{format_table(table.rows, table.columns)}")
    out_dir = Path(args.out_dir)
    save_results(out_dir, args, rows, summary, samples, nets, settings, clean, norms, attacked, extra, tables)
    if not args.no_plot:
        draw_plots(out_dir, rows, [net.name for net in nets], settings, clean, attacked)


def draw_plots(out_dir: Path, rows: list[dict], names: list[str], settings: list[tuple[str, float, float, int]],
               clean: np.ndarray, attacked: np.ndarray) -> None:
    """robustness_vs_eps.png (the curves of the table's rows) and score_shift.png (the per-image score
    changes at the largest eps of each attack) in `out_dir` (see plots.py). clean: (checkpoints,
    images); attacked: (checkpoints, settings, images)."""
    curves = [plots.Curve(model, attack, [row["eps"] for row in sweep], [row["srocc"] for row in sweep],
                          [row["mae"] for row in sweep]) for (model, attack), sweep in sweeps(rows).items()]
    largest: dict[str, int] = {}  # attack -> the index into `settings` of its largest eps
    for a, (attack, eps, *_) in enumerate(settings):
        if attack not in largest or eps > settings[largest[attack]][1]:
            largest[attack] = a
    shifts = {name: {attack: attacked[k, a] - clean[k] for attack, a in largest.items()} for k, name in enumerate(names)}
    written = [plots.plot_robustness_curves(out_dir / "robustness_vs_eps.png", curves),
               plots.plot_score_shifts(out_dir / "score_shift.png", shifts, max(setting[1] for setting in settings))]
    print("Saved " + " and ".join(map(str, written)))


def save_results(out_dir: Path, args: argparse.Namespace, rows: list[dict], summary: list[dict],
                 samples: list[folders.Sample], nets: list[Evaluated], settings: list[tuple[str, float, float, int]],
                 clean: np.ndarray, norms: np.ndarray, attacked: np.ndarray, extra: defense_evaluation.Records,
                 tables: list[defense_evaluation.Table]) -> None:
    """robustness.csv (the table), summary.csv (the integral scores), the tables of the defense and the
    certificates (`tables`) and robustness.json (settings, tables, per-image scores) in `out_dir`."""
    def finite(value):  # JSON has no NaN or infinity: null
        return None if isinstance(value, float) and not math.isfinite(value) else value

    def per_setting(scores: np.ndarray) -> dict[str, list]:  # (settings, images) -> per setting, per image
        return {f"{attack} eps={eps}": [finite(v) for v in scores[a].tolist()]
                for a, (attack, eps, _, _) in enumerate(settings)}

    names = [net.name for net in nets]
    tables = [defense_evaluation.Table("robustness.csv", "", rows, COLUMNS),
              defense_evaluation.Table("summary.csv", "", summary, SUMMARY_COLUMNS), *tables]
    out_dir.mkdir(parents=True, exist_ok=True)
    for table in tables:
        with open(out_dir / table.file, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=table.columns)
            writer.writeheader()  # NaN (undefined): an empty cell
            writer.writerows({c: ("" if isinstance(row[c], float) and math.isnan(row[c]) else row[c])
                              for c in table.columns} for row in table.rows)
    report = {
        "settings": {"dataset": args.dataset, "dataset_path": args.dataset_path, "split": args.split,
                     "split_file": args.split_file, "round": args.round_index, "patch_num": args.patch_num,
                     "seed": args.seed, "defense": args.defense and str(args.defense), "adaptive": args.adaptive,
                     "eot": args.eot, "certify": args.certify and {"sigma": args.smoothing_sigma, "samples": args.samples,
                                                                  "radii": args.certify_eps, "confidence": args.confidence},
                     "square_queries": args.queries, "attack_on": args.attack_on, "direction": args.direction,
                     "rounded": not args.unrounded, "preset": args.preset,
                     "pgd_restarts": args.restarts, "checkpoints": dict(zip(names, args.checkpoint)),
                     "models": {net.name: {"family": net.model.family, "views": net.views.views.describe(),
                                           "score_range": list(net.score_range), "score_middle": net.middle}
                                for net in nets}},
        **{("table" if table.file == "robustness.csv" else Path(table.file).stem):
           [{c: finite(row[c]) for c in table.columns} for row in table.rows] for table in tables},
        "images": [{"path": s.path, "mos": finite(float(s.mos))} for s in samples],
        "scores": {name: {"clean": clean[k].tolist(), "grad_norm": norms[k].tolist(), "attacked": per_setting(attacked[k]),
                          **{kind: (per_setting(array) if array.ndim == 2 else [finite(v) for v in array.tolist()])
                             for kind, array in extra.per_image(k).items()}}
                   for k, name in enumerate(names)},
    }
    (out_dir / "robustness.json").write_text(json.dumps(report, indent=2))
    print(f"Saved {', '.join(str(out_dir / table.file) for table in tables)} and {out_dir / 'robustness.json'}")


if __name__ == "__main__":
    cli.run_main(main, parse_args())
