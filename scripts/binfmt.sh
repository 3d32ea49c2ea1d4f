#!/usr/bin/env bash
# scripts/binfmt.sh ARCH: makes this machine run ARCH's (amd64, arm64) Linux binaries, through
# qemu-user and binfmt_misc; nothing to do for the machine's own architecture.
#
# Debian's qemu-user-static ships the registrations in /usr/lib/binfmt.d but registers them only
# through systemd or binfmt-support, neither of which runs here (containers, CI); registering
# them by hand (root) is idempotent: an existing entry is left as it is. The "F" flag in
# Debian's entries makes the kernel open the interpreter at registration, so a foreign binary
# also runs inside containers and when a foreign process executes another (a test running the
# binary it tests). scripts/image.sh (foreign images) and scripts/cross_test.sh (aarch64 unit
# tests) call it; the package comes from their scripts/deps.sh groups.
set -euo pipefail

die() { printf 'binfmt.sh: error: %s\n' "$*" >&2; exit 1; }

[ "$#" -eq 1 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
arch="$1"
host="$(dpkg --print-architecture 2>/dev/null || uname -m)"
case "$arch" in
    amd64) qarch=x86_64 ;;
    arm64) qarch=aarch64 ;;
    *) die "architecture '$arch' is not supported (amd64, arm64)" ;;
esac
case "$host" in amd64 | x86_64) host=amd64 ;; arm64 | aarch64) host=arm64 ;; esac
[ "$arch" = "$host" ] && exit 0

dir=/proc/sys/fs/binfmt_misc
conf="/usr/lib/binfmt.d/qemu-$qarch.conf"
if [ ! -e "$dir/qemu-$qarch" ]; then
    [ "$(id -u)" = 0 ] || die "qemu-$qarch is not registered with binfmt_misc (as root: $0 $arch)"
    [ -e "$dir/register" ] || mount -t binfmt_misc binfmt_misc "$dir" \
        || die "cannot mount binfmt_misc on $dir (needed to run $arch binaries)"
    if [ ! -e "$dir/qemu-$qarch" ]; then
        [ -f "$conf" ] || die "$conf is missing (Debian package qemu-user-static)"
        printf 'binfmt.sh: registering qemu-%s with binfmt_misc (%s)\n' "$qarch" "$conf" >&2
        grep -v '^#' "$conf" >"$dir/register" || die "cannot register $conf in $dir"
    fi
fi
grep -qx enabled "$dir/qemu-$qarch" || die "$dir/qemu-$qarch is disabled"
