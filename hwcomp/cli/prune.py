"""``hwcomp prune``: argument definitions, checks and runner; the work is :func:`hwcomp.compress.api.prune_model`.

    hwcomp prune MODEL [--criterion taylor] [--granularity block:16x1] [--sparsity 0.9] [--data data.npz]
                       [--finetune-epochs N] [--distill] [--schedule oneshot|gradual] [-o out.pt2]

MODEL is a ``.pt2`` file written by ``torch.export.save`` or ``path/to/file.py:factory`` (see
:func:`hwcomp.compress.api.load_model`). ``--data`` is a ``.npz`` with array ``x`` (inputs, first axis =
samples) and optional ``y`` (see :func:`hwcomp.compress.batches.load_npz`). Without example inputs from the
model, the first sample of ``x`` is used. The result is a ``.pt2`` with the masks baked into the weights
(``--output``, default ``<model>.pruned.pt2``), and optionally a JSON report (``--report``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import HwcompError
from .args import (
    check_output_path,
    nonnegative_int,
    positive_float,
    positive_int,
    run_check,
    sparsity_type,
)


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``prune`` verb's arguments to ``parser``."""
    from ..compress.criteria import CRITERIA

    parser.add_argument("model", help="a .pt2 exported program, or file.py:factory")
    parser.add_argument("--criterion", choices=CRITERIA, default="taylor", help="importance criterion")
    parser.add_argument("--granularity", type=granularity_type, default="block:16x1",
                        help="'unstructured' or 'block:RxC' (R output rows x C input columns)")
    parser.add_argument("--sparsity", type=sparsity_type, default=0.9,
                        help="fraction of blocks pruned per layer, in [0, 1)")
    parser.add_argument("--scope", choices=("layer", "global"), default="layer")
    parser.add_argument("--data", help=".npz with arrays x (inputs) and optional y (labels)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--max-batches", type=positive_int, default=None, help="batches used to score weights")
    parser.add_argument("--finetune-epochs", type=nonnegative_int, default=0)
    parser.add_argument("--distill", action="store_true", help="fine-tune against the unpruned model")
    parser.add_argument("--schedule", choices=("oneshot", "gradual"), default="oneshot")
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument("--exclude", action="append", default=None,
                        help="glob of weights left dense (repeatable); default: the output layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="output .pt2 (default: <model>.pruned.pt2)")
    parser.add_argument("--report", help="write the pruning report as JSON here")


def granularity_type(text: str) -> str:
    """``unstructured`` or ``block:RxC`` with positive R and C (kept as text)."""
    from ..compress.prune import Granularity

    try:
        g = Granularity.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if g.rows < 1 or g.cols < 1:
        raise argparse.ArgumentTypeError(f"block dimensions must be positive, got {text!r}")
    return text


def check_prune_args(args: argparse.Namespace) -> None:
    """What ``hwcomp prune`` can refuse before loading the model (one-line :class:`HwcompError`)."""
    from ..compress.criteria import DATA_CRITERIA
    from ..frontend.model import read_npz

    spec = args.model
    if spec.endswith(".pt2"):
        path = spec
    else:
        path, sep, factory = spec.rpartition(":")
        if not sep or not path.endswith(".py") or not factory.isidentifier():
            raise HwcompError(f"MODEL must be a .pt2 file or file.py:factory, got {spec!r}")
    if not Path(path).is_file():
        raise HwcompError(f"model file {path!r} does not exist")
    if args.data:
        arrays = read_npz(args.data, "--data")
        if "x" not in arrays:
            raise HwcompError(f"--data {args.data!r} has no array 'x' (inputs, samples on axis 0); it has "
                              f"{list(arrays)}")
    if args.criterion in DATA_CRITERIA and not args.data:
        raise HwcompError(f"--criterion {args.criterion} scores weights on data: give --data d.npz "
                          "(or use --criterion l1 / l2)")
    for flag, given in (("--distill", args.distill), ("--schedule gradual", args.schedule == "gradual")):
        if given and not args.finetune_epochs:
            raise HwcompError(f"{flag} works during fine-tuning: give --finetune-epochs N (N >= 1)")
    if args.finetune_epochs and not args.data:
        raise HwcompError("fine-tuning (--finetune-epochs) needs --data d.npz")
    check_output_path(args.output, "--output")
    check_output_path(args.report, "--report")


def run_prune(args: argparse.Namespace) -> int:
    """Run ``hwcomp prune`` with parsed arguments; returns the process exit code."""
    import torch

    from ..compress.api import PruneOptions, load_model, prune_model, save_pruned
    from ..compress.batches import load_npz
    from ..compress.finetune import FinetuneConfig

    run_check(args, check_prune_args)
    torch.manual_seed(args.seed)
    model, example = load_model(args.model)
    data = load_npz(args.data, args.batch_size, args.seed) if args.data else None
    if example is None:
        if data is None:
            raise HwcompError("no example inputs: pass --data or return (model, example_inputs) from the factory")
        example = data[0][0][:1]
    options = PruneOptions(criterion=args.criterion, granularity=args.granularity, sparsity=args.sparsity,
                           scope=args.scope, exclude=args.exclude or "auto",
                           finetune=FinetuneConfig(epochs=args.finetune_epochs, lr=args.lr), distill=args.distill,
                           schedule=args.schedule, max_batches=args.max_batches)
    report = prune_model(model, example, data, options)
    source = args.model if args.model.endswith(".pt2") else args.model.rpartition(":")[0]
    output = args.output or Path(source).with_suffix(".pruned.pt2").as_posix()
    save_pruned(model, example, output)
    print(report)
    print(f"wrote {output}")
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    return 0
