#!/usr/bin/env bash
# meshinit's container images on a machine without a container registry (root).
#
#   scripts/image.sh build [--arch amd64|arm64]
#                            build localhost/meshinit:latest (meshinit + iptables, the default)
#                            and localhost/meshinit:nftables (meshinit alone) from ./Dockerfile
#                            for linux/amd64 and linux/arm64 (tags latest-ARCH, nftables-ARCH),
#                            each name a manifest list of the architectures built; --arch: one
#   scripts/image.sh test [--arch ARCH] [--cases LIST]
#                            the offline manifest check (scripts/validate-examples.sh) and the
#                            pod-level test (scripts/pod_test.py, with the CNI-mode cases of
#                            scripts/pod_test_cni.py) on this machine's architecture; for
#                            another (qemu) or with --cases, only those cases of pod_test.py
#                            (default for arm64: static,tools,dry-run); "N passed, N failed"
#   scripts/image.sh docker  build both targets with Debian's Docker engine (a dockerd of its
#                            own, started and stopped here; BuildKit, and the legacy builder
#                            unless MESHINIT_DOCKER_LEGACY=0) and run the default sidecar,
#                            native nftables, security and read-only cases with it
#   scripts/image.sh builder CMD...
#                            run CMD in the builder base image, the checkout at /src (used by
#                            scripts/cross_test.sh where rustup cannot add the aarch64 std)
#   scripts/image.sh bases   only make (or find) the base images
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

# shellcheck source=scripts/settings.sh
. scripts/settings.sh
IMAGE_DEFAULT=$REPO:latest
IMAGE_NFTABLES=$REPO:nftables
BASE_RUST_REPO=$REPO-base-rust
BASE_DEBIAN_REPO=$REPO-base-debian
# The architectures the images are built for; the builder runs on this machine's.
ARCHES=(amd64 arm64)
HOST_ARCH="$(dpkg --print-architecture 2>/dev/null || echo unknown)"

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

# A foreign architecture's binaries (the arm64 image's iptables stage, its test runs) run
# under qemu-user through binfmt_misc, registered by scripts/binfmt.sh (see there).
setup_emulation() {
    [ "$1" = "$HOST_ARCH" ] && return 0
    scripts/binfmt.sh "$1" || die "cannot run $1 binaries on this $HOST_ARCH machine"
}

# --- base images ----------------------------------------------------------------------------

# The host's extra CA certificates (crates.io may be reached through a TLS-intercepting proxy
# whose CA only the host trusts); none on an ordinary machine.
host_ca_files() {
    find /usr/local/share/ca-certificates -type f -name '*.crt' 2>/dev/null | sort
}

# The builder: Debian trixie's Rust (1.85), a C toolchain and static glibc for +crt-static,
# and for the other architecture (amd64 <-> arm64) its Rust std, cross gcc and static glibc,
# so the Dockerfile cross-compiles with nothing to fetch.
BUILDER_SUITE=trixie
BUILDER_PACKAGES=rustc,cargo,gcc,libc6-dev,binutils,ca-certificates
case "$HOST_ARCH" in
    amd64) CROSS_ARCH=arm64 CROSS_PACKAGES=libstd-rust-dev:arm64,gcc-aarch64-linux-gnu,libc6-dev-arm64-cross ;;
    arm64) CROSS_ARCH=amd64 CROSS_PACKAGES=libstd-rust-dev:amd64,gcc-x86-64-linux-gnu,libc6-dev-amd64-cross ;;
    *) CROSS_ARCH='' CROSS_PACKAGES='' ;;
esac
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

# mmdebstrap_base KIND SUITE PACKAGES ARCHES OUT.tar: a minimal merged-/usr rootfs without
# manuals, docs (copyright files are kept) and locales, with the host's CA certificates for
# KIND=rust. ARCHES: the first is the rootfs's own, the others foreign ones dpkg accepts.
mmdebstrap_base() {
    local kind="$1" suite="$2" packages="$3" arches="$4" out="$5"
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
    mmdebstrap --quiet --variant=apt --format=tar --architectures="$arches" \
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

# base KIND [ARCH]: prints the tag of the base image of that kind (the builder: this machine's
# architecture; the runtime base: ARCH's), making it first when absent.
base() {
    local kind="$1" arch="${2:-$HOST_ARCH}" suite packages repo arches changes=()
    case "$kind" in
        rust)
            suite=$BUILDER_SUITE packages=$BUILDER_PACKAGES repo=$BASE_RUST_REPO
            arches=$HOST_ARCH
            if [ -n "$CROSS_ARCH" ]; then
                packages+=",$CROSS_PACKAGES" arches+=",$CROSS_ARCH"
            fi
            changes=(--change 'ENV CARGO_HOME=/usr/local/cargo')
            ;;
        debian)
            suite=$RUNTIME_SUITE packages=$RUNTIME_PACKAGES repo=$BASE_DEBIAN_REPO arches=$arch
            setup_emulation "$arch"
            ;;
    esac
    local tag
    tag="$repo:$suite-$arch-$(recipe_hash "$kind" "$suite" "$packages" "$arches" "$MIRROR" \
        "$SECURITY_MIRROR")"
    if podman image exists "$tag"; then
        log "base $tag: cached"
        echo "$tag"
        return
    fi
    log "base $tag: making it with mmdebstrap from $MIRROR ($suite $arches: $packages)"
    local tar="$CACHE/base-$kind-$arch.tar" start=$SECONDS
    rm -f "$tar"
    mmdebstrap_base "$kind" "$suite" "$packages" "$arches" "$tar" >&2
    podman import --quiet --os linux --arch "$arch" \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' "${changes[@]}" "$tar" "$tag" >/dev/null
    rm -f "$tar"
    # Older bases of this kind and architecture (another recipe) are no longer used.
    local old
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' "$repo"); do
        case "$old" in
            "$tag") ;;
            # this recipe's older versions, and those of before the architecture was named
            "$repo:$suite-$arch-"* | "$repo:$suite-"????????????)
                podman rmi "$old" >/dev/null 2>&1 || true ;;
        esac
    done
    log "base $tag: made in $((SECONDS - start)) s"
    echo "$tag"
}

# --- commands -------------------------------------------------------------------------------

# The images' arguments common to every build on this machine.
build_args() {
    local rust_base
    rust_base="$(base rust)"
    BUILD_COMMON=(--runtime runc --network host --pull=never "${PODMAN_ULIMITS[@]}"
        --build-arg "RUST_IMAGE=$rust_base"
        --volume "$CACHE/cargo-registry:/usr/local/cargo/registry"
        --volume "$CACHE/cargo-target:/src/target"
        --layers --format oci)
}

# manifest NAME IMAGE...: NAME becomes a manifest list of the IMAGEs (one per architecture),
# replacing what NAME was (an older list, or a plain image of an older version of this script).
manifest() {
    local name="$1" img
    shift
    podman manifest rm "$name" >/dev/null 2>&1 || podman rmi "$name" >/dev/null 2>&1 || true
    podman manifest create "$name" >/dev/null
    for img in "$@"; do
        podman manifest add "$name" "containers-storage:$img" >/dev/null
    done
}

cmd_build() {
    ensure_packages
    setup_podman
    local start=$SECONDS arch
    mkdir -p "$CACHE/cargo-registry" "$CACHE/cargo-target"
    build_args
    # The images these tags name now; replaced by this build, they are removed after it
    # (only those: other dangling images in the store are not this script's).
    local previous=() img size id defaults=() nfts=()
    for arch in "${ARCHES[@]}"; do
        for img in "$IMAGE_DEFAULT-$arch" "$IMAGE_NFTABLES-$arch"; do
            id="$(podman image inspect --format '{{.Id}}' "$img" 2>/dev/null)" && previous+=("$id")
        done
    done
    for arch in "${ARCHES[@]}"; do
        local t0=$SECONDS debian_base common
        setup_emulation "$arch"
        debian_base="$(base debian "$arch")"
        # podman 4.3 sets BUILDPLATFORM inside stages but not in FROM lines (see ./Dockerfile).
        common=("${BUILD_COMMON[@]}" --platform "linux/$arch" --build-arg "DEBIAN_IMAGE=$debian_base"
            --build-arg "BUILDER_PLATFORM=linux/$HOST_ARCH")
        log "building $IMAGE_NFTABLES-$arch"
        podman build "${common[@]}" --target nftables --tag "$IMAGE_NFTABLES-$arch" . >&2
        log "building $IMAGE_DEFAULT-$arch"
        podman build "${common[@]}" --tag "$IMAGE_DEFAULT-$arch" . >&2
        log "linux/$arch built in $((SECONDS - t0)) s"
        defaults+=("$IMAGE_DEFAULT-$arch") nfts+=("$IMAGE_NFTABLES-$arch")
    done
    manifest "$IMAGE_DEFAULT" "${defaults[@]}"
    manifest "$IMAGE_NFTABLES" "${nfts[@]}"
    for id in "${previous[@]}"; do
        if [ -z "$(podman image inspect --format '{{.RepoTags}}' "$id" 2>/dev/null | tr -d '[]')" ]; then
            podman rmi "$id" >/dev/null 2>&1 || true
        fi
    done
    for img in "${defaults[@]}" "${nfts[@]}"; do
        size="$(podman image inspect --format '{{.Size}}' "$img")"
        log "$img: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f MB", s / 1e6 }'))"
    done
    log "manifest lists: $IMAGE_DEFAULT, $IMAGE_NFTABLES (${ARCHES[*]})"
    log "build done in $((SECONDS - start)) s"
}

# The cases an emulated architecture runs by default: those whose code depends on it and that
# qemu-user can run (see scripts/pod_test.py): the binary's static linking and ELF machine, the
# iptables tools with their extensions and libraries, and dry runs compared with this machine's.
EMULATED_CASES=static,tools,dry-run

cmd_test() {
    ensure_packages
    setup_podman
    local arch="${TEST_ARCH:-$HOST_ARCH}" cases="$TEST_CASES" img
    setup_emulation "$arch"
    for img in "$IMAGE_DEFAULT-$arch" "$IMAGE_NFTABLES-$arch"; do
        podman image exists "$img" \
            || die "$img is missing: run scripts/image.sh build --arch $arch first"
    done
    local py probe extra=()
    py="$(bash scripts/validate-examples.sh --python)"
    # A Debian image with a shell, for reading what security context a container really gets.
    probe="$(base debian)"
    if [ "$arch" != "$HOST_ARCH" ] && [ -z "$cases" ]; then cases=$EMULATED_CASES; fi
    if [ -n "$cases" ]; then
        extra=(--cases "$cases")
    else
        extra=(--validate-script scripts/validate-examples.sh)
    fi
    if [ "$arch" != "$HOST_ARCH" ]; then
        podman image exists "$IMAGE_NFTABLES-$HOST_ARCH" \
            || die "$IMAGE_NFTABLES-$HOST_ARCH is missing (the dry runs' reference): build it first"
        extra+=(--reference-image "$IMAGE_NFTABLES-$HOST_ARCH")
    fi
    if [ "$arch" = "$HOST_ARCH" ] || [ "$arch" != arm64 ] || [ -n "$TEST_CASES" ]; then
        exec "$py" scripts/pod_test.py --arch "$arch" \
            --image "$IMAGE_DEFAULT-$arch" --nftables-image "$IMAGE_NFTABLES-$arch" \
            --probe-image "$probe" "${extra[@]}"
    fi
    # arm64 on another machine: what qemu-user runs (above), then the pod cases that install
    # rules, in an emulated arm64 machine (qemu-user passes no netfilter socket).
    local status=0
    "$py" scripts/pod_test.py --arch "$arch" \
        --image "$IMAGE_DEFAULT-$arch" --nftables-image "$IMAGE_NFTABLES-$arch" \
        --probe-image "$probe" "${extra[@]}" || status=1
    scripts/arm64_vm.sh --repo "$REPO" || status=1
    return "$status"
}

# --- Docker -----------------------------------------------------------------------------------

# Debian's Docker engine as users build with it, but a dockerd of our own: its data root, exec
# root, socket and pid file under $CACHE/docker (kept: a second run reuses the bases and the
# build's layers), no bridge and no iptables rules (--iptables=false --ip6tables=false
# --bridge=none), no /etc/docker/daemon.json, so nothing of the host changes. It is stopped on
# exit, Ctrl-C and SIGTERM; killed outright (SIGKILL) this script takes it along (setpriv
# --pdeathsig), and the next run stops one an earlier run left, found by its pid file.
DOCKER_DIR="$CACHE/docker"
DOCKER_SOCK="$DOCKER_DIR/docker.sock"
DOCKER_REPO=$REPO-docker
# Debian's docker client (docker.io), the engine's own version; another docker earlier in PATH
# may be a newer client the 20.10 engine does not serve.
DOCKER_CLI=/usr/bin/docker
dk() { "$DOCKER_CLI" -H "unix://$DOCKER_SOCK" "$@"; }

# The pid in $DOCKER_DIR/dockerd.pid when it is a dockerd of that data root.
dockerd_running() {
    local pid
    pid="$(cat "$DOCKER_DIR/dockerd.pid" 2>/dev/null)" || return 1
    [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
        | grep -q -- "dockerd .*--data-root $DOCKER_DIR/data " || return 1
    echo "$pid"
}

# stop_pid PID: SIGTERM, up to 30 s for dockerd to stop its containerd, then SIGKILL.
stop_pid() {
    local pid="$1" _
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
    log "dockerd $pid did not stop in 30 s: killing it"
    kill -9 "$pid" 2>/dev/null || true
}

dockerd_start() {
    local stale
    if stale="$(dockerd_running)"; then
        log "stopping dockerd $stale left by an earlier run"
        stop_pid "$stale"
    fi
    mkdir -p "$DOCKER_DIR/data" "$DOCKER_DIR/exec"
    echo '{}' >"$DOCKER_DIR/daemon.json"
    local nofile nproc
    nofile="$(ulimit -Hn)" nproc="$(ulimit -Hu)"
    [ "$nofile" = unlimited ] && nofile=1048576
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
    log "starting dockerd (state in $DOCKER_DIR)"
    trap dockerd_stop EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # --pdeathsig: SIGTERM to dockerd when this script dies, however (dockerd's containerd
    # gets SIGKILL from dockerd's own death signal in turn).
    setpriv --pdeathsig TERM -- dockerd --config-file "$DOCKER_DIR/daemon.json" \
        --data-root "$DOCKER_DIR/data" --exec-root "$DOCKER_DIR/exec" \
        --pidfile "$DOCKER_DIR/dockerd.pid" -H "unix://$DOCKER_SOCK" \
        --iptables=false --ip6tables=false --bridge=none \
        --default-ulimit "nofile=$nofile:$nofile" --default-ulimit "nproc=$nproc:$nproc" \
        >"$DOCKER_DIR/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    local _
    for _ in $(seq 60); do
        if dk version >/dev/null 2>&1; then
            # Containers a killed run's test left (this daemon runs nothing else).
            dk container prune --force >/dev/null
            return 0
        fi
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 1
    done
    tail -20 "$DOCKER_DIR/dockerd.log" >&2
    die "dockerd did not start (log: $DOCKER_DIR/dockerd.log)"
}

dockerd_stop() {
    [ -n "${DOCKERD_PID:-}" ] || return 0
    log "stopping dockerd $DOCKERD_PID"
    stop_pid "$DOCKERD_PID"
    DOCKERD_PID=
}

# docker_base IMAGE: loads a podman base image into the test dockerd under the same name,
# unless it holds it already (a base's tag names its recipe).
docker_base() {
    local img="$1"
    if ! dk image inspect "$img" >/dev/null 2>&1; then
        log "loading $img into dockerd"
        podman save --format docker-archive "$img" | dk load >&2
    fi
}

# docker_build WHAT ARGS...: one timed `docker build` of this directory.
docker_build() {
    local what="$1" t0=$SECONDS
    shift
    log "docker build $* . ($what)"
    dk build --network host --progress plain "$@" . >&2 || die "docker build ($what) failed"
    log "docker build ($what) done in $((SECONDS - t0)) s"
}

# The sha256 of /usr/local/bin/meshinit in a docker image.
docker_binary_sum() {
    local ctr sum
    ctr="$(dk create "$1")"
    sum="$(dk cp "$ctr:/usr/local/bin/meshinit" - | tar -xO | sha256sum | cut -d' ' -f1)"
    dk rm "$ctr" >/dev/null
    echo "$sum"
}

# Both targets as the README builds them (BuildKit, which sets BUILDPLATFORM and TARGETARCH as
# buildx does, and Docker 23+ uses by default), the default target once more with the legacy
# builder (DOCKER_BUILDKIT=0, given BUILDER_PLATFORM; unless MESHINIT_DOCKER_LEGACY=0), then the
# pod test's static, default sidecar (iptables), native nftables, security-context and
# read-only root cases run by Docker.
cmd_docker() {
    ensure_packages
    scripts/deps.sh docker || die "missing Debian packages (scripts/deps.sh docker)"
    setup_podman
    local start=$SECONDS rust_base debian_base py bases legacy="${MESHINIT_DOCKER_LEGACY:-1}"
    rust_base="$(base rust)"
    debian_base="$(base debian)"
    dockerd_start
    docker_base "$rust_base"
    docker_base "$debian_base"
    bases=(--build-arg "RUST_IMAGE=$rust_base" --build-arg "DEBIAN_IMAGE=$debian_base")
    DOCKER_BUILDKIT=1 docker_build "BuildKit, native nftables" "${bases[@]}" \
        --target nftables --tag "$DOCKER_REPO:nftables"
    DOCKER_BUILDKIT=1 docker_build "BuildKit, the default" "${bases[@]}" \
        --tag "$DOCKER_REPO:latest"
    if [ "$legacy" != 0 ]; then
        DOCKER_BUILDKIT=0 docker_build "legacy builder, the default" "${bases[@]}" \
            --build-arg "BUILDER_PLATFORM=linux/$HOST_ARCH" --tag "$DOCKER_REPO:legacy"
        local a b
        a="$(docker_binary_sum "$DOCKER_REPO:latest")" b="$(docker_binary_sum "$DOCKER_REPO:legacy")"
        [ "$a" = "$b" ] || die "BuildKit's and the legacy builder's meshinit differ ($a, $b)"
        log "BuildKit and the legacy builder built the same meshinit (sha256 $a)"
    fi
    local img size
    for img in "$DOCKER_REPO:latest" "$DOCKER_REPO:nftables"; do
        size="$(dk image inspect --format '{{.Size}}' "$img")"
        log "$img: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f MB", s / 1e6 }'))"
    done
    py="$(bash scripts/validate-examples.sh --python)"
    "$py" scripts/pod_test.py --engine docker --docker-cli "$DOCKER_CLI" \
        --docker-host "unix://$DOCKER_SOCK" --pause-image "$debian_base" \
        --probe-image "$debian_base" \
        --image "$DOCKER_REPO:latest" --nftables-image "$DOCKER_REPO:nftables" \
        --cases static,iptables,nftables,security,read-only
    log "docker builds and test done in $((SECONDS - start)) s"
}

# builder CMD...: CMD in the builder base (Debian's Rust with the other architecture's std and
# cross gcc), the checkout read-only at /src, cargo's registry cache and a target directory of
# its own ($CACHE/builder-target at /target) kept between runs; binfmt_misc's registrations
# hold in there too. scripts/cross_test.sh runs itself so where rustup cannot add a std.
cmd_builder() {
    ensure_packages
    setup_podman
    local rust_base
    rust_base="$(base rust)"
    mkdir -p "$CACHE/cargo-registry" "$CACHE/builder-target"
    podman run --rm --runtime runc --network host "${PODMAN_ULIMITS[@]}" \
        --volume "$PWD:/src:ro" --volume "$CACHE/cargo-registry:/usr/local/cargo/registry" \
        --volume "$CACHE/builder-target:/target" --workdir /src \
        --env CARGO_TARGET_DIR=/target --env MESHINIT_IN_BUILDER=1 --env CI \
        "$rust_base" "$@"
}

cmd_clean() {
    setup_podman
    local repo img
    for img in "$IMAGE_DEFAULT" "$IMAGE_NFTABLES"; do
        podman manifest rm "$img" >/dev/null 2>&1 || podman rmi "$img" >/dev/null 2>&1 || true
        for arch in amd64 arm64; do podman rmi "$img-$arch" >/dev/null 2>&1 || true; done
    done
    for repo in "$BASE_RUST_REPO" "$BASE_DEBIAN_REPO"; do
        for img in $(podman images --format '{{.Repository}}:{{.Tag}}' "$repo"); do
            podman rmi "$img" >/dev/null 2>&1 || true
        done
    done
    rm -rf "$CACHE"
}

usage() { sed -n '2,/^# *scripts\/image.sh clean/p' "$0" >&2; exit 2; }

# Options after the command: --arch ARCH (build, test), --cases LIST (test); builder: the
# command to run.
cmd="${1:-}"
[ "$#" -gt 0 ] && shift
if [ "$cmd" = builder ]; then
    [ "$#" -gt 0 ] || usage
    cmd_builder "$@"
    exit
fi
TEST_ARCH='' TEST_CASES=''
while [ "$#" -gt 0 ]; do
    case "$1" in
        --arch)
            case "${2:-}" in
                amd64 | arm64) ARCHES=("$2") TEST_ARCH="$2" ;;
                *) log "error: --arch '${2:-}': expected amd64 or arm64"; exit 2 ;;
            esac
            shift 2 ;;
        --cases)
            [ -n "${2:-}" ] || { log "error: --cases needs a comma-separated list"; exit 2; }
            TEST_CASES="$2"
            shift 2 ;;
        *) log "error: unknown argument '$1'"; usage ;;
    esac
done
case "$cmd" in
    build) cmd_build ;;
    test) cmd_test ;;
    docker) cmd_docker ;;
    bases) ensure_packages; setup_podman; base rust; for a in "${ARCHES[@]}"; do base debian "$a"; done ;;
    clean) cmd_clean ;;
    *) usage ;;
esac
