#!/usr/bin/env bash
# A pod and a peer network namespace joined by a veth pair, for trying meshinit by hand
# (root). The automated tests build their own (tests/support/netlab.rs); this is for people.
#
#   scripts/lab.sh up                 create mi-pod (10.77.0.1, fd00:77::1) and mi-peer (.2, ::2)
#   scripts/lab.sh apply [FLAGS...]   run target/release/meshinit in mi-pod with Istio's defaults + FLAGS
#   scripts/lab.sh pod CMD...         run a command in mi-pod (e.g. iptables-save, nft list ruleset)
#   scripts/lab.sh peer CMD...        run a command in mi-peer
#   scripts/lab.sh down               delete both namespaces
set -euo pipefail
cd "$(dirname "$0")/.."
POD=mi-pod PEER=mi-peer

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
    ip -n "$POD" addr add fd00:77::1/64 dev eth0 nodad
    ip -n "$PEER" addr add fd00:77::2/64 dev eth0 nodad
    echo "up: $POD (10.77.0.1, fd00:77::1) <-> $PEER (10.77.0.2, fd00:77::2)"
}

case "${1:-}" in
    up) up ;;
    down) ip netns del "$POD" 2>/dev/null || true; ip netns del "$PEER" 2>/dev/null || true ;;
    apply)
        shift
        exec target/release/meshinit istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT \
            -i '*' -x "" -b '*' -d 15090,15021,15020 --network-namespace="/run/netns/$POD" "$@"
        ;;
    pod) shift; exec ip netns exec "$POD" "$@" ;;
    peer) shift; exec ip netns exec "$PEER" "$@" ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
esac
