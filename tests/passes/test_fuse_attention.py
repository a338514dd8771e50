"""FuseAttention: attention subgraphs as ``torch.export`` gives them (scaled_dot_product_attention's
safe softmax, eager attention with a scale and an additive mask, a relative-position bias) become
one ``call_tir`` of the fused CPU kernel, and the compiled model matches PyTorch; a softmax that is
also an output is left alone.

Tolerance: max |out - torch| <= 2e-5 (|v| ~ 1).
"""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import hwcomp
from hwcomp.build import compile_module, schedule
from hwcomp.frontend import load_model
from hwcomp.passes.fuse_attention import FuseAttention


class _Sdpa(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class _Eager(torch.nn.Module):
    """BERT/T5-style: ``softmax(q @ kᵀ / 8 + bias + mask) @ v`` (the bias per head, the mask per key)."""

    def __init__(self, probs: bool = False):
        super().__init__()
        self.probs = probs

    def forward(self, q, k, v, bias, mask):
        s = torch.matmul(q, k.transpose(-1, -2)) / 8.0 + bias + mask
        p = torch.softmax(s, dim=-1)
        o = torch.matmul(p, v)
        return (o, p) if self.probs else o


def _compile_run(model, inputs, host):
    imported = load_model(model.eval(), inputs)
    p = FuseAttention(host.vector_bits, host.vector_registers)
    with host.tvm_target():
        p(relax.transform.DecomposeOpsForInference()(imported.mod))
    vm = relax.VirtualMachine(compile_module(schedule(imported.mod, host), host), tvm.cpu())
    out = vm["main"](*(tvm.runtime.tensor(t.numpy()) for t in inputs))
    outs = [out] if hasattr(out, "numpy") else list(out)
    return p.fused, [o.numpy() for o in outs]


@pytest.mark.parametrize("tokens", [197, 1500, 7])
def test_sdpa_fused_matches_torch(host, tokens):
    g = torch.Generator().manual_seed(tokens)
    heads = 1 if tokens == 1500 else 3
    q, k, v = (torch.randn(1, heads, tokens, 64, generator=g) for _ in range(3))
    mask = torch.zeros(1, 1, tokens, tokens)
    mask[..., -2:, :] = float("-inf")  # fully masked query rows: 0 in PyTorch
    mask[..., :3, -2:] = float("-inf")
    fused, (out,) = _compile_run(_Sdpa(), (q, k, v, mask), host)
    ref = _Sdpa()(q, k, v, mask).numpy()
    assert fused == 1
    assert np.isfinite(out).all() and np.all(out[..., -2:, :] == 0)
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_eager_scale_bias_mask_matches_torch(host):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 16, generator=g) for _ in range(3))
    bias = torch.randn(1, 4, 33, 33, generator=g)
    mask = torch.zeros(2, 1, 1, 33)
    mask[1, ..., -6:] = -1e4
    fused, (out,) = _compile_run(_Eager(), (q, k, v, bias, mask), host)
    assert fused == 1
    np.testing.assert_allclose(out, _Eager()(q, k, v, bias, mask).numpy(), atol=2e-5)


def test_softmax_used_elsewhere_is_not_fused(host):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g) for _ in range(3))
    bias, mask = torch.zeros(1, 2, 9, 9), torch.zeros(1, 1, 1, 9)
    fused, (out, probs) = _compile_run(_Eager(probs=True), (q, k, v, bias, mask), host)
    ref_o, ref_p = _Eager(probs=True)(q, k, v, bias, mask)
    assert fused == 0
    np.testing.assert_allclose(out, ref_o.numpy(), atol=2e-5)
    np.testing.assert_allclose(probs, ref_p.numpy(), atol=2e-6)


def test_idempotent(host):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    imported = load_model(_Sdpa().eval(), (q, k, v, torch.zeros(1, 1, 16, 16)))
    first = FuseAttention(host.vector_bits, host.vector_registers)
    again = FuseAttention(host.vector_bits, host.vector_registers)
    with host.tvm_target():
        again(first(relax.transform.DecomposeOpsForInference()(imported.mod)))
    assert first.fused == 1 and again.fused == 0


class _SelfAttention(torch.nn.Module):
    """BERT/ViT-style: Q, K, V projections split into heads (``view`` + ``transpose``), SDPA, merge."""

    def __init__(self, dim: int = 48, heads: int = 3, scale_v: bool = False):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(dim, dim) for _ in range(3))
        self.heads, self.scale_v = heads, scale_v

    def forward(self, x):
        b, t, c = x.shape

        def split(y):
            return y.view(b, t, self.heads, c // self.heads).transpose(1, 2)

        v = split(self.v(x)) * (0.5 if self.scale_v else 1.0)
        o = torch.nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), v)
        return o.transpose(1, 2).reshape(b, t, c)


@pytest.mark.parametrize("tokens,scale_v", [(197, False), (13, True)])
def test_projections_read_in_place(host, tokens, scale_v, tmp_path):
    """Q, K and V are read where the projections wrote them (``[B, T, H*D]``; SDPA's scale on q and
    k folded into the kernel's epilogue), not through head-major copies: no ``permute_dims`` of a
    projection feeds the kernel (a scaled V keeps its copy); the result matches PyTorch."""
    torch.manual_seed(tokens)
    model = _SelfAttention(scale_v=scale_v).eval()
    x = torch.randn(2, tokens, 48)
    imported = load_model(model, (x,))
    p = FuseAttention(host.vector_bits, host.vector_registers)
    with host.tvm_target():
        fused = p(relax.transform.DecomposeOpsForInference()(imported.mod))
    assert p.fused == 1
    calls = [v for v in relax.analysis.get_var2val(fused["main"]).values()
             if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir"
             and v.args[0].name_hint.startswith("attention")]
    shapes = [tuple(int(d) for d in a.ty.shape.values) for a in calls[0].args[1].fields]
    assert shapes == [(2, tokens, 48), (2, tokens, 48), (6, tokens, 16) if scale_v else (2, tokens, 48)]
    art = hwcomp.compile(model, "host", tmp_path / "a", example_inputs=(x,),
                         options=hwcomp.CompileOptions(use_default_database=False))
    with torch.no_grad():
        np.testing.assert_allclose(art.run([x.numpy()])[0], model(x).numpy(), atol=2e-5)
