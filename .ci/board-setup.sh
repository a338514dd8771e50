#!/usr/bin/env bash
# Prerequisites of the emulated aarch64 board (hwcomp/runtime/board.py), run by CI before pytest:
# the apt packages, binfmt_misc and qemu-aarch64. A fast no-op when all is present.
# Never fails CI: if something cannot be set up it prints why and exits 0; the board tests then skip
# (with the reason from hwcomp.runtime.board.board_available()).
set -u

PKGS="qemu-user-static binfmt-support g++-aarch64-linux-gnu mmdebstrap arch-test"  # = board.APT_PACKAGES
LOG="${TMPDIR:-/tmp}/hwcomp-board-setup.log"

skip() {
    echo "board-setup: not set up: $*; the board tests will skip"
    [ -s "$LOG" ] && tail -n 5 "$LOG" | sed 's/^/board-setup:   /'
    exit 0
}

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || skip "needs Linux on x86_64 (this is $(uname -s)-$(uname -m))"
[ "$(id -u)" -eq 0 ] || skip "needs root (apt-get, mount, chroot)"
command -v dpkg-query >/dev/null || skip "not a Debian-like system (no dpkg-query)"

missing=""
for pkg in $PKGS; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    command -v apt-get >/dev/null || skip "no apt-get to install:$missing"
    echo "board-setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    : >"$LOG"
    timeout 600 apt-get update >>"$LOG" 2>&1 || skip "apt-get update failed"
    timeout 600 apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=120 $missing >>"$LOG" 2>&1 \
        || skip "apt-get install failed"
fi

BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/status" ]; then
    mount -t binfmt_misc binfmt_misc "$BINFMT" >"$LOG" 2>&1 || skip "cannot mount binfmt_misc"
fi
if ! grep -q '^enabled' "$BINFMT/qemu-aarch64" 2>/dev/null; then
    update-binfmts --enable qemu-aarch64 >"$LOG" 2>&1 || skip "cannot enable qemu-aarch64 in binfmt_misc"
fi
echo "board-setup: board prerequisites present"
exit 0
