"""Train and test a quality model (HyperIQA by default, or any family: --model), with or without NT
(gradient norm regularization), as in the paper's release, or with adversarial training (AT), alone
or with NT.

    python train_test_IQA_sparsity.py --dataset livec --dataset_path /PATH/ChallengeDB_release/
    python train_test_IQA_sparsity.py --dataset livec --dataset_path /PATH/ChallengeDB_release/ --if_grad
    python train_test_IQA_sparsity.py --dataset livec --dataset_path /PATH/ChallengeDB_release/ --adv_train fgsm
    python train_test_IQA_sparsity.py --model dbcnn --dataset livec --dataset_path /PATH/ChallengeDB_release/ --if_grad
    python train_test_IQA_sparsity.py --model linearityiqa --dataset koniq-10k --dataset_path /PATH/koniq10k/ --if_grad

Each family trains by its released protocol (views, loss, optimizer stages, default settings: see
the README's table of the families); a flag given on the command line overrides the family's value.

Prints the released per-epoch table (Epoch, Train_Loss, Train_SRCC, Test_SRCC, Test_PLCC), the best
SROCC/PLCC of each round and the median over rounds, and appends the same lines to a log file.
Progress within an epoch goes to stderr. The best checkpoint of a run is written to --checkpoint_dir
under the name the demos load; Ctrl-C stops after saving a resumable state, continued by --resume.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

import distributed
import folders
import models
from attacks import PGD_STEP_FRACTION, PGD_STEPS
from cli import (CHECKPOINT_DIR, SameOnEveryProcess, add_device_argument, fraction, nonnegative_float, nonnegative_int,
                 positive_float, positive_int, run_main)
from data_loader import DEFAULT_CACHE_GIB, DEFAULT_NUM_WORKERS, check_global_batch
from HyperIQASolver import check_images, train_and_test
from models import PATCH_SIZE
from nt_regularizer import NT_MODES
from train_config import ADV_DIRECTIONS, ADV_LABEL_RANGES, ADV_LABELS, ADV_TRAIN_METHODS, SCHEDULES, TrainConfig

DEFAULTS = TrainConfig()
SYNTHETIC_ROOT = "data/synthetic"  # where --dataset synthetic is built when no --dataset_path is given
# Settings whose default is the family's released value (Family.train_defaults); HyperIQA's in the help.
FAMILY_DEFAULTED = ("lr", "lr_ratio", "weight_decay", "batch_size", "epochs", "train_patch_num", "test_patch_num")


def family_default(name: str) -> str:
    return f"default: the family's released value (HyperIQA: {getattr(DEFAULTS, name)})"


def hyperiqa_patch_size(text: str) -> int:
    value = positive_int(text)
    if value != PATCH_SIZE:
        raise argparse.ArgumentTypeError(f"must be {PATCH_SIZE}: HyperIQA's pooling layers are sized for "
                                         f"{PATCH_SIZE}x{PATCH_SIZE} patches, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", choices=models.FAMILIES, default=DEFAULTS.model,
                        help="the quality-model family to train, by its released protocol")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULTS.dataset, choices=folders.DATASETS,
                      help="data set to train and test on (folder layouts: folders.LAYOUTS)")
    data.add_argument("--dataset_path", default=None,
                      help="folder of the data set (for 'csv': the CSV file or a folder holding labels.csv); "
                           f"required except for 'synthetic', which is built in {SYNTHETIC_ROOT}/ by default")
    data.add_argument("--split_file", default=None,
                      help="train/test split to use instead of a seeded random one: a JSON list or a pickled list "
                           "of image indices (reference-image indices for live/csiq/tid2013), the first 80%% for "
                           "training, e.g. the paper's CLIVE_traintest_index.pkl (a family with a validation split, "
                           "LinearityIQA: the first 60%% train, the next 20%% validate, on KonIQ-10k 7058 / 1000 / "
                           "2015); read without running pickle code")
    data.add_argument("--train_patch_num", type=positive_int, default=None,
                      help="random patches (views) cut from each training image per epoch, for a family that "
                           "crops; " + family_default("train_patch_num"))
    data.add_argument("--test_patch_num", type=positive_int, default=None,
                      help="random patches (views) cut from each test image; the image's prediction is their mean; "
                           + family_default("test_patch_num"))
    data.add_argument("--patch_size", type=hyperiqa_patch_size, default=PATCH_SIZE,
                      help="side of HyperIQA's square patches in pixels; HyperIQA accepts only 224")
    data.add_argument("--num_workers", type=nonnegative_int, default=DEFAULT_NUM_WORKERS,
                      help="processes that decode images ahead of the model (0: decode in the main process)")
    data.add_argument("--cache_gib", type=nonnegative_float, default=DEFAULT_CACHE_GIB,
                      help="memory (GiB) for the decoded training images: within it, every image is decoded once "
                           "and each epoch's batches are one global shuffle of all patches, as released; past it, "
                           "patches are shuffled within windows of images (said when it happens)")

    train = parser.add_argument_group("training")
    train.add_argument("--lr", type=positive_float, default=None,
                       help="learning rate (HyperIQA: of the backbone; the hyper network starts at lr * lr_ratio; "
                            "DBCNN: of stage 2, every layer) " + family_default("lr"))
    train.add_argument("--lr_ratio", type=positive_float, default=None,
                       help="ratio of the learning rates of the family's two parameter groups or stages (HyperIQA: "
                            "hyper network / backbone at the start; DBCNN: stage 1, the linear layer, / stage 2; "
                            "LinearityIQA: backbone / heads, the released ft_lr_ratio); "
                            + family_default("lr_ratio"))
    train.add_argument("--weight_decay", type=nonnegative_float, default=None,
                       help="the optimizer's L2 weight decay; " + family_default("weight_decay"))
    train.add_argument("--batch_size", type=positive_int, default=None,
                       help="views per step; " + family_default("batch_size"))
    train.add_argument("--epochs", type=positive_int, default=None,
                       help="epochs per round (per stage, for a family trained in stages); " + family_default("epochs"))
    train.add_argument("--train_test_num", type=positive_int, default=DEFAULTS.train_test_num,
                       help="rounds, each on a new seeded split (the same split with --split_file); "
                            "the median of the rounds' best SROCC/PLCC is reported")
    train.add_argument("--schedule", choices=SCHEDULES, default=DEFAULTS.schedule,
                       help="'released': exactly the released optimizer schedule, under which the hyper network "
                            "stops training after epoch 1 and Adam restarts every epoch (the paper's numbers); "
                            "'corrected': both parts keep training, one Adam, the hyper-network lr divided by 10 "
                            "every 6 epochs")
    train.add_argument("--seed", type=nonnegative_int, default=DEFAULTS.seed,
                       help="seed of the split, the patches and the initial weights")
    add_device_argument(train)
    train.add_argument("--sync_bn", action="store_true",
                       help="with several processes (torchrun), BatchNorm statistics over the whole global batch "
                            "(SyncBatchNorm, CUDA only) instead of each process's share, as released")
    train.add_argument("--no_pretrained", action="store_true",
                       help="initialize the backbone from scratch instead of with its ImageNet weights (HyperIQA: "
                            "ResNet-50; DBCNN: VGG-16, and the SCNN branch unless --scnn_weights)")
    train.add_argument("--backbone_weights", default=None,
                       help="a state_dict file of the family's ImageNet backbone (HyperIQA: torchvision's resnet50; "
                            "DBCNN: vgg16) to use instead of torchvision's download/cache")

    nt = parser.add_argument_group("NT (gradient norm regularization)")
    nt.add_argument("--if_grad", action="store_true",
                    help="train with NT: loss = the family's released loss (HyperIQA: L1) + weight * penalty on the "
                         "l1 norm of the input gradient")
    nt.add_argument("--weight", type=nonnegative_float, default=DEFAULTS.weight, help="weight of the NT penalty")
    nt.add_argument("--h", type=positive_float, default=DEFAULTS.h,
                    help="finite-difference step of the NT penalty, in normalized-input units")
    nt.add_argument("--nt_mode", choices=NT_MODES, default=DEFAULTS.nt_mode,
                    help="'finite_difference' (the paper's) or 'exact' (double backpropagation)")

    adv = parser.add_argument_group("adversarial training (AT); combines with NT (--if_grad)")
    adv.add_argument("--adv_train", choices=ADV_TRAIN_METHODS, default=DEFAULTS.adv_train,
                     help="each step, replace a share of the batch by adversarial versions made against the current "
                          "model: 'fgsm' (one step of eps) or 'pgd' (random start, several steps); 'none': no AT")
    adv.add_argument("--adv_eps", type=fraction, default=DEFAULTS.adv_eps,
                     help="l_inf radius of the training attack, in [0, 1] pixel units (4/255 = 0.0157)")
    adv.add_argument("--adv_steps", type=positive_int, default=None,
                     help=f"pgd only: number of steps (when not given: {PGD_STEPS})")
    adv.add_argument("--adv_alpha", type=positive_float, default=None,
                     help=f"pgd only: step size in pixel units (when not given: {PGD_STEP_FRACTION} * eps / steps)")
    adv.add_argument("--adv_direction", choices=ADV_DIRECTIONS, default=DEFAULTS.adv_direction,
                     help="'away': as the evaluation attacks, push a score above the middle of the score range down "
                          "and the others up; 'up': raise the predicted quality of every patch")
    adv.add_argument("--adv_label", choices=ADV_LABELS, default=DEFAULTS.adv_label,
                     help="label of an adversarial patch: 'ssim', mos - adv_lambda * (1 - SSIM(clean, adversarial)) "
                          "* (MAX - MIN), clamped to [MIN, MAX] (see --adv_label_range); 'keep', the MOS")
    adv.add_argument("--adv_label_range", choices=ADV_LABEL_RANGES, default=DEFAULTS.adv_label_range,
                     help="MIN and MAX of the 'ssim' label: 'train', the lowest and highest MOS of the training set "
                          "(as Chistyakova et al.); 'nominal', the ends of the data set's score scale (0 and 100 "
                          "on LIVEC)")
    adv.add_argument("--adv_lambda", type=nonnegative_float, default=DEFAULTS.adv_lambda,
                     help="weight of the SSIM label correction")
    adv.add_argument("--adv_ratio", type=fraction, default=DEFAULTS.adv_ratio,
                     help="share of the patches of each batch made adversarial, in (0, 1]")

    out = parser.add_argument_group("output")
    out.add_argument("--checkpoint_dir", default=CHECKPOINT_DIR,
                     help="where the best checkpoint ({dataset}_bs{batch_size}_grad[...]...pth, the name the demos "
                          "load; with AT ending _adv[fgsm-0.0157].pth or _adv[pgd10-0.0157].pth) and the resumable "
                          "state (*.resume.pth) are written")
    out.add_argument("--log_file", default=None,
                     help="file the printed results are appended to (default: the checkpoint's name with .log, "
                          "in --checkpoint_dir; '' for none)")
    out.add_argument("--resume", nargs="?", const="", default=None, metavar="STATE",
                     help="continue an interrupted run from its resumable state (default: the one in "
                          "--checkpoint_dir for these settings); the settings must be the same (--epochs may grow)")
    add_family_options(parser)
    return parser.parse_args(argv)


def add_family_options(parser: argparse.ArgumentParser) -> None:
    """The settings of each family that has its own (Family.options), one group per family."""
    for name in models.FAMILIES:
        family = models.get_family(name)
        if not family.options:
            continue
        group = parser.add_argument_group(f"{family.display_name} only (--model {name})")
        for option in family.options:
            extra = {"action": option.action} if option.action else {"type": option.type}
            # SUPPRESS: absent when not given (the help states the family's default, not argparse's None)
            group.add_argument(f"--{option.name}", default=argparse.SUPPRESS,
                               help=f"{option.help} (default: {option.default})", **extra)


def training_config(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The run's TrainConfig (the family's released values for the FAMILY_DEFAULTED settings not given)
    and the family's file options for its builder. ValueError for an option of another family."""
    family = models.get_family(args.model)
    for name in models.FAMILIES:
        for option in models.get_family(name).options:
            if name != args.model and getattr(args, option.name, None) is not None:
                raise ValueError(f"--{option.name} applies to --model {name}, not {args.model}")
    values = {name: getattr(args, name) for name in FAMILY_DEFAULTED}
    values = {name: family.train_defaults.get(name, getattr(DEFAULTS, name)) if value is None else value
              for name, value in values.items()}
    chosen = {option.name: getattr(args, option.name, option.default) for option in family.options}
    in_config = {option.name: chosen[option.name] for option in family.options if option.in_config}
    builder = {option.name: chosen[option.name] for option in family.options if not option.in_config}
    settings = {**vars(args), **values, "options": in_config}
    return TrainConfig.from_args(argparse.Namespace(**settings)), builder


def main(args: argparse.Namespace) -> None:
    config, build_options = training_config(args)
    root = args.dataset_path or (SYNTHETIC_ROOT if args.dataset == "synthetic" else None)
    if root is None:
        raise ValueError(f"--dataset_path is required: the {args.dataset} folder, holding {folders.LAYOUTS[args.dataset]}")
    with distributed.process_group(args.device) as processes:
        run(args, config, root, processes, build_options)


def run(args: argparse.Namespace, config: TrainConfig, root: str, processes: distributed.Processes,
        build_options: dict | None = None) -> None:
    """The training run of this process; rank 0 alone prints the table and writes the log."""
    try:
        check_global_batch(config.batch_size, processes.world_size)  # before any work
    except ValueError as exc:
        raise SameOnEveryProcess(str(exc)) from None  # said once, not by every process
    samples = distributed.main_first(processes, lambda: folders.list_samples(args.dataset, root, args.seed))
    check_images(config, samples, args.split_file)  # bad data stops the run before anything is written
    files = config.run_files(args.checkpoint_dir)
    resume = None if args.resume is None else (args.resume or files.state)
    log_path = files.log if args.log_file is None else (args.log_file or None)
    if not processes.is_main:
        log_path = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") if log_path else contextlib.nullcontext() as log_file:
        def log(line: str) -> None:
            if processes.is_main:
                print(line, flush=True)
            if log_file is not None:
                log_file.write(line + "\n")
                log_file.flush()

        if processes.launched:
            log(f"Processes: {processes.world_size}")
        if config.model != DEFAULTS.model:
            family = models.get_family(config.model)
            log(f"Model: {family.display_name} ({family.paper})"
                + "".join(f", {key} {value}" for key, value in config.options.items()))
        log("Dataset: %s, Batch Size: %i, If Grad: %s, Weight: %e, Schedule: %s, Images: %d, Device: %s."
            % (config.dataset, config.batch_size, config.if_grad, config.weight, config.schedule, len(samples),
               processes.device))
        if config.adv_train != "none":
            alpha, steps = config.adversarial_attack()
            log("Adversarial training: %s, eps %.4f, %d step(s) of %.4f, direction %s, label %s (lambda %g, "
                "range %s), share %g" % (config.adv_train, config.adv_eps, steps, alpha, config.adv_direction,
                                         config.adv_label, config.adv_lambda, config.adv_label_range, config.adv_ratio))
        results = train_and_test(config, samples, processes, args.checkpoint_dir, split_file=args.split_file,
                                 pretrained=not args.no_pretrained, backbone_weights=args.backbone_weights,
                                 num_workers=args.num_workers, cache_gib=args.cache_gib, resume=resume, log=log,
                                 build_options=build_options)
        srcc_all, plcc_all = np.array(results).T
        log("Testing median SRCC %4.4f,\tmedian PLCC %4.4f" % (np.median(srcc_all), np.median(plcc_all)))
        if processes.is_main:
            print(f"best checkpoint: {files.checkpoint}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main, parse_args())
