"""Software prefetch of a packed weight's next column panels (``TiledReduction`` on ``dense_packed``).

A packed matmul's parallel tasks run panel by panel, every row tile of one ``K × nr`` panel in turn.
In a model the weights come from memory, not cache (each is read once per inference): the first row
tile of every panel streams its panel from memory while the other tiles read it from L2, so the
weight stream and the arithmetic take turns instead of overlapping. Measured on an AVX-512 Xeon, 2
threads: BERT's ``128 x 3072 x 768`` ran 2.03 ms with its weights cold, 1.54 ms with them in cache,
and 0.49 ms is just what streaming its 9.4 MB at the machine's bandwidth takes — no overlap at all.

Each task therefore prefetches its share (``1/row tiles``) of the next panel, in small bursts spread
over its reduction: ``k`` is split into chunks of ``CHUNKS`` steps and each chunk first prefetches a
few lines, so by the time this panel's tiles are done the next one is in cache, and the prefetches
never queue up in front of the kernel's own loads. Same Xeon, weights cold, against the previous
scheme (one burst of the whole share at each task's start, only for panels up to 160 KB):
``128 x 3072 x 768`` 2.03 -> 1.85 ms, ``128 x 768 x 3072`` 1.79 -> 1.55, ``128 x 768 x 768``
0.459 -> 0.411, ``32 x 768 x 768`` 0.189 -> 0.155, ``197 x 384 x 1536`` 0.700 -> 0.665, Qwen2's
``128 x 896 x 4864`` 3.46 -> 3.02 and ``128 x 4864 x 896`` 3.94 -> 3.71 (its 622 KB panels had no
prefetch before: two whole panels in flight pushed the rows out of the 2 MB L2, a tile's share per
chunk does not); with the weights in cache 1.55 -> 1.47 ms (``128 x 768 x 3072``). A reduction that
no chunk size divides keeps the one burst per task, for panels up to ``MAX_PANEL_BYTES``.

TVM 0.27 has no schedule primitive that adds a statement and no Python statement mutator, so the
prefetch loop is inserted into the scheduled function's TVMScript, which is parsed back; when
anything does not match (another loop structure, a renamed buffer) the schedule is kept as it was.
"""

from __future__ import annotations

import math
import re

#: Panels ahead of the one being computed by the one burst per task (1: 1.06-1.08x, 2: 1.06-1.10x
#: at K = 384/768); the in-loop prefetch runs one panel ahead (two: 1.00-1.04x slower).
DISTANCE = 2
#: The one burst per task is left out for larger panels (see the module docstring).
MAX_PANEL_BYTES = 160 * 1024
#: Reduction steps per prefetch burst, the first that divides ``K`` (16 and 32 within 2 % of each
#: other at BERT's and Qwen2's shapes).
CHUNKS = (32, 16)
#: Above this many row tiles per panel the first tile's wait is spread thin: Whisper's 1500 rows
#: (188 tiles) measured 0.98x with the prefetch.
MAX_ROW_TILES = 64
_LINE = 64


def _const(v: int, int64: bool) -> str:
    """``v`` as TVMScript, in the loop variables' integer type."""
    return f"T.int64({v})" if int64 else str(v)


def prefetch_lines(loop: str, panels: int, row_tiles: int, weight: str, k: int, nr: int,
                   int64: bool, indent: str, elem_bytes: int = 4) -> list[str]:
    """TVMScript lines, to go first in the body of the parallel loop ``loop`` (panels × row tiles
    tasks, panel-major), that prefetch this task's share of panel ``p + DISTANCE`` of
    ``weight[panels, k, nr]``."""
    per_elem = _LINE // elem_bytes
    lines = -(-k * nr * elem_bytes // _LINE)
    per = -(-lines // row_tiles)

    def c(v: int) -> str:
        return _const(v, int64)

    e = f"T.min(({loop} % {c(row_tiles)} * {c(per)} + pl) * {c(per_elem)}, {c(k * nr - 1)})"
    panel = f"T.min({loop} // {c(row_tiles)} + {c(DISTANCE)}, {c(panels - 1)})"
    addr = f"T.address_of({weight}[{panel}, {e} // {c(nr)}, {e} % {c(nr)}])"
    return [f"{indent}for pl in range({c(per)}):",
            f'{indent}    T.evaluate(T.call_intrin("void", "tirx.prefetch", {addr}, 0, 3, 1))']


def _parse_back(sch, text: str, lines: list[str], found: int, weight):
    """The schedule of the edited script ``lines`` (made from ``text``, ``sch``'s script, with
    ``found`` insertions); ``sch`` itself unless there was exactly one, ``weight`` (which the inserted
    lines address by name) is a parameter printed under its own name, and the script parses back."""
    import tvm
    from tvm import s_tir

    params = re.search(r"def main\((.*?)\):\n", text, re.DOTALL)
    if found != 1 or params is None or not re.search(rf"\b{re.escape(weight.name)}: T\.Buffer", params.group(1)):
        return sch
    try:
        return s_tir.Schedule(tvm.script.from_source("\n".join(lines)))
    except Exception:  # noqa: BLE001 - a script that does not parse back: keep the schedule as it was
        return sch


def _insert_under_parallel(sch, par, tasks: int, weight, make_lines):
    """``sch`` with ``make_lines(loop_var_name, int64, indent)`` inserted first in the body of its
    parallel loop ``par`` (``tasks`` iterations), a new schedule; ``sch`` itself where the script does
    not match (another loop structure, ``weight`` not a parameter printed under its own name)."""
    loop = sch.get(par)
    name = loop.loop_var.name
    text = sch.mod.script()
    head = re.compile(rf"^(\s*)for {re.escape(name)} in T\.parallel\((?:T\.int64\()?{tasks}\)?\):$")
    out, found = [], 0
    for line in text.splitlines():
        out.append(line)
        m = head.match(line)
        if m:
            found += 1
            out += make_lines(name, str(loop.loop_var.ty) == "int64", m.group(1) + "    ")
    return _parse_back(sch, text, out, found, weight)


def with_panel_prefetch(sch, par, main, k_loop, panels: int, row_tiles: int, k: int, nr: int):
    """``sch`` with the next panels prefetched under its parallel loop ``par`` (a new schedule): in
    bursts inside the reduction loop ``k_loop`` where a chunk of :data:`CHUNKS` divides ``k``,
    else in one burst per task; ``sch`` itself where neither applies."""
    import tvm

    if panels < 2 or row_tiles > MAX_ROW_TILES:
        return sch
    weight = None
    for r in sch.get(main).reads:
        shape = [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in r.source.shape]
        if shape == [panels, k, nr]:
            weight = r.source
    if weight is None:
        return sch
    elem = weight.dtype.bits // 8
    chunk = next((c for c in CHUNKS if k % c == 0 and k > c), None)
    if chunk is not None:
        spread = _with_chunked_prefetch(sch, par, k_loop, chunk, panels, row_tiles, weight, k, nr)
        if spread is not sch:
            return spread
    if k * nr * elem > MAX_PANEL_BYTES:
        return sch
    return _insert_under_parallel(sch, par, panels * row_tiles, weight, lambda name, int64, indent: prefetch_lines(
        name, panels, row_tiles, weight.name, k, nr, int64, indent, elem))


def _with_chunked_prefetch(sch, par, k_loop, chunk: int, panels: int, row_tiles: int, weight, k: int, nr: int):
    """A copy of ``sch`` with ``k_loop`` split into chunks of ``chunk`` steps, each chunk first
    prefetching its part of this task's share of the next panel; ``sch`` itself where the script
    does not match."""
    work = sch.copy()  # the copy keeps the random variables; sch stays as it was if this fails
    ko, ki = work.split(k_loop, [None, chunk])
    par_v, ko_v, ki_v = (work.get(lp).loop_var for lp in (par, ko, ki))
    int64 = str(par_v.ty) == "int64"
    elem = weight.dtype.bits // 8
    per_elem = _LINE // elem
    lines = -(-k * nr * elem // _LINE)
    share = -(-lines // row_tiles)  # lines of the next panel this task prefetches
    per_chunk = -(-share // (k // chunk))

    def c(v: int) -> str:
        return _const(v, int64)

    e = (f"T.min(({par_v.name} % {c(row_tiles)} * {c(share)} + T.min({ko_v.name} * {c(per_chunk)} + pl, "
         f"{c(share - 1)})) * {c(per_elem)}, {c(k * nr - 1)})")
    panel = f"T.min({par_v.name} // {c(row_tiles)} + {c(1)}, {c(panels - 1)})"
    addr = f"T.address_of({weight.name}[{panel}, {e} // {c(nr)}, {e} % {c(nr)}])"
    # the two loops print as one T.grid; split it, the prefetch between, the body one level deeper
    head = re.compile(rf"^(\s*)for {re.escape(ko_v.name)}, {re.escape(ki_v.name)} in T\.grid\(([^,]+), ([^)]+\)?)\):$")
    text = work.mod.script()
    out, found, body = [], 0, None
    for line in text.splitlines():
        if body is not None and line.startswith(body + " "):
            out.append("    " + line)
            continue
        body = None
        m = head.match(line)
        if not m:
            out.append(line)
            continue
        found += 1
        ind, body = m.group(1), m.group(1)
        out += [f"{ind}for {ko_v.name} in range({m.group(2)}):",
                f"{ind}    for pl in range({c(per_chunk)}):",
                f'{ind}        T.evaluate(T.call_intrin("void", "tirx.prefetch", {addr}, 0, 3, 1))',
                f"{ind}    for {ki_v.name} in range({m.group(3)}):"]
    return _parse_back(sch, text, out, found, weight)


#: Row prefetch: at most this many panels (more re-read the rows from cache, where it only costs).
MAX_ROW_PANELS = 3


def with_row_prefetch(sch, par, main, panels: int, row_tiles: int, k: int, mr: int):
    """A packed matmul with many row tiles over few panels (Swin's and ConvNeXt's stage-1
    ``3136 x 384 x 96``): each task prefetches the next row tile's rows of the activation. Each tile's
    rows are a new 12 KB stretch of a 4.8 MB activation, streamed as eight short rows the hardware
    prefetcher barely ramps up on before they end. Measured on an AVX-512 Xeon, operands cold:
    3136x384x96 1.20 -> 0.95 ms; with 6 panels or more it only costs (784x768x192 0.80 -> 1.01 ms,
    1500x384x1536 1.2x slower): those rows come from cache for all but the first panel. ``sch``
    itself where it does not apply (``panels`` above :data:`MAX_ROW_PANELS`, few row tiles, rows
    not read straight from a parameter)."""
    import tvm

    if panels > MAX_ROW_PANELS or row_tiles <= MAX_ROW_TILES:
        return sch
    x = None
    for r in sch.get(main).reads:
        shape = [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in r.source.shape]
        if None not in shape and shape and shape[-1] == k and math.prod(shape) == row_tiles * mr * k:
            x = r.source
    if x is None:
        return sch
    rows, per_elem = row_tiles * mr, _LINE // (x.dtype.bits // 8)

    def lines(name: str, int64: bool, indent: str) -> list[str]:
        def c(v: int) -> str:
            return _const(v, int64)

        row = f"T.min(({name} % {c(row_tiles)} + {c(1)}) * {c(mr)} + pr, {c(rows - 1)})"
        return [f'{indent}{x.name}_flat = T.decl_buffer(({c(rows * k)},), "{x.dtype}", data={x.name}.data)',
                f"{indent}for pr, pl in T.grid({c(mr)}, {c(-(-k // per_elem))}):",
                (f'{indent}    T.evaluate(T.call_intrin("void", "tirx.prefetch", '
                 f"T.address_of({x.name}_flat[{row} * {c(k)} + pl * {c(per_elem)}]), 0, 3, 1))")]

    return _insert_under_parallel(sch, par, panels * row_tiles, x, lines)


#: Loop annotation marking where :func:`with_slice_prefetch` inserts its prefetch (removed there).
MARK = "hwcomp_prefetch_here"


def with_slice_prefetch(sch, par, main, reduce_loop, row_loop, mark_loop):
    """A convolution that streams its weights once per task (``BlockedConv``'s weights-once order:
    tasks over output blocks, input-channel blocks ``reduce_loop`` outside output rows ``row_loop``)
    with a software prefetch of the next input-channel block's weights, spread over the rows: each
    row prefetches its share just before ``mark_loop`` (the loop under ``row_loop``). The hardware
    prefetcher stops at every 4 KB page, and a 3x3 block of 32 x 32 channels spans nine; measured on
    an AVX-512 Xeon with the weights cold (as in a model), ResNet-50's layer-4 convs: 3x3 512->512 at
    7x7 1.06 -> 0.93 ms, 1x1 2048->512 0.46 -> 0.35, 512->2048 0.49 -> 0.40; 3x3 256->256 at 14x14
    0.74 -> 0.72. Returns a new schedule, or ``sch`` with the mark removed where it does not apply."""
    weight = next((r.source for r in sch.get(main).reads if len(r.source.shape) == 6), None)
    text = sch.mod.script()
    sch.unannotate(mark_loop, MARK)
    if weight is None:
        return sch
    blocks, per_block, kh, kw, xi, xo = (int(d) for d in weight.shape)
    size = kh * kw * xi * xo  # one output block's weights for one input-channel block
    rows = int(sch.get(row_loop).extent)
    per_elem = _LINE // (weight.dtype.bits // 8)
    lines = -(-size // per_elem)
    per = -(-lines // rows)
    par_v, rc_v, row_v = (sch.get(lp).loop_var for lp in (par, reduce_loop, row_loop))
    int64 = str(par_v.ty) == "int64"

    def c(v: int) -> str:
        return _const(v, int64)

    # flat offset of this row's share of the next slice; past the task's last slice it runs on
    # into the next block (the same thread's next task under static scheduling). Addressed through a
    # flat alias of the weight (one index instead of six div/mods; the same speed once compiled).
    total = blocks * per_block * size
    e = (f"T.min(({par_v.name} % {c(blocks)} * {c(per_block)} + {rc_v.name} + {c(1)}) * {c(size)}"
         f" + ({row_v.name} * {c(per)} + pl) * {c(per_elem)}, {c(total - 1)})")
    flat = f"{weight.name}_flat"
    mark = re.compile(rf"^(\s*)for (\w+) in T\.serial\(([^,]+), annotations=\{{\"{MARK}\": 1\}}\):$")
    out, found = [], 0
    for line in text.splitlines():
        m = mark.match(line)
        if not m:
            out.append(line)
            continue
        found += 1
        ind = m.group(1)
        out += [f'{ind}{flat} = T.decl_buffer(({c(total)},), "{weight.dtype}", data={weight.name}.data)',
                f"{ind}for pl in range({c(per)}):",
                f'{ind}    T.evaluate(T.call_intrin("void", "tirx.prefetch", T.address_of({flat}[{e}]), 0, 3, 1))',
                f"{ind}for {m.group(2)} in range({m.group(3)}):"]
    return _parse_back(sch, text, out, found, weight)
