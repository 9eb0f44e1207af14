"""Command-line plumbing shared by the entry-point scripts: argument types that reject invalid values
with a message saying what is valid, the flags several scripts share (device, chunk size, small
images, attacks), the default checkpoint paths, and `run_main`, which turns expected errors into one
line on stderr and a non-zero exit status instead of a traceback."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable

import attacks
import models
from train_config import TrainConfig

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT

CHECKPOINT_DIR = "checkpoints"  # where the scripts read and write checkpoints by default


def demo_checkpoint(model: str, nt: bool) -> str:
    """The checkpoint a demo loads by default for family `model`: its LIVEC model trained with the
    family's released batch size and the paper's NT settings (`nt`) or without NT (the released
    demos' names for HyperIQA)."""
    family = models.get_family(model)
    config = TrainConfig(model=model, dataset="livec", batch_size=family.train_defaults.get("batch_size", 16))
    return os.path.join(CHECKPOINT_DIR, dataclasses.replace(config, if_grad=nt).checkpoint_name())


DEMO_CHECKPOINTS = {"NT": demo_checkpoint(models.DEFAULT_FAMILY, True),
                    "baseline": demo_checkpoint(models.DEFAULT_FAMILY, False)}  # HyperIQA's, the released names


def positive_float(text: str) -> float:
    value = _parse(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = _parse(text, float, "a number")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _parse(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = _parse(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in (0, 1]: a share, or a bound in [0, 1] pixel units."""
    value = _parse(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 1, got {text}")
    return value


def _parse(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and value != value:  # NaN passes every comparison the wrong way
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def add_model_argument(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """--model of the scripts that load checkpoints: the family of an authors' checkpoint (ours say theirs);
    with `several`, one for every checkpoint or one per checkpoint."""
    parser.add_argument("--model", choices=models.FAMILIES, default=None, nargs="+" if several else None,
                        help="model family of the checkpoint" + ("s (one for all, or one per checkpoint)" if several
                                                                 else "") +
                             ": needed for an authors' checkpoint of a family other than hyperiqa; our checkpoints "
                             "say their family")


def add_device_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--device, read by models.select_device."""
    parser.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")


def add_chunk_size_argument(parser: argparse.ArgumentParser) -> None:
    """--chunk_size of the scripts that score or attack patches (attacks.default_chunk_size when omitted)."""
    parser.add_argument("--chunk_size", type=positive_int, default=None,
                        help="patches per forward/backward pass (memory vs speed; results do not change); "
                             f"default by device: {attacks.CPU_CHUNK_SIZE} on CPU, {attacks.CUDA_CHUNK_SIZE} on CUDA")


def add_attack_arguments(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    """--eps, --alp/--alpha and --step/--steps of the scripts that attack. One eps and the released
    demo's defaults (one step of 0.01); with `sweep`, several eps, per-attack defaults for the step
    size and the number of steps (attacks.attack_settings), the square attack's --queries and PGD's
    --restarts."""
    if sweep:
        parser.add_argument("--eps", nargs="+", type=positive_float, default=[attacks.DEFAULT_EPS],
                            help="l_inf bounds, in [0, 1] pixel units (0.03 ~ 8/255)")
    else:
        parser.add_argument("--eps", type=positive_float, default=attacks.DEFAULT_EPS,
                            help="l_inf bound of the perturbation, in [0, 1] pixel units (0.03 ~ 8/255)")
    parser.add_argument("--alp", "--alpha", dest="alp", type=positive_float,
                        default=None if sweep else attacks.DEFAULT_ALPHA,
                        help="step size of each iterative step, in [0, 1] pixel units"
                             + ("; default per attack (attacks.attack_settings)" if sweep else ""))
    parser.add_argument("--step", "--steps", dest="step", type=positive_int,
                        default=None if sweep else attacks.DEFAULT_STEPS,
                        help="number of iterative steps" + ("; default per attack (attacks.attack_settings)" if sweep else ""))
    if sweep:
        parser.add_argument("--queries", type=positive_int, default=attacks.SQUARE_QUERIES,
                            help="the square attack's budget: score queries per image "
                                 "(--alp and --step do not apply to it)")
        parser.add_argument("--restarts", type=positive_int, default=1,
                            help="PGD random starts; per image, the one that moved the score most is kept")


def add_no_plot_argument(parser: argparse.ArgumentParser) -> None:
    """--no_plot of the scripts that draw PNGs with matplotlib (plots.py)."""
    parser.add_argument("--no_plot", action="store_true", help="do not draw the PNG pictures (no matplotlib needed)")


def add_upscale_small_argument(parser: argparse.ArgumentParser) -> None:
    """--upscale_small of the scripts that cut views from one image file (views.image_views)."""
    parser.add_argument("--upscale_small", action="store_true",
                        help="upscale an image smaller than the model's crop on a side (bicubic; for HyperIQA: "
                             "smaller than 224 on a side, shorter side to 224) instead of stopping with an error")


class SameOnEveryProcess(ValueError):
    """An error that every process of a run meets alike (a setting refused before any work): under
    torchrun, rank 0 alone reports it (`run_main`)."""


def run_main(main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> None:
    """Call `main(args)` and exit: 0 on success; 1 with `prog: error: message` on a ValueError,
    OSError or ImportError (bad input, missing file, unreadable checkpoint, missing optional package);
    130 on Ctrl-C. Under torchrun with several processes the message starts with `[rank r/N]`, except
    for a SameOnEveryProcess error, which rank 0 alone prints (the others exit with status 1 in
    silence). Set HYPERIQA_DEBUG=1 to see the traceback instead."""
    prog = os.path.basename(sys.argv[0]) or "hyperiqa"
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1  # one of several processes started by torchrun
    ranked = f"[rank {os.environ.get('RANK', '?')}/{os.environ['WORLD_SIZE']}] {prog}" if several else prog
    try:
        main(args)
    except KeyboardInterrupt:
        print(f"{ranked}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except (ValueError, OSError, ImportError) as exc:
        if os.environ.get("HYPERIQA_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, SameOnEveryProcess):
            print(f"{ranked}: error: {message}", file=sys.stderr)
        elif not several or os.environ.get("RANK", "0") == "0":
            print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(0)
