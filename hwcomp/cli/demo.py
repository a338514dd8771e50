"""``hwcomp demo``: the README's first command."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import _print


def add_demo_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("-o", "--output", default="out/demo", help="artifact directory (default out/demo)")


def cmd_demo(args) -> int:
    """The README's first command: a small CNN and an MLP, compiled for the host, timed vs PyTorch."""
    from ..demo import run_demo

    return run_demo(Path(args.output), log=_print)
