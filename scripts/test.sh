#!/usr/bin/env bash
# The project's test command (README: "First commands"; .ci/run calls it).
#
# As root: installs what the real-kernel tests need (scripts/deps.sh test) when it is missing,
# then runs every test, the kernel tests included (they are #[ignore]d for plain `cargo test`).
# As another user: runs every test that needs no privileges and says how many kernel tests it
# skipped and how to run them. Arguments go to `cargo test` (e.g. `--test apply_state`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    # Everything the kernel tests need, installed once here before any test starts (tests run
    # in parallel and must not each run apt-get).
    scripts/deps.sh test
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
