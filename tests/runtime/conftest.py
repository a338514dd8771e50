"""One emulated aarch64 board per test session, shared by every board test."""

from pathlib import Path

import pytest

BOARD_ROOT = Path(__file__).resolve().parents[2] / ".board" / "aarch64"


@pytest.fixture(scope="session")
def board():
    from hwcomp.runtime.board import board_available, board_down, board_up

    ok, reason = board_available()
    if not ok:
        pytest.skip(reason)
    handle = board_up(BOARD_ROOT)
    yield handle
    if not handle.reused:  # leave a board someone else brought up running
        board_down(BOARD_ROOT)
