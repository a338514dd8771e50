"""Narrow convs with their kernel rows folded into the channels (``schedules/int8_base.fold_width``,
``conv2d_folded_int8_func``, ``realize_conv.emit_folded_conv``).

What is checked, and how exactly:

* the rule: which convs fold (an image's 3 channels under 7-, 4- and 3-tap rows, by the dot's
  bytes per lane) and which do not (wide inputs, width dilation, 1-tap rows);
* kernels (x86, built for and run on this host; AArch64 cross-compiled, and on the emulated board
  under the ``board`` marker): the folded conv on HWC codes against an int64 NumPy convolution
  of the original NCHW codes and OIHW weights, **bit for bit** for the requantizing epilogues and
  within ``test_int8_conv``'s relative 1e-5 for the float epilogue, on every dot step a fold takes
  (AVX2's exact 4-byte and 2-byte steps, VNNI; the providers swap AVX2's saturating 8-byte step,
  whose int16 sums would hold four image codes' products once folded, for the exact 4-byte one);
* the pipeline: a ResNet-like stem (7x7 stride 2 on 3 channels, max-pool, a block) quantized with
  and without folding: the report names the folded kernel, the folded conv reads the HWC codes the
  quantize kernel writes (one reshape between), the next conv reads the stem's blocked int8 output
  through the max-pool, and the compiled outputs are identical (both exact: the blocked stem's
  channel padding leaves AVX2's saturating step two real products per int16 sum) for zero-point-
  centred images and for images in [0, 1] (zero point 0: AVX2's 8-byte step when blocked); cosine
  >= 0.99 against PyTorch fp32.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import tvm
from hwcomp.schedules.int8_base import ConvDot, fold_width
from torch import nn

from hwcomp.quantize import int8_conv as ic
from hwcomp.quantize import qmath
from hwcomp.quantize.int8_compute import get_provider
from hwcomp.target import get_target
from tests.quantize.test_int8_conv import (
    DOTS,
    MIN_COSINE,
    Conv,
    Problem,
    _call_tir_bindings,
    act_range,
    board,  # noqa: F401 - the emulated board fixture
    check_output,
    epilogue_for,
    padded_params,
    ref_conv,
    run_local,
    run_on_board,
    x86_dot,
)


def test_fold_width_rule():
    # the 7x7 stem's 21 bytes a row: 24 instead of 7 x 4 (4-byte dots), 7 x 8 (AVX2's 8-byte step)
    assert fold_width(3, 7, 1, 4) == 24 and fold_width(3, 7, 1, 8) == 24 and fold_width(3, 7, 1, 2) == 22
    assert fold_width(3, 4, 1, 4) == 12  # ConvNeXt's 4x4 patchify stem: 12 instead of 16
    assert fold_width(3, 3, 1, 4) == 0 and fold_width(3, 3, 1, 4, blocked_kb=8) == 12  # vs 3 x 4, 3 x 8
    assert fold_width(1, 5, 1, 4) == 8  # grayscale 5x5: 8 instead of 20
    assert fold_width(16, 3, 1, 4) == 0 and fold_width(8, 3, 1, 8) == 0  # full blocks already
    assert fold_width(3, 7, 2, 4) == 0  # dilated taps are not contiguous pixels
    assert fold_width(3, 1, 1, 4) == 0
    assert fold_width(12, 7, 1, 4) == 0  # 84 bytes: past MAX_FOLD


def test_fold_dot_steps():
    """Which dot a folded conv takes: the blocked conv's where it is exact; AVX2's exact 4-byte step
    in place of the saturating 8-byte one (same 7-bit weights); none on AMX (its tile rows)."""
    from hwcomp.schedules.x86.int8 import AVX2_U8S7

    avx2 = get_provider(get_target("x86-avx2"))
    sat, exact, wide = avx2.conv_dot(64, 0), avx2.conv_dot(64, 128), avx2.conv_dot(127, 0)
    assert sat.halves == 2 and exact == ConvDot(8, 4, AVX2_U8S7)
    assert avx2.conv_fold(3, 7, 1, sat) == (24, exact) and avx2.conv_fold(3, 3, 1, sat) == (12, exact)
    assert avx2.conv_fold(3, 7, 1, exact) == (24, exact) and avx2.conv_fold(3, 3, 1, exact) is None
    assert avx2.conv_fold(3, 7, 1, wide) == (22, wide)
    assert avx2.conv_fold(16, 3, 1, sat) is None
    vnni = get_provider(get_target("x86-avx512-vnni"))
    assert vnni.conv_fold(3, 7, 1, vnni.conv_dot(127)) == (24, vnni.conv_dot(127))
    amx = get_provider(get_target("x86-amx"))
    assert amx.conv_fold(3, 7, 1, amx.conv_dot(127)) is None


def folded_input(x: np.ndarray, case: Conv, pad_value: int) -> np.ndarray:
    """The folded conv's operand as an ordinary ``[N, KW*C, H + pt + pb, OW]`` tensor: channel
    ``kx * C + c`` of output column ``ox`` is padded column ``ox * sw + kx`` of channel ``c``."""
    (_, kw), (_, sw), (pt, pl, pb, pr), _ = case.k, case.stride, case.pad, case.dilation
    _, ow = case.out_hw
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    cols = [xp[:, :, :, kx:kx + sw * (ow - 1) + 1:sw] for kx in range(kw)]
    return np.concatenate(cols, axis=1)


def folded_problem(provider, case: Conv, blocked_dot, epi_name: str, a_dtype: str, w_absmax: int,
                   seed: int = 0) -> Problem:
    """A folded conv as ``realize_conv.emit_folded_conv`` builds it for a conv the blocked kernel would
    run on ``blocked_dot``, on random codes."""
    rng = np.random.default_rng(seed)
    lo, hi = act_range(a_dtype)
    x = rng.integers(lo, hi + 1, (case.n, case.c, case.h, case.w)).astype(a_dtype)
    w = rng.integers(-w_absmax, w_absmax + 1, (case.o, case.c, *case.k)).astype(np.int8)
    bias = rng.integers(-3000, 3000, case.o).astype(np.int32)
    pad_value = int(rng.integers(lo, hi + 1))
    fold = provider.conv_fold(case.c, case.k[1], case.dilation[1], blocked_dot)
    assert fold is not None, f"{case} does not fold for {blocked_dot}"
    xi, dot = fold
    acc_b = ref_conv(x, w, case, pad_value) + bias[None, :, None, None]
    epi, params = epilogue_for(epi_name, acc_b, rng)
    oh, ow = case.out_hw
    nchw = epi.kind == "float"
    func = ic.conv2d_folded_int8_func((case.n, case.h, case.w, case.c), case.o, case.k, case.stride, case.pad,
                                      case.dilation[0], xi, a_dtype, epi, pad_value, dot.kb,
                                      provider.conv_reg_n(ow, xi, dot), nchw)
    func = provider.schedule_blocked_conv(func, dot)
    n_pad = -(-case.o // ic.BLOCK) * ic.BLOCK
    hwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1).reshape(case.n, case.h, case.w * case.c))
    args = [hwc, ic.pack_conv_weight(ic.fold_conv_weight(w), xi, ic.BLOCK, dot.kb), ic.pad_channels(bias, n_pad),
            *padded_params(epi, params, n_pad)]
    out_shape = (case.n, case.o, oh, ow) if nchw else (case.n, n_pad // ic.BLOCK, oh, ow, ic.BLOCK)
    return Problem(func, args, out_shape, epi.out_dtype, acc_b, acc_b, epi, params, case.o)


FOLD_CASES = {
    "stem_7x7_s2_p3": Conv(3, 16, 20, 25, k=(7, 7), stride=(2, 2), pad=(3, 3, 3, 3)),  # ow 13: a ragged tile
    "patchify_4x4_s4": Conv(3, 20, 16, 12, k=(4, 4), stride=(4, 4), pad=(0, 0, 0, 0)),
    "gray_5x5_s1_asym": Conv(1, 16, 9, 11, k=(5, 5), pad=(2, 1, 1, 3)),
    "stem_batch2_dil_h2": Conv(3, 24, 12, 14, k=(3, 7), stride=(1, 2), pad=(2, 3, 2, 3), dilation=(2, 1), n=2),
}
FOLD_3x3 = Conv(3, 16, 11, 10, k=(3, 3), stride=(2, 2))  # folds for 8-byte and 2-byte dots only


@pytest.mark.parametrize("epi_name", ["requant_relu_u8", "requant_f32_relu_u8_lrint", "float_relu"])
@pytest.mark.parametrize("case_name", [*FOLD_CASES, "3x3_s2"])
@pytest.mark.parametrize("dot_name", list(DOTS))
def test_folded_conv_x86(host, dot_name, case_name, epi_name):
    """``dot_name``: the blocked conv's step; the folded conv takes ``conv_fold``'s (avx2_7bit: the
    exact 4-byte step)."""
    target, provider, dot = x86_dot(host, dot_name)
    case = FOLD_CASES.get(case_name, FOLD_3x3)
    if provider.conv_fold(case.c, case.k[1], case.dilation[1], dot) is None:
        assert case_name == "3x3_s2" and dot.kb == 4  # 12 bytes either way
        pytest.skip("does not fold")
    p = folded_problem(provider, case, dot, epi_name, "uint8", DOTS[dot_name][1])
    got = run_local(p.func, target, p.args, p.out_shape, p.out_dtype)
    check_output(got, p.acc_b, p.epi, p.params, p.channels)


FOLD_ARM_INSTR = {"rpi4": "smull", "rpi5": "sdot"}


def _arm_fold_problem(target_name: str):
    target = get_target(target_name)
    provider = get_provider(target)
    return target, folded_problem(provider, FOLD_CASES["stem_7x7_s2_p3"], provider.conv_dot(127), "requant_i8_zp",
                                  provider.act_dtypes[0], 127, seed=5)


@pytest.mark.parametrize("target_name", list(FOLD_ARM_INSTR))
def test_arm_folded_conv_cross_compiles(target_name):
    target, p = _arm_fold_problem(target_name)
    asm = tvm.compile(tvm.IRModule({"main": p.func}), target=target.tvm_target()).mod.inspect_source("asm")
    assert re.search(rf"\b{FOLD_ARM_INSTR[target_name]}\b", asm)


@pytest.mark.board
@pytest.mark.parametrize("target_name", list(FOLD_ARM_INSTR))
def test_arm_folded_conv_on_board(board, target_name, tmp_path):  # noqa: F811 - the imported fixture
    target, p = _arm_fold_problem(target_name)
    got = run_on_board(board, target, p, tmp_path / f"fold_{target_name}.so")
    check_output(got, p.acc_b, p.epi, p.params, p.channels)


class Stem(nn.Module):
    """ResNet's stem and a block: 7x7 stride 2 on the image, batch-norm, ReLU, max-pool, two 3x3."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU())
        self.b = nn.Conv2d(16, 24, 3, 1, 1)

    def forward(self, x):
        return self.b(self.a(nn.functional.max_pool2d(self.stem(x), 3, 2, 1)))


@pytest.mark.parametrize("images", ["centred", "unit"])
def test_folded_stem_pipeline(host, images, tmp_path):
    import hwcomp
    from hwcomp.frontend import load_model
    from hwcomp.models import randomize_batchnorm
    from hwcomp.quantize import QuantConfig
    from hwcomp.quantize.pipeline import Int8Quantizer
    from hwcomp.relax_graph import static_shape

    provider = get_provider(host)
    if provider.conv_dot() is None:
        pytest.skip("no blocked int8 conv on this host")
    shape = (1, 3, 30, 27)
    torch.manual_seed(0)
    model = randomize_batchnorm(Stem(), seed=1).eval()
    rng = np.random.default_rng(3)
    draw = (lambda r: r.standard_normal(shape)) if images == "centred" else (lambda r: r.random(shape))
    calib = [[draw(rng).astype(np.float32)] for _ in range(6)]
    imported = load_model(model, (torch.randn(*shape),))
    x = draw(np.random.default_rng(99)).astype(np.float32)
    outs, reports, mods = {}, {}, {}
    for fold in (True, False):
        q = Int8Quantizer(host, QuantConfig(fold_taps=fold), calib, params=imported.params, progress=False)
        seen = []
        art = hwcomp.compile(imported, host, tmp_path / f"fold_{fold}",
                             options=hwcomp.CompileOptions(passes=[*q.passes(), lambda m, s=seen: s.append(m) or m],
                                                           use_default_database=False, compression_summary=None))
        outs[fold], mods[fold] = art.run([x])[0], seen[0]
        reports[fold] = {r["layer"]: r for r in q.realizer.report}
    stem = reports[True]["conv0"]
    zp = stem["inputs"][0]["zero_point"]
    assert (zp != 0) == (images == "centred")
    blocked = provider.conv_dot(63 if stem["weight_bits"] == 7 else 127, zp)  # the realizer's choice
    fold = provider.conv_fold(3, 7, 1, blocked)
    if fold is None:  # AMX
        assert stem["layout"] == reports[False]["conv0"]["layout"]
        return
    assert stem["kernel"].endswith("kernel rows folded into the channels")
    assert stem["layout"] == f"hwc, {fold[0]} bytes a pixel"
    assert reports[False]["conv0"]["layout"].startswith("nchw")
    calls = _call_tir_bindings(mods[True])
    by_callee = {callee: (var, args) for var, callee, args in calls}
    quantized, _ = by_callee["q_quantize_hwc"]
    assert static_shape(quantized) == (1, 1, 30, 27, 3)
    bound = {b.var: b.value for blk in mods[True]["main"].body.blocks for b in blk.bindings}
    stem_in = by_callee["q_conv0"][1][0]
    assert bound[stem_in].op.name == "relax.reshape" and bound[stem_in].args[0].same_as(quantized)
    stem_out = by_callee["q_conv0"][0]
    assert stem_out.ty.dtype in ("uint8", "int8") and len(static_shape(stem_out)) == 5
    pooled = by_callee["q_conv1"][1][0]  # the max-pool on the stem's blocked codes
    assert bound[pooled].op.name == "relax.nn.max_pool2d" and bound[pooled].args[0].same_as(stem_out)
    assert not any(c.startswith("q_quantize") for c in by_callee if c != "q_quantize_hwc")
    np.testing.assert_array_equal(outs[True], outs[False])  # exact integers either way
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert qmath.cosine(outs[True], ref) >= MIN_COSINE, qmath.cosine(outs[True], ref)
