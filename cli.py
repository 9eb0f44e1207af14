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
