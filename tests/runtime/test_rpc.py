"""TVM RPC helpers: local server, tracker with two servers, vanished server, URLs, ELF arch check."""

from __future__ import annotations

import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hwcomp.runtime.rpc import (
    ArchMismatchError,
    DeviceURL,
    DeviceURLError,
    RPCServer,
    RPCTracker,
    check_library_arch,
    connect,
    free_port,
    group_members,
    parse_device_url,
    upload_library,
)


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def mlp_lib(tmp_path_factory):
    """A torch MLP compiled for the host and exported as a shared library, with input and expected output."""
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    ep = torch.export.export(model, (x,))
    mod = from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True)
    path = tmp_path_factory.mktemp("lib") / "mlp_x86.so"
    tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})).export_library(str(path))
    return path, x.numpy(), expected


def run_remote(remote, lib_path: Path, x: np.ndarray, arch: str = "x86_64") -> np.ndarray:
    import tvm
    from tvm import relax

    dev = remote.cpu()
    vm = relax.VirtualMachine(upload_library(remote, lib_path, arch), dev)
    return vm["main"](tvm.runtime.tensor(x, dev)).numpy()


def assert_group_gone(pgid: int) -> None:
    assert group_members(pgid) == [], f"stray processes in group {pgid}"


# ----------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url, parsed",
    [
        ("local", DeviceURL("local")),
        ("rpc://127.0.0.1:9090", DeviceURL("rpc", "127.0.0.1", 9090)),
        ("tracker://127.0.0.1:9190/rpi4", DeviceURL("tracker", "127.0.0.1", 9190, "rpi4")),
        ("rpc://[::1]:9090", DeviceURL("rpc", "::1", 9090)),
    ],
)
def test_parse_device_url(url, parsed):
    assert parse_device_url(url) == parsed
    assert str(parsed) == url


@pytest.mark.parametrize(
    "url",
    ["", "remote", "http://h:1", "rpc://h", "rpc://h:x", "rpc://h:70000", "rpc://h:1/key", "tracker://h:1",
     "tracker://h:1/", "tracker://h:1/a/b", "rpc://:1"],
)
def test_bad_device_url(url):
    with pytest.raises(DeviceURLError, match="bad device URL"):
        parse_device_url(url)


def test_connect_to_nothing_fails_fast():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="no RPC server"):
        connect(f"rpc://127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match="no RPC tracker"):
        connect(f"tracker://127.0.0.1:{port}/k")
    assert time.monotonic() - start < 5


# ----------------------------------------------------------------------------- servers


def test_local_server_runs_mlp(mlp_lib):
    path, x, expected = mlp_lib
    with RPCServer() as server:
        pgid = server.pgid
        remote = connect(server.url, session_timeout=60)
        np.testing.assert_allclose(run_remote(remote, path, x), expected, rtol=1e-5, atol=1e-6)
        del remote
    assert_group_gone(pgid)
    # the in-process "local" session runs the same library
    np.testing.assert_allclose(run_remote(connect("local"), path, x), expected, rtol=1e-5, atol=1e-6)


def test_tracker_two_servers_one_key(mlp_lib):
    path, x, expected = mlp_lib
    with RPCTracker() as tracker:
        with RPCServer(tracker=tracker.addr, key="pool") as s1, RPCServer(tracker=tracker.addr, key="pool") as s2:
            assert s1.url == tracker.url("pool")
            # Two sessions open at once: a busy server leaves the tracker's free queue, so the
            # second request must be served by the other server.
            sessions = [connect(tracker.url("pool"), session_timeout=60) for _ in range(2)]
            workpaths = [s.get_function("tvm.rpc.server.workpath")("") for s in sessions]
            owners = {next(i for i, srv in enumerate((s1, s2)) if p.startswith(str(srv.work_dir))) for p in workpaths}
            assert owners == {0, 1}, workpaths
            for remote in sessions:
                np.testing.assert_allclose(run_remote(remote, path, x), expected, rtol=1e-5, atol=1e-6)
            del sessions, remote
            pgids = [s1.pgid, s2.pgid, tracker.pgid]
    for pgid in pgids:
        assert_group_gone(pgid)


def test_vanished_server_raises_within_session_timeout(mlp_lib):
    import tvm
    from tvm import relax

    path, x, _ = mlp_lib
    timeout = 20
    server = RPCServer().start()
    pgid = server.pgid
    try:
        remote = connect(server.url, session_timeout=timeout)
        dev = remote.cpu()
        vm = relax.VirtualMachine(upload_library(remote, path, "x86_64"), dev)
        vm.set_input("main", tvm.runtime.tensor(x, dev))
        # A remote call that would run for minutes; the server disappears while it runs.
        timer = vm.time_evaluator("invoke_stateful", dev, number=10**8, repeat=1)
        outcome: dict = {}

        def call() -> None:
            try:
                timer("main")
                outcome["result"] = "returned"
            except Exception as err:  # noqa: BLE001 - checked below
                outcome["error"] = err

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        time.sleep(1.0)
        start = time.monotonic()
        server.stop()
        thread.join(timeout)
        assert not thread.is_alive(), "client hung after the server vanished"
        assert isinstance(outcome.get("error"), (RuntimeError, OSError)), outcome
        assert time.monotonic() - start < timeout
        with pytest.raises((RuntimeError, OSError)):  # the dead session keeps failing, without hanging
            remote.cpu().sync()
    finally:
        server.stop()
    assert_group_gone(pgid)


def test_server_stopped_on_exception():
    with pytest.raises(KeyError):
        with RPCServer() as server:
            pgid = server.pgid
            assert group_members(pgid)
            raise KeyError("boom")
    assert_group_gone(pgid)


def test_server_start_failures_are_clear():
    with pytest.raises(RuntimeError, match="exited before it was ready"):
        RPCServer(command=[sys.executable, "-c", "raise SystemExit(3)"]).start(attempts=1)
    hung = RPCServer(command=[sys.executable, "-c", "import time; time.sleep(60)"], startup_timeout=1)
    with pytest.raises(TimeoutError, match="not ready after"):
        hung.start()
    assert hung.proc is None and hung.work_dir is None


# ----------------------------------------------------------------------------- ELF check


def fake_elf(path: Path, machine: int) -> Path:
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HH", 3, machine)
    path.write_bytes(header + bytes(44))
    return path


def test_check_library_arch(mlp_lib, tmp_path):
    path, _, _ = mlp_lib
    assert check_library_arch(path) == "x86_64"
    assert check_library_arch(path, "amd64") == "x86_64"
    with pytest.raises(ArchMismatchError, match="built for x86_64, but the device is aarch64"):
        check_library_arch(path, "aarch64")
    arm = fake_elf(tmp_path / "arm.so", 183)
    assert check_library_arch(arm, "arm64") == "aarch64"
    with pytest.raises(ArchMismatchError, match="built for aarch64, but the device is x86_64"):
        check_library_arch(arm, "x86_64")
    (tmp_path / "lib.tar").write_bytes(b"not elf" * 10)
    with pytest.raises(ValueError, match="not an ELF"):
        check_library_arch(tmp_path / "lib.tar")
