"""hwcomp bench / deploy: local, RPC, tracker, the emulated board, bundles, and failure cases."""

import os
import subprocess
import sys
import tarfile
import threading
import time

import pytest
import torch

import hwcomp
from hwcomp.cli import main
from hwcomp.errors import HwcompError
from hwcomp.models import MLP
from hwcomp.runtime.bundle import make_bundle
from hwcomp.runtime.rpc import RPCServer, RPCTracker
from hwcomp.runtime.session import BenchConfig, bench


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory):
    torch.manual_seed(0)
    model = MLP(16, 32, 4).eval()
    return hwcomp.compile(model, "host", tmp_path_factory.mktemp("a") / "mlp", example_inputs=(torch.randn(2, 16),))


def _check_report(report):
    lat = report.latency_ms
    assert 0 < lat["min"] <= lat["median"] <= lat["p99"] and lat["repeat"] == len(report.samples_ms)
    assert report.correctness["ok"] and report.correctness["max_abs_err"] < 1e-4


def test_bench_local_with_json_and_plot(host_artifact, tmp_path, capsys):
    assert main(["bench", str(host_artifact.path), "--repeat", "5", "--json", str(tmp_path / "r.json"),
                 "--plot", str(tmp_path / "h.png")]) == 0
    out = capsys.readouterr().out
    assert "median" in out and "correctness vs reference: OK" in out
    assert (tmp_path / "h.png").stat().st_size > 1000
    import json

    assert json.loads((tmp_path / "r.json").read_text())["latency_ms"]["repeat"] == 5


def test_bench_over_rpc_server(host_artifact):
    with RPCServer() as server:
        report = bench(host_artifact, BenchConfig(device=server.url, repeat=5, session_timeout=60))
    _check_report(report)
    assert report.device.startswith("rpc://") and not report.emulated


def test_bench_through_tracker(host_artifact):
    with RPCTracker() as tracker, RPCServer(tracker=tracker.addr, key="testkey"):
        report = bench(host_artifact, BenchConfig(device=tracker.url("testkey"), repeat=3, session_timeout=60))
    _check_report(report)


def test_wrong_architecture_refused_before_upload(host_artifact):
    with pytest.raises(HwcompError, match="built for x86_64, but the device is aarch64"):
        bench(host_artifact, BenchConfig(device="rpc://127.0.0.1:1", arch="aarch64"))


def test_unreachable_device_is_a_clear_error(host_artifact):
    with pytest.raises(HwcompError, match="cannot reach device"):
        bench(host_artifact, BenchConfig(device="rpc://127.0.0.1:1"))


def test_vanished_device_fails_fast(host_artifact):
    """Kill the server while it is measuring: a clear error within the session timeout, no hang."""
    server = RPCServer().start()
    killer = threading.Timer(2.0, server.stop)
    killer.start()
    t0 = time.time()
    try:
        with pytest.raises(HwcompError, match="disappeared|failed"):
            # a long measurement so the server dies mid-way
            bench(host_artifact, BenchConfig(device=server.url, repeat=100000, number=50, session_timeout=60))
    finally:
        killer.cancel()
        server.stop()
    assert time.time() - t0 < 60


def test_bundle_runs_runtime_only_in_fresh_process(host_artifact, tmp_path):
    bundle = make_bundle(host_artifact, tmp_path / "b.tar.gz")
    with tarfile.open(bundle) as tf:
        names = sorted(n.split("/", 1)[1] for n in tf.getnames() if "/" in n)
        tf.extractall(tmp_path / "x", filter="data")
    assert names == ["README.txt", "manifest.json", "model.so", "reference.npz", "run_model.py", "weights.npz"]
    runner = tmp_path / "x" / host_artifact.path.name / "run_model.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(runner), "--report-libs", "--repeat", "3"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "correctness vs reference: OK" in proc.stdout
    libs = proc.stdout.split("tvm libraries loaded:")[1]
    assert "libtvm_runtime" in libs and "libtvm_compiler" not in libs and "libtvm.so" not in libs


@pytest.mark.board
def test_compile_for_rpi4_and_rpi5_and_run_on_board(board, tmp_path):
    torch.manual_seed(3)
    model = MLP(32, 64, 8).eval()
    x = torch.randn(2, 32)
    for target in ("rpi4", "rpi5"):
        art = hwcomp.compile(model, target, tmp_path / target, example_inputs=(x,))
        assert "not_measured" in art.fidelity  # cannot run an aarch64 library here
        report = bench(art, BenchConfig(device=board.url, repeat=3, number=2, session_timeout=120))
        assert report.emulated
        assert report.correctness["ok"] and report.correctness["max_abs_err"] < 1e-4, target


@pytest.mark.board
def test_host_artifact_refused_by_board(board, host_artifact):
    with pytest.raises(HwcompError, match="built for x86_64, but the device is aarch64"):
        bench(host_artifact, BenchConfig(device=board.url))


def test_reproduces_build_rule():
    """A device must be as close to the framework as the build was: the build's error is allowed,
    more than ``tolerance`` of the reference's scale beyond it is not; the cosine likewise."""
    import numpy as np

    from hwcomp.artifact import reproduces_build

    ref = [np.full((4,), 10.0)]
    built = {"max_abs_err": 1.0, "min_cosine": 0.99}
    assert reproduces_build({"max_abs_err": 1.005, "min_cosine": 0.99}, ref, 1e-3, built)
    assert not reproduces_build({"max_abs_err": 1.02, "min_cosine": 0.99}, ref, 1e-3, built)
    assert not reproduces_build({"max_abs_err": 1.0, "min_cosine": 0.988}, ref, 1e-3, built)
    assert reproduces_build({"max_abs_err": 0.005, "min_cosine": 1.0}, ref, 1e-3, None)
    assert not reproduces_build({"max_abs_err": 0.02, "min_cosine": 1.0}, ref, 1e-3, {"not_measured": "x"})


def test_int8_artifact_reproduces_its_build(tmp_path):
    """An int8 artifact differs from the framework by design: bench and the bundle's runner check
    it against the build's own error (the manifest's fidelity), so they pass where the plain
    1e-3 tolerance would not."""
    import numpy as np

    from hwcomp.quantize import QuantConfig, quantize_passes
    from hwcomp.target import get_target

    torch.manual_seed(0)
    model = MLP(16, 32, 4).eval()
    rng = np.random.default_rng(0)
    calib = [[rng.standard_normal((2, 16)).astype(np.float32)] for _ in range(8)]
    passes = quantize_passes(get_target("host"), QuantConfig(), calib, progress=False)
    art = hwcomp.compile(model, "host", tmp_path / "q", example_inputs=(torch.randn(2, 16),),
                         options=hwcomp.CompileOptions(passes=passes))
    fid = art.manifest["fidelity"]
    report = bench(art, BenchConfig(repeat=3, number=1))
    c = report.correctness
    scale = max(1.0, max(float(np.abs(r).max()) for r in art.reference()[1]))
    assert c["max_abs_err"] > 1e-3 * scale, "int8 matched fp32 to 1e-3: nothing tested"
    assert c["ok"] and c["build"]["max_abs_err"] == fid["max_abs_err"]
    assert "the build's own" in "\n".join(report.lines())
    bundle = make_bundle(art, tmp_path / "q.tar.gz")
    with tarfile.open(bundle) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(tmp_path / "x" / art.path.name / "run_model.py"), "--repeat", "2"],
                          check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "correctness vs reference: OK" in proc.stdout and "the build's own" in proc.stdout


def test_compressed_artifact_without_build_fidelity_is_not_judged(tmp_path):
    """A compressed artifact built for a target the build machine cannot run has no measured
    fidelity: bench reports its error without a verdict (and exits 0) instead of a MISMATCH
    against the framework's outputs, which it was never meant to match to 1e-3."""
    import json
    import shutil

    import numpy as np

    from hwcomp.quantize import QuantConfig, quantize_passes
    from hwcomp.target import get_target

    torch.manual_seed(0)
    model = MLP(16, 32, 4).eval()
    rng = np.random.default_rng(0)
    calib = [[rng.standard_normal((2, 16)).astype(np.float32)] for _ in range(8)]
    art = hwcomp.compile(model, "host", tmp_path / "q", example_inputs=(torch.randn(2, 16),),
                         options=hwcomp.CompileOptions(passes=quantize_passes(get_target("host"), QuantConfig(),
                                                                              calib, progress=False)))
    copy = tmp_path / "q2"
    shutil.copytree(art.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["fidelity"] = {"not_measured": "artifact is built for aarch64, this machine is x86_64"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = bench(hwcomp.load(copy), BenchConfig(repeat=2, number=1))
    assert report.correctness["ok"] is None
    assert "not judged" in "\n".join(report.lines())
    assert main(["bench", str(copy), "--repeat", "2"]) == 0


def test_bundle_runner_refuses_a_bad_fidelity_in_one_line(host_artifact, tmp_path):
    """The bundle's run_model.py cannot use hwcomp's manifest checks: a non-numeric fidelity is its
    own one-line error, not a traceback."""
    import json

    bundle = make_bundle(host_artifact, tmp_path / "b.tar.gz")
    with tarfile.open(bundle) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    root = tmp_path / "x" / host_artifact.path.name
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["fidelity"] = {"max_abs_err": "abc", "min_cosine": None}
    (root / "manifest.json").write_text(json.dumps(manifest))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(root / "run_model.py"), "--repeat", "1"], check=False,
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the manifest's 'fidelity'")
