"""``hwcomp`` command line: each verb parses its arguments and calls the Python API, nothing else."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from .errors import HwcompError, InputError


def _print(s: str) -> None:
    print(s, flush=True)


# ----------------------------------------------------------------------------- argument types
# argparse reports a bad value of these as one usage line and "error: argument --X: ...", exit 2.

MAX_INT = 2**31 - 1


def fraction(lo: float = 0.0, hi: float = 1.0, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite float in [lo, hi] (``lo_open``/``hi_open``: that end excluded)."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}") from None
        if not (math.isfinite(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return v

    parse.__name__ = "fraction"
    return parse


def _int_in(lo: int, hi: int = MAX_INT):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer from {lo} to {hi}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


positive_int = _int_in(1)
nonnegative_int = _int_in(0)


def _float_above(lo: float, inclusive: bool):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(v) and (v >= lo if inclusive else v > lo)):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} {lo:g}, got {text}")
        return v

    parse.__name__ = "number"
    return parse


positive_float = _float_above(0.0, inclusive=False)
nonnegative_float = _float_above(0.0, inclusive=True)
sparsity_type = fraction(0.0, 1.0, hi_open=True)  # the fraction of weights pruned: all of them is not a model
threshold_type = fraction(0.0, 1.0, lo_open=True, hi_open=True)
cosine_type = fraction(0.0, 1.0, lo_open=True)


def block_type(text: str) -> str:
    """``RxC`` with positive R and C (kept as text: the passes parse it)."""
    from .passes.dense_to_bsr import parse_block

    try:
        r, c = parse_block(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if max(r, c) > 1024:
        raise argparse.ArgumentTypeError(f"block dimensions must be at most 1024, got {text!r}")
    return f"{r}x{c}"


def host_port_type(text: str) -> str:
    """``HOST:PORT`` (kept as text)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host.strip() or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port from 1 to 65535, got {text!r}")
    return text


def digest_type(text: str) -> str:
    """A sha256 hex digest (``hwcomp inspect`` prints an artifact's)."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise argparse.ArgumentTypeError(f"expected the 64 hex digits of a sha256 (hwcomp inspect prints it), "
                                         f"got {text!r}")
    return text.strip().lower()


def _list_type(item, what: str):
    """A comma-separated list of ``item`` values → tuple (empty text → empty tuple)."""
    def parse(text: str) -> tuple:
        out = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                out.append(item(part))
            except argparse.ArgumentTypeError:
                raise argparse.ArgumentTypeError(f"{what}, got {part!r} in {text!r}") from None
        return tuple(out)

    parse.__name__ = "list"
    return parse


sparsity_list_type = _list_type(fraction(0.0, 1.0, lo_open=True, hi_open=True), "each sparsity must be in (0, 1)")
percent_list_type = _list_type(_int_in(1, 99), "each percentage must be an integer from 1 to 99")


# ----------------------------------------------------------------------------- checks before any work


def check_output_path(path: str | None, flag: str) -> None:
    """``flag``'s file can be written: its folder exists and it is not itself a folder."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise HwcompError(f"{flag} {path!r} is a folder; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise HwcompError(f"{flag} {path!r}: folder {str(parent)!r} does not exist"
                          + (" (it is a file)" if parent.exists() else ""))


def check_sparse_args(args) -> None:
    """``--sparsity/--block/--sparse-threshold``: ranges, and no flag that would be ignored."""
    sparsity = getattr(args, "sparsity", None)
    threshold = getattr(args, "sparse_threshold", None)
    block = getattr(args, "block", None)
    if sparsity is not None and not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise HwcompError(f"--sparsity must be in [0, 1), got {sparsity}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise HwcompError(f"--sparse-threshold must be in (0, 1), got {threshold}")
    if block and sparsity is None and threshold is None:
        raise HwcompError(f"--block {block} needs --sparsity S (prune to S) or --sparse-threshold T "
                          "(convert layers already at least T sparse); alone it would be ignored")


def _resolve_target(args):
    from .target import get_target

    if getattr(args, "_target", None) is None:
        args._target = get_target(args.target)
    return args._target


def check_compile_args(args) -> None:
    """Everything ``hwcomp compile`` can refuse without importing the model."""
    from .frontend import parse_input_shapes

    if not Path(args.model).is_file():
        raise HwcompError(f"model file {args.model!r} " + ("is a folder" if Path(args.model).is_dir() else
                                                           "does not exist"))
    parse_input_shapes(args.input_shape)
    check_sparse_args(args)
    if args.quantize:
        if not args.calib:
            raise HwcompError("--quantize int8 needs --calib data.npz (calibration inputs, arrays named after the "
                              "model's inputs)")
        from .frontend.model import read_npz

        read_npz(args.calib, "calibration")
    else:
        given = [flag for flag, v in (("--calib", args.calib), ("--calib-method", args.calib_method),
                                      ("--skip", args.skip), ("--fidelity-target", args.fidelity_target),
                                      ("--full-range-weights", args.full_range_weights)) if v]
        if given:
            raise HwcompError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --quantize int8; "
                              f"without it {'it' if len(given) == 1 else 'they'} would be ignored")
    check_output_path(args.archive, "--archive")
    _resolve_target(args)


def check_run_args(args) -> None:
    check_output_path(args.output, "--output")


def check_bench_args(args) -> None:
    from .runtime.rpc import parse_device_url

    parse_device_url(args.device)  # DeviceURLError: one line
    if getattr(args, "profile", False) and args.device != "local":
        raise HwcompError("--profile times kernels in this process: use it with --device local")
    check_output_path(args.json, "--json")
    check_output_path(args.plot, "--plot")


def check_deploy_args(args) -> None:
    if not args.bundle and not args.rpc:
        raise HwcompError("deploy needs --bundle OUT.tar.gz and/or --rpc DEVICE_URL")
    check_output_path(args.bundle, "--bundle")
    if args.rpc:
        from .runtime.rpc import parse_device_url

        parse_device_url(args.rpc)
    check_output_path(args.json, "--json")
    check_output_path(args.plot, "--plot")


def check_optimize_args(args) -> None:
    from .frontend.model import read_npz
    from .runtime.rpc import parse_device_url

    spec, sep, factory = args.model.rpartition(":")
    if not sep or not spec.endswith(".py") or not factory.isidentifier():
        raise HwcompError(f"optimize takes file.py:factory, got {args.model!r}")
    if not Path(spec).is_file():
        raise HwcompError(f"model file {spec!r} does not exist")
    read_npz(args.calib, "calibration")
    parse_device_url(args.device)
    if not args.sparsities and args.no_int8 and not args.ranks and not args.widths:
        raise HwcompError("nothing to search: give --sparsities, --ranks or --widths, or allow int8")
    _resolve_target(args)


def check_args(args) -> None:
    """The checks of ``args.command`` that need no model, artifact or device (:func:`main` runs them
    first): each raises :class:`HwcompError` (or ``DeviceURLError``) with one line."""
    check = getattr(args, "check", None)
    if check is not None:
        _run_check(args, check)


def _run_check(args, check) -> None:
    """Run ``check(args)`` once per ``args`` (main runs it; a verb called directly runs it itself)."""
    done = vars(args).setdefault("_checks_done", set())
    if check not in done:
        check(args)
        done.add(check)


def load_inputs(path, specs) -> list:
    """``run --inputs``: the arrays of a ``.npz`` for a model with input ``specs`` (dicts or
    :class:`~hwcomp.frontend.model.TensorSpec`: name, shape, dtype), in input order.

    Arrays are matched by name. Only the names ``np.savez`` gives unnamed arrays (``arr_0``,
    ``arr_1``, … exactly one per input) are taken by position. Names, shapes and dtypes that do not
    match raise :class:`~hwcomp.errors.InputError` saying what the model expects."""
    import numpy as np

    from .frontend.model import read_npz

    specs = [s if isinstance(s, dict) else s.to_dict() for s in specs]
    names = [s["name"] for s in specs]
    arrays = read_npz(path, "inputs")
    given = list(arrays)
    if set(given) == set(names):
        ordered = [arrays[n] for n in names]
    elif given == [f"arr_{i}" for i in range(len(names))]:
        ordered = list(arrays.values())  # np.savez(path, a, b): positional
    else:
        missing = [n for n in names if n not in arrays]
        positional = "arr_0" if len(names) == 1 else f"arr_0..arr_{len(names) - 1}"
        extra = [k for k in given if k not in names]
        raise InputError(f"inputs {str(path)!r} do not match the model: it expects arrays named {names} "
                         f"(or {positional} by position, as np.savez names unnamed arrays), got {given}; "
                         f"missing {missing}, unexpected {extra}")
    for s, a in zip(specs, ordered):
        if tuple(a.shape) != tuple(s["shape"]):
            raise InputError(f"input {s['name']!r}: shape {tuple(a.shape)} but the model was compiled for "
                             f"{tuple(s['shape'])}")
        if str(a.dtype) != s["dtype"]:
            raise InputError(f"input {s['name']!r}: dtype {a.dtype} but the model expects {s['dtype']}")
    return [np.ascontiguousarray(a) for a in ordered]


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

        config = QuantConfig(skip=args.skip or (), calib_method=args.calib_method or "minmax",
                             fidelity_target=args.fidelity_target,
                             sparse_threshold=(args.sparse_threshold or 0.7) if sparse else None,
                             sparse_block=parse_block(args.block) if sparse and args.block else None,
                             reduce_range=False if getattr(args, "full_range_weights", False) else None)
        passes += quantize_passes(target, config, args.calib, log=_print)
        summary["quantize"] = {"bits": 8, "calib_method": args.calib_method or "minmax", "skip": args.skip}
    trust = {k: True for k in ("force", "trust_pickle") if getattr(args, k, False)}  # set only when asked
    return CompileOptions(passes=passes, database=args.db, compression_summary=summary or None,
                          fast_math=not getattr(args, "exact_math", False), **trust)


def sparse_passes_from_args(args, target, tune: bool = False) -> list:
    """``--sparsity/--block/--sparse-threshold`` → the sparse passes (none when neither is given).

    BSR choices are read from (and, with ``tune``, measured over the whole knob space into) the
    tuning database ``--db``, or the target's own."""
    check_sparse_args(args)
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

    _run_check(args, check_compile_args)
    target = _resolve_target(args)
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


def cmd_run(args) -> int:
    import numpy as np

    _run_check(args, check_run_args)
    art = _load_artifact(args)
    if args.inputs:
        inputs = load_inputs(args.inputs, art.inputs)
    else:
        ref = art.reference()
        if ref is None:
            raise HwcompError("no --inputs given and the artifact stores no example inputs")
        inputs = ref[0]
    outputs = art.run(inputs)
    for i, o in enumerate(outputs):
        _print(f"output{i}: shape {list(o.shape)} dtype {o.dtype}")
    if args.output:
        out = args.output if args.output.endswith(".npz") else args.output + ".npz"  # what np.savez writes
        np.savez(out, **{f"output{i}": o for i, o in enumerate(outputs)})
        _print(f"wrote {out}")
    return 0


def _load_artifact(args):
    from .artifact import Artifact

    digest = getattr(args, "expect_digest", None)
    return Artifact.load(args.artifact, expect_digest=digest) if digest else Artifact.load(args.artifact)


def cmd_inspect(args) -> int:
    from .api import summarize_fidelity

    art = _load_artifact(args)
    m = art.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    t = m["target"]
    _print(f"artifact   {art.path}")
    _print(f"digest     {art.digest}  (pin it: --expect-digest)")
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
    from .runtime.session import bench, save_report

    profile = getattr(args, "profile", False)  # deploy --rpc reuses this command without the flag
    _run_check(args, check_bench_args)
    art = _load_artifact(args)
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
    from .runtime.bundle import make_bundle

    _run_check(args, check_deploy_args)
    art = _load_artifact(args)
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
    s.add_argument("--repeat", type=positive_int, default=20, help="timed samples (default 20)")
    s.add_argument("--number", type=positive_int, default=5, help="runs averaged per sample")
    s.add_argument("--min-repeat-ms", type=nonnegative_int, default=0)
    s.add_argument("--cache-flush", action="store_true", help="flush CPU caches before each sample")
    s.add_argument("--session-timeout", type=nonnegative_float, default=300.0,
                   help="seconds the whole device session may last (0: no limit; default 300)")
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
    s.add_argument("--sparsity", type=sparsity_type, help="prune matmul/linear weights to this sparsity, in [0, 1)")
    s.add_argument("--block", type=block_type, help="sparse block RxC (default: the target's)")
    s.add_argument("--sparse-threshold", type=threshold_type,
                   help="rewrite layers at least this sparse, in (0, 1) (default 0.7)")
    s.add_argument("--quantize", choices=["int8"], help="post-training int8 quantization")
    s.add_argument("--calib", help="calibration inputs (.npz, arrays named after the inputs, samples on axis 0)")
    s.add_argument("--calib-method", choices=["minmax", "percentile", "entropy", "mse"], help="default minmax")
    s.add_argument("--skip", help="comma-separated layer names or globs left in fp32")
    s.add_argument("--fidelity-target", type=cosine_type,
                   help="leave the worst layers in fp32 until this cosine, in (0, 1], is met")
    s.add_argument("--full-range-weights", action="store_true",
                   help="int8: keep 8-bit weights where the target's fastest kernel wants 7 (AVX2 without VNNI)")
    s.add_argument("--exact-math", action="store_true",
                   help="libm's exp/erf/tanh instead of the vectorized polynomial approximations (CPU)")
    s.add_argument("--force", action="store_true",
                   help="replace an output folder that holds something other than an hwcomp artifact")
    s.add_argument("--trust-pickle", action="store_true",
                   help="import a .pt2 that holds pickled content (runs its author's code: trusted files only)")
    s.set_defaults(func=cmd_compile, check=check_compile_args)

    s = sub.add_parser("run", help="run an artifact on this machine")
    s.add_argument("artifact")
    s.add_argument("--expect-digest", type=digest_type, metavar="SHA256",
                   help="refuse the artifact unless its manifest has this sha256 (hwcomp inspect prints it)")
    s.add_argument("--inputs", help=".npz of inputs by name (default: the stored example inputs)")
    s.add_argument("--output", help=".npz to write the outputs to")
    s.set_defaults(func=cmd_run, check=check_run_args)

    s = sub.add_parser("inspect", help="describe an artifact")
    s.add_argument("artifact")
    s.add_argument("--expect-digest", type=digest_type, metavar="SHA256",
                   help="refuse the artifact unless its manifest has this sha256 (hwcomp inspect prints it)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("bench", help="measure an artifact locally, over RPC or through a tracker")
    s.add_argument("artifact")
    s.add_argument("--expect-digest", type=digest_type, metavar="SHA256",
                   help="refuse the artifact unless its manifest has this sha256 (hwcomp inspect prints it)")
    _add_bench_arguments(s)
    s.add_argument("--profile", action="store_true", help="also time every kernel (local only)")
    s.set_defaults(func=cmd_bench, check=check_bench_args)

    s = sub.add_parser("deploy", help="make a runtime-only bundle, or push and run over RPC")
    s.add_argument("artifact")
    s.add_argument("--expect-digest", type=digest_type, metavar="SHA256",
                   help="refuse the artifact unless its manifest has this sha256 (hwcomp inspect prints it)")
    s.add_argument("--bundle", help="write OUT.tar.gz with library, weights, manifest and run_model.py")
    s.add_argument("--rpc", help="device URL to push to and run on (rpc://HOST:PORT or tracker://...)")
    _add_bench_arguments(s)
    s.set_defaults(func=cmd_deploy, check=check_deploy_args)

    s = sub.add_parser("board", help="an emulated edge board (qemu-user aarch64 + TVM RPC server)")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("arch", nargs="?", default="aarch64")
    s.add_argument("--key", default="rpi4", help="RPC key the board registers under (default rpi4)")
    s.add_argument("--tracker", type=host_port_type, help="HOST:PORT of an RPC tracker to register with")
    s.add_argument("--root", default=".board/aarch64", help="where the board's files live")
    s.set_defaults(func=cmd_board)

    s = sub.add_parser("prune", help="prune a PyTorch model (importance criteria, blocks, structured) → .pt2")
    from .compress.cli import add_prune_arguments, check_prune_args, run_prune

    add_prune_arguments(s)
    s.set_defaults(func=run_prune, check=check_prune_args)

    from .tune.cli import add_db_arguments, add_tune_arguments, check_tune_args, run_db, run_tune

    s = sub.add_parser("tune", help="auto-tune a model's kernels for a target (MetaSchedule + XGBoost)")
    add_tune_arguments(s)
    s.set_defaults(func=run_tune, check=check_tune_args)

    s = sub.add_parser("db", help="export, import or merge tuning databases")
    add_db_arguments(s)
    s.set_defaults(func=run_db)

    s = sub.add_parser("optimize", help="search per-layer sparsity/precision with the target in the loop")
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
    s.set_defaults(func=cmd_optimize, check=check_optimize_args)

    s = sub.add_parser("demo", help="compile, run and verify a default model for the host CPU")
    s.add_argument("-o", "--output", default="out/demo", help="artifact directory (default out/demo)")
    s.set_defaults(func=cmd_demo)
    return p


def cmd_optimize(args) -> int:
    import torch

    from .compress.cli import load_model as load_factory
    from .policy.optimize import load_samples, optimize

    _run_check(args, check_optimize_args)
    model, example = load_factory(args.model)
    if example is None:
        raise HwcompError(f"{args.model} must return (model, example_inputs)")
    example = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    res = optimize(model.eval(), example, _resolve_target(args), load_samples(args.calib, len(example)),
                   latency_budget_ms=args.latency_budget, fidelity_target=args.fidelity_target,
                   out_dir=args.output, sparsities=tuple(args.sparsities), int8=not args.no_int8,
                   sparse_int8=args.sparse_int8, ranks=tuple(args.ranks), widths=tuple(args.widths),
                   device=args.device, log=_print)
    for m in [*res.baselines, res.chosen]:
        _print(f"{m.name:28s} {m.latency_ms:9.3f} ms   cosine {m.cosine:.5f}")
    _print(f"policy: {args.output}/policy.json (+ .txt), artifact: {res.artifact_path}, plot: {args.output}/pareto.png")
    return 0


def cmd_demo(args) -> int:
    """The README's first command: a small CNN and an MLP, compiled for the host, timed vs PyTorch."""
    from .demo import run_demo

    return run_demo(Path(args.output), log=_print)


# Errors of the files and folders a user names: one line, like HwcompError.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _os_error_message(e: OSError) -> str:
    what = e.strerror or str(e)
    names = [repr(str(f)) for f in (e.filename, e.filename2) if f is not None]
    return f"{what}: {' -> '.join(names)}" if names else what


def main(argv: list[str] | None = None) -> int:
    """``hwcomp``: a user's error is one ``hwcomp: error: ...`` line on stderr and exit code 2
    (argparse's own: a usage line and its error, also 2); anything else is a bug and shows its traceback."""
    from .runtime.rpc import DeviceURLError

    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        return args.func(args)
    except (HwcompError, DeviceURLError) as e:
        message = str(e)
    except _PATH_ERRORS as e:
        message = _os_error_message(e)
    print(f"hwcomp: error: {message}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
