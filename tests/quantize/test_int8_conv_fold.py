"""Narrow convs with their kernel rows folded into the channels (``int8_conv.fold_width``,
``conv2d_folded_int8_func``, ``realize_conv.emit_folded_conv``).

What is checked, and how exactly:

* the rule: which convs fold (an image's 3 channels under 7-, 4- and 3-tap rows, by the dot's
  bytes per lane) and which do not (wide inputs, width dilation, 1-tap rows);
* kernels (x86, built for and run on this host; AArch64 cross-compiled, and on the emulated board
  under the ``board`` marker): the folded conv on HWC codes against an int64 NumPy convolution
  of the original NCHW codes and OIHW weights, **bit for bit** for the requantizing epilogues —
  for AVX2's saturating 8-byte step against the same sums taken in the folded byte order (its
  int16 saturation groups 8 consecutive bytes, which folding rearranges) — and the float epilogue
  within ``test_int8_conv``'s relative 1e-5;
* the pipeline: a ResNet-like stem (7x7 stride 2 on 3 channels, max-pool, a block) quantized with
  and without folding: the report names the folded kernel, the folded conv reads the HWC codes the
  quantize kernel writes (one reshape between), the other convs still take blocked int8 from the
  stem, and the compiled outputs are identical where the dot is exact (VNNI, AVX2's exact 4-byte
  step on zero-point-centred codes); cosine >= 0.99 against PyTorch fp32.
"""

from __future__ import annotations

import gc
import re

import numpy as np
import pytest
import torch
import tvm
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
    x86_dot,
)


def test_fold_width_rule():
    # the 7x7 stem's 21 bytes a row: 24 instead of 7 x 4 (4-byte dots), 7 x 8 (AVX2's 8-byte step)
    assert ic.fold_width(3, 7, 1, 4) == 24 and ic.fold_width(3, 7, 1, 8) == 24 and ic.fold_width(3, 7, 1, 2) == 22
    assert ic.fold_width(3, 4, 1, 4) == 12  # ConvNeXt's 4x4 patchify stem: 12 instead of 16
    assert ic.fold_width(3, 3, 1, 8) == 16 and ic.fold_width(3, 3, 1, 4) == 0  # 12 bytes either way
    assert ic.fold_width(1, 5, 1, 4) == 8  # grayscale 5x5: 8 instead of 20
    assert ic.fold_width(16, 3, 1, 4) == 0 and ic.fold_width(8, 3, 1, 8) == 0  # full blocks already
    assert ic.fold_width(3, 7, 2, 4) == 0  # dilated taps are not contiguous pixels
    assert ic.fold_width(3, 1, 1, 4) == 0
    assert ic.fold_width(12, 7, 1, 4) == 0  # 84 bytes: past MAX_FOLD


def test_amx_keeps_its_kernel_rows():
    """AMX reads a narrow conv's kernel rows as tile rows itself: no folding for its dot."""
    target = get_target("x86-amx")
    provider = get_provider(target)
    assert provider.conv_fold_width(3, 7, 1, provider.conv_dot(127)) == 0
    vnni = get_provider(get_target("x86-avx512-vnni"))
    assert vnni.conv_fold_width(3, 7, 1, vnni.conv_dot(127)) == 24


def folded_input(x: np.ndarray, case: Conv, pad_value: int) -> np.ndarray:
    """The folded conv's operand as an ordinary ``[N, KW*C, H + pt + pb, OW]`` tensor: channel
    ``kx * C + c`` of output column ``ox`` is padded column ``ox * sw + kx`` of channel ``c``."""
    (_, kw), (_, sw), (pt, pl, pb, pr), _ = case.k, case.stride, case.pad, case.dilation
    _, ow = case.out_hw
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    cols = [xp[:, :, :, kx:kx + sw * (ow - 1) + 1:sw] for kx in range(kw)]
    return np.concatenate(cols, axis=1)


def folded_problem(provider, case: Conv, dot, epi_name: str, a_dtype: str, w_absmax: int, seed: int = 0) -> Problem:
    """A folded conv as ``realize_conv.emit_folded_conv`` builds it, on random codes."""
    rng = np.random.default_rng(seed)
    lo, hi = act_range(a_dtype)
    x = rng.integers(lo, hi + 1, (case.n, case.c, case.h, case.w)).astype(a_dtype)
    w = rng.integers(-w_absmax, w_absmax + 1, (case.o, case.c, *case.k)).astype(np.int8)
    bias = rng.integers(-3000, 3000, case.o).astype(np.int32)
    pad_value = int(rng.integers(lo, hi + 1))
    xi = provider.conv_fold_width(case.c, case.k[1], case.dilation[1], dot)
    assert xi, f"{case} does not fold for {dot}"
    exact = ref_conv(x, w, case, pad_value) + bias[None, :, None, None]
    acc_b = exact
    if dot.halves == 2:  # the saturating pair sums, in the folded byte order
        kh, kw = case.k
        xf = folded_input(x, case, pad_value)
        wf = ic.fold_conv_weight(w)
        flat = Conv(kw * case.c, case.o, xf.shape[2], xf.shape[3], k=(kh, 1), stride=(case.stride[0], 1),
                    pad=(0, 0, 0, 0), dilation=(case.dilation[0], 1), n=case.n)
        acc_b = ref_conv(xf, wf, flat, 0, sat16=True) + bias[None, :, None, None]
    epi, params = epilogue_for(epi_name, acc_b, rng)
    oh, ow = case.out_hw
    nchw = epi.kind == "float"
    func = ic.conv2d_folded_int8_func((case.n, case.h, case.w, case.c), case.o, case.k, case.stride, case.pad,
                                      case.dilation[0], xi, a_dtype, epi, pad_value, dot.kb,
                                      provider.conv_reg_n(ow, xi, dot), nchw, dot.halves)
    func = provider.schedule_blocked_conv(func, dot)
    n_pad = -(-case.o // ic.BLOCK) * ic.BLOCK
    hwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1).reshape(case.n, case.h, case.w * case.c))
    args = [hwc, ic.pack_conv_weight(ic.fold_conv_weight(w), xi, ic.BLOCK, dot.kb, dot.halves),
            ic.pad_channels(bias, n_pad), *padded_params(epi, params, n_pad)]
    out_shape = (case.n, case.o, oh, ow) if nchw else (case.n, n_pad // ic.BLOCK, oh, ow, ic.BLOCK)
    return Problem(func, args, out_shape, epi.out_dtype, acc_b, exact, epi, params, case.o)


FOLD_CASES = {
    "stem_7x7_s2_p3": Conv(3, 16, 20, 23, k=(7, 7), stride=(2, 2), pad=(3, 3, 3, 3)),
    "patchify_4x4_s4": Conv(3, 20, 16, 12, k=(4, 4), stride=(4, 4), pad=(0, 0, 0, 0)),
    "gray_5x5_s1_asym": Conv(1, 16, 9, 11, k=(5, 5), pad=(2, 1, 1, 3)),
    "stem_batch2_dil_h2": Conv(3, 24, 12, 14, k=(3, 7), stride=(1, 2), pad=(2, 3, 2, 3), dilation=(2, 1), n=2),
}
FOLD_3x3 = Conv(3, 16, 11, 10, k=(3, 3), stride=(2, 2))  # folds for 8-byte and 2-byte dots only


@pytest.mark.parametrize("epi_name", ["requant_relu_u8", "requant_f32_relu_u8_lrint", "float_relu"])
@pytest.mark.parametrize("case_name", [*FOLD_CASES, "3x3_s2"])
@pytest.mark.parametrize("dot_name", list(DOTS))
def test_folded_conv_x86(host, dot_name, case_name, epi_name):
    target, provider, dot = x86_dot(host, dot_name)
    case = FOLD_CASES.get(case_name, FOLD_3x3)
    if not provider.conv_fold_width(case.c, case.k[1], case.dilation[1], dot):
        assert case_name == "3x3_s2" and dot.kb == 4
        return
    p = folded_problem(provider, case, dot, epi_name, "uint8", DOTS[dot_name][1])
    got = run_local(p.func, target, p.args, p.out_shape, p.out_dtype)
    check_output(got, p.acc_b, p.epi, p.params, p.channels)
    if dot.halves == 1:
        assert np.array_equal(p.acc_b, p.exact)


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
    from tvm.support import cc

    from hwcomp.runtime.rpc import upload_library

    target, p = _arm_fold_problem(target_name)
    ex = tvm.compile(tvm.IRModule({"main": p.func}), target=target.tvm_target())
    path = tmp_path / f"fold_{target_name}.so"
    ex.export_library(str(path), fcompile=cc.cross_compiler(target.cross_compiler))
    remote = board.connect(session_timeout=120)
    try:
        dev = remote.cpu()
        lib = upload_library(remote, path, board.arch)
        out = tvm.runtime.tensor(np.zeros(p.out_shape, p.out_dtype), dev)
        lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in p.args], out)
        got = out.numpy()
    finally:  # end the session now (see test_int8_conv.test_arm_blocked_conv_on_board)
        lib = out = dev = remote = None
        gc.collect()
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


def test_folded_stem_pipeline(host, tmp_path):
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
    calib = [[rng.standard_normal(shape).astype(np.float32)] for _ in range(6)]  # centred: a zero point
    imported = load_model(model, (torch.randn(*shape),))
    x = np.random.default_rng(99).standard_normal(shape).astype(np.float32)
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
    assert zp != 0
    dot = provider.conv_dot(63 if stem["weight_bits"] == 7 else 127, zp)  # the step the realizer took
    xi = provider.conv_fold_width(3, 7, 1, dot)
    if not xi:  # AMX
        assert stem["layout"] == reports[False]["conv0"]["layout"]
        return
    assert stem["kernel"].endswith("kernel rows folded into the channels") and stem["layout"] == f"hwc, {xi} bytes a pixel"
    assert reports[False]["conv0"]["layout"].startswith("nchw")
    calls = _call_tir_bindings(mods[True])
    by_callee = {callee: (var, args) for var, callee, args in calls}
    quantized, _ = by_callee["q_quantize_hwc"]
    assert static_shape(quantized) == (1, 1, 30, 27, 3)
    reshape = {b.var: b.value for blk in mods[True]["main"].body.blocks for b in blk.bindings}
    stem_in = by_callee["q_conv0"][1][0]
    assert reshape[stem_in].op.name == "relax.reshape" and reshape[stem_in].args[0].same_as(quantized)
    assert by_callee["q_conv0"][0].ty.dtype in ("uint8", "int8")  # the stem still hands int8 on
    assert not any(c.startswith("q_quantize") for c in by_callee if c != "q_quantize_hwc")
    if dot.halves == 1:  # exact dots: the same integers either way
        np.testing.assert_array_equal(outs[True], outs[False])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert qmath.cosine(outs[True], ref) >= MIN_COSINE, qmath.cosine(outs[True], ref)
