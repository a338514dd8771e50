"""The CLI on .pt2 and .onnx models, and every bad input a user can give it."""

import json

import numpy as np
import pytest
import torch

import hwcomp
from hwcomp.cli import main
from hwcomp.models import MLP
from hwcomp.quantize.qmath import cosine


@pytest.fixture(scope="module")
def pt2_model(tmp_path_factory):
    torch.manual_seed(0)
    model = MLP(32, 64, 5).eval()
    x = torch.randn(3, 32)
    path = tmp_path_factory.mktemp("m") / "mlp.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    return path, model


@pytest.fixture(scope="module")
def compiled(pt2_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "mlp"
    assert main(["compile", str(pt2_model[0]), "-t", "host", "-o", str(out)]) == 0
    return out


def test_compile_pt2_and_run(compiled, pt2_model, tmp_path, capsys):
    _, model = pt2_model
    x = np.random.default_rng(3).standard_normal((3, 32)).astype("float32")
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["run", str(compiled), "--inputs", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as z:
        np.testing.assert_allclose(z["output0"], model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    assert main(["inspect", str(compiled), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["fidelity"]["max_abs_err"] < 1e-4 and manifest["source"].endswith("mlp.pt2")


def test_compile_onnx(tmp_path):
    pytest.importorskip("onnxscript")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=17, input_names=["image"])
    out = tmp_path / "art"
    assert main(["compile", str(path), "-o", str(out)]) == 0
    import hwcomp

    art = hwcomp.load(out)
    assert art.inputs[0]["name"] == "image"
    np.testing.assert_allclose(art.run({"image": x.numpy()})[0], model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_unknown_target_lists_valid_ones(pt2_model, tmp_path, capsys):
    assert main(["compile", str(pt2_model[0]), "-t", "pentium4", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown target 'pentium4'" in err and "rpi4" in err and "x86-avx512-vnni" in err
    assert "Traceback" not in err


def test_unsupported_torch_op_is_named_with_location(tmp_path):
    import hwcomp
    from hwcomp.errors import UnsupportedOpError

    class Weird(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.qr(x)[0] + 1

    with pytest.raises(UnsupportedOpError) as e:
        hwcomp.compile(Weird(), "host", tmp_path / "w", example_inputs=(torch.randn(4, 4),))
    msg = str(e.value)
    assert "linalg_qr" in msg and "node" in msg and "test_cli.py" in msg


def test_unsupported_onnx_op_is_named(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Det", ["x"], ["y"], name="my_det")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "det.onnx")
    assert main(["compile", str(tmp_path / "det.onnx"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Det" in err and "my_det" in err


@pytest.mark.parametrize("damage", ["truncate_lib", "edit_weights", "foreign_manifest", "missing_file",
                                    "garbage_manifest"])
def test_corrupt_artifact_is_refused(compiled, tmp_path, damage, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(compiled, bad)
    if damage == "truncate_lib":
        data = (bad / "model.so").read_bytes()
        (bad / "model.so").write_bytes(data[: len(data) // 2])
    elif damage == "edit_weights":
        with np.load(bad / "weights.npz") as z:
            arrays = {k: z[k].copy() for k in z.files}
        first = next(iter(arrays))
        arrays[first][0] += 1.0
        np.savez(bad / "weights.npz", **arrays)
    elif damage == "foreign_manifest":
        (bad / "manifest.json").write_text(json.dumps({"format": "something-else/3"}))
    elif damage == "missing_file":
        (bad / "weights.npz").unlink()
    elif damage == "garbage_manifest":
        (bad / "manifest.json").write_text("{not json")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hwcomp: error:") and "Traceback" not in err


@pytest.mark.parametrize("bad_input,needle", [
    (np.zeros((4, 32), "float32"), "shape (4, 32)"),
    (np.zeros((3, 32), "float64"), "dtype float64"),
])
def test_wrong_input_shape_or_dtype(compiled, tmp_path, bad_input, needle, capsys):
    np.savez(tmp_path / "in.npz", x=bad_input)
    assert main(["run", str(compiled), "--inputs", str(tmp_path / "in.npz")]) == 2
    assert needle in capsys.readouterr().err


def test_wrong_input_name(compiled):
    import hwcomp
    from hwcomp.errors import InputError

    with pytest.raises(InputError, match="missing \\['x'\\]"):
        hwcomp.load(compiled).run({"y": np.zeros((3, 32), "float32")})


def test_targets_lists_all(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("host", "x86-avx2", "x86-avx512", "x86-avx512-vnni", "rpi4", "rpi5", "jetson-orin-cpu",
                 "graviton3", "jetson-orin", "a100", "h100"):
        assert f"\n{name} " in "\n" + out


def test_compile_int8_and_sparse_from_cli(pt2_model, tmp_path, host, capsys):
    """--quantize int8 --calib and --sparsity wire the passes; fidelity vs the float model is stated."""
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((6, 3, 32)).astype("float32"))
    out = tmp_path / "q"
    assert main(["compile", str(pt2_model[0]), "-o", str(out), "--quantize", "int8",
                 "--calib", str(tmp_path / "calib.npz")]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["fidelity"]["min_cosine"] > 0.99 and m["compression"]["quantize"]["bits"] == 8
    # --skip names a module of the PyTorch model: that layer stays fp32
    assert main(["compile", str(pt2_model[0]), "-o", str(tmp_path / "qs"), "--quantize", "int8",
                 "--calib", str(tmp_path / "calib.npz"), "--skip", "net.0"]) == 0
    n_int8 = [sum(w.dtype == np.int8 for w in hwcomp.load(d).weights()) for d in (out, tmp_path / "qs")]
    assert n_int8[1] == n_int8[0] - 1
    # a --skip pattern that names no layer is said, in one line, and changes nothing
    capsys.readouterr()
    assert main(["compile", str(pt2_model[0]), "-o", str(tmp_path / "qt"), "--quantize", "int8",
                 "--calib", str(tmp_path / "calib.npz"), "--skip", "net.O"]) == 0
    err = capsys.readouterr().err
    assert "hwcomp: warning: quantize: skip pattern(s) 'net.O' matched no layer (layers are named like net_0" in err
    assert "UserWarning" not in err
    assert sum(w.dtype == np.int8 for w in hwcomp.load(tmp_path / "qt").weights()) == n_int8[0]
    # AVX2 without VNNI: 7-bit weights (vpmaddubsw) unless --full-range-weights
    assert main(["compile", str(pt2_model[0]), "-o", str(tmp_path / "qf"), "--quantize", "int8",
                 "--calib", str(tmp_path / "calib.npz"), "--full-range-weights", "--exact-math",
                 "--weight-rounding", "nearest"]) == 0
    qf = json.loads((tmp_path / "qf" / "manifest.json").read_text())["compression"]["quantize"]
    assert (qf["weight_rounding"], m["compression"]["quantize"]["weight_rounding"]) == ("nearest", "gptq")
    codes = [sorted(int(np.abs(w.astype(np.int16)).max()) for w in hwcomp.load(d).weights() if w.dtype == np.int8)
             for d in (out, tmp_path / "qf")]
    # the 64 -> 5 head fits no AVX2 layout; VNNI hosts take 8-bit weights everywhere. GPTQ (the
    # default) can leave a row's largest code a little short of the width, never past it.
    narrow = 127 if host.int8_dot == "vnni" or "avx2" not in host.features else 63
    widths = [[63 if c <= 63 else 127 for c in row] for row in codes]
    assert widths == [[narrow, narrow, 127], [127, 127, 127]] and codes[1] == [127, 127, 127], codes
    out = tmp_path / "s"
    assert main(["compile", str(pt2_model[0]), "-o", str(out), "--sparsity", "0.5", "--block", "4x1",
                 "--sparse-threshold", "0.4"]) == 0
    names = [p["name"] for p in json.loads((out / "manifest.json").read_text())["compression"]["passes"]]
    assert names == ["PruneWeights", "DenseToBSR"]
    # both: the pruned layers become int8 BSR kernels inside the quantizer
    out = tmp_path / "sq"
    assert main(["compile", str(pt2_model[0]), "-o", str(out), "--sparsity", "0.8", "--block", "8x1",
                 "--quantize", "int8", "--calib", str(tmp_path / "calib.npz")]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert [p["name"] for p in m["compression"]["passes"]][0] == "PruneWeights"
    assert "DenseToBSR" not in [p["name"] for p in m["compression"]["passes"]]
    assert main(["compile", str(pt2_model[0]), "-o", str(tmp_path / "s8"), "--sparsity", "0.8", "--block", "8x1"]) == 0
    x = np.random.default_rng(1).standard_normal((3, 32)).astype("float32")
    sq, s8 = hwcomp.load(out).run([x])[0], hwcomp.load(tmp_path / "s8").run([x])[0]
    assert cosine(sq, s8) > 0.999  # int8 BSR vs fp32 BSR of the same pruned model
    assert sum(w.nbytes for w in hwcomp.load(out).weights() if w.dtype == np.int8) > 0
