"""Where a zoo model's time goes, in hwcomp and in OpenVINO, layer by layer.

    python bench/peer_profile.py resnet50 [--top 25] [--runs 10] [--threads N]

hwcomp: its per-kernel profile (``hwcomp.runtime.kernel_profile``: every kernel timed, untuned
schedules). OpenVINO: the CPU plugin's own per-node counters (``PERF_COUNT``, fp32, the same threads
and hints as ``bench/zoo.py``), summed by layer type and implementation, then every convolution /
fully connected / matmul node in execution order with its time. Layers in both lists are in graph
order, so a conv or Linear can be compared with its counterpart (this is how ResNet-50's stride-2
convolutions were found 1.2-1.4x slower than OpenVINO's). Both are instrumented runs: the sums
exceed an uninstrumented inference. Writes ``bench/results/peer_profile_<model>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers
from common import write_results

_NODES = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul")


def hwcomp_profile(model, runs: int) -> dict:
    import hwcomp
    from hwcomp.runtime.kernel_profile import profile_kernels

    with tempfile.TemporaryDirectory(prefix="hwcomp-peer-") as tmp:  # an artifact is ~1 GB: not left behind
        art = hwcomp.compile(model.module, "host", Path(tmp) / "a", example_inputs=model.inputs,
                             options=hwcomp.CompileOptions(use_default_database=False, verify=False))
        return profile_kernels(art, [x.numpy() for x in model.inputs], runs=runs).to_json()


def openvino_profile(model, threads: int, runs: int) -> dict:
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="hwcomp-peer-") as tmp:
        onnx_path = Path(tmp) / "m.onnx"
        names, _ = peers.export_onnx(model.module, model.inputs, onnx_path)
        model_ov = ov.Core().read_model(str(onnx_path))  # read before the file goes
    compiled = ov.Core().compile_model(model_ov, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
        "PERF_COUNT": True})
    request = compiled.create_infer_request()
    feeds = peers._feeds([p.get_any_name() for p in compiled.inputs], names, [x.numpy() for x in model.inputs])
    for _ in range(3):
        request.infer(feeds)
    by_type: dict[str, list] = {}
    nodes: dict[str, list] = {}
    for _ in range(runs):
        request.infer(feeds)
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            ms = info.real_time.total_seconds() * 1e3
            key = f"{info.node_type} {info.exec_type}"
            by_type.setdefault(key, [0, 0.0])
            by_type[key][0] += 1
            by_type[key][1] += ms
            if info.node_type in _NODES:
                nodes.setdefault(info.node_name, [info.node_type, info.exec_type, []])[2].append(ms)
    return {
        "by_type": sorted(({"layer": k, "calls": n // runs, "ms": t / runs} for k, (n, t) in by_type.items()),
                          key=lambda r: -r["ms"]),
        "nodes": [{"node": k, "type": t, "impl": i, "ms": float(np.median(v))} for k, (t, i, v) in nodes.items()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a zoo architecture (hwcomp.zoo), e.g. resnet50, bert_base")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    if args.runs < 1 or args.threads < 1:
        raise SystemExit(f"peer_profile: --runs and --threads must be at least 1 (got {args.runs}, {args.threads})")
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    from hwcomp import zoo

    if args.model not in zoo.ARCHITECTURES:
        raise SystemExit(f"peer_profile: unknown model {args.model!r} (one of: {', '.join(zoo.ARCHITECTURES)})")
    model = zoo.build(args.model, "realistic")
    ours = hwcomp_profile(model, args.runs)
    theirs = openvino_profile(model, args.threads, args.runs)

    kernel_ms = sum(k["ms"] for k in ours["kernels"])
    print(f"hwcomp kernels ({args.model}, {args.threads} threads): {kernel_ms:.2f} ms")
    for k in ours["kernels"][:args.top]:
        print(f"  {k['name'][:58]:58s} {k['calls']:4d} calls {k['ms']:8.3f} ms")
    print(f"OpenVINO nodes: {sum(r['ms'] for r in theirs['by_type']):.2f} ms")
    for r in theirs["by_type"][:args.top]:
        print(f"  {r['layer'][:58]:58s} {r['calls']:4d} calls {r['ms']:8.3f} ms")
    print("OpenVINO conv / FC / matmul nodes in execution order:")
    for i, n in enumerate(theirs["nodes"], 1):
        print(f"  {i:3d} {n['type']:16s} {n['impl']:28s} {n['ms']:7.3f} ms  {n['node']}")
    write_results(f"peer_profile_{args.model}", {"model": args.model, "threads": args.threads,
                                                  "machine": peers.machine_info(args.threads),
                                                  "hwcomp": ours, "openvino": theirs})


if __name__ == "__main__":
    main()
