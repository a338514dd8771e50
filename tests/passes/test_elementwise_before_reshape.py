"""ElementwiseBeforeReshape: element-wise ops move above the reshapes ``torch.export`` puts around a
Linear over ``[B, T, C]``, so FuseOps fuses them into the matmul; the graph computes the same thing.

Tolerance: max |out - torch| <= 1e-4 * max |torch| (float32 matmuls of 64-256 terms, fast GELU/tanh).
"""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

import hwcomp
from hwcomp.api import CompileOptions
from hwcomp.build import schedule
from hwcomp.frontend import load_model
from hwcomp.passes.elementwise_before_reshape import ElementwiseBeforeReshape


class _MLPBlock(nn.Module):
    """Linear → GELU (or GPT-2's tanh chain) → Linear, plus the residual: a transformer's MLP."""

    def __init__(self, act: str, c: int = 64, hidden: int = 256):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(c, hidden), nn.Linear(hidden, c), act

    def forward(self, x):
        h = self.fc1(x)
        if self.act == "gelu":
            h = nn.functional.gelu(h)
        else:  # gelu_new, written out as transformers' GPT-2 does
            h = 0.5 * h * (1.0 + torch.tanh(0.7978845608 * (h + 0.044715 * torch.pow(h, 3.0))))
        return x + self.fc2(h)


def _imported(act: str, shape=(1, 16, 64)):
    torch.manual_seed(0)
    model = _MLPBlock(act, shape[-1]).eval()
    x = torch.randn(*shape)
    return model, x, load_model(model, (x,))


def _ops_after_reshape(mod) -> list[str]:
    """The ops that read a reshape's result directly."""
    var2val = relax.analysis.get_var2val(mod["main"])

    def reshaped(arg) -> bool:
        val = var2val.get(arg)
        return isinstance(val, relax.Call) and getattr(val.op, "name", "") == "relax.reshape"

    return [val.op.name.removeprefix("relax.") for val in var2val.values()
            if isinstance(val, relax.Call) and isinstance(val.op, tvm.ir.Op) and any(reshaped(a) for a in val.args)]


@pytest.mark.parametrize("act", ["gelu", "tanh_chain"])
def test_moves_elementwise_ops_above_reshapes_and_is_idempotent(act):
    _, _, imported = _imported(act)
    before = _ops_after_reshape(imported.mod)
    assert any(op in ("nn.gelu", "multiply", "power", "add") for op in before)
    p = ElementwiseBeforeReshape()
    after = p(imported.mod)
    assert p.moved >= (1 if act == "gelu" else 6)
    assert not {"nn.gelu", "power", "tanh"} & set(_ops_after_reshape(after))
    again = ElementwiseBeforeReshape()
    tvm.ir.assert_structural_equal(again(after), after)
    assert again.moved == 0


def test_leaves_broadcasts_and_shared_tensors_alone():
    """A binary op whose other operand would broadcast is not moved, and an op is never moved
    towards a tensor other ops read (the residual ``x``: moving the add there would only undo
    the move of the add that consumed the matmul)."""
    @I.ir_module
    class Mod:
        @R.function
        def main(a: R.Tensor((16, 64), "float32"), bias: R.Tensor((64,), "float32"),
                 r: R.Tensor((16, 64), "float32")):
            with R.dataflow():
                y = R.reshape(a, R.shape([1, 16, 64]))
                z = R.add(y, bias)  # broadcast of a (64,) vector: stays after the reshape
                s = R.reshape(r, R.shape([1, 16, 64]))
                t = R.add(z, s)  # z is no reshape; s reshapes r, which the output reads too
                gv = (t, r)
                R.output(gv)
            return gv

    p = ElementwiseBeforeReshape()
    out = p(Mod)
    assert p.moved == 0
    tvm.ir.assert_structural_equal(out, Mod)


@pytest.mark.parametrize("act", ["gelu", "tanh_chain"])
def test_matmul_epilogue_fuses_and_matches_torch(host, act, tmp_path):
    model, x, imported = _imported(act)
    lowered = schedule(imported.mod, host).script()
    assert "gelu" in lowered or "tanh" in lowered
    # the activation runs in the matmul's kernel, not after a reshape in a kernel of its own
    fused = [name for name in lowered.split("def ")[1:] if "matmul" in name.split("(")[0]]
    assert any(("gelu" in f.split("(")[0] or "tanh" in f.split("(")[0]) for f in fused)
    art = hwcomp.compile(model, "host", tmp_path / "a", example_inputs=(x,),
                         options=CompileOptions(use_default_database=False))
    ref = model(x).detach().numpy()
    out = art.run([x.numpy()])[0]
    assert np.max(np.abs(out - ref)) <= 1e-4 * np.abs(ref).max()
