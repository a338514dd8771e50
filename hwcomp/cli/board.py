"""``hwcomp board up|down|status``: an emulated edge board (qemu-user aarch64 + TVM RPC server)."""

from __future__ import annotations

import argparse

from ..errors import HwcompError
from .args import _print, host_port_type


def add_board_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("arch", nargs="?", default="aarch64")
    s.add_argument("--key", default="rpi4", help="RPC key the board registers under (default rpi4)")
    s.add_argument("--tracker", type=host_port_type, help="HOST:PORT of an RPC tracker to register with")
    s.add_argument("--root", default=".board/aarch64", help="where the board's files live")


def cmd_board(args) -> int:
    from ..runtime import board

    if args.arch != "aarch64":
        raise HwcompError(f"only an emulated aarch64 board is available, not {args.arch!r}")
    if args.action == "up":
        tracker = None
        if args.tracker:
            host, _, port = args.tracker.rpartition(":")
            tracker = (host, int(port))
        try:
            handle = board.board_up(args.root, tracker=tracker, key=args.key, log=_print)
        except board.BoardError as e:
            raise HwcompError(str(e)) from None
        _print(f"board up: {handle.url} (key {handle.key}); timings on it are emulated")
    elif args.action == "down":
        _print("board down" if board.board_down(args.root, log=_print) else "no board was running")
    else:
        handle = board.board_status(args.root)
        _print(f"board up: {handle.url} (key {handle.key})" if handle else "board down")
        return 0 if handle else 3
    return 0
