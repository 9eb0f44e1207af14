"""Command-line plumbing shared by the entry-point scripts: argument types that reject invalid values
with a message saying what is valid, and `run_main`, which turns expected errors into one line on
stderr and a non-zero exit status instead of a traceback."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


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


def _parse(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and value != value:  # NaN passes every comparison the wrong way
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def add_device_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--device, read by models.select_device."""
    parser.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")


def add_chunk_size_argument(parser: argparse.ArgumentParser, cpu_default: int, cuda_default: int) -> None:
    """--chunk_size of the scripts that score or attack patches (attacks.default_chunk_size when omitted)."""
    parser.add_argument("--chunk_size", type=positive_int, default=None,
                        help="patches per forward/backward pass (memory vs speed; results do not change); "
                             f"default by device: {cpu_default} on CPU, {cuda_default} on CUDA")


def add_upscale_small_argument(parser: argparse.ArgumentParser) -> None:
    """--upscale_small of the scripts that cut patches from one image file (data_loader.image_patches)."""
    parser.add_argument("--upscale_small", action="store_true",
                        help="upscale an image smaller than 224 on a side (bicubic, shorter side to 224) "
                             "instead of stopping with an error")


def run_main(main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> None:
    """Call `main(args)` and exit: 0 on success; 1 with `prog: error: message` on a ValueError or
    OSError (bad input, missing file, unreadable checkpoint); 130 on Ctrl-C. Set HYPERIQA_DEBUG=1 to
    see the traceback instead."""
    prog = os.path.basename(sys.argv[0]) or "hyperiqa"
    try:
        main(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except (ValueError, OSError) as exc:
        if os.environ.get("HYPERIQA_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(0)
