#!/usr/bin/env bash
# scripts/cross_test.sh [CARGO TEST ARGS...]: builds meshinit and its tests for
# aarch64-unknown-linux-gnu on this (x86_64) machine and runs them under qemu-user: nothing in
# the code may assume x86_64. CI runs it after the images (.ci/run).
#
#   scripts/cross_test.sh                      every test that needs no kernel (unit, property,
#                                              conformance and dry-run goldens, the binary's CLI)
#   scripts/cross_test.sh --test cli           cargo test's own arguments, as scripts/test.sh
#
# What it needs, made sure of here: the aarch64 Rust std (rustup target add, where rustup is;
# Debian's rustc is too old for the crate), the cross linker and glibc (scripts/deps.sh cross:
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross), qemu-aarch64 registered with binfmt_misc
# (scripts/binfmt.sh). The tests are linked statically (+crt-static, as the images' binary), so
# qemu needs no aarch64 loader or library tree: a test binary runs directly through binfmt_misc,
# and so does the meshinit binary it runs in turn (tests/cli.rs, the conformance goldens).
#
# The kernel tests (#[ignore]d, scripts/test.sh runs them on the machine itself) are not run
# here and cannot be: qemu-user 7.2 translates neither NETLINK_NETFILTER sockets (nf_tables
# batches, the native backend) nor the iptables get/setsockopt calls (legacy tables), so under
# emulation the kernel would only ever refuse. Real arm64 kernels are the business of the
# arm64 pod cases (scripts/image.sh test --arch arm64).
#
# Artifacts go to target/aarch64-unknown-linux-gnu/ (cargo's default target directory, or
# $CARGO_TARGET_DIR), beside the host's: the host's build scripts and proc macros are shared.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
log() { printf 'cross_test.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

scripts/deps.sh cross || die "missing Debian packages (scripts/deps.sh cross)"

# The target's std: the toolchain's own, or added by rustup (its download server must be
# reachable for that, once per machine).
sysroot="$(rustc --print sysroot)"
if [ ! -d "$sysroot/lib/rustlib/$TARGET/lib" ]; then
    command -v rustup >/dev/null \
        || die "the Rust std for $TARGET is missing from $sysroot and there is no rustup to add it"
    log "adding the Rust std for $TARGET (rustup target add)"
    rustup target add "$TARGET" || die "rustup target add $TARGET failed"
fi

scripts/binfmt.sh arm64 || die "cannot run aarch64 binaries here (scripts/binfmt.sh arm64)"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
# cargo runs each test binary through binfmt_misc; naming qemu explicitly makes a missing
# registration an error of qemu's rather than an "Exec format error".
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static

# A proof that the binary is the target's before running anything (an x86_64 binary would
# pass every test below while proving nothing about aarch64).
start=$SECONDS
cargo build --locked --target "$TARGET"
bin="${CARGO_TARGET_DIR:-target}/$TARGET/debug/meshinit"
machine="$(readelf -hW "$bin" | sed -n 's/^ *Machine: *//p')"
[ "$machine" = AArch64 ] || die "$bin is for '$machine', not AArch64"
log "$bin: $machine, $("$bin" --version)"

set +e
cargo test --locked --target "$TARGET" "$@"
status=$?
set -e
log "aarch64 tests: exit $status in $((SECONDS - start)) s (kernel tests not run: see the header)"
exit "$status"
