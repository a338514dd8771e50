"""Shared fixtures. Tests compile real models with TVM and compare against PyTorch/NumPy."""

import os

import pytest
import torch

# Two cores: keep PyTorch from oversubscribing them while TVM's thread pool runs.
torch.set_num_threads(1)
os.environ.setdefault("HWCOMP_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "hwcomp"))


@pytest.fixture(scope="session")
def host():
    from hwcomp.target import detect_host

    return detect_host()
