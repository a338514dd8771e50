"""The main job of the README's first command: compile, run and verify models for the host CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path




def run_demo(out_dir: Path, log: Callable[[str], None] = print) -> int:
    import torch


    from .api import compile as hw_compile
    from .api import summarize_fidelity
    from .models import MLP, SmallCNN, randomize_batchnorm
    from .runtime.measure import time_callable, time_vm
    from .target import detect_host

    torch.manual_seed(0)
    host = detect_host()
    log(f"target host: {host.description}; vector {host.vector_bits} bit, int8 dot {host.int8_dot}")
    cases = [("cnn", randomize_batchnorm(SmallCNN()).eval(), (torch.randn(1, 3, 32, 32),)),
             ("mlp", MLP().eval(), (torch.randn(8, 512),))]
    worst = 0.0
    for name, model, inputs in cases:
        art = hw_compile(model, host, out_dir / name, example_inputs=inputs, log=log)
        log(f"[{name}] artifact {art.path}; {summarize_fidelity(art.fidelity)}")
        worst = max(worst, art.fidelity["max_abs_err"])
        vm, dev = art.vm(), art.device()
        args = art.device_args([a.numpy() for a in inputs])
        ours = time_vm(vm, dev, args, number=20, repeat=10).median
        with torch.no_grad():
            theirs = time_callable(lambda: model(*inputs), number=20, repeat=10).median
        log(f"[{name}] latency: hwcomp {ours:.3f} ms, PyTorch eager {theirs:.3f} ms "
            f"(hwcomp/PyTorch = {ours / theirs:.2f}x, untuned)")
    ok = worst < 1e-3
    log(f"demo {'passed' if ok else 'FAILED'}: worst max abs error {worst:.2e} (tolerance 1e-3)")
    return 0 if ok else 1


__all__ = ["run_demo"]
