"""Where records live and which target may use them: target signatures, the user's and the shipped
database directories."""

from __future__ import annotations

import pytest
from db_helpers import AARCH64, fill

from hwcomp.records.locations import (
    default_database_dir,
    has_records,
    shipped_database_dir,
    target_signature,
    user_database_dir,
)
from hwcomp.target import get_target


def test_signature_host_matches_x86_avx2_on_avx2_machines(host):
    assert target_signature(AARCH64) == "llvm/aarch64/neon"
    assert target_signature(get_target("x86-avx2")) == "llvm/x86_64/avx2"
    assert target_signature(get_target("x86-avx512")) == "llvm/x86_64/avx512"
    if host.arch == "x86_64" and host.vector_bits == 256:
        assert target_signature(host) == target_signature(get_target("x86-avx2"))


def test_host_compiles_with_compatible_shipped_records(tmp_path, monkeypatch, host):
    avx2 = get_target("x86-avx2")
    monkeypatch.setenv("HWCOMP_CACHE", str(tmp_path / "empty-cache"))
    shipped = shipped_database_dir(avx2)
    if shipped is None or not has_records(shipped):
        pytest.skip("no shipped x86-avx2 records in this checkout")
    assert default_database_dir(avx2) == shipped
    if target_signature(host) == target_signature(avx2):
        assert default_database_dir(host) == shipped
    # A user database for the target wins once it has records.
    fill(user_database_dir(host), host, shapes=((4, 8, 8),), per_workload=1)
    assert default_database_dir(host) == user_database_dir(host)
