"""Thin helpers around TVM's own RPC tracker and server (no protocol of our own).

* :class:`RPCTracker` / :class:`RPCServer` start ``python -m tvm.exec.rpc_tracker`` /
  ``python -m tvm.exec.rpc_server`` as subprocesses on 127.0.0.1, each in its own process group,
  wait until they are ready, and always stop the whole group (context managers, also on errors).
* :func:`connect` turns a device URL (``local``, ``rpc://HOST:PORT``, ``tracker://HOST:PORT/KEY``)
  into a TVM RPC session, with a client-side deadline (:class:`SessionDeadline`) on the whole session
  so a silent, frozen or vanished device is an error, never a hang.
* :func:`check_library_arch` reads the ELF header of an exported library so a wrong-architecture
  library is refused before it is uploaded (:func:`upload_library`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ArchMismatchError",
    "LOCALHOST",
    "DeviceURL",
    "DeviceURLError",
    "GroupProcess",
    "RPCServer",
    "RPCTracker",
    "SessionDeadline",
    "SessionTimeoutError",
    "check_library_arch",
    "connect",
    "free_port",
    "group_members",
    "parse_device_url",
    "probe_rpc_server",
    "server_ready",
    "session_deadline",
    "spawn_group",
    "stop_process_group",
    "tracker_servers",
    "upload_library",
    "wait_until",
]

from .deadline import (
    SessionDeadline,
    SessionTimeoutError,
    _TrackerClient,
    session_deadline,
)
from .device_url import LOCALHOST, DeviceURL, DeviceURLError, _check_reachable, parse_device_url
from .elf import elf_arch, normalize_arch
from .processes import (
    GroupProcess,
    RPCServer,
    RPCTracker,
    free_port,
    group_members,
    probe_rpc_server,
    server_ready,
    spawn_group,
    stop_process_group,
    tracker_servers,
    wait_until,
)


def connect(device_url: str, session_timeout: float = 0):
    """Open a TVM session for ``device_url``.

    ``session_timeout`` (seconds, 0 = none) bounds the whole session on both sides: the server ends
    it, and a client-side :class:`SessionDeadline` turns a device that does not answer in time
    (silent, frozen, unreachable) into :class:`SessionTimeoutError` — for the connect here and every
    later call on the session (check :func:`session_deadline` ``.expired`` when a call fails).
    Returns a ``tvm.rpc.RPCSession`` (a ``LocalSession`` for ``local``).
    """
    from tvm import rpc  # deferred: keep URL parsing importable without loading TVM

    url = parse_device_url(device_url)
    if url.kind == "local":
        return rpc.LocalSession()
    deadline = SessionDeadline(session_timeout if session_timeout > 0 else float("inf"), f"device {url}")
    probe_s = min(5.0, deadline.remaining())
    host, port, key = url.host, url.port, ""
    if url.kind == "tracker":
        _check_reachable(url.host, url.port, "RPC tracker", probe_s)
        tracker = _TrackerClient(url.host, url.port, deadline)
        try:
            # A request for a key nobody serves would wait forever: refuse it up front.
            known = tracker.call([tracker.base.TrackerCode.SUMMARY], "summary")["queue_info"]
            if url.key not in known:
                raise ConnectionError(f"tracker {url.host}:{url.port} has no server with key {url.key!r}"
                                      f" (known keys: {sorted(known) or 'none'})")
            # Waits while every server of the key is busy: bounded by the deadline too.
            host, port, key = tracker.call([tracker.base.TrackerCode.REQUEST, url.key, "", 1],
                                           f"request for a {url.key!r} server (all busy?)")
        finally:
            tracker.close()
    else:  # (not a server the tracker chose: a probe ends its wait for our key, it re-registers)
        _check_reachable(host, port, "RPC server", probe_s)
    if session_timeout <= 0:
        return rpc.connect(host, port, key)
    deadline.watch(host, port)
    try:
        session = rpc.connect(host, port, key, session_timeout=session_timeout)
    except Exception as err:
        deadline.stop()
        if deadline.expired:
            raise deadline.error(f"handshake with {host}:{port}") from None
        raise ConnectionError(f"RPC handshake with {host}:{port} failed: "
                              f"{str(err).strip().splitlines()[-1]}") from None
    deadline.pin(session)
    session._hwcomp_deadline = deadline
    return session


# ----------------------------------------------------------------------------- library architecture

class ArchMismatchError(ValueError):
    """A library built for another CPU architecture than the device's."""


def check_library_arch(path: str | os.PathLike, expected: str | None = None) -> str:
    """Return the CPU architecture of an ELF shared library (from ``e_machine``).

    With ``expected`` ("aarch64", "x86_64", aliases arm64/amd64), raise :class:`ArchMismatchError`
    naming both architectures when they differ. Raises ValueError for a file that is not ELF.
    """
    path = Path(path)
    arch = elf_arch(path, check_extent=False)
    if expected is not None:
        want = normalize_arch(expected)
        if arch != want:
            raise ArchMismatchError(
                f"{path.name} is built for {arch}, but the device is {want}: "
                f"cross-compile for {want} (refused before upload)"
            )
    return arch


def upload_library(session, path: str | os.PathLike, expected_arch: str | None = None):
    """Check the library's architecture (when given), upload it and load it on the remote side.

    The remote file is named after the library's content: every artifact's library is called
    ``model.so``, and overwriting a library the server has already loaded crashes it (it is mapped
    into the server process), so two artifacts in one session need two names."""
    import hashlib

    path = Path(path)
    if expected_arch is not None:
        check_library_arch(path, expected_arch)
    remote = f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}{path.suffix}"
    session.upload(str(path), remote)
    return session.load_module(remote)
