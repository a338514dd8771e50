"""Int8 CNNs: hwcomp int8 against hwcomp fp32, ONNX Runtime fp32 and ONNX Runtime int8 (issue 19).

Models: the zoo CNNs of ``hwcomp.zoo`` at their realistic size (``hwcomp.zoo.build(name,
"realistic")``: random weights, batch-norm statistics gathered on random images; batch 1, 3x224x224):
resnet18, resnet50, mobilenet_v2, efficientnet_b0, convnext_tiny. Variants per model:

- hwcomp fp32: ``hwcomp.compile(model, "host")`` with default options (3x3 convs as Winograd
  F(4, 3) / F(2, 3) where they qualify), and "hwcomp fp32 direct" with ``winograd=False`` (every
  conv direct: the same multiply count as the int8 build, whose convs stay direct);
- hwcomp int8: ``CompileOptions(passes=Int8Quantizer(host, QuantConfig(), calib).passes())`` (what
  ``hwcomp.quantize.quantize_passes`` returns, the quantizer kept to report its int8/fp32 layers),
  calibrated on 16 random N(0, 1) images drawn from seed 0;
- ONNX Runtime fp32: the model exported with ``bench/peers.py``'s ``export_onnx`` (dynamo, opset 18),
  CPUExecutionProvider, all graph optimizations;
- ONNX Runtime int8 static: that ONNX file through ``quant_pre_process`` (shape inference, fusions
  such as Conv+BatchNorm) and ``quantize_static`` (QDQ format, per-channel int8 weights, min-max
  calibration) on the SAME 16 calibration images through a ``CalibrationDataReader``. Both
  activation types are quantized and timed — int8 (S8S8, ``quantize_static``'s default) and uint8
  (U8S8) — and the ORT int8 column is the faster of the two on this CPU (ORT's best int8; on an
  AVX2 CPU without VNNI U8S8 measured 2x faster than S8S8 on ResNet-18); the JSON has both.

- OpenVINO int8: the same ONNX file read by OpenVINO and quantized by NNCF's post-training
  quantization (``nncf.quantize``, its default symmetric preset, per-channel weights) on the SAME 16
  calibration images, run by the CPU plugin with ``INFERENCE_NUM_THREADS``,
  ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_PRECISION_HINT=f32`` (the layers NNCF leaves in float
  run fp32, not the bf16 default of AMX CPUs). Needs ``nncf`` (a bench extra); without it the column
  says why.

- OpenVINO fp32: the same ONNX file on the CPU plugin (same configuration), for OpenVINO's own int8/fp32
  ratio. With ``--target x86-avx2`` on an AVX-512 host, OpenVINO's kernels are capped at AVX2
  (``ONEDNN_MAX_CPU_ISA=AVX2``, set before it loads unless already set), so its ratio is an AVX2
  CPU's, the one issue 19's AVX2 goal cites; the JSON names the conv kernels it took
  (``ov_conv_kernels``, e.g. ``jit_avx2_I8``). ONNX Runtime has no such switch.

Fidelity: cosine of the output (``last_hidden_state``) against PyTorch fp32 on 4 held-out random
images (seed 1), mean over the images (the JSON also has the minimum and the fp32 variants' cosine).
"cosine fp32, input in 8 bits" estimates what rounding the input alone to 8 bits costs: PyTorch fp32
on the held-out images rounded to 8 bits (symmetric, each image's own range; a build's calibrated,
clipped or asymmetric input scale differs a little) and nothing else. Random-init ResNet-50, whose
50 layers amplify any perturbation, gives 0.79 there: the reason no int8 build of it comes near 0.99.
Latency: all variants of a model round-robin (every variant ``--number`` calls per round, a 0.3 s
pause before each so the previous framework's spinning threads park), median over ``--rounds``
rounds, after a warm-up. ``--number`` defaults to 3: on this shared VM a single call per round
swung MobileNetV2's medians by 2x for every framework (hwcomp int8 5.5 vs 4.4 ms, ORT int8 7.3 vs
3.4 ms with 1 vs 5 calls). Every framework runs ``--threads`` threads (default 2; ``TVM_NUM_THREADS``
is set before TVM is loaded, ORT's ``intra_op_num_threads``, ``torch.set_num_threads``). A variant
that fails (export, quantization, compile, run) shows its error's first line in the table instead of
stopping the run. ``--processes N`` times each variant instead in N fresh processes, alternating
(``bench/fresh_process.py``: in one process the first-loaded build ran ~15 % slower on this host), each
process's sample its median of ``--rounds`` x ``--number`` calls; the JSON adds every process's samples
and the int8/fp32 ratios paired by rotation (hwcomp's and OpenVINO's). ResNet-50 alone with 10
processes: ~8 minutes.

Emulated peer CPU (``--emulate-cpu``, ``bench/emulated_cpu.py``): an int8 runtime's arithmetic
depends on the CPU it finds (ONNX Runtime's ``vpmaddubsw`` on AVX2 saturates its int16 pair sums at
8-bit weights, its VNNI ``vpdpbusd`` does not), so with ``--target x86-avx2`` on a VNNI host the
peers' fidelity in the table is their VNNI fidelity. By default there, ONNX Runtime's two int8
models and OpenVINO's also run their held-out images under ``qemu-x86_64 -cpu EPYC-Milan`` (an
emulated Zen 3: AVX2, no AVX-512), where MLAS and oneDNN take their AVX2 kernels; the extra columns
are the better of ORT's S8S8 and U8S8 there, and OpenVINO's. hwcomp's AVX2 artifact, run the same way on the first image, must match its native
output bit for bit (printed): the emulator's check. Not timed; about 3 minutes for the five models.
Without ``qemu-x86_64`` (``apt install qemu-user-static``) ``auto`` leaves the columns out.

Digits CNN (``bench/accuracy.py``'s ``digits_cnn`` on sklearn digits, trained as that file does):
compiled by hwcomp fp32 and int8 (calibrated on 64 training images, batch 1), top-1 on the test
split for both and the drop in points. Runs unless ``--quick`` (then only with ``--digits``).

Trained ResNets (with the digits section): the random-init zoo ResNets say how far int8 moves a
network that amplifies every perturbation (ResNet-50's 50 random layers: cosine 0.67 for every
framework), not how int8 serves a trained one, and no trained CNN weights are available offline.
So ResNet-18 and ResNet-50 — the zoo's ``transformers`` configs (basic / bottleneck blocks, the
published widths and depths) with one input channel and a 10-way head — are trained here on
sklearn digits upsampled to 32x32 (AdamW, one-cycle schedule, a few epochs: ~20 s and ~60 s on 2
cores), then quantized by hwcomp, ONNX Runtime (``quantize_static`` U8S8, QDQ, per-channel) and
OpenVINO (NNCF) on the SAME 16 training images, and compared with PyTorch fp32 on all 360 test
images: per-image logit cosine (mean and minimum), top-1 accuracy and agreement with fp32.

    python bench/int8_cnn.py [--quick] [--models resnet18,mobilenet_v2] [--rounds 10] [--number 3]
                             [--threads 2] [--digits | --no-digits] [--target x86-avx2]
                             [--emulate-cpu auto|none|<qemu cpu>] [--processes N]

``--quick``: resnet18 only, 3 rounds, no digits section (~45 s on 2 cores; ``--models mobilenet_v2
--rounds 2`` with the digits section ~100 s). Writes ``bench/results/int8_cnn.json`` (``results_name``:
the target and a subset of the models are in the name, so a partial run never replaces a full one:
``--quick`` writes ``int8_cnn_resnet18.json``).
Last line: ``int8_cnn_geomean_hwcomp_over_ort_int8=<x>``: the geometric mean over the models of
hwcomp int8 latency / ONNX Runtime int8 latency (lower is better; below 1 = hwcomp int8 faster);
``nan`` when no model has both.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import emulated_cpu
import fresh_process
import peers
from common import write_results

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny")
VARIANTS = ("hwcomp_fp32", "hwcomp_fp32_direct", "hwcomp_int8", "ort_fp32", "ort_int8", "ov_fp32",
            "ov_int8")  # latency columns
ORT_INT8 = {"int8": "ort_int8_s8s8", "uint8": "ort_int8_u8s8"}  # activation type -> timed variant
N_CALIB, CALIB_SEED = 16, 0
N_HELD, HELD_SEED = 4, 1
DIGITS_CALIB = 64
PAUSE_S = 0.3


def _reason(e: BaseException) -> str:
    """An exception as one line (TVM's errors are long C++ traces)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:200]}"


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _round_8bit(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to 8 bits, symmetric, its own absolute maximum as the range (127 steps)."""
    s = float(np.abs(x).max()) / 127 or 1.0
    return (np.round(x / s) * s).astype(np.float32)


def _images(shape: tuple[int, ...], n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


# ---- ONNX Runtime ------------------------------------------------------------------------------

def _ort_session(path: Path, threads: int):
    """A run function over ``peers.ort_session`` (``threads`` intra-op threads, sequential)."""
    sess = peers.ort_session(path, threads)
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {name: x})[0])

    return run


def ov_int8_nncf(onnx_path: Path, calib: list[np.ndarray], threads: int, save_to: Path | None = None):
    """OpenVINO int8 through NNCF post-training quantization on ``calib``; ``(run function, conv
    kernels)``. ``save_to``: also write the quantized model there (OpenVINO IR, for the emulated CPU
    and for timing in fresh processes)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    quantized = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))
    if save_to is not None:
        ov.save_model(quantized, str(save_to), compress_to_fp16=False)  # the model timed and checked here
    return _ov_run(peers.ov_compile(quantized, threads))


def _ov_run(compiled):
    """A run function over an OpenVINO compiled model, and its convolutions' kernels."""
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return np.asarray(request.get_output_tensor(0).data).copy()

    return run, peers.ov_conv_kernels(compiled)


def ort_int8_path(wd: Path, activations: str) -> Path:
    """Where a model's ONNX Runtime int8 file with ``activations`` (int8 | uint8) is written."""
    return wd / f"model_int8_{activations}.onnx"


def ort_int8_static(onnx_path: Path, out_path: Path, calib: list[np.ndarray], activations: str = "int8") -> dict:
    """Quantize ``onnx_path`` with ``quantize_static`` (QDQ, per-channel int8 weights, ``activations``
    int8 or uint8) on ``calib``; returns what was done (the pre-processing step is skipped, and said
    so, where it fails)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {input_name: x}

        def rewind(self):
            self.it = iter(calib)

    info: dict = {"format": "QDQ", "per_channel": True, "calibration_images": len(calib)}
    src = onnx_path
    pre = out_path.with_name(out_path.stem + "_pre.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(onnx_path), str(pre))
        src = pre
        info["pre_process"] = True
    except Exception as e:  # noqa: BLE001 - quantize the exported file as it is
        info["pre_process"] = f"skipped: {_reason(e)}"
    act = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
    info["activation_type"], info["weight_type"] = act.name, QuantType.QInt8.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(src), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=act, weight_type=QuantType.QInt8)
    return info


# ---- one model ---------------------------------------------------------------------------------

def bench_model(name: str, args, workdir: Path) -> dict:
    """Build, compile and quantize every variant, check fidelity, time them round-robin."""
    import hwcomp
    from hwcomp import zoo
    from hwcomp.frontend import load_model
    from hwcomp.quantize import QuantConfig
    from hwcomp.quantize.pipeline import Int8Quantizer
    from hwcomp.runtime.measure import prepared_call
    from hwcomp.target import get_target

    row: dict = {"model": name, "errors": {}, "cosine_mean": {}, "cosine_min": {}, "compile_s": {}}
    t0 = time.perf_counter()
    model = zoo.build(name, "realistic")
    module = model.module
    shape = tuple(model.inputs[0].shape)
    row["input"] = list(shape)
    row["params_m"] = model.n_params / 1e6
    calib = _images(shape, N_CALIB, CALIB_SEED)
    held = _images(shape, N_HELD, HELD_SEED)
    with torch.no_grad():
        refs = [module(torch.from_numpy(x)).numpy() for x in held]
        # what rounding the input alone to 8 bits costs: fp32 arithmetic on the rounded image
        rounded = [module(torch.from_numpy(_round_8bit(x))).numpy() for x in held]
    row["cosine_mean"]["fp32_input_8bit"] = float(np.mean([_cos(a, b) for a, b in zip(rounded, refs)]))
    row["build_s"] = time.perf_counter() - t0
    wd = workdir / name
    wd.mkdir(parents=True, exist_ok=True)

    runs: dict = {}   # label -> f(np image) -> np output
    calls: dict = {}  # label -> zero-argument timed call on held[0]
    sources: dict = {}  # label -> (fresh_process kind, path): what a fresh process loads to time it

    def attempt(label: str, make) -> None:
        t = time.perf_counter()
        try:
            run, call = make()
            runs[label], calls[label] = run, call
        except Exception as e:  # noqa: BLE001 - one variant's failure is a result, not the end of the run
            row["errors"][label] = _reason(e)
            row.setdefault("tracebacks", {})[label] = traceback.format_exc(limit=-4)
        row["compile_s"][label] = time.perf_counter() - t
        print(f"  {label}: {'ok' if label in runs else 'FAILED ' + row['errors'][label]} "
              f"({row['compile_s'][label]:.1f} s)", flush=True)

    host = get_target(args.target)
    imported = {}
    artifacts: dict = {}  # label -> hwcomp artifact

    def hwcomp_variant(label: str, options_fn):
        def make():
            if "m" not in imported:
                imported["m"] = load_model(module, model.inputs)
            art = hwcomp.compile(imported["m"], host, wd / label, options=options_fn())
            fid = art.manifest.get("fidelity") or {}
            if isinstance(fid, dict) and "cosine" in fid:
                row.setdefault("compile_fidelity_cosine", {})[label] = fid["cosine"]
            call = prepared_call(art.vm(), art.device(), art.device_args([held[0]]))
            artifacts[label] = art
            sources[label] = ("hwcomp", wd / label)
            return (lambda x: art.run([x])[0]), call
        return make

    def int8_options():
        q = Int8Quantizer(host, QuantConfig(), [[x] for x in calib], params=imported["m"].params, progress=False)
        row["_quantizer"] = q
        return hwcomp.CompileOptions(passes=q.passes(), compression_summary={"passes": ["int8"]})

    print(f"[{name}] {row['params_m']:.1f}M params, input {list(shape)}", flush=True)
    attempt("hwcomp_fp32", hwcomp_variant("hwcomp_fp32", hwcomp.CompileOptions))
    attempt("hwcomp_fp32_direct", hwcomp_variant("hwcomp_fp32_direct", lambda: hwcomp.CompileOptions(winograd=False)))
    attempt("hwcomp_int8", hwcomp_variant("hwcomp_int8", int8_options))
    q = row.pop("_quantizer", None)
    if q is not None and q.realizer is not None:
        row["hwcomp_int8_layers"] = sum(r["status"] == "int8" for r in q.realizer.report)
        row["hwcomp_fp32_layers"] = sum(r["status"] == "fp32" for r in q.realizer.report)
        row["hwcomp_int8_kernel"] = q.provider.describe()

    onnx_path = wd / "model.onnx"
    exported: dict = {}

    def export():
        if "names" not in exported:
            try:
                exported["names"], row["onnx_exporter"] = peers.export_onnx(module, model.inputs, onnx_path)
            except Exception as e:  # noqa: BLE001 - both ORT variants need it: remember why it failed
                exported["names"] = e
        if isinstance(exported["names"], Exception):
            raise exported["names"]

    def ort_variant(label, path_fn):
        def make():
            export()
            path = path_fn()
            run = _ort_session(path, args.threads)
            sources[label] = ("ort", path)
            x0 = held[0]
            return run, (lambda: run(x0))
        return make

    def int8_path(activations: str):
        def path():
            out = ort_int8_path(wd, activations)
            row.setdefault("ort_int8_quantization", {})[ORT_INT8[activations]] = \
                ort_int8_static(onnx_path, out, calib, activations)
            return out
        return path

    attempt("ort_fp32", ort_variant("ort_fp32", lambda: onnx_path))
    for act, label in ORT_INT8.items():
        attempt(label, ort_variant(label, int8_path(act)))

    def ov_variant(label):
        def make():
            export()
            if label == "ov_fp32":
                run, kernels = _ov_run(peers.ov_compile(onnx_path, args.threads))
                sources[label] = ("openvino", onnx_path)
            else:  # the IR is written only for its readers: fresh processes, the emulated CPU
                ir = wd / "ov_int8.xml" if args.processes or args.emulate_cpu else None
                run, kernels = ov_int8_nncf(onnx_path, calib, args.threads, ir)
                if ir is not None:
                    sources[label] = ("openvino", ir)
            row.setdefault("ov_conv_kernels", {})[label] = kernels
            x0 = held[0]
            return run, (lambda: run(x0))
        return make

    attempt("ov_fp32", ov_variant("ov_fp32"))
    attempt("ov_int8", ov_variant("ov_int8"))

    # fidelity against PyTorch fp32 on the held-out images
    for label in list(runs):
        try:
            cos = [_cos(runs[label](x), r) for x, r in zip(held, refs)]
            row["cosine_mean"][label], row["cosine_min"][label] = float(np.mean(cos)), float(np.min(cos))
        except Exception as e:  # noqa: BLE001
            row["errors"][label] = _reason(e)
            runs.pop(label), calls.pop(label)

    if args.processes:
        samples = _time_fresh(calls, sources, held[0], wd, args, row)
    else:
        samples = _time_in_process(calls, args, row)
    row["samples_ms"] = {k: [round(s, 4) for s in v] for k, v in samples.items() if v and k in calls}
    for label, s in row["samples_ms"].items():
        row[f"{label}_ms"] = float(np.median(s))
    # "ORT int8" = the faster of its two activation types on this CPU (its best int8 configuration)
    timed = [(row[f"{lb}_ms"], lb) for lb in ORT_INT8.values() if f"{lb}_ms" in row]
    if timed:
        best = min(timed)[1]
        row["ort_int8_ms"], row["ort_int8_config"] = row[f"{best}_ms"], best
        row["cosine_mean"]["ort_int8"] = row["cosine_mean"][best]
        row["cosine_min"]["ort_int8"] = row["cosine_min"][best]
    else:
        row["errors"]["ort_int8"] = "; ".join(f"{lb.split('_')[-1]}: {row['errors'][lb]}"
                                              for lb in ORT_INT8.values() if lb in row["errors"]) or "not timed"
    if "hwcomp_fp32_ms" in row and "hwcomp_int8_ms" in row:
        row["hwcomp_int8_speedup"] = row["hwcomp_fp32_ms"] / row["hwcomp_int8_ms"]
    if "hwcomp_fp32_direct_ms" in row and "hwcomp_int8_ms" in row:
        row["hwcomp_int8_speedup_direct"] = row["hwcomp_fp32_direct_ms"] / row["hwcomp_int8_ms"]
    if "hwcomp_int8_ms" in row and "ort_int8_ms" in row:
        row["hwcomp_int8_over_ort_int8"] = row["hwcomp_int8_ms"] / row["ort_int8_ms"]
    if "hwcomp_int8_ms" in row and "ov_int8_ms" in row:
        row["hwcomp_int8_over_ov_int8"] = row["hwcomp_int8_ms"] / row["ov_int8_ms"]
    if "ov_fp32_ms" in row and "ov_int8_ms" in row:
        row["ov_int8_speedup"] = row["ov_fp32_ms"] / row["ov_int8_ms"]
    if args.emulate_cpu:
        print(f"  fidelity on an emulated {args.emulate_cpu} (qemu-user)", flush=True)
        row["emulated"] = emulated_fidelity(args.emulate_cpu, wd, held, refs, artifacts.get("hwcomp_int8"),
                                            runs.get("hwcomp_int8"), args.threads)
    if not row["errors"]:
        del row["errors"]
    shutil.rmtree(wd, ignore_errors=True)
    return row


def _call(calls: dict, label: str, n: int, row: dict) -> bool:
    """Call ``label`` ``n`` times; a failure is recorded in ``row`` and drops the variant."""
    try:
        for _ in range(n):
            calls[label]()
        return True
    except Exception as e:  # noqa: BLE001 - one variant's failure is a result
        row["errors"][label] = _reason(e)
        calls.pop(label)
        return False


def _time_in_process(calls: dict, args, row: dict) -> dict:
    """Every variant warmed up, then round-robin in this process: label -> samples (ms)."""
    samples: dict = {label: [] for label in calls}
    for label in list(calls):
        _call(calls, label, args.warmup, row)
    print(f"  timing {len(calls)} variants x {args.rounds} rounds", flush=True)
    with torch.no_grad():
        for _ in range(args.rounds):
            for label in list(calls):
                time.sleep(PAUSE_S)  # let the previous framework's spinning threads park
                t = time.perf_counter()
                if _call(calls, label, args.number, row):
                    samples[label].append((time.perf_counter() - t) / args.number * 1e3)
    return samples


def _time_fresh(calls: dict, sources: dict, x: np.ndarray, wd: Path, args, row: dict) -> dict:
    """``--processes N``: every variant timed in N fresh processes, alternating
    (``fresh_process.time_fresh``): label -> one sample per process, its median over ``--rounds``
    rounds. The JSON keeps every process's samples, and int8/fp32 ratios paired by rotation."""
    variants = [fresh_process.Variant(lb, *sources[lb]) for lb in calls if lb in sources]
    print(f"  timing {len(variants)} variants in {args.processes} fresh processes each "
          f"({args.rounds} rounds x {args.number} calls per process)", flush=True)

    def failed(label: str, why: str) -> None:
        row["errors"][label] = why
        calls.pop(label, None)

    per = fresh_process.time_fresh(variants, x, wd, args.processes, rounds=args.rounds, number=args.number,
                                   warmup=args.warmup, threads=args.threads, on_error=failed)
    row["process_samples_ms"] = {lb: [[round(v, 4) for v in p] for p in ps] for lb, ps in per.items() if ps}
    for fp32, int8, key in (("hwcomp_fp32", "hwcomp_int8", "hwcomp_int8_speedup_paired"),
                            ("ov_fp32", "ov_int8", "ov_int8_speedup_paired")):
        ratio = fresh_process.paired_ratio(per.get(fp32, []), per.get(int8, []))
        if ratio is not None:
            row[key] = ratio
    return {lb: [float(np.median(p)) for p in ps] for lb, ps in per.items()}


def emulated_fidelity(cpu: str, wd: Path, held: list, refs: list, artifact, hwcomp_run, threads: int) -> dict:
    """ONNX Runtime int8's (both activation types) and OpenVINO int8's fidelity on the emulated
    ``cpu`` (``emulated_cpu``: their kernels, and so their arithmetic, are that CPU's), and the check
    that hwcomp's artifact gives its native output there bit for bit."""
    out: dict = {"cpu": cpu}
    for act, label in ORT_INT8.items():
        path = ort_int8_path(wd, act)
        if not path.exists():
            continue
        try:
            cos = [_cos(o, r) for o, r in zip(emulated_cpu.ort_outputs(path, held, cpu, threads), refs)]
            out[label] = {"cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos))}
        except Exception as e:  # noqa: BLE001 - a failed emulated run is a result
            out.setdefault("errors", {})[label] = _reason(e)
    scored = [(out[lb]["cosine_mean"], lb) for lb in ORT_INT8.values() if lb in out]
    if scored:  # the better of the two: the peer at its most faithful
        out["ort_int8_cosine_mean"], out["ort_int8_config"] = max(scored)
    if (wd / "ov_int8.xml").exists():
        try:
            cos = [_cos(o, r) for o, r in zip(emulated_cpu.ov_outputs(wd / "ov_int8.xml", held, cpu, threads), refs)]
            out["ov_int8"] = {"cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos))}
        except Exception as e:  # noqa: BLE001
            out.setdefault("errors", {})["ov_int8"] = _reason(e)
    if artifact is not None and hwcomp_run is not None:
        try:
            name = artifact.manifest["inputs"][0]["name"]
            emu = emulated_cpu.hwcomp_outputs(artifact.path, name, held[:1], cpu)[0]
            out["hwcomp_int8_max_abs_diff_vs_native"] = float(np.max(np.abs(emu - hwcomp_run(held[0]))))
        except Exception as e:  # noqa: BLE001
            out.setdefault("errors", {})["hwcomp_int8"] = _reason(e)
    return out


# ---- digits CNN --------------------------------------------------------------------------------

def bench_digits(args) -> dict:
    """``bench/accuracy.py``'s digits CNN, trained as there, compiled fp32 and int8: test top-1."""
    from accuracy import Shuffled, accuracy, digits_cnn, digits_data

    import hwcomp
    from hwcomp.compress.finetune import FinetuneConfig, finetune
    from hwcomp.quantize import QuantConfig, quantize_passes
    from hwcomp.target import get_target

    t0 = time.perf_counter()
    x_tr, y_tr, x_te, y_te = digits_data()
    torch.manual_seed(0)
    model = digits_cnn()
    epochs = 8 if args.quick else 15  # as bench/accuracy.py (quick / full)
    finetune(model, Shuffled(x_tr, y_tr, 64, seed=0), FinetuneConfig(epochs=epochs, lr=3e-3))
    model.eval()
    out: dict = {"train": len(x_tr), "test": len(x_te), "epochs": epochs, "calibration_images": DIGITS_CALIB,
                 "torch_fp32_acc": accuracy(model, x_te, y_te)}
    out["train_s"] = time.perf_counter() - t0
    print(f"[digits] trained {epochs} epochs in {out['train_s']:.1f} s: PyTorch fp32 top-1 "
          f"{out['torch_fp32_acc']:.2f} %", flush=True)
    host = get_target(args.target)
    calib = [[x_tr[i:i + 1].numpy()] for i in range(DIGITS_CALIB)]
    options = {"hwcomp_fp32": lambda: hwcomp.CompileOptions(),
               "hwcomp_int8": lambda: hwcomp.CompileOptions(
                   passes=quantize_passes(host, QuantConfig(), calib, progress=False))}
    y = y_te.numpy()
    for label, opts in options.items():
        try:
            art = hwcomp.compile(model, host, None, example_inputs=(x_te[:1],), options=opts())
            pred = np.array([int(np.argmax(art.run([x_te[i:i + 1].numpy()])[0])) for i in range(len(x_te))])
            out[f"{label}_acc"] = 100.0 * float((pred == y).mean())
            print(f"  {label}: top-1 {out[f'{label}_acc']:.2f} %", flush=True)
        except Exception as e:  # noqa: BLE001
            out.setdefault("errors", {})[label] = _reason(e)
            print(f"  {label}: FAILED {out['errors'][label]}", flush=True)
    if "hwcomp_fp32_acc" in out and "hwcomp_int8_acc" in out:
        out["int8_drop_points"] = out["hwcomp_fp32_acc"] - out["hwcomp_int8_acc"]
    out["total_s"] = time.perf_counter() - t0
    return out


TRAINED = {"resnet18": 5, "resnet50": 5}  # architecture -> training epochs on digits


def digits_resnet(kind: str) -> torch.nn.Module:
    """The zoo's ResNet-18 / ResNet-50 config with 1 input channel and a 10-way head; returns logits."""
    from transformers import ResNetConfig, ResNetForImageClassification

    if kind == "resnet18":
        cfg = ResNetConfig(num_channels=1, num_labels=10, embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                           depths=[2, 2, 2, 2], layer_type="basic")
    else:
        cfg = ResNetConfig(num_channels=1, num_labels=10)

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = ResNetForImageClassification(cfg)

        def forward(self, x):
            return self.net(x).logits

    return Logits()


def _trained_resnet_row(kind: str, epochs: int, data: tuple, calib: list[np.ndarray], args, wd: Path) -> dict:
    """Train one ``digits_resnet`` on the digits, then each int8 framework's fidelity on the test set."""
    import torch.nn.functional as F
    from accuracy import Shuffled

    import hwcomp
    from hwcomp.quantize import QuantConfig, quantize_passes
    from hwcomp.target import get_target

    x_tr, y_tr, x_te, y_te = data
    labels = y_te.numpy()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = digits_resnet(kind)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-4)
    batches = Shuffled(x_tr, y_tr, 64, seed=0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * len(batches))
    model.train()
    for _ in range(epochs):
        for xb, yb in batches:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        ref = model(x_te).numpy()
    row: dict = {"epochs": epochs, "train_s": time.perf_counter() - t0, "errors": {},
                 "top1": {"torch_fp32": 100.0 * float((ref.argmax(1) == labels).mean())}}
    print(f"[trained {kind}] {epochs} epochs in {row['train_s']:.0f} s: PyTorch fp32 top-1 "
          f"{row['top1']['torch_fp32']:.2f} %", flush=True)
    wd.mkdir(parents=True, exist_ok=True)
    onnx_path, example = wd / "model.onnx", (x_te[:1],)
    host = get_target(args.target)

    def hwcomp_int8():
        opts = hwcomp.CompileOptions(passes=quantize_passes(host, QuantConfig(), [[c] for c in calib], progress=False))
        art = hwcomp.compile(model, host, None, example_inputs=example, options=opts)
        return lambda x: art.run([x])[0]

    def onnx() -> Path:  # exported once, for whichever peer asks first
        if not onnx_path.exists():
            peers.export_onnx(model, example, onnx_path)
        return onnx_path

    def ort_int8():
        ort_int8_static(onnx(), ort_int8_path(wd, "uint8"), calib, "uint8")
        return _ort_session(ort_int8_path(wd, "uint8"), args.threads)

    def ov_int8():
        return ov_int8_nncf(onnx(), calib, args.threads)[0]

    for label, make in (("hwcomp_int8", hwcomp_int8), ("ort_int8", ort_int8), ("ov_int8", ov_int8)):
        try:
            run = make()
            got = np.concatenate([np.asarray(run(x_te[i:i + 1].numpy())).reshape(1, -1) for i in range(len(x_te))])
            cos = [_cos(a, b) for a, b in zip(got, ref)]
            row.setdefault("cosine_mean", {})[label] = float(np.mean(cos))
            row.setdefault("cosine_min", {})[label] = float(np.min(cos))
            row["top1"][label] = 100.0 * float((got.argmax(1) == labels).mean())
            row.setdefault("agreement_with_fp32", {})[label] = float((got.argmax(1) == ref.argmax(1)).mean())
            print(f"  {label}: cosine mean {np.mean(cos):.5f} min {np.min(cos):.5f}, "
                  f"top-1 {row['top1'][label]:.2f} %", flush=True)
        except Exception as e:  # noqa: BLE001 - one framework's failure is a result
            row["errors"][label] = _reason(e)
            print(f"  {label}: FAILED {row['errors'][label]}", flush=True)
    row["total_s"] = time.perf_counter() - t0
    return row


def bench_trained_resnets(args, workdir: Path) -> dict:
    """ResNet-18/50 trained on digits at 32x32; int8 fidelity of hwcomp, ORT and OpenVINO vs fp32."""
    import torch.nn.functional as F
    from accuracy import digits_data

    x_tr, y_tr, x_te, y_te = digits_data()
    x_tr, x_te = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) for x in (x_tr, x_te))
    calib = [x_tr[i:i + 1].numpy() for i in range(N_CALIB)]
    out: dict = {"input": [1, 1, 32, 32], "train": len(x_tr), "test": len(x_te), "calibration_images": N_CALIB,
                 "models": {}}
    for kind, epochs in TRAINED.items():
        out["models"][kind] = _trained_resnet_row(kind, epochs, (x_tr, y_tr, x_te, y_te), calib, args,
                                                  workdir / f"trained_{kind}")
        gc.collect()
    return out


# ---- report ------------------------------------------------------------------------------------

HEADER = ["model", "hwcomp fp32 ms", "hwcomp fp32 direct ms", "hwcomp int8 ms", "ORT fp32 ms", "ORT int8 ms",
          "OpenVINO fp32 ms", "OpenVINO int8 ms", "int8/fp32 speedup (hwcomp)", "int8/fp32 direct",
          "int8/fp32 (OpenVINO)", "hwcomp int8 / ORT int8", "hwcomp int8 / OpenVINO int8",
          "cosine hwcomp int8", "cosine ORT int8", "cosine OpenVINO int8", "cosine fp32, input in 8 bits"]


def _cells(r: dict) -> list[str]:
    """One table row: a failed variant's cells hold its error's first line."""
    if "error" in r:  # the model itself (building it) failed
        return [r["model"], "ERROR: " + r["error"][:120]] + ["-"] * (len(HEADER) - 2)
    errors = r.get("errors", {})

    def value(label: str, v, fmt: str) -> str:
        if label in errors:
            return "ERROR: " + errors[label][:120]
        return "-" if v is None else format(v, fmt)

    def ratio(key: str) -> str:
        return "-" if key not in r else f"{r[key]:.2f}"

    ms = [value(lb, r.get(f"{lb}_ms"), ".2f") for lb in VARIANTS]
    if "ort_int8_config" in r:  # which activation type was the faster
        ms[VARIANTS.index("ort_int8")] += f" ({r['ort_int8_config'].split('_')[-1]})"
    return [r["model"], *ms,
            ratio("hwcomp_int8_speedup"), ratio("hwcomp_int8_speedup_direct"), ratio("ov_int8_speedup"),
            ratio("hwcomp_int8_over_ort_int8"),
            ratio("hwcomp_int8_over_ov_int8"),
            *(value(lb, r["cosine_mean"].get(lb), ".5f") for lb in ("hwcomp_int8", "ort_int8", "ov_int8",
                                                                    "fp32_input_8bit"))]


def _emulated_cells(r: dict) -> list[str]:
    e = r.get("emulated", {})
    errors = e.get("errors", {})
    ort = f"{e['ort_int8_cosine_mean']:.5f} ({e['ort_int8_config'].split('_')[-1]})" \
        if "ort_int8_cosine_mean" in e else ("ERROR: " + "; ".join(errors.values())[:120] if errors else "-")
    ov = f"{e['ov_int8']['cosine_mean']:.5f}" if "ov_int8" in e else \
        ("ERROR: " + errors["ov_int8"][:120] if "ov_int8" in errors else "-")
    return [ort, ov]


def print_markdown(rows: list[dict]) -> None:
    lines = [_cells(r) for r in rows]
    header = list(HEADER)
    cpus = sorted({r["emulated"]["cpu"] for r in rows if "emulated" in r})
    if cpus:  # the peer's fidelity on the emulated CPU the target stands for
        header += [f"cosine ORT int8 on {'/'.join(cpus)} (emulated)", f"cosine OpenVINO int8 on {'/'.join(cpus)}"]
        lines = [ln + _emulated_cells(r) for ln, r in zip(lines, rows)]
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for ln in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(ln, widths)) + " |")


def _geomean(rows: list[dict], key: str) -> float:
    """Geometric mean of ``key`` over the rows that have it (nan when none does)."""
    xs = [r[key] for r in rows if key in r]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def results_name(target: str, names: list[str]) -> str:
    """The results file's name: ``int8_cnn``, then ``_<target>`` unless host, then the models joined
    by ``_`` unless all of them ran."""
    name = "int8_cnn" if target == "host" else f"int8_cnn_{target}"
    ran = [m for m in MODELS if m in names]  # MODELS' order, each once: the same subset, the same file
    return name if ran == list(MODELS) else name + "_" + "_".join(ran)


def _tvm_threads() -> int | None:
    import tvm

    f = tvm.get_global_func("runtime.NumThreads", True)
    return int(f()) if f else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="resnet18 only, 3 rounds, no digits sections")
    p.add_argument("--models", help=f"comma-separated zoo CNNs (default: {','.join(MODELS)})")
    p.add_argument("--rounds", type=int, help="round-robin rounds (default 10, --quick 3)")
    p.add_argument("--number", type=int, default=3, help="calls per variant per round (their mean is a sample)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant first")
    p.add_argument("--threads", type=int, default=2, help="threads for every framework")
    p.add_argument("--processes", type=int, default=0, metavar="N",
                   help="time each variant in N fresh processes, alternating (bench/fresh_process.py), "
                        "instead of round-robin in this process; --rounds x --number calls per process")
    p.add_argument("--target", default="host",
                   help="hwcomp's target (one this CPU runs, e.g. x86-avx2 on an AVX-512 host: the AVX2 "
                        "kernels' int8/fp32 ratio); results go to int8_cnn_<target>.json unless host "
                        "(a subset of --models: their names follow)")
    p.add_argument("--emulate-cpu", default="auto",
                   help="also measure ONNX Runtime int8's fidelity on this qemu CPU model (qemu-user; "
                        f"'none' to skip). auto: {emulated_cpu.AVX2_CPU} (a Zen 3: AVX2, no AVX-512) where the "
                        "target has no VNNI but this host does, so the peer does an AVX2 CPU's arithmetic")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--digits", dest="digits", action="store_true", default=None,
                   help="run the digits sections: the digits CNN's top-1, and ResNet-18/50 trained on "
                        "digits for int8 fidelity (~2 min; default: on unless --quick)")
    g.add_argument("--no-digits", dest="digits", action="store_false")
    args = p.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 10)
    digits = (not args.quick) if args.digits is None else args.digits
    names = args.models.split(",") if args.models else (["resnet18"] if args.quick else list(MODELS))
    unknown = [n for n in names if n not in MODELS]
    if unknown:  # before anything runs: a typo must not overwrite the results file with an empty run
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    from hwcomp.errors import HwcompError
    from hwcomp.target import get_target

    try:  # likewise for the target: it must exist and run on this machine, or nothing is timed
        target = get_target(args.target)
    except HwcompError as e:
        p.error(str(e))
    if not target.runs_here():
        p.error(f"target {args.target!r} does not run on this machine: its int8 and fp32 builds could not be timed here")
    host = get_target("host")
    if args.emulate_cpu == "auto":
        host_vnni = host.int8_dot == "vnni"
        args.emulate_cpu = emulated_cpu.AVX2_CPU if (
            host_vnni and target.int8_dot != "vnni" and emulated_cpu.qemu_x86()) else None
    elif args.emulate_cpu == "none":
        args.emulate_cpu = None
    elif emulated_cpu.qemu_x86() is None:
        p.error("--emulate-cpu needs qemu-x86_64 (apt install qemu-user-static)")
    elif not emulated_cpu.known_cpu(args.emulate_cpu):
        p.error(f"qemu-x86_64 has no CPU model {args.emulate_cpu!r} (see qemu-x86_64 -cpu help)")
    if args.processes < 0:
        p.error("--processes must be 0 (off) or a number of processes per variant")
    # OpenVINO on the CPU the target stands for: an AVX2 target on an AVX-512 host caps oneDNN at
    # AVX2 (before OpenVINO loads), so its int8/fp32 ratio is an AVX2 CPU's; the JSON names the
    # kernels it took. PyTorch's oneDNN reads the same variable (its fp32 reference then runs AVX2
    # kernels too: the cosines move in the 9th digit). A cap the user set (either name) is kept.
    # ONNX Runtime has no such switch: its columns are this CPU's kernels.
    if (target.arch == "x86_64" and target.vector_bits <= 256 and host.vector_bits >= 512
            and not {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"} & set(os.environ)):
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"

    # before TVM is loaded: its runtime would pick 1 thread on this 2-vCPU machine
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    machine = peers.machine_info(args.threads)
    print(f"CPU: {machine['cpu']}; {args.threads} threads per framework "
          f"({machine['cpus_available']} CPUs available)", flush=True)

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="hwcomp-int8-cnn-"))
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                row = bench_model(name, args, workdir)
            except Exception as e:  # noqa: BLE001 - one model's failure is a result, not the end of the run
                row = {"model": name, "error": _reason(e), "traceback": traceback.format_exc(limit=-6)}
                print(f"  {name} FAILED: {row['error']}", flush=True)
            row["total_s"] = time.perf_counter() - t0
            rows.append(row)
            gc.collect()
        dig = trained = None
        if digits:
            try:
                dig = bench_digits(args)
            except Exception as e:  # noqa: BLE001
                dig = {"error": _reason(e), "traceback": traceback.format_exc(limit=-6)}
                print(f"[digits] FAILED: {dig['error']}", flush=True)
            try:
                trained = bench_trained_resnets(args, workdir)
            except Exception as e:  # noqa: BLE001
                trained = {"error": _reason(e), "traceback": traceback.format_exc(limit=-6)}
                print(f"[trained ResNets] FAILED: {trained['error']}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    threads = {"tvm": _tvm_threads(), "torch": torch.get_num_threads(), "onnxruntime": args.threads}
    print()
    print(f"CPU: {machine['cpu']} (AVX2 {machine['avx2']}, AVX-512 {machine['avx512']}, "
          f"VNNI {'avx512_vnni' in machine['avx512_flags']}); threads: {threads}; batch 1; " + (
              f"median over {args.processes} fresh processes per variant, alternating, of each one's median of "
              f"{args.rounds} rounds x {args.number} call(s)" if args.processes else
              f"median of {args.rounds} round-robin rounds x {args.number} call(s)"))
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        print(f"OpenVINO's kernels capped at ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']} "
              "(ONNX Runtime runs this CPU's own)")
    print()
    print_markdown(rows)
    print("ORT int8 = the faster of S8S8 and U8S8 (in brackets); cosine = mean over "
          f"{N_HELD} held-out images vs PyTorch fp32")
    for r in rows:
        both = [f"{lb.split('_')[-1]} {r[lb + '_ms']:.2f} ms (cos {r['cosine_mean'][lb]:.5f})"
                for lb in ORT_INT8.values() if lb + "_ms" in r]
        if both:
            print(f"  {r['model']} ORT int8: " + ", ".join(both))
        paired = [f"{who} {r[key]:.2f}x" for who, key in (("hwcomp", "hwcomp_int8_speedup_paired"),
                                                            ("OpenVINO", "ov_int8_speedup_paired")) if key in r]
        if paired:
            print(f"  {r['model']} int8/fp32 paired by rotation (median of per-rotation ratios): " + ", ".join(paired))
        if r.get("ov_conv_kernels"):
            print(f"  {r['model']} OpenVINO conv kernels: " + "; ".join(
                f"{lb.split('_')[-1]} {', '.join(k)}" for lb, k in r["ov_conv_kernels"].items()))
        for label, why in r.get("errors", {}).items():
            print(f"  {r['model']} {label}: {why}")
        e = r.get("emulated")
        if e:
            cells = [f"ORT {lb.split('_')[-1]} cos {e[lb]['cosine_mean']:.5f}" for lb in ORT_INT8.values() if lb in e]
            if "ov_int8" in e:
                cells.append(f"OpenVINO cos {e['ov_int8']['cosine_mean']:.5f}")
            if "hwcomp_int8_max_abs_diff_vs_native" in e:
                cells.append(f"hwcomp int8 max |emulated - native| {e['hwcomp_int8_max_abs_diff_vs_native']:.3g}")
            cells += [f"{lb} FAILED {why}" for lb, why in e.get("errors", {}).items()]
            print(f"  {r['model']} on an emulated {e['cpu']}: " + ", ".join(cells))
    if dig is not None:
        print()
        if "error" in dig:
            print(f"digits CNN: FAILED {dig['error']}")
        else:
            def acc(k):
                return f"{dig[k]:.2f} %" if k in dig else "ERROR: " + dig.get("errors", {}).get(k[:-4], "?")
            drop = f"{dig['int8_drop_points']:+.2f}" if "int8_drop_points" in dig else "-"
            print(f"digits CNN ({dig['test']} test images; int8 calibrated on {DIGITS_CALIB} training images): "
                  f"PyTorch fp32 {dig['torch_fp32_acc']:.2f} %, hwcomp fp32 {acc('hwcomp_fp32_acc')}, "
                  f"hwcomp int8 {acc('hwcomp_int8_acc')}, int8 drop {drop} points")
    if trained is not None:
        print()
        if "error" in trained:
            print(f"trained ResNets: FAILED {trained['error']}")
        else:
            print(f"ResNets trained on digits (1x32x32, {trained['test']} test images, {N_CALIB} calibration images):")
            for kind, r in trained["models"].items():
                cells = [f"{lb} cosine {r['cosine_mean'][lb]:.5f} (min {r['cosine_min'][lb]:.5f}) top-1 "
                         f"{r['top1'][lb]:.2f} %" for lb in r.get("cosine_mean", {})]
                cells += [f"{lb} FAILED {why}" for lb, why in r["errors"].items()]
                print(f"  {kind}: fp32 top-1 {r['top1']['torch_fp32']:.2f} %; " + "; ".join(cells))

    geomean, geomean_ov = _geomean(rows, "hwcomp_int8_over_ort_int8"), _geomean(rows, "hwcomp_int8_over_ov_int8")
    total_s = time.perf_counter() - t_start
    write_results(results_name(args.target, names), {
        "target": args.target, "machine": machine, "threads": threads, "rounds": args.rounds, "number": args.number,
        "warmup": args.warmup, "pause_s": PAUSE_S, "quick": args.quick,
        "calibration": {"images": N_CALIB, "seed": CALIB_SEED, "distribution": "N(0, 1)"},
        "held_out": {"images": N_HELD, "seed": HELD_SEED},
        "models": rows, "digits": dig, "trained_resnets": trained, "geomean_hwcomp_int8_over_ort_int8": geomean,
        "geomean_hwcomp_int8_over_ov_int8": geomean_ov,
        "geomean_over": [r["model"] for r in rows if "hwcomp_int8_over_ort_int8" in r], "total_s": total_s,
        "emulated_cpu": args.emulate_cpu, "processes": args.processes,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "notes": ("latency = median over --processes fresh processes of each one's median (samples_ms: those "
                  "process medians; process_samples_ms: every sample)" if args.processes else
                  "latency = median over round-robin rounds") + ", batch 1; ORT int8 = quantize_static QDQ per-channel, "
                 "the faster of S8S8 and U8S8; "
                 "OpenVINO int8 = NNCF post-training quantization, fp32 precision hint; machine shared with other jobs"})
    print(f"total {total_s:.0f} s")
    print(f"int8_cnn_geomean_hwcomp_over_openvino_int8={geomean_ov:.3f}")
    print(f"int8_cnn_geomean_hwcomp_over_ort_int8={geomean:.3f}")


if __name__ == "__main__":
    main()
