"""Target descriptions: every shipped file parses into a TVM target; host detection reads the CPU."""

from pathlib import Path

import pytest

from hwcomp.errors import HwcompError
from hwcomp.target import CpuCaps, detect_host, get_target, target_names


@pytest.mark.parametrize("name", target_names())
def test_every_target_builds_a_tvm_target(name):
    t = get_target(name)
    tt = t.tvm_target()
    assert tt.kind.name == t.tvm["kind"]
    assert t.sparse_block[0] >= 1 and t.vector_bits in (128, 256, 512)
    assert (t.cross_compiler is not None) == (t.arch == "aarch64" and name != "host")


def test_host_matches_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text()
    host = detect_host()
    if " avx512f" in flags:
        assert host.vector_bits == 512
    elif " avx2" in flags:
        assert host.vector_bits == 256
    assert (host.int8_dot == "vnni") == (" avx512_vnni" in flags)
    assert host.runs_here()


def test_target_from_toml_path_and_bad_file(tmp_path):
    good = tmp_path / "board.toml"
    good.write_text('arch = "aarch64"\nvector_bits = 128\nsparse_block = [4, 1]\n[tvm]\nkind = "llvm"\n'
                    'mtriple = "aarch64-linux-gnu"\nmcpu = "cortex-a53"\n')
    assert get_target(str(good)).tvm["mcpu"] == "cortex-a53"
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "x"\n')
    with pytest.raises(HwcompError, match="invalid target description"):
        get_target(str(bad))


def test_host_uses_amx_only_where_linux_grants_it(monkeypatch):
    """``host`` promises AMX tiles exactly where the CPU flags list them and Linux grants the tile
    data to this process; a refusal (seccomp, an old kernel) leaves the int8 kernels on VNNI."""
    import hwcomp.target as tmod
    from hwcomp.quantize.int8_compute import get_provider
    from tvm.target import codegen

    host = detect_host()
    if host.arch != "x86_64":
        pytest.skip("x86 only")
    for granted in (True, False):
        monkeypatch.setattr(tmod, "_amx_permitted", lambda g=granted: g)
        t = detect_host()
        flags = tmod._cpu_flags()
        expect = granted and {"amx_tile", "amx_int8"} <= flags
        assert bool(codegen.llvm_cpu_has_features(["amx-int8"], t.tvm_target())) == expect
        assert getattr(get_provider(t), "amx", False) == (expect and t.int8_dot == "vnni")


def test_l2_cache_from_the_description_and_from_linux(tmp_path):
    """``l2_kb`` in a description gives ``Target.l2_bytes`` (checked like every field); the host's is
    read from sysfs, the level-2 data or unified cache, and unknown (None) where sysfs has none."""
    import hwcomp.target as tmod

    good = tmp_path / "box.toml"
    body = 'arch = "x86_64"\nvector_bits = 256\nsparse_block = [8, 1]\n[tvm]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\n'
    good.write_text("l2_kb = 1280\n" + body)
    assert get_target(str(good)).l2_bytes == 1280 * 1024
    (tmp_path / "plain.toml").write_text(body)
    assert get_target(str(tmp_path / "plain.toml")).l2_bytes is None
    bad = tmp_path / "bad.toml"
    bad.write_text('l2_kb = "big"\n' + body)
    with pytest.raises(HwcompError, match="l2_kb"):
        get_target(str(bad))
    cache = tmp_path / "cache"
    for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"),
                                              (3, "Unified", "32M")]):
        d = cache / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert tmod._l2_bytes(cache) == 2 << 20
    assert tmod._l2_bytes(tmp_path / "nowhere") is None


def test_cpu_caps_are_what_the_schedules_read():
    """The CPU schedules take one CpuCaps value (vector width, vector registers, L2) from the target."""
    from hwcomp.schedules.cpu import BlockedConv, TiledReduction, default_rules

    assert get_target("x86-avx512-vnni").cpu_caps == CpuCaps(512, 32, 1024 * 1024)
    assert get_target("x86-avx2").cpu_caps == CpuCaps(256, 16, None)
    assert get_target("rpi5").cpu_caps.vector_bits == 128 and get_target("rpi5").cpu_caps.registers == 32
    rules = default_rules(get_target("x86-avx512-vnni").cpu_caps)
    conv = next(r for r in rules if isinstance(r, BlockedConv))
    tiled = next(r for r in rules if isinstance(r, TiledReduction))
    assert (conv.vector_bits, conv.registers, tiled.l2_bytes) == (512, 32, 1024 * 1024)
    assert (tiled.knobs.mr, tiled.knobs.nr_vectors) == (8, 3)  # AVX-512's wide tile (32 registers)
    tiled2 = next(r for r in default_rules(get_target("x86-avx2").cpu_caps) if isinstance(r, TiledReduction))
    assert tiled2.knobs.nr_vectors != 3 and tiled2.vector_bits == 256
