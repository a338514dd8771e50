"""``hwcomp`` command line: each verb parses its arguments and calls the Python API, nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import HwcompError


def _print(s: str) -> None:
    print(s, flush=True)


def cmd_targets(args) -> int:
    from .target import get_target, target_names

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


def _compile_options(args, target):
    from .api import CompileOptions

    passes = []
    summary: dict = {}
    sparse = sparse_passes_from_args(args, target)
    quantize = getattr(args, "quantize", None)
    if sparse:
        # With --quantize the pruned layers become int8 BSR kernels inside the quantizer: only
        # the pruning pass (if any) runs here, not the fp32 BSR rewrite.
        from .passes.dense_to_bsr import DenseToBSR

        passes += [p for p in sparse if not isinstance(p, DenseToBSR)] if quantize else sparse
        summary["sparse"] = {"sparsity": args.sparsity, "block": args.block, "threshold": args.sparse_threshold}
    if quantize:
        from .passes.dense_to_bsr import parse_block
        from .quantize import QuantConfig, quantize_passes

        config = QuantConfig(skip=args.skip or (), calib_method=args.calib_method,
                             fidelity_target=args.fidelity_target,
                             sparse_threshold=(args.sparse_threshold or 0.7) if sparse else None,
                             sparse_block=parse_block(args.block) if sparse and args.block else None,
                             reduce_range=False if getattr(args, "full_range_weights", False) else None)
        passes += quantize_passes(target, config, args.calib, log=_print)
        summary["quantize"] = {"bits": 8, "calib_method": args.calib_method, "skip": args.skip}
    return CompileOptions(passes=passes, database=args.db, compression_summary=summary or None,
                          fast_math=not getattr(args, "exact_math", False))


def sparse_passes_from_args(args, target, tune: bool = False) -> list:
    """``--sparsity/--block/--sparse-threshold`` → the sparse passes (none when neither is given).

    BSR choices are read from (and, with ``tune``, measured over the whole knob space into) the
    tuning database ``--db``, or the target's own."""
    sparsity = getattr(args, "sparsity", None)
    if sparsity is None and getattr(args, "sparse_threshold", None) is None:
        return []
    from .passes.dense_to_bsr import parse_block, sparse_passes

    try:
        block = parse_block(args.block) if args.block else None
    except ValueError as e:
        raise HwcompError(str(e)) from None
    return list(sparse_passes(target, sparsity, block, args.sparse_threshold or 0.7, tune=tune,
                              cache_dir=getattr(args, "db", None), log=_print if tune else None))


def cmd_compile(args) -> int:
    from .api import compile as hw_compile
    from .api import summarize_fidelity
    from .frontend import parse_input_shapes
    from .target import get_target

    target = get_target(args.target)
    options = _compile_options(args, target)
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


def cmd_run(args) -> int:
    import numpy as np

    from .artifact import Artifact

    art = Artifact.load(args.artifact)
    if args.inputs:
        try:
            with np.load(args.inputs) as z:
                inputs = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise HwcompError(f"cannot read inputs {args.inputs}: {e}") from e
        if set(inputs) != {s["name"] for s in art.inputs} and len(inputs) == len(art.inputs):
            inputs = list(inputs.values())  # positional .npz (arr_0, arr_1, ...)
    else:
        ref = art.reference()
        if ref is None:
            raise HwcompError("no --inputs given and the artifact stores no example inputs")
        inputs = ref[0]
    outputs = art.run(inputs)
    for i, o in enumerate(outputs):
        _print(f"output{i}: shape {list(o.shape)} dtype {o.dtype}")
    if args.output:
        np.savez(args.output, **{f"output{i}": o for i, o in enumerate(outputs)})
        _print(f"wrote {args.output}")
    return 0


def cmd_inspect(args) -> int:
    from .api import summarize_fidelity
    from .artifact import Artifact

    art = Artifact.load(args.artifact)
    m = art.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    t = m["target"]
    _print(f"artifact   {art.path}")
    _print(f"source     {m['source']}")
    _print(f"target     {t['name']} ({t['description']})")
    _print(f"built with hwcomp {m['hwcomp_version']}, TVM {m['tvm_version']}, {m['created']}")
    for s in m["inputs"]:
        _print(f"input      {s['name']} {s['shape']} {s['dtype']}")
    for s in m["outputs"]:
        _print(f"output     {s['name']} {s['shape']} {s['dtype']}")
    _print(f"weights    {m['weights']['count']} tensors, {m['weights']['bytes'] / 1e6:.2f} MB")
    from .compress.coded_size import coded_size

    z = coded_size(art.weights())
    _print(f"size       {z['parameters']:,} parameters, {z['sparsity']:.1%} zero; pruned + 8-bit + Huffman "
           f"{z['huffman_bytes'] / 1e6:.2f} MB ({z['compression_ratio']:.1f}x smaller than stored)")
    _print(f"compression {json.dumps(m.get('compression'))}")
    _print(summarize_fidelity(m.get("fidelity")))
    for name, digest in m["files"].items():
        size = (art.path / name).stat().st_size
        _print(f"file       {name:14s} {size / 1e6:9.2f} MB  sha256 {digest[:16]}…")
    return 0


def _bench_config(args):
    from .runtime.session import BenchConfig

    return BenchConfig(device=args.device, repeat=args.repeat, number=args.number,
                       min_repeat_ms=args.min_repeat_ms, cache_flush=args.cache_flush,
                       session_timeout=args.session_timeout, arch=args.arch)


def cmd_bench(args) -> int:
    from .artifact import Artifact
    from .runtime.session import bench, save_report

    profile = getattr(args, "profile", False)  # deploy --rpc reuses this command without the flag
    if profile and args.device != "local":
        raise HwcompError("--profile times kernels in this process: use it with --device local")
    art = Artifact.load(args.artifact)
    report = bench(art, _bench_config(args))
    for line in report.lines():
        _print(line)
    save_report(report, args.json, args.plot)
    if profile:
        from .runtime.profile import profile_kernels

        _print("per kernel (instrumented; the latency above is the one to quote):")
        for line in profile_kernels(art).lines():
            _print(line)
    return 0 if report.correctness is None or report.correctness["ok"] else 1


def cmd_deploy(args) -> int:
    from .artifact import Artifact
    from .runtime.bundle import make_bundle

    art = Artifact.load(args.artifact)
    if not args.bundle and not args.rpc:
        raise HwcompError("deploy needs --bundle OUT.tar.gz and/or --rpc DEVICE_URL")
    if args.bundle:
        _print(f"bundle: {make_bundle(art, args.bundle)} (run_model.py inside needs only the TVM runtime)")
    if args.rpc:
        args.device = args.rpc
        return cmd_bench(args)
    return 0


def cmd_board(args) -> int:
    from .runtime import board

    if args.arch != "aarch64":
        raise HwcompError(f"only an emulated aarch64 board is available, not {args.arch!r}")
    if args.action == "up":
        tracker = None
        if args.tracker:
            host, _, port = args.tracker.rpartition(":")
            tracker = (host, int(port))
        try:
            handle = board.board_up(args.root, tracker=tracker, key=args.key, log=_print)
        except board.BoardError as e:
            raise HwcompError(str(e)) from None
        _print(f"board up: {handle.url} (key {handle.key}); timings on it are emulated")
    elif args.action == "down":
        _print("board down" if board.board_down(args.root, log=_print) else "no board was running")
    else:
        handle = board.board_status(args.root)
        _print(f"board up: {handle.url} (key {handle.key})" if handle else "board down")
        return 0 if handle else 3
    return 0


def _add_bench_arguments(s) -> None:
    s.add_argument("--device", default="local", help="local | rpc://HOST:PORT | tracker://HOST:PORT/KEY")
    s.add_argument("--repeat", type=int, default=20)
    s.add_argument("--number", type=int, default=5, help="runs averaged per sample")
    s.add_argument("--min-repeat-ms", type=int, default=0)
    s.add_argument("--cache-flush", action="store_true", help="flush CPU caches before each sample")
    s.add_argument("--session-timeout", type=float, default=300.0, help="seconds before the device gives up")
    s.add_argument("--arch", help="device CPU architecture when the URL does not tell (aarch64, x86_64)")
    s.add_argument("--json", help="write the report as JSON")
    s.add_argument("--plot", help="write a latency histogram PNG")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwcomp", description="Hardware-aware compression compiler on Apache TVM.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("targets", help="list the target devices")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_targets)

    s = sub.add_parser("compile", help="compile a .pt2 or .onnx model into an artifact directory")
    s.add_argument("model", help="a torch.export program (.pt2) or an ONNX model (.onnx)")
    s.add_argument("-t", "--target", default="host", help="target name (see `hwcomp targets`) or .toml path")
    s.add_argument("-o", "--output", required=True, help="artifact directory to write")
    s.add_argument("--input-shape", action="append", metavar="NAME:1x3x32x32",
                   help="static shape of an input (needed for dynamic ONNX inputs)")
    s.add_argument("--db", help="tuning database directory (default: the target's, when present)")
    s.add_argument("--archive", help="also write the artifact as one .tar.gz")
    s.add_argument("--sparsity", type=float, help="prune matmul/linear weights to this sparsity")
    s.add_argument("--block", help="sparse block RxC (default: the target's)")
    s.add_argument("--sparse-threshold", type=float, help="rewrite layers at least this sparse (default 0.7)")
    s.add_argument("--quantize", choices=["int8"], help="post-training int8 quantization")
    s.add_argument("--calib", help="calibration inputs (.npz, arrays named after the inputs, samples on axis 0)")
    s.add_argument("--calib-method", default="minmax", choices=["minmax", "percentile", "entropy", "mse"])
    s.add_argument("--skip", help="comma-separated layer names or globs left in fp32")
    s.add_argument("--fidelity-target", type=float, help="leave the worst layers in fp32 until this cosine is met")
    s.add_argument("--full-range-weights", action="store_true",
                   help="int8: keep 8-bit weights where the target's fastest kernel wants 7 (AVX2 without VNNI)")
    s.add_argument("--exact-math", action="store_true",
                   help="libm's exp/erf/tanh instead of the vectorized polynomial approximations (CPU)")
    s.set_defaults(func=cmd_compile)

    s = sub.add_parser("run", help="run an artifact on this machine")
    s.add_argument("artifact")
    s.add_argument("--inputs", help=".npz of inputs by name (default: the stored example inputs)")
    s.add_argument("--output", help=".npz to write the outputs to")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("inspect", help="describe an artifact")
    s.add_argument("artifact")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("bench", help="measure an artifact locally, over RPC or through a tracker")
    s.add_argument("artifact")
    _add_bench_arguments(s)
    s.add_argument("--profile", action="store_true", help="also time every kernel (local only)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("deploy", help="make a runtime-only bundle, or push and run over RPC")
    s.add_argument("artifact")
    s.add_argument("--bundle", help="write OUT.tar.gz with library, weights, manifest and run_model.py")
    s.add_argument("--rpc", help="device URL to push to and run on (rpc://HOST:PORT or tracker://...)")
    _add_bench_arguments(s)
    s.set_defaults(func=cmd_deploy)

    s = sub.add_parser("board", help="an emulated edge board (qemu-user aarch64 + TVM RPC server)")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("arch", nargs="?", default="aarch64")
    s.add_argument("--key", default="rpi4", help="RPC key the board registers under (default rpi4)")
    s.add_argument("--tracker", help="HOST:PORT of an RPC tracker to register with")
    s.add_argument("--root", default=".board/aarch64", help="where the board's files live")
    s.set_defaults(func=cmd_board)

    s = sub.add_parser("prune", help="prune a PyTorch model (importance criteria, blocks, structured) → .pt2")
    from .compress.cli import add_prune_arguments, run_prune

    add_prune_arguments(s)
    s.set_defaults(func=run_prune)

    from .tune.cli import add_db_arguments, add_tune_arguments, run_db, run_tune

    s = sub.add_parser("tune", help="auto-tune a model's kernels for a target (MetaSchedule + XGBoost)")
    add_tune_arguments(s)
    s.set_defaults(func=run_tune)

    s = sub.add_parser("db", help="export, import or merge tuning databases")
    add_db_arguments(s)
    s.set_defaults(func=run_db)

    s = sub.add_parser("optimize", help="search per-layer sparsity/precision with the target in the loop")
    s.add_argument("model", help="file.py:factory returning (nn.Module, example_inputs)")
    s.add_argument("-t", "--target", default="host")
    budget = s.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency-budget", type=float, metavar="MS")
    budget.add_argument("--fidelity-target", type=float, metavar="COS")
    s.add_argument("--calib", required=True, help=".npz, one array per input, samples on axis 0")
    s.add_argument("-o", "--output", default="out/optimized")
    s.add_argument("--sparsities", default="0.5,0.7,0.9", help="sparsity levels to offer per layer")
    s.add_argument("--no-int8", action="store_true", help="do not offer int8")
    s.add_argument("--sparse-int8", action="store_true", help="also offer sparse + int8 (int8 BSR kernels)")
    s.add_argument("--ranks", default="", help="also offer low rank: percent of each layer's full rank kept (e.g. 25)")
    s.add_argument("--widths", default="", help="also offer structured widths on FFN-like Linear pairs: percent of "
                   "the hidden units kept (e.g. 75,50)")
    s.add_argument("--device", default="local",
                   help="where to measure: local, rpc://HOST:PORT or tracker://HOST:PORT/KEY (the target's board)")
    s.set_defaults(func=cmd_optimize)

    s = sub.add_parser("demo", help="compile, run and verify a default model for the host CPU")
    s.add_argument("-o", "--output", default="out/demo", help="artifact directory (default out/demo)")
    s.set_defaults(func=cmd_demo)
    return p


def cmd_optimize(args) -> int:
    import torch

    from .compress.cli import load_model as load_factory
    from .policy.optimize import load_samples, optimize

    model, example = load_factory(args.model)
    if example is None:
        raise HwcompError(f"{args.model} must return (model, example_inputs)")
    example = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    res = optimize(model.eval(), example, args.target, load_samples(args.calib, len(example)),
                   latency_budget_ms=args.latency_budget, fidelity_target=args.fidelity_target,
                   out_dir=args.output, sparsities=tuple(float(v) for v in args.sparsities.split(",")),
                   int8=not args.no_int8, sparse_int8=args.sparse_int8,
                   ranks=tuple(int(v) for v in args.ranks.split(",") if v),
                   widths=tuple(int(v) for v in args.widths.split(",") if v), device=args.device, log=_print)
    for m in [*res.baselines, res.chosen]:
        _print(f"{m.name:28s} {m.latency_ms:9.3f} ms   cosine {m.cosine:.5f}")
    _print(f"policy: {args.output}/policy.json (+ .txt), artifact: {res.artifact_path}, plot: {args.output}/pareto.png")
    return 0


def cmd_demo(args) -> int:
    """The README's first command: a small CNN and an MLP, compiled for the host, timed vs PyTorch."""
    from .demo import run_demo

    return run_demo(Path(args.output), log=_print)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HwcompError as e:
        print(f"hwcomp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
