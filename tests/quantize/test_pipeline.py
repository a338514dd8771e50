"""annotate → calibrate → realize end to end, through ``hwcomp.compile``.

Tolerances (int8 vs the framework's fp32 output on inputs that were not in the calibration set):
MLP and CNN cosine ≥ 0.999, tiny BERT cosine ≥ 0.999 (measured 0.99996-0.9999998).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hwcomp
from hwcomp.errors import HwcompError, HwcompWarning
from hwcomp.models import MLP, SmallCNN, randomize_batchnorm, tiny_bert
from hwcomp.quantize import QuantConfig, quantize_passes
from hwcomp.quantize.calibrate import CalibrationError
from hwcomp.quantize.pipeline import Int8Quantizer
from hwcomp.quantize.qmath import cosine
from hwcomp.target import get_target


def _compile(model, example, calib, tmp_path, config=None, name="art", target="host"):
    from hwcomp.frontend import load_model

    imported = load_model(model, example)
    q = Int8Quantizer(get_target(target), config or QuantConfig(), calib, params=imported.params, progress=False)
    art = hwcomp.compile(imported, target, tmp_path / name,
                         options=hwcomp.CompileOptions(passes=q.passes(), use_default_database=False,
                                                       compression_summary=None))
    return art, q, imported


def _held_out(model, inputs):
    with torch.no_grad():
        out = model(*[torch.from_numpy(a) for a in inputs])
    return out.numpy()


def _ops(art_or_mod) -> str:
    return art_or_mod["main"].script(show_meta=False)


def test_mlp_int8_end_to_end(tmp_path):
    torch.manual_seed(0)
    model = MLP(64, 128, 10).eval()
    rng = np.random.default_rng(0)
    calib = [[rng.standard_normal((4, 64)).astype(np.float32)] for _ in range(8)]
    np.savez(tmp_path / "calib.npz", x=np.stack([c[0] for c in calib]))  # [samples, *shape]
    passes = quantize_passes(get_target("host"), QuantConfig(calib_method="minmax"),
                             str(tmp_path / "calib.npz"), progress=False)
    art = hwcomp.compile(model, "host", tmp_path / "mlp", example_inputs=(torch.randn(4, 64),),
                         options=hwcomp.CompileOptions(passes=passes, use_default_database=False))
    assert art.fidelity["min_cosine"] >= 0.999
    x = rng.standard_normal((4, 64)).astype(np.float32)
    out = art.run([x])[0]
    ref = _held_out(model, [x])
    assert cosine(out, ref) >= 0.999
    assert (out.argmax(-1) == ref.argmax(-1)).all()
    # int8 weights in the artifact: 64x128 + 128x128 in AVX2 layout, the 128x10 head in [N, K]
    kinds = {w.dtype for w in art.weights()}
    assert np.dtype(np.int8) in kinds and np.dtype(np.float32) not in {w.dtype for w in art.weights() if w.size > 1000}


def test_cnn_int8_end_to_end(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(SmallCNN(width=8)).eval()
    rng = np.random.default_rng(1)
    calib = [[rng.standard_normal((2, 3, 16, 16)).astype(np.float32)] for _ in range(6)]
    art, q, _ = _compile(model, (torch.randn(2, 3, 16, 16),), calib, tmp_path, QuantConfig(calib_method="entropy"))
    conv = [r for r in q.realizer.report if r["kind"] == "conv2d"]
    assert len(conv) == 3 and all(r["status"] == "int8" for r in conv)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert cosine(art.run([x])[0], _held_out(model, [x])) >= 0.999


def test_tiny_bert_int8_end_to_end_and_int8_chains(tmp_path, host):
    model = tiny_bert(layers=2, hidden=64, heads=4, vocab=1000).eval()
    rng = np.random.default_rng(2)

    def sample():
        ids = rng.integers(0, 1000, (1, 16)).astype(np.int64)
        mask = np.ones((1, 16), np.int64)
        mask[0, 12:] = 0  # padding
        return [ids, mask]

    calib = [sample() for _ in range(8)]
    ex = [torch.from_numpy(a) for a in sample()]
    art, q, imported = _compile(model, ex, calib, tmp_path)
    report = {r["layer"]: r for r in q.realizer.report}
    assert sum(r["status"] == "int8" for r in report.values()) == 16  # 12 dense + 4 batch matmul
    # Q/K/V requantize in the kernel (no float); FFN-1 applies GELU and requantizes for FFN-2
    assert report["dense0"]["epilogue"]["kind"] == "requant" and report["dense0"]["output"] == "int8"
    assert report["dense4"]["epilogue"] == {"kind": "float_requant", "act": "gelu", "bias": True}
    assert report["dense0"]["names"][-1] == "model_encoder_layer_0_attention_self_query"
    # VNNI hosts: vpdpbusd; AVX2 hosts: vpmaddubsw with 7-bit weights
    assert report["dense0"]["layout"] == ("vnni" if host.int8_dot == "vnni" else "avx2u8")
    for _ in range(2):
        s = sample()
        assert cosine(art.run(s)[0], _held_out(model, s)) >= 0.999


def test_reduce_range_chooses_the_kernel(tmp_path, host):
    """AVX2 without VNNI (the ``x86-avx2`` target, which any AVX2 host runs): 7-bit weights and the
    vpmaddubsw layout by default, full 8-bit weights and the vpmaddwd layout with
    ``reduce_range=False``. Without SmoothQuant this MLP's error comes from the activations
    (measured 1 - cosine 0.00188 with 7-bit weights, 0.00182 with 8): the narrower weights may cost
    at most half as much again."""
    if host.arch != "x86_64" or "avx2" not in host.features:
        pytest.skip("the AVX2 int8 kernels need an x86 host with AVX2")
    torch.manual_seed(0)
    model = MLP(64, 128, 16).eval()
    rng = np.random.default_rng(3)
    calib = [[rng.standard_normal((4, 64)).astype(np.float32)] for _ in range(6)]
    x = rng.standard_normal((4, 64)).astype(np.float32)
    errors = []
    for reduce, layout, qmax in ((None, "avx2u8", 63), (False, "avx2", 127)):
        art, q, _ = _compile(model, (torch.randn(4, 64),), calib, tmp_path,
                             QuantConfig(reduce_range=reduce, smooth=None), name=f"r{reduce}", target="x86-avx2")
        dense = [r for r in q.realizer.report if r["kind"] == "dense"]
        assert {r["layout"] for r in dense} == {layout}
        codes = max(int(np.abs(w.astype(np.int16)).max()) for w in art.weights() if w.dtype == np.int8)
        assert codes == qmax
        errors.append(1 - cosine(art.run([x])[0], _held_out(model, [x])))
    assert errors[1] < 0.003 and errors[0] < 1.5 * errors[1], errors


def test_skip_list_keeps_layer_float():
    from hwcomp.build import bind_weights
    from hwcomp.frontend import load_model

    torch.manual_seed(0)
    model = MLP(32, 64, 10).eval()
    imported = load_model(model, (torch.randn(2, 32),))
    mod = bind_weights(imported.mod, imported.params)
    calib = [[np.random.default_rng(i).standard_normal((2, 32)).astype(np.float32)] for i in range(3)]
    q = Int8Quantizer(get_target("host"), QuantConfig(skip=("net.2", "dense2")), calib, params=imported.params,
                      progress=False)
    out = mod
    for p in q.passes():
        out = p(out)
    text = _ops(out)
    status = {r["layer"]: (r["status"], r["names"][-1]) for r in q.realizer.report}
    assert status["dense0"] == ("int8", "net_0") and status["dense1"][0] == "fp32" and status["dense2"][0] == "fp32"
    assert text.count("R.matmul(") == 2 and "q_dense0" in text and "q_dense1" not in text
    assert "hwcomp.quantize.observe" not in text


def test_skip_list_names_batch_normed_convs(tmp_path):
    """A conv followed by batch-norm is folded before annotation (new weights): it must keep its
    parameter's name, or ``skip`` silently matches nothing on every batch-normed CNN."""
    torch.manual_seed(0)
    model = randomize_batchnorm(SmallCNN(width=8)).eval()
    rng = np.random.default_rng(1)
    calib = [[rng.standard_normal((2, 3, 16, 16)).astype(np.float32)] for _ in range(4)]
    art, q, imported = _compile(model, (torch.randn(2, 3, 16, 16),), calib, tmp_path, QuantConfig(skip=("features.4",)))
    conv = {r["layer"]: r for r in q.realizer.report if r["kind"] == "conv2d"}
    assert conv["conv0"]["names"][-1] == "features_0" and conv["conv0"]["status"] == "int8"
    assert conv["conv1"]["names"][-1] == "features_4" and conv["conv1"]["status"] == "fp32"  # batch-normed
    assert conv["conv2"]["names"][-1] == "features_8" and conv["conv2"]["status"] == "int8"  # no batch-norm
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert cosine(art.run([x])[0], _held_out(model, [x])) >= 0.999
    # a pattern that names no layer (a typo) says so instead of passing silently
    from hwcomp.build import bind_weights

    q2 = Int8Quantizer(get_target("host"), QuantConfig(skip=("features.4", "featurs.8")), calib,
                       params=imported.params, progress=False)
    with pytest.warns(HwcompWarning, match=r"pattern\(s\) 'featurs.8' matched no layer \(layers are named like features_0"):
        q2.annotate_pass(bind_weights(imported.mod, imported.params))


def test_bad_calibration_data_is_rejected(tmp_path):
    torch.manual_seed(0)
    model = MLP(16, 32, 4).eval()
    ex = (torch.randn(2, 16),)

    def run(calib):
        passes = quantize_passes(get_target("host"), QuantConfig(), calib, progress=False)
        hwcomp.compile(model, "host", tmp_path / "bad", example_inputs=ex,
                       options=hwcomp.CompileOptions(passes=passes, use_default_database=False))

    with pytest.raises(CalibrationError, match="empty"):
        run([])
    with pytest.raises(CalibrationError, match=r"shape \[2, 15\] but the model expects \[2, 16\]"):
        run([[np.zeros((2, 16), np.float32)], [np.zeros((2, 15), np.float32)]])
    with pytest.raises(CalibrationError, match="has 2 input"):
        run([[np.zeros((2, 16), np.float32), np.zeros(3)]])
    np.savez(tmp_path / "wrong.npz", y=np.zeros((5, 2, 16), np.float32))
    with pytest.raises(CalibrationError, match="no array for input"):
        run(str(tmp_path / "wrong.npz"))
    with pytest.raises(CalibrationError, match="does not exist"):
        run(str(tmp_path / "missing.npz"))
    np.save(tmp_path / "one.npy", np.zeros((5, 2, 16), np.float32))
    with pytest.raises(CalibrationError, match="is a .npy file"):
        run(str(tmp_path / "one.npy"))
    good = (tmp_path / "wrong.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(CalibrationError, match="cut.npz"):
        run(str(tmp_path / "cut.npz"))
    with pytest.raises(HwcompError, match="unknown calibration method"):
        QuantConfig(calib_method="kl")


def test_fidelity_target_falls_back_to_fp32(tmp_path):
    torch.manual_seed(0)
    model = MLP(32, 64, 10).eval()
    rng = np.random.default_rng(3)
    calib = [[rng.standard_normal((4, 32)).astype(np.float32)] for _ in range(6)]
    # 3-bit codes lose a lot; a demanding target forces layers back to fp32, worst first
    cfg = QuantConfig(bits=3, fidelity_target=0.9999, heldout=2, smooth=None)
    art, q, _ = _compile(model, (torch.randn(4, 32),), calib, tmp_path, cfg)
    fid = q.fidelity
    assert fid is not None and fid.history[0]["cosine"] < 0.9999
    assert fid.fp32_layers and fid.met
    assert fid.fp32_layers[0] == min((r for r in fid.layers if r["cosine"] is not None),
                                     key=lambda r: r["cosine"])["layer"]
    fp32 = {r["layer"] for r in q.realizer.report if r["status"] == "fp32"}
    assert set(fid.fp32_layers) <= fp32
    assert "fidelity target 0.9999: met" in fid.format()
    summary = q.summary()
    assert summary["fidelity"]["met"] and summary["layers"]


def test_onnx_qdq_model_realized(tmp_path):
    """A QDQ model from ONNX Runtime's static quantizer runs on the integer kernels."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from hwcomp.build import bind_weights
    from hwcomp.frontend import load_model
    from hwcomp.quantize.calibrate import HostModel
    from hwcomp.quantize.qdq import QDQRealizer

    torch.manual_seed(0)
    model = MLP(32, 64, 10).eval()
    torch.onnx.export(model, (torch.randn(4, 32),), str(tmp_path / "m.onnx"), dynamo=True, opset_version=17,
                      input_names=["x"])
    rng = np.random.default_rng(4)
    data = [{"x": rng.standard_normal((4, 32)).astype(np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True})
    imported = load_model(str(tmp_path / "q.onnx"))
    r = QDQRealizer(get_target("host"))
    out_mod = r(bind_weights(imported.mod, imported.params))
    text = _ops(out_mod)
    assert "R.quantize" not in text and "R.dequantize" not in text and "R.matmul" not in text
    assert [x["status"] for x in r.realizer.report] == ["int8"] * 3
    # the model's own scales: the first layer's input scale is the QDQ one
    onnx_model = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
    x_scale = float(inits[next(n.input[1] for n in onnx_model.graph.node if n.op_type == "QuantizeLinear")])
    assert r.realizer.report[0]["inputs"][0]["scale"] == pytest.approx(x_scale)
    # hwcomp follows the QDQ graph's arithmetic (simulated in NumPy) and stays close to fp32.
    # (ONNX Runtime itself runs this s8s8 QDQ model at cosine ~0.97 against both on this AVX2
    # machine — ORT documents saturation of s8s8 on x86 without VNNI; hwcomp's s16 path is exact.)
    x = data[0]["x"]
    got = HostModel(out_mod).run([x])[0]
    sim = _simulate_qdq(onnx_model, inits, x)
    assert cosine(got, sim) >= 0.9999
    assert cosine(got, _held_out(model, [x])) >= 0.999


def _simulate_qdq(model, inits, x):
    """Fake-quantized float evaluation of a QDQ MLP graph (QuantizeLinear, DequantizeLinear, Gemm, Relu)."""
    vals = {model.graph.input[0].name: x}

    def per_axis(v, arr, node):
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if v.size == 1:
            return v
        shape = [1] * arr.ndim
        shape[axis] = -1
        return v.reshape(shape)

    for n in model.graph.node:
        ins = [vals[i] if i in vals else inits[i] for i in n.input]
        if n.op_type == "QuantizeLinear":
            s, z = per_axis(ins[1], ins[0], n), per_axis(ins[2], ins[0], n)
            out = np.clip(np.round(ins[0] / s) + z, -128, 127).astype(np.int8)
        elif n.op_type == "DequantizeLinear":
            s, z = per_axis(ins[1], ins[0], n), per_axis(ins[2], ins[0], n)
            out = ((ins[0].astype(np.float32) - z) * s).astype(np.float32)
        elif n.op_type == "Gemm":
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            out = ins[0] @ (ins[1].T if trans_b else ins[1]) + ins[2]
        elif n.op_type == "Relu":
            out = np.maximum(ins[0], 0)
        else:
            raise AssertionError(f"unexpected op {n.op_type}")
        vals[n.output[0]] = out
    return vals[model.graph.output[0].name]


def test_sparse_int8_matches_dense_int8(tmp_path):
    """Block-sparse layers through the int8 BSR kernel compute the same integers as the int8 dense kernel."""
    from hwcomp.sparse_format.bsr import block_prune

    torch.manual_seed(0)
    model = MLP(64, 128, 10).eval()
    with torch.no_grad():
        for lin in (model.net[0], model.net[2]):  # 90% of 8x1 blocks zero; the head stays dense
            lin.weight.copy_(torch.from_numpy(block_prune(lin.weight.numpy(), 0.9, (8, 1))))
    rng = np.random.default_rng(0)
    calib = [[rng.standard_normal((4, 64)).astype(np.float32)] for _ in range(8)]
    example = (torch.randn(4, 64),)
    dense, _, _ = _compile(model, example, calib, tmp_path, QuantConfig(), name="dense")
    sparse, q, _ = _compile(model, example, calib, tmp_path, QuantConfig(sparse_threshold=0.7, sparse_block=(8, 1)),
                            name="sparse")
    kernels = [r.get("kernel") for r in q.realizer.report]
    assert kernels.count("int8 bsr 8x1") == 2, kernels
    x = rng.standard_normal((4, 64)).astype(np.float32)
    out_s, out_d = sparse.run([x])[0], dense.run([x])[0]
    # dense int8 requantizes between the two layers and the BSR one dequantizes, so they agree to
    # int8 rounding, not bit for bit; both are int8-close to fp32.
    assert cosine(out_s, out_d) >= 0.9995
    assert cosine(out_s, _held_out(model, [x])) >= 0.999
    w_bytes = sum(w.nbytes for w in sparse.weights() if w.dtype == np.int8)
    assert w_bytes < 0.2 * (64 * 128 + 128 * 128)  # only ~10% of the int8 weights are stored


def test_fallback_reaches_layers_the_probe_could_not_measure():
    """Layers the per-layer probe cannot measure (cosine None: an operand behind a max-pool) are
    ranked after the measured ones, so a target only they can meet is still met."""
    from hwcomp.quantize.fidelity import fallback, worst_first

    rows = [{"layer": "a", "cosine": 0.999}, {"layer": "pooled", "cosine": None},
            {"layer": "b", "cosine": 0.99}, {"layer": "c", "cosine": 0.9999}]
    ranking = worst_first(rows)
    assert ranking == ["b", "a", "c", "pooled"]

    def evaluate(force):  # only the unmeasured layer in fp32 fixes the model
        return {"cosine": 0.995 if "pooled" in force else 0.7}

    force, res, history = fallback(evaluate, ranking, 0.99)
    assert "pooled" in force and res["cosine"] >= 0.99
    assert [h["cosine"] for h in history][-1] == 0.995 and history[0]["cosine"] == 0.7
