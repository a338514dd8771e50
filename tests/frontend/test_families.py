"""Every model family imports, compiles for the host and matches PyTorch.

Tiny configurations (1-2 layers, small widths, 32x32 images, 16 tokens) of each architecture in
``hwcomp.zoo``, built from ``transformers`` config classes with random weights; CNNs get batch-norm
statistics from train-mode passes on random images first. Pass criteria, against the eager PyTorch
module on the same inputs: cosine similarity >= 0.999 and max abs error <= 1e-4 x max |output|
(measured: at most ~1e-5, fp32 with fast math on).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hwcomp
from hwcomp import zoo
from hwcomp.errors import UnsupportedOpError

pytest.importorskip("transformers")

COS_MIN = 0.999
REL_ERR_MAX = 1e-4  # max |hwcomp - torch| / max |torch|


def assert_matches(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape
    assert np.isfinite(out).all()
    scale = float(np.abs(ref).max())
    assert scale > 1e-3, f"reference output has collapsed (max |y| = {scale:g}): the comparison means nothing"
    a, b = out.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    rel = float(np.abs(a - b).max()) / scale
    assert cos >= COS_MIN and rel <= REL_ERR_MAX, f"cosine {cos:.6f}, max abs error / scale {rel:.2e}"


@pytest.mark.parametrize("name", list(zoo.ARCHITECTURES))
def test_family_compiles_and_matches_pytorch(name, tmp_path):
    model = zoo.build(name, "tiny")
    ref = model.reference()
    art = hwcomp.compile(model.module, "host", tmp_path / name, example_inputs=model.inputs)
    names = [s["name"] for s in art.inputs]
    if name in ("gpt2", "llama_small", "qwen2_small"):
        assert names == ["input_ids", "attention_mask", "position_ids"]
    outs = art.run({n: x.numpy() for n, x in zip(names, model.inputs)})
    assert len(outs) == 1
    assert_matches(outs[0], ref)


class _CatOntoEmpty(torch.nn.Module):
    """What transformers' DynamicCache does: the first keys are concatenated onto ``torch.tensor([])``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("cache", torch.tensor([]), persistent=False)

    def forward(self, k):
        return torch.cat([self.cache, k], dim=-2) * 2


def test_cat_skips_legacy_empty_tensor(tmp_path):
    k = torch.randn(1, 2, 4, 8)
    art = hwcomp.compile(_CatOntoEmpty(), "host", tmp_path / "a", example_inputs=(k,))
    np.testing.assert_array_equal(art.run([k.numpy()])[0], (k * 2).numpy())


def test_converter_failure_names_op_node_and_source_line(monkeypatch):
    """Without the workaround TVM's ``cat`` converter fails; the error says where, on one line."""
    from hwcomp.frontend import load_model, torch_fixes

    monkeypatch.setattr(torch_fixes, "CUSTOM_CONVERTERS", {})
    with pytest.raises(UnsupportedOpError) as e:
        load_model(_CatOntoEmpty(), (torch.randn(1, 2, 4, 8),))
    msg = str(e.value)
    assert "\n" not in msg
    assert "cat.default at node 'cat'" in msg and "test_families.py" in msg and "Concat expects" in msg


class _CeilPool(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.max_pool2d(x, 2, ceil_mode=True)  # exported with stride []


def test_max_pool2d_without_stride_uses_the_kernel_size(tmp_path):
    x = torch.randn(1, 3, 7, 7)
    art = hwcomp.compile(_CeilPool(), "host", tmp_path / "a", example_inputs=(x,))
    np.testing.assert_array_equal(art.run([x.numpy()])[0], _CeilPool()(x).numpy())
