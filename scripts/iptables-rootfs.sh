#!/usr/bin/env bash
# scripts/iptables-rootfs.sh RELEASE: prints the path of a minimal root file system of the
# Debian release RELEASE (bullseye: iptables 1.8.7, trixie: 1.8.11, bookworm: 1.8.9) with the
# iptables package installed, building it first when it is absent or its recipe changed (root).
#
# This script owns: that root file system, made from the Debian archive with mmdebstrap
# (variant essential + iptables, merged /usr from bookworm on, no manuals, docs or locales), under
# ${MESHINIT_ROOTFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshinit-rootfs}/RELEASE, with a
# hash of its recipe in RELEASE/.recipe so an unchanged recipe is reused at once.
# tests/iptables_versions.rs runs meshinit with this release's iptables tools through
# `chroot ROOTFS /usr/sbin/TOOL` wrappers. Nothing on the host is changed but the cache and,
# when mmdebstrap is missing, the packages of `scripts/deps.sh test`.
set -euo pipefail

release="${1:?usage: iptables-rootfs.sh RELEASE (bullseye, bookworm, trixie)}"
case "$release" in
    bullseye | bookworm | trixie) ;;
    *) echo "iptables-rootfs.sh: unknown release '$release' (bullseye, bookworm, trixie)" >&2; exit 2 ;;
esac
# shellcheck source=scripts/settings.sh
. "$(dirname "$0")/settings.sh"
CACHE=$ROOTFS_CACHE
PACKAGES=iptables
out="$CACHE/$release"

log() { printf 'iptables-rootfs.sh: %s\n' "$*" >&2; }

# The recipe: this script's text, the release, the mirrors.
recipe="$( { cat "$0"; echo "$release $MIRROR $SECURITY_MIRROR $PACKAGES"; } | sha256sum | cut -c1-16)"
if [ -f "$out/.recipe" ] && [ "$(cat "$out/.recipe")" = "$recipe" ]; then
    echo "$out"
    exit 0
fi

[ "$(id -u)" = 0 ] || { log "error: run as root (mmdebstrap, chroot)"; exit 1; }
# scripts/test.sh installed it up front; run alone, the shared installer does (it serialises).
command -v mmdebstrap >/dev/null || "$(dirname "$0")/deps.sh" test

mkdir -p "$CACHE"
# One builder at a time per release (tests run in parallel).
exec 9>"$CACHE/.$release.lock"
flock 9
if [ -f "$out/.recipe" ] && [ "$(cat "$out/.recipe")" = "$recipe" ]; then
    echo "$out"
    exit 0
fi

log "making $out with mmdebstrap from $MIRROR ($release: $PACKAGES)"
start=$SECONDS
tmp="$out.tmp.$$"
rm -rf "$tmp" "$out"
trap 'rm -rf "$tmp"' EXIT
# bookworm and later are merged-/usr; bullseye's is not (the hook fails there) and needs none.
merged=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
[ "$release" = bullseye ] && merged=()
sources=("deb $MIRROR $release main" "deb $MIRROR $release-updates main"
    "deb $SECURITY_MIRROR $release-security main")
# shellcheck disable=SC2016 # in the hooks, "$1" is mmdebstrap's (the rootfs)
mmdebstrap --quiet --variant=essential --format=directory \
    "${merged[@]}" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --aptopt='APT::Install-Recommends "false"' \
    --include="$PACKAGES" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$release" "$tmp" "${sources[@]}" >&2
mkdir -p "$tmp/run"
echo "$recipe" >"$tmp/.recipe"
mv "$tmp" "$out"
trap - EXIT
log "made $out in $((SECONDS - start)) s ($("$out/usr/sbin/xtables-nft-multi" iptables --version 2>/dev/null || chroot "$out" /usr/sbin/iptables --version))"
echo "$out"
