"""``hwcomp targets`` and ``hwcomp compile``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import HwcompError
from .args import (
    _print,
    add_input_shape_argument,
    add_model_target_arguments,
    add_sparse_arguments,
    check_model_file,
    check_output_path,
    check_sparse_args,
    cosine_type,
    resolve_target,
    run_check,
)

# ----------------------------------------------------------------------------- hwcomp targets


def add_targets_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--json", action="store_true")


def cmd_targets(args) -> int:
    from ..target import get_target, target_names

    rows = []
    for name in target_names():
        t = get_target(name)
        cpu = t.tvm.get("mcpu") or t.tvm.get("arch", "")
        rows.append((name, t.arch, cpu, str(t.vector_bits), t.int8_dot, "x".join(map(str, t.sparse_block)),
                     t.description))
    if args.json:
        print(json.dumps([get_target(n).to_dict() for n in target_names()], indent=2))
        return 0
    head = ("name", "arch", "cpu/sm", "vector", "int8 dot", "block", "description")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


# ----------------------------------------------------------------------------- hwcomp compile


def add_compile_arguments(s: argparse.ArgumentParser) -> None:
    add_model_target_arguments(s)
    s.add_argument("-o", "--output", required=True, help="artifact directory to write")
    add_input_shape_argument(s)
    s.add_argument("--db", help="tuning database directory (default: the target's, when present)")
    s.add_argument("--no-retime", action="store_true",
                   help="serve records tuned on another CPU as they are (default: each is timed against "
                        "the default schedule here once, and served only where faster)")
    s.add_argument("--archive", help="also write the artifact as one .tar.gz")
    add_sparse_arguments(s, "prune matmul/linear weights to this sparsity, in [0, 1)")
    s.add_argument("--quantize", choices=["int8"], help="post-training int8 quantization")
    s.add_argument("--calib", help="calibration inputs (.npz, arrays named after the inputs, samples on axis 0)")
    s.add_argument("--calib-method", choices=["minmax", "percentile", "entropy", "mse"], help="default minmax")
    s.add_argument("--weight-rounding", choices=["gptq", "nearest"],
                   help="int8 weight codes: gptq (default) compensates each rounding error through the "
                        "calibration inputs; nearest rounds each weight alone (faster to build)")
    s.add_argument("--skip", help="comma-separated layer names or globs left in fp32")
    s.add_argument("--fidelity-target", type=cosine_type,
                   help="leave the worst layers in fp32 until this cosine, in (0, 1], is met")
    s.add_argument("--full-range-weights", action="store_true",
                   help="int8: keep 8-bit weights where the target's fastest kernel wants 7 (AVX2 without VNNI)")
    s.add_argument("--exact-math", action="store_true",
                   help="libm's exp/erf/tanh instead of the vectorized polynomial approximations (CPU)")
    s.add_argument("--no-winograd", action="store_true",
                   help="direct 3x3 convolutions only (CPU, fp32 and int8): Winograd is 1.2-4x faster per "
                        "layer but stores their weights transformed, 1.8x (F(2,3)) or 4x (F(4,3)) larger, and "
                        "int8's rounds some of them")
    s.add_argument("--dynamic", action="append", metavar="INPUT:DIM=LO..HI",
                   help="keep dimension DIM of INPUT symbolic over LO..HI (repeatable); inputs that share a "
                        "length share a symbol: --dynamic seq=1..512 --dynamic input_ids:1=seq "
                        "--dynamic attention_mask:1=seq")
    s.add_argument("--force", action="store_true",
                   help="replace an output folder that holds something other than an hwcomp artifact")
    s.add_argument("--trust-pickle", action="store_true",
                   help="import a .pt2 that holds pickled content (runs its author's code: trusted files only)")


def check_compile_args(args) -> None:
    """Everything ``hwcomp compile`` can refuse without importing the model."""
    from ..frontend import parse_dynamic, parse_input_shapes

    check_model_file(args.model)
    if args.db and Path(args.db).exists() and not Path(args.db).is_dir():
        raise HwcompError(f"--db {args.db}: not a directory (a tuning database is a directory; "
                          "a .tar.gz goes through 'hwcomp db import')")
    parse_input_shapes(args.input_shape)
    parse_dynamic(getattr(args, "dynamic", None))
    check_sparse_args(args)
    if args.quantize:
        if not args.calib:
            raise HwcompError("--quantize int8 needs --calib data.npz (calibration inputs, arrays named after the "
                              "model's inputs)")
        from ..frontend.model import read_npz

        read_npz(args.calib, "calibration")
    else:
        given = [flag for flag, v in (("--calib", args.calib), ("--calib-method", args.calib_method),
                                      ("--skip", args.skip), ("--fidelity-target", args.fidelity_target),
                                      ("--full-range-weights", args.full_range_weights),
                                      ("--weight-rounding", args.weight_rounding)) if v]
        if given:
            raise HwcompError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --quantize int8; "
                              f"without it {'it' if len(given) == 1 else 'they'} would be ignored")
    check_output_path(args.archive, "--archive")
    resolve_target(args)


def _compile_options(args, target):
    from ..api import CompileOptions
    from ..build_measure import bsr_latency
    from ..passes.dense_to_bsr import sparse_passes_from_options

    passes = []
    summary: dict = {}
    sparse = sparse_passes_from_options(args, target, latency=bsr_latency(target))
    quantize = getattr(args, "quantize", None)
    if sparse:
        # With --quantize the pruned layers become int8 BSR kernels inside the quantizer: only
        # the pruning pass (if any) runs here, not the fp32 BSR rewrite.
        from ..passes.dense_to_bsr import DenseToBSR

        passes += [p for p in sparse if not isinstance(p, DenseToBSR)] if quantize else sparse
        summary["sparse"] = {"sparsity": args.sparsity, "block": args.block, "threshold": args.sparse_threshold}
    if quantize:
        from ..passes.dense_to_bsr import parse_block
        from ..quantize import QuantConfig, quantize_passes

        config = QuantConfig(skip=args.skip or (), calib_method=args.calib_method or "minmax",
                             fidelity_target=args.fidelity_target,
                             sparse_threshold=(args.sparse_threshold or 0.7) if sparse else None,
                             sparse_block=parse_block(args.block) if sparse and args.block else None,
                             reduce_range=False if getattr(args, "full_range_weights", False) else None,
                             weight_rounding=args.weight_rounding or QuantConfig.weight_rounding,
                             winograd=not getattr(args, "no_winograd", False))
        passes += quantize_passes(target, config, args.calib, log=_print)
        summary["quantize"] = {"bits": 8, "calib_method": args.calib_method or "minmax", "skip": args.skip,
                               "weight_rounding": config.weight_rounding}
    trust = {k: True for k in ("force", "trust_pickle") if getattr(args, k, False)}  # set only when asked
    if getattr(args, "dynamic", None):
        from ..frontend import parse_dynamic

        trust["dynamic"] = parse_dynamic(args.dynamic)
    return CompileOptions(passes=passes, database=args.db, compression_summary=summary or None,
                          fast_math=not getattr(args, "exact_math", False),
                          retime_records=not getattr(args, "no_retime", False),
                          winograd=not getattr(args, "no_winograd", False), **trust)


def cmd_compile(args) -> int:
    from ..api import compile as hw_compile
    from ..api import summarize_fidelity
    from ..frontend import parse_input_shapes

    run_check(args, check_compile_args)
    target = resolve_target(args)
    options = _compile_options(args, target)
    # The frontends refuse --input-shape names the model has no input for.
    art = hw_compile(args.model, target, args.output, input_shapes=parse_input_shapes(args.input_shape),
                     options=options, log=_print)
    for p in options.passes:  # per-layer decisions (sparse vs dense, expected gain)
        if hasattr(getattr(p, "report", None), "table"):
            _print(p.report.table())
    _print(f"artifact: {art.path}")
    _print(summarize_fidelity(art.fidelity) + (" (against the uncompressed model)" if options.passes else ""))
    if args.archive:
        _print(f"archive: {art.pack(args.archive)}")
    return 0
