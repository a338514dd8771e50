"""Int8 zoo CNNs on the emulated ARM boards (issue 19): compiled for rpi4 (NEON) and rpi5 (sdot),
run over TVM RPC on the emulated aarch64 board (qemu-user, ``hwcomp.runtime.board``), compared
with PyTorch fp32 and with the same model's int8 build for this host.

Per model (``hwcomp.zoo.build(name, "realistic")``, batch 1, 3x224x224) and board target: the
int8 model (``quantize_passes(target, QuantConfig(), calib)``, 16 random calibration images, seed
0, the same as ``bench/int8_cnn.py``) cross-compiled with LLVM for aarch64, its library uploaded to
the board, one held-out image (seed 1) run there. Reported: cosine against PyTorch fp32 and
against the host's int8 build on the same image, the int8 layer count, the blocked conv kernels'
dot step, and the emulated run time — **qemu-user time, nothing about a real board's speed**.

    python bench/int8_board.py [--models resnet18,mobilenet_v2] [--targets rpi4,rpi5]

Default models: resnet18 and mobilenet_v2 (``--models all`` for the five zoo CNNs; under
emulation ResNet-50 and ConvNeXt-tiny take minutes per run). Writes ``bench/results/int8_board.json``.
Last line: ``int8_board_min_cosine_vs_host_int8=<x>`` (how far the boards' int8 arithmetic strays
from the host's: NEON/sdot take 8-bit weights exactly, the AVX2 host 7-bit weights with saturation).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results
from int8_cnn import (  # the same models and images
    CALIB_SEED,
    HELD_SEED,
    MODELS,
    N_CALIB,
    _cos,
    _images,
)

BOARD_ROOT = Path(__file__).resolve().parents[1] / ".board" / "aarch64"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2", help="comma-separated zoo CNNs, or 'all'")
    p.add_argument("--targets", default="rpi4,rpi5", help="comma-separated board targets")
    p.add_argument("--session-timeout", type=float, default=1800, help="seconds one board session may last")
    args = p.parse_args()
    names = list(MODELS) if args.models == "all" else args.models.split(",")
    bad = [n for n in names if n not in MODELS]
    if bad:
        p.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    warnings.filterwarnings("ignore")

    import tvm
    from tvm import relax

    import hwcomp
    from hwcomp import zoo
    from hwcomp.errors import HwcompError
    from hwcomp.frontend import load_model
    from hwcomp.quantize import QuantConfig
    from hwcomp.quantize.pipeline import Int8Quantizer
    from hwcomp.runtime.board import board_available, board_down, board_up
    from hwcomp.runtime.rpc import upload_library
    from hwcomp.target import get_target

    targets = args.targets.split(",")
    for t in targets:  # a one-line error for an unknown or non-board target before any work
        try:
            arch = get_target(t).arch
        except HwcompError as e:
            p.error(str(e))
        if arch != "aarch64":
            p.error(f"target {t!r} is {arch}, not a target of the emulated aarch64 board (rpi4, rpi5, ...)")
    ok, reason = board_available()
    if not ok:
        sys.exit(f"int8_board: the emulated board is not available here: {reason}")
    work = Path(tempfile.mkdtemp(prefix="hwcomp-int8-board-"))
    rows = []
    board = board_up(BOARD_ROOT)
    try:
        for name in names:
            model = zoo.build(name, "realistic")
            shape = tuple(model.inputs[0].shape)
            calib = [[x] for x in _images(shape, N_CALIB, CALIB_SEED)]
            (x,) = _images(shape, 1, HELD_SEED)
            with torch.no_grad():
                ref = model.module(torch.from_numpy(x)).numpy()
            imported = load_model(model.module, model.inputs)
            outs, row = {}, {"model": name, "input": list(shape)}
            # One RPC session per model for every board target: the board's server takes one session
            # at a time, and a second connect hung while the first was not yet collected.
            remote = board.connect(session_timeout=args.session_timeout)
            dev = remote.cpu()
            for tgt in ["host", *targets]:
                t0 = time.perf_counter()
                q = Int8Quantizer(get_target(tgt), QuantConfig(), calib, params=imported.params, progress=False)
                art = hwcomp.compile(imported, tgt, work / name / tgt, options=hwcomp.CompileOptions(passes=q.passes()))
                compile_s = time.perf_counter() - t0
                n_int8 = sum(r["status"] == "int8" for r in q.realizer.report)
                if tgt == "host":
                    outs[tgt] = art.run([x])[0]
                    continue
                vm = relax.VirtualMachine(upload_library(remote, art.path / "model.so", board.arch), dev)
                dargs = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(w, dev) for w in art.weights()]
                t0 = time.perf_counter()
                out = vm["main"](*dargs)
                out = (out if hasattr(out, "numpy") else out[0]).numpy()  # the first output
                run_s = time.perf_counter() - t0
                del vm, dargs
                row[tgt] = {"cosine_vs_fp32": _cos(out, ref), "cosine_vs_host_int8": _cos(out, outs["host"]),
                            "int8_layers": n_int8, "kernel": q.provider.describe(), "compile_s": compile_s,
                            "emulated_run_s": run_s}
                print(f"[{name}] {tgt}: cosine vs fp32 {row[tgt]['cosine_vs_fp32']:.5f}, vs host int8 "
                      f"{row[tgt]['cosine_vs_host_int8']:.5f}, {n_int8} int8 layers ({q.provider.describe()}), "
                      f"compile {compile_s:.0f} s, emulated run {run_s:.1f} s", flush=True)
            del dev, remote
            gc.collect()  # closes the session before the next model's
            row["host_int8_cosine_vs_fp32"] = _cos(outs["host"], ref)
            rows.append(row)
    finally:
        if not board.reused:
            board_down(BOARD_ROOT)
    print()
    print("| model | target | int8 kernel | cosine vs PyTorch fp32 | cosine vs host int8 | host int8 vs fp32 | emulated s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for t in targets:
            c = r[t]
            print(f"| {r['model']} | {t} | {c['kernel']} | {c['cosine_vs_fp32']:.5f} | {c['cosine_vs_host_int8']:.5f} | "
                  f"{r['host_int8_cosine_vs_fp32']:.5f} | {c['emulated_run_s']:.1f} |")
    write_results("int8_board", {"models": rows, "targets": targets, "note": "emulated (qemu-user) run times"})
    worst = min(r[t]["cosine_vs_host_int8"] for r in rows for t in targets)
    print(f"int8_board_min_cosine_vs_host_int8={worst:.5f}")


if __name__ == "__main__":
    main()
