"""Int8 convolution on Intel AMX (``tdpbusd``): the blocked NCHW16c conv with tile registers.

AMX's tile unit multiplies a ``rows x 4K`` uint8 tile by a ``K x 16 x 4`` int8 tile into a
``rows x 16`` int32 tile in one instruction. The blocked int8 conv's operands already have that
shape, so the layout, weight packing and epilogue are the VNNI kernel's (``hwcomp.quantize.int8_conv``,
``schedules/cpu/int8_conv.py``); only the accumulation changes:

* A tile = ``rows`` output pixels of one row x the 16 bytes of one input-channel block (one pixel's
  block is 16 contiguous bytes; pixels ``stride x 16`` bytes apart — a strided tile load), or 64
  bytes (below);
* B tile = one ``[4, 16, 4]`` slice of the VNNI-packed weights (256 contiguous bytes), or four;
* C tiles = ``mp x np`` accumulators of ``rows x 16`` int32 (pixel tiles x output-channel blocks)
  held in tile registers over every input-channel block and kernel position, stored once into the
  epilogue's local buffer.

An instruction takes about as long for 16 bytes per row as for 64, and NCHW16c puts the next input
channels a whole plane away; but a pixel's 16 bytes are followed by the next pixel's, so where a
kernel row has 2-4 taps (3x3, any stride, no dilation) the weights are packed with 4 taps per row
(zeros past the real ones, ``int8_conv.pack_conv_weight``) and one 64-byte tile row covers a kernel
row: three times the work per instruction for 3x3 convs. The zero taps read up to one pixel past
the padded row (into the next row, or a slack row the compute adds), multiplied by zero. Measured
on a Sapphire-Rapids-class Xeon (KVM, 2 threads, ``bench/peak.py``): 12.9 TOP/s on 64-byte rows,
3.2 on 16-byte ones, against 1.67 for ``vpdpbusd`` on zmm.

Tiles have ``rows`` = the largest divisor of the output width up to 16 (14 at 56/28/14, 7 at 7),
so a tile never reads past its row and no output is computed twice; widths with no divisor from 7
to 16 keep the VNNI kernel. The kernel asks Linux for the tile-data permission
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, a no-op once granted) at every call,
loads the tile configuration at the start of each parallel task and releases the tiles at its end.

TVM 0.27 has no AMX intrinsics or tile-register scope and no Python statement mutator, so the
schedule is the VNNI one's loop nest with the accumulation loops replaced, in the scheduled
function's TVMScript, by the tile loop (as ``schedules/cpu/prefetch.py`` inserts its prefetches);
where the script does not match, the caller keeps the VNNI schedule.
"""

from __future__ import annotations

import re

from tvm import s_tir

#: Fewer rows (a decoder's one token) keep the VNNI dense kernel: a tile of 1-6 rows leaves most of
#: the unit idle and such a matmul streams its weights anyway (not measured against VNNI).
MIN_DENSE_ROWS = 7
#: Convs with fewer weight bytes keep them in cache: no prefetch.
PREFETCH_MIN_BYTES = 256 * 1024
#: Loop annotation marking the accumulation loops the tile loop replaces.
MARK = "hwcomp_amx_tiles"
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18
#: Tile registers: C accumulators 0-3, A (pixels x input bytes) 4-5, B (weights) 6-7.
_A0, _B0 = 4, 6


def amx_tiles(ow: int) -> tuple[int, int] | None:
    """``(rows, mp)``: pixels per tile (the largest divisor of ``ow`` up to 16) and pixel tiles per
    register block (2 where the row has an even number of tiles); None where no divisor from 7 to
    16 exists (a narrower tile would leave most of the unit idle)."""
    rows = max(d for d in range(1, min(ow, 16) + 1) if ow % d == 0)
    if rows < min(ow, 7):
        return None
    return rows, 2 if (ow // rows) % 2 == 0 else 1


def amx_conv_plan(ow: int, kw: int, dw: int, xi: int) -> tuple[int, int, int] | None:
    """``(rows, mp, taps)`` of the AMX conv for output width ``ow``, kernel width ``kw``, dilation
    ``dw`` and ``xi`` input bytes per channel block, or None (the VNNI kernel). ``taps`` > 1 where a
    kernel row's taps are read as one tile row of 16, 32 or 64 bytes (zeros past ``kw``; 3x3 at 16
    channels: 4 taps, 64 bytes; the 3-channel stem's 7 taps at 4 bytes: 8 taps, 32 bytes); otherwise
    one 16-byte block per instruction (16-channel blocks only: narrower ones would do less per
    instruction than ``vpdpbusd``)."""
    tiles = amx_tiles(ow)
    if tiles is None:
        return None
    row_bytes = _kernel_row_bytes(kw, dw, xi)
    if row_bytes is not None:
        return tiles[0], tiles[1], row_bytes // xi
    return (tiles[0], tiles[1], kw) if xi == 16 else None


def _kernel_row_bytes(kw: int, dw: int, xi: int) -> int | None:
    """Bytes of the tile row that holds a whole kernel row (``kw`` taps of ``xi`` bytes, rounded up
    to 16, 32 or 64 with zero taps), or None where the taps are not contiguous or do not fit."""
    if dw == 1 and 1 < kw and kw * xi <= 64:
        return next(b for b in (16, 32, 64) if b >= kw * xi)
    return None


def _split_args(s: str) -> list[str]:
    """Top-level comma-separated parts of ``s`` (brackets and parentheses nest)."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _rewrite_access(line: str, name: str, keep: list[tuple[int, int | None]]) -> str:
    """Every ``name[i0, i1, ...]`` in ``line`` → ``name[(i_a) % m_a, ...]`` for ``(a, m_a)`` in
    ``keep`` (``m_a`` None: the index as it is): the accumulator indexed within its tile."""
    out, i, key = [], 0, name + "["
    while True:
        j = line.find(key, i)
        if j < 0:
            out.append(line[i:])
            return "".join(out)
        if j > 0 and (line[j - 1].isalnum() or line[j - 1] == "_"):  # another name ending in ``name``
            out.append(line[i:j + len(key)])
            i = j + len(key)
            continue
        depth, k = 1, j + len(key)
        while depth:
            depth += {"[": 1, "]": -1}.get(line[k], 0)
            k += 1
        args = _split_args(line[j + len(key):k - 1])
        idx = [args[a] if m is None else f"({args[a]}) % {m}" for a, m in keep]
        out.append(f"{line[i:j]}{name}[{', '.join(idx)}]")
        i = k


class _Script:
    """Text helpers for one scheduled function: integer literals in its loop variables' type, the
    intrinsic call, typed pointers."""

    CALL = 'T.evaluate(T.call_llvm_intrin("void", "llvm.x86.{}", {}))'

    def __init__(self, int64: bool):
        self.int64 = int64

    def c(self, val: int) -> str:
        return f"T.int64({val})" if self.int64 else str(val)

    def call(self, name: str, *args: str) -> str:
        return self.CALL.format(name, ", ".join(args)).replace(", )", ")")

    def ptr(self, buf, dtype: str, offset: str, extent: int, mask: int) -> str:
        return f'T.tvm_access_ptr(T.type_annotation("{dtype}"), {buf.name}.data, {offset}, {self.c(extent)}, {mask})'


def _config_lines(t: _Script, ind: str, shapes: dict[int, tuple[int, int]]) -> list[str]:
    """Fill a 64-byte tile configuration (palette 1; ``shapes``: tile -> (rows, bytes per row)) and
    load it."""
    cfg = [0] * 64
    cfg[0] = 1
    for tile, (r, colsb) in shapes.items():
        cfg[16 + 2 * tile] = colsb  # little-endian uint16; every width here is < 256
        cfg[48 + tile] = r
    lines = [f'{ind}amx_cfg = T.alloc_buffer((64,), "uint8", scope="local")',
             f"{ind}for amx_i in range(64):", f"{ind}    amx_cfg[amx_i] = T.uint8(0)"]
    lines += [f"{ind}amx_cfg[{i}] = T.uint8({val})" for i, val in enumerate(cfg) if val]
    return lines + [ind + t.call("ldtilecfg", "T.address_of(amx_cfg[0])")]


def _tile_shapes(rows: int, mp: int, np_: int, a_bytes: int) -> dict[int, tuple[int, int]]:
    """Tile -> (rows, bytes per row): ``mp x np`` int32 accumulators, ``mp`` A tiles of ``a_bytes``
    per row, ``np`` B tiles of ``a_bytes / 4`` rows (4 bytes of each of 16 columns per row)."""
    shapes = {q: (rows, 64) for q in range(mp * np_)}
    shapes.update({_A0 + q: (rows, a_bytes) for q in range(mp)})
    shapes.update({_B0 + q: (a_bytes // 4, 64) for q in range(np_)})
    return shapes


def _products(t: _Script, ind: str, mp: int, np_: int) -> list[str]:
    """One reduction step's tile products: accumulator ``ot * mp + pt`` += A ``pt`` x B ``ot``."""
    return [ind + t.call("tdpbusd", f"T.int8({ot * mp + pt})", f"T.int8({_A0 + pt})", f"T.int8({_B0 + ot})")
            for ot in range(np_) for pt in range(mp)]


def _splice(sch, par_name: str, accb, acc_shape: tuple[int, ...], keep, tile_lines, shapes, t: _Script):
    """``sch``'s function with the loops under the :data:`MARK` loop replaced by ``tile_lines(indent)``,
    the accumulator ``accb`` shrunk to ``acc_shape`` (its reads re-indexed by ``keep``), the tile
    permission requested before the parallel loop ``par_name`` and the configuration ``shapes``
    loaded at the start of each of its tasks, the tiles released at the end; None where the script
    does not have that shape or does not parse back."""
    try:
        return _edit(sch, par_name, accb, acc_shape, keep, tile_lines, shapes, t)
    except (ValueError, IndexError):  # an access _rewrite_access cannot split: the caller keeps VNNI
        return None


def _edit(sch, par_name: str, accb, acc_shape, keep, tile_lines, shapes, t: _Script):
    import tvm

    text = sch.mod.script()
    head = re.compile(rf"^(\s*)for {re.escape(par_name)} in T\.parallel\(")
    mark = re.compile(rf'^(\s*)for \w+ in T\.serial\([^,]+, annotations=\{{"{MARK}": 1\}}\):$')
    alloc = re.compile(rf'^(\s*){re.escape(accb.name)} = T\.sblock_alloc_buffer\(\(.*\), "int32", scope="local"\)$')
    out: list[str] = []
    skip_below, found, par_ind = None, [0, 0, 0], None
    for line in text.splitlines():
        ind = len(line) - len(line.lstrip())
        if skip_below is not None:
            if line.strip() and ind > skip_below:
                continue
            skip_below = None
        if par_ind is not None and line.strip() and ind <= par_ind:
            return None  # something follows the parallel loop: the release would not end each task
        if m := alloc.match(line):
            found[0] += 1
            shape = ", ".join(t.c(d) for d in acc_shape)
            out.append(f'{m.group(1)}{accb.name} = T.sblock_alloc_buffer(({shape},), "int32", scope="local")')
        elif m := head.match(line):
            found[1] += 1
            par_ind = len(m.group(1))
            perm = (f'T.call_extern("int64", "syscall", T.int64({_SYS_ARCH_PRCTL}), '
                    f"T.int64({_ARCH_REQ_XCOMP_PERM}), T.int64({_XFEATURE_XTILEDATA}))")
            out.append(f'{m.group(1)}assert {perm} == T.int64(0), "the kernel refused AMX tile data '
                       '(arch_prctl ARCH_REQ_XCOMP_PERM)"')
            out.append(line)
            out += _config_lines(t, m.group(1) + "    ", shapes)
        elif m := mark.match(line):
            found[2] += 1
            skip_below = len(m.group(1))
            out += tile_lines(m.group(1))
        else:
            out.append(_rewrite_access(line, accb.name, keep) if f"{accb.name}[" in line else line)
    if found != [1, 1, 1]:
        return None
    out.append(" " * (par_ind + 4) + t.call("tilerelease"))
    try:
        mod = tvm.script.from_source("\n".join(out))
    except Exception:  # noqa: BLE001 - a script that does not parse back: the caller keeps VNNI
        return None
    return mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_conv_nchwc_int8_amx(func, vector_bits: int):
    """The AMX schedule of ``conv2d_nchwc_int8_func``'s PrimFunc (16-byte input blocks, VNNI-packed
    weights, output width divisible by its ``hwcomp.reg_n`` = ``rows x mp``), or None where it does
    not apply or the script does not match."""
    from hwcomp.schedules.cpu.int8_conv import _schedule_pad
    from hwcomp.schedules.cpu.rules import _const_int

    sh, sw, dh, dw = (int(v) for v in func.attrs["hwcomp.conv_geometry"])
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    out = sch.get_sblock("out")
    loops = sch.get_loops(acc)
    if len(loops) != 10:  # the AVX2 step's halves loop, or another compute
        return None
    n, oc, oh, ow, v, rc, ry, rx, rf, rk = loops
    ext = [_const_int(sch.get(lp).extent) for lp in loops]
    _, ob, oh_, ow_, xo, cb, kh, kw, xf, kb = ext
    if None in ext or xo != 16 or kb != 4:
        return None
    xi = xf * kb  # input bytes per channel block
    wgt = next(r.source for r in sch.get(acc).reads if len(r.source.shape) == 7)
    kwp = _const_int(wgt.shape[3])  # taps per kernel row as packed
    plan = amx_conv_plan(ow_, kw, dw, xi)
    # ow_ is the accumulator's row, padded to whole VNNI tiles where no tile height divides the
    # output width: those padded columns would be loaded past the row (the compute clamps them)
    if plan is None or _const_int(func.params[-1].shape[3]) != ow_ or plan[2] != kwp:
        return None
    rows, mp, _ = plan
    reg_n = rows * mp
    if int(func.attrs["hwcomp.reg_n"]) != reg_n:
        return None
    wide = _kernel_row_bytes(kw, dw, xi) is not None  # one tile row = a kernel row's taps
    np_ = 2 if ob % 2 == 0 else 1
    src = next(r.source for r in sch.get(acc).reads if len(r.source.shape) == 5)
    hp, wp = (_const_int(d) for d in src.shape[2:4])

    ow_o, ow_i = sch.split(ow, [None, reg_n])
    oc_o, oc_i = sch.split(oc, [None, np_])
    sch.reorder(n, oc_o, oh, ow_o, oc_i, ow_i, v, rc, ry, rx, rf, rk)
    sch.set_scope(acc, 0, "local")
    accb = sch.get(acc).writes[0].source
    sch.reverse_compute_at(out, ow_o, preserve_unit_loops=True)
    par = sch.fuse(n, oc_o, oh)
    sch.parallel(par)
    sch.annotate(oc_i, MARK, 1)
    out_loops = sch.get_loops(out)[2:]
    if out_loops and _const_int(sch.get(out_loops[-1]).extent) == xo:
        sch.vectorize(out_loops[-1])
    _schedule_pad(sch, vector_bits)

    par_v, owo_v = sch.get(par).loop_var, sch.get(ow_o).loop_var
    t = _Script(str(par_v.ty) == "int64")
    c = t.c
    groups = ob // np_
    p, z = par_v.name, owo_v.name
    b = f"{p} // {c(groups * oh_)}"
    o0 = f"{p} // {c(oh_)} % {c(groups)} * {c(np_)}"
    y = f"{p} % {c(oh_)}"
    z0 = f"{z} * {c(reg_n)}"

    a_bytes = kwp * xi if wide else xi  # per tile row: all taps of a kernel row, or one tap

    # Software prefetch of the next output-channel pair's weights, spread over this pair's row tasks
    # and their steps: the first row of a pair otherwise streams them from memory at one thread's
    # bandwidth while the other rows hit the L2 (ResNet-50's layer-4 convs ran at 9-11 GB/s of the
    # 24 GB/s two threads can read).
    block_bytes = kwp * xi * 16  # one output block's weights for one input block and kernel row
    pair_bytes = np_ * cb * kh * block_bytes
    total = ob * cb * kh * block_bytes
    steps = (ow_ // reg_n) * cb * kh * (1 if wide else kw)
    per = -(-pair_bytes // 64 // (oh_ * steps))
    prefetch = total >= PREFETCH_MIN_BYTES and ob > np_

    def tile_lines(ind: str) -> list[str]:
        lines = [ind + t.call("tilezero", f"T.int8({i})") for i in range(mp * np_)]
        if prefetch:
            lines.append(f'{ind}amx_wflat = T.decl_buffer(({c(total)},), "int8", data={wgt.name}.data)')
        if wide:
            lines.append(f"{ind}for amx_c, amx_y in T.grid({c(cb)}, {c(kh)}):")
            tap, step = "", f"({z} * {c(cb)} + amx_c) * {c(kh)} + amx_y"
        else:
            lines.append(f"{ind}for amx_c, amx_y, amx_x in T.grid({c(cb)}, {c(kh)}, {c(kw)}):")
            tap, step = f" + amx_x * {c(dw)}", f"(({z} * {c(cb)} + amx_c) * {c(kh)} + amx_y) * {c(kw)} + amx_x"
        inner = ind + "    "
        if prefetch:
            line = f"(({y} * {c(steps)} + {step}) * {c(per)} + amx_p) * {c(64)}"
            addr = f"T.min(({o0} + {c(np_)}) * {c(pair_bytes // np_)} + {line}, {c(total - 1)})"
            pf = f'T.evaluate(T.call_intrin("void", "tirx.prefetch", T.address_of(amx_wflat[{addr}]), 0, 2, 1))'
            lines += [f"{inner}for amx_p in range({c(per)}):", f"{inner}    {pf}"]
        row = f"{y} * {c(sh)} + amx_y * {c(dh)}"
        for pt in range(mp):
            col = f"({z0} + {c(pt * rows)}) * {c(sw)}{tap}"
            off = f"((({b} * {c(cb)} + amx_c) * {c(hp)} + {row}) * {c(wp)} + {col}) * {c(xi)}"
            a = t.ptr(src, src.dtype, off, (rows - 1) * sw * xi + a_bytes, 1)
            lines.append(inner + t.call("tileloadd64", f"T.int8({_A0 + pt})", a, f"T.int64({sw * xi})"))
        for ot in range(np_):
            off = f"((({o0} + {c(ot)}) * {c(cb)} + amx_c) * {c(kh)} + amx_y) * {c(block_bytes)}"
            if not wide:
                off += f" + amx_x * {c(xi * 16)}"
            lines.append(inner + t.call("tileloadd64", f"T.int8({_B0 + ot})",
                                        t.ptr(wgt, "int8", off, 4 * a_bytes, 1), "T.int64(64)"))
        lines += _products(t, inner, mp, np_)
        for ot in range(np_):
            for pt in range(mp):
                off = c((ot * reg_n + pt * rows) * 16)
                lines.append(ind + t.call("tilestored64", f"T.int8({ot * mp + pt})",
                                          t.ptr(accb, "int32", off, rows * 16, 2), "T.int64(64)"))
        return lines

    return _splice(sch, p, accb, (np_, reg_n, 16), [(1, c(np_)), (3, c(reg_n)), (4, None)], tile_lines,
                   _tile_shapes(rows, mp, np_, a_bytes), t)


def dense_tiles(m: int, n: int, k: int) -> tuple[int, int, int, int] | None:
    """``(rows, mp, np, kstep)`` of the AMX dense kernel for ``M x K x N`` (VNNI layout, N a multiple
    of 16): row tiles as :func:`amx_tiles`, two 16-column tiles where N has an even number, ``kstep``
    input bytes per tile (64, or 32/16 where K is not a multiple of 64); None where it does not fit."""
    tiles = amx_tiles(m)
    kstep = next((s for s in (64, 32, 16) if k % s == 0), None)
    if tiles is None or kstep is None or n % 16 or m < MIN_DENSE_ROWS:
        return None
    return tiles[0], tiles[1], 2 if (n // 16) % 2 == 0 else 1, kstep


def schedule_dense_amx(func):
    """The AMX schedule of ``int8_compute.dense_func``'s PrimFunc in the ``vnni`` layout
    (``W [N/16, K/4, 16, 4]``): tasks = 16·np-column panels x ``rows·mp`` row blocks, panel-major;
    each task holds ``mp x np`` int32 tiles over K, loading ``rows x kstep`` bytes of A (stride K)
    and ``kstep/4 x 64`` bytes of one weight panel per step. None where it does not apply."""
    m, n = (int(d) for d in func.params[-1].shape)
    k = int(func.params[0].shape[-1])
    tiles = dense_tiles(m, n, k)
    if tiles is None or len(func.params[1].shape) != 4 or str(func.params[0].dtype) != "uint8":
        return None
    rows, mp, np_, kstep = tiles
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    out = sch.get_sblock("out")
    i, j, kk = sch.get_loops(acc)
    jo, jt = sch.split(j, [None, np_ * 16])
    io, it = sch.split(i, [None, rows * mp])
    sch.reorder(jo, io, it, jt, kk)
    sch.set_scope(acc, 0, "local")
    accb = sch.get(acc).writes[0].source
    sch.reverse_compute_at(out, io)
    o_j = sch.get_loops(out)[-1]
    _, o_v = sch.split(o_j, [None, 16])
    sch.vectorize(o_v)
    par = sch.fuse(jo, io)
    sch.parallel(par)
    sch.annotate(it, MARK, 1)
    a_buf = next(r.source for r in sch.get(acc).reads if len(r.source.shape) == 2)
    wgt = next(r.source for r in sch.get(acc).reads if len(r.source.shape) == 4)

    par_v = sch.get(par).loop_var
    t = _Script(str(par_v.ty) == "int64")
    c = t.c
    row_blocks = m // (rows * mp)
    p = par_v.name
    r0 = f"{p} % {c(row_blocks)} * {c(rows * mp)}"
    j0 = f"{p} // {c(row_blocks)} * {c(np_)}"  # first 16-column block of the panel

    def tile_lines(ind: str) -> list[str]:
        lines = [ind + t.call("tilezero", f"T.int8({q})") for q in range(mp * np_)]
        lines.append(f"{ind}for amx_k in range({c(k // kstep)}):")
        inner = ind + "    "
        for pt in range(mp):
            off = f"({r0} + {c(pt * rows)}) * {c(k)} + amx_k * {c(kstep)}"
            lines.append(inner + t.call("tileloadd64", f"T.int8({_A0 + pt})",
                                        t.ptr(a_buf, "uint8", off, (rows - 1) * k + kstep, 1), f"T.int64({k})"))
        for ot in range(np_):
            off = f"(({j0} + {c(ot)}) * {c(k // 4)} + amx_k * {c(kstep // 4)}) * {c(64)}"
            lines.append(inner + t.call("tileloadd64", f"T.int8({_B0 + ot})",
                                        t.ptr(wgt, "int8", off, kstep * 16, 1), "T.int64(64)"))
        lines += _products(t, inner, mp, np_)
        for ot in range(np_):
            for pt in range(mp):
                off = c(pt * rows * np_ * 16 + ot * 16)
                lines.append(ind + t.call("tilestored64", f"T.int8({ot * mp + pt})",
                                          t.ptr(accb, "int32", off, (rows - 1) * np_ * 16 + 16, 2),
                                          f"T.int64({np_ * 64})"))
        return lines

    return _splice(sch, p, accb, (rows * mp, np_ * 16), [(0, c(rows * mp)), (1, c(np_ * 16))], tile_lines,
                   _tile_shapes(rows, mp, np_, kstep), t)


__all__ = ["amx_conv_plan", "amx_tiles", "dense_tiles", "schedule_conv_nchwc_int8_amx", "schedule_dense_amx"]
