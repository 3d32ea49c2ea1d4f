#!/usr/bin/env bash
# scripts/deps.sh GROUP...: installs the Debian/Ubuntu packages a group of checks needs, once,
# when any is missing (root with apt-get); otherwise names what is missing and exits 1.
#
# This script owns the list of what the tests and images need from the distribution and the one
# apt-get run that installs it. Every other script calls it up front instead of running apt-get
# itself, and it holds a lock while it checks and installs, so parallel callers (tests run in
# parallel, CI and a developer at once) never race on apt's and dpkg's locks: the second caller
# waits, then finds everything installed.
#
# Groups:
#   test   the kernel tests of scripts/test.sh (tools, other iptables releases, python3)
#   image  scripts/image.sh: podman + runc, the base images' builder, the examples' venv,
#          qemu-user-static + arch-test (the foreign architecture: builds, runs, its base)
#   docker scripts/image.sh docker: Debian's Docker engine, run on its own for one test build
#   vm     scripts/arm64_vm.sh: an emulated arm64 machine (qemu-system-aarch64) and cpio for
#          its initramfs
#   cri    scripts/cri_test.sh: containerd with its CRI plugin, runc, the bridge/host-local CNI
#          plugins, a static busybox for the test's images, python3-venv for the CRI client
#   cross  scripts/cross_test.sh: the aarch64 cross linker and glibc, qemu-user-static to run
#          the aarch64 test binaries
set -euo pipefail

declare -A GROUP
# iptables/nftables: both backends; iproute2: namespaces, veth, routes; util-linux: setpriv,
# unshare, flock; libcap2-bin: setcap; procps: sysctl; mmdebstrap + ca-certificates: other
# iptables releases' root file systems (scripts/iptables-rootfs.sh); python3: the lab and
# benchmark scripts' own tests.
GROUP[test]="iptables nftables iproute2 util-linux libcap2-bin procps mmdebstrap ca-certificates python3"
GROUP[image]="podman runc mmdebstrap uidmap iptables nftables iproute2 util-linux procps
    ca-certificates python3 python3-venv containernetworking-plugins qemu-user-static arch-test"
GROUP[docker]="docker.io"
# containerd: the CRI runtime the kubelet drives (its CRI plugin passes pod annotations to CNI);
# busybox-static: the one binary the test's pause and app images hold.
GROUP[vm]="qemu-system-arm cpio gzip"
GROUP[cri]="containerd runc containernetworking-plugins busybox-static iptables iproute2
    util-linux procps python3 python3-venv"
# gcc-aarch64-linux-gnu + libc6-dev-arm64-cross: cargo's linker for aarch64-unknown-linux-gnu
# (and glibc's static libraries for +crt-static); qemu-user-static: its binfmt_misc entries.
GROUP[cross]="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static"

log() { printf 'deps.sh: %s\n' "$*" >&2; }

# The usage: this header, up to the line before `set -euo pipefail`.
[ "$#" -gt 0 ] || { sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' >&2; exit 2; }
want=()
for group in "$@"; do
    [ -n "${GROUP[$group]:-}" ] || { log "unknown group '$group' (${!GROUP[*]})"; exit 2; }
    read -r -d '' -a pkgs <<<"${GROUP[$group]}" || true  # the words of a multi-line list
    want+=("${pkgs[@]}")
done

missing_packages() {
    local p
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"
    done
}

command -v dpkg-query >/dev/null || { log "not a Debian/Ubuntu system: install ${want[*]} by hand"; exit 1; }
[ -z "$(missing_packages)" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "missing packages: $(missing_packages | tr '\n' ' ')(as root: $0 $*)"
    exit 1
fi

# One installer at a time; the check is repeated under the lock, since the one before us may
# have installed everything already.
mkdir -p /run/lock
exec 9>/run/lock/meshinit-deps.lock
flock 9
mapfile -t missing < <(missing_packages)
[ "${#missing[@]}" -eq 0 ] && exit 0
log "installing ${missing[*]}"
# DPkg::Lock::Timeout: wait for another apt (unattended upgrades, a user) instead of failing.
apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
