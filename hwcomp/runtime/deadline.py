"""Client-side deadlines for TVM RPC sessions and a tracker client that honours them.

TVM's RPC client blocks in C++ ``recv`` with no timeout, and ``session_timeout`` is enforced only by
the server, which a silent or frozen (SIGSTOP) server never does: a watchdog shuts the session's
socket down at the deadline, which wakes the blocked call.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterator

from ..errors import HwcompError


class SessionTimeoutError(HwcompError, TimeoutError):
    """A remote device (server or tracker) that did not answer within the session timeout."""


def _socket_inodes() -> dict[int, int]:
    """This process's open sockets: ``{inode: fd}`` (from /proc/self/fd)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            out[int(link[8:-1])] = int(fd)
    return out


@contextlib.contextmanager
def _dup_socket(fd: int, inode: int) -> Iterator[socket.socket | None]:
    """A socket object on a duplicate of ``fd`` if it is still the socket ``inode`` (else None).

    Closing the duplicate leaves the owner's descriptor open; shutting it down shuts the connection.
    """
    try:
        dup = os.dup(fd)
    except OSError:
        yield None
        return
    try:
        sock = socket.socket(fileno=dup) if os.fstat(dup).st_ino == inode else None
    except (OSError, ValueError):  # gone, or a socket family Python does not know
        sock = None
    if sock is None:
        os.close(dup)
        yield None
        return
    with sock:
        yield sock


def _bare_ip(ip: str) -> str:
    ip = ip.split("%", 1)[0]
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip  # IPv4-mapped IPv6


class SessionDeadline:
    """A client-side deadline of ``timeout`` seconds on a whole remote TVM session (from its connect).

    TVM's RPC client is C++ and blocks in ``recv`` without a timeout; the ``-timeout`` it sends is
    enforced by the *server*, which a frozen (SIGSTOP) or silent server never does, and the kernel
    of a frozen host still ACKs, so TCP keep-alive never fires either. So a watchdog thread, at the
    deadline, shuts down (``SHUT_RDWR`` on a dup of the fd) the session's TCP socket, found in
    /proc/self/fd: the blocked ``recv``/``send`` returns at once, TVM raises, and
    :attr:`expired` tells the caller why. This needs no change to TVM and keeps the session
    in-process (a child process per session would have to ship every tensor and result across).
    The socket is the one to ``(host, port)`` that appeared during :meth:`connect` (pinned once
    connected), so other sessions of the process are left alone. The thread stops when the session
    object is collected or :meth:`stop` is called. The whole session must fit in ``timeout``,
    measurements included: the same budget the server gets.
    """

    def __init__(self, timeout: float, what: str) -> None:
        self.timeout, self.what = float(timeout), what  # what: "device rpc://H:P", for messages
        self.end = time.monotonic() + self.timeout
        self.expired = False
        self._stop = threading.Event()
        self._peer: tuple[set[str], int] | None = None
        self._before: set[int] = set()
        self._pinned: set[int] | None = None

    def remaining(self) -> float:
        """Seconds left (negative once past)."""
        return self.end - time.monotonic()

    def error(self, detail: str = "") -> SessionTimeoutError:
        """The one-line error for a device that did not answer in time."""
        detail = f"; {detail}" if detail else ""
        return SessionTimeoutError(f"{self.what} did not answer within {self.timeout:g} s "
                                   f"(frozen or unreachable){detail}")

    def watch(self, host: str, port: int) -> None:
        """Start the watchdog for the TCP connection about to be opened to ``host:port``."""
        try:
            ips = {_bare_ip(ai[4][0]) for ai in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
        except OSError:
            ips = set()  # match on the port alone
        self._peer = (ips, port)
        self._before = set(_socket_inodes())
        threading.Thread(target=self._run, name=f"hwcomp-deadline {self.what}", daemon=True).start()

    def pin(self, session) -> None:
        """The connection is open: watch only its socket, and stop the watchdog with ``session``."""
        self._pinned = set(self._new_sockets())
        weakref.finalize(session, self._stop.set)

    def stop(self) -> None:
        """Stop the watchdog (the session is over)."""
        self._stop.set()

    def _new_sockets(self) -> Iterator[int]:
        """Inodes of sockets to the peer opened since :meth:`watch`."""
        ips, port = self._peer
        for inode, fd in _socket_inodes().items():
            if inode in self._before:
                continue
            with _dup_socket(fd, inode) as sock:
                try:
                    peer = sock.getpeername() if sock is not None and sock.family in (
                        socket.AF_INET, socket.AF_INET6) else None
                except OSError:  # not connected
                    peer = None
            if peer and peer[1] == port and (not ips or _bare_ip(peer[0]) in ips):
                yield inode

    def _shutdown(self) -> None:
        targets = self._pinned if self._pinned is not None else set(self._new_sockets())
        for inode, fd in _socket_inodes().items():
            if inode in targets:
                with _dup_socket(fd, inode) as sock:
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        if self._stop.wait(max(self.remaining(), 0)):
            return
        self.expired = True
        # While still connecting, keep shutting down whatever socket the connect opens until it fails.
        while True:
            self._shutdown()
            if self._pinned is not None or self._stop.wait(0.2):
                return


def session_deadline(session) -> SessionDeadline | None:
    """The :class:`SessionDeadline` of a session from :func:`connect` (None for local / none set)."""
    return getattr(session, "_hwcomp_deadline", None)


class _TrackerClient:
    """TVM's tracker protocol (``tvm.rpc.base`` helpers) on a Python socket with a deadline.

    ``tvm.rpc.connect_tracker`` has no timeout (a silent tracker hangs it) and retries refused
    connections for 60 s; here every step is bounded by ``deadline``.
    """

    def __init__(self, host: str, port: int, deadline: SessionDeadline) -> None:
        from tvm.rpc import base

        self.base, self.addr, self.deadline = base, f"{host}:{port}", deadline
        self.sock: socket.socket | None = None
        with self._step("connect"):
            self.sock = socket.create_connection((host, port), timeout=self._left("connect"))
        try:
            with self._step("handshake"):
                self.sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
                (magic,) = struct.unpack("<i", base.recvall(self.sock, 4))
            if magic != base.RPC_TRACKER_MAGIC:
                raise ConnectionError(f"{self.addr} is not an RPC tracker")
        except BaseException:
            self.close()
            raise

    def _left(self, step: str) -> float | None:
        left = self.deadline.remaining()
        if left <= 0:
            raise self.deadline.error(f"tracker {self.addr}: {step}")
        return None if left == float("inf") else left

    @contextlib.contextmanager
    def _step(self, step: str) -> Iterator[None]:
        if self.sock is not None:
            self.sock.settimeout(self._left(step))
        try:
            yield
        except TimeoutError:
            raise self.deadline.error(f"tracker {self.addr}: no answer to {step}") from None

    def call(self, request: list, step: str):
        """Send one request, return the tracker's answer (its ``value[1]``)."""
        with self._step(step):
            self.base.sendjson(self.sock, request)
            value = self.base.recvjson(self.sock)
        if value[0] != self.base.TrackerCode.SUCCESS:
            raise ConnectionError(f"tracker {self.addr} refused {step}: {value}")
        return value[1]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
