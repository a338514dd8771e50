"""An emulated aarch64 board on this x86 machine: TVM's RPC server in an arm64 chroot under qemu-user.

It stands in for a Raspberry Pi / Jetson CPU so the cross-compile → upload → run flow can be tested
here. Timings measured on it are emulated (qemu-user) and say nothing about real board speed.

Steps of :func:`board_up`, each skipped when already done (see shared/ARM_BOARD_NOTES.md):
apt packages → binfmt_misc + qemu-aarch64 → arm64 rootfs (mmdebstrap, host's Debian mirror) →
aarch64 wheels (cached) → ``ROOTFS/opt/tvm-site`` (runtime only) → proc mount → RPC server.
The server's pid and port live in ``ROOT/board.json`` so another process can stop it (:func:`board_down`).

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
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

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
APT_PACKAGES = ("qemu-user-static", "binfmt-support", "g++-aarch64-linux-gnu", "mmdebstrap", "arch-test")
SUITE = "bookworm"  # its python3 is 3.11, matching the cp311 wheels below
ROOTFS_PACKAGES = "python3,libstdc++6"  # TVM's runtime fails to load without libstdc++6
WHEELS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",  # 0.1.15.x segfaults, see shared/TVM_NOTES.md
    "numpy",
    "typing_extensions",
    "ml_dtypes",
    "psutil",  # the server needs it to end timed-out sessions
    "cloudpickle",
    "tornado",
)
# pip expands each tag to the older manylinux ones; bookworm's glibc 2.36 runs all of them
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
SITE = "/opt/tvm-site"  # inside the rootfs
LogFn = Callable[[str], None]


class BoardError(RuntimeError):
    """A step of bringing the emulated board up or down failed."""


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


@dataclass(frozen=True)
class _Paths:
    root: Path

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def site(self) -> Path:
        return self.rootfs / SITE.lstrip("/")

    @property
    def state(self) -> Path:
        return self.root / "board.json"

    @property
    def setup_log(self) -> Path:
        return self.root / "setup.log"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"


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
    missing = _missing_packages()
    if missing and not shutil.which("apt-get"):
        return False, f"apt packages missing ({', '.join(missing)}) and no apt-get to install them"
    try:
        _mount_binfmt()
    except BoardError as err:
        return False, str(err)
    return True, "ok"


def _missing_packages() -> list[str]:
    if not shutil.which("dpkg-query"):
        return list(APT_PACKAGES)
    missing = []
    for pkg in APT_PACKAGES:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if out.returncode != 0 or "install ok installed" not in out.stdout:
            missing.append(pkg)
    return missing


def _mount_binfmt() -> None:
    if (BINFMT_DIR / "status").exists():
        return
    out = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], capture_output=True, text=True)
    if out.returncode != 0:
        raise BoardError(f"cannot mount binfmt_misc at {BINFMT_DIR}: {out.stderr.strip() or out.returncode}")


# ----------------------------------------------------------------------------- setup steps


def _run(argv: list[str], log_path: Path, what: str, env: dict[str, str] | None = None) -> None:
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise BoardError(f"{what} failed (exit {rc}); last lines of {log_path}:\n{tail}")


def _install_packages(paths: _Paths, log: LogFn) -> None:
    missing = _missing_packages()
    if not missing:
        return
    log(f"installing apt packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], paths.setup_log, "apt-get update", env)
    _run(["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", *missing],
         paths.setup_log, "apt-get install", env)


def _enable_qemu_binfmt(paths: _Paths, log: LogFn) -> None:
    _mount_binfmt()
    entry = BINFMT_DIR / "qemu-aarch64"
    if entry.exists() and entry.read_text().startswith("enabled"):
        return
    log("enabling qemu-aarch64 in binfmt_misc")
    _run(["update-binfmts", "--enable", "qemu-aarch64"], paths.setup_log, "update-binfmts --enable qemu-aarch64")


def apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt already uses (first ``deb`` entry of the main archive).

    Reads ``sources.list`` and ``sources.list.d/*.list`` (one-line form) and ``*.sources`` (deb822).
    Prefers an entry whose suites include ``bookworm``; else the first without a ``-updates``-like suite.
    """
    entries: list[tuple[str, list[str]]] = []  # (uri, suites)
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.name.endswith(".list"):
            for line in text.splitlines():
                tokens = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(tokens) >= 3 and tokens[0] == "deb":
                    entries.append((tokens[1], [tokens[2]]))
        elif path.name.endswith(".sources"):
            for para in re.split(r"\n\s*\n", text):
                fields = {}
                for line in para.splitlines():
                    if line.startswith("#") or ":" not in line or line[0].isspace():
                        continue
                    name, value = line.split(":", 1)
                    fields[name.strip().lower()] = value.split()
                if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"])[0].lower() != "no":
                    entries += [(uri, fields.get("suites", [])) for uri in fields.get("uris", [])]
    for uri, suites in entries:
        if SUITE in suites:
            return uri
    for uri, suites in entries:
        if suites and "-" not in suites[0]:
            return uri
    raise BoardError(f"no Debian 'deb' mirror found in {apt_dir}/sources.list(.d) to build the arm64 rootfs from")


def _build_rootfs(paths: _Paths, log: LogFn) -> None:
    if (paths.rootfs / "usr/bin/python3").exists():
        return
    partial = paths.root / "rootfs.partial"
    shutil.rmtree(partial, ignore_errors=True)  # leftover of an interrupted build (nothing mounted there)
    mirror = apt_mirror()
    log(f"building arm64 {SUITE} rootfs from {mirror}")
    _run(["mmdebstrap", "--arch=arm64", "--variant=extract", f"--include={ROOTFS_PACKAGES}", SUITE,
          str(partial), mirror], paths.setup_log, "mmdebstrap")
    for name in ("proc", "tmp"):  # the extract variant creates neither; the server needs both
        (partial / name).mkdir(exist_ok=True)
    (partial / "tmp").chmod(0o1777)
    partial.rename(paths.rootfs)


def _wheel_name(requirement_or_file: str) -> str:
    name = re.split(r"[=<>!~;\[ ]|-\d", requirement_or_file, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "_", name).lower()


def _cached_wheels(cache: Path) -> dict[str, Path] | None:
    """One cached wheel per requirement (pinned versions must match), or None if any is missing."""
    found: dict[str, Path] = {}
    files = sorted(cache.glob("*.whl")) if cache.is_dir() else []
    for req in WHEELS:
        name = _wheel_name(req)
        version = req.split("==", 1)[1] if "==" in req else None
        for whl in files:
            whl_name, whl_version = whl.name.split("-")[:2]
            if _wheel_name(whl_name) == name and version in (None, whl_version):
                found[req] = whl
        if req not in found:
            return None
    return found


def _platform_args() -> list[str]:
    return [arg for tag in WHEEL_PLATFORMS for arg in ("--platform", tag)]


def _download_wheels(cache: Path, paths: _Paths, log: LogFn) -> list[Path]:
    wheels = _cached_wheels(cache)
    if wheels is None:
        log(f"downloading aarch64 wheels into {cache}")
        cache.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *_platform_args(),
              "--python-version", "3.11", "--implementation", "cp", "-d", str(cache), *WHEELS],
             paths.setup_log, "pip download of the aarch64 wheels")
        wheels = _cached_wheels(cache)
        if wheels is None:
            raise BoardError(f"pip download finished but {cache} still lacks some of {WHEELS}")
    return sorted(wheels.values())


def _install_site(wheels: list[Path], paths: _Paths, log: LogFn) -> None:
    marker = paths.site / ".hwcomp-wheels"
    want = "\n".join(w.name for w in wheels)
    if marker.exists() and marker.read_text() == want:
        return
    log(f"installing {len(wheels)} wheels into {paths.site} (runtime only)")
    partial = paths.site.with_name("tvm-site.partial")
    shutil.rmtree(partial, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--only-binary=:all:",
          *_platform_args(), "--python-version", "3.11", "--implementation", "cp",
          "--target", str(partial), *map(str, wheels)], paths.setup_log, "pip install --target of the aarch64 wheels")
    for lib in partial.glob("tvm/**/libtvm_compiler.so"):
        lib.unlink()  # 240 MB a board never needs: it only loads compiled libraries
    (partial / ".hwcomp-wheels").write_text(want)
    shutil.rmtree(paths.site, ignore_errors=True)
    partial.rename(paths.site)


def _proc_mounted(rootfs: Path) -> bool:
    target = str((rootfs / "proc").resolve())
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def _mount_proc(paths: _Paths) -> None:
    # Without /proc the server's psutil-based session clean-up fails and the client hangs.
    if not _proc_mounted(paths.rootfs):
        (paths.rootfs / "proc").mkdir(exist_ok=True)
        _run(["mount", "-t", "proc", "proc", str(paths.rootfs / "proc")], paths.setup_log, "mount proc into the rootfs")


def _umount_proc(paths: _Paths) -> None:
    if paths.rootfs.exists() and _proc_mounted(paths.rootfs):
        target = str(paths.rootfs / "proc")
        if subprocess.run(["umount", target], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", target], check=True)  # busy: detach lazily


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


def _start_server(paths: _Paths, key: str, tracker: tuple[str, int] | None, port: int | None,
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


def _read_state(paths: _Paths) -> BoardHandle | None:
    try:
        return BoardHandle.from_json(json.loads(paths.state.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def board_status(root_dir: str | os.PathLike = DEFAULT_ROOT) -> BoardHandle | None:
    """The running board recorded under ``root_dir``, or None when it is not up."""
    handle = _read_state(_Paths(Path(root_dir).resolve()))
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
    paths = _Paths(Path(root_dir).resolve())
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
        _install_packages(paths, log)
        _enable_qemu_binfmt(paths, log)
        _build_rootfs(paths, log)
        wheels = _download_wheels(Path(cache_dir).resolve() if cache_dir else paths.root / "wheels", paths, log)
        _install_site(wheels, paths, log)
        _mount_proc(paths)
        try:
            handle = _start_server(paths, key, tracker, port, startup_timeout, log)
        except BaseException:
            _umount_proc(paths)  # leave nothing mounted behind a failed start
            raise
        paths.state.write_text(json.dumps(handle.to_json(), indent=2) + "\n")
        log(f"board up at {handle.url}")
        return handle


def board_down(root_dir: str | os.PathLike = DEFAULT_ROOT, log: LogFn | None = None) -> bool:
    """Stop the board's server (by process group) and unmount its proc. True if a server was stopped."""
    log = log or (lambda msg: print(f"[board] {msg}", file=sys.stderr, flush=True))
    paths = _Paths(Path(root_dir).resolve())
    if not paths.root.exists():
        return False
    with _locked(paths.root):
        handle = _read_state(paths)
        stopped = handle is not None and _server_alive(handle)
        if handle is not None:
            _stop_server(handle)
            paths.state.unlink(missing_ok=True)
        _umount_proc(paths)
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
