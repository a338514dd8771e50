"""hwcomp bench --profile: per-kernel times from the VM's instrument hook."""

import pytest
import torch
from torch import nn

import hwcomp
from hwcomp.cli import main
from hwcomp.errors import HwcompError
from hwcomp.runtime.kernel_profile import profile_kernels


@pytest.fixture(scope="module")
def lopsided(tmp_path_factory):
    """Three Linears, the middle one 16× the weight bytes of the others together."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 8)).eval()
    return hwcomp.compile(model, "host", tmp_path_factory.mktemp("p") / "lopsided", example_inputs=(torch.randn(2, 32),),
                          options=hwcomp.CompileOptions(use_default_database=False))


def test_profile_ranks_the_heavy_kernel_first(lopsided):
    p = profile_kernels(lopsided, runs=10)
    names = [k.name for k in p.kernels]
    assert len(names) == len(set(names)) and all(k.calls == 1 for k in p.kernels), names
    # constant-weight products compile to hwcomp's packed-weight kernel (``dense_packed``)
    assert sum("matmul" in n or "dense_packed" in n for n in names) == 3, names
    first, second = p.kernels[0], p.kernels[1]
    assert "matmul" in first.name or "dense_packed" in first.name
    # 4 MB of weights against 128 kB and 32 kB: memory-bound at batch 2, so ≥ 2× is a wide margin
    assert first.ms >= 2 * second.ms, p.lines()
    assert 0 < p.kernel_ms <= p.wall_ms
    # the profile runs the model as usual: outputs still match the reference afterwards
    ref_in, ref_out = lopsided.reference()
    torch.testing.assert_close(torch.from_numpy(lopsided.run(ref_in)[0]), torch.from_numpy(ref_out[0]),
                               rtol=1e-4, atol=1e-5)


def test_bench_cli_profile(lopsided, capsys):
    assert main(["bench", str(lopsided.path), "--repeat", "3", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "per kernel" in out and "ms/call" in out and "VM builtins" in out


def test_profile_refuses_remote_device(lopsided):
    with pytest.raises(HwcompError, match="--device local"):
        from hwcomp.cli import build_parser, cmd_bench

        args = build_parser().parse_args(["bench", str(lopsided.path), "--device", "rpc://127.0.0.1:1", "--profile"])
        cmd_bench(args)
