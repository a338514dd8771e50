"""The default CPU schedule rules: numerics against NumPy on awkward shapes."""

import re

import numpy as np
import pytest
import torch
import tvm
from hwcomp.schedules.cpu import TiledReduction, TileKnobs, default_rules
from tvm import te
from tvm.s_tir import dlight as dl


def _build(func, host):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with host.tvm_target():
        mod = dl.ApplyDefaultSchedule(*default_rules(host.cpu_caps))(mod)
    assert mod["main"].attrs["tirx.is_scheduled"], "rule did not apply"
    return tvm.compile(mod, target=host.tvm_target())


def _matmul_bias_relu(m, k, n, batch=None):
    shape_a = (batch, m, k) if batch else (m, k)
    shape_b = (batch, k, n) if batch else (k, n)
    a = te.placeholder(shape_a, name="A")
    b = te.placeholder(shape_b, name="B")
    bias = te.placeholder((n,), name="bias")
    r = te.reduce_axis((0, k), name="k")
    if batch:
        c = te.compute((batch, m, n), lambda q, i, j: te.sum(a[q, i, r] * b[q, r, j], axis=r), name="matmul")
        d = te.compute((batch, m, n), lambda q, i, j: te.max(c[q, i, j] + bias[j], 0.0), name="epilogue")
    else:
        c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="matmul")
        d = te.compute((m, n), lambda i, j: te.max(c[i, j] + bias[j], 0.0), name="epilogue")
    return te.create_prim_func([a, b, bias, d]), shape_a, shape_b


@pytest.mark.parametrize("m,k,n,batch", [(1, 64, 10, None), (7, 13, 33, None), (128, 96, 64, None),
                                         (5, 16, 24, 3)])
def test_tiled_matmul_epilogue(host, m, k, n, batch):
    func, sa, sb = _matmul_bias_relu(m, k, n, batch)
    ex = _build(func, host)
    rng = np.random.default_rng(0)
    a, b, bias = (rng.standard_normal(s).astype("float32") for s in (sa, sb, (n,)))
    out = tvm.runtime.tensor(np.zeros((batch, m, n) if batch else (m, n), "float32"))
    ex["main"](*(tvm.runtime.tensor(x) for x in (a, b, bias)), out)
    np.testing.assert_allclose(out.numpy(), np.maximum(a @ b + bias, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mr", [4, 8])
@pytest.mark.parametrize("m", [197, 7, 13])
def test_ragged_rows_are_padded_not_guarded(host, m, mr):
    """Row counts with no divisor near the tile (197 tokens) are padded to the tile: a guarded last
    tile keeps its rows' accumulators in memory. No predicate may remain in the reduction (the
    write-back of the last tile keeps one)."""
    func, sa, sb = _matmul_bias_relu(m, 48, 64)
    sch = TiledReduction(host.vector_bits, TileKnobs(mr=mr)).apply(func, host.tvm_target(), False)
    update = str(sch.mod["main"]).split('T.sblock("matmul_update")')[1].split("T.sblock(")[0]
    assert "T.where" not in update
    ex = tvm.compile(sch.mod, target=host.tvm_target())
    rng = np.random.default_rng(m)
    a, b, bias = (rng.standard_normal(s).astype("float32") for s in (sa, sb, (64,)))
    out = tvm.runtime.tensor(np.zeros((m, 64), "float32"))
    ex["main"](*(tvm.runtime.tensor(x) for x in (a, b, bias)), out)
    np.testing.assert_allclose(out.numpy(), np.maximum(a @ b + bias, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,n", [(16, 3), (197, 6), (7, 3)])
def test_three_vector_tiles(host, m, n):
    """Tiles of three vectors of columns (AVX-512's 8 x 48) run as three single vectors: a
    ``<3 x lanes>`` vector loop is lowered by LLVM through lane shuffles (7 GFLOP/s instead of 250
    at 128x768x3072). Numerics against NumPy, and no shuffle in the function's assembly."""
    lanes = host.vector_bits // 32
    func, sa, sb = _matmul_bias_relu(m, 40, n * lanes)
    sch = TiledReduction(host.vector_bits, TileKnobs(mr=8, nr_vectors=3)).apply(func, host.tvm_target(), False)
    assert f"T.vectorized({lanes})" in str(sch.mod["main"])
    ex = tvm.compile(sch.mod, target=host.tvm_target())
    asm = ex.mod.imports[0].inspect_source("asm") if ex.mod.imports else ex.mod.inspect_source("asm")
    assert "vinsertps" not in asm and "vshufps" not in asm
    rng = np.random.default_rng(m)
    a, b, bias = (rng.standard_normal(s).astype("float32") for s in (sa, sb, (n * lanes,)))
    out = tvm.runtime.tensor(np.zeros((m, n * lanes), "float32"))
    ex["main"](*(tvm.runtime.tensor(x) for x in (a, b, bias)), out)
    np.testing.assert_allclose(out.numpy(), np.maximum(a @ b + bias, 0), rtol=1e-4, atol=1e-4)


def _packed_dense(m, k, n, panel):
    from hwcomp.schedules.cpu.dense import dense_packed

    x = te.placeholder((m, k), name="x")
    wp = te.placeholder((n // panel, k, panel), name="w")
    return te.create_prim_func([x, wp, dense_packed(x, wp)])


@pytest.mark.parametrize("m,k,n_panels,rows_first", [(1040, 40, 2, True), (1040, 2048, 2, False), (200, 40, 2, False)])
def test_row_tiles_outermost_over_a_small_weight(host, m, k, n_panels, rows_first):
    """Many row tiles over a weight that stays in L2 (Swin's stage-1 3136x384x96): the parallel loop
    runs row tiles outermost, every panel under each; a large weight or few row tiles keep the
    panels outermost. Numerics against NumPy either way."""
    panel = 2 * host.vector_bits // 32
    func = _packed_dense(m, k, n_panels * panel, panel)
    sch = TiledReduction(host.vector_bits, TileKnobs(mr=8)).apply(func, host.tvm_target(), False)
    par = next(line for line in str(sch.mod["main"]).splitlines() if "T.parallel" in line)
    assert par.split("for ")[1].startswith("i0_0_") == rows_first, par
    ex = tvm.compile(sch.mod, target=host.tvm_target())
    rng = np.random.default_rng(k)
    x, w = rng.standard_normal((m, k)).astype("f4"), rng.standard_normal((k, n_panels * panel)).astype("f4")
    wp = np.ascontiguousarray(w.reshape(k, n_panels, panel).transpose(1, 0, 2))
    out = tvm.runtime.tensor(np.zeros((m, n_panels * panel), "f4"))
    ex["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(wp), out)
    np.testing.assert_allclose(out.numpy(), x @ w, rtol=1e-4, atol=1e-3)


def test_batched_matmul_keeps_its_batch_outermost(host):
    """Both operands of a batched matmul depend on the batch: row tiles never move outside it."""
    func, _, _ = _matmul_bias_relu(1040, 16, 32, batch=2)
    sch = TiledReduction(host.vector_bits, TileKnobs(mr=8)).apply(func, host.tvm_target(), False)
    par = next(line for line in str(sch.mod["main"]).splitlines() if "T.parallel" in line)
    assert par.split("for ")[1].startswith("q_"), par  # the batch axis q, then panels, then row tiles


def test_conv2d_direct(host):
    x = te.placeholder((1, 4, 10, 10), name="x")
    w = te.placeholder((6, 4, 3, 3), name="w")
    rc, ry, rx = te.reduce_axis((0, 4)), te.reduce_axis((0, 3)), te.reduce_axis((0, 3))
    y = te.compute((1, 6, 8, 8), lambda n, f, i, j: te.sum(x[n, rc, i + ry, j + rx] * w[f, rc, ry, rx],
                                                          axis=[rc, ry, rx]), name="conv")
    ex = _build(te.create_prim_func([x, w, y]), host)
    rng = np.random.default_rng(1)
    xa, wa = rng.standard_normal((1, 4, 10, 10)).astype("f4"), rng.standard_normal((6, 4, 3, 3)).astype("f4")
    out = tvm.runtime.tensor(np.zeros((1, 6, 8, 8), "f4"))
    ex["main"](tvm.runtime.tensor(xa), tvm.runtime.tensor(wa), out)
    ref = np.zeros((1, 6, 8, 8), "f4")
    for i in range(8):
        for j in range(8):
            ref[0, :, i, j] = np.tensordot(wa, xa[0, :, i:i + 3, j:j + 3], axes=([1, 2, 3], [0, 1, 2]))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_knobs_change_the_schedule(host):
    func, _, _ = _matmul_bias_relu(64, 32, 64)
    a = TiledReduction(host.vector_bits, TileKnobs(mr=4, nr_vectors=2)).apply(func, host.tvm_target(), False)
    b = TiledReduction(host.vector_bits, TileKnobs(mr=2, nr_vectors=1, panel_outer=False)).apply(
        func, host.tvm_target(), False)
    assert a is not None and b is not None
    assert str(a.mod) != str(b.mod)


def _rf_vectorized(func, host) -> bool:
    from hwcomp.schedules.cpu import RowReduction

    sch = RowReduction(host.vector_bits).apply(func, host.tvm_target(), False)
    return sch is not None and "_rf" in str(sch.mod["main"]) and "T.vectorized" in str(sch.mod["main"])


@pytest.mark.parametrize("shape", [(2, 5, 64), (3, 48), (1, 4, 7, 40)])
def test_row_reduction_softmax_and_layer_norm(host, shape):
    """Softmax (max + sum) and layer norm (mean + variance) rows: vectorized partial sums, NumPy
    numerics; a row shorter than two partial-sum vectors (40 fp32 on AVX2 is not a multiple of 16)
    falls back to a serial reduction and must still be right."""
    from tvm import topi

    x = te.placeholder(shape, name="x")
    g, b = te.placeholder(shape[-1:], name="g"), te.placeholder(shape[-1:], name="b")
    rng = np.random.default_rng(2)
    xa = (rng.standard_normal(shape) * 4).astype("f4")
    ga, ba = rng.standard_normal(shape[-1:]).astype("f4"), rng.standard_normal(shape[-1:]).astype("f4")

    sm = te.create_prim_func([x, topi.nn.softmax(x, -1)])
    ln = te.create_prim_func([x, g, b, topi.nn.layer_norm(x, g, b, axis=[-1], epsilon=1e-5)])
    if shape[-1] % (2 * host.vector_bits // 32) == 0:
        assert _rf_vectorized(sm, host) and _rf_vectorized(ln, host)
    out = tvm.runtime.tensor(np.zeros(shape, "f4"))
    _build(sm, host)["main"](tvm.runtime.tensor(xa), out)
    e = np.exp(xa - xa.max(-1, keepdims=True))
    np.testing.assert_allclose(out.numpy(), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)

    _build(ln, host)["main"](*(tvm.runtime.tensor(v) for v in (xa, ga, ba)), out)
    mu, var = xa.mean(-1, keepdims=True), xa.var(-1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), (xa - mu) / np.sqrt(var + 1e-5) * ga + ba, rtol=1e-4, atol=1e-4)


# ---- a reduced value broadcast over a larger tensor (RMS norm, squeeze-and-excitation) ------------
# TiledReduction used to claim these (one reduction + spatial stages) and reverse_compute_inline the
# broadcasting stage into its register tile; TVM 0.27 answers that with an InternalError ("Cannot
# dispatch a null expression") instead of a ScheduleError, which crashed the whole build.

def _rms_norm_te(rows: int, cols: int):
    x = te.placeholder((1, rows, cols), name="x")
    r = te.reduce_axis((0, cols), name="k")
    ss = te.compute((1, rows, 1), lambda b, i, _: te.sum(x[b, i, r] * x[b, i, r], axis=r), name="ss")
    y = te.compute((1, rows, cols), lambda b, i, j: x[b, i, j] * tvm.tirx.rsqrt(ss[b, i, 0] / cols + 1e-6),
                   name="y")
    return te.create_prim_func([x, y])


def test_broadcast_of_a_reduction_goes_to_row_reduction(host):
    from hwcomp.schedules.cpu import RowReduction

    func = _rms_norm_te(16, 256)
    assert TiledReduction(host.vector_bits).apply(func, host.tvm_target(), False) is None
    assert RowReduction(host.vector_bits).apply(func, host.tvm_target(), False) is not None
    xa = np.random.default_rng(3).standard_normal((1, 16, 256)).astype("f4")
    out = tvm.runtime.tensor(np.zeros_like(xa))
    _build(func, host)["main"](tvm.runtime.tensor(xa), out)
    ref = xa / np.sqrt((xa * xa).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


class _RMSNorm(torch.nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class _SqueezeExcite(torch.nn.Module):
    """conv → SiLU, then the gate: pool → 1x1 conv → SiLU → 1x1 conv → sigmoid → scale."""

    def __init__(self, c: int = 32, r: int = 8):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.reduce, self.expand = torch.nn.Conv2d(c, r, 1), torch.nn.Conv2d(r, c, 1)

    def forward(self, x):
        x = torch.nn.functional.silu(self.conv(x))
        gate = torch.sigmoid(self.expand(torch.nn.functional.silu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * gate


@pytest.mark.parametrize("fast_math", [True, False])
@pytest.mark.parametrize("model,shape", [(_RMSNorm, (1, 16, 256)), (_SqueezeExcite, (1, 32, 14, 14))],
                         ids=["rms_norm", "squeeze_excite"])
def test_broadcast_reductions_compile_and_match_pytorch(tmp_path, model, shape, fast_math):
    """Tolerance: max abs error <= 1e-5 x max |output| (fp32, measured ~1e-7)."""
    import hwcomp

    torch.manual_seed(0)
    m, x = model().eval(), torch.randn(shape)
    art = hwcomp.compile(m, "host", tmp_path / "a", example_inputs=(x,),
                         options=hwcomp.CompileOptions(fast_math=fast_math))
    with torch.no_grad():
        ref = m(x).numpy()
    out = art.run([x.numpy()])[0]
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("mr", [6, 8])
def test_padding_touches_only_the_row_axis(host, mr):
    """Padded attention scores (197 columns) pad the 197 rows too, never the heads (12 heads at 8-row
    tiles became 16), and padded rows never pad a packed weight's lanes (32 -> 36 ran 40x slower)."""
    from hwcomp.schedules.cpu.dense import dense_packed

    heads, m, k = 12, 197, 64
    a, b = te.placeholder((heads, m, k), name="A"), te.placeholder((heads, k, m), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((heads, m, m), lambda h, i, j: te.sum(a[h, i, r] * b[h, r, j], axis=r), name="scores")
    sch = TiledReduction(host.vector_bits, TileKnobs(mr=mr)).apply(te.create_prim_func([a, b, c]), host.tvm_target(), False)
    text = str(sch.mod["main"])
    assert f"({heads}, {-(-m // mr) * mr}, {k})" in text, "rows not padded to the tile"
    assert f"({heads + (-heads) % mr}," not in text or heads % mr == 0, "heads padded"
    # the tile is stored whole (no lane guard, which scalarizes the store); the slice back is a
    # stage of its own, vectorized over whole vectors with a remainder loop
    store = text.split('T.sblock("scores_pad_local")')[1].split("T.sblock(")[0]
    assert "T.where" not in store
    assert "scores_pad_i20_partition" in text
    ex = tvm.compile(sch.mod, target=host.tvm_target())
    rng = np.random.default_rng(mr)
    av, bv = rng.standard_normal((heads, m, k)).astype("f4"), rng.standard_normal((heads, k, m)).astype("f4")
    out = tvm.runtime.tensor(np.zeros((heads, m, m), "f4"))
    ex["main"](tvm.runtime.tensor(av), tvm.runtime.tensor(bv), out)
    np.testing.assert_allclose(out.numpy(), av @ bv, rtol=1e-4, atol=1e-4)

    panel = 2 * host.vector_bits // 32
    x, wp = te.placeholder((1, m, 96), name="x"), te.placeholder((4, 96, panel), name="w")
    y = dense_packed(x, wp)
    sch = TiledReduction(host.vector_bits, TileKnobs(mr=mr)).apply(te.create_prim_func([x, wp, y]), host.tvm_target(), False)
    assert "w_pad" not in str(sch.mod["main"])
    ex = tvm.compile(sch.mod, target=host.tvm_target())
    xv, wv = rng.standard_normal((1, m, 96)).astype("f4"), rng.standard_normal((4, 96, panel)).astype("f4")
    out = tvm.runtime.tensor(np.zeros((1, m, 4 * panel), "f4"))
    ex["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(wv), out)
    ref = xv @ wv.transpose(1, 0, 2).reshape(96, 4 * panel)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_whole_function_reshape_is_not_partitioned(host):
    """A plain reshape over a ragged row (Whisper's 1500-frame scores) keeps a shape Relax's
    RewriteDataflowReshape recognises (it then views the tensor instead of copying it): the
    ragged-row partition is only for a tiled function's own stages."""
    from hwcomp.schedules.cpu import Injective

    x = te.placeholder((6, 150, 150), name="x")
    y = te.compute((1, 6, 150, 150), lambda a, b, c, d: x[b, c, d], name="T_reshape")
    sch = Injective(host.vector_bits).apply(te.create_prim_func([x, y]), host.tvm_target(), False)
    assert sch is not None and "_partition" not in str(sch.mod["main"])


@pytest.mark.parametrize("m,k,panels,prefetched", [(197, 384, 4, "chunked"), (7, 96, 4, "chunked"),
                                                    (128, 3072, 4, "chunked"), (33, 48, 4, "chunked"),
                                                    (197, 100, 4, "burst"), (64, 1300, 4, None),
                                                    (1500, 64, 4, None), (520, 2048, 3, "rows"), (520, 96, 3, None),
                                                    (520, 96, 4, None)])
def test_packed_dense_prefetches_next_panels(host, m, k, panels, prefetched):
    """A packed weight streamed panel by panel gets a software prefetch of the next panel
    (``schedules/cpu/prefetch.py``) where row tiles are few: in bursts inside the reduction loop
    where 32 or 16 divides K (``chunked``), else in one burst per task for panels up to 160 KB
    (``burst``; K = 1300 at 32 columns is 166 KB: none); many row tiles over at most 3 panels of a
    weight too large for row tiles outermost (520 x 96 x 96 runs those) get the next row tile's rows
    prefetched instead; the result is the same either way (checked against NumPy)."""
    from hwcomp.schedules.cpu.dense import dense_packed

    nr = 2 * host.vector_bits // 32
    n = panels * nr
    x = te.placeholder((m, k), name="x")
    w = te.placeholder((n // nr, k, nr), name="w")
    b = te.placeholder((n,), name="b")
    d = dense_packed(x, w)
    out = te.compute((m, n), lambda i, j: d[i, j] + b[j], name="add")
    func = te.create_prim_func([x, w, b, out])
    sch = TiledReduction(host.vector_bits, TileKnobs(mr=4))._apply(func, host.tvm_target())
    script = sch.mod.script()
    assert ("T.prefetch(" in script) == (prefetched is not None)
    assert ("x_flat" in script) == (prefetched == "rows")
    # the loop right above the prefetch loop: a chunk of the reduction, or the task itself
    above = re.findall(r"for \w+ in (\w+(?:\.\w+)?)\(.*\n\s*for pl in range", script)
    assert above == {"chunked": ["range"], "burst": ["T.parallel"]}.get(prefetched, above), above
    lib = tvm.compile(sch.mod, target=host.tvm_target())
    rng = np.random.default_rng(m)
    xs, ws, bs = (rng.standard_normal(s, dtype=np.float32) for s in ((m, k), (n // nr, k, nr), (n,)))
    res = tvm.runtime.tensor(np.zeros((m, n), np.float32))
    lib["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ws), tvm.runtime.tensor(bs), res)
    ref = xs.astype(np.float64) @ ws.transpose(1, 0, 2).reshape(k, n) + bs
    np.testing.assert_allclose(res.numpy(), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("l2_kb,rows_first", [(None, False), (2048, True), (512, False)])
def test_rows_outer_where_the_weight_fits_the_l2(host, l2_kb, rows_first):
    """Row tiles go outermost over a weight of at most a third of the target's L2 (Whisper's
    1500 x 384 x 384 Linear, a 576 KB weight: yes with a 2 MB L2, no with 512 KB or unknown, the
    256 KB default); numerics against NumPy either way."""
    panel = 2 * host.vector_bits // 32
    m, k, n = 1500, 384, 384
    func = _packed_dense(m, k, n, panel)
    rule = TiledReduction(host.vector_bits, TileKnobs(mr=8), l2_bytes=l2_kb and l2_kb * 1024)
    sch = rule.apply(func, host.tvm_target(), False)
    par = next(line for line in str(sch.mod["main"]).splitlines() if "T.parallel" in line)
    assert par.split("for ")[1].startswith("i0_0_") == rows_first, par
    ex = tvm.compile(sch.mod, target=host.tvm_target())
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((m, k)).astype("f4"), rng.standard_normal((k, n)).astype("f4")
    wp = np.ascontiguousarray(w.reshape(k, n // panel, panel).transpose(1, 0, 2))
    out = tvm.runtime.tensor(np.zeros((m, n), "f4"))
    ex["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(wp), out)
    np.testing.assert_allclose(out.numpy(), x @ w, rtol=1e-4, atol=1e-3)
