#!/usr/bin/env bash
# meshinit's container images on a machine without a container registry (root).
#
#   scripts/image.sh build   build localhost/meshinit:latest (meshinit + iptables, the default)
#                            and localhost/meshinit:nftables (meshinit alone) from ./Dockerfile
#   scripts/image.sh test    the offline manifest check (scripts/validate-examples.sh) and the
#                            pod-level test (scripts/pod_test.py, with the CNI-mode cases of
#                            scripts/pod_test_cni.py); ends with "N passed, N failed"
#   scripts/image.sh bases   only make (or find) the two base images
#   scripts/image.sh clean   remove the images and base images this script made, and its cache
#
# This script owns: the two base images made from the Debian archive with mmdebstrap (a trixie
# builder with rustc, cargo, gcc and the host's CA certificates; a bookworm runtime base like
# debian:bookworm-slim), tagged with a hash of their recipe and reused while it is unchanged;
# podman's settings for this machine (runc, ulimits it may set; see containers.conf below); a
# cache of cargo's registry and target directory between builds ($MESHINIT_CACHE, default
# ~/.cache/meshinit-image). Builds use --network host and runs use a namespace of their own,
# so podman creates no network, bridge or firewall rule on the host; only the CNI-mode cases
# (scripts/pod_test_cni.py) make bridges of their own, and remove them.
#
# On a machine with Docker Hub none of this is needed: `docker build -t meshinit .` and
# `docker build --target nftables -t meshinit:nftables .` use the Dockerfile's default bases.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${MESHINIT_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/meshinit-image}"
MIRROR="${MESHINIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${MESHINIT_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
IMAGE_DEFAULT=localhost/meshinit:latest
IMAGE_NFTABLES=localhost/meshinit:nftables
BASE_RUST_REPO=localhost/meshinit-base-rust
BASE_DEBIAN_REPO=localhost/meshinit-base-debian

log() { printf 'image.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- what this machine needs --------------------------------------------------------------

# The Debian packages the build and the test need, installed when missing (as root with
# apt-get, as CI runs) by the shared installer, which serialises with any other caller.
ensure_packages() {
    scripts/deps.sh image || die "missing Debian packages (scripts/deps.sh image)"
}

# podman 4.3 here: its default runtime (crun) cannot start containers, and it would raise
# RLIMIT_NOFILE/NPROC above the hard limits root holds here (no CAP_SYS_RESOURCE). A
# containers.conf of our own (CONTAINERS_CONF replaces the system's) pins both; nothing in
# /etc is edited.
setup_podman() {
    [ "$(id -u)" = 0 ] || die "run as root (podman's root storage, network namespaces)"
    mkdir -p "$CACHE"
    local nofile nproc
    nofile="$(ulimit -Hn)"
    nproc="$(ulimit -Hu)"
    [ "$nofile" = unlimited ] && nofile=1048576
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
    cat >"$CACHE/containers.conf" <<EOF
# Written by scripts/image.sh; see there.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
EOF
    export CONTAINERS_CONF="$CACHE/containers.conf"
    PODMAN_ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
}

# --- base images ----------------------------------------------------------------------------

# The host's extra CA certificates (crates.io may be reached through a TLS-intercepting proxy
# whose CA only the host trusts); none on an ordinary machine.
host_ca_files() {
    find /usr/local/share/ca-certificates -type f -name '*.crt' 2>/dev/null | sort
}

# The builder: Debian trixie's Rust (1.85), a C toolchain and static glibc for +crt-static.
BUILDER_SUITE=trixie
BUILDER_PACKAGES=rustc,cargo,gcc,libc6-dev,binutils,ca-certificates
# The runtime base: what debian:bookworm-slim is (essential packages + apt), from which the
# Dockerfile installs iptables.
RUNTIME_SUITE=bookworm
RUNTIME_PACKAGES=

# The recipe's hash names the image: a changed recipe (this function's text, the suite, the
# packages, the host CA certificates) makes a new base; an unchanged one reuses the old.
recipe_hash() {
    {
        declare -f mmdebstrap_base
        echo "$@"
        if [ "$1" = rust ]; then host_ca_files | xargs -r sha256sum; fi
    } | sha256sum | cut -c1-12
}

# mmdebstrap_base KIND SUITE PACKAGES OUT.tar: a minimal merged-/usr rootfs without manuals,
# docs (copyright files are kept) and locales, with the host's CA certificates for KIND=rust.
mmdebstrap_base() {
    local kind="$1" suite="$2" packages="$3" out="$4"
    local hooks=()
    [ -n "$packages" ] && hooks+=(--include="$packages")
    if [ "$kind" = rust ]; then
        local cas=()
        mapfile -t cas < <(host_ca_files)
        if [ "${#cas[@]}" -gt 0 ]; then
            hooks+=(--customize-hook="copy-in ${cas[*]} /usr/local/share/ca-certificates/")
        fi
        # shellcheck disable=SC2016 # "$1" is mmdebstrap's (the rootfs), not ours
        hooks+=(--customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null')
    fi
    local sources=("deb $MIRROR $suite main" "deb $MIRROR $suite-updates main"
        "deb $SECURITY_MIRROR $suite-security main")
    # shellcheck disable=SC2016 # in the hooks, "$1" is mmdebstrap's (the rootfs)
    mmdebstrap --quiet --variant=apt --format=tar \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --aptopt='APT::Install-Recommends "false"' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        "${hooks[@]}" \
        "$suite" "$out" "${sources[@]}"
}

# base KIND: prints the tag of the base image of that kind, making it first when absent.
base() {
    local kind="$1" suite packages repo changes=()
    case "$kind" in
        rust)
            suite=$BUILDER_SUITE packages=$BUILDER_PACKAGES repo=$BASE_RUST_REPO
            changes=(--change 'ENV CARGO_HOME=/usr/local/cargo')
            ;;
        debian) suite=$RUNTIME_SUITE packages=$RUNTIME_PACKAGES repo=$BASE_DEBIAN_REPO ;;
    esac
    local tag
    tag="$repo:$suite-$(recipe_hash "$kind" "$suite" "$packages" "$MIRROR" "$SECURITY_MIRROR")"
    if podman image exists "$tag"; then
        log "base $tag: cached"
        echo "$tag"
        return
    fi
    log "base $tag: making it with mmdebstrap from $MIRROR ($suite: $packages)"
    local tar="$CACHE/base-$kind.tar" start=$SECONDS
    rm -f "$tar"
    mmdebstrap_base "$kind" "$suite" "$packages" "$tar" >&2
    podman import --quiet \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' "${changes[@]}" "$tar" "$tag" >/dev/null
    rm -f "$tar"
    # Older bases of this kind (another recipe) are no longer used.
    local old
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' "$repo"); do
        [ "$old" = "$tag" ] || podman rmi "$old" >/dev/null 2>&1 || true
    done
    log "base $tag: made in $((SECONDS - start)) s"
    echo "$tag"
}

# --- commands -------------------------------------------------------------------------------

cmd_build() {
    ensure_packages
    setup_podman
    local start=$SECONDS rust_base debian_base
    rust_base="$(base rust)"
    debian_base="$(base debian)"
    mkdir -p "$CACHE/cargo-registry" "$CACHE/cargo-target"
    local common=(--runtime runc --network host --pull=never "${PODMAN_ULIMITS[@]}"
        --build-arg "RUST_IMAGE=$rust_base" --build-arg "DEBIAN_IMAGE=$debian_base"
        --volume "$CACHE/cargo-registry:/usr/local/cargo/registry"
        --volume "$CACHE/cargo-target:/src/target"
        --layers --format oci)
    # The images these tags name now; replaced by this build, they are removed after it
    # (only those: other dangling images in the store are not this script's).
    local previous=() img size id
    for img in "$IMAGE_DEFAULT" "$IMAGE_NFTABLES"; do
        id="$(podman image inspect --format '{{.Id}}' "$img" 2>/dev/null)" && previous+=("$id")
    done
    log "building $IMAGE_NFTABLES"
    podman build "${common[@]}" --target nftables --tag "$IMAGE_NFTABLES" . >&2
    log "building $IMAGE_DEFAULT"
    podman build "${common[@]}" --tag "$IMAGE_DEFAULT" . >&2
    for id in "${previous[@]}"; do
        if [ -z "$(podman image inspect --format '{{.RepoTags}}' "$id" 2>/dev/null | tr -d '[]')" ]; then
            podman rmi "$id" >/dev/null 2>&1 || true
        fi
    done
    for img in "$IMAGE_DEFAULT" "$IMAGE_NFTABLES"; do
        size="$(podman image inspect --format '{{.Size}}' "$img")"
        log "$img: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f MB", s / 1e6 }'))"
    done
    log "build done in $((SECONDS - start)) s"
}

cmd_test() {
    ensure_packages
    setup_podman
    local img
    for img in "$IMAGE_DEFAULT" "$IMAGE_NFTABLES"; do
        podman image exists "$img" || die "$img is missing: run scripts/image.sh build first"
    done
    local py probe
    py="$(bash scripts/validate-examples.sh --python)"
    # A Debian image with a shell, for reading what security context a container really gets.
    probe="$(base debian)"
    exec "$py" scripts/pod_test.py \
        --image "$IMAGE_DEFAULT" --nftables-image "$IMAGE_NFTABLES" --probe-image "$probe" \
        --validate-script scripts/validate-examples.sh
}

cmd_clean() {
    setup_podman
    local repo img
    for img in "$IMAGE_DEFAULT" "$IMAGE_NFTABLES"; do podman rmi "$img" >/dev/null 2>&1 || true; done
    for repo in "$BASE_RUST_REPO" "$BASE_DEBIAN_REPO"; do
        for img in $(podman images --format '{{.Repository}}:{{.Tag}}' "$repo"); do
            podman rmi "$img" >/dev/null 2>&1 || true
        done
    done
    rm -rf "$CACHE"
}

case "${1:-}" in
    build) cmd_build ;;
    test) cmd_test ;;
    bases) ensure_packages; setup_podman; base rust; base debian ;;
    clean) cmd_clean ;;
    *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
