#!/usr/bin/env bash
# A pod and a peer network namespace joined by a veth pair, for trying meshinit by hand
# (root). The automated tests build their own (tests/support/netlab.rs); this is for people.
# Run it without arguments for its usage.
set -euo pipefail
cd "$(dirname "$0")/.."
# Two people on one machine pick their own names; the addresses live inside the namespaces,
# so they never clash.
POD=${MI_POD:-mi-pod}
PEER=${MI_PEER:-mi-peer}
MESHINIT=${MESHINIT:-target/release/meshinit}

usage() {
    cat <<USAGE
Usage: scripts/lab.sh COMMAND

  up               create $POD (10.77.0.1, fd00:77::1 when the host has IPv6) and $PEER
                   (10.77.0.2, fd00:77::2), joined by a veth pair
  apply [FLAGS]    run $MESHINIT in $POD with Istio's default arguments + FLAGS
                   (--dual-stack when $POD has an IPv6 address; --dual-stack=false turns it off)
  pod CMD...       run a command in $POD (e.g. iptables-save, nft list ruleset)
  peer CMD...      run a command in $PEER
  down             delete both namespaces

Environment: MI_POD, MI_PEER (namespace names, default mi-pod, mi-peer), MESHINIT (the binary,
default target/release/meshinit). Needs root.
USAGE
}

# Whether the pod namespace has a global IPv6 address.
pod_has_ipv6() {
    [ -n "$(ip -n "$POD" -6 addr show scope global 2>/dev/null)" ]
}

up() {
    ip netns add "$POD"
    ip netns add "$PEER"
    ip link add eth0 netns "$POD" type veth peer name eth0 netns "$PEER"
    for ns in "$POD" "$PEER"; do
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
    done
    ip -n "$POD" addr add 10.77.0.1/24 dev eth0
    ip -n "$PEER" addr add 10.77.0.2/24 dev eth0
    if ip -n "$POD" addr add fd00:77::1/64 dev eth0 nodad 2>/dev/null &&
        ip -n "$PEER" addr add fd00:77::2/64 dev eth0 nodad 2>/dev/null; then
        echo "up: $POD (10.77.0.1, fd00:77::1) <-> $PEER (10.77.0.2, fd00:77::2)"
    else
        echo "up: $POD (10.77.0.1) <-> $PEER (10.77.0.2); no IPv6 on this host"
    fi
}

case "${1:-}" in
    up) up ;;
    down) ip netns del "$POD" 2>/dev/null || true; ip netns del "$PEER" 2>/dev/null || true ;;
    apply)
        shift
        dual=()
        if pod_has_ipv6; then dual=(--dual-stack); fi
        exec "$MESHINIT" istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT \
            -i '*' -x "" -b '*' -d 15090,15021,15020 --network-namespace="/run/netns/$POD" \
            "${dual[@]}" "$@"
        ;;
    pod) shift; exec ip netns exec "$POD" "$@" ;;
    peer) shift; exec ip netns exec "$PEER" "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
