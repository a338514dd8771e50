"""bench/fresh_process.py: variants timed in fresh processes, alternating (the timing mode of
``bench/int8_cnn.py --processes``). Real children, a real artifact and ONNX file; the timings' values
are the machine's, so what is asserted is what the parent gets back and how failures surface."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fresh_process


def test_paired_ratio_pairs_rotations():
    # per-rotation medians: a = 3, 4, 10; b = 1, 2, 2 -> ratios 3, 2, 5 -> median 3
    assert fresh_process.paired_ratio([[3.0, 2.0, 4.0], [4.0], [10.0]], [[1.0], [2.0], [2.0, 2.0]]) == 3.0
    assert fresh_process.paired_ratio([], [[1.0]]) is None


class _FakeRun:
    """Stands in for ``subprocess.run`` (only the parent's bookkeeping is under test here): records
    each child's variant path and answers from ``script(path, call_index)``."""

    def __init__(self, script):
        self.script, self.paths = script, []

    def __call__(self, cmd, **kw):
        path = cmd[3]
        self.paths.append(Path(path).name)
        out = self.script(Path(path).name, len(self.paths) - 1)
        if isinstance(out, BaseException):
            raise out
        rc, stdout, stderr = out
        return subprocess.CompletedProcess(cmd, rc, stdout, stderr)


def _ok(ms):
    return 0, "a library's chatter\n" + fresh_process.RESULT + json.dumps({"samples_ms": ms}) + "\nmore\n", ""


def test_rotations_alternate_and_a_failure_drops_the_variant(tmp_path, monkeypatch):
    calls = {"n": 0}

    def script(name, i):
        if name == "b":
            calls["n"] += 1
            if calls["n"] == 2:  # b fails in its second rotation
                return 1, "", "Traceback ...\nValueError: bad artifact"
        return _ok([1.0, 2.0])

    fake = _FakeRun(script)
    monkeypatch.setattr(fresh_process.subprocess, "run", fake)
    errors = {}
    vs = [fresh_process.Variant("a", "hwcomp", Path("a")), fresh_process.Variant("b", "ort", Path("b"))]
    got = fresh_process.time_fresh(vs, np.zeros(2, np.float32), tmp_path, rotations=4, on_error=errors.__setitem__)
    # order reversed every other rotation; b gone after its failure (rotation 1, where it ran first)
    assert fake.paths == ["a", "b", "b", "a", "a", "a"]
    assert got == {"a": [[1.0, 2.0]] * 4, "b": []}
    assert errors == {"b": "RuntimeError: child process failed: ValueError: bad artifact"}


@pytest.mark.parametrize("answer, why", [
    ((0, fresh_process.RESULT + "{not json", ""), "JSONDecodeError"),
    ((0, fresh_process.RESULT + json.dumps({"other": 1}), ""), "KeyError"),
    ((0, fresh_process.RESULT + json.dumps({"samples_ms": []}), ""), "no samples"),
    ((0, "finished, but printed no result line\n", ""), "no result line"),
    (subprocess.TimeoutExpired(["python"], 5), "TimeoutExpired"),
    (OSError("cannot start"), "cannot start"),
])
def test_a_bad_child_is_reported_not_raised(tmp_path, monkeypatch, answer, why):
    monkeypatch.setattr(fresh_process.subprocess, "run", _FakeRun(lambda name, i: answer))
    errors = {}
    got = fresh_process.time_fresh([fresh_process.Variant("x", "ort", Path("x"))], np.zeros(2, np.float32),
                                   tmp_path, rotations=2, on_error=errors.__setitem__)
    assert got == {"x": []}
    assert why in errors["x"], errors


@pytest.mark.slow
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
