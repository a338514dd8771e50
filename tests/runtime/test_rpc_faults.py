"""RPC faults: a silent server or tracker, a frozen (SIGSTOP) or killed (SIGKILL) server, malformed URLs.

Each fault must be a one-line HwcompError within the session timeout (plus slack), never a hang.
Real TVM, loopback only; every server, thread and process started here is stopped here.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch

import hwcomp
from hwcomp.cli import main
from hwcomp.errors import HwcompError
from hwcomp.models import MLP
from hwcomp.runtime.rpc import DeviceURLError, RPCServer, group_members, parse_device_url
from hwcomp.runtime.session import BenchConfig, DeviceModel, bench

TIMEOUT = 4.0  # session timeout for the silent peers
SLACK = 4.0  # what the error may take past the deadline on a loaded 2-core machine
RPC_MAGIC = 0xFF271  # tvm.rpc.base: RPC_MAGIC (also the server's success code), RPC_TRACKER_MAGIC
TRACKER_MAGIC = 0x2F271


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory):
    torch.manual_seed(0)
    model = MLP(16, 32, 4).eval()
    return hwcomp.compile(model, "host", tmp_path_factory.mktemp("a") / "mlp", example_inputs=(torch.randn(2, 16),))


@pytest.fixture(autouse=True)
def no_watchdog_left():
    """Every session deadline's watchdog thread ends with its session."""
    yield
    gc.collect()
    deadline = time.monotonic() + 2
    while any(t.name.startswith("hwcomp-deadline") for t in threading.enumerate()):
        assert time.monotonic() < deadline, [t.name for t in threading.enumerate()]
        time.sleep(0.05)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


@contextlib.contextmanager
def fake_peer(handler: Callable[[socket.socket], None] | None = None) -> Iterator[int]:
    """A loopback listener that runs ``handler`` on each connection (None: answer nothing) and then
    holds it open, silent. Yields the port; on exit closes every socket and joins its threads."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)  # accept() polls so the loop sees `stop`
    stop = threading.Event()
    conns: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            handler(conn)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            if handler is not None:
                threads.append(threading.Thread(target=serve, args=(conn,), daemon=True))
                threads[-1].start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv
            conn.close()
        for t in threads:
            t.join(5)
        assert not acceptor.is_alive() and not any(t.is_alive() for t in threads)


def rpc_handshake(conn: socket.socket) -> None:
    """Answer TVM's RPC handshake (magic, key) like a server, then fall silent."""
    _recv_exact(conn, 4)
    (keylen,) = struct.unpack("<i", _recv_exact(conn, 4))
    _recv_exact(conn, keylen)
    key = b"server:fake"
    conn.sendall(struct.pack("<ii", RPC_MAGIC, len(key)) + key)


def tracker_handshake(conn: socket.socket) -> None:
    _recv_exact(conn, 4)
    conn.sendall(struct.pack("<i", TRACKER_MAGIC))


def tracker_to(port: int) -> Callable[[socket.socket], None]:
    """A tracker that lists key 'k' and hands out the server at 127.0.0.1:``port``."""
    import json

    def handle(conn: socket.socket) -> None:
        tracker_handshake(conn)
        while True:
            (size,) = struct.unpack("<i", _recv_exact(conn, 4))
            request = json.loads(_recv_exact(conn, size))
            if request[0] == 6:  # TrackerCode.SUMMARY (4: REQUEST)
                value = [0, {"queue_info": {"k": {"free": 1, "pending": 0}}, "server_info": []}]
            else:  # TrackerCode.REQUEST
                value = [0, ["127.0.0.1", port, "client:k"]]
            data = json.dumps(value).encode()
            conn.sendall(struct.pack("<i", len(data)) + data)

    return handle


def timed_error(fn: Callable[[], object]) -> tuple[str, float]:
    """Run ``fn``; return the HwcompError's message and the seconds it took to come."""
    start = time.monotonic()
    with pytest.raises(HwcompError) as info:
        fn()
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "\n" not in message, message
    print(f"{elapsed:.2f} s: {message}")
    return message, elapsed


def bench_call(art, url: str, timeout: float = TIMEOUT) -> Callable[[], object]:
    return lambda: bench(art, BenchConfig(device=url, repeat=3, session_timeout=timeout))


# ----------------------------------------------------------------------------- silent peers


@pytest.mark.parametrize("handler", [None, rpc_handshake], ids=["silent", "handshake-then-silent"])
def test_silent_server(host_artifact, handler):
    with fake_peer(handler) as port:
        message, elapsed = timed_error(bench_call(host_artifact, f"rpc://127.0.0.1:{port}"))
    assert f"device rpc://127.0.0.1:{port} did not answer within {TIMEOUT:g} s" in message
    assert TIMEOUT - 0.5 < elapsed < TIMEOUT + SLACK


@pytest.mark.parametrize("mode", ["silent", "handshake-then-silent", "hands-out-silent-server"])
def test_silent_tracker(host_artifact, mode):
    with contextlib.ExitStack() as stack:
        if mode == "hands-out-silent-server":
            handler = tracker_to(stack.enter_context(fake_peer(rpc_handshake)))
        else:
            handler = None if mode == "silent" else tracker_handshake
        port = stack.enter_context(fake_peer(handler))
        message, elapsed = timed_error(bench_call(host_artifact, f"tracker://127.0.0.1:{port}/k"))
    assert f"device tracker://127.0.0.1:{port}/k did not answer within {TIMEOUT:g} s" in message
    assert TIMEOUT - 0.5 < elapsed < TIMEOUT + SLACK


def test_cli_silent_server_is_one_line(host_artifact, capsys):
    with fake_peer() as port:
        start = time.monotonic()
        code = main(["bench", str(host_artifact.path), "--device", f"rpc://127.0.0.1:{port}",
                     "--session-timeout", f"{TIMEOUT:g}"])
        elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("hwcomp: error: device rpc://"), err
    assert "did not answer" in err[0] and elapsed < TIMEOUT + SLACK


# ----------------------------------------------------------------------------- a real server that fails


@contextlib.contextmanager
def real_server() -> Iterator[RPCServer]:
    server = RPCServer().start()
    pgid = server.pgid
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGCONT)  # a stopped process ignores SIGTERM until continued
        server.stop()
        assert group_members(pgid) == []


def measure_with_fault(art, server: RPCServer, sig: int, session_timeout: float) -> tuple[str, float, float]:
    """Load ``art`` on ``server``, send ``sig`` to its group 1 s into a measurement that would run for
    minutes; return the error, seconds from connect to error and from the signal to error."""
    start = time.monotonic()
    dm = DeviceModel(art, server.url, session_timeout=session_timeout)
    inputs = art.sample_inputs()
    dm.time(inputs, number=1, repeat=1)  # the model runs there
    sent: list[float] = []

    def fault() -> None:
        sent.append(time.monotonic())
        os.killpg(server.pgid, sig)

    timer = threading.Timer(1.0, fault)
    timer.start()
    try:
        message, _ = timed_error(lambda: dm.time(inputs, number=100, repeat=10**6))
    finally:
        timer.cancel()
        timer.join()
    end = time.monotonic()
    assert sent, "the measurement ended before the fault"
    del dm
    gc.collect()  # closing the dead session must neither hang nor crash
    return message, end - start, end - sent[0]


def test_frozen_server_mid_measurement(host_artifact):
    timeout = 8.0
    with real_server() as server:
        message, since_connect, since_stop = measure_with_fault(host_artifact, server, signal.SIGSTOP, timeout)
    assert f"did not answer within {timeout:g} s (frozen or unreachable)" in message
    assert since_connect < timeout + SLACK, since_connect
    print(f"frozen: error {since_connect:.2f} s after connect, {since_stop:.2f} s after SIGSTOP")


def test_killed_server_mid_measurement(host_artifact):
    timeout = 60.0  # the error must come from the dead connection, long before the deadline
    with real_server() as server:
        message, since_connect, since_kill = measure_with_fault(host_artifact, server, signal.SIGKILL, timeout)
    assert "disappeared" in message and since_kill < SLACK, (message, since_kill)
    print(f"killed: error {since_kill:.2f} s after SIGKILL")


# ----------------------------------------------------------------------------- malformed URLs


@pytest.mark.parametrize(
    "url",
    ["rpc://[::1:9090", "tracker://[::1:9190/k", "rpc://::1:9090", "rpc://[zz]:1", "rpc://h h:1",
     "rpc://h:-1", "rpc://h:0", "rpc://user@h:1", "rpc://h:1?x=1", "tracker://h:1/a b", "rpc//h:1"],
)
def test_malformed_device_url(url):
    with pytest.raises(DeviceURLError, match="bad device URL") as info:
        parse_device_url(url)
    assert "\n" not in str(info.value)


def test_malformed_device_url_cli_one_line(host_artifact, capsys):
    assert main(["bench", str(host_artifact.path), "--device", "rpc://[::1:9090"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hwcomp: error: bad device URL 'rpc://[::1:9090': Invalid IPv6 URL; "
                   "use 'local', 'rpc://HOST:PORT' or 'tracker://HOST:PORT/KEY'"]
