"""Compile a PyTorch conv model for the host and compare it with PyTorch (shared by the conv tests)."""

from __future__ import annotations

import re

import torch
from numeric import assert_close_to_scale

import hwcomp
from hwcomp.models import randomize_batchnorm


def compile_host(model, x, tmp_path, options=None):
    """``hwcomp.compile`` for the host, and from its log how many convolutions went into the blocked
    layout and how many of those into Winograd form: ``(artifact, blocked, winograd)``."""
    logs: list[str] = []
    out_dir = tmp_path / f"art{len(list(tmp_path.iterdir()))}"
    art = hwcomp.compile(model, "host", out_dir, example_inputs=(x,), options=options, log=logs.append)
    blocked = winograd = 0
    for line in logs:
        found = re.match(r"(\d+) convolutions in the blocked layout [^,\s]+(?:, (\d+) of them as Winograd)?", line)
        if found:
            blocked, winograd = int(found.group(1)), int(found.group(2) or 0)
    return art, blocked, winograd


def check_against_torch(model, shape, tmp_path, rel_tol: float, options=None, seed: int = 0) -> tuple[int, int]:
    """Compile ``model`` (batch-norm statistics randomized) for input ``shape``, run it on fresh
    inputs, assert ``max |out - ref| <= rel_tol * max |ref|``; returns (blocked, winograd) convs."""
    torch.manual_seed(seed)
    model = randomize_batchnorm(model, seed).eval()
    art, blocked, winograd = compile_host(model, torch.randn(*shape), tmp_path, options)
    x = torch.randn(*shape)  # not the inputs the fidelity report used
    with torch.no_grad():
        ref = model(x).numpy()
    (out,) = art.run([x.numpy()])
    assert_close_to_scale(out, ref, rel_tol)
    return blocked, winograd
