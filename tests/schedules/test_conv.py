"""Blocked-layout convolution (``BlockedLayout`` + ``BlockedConv``) end to end through ``hwcomp.compile``
on the host, against PyTorch.

Tolerance: max |out - ref| <= 1e-4 * max(|ref|) (fp32 with a different summation order; GELU/SiLU go
through the fast-math polynomials, absolute error ~1e-7). Every case also checks from the compile log
how many convolutions went into the blocked layout, so a silent fall back to the NCHW path cannot
pass for the blocked one.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import tvm
from conv_helpers import check_against_torch, compile_host
from hwcomp.schedules.cpu import TiledReduction
from torch import nn
from tvm import te, topi

from hwcomp.api import CompileOptions

REL_TOL = 1e-4


def _compile(model, x, tmp_path, options=None):
    art, converted, _ = compile_host(model, x, tmp_path, options)
    return art, converted


def _check(model, shape, tmp_path, *, convs, options=None, seed=0):
    """Compile ``model`` for input ``shape``, run on fresh inputs, compare with torch; ``convs`` is the
    number of convolutions expected in the blocked layout."""
    converted, _ = check_against_torch(model, shape, tmp_path, REL_TOL, options, seed)
    assert converted == convs


# -- single convolutions -------------------------------------------------------------------------

def _conv(*args, **kwargs):
    return lambda: nn.Conv2d(*args, **kwargs)


def _grouped_blocked(host, width: int) -> bool:
    """Whether groups ``width`` channels wide go into the blocked layout on ``host``: whole blocks of
    the target's block (16 with AVX2, 32 with AVX-512, 8 on NEON) or of half of it — or, with
    AVX-512's 32, of a quarter (RegNet's 8-wide groups) — at least 4."""
    b = host.conv_block
    sizes = (b, b // 2) + ((b // 4,) if b >= 32 else ())
    return any(s >= 4 and width % s == 0 for s in sizes)


CONV_CASES = {
    # name: (conv factory, input shape)
    "3x3_s1_p1": (_conv(16, 32, 3, padding=1), (1, 16, 9, 9)),
    "3x3_s2_even": (_conv(16, 16, 3, stride=2, padding=1), (1, 16, 10, 10)),
    "3x3_s2_odd": (_conv(32, 16, 3, stride=2, padding=1), (1, 32, 11, 13)),
    "rgb_stem_7x7_s2_p3": (_conv(3, 16, 7, stride=2, padding=3), (1, 3, 20, 20)),
    "1x1": (_conv(32, 48, 1), (1, 32, 7, 7)),
    "1x1_s2_nobias": (_conv(16, 32, 1, stride=2, bias=False), (1, 16, 8, 8)),
    "dilation2": (_conv(16, 16, 3, padding=2, dilation=2), (1, 16, 10, 10)),
    "odd_3_to_24": (_conv(3, 24, 3, padding=1), (1, 3, 9, 9)),
    "odd_20_to_36": (_conv(20, 36, 3, padding=1), (1, 20, 7, 7)),
    "odd_5_to_7_rect_kernel": (_conv(5, 7, (1, 3), padding=(0, 1)), (1, 5, 6, 9)),
    "out_1x1_spatial": (_conv(16, 32, 3), (1, 16, 3, 3)),
    "batch2": (_conv(16, 24, 3, padding=1), (2, 16, 6, 6)),
    "batch2_cout6": (_conv(4, 6, 3, padding=1), (2, 4, 6, 6)),
    "depthwise_c24_s1": (_conv(24, 24, 3, padding=1, groups=24), (1, 24, 9, 9)),
    "depthwise_c40_s2": (_conv(40, 40, 3, stride=2, padding=1, groups=40), (1, 40, 11, 11)),
    "depthwise_c24_s2_batch2": (_conv(24, 24, 3, stride=2, padding=1, groups=24), (2, 24, 8, 8)),
    "depthwise_5x5_c40": (_conv(40, 40, 5, padding=2, groups=40), (1, 40, 7, 7)),
    "depthwise_7x7_c24_convnext": (_conv(24, 24, 7, padding=3, groups=24), (1, 24, 8, 8)),
    "depthwise_dilation2_c8": (_conv(8, 8, 3, padding=2, dilation=2, groups=8), (1, 8, 7, 9)),
    "patchify_4x4_s4": (_conv(3, 24, 4, stride=4), (1, 3, 16, 20)),
    "stride3": (_conv(16, 16, 3, stride=3), (1, 16, 11, 11)),
    "pad_wider_than_kernel": (_conv(16, 20, 3, padding=3), (1, 16, 5, 5)),
    "row_of_29": (_conv(16, 16, 3, padding=1), (1, 16, 3, 29)),
    "width_1": (_conv(16, 16, 3, padding=1), (1, 16, 7, 1)),
}

GROUPED = {
    # name: (conv factory, input shape, group width)
    "grouped_g2_width16": (_conv(32, 32, 3, padding=1, groups=2), (1, 32, 6, 6), 16),
    "grouped_g4_width8_s2": (_conv(32, 32, 3, stride=2, padding=1, groups=4), (1, 32, 9, 9), 8),
    "grouped_g4_width4": (_conv(16, 16, 3, padding=1, groups=4), (1, 16, 6, 6), 4),
}


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_single_conv(name, tmp_path):
    make, shape = CONV_CASES[name]
    _check(make(), shape, tmp_path, convs=1)


@pytest.mark.parametrize("name", list(GROUPED))
def test_grouped_conv(name, host, tmp_path):
    make, shape, width = GROUPED[name]
    _check(make(), shape, tmp_path, convs=int(_grouped_blocked(host, width)))


def test_depthwise_channel_multiplier_stays_nchw(tmp_path):
    _check(nn.Conv2d(16, 32, 3, padding=1, groups=16), (1, 16, 6, 6), tmp_path, convs=0)


@pytest.mark.parametrize("pad", [(0, 1, 0, 1), (1, 2, 0, 3)], ids=["tf_same", "lrtb_1203"])
@pytest.mark.parametrize("depthwise", [False, True], ids=["dense", "depthwise"])
def test_asymmetric_padding(pad, depthwise, tmp_path):
    """``ZeroPad2d((left, right, top, bottom))`` before a stride-2 conv, inside a region (the pass
    folds it into the conv's own, asymmetric, padding)."""
    second = nn.Conv2d(24, 24, 3, stride=2, groups=24 if depthwise else 1)
    model = nn.Sequential(nn.Conv2d(8, 24, 1), nn.ReLU6(), nn.ZeroPad2d(pad), second)
    _check(model, (1, 8, 9, 11), tmp_path, convs=2)


def test_zero_pad_at_the_input(tmp_path):
    """A pad of the model input (thin RGB, blocked by its 3 channels) folded into the stem conv."""
    model = nn.Sequential(nn.ZeroPad2d((1, 0, 2, 0)), nn.Conv2d(3, 16, 3, stride=2), nn.ReLU())
    _check(model, (1, 3, 13, 12), tmp_path, convs=1)


def test_depthwise_pads_per_task_of_rows(host, tmp_path):
    """The depthwise conv's padded input is computed inside the parallel loop, a task of output
    rows at a time (not a pass of its own over memory); 20 rows = tasks of 8, 8 and 4."""
    from hwcomp.schedules.cpu.conv import BlockedConv, depthwise_nchwc

    bw = host.conv_block
    data = te.placeholder((1, 2, 20, 20, bw), name="data")
    kernel = te.placeholder((2, 3, 3, bw), name="kernel")
    out = depthwise_nchwc(data, kernel, (1, 1), (1, 1, 1, 1), (1, 1))
    func = te.create_prim_func([data, kernel, out])
    text = BlockedConv(host.vector_bits)._apply(func, host.tvm_target()).mod.script()
    assert text.count("T.parallel(") == 1
    assert text.index("T.parallel(") < text.index('T.sblock("data_pad")')
    _check(_conv(24, 24, 3, padding=1, groups=24)(), (1, 24, 20, 20), tmp_path, convs=1)


@pytest.mark.parametrize("order,batch", [("weights_once", 1), ("weights_once", 2), ("inputs_once", 1), ("block_rows", 1),
                                         ("block_rows", 2)])
def test_task_orders_match_numpy(host, order, batch):
    """The three task orders of ``BlockedConv`` against NumPy: input-channel blocks outside the
    pixels (``k_outer``, a task per output-channel block, with the next block's weights
    prefetched: ``with_slice_prefetch``), tasks of output rows over every block (``rows_outer``),
    and (block, row) tasks (the next block's weights prefetched: ``with_block_prefetch``); 3x3, padding 1, stride 2, a 9-wide input (5-pixel rows: a ragged
    register tile), bias + ReLU epilogue."""
    from hwcomp.schedules.cpu.conv import BlockedConv, ConvKnobs, conv2d_nchwc

    bw = host.conv_block
    ic, oc, hw = 2, 4, 9
    d = te.placeholder((batch, ic, hw, hw, bw), name="d")
    w = te.placeholder((oc, ic, 3, 3, bw, bw), name="w")
    b = te.placeholder((1, oc, 1, 1, bw), name="b")
    c = conv2d_nchwc(d, w, (2, 2), (1, 1, 1, 1), (1, 1))
    out = te.compute(c.shape, lambda n, o, y, x, v: te.max(c[n, o, y, x, v] + b[0, o, 0, 0, v], 0.0), name="relu")
    func = te.create_prim_func([d, w, b, out])
    knobs = ConvKnobs(k_outer=order == "weights_once", rows_outer=order == "inputs_once")
    sch = BlockedConv(host.vector_bits, knobs, host.vector_registers)._apply(func, host.tvm_target())
    assert ("T.prefetch(" in sch.mod.script()) == (order != "inputs_once")
    lib = tvm.compile(sch.mod, target=host.tvm_target())
    rng = np.random.default_rng(0)
    args = [rng.standard_normal([int(x) for x in t.shape], dtype=np.float32) for t in (d, w, b)]
    res = tvm.runtime.tensor(np.zeros([int(x) for x in out.shape], np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in args), res)
    dp = np.pad(args[0], ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.zeros([int(x) for x in out.shape], np.float64)
    for ry in range(3):
        for rx in range(3):
            patch = dp[:, :, ry:ry + 2 * 5:2, rx:rx + 2 * 5:2, :]  # [batch, ic, 5, 5, bw]
            ref += np.einsum("nhyxi,ohij->noyxj", patch, args[1][:, :, ry, rx])
    ref = np.maximum(ref + args[2], 0)
    np.testing.assert_allclose(res.numpy(), ref, atol=1e-4 * np.abs(ref).max())
    # the conv's tasks (after the padding's loop): per block, per output row, or per (block, row)
    tasks = [int(t) for t in re.findall(r"T\.parallel\((?:T\.int64\()?(\d+)", sch.mod.script())]
    assert tasks[-1] == batch * {"weights_once": oc, "inputs_once": 5, "block_rows": oc * 5}[order]


def test_task_order_heuristics():
    """Which order the defaults take, for shapes measured on the Xeon (see the functions' docs)."""
    from hwcomp.schedules.cpu.conv import inputs_once, weights_once

    # ResNet's layer-4 3x3 (16 blocks of 32 at 7x7) streams its weights once; a 1x1 at 14x14 does not
    assert weights_once(16, 2, 49, 32, kernel_1x1=False)
    assert not weights_once(8, 2, 196, 32, kernel_1x1=True)
    assert not weights_once(2, 2, 3136, 32, kernel_1x1=False)  # 2 tasks for 2 cores: too few
    # rows where the input outweighs weights that stay in cache: ResNet-50's 1x1 256->64 at 56x56
    # (3.2 MB in, 64 KB of weights) and its 3x3 128->128 stride 2 at 56x56 (1.6 MB in, 576 KB)...
    assert inputs_once(56 * 56 * 256 * 4, 256 * 64 * 4, 56, 2)
    assert inputs_once(58 * 58 * 128 * 4, 128 * 128 * 9 * 4, 28, 2)
    # ...not 1x1 1024->256 at 14x14 (0.8 MB in, 1 MB of weights), nor 3x3 128->128 at 28x28
    assert not inputs_once(14 * 14 * 1024 * 4, 1024 * 256 * 4, 14, 2)
    assert not inputs_once(30 * 30 * 128 * 4, 128 * 128 * 9 * 4, 28, 2)
    assert not inputs_once(56 * 56 * 256 * 4, 256 * 64 * 4, 3, 2)  # 3 row tasks for 2 cores: too few


class RegNetBlock(nn.Module):
    """1x1 → grouped 3x3/2 (groups 8 wide: blocks of 8) → 1x1, + projected shortcut: values of two
    block sizes in one region."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.short = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))

    def forward(self, x):
        return torch.relu(self.c(self.b(self.a(x))) + self.short(x))


def test_regnet_grouped_block(host, tmp_path):
    _check(RegNetBlock(), (1, 16, 10, 10), tmp_path, convs=3 + _grouped_blocked(host, 8))


class _MaxPool(nn.Module):
    def forward(self, x):
        return nn.functional.max_pool2d(x, 3, 2, 1)


NCHW_CASES = {
    # Regressions for TiledReduction's row-axis fusion (tiles of 4 rows over (batch, 6 channels) and
    # over (20 channels, 3 pooled rows) straddled the inner axis and stored lanes never computed).
    "conv_batch2_cout6": (lambda: nn.Conv2d(4, 6, 3, padding=1), (2, 4, 6, 6)),
    "maxpool_3x3_s2_p1": (_MaxPool, (1, 20, 5, 5)),
    "conv_bn_relu_dw": (lambda: nn.Sequential(nn.Conv2d(20, 36, 3, padding=1), nn.BatchNorm2d(36), nn.ReLU(),
                                              nn.Conv2d(36, 36, 3, stride=2, padding=1, groups=36)),
                        (1, 20, 9, 9)),
}


@pytest.mark.parametrize("name", list(NCHW_CASES))
def test_blocked_layout_off(name, tmp_path):
    """``CompileOptions(blocked_layout=False)``: the NCHW path gives the same results."""
    make, shape = NCHW_CASES[name]
    _check(make(), shape, tmp_path, convs=0, options=CompileOptions(blocked_layout=False))


@pytest.mark.parametrize("shape,layout", [((1, 20, 5, 5), "NCHW"), ((2, 6, 7, 7), "NCHW"),
                                          ((1, 2, 5, 5, 16), "NCHW16c")])
def test_tiled_reduction_padded_max_pool(host, shape, layout):
    """TiledReduction on a padded 3x3/2 max pool, alone: every row tile must be a box of the
    unfused axes (3 pooled rows or 6 channels tiled by 4 gave garbage)."""
    x = te.placeholder(shape, name="x")
    y = topi.nn.pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], "max", layout=layout)
    func = te.create_prim_func([x, y]).with_attr("global_symbol", "main")
    sch = TiledReduction(host.vector_bits).apply(func, host.tvm_target(), False)
    assert sch is not None, "rule did not apply"
    ex = tvm.compile(sch.mod, target=host.tvm_target())
    xa = np.random.default_rng(0).standard_normal(shape).astype("float32")
    out = tvm.runtime.tensor(np.zeros([int(d) for d in y.shape], "float32"))
    ex["main"](tvm.runtime.tensor(xa), out)
    nchw = xa if layout == "NCHW" else xa.transpose(0, 1, 4, 2, 3).reshape(shape[0], -1, *shape[2:4])
    ref = nn.functional.max_pool2d(torch.from_numpy(nchw), 3, 2, 1).numpy()
    if layout != "NCHW":
        ref = ref.reshape(shape[0], shape[1], shape[4], *ref.shape[2:]).transpose(0, 1, 3, 4, 2)
    np.testing.assert_array_equal(out.numpy(), ref)  # max is exact


# -- fused epilogues ---------------------------------------------------------------------------------

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU, "hardswish": nn.Hardswish,
               "leaky_relu": lambda: nn.LeakyReLU(0.1), "sigmoid": nn.Sigmoid}


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_conv_bias_bn_activation(act, tmp_path):
    """bias + BatchNorm (eval, non-trivial running stats) + activation, channels not a multiple of the block."""
    model = nn.Sequential(nn.Conv2d(12, 20, 3, padding=1), nn.BatchNorm2d(20), ACTIVATIONS[act]())
    _check(model, (1, 12, 8, 8), tmp_path, convs=1)


@pytest.mark.parametrize("depthwise", [False, True], ids=["dense", "depthwise"])
def test_bn_relu6_then_conv(depthwise, tmp_path):
    """A MobileNet-style pair: the second conv reads the first one's blocked, padded output."""
    c = 24
    second = nn.Conv2d(c, c, 3, padding=1, groups=c if depthwise else 1, bias=False)
    model = nn.Sequential(nn.Conv2d(8, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6(), second, nn.BatchNorm2d(c),
                          nn.ReLU6())
    _check(model, (1, 8, 7, 7), tmp_path, convs=2)


class BasicBlock(nn.Module):
    """ResNet basic block with a projection shortcut (stride 2) and an identity one."""

    def __init__(self, cin, cout):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))
        self.c3 = nn.Conv2d(cout, cout, 3, 1, 1)

    def forward(self, x):
        y = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.down(x))
        return torch.relu(self.c3(y) + y)


def test_residual_add(tmp_path):
    _check(BasicBlock(16, 24), (1, 16, 10, 10), tmp_path, convs=4)


class Pools(nn.Module):
    def __init__(self, adaptive: bool):
        super().__init__()
        self.adaptive = adaptive
        self.c1 = nn.Conv2d(3, 20, 3, padding=1)
        self.c2 = nn.Conv2d(20, 20, 3, padding=1)
        self.c3 = nn.Conv2d(20, 36, 1)

    def forward(self, x):
        y = nn.functional.max_pool2d(torch.relu(self.c1(x)), 3, 2, 1)
        y = nn.functional.avg_pool2d(torch.relu(self.c2(y)), 2)
        # 5x5 -> 3x3, the last window ragged; the stride is explicit because the torch importer rejects
        # max_pool2d_with_indices with the default (empty) stride when ceil_mode is set
        y = nn.functional.max_pool2d(self.c3(y), 2, 2, ceil_mode=True)
        y = nn.functional.avg_pool2d(y, 3, 1, 1, count_include_pad=False)
        if self.adaptive:
            return nn.functional.adaptive_avg_pool2d(y, 1)
        return y


@pytest.mark.parametrize("adaptive", [False, True], ids=["pools", "pools_adaptive_avg"])
def test_pooling_inside_region(adaptive, tmp_path):
    _check(Pools(adaptive), (1, 3, 22, 22), tmp_path, convs=3)


class SqueezeExcite(nn.Module):
    """Conv → BN → SiLU, then an SE gate (mean, 1x1 reduce, ReLU, 1x1 expand, sigmoid) scaling it,
    then a 1x1 projection: EfficientNet/MobileNetV3 style, with channels not a multiple of the block."""

    def __init__(self, c=40, squeeze=10):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.se1 = nn.Conv2d(c, squeeze, 1)
        self.se2 = nn.Conv2d(squeeze, c, 1)
        self.proj = nn.Conv2d(c, 24, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)

    def forward(self, x):
        y = nn.functional.silu(self.bn(self.dw(x)))
        g = torch.sigmoid(self.se2(torch.relu(self.se1(nn.functional.adaptive_avg_pool2d(y, 1)))))
        return self.bn2(self.proj(y * g))


def test_squeeze_excite(tmp_path):
    _check(SqueezeExcite(), (1, 40, 8, 8), tmp_path, convs=4)


class Mixed(nn.Module):
    """Blocked values meeting NCHW ones: an SE gate computed by Linear layers (timm style, reshaped
    to [N, C, 1, 1]) with the gate as the first operand, ``x + relu(x)``, ``x * x``, and a concat
    (DenseNet) that ends the region."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(8, 20, 3, padding=1)
        self.fc1 = nn.Linear(20, 6)
        self.fc2 = nn.Linear(6, 20)
        self.c2 = nn.Conv2d(20, 12, 1)
        self.c3 = nn.Conv2d(32, 16, 3, padding=1)

    def forward(self, x):
        y = self.c1(x)
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3))))))
        y = g.reshape(-1, 20, 1, 1) * y
        y = y + torch.relu(y)
        z = self.c2(y)
        z = z * z
        return self.c3(torch.cat([y, z], 1))


def test_mixed_layouts(tmp_path):
    _check(Mixed(), (2, 8, 6, 6), tmp_path, convs=3)


class Head(nn.Module):
    """Conv body, global mean, flatten, Linear: the region ends at the reshape."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(8, 24, 3, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.c(x)).mean((2, 3), keepdim=True), 1))


def test_mean_flatten_linear_head(tmp_path):
    _check(Head(), (2, 8, 6, 6), tmp_path, convs=1)


class _AudioFrontEnd(nn.Module):
    """Whisper's: conv1d k3 pad 1, GELU, conv1d k3 stride 2 pad 1, GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(20, 24, 3, padding=1)
        self.c2 = nn.Conv1d(24, 24, 3, stride=2, padding=1)

    def forward(self, x):
        return nn.functional.gelu(self.c2(nn.functional.gelu(self.c1(x))))


def test_conv1d_as_blocked_conv2d(tmp_path):
    _check(_AudioFrontEnd(), (2, 20, 33), tmp_path, convs=2)
