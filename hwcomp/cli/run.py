"""``hwcomp run``, ``inspect``, ``bench`` and ``deploy``: what is done with a compiled artifact."""

from __future__ import annotations

import argparse
import json

from ..errors import HwcompError
from .args import (
    _print,
    add_artifact_arguments,
    check_output_path,
    load_inputs,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    run_check,
)


def _load_artifact(args):
    from ..artifact import Artifact

    digest = getattr(args, "expect_digest", None)
    return Artifact.load(args.artifact, expect_digest=digest) if digest else Artifact.load(args.artifact)


# ----------------------------------------------------------------------------- hwcomp run


def add_run_arguments(s: argparse.ArgumentParser) -> None:
    add_artifact_arguments(s)
    s.add_argument("--inputs", help=".npz of inputs by name (default: the stored example inputs)")
    s.add_argument("--output", help=".npz to write the outputs to")


def check_run_args(args) -> None:
    check_output_path(args.output, "--output")


def cmd_run(args) -> int:
    import numpy as np

    run_check(args, check_run_args)
    art = _load_artifact(args)
    if args.inputs:
        inputs = load_inputs(args.inputs, art.inputs, art.dynamic)
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


# ----------------------------------------------------------------------------- hwcomp inspect


def add_inspect_arguments(s: argparse.ArgumentParser) -> None:
    add_artifact_arguments(s)
    s.add_argument("--json", action="store_true")


def cmd_inspect(args) -> int:
    from ..api import summarize_fidelity
    from ..compress.coded_size import coded_size

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
    for sym, r in m.get("dynamic", {}).items():
        _print(f"dynamic    {sym} in {r['min']}..{r['max'] if r['max'] is not None else 'inf'}")
    _print(f"weights    {m['weights']['count']} tensors, {m['weights']['bytes'] / 1e6:.2f} MB")
    z = coded_size(art.weights())
    _print(f"size       {z['parameters']:,} parameters, {z['sparsity']:.1%} zero; pruned + 8-bit + Huffman "
           f"{z['huffman_bytes'] / 1e6:.2f} MB ({z['compression_ratio']:.1f}x smaller than stored)")
    _print(f"compression {json.dumps(m.get('compression'))}")
    _print(summarize_fidelity(m.get("fidelity")))
    for name, digest in m["files"].items():
        size = (art.path / name).stat().st_size
        _print(f"file       {name:14s} {size / 1e6:9.2f} MB  sha256 {digest[:16]}…")
    return 0


# ----------------------------------------------------------------------------- hwcomp bench / deploy


def _add_bench_arguments(s: argparse.ArgumentParser) -> None:
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


def add_bench_arguments(s: argparse.ArgumentParser) -> None:
    add_artifact_arguments(s)
    _add_bench_arguments(s)
    s.add_argument("--profile", action="store_true", help="also time every kernel (local only)")


def add_deploy_arguments(s: argparse.ArgumentParser) -> None:
    add_artifact_arguments(s)
    s.add_argument("--bundle", help="write OUT.tar.gz with library, weights, manifest and run_model.py")
    s.add_argument("--rpc", help="device URL to push to and run on (rpc://HOST:PORT or tracker://...)")
    _add_bench_arguments(s)


def check_bench_args(args) -> None:
    from ..runtime.rpc import parse_device_url

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
        from ..runtime.rpc import parse_device_url

        parse_device_url(args.rpc)
    check_output_path(args.json, "--json")
    check_output_path(args.plot, "--plot")


def _bench_config(args):
    from ..runtime.session import BenchConfig

    return BenchConfig(device=args.device, repeat=args.repeat, number=args.number,
                       min_repeat_ms=args.min_repeat_ms, cache_flush=args.cache_flush,
                       session_timeout=args.session_timeout, arch=args.arch)


def cmd_bench(args) -> int:
    from ..runtime.session import bench, save_report

    profile = getattr(args, "profile", False)  # deploy --rpc reuses this command without the flag
    run_check(args, check_bench_args)
    art = _load_artifact(args)
    report = bench(art, _bench_config(args))
    for line in report.lines():
        _print(line)
    save_report(report, args.json, args.plot)
    if profile:
        from ..runtime.kernel_profile import profile_kernels

        _print("per kernel (instrumented; the latency above is the one to quote):")
        for line in profile_kernels(art).lines():
            _print(line)
    return 1 if report.correctness is not None and report.correctness["ok"] is False else 0


def cmd_deploy(args) -> int:
    from ..runtime.bundle import make_bundle

    run_check(args, check_deploy_args)
    art = _load_artifact(args)
    if args.bundle:
        _print(f"bundle: {make_bundle(art, args.bundle)} (run_model.py inside needs only the TVM runtime)")
    if args.rpc:
        args.device = args.rpc
        return cmd_bench(args)
    return 0
