"""Dense products at odd and prime shapes through ``hwcomp.compile`` (PackDenseWeights, TiledReduction's
guarded row tiles and padded ragged columns), against NumPy / PyTorch; PackDenseWeights on the Relax IR.

Tolerance: max |out - ref| <= 1e-4 * max(|ref|) (fp32 against a float64 NumPy reference or torch's fp32;
softmax through the fast-math exp, absolute error ~1e-7).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import tvm
from hwcomp.schedules.cpu.dense import pack_dense_weight
from numeric import assert_close_to_scale
from torch import nn
from tvm import relax

import hwcomp
from hwcomp.artifact import flatten_outputs
from hwcomp.build import bind_weights, compile_module, finalize_weights, schedule
from hwcomp.frontend import load_model
from hwcomp.passes.pack_dense import PackDenseWeights, choose_panel

REL_TOL = 1e-4
PANEL = 16


def _compile(model, inputs, tmp_path):
    logs: list[str] = []
    art = hwcomp.compile(model, "host", tmp_path / "art", example_inputs=inputs, log=logs.append)
    packed = 0
    for line in logs:
        m = re.match(r"(\d+) matmul weights packed", line)
        if m:
            packed = int(m.group(1))
    return art, packed


def _assert_close(out, ref):
    assert_close_to_scale(out, ref, REL_TOL)


# -- Linear ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(384, 1536), (13, 29), (100, 48)], ids=lambda v: str(v))
@pytest.mark.parametrize("m", [1, 7, 197])
def test_linear(m, k, n, host, tmp_path):
    torch.manual_seed(m * 1000 + n)
    model = nn.Linear(k, n).eval()
    art, packed = _compile(model, (torch.randn(m, k),), tmp_path)
    # 29 columns: fewer than a panel, unpacked; 48: one panel of 48 (AVX-512) or three of 16 (AVX2)
    assert packed == int(n != 29)
    x = np.random.default_rng(m).standard_normal((m, k)).astype("float32")
    w = model.weight.detach().numpy().astype(np.float64)
    ref = x.astype(np.float64) @ w.T + model.bias.detach().numpy()
    (out,) = art.run([x])
    _assert_close(out, ref)


@pytest.mark.parametrize("side", [14, 7])
def test_linear_4d_gelu_no_bias(host, tmp_path, side):
    """ConvNeXt's pointwise MLP: a Linear over [1, 14, 14, 96] (196 rows side by side; 49 at 7 x 7:
    tiles of 7 rows on AVX-512) → 384, GELU, → 96 without bias."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(96, 384), nn.GELU(), nn.Linear(384, 96, bias=False)).eval()
    art, packed = _compile(model, (torch.randn(1, side, side, 96),), tmp_path)
    assert packed == 2
    x = torch.randn(1, side, side, 96)
    with torch.no_grad():
        ref = model(x).double().numpy()
    (out,) = art.run([x.numpy()])
    _assert_close(out, ref)


def test_choose_panel():
    """Of the target's panel widths, the one padding fewest columns; none past 25 % padding."""
    assert choose_panel(768, (48, 32)) == 48
    assert choose_panel(64, (48, 32)) == 32
    assert choose_panel(1000, (48, 32)) == 48  # 1008 columns against 1024
    assert choose_panel(96, (48, 32)) == 48  # both exact: the preferred one
    assert choose_panel(40, (48, 32)) is None  # 48 > 40 columns; 64 pads 60 %
    assert choose_panel(29, (16,)) == 16 and choose_panel(12, (16,)) is None
    assert choose_panel(24, (32, 8)) == 8


class Product(nn.Module):
    def forward(self, a, b):
        return a @ b


@pytest.mark.parametrize("sa,sb", [((7, 13), (13, 29)), ((197, 97), (97, 53)), ((3, 5, 31), (3, 31, 17))],
                         ids=["7x13x29", "197x97x53", "batched_3x5x31x17"])
def test_matmul_of_two_inputs(sa, sb, tmp_path):
    """Neither operand constant: nothing to pack, TiledReduction with ragged rows and columns."""
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal(sa).astype("float32"), rng.standard_normal(sb).astype("float32")
    art, packed = _compile(Product(), (torch.from_numpy(a), torch.from_numpy(b)), tmp_path)
    assert packed == 0
    a2, b2 = rng.standard_normal(sa).astype("float32"), rng.standard_normal(sb).astype("float32")
    (out,) = art.run([a2, b2])
    _assert_close(out, a2.astype(np.float64) @ b2.astype(np.float64))


# -- attention -------------------------------------------------------------------------------------


class Scores(nn.Module):
    def forward(self, q, k):
        return q @ k.transpose(-1, -2)


@pytest.mark.parametrize("seq", [197, 1500])
def test_attention_scores(seq, tmp_path):
    """``q @ k^T`` over 2 heads of 32: 197 and 1500 columns have no multiple of the vector lanes as
    divisor (padded to two vectors by TiledReduction)."""
    torch.manual_seed(seq)
    q, k = torch.randn(1, 2, seq, 32), torch.randn(1, 2, seq, 32)
    art, _ = _compile(Scores(), (q, k), tmp_path)
    q, k = torch.randn(1, 2, seq, 32), torch.randn(1, 2, seq, 32)
    (out,) = art.run([q.numpy(), k.numpy()])
    _assert_close(out, (q.double() @ k.double().transpose(-1, -2)).numpy())


class SDPA(nn.Module):
    def forward(self, q, k, v):
        return nn.functional.scaled_dot_product_attention(q, k, v)


def test_scaled_dot_product_attention_197(tmp_path):
    torch.manual_seed(11)
    q, k, v = (torch.randn(1, 2, 197, 32) for _ in range(3))
    art, _ = _compile(SDPA(), (q, k, v), tmp_path)
    q, k, v = (torch.randn(1, 2, 197, 32) for _ in range(3))
    with torch.no_grad():
        ref = SDPA()(q.double(), k.double(), v.double()).numpy()
    (out,) = art.run([q.numpy(), k.numpy(), v.numpy()])
    _assert_close(out, ref)


# -- PackDenseWeights on the Relax IR -----------------------------------------------------------------


class TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 48)  # 48 = 3 panels: packed
        self.b = nn.Linear(48, 29)  # 29 columns: 2 panels, the last zero-padded (10 % more work)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _collect(mod, pred) -> list:
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and pred(e):
            found.append(e)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return found


def _count(mod, pred) -> int:
    return len(_collect(mod, pred))


def _is_op(name):
    return lambda e: isinstance(e.op, tvm.ir.Op) and e.op.name == name


def _is_dense_packed(e):
    return isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir" and \
        e.args[0].name_hint.startswith("dense_packed")


@pytest.fixture(scope="module")
def two_linears():
    torch.manual_seed(3)
    model = TwoLinears().eval()
    x = torch.randn(5, 64)
    imp = load_model(model, (x,))
    return model, x, bind_weights(imp.mod, imp.params)


def test_pack_dense_weights_ir(two_linears, host):
    model, x, mod = two_linears
    assert _count(mod, _is_op("relax.matmul")) == 2
    p = PackDenseWeights(PANEL)
    out = p(mod)
    assert p.packed == 2
    assert _count(out, _is_dense_packed) == 2
    assert _count(out, _is_op("relax.matmul")) == 0
    packed_w = [e.args[1].fields[1] for e in _collect(out, _is_dense_packed)]
    assert [tuple(int(d) for d in w.value.shape) for w in packed_w] == [(3, 64, PANEL), (2, 48, PANEL)]
    np.testing.assert_array_equal(packed_w[0].value.numpy(),
                                  pack_dense_weight(model.a.weight.detach().numpy().T, PANEL))
    assert not packed_w[1].value.numpy()[1, :, 29 - PANEL:].any()  # the padding columns are zero
    m, weights = finalize_weights(out)
    vm = relax.VirtualMachine(compile_module(schedule(m, host), host), tvm.cpu())
    (y,) = flatten_outputs(vm["main"](tvm.runtime.tensor(x.numpy()),
                                      *[tvm.runtime.tensor(w) for w in weights.values()]))
    with torch.no_grad():
        ref = model(x).double().numpy()
    _assert_close(y, ref)


def test_pack_dense_weights_idempotent(two_linears):
    _, _, mod = two_linears
    p = PackDenseWeights(PANEL)
    once = p(mod)
    twice = p(once)
    assert p.packed == 0
    tvm.ir.assert_structural_equal(twice, once)


def test_pack_dense_weights_panel_width(two_linears):
    """In 32-column panels 48 columns would be 33 % padding and 29 less than one panel: nothing packed."""
    _, _, mod = two_linears
    p = PackDenseWeights(32)
    p(mod)
    assert p.packed == 0
    p = PackDenseWeights((48, 32))  # AVX-512's widths: 48 columns are one panel of 48
    p(mod)
    assert p.packed == 1
    with pytest.raises(ValueError, match="panel widths must be positive"):
        PackDenseWeights(0)


@pytest.mark.parametrize("k,n,panel", [(13, 48, 16), (1, 16, 16), (7, 64, 32), (4, 29, 16), (5, 144, 32)])
def test_pack_dense_weight_round_trip(k, n, panel):
    w = np.random.default_rng(0).standard_normal((k, n)).astype("float32")
    p = pack_dense_weight(w, panel)
    panels = -(-n // panel)
    assert p.shape == (panels, k, panel) and p.flags.c_contiguous
    flat = p.transpose(1, 0, 2).reshape(k, panels * panel)
    np.testing.assert_array_equal(flat[:, :n], w)
    assert not flat[:, n:].any()


def test_dense_packed_rejects_columns_the_panels_do_not_hold():
    from hwcomp.schedules.cpu.dense import dense_packed
    from tvm import te

    x, wp = te.placeholder((3, 4), name="x"), te.placeholder((2, 4, 16), name="w")
    assert int(dense_packed(x, wp, 29).shape[-1]) == 29
    for n in (16, 33):
        with pytest.raises(ValueError, match="do not fill 2 panels"):
            dense_packed(x, wp, n)


def test_row_tiles():
    """Row tiles divide the rows where a good divisor exists: 7 under AVX-512's 8-row knob (196 and 49
    tokens), never 7 under AVX2's 4; no divisor (197 tokens): the knob, with the rows padded."""
    from hwcomp.schedules.cpu.rules import _row_tile

    assert [_row_tile(n, 8) for n in (196, 49, 3136, 1500, 197, 198)] == [7, 7, 8, 6, 8, 6]
    assert [_row_tile(n, 4) for n in (196, 49, 197)] == [4, 4, 4]
