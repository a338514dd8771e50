"""Int8 convolution in the blocked layout NCHW[x]c (``hwcomp.quantize.int8_conv``, the schedules of
``hwcomp.schedules.cpu.int8_conv``), ``FoldBatchNorm``, and the quantizer's use of both.

What is checked, and how exactly:

* kernels (x86, built for and run on this host): the blocked int8 conv through the provider's own
  schedule, for each AVX2 dot step -- 7-bit weights: the provider's ``vpmaddubsw`` step (since
  e8f2b64 the 8x8 one that adds two exact pair sums in int16 with saturation) and the exact 8x4
  ``vpmaddubsw`` step; 8-bit weights: ``vpmaddwd`` 8x2; AVX-512 VNNI 16x4 where the host has it
  -- against an int64 NumPy convolution written here (for the saturating step the same sums with
  the documented ``sat16(p01 + p45) + sat16(p23 + p67)`` per tap and 8-channel group):
  requantizing epilogues **bit for bit** (the blocked output unblocked, padded channels dropped);
  the float epilogue (NCHW float32 out) within a relative 1e-5 of the float64
  ``act((acc + bias) * scale)`` (float32 rounding of the product only). Padded input-channel
  lanes hold garbage, so a kernel that reads them with a non-zero weight fails. Each step's
  kernel is also checked for its instructions in the assembly;
* the depthwise kernel bit for bit the same way; ``quantize_blocked_func`` /
  ``dequantize_blocked_func`` / ``block_int_func`` bit for bit against ``qmath`` (padded lanes hold
  the zero point);
* ``FoldBatchNorm``: no ``relax.nn.batch_norm`` left, and the compiled module matches PyTorch within
  1e-4 of the output's largest magnitude;
* the int8 pipeline on small CNNs (``Int8Quantizer`` through ``hwcomp.compile``): the realize report
  names the blocked int8 conv kernel for every conv; in the module after the quantize passes
  consecutive int8 convs hand each other their blocked uint8 output directly (no
  ``q_dequantize*``/``q_quantize*`` between them); the compiled int8 output has cosine >= 0.99
  with PyTorch's fp32 output on a fixed-seed input that was not in the calibration set;
* AArch64 (``board`` marker): the kernel cross-compiled for rpi4 (NEON ``smull``) and rpi5
  (``sdot``) runs on the emulated board bit for bit against the same reference (skipped when the
  board cannot run here); the instruction choice itself is checked from the assembly without it.
"""

from __future__ import annotations

import dataclasses
import gc
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from hwcomp.schedules.cpu.int8_conv import (
    int8_reg_n,
    int8_rows_outer,
    schedule_conv_nchwc_int8,
)
from hwcomp.schedules.int8_base import ConvDot
from torch import nn

from hwcomp.quantize import int8_conv as ic
from hwcomp.quantize import qmath
from hwcomp.quantize.int8_compute import Epilogue, get_provider
from hwcomp.target import get_target

FLOAT_RTOL = 1e-5  # float epilogue vs float64 (acc + bias) * scale
FOLD_TOL = 1e-4  # FoldBatchNorm vs PyTorch, relative to max |ref|
MIN_COSINE = 0.99  # int8 pipeline vs fp32


# ---- shared helpers --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Conv:
    c: int
    o: int
    h: int
    w: int
    k: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (1, 1, 1, 1)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    n: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = self.k, self.stride, self.pad, self.dilation
        return ic.out_size(self.h, kh, sh, dh, pt, pb), ic.out_size(self.w, kw, sw, dw, pl, pr)


def ref_conv(x: np.ndarray, w: np.ndarray, case: Conv, pad_value: int, groups: int = 1,
             sat16: bool = False) -> np.ndarray:
    """int64 ``[N, O, OH, OW]`` accumulator of ``x [N, C, H, W]`` (padding holds ``pad_value``) and
    ``w [O, C/groups, KH, KW]``; groups is 1 or C (depthwise). ``sat16``: AVX2's saturating dot step
    -- per kernel tap and 8-channel group ``c = 8g + j``, lane products ``p_j``, the exact pair sums
    of each 4-byte half are added in int16 with saturation: ``sat16(p0+p1 + p4+p5) + sat16(p2+p3 + p6+p7)``."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = case.k, case.stride, case.pad, case.dilation
    oh, ow = case.out_hw
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    w = w.astype(np.int64)
    n, c = x.shape[:2]
    acc = np.zeros((n, w.shape[0], oh, ow), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dh, kx * dw
            patch = xp[:, :, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw]
            if groups != 1:
                acc += patch * w[None, :, 0, ky, kx, None, None]
            elif not sat16:
                acc += np.einsum("nchw,oc->nohw", patch, w[:, :, ky, kx])
            else:
                cp = -(-c // 8) * 8  # zero weights past C
                wk = np.zeros((w.shape[0], cp), np.int64)
                wk[:, :c] = w[:, :, ky, kx]
                pp = np.zeros((n, cp, oh, ow), np.int64)
                pp[:, :c] = patch
                prod = (pp[:, None] * wk[None, :, :, None, None]).reshape(n, w.shape[0], cp // 8, 8, oh, ow)
                even = prod[:, :, :, [0, 1, 4, 5]].sum(axis=3)
                odd = prod[:, :, :, [2, 3, 6, 7]].sum(axis=3)
                acc += (np.clip(even, -32768, 32767) + np.clip(odd, -32768, 32767)).sum(axis=2)
    return acc


def to_blocked(x: np.ndarray, block: int, fill) -> np.ndarray:
    """``[N, C, H, W]`` → ``[N, C/block, H, W, block]``; the padded channels hold ``fill`` (an array
    of the padded shape's garbage or a scalar)."""
    n, c, h, w = x.shape
    cp = -(-c // block) * block
    out = np.empty((n, cp, h, w), x.dtype)
    out[:, c:] = fill if np.isscalar(fill) else fill[:, : cp - c]
    out[:, :c] = x
    return np.ascontiguousarray(out.reshape(n, cp // block, block, h, w).transpose(0, 1, 3, 4, 2))


def from_blocked(y: np.ndarray, c: int) -> np.ndarray:
    n, cb, h, w, x = y.shape
    return y.transpose(0, 1, 4, 2, 3).reshape(n, cb * x, h, w)[:, :c]


def run_local(func, target, args: list[np.ndarray], out_shape, out_dtype) -> np.ndarray:
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target())
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    ex.mod(*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args], out)
    return out.numpy()


def act_range(dtype: str) -> tuple[int, int]:
    return (0, 255) if dtype == "uint8" else (-128, 127)


EPILOGUES = {
    # name: (kind, act, out dtype, out zero point)
    "requant_relu_u8": ("requant", "relu", "uint8", 0),
    "requant_i8_zp": ("requant", None, "int8", -3),
    "requant_f32_relu_u8": ("requant_f32", "relu", "uint8", 0),  # x86's conv requantization
    # x86's as realized (KernelProvider.lrint_requant): llvm.lrint, then the clamp in int32
    "requant_f32_relu_u8_lrint": ("requant_f32", "relu", "uint8", 0, True),
    "requant_f32_i8_zp_lrint": ("requant_f32", None, "int8", -3, True),
    "float_relu": ("float", "relu", "float32", 0),
    "float": ("float", None, "float32", 0),
}


def epilogue_for(name: str, acc: np.ndarray, rng) -> tuple[Epilogue, list[np.ndarray]]:
    """The epilogue and its per-channel parameters (unpadded) for the int64 ``acc + bias``: the
    requantizing multipliers map each channel's largest |value| a little past the code range, so
    both the rounding and the clamp are exercised."""
    kind, act, dtype, zp, *lrint = EPILOGUES[name]
    o = acc.shape[1]
    if kind == "requant":
        lo, hi = qmath.qrange(dtype)
        amax = np.maximum(np.abs(acc).max(axis=(0, 2, 3)), 1).astype(np.float64)
        m = (hi - lo) * 0.6 / amax * rng.uniform(0.8, 1.2, o)
        mult, shift = qmath.fixed_point(m)
        return Epilogue("requant", act, dtype, 0.1, zp, 8), [mult.astype(np.int32), shift.astype(np.int32)]
    if kind == "requant_f32":
        lo, hi = qmath.qrange(dtype)
        amax = np.maximum(np.abs(acc).max(axis=(0, 2, 3)), 1).astype(np.float64)
        m = ((hi - lo) * 0.6 / amax * rng.uniform(0.8, 1.2, o)).astype(np.float32)
        return Epilogue("requant_f32", act, dtype, 0.1, zp, 8, lrint=bool(lrint)), [m]
    scale = rng.uniform(1e-4, 1e-2, o).astype(np.float32)
    return Epilogue("float", act), [scale]


def padded_params(epi: Epilogue, params: list[np.ndarray], n_pad: int) -> list[np.ndarray]:
    if epi.kind in ("requant", "float_requant"):
        return [ic.pad_channels(params[0], n_pad), ic.pad_channels(params[1], n_pad, 1)]
    return [ic.pad_channels(params[0], n_pad)]


def requant_f32_reference(acc_b: np.ndarray, mult: np.ndarray, epi: Epilogue) -> np.ndarray:
    """``requant_f32`` in NumPy float32: round half to even of ``float32(acc + bias) * mult``."""
    lo, hi = epi.qrange
    y = acc_b.astype(np.float32) * mult.astype(np.float32)[None, :, None, None]
    return np.clip(np.round(y) + np.float32(epi.out_zp), lo, hi).astype(epi.out_dtype)


def check_output(got: np.ndarray, acc_b: np.ndarray, epi: Epilogue, params: list[np.ndarray], c: int):
    """Compare a kernel's output (blocked for requant, NCHW for float) with the reference."""
    if epi.kind == "requant_f32":  # float32 arithmetic: LLVM may contract or reorder; within one code
        ref = requant_f32_reference(acc_b, params[0], epi)
        diff = np.abs(from_blocked(got, c).astype(np.int32) - ref.astype(np.int32))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (int(diff.max()), float((diff > 0).mean()))
        return
    if epi.kind == "requant":
        ref = qmath.requantize(acc_b.transpose(0, 2, 3, 1), params[0], params[1], epi.out_zp, epi.out_dtype, 8,
                               relu=epi.act == "relu").transpose(0, 3, 1, 2)
        got = from_blocked(got, c)
        assert got.dtype == ref.dtype
        assert len(np.unique(ref)) > min(16, ref.size // 4), "degenerate reference"
        bad = np.argwhere(got != ref)
        assert bad.size == 0, (f"{len(bad)} of {ref.size} codes differ; first at {tuple(bad[0])}: got "
                               f"{got[tuple(bad[0])]}, expected {ref[tuple(bad[0])]} (acc+bias {acc_b[tuple(bad[0])]})")
        return
    ref = acc_b.astype(np.float64) * params[0].astype(np.float64)[None, :, None, None]
    if epi.act == "relu":
        ref = np.maximum(ref, 0.0)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=FLOAT_RTOL, atol=0)


@dataclasses.dataclass
class Problem:
    """One blocked conv kernel with its inputs and the reference accumulator."""

    func: object
    args: list
    out_shape: tuple
    out_dtype: str
    acc_b: np.ndarray  # int64 acc + bias, NCHW, real channels, as the dot step computes it
    exact: np.ndarray  # int64 acc + bias of the exact convolution
    epi: Epilogue
    params: list
    channels: int


def conv_problem(provider, case: Conv, dot, epi_name, a_dtype: str, w_absmax: int, seed: int = 0,
                 x_override=None, w_override=None, residual=None, nchw=None) -> Problem:
    """A blocked int8 conv for ``provider`` / ``dot`` (what ``realize_conv.emit_blocked_conv`` builds),
    random codes (activations over the dtype's full range, weights in ``[-w_absmax, w_absmax]``)."""
    rng = np.random.default_rng(seed)
    kb, halves = dot.kb, dot.halves
    lo, hi = act_range(a_dtype)
    x = rng.integers(lo, hi + 1, (case.n, case.c, case.h, case.w)).astype(a_dtype) if x_override is None \
        else x_override
    w = rng.integers(-w_absmax, w_absmax + 1, (case.o, case.c, *case.k)).astype(np.int8) if w_override is None \
        else w_override
    bias = rng.integers(-3000, 3000, case.o).astype(np.int32)
    pad_value = int(rng.integers(lo, hi + 1)) // 4  # the input zero point
    xi = ic.in_block(case.c, kb)
    garbage = rng.integers(lo, hi + 1, (case.n, xi, case.h, case.w)).astype(a_dtype)
    xb = to_blocked(x, xi, garbage)
    exact = ref_conv(x, w, case, pad_value) + bias[None, :, None, None]
    acc_b = ref_conv(x, w, case, pad_value, sat16=True) + bias[None, :, None, None] if halves == 2 else exact
    # epi_name: an EPILOGUES name, or a function of the accumulator giving (Epilogue, params)
    epi, params = epilogue_for(epi_name, acc_b, rng) if isinstance(epi_name, str) else epi_name(acc_b)
    oh, ow = case.out_hw
    reg_n = provider.conv_reg_n(ow, xi, dot, case.k[1], case.dilation[1])
    taps = provider.conv_weight_taps(ow, case.k[1], case.dilation[1], xi, dot)
    nchw = epi.kind == "float" if nchw is None else nchw
    func = ic.conv2d_nchwc_int8_func(xb.shape, case.o, case.k, case.stride, case.pad, case.dilation, a_dtype, epi,
                                     pad_value, kb, reg_n, nchw, halves, residual, taps)
    func = provider.schedule_blocked_conv(func, dot)
    n_pad = -(-case.o // ic.BLOCK) * ic.BLOCK
    args = [xb, ic.pack_conv_weight(w, xi, ic.BLOCK, kb, halves, taps), ic.pad_channels(bias, n_pad),
            *padded_params(epi, params, n_pad)]
    out_shape = (case.n, case.o, oh, ow) if nchw else (case.n, n_pad // ic.BLOCK, oh, ow, ic.BLOCK)
    return Problem(func, args, out_shape, epi.out_dtype, acc_b, exact, epi, params, case.o)


# ---- x86 providers ---------------------------------------------------------------------------------
DOTS = {
    # name: (target whose provider has it, largest weight code); the dot is that provider's conv_dot
    "avx2_7bit": ("x86-avx2", 64),  # the provider's vpmaddubsw step for 7-bit weights (8x8, saturating)
    "avx2_8bit": ("x86-avx2", 127),  # vpmaddwd s16 x s16, 8x2, exact
    "avx2_u8s7_8x4": ("x86-avx2", 64),  # the 8x4 vpmaddubsw intrinsic itself (exact: 2 * 255 * 64 < 2^15)
    "vnni_16x4": ("x86-avx512-vnni", 127),
}


def dot_of(provider, dot_name: str) -> ConvDot:
    """The named dot step: the provider's own for the weight width, or the 8x4 ``vpmaddubsw`` step
    (registered, no longer what the provider picks for convs since e8f2b64)."""
    if dot_name == "avx2_u8s7_8x4":
        from hwcomp.schedules.x86.int8 import AVX2_U8S7

        return ConvDot(8, 4, AVX2_U8S7)
    return provider.conv_dot(DOTS[dot_name][1])


def x86_dot(host, dot_name: str):
    """``(target, provider, dot)``: the host's own provider where it is the one that has this dot
    step, else the named target where this CPU runs its code (AVX2 code on an AVX-512 host), else skip."""
    name = DOTS[dot_name][0]
    if host.arch != "x86_64":
        pytest.skip("x86 kernels on an x86 host only")
    if name == "x86-avx512-vnni" and host.int8_dot != "vnni":
        pytest.skip("this host has no AVX-512 VNNI")
    if "avx2" not in host.features:
        pytest.skip("this host has no AVX2")
    hp = get_provider(host)
    target, provider = (host, hp) if hp.name == get_provider(get_target(name)).name else \
        (get_target(name), get_provider(get_target(name)))
    return target, provider, dot_of(provider, dot_name)


def test_host_provider_dot_steps(host):
    """On an AVX2 host without VNNI (this project's Zen hosts) the host provider itself takes both
    AVX2 steps (so the kernel tests below test the host's kernels): a ``vpmaddubsw`` one for 7-bit
    weights, the s16 8x2 one for 8-bit weights."""
    if host.arch != "x86_64" or host.int8_dot == "vnni" or "avx2" not in host.features:
        pytest.skip("checks the AVX2 host provider")
    p = get_provider(host)
    assert p.name == "x86-avx2" and p.act_dtypes == ("uint8",)
    seven, eight = p.conv_dot(64), p.conv_dot(65)
    assert "u8s7" in seven.intrin and seven.lanes == 8, seven
    assert (eight.lanes, eight.kb, eight.halves) == (8, 2, 1) and eight.intrin.endswith("u8s8s32_8x2"), eight
    assert p.conv_dot(127) == eight
    assert p.conv_weight_bits(8) == 7 and p.conv_weight_bits(8, reduce_range=False) == 8


ASM = {
    # dot step: instructions its kernel must contain
    "avx2_7bit": ("vpmaddubsw", "vpaddsw", "vpmaddwd"),
    "avx2_u8s7_8x4": ("vpmaddubsw", "vpmaddwd"),
    "avx2_8bit": ("vpmaddwd", "vpmovsxbw"),
    "vnni_16x4": ("vpdpbusd",),
}


@pytest.mark.parametrize("dot_name", list(ASM))
def test_x86_dot_steps_emit_their_instructions(dot_name):
    """Each step's kernel is built from its instructions (compiled only: VNNI needs no VNNI host)."""
    target = get_target(DOTS[dot_name][0])
    provider = get_provider(target)
    p = conv_problem(provider, Conv(16, 16, 5, 7), dot_of(provider, dot_name), "requant_relu_u8", "uint8",
                     DOTS[dot_name][1])
    asm = tvm.compile(tvm.IRModule({"main": p.func}), target=target.tvm_target()).mod.inspect_source("asm")
    for instr in ASM[dot_name]:
        assert re.search(rf"\b{instr}\b", asm), f"no {instr} in the {dot_name} kernel"


def test_x86_requantizes_with_one_convert():
    """x86's float requantization as realized (``Epilogue.lrint``) rounds with ``vcvtps2dq`` and leaves
    the clamp to the saturating packs: no ``vroundps`` and no float max in the epilogue (the float
    path has both); its values are checked by ``test_blocked_conv_x86_other_epilogues``."""
    target = get_target("x86-avx2")
    provider = get_provider(target)
    assert provider.lrint_requant
    asm = {}
    for name in ("requant_f32_relu_u8", "requant_f32_relu_u8_lrint"):
        p = conv_problem(provider, Conv(16, 16, 5, 7), dot_of(provider, "avx2_7bit"), name, "uint8", 63)
        asm[name] = tvm.compile(tvm.IRModule({"main": p.func}), target=target.tvm_target()).mod.inspect_source("asm")
    assert re.search(r"\bvroundps\b", asm["requant_f32_relu_u8"])
    assert re.search(r"\bvcvtps2dq\b", asm["requant_f32_relu_u8_lrint"])
    assert not re.search(r"\bvroundps\b|\bvmaxps\b|\bvcmpltps\b", asm["requant_f32_relu_u8_lrint"])


CONV_CASES = {
    "3x3_s1_p1": Conv(16, 32, 9, 9),
    "3x3_s2_p1": Conv(16, 16, 10, 11, stride=(2, 2)),
    "1x1": Conv(32, 48, 7, 7, k=(1, 1), pad=(0, 0, 0, 0)),
    "1x1_s2": Conv(16, 32, 8, 8, k=(1, 1), stride=(2, 2), pad=(0, 0, 0, 0)),
    "stem_7x7_s2_p3_c3": Conv(3, 16, 20, 20, k=(7, 7), stride=(2, 2), pad=(3, 3, 3, 3)),
    "dilation2": Conv(16, 16, 10, 10, pad=(2, 2, 2, 2), dilation=(2, 2)),
    "c24_o40": Conv(24, 40, 8, 8),
    "ow7": Conv(16, 16, 5, 7),
    "ow13_c20_o36": Conv(20, 36, 4, 13),
    "out_1x1_spatial": Conv(16, 32, 3, 3, pad=(0, 0, 0, 0)),
    "batch2": Conv(16, 24, 6, 6, n=2),
    "asym_pad_rect_kernel": Conv(8, 20, 6, 9, k=(1, 3), stride=(1, 2), pad=(0, 1, 1, 2)),
}


def test_ragged_cases_really_are_ragged():
    """The ``ow*`` cases leave a partial register tile on every AVX2 row (the padded-tile path)."""
    for name in ("ow7", "ow13_c20_o36"):
        ow = CONV_CASES[name].out_hw[1]
        assert ow % int8_reg_n(ow, 2, 16) != 0, name


X86_MATRIX = [(d, c, e) for d in ("avx2_7bit", "avx2_8bit", "avx2_u8s7_8x4") for c in CONV_CASES
              for e in ("requant_relu_u8", "float_relu") if d != "avx2_u8s7_8x4" or e == "requant_relu_u8"]
X86_MATRIX += [("avx2_7bit", c, "requant_f32_relu_u8") for c in ("3x3_s1_p1", "ow13_c20_o36")]


@pytest.mark.parametrize("dot_name,case_name,epi_name", X86_MATRIX)
def test_blocked_conv_x86(host, dot_name, case_name, epi_name):
    target, provider, dot = x86_dot(host, dot_name)
    case = CONV_CASES[case_name]
    p = conv_problem(provider, case, dot, epi_name, "uint8", DOTS[dot_name][1])
    got = run_local(p.func, target, p.args, p.out_shape, p.out_dtype)
    check_output(got, p.acc_b, p.epi, p.params, p.channels)


def test_rows_outer_rule():
    """Row tasks where the rows split evenly over the cores and the weights stay in L2."""
    assert int8_rows_outer(14, 512 * 1024, 2) and int8_rows_outer(56, 16 * 1024, 2)
    assert not int8_rows_outer(7, 64 * 1024, 2)  # 4 + 3 rows: the second core idles an eighth
    assert not int8_rows_outer(14, 2304 * 1024, 2)  # 3x3 512->512: weights past L2
    assert not int8_rows_outer(56, 16 * 1024, 16) and int8_rows_outer(64, 16 * 1024, 16)
    assert not int8_rows_outer(3, 1024, 2)


class _WithCores:
    """A provider whose blocked convs are scheduled for ``cores`` cores (the task order's input)."""

    def __init__(self, provider, cores: int):
        self.provider, self.cores = provider, cores

    def __getattr__(self, name):
        return getattr(self.provider, name)

    def schedule_blocked_conv(self, func, dot, depthwise: bool = False):
        return schedule_conv_nchwc_int8(func, dot.lanes, dot.intrin, 256, self.cores)


@pytest.mark.parametrize("case_name", ["1x1_s2", "3x3_s1_p1", "batch2"])
@pytest.mark.parametrize("cores", [1, 64])
def test_blocked_conv_task_orders(host, case_name, cores):
    """Both task orders give the exact conv: rows over all channel blocks (1 core) and (block, row)
    pairs (64 cores: too few rows); the parallel loop's extent shows which one was built."""
    target, provider, dot = x86_dot(host, "avx2_7bit")
    case = CONV_CASES[case_name]
    p = conv_problem(_WithCores(provider, cores), case, dot, "requant_relu_u8", "uint8", 64)
    rows = case.n * case.out_hw[0]
    blocks = -(-case.o // ic.BLOCK)
    # the last parallel loop is the conv's (a padding stage runs before it)
    assert re.findall(r"T\.parallel\((?:T\.int64\()?(\d+)", p.func.script())[-1] == str(
        rows if cores == 1 else rows * blocks)
    got = run_local(p.func, target, p.args, p.out_shape, p.out_dtype)
    check_output(got, p.acc_b, p.epi, p.params, p.channels)


# ---- AMX (schedules/x86/amx.py) ---------------------------------------------------------------------
AMX_CASES = {**CONV_CASES,
             "amx_two_pixel_tiles": Conv(32, 32, 4, 28),  # 14-pixel tiles, two per register block
             "amx_s2_two_tiles": Conv(16, 32, 5, 56, stride=(2, 2)),  # strided tile loads
             "amx_ow17_vnni": Conv(16, 16, 3, 17),  # no tile height divides 17: the VNNI kernel
             # VNNI's 7-pixel tiles pad 34 to 35, which a 7-row tile divides: still VNNI (the padded
             # column would be loaded past the input's end)
             "amx_ow34_vnni": Conv(16, 16, 1, 34, k=(1, 1), pad=(0, 0, 0, 0)),
             "amx_5x5_narrow": Conv(16, 32, 8, 14, k=(5, 5), pad=(2, 2, 2, 2)),  # 80-byte rows: one tap
             "amx_1x1_c8_vnni": Conv(8, 16, 4, 14, k=(1, 1), pad=(0, 0, 0, 0))}


def _amx_applies(case: Conv) -> bool:
    from hwcomp.schedules.x86.amx import amx_conv_plan

    return amx_conv_plan(case.out_hw[1], case.k[1], case.dilation[1], ic.in_block(case.c, 4)) is not None


def test_amx_cases_cover_both_paths():
    """The AMX matrix has convs the tile kernel takes (one and two pixel tiles, odd block counts,
    strides, dilation, batch 2, a kernel row read as one tile row of 16/32/64 bytes: the 3-channel
    7x7 stem, 8-channel 1x3, 16-channel 3x3) and ones it leaves to VNNI (width 17 or 34, a 1x1 conv
    on 8-channel blocks)."""
    from hwcomp.schedules.x86.amx import amx_conv_plan, amx_tiles

    taken = [n for n, c in AMX_CASES.items() if _amx_applies(c)]
    assert {"3x3_s2_p1", "dilation2", "batch2", "amx_two_pixel_tiles", "amx_s2_two_tiles",
            "stem_7x7_s2_p3_c3", "asym_pad_rect_kernel", "amx_5x5_narrow"} <= set(taken)
    assert {"amx_ow17_vnni", "amx_ow34_vnni", "amx_1x1_c8_vnni"}.isdisjoint(taken)
    assert amx_tiles(56) == (14, 2) and amx_tiles(7) == (7, 1) and amx_tiles(17) is None
    assert amx_conv_plan(112, 7, 1, 4) == (16, 1, 8) and amx_conv_plan(56, 3, 1, 16) == (14, 2, 4)
    assert amx_conv_plan(56, 3, 2, 16) == (14, 2, 3) and amx_conv_plan(56, 5, 1, 16) == (14, 2, 5)


@pytest.mark.parametrize("case_name", list(AMX_CASES))
@pytest.mark.parametrize("epi_name", ["requant_relu_u8", "float_relu"])
def test_blocked_conv_amx(host, case_name, epi_name):
    """On a host with AMX the VNNI dot step's convs run on the tile unit, bit for bit the exact
    convolution (``tdpbusd`` accumulates exactly in int32); where no tile fits, the VNNI kernel."""
    provider = get_provider(host)
    if not getattr(provider, "amx", False):
        pytest.skip("this host has no AMX (or LLVM cannot emit it)")
    case = AMX_CASES[case_name]
    dot = provider.conv_dot(127)
    p = conv_problem(provider, case, dot, epi_name, "uint8", 127)
    ex = tvm.compile(tvm.IRModule({"main": p.func}), target=host.tvm_target())
    assert bool(re.search(r"\btdpbusd\b", ex.mod.inspect_source("asm"))) == _amx_applies(case)
    got = run_local(p.func, host, p.args, p.out_shape, p.out_dtype)
    check_output(got, p.acc_b, p.epi, p.params, p.channels)


def test_amx_kernel_cross_compiles():
    """The shipped ``x86-amx`` target (Sapphire Rapids) builds the tile kernel on any machine."""
    target = get_target("x86-amx")
    provider = get_provider(target)
    assert provider.amx
    p = conv_problem(provider, Conv(32, 32, 4, 28), provider.conv_dot(127), "requant_relu_u8", "uint8", 127)
    asm = tvm.compile(tvm.IRModule({"main": p.func}), target=target.tvm_target()).mod.inspect_source("asm")
    for instr in ("ldtilecfg", "tileloadd", "tdpbusd", "tilestored", "tilerelease"):
        assert re.search(rf"\b{instr}\b", asm), f"no {instr} in the AMX kernel"


@pytest.mark.parametrize("epi_name", ["requant_i8_zp", "float", "requant_f32_relu_u8_lrint", "requant_f32_i8_zp_lrint"])
@pytest.mark.parametrize("dot_name", list(DOTS))
def test_blocked_conv_x86_other_epilogues(host, dot_name, epi_name):
    """Signed output with a zero point and no activation, plain float output, and x86's float
    requantization as realized (``llvm.lrint``; its multipliers take codes past both ends of the
    range, so the int32 clamp is exercised); every dot step."""
    target, provider, dot = x86_dot(host, dot_name)
    p = conv_problem(provider, CONV_CASES["ow13_c20_o36"], dot, epi_name, "uint8", DOTS[dot_name][1], seed=5)
    got = run_local(p.func, target, p.args, p.out_shape, p.out_dtype)
    check_output(got, p.acc_b, p.epi, p.params, p.channels)


def test_nchw_float_epilogue_runs_on_channel_vectors(host):
    """A conv whose float output leaves NCHW (for a float consumer: squeeze-excite, LayerNorm, the
    head) still computes its epilogue one vector of the block's channels per pixel, as the blocked
    outputs do: the output block's innermost loop is the vectorized channel loop (before, the pixels
    were innermost and unrolled, a scalar epilogue: 1.08x slower int8 EfficientNet-B0). Its values
    are checked by ``test_blocked_conv_x86_other_epilogues`` (``float``)."""
    from tvm import s_tir, tirx

    _, provider, dot = x86_dot(host, "avx2_7bit")  # the AVX2 step runs on every x86 host here
    p = conv_problem(provider, CONV_CASES["ow13_c20_o36"], dot, "float", "uint8", 127, seed=5)
    sch = s_tir.Schedule(p.func)
    loops = sch.get_loops(sch.get_sblock("out"))
    inner = sch.get(loops[-1])
    assert len(p.out_shape) == 4 and inner.kind == tirx.ForKind.VECTORIZED and int(inner.extent) == ic.BLOCK


@pytest.mark.parametrize("res_dtype", ["uint8", "float32"])
@pytest.mark.parametrize("out", ["requant_relu_u8", "requant_relu_u8_lrint", "requant_relu_u8_zp128_lrint",
                                 "float_blocked", "float_nchw"])
@pytest.mark.parametrize("dot_name", ["avx2_7bit", "vnni_16x4"])  # vnni: AMX tiles on an AMX host
def test_blocked_conv_x86_fused_residual(host, res_dtype, out, dot_name):
    """A residual add in the epilogue, ``y = relu(float(acc + bias) * scale + r)``, with ``r`` blocked
    like the output: int8 codes with a zero point and scale (the block input, a previous conv's int8
    output) or float32 (another conv's float output); ``y`` requantized (``float_requant``), float32
    blocked or float32 NCHW. Float32 arithmetic: within one code / FLOAT_RTOL of float64."""
    target, provider, dot = x86_dot(host, dot_name)
    case = CONV_CASES["ow13_c20_o36"]
    rng = np.random.default_rng(8)
    oh, ow = case.out_hw
    n_pad = -(-case.o // ic.BLOCK) * ic.BLOCK
    rshape = (case.n, n_pad // ic.BLOCK, oh, ow, ic.BLOCK)
    scale = rng.uniform(1e-4, 1e-3, case.o).astype(np.float32)
    if res_dtype == "uint8":
        res = ic.Residual("uint8", 0.043, 37)
        r = rng.integers(0, 256, rshape).astype(np.uint8)
        r_f = (r.astype(np.float64) - res.zp) * np.float64(np.float32(res.scale))
    else:
        res = ic.Residual()
        r = rng.standard_normal(rshape).astype(np.float32) * 4
        r_f = r.astype(np.float64)
    out_scale = 0.3
    out_zp = 128 if "zp128" in out else 0  # the ReLU is then the clamp at code 128, not at 0

    def epilogue(acc_b):
        if out.startswith("requant_relu_u8"):
            return (Epilogue("float_requant", "relu", "uint8", out_scale, out_zp, 8, lrint=out.endswith("lrint")),
                    [scale, np.full(case.o, 1 / out_scale, np.float32)])
        return Epilogue("float", "relu"), [scale]

    p = conv_problem(provider, case, dot, epilogue, "uint8", DOTS[dot_name][1], seed=8, residual=res,
                     nchw=out == "float_nchw")
    out_shape = (case.n, case.o, oh, ow) if out == "float_nchw" else rshape
    got = run_local(p.func, target, [*p.args, r], out_shape, p.out_dtype)
    ref = np.maximum(p.acc_b * scale.astype(np.float64)[None, :, None, None] + from_blocked(r_f, case.o), 0)
    assert np.abs(ref).max() > 1 and (ref == 0).mean() < 0.9, "degenerate reference"
    if out.startswith("requant_relu_u8"):
        q = np.clip(np.round(ref / out_scale) + out_zp, 0, 255)
        diff = np.abs(from_blocked(got, case.o).astype(np.int32) - q.astype(np.int32))
        assert got.dtype == np.uint8 and diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
        return
    got = got if out == "float_nchw" else from_blocked(got, case.o)
    np.testing.assert_allclose(got, ref, rtol=FLOAT_RTOL, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("dot_name", ["avx2_7bit", "avx2_u8s7_8x4", "avx2_8bit"])
def test_blocked_conv_x86_extreme_codes(host, dot_name):
    """All-255 activations against weights at the step's limit: +-64 for 7-bit weights (one
    ``vpmaddubsw`` pair sum reaches 2 * 255 * 64 = 32640, just inside int16: the 8x4 step stays
    exact, the saturating 8x8 step clamps two of them at 32767 as modelled), -128..127 for the
    s16 step (exact)."""
    target, provider, dot = x86_dot(host, dot_name)
    case = Conv(32, 16, 5, 6)
    rng = np.random.default_rng(7)
    x = np.full((1, 32, 5, 6), 255, np.uint8)
    x[:, :, 2, 3] = rng.integers(0, 256, 32)
    if DOTS[dot_name][1] == 64:
        w = np.where(rng.random((16, 32, 3, 3)) < 0.5, 64, -64).astype(np.int8)
        w[::2] = 64  # whole channels of +64: every pair sum at 32640
    else:
        w = np.where(rng.random((16, 32, 3, 3)) < 0.5, 127, -128).astype(np.int8)
        w[::2] = -128
    p = conv_problem(provider, case, dot, "float", "uint8", 64, x_override=x, w_override=w)
    assert (not np.array_equal(p.acc_b, p.exact)) == (dot.halves == 2)
    got = run_local(p.func, target, p.args, p.out_shape, p.out_dtype)
    check_output(got, p.acc_b, p.epi, p.params, p.channels)


def test_reference_conv_agrees_with_this_model():
    """hwcomp's own NumPy reference (``int8_conv.reference_conv``) computes this file's sums, exact
    and saturating; and uniform codes with 7-bit weights do saturate the 8x8 step."""
    case = Conv(20, 12, 7, 9, stride=(2, 1), pad=(1, 0, 2, 1), dilation=(1, 2))
    rng = np.random.default_rng(17)
    x = rng.integers(0, 256, (2, 20, 7, 9)).astype(np.uint8)
    w = rng.integers(-64, 65, (12, 20, 3, 3)).astype(np.int8)
    exact, sat = ref_conv(x, w, case, 5), ref_conv(x, w, case, 5, sat16=True)
    for halves, mine in ((1, exact), (2, sat)):
        theirs = ic.reference_conv(x, w, case.stride, case.pad, case.dilation, 5, halves)
        np.testing.assert_array_equal(theirs.astype(np.int64), mine)
    assert 0 < (exact != sat).mean() < 0.5


# ---- depthwise -------------------------------------------------------------------------------------
DW_CASES = {
    "3x3_s1_c40": Conv(40, 40, 9, 9),
    "3x3_s2_c24": Conv(24, 24, 11, 11, stride=(2, 2)),
    "5x5_c40": Conv(40, 40, 7, 7, k=(5, 5), pad=(2, 2, 2, 2)),
    "3x3_s2_c24_batch2": Conv(24, 24, 8, 8, stride=(2, 2), n=2),
}


@pytest.mark.parametrize("epi_name", ["requant_relu_u8", "requant_f32_relu_u8", "requant_f32_relu_u8_lrint", "float_relu"])
@pytest.mark.parametrize("case_name", list(DW_CASES))
def test_depthwise_x86(host, case_name, epi_name):
    if host.arch != "x86_64":
        pytest.skip("x86 host")
    provider = get_provider(host)
    a_dtype = provider.act_dtypes[0]
    case = DW_CASES[case_name]
    rng = np.random.default_rng(11)
    lo, hi = act_range(a_dtype)
    x = rng.integers(lo, hi + 1, (case.n, case.c, case.h, case.w)).astype(a_dtype)
    w = rng.integers(-127, 128, (case.c, 1, *case.k)).astype(np.int8)
    bias = rng.integers(-3000, 3000, case.c).astype(np.int32)
    pad_value = 9
    garbage = rng.integers(lo, hi + 1, (case.n, ic.BLOCK, case.h, case.w)).astype(a_dtype)
    xb = to_blocked(x, ic.BLOCK, garbage)
    acc_b = ref_conv(x, w, case, pad_value, groups=case.c) + bias[None, :, None, None]
    epi, params = epilogue_for(epi_name, acc_b, rng)
    oh, ow = case.out_hw
    nchw = epi.kind == "float"
    func = ic.depthwise_nchwc_int8_func(xb.shape, case.c, case.k, case.stride, case.pad, case.dilation, a_dtype, epi,
                                        pad_value, int8_reg_n(ow, 2, host.vector_registers), nchw)
    func = provider.schedule_blocked_conv(func, None, depthwise=True)
    cp = xb.shape[1] * ic.BLOCK
    args = [xb, ic.pack_depthwise_weight(w, ic.BLOCK), ic.pad_channels(bias, cp), *padded_params(epi, params, cp)]
    out_shape = (case.n, case.c, oh, ow) if nchw else (case.n, cp // ic.BLOCK, oh, ow, ic.BLOCK)
    got = run_local(func, host, args, out_shape, epi.out_dtype)
    check_output(got, acc_b, epi, params, case.c)


# ---- layout I/O ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,zp,scale,bits", [("uint8", 131, 0.037, 8), ("int8", -5, 0.25, 8),
                                                 ("uint8", 0, 0.05, 7)])
@pytest.mark.parametrize("shape,block", [((1, 3, 5, 6), 4), ((2, 24, 3, 5), 16)])
def test_quantize_dequantize_blocked(host, shape, block, dtype, zp, scale, bits):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    flat = x.reshape(-1)
    flat[:6] = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1e4], np.float32) * np.float32(scale)  # ties; saturation
    q = run_local(ic.quantize_blocked_func(shape, scale, zp, dtype, bits, block), host, [x],
                  (shape[0], -(-shape[1] // block), *shape[2:], block), dtype)
    expect = qmath.quantize(x, scale, zp, dtype, bits)
    np.testing.assert_array_equal(from_blocked(q, shape[1]), expect)
    assert (from_blocked(q, q.shape[1] * block)[:, shape[1]:] == zp).all(), "padded lanes must hold the zero point"
    d = run_local(ic.dequantize_blocked_func(shape, scale, zp, dtype, block), host, [q], shape, "float32")
    np.testing.assert_array_equal(d, qmath.dequantize(expect, scale, zp))
    lo, hi = qmath.qrange(dtype, bits)
    inside = (x >= (lo - zp) * scale) & (x <= (hi - zp) * scale)
    assert inside.mean() > 0.3
    assert np.abs(d - x)[inside].max() <= scale / 2 * (1 + 1e-5)
    # int8 NCHW → blocked (block_int_func): padded lanes hold ``fill``
    b = run_local(ic.block_int_func(shape, dtype, block, zp), host, [expect], q.shape, dtype)
    np.testing.assert_array_equal(b, q)


# ---- FoldBatchNorm ---------------------------------------------------------------------------------
def _ops(mod) -> str:
    return mod["main"].script(show_meta=False)


@pytest.mark.parametrize("conv_bias", [False, True], ids=["conv_nobias", "conv_bias"])
def test_fold_batch_norm(conv_bias):
    from hwcomp.build import bind_weights
    from hwcomp.frontend import load_model
    from hwcomp.models import randomize_batchnorm
    from hwcomp.passes.fold_batch_norm import FoldBatchNorm
    from hwcomp.quantize.calibrate import HostModel

    torch.manual_seed(0)
    model = randomize_batchnorm(nn.Sequential(
        nn.Conv2d(5, 12, 3, padding=1, bias=conv_bias), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 20, 3, stride=2, padding=1, bias=conv_bias), nn.BatchNorm2d(20)), seed=4).eval()
    with torch.no_grad():
        model[1].running_mean.add_(0.7)  # make the shift matter
        model[4].running_var.mul_(3.0)
    x = torch.randn(2, 5, 9, 9)
    imported = load_model(model, (x,))
    mod = bind_weights(imported.mod, imported.params)
    assert _ops(mod).count("R.nn.batch_norm(") == 2
    folded = FoldBatchNorm(mod)
    text = _ops(folded)
    left = text.count("R.nn.batch_norm(")
    assert left == 0, f"FoldBatchNorm left {left} of 2 batch_norm(s) (conv bias={conv_bias})"
    assert text.count("R.nn.conv2d(") == 2
    assert _ops(mod).count("R.nn.batch_norm(") == 2, "the pass changed its input module"
    xt = torch.randn(2, 5, 9, 9)
    with torch.no_grad():
        ref = model(xt).numpy()
    out = HostModel(folded).run([xt.numpy()])[0]
    err = float(np.abs(out - ref).max())
    assert err <= FOLD_TOL * float(np.abs(ref).max()), err


# ---- the int8 pipeline -----------------------------------------------------------------------------
class ConvChain(nn.Module):
    """conv-bn-relu, conv(stride 2)-bn-relu, conv 1x1: two int8 hand-offs; channels 3 → 24 → 40 → 20.
    ``bias``: the convs before a batch-norm have their own bias (PyTorch's default; VGG-BN style)."""

    def __init__(self, bias: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1, bias=bias), nn.BatchNorm2d(24), nn.ReLU(),
            nn.Conv2d(24, 40, 3, stride=2, padding=1, bias=bias), nn.BatchNorm2d(40), nn.ReLU(),
            nn.Conv2d(40, 20, 1))

    def forward(self, x):
        return self.body(x)


class Residual(nn.Module):
    """stem, then conv-bn-relu-conv-bn + identity, relu, head conv: the stem's output has a float
    consumer (the add) so it leaves as float; the block's two convs hand off in int8."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Conv2d(16, 24, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(torch.relu(self.b(self.a(y)) + y))


class PooledResidual(Residual):
    """ResNet's stem: the stem conv's output is max-pooled (on its int8 codes, blocked) before
    the first block, whose identity is the pooled tensor."""

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(self.stem(x), 3, 2, 1)
        return self.head(torch.relu(self.b(self.a(y)) + y))


class Downsample(nn.Module):
    """ResNet's first bottleneck of a stage: ``relu(c2(relu(c1(x))) + shortcut(x))`` with the
    shortcut conv (1x1, stride 2) computed after the main path, then a head conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.c1 = nn.Sequential(nn.Conv2d(24, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(24, 40, 1, bias=False), nn.BatchNorm2d(40))
        self.shortcut = nn.Sequential(nn.Conv2d(24, 40, 1, stride=2, bias=False), nn.BatchNorm2d(40))
        self.head = nn.Conv2d(40, 8, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(torch.relu(self.c2(self.c1(y)) + self.shortcut(y)))


class MobileBlock(nn.Module):
    """MobileNetV2's inverted residual: 1x1 expand-bn-ReLU6, depthwise 3x3-bn-ReLU6, 1x1 project
    (``skip``: stride 1 and ``x +`` the block's input, else stride 2 and no skip); ``silu``:
    EfficientNet's SiLU written out as ``x * sigmoid(x)`` instead. The input comes from a stem conv."""

    def __init__(self, silu: bool = False, skip: bool = False):
        super().__init__()
        self.silu, self.skip = silu, skip
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Sequential(nn.Conv2d(8, 48, 1, bias=False), nn.BatchNorm2d(48))
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, stride=1 if skip else 2, padding=1, groups=48, bias=False),
                                nn.BatchNorm2d(48))
        self.project = nn.Conv2d(48, 8 if skip else 24, 1)

    def act(self, x):
        return x * torch.sigmoid(x) if self.silu else torch.nn.functional.relu6(x)

    def forward(self, x):
        x = self.stem(x)
        y = self.project(self.act(self.dw(self.act(self.expand(x)))))
        return x + y if self.skip else y


MOBILE = [("conv0", "conv1"), ("conv1", "conv2"), ("conv2", "conv3")]
PIPELINE = {
    # name: (model, input shape, int8 hand-offs (producer conv, consumer conv), convs with float
    # output ("conv2 blocked": float32 blocked), fused residuals {conv: (producer of the other
    # operand, "int8" codes or "float32")}, QuantConfig overrides)
    "chain": (ConvChain, (1, 3, 14, 13), [("conv0", "conv1"), ("conv1", "conv2")], {"conv2"}, {}, {}),
    "chain_conv_bias": (lambda: ConvChain(bias=True), (1, 3, 14, 13), [("conv0", "conv1"), ("conv1", "conv2")],
                        {"conv2"}, {}, {}),
    # the identity is the stem's int8 output, read by the second conv's epilogue; relu fused after the add
    "residual": (Residual, (2, 3, 10, 10), [("conv0", "conv1"), ("conv1", "conv2"), ("conv2", "conv3")],
                 {"conv3"}, {"conv2": ("conv0", "int8")}, {}),
    # ResNet's stem: conv, max-pool on the int8 codes, the first block's identity is the pooled tensor
    "pooled_residual": (PooledResidual, (1, 3, 15, 14), [("conv0", "conv1"), ("conv1", "conv2"), ("conv2", "conv3")],
                        {"conv3"}, {"conv2": ("conv0", "int8")}, {}),
    "residual_unfused": (Residual, (2, 3, 10, 10), [("conv1", "conv2")], {"conv0", "conv2", "conv3"}, {},
                         {"fuse_residual": False}),
    # the main path's last conv leaves float32 blocked; the shortcut conv, computed last, adds it
    "downsample": (Downsample, (1, 3, 12, 11), [("conv0", "conv1"), ("conv0", "conv3"), ("conv1", "conv2"),
                                                ("conv3", "conv4")],
                   {"conv2 blocked", "conv4"}, {"conv3": ("conv2", "float32")}, {}),
    "mobile_relu6": (MobileBlock, (1, 3, 15, 15), MOBILE, {"conv3"}, {}, {}),
    "mobile_silu": (lambda: MobileBlock(silu=True), (1, 3, 15, 15), MOBILE, {"conv3"}, {}, {}),
    # MobileNetV2's skip: no activation after the add, output float (the model's output)
    "mobile_skip": (lambda: MobileBlock(skip=True), (1, 3, 9, 10), MOBILE, {"conv3"}, {"conv3": ("conv0", "int8")},
                    {}),
}


def _call_tir_bindings(mod) -> list[tuple]:
    """``(var, callee name, args)`` of every ``call_tir`` in ``main``, in order."""
    from tvm import relax

    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and v.op.same_as(tvm.ir.Op.get("relax.call_tir")):
                out.append((b.var, v.args[0].name_hint, list(v.args[1].fields)))
    return out


@pytest.mark.parametrize("name", list(PIPELINE))
def test_int8_cnn_pipeline(host, name, tmp_path):
    import hwcomp
    from hwcomp.frontend import load_model
    from hwcomp.models import randomize_batchnorm
    from hwcomp.quantize import QuantConfig
    from hwcomp.quantize.pipeline import Int8Quantizer
    from hwcomp.relax_graph import static_shape

    make, shape, handoffs, float_out, residuals, overrides = PIPELINE[name]
    torch.manual_seed(0)
    model = randomize_batchnorm(make(), seed=1).eval()
    rng = np.random.default_rng(21)
    calib = [[rng.standard_normal(shape).astype(np.float32)] for _ in range(6)]
    imported = load_model(model, (torch.randn(*shape),))
    q = Int8Quantizer(get_target("host"), QuantConfig(**overrides), calib, params=imported.params, progress=False)
    seen = []

    def capture(mod):
        seen.append(mod)
        return mod

    art = hwcomp.compile(imported, "host", tmp_path / "art",
                         options=hwcomp.CompileOptions(passes=[*q.passes(), capture], use_default_database=False,
                                                       compression_summary=None))
    # (a) every conv on the blocked int8 kernel
    convs = {r["layer"]: r for r in q.realizer.report if r["kind"] == "conv2d"}
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(convs) == n_convs
    if get_provider(host).conv_dot() is not None:
        for r in convs.values():
            assert r["status"] == "int8" and r["kernel"].endswith(
                ("blocked int8 conv", "blocked int8 depthwise", "kernel rows folded into the channels")), r
            if name.startswith("mobile") and r["layer"] not in ("conv0", "conv3"):  # activation inside
                assert r["epilogue"]["act"] in ("relu", "relu6", "silu"), r
            assert (r["layout"].startswith("nchw") and r["layout"].endswith("c")) or \
                r["layout"].startswith("hwc, "), r  # a 3-channel stem may fold (test_int8_conv_fold.py)
        got_float = {k if r["output"] == "float32" else f"{k} blocked" for k, r in convs.items()
                     if r["output"].startswith("float32")}
        assert got_float == float_out, f"convs with float32 output: {sorted(got_float)}, expected {sorted(float_out)}"
        got_res = {k: r["epilogue"]["residual"] for k, r in convs.items() if "residual" in r["epilogue"]}
        assert {k: v != "float32" for k, v in got_res.items()} == {k: v[1] == "int8" for k, v in residuals.items()}
    # (b) int8 hand-offs in the realized module: the consumer's call_tir reads the producer's
    # blocked output var itself; a fused residual add's conv reads the other operand as its last
    # input, blocked, and no float add is left
    (mod,) = seen
    calls = _call_tir_bindings(mod)
    by_callee = {callee: (var, args) for var, callee, args in calls}
    # max-pools on the codes, and reshapes (a 1x1 conv's row view, ic.row_view) are walked back
    pools = {b.var: b.value for blk in mod["main"].body.blocks for b in blk.bindings
             if getattr(getattr(b.value, "op", None), "name", "") in ("relax.nn.max_pool2d", "relax.reshape")}
    for pool in pools.values():  # max-pools between int8 convs run on the blocked codes
        if pool.op.name == "relax.nn.max_pool2d":
            assert str(pool.attrs.layout) == f"NCHW{ic.BLOCK}c" and pool.args[0].ty.dtype in ("uint8", "int8")

    def source(v):
        while v in pools:
            v = pools[v].args[0]
        return v

    readers = {}  # producer -> the convs reading its output
    for src, dst in handoffs:
        readers.setdefault(src, set()).add(f"q_{dst}")
    for dst, (src, _) in residuals.items():
        readers.setdefault(src, set()).add(f"q_{dst}")
        src_var, _ = by_callee[f"q_{src}"]
        assert source(by_callee[f"q_{dst}"][1][-1]).same_as(src_var), f"q_{dst} does not add q_{src}'s output"
        assert len(static_shape(src_var)) == 5
    for src, dst in handoffs:
        src_var, _ = by_callee[f"q_{src}"]
        _, dst_args = by_callee[f"q_{dst}"]
        assert source(dst_args[0]).same_as(src_var), f"q_{dst} does not read q_{src}'s output directly"
        shape5 = static_shape(src_var)
        assert len(shape5) == 5 and shape5[-1] == ic.BLOCK and src_var.ty.dtype in ("uint8", "int8"), src_var.ty
        users = {callee for _, callee, args in calls if any(source(a).same_as(src_var) for a in args)}
        assert users == readers[src], users
    names = [callee for _, callee, _ in calls]
    conv_in = [args[0] for _, callee, args in calls if re.fullmatch(r"q_conv\d+", callee)]
    n_float_inputs = n_convs - len({dst for _, dst in handoffs})  # convs whose input is quantized from float
    assert sum(n.startswith("q_quantize") for n in names) == n_float_inputs, names
    assert not any(n.startswith("q_dequantize") for n in names), names  # float outputs come out of the conv
    assert all(n.startswith("q_") for n in names), names  # activations absorbed: no float op between convs
    assert len(conv_in) == n_convs
    if overrides.get("fuse_residual", True):
        assert "R.add(" not in _ops(mod), "a residual add was left in float"
    # (c) close to fp32 on an input outside the calibration set
    x = np.random.default_rng(99).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = art.run([x])[0]
    assert qmath.cosine(out, ref) >= MIN_COSINE, qmath.cosine(out, ref)


def test_row_view_rule():
    """A stride-1 1x1 conv runs on its pixels as one row where whole rows waste more padded
    pixels and the one row's tiles are at least as wide (7x7 maps with 5-pixel tiles; not 14x14,
    whose 196 pixels would take 4-pixel tiles; not where 7-pixel tiles fill the rows), never where
    one row would leave too few channel blocks for the cores."""
    reg_n = lambda w: int8_reg_n(w, 2, 16)  # 3 to 5 pixels: 7 -> 8 per row, 49 -> 50 flat
    assert [reg_n(w) for w in (7, 49, 14, 196)] == [4, 5, 5, 4]
    assert ic.row_view(7, 7, reg_n, blocks=32, cores=2) == (1, 49)
    assert ic.row_view(14, 14, reg_n, blocks=16, cores=2) == (14, 14)  # 196 flat, but 4- for 5-pixel tiles
    assert ic.row_view(28, 28, reg_n, blocks=16, cores=2) == (28, 28)  # 4-pixel tiles fill 28
    assert ic.row_view(56, 56, reg_n, blocks=4, cores=2) == (56, 56)
    assert ic.row_view(7, 7, reg_n, blocks=3, cores=2) == (7, 7)  # 3 tasks for 2 cores: rows
    assert ic.row_view(1, 7, reg_n, blocks=32, cores=2) == (1, 7)
    reg7 = lambda w: int8_reg_n(w, 2, 16, accumulators=14)  # AVX2's saturating step: up to 7
    assert [reg7(w) for w in (7, 14, 11, 77)] == [7, 7, 6, 7]
    assert ic.row_view(7, 7, reg7, blocks=32, cores=2) == (7, 7)  # whole tiles already
    assert ic.row_view(7, 11, reg7, blocks=4, cores=2) == (1, 77)  # 7 x 12 -> 77


class PointwiseBlock(nn.Module):
    """A stem conv, then ResNet's expansion: a 1x1 conv whose residual add (the stem's int8 codes)
    and ReLU are fused, and a 1x1 head with float NCHW output; 64 channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64))
        self.head = nn.Conv2d(64, 64, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(torch.relu(self.c(y) + y))


def test_pointwise_convs_run_as_one_row_bit_for_bit(host, monkeypatch, tmp_path):
    """On the AVX2 kernels at 7x11 (6-pixel tiles pad each row of 11 to 12; the 77 pixels as one
    row take eleven 7-pixel tiles), both 1x1 convs run on a (1, 77) view of their input — the fused
    residual read the same way, the float NCHW output reshaped back — and the outputs equal the
    row-by-row build's bit for bit."""
    import hwcomp
    from hwcomp.frontend import load_model
    from hwcomp.models import randomize_batchnorm
    from hwcomp.quantize import QuantConfig
    from hwcomp.quantize.pipeline import Int8Quantizer
    from hwcomp.relax_graph import static_shape

    avx2 = get_target("x86-avx2")
    if host.arch != "x86_64" or "avx2" not in host.features:
        pytest.skip("the AVX2 kernels do not run on this CPU")
    # 2 cores, whatever this machine has: the 4 channel blocks are enough tasks for them
    target = dataclasses.replace(avx2, tvm={**avx2.tvm, "num-cores": 2})
    shape = (1, 3, 7, 11)
    torch.manual_seed(0)
    model = randomize_batchnorm(PointwiseBlock(), seed=1).eval()
    rng = np.random.default_rng(3)
    calib = [[rng.standard_normal(shape).astype(np.float32)] for _ in range(4)]
    imported = load_model(model, (torch.randn(*shape),))
    x = np.random.default_rng(99).standard_normal(shape).astype(np.float32)

    def build(label):
        q = Int8Quantizer(target, QuantConfig(), calib, params=imported.params, progress=False)
        seen = []
        art = hwcomp.compile(imported, target, tmp_path / label, options=hwcomp.CompileOptions(
            passes=[*q.passes(), lambda m: seen.append(m) or m], use_default_database=False, compression_summary=None))
        inputs = {callee: [tuple(static_shape(a)) for a in args] for _, callee, args in _call_tir_bindings(seen[0])}
        return art.run([x])[0], inputs

    flat, inputs = build("flat")
    assert inputs["q_conv1"][0] == (1, 4, 1, 77, 16) and inputs["q_conv1"][-1] == (1, 4, 1, 77, 16)  # A, residual
    assert inputs["q_conv2"][0] == (1, 4, 1, 77, 16)
    assert inputs["q_conv0"][0][2:4] == (7, 11)  # the 3x3 stem keeps its rows
    monkeypatch.setattr(ic, "row_view", lambda oh, ow, *a, **k: (oh, ow))
    rows, inputs = build("rows")
    assert inputs["q_conv1"][0] == (1, 4, 7, 11, 16)
    assert flat.shape == (1, 64, 7, 11)
    np.testing.assert_array_equal(flat, rows)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert qmath.cosine(flat, ref) >= MIN_COSINE


# ---- AArch64: rpi4 (NEON) and rpi5 (sdot) -----------------------------------------------------------
ARM_CASES = {
    # name: (case, epilogue) -- few: the board is emulated
    "3x3_c24_o40_ow7_requant": (Conv(24, 40, 7, 7), "requant_i8_zp"),
    "stem_7x7_s2_c3_float": (Conv(3, 16, 13, 13, k=(7, 7), stride=(2, 2), pad=(3, 3, 3, 3)), "float_relu"),
    # 8 rows on the boards' 4 cores: tasks of rows over every channel block (int8_rows_outer)
    "1x1_s2_8rows_requant": (Conv(32, 48, 16, 10, k=(1, 1), stride=(2, 2), pad=(0, 0, 0, 0)), "requant_i8_zp"),
}
ARM_INSTR = {"rpi4": "smull", "rpi5": "sdot"}


def arm_problem(target_name: str, case_name: str) -> tuple:
    target = get_target(target_name)
    provider = get_provider(target)
    dot = provider.conv_dot(127)
    case, epi_name = ARM_CASES[case_name]
    return target, conv_problem(provider, case, dot, epi_name, provider.act_dtypes[0], 127, seed=13)


@pytest.mark.parametrize("target_name", list(ARM_INSTR))
def test_arm_blocked_conv_cross_compiles(target_name):
    target, p = arm_problem(target_name, "3x3_c24_o40_ow7_requant")
    assert get_provider(target).act_dtypes == ("int8",)
    ex = tvm.compile(tvm.IRModule({"main": p.func}), target=target.tvm_target())
    asm = ex.mod.inspect_source("asm")
    assert re.search(rf"\b{ARM_INSTR[target_name]}\b", asm), f"no {ARM_INSTR[target_name]} for {target_name}"
    if target_name == "rpi4":
        assert not re.search(r"\bsdot\b", asm)


@pytest.fixture(scope="module")
def board():
    """The emulated aarch64 board, as ``tests/runtime/conftest.py`` brings it up (shared root)."""
    from hwcomp.runtime.board import board_available, board_down, board_up

    ok, reason = board_available()
    if not ok:
        pytest.skip(reason)
    root = Path(__file__).resolve().parents[2] / ".board" / "aarch64"
    handle = board_up(root)
    yield handle
    if not handle.reused:  # leave a board someone else brought up running
        board_down(root)


@pytest.mark.board
@pytest.mark.parametrize("case_name", list(ARM_CASES))
@pytest.mark.parametrize("target_name", list(ARM_INSTR))
def test_arm_blocked_conv_on_board(board, target_name, case_name, tmp_path):
    target, p = arm_problem(target_name, case_name)
    got = run_on_board(board, target, p, tmp_path / f"conv_{target_name}_{case_name}.so")
    check_output(got, p.acc_b, p.epi, p.params, p.channels)


def run_on_board(board, target, p: Problem, path: Path) -> np.ndarray:
    """``p``'s kernel cross-compiled to ``path``, run once on the emulated board: its output."""
    from tvm.support import cc

    from hwcomp.runtime.rpc import upload_library

    ex = tvm.compile(tvm.IRModule({"main": p.func}), target=target.tvm_target())
    ex.export_library(str(path), fcompile=cc.cross_compiler(target.cross_compiler))
    remote = board.connect(session_timeout=120)
    try:
        dev = remote.cpu()
        lib = upload_library(remote, path, board.arch)
        out = tvm.runtime.tensor(np.zeros(p.out_shape, p.out_dtype), dev)
        lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in p.args], out)
        return out.numpy()
    finally:
        # end the session now (it holds the single-session server until collected: the session
        # and its deadline watchdog refer to each other)
        lib = out = dev = remote = None
        gc.collect()


def test_fast_exp_matches_numpy():
    """The vectorizing exp of the SiLU epilogue: relative error below 1e-5 over [-87, 87] (float32 rounding of x log2(e) dominates at the ends)."""
    from tvm import te

    from hwcomp.quantize.int8_compute import fast_exp

    xs = np.concatenate([np.linspace(-87, 87, 4001), [-0.0, 1e-7, -1e-7]]).astype(np.float32)
    x = te.placeholder((xs.size,), "float32", "x")
    y = te.compute(x.shape, lambda i: fast_exp(x[i]), name="y")
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([x, y])}), target=tvm.target.Target({"kind": "llvm"}))
    out = tvm.runtime.tensor(np.zeros_like(xs))
    lib["main"](tvm.runtime.tensor(xs), out)
    rel = np.abs(out.numpy().astype(np.float64) / np.exp(xs.astype(np.float64)) - 1)
    assert rel.max() < 1e-5, float(rel.max())
