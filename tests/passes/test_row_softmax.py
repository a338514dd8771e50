"""RowSoftmax: static last-axis softmaxes become ``row_softmax`` (rows padded to the vector step,
one reciprocal per row), against PyTorch at row lengths that divide the step and that do not
(197, 1500 columns: attention over ViT's tokens and Whisper's frames).

Tolerance: max |out - torch| <= 2e-6 (probabilities; fast_exp's relative error is ~1e-7).
"""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from hwcomp.build import compile_module, schedule
from hwcomp.frontend import load_model
from hwcomp.passes.row_softmax import RowSoftmax


class _Softmax(torch.nn.Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return torch.softmax(x * 3.0, self.dim)


def _imported(shape, dim=-1):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    return load_model(_Softmax(dim).eval(), (x,)), x


def test_rewrites_last_axis_softmax_only():
    imported, _ = _imported((2, 5, 197))
    p = RowSoftmax(32)
    after = p(imported.mod).script()
    assert "R.nn.softmax(" in imported.mod.script() and "R.nn.softmax(" not in after
    assert p.rewritten == 1 and "row_pad" in p(imported.mod)["softmax"].script()
    again = RowSoftmax(32)
    again(p(imported.mod))
    assert again.rewritten == 0  # idempotent: the call_tir is not matched again
    other, _ = _imported((2, 5, 197), dim=1)
    q = RowSoftmax(32)
    assert "R.nn.softmax(" in q(other.mod).script() and q.rewritten == 0


def test_divisible_rows_are_not_padded():
    imported, _ = _imported((3, 64))
    assert "row_pad" not in RowSoftmax(32)(imported.mod)["softmax"].script()


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 197), (1, 2, 1500), (4, 128), (2, 7), (3, 33)])
def test_matches_torch(host, shape, fast):
    imported, x = _imported(shape)
    ref = _Softmax()(x).numpy()
    mod = schedule(imported.mod, host, fast_math=fast)  # lower() runs RowSoftmax on CPU targets
    assert "row_softmax" in mod.script() or "row_max" in mod.script()
    vm = relax.VirtualMachine(compile_module(mod, host), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    out = (out if hasattr(out, "numpy") else out[0]).numpy()
    assert out.shape == ref.shape
    assert np.max(np.abs(out - ref)) < 2e-6
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_ragged_rows_are_vectorized(host):
    """At 197 columns the row's max and sum are split into vector-wide partial accumulators
    (rfactor), not one scalar chain: what the padding is for."""
    imported, _ = _imported((2, 3, 197))
    mod = schedule(imported.mod, host)
    text = next(f.script() for gv, f in mod.functions.items() if "softmax" in gv.name_hint
                and isinstance(f, tvm.tirx.PrimFunc))
    assert "row_max_rf" in text and "row_sum_rf" in text


class _Attention(torch.nn.Module):
    """PyTorch's scaled_dot_product_attention: exports as _safe_softmax (softmax, then fully
    masked rows -> 0 through a row test of x == -inf)."""

    def forward(self, q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("tokens", [197, 16])
def test_safe_softmax_is_one_kernel_and_keeps_masked_rows_zero(host, tokens):
    g = torch.Generator().manual_seed(tokens)
    q, k, v = (torch.randn(1, 3, tokens, 16, generator=g) for _ in range(3))
    mask = torch.zeros(1, 1, tokens, tokens)
    mask[..., -3:, :] = float("-inf")  # three fully masked query rows: 0 in PyTorch, not NaN
    mask[..., :5, -4:] = float("-inf")
    imported = load_model(_Attention().eval(), (q, k, v, mask))
    before = imported.mod.script()
    assert "R.equal(" in before and "R.nn.softmax(" in before
    p = RowSoftmax(32)
    after = p(imported.mod)
    assert p.rewritten == 1 and "R.equal(" not in after.script() and "R.nn.softmax(" not in after.script()
    ref = _Attention()(q, k, v, mask).numpy()
    assert np.isfinite(ref).all()
    vm = relax.VirtualMachine(compile_module(schedule(imported.mod, host), host), tvm.cpu())
    out = vm["main"](*(tvm.runtime.tensor(t.numpy()) for t in (q, k, v, mask)))
    out = (out if hasattr(out, "numpy") else out[0]).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
