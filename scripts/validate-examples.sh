#!/usr/bin/env bash
# Offline validation of examples/: every Kubernetes manifest against the schemas that the
# kubernetes-validate package ships, the Istio values files' init image, and the examples'
# consistency (scripts/validate_examples.py says what exactly). No cluster, no network
# beyond PyPI for the first run.
#
#   scripts/validate-examples.sh            run the checks; "ok - ..." lines, "N passed, N failed"
#   scripts/validate-examples.sh --python   make the venv if needed and print its python
#
# This script owns the Python venv of the image tests: kubernetes-validate and PyYAML in
# $MESHINIT_CACHE/venv (default ~/.cache/meshinit-image/venv), never the system's Python.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/settings.sh
. scripts/settings.sh
VENV="$CACHE/venv"
REQUIREMENTS=(kubernetes-validate==1.37.0 PyYAML==6.0.4)

venv_python() {
    local py=/usr/bin/python3
    [ -x "$py" ] || py="$(command -v python3)" || { echo "validate-examples.sh: no python3" >&2; exit 1; }
    local stamp="$VENV/.requirements"
    mkdir -p "$CACHE"
    # One maker at a time (two image tests at once would both rm -rf and pip into one venv).
    exec 8>"$CACHE/.venv.lock"
    flock 8
    if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]; then
        echo "validate-examples.sh: making the venv $VENV (${REQUIREMENTS[*]})" >&2
        rm -rf "$VENV"
        "$py" -m venv "$VENV" >&2
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" >&2
        echo "${REQUIREMENTS[*]}" >"$stamp"
    fi
    exec 8>&-
    echo "$VENV/bin/python"
}

case "${1:-}" in
    --python) venv_python ;;
    "") exec "$(venv_python)" scripts/validate_examples.py ;;
    *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac
