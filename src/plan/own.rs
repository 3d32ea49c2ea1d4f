//! The rules of meshinit's own capture options, which Istio does not have
//! (`--exclude-inbound-sources`, `--exclude-outbound-ports-for-uids`): pure functions from the
//! configuration to rules that `build` places among Istio's. With the options empty they plan
//! nothing, so Istio's rules stay exactly Istio's.

use super::{Chain, Family, Match, Owner, Protocol, Rule, Scope, Table, Target, DNS_PORT};
use crate::config::types::PortRange;
use crate::config::Capture;

/// `-A ISTIO_INBOUND -s NET -j RETURN` per excluded source network, IPv4 first, in `table`'s
/// inbound dispatch chain (nat under REDIRECT, mangle under TPROXY). `build` appends these
/// right after the chain's first rules of Istio's (the tunnel-port RETURN in nat; in mangle
/// the three `-I` RETURNs Istio inserts at the top) and before any capture or divert rule:
/// Istio's own rules keep their positions and text, so `--check` and `explain` number them as
/// Istio's do, and no capture rule is ever before the exclusion. Every rule ahead of them is
/// a RETURN as well, so where they sit among those changes no verdict.
pub fn inbound_source_returns(c: &Capture, table: Table) -> Vec<Rule> {
    let mut out = Vec::new();
    for (family, nets) in [
        (Family::V4, &c.inbound_exclude_sources.v4),
        (Family::V6, &c.inbound_exclude_sources.v6),
    ] {
        for net in nets {
            out.push(Rule {
                scope: Scope::Only(family),
                ..Rule::new(
                    table,
                    Chain::IstioInbound,
                    "excluded inbound source (meshinit's --exclude-inbound-sources)",
                    vec![Match::Source(net.clone())],
                    Target::Return,
                )
            });
        }
    }
    out
}

/// `-A ISTIO_OUTPUT -p tcp|udp --dport P -m owner --uid-owner U -j RETURN` per entry, uid,
/// protocol and port (ports innermost, so that a long list is one run for `--nft-sets`).
/// `build` puts them right after `-o`'s port RETURNs, before every rule that captures or
/// redirects by owner (the `-o lo` uid rules included) and before the jump to DNS capture: a
/// listed uid's connection to a listed port is never captured, other uids and ports are
/// untouched. The port match is `-o`'s, so these take whatever `-o` takes.
pub fn outbound_uid_port_returns(c: &Capture) -> Vec<Rule> {
    let mut out = Vec::new();
    for entry in &c.outbound_uid_port_excludes {
        for &uid in &entry.uids {
            let protocols = [(entry.tcp, Protocol::Tcp), (entry.udp, Protocol::Udp)];
            for (_, proto) in protocols.into_iter().filter(|(on, _)| *on) {
                for &port in &entry.ports {
                    out.push(Rule::new(
                        Table::Nat,
                        Chain::IstioOutput,
                        "excluded outbound port for this uid (meshinit's --exclude-outbound-ports-for-uids)",
                        vec![
                            Match::Protocol(proto),
                            Match::DestinationPort {
                                port,
                                negate: false,
                            },
                            Match::Owner {
                                owner: Owner::Uid(uid),
                                negate: false,
                            },
                        ],
                        Target::Return,
                    ));
                }
            }
        }
    }
    out
}

/// A uid whose UDP to port 53 is excluded sends its DNS queries to the resolver itself, as
/// the proxy's agent does, so they get the agent's conntrack zone:
/// `-t raw -A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner U -j CT --zone 1`
/// (Kuma's semantics: `udp:53:UID` exempts the uid from DNS capture). `build` puts it after
/// the agent's zone rules and before the app-query zone 2 rules (the first CT rule wins), so
/// the resolver's answer, which raw PREROUTING puts in zone 1, meets its query's conntrack
/// entry. The nat side needs nothing more: the RETURN of
/// [`outbound_uid_port_returns`] comes before nat's jump to ISTIO_OUTPUT_DNS.
pub fn dns_zone_for_excluded_uids(c: &Capture) -> Vec<Rule> {
    let mut uids: Vec<u32> = Vec::new();
    for entry in &c.outbound_uid_port_excludes {
        if entry.excludes_udp_port(DNS_PORT) {
            for &uid in &entry.uids {
                if !uids.contains(&uid) {
                    uids.push(uid);
                }
            }
        }
    }
    uids.into_iter()
        .map(|uid| {
            Rule::new(
                Table::Raw,
                Chain::IstioOutputDns,
                "uid excluded from DNS capture: its queries in the resolver's conntrack zone 1 (meshinit's --exclude-outbound-ports-for-uids)",
                vec![
                    Match::Protocol(Protocol::Udp),
                    Match::DestinationPort {
                        port: PortRange::single(DNS_PORT),
                        negate: false,
                    },
                    Match::Owner {
                        owner: Owner::Uid(uid),
                        negate: false,
                    },
                ],
                Target::ConntrackZone(1),
            )
        })
        .collect()
}
