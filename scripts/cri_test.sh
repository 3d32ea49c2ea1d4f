#!/usr/bin/env bash
# scripts/cri_test.sh [MESHINIT_BINARY]: CNI mode's per-pod decision under containerd's CRI
# (scripts/cri_test.py says what it checks). Installs its packages (scripts/deps.sh cri), the
# CRI client's Python packages into target/cri-venv (grpcio, grpcio-tools from PyPI), builds
# meshinit when no binary is given, and runs the cases as root. Prints "N passed, N failed";
# exit 0 only when all pass.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "cri_test.sh: needs root (containerd, network namespaces)" >&2; exit 1; }
"$repo/scripts/deps.sh" cri
bin=${1:-}
if [ -z "$bin" ]; then
    (cd "$repo" && cargo build --quiet)
    bin=$repo/target/debug/meshinit
fi
venv=$repo/target/cri-venv
mkdir -p "$repo/target" /run/lock
(
    flock 9
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -c "import grpc, grpc_tools; assert grpc.__version__ == \"1.85.3\"" 2>/dev/null ||
        "$venv/bin/pip" install -q grpcio==1.85.3 grpcio-tools==1.85.1
) 9>/run/lock/meshinit-cri-venv.lock
exec "$venv/bin/python" "$repo/scripts/cri_test.py" "$bin"
