"""Read an ELF shared library's header without loading it.

Two uses: the CPU architecture a library is built for (refuse a library for another architecture
before it is loaded or uploaded), and a structural check that every segment and section the
header names lies inside the file. ``dlopen`` maps segments past the end of a truncated file and the
first touch of such a page kills the process with SIGBUS, so a truncated library must be refused
before it is loaded; a sha256 in a manifest whose author also fixed the hash does not catch it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

MACHINES = {3: "x86", 8: "mips", 20: "ppc", 21: "ppc64", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}
ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x86-64": "x86_64", "x64": "x86_64"}
_PT_LOAD, _SHT_NOBITS = 1, 8


class ElfError(ValueError):
    """Not an ELF file, or one whose header points outside the file (truncated)."""


def normalize_arch(arch: str) -> str:
    return ALIASES.get(arch.lower(), arch.lower())


def elf_arch(path: str | os.PathLike, check_extent: bool = True) -> str:
    """The CPU architecture of an ELF file (``x86_64``, ``aarch64``, …) from ``e_machine``.

    With ``check_extent`` every program segment and section must lie inside the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 20 or head[:4] != b"\x7fELF":
            raise ElfError(f"{path.name} is not an ELF shared library")
        bits = {1: 32, 2: 64}.get(head[4])
        endian = {1: "<", 2: ">"}.get(head[5])
        if bits is None or endian is None:
            raise ElfError(f"{path.name}: bad ELF class/encoding bytes {head[4]}/{head[5]}")
        (machine,) = struct.unpack(endian + "H", head[18:20])
        arch = MACHINES.get(machine, f"e_machine={machine}")
        if not check_extent:
            return arch
        if len(head) < (64 if bits == 64 else 52):
            raise ElfError(f"{path.name}: truncated ELF header")
        if bits == 64:
            phoff, shoff = struct.unpack(endian + "QQ", head[0x20:0x30])
            phentsize, phnum, shentsize, shnum = struct.unpack(endian + "HHHH", head[0x36:0x3E])
        else:
            phoff, shoff = struct.unpack(endian + "II", head[0x1C:0x24])
            phentsize, phnum, shentsize, shnum = struct.unpack(endian + "HHHH", head[0x2A:0x32])

        def table(off: int, entsize: int, num: int, what: str) -> list[bytes]:
            if off + entsize * num > size:
                raise ElfError(f"{path.name}: {what} table ends past the end of the file (truncated)")
            f.seek(off)
            data = f.read(entsize * num)
            return [data[i * entsize:(i + 1) * entsize] for i in range(num)]

        for ph in table(phoff, phentsize, phnum, "program header"):
            if bits == 64:
                (ptype,), (offset, _v, _p, filesz) = struct.unpack(endian + "I", ph[:4]), \
                    struct.unpack(endian + "QQQQ", ph[8:40])
            else:
                (ptype, offset, _v, _p, filesz) = struct.unpack(endian + "IIIII", ph[:20])
            if ptype == _PT_LOAD and offset + filesz > size:
                raise ElfError(f"{path.name}: a loadable segment ends past the end of the file (truncated)")
        if shoff:
            for sh in table(shoff, shentsize, shnum, "section header"):
                (stype,) = struct.unpack(endian + "I", sh[4:8])
                if bits == 64:
                    offset, ssize = struct.unpack(endian + "QQ", sh[24:40])
                else:
                    offset, ssize = struct.unpack(endian + "II", sh[16:24])
                if stype != _SHT_NOBITS and offset + ssize > size:
                    raise ElfError(f"{path.name}: a section ends past the end of the file (truncated)")
    return arch
