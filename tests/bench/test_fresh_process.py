"""bench/fresh_process.py: variants timed in fresh processes, alternating (the timing mode of
``bench/int8_cnn.py --processes``). Real children, a real artifact and ONNX file; the timings' values
are the machine's, so what is asserted is what the parent gets back and how failures surface."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fresh_process  # noqa: E402


def test_paired_ratio_pairs_rotations():
    # per-rotation medians: a = 3, 4, 10; b = 1, 2, 2 -> ratios 3, 2, 5 -> median 3
    assert fresh_process.paired_ratio([[3.0, 2.0, 4.0], [4.0], [10.0]], [[1.0], [2.0], [2.0, 2.0]]) == 3.0
    assert fresh_process.paired_ratio([], [[1.0]]) is None


def test_variants_timed_in_fresh_processes(tmp_path):
    import hwcomp

    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    x = torch.randn(1, 32)
    hwcomp.compile(model, "host", tmp_path / "art", example_inputs=(x,))
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(onnx_path), dynamo=False)
    variants = [fresh_process.Variant("ours", "hwcomp", tmp_path / "art"),
                fresh_process.Variant("ort", "ort", onnx_path),
                fresh_process.Variant("broken", "hwcomp", tmp_path / "no_such_artifact")]
    errors = {}
    got = fresh_process.time_fresh(variants, x.numpy(), tmp_path / "wd", rotations=2, rounds=3, number=2,
                                   warmup=1, threads=1, on_error=errors.__setitem__)
    for label in ("ours", "ort"):
        assert len(got[label]) == 2, label  # one list per rotation
        assert all(len(p) == 3 and all(0 < s < 1000 for s in p) for p in got[label]), got[label]
    assert got["broken"] == [] and list(errors) == ["broken"]
    assert "no such artifact" in errors["broken"]  # the child's own one-line error


def test_child_rejects_an_unknown_kind(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    with pytest.raises(SystemExit):  # argparse: one line naming the choices
        fresh_process.child_main(["tflite", str(tmp_path), str(tmp_path / "x.npy")])
