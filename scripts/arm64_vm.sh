#!/usr/bin/env bash
# The arm64 images' pod cases, run in an emulated arm64 machine with an arm64 kernel (root).
#
#   scripts/arm64_vm.sh [--repo localhost/meshinit]   test REPO:latest-arm64, REPO:nftables-arm64
#
# Why a whole machine: qemu-user (what `podman run --platform linux/arm64` uses) passes
# neither NETLINK_NETFILTER sockets ("Protocol not supported") nor the iptables socket options
# (IPT_SO_SET_REPLACE) to the kernel, so under it no backend can install a rule. Here
# qemu-system-aarch64 (TCG, no KVM needed) boots Debian's arm64 kernel with an initramfs
# holding a small Debian arm64 userland (python3, iproute2, nftables, kmod), the two images'
# root filesystems as exported from podman, the init and validation containers of
# examples/pod.yaml and examples/pod-cni-validation.yaml (arguments, env, security context),
# and scripts/vm_guest.py, which runs them as the runtime would (chroot into the image, the
# container's uid/gid and capabilities, no_new_privs) in pod network namespaces and sends
# real TCP traffic (scripts/vm_guest.py says which cases). The kernel's serial console comes
# back here; the last line says "N passed, N failed" and the exit status follows it.
#
# The guest userland and kernel are made once per recipe with mmdebstrap (Debian arm64,
# run under qemu-user) and kept in $MESHINIT_CACHE (default ~/.cache/meshinit-image).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/settings.sh
. scripts/settings.sh
# How long the whole emulated run may take (boot included) before it counts as failed.
VM_TIMEOUT="${MESHINIT_VM_TIMEOUT:-900}"

log() { printf 'arm64_vm.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [ "$#" -gt 0 ]; do
    case "$1" in
        --repo) REPO="${2:?--repo needs a repository name}"; shift 2 ;;
        *) sed -n '2,4p' "$0" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || die "run as root (podman's root storage, mmdebstrap)"
scripts/deps.sh image vm || die "missing Debian packages (scripts/deps.sh image vm)"
export CONTAINERS_CONF="$CACHE/containers.conf"
[ -f "$CONTAINERS_CONF" ] || die "$CONTAINERS_CONF is missing: run scripts/image.sh build first"

# The guest's userland: what vm_guest.py runs (python3 with ctypes for setns and prctl),
# iproute2 for the namespaces and veth pairs, nftables to read the rules back, kmod to load
# the netfilter modules. The kernel package is unpacked, not installed: installing it would
# run initramfs-tools under qemu-user for an initramfs this script makes itself.
GUEST_SUITE=bookworm
GUEST_PACKAGES=python3,iproute2,nftables,kmod,util-linux
# The modules the guest keeps (of the kernel's ~3,000): networking, with what it depends on.
GUEST_MODULES="kernel/net kernel/lib kernel/crypto kernel/drivers/net/veth.ko*"

recipe_hash() {
    { printf '%s\n' "$@"; sed -n '/^guest_rootfs()/,/^}/p' "$0"; } | sha256sum | cut -c1-12
}

# guest_rootfs OUT_DIR: the guest's root filesystem, with /boot/vmlinuz (the kernel) and
# /lib/modules trimmed to GUEST_MODULES.
guest_rootfs() {
    local out="$1"
    # modules.* are made again for the kept modules (depmod runs under qemu-user).
    # shellcheck disable=SC2016 # in the hooks, "$1" is mmdebstrap's (the rootfs)
    mmdebstrap --quiet --variant=minbase --architectures=arm64 --format=directory \
        --include="$GUEST_PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --customize-hook='set -e; cd "$1/tmp";
            pkg="$(chroot "$1" apt-cache depends linux-image-arm64 | sed -n "s/^ *Depends: \(linux-image-[0-9].*\)/\1/p" | head -1)";
            [ -n "$pkg" ]; chroot "$1" sh -c "cd /tmp && apt-get download -q $pkg";
            dpkg-deb -x "$1"/tmp/linux-image-*.deb "$1/tmp/kernel"; rm "$1"/tmp/*.deb' \
        --customize-hook='set -e; k="$1/tmp/kernel"; ver="$(ls "$k/lib/modules")";
            install -D -m 0644 "$k"/boot/vmlinuz-* "$1/boot/vmlinuz";
            for m in '"$GUEST_MODULES"'; do
                mkdir -p "$1/lib/modules/$ver/$(dirname "$m")";
                cp -a "$k/lib/modules/$ver/"$m "$1/lib/modules/$ver/$(dirname "$m")/";
            done;
            cp -a "$k/lib/modules/$ver"/modules.builtin* "$1/lib/modules/$ver/";
            rm -rf "$k"; chroot "$1" depmod "$ver"' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/usr/share/info' \
        "$GUEST_SUITE" "$out" "deb $MIRROR $GUEST_SUITE main" \
        "deb $SECURITY_MIRROR $GUEST_SUITE-security main"
}

# The guest (kernel and userland cpio), made when its recipe is new.
guest() {
    local hash dir
    hash="$(recipe_hash "$GUEST_SUITE" "$GUEST_PACKAGES" "$GUEST_MODULES" "$MIRROR" "$SECURITY_MIRROR")"
    GUEST_KERNEL="$CACHE/vm-guest-$hash.vmlinuz"
    GUEST_CPIO="$CACHE/vm-guest-$hash.cpio"
    if [ -f "$GUEST_KERNEL" ] && [ -f "$GUEST_CPIO" ]; then
        log "guest $hash: cached"
        return
    fi
    local start=$SECONDS
    log "guest $hash: making it with mmdebstrap (arm64 $GUEST_SUITE: $GUEST_PACKAGES)"
    dir="$(mktemp -d "$CACHE/vm-guest-XXXXXX")"
    guest_rootfs "$dir/root" >&2
    mv "$dir/root/boot/vmlinuz" "$dir/vmlinuz"
    (cd "$dir/root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc) >"$dir/cpio"
    rm -f "$CACHE"/vm-guest-*.vmlinuz "$CACHE"/vm-guest-*.cpio
    mv "$dir/vmlinuz" "$GUEST_KERNEL"
    mv "$dir/cpio" "$GUEST_CPIO"
    rm -rf "$dir"
    log "guest $hash: made in $((SECONDS - start)) s ($(du -h "$GUEST_CPIO" | cut -f1) cpio)"
}

# The test's own files, appended to the guest's cpio (the kernel unpacks both in order):
# /init, /vm_guest.py with /ruleset_text.py, /cases.json, /images/{latest,nftables}.
test_cpio() {
    local out="$1" work="$2" img name
    mkdir -p "$work/root/images"
    for name in latest nftables; do
        img="$REPO:$name-arm64"
        podman image exists "$img" || die "$img is missing: run scripts/image.sh build first"
        [ "$(podman image inspect --format '{{.Architecture}}' "$img")" = arm64 ] \
            || die "$img is not an arm64 image"
        local ctr
        ctr="$(podman create --quiet "$img")"
        mkdir -p "$work/root/images/$name"
        podman export "$ctr" | tar -x -C "$work/root/images/$name"
        podman rm --force "$ctr" >/dev/null
    done
    install -m 0755 scripts/vm_guest_init.sh "$work/root/init"
    install -m 0644 scripts/vm_guest.py scripts/ruleset_text.py "$work/root/"
    "$PY" - "$work/root/cases.json" \
        "$(podman image inspect --format '{{json .Config.Entrypoint}}' "$REPO:latest-arm64")" \
        "$(podman image inspect --format '{{json .Config.Entrypoint}}' "$REPO:nftables-arm64")" \
        <<'EOF'
import json, sys, yaml

def container(path, name):
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "Pod":
            spec = doc["spec"]
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                if c["name"] == name:
                    return {k: c.get(k) for k in ("args", "env", "securityContext")}
    raise SystemExit(f"{path}: no container {name}")

json.dump({"containers": {"init": container("examples/pod.yaml", "istio-init"),
                          "validation": container("examples/pod-cni-validation.yaml",
                                                  "istio-validation")},
           "entrypoints": {"latest": json.loads(sys.argv[2]),
                           "nftables": json.loads(sys.argv[3])}},
          open(sys.argv[1], "w"), indent=1)
EOF
    (cd "$work/root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc) >"$out"
}

mkdir -p "$CACHE"
PY="$(bash scripts/validate-examples.sh --python)"
guest
work="$(mktemp -d /tmp/meshinit-vm.XXXXXX)"
trap 'rm -rf "$work"' EXIT
test_cpio "$work/test.cpio" "$work"
cat "$GUEST_CPIO" "$work/test.cpio" | gzip -1 >"$work/initrd.gz"
log "booting an emulated arm64 machine (qemu-system-aarch64, $(nproc) CPUs emulated, timeout ${VM_TIMEOUT} s)"
start=$SECONDS
# -no-reboot: the guest's poweroff (or a panic, panic=-1) ends qemu.
set +e
timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-aarch64 -machine virt -cpu max \
    -smp "$(nproc)" -m 1536 -nographic -no-reboot -nic none \
    -kernel "$GUEST_KERNEL" -initrd "$work/initrd.gz" \
    -append "console=ttyAMA0 rdinit=/init panic=-1 quiet loglevel=3" \
    </dev/null | tee "$work/console.log" | sed -u -n 's/^VMTEST //p'
set -e
log "the emulated machine ran $((SECONDS - start)) s"
summary="$(grep -a '^VMTEST RESULT ' "$work/console.log" | tail -1 | tr -d '\r' || true)"
if [ -z "$summary" ]; then
    log "no result from the guest; its console:"
    tail -40 "$work/console.log" >&2
    exit 1
fi
echo "${summary#VMTEST RESULT }"
case "$summary" in
    *" 0 failed") exit 0 ;;
    *) exit 1 ;;
esac
