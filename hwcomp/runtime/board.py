"""An emulated aarch64 board on this x86 machine: TVM's RPC server in an arm64 chroot under qemu-user.

It stands in for a Raspberry Pi / Jetson CPU so the cross-compile → upload → run flow can be tested
here. Timings measured on it are emulated (qemu-user) and say nothing about real board speed.

Steps of :func:`board_up`, each skipped when already done (see shared/ARM_BOARD_NOTES.md):
apt packages → binfmt_misc + qemu-aarch64 → arm64 rootfs (mmdebstrap, host's Debian mirror) →
aarch64 wheels (cached) → ``ROOTFS/opt/tvm-site`` (runtime only) → proc mount → RPC server.
The server's pid and port live in ``ROOT/board.json`` so another process can stop it (:func:`board_down`).
The setup steps themselves are in :mod:`hwcomp.runtime.board_rootfs`.

CLI: ``python -m hwcomp.runtime.board up|down|status [--key KEY] [--tracker HOST:PORT]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from hwcomp.runtime.board_rootfs import (
    SITE,
    BoardError,
    BoardPaths,
    LogFn,
    build_rootfs,
    download_wheels,
    enable_qemu_binfmt,
    install_packages,
    install_site,
    missing_packages,
    mount_binfmt,
    mount_proc,
    umount_proc,
)
from hwcomp.runtime.rpc import (
    LOCALHOST,
    DeviceURL,
    connect,
    free_port,
    group_members,
    probe_rpc_server,
    server_ready,
    spawn_group,
    stop_process_group,
    wait_until,
)

__all__ = ["BoardError", "BoardHandle", "board_available", "board_down", "board_status", "board_up", "main"]

DEFAULT_ROOT = ".board/aarch64"
ARCH = "aarch64"
@dataclass
class BoardHandle:
    """A running board server: where to reach it and which process group to stop."""

    root_dir: str
    pid: int  # leader of the server's process group (the chrooted python under qemu)
    host: str
    port: int
    key: str
    tracker: tuple[str, int] | None = None
    arch: str = ARCH
    reused: bool = False  # True when board_up found it already running

    @property
    def url(self) -> str:
        """Device URL for :func:`hwcomp.runtime.rpc.connect` (via the tracker when registered)."""
        if self.tracker is not None:
            return str(DeviceURL("tracker", self.tracker[0], self.tracker[1], self.key))
        return str(DeviceURL("rpc", self.host, self.port))

    def connect(self, session_timeout: float = 0):
        """A TVM RPC session on the board."""
        return connect(self.url, session_timeout)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("reused")
        return data

    @classmethod
    def from_json(cls, data: dict) -> BoardHandle:
        tracker = tuple(data["tracker"]) if data.get("tracker") else None
        return cls(**{**data, "tracker": tracker})


# ----------------------------------------------------------------------------- availability


def board_available() -> tuple[bool, str]:
    """Whether this machine can run the emulated board, and why not.

    Checks Linux x86_64, root, apt (unless the packages are already there) and that binfmt_misc
    is mounted or can be mounted (it mounts it: the board needs it anyway).
    """
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False, f"the emulated aarch64 board needs Linux on x86_64 (this is {sys.platform} {platform.machine()})"
    if os.geteuid() != 0:
        return False, "the emulated aarch64 board needs root (apt-get, mount, chroot)"
    if not shutil.which("chroot"):
        return False, "no chroot command"
    missing = missing_packages()
    if missing and not shutil.which("apt-get"):
        return False, f"apt packages missing ({', '.join(missing)}) and no apt-get to install them"
    try:
        mount_binfmt()
    except BoardError as err:
        return False, str(err)
    return True, "ok"


# ----------------------------------------------------------------------------- server


def _server_alive(handle: BoardHandle) -> bool:
    try:
        cmdline = Path(f"/proc/{handle.pid}/cmdline").read_bytes()
    except OSError:
        return False
    # pids get reused: only trust a live group led by our RPC server
    return b"tvm.exec.rpc_server" in cmdline and bool(group_members(handle.pid))


def _stop_server(handle: BoardHandle) -> None:
    if _server_alive(handle):
        stop_process_group(handle.pid)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(handle.pid, os.WNOHANG)  # reap it when this process started it


def _start_server(paths: BoardPaths, key: str, tracker: tuple[str, int] | None, port: int | None,
                  timeout: float, log: LogFn) -> BoardHandle:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": SITE,
           "TVM_USE_RUNTIME_LIB": "1", "TMPDIR": "/tmp"}
    for attempt in range(3):
        chosen = port or free_port(LOCALHOST)
        argv = [shutil.which("chroot") or "/usr/sbin/chroot", str(paths.rootfs), "/usr/bin/python3",
                "-m", "tvm.exec.rpc_server", "--host", LOCALHOST, "--port", str(chosen), "--port-end", str(chosen + 1)]
        if tracker is not None:
            argv += ["--tracker", f"{tracker[0]}:{tracker[1]}", "--key", key]
        log(f"starting the board's RPC server on {LOCALHOST}:{chosen} (emulated, takes a few seconds)")
        proc = spawn_group("board rpc server", argv, paths.server_log, env)
        handle = BoardHandle(str(paths.root), proc.pid, LOCALHOST, chosen, key, tracker)
        try:
            wait_until(functools.partial(server_ready, LOCALHOST, chosen, tracker, key), timeout,
                       f"board RPC server on {LOCALHOST}:{chosen}", alive=proc.alive, log=paths.server_log, period=0.25)
            return handle
        except RuntimeError:
            proc.stop()
            if port or attempt == 2:  # a fixed port cannot be retried; a free one may have been raced
                raise
        except BaseException:
            proc.stop()
            raise
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- public API


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    # Two processes bringing the same board up (or down) at once would race on the rootfs and state.
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_state(paths: BoardPaths) -> BoardHandle | None:
    try:
        return BoardHandle.from_json(json.loads(paths.state.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def board_status(root_dir: str | os.PathLike = DEFAULT_ROOT) -> BoardHandle | None:
    """The running board recorded under ``root_dir``, or None when it is not up."""
    handle = _read_state(BoardPaths(Path(root_dir).resolve()))
    if handle is None or not _server_alive(handle) or not probe_rpc_server(handle.host, handle.port):
        return None
    return handle


def board_up(
    root_dir: str | os.PathLike = DEFAULT_ROOT,
    tracker: tuple[str, int] | None = None,
    key: str = "rpi4",
    port: int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    startup_timeout: float = 180.0,
    log: LogFn | None = None,
) -> BoardHandle:
    """Bring the emulated aarch64 board up (each setup step skipped when already done) and return it.

    A board already running with the same tracker/key (and port, when given) is reused; one running
    with other settings is restarted. ``cache_dir`` holds the aarch64 wheels (default ``ROOT/wheels``).
    Progress lines go to ``log`` (default: print to stderr); tool output goes to ``ROOT/setup.log``.
    """
    start = time.monotonic()
    emit = log or (lambda msg: print(f"[board] {msg}", file=sys.stderr, flush=True))
    log = lambda msg: emit(f"+{time.monotonic() - start:.1f}s {msg}")  # noqa: E731 - timestamps the slow steps
    paths = BoardPaths(Path(root_dir).resolve())
    tracker = (tracker[0], int(tracker[1])) if tracker else None
    with _locked(paths.root):
        old = _read_state(paths)
        if old is not None and _server_alive(old) and probe_rpc_server(old.host, old.port):
            if old.tracker == tracker and old.key == key and port in (None, old.port):
                old.reused = True
                return old
            log(f"restarting the board server (was key={old.key} tracker={old.tracker})")
        if old is not None:
            _stop_server(old)
            paths.state.unlink(missing_ok=True)
        if sys.platform != "linux" or os.geteuid() != 0:
            raise BoardError(board_available()[1])
        install_packages(paths, log)
        enable_qemu_binfmt(paths, log)
        build_rootfs(paths, log)
        wheels = download_wheels(Path(cache_dir).resolve() if cache_dir else paths.root / "wheels", paths, log)
        install_site(wheels, paths, log)
        mount_proc(paths)
        try:
            handle = _start_server(paths, key, tracker, port, startup_timeout, log)
        except BaseException:
            umount_proc(paths)  # leave nothing mounted behind a failed start
            raise
        paths.state.write_text(json.dumps(handle.to_json(), indent=2) + "\n")
        log(f"board up at {handle.url}")
        return handle


def board_down(root_dir: str | os.PathLike = DEFAULT_ROOT, log: LogFn | None = None) -> bool:
    """Stop the board's server (by process group) and unmount its proc. True if a server was stopped."""
    log = log or (lambda msg: print(f"[board] {msg}", file=sys.stderr, flush=True))
    paths = BoardPaths(Path(root_dir).resolve())
    if not paths.root.exists():
        return False
    with _locked(paths.root):
        handle = _read_state(paths)
        stopped = handle is not None and _server_alive(handle)
        if handle is not None:
            _stop_server(handle)
            paths.state.unlink(missing_ok=True)
        umount_proc(paths)
        if stopped:
            log(f"board at {handle.url} stopped")
        return stopped


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    """``up|down|status`` for the emulated board; prints the board as JSON for ``up`` and ``status``."""
    parser = argparse.ArgumentParser(prog="python -m hwcomp.runtime.board", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"board directory (default {DEFAULT_ROOT})")
    parser.add_argument("--key", default="rpi4", help="RPC key when registering with a tracker (default rpi4)")
    parser.add_argument("--tracker", type=_parse_hostport, help="register with the RPC tracker at HOST:PORT")
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            handle = board_up(args.root, tracker=args.tracker, key=args.key, port=args.port)
            print(json.dumps({**handle.to_json(), "url": handle.url, "reused": handle.reused}))
        elif args.action == "down":
            board_down(args.root)
        else:
            handle = board_status(args.root)
            print(json.dumps({**handle.to_json(), "url": handle.url} if handle else {"status": "down"}))
            return 0 if handle else 3
    except BoardError as err:
        print(f"board {args.action} failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
