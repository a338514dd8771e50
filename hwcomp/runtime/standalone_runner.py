#!/usr/bin/env python3
"""Run an hwcomp artifact with the TVM runtime alone (copied into deploy bundles as run_model.py).

Needs only numpy and the TVM runtime (``pip install apache-tvm`` with ``libtvm_compiler.so`` removed is
enough): this script sets ``TVM_USE_RUNTIME_LIB=1`` before importing tvm, so the compiler library is
never loaded. It imports nothing from hwcomp, on purpose: a board does not have hwcomp installed.

    python3 run_model.py [--inputs in.npz] [--output out.npz] [--repeat 20] [--device cpu|cuda]

Without --inputs it runs the stored example inputs and checks the outputs against the reference.
"""

import argparse
import hashlib
import json
import os
import sys
import time

os.environ["TVM_USE_RUNTIME_LIB"] = "1"
# TVM's pool would start half as many workers as CPUs (it assumes SMT): use them all by default.
if hasattr(os, "sched_getaffinity"):
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _cosine(a, b) -> float:
    """hwcomp.metrics.cosine: flattened, float64; zero vectors agree only with each other."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flatten(result):
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out = []
    for r in result:
        out.extend(_flatten(r))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Run an hwcomp artifact with the TVM runtime only.")
    p.add_argument("--dir", default=HERE, help="artifact directory (default: beside this script)")
    p.add_argument("--inputs", help=".npz of inputs by name")
    p.add_argument("--output", help=".npz to write outputs to")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--report-libs", action="store_true", help="list the TVM libraries this process loaded")
    args = p.parse_args(argv)

    try:
        with open(os.path.join(args.dir, "manifest.json")) as f:
            manifest = json.load(f)
        files = manifest["files"]
        names = set(files)
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"error: no readable manifest.json in {args.dir} ({e})")
    # Only the artifact's own files, and every one of them listed: nothing outside the bundle is
    # read, nothing unverified is loaded (see hwcomp/artifact.py, which this script cannot import).
    own = {"model.so", "weights.npz", "reference.npz"}
    if not names <= own or not {"model.so", "weights.npz"} <= names:
        sys.exit(f"error: the manifest must list model.so and weights.npz and nothing but {sorted(own)}")
    if "reference.npz" not in names and os.path.exists(os.path.join(args.dir, "reference.npz")):
        sys.exit("error: reference.npz is present but not listed in the manifest (unverified)")
    for name, digest in files.items():
        if _sha256(os.path.join(args.dir, name)) != digest:
            sys.exit(f"error: {name} does not match the manifest's sha256 (corrupt bundle)")

    import tvm
    from tvm.runtime.vm import VirtualMachine

    kind = args.device or ("cuda" if manifest["target"]["tvm"]["kind"] == "cuda" else "cpu")
    dev = tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)
    t0 = time.perf_counter()
    vm = VirtualMachine(tvm.runtime.load_module(os.path.join(args.dir, "model.so")), dev)
    with np.load(os.path.join(args.dir, "weights.npz")) as z:
        weights = [tvm.runtime.tensor(z[k], dev) for k in z.files]
    print(f"loaded in {(time.perf_counter() - t0) * 1e3:.1f} ms on {kind}")

    ref_outputs = None
    if args.inputs:
        with np.load(args.inputs, allow_pickle=False) as z:
            inputs = [z[s["name"]] for s in manifest["inputs"]]
    elif "reference.npz" not in names:
        sys.exit("error: the bundle stores no example inputs: give --inputs in.npz")
    else:
        with np.load(os.path.join(args.dir, "reference.npz")) as z:
            inputs = [z[f"input{i}"] for i in range(len(manifest["inputs"]))]
            ref_outputs = [z[k] for k in z.files if k.startswith("output")]
    dynamic, sizes = manifest.get("dynamic", {}), {}
    for s, a in zip(manifest["inputs"], inputs):
        # a dimension that is a string is a symbol: any length in its range, one length per symbol
        ok = len(a.shape) == len(s["shape"]) and str(a.dtype) == s["dtype"]
        for n, d in zip(a.shape, s["shape"]) if ok else ():
            if isinstance(d, str):
                r = dynamic.get(d, {"min": 0, "max": None})
                ok = ok and r["min"] <= n and (r["max"] is None or n <= r["max"]) and sizes.setdefault(d, n) == n
            else:
                ok = ok and n == d
        if not ok:
            ranges = "".join(f", {k} in {r['min']}..{r['max']}" for k, r in dynamic.items())
            sys.exit(f"error: input {s['name']} is {a.shape} {a.dtype}, expected {s['shape']} {s['dtype']}{ranges}")
    args_dev = [tvm.runtime.tensor(a, dev) for a in inputs] + weights
    outputs = _flatten(vm["main"](*args_dev))

    vm.set_input("main", *args_dev)
    res = vm.time_evaluator("invoke_stateful", dev, number=5, repeat=args.repeat)("main")
    ms = np.asarray(res.results) * 1e3
    print(f"latency ms: median {np.median(ms):.3f} min {ms.min():.3f} p90 {np.percentile(ms, 90):.3f}")
    status = 0
    if ref_outputs is not None:
        # hwcomp.artifact.reproduces_build's rule (this script cannot import hwcomp): as close to the
        # framework's outputs as the build was (a compressed artifact differs from them by design)
        err = max(float(np.max(np.abs(o.astype(np.float64) - r))) for o, r in zip(outputs, ref_outputs))
        scale = max(1.0, max(float(np.max(np.abs(r))) for r in ref_outputs))
        cos = min(_cosine(o, r) for o, r in zip(outputs, ref_outputs))
        fid = manifest.get("fidelity") or {}
        comp = manifest.get("compression") or {}
        if not isinstance(fid, dict) or not isinstance(comp, dict):
            sys.exit("error: the manifest's 'fidelity' and 'compression' must be objects")
        try:
            built, built_cos = (float(fid["max_abs_err"]), float(fid["min_cosine"])) if "max_abs_err" in fid \
                else (0.0, 1.0)
        except (TypeError, ValueError, KeyError):
            sys.exit("error: the manifest's 'fidelity' must give numbers 'max_abs_err' and 'min_cosine'")
        ok = err <= built + 1e-3 * scale and cos >= built_cos - 1e-3
        if "max_abs_err" not in fid and (comp.get("passes") or any(k != "passes" for k in comp)):
            verdict, ok = "not judged (compressed, and its build could not run to measure how far it may differ)", True
        else:
            verdict = "OK" if ok else "MISMATCH"
        print(f"correctness vs reference: {verdict} (max abs err {err:.3g}, cosine {cos:.6f}"
              + (f"; the build's own {built:.3g} / {built_cos:.6f} allowed" if built > 0 else "") + ")")
        status = 0 if ok else 1
    if args.output:
        np.savez(args.output, **{f"output{i}": o for i, o in enumerate(outputs)})
    if args.report_libs:
        libs = sorted({ln.split()[-1] for ln in open("/proc/self/maps") if "libtvm" in ln})
        print("tvm libraries loaded: " + ", ".join(os.path.basename(x) for x in libs))
    return status


if __name__ == "__main__":
    sys.exit(main())
