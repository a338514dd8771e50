"""Software prefetch of the weights a task needs next: a packed matmul's next column panel
(``TiledReduction`` on ``dense_packed``), a blocked convolution's next output-channel block or
input-channel slice (``BlockedConv``), each spread in small bursts over the reduction.

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
no chunk size divides keeps the one burst per task, for panels up to ``MAX_PANEL_BYTES``. The
convolutions follow the same rule (:func:`with_block_prefetch`, :func:`with_slice_prefetch`).

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


def _prefetch(addr: str) -> str:
    """The TVMScript statement prefetching the cache line at ``addr`` (read, keep in all levels)."""
    return f'T.evaluate(T.call_intrin("void", "tirx.prefetch", {addr}, 0, 3, 1))'


def _flat_alias(buf, size: int, c) -> tuple[str, str]:
    """The name of a one-dimensional alias of ``buf`` (``size`` elements) and the TVMScript line that
    declares it: one index instead of one per dimension (the same speed once compiled)."""
    name = f"{buf.name}_flat"
    return name, f'{name} = T.decl_buffer(({c(size)},), "{buf.dtype}", data={buf.name}.data)'


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
    return [f"{indent}for pl in range({c(per)}):", f"{indent}    {_prefetch(addr)}"]


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
    import tvm

    loop = sch.get(par)
    if not isinstance(loop.extent, tvm.tirx.IntImm) or int(loop.extent) != tasks:
        return sch
    var = loop.loop_var
    return _insert_in_loop(sch, sch.copy(), par, weight,
                           lambda indent: make_lines(var.name, str(var.ty) == "int64", indent))


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
    ko, _ = work.split(k_loop, [None, chunk])
    par_v, ko_v = (work.get(lp).loop_var for lp in (par, ko))
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
    return _insert_in_loop(sch, work, ko, weight, lambda indent: [
        f"{indent}for pl in range({c(per_chunk)}):", f"{indent}    {_prefetch(addr)}"])


def _insert_in_loop(sch, work, loop, weight, make_lines):
    """``work`` (a copy of ``sch``) with ``make_lines(indent)`` first in the body of its serial or
    parallel ``loop``, a new schedule; ``sch`` where the script does not match. A loop printed inside a
    ``T.grid`` is printed apart from the loops around it first, the body indented to match."""
    name = work.get(loop).loop_var.name
    head = re.compile(r"^(\s*)for ([\w, ]+) in (?:T\.grid\((.*)\)|range\((.*)\)|T\.parallel\((.*)\)):$")
    text = work.mod.script()
    out, found, body, deeper = [], 0, None, ""
    for line in text.splitlines():
        if body is not None and line.startswith(body + " "):
            out.append(deeper + line)
            continue
        body = None
        m = head.match(line)
        names = m.group(2).split(", ") if m else []
        if name not in names:
            out.append(line)
            continue
        found += 1
        ind, i = m.group(1), names.index(name)
        if m.group(3) is None:  # a loop of its own
            out += [line, *make_lines(ind + "    ")]
            continue
        extents = m.group(3).split(", ")
        at = ind
        if i:
            out.append(_loop_line(names[:i], extents[:i], at))
            at += "    "
        out += [_loop_line([name], [extents[i]], at), *make_lines(at + "    ")]
        if i + 1 < len(names):
            at += "    "
            out.append(_loop_line(names[i + 1:], extents[i + 1:], at))
        body, deeper = ind, at[len(ind):]
    return _parse_back(sch, text, out, found, weight)


def _loop_line(names: list[str], extents: list[str], indent: str) -> str:
    """A TVMScript loop header over ``names`` (one ``range``, or a ``T.grid`` of several)."""
    over = f"T.grid({', '.join(extents)})" if len(names) > 1 else f"range({extents[0]})"
    return f"{indent}for {', '.join(names)} in {over}:"


def _conv_weight(sch, main):
    """The packed weight ``[O/xo, I/xi, KH, KW, xi, xo]`` a blocked convolution reads, or None."""
    return next((r.source for r in sch.get(main).reads if len(r.source.shape) == 6), None)


def with_block_prefetch(sch, par, main, reduce_loop, blocks: int, rows: int):
    """A convolution in the default order (tasks of ``rows`` output rows for each of ``blocks``
    output-channel blocks, block-major) with a prefetch of the next block's weights: each task
    prefetches its share (``1/rows``) in small bursts, one at each iteration of the outermost
    reduction loop ``reduce_loop`` (counting the loops between it and the task's). Every row re-reads
    its block's weights, and the first row of each block streamed them from memory alone, the
    arithmetic waiting, as the packed matmul's first row tile did. Measured on an AVX-512 Xeon with
    the weights cold (as in a model): ResNet-50's 1x1 convs at 14x14, 1024->256 0.410 -> 0.347 ms,
    256->1024 0.356 -> 0.304 (1-4 % slower with the weights in cache); ResNet-50 0.966x round-robin.
    Returns a new schedule, or ``sch`` where it does not apply."""
    weight = _conv_weight(sch, main)
    if weight is None or blocks < 2:
        return sch
    per_block = math.prod(int(d) for d in weight.shape[1:])
    total = blocks * per_block
    per_elem = _LINE // (weight.dtype.bits // 8)
    lines = -(-per_block // per_elem)
    share = -(-lines // rows)  # lines of the next block this task prefetches
    work = sch.copy()
    between = _loops_between(work, main, par, reduce_loop)
    if between is None:
        return sch
    par_v = work.get(par).loop_var
    passes = math.prod(int(lp.extent) for lp in between)
    per_pass = -(-share // passes)
    int64 = str(par_v.ty) == "int64"

    def c(v: int) -> str:
        return _const(v, int64)

    block = f"T.min({par_v.name} // {c(rows)} % {c(blocks)} + {c(1)}, {c(blocks - 1)})"
    line = f"{par_v.name} % {c(rows)} * {c(share)} + T.min(({_step(between, c)}) * {c(per_pass)} + pl, {c(share - 1)})"
    e = f"T.min({block} * {c(per_block)} + ({line}) * {c(per_elem)}, {c(total - 1)})"
    flat, alias = _flat_alias(weight, total, c)
    return _insert_in_loop(sch, work, reduce_loop, weight, lambda indent: [
        f"{indent}{alias}", f"{indent}for pl in range({c(per_pass)}):",
        f"{indent}    {_prefetch(f'T.address_of({flat}[{e}])')}"])


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
        flat, alias = _flat_alias(x, rows * k, c)
        return [f"{indent}{alias}", f"{indent}for pr, pl in T.grid({c(mr)}, {c(-(-k // per_elem))}):",
                f"{indent}    {_prefetch(f'T.address_of({flat}[{row} * {c(k)} + pl * {c(per_elem)}])')}"]

    return _insert_under_parallel(sch, par, panels * row_tiles, x, lines)


#: Fewest lines per burst of the slice prefetch: a burst of one line at every kernel column of a
#: 28x28 conv (1008 bursts for 576 lines) cost 6 %.
MIN_BURST_LINES = 4


def with_slice_prefetch(sch, par, main, reduce_loop, burst_loops):
    """A convolution that streams its weights once per task (``BlockedConv``'s weights-once order:
    tasks over output blocks, input-channel blocks ``reduce_loop`` outside output rows) with a
    software prefetch of the next input-channel block's weights (the next slice), in small bursts at
    each iteration of a burst loop and the loops between ``reduce_loop`` and it: the deepest of
    ``burst_loops`` (outermost first: row tiles, kernel rows, kernel columns) whose bursts still carry
    :data:`MIN_BURST_LINES`, else the first. The hardware prefetcher stops at every 4 KB page, and a
    3x3 block of 32 x 32 channels spans nine. Measured on an AVX-512 Xeon with the weights cold (as in
    a model), ResNet-50's layer-4 convs: with one burst per output row, 3x3 512->512 at 7x7 1.06 ->
    0.93 ms, 1x1 2048->512 0.46 -> 0.35, 512->2048 0.49 -> 0.40; bursts per kernel column instead
    (9 lines each), 3x3 512->512 at 7x7 0.93 -> 0.74, per kernel row at 14x14 (7 lines) 0.64 -> 0.63.
    Returns a new schedule, or ``sch`` where it does not apply."""
    weight = _conv_weight(sch, main)
    if weight is None:
        return sch
    blocks, per_block, kh, kw, xi, xo = (int(d) for d in weight.shape)
    size = kh * kw * xi * xo  # one output block's weights for one input-channel block
    total = blocks * per_block * size
    per_elem = _LINE // (weight.dtype.bits // 8)
    lines = -(-size // per_elem)
    work = sch.copy()
    burst_loop, between = None, None
    for lp in burst_loops:
        loops = _loops_between(work, main, reduce_loop, lp)
        if loops is None:
            break
        if burst_loop is None or lines >= MIN_BURST_LINES * math.prod(int(x.extent) for x in loops):
            burst_loop, between = lp, loops
    if burst_loop is None:
        return sch
    per = -(-lines // math.prod(int(lp.extent) for lp in between))
    par_v, rc_v = (work.get(lp).loop_var for lp in (par, reduce_loop))
    int64 = str(par_v.ty) == "int64"

    def c(v: int) -> str:
        return _const(v, int64)

    # flat offset of this burst's part of the next slice; past the task's last slice it runs on
    # into the next block (the same thread's next task under static scheduling)
    e = (f"T.min(({par_v.name} % {c(blocks)} * {c(per_block)} + {rc_v.name} + {c(1)}) * {c(size)}"
         f" + T.min(({_step(between, c)}) * {c(per)} + pl, {c(lines - 1)}) * {c(per_elem)}, {c(total - 1)})")
    flat, alias = _flat_alias(weight, total, c)
    return _insert_in_loop(sch, work, burst_loop, weight, lambda indent: [
        f"{indent}{alias}", f"{indent}for pl in range({c(per)}):",
        f"{indent}    {_prefetch(f'T.address_of({flat}[{e}])')}"])


def _loops_between(work, main, after, last):
    """The loops of ``main`` below ``after`` down to ``last`` (inclusive), outermost first; None
    where one has no constant extent."""
    import tvm

    loops = [work.get(lp) for lp in work.get_loops(main)]
    names = [lp.loop_var.name for lp in loops]
    between = loops[names.index(work.get(after).loop_var.name) + 1:names.index(work.get(last).loop_var.name) + 1]
    return None if any(not isinstance(lp.extent, tvm.tirx.IntImm) for lp in between) else between


def _step(loops, c) -> str:
    """The index of the current iteration of ``loops`` (outermost first), row-major."""
    step = "0"
    for lp in loops:
        step = f"({step}) * {c(int(lp.extent))} + {lp.loop_var.name}"
    return step
