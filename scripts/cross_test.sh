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
# else the run moves into the images' builder base, scripts/image.sh builder: Debian trixie's
# Rust with its aarch64 std), the cross linker and glibc (scripts/deps.sh cross:
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross), qemu-aarch64 registered with binfmt_misc
# (scripts/binfmt.sh). MESHINIT_CROSS_BUILDER=1 takes the builder even where rustup works.
# The tests are linked statically (+crt-static, as the images' binary), so qemu needs no
# aarch64 loader or library tree: a test binary runs directly through binfmt_misc, and so does
# the meshinit binary it runs in turn (tests/cli.rs, the conformance goldens).
#
# The tests run as a user (nobody), as scripts/test.sh runs them for one without root: every
# test that needs no privileges, none that needs the kernel. The kernel tests (#[ignore]d, or
# skipped without root; scripts/test.sh runs them as root on the machine itself) cannot run
# here: qemu-user 7.2 translates neither NETLINK_NETFILTER sockets (nf_tables batches, the
# native backend, and the backend detection that asks it) nor the iptables get/setsockopt
# calls (legacy tables) nor rtnetlink's policy-routing rules (RTM_*RULE: EOPNOTSUPP), so
# under emulation the kernel would only refuse. CI is unset for the tests: there it makes a
# kernel test that cannot run fail rather than skip. Real arm64 kernels are the business of
# the arm64 pod cases (scripts/image.sh test --arch arm64).
#
# Artifacts go to target/aarch64-unknown-linux-gnu/ (cargo's default target directory, or
# $CARGO_TARGET_DIR), beside the host's: the host's build scripts and proc macros are shared.
# In the builder, to the cache's builder-target/ (kept between runs).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
log() { printf 'cross_test.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# In the builder (see below) the host has done this, and the image has the rest.
if [ -z "${MESHINIT_IN_BUILDER:-}" ]; then
    scripts/deps.sh cross || die "missing Debian packages (scripts/deps.sh cross)"
    scripts/binfmt.sh arm64 || die "cannot run aarch64 binaries here (scripts/binfmt.sh arm64)"
fi

# The target's std: the toolchain's own, or added by rustup. Where rustup cannot (its download
# server unreachable, no rustup), the whole run moves into the images' builder base, whose
# Debian Rust (the crate's minimum version) has it: scripts/image.sh builder.
has_std() { [ -d "$(rustc --print sysroot)/lib/rustlib/$TARGET/lib" ]; }
if [ -n "${MESHINIT_IN_BUILDER:-}" ]; then
    has_std || die "the builder base has no Rust std for $TARGET"
elif [ -n "${MESHINIT_CROSS_BUILDER:-}" ]; then
    exec scripts/image.sh builder scripts/cross_test.sh "$@"
elif ! has_std; then
    if command -v rustup >/dev/null; then
        log "adding the Rust std for $TARGET (rustup target add)"
        rustup target add "$TARGET" || log "rustup target add $TARGET failed"
    fi
    if ! has_std; then
        log "no Rust std for $TARGET here: running in the images' builder base"
        exec scripts/image.sh builder scripts/cross_test.sh "$@"
    fi
fi
log "$(rustc --version), $TARGET"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
# cargo runs each test binary (through binfmt_misc's qemu) as nobody when we are root, and
# without CI (see above).
runner="env -u CI"
if [ "$(id -u)" = 0 ]; then
    runner="setpriv --reuid=65534 --regid=65534 --clear-groups $runner"
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$runner"

# A proof that the binary is the target's before running anything (an x86_64 binary would
# pass every test below while proving nothing about aarch64).
start=$SECONDS
cargo build --locked --target "$TARGET"
bin="${CARGO_TARGET_DIR:-target}/$TARGET/debug/meshinit"
machine="$(readelf -hW "$bin" | sed -n 's/^ *Machine: *//p')"
[ "$machine" = AArch64 ] || die "$bin is for '$machine', not AArch64"
log "$bin: $machine, $("$bin" --version)"

# Tests that cannot run here for a reason of the machine's, not of the architecture's:
# - the dry run's backend choice opens a NETLINK_NETFILTER socket, which qemu-user lacks even
#   for a user (natively the socket opens, so nftables is chosen; here iptables is);
# - rust_version runs the host's cargo (metadata of the lock file), which nobody cannot reach;
# - five of cni_install's --wait tests assume the watcher, natively milliseconds fast, has read
#   the events of its own last write before the test's next change. Emulated it has not (5-10x
#   slower): the events share one line ("replaced (renamed in), renamed away, written: ...",
#   its JSON "change" the first of them; two writes counted as one), or the test changes the
#   link's target between the watcher's look and its watch on the target's directory
#   (src/cni/node.rs reconciles, then follows), a change then seen only at the next event.
#   The other --wait tests run here.
SKIP=(dry_run_shows_the_backend_the_real_run_chooses
    the_manifest_rust_version_is_the_locked_dependencies_highest
    watch_puts_the_entry_back_when_the_cni_rewrites_the_conflist_in_place
    watch_puts_the_entry_back_when_the_cni_renames_a_new_conflist_over_it
    watch_logs_each_event_as_json_with_the_file_the_change_and_the_action
    watch_follows_a_symlinked_conflist_its_appearance_and_its_targets_rewrites
    an_idle_watcher_writes_nothing_after_its_own_write)
# cargo test ARGS [-- HARNESS ARGS]: the skips join the harness's arguments.
cargo_args=() harness=()
seen=
for a in "$@"; do
    if [ -z "$seen" ] && [ "$a" = -- ]; then seen=1; continue; fi
    if [ -n "$seen" ]; then harness+=("$a"); else cargo_args+=("$a"); fi
done
for t in "${SKIP[@]}"; do harness+=(--skip "$t"); done

set +e
cargo test --locked --target "$TARGET" "${cargo_args[@]}" -- "${harness[@]}"
status=$?
set -e
log "aarch64 tests: exit $status in $((SECONDS - start)) s (kernel tests not run, ${#SKIP[@]} skipped: see the script)"
exit "$status"
