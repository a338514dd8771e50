"""The int8 Winograd convolution (``hwcomp.quantize.int8_winograd``, its input transform in
``schedules/cpu/winograd.py``, its output schedule in ``schedules/cpu/int8_winograd.py``).

What is checked, and how exactly:

* the arithmetic in NumPy: Lavin's matrices are integer where the transform must be exact; the
  bound on ``|V|`` is attained by an input (so it is the maximum, not just a bound) and the
  transformed weights stay within it, so no int32 product sum can overflow for any input; where
  the bound allows, ``ρ U`` equals ``G g Gᵀ`` exactly and :func:`reference` equals the direct
  conv's ``Σ (x - zp) w`` (to float64 rounding); where it does not (256 channels, the widest the
  rule takes), its error against the float conv is at most 1.1x the direct int8 conv's;
* the kernels (x86 host, the AVX2 and, where the host has it, the VNNI product dot): the input
  transform bit for bit against NumPy (int16, garbage in the padded channel lanes); the three
  kernels end to end against :func:`reference` with each epilogue — float within 1e-5 of the
  output's scale, requantized within one code (the transform sums in float32) for at most 0.1 %
  of the codes; a fused float residual with NCHW output; the product kernels' assembly has
  ``vpdpwssd`` (VNNI) / ``vpmaddwd`` (AVX2);
* the quantizer: a residual block at 32x32 takes the Winograd for its two 3x3 convs (the realize
  report says so), the first one's input transform reads the stem conv's blocked uint8 output
  directly (no float between them), and the compiled model agrees with the direct int8 build
  (cosine >= 0.999) and with PyTorch fp32 (>= 0.99).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from hwcomp.schedules.cpu.int8_winograd import schedule_int_winograd_output
from hwcomp.schedules.cpu.winograd import (
    winograd_input_func,
    winograd_input_shape,
    winograd_matrices,
)
from torch import nn

from hwcomp.quantize import int8_conv as ic
from hwcomp.quantize import int8_winograd as iw
from hwcomp.quantize import qmath
from hwcomp.quantize.int8_compute import Epilogue, get_provider
from hwcomp.target import get_target
from tests.quantize.test_int8_conv import (
    epilogue_for,
    from_blocked,
    padded_params,
    requant_f32_reference,
    run_local,
    to_blocked,
)

FLOAT_TOL = 1e-5  # float epilogue vs float64 reference, relative to the output's largest magnitude
MIN_COS_DIRECT = 0.999  # int8 Winograd model vs the direct int8 build
MIN_COS_FP32 = 0.99


@pytest.mark.parametrize("m", [2, 4])
def test_matrices_integer_and_correct(m):
    a, b, g = winograd_matrices(m, integer=True)
    assert np.array_equal(a, np.round(a)) and np.array_equal(b, np.round(b))
    rng = np.random.default_rng(0)
    d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
    np.testing.assert_allclose(a.T @ ((g @ w) * (b.T @ d)), np.correlate(d, w, "valid"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("zp", [0, 37, 128])
def test_v_bound_is_attained(zp):
    m, lo, hi = 4, -zp, 255 - zp
    _, b, _ = winograd_matrices(m, integer=True)
    bound = iw.v_bounds(m, lo, hi)
    assert bound.max() <= 32767  # V fits int16
    for e in range(36):
        i, j = divmod(e, 6)
        c = np.outer(b[:, i], b[:, j])
        for sign in (1, -1):
            d = np.where(sign * c > 0, hi, lo)  # the extreme input for this position
            v = abs(float((c * d).sum()))
            assert v <= bound[e]
            if sign == 1 and v == bound[e]:
                break
        else:
            assert abs(float((c * np.where(c < 0, hi, lo)).sum())) == bound[e]


def test_transformed_weights_cannot_overflow_and_are_exact_when_they_fit():
    rng = np.random.default_rng(1)
    _, _, g = winograd_matrices(4, integer=True)
    vmax = iw.v_bounds(4, 0, 255)
    for c in (16, iw.MAX_CHANNELS):
        w = rng.integers(-127, 128, (24, c, 3, 3)).astype(np.int8)
        u, rho = iw.transform_weight(w, 4, vmax)
        assert u.dtype == np.int16
        worst = vmax[:, None].astype(np.float64) * np.abs(u.astype(np.int64)).sum(axis=2)  # [36, O]
        assert worst.max() <= iw.INT32_MAX
        exact = np.einsum("ak,ockl,bl->aboc", g, w.astype(np.float64), g).reshape(36, 24, c)
        err = np.abs(rho[:, :, None] * u - exact).max()
        if c == 16:
            assert err < 1e-9 * np.abs(exact).max()
        else:  # rounded to the bound: within half a step per position and channel
            assert err <= 0.5 * rho.max() * (1 + 1e-9)
            assert err > 0


def _direct_zp(x, w, zp, pad):
    """``Σ (x - zp) w`` with padding at the zero point (0 after it)."""
    return ic.reference_conv(x.astype(np.int64) - zp, w, (1, 1), pad, (1, 1), 0).astype(np.float64)


@pytest.mark.parametrize("c,zp,pad", [(16, 0, (1, 1, 1, 1)), (24, 37, (1, 1, 1, 1)), (20, 5, (0, 1, 2, 0))])
def test_reference_is_the_direct_conv_when_exact(c, zp, pad):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (2, c, 9, 11)).astype(np.uint8)
    w = rng.integers(-127, 128, (20, c, 3, 3)).astype(np.int8)
    ref = iw.reference(x, w, zp, pad, 4)
    direct = _direct_zp(x, w, zp, pad)
    assert ref.shape == direct.shape
    np.testing.assert_allclose(ref, direct, rtol=0, atol=1e-6 * np.abs(direct).max())


def test_rounded_weights_add_little_to_the_weight_rounding():
    """At the widest input the rule takes (256 channels, ``U`` rounded), the int8 Winograd's error
    against the float conv is at most 1.1x the direct int8 conv's (its weight rounding)."""
    rng = np.random.default_rng(3)
    c = iw.MAX_CHANNELS
    x = np.clip(np.round(np.maximum(rng.standard_normal((1, c, 8, 8)), 0) * 60), 0, 255).astype(np.uint8)
    wf = rng.standard_normal((16, c, 3, 3))
    s = np.abs(wf).reshape(16, -1).max(axis=1) / 127
    wq = np.round(wf / s[:, None, None, None]).astype(np.int8)
    pad = (1, 1, 1, 1)
    xf = np.zeros((1, c, 10, 10))
    xf[:, :, 1:9, 1:9] = x
    ref = sum(np.einsum("nchw,oc->nohw", xf[:, :, ky:ky + 8, kx:kx + 8], wf[:, :, ky, kx])
              for ky in range(3) for kx in range(3))
    direct = _direct_zp(x, wq, 0, pad) * s[None, :, None, None]
    wino = iw.reference(x, wq, 0, pad, 4) * s[None, :, None, None]
    assert not np.allclose(wino, direct)  # the weights really were rounded
    err = lambda y: np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert err(wino) <= 1.1 * err(direct), (err(wino), err(direct))


# ---- kernels ---------------------------------------------------------------------------------------
PRODUCT_DOTS = {"avx2": ("x86-avx2", "vpmaddwd"), "vnni": ("x86-avx512-vnni", "vpdpwssd")}


def _dot_target(host, name):
    tname, _ = PRODUCT_DOTS[name]
    if host.arch != "x86_64" or "avx2" not in host.features:
        pytest.skip("x86 kernels on an AVX2 host only")
    if name == "vnni" and host.int8_dot != "vnni":
        pytest.skip("this host has no AVX-512 VNNI")
    return get_target(tname)


def build_winograd(target, xb, w, zp, pad, m, epi, params, bias, n, oh, ow, nchw, residual=None):
    """The three kernels as ``realize_conv.emit_winograd_conv`` builds them; returns (V, output)."""
    provider = get_provider(target)
    dot = provider.winograd_dot()
    o = w.shape[0]
    shape = xb.shape
    vshape = winograd_input_shape(shape, m, pad)
    v = run_local(winograd_input_func(shape, m, pad, "uint8", "int16", zp), target, [xb], vshape, "int16")
    u, rho = iw.transform_weight(w, m, iw.v_bounds(m, -zp, 255 - zp))
    positions, n_tiles, ob = (m + 2) ** 2, vshape[3], -(-o // ic.BLOCK)
    rho_p = np.zeros((positions, ob * ic.BLOCK), np.float32)
    rho_p[:, :o] = rho
    pf = provider.schedule_blocked_conv(
        iw.product_func(positions, shape[1], n_tiles, ob, provider.conv_reg_n(n_tiles, ic.BLOCK, dot)), dot)
    prod_shape = (positions, ob, 1, n_tiles, ic.BLOCK)
    mm = run_local(pf, target, [v, iw.pack_weight(u), rho_p.reshape(-1)], prod_shape, "float32")
    of = schedule_int_winograd_output(
        iw.output_func(prod_shape, m, n, oh, ow, o, epi, nchw, residual and residual[0]), m)
    args = [mm, ic.pad_channels(bias, ob * ic.BLOCK), *padded_params(epi, params, ob * ic.BLOCK)]
    if residual is not None:
        args.append(residual[1])
    out_shape = (n, o, oh, ow) if nchw else (n, ob, oh, ow, ic.BLOCK)
    return v, run_local(of, target, args, out_shape, epi.out_dtype)


def _numpy_v(x, zp, pad, m):
    """The input transform in NumPy, ``[a², N·th·tw, C]`` int64."""
    _, b, _ = winograd_matrices(m, integer=True)
    b = np.round(b).astype(np.int64)
    n, c, h, w = x.shape
    oh, ow = h + pad[0] + pad[2] - 2, w + pad[1] + pad[3] - 2
    th, tw = -(-oh // m), -(-ow // m)
    xp = np.zeros((n, c, th * m + 2, tw * m + 2), np.int64)
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w] = x.astype(np.int64) - zp
    out = np.zeros(((m + 2) ** 2, n, th, tw, c), np.int64)
    for ty in range(th):
        for tx in range(tw):
            d = xp[:, :, ty * m:ty * m + m + 2, tx * m:tx * m + m + 2]
            out[:, :, ty, tx] = np.einsum("ki,nckl,lj->ijnc", b, d, b).reshape((m + 2) ** 2, n, c)
    return out.reshape((m + 2) ** 2, n * th * tw, c)


KERNEL_CASES = {
    # name: (N, C, O, H, W, zero point, padding); C and O not multiples of 16, partial tiles
    "c24_o40_9x11_zp37": (2, 24, 40, 9, 11, 37, (1, 1, 1, 1)),
    "c32_o16_14x14_asym_pad": (1, 32, 16, 14, 14, 0, (0, 1, 2, 0)),
    "c256_o16_8x8_rounded": (1, 256, 16, 8, 8, 0, (1, 1, 1, 1)),
}


@pytest.mark.parametrize("epi_name", ["float", "requant_f32_relu_u8", "requant_relu_u8"])
@pytest.mark.parametrize("case_name", list(KERNEL_CASES))
@pytest.mark.parametrize("dot_name", list(PRODUCT_DOTS))
def test_winograd_kernels(host, dot_name, case_name, epi_name):
    target = _dot_target(host, dot_name)
    n, c, o, h, w_, zp, pad = KERNEL_CASES[case_name]
    m = 4
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (n, c, h, w_)).astype(np.uint8)
    w = rng.integers(-127, 128, (o, c, 3, 3)).astype(np.int8)
    bias = rng.integers(-3000, 3000, o).astype(np.int32)
    garbage = rng.integers(0, 256, (n, ic.BLOCK, h, w_)).astype(np.uint8)
    xb = to_blocked(x, ic.BLOCK, garbage)
    y = iw.reference(x, w, zp, pad, m)
    acc_b = y + bias[None, :, None, None]
    epi, params = epilogue_for(epi_name, np.round(acc_b).astype(np.int64), rng)
    oh, ow = y.shape[2:]
    nchw = epi.kind == "float"
    v, got = build_winograd(target, xb, w, zp, pad, m, epi, params, bias, n, oh, ow, nchw)
    cb = -(-c // ic.BLOCK)
    vr = v.reshape(36, cb, -1, ic.BLOCK).transpose(0, 2, 1, 3).reshape(36, -1, cb * ic.BLOCK)[:, :, :c]
    np.testing.assert_array_equal(vr, _numpy_v(x, zp, pad, m))
    if epi.kind == "float":
        ref = acc_b * params[0].astype(np.float64)[None, :, None, None]
        np.testing.assert_allclose(got, ref, rtol=0, atol=FLOAT_TOL * np.abs(ref).max())
        return
    if epi.kind == "requant_f32":
        ref = requant_f32_reference(acc_b, params[0], epi)
    else:
        ref = qmath.requantize(np.round(acc_b).astype(np.int64).transpose(0, 2, 3, 1), params[0], params[1],
                               epi.out_zp, epi.out_dtype, 8, relu=epi.act == "relu").transpose(0, 3, 1, 2)
    diff = np.abs(from_blocked(got, o).astype(np.int32) - ref.astype(np.int32))
    assert len(np.unique(ref)) > 16, "degenerate reference"
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (int(diff.max()), float((diff > 0).mean()))


@pytest.mark.parametrize("dot_name", list(PRODUCT_DOTS))
def test_winograd_fused_residual_nchw(host, dot_name):
    target = _dot_target(host, dot_name)
    n, c, o, h, w_ = 1, 16, 24, 10, 10
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (n, c, h, w_)).astype(np.uint8)
    w = rng.integers(-127, 128, (o, c, 3, 3)).astype(np.int8)
    bias = rng.integers(-3000, 3000, o).astype(np.int32)
    pad = (1, 1, 1, 1)
    acc_b = iw.reference(x, w, 0, pad, 4) + bias[None, :, None, None]
    scale = rng.uniform(1e-4, 1e-3, o).astype(np.float32)
    r = rng.standard_normal((n, o, h, w_)).astype(np.float32) * 20
    epi = Epilogue("float", "relu")
    res = ic.Residual("float32")
    _, got = build_winograd(target, to_blocked(x, ic.BLOCK, 0), w, 0, pad, 4, epi, [scale], bias, n, h, w_, True,
                            (res, to_blocked(r, ic.BLOCK, 0.0)))
    ref = np.maximum(acc_b * scale.astype(np.float64)[None, :, None, None] + r, 0)
    np.testing.assert_allclose(got, ref, rtol=0, atol=FLOAT_TOL * np.abs(ref).max())


@pytest.mark.parametrize("dot_name", list(PRODUCT_DOTS))
def test_product_kernel_instructions(dot_name):
    tname, instr = PRODUCT_DOTS[dot_name]
    target = get_target(tname)
    provider = get_provider(target)
    dot = provider.winograd_dot()
    f = provider.schedule_blocked_conv(iw.product_func(36, 4, 49, 4, provider.conv_reg_n(49, ic.BLOCK, dot)), dot)
    asm = tvm.compile(tvm.IRModule({"main": f}), target=target.tvm_target()).mod.inspect_source("asm")
    assert instr in asm


@pytest.mark.parametrize("oh,lanes,want", [(56, 16, 4), (28, 16, 4), (14, 16, 0), (14, 8, 4), (7, 8, 0), (7, 16, 0)])
def test_tile_rule(oh, lanes, want):
    assert iw.use_int_winograd(64, 64, oh, oh, lanes) == want
    assert iw.use_int_winograd(8, 64, oh, oh, lanes) == 0  # thin input: direct
    assert iw.use_int_winograd(iw.MAX_CHANNELS * 2, 64, oh, oh, lanes) == 0  # wide input: direct


# ---- the quantizer ----------------------------------------------------------------------------------
class Block(nn.Module):
    """A stem conv (3 input channels: direct) and a ResNet basic block at 32x32 (8x8 = 64 tiles of 4)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(torch.relu(self.b(self.a(y)) + y))


def _keep(seen: list):
    """A pass that keeps the module it sees (the realized one) in ``seen``."""

    def capture(mod):
        seen.append(mod)
        return mod

    return capture


def test_quantizer_takes_the_winograd(host, tmp_path):
    import hwcomp
    from hwcomp.frontend import load_model
    from hwcomp.quantize import QuantConfig
    from hwcomp.quantize.pipeline import Int8Quantizer
    from tests.quantize.test_int8_conv import _call_tir_bindings

    if get_provider(host).winograd_dot() is None:
        pytest.skip("this host's provider has no int16 pair dot")
    torch.manual_seed(0)
    model = Block().eval()
    shape = (1, 3, 32, 32)
    rng = np.random.default_rng(7)
    calib = [[rng.standard_normal(shape).astype(np.float32)] for _ in range(6)]
    imported = load_model(model, (torch.randn(*shape),))
    x = np.random.default_rng(99).standard_normal(shape).astype(np.float32)
    outs, reports, mods = {}, {}, {}
    for wino in (True, False):
        q = Int8Quantizer(host, QuantConfig(winograd=wino), calib, params=imported.params, progress=False)
        seen: list = []
        art = hwcomp.compile(imported, host, tmp_path / f"art{wino}",
                             options=hwcomp.CompileOptions(passes=[*q.passes(), _keep(seen)],
                                                           use_default_database=False, compression_summary=None))
        outs[wino], reports[wino], mods[wino] = art.run([x])[0], q.realizer.report, seen[0]
    kernels = {r["layer"]: r["kernel"] for r in reports[True] if r["kind"] == "conv2d"}
    assert [k for k, v in kernels.items() if "Winograd F(4, 3)" in v] == ["conv1", "conv2"], kernels
    assert not any("Winograd" in r["kernel"] for r in reports[False] if r["kind"] == "conv2d")
    bindings = _call_tir_bindings(mods[True])
    by_var = {str(var): (callee, args) for var, callee, args in bindings}  # identical kernels are shared
    stem = next(var for var, callee, _ in bindings if callee == "q_conv0")
    assert by_var["conv1_wino_v"][0].endswith("_wino_in")
    assert by_var["conv1_wino_v"][1][0].same_as(stem) and stem.ty.dtype == "uint8"  # the stem's blocked codes
    names = [callee for _, callee, _ in bindings]
    assert sum(n.startswith("q_quantize") for n in names) == 1 and not any(n.startswith("q_dequantize") for n in names)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert qmath.cosine(outs[True], outs[False]) >= MIN_COS_DIRECT, qmath.cosine(outs[True], outs[False])
    assert qmath.cosine(outs[True], ref) >= MIN_COS_FP32, qmath.cosine(outs[True], ref)
