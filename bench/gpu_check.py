"""Build CUDA artifacts here, then check them runtime-only on a real GPU against PyTorch.

Two modes:

``python bench/gpu_check.py build OUTDIR [--targets h100,a100]``
    (here, with the full TVM and nvcc) compiles the models below with ``hwcomp.compile`` into
    ``OUTDIR/<model>-<target>/`` and saves each model's PyTorch state as ``OUTDIR/<model>.state.npz``
    plus ``OUTDIR/build.json`` (what is embedded in each ``model.so``).

``python bench/gpu_check.py check OUTDIR --json RESULT.json``
    (on the GPU machine, with a runtime-only TVM: ``TVM_USE_RUNTIME_LIB=1`` and no
    ``libtvm_compiler.so``) loads each artifact through :class:`hwcomp.artifact.Artifact`, runs it on
    ``cuda:0``, compares it with the stored reference outputs (PyTorch on the build machine's CPU)
    and with the same PyTorch model on the GPU (fp32, TF32 off), and times TVM
    (``time_evaluator`` over ``invoke_stateful``) against PyTorch eager (CUDA events).

Models (fixed seeds): ``mlp`` 512→1024→10 on a batch of 8; ``cnn`` (conv3x3-bn-relu-maxpool)×2 +
linear on 1×3×32×32; ``mlp_sparse``: the MLP pre-pruned in PyTorch to 90 % of 16×1 blocks, compiled
with no flag (the BSR kernel is chosen by detection); ``mlp_int8``: the MLP quantized
(``quantize_passes``, default config, 16 calibration samples; CUDA ``dp4a``), checked on the GPU
against the same int8 model built for this host's CPU (``OUTDIR/<artifact>.cpu_out.npy``) as well
as against fp32 PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODELS = ("mlp", "cnn", "mlp_sparse", "mlp_int8")


# ---- models (PyTorch; built the same way in both modes) ----------------------------------------
def make_model(name: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name in ("mlp", "mlp_int8"):
        model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 10))
    elif name == "mlp_sparse":
        model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 10))
        w = model[0].weight.data  # [out, in]: zero 90 % of the 16x1 blocks (16 output rows x 1 input)
        keep = torch.rand(w.shape[0] // 16, w.shape[1], generator=torch.Generator().manual_seed(2)) >= 0.9
        w.mul_(keep.repeat_interleave(16, dim=0).to(w.dtype))
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
        g = torch.Generator().manual_seed(1)
        for m in model.modules():  # non-trivial inference statistics, so BN folding is exercised
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    else:
        raise ValueError(name)
    return model.eval()


def example_input(name: str, seed: int = 0) -> np.ndarray:
    shape = (1, 3, 32, 32) if name == "cnn" else (8, 512)
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# ---- build (here) ------------------------------------------------------------------------------
def build(outdir: Path, targets: list[str]) -> dict:
    import torch

    import hwcomp
    from hwcomp import cuda

    outdir.mkdir(parents=True, exist_ok=True)
    summary = {"tvm": __import__("tvm").__version__, "torch": torch.__version__,
               "nvcc": subprocess.run([cuda.find_nvcc() or "nvcc", "--version"], check=False,
                                      capture_output=True, text=True).stdout.strip().splitlines()[-1:], "artifacts": {}}
    for name in MODELS:
        model = make_model(name)
        np.savez(outdir / f"{name}.state.npz", **{k: v.detach().numpy() for k, v in model.state_dict().items()})
        x = torch.from_numpy(example_input(name))
        for tname in targets:
            if tname != "h100" and name != "mlp":
                continue  # other archs: the MLP is enough to check the PTX path
            d = outdir / f"{name}-{tname}"
            t0 = time.perf_counter()
            art = hwcomp.compile(model, tname, d, example_inputs=(x,), options=_options(name, tname), log=print)
            if name == "mlp_int8":  # the same int8 model on this CPU: what the GPU's int8 must match
                cpu = hwcomp.compile(model, "host", None, example_inputs=(x,), options=_options(name, "host"))
                np.save(outdir / f"{d.name}.cpu_out.npy", cpu.run(art.reference()[0])[0])
            summary["artifacts"][d.name] = {
                "model": name, "target": tname, "build_s": round(time.perf_counter() - t0, 1),
                "model_so_bytes": (d / "model.so").stat().st_size,
                "cuda_modules": cuda.describe_library(d / "model.so"),
                "fidelity_here": art.fidelity,
                "compression": art.manifest.get("compression"),
            }
            print(f"built {d.name} in {summary['artifacts'][d.name]['build_s']} s", flush=True)
            if name == "mlp" and tname == "h100":
                _build_source_control(model, x, outdir, summary)
    (outdir / "build.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _options(name: str, target: str):
    """Compile options per model: the int8 MLP gets the quantizer, calibrated on 16 fresh inputs."""
    if name != "mlp_int8":
        return None
    import hwcomp
    from hwcomp.quantize import QuantConfig, quantize_passes
    from hwcomp.target import get_target

    calib = [[example_input(name, seed=100 + i)] for i in range(16)]
    return hwcomp.CompileOptions(passes=quantize_passes(get_target(target), QuantConfig(), calib,
                                                        progress=False))


def _build_source_control(model, x, outdir: Path, summary: dict) -> None:
    """A negative control: the MLP exported the stock way (CUDA *source* in model.so)."""
    import hwcomp
    from hwcomp import build as hbuild
    from hwcomp import cuda

    d = outdir / "control-source-mlp-h100"
    saved = hbuild.cuda.pack_imports
    hbuild.cuda.pack_imports = lambda target: None  # export_library's default packing
    try:
        hwcomp.compile(model, "h100", d, example_inputs=(x,))
    finally:
        hbuild.cuda.pack_imports = saved
    summary["artifacts"][d.name] = {
        "model": "mlp", "target": "h100", "control": "CUDA source embedded (stock export_library)",
        "model_so_bytes": (d / "model.so").stat().st_size,
        "cuda_modules": cuda.describe_library(d / "model.so"),
    }


# ---- check (on the GPU machine, runtime only) --------------------------------------------------
def _import_runtime_side():
    """Import hwcomp.artifact / hwcomp.cuda without hwcomp/__init__ (which imports the compiler)."""
    if "hwcomp" not in sys.modules:
        pkg = types.ModuleType("hwcomp")
        pkg.__path__ = [str(REPO / "hwcomp")]
        sys.modules["hwcomp"] = pkg
    return importlib.import_module("hwcomp.artifact"), importlib.import_module("hwcomp.cuda")


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "min_ms": float(a.min()), "mean_ms": float(a.mean()),
            "std_ms": float(a.std()), "repeats": len(ms)}


def _err(a: np.ndarray, b: np.ndarray) -> dict:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))
    return {"max_abs_err": float(np.abs(a64 - b64).max()),
            "max_rel_err": float((np.abs(a64 - b64) / (np.abs(b64).max() + 1e-30)).max()),
            "cosine": cos}


def check(outdir: Path, number: int, repeat: int) -> dict:
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    t_import = time.perf_counter()
    import tvm
    import tvm_ffi
    from tvm import base as tvm_base

    artifact_mod, cuda = _import_runtime_side()
    ok, why = cuda.load_cuda_runtime()
    # tvm.support.nvcc (imported by `import tvm` even runtime-only) registers a CUDA compile callback
    # (NVRTC through cuda-bindings). Remove it: loading must not compile anything here, so an artifact
    # holding CUDA source instead of a fatbin fails instead of being JIT-compiled.
    had_callback = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True) is not None
    if had_callback:
        tvm_ffi.remove_global_func("tvm_callback_cuda_compile")
    tvm_libs = sorted(tvm_base._LOADED_LIBS)
    result = {
        "python": platform.python_version(),
        "tvm": tvm.__version__,
        "tvm_ffi": tvm_ffi.__version__,
        "tvm_runtime_only": bool(tvm_base._RUNTIME_ONLY),
        "tvm_loaded_libs": tvm_libs,
        "libtvm_compiler_present": any(Path(tvm.__file__).parent.glob("lib*/libtvm_compiler*")),
        "cuda_compile_callback_removed": had_callback,
        "tvm_import_s": round(time.perf_counter() - t_import, 2),
        "cuda_runtime_loaded": ok, "cuda_runtime_error": why or None,
    }
    dev = tvm.cuda(0)
    result["tvm_cuda_exist"] = bool(dev.exist)
    if not (ok and dev.exist):
        result["error"] = "no CUDA device visible to TVM"
        return result
    result["tvm_device"] = {"name": dev.device_name, "compute_version": dev.compute_version,
                            "multi_processor_count": dev.multi_processor_count}

    import torch  # after TVM: TVM found its CUDA runtime on its own

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    result["torch"] = torch.__version__
    result["torch_device"] = torch.cuda.get_device_name(0)
    result["torch_tf32"] = False
    try:
        result["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                          check=False, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass

    build = json.loads((outdir / "build.json").read_text()) if (outdir / "build.json").is_file() else {}
    result["build"] = {k: build.get(k) for k in ("tvm", "torch", "nvcc")}
    result["artifacts"] = {}
    for d in sorted(p for p in outdir.iterdir() if (p / "manifest.json").is_file()):
        info = build.get("artifacts", {}).get(d.name, {})
        r = result["artifacts"][d.name] = {}
        if info.get("control"):
            r["control"] = info["control"]
        try:
            r.update(_check_one(d, info.get("model", d.name.split("-")[0]), artifact_mod, cuda, tvm, torch,
                                dev, number, repeat))
        except Exception as e:  # noqa: BLE001 - keep checking the others; the JSON says what failed
            r["error"] = f"{type(e).__name__}: {e}"[:2000]
    return result


def _cuobjdump(fatbin: bytes) -> str | None:
    exe = shutil.which("cuobjdump") or ("/usr/local/cuda/bin/cuobjdump"
                                        if Path("/usr/local/cuda/bin/cuobjdump").is_file() else None)
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".fatbin") as f:
        f.write(fatbin)
        f.flush()
        p = subprocess.run([exe, "-lelf", "-lptx", f.name], check=False, capture_output=True, text=True)
    return (p.stdout + p.stderr).strip()


def _check_one(d: Path, name: str, artifact_mod, cuda, tvm, torch, dev, number: int, repeat: int) -> dict:
    art = artifact_mod.Artifact.load(d)  # verifies every file's sha256
    r = {"target": art.target["name"], "arch": art.target["tvm"].get("arch")}
    mods = cuda.describe_library(d / "model.so", with_code=True)
    r["embedded"] = [{k: v for k, v in m.items() if k != "code"} for m in mods]
    listing = [_cuobjdump(m["code"]) for m in mods if m["is_fatbin"]]
    if any(listing):
        r["cuobjdump"] = listing

    # 1. Against the stored reference (PyTorch on the build machine's CPU).
    ref_in, ref_out = art.reference()
    t0 = time.perf_counter()
    out = art.run(ref_in)  # first run: module load (+ driver PTX JIT when no SASS matches)
    r["first_run_s"] = round(time.perf_counter() - t0, 3)
    r["vs_reference_cpu"] = artifact_mod.compare(out, ref_out)
    cpu_out = d.parent / f"{d.name}.cpu_out.npy"
    if cpu_out.is_file():  # the same compiled (int8) model run on the build machine's CPU
        r["vs_same_model_on_cpu"] = _err(out[0], np.load(cpu_out))

    # 2. Against the same PyTorch model on this GPU (fp32), on the reference input and a fresh one.
    model = make_model(name)
    with np.load(d.parent / f"{name}.state.npz") as z:
        model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})
    model = model.cuda().eval()
    r["vs_torch_gpu"] = []
    for x in (ref_in[0], example_input(name, seed=1)):
        with torch.inference_mode():
            t = model(torch.from_numpy(x).cuda()).float().cpu().numpy()
        o = art.run([x])[0]
        r["vs_torch_gpu"].append(_err(o, t))
    r["vs_torch_gpu_max_abs_err"] = max(e["max_abs_err"] for e in r["vs_torch_gpu"])
    r["ref_vs_torch_gpu"] = _err(ref_out[0], model(torch.from_numpy(ref_in[0]).cuda()).detach().cpu().numpy())

    # 3. Latency: TVM time_evaluator (the VM's invoke_stateful, inputs and weights already on the GPU).
    vm = art.vm()
    x_dev = tvm.runtime.tensor(ref_in[0], dev)
    vm.set_input("main", x_dev, *art._dev_weights)
    vm.invoke_stateful("main")
    dev.sync()
    fte = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat, min_repeat_ms=0)
    res = fte("main")
    r["tvm_latency"] = _stats([t * 1e3 for t in res.results])
    r["tvm_latency"]["number"] = number

    # PyTorch eager, CUDA events around `number` back-to-back calls, `repeat` times.
    xt = torch.from_numpy(ref_in[0]).cuda()
    with torch.inference_mode():
        for _ in range(20):
            model(xt)
        torch.cuda.synchronize()
        ms = []
        for _ in range(repeat):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(number):
                model(xt)
            e.record()
            e.synchronize()
            ms.append(s.elapsed_time(e) / number)
    r["torch_eager_latency"] = _stats(ms)
    r["torch_eager_latency"]["number"] = number
    r["speedup_tvm_vs_torch"] = r["torch_eager_latency"]["median_ms"] / r["tvm_latency"]["median_ms"]
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("build")
    b.add_argument("outdir", type=Path)
    b.add_argument("--targets", default="h100,a100")
    c = sub.add_parser("check")
    c.add_argument("outdir", type=Path)
    c.add_argument("--json", type=Path, default=None)
    c.add_argument("--number", type=int, default=200)
    c.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args(argv)
    if args.mode == "build":
        build(args.outdir, [t for t in args.targets.split(",") if t])
        return 0
    result = check(args.outdir, args.number, args.repeat)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    arts = [a for a in result.get("artifacts", {}).values() if "control" not in a]
    return 0 if arts and all("error" not in a for a in arts) else 1


if __name__ == "__main__":
    sys.exit(main())
