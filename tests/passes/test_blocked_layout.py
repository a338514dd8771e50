"""BlockedLayout on the Relax IR: regions without inner layout transforms, idempotence, what it leaves
alone, and the weight / constant packing in NumPy. Numerics of the rewritten modules are checked
against PyTorch with ``rtol=atol=1e-4`` (fp32, different summation order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax, te
from tvm.ir import GenericConst

from hwcomp.artifact import flatten_outputs
from hwcomp.build import bind_weights, compile_module, finalize_weights, schedule
from hwcomp.frontend import load_model
from hwcomp.models import randomize_batchnorm
from hwcomp.passes.blocked_layout import (
    BlockedLayout,
    from_blocked,
    pack_channel_const,
    pack_conv_weight,
    pack_depthwise_weight,
    to_blocked,
)

BLOCK = 16


def _import(model, *inputs):
    torch.manual_seed(0)
    model = randomize_batchnorm(model).eval()
    imp = load_model(model, inputs)
    return model, imp, bind_weights(imp.mod, imp.params)


def _call_tirs(mod, prefix: str) -> int:
    names = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir":
            names.append(e.args[0].name_hint)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return sum(1 for n in names if n.startswith(prefix))


def _ops(mod, name: str) -> int:
    count = [0]

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name:
            count[0] += 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return count[0]


def _run(mod, host, inputs):
    m, weights = finalize_weights(mod)
    ex = compile_module(schedule(m, host), host)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return flatten_outputs(vm["main"](*[tvm.runtime.tensor(a) for a in inputs],
                                      *[tvm.runtime.tensor(w) for w in weights.values()]))


def _check_numerics(model, mod, host, *inputs):
    out = _run(mod, host, [x.numpy() for x in inputs])
    with torch.no_grad():
        ref = model(*inputs)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    assert len(out) == len(ref)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r.numpy(), rtol=1e-4, atol=1e-4)


class Chain(nn.Module):
    """conv → bn → relu → max pool → conv → relu → conv (+ residual) → relu, 20 and 36 channels
    (not multiples of the block)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(16, 20, 3, padding=1)
        self.bn = nn.BatchNorm2d(20)
        self.c2 = nn.Conv2d(20, 36, 3, padding=1)
        self.c3 = nn.Conv2d(36, 20, 1)

    def forward(self, x):
        y = nn.functional.max_pool2d(torch.relu(self.bn(self.c1(x))), 3, 2, 1)
        return torch.relu(self.c3(torch.relu(self.c2(y))) + y)


class MobileBlock(nn.Module):
    """Inverted residual + SE + global mean: 1x1 expand, depthwise 3x3/2, SE gate, 1x1 project."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, 2, 1, groups=24, bias=False), nn.BatchNorm2d(24), nn.Hardswish())
        self.se1 = nn.Conv2d(24, 8, 1)
        self.se2 = nn.Conv2d(8, 24, 1)
        self.proj = nn.Sequential(nn.Conv2d(24, 40, 1, bias=False), nn.BatchNorm2d(40))

    def forward(self, x):
        y = self.dw(self.expand(x))
        y = y * torch.sigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        return self.proj(y).mean((2, 3), keepdim=True)


@pytest.mark.parametrize("make,shape", [(Chain, (1, 16, 10, 10)), (MobileBlock, (1, 8, 9, 9))],
                         ids=["chain", "mobile_block"])
def test_one_region_transforms_only_at_borders(make, shape, host):
    model, _, mod = _import(make(), torch.randn(*shape))
    n_conv = _ops(mod, "relax.nn.conv2d")
    p = BlockedLayout(BLOCK)
    out = p(mod)
    assert p.converted == n_conv
    assert _ops(out, "relax.nn.conv2d") == 0
    convs = _call_tirs(out, "conv2d_nchwc") + _call_tirs(out, "depthwise_nchwc") + _call_tirs(out, "winograd_product")
    assert convs == n_conv
    # one transform into the region (the model input), one out of it (the output): nothing between convs
    assert _call_tirs(out, "to_blocked") == 1
    assert _call_tirs(out, "from_blocked") == 1
    out_ty = out["main"].ret_ty
    assert [int(d) for d in out_ty.shape.values] == [int(d) for d in mod["main"].ret_ty.shape.values]
    _check_numerics(model, out, host, torch.randn(*shape))


def test_chain_keeps_pool_and_elementwise_blocked():
    _, _, mod = _import(Chain(), torch.randn(1, 16, 10, 10))
    out = BlockedLayout(BLOCK)(mod)
    text = out["main"].script()
    assert 'layout="NCHW16c"' in text and 'layout="NCHW"' not in text  # the max pool runs blocked
    ndims = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name in (
                "relax.add", "relax.nn.relu", "relax.multiply", "relax.subtract", "relax.divide"):
            ndims.append(e.ty.ndim)

    relax.analysis.post_order_visit(out["main"].body, visit)
    assert ndims and set(ndims) == {5}  # bias, batch-norm, ReLU and the residual add all on blocked values


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 20, 3, 2, 1)
        self.c2 = nn.Conv2d(20, 20, 3, padding=1)
        self.fc = nn.Linear(20, 5)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        z = torch.relu(self.c2(y))
        return y, self.fc(torch.flatten(z.mean((2, 3), keepdim=True), 1))


def test_region_ends_at_outputs_and_reshape(host):
    """An intermediate value that is also a model output leaves the region there (the dataflow
    block's output var), and the region ends before the flatten + Linear."""
    x = torch.randn(2, 3, 12, 12)
    model, _, mod = _import(Head(), x)
    p = BlockedLayout(BLOCK)
    out = p(mod)
    assert p.converted == 2
    assert _call_tirs(out, "to_blocked") == 1  # the thin RGB input, blocked by its own 3 channels
    assert _call_tirs(out, "from_blocked") == 2  # output y, and the mean before the flatten
    _check_numerics(model, out, host, torch.randn(2, 3, 12, 12))


@pytest.mark.parametrize("make,shape", [(Chain, (1, 16, 10, 10)), (MobileBlock, (1, 8, 9, 9)),
                                        (Head, (2, 3, 12, 12))], ids=["chain", "mobile_block", "head"])
def test_idempotent(make, shape):
    _, _, mod = _import(make(), torch.randn(*shape))
    p = BlockedLayout(BLOCK)
    once = p(mod)
    assert p.converted > 0
    twice = p(once)
    assert p.converted == 0
    tvm.ir.assert_structural_equal(twice, once)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.g8 = nn.Conv2d(16, 32, 3, padding=1, groups=2)  # groups 8 in, 16 out wide: blocks of 8
        self.w4 = nn.Conv2d(16, 16, 3, padding=1, groups=4)  # groups 4 wide: not whole blocks
        self.mult = nn.Conv2d(16, 32, 3, padding=1, groups=16)  # depthwise with a channel multiplier of 2

    def forward(self, x):
        return self.g8(x), self.w4(x), self.mult(x)


@pytest.mark.parametrize("block", [BLOCK, 32], ids=["avx2", "avx512"])
def test_grouped_conv(host, block):
    """Groups of whole blocks (of 16, or of 8; AVX-512's 32-channel layout also goes down to 8:
    RegNet's 8-wide groups) are converted; narrower groups and a depthwise conv with a channel
    multiplier stay ``relax.nn.conv2d``."""
    x = torch.randn(1, 16, 6, 6)
    model, _, mod = _import(Grouped(), x)
    p = BlockedLayout(block)
    out = p(mod)
    assert p.converted == 1
    assert _ops(out, "relax.nn.conv2d") == 2
    assert _call_tirs(out, "conv2d_nchwc") == 1
    blocks = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir" \
                and e.args[0].name_hint.startswith("to_blocked"):
            blocks.append(int(e.ty.shape.values[-1]))

    relax.analysis.post_order_visit(out["main"].body, visit)
    assert blocks == [8]
    _check_numerics(model, out, host, torch.randn(1, 16, 6, 6))


class PadThenDepthwise(nn.Module):
    """MobileNetV2 as exported from TF: an explicit pad before a stride-2 depthwise conv."""

    def __init__(self, pad):
        super().__init__()
        self.expand = nn.Conv2d(8, 24, 1)
        self.pad = pad
        self.dw = nn.Conv2d(24, 24, 3, 2, 0, groups=24)
        self.proj = nn.Conv2d(24, 20, 1)

    def forward(self, x):
        return self.proj(torch.relu(self.dw(self.pad(nn.functional.relu6(self.expand(x))))))


@pytest.mark.parametrize("pad,folded", [(nn.ZeroPad2d((0, 1, 0, 1)), True), (nn.ZeroPad2d((1, 2, 0, 3)), True),
                                        (nn.ConstantPad2d(1, 0.5), False), (nn.ReflectionPad2d(1), False)],
                         ids=["zero_tf_same", "zero_lrtb_1203", "constant_0.5", "reflect"])
def test_zero_pad_folds_into_conv(pad, folded, host):
    x = torch.randn(1, 8, 9, 11)
    model, _, mod = _import(PadThenDepthwise(pad), x)
    p = BlockedLayout(BLOCK)
    out = p(mod)
    assert p.converted == 3
    if folded:  # the pad is the depthwise conv's own padding: one region, no pad op
        assert _ops(out, "relax.nn.pad") == 0
        assert _call_tirs(out, "to_blocked") == 1 and _call_tirs(out, "from_blocked") == 1
    else:  # the region ends at the pad and starts again after it
        assert _call_tirs(out, "to_blocked") == 2 and _call_tirs(out, "from_blocked") == 2
    _check_numerics(model, out, host, torch.randn(1, 8, 9, 11))


def test_non_constant_weight_left_alone():
    """Weights not bound as constants (parameters of ``main``) cannot be packed at compile time."""
    imp = load_model(nn.Conv2d(16, 16, 3).eval(), (torch.randn(1, 16, 6, 6),))
    p = BlockedLayout(BLOCK)
    out = p(imp.mod)
    assert p.converted == 0 and _ops(out, "relax.nn.conv2d") == 1


def test_block_must_be_positive():
    with pytest.raises(ValueError, match="block must be positive"):
        BlockedLayout(0)


# -- packing in NumPy ------------------------------------------------------------------------------


@pytest.mark.parametrize("o,i,kh,kw,bi,bo", [(20, 36, 3, 3, 16, 16), (16, 3, 7, 7, 3, 16), (7, 5, 1, 3, 8, 4),
                                             (32, 32, 1, 1, 16, 16)])
def test_pack_conv_weight_round_trip(o, i, kh, kw, bi, bo):
    w = np.random.default_rng(0).standard_normal((o, i, kh, kw)).astype("float32")
    p = pack_conv_weight(w, bi, bo)
    op, ip = -(-o // bo), -(-i // bi)
    assert p.shape == (op, ip, kh, kw, bi, bo) and p.dtype == w.dtype and p.flags.c_contiguous
    full = p.transpose(0, 5, 1, 4, 2, 3).reshape(op * bo, ip * bi, kh, kw)
    np.testing.assert_array_equal(full[:o, :i], w)
    assert not full[o:].any() and not full[:, i:].any()  # padded channels are zero


def test_packed_conv_weight_semantics():
    """The layout conv2d_nchwc reads: out[n, ob, y, x, c] = sum data[n, ib, y, x, ci] * W[ob, ib, 0, 0, ci, c]
    (a 1x1 conv in NumPy on blocked data), against torch's NCHW conv."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((20, 36, 1, 1)).astype("float32")
    x = rng.standard_normal((1, 36, 4, 5)).astype("float32")
    p = pack_conv_weight(w, BLOCK, BLOCK)
    xb = np.pad(x, ((0, 0), (0, 48 - 36), (0, 0), (0, 0))).reshape(1, 3, BLOCK, 4, 5).transpose(0, 1, 3, 4, 2)
    yb = np.einsum("nbyxi,obic->noyxc", xb, p[:, :, 0, 0])
    y = yb.transpose(0, 1, 4, 2, 3).reshape(1, -1, 4, 5)[:, :20]
    ref = nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c,k", [(24, 3), (40, 5), (16, 3), (3, 3)])
def test_pack_depthwise_weight_round_trip(c, k):
    w = np.random.default_rng(2).standard_normal((c, 1, k, k)).astype("float32")
    p = pack_depthwise_weight(w, BLOCK)
    cb = -(-c // BLOCK)
    assert p.shape == (cb, k, k, BLOCK) and p.flags.c_contiguous
    full = p.transpose(0, 3, 1, 2).reshape(cb * BLOCK, k, k)
    np.testing.assert_array_equal(full[:c], w[:, 0])
    assert not full[c:].any()


@pytest.mark.parametrize("shape", [(1, 20, 1, 1), (20, 1, 1), (1, 32, 1, 1)])
def test_pack_channel_const_pads_with_ones(shape):
    c = shape[-3]
    v = np.random.default_rng(3).standard_normal(shape).astype("float32")
    p = pack_channel_const(v, c, BLOCK)
    cb = -(-c // BLOCK)
    assert p.shape == (1, cb, 1, 1, BLOCK) and p.dtype == v.dtype
    flat = p.reshape(-1)
    np.testing.assert_array_equal(flat[:c], v.reshape(-1))
    np.testing.assert_array_equal(flat[c:], np.ones(cb * BLOCK - c, "float32"))


def test_pack_channel_const_scalars_and_rejects():
    for scalar in (np.float32(2.0).reshape(()), np.ones((1,), "float32"), np.ones((1, 1, 1, 1), "float32")):
        out = pack_channel_const(scalar, 20, BLOCK)
        assert out is scalar  # a scalar broadcasts against the blocked value as it is
    assert pack_channel_const(np.ones(20, "float32"), 20, BLOCK) is None  # [C] broadcasts against W, not C
    assert pack_channel_const(np.ones((2, 20, 1, 1), "float32"), 20, BLOCK) is None  # per-sample
    assert pack_channel_const(np.ones((1, 20, 3, 3), "float32"), 20, BLOCK) is None  # per-pixel
    assert pack_channel_const(np.ones((1, 24, 1, 1), "float32"), 20, BLOCK) is None  # other channel count
    assert pack_channel_const(np.ones((1, 1, 20, 1, 1), "float32"), 20, BLOCK) is None  # 5-D


def test_to_and_from_blocked_round_trip(host):
    x = te.placeholder((2, 20, 3, 4), name="x")
    b = to_blocked(x, BLOCK)
    y = from_blocked(b, 20)
    f = te.create_prim_func([x, b, y]).with_attr("global_symbol", "main")
    ex = tvm.compile(tvm.IRModule({"main": f}), target=host.tvm_target())
    xa = np.random.default_rng(4).standard_normal((2, 20, 3, 4)).astype("float32")
    ba = tvm.runtime.tensor(np.full((2, 2, 3, 4, BLOCK), np.nan, "float32"))
    ya = tvm.runtime.tensor(np.zeros((2, 20, 3, 4), "float32"))
    ex["main"](tvm.runtime.tensor(xa), ba, ya)
    blocked = ba.numpy()
    np.testing.assert_array_equal(blocked[:, 0], xa[:, :16].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(blocked[:, 1, ..., :4], xa[:, 16:].transpose(0, 2, 3, 1))
    assert not blocked[:, 1, ..., 4:].any()  # padded channels are zero
    np.testing.assert_array_equal(ya.numpy(), xa)


@pytest.mark.parametrize("make,shape", [(Chain, (1, 16, 10, 10)), (MobileBlock, (1, 8, 9, 9))],
                         ids=["chain", "mobile_block"])
def test_layout_for_target_folds_batch_norm_into_the_weights(make, shape, host):
    """The fp32 path folds every conv's batch-norm into its constant weights before the layout pass
    (after the weights are lifted, the decomposed batch-norm would be per-element runtime arithmetic
    in each conv's epilogue), and the compiled model still matches PyTorch."""
    from hwcomp.build import layout_for_target

    model, _, mod = _import(make(), torch.randn(*shape))
    assert _ops(mod, "relax.nn.batch_norm") > 0
    out = layout_for_target(mod, host)
    assert _ops(out, "relax.nn.batch_norm") == 0
    lowered = relax.transform.DecomposeOpsForInference()(finalize_weights(out)[0])
    assert _ops(lowered, "relax.subtract") == 0  # no batch-norm left to decompose (x - mean) / std ...
    _check_numerics(model, out, host, torch.randn(*shape))


class Thin(nn.Module):
    """conv 4 → 8 → relu → 1x1 conv 8 → 24: the second conv's input has fewer channels than a block."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(4, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 24, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def test_conv_reduces_over_the_real_channels_of_a_thin_block(host):
    """A blocked input with fewer channels than one block (MobileNetV2's and EfficientNet's 16 and 24
    channels in 32-channel blocks): the weight is packed for the real channels (xi = 8 here, not the
    block's 16) and the conv reduces over those only; numerics against PyTorch."""
    model, _, mod = _import(Thin(), torch.randn(1, 4, 7, 7))
    out = BlockedLayout(BLOCK)(mod)
    shapes = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir" \
                and e.args[0].name_hint.startswith("conv2d_nchwc"):
            shapes.extend(tuple(int(d) for d in a.ty.shape.values) for a in e.args[1].fields
                          if isinstance(a, GenericConst))

    relax.analysis.post_order_visit(out["main"].body, visit)
    assert sorted(shapes) == [(1, 1, 3, 3, 4, 16), (2, 1, 1, 1, 8, 16)]
    _check_numerics(model, out, host, torch.randn(1, 4, 7, 7))


def test_conv2d_nchwc_reads_the_first_channels_of_a_wider_block():
    """``conv2d_nchwc`` with one 16-wide input block and an 8-wide kernel block reduces over the 8
    channels (the rest of the block is never read); several input blocks must match exactly."""
    from hwcomp.schedules.cpu.conv import conv2d_nchwc

    d = te.placeholder((1, 1, 5, 5, 16), name="d")
    out = conv2d_nchwc(d, te.placeholder((2, 1, 1, 1, 8, 16), name="w"), (1, 1), (0, 0, 0, 0), (1, 1))
    assert [int(x) for x in out.shape] == [1, 2, 5, 5, 16]
    assert [int(r.dom.extent) for r in out.op.reduce_axis] == [1, 1, 1, 8]
    with pytest.raises(ValueError, match="disagree"):
        conv2d_nchwc(te.placeholder((1, 2, 5, 5, 16), name="d2"), te.placeholder((2, 2, 1, 1, 8, 16), name="w2"),
                     (1, 1), (0, 0, 0, 0), (1, 1))
