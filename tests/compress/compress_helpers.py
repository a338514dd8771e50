"""Tiny models and data shared by the compression tests."""
from __future__ import annotations

import torch
from torch import nn


def make_task(n: int = 512, d: int = 8, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A small separable classification task: labels from a fixed random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(classes, d, generator=g)
    return x, (x @ w.T).argmax(1)


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def train(model: nn.Module, data, steps: int = 150, lr: float = 1e-2) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for i in range(steps):
        xb, yb = data[i % len(data)]
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def small_cnn(seed: int = 0) -> nn.Sequential:
    """Conv -> BN -> ReLU -> Conv -> ReLU -> MaxPool -> Flatten -> Linear -> ReLU -> Linear on 1x8x8 inputs."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(12 * 4 * 4, 20), nn.ReLU(), nn.Linear(20, 5),
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics, so slicing them matters
        bn = m[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    return m.eval()
