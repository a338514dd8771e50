"""Cross-compile for aarch64 and run over TVM RPC on the emulated board (qemu-user; timings are emulated)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from hwcomp.runtime.board import board_status, board_up
from hwcomp.runtime.rpc import ArchMismatchError, upload_library

pytestmark = pytest.mark.board

from .conftest import BOARD_ROOT as ROOT

TARGETS = {
    "rpi4-cortex-a72": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]},
    "rpi5-cortex-a76": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                        "mattr": ["+neon", "+dotprod"]},
}


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def mlp():
    """The torch MLP as a Relax module, with an input and torch's output."""
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    ep = torch.export.export(model, (x,))
    mod = from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True)
    return mod, x.numpy(), expected


def build(mod, target: dict, path: Path, cross: bool = True) -> Path:
    import tvm
    from tvm.support import cc

    ex = tvm.compile(mod, target=tvm.target.Target(target))
    ex.export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++") if cross else None)
    return path


def test_board_state(board):
    assert board_status(ROOT) == dataclasses.replace(board, reused=False)
    again = board_up(ROOT)
    assert again.reused and again.port == board.port and again.pid == board.pid


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mlp_runs_on_board(board, mlp, name, tmp_path):
    import tvm
    from tvm import relax

    mod, x, expected = mlp
    path = build(mod, TARGETS[name], tmp_path / f"mlp_{name}.so")
    remote = board.connect(session_timeout=120)
    dev = remote.cpu()
    vm = relax.VirtualMachine(upload_library(remote, path, board.arch), dev)
    out = vm["main"](tvm.runtime.tensor(x, dev)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_x86_library_refused_before_upload(board, mlp, tmp_path):
    mod, _, _ = mlp
    path = build(mod, {"kind": "llvm"}, tmp_path / "mlp_host.so", cross=False)
    remote = board.connect(session_timeout=60)
    with pytest.raises(ArchMismatchError, match="built for x86_64, but the device is aarch64"):
        upload_library(remote, path, board.arch)
    # Nothing was sent: the session's work dir (inside the board's rootfs) has no such file.
    remote_path = Path(remote.get_function("tvm.rpc.server.workpath")(path.name))
    on_host = ROOT / "rootfs" / remote_path.relative_to("/")
    assert on_host.parent.is_dir() and not on_host.exists()


class SmallCNN(torch.nn.Module):
    """Stem (3 channels, stride 2), BN + ReLU6, depthwise, squeeze-excite, 1x1 with odd channels,
    residual, max pool, global pool: the blocked-layout convolution path end to end."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 20, 3, 2, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(20)
        self.dw = torch.nn.Conv2d(20, 20, 3, 1, 1, groups=20)
        self.se1, self.se2 = torch.nn.Conv2d(20, 6, 1), torch.nn.Conv2d(6, 20, 1)
        self.pw = torch.nn.Conv2d(20, 20, 1)

    def forward(self, x):
        y = torch.nn.functional.relu6(self.bn(self.stem(x)))
        z = self.dw(y)
        z = z * torch.sigmoid(self.se2(torch.relu(self.se1(z.mean((2, 3), keepdim=True)))))
        z = self.pw(z) + y
        z = torch.nn.functional.max_pool2d(z, 2)
        return z.mean((2, 3))


class WinogradNet(torch.nn.Module):
    """Two 3x3 stride-1 convs on NEON's 8-channel blocks: 16 -> 16 at 16x16 (F(4, 3)) and, after a
    stride-2 conv, 16 -> 24 at 7x7 with a residual-free ReLU (F(2, 3), partial tiles)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(16, 16, 3, 1, 1)
        self.down = torch.nn.Conv2d(16, 16, 3, 2, 1)
        self.c2 = torch.nn.Conv2d(16, 24, 3, 1, 1)

    def forward(self, x):
        y = torch.relu(self.c1(x)) + x
        return torch.relu(self.c2(self.down(y)))


#: name: (model, input shape, what the compile log must say)
BOARD_CNNS = {
    "small_cnn": (SmallCNN, (2, 3, 17, 17), "5 convolutions in the blocked layout NCHW8c"),
    "winograd": (WinogradNet, (1, 16, 16, 16), "3 convolutions in the blocked layout NCHW8c, 2 of them as Winograd"),
}


@pytest.mark.parametrize("target", ["rpi4", "rpi5"])
@pytest.mark.parametrize("net", list(BOARD_CNNS))
def test_blocked_convolution_on_board(board, net, target, tmp_path):
    """hwcomp.compile for the board (NCHW8c on NEON; WinogradNet: F(4, 3) and F(2, 3), the NEON
    build of the hand-written input transform and the grouped products) matches PyTorch there
    within 1e-4 of the output scale."""
    import hwcomp
    from hwcomp.models import randomize_batchnorm
    from hwcomp.runtime.session import DeviceModel

    make, shape, said = BOARD_CNNS[net]
    torch.manual_seed(0)
    model = randomize_batchnorm(make()).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = model(x).numpy()
    logs: list[str] = []
    art = hwcomp.compile(model, target, tmp_path / target, example_inputs=(x,), log=logs.append)
    assert any(said in line for line in logs), logs
    with DeviceModel(art, f"rpc://127.0.0.1:{board.port}", session_timeout=300) as dm:
        out = dm.run([x.numpy()])[0]
    assert np.abs(out - expected).max() <= 1e-4 * np.abs(expected).max()


class _Attention(torch.nn.Module):
    """scaled_dot_product_attention with a mask: the fused attention kernel (NEON tiles)."""

    def forward(self, q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("target", ["rpi4", "rpi5"])
def test_fused_attention_on_board(board, target, tmp_path):
    """The fused attention kernel built for the board (33 query rows, 37 keys: ragged row tiles,
    panels and vectors; two fully masked rows) matches PyTorch there to 2e-5."""
    import hwcomp
    from hwcomp.runtime.session import DeviceModel

    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 33, 16, generator=g)
    k, v = (torch.randn(1, 2, 37, 16, generator=g) for _ in range(2))
    mask = torch.zeros(1, 1, 33, 37)
    mask[..., -2:, :] = float("-inf")
    mask[..., :4, -3:] = float("-inf")
    expected = _Attention()(q, k, v, mask).numpy()
    art = hwcomp.compile(_Attention().eval(), target, tmp_path / target, example_inputs=(q, k, v, mask))
    with DeviceModel(art, f"rpc://127.0.0.1:{board.port}", session_timeout=300) as dm:
        out = dm.run([t.numpy() for t in (q, k, v, mask)])[0]
    assert np.all(out[..., -2:, :] == 0)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_sessions_close_promptly(board, tmp_path):
    """Leaving ``DeviceModel``'s ``with`` ends its session at once: the server (one session at a
    time) takes a new connection within 5 s, where an unclosed session (120 s timeout) would hold
    it — until Python's cycle collector happened to run, which is off here."""
    import gc

    import hwcomp
    from hwcomp.runtime.rpc import connect
    from hwcomp.runtime.session import DeviceModel

    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
    x = torch.randn(2, 8)
    art = hwcomp.compile(model, "rpi4", tmp_path / "mlp", example_inputs=(x,))
    url = f"rpc://127.0.0.1:{board.port}"
    gc.disable()
    try:
        with DeviceModel(art, url, session_timeout=120) as dm:
            out = dm.run([x.numpy()])[0]
        np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-5, atol=1e-6)
        remote = connect(url, session_timeout=5)  # SessionTimeoutError if the server is still busy
        assert remote.cpu().exist
        del remote
    finally:
        gc.enable()
        gc.collect()
