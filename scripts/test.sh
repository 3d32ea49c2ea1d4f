#!/usr/bin/env bash
# The project's test command (README: "First commands"; .ci/run calls it).
#
# As root: installs what the real-kernel tests need (Debian/Ubuntu packages) when it is missing,
# then runs every test, the kernel tests included (they are #[ignore]d for plain `cargo test`).
# As another user: runs every test that needs no privileges and says how many kernel tests it
# skipped and how to run them. Arguments go to `cargo test` (e.g. `--test apply_state`).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the kernel tests run: iptables (legacy and nft variants) and nft, ip (namespaces, veth),
# setpriv (clients as other users), setcap (file capabilities).
PACKAGES=(iptables nftables iproute2 util-linux libcap2-bin)
TOOLS=(iptables-legacy-restore iptables-nft-restore nft ip setpriv setcap)

missing_tools() {
    local tool
    for tool in "${TOOLS[@]}"; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null || echo "$tool"
    done
}

if [ "$(id -u)" = 0 ]; then
    if [ -n "$(missing_tools)" ]; then
        if ! command -v apt-get >/dev/null; then
            echo "test.sh: missing $(missing_tools | tr '\n' ' ')and no apt-get to install them" >&2
            exit 1
        fi
        echo "test.sh: installing ${PACKAGES[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${PACKAGES[@]}" >/dev/null
    fi
    exec cargo test --locked "$@" -- --include-ignored
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
skipped=$(sed -n 's/^test result: .* \([0-9][0-9]*\) ignored;.*/\1/p' "$log" |
    awk '{ n += $1 } END { print n + 0 }')
echo
echo "test.sh: not root: skipped $skipped kernel tests (real network namespaces and traffic)."
echo "test.sh: to run them too: sudo $0 $*"
exit "$status"
