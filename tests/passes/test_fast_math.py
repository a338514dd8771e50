"""FastMath: GELU/softmax/exp/erf/tanh become polynomial approximations, within 1e-6 of libm."""

import math

import numpy as np
import torch
import tvm
from tvm import relax

from hwcomp.build import compile_module, schedule
from hwcomp.frontend import load_model
from hwcomp.passes import FastMath


class _Ops(torch.nn.Module):
    def forward(self, x):
        return (torch.nn.functional.gelu(x), torch.nn.functional.gelu(x, approximate="tanh"),
                torch.softmax(x, -1), torch.exp(x.clamp(max=20)), torch.tanh(x), torch.erf(x))


def _imported():
    x = torch.linspace(-9, 9, 6 * 64).reshape(6, 64)
    return load_model(_Ops().eval(), (x,)), x


def test_rewrites_every_transcendental_op():
    imported, _ = _imported()
    before = imported.mod.script()
    after = FastMath()(imported.mod).script()
    for op in ("R.nn.gelu(", "R.nn.gelu_tanh(", "R.nn.softmax(", "R.exp(", "R.tanh(", "R.erf("):
        assert op in before, op
        assert op not in after, f"{op} left in the module"
    assert "fast_erf" in after and "fast_exp" in after and "fast_tanh" in after


def _run(imported, x, host, fast: bool):
    mod = schedule(imported.mod, host, fast_math=fast)
    vm = relax.VirtualMachine(compile_module(mod, host), tvm.cpu())
    return [o.numpy() for o in vm["main"](tvm.runtime.tensor(x.numpy()))]


def test_matches_libm_and_torch(host):
    imported, x = _imported()
    ref = [t.numpy() for t in _Ops()(x)]
    fast = _run(imported, x, host, True)
    exact = _run(imported, x, host, False)
    for name, f, e, r in zip(("gelu", "gelu_tanh", "softmax", "exp", "tanh", "erf"), fast, exact, ref):
        # exp is compared relatively (values up to e^9); the others are bounded by 1 or |x|
        scale = np.maximum(np.abs(r), 1.0) if name == "exp" else 1.0
        assert np.max(np.abs(f - r) / scale) < 2e-6, name
        assert np.max(np.abs(e - r) / scale) < 2e-6, name
    assert not all(np.array_equal(f, e) for f, e in zip(fast, exact)), "fast_math=False changed nothing"
    assert math.isfinite(float(fast[0].sum()))


class _Powers(torch.nn.Module):
    def forward(self, x):  # GPT-2's gelu_new cubes its input; RMSNorm squares
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0)))), x.pow(2)


def test_small_integer_powers_become_multiplications(host):
    x = torch.linspace(-5, 5, 4 * 96).reshape(4, 96)
    imported = load_model(_Powers().eval(), (x,))
    assert "R.power(" in imported.mod.script()
    assert "R.power(" not in FastMath()(imported.mod).script()
    ref = [t.numpy() for t in _Powers()(x)]
    for out, r in zip(_run(imported, x, host, True), ref):
        np.testing.assert_allclose(out, r, rtol=2e-6, atol=2e-6)
