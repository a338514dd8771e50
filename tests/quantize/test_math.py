"""Quantization arithmetic and calibrators against NumPy, and the int8 kernels bit for bit.

Every kernel test builds the TVM kernel and runs it here, comparing with the NumPy int32 reference
of ``hwcomp.quantize.qmath`` with ``array_equal``: the AVX2 kernels for the ``x86-avx2`` target (which
any AVX2 host runs, VNNI hosts included), the VNNI kernel where this host has AVX-512 VNNI.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from hwcomp.quantize import int8_compute as K
from hwcomp.quantize import qmath
from hwcomp.quantize.observers import make_observer
from hwcomp.target import get_target

RNG = np.random.default_rng(1234)


@pytest.fixture(scope="module")
def avx2(host):
    """The AVX2 target: its kernels (``vpmaddwd``/``vpmaddubsw``) run on any AVX2 host."""
    from hwcomp.target import get_target

    if host.arch != "x86_64" or "avx2" not in host.features:
        pytest.skip("the AVX2 kernels need an x86 host with AVX2")
    return get_target("x86-avx2")


def _run(func, arrays, out_shape, out_dtype, target):
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target())
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    ex.mod(*args, out)
    return out.numpy(), ex


# ---- quantize / dequantize / fixed point ---------------------------------------------------------
def test_quantize_dequantize_match_numpy(host):
    x = (RNG.standard_normal((4, 37)) * 3).astype(np.float32)
    x[0, :6] = [0.5, 1.5, 2.5, -0.5, -1.5, 1000.0]  # ties go to even; the last one saturates
    scale, zp = 0.5, 3
    q, _ = _run(K.quantize_func(x.shape, scale, zp, "int8"), [x], x.shape, "int8", host)
    expect = np.clip(np.round(x / np.float32(scale)) + zp, -128, 127).astype(np.int8)  # np.round: half to even
    np.testing.assert_array_equal(q, expect)
    np.testing.assert_array_equal(q, qmath.quantize(x, scale, zp))
    q1, _ = _run(K.quantize_func(x.shape, 1.0, zp, "int8"), [x], x.shape, "int8", host)
    assert list(q1[0, :6]) == [3, 5, 5, 3, 1, 127]  # ties to even: 0.5→0, 1.5→2, 2.5→2, -0.5→0, -1.5→-2
    d, _ = _run(K.dequantize_func(x.shape, scale, zp, "int8"), [q], x.shape, "float32", host)
    np.testing.assert_array_equal(d, qmath.dequantize(q, scale, zp))
    np.testing.assert_allclose(d[1:], x[1:], atol=scale / 2 + 1e-6)  # within half a step unless clipped
    # 4-bit codes clip to -8..7 / 0..15
    q4 = qmath.quantize(x, 0.1, 0, "int8", bits=4)
    assert q4.min() == -8 and q4.max() == 7
    assert qmath.quantize(np.abs(x), 0.1, 0, "uint8", bits=4).max() == 15


def test_fixed_point_multiplier_and_rounding():
    m = np.array([1e-6, 3.3e-4, 0.0123, 0.5, 0.999999, 1.0, 7.25, 1000.0])
    mult, shift = qmath.fixed_point(m)
    assert np.all(mult >= 2**30) and np.all(mult < 2**31)
    np.testing.assert_allclose(mult.astype(np.float64) * 2.0 ** -shift.astype(np.float64), m, rtol=2**-30)
    # ties away from zero, exact on int64
    p = np.array([3, 5, -3, -5, 4, -4, 7, -7], np.int64)  # /2: 1.5 2.5 -1.5 -2.5 2 -2 3.5 -3.5
    np.testing.assert_array_equal(qmath.rshift_round(p, 1), [2, 3, -2, -3, 2, -2, 4, -4])
    big = np.array([2**40 + 2**19, -(2**40) - 2**19], np.int64)
    np.testing.assert_array_equal(qmath.rshift_round(big, 20), [2**20 + 1, -(2**20) - 1])


# ---- observers -------------------------------------------------------------------------------------
def _feed(obs, x, chunks=4):
    for c in np.array_split(x, chunks):
        obs.update(c)
    return obs


def test_minmax_on_uniform_gives_the_range():
    x = RNG.uniform(-2.0, 3.0, 100_000).astype(np.float32)
    lo, hi = _feed(make_observer("minmax"), x).range()
    assert (lo, hi) == (float(x.min()), float(x.max()))
    assert -2.0 <= lo < -1.999 and 2.999 < hi <= 3.0


def test_percentile_clips_outliers():
    x = RNG.standard_normal(200_000).astype(np.float32)
    x[:10] = 80.0
    lo, hi = _feed(make_observer("percentile", percentile=99.9), x).range()
    # the 99.9th percentile of |N(0,1)| is 3.29
    assert 3.0 < hi < 3.6 and -3.6 < lo < -3.0
    lo_a, hi_a = _feed(make_observer("percentile", percentile=99.9, affine=True), np.abs(x) + 1.0).range()
    assert 1.0 <= lo_a < 1.01 and 4.0 < hi_a < 4.6  # one-sided data keeps its sign


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_histogram_thresholds_on_gaussian_with_outliers(method):
    x = RNG.standard_normal(1_000_000).astype(np.float32)
    x[:2] = [40.0, -40.0]  # 2 in a million at 40 sigma; min-max would give 40
    obs = _feed(make_observer(method), x)
    lo, hi = obs.range()
    assert hi == -lo
    # KL: the 8-bit Gaussian optimum, 3-8 sigma. MSE trades rounding error over the million
    # samples against clipping the two outliers: its optimum for this sample is ~12 sigma
    # (clip cost 2 (40 - T)^2 vs rounding (T/127)^2 / 12 per sample).
    band = (2.5, 9.0) if method == "entropy" else (8.0, 16.0)
    assert band[0] < hi < band[1], hi


def test_mse_threshold_minimizes_error_on_the_samples():
    x = RNG.laplace(0.0, 1.0, 200_000).astype(np.float32)
    t = _feed(make_observer("mse"), x).range()[1]

    def mse(th):
        step = th / 127
        return np.mean((x - np.clip(np.round(x / step), -127, 127) * step) ** 2)

    grid = np.linspace(0.2, 1.0, 41) * float(np.abs(x).max())
    best = grid[int(np.argmin([mse(g) for g in grid]))]
    assert mse(t) <= mse(best) * 1.05, (t, best)


# ---- kernels, bit-exact --------------------------------------------------------------------------
@pytest.mark.parametrize("a_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("relu", [False, True])
def test_dense_requant_bit_exact(avx2, a_dtype, relu):
    m, k, n = 12, 96, 48
    lo = 0 if a_dtype == "uint8" else -128
    a = RNG.integers(lo, lo + 256, (m, k)).astype(a_dtype)
    w = RNG.integers(-127, 128, (n, k)).astype(np.int8)
    bias = RNG.integers(-20000, 20000, n).astype(np.int32)
    mult, shift = qmath.fixed_point(RNG.uniform(2e-5, 4e-4, n))
    epi = K.Epilogue("requant", "relu" if relu else None, "int8", out_zp=-5)
    prov = K.get_provider(avx2)
    layout = prov.dense_layout(m, k, n)
    func = prov.schedule_dense(K.dense_func(m, k, n, a_dtype, layout, epi), layout, m, k, n)
    assert layout == "avx2" and func.attrs["tirx.is_scheduled"]
    got, ex = _run(func, [a, K.pack_weight(w, layout), bias, mult, shift], (m, n), "int8", avx2)
    acc = a.astype(np.int32) @ w.astype(np.int32).T + bias
    np.testing.assert_array_equal(got, qmath.requantize(acc, mult, shift, -5, relu=relu))
    asm = ex.mod.inspect_source("asm")
    assert "vpmaddwd" in asm and "vpdpbusd" not in asm


def test_dense_u8s7_vpmaddubsw_bit_exact_at_the_saturation_edge(avx2):
    """The 7-bit-weight AVX2 kernel: exact against int64 NumPy, including rows where every pair of
    products is at the largest value ``vpmaddubsw`` must not saturate on (2 · 255 · 64 = 32640)."""
    m, k, n = 12, 96, 48
    a = RNG.integers(0, 256, (m, k)).astype(np.uint8)
    w = RNG.integers(-64, 65, (n, k)).astype(np.int8)
    a[0], w[0], w[1] = 255, 64, -64
    bias = RNG.integers(-20000, 20000, n).astype(np.int32)
    mult, shift = qmath.fixed_point(RNG.uniform(2e-6, 4e-5, n))
    epi = K.Epilogue("requant", None, "int8")
    prov = K.get_provider(avx2)
    layout = prov.dense_layout(m, k, n, w_absmax=64)
    assert layout == "avx2u8" and prov.dense_layout(m, k, n, w_absmax=65) == "avx2"
    func = prov.schedule_dense(K.dense_func(m, k, n, "uint8", layout, epi), layout, m, k, n)
    got, ex = _run(func, [a, K.pack_weight(w, layout), bias, mult, shift], (m, n), "int8", avx2)
    acc = a.astype(np.int64) @ w.astype(np.int64).T + bias
    np.testing.assert_array_equal(got, qmath.requantize(acc, mult, shift, 0))
    assert "vpmaddubsw" in ex.mod.inspect_source("asm")

def test_dense_vnni_bit_exact(host):
    """The AVX-512 VNNI kernel (``vpdpbusd``, u8 activations x s8 weights) on a host that has it."""
    if host.int8_dot != "vnni":
        pytest.skip(f"this host has no AVX-512 VNNI (int8 dot: {host.int8_dot})")
    m, k, n = 12, 96, 48
    a = RNG.integers(0, 256, (m, k)).astype(np.uint8)
    w = RNG.integers(-128, 128, (n, k)).astype(np.int8)
    a[0], w[0], w[1] = 255, 127, -128  # the extremes of both operands along all of K
    bias = RNG.integers(-20000, 20000, n).astype(np.int32)
    mult, shift = qmath.fixed_point(RNG.uniform(2e-6, 4e-5, n))
    epi = K.Epilogue("requant", "relu", "uint8", out_zp=3)
    vnni = get_target("x86-avx512-vnni")  # the VNNI kernel itself: an AMX host's own provider takes tiles
    prov = K.get_provider(vnni)
    layout = prov.dense_layout(m, k, n)
    assert layout == "vnni" and not prov.amx
    func = prov.schedule_dense(K.dense_func(m, k, n, "uint8", layout, epi), layout, m, k, n)
    got, ex = _run(func, [a, K.pack_weight(w, layout), bias, mult, shift], (m, n), "uint8", vnni)
    acc = a.astype(np.int64) @ w.astype(np.int64).T + bias
    np.testing.assert_array_equal(got, qmath.requantize(acc, mult, shift, 3, "uint8", relu=True))
    assert "vpdpbusd" in ex.mod.inspect_source("asm")



def test_dense_float_epilogue_exact_and_gelu_close(avx2):
    m, k, n = 8, 64, 40
    a = RNG.integers(-128, 128, (m, k)).astype(np.int8)
    w = RNG.integers(-127, 128, (n, k)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, n).astype(np.int32)
    scale = RNG.uniform(1e-4, 1e-3, n).astype(np.float32)
    prov = K.get_provider(avx2)
    acc = a.astype(np.int32) @ w.astype(np.int32).T + bias
    for act in (None, "gelu"):
        layout = prov.dense_layout(m, k, n)
        func = prov.schedule_dense(K.dense_func(m, k, n, "int8", layout, K.Epilogue("float", act)), layout, m, k, n)
        got, _ = _run(func, [a, K.pack_weight(w, layout), bias, scale], (m, n), "float32", avx2)
        y = acc.astype(np.float32) * scale
        if act is None:
            np.testing.assert_array_equal(got, y)
        else:  # rational erf approximation vs scipy's erf
            np.testing.assert_allclose(got, qmath.gelu(y), rtol=1e-5, atol=1e-6)


def test_dense_generic_layout_odd_shapes(host):
    """Shapes the AVX2 layout cannot take (N % 8, K odd) use [N, K] (left to the default rules)."""
    m, k, n = 5, 33, 10
    prov = K.get_provider(host)
    assert prov.dense_layout(m, k, n) == "nk"
    a = RNG.integers(-128, 128, (m, k)).astype(np.int8)
    w = RNG.integers(-127, 128, (n, k)).astype(np.int8)
    bias = RNG.integers(-100, 100, n).astype(np.int32)
    mult, shift = qmath.fixed_point(np.full(n, 1e-3))
    func = K.dense_func(m, k, n, "int8", "nk", K.Epilogue("requant", None, "int8"))
    got, _ = _run(func, [a, w, bias, mult, shift], (m, n), "int8", host)
    acc = a.astype(np.int32) @ w.T.astype(np.int32) + bias
    np.testing.assert_array_equal(got, qmath.requantize(acc, mult, shift, 0))


def test_conv2d_requant_bit_exact(host):
    import torch

    x = RNG.integers(0, 256, (2, 5, 9, 9)).astype(np.uint8)
    w = RNG.integers(-127, 128, (7, 5, 3, 3)).astype(np.int8)
    bias = RNG.integers(-3000, 3000, 7).astype(np.int32)
    mult, shift = qmath.fixed_point(RNG.uniform(1e-4, 1e-3, 7))
    zp_x = 17  # padded positions hold the zero point
    epi = K.Epilogue("requant", "relu", "uint8", out_zp=0)
    func = K.conv2d_func(x.shape, w.shape, (2, 2), (1, 1, 1, 1), (1, 1), "uint8", epi, pad_value=zp_x)
    out_shape = (2, 7, 5, 5)
    got, _ = _run(func, [x, w, bias, mult, shift], out_shape, "uint8", host)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=zp_x)
    acc = torch.nn.functional.conv2d(torch.from_numpy(xp), torch.from_numpy(w.astype(np.float64)), stride=2).numpy()
    acc = np.rint(acc).astype(np.int64) + bias.reshape(1, -1, 1, 1)
    ref = qmath.requantize(acc.transpose(0, 2, 3, 1), mult, shift, 0, "uint8", relu=True).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("k,acc", [(20, "float32"), (514, "float32"), (515, "int32")])
def test_batch_matmul_exact(host, k, acc):
    """Bit-exact at both sides of the float32-accumulation limit (K * 255 * 128 < 2^24), with the
    first row at the extreme (255 x -128 all along K: the largest possible sum)."""
    a = RNG.integers(0, 256, (3, 6, k)).astype(np.uint8)
    b = RNG.integers(-128, 128, (3, k, 9)).astype(np.int8)
    a[:, 0, :], b[:, :, 0] = 255, -128
    func = K.batch_matmul_func((3,), 6, k, 9, "uint8", "int8", 0.00125)
    assert f'T.Cast("{acc}", A[' in func.script(), f"expected {acc} accumulation"
    got, _ = _run(func, [a, b], (3, 6, 9), "float32", host)
    np.testing.assert_array_equal(got, np.matmul(a.astype(np.int32), b.astype(np.int32)).astype(np.float32)
                                  * np.float32(0.00125))


def test_smoothed_quantize_per_channel(host):
    x = RNG.standard_normal((6, 16)).astype(np.float32) * np.linspace(0.1, 20, 16, dtype=np.float32)
    f = (1.0 / (np.linspace(0.1, 20, 16) * 0.02)).astype(np.float32)
    q, _ = _run(K.quantize_func(x.shape, 0.02, -3, "int8", per_channel=True), [x, f], x.shape, "int8", host)
    np.testing.assert_array_equal(q, np.clip(np.round(x * f) - 3, -128, 127).astype(np.int8))
