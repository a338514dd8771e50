"""``hwcomp optimize``: per-layer sparsity/precision searched with the target in the loop."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import HwcompError
from .args import (
    _print,
    cosine_type,
    percent_list_type,
    positive_float,
    resolve_target,
    run_check,
    sparsity_list_type,
)


def add_optimize_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("model", help="file.py:factory returning (nn.Module, example_inputs)")
    s.add_argument("-t", "--target", default="host")
    budget = s.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency-budget", type=positive_float, metavar="MS", help="milliseconds, > 0")
    budget.add_argument("--fidelity-target", type=cosine_type, metavar="COS", help="cosine, in (0, 1]")
    s.add_argument("--calib", required=True, help=".npz, one array per input, samples on axis 0")
    s.add_argument("-o", "--output", default="out/optimized")
    s.add_argument("--sparsities", type=sparsity_list_type, default="0.5,0.7,0.9",
                   help="sparsity levels to offer per layer, each in (0, 1) (default 0.5,0.7,0.9)")
    s.add_argument("--no-int8", action="store_true", help="do not offer int8")
    s.add_argument("--sparse-int8", action="store_true", help="also offer sparse + int8 (int8 BSR kernels)")
    s.add_argument("--ranks", type=percent_list_type, default="",
                   help="also offer low rank: percent of each layer's full rank kept (e.g. 25)")
    s.add_argument("--widths", type=percent_list_type, default="",
                   help="also offer structured widths on FFN-like Linear pairs: percent of the hidden units kept "
                        "(e.g. 75,50)")
    s.add_argument("--device", default="local",
                   help="where to measure: local, rpc://HOST:PORT or tracker://HOST:PORT/KEY (the target's board)")


def check_optimize_args(args) -> None:
    from ..frontend.model import read_npz
    from ..runtime.rpc import parse_device_url

    spec, sep, factory = args.model.rpartition(":")
    if not sep or not spec.endswith(".py") or not factory.isidentifier():
        raise HwcompError(f"optimize takes file.py:factory, got {args.model!r}")
    if not Path(spec).is_file():
        raise HwcompError(f"model file {spec!r} does not exist")
    read_npz(args.calib, "calibration")
    parse_device_url(args.device)
    if not args.sparsities and args.no_int8 and not args.ranks and not args.widths:
        raise HwcompError("nothing to search: give --sparsities, --ranks or --widths, or allow int8")
    resolve_target(args)


def cmd_optimize(args) -> int:
    import torch

    from ..compress.api import load_model as load_factory
    from ..policy.optimize import OptimizeOptions, load_samples, optimize

    run_check(args, check_optimize_args)
    model, example = load_factory(args.model)
    if example is None:
        raise HwcompError(f"{args.model} must return (model, example_inputs)")
    example = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    options = OptimizeOptions(latency_budget_ms=args.latency_budget, fidelity_target=args.fidelity_target,
                              out_dir=args.output, sparsities=tuple(args.sparsities), int8=not args.no_int8,
                              sparse_int8=args.sparse_int8, ranks=tuple(args.ranks), widths=tuple(args.widths),
                              device=args.device)
    res = optimize(model.eval(), example, resolve_target(args), load_samples(args.calib, len(example)), options,
                   log=_print)
    for m in [*res.baselines, res.chosen]:
        _print(f"{m.name:28s} {m.latency_ms:9.3f} ms   cosine {m.cosine:.5f}")
    _print(f"policy: {args.output}/policy.json (+ .txt), artifact: {res.artifact_path}, plot: {args.output}/pareto.png")
    return 0
