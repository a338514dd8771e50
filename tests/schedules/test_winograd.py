"""Winograd F(m, 3) convolution (``schedules/cpu/winograd.py``, chosen by ``BlockedLayout``) end to
end through ``hwcomp.compile`` on the host, against PyTorch, plus the transform algebra in NumPy.

Tolerance: max |out - ref| <= 1e-4 * max(|ref|), as for the direct blocked conv (F(4, 3) in fp32
differs from the direct sum by ~1e-6 relative per layer: its interpolation points 0, ±1, ±1/2
scale some terms by up to 4 before they cancel). Every case also checks from the compile log how
many convolutions went into Winograd form, so a silent fall back to the direct conv cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from conv_helpers import check_against_torch
from hwcomp.schedules.cpu.winograd import (
    pack_winograd_weight,
    use_winograd,
    winograd_matrices,
)
from torch import nn
from tvm import relax

import hwcomp
from hwcomp.api import CompileOptions
from hwcomp.build import bind_weights
from hwcomp.frontend import load_model
from hwcomp.passes.blocked_layout import BlockedLayout

REL_TOL = 1e-4


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_a_correlation(m):
    """1-D F(m, 3): Aᵀ [(G g) ⊙ (Bᵀ d)] is the valid correlation of d (m + 2 values) with g."""
    a, b, g = winograd_matrices(m)
    assert a.shape == (m + 2, m) and b.shape == (m + 2, m + 2) and g.shape == (m + 2, 3)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, k = rng.standard_normal(m + 2), rng.standard_normal(3)
        np.testing.assert_allclose(a.T @ ((g @ k) * (b.T @ d)), np.correlate(d, k, "valid"), rtol=1e-12, atol=1e-12)


def test_packed_weight_layout():
    """``pack_winograd_weight``: position e of the a x a tile, output block, input block, lanes —
    entry [e·O/xo + ob, ib, 0, 0, xi, xo] is (G g Gᵀ)[e] of output ob·xo + xo, input ib·xi + xi;
    padded channels zero."""
    m, bi, bo = 4, 8, 16
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 12, 3, 3)).astype(np.float32)  # 20 out (2 blocks of 16), 12 in (2 of 8)
    u = pack_winograd_weight(w, m, bi, bo)
    assert u.shape == (36 * 2, 2, 1, 1, bi, bo) and u.dtype == np.float32
    _, _, g = winograd_matrices(m)
    for e, o, i in [(0, 0, 0), (7, 19, 11), (35, 16, 8), (20, 5, 3)]:
        want = (g @ w[o, i].astype(np.float64) @ g.T)[e // 6, e % 6]
        assert u[e * 2 + o // bo, i // bi, 0, 0, i % bi, o % bo] == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert not u[:, :, 0, 0, :, 4:].reshape(36, 2, 2, bi, 12)[:, 1].any()  # outputs 20..31: zero
    assert not u.reshape(36, 2, 2, 1, 1, bi, bo)[:, :, 1, 0, 0, 4:].any()  # inputs 12..15: zero


def test_tile_choice():
    assert use_winograd(64, 64, 56, 56, 16) == 4
    assert use_winograd(256, 256, 14, 14, 16) == 4  # 4 x 4 tiles of 4
    assert use_winograd(512, 512, 7, 7, 16) == 2  # 2 x 2 tiles of 4: too few; 4 x 4 of 2
    assert use_winograd(64, 64, 5, 5, 16) == 0  # 3 x 3 tiles of 2
    assert use_winograd(8, 64, 56, 56, 16) == 0  # thinner than a block
    assert use_winograd(64, 8, 56, 56, 16) == 0


def _check(model, shape, tmp_path, *, winograd: int, options=None):
    assert check_against_torch(model, shape, tmp_path, REL_TOL, options)[1] == winograd


def _cases(block: int) -> dict:
    """Single 3x3 stride-1 convs (+ ReLU) sized from the host's block so each takes the tile named."""
    c = block
    conv = lambda i, o, **kw: nn.Sequential(nn.Conv2d(i, o, 3, **kw), nn.ReLU())
    return {
        # name: (model, input shape)
        "m4_16x16": (conv(c, c, padding=1), (1, c, 16, 16)),
        "m4_partial_tiles_odd_out_channels": (conv(2 * c, c + 5, padding=1), (1, 2 * c, 15, 13)),
        "m4_in_channels_not_whole_blocks": (conv(c + 4, c, padding=1), (1, c + 4, 16, 16)),
        "m4_no_padding": (conv(c, c), (1, c, 18, 18)),
        "m4_pad_wider_than_kernel": (conv(c, c, padding=2), (1, c, 14, 14)),
        "m4_asymmetric_zero_pad": (nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), conv(c, c)), (1, c, 17, 17)),
        "m2_7x7": (conv(c, 2 * c, padding=1), (1, c, 7, 7)),
        "m2_batch2": (conv(c, c, padding=1, bias=False), (2, c, 9, 9)),
    }


@pytest.mark.parametrize("name", list(_cases(16)))
def test_single_winograd_conv(name, host, tmp_path):
    model, shape = _cases(host.conv_block)[name]
    _check(model, shape, tmp_path, winograd=1)


class BasicBlock(nn.Module):
    """ResNet basic block, identity shortcut: conv-bn-relu, conv-bn + x, relu (both convs Winograd,
    the second with the residual add in its output transform's epilogue), then a stride-2 conv
    (direct) reading the Winograd output."""

    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.down = nn.Conv2d(c, c, 3, 2, 1)

    def forward(self, x):
        y = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + x)
        return self.down(y)


def test_basic_block(host, tmp_path):
    _check(BasicBlock(host.conv_block), (1, host.conv_block, 16, 16), tmp_path, winograd=2)


def test_winograd_off(host, tmp_path):
    c = host.conv_block
    _check(nn.Conv2d(c, c, 3, padding=1), (1, c, 16, 16), tmp_path, winograd=0,
           options=CompileOptions(winograd=False))


def test_layout_pass_keeps_the_region_and_is_idempotent():
    """Two Winograd convs in a row exchange blocked tensors (no layout transform between them), the
    transforms are opaque / conv-like to fusion, and a second run of the pass converts nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1)).eval()
    imp = load_model(model, (torch.randn(1, 16, 16, 16),))
    mod = bind_weights(imp.mod, imp.params)
    p = BlockedLayout(16)
    out = p(mod)
    assert (p.converted, p.winograd_convs) == (2, 2)
    names = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir":
            names.append(e.args[0].name_hint)

    relax.analysis.post_order_visit(out["main"].body, visit)
    assert [n.rstrip("0123456789") for n in names] == [
        "to_blocked", "winograd_input", "winograd_product", "winograd_output",
        "winograd_input", "winograd_product", "winograd_output", "from_blocked"]
    patterns = {gv.name_hint.rstrip("0123456789"): int(f.attrs["op_pattern"]) for gv, f in out.functions_items()
                if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "op_pattern" in f.attrs}
    assert patterns == {"winograd_input": 8, "winograd_output": 4}  # opaque; out-element-wise fusable
    again = BlockedLayout(16)
    again(out)
    assert again.converted == 0


def test_tuning_leaves_the_output_transform_to_hwcomp(host):
    """``hwcomp tune`` gives MetaSchedule the per-position products (hwcomp's blocked conv, with
    knobs) but not the output transform with its fused epilogue: only ``WinogradTransform``
    schedules it (MetaSchedule's best ran 5-14x slower). The lowered module does hold it."""
    from hwcomp.tune.tasks import _untuned, extract_tasks, lower_for_tuning

    c = host.conv_block
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU()).eval()
    lowered = lower_for_tuning(model, host, example_inputs=(torch.randn(1, c, 16, 16),))
    held = [gv.name_hint for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and _untuned(f)]
    assert len(held) == 1 and "winograd_output" in held[0]
    names = [t.name for t in extract_tasks(lowered, host)]
    assert any("winograd_product" in n for n in names)
    assert not any("winograd_output" in n or "winograd_input" in n for n in names)


def test_cli_no_winograd(host, tmp_path):
    """``hwcomp compile --no-winograd`` keeps the conv direct: its stored weight is the 3x3 one, not
    the 36 transformed positions of F(4, 3); both artifacts match PyTorch."""
    from hwcomp.cli import main

    c = host.conv_block
    torch.manual_seed(0)
    model = nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
    x = torch.randn(1, c, 16, 16)
    path = tmp_path / "conv.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    with torch.no_grad():
        ref = model(x).numpy()
    sizes = {}
    for flags in ([], ["--no-winograd"]):
        out = tmp_path / f"art{len(flags)}"
        assert main(["compile", str(path), "-t", "host", "-o", str(out), *flags]) == 0
        art = hwcomp.load(out)
        sizes[bool(flags)] = sum(w.size for w in art.weights())
        (got,) = art.run([x.numpy()])
        assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()
    assert sizes == {False: 36 * c * c, True: 9 * c * c}
