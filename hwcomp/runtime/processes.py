"""TVM's RPC tracker and server as managed subprocesses (each its own process group, always stopped)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .deadline import SessionDeadline, _TrackerClient
from .device_url import LOCALHOST, DeviceURL, _check_reachable


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that is free right now on ``host`` (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the ")" that ends the command name: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def stop_process_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``timeout``; return when it is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_members(pgid):
                return
            time.sleep(0.05)
    left = group_members(pgid)
    if left:
        raise RuntimeError(f"process group {pgid} survived SIGKILL: pids {left}")


def wait_until(
    ready: Callable[[], bool], timeout: float, what: str, alive: Callable[[], bool] | None = None,
    log: Path | None = None, period: float = 0.1,
) -> None:
    """Poll ``ready()`` until it is true; raise TimeoutError (or RuntimeError if ``alive()`` turns false)."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if alive is not None and not alive():
            raise RuntimeError(f"{what} exited before it was ready{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s{_log_tail(log)}")
        time.sleep(period)


def _log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"; last log lines ({log}):\n" + "\n".join(tail)


@dataclass
class GroupProcess:
    """A subprocess that leads its own process group, so stopping it stops all its children."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_group(self.popen.pid, timeout)
        self.popen.wait()  # reap the leader


def spawn_group(name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> GroupProcess:
    """Start ``argv`` in a new session/process group with stdout+stderr appended to ``log_path``."""
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
    return GroupProcess(name, popen, log_path)


def probe_rpc_server(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when a TVM RPC server accepts connections at host:port.

    Sends 4 bytes that are not the RPC magic: TVM's server closes such a connection and keeps
    listening, so the probe neither opens a session nor disturbs a tracker registration.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack("<i", 0))
        return True
    except OSError:
        return False


def tracker_servers(host: str, port: int, timeout: float = 10.0) -> list[dict]:
    """The tracker's ``server_info`` list (each: ``{"key": "server:KEY", "addr": [host, port]}``);
    :class:`SessionTimeoutError` when the tracker does not answer within ``timeout`` seconds."""
    _check_reachable(host, port, "RPC tracker", min(5.0, timeout))
    tracker = _TrackerClient(host, port, SessionDeadline(timeout, f"RPC tracker {host}:{port}"))
    try:
        return list(tracker.call([tracker.base.TrackerCode.SUMMARY], "summary")["server_info"])
    finally:
        tracker.close()


def server_ready(host: str, port: int, tracker: tuple[str, int] | None = None, key: str = "") -> bool:
    """True when the RPC server at host:port accepts connections and, with a tracker, is listed there under key."""
    if not probe_rpc_server(host, port):
        return False
    if tracker is None:
        return True
    try:
        servers = tracker_servers(*tracker)
    except (OSError, RuntimeError):
        return False
    return any(s.get("key") == f"server:{key}" and int(s["addr"][1]) == port for s in servers)


class _Managed:
    """Shared start/stop/context-manager logic for the tracker and the server."""

    name = "process"
    startup_timeout: float
    host: str
    requested_port: int  # 0: pick a free one at each start
    port: int  # the port in use after start()

    def __init__(self, lean: bool = True) -> None:
        self.lean = lean
        self.proc: GroupProcess | None = None
        self.work_dir: Path | None = None

    def _argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The server creates each session's work dir with tempfile: keep uploads in our own dir.
        env["TMPDIR"] = str(self.work_dir)
        if self.lean:
            # Tracker and server need only TVM's runtime library, and never torch, which tvm_ffi
            # imports eagerly when installed: both cut start-up from ~6 s to ~1 s per process
            # (the server starts two: itself and its PopenWorker).
            stub = self.work_dir / "no-torch" / "torch"
            stub.mkdir(parents=True, exist_ok=True)
            (stub / "__init__.py").write_text('raise ImportError("torch is hidden from this TVM RPC process")\n')
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub.parent), env.get("PYTHONPATH")]))
            env["TVM_USE_RUNTIME_LIB"] = "1"
        return env

    def start(self, attempts: int = 3) -> _Managed:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"hwcomp-{self.name.replace(' ', '-')}-"))
        fixed_port = self.requested_port
        try:
            for attempt in range(attempts):
                # free_port() can race with another process: on a failed start, try a new port.
                self.port = fixed_port or free_port(self.host)
                self.proc = spawn_group(self.name, self._argv(self.port), self.work_dir / "log.txt", self._env())
                try:
                    wait_until(self._ready, self.startup_timeout, f"{self.name} on {self.host}:{self.port}",
                               alive=self.proc.alive, log=self.proc.log_path)
                    return self
                except RuntimeError:
                    self.proc.stop()
                    self.proc = None
                    if fixed_port or attempt == attempts - 1:
                        raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the whole process group and remove the work dir. Safe to call twice."""
        try:
            if self.proc is not None:
                self.proc.stop()
        finally:
            self.proc = None
            if self.work_dir is not None:
                shutil.rmtree(self.work_dir, ignore_errors=True)
                self.work_dir = None

    @property
    def pgid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


class RPCTracker(_Managed):
    """``python -m tvm.exec.rpc_tracker`` on 127.0.0.1 (``port=0``: a free one); ready once it answers a summary.

    ``lean`` (default) runs it with TVM's runtime library only and without torch (faster start-up).
    """

    name = "rpc tracker"

    def __init__(self, host: str = LOCALHOST, port: int = 0, startup_timeout: float = 60.0, lean: bool = True) -> None:
        super().__init__(lean)
        self.host, self.requested_port, self.port, self.startup_timeout = host, port, port, startup_timeout

    def _argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", self.host,
                "--port", str(port), "--port-end", str(port + 1)]

    def _ready(self) -> bool:
        try:
            tracker_servers(self.host, self.port)  # full handshake + summary round trip
            return True
        except (OSError, RuntimeError):
            return False

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def url(self, key: str) -> str:
        """Device URL for sessions on servers registered under ``key``."""
        return str(DeviceURL("tracker", self.host, self.port, key))


class RPCServer(_Managed):
    """``python -m tvm.exec.rpc_server`` on a free port of 127.0.0.1, optionally registered with a tracker.

    With a tracker it is ready once the tracker lists it under ``key``; sessions then come from
    ``tracker://HOST:PORT/KEY`` (the server only accepts the tracker's match keys). Without one, it is
    ready once it accepts connections; use :attr:`url`. ``command`` replaces ``[sys.executable]``,
    ``env`` adds environment variables. ``lean`` (default): runtime library only, no torch — enough
    to load and run exported libraries. Uploads land in :attr:`work_dir`, removed by :meth:`stop`.
    """

    name = "rpc server"

    def __init__(
        self, host: str = LOCALHOST, port: int = 0, tracker: tuple[str, int] | None = None, key: str = "",
        startup_timeout: float = 60.0, command: Sequence[str] | None = None, env: dict[str, str] | None = None,
        lean: bool = True,
    ) -> None:
        super().__init__(lean)
        if tracker is not None and not key:
            raise ValueError("a server registered with a tracker needs a key")
        self.host, self.requested_port, self.port, self.tracker, self.key = host, port, port, tracker, key
        self.startup_timeout = startup_timeout
        self.command = list(command) if command else [sys.executable]
        self.extra_env = dict(env or {})

    def _argv(self, port: int) -> list[str]:
        argv = [*self.command, "-m", "tvm.exec.rpc_server", "--host", self.host,
                "--port", str(port), "--port-end", str(port + 1)]
        if self.tracker is not None:
            argv += ["--tracker", f"{self.tracker[0]}:{self.tracker[1]}", "--key", self.key]
        return argv

    def _env(self) -> dict[str, str]:
        return {**super()._env(), **self.extra_env}

    def _ready(self) -> bool:
        return server_ready(self.host, self.port, self.tracker, self.key)

    @property
    def url(self) -> str:
        """Device URL of this server (the tracker URL when registered with one)."""
        if self.tracker is not None:
            return str(DeviceURL("tracker", self.tracker[0], self.tracker[1], self.key))
        return str(DeviceURL("rpc", self.host, self.port))
