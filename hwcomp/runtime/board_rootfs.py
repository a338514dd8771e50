"""The emulated board's arm64 root filesystem and what it needs on this machine: apt packages,
qemu-aarch64 in binfmt_misc, the rootfs (mmdebstrap), the aarch64 wheels of TVM's runtime, and
``/proc`` mounted inside it. Each step is skipped when already done; :mod:`hwcomp.runtime.board`
runs them in order and starts the RPC server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class BoardPaths:
    """Where a board's rootfs, state and logs live under its root directory."""

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


def missing_packages() -> list[str]:
    if not shutil.which("dpkg-query"):
        return list(APT_PACKAGES)
    missing = []
    for pkg in APT_PACKAGES:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if out.returncode != 0 or "install ok installed" not in out.stdout:
            missing.append(pkg)
    return missing


def mount_binfmt() -> None:
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


def install_packages(paths: BoardPaths, log: LogFn) -> None:
    missing = missing_packages()
    if not missing:
        return
    log(f"installing apt packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], paths.setup_log, "apt-get update", env)
    _run(["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", *missing],
         paths.setup_log, "apt-get install", env)


def enable_qemu_binfmt(paths: BoardPaths, log: LogFn) -> None:
    mount_binfmt()
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


def build_rootfs(paths: BoardPaths, log: LogFn) -> None:
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


def download_wheels(cache: Path, paths: BoardPaths, log: LogFn) -> list[Path]:
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


def install_site(wheels: list[Path], paths: BoardPaths, log: LogFn) -> None:
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


def mount_proc(paths: BoardPaths) -> None:
    # Without /proc the server's psutil-based session clean-up fails and the client hangs.
    if not _proc_mounted(paths.rootfs):
        (paths.rootfs / "proc").mkdir(exist_ok=True)
        _run(["mount", "-t", "proc", "proc", str(paths.rootfs / "proc")], paths.setup_log, "mount proc into the rootfs")


def umount_proc(paths: BoardPaths) -> None:
    if paths.rootfs.exists() and _proc_mounted(paths.rootfs):
        target = str(paths.rootfs / "proc")
        if subprocess.run(["umount", target], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", target], check=True)  # busy: detach lazily
