//! Plan invariants over random configurations: properties any correct capture ruleset has,
//! whatever Istio's exact text (which the conformance and model tests pin down).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;
use crate::config::detect::DnsServer;
use crate::config::types::{CidrsByFamily, PortRange};
use crate::config::uid_ports::UidPortExclude;
use crate::config::{
    Capture, DnsCapture, InboundCapture, InterceptMode, OutboundInclude, OwnerGroups,
};

fn port() -> impl Strategy<Value = Port> {
    (1u16..).prop_map(|p| p.to_string().parse().unwrap())
}

/// A port list element: a port, or a range in either spelling.
fn port_range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        port().prop_map(PortRange::from),
        (1u16.., 0u16..2000, any::<bool>()).prop_map(|(lo, span, colon)| {
            let hi = lo.saturating_add(span);
            let text = if colon {
                format!("{lo}:{hi}")
            } else {
                format!("{lo}-{hi}")
            };
            text.parse().unwrap()
        }),
    ]
}

fn ports() -> impl Strategy<Value = Vec<PortRange>> {
    proptest::collection::vec(port_range(), 0..4)
}

fn ifnames() -> impl Strategy<Value = Vec<IfName>> {
    proptest::collection::vec("[a-z][a-z0-9]{0,6}", 0..3)
        .prop_map(|names| names.into_iter().map(|n| n.parse().unwrap()).collect())
}

fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| Cidr::new(IpAddr::V4(Ipv4Addr::from(a)), l).unwrap()),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| Cidr::new(IpAddr::V6(Ipv6Addr::from(a)), l).unwrap()),
        Just("127.1.2.3/32".parse().unwrap()),
    ]
}

fn cidrs() -> impl Strategy<Value = CidrsByFamily> {
    proptest::collection::vec(cidr(), 0..4).prop_map(|list| {
        let text = list
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
        CidrsByFamily::parse(&text).unwrap()
    })
}

fn groups() -> impl Strategy<Value = Vec<GroupRef>> {
    proptest::collection::vec(
        prop_oneof!["[a-z]{1,6}", (0u32..70000).prop_map(|g| g.to_string())],
        0..4,
    )
    .prop_map(|gs| gs.into_iter().map(|g| g.parse().unwrap()).collect())
}

fn dns_servers() -> impl Strategy<Value = Vec<DnsServer>> {
    proptest::collection::vec(
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
            any::<u128>().prop_map(|a| IpAddr::V6(a.into()))
        ],
        1..4,
    )
    .prop_map(|addrs| {
        addrs
            .into_iter()
            .map(|addr| DnsServer {
                addr,
                text: addr.to_string(),
            })
            .collect()
    })
}

fn uid_excludes() -> impl Strategy<Value = Vec<UidPortExclude>> {
    let entry = (
        any::<(bool, bool)>(),
        proptest::collection::vec(port(), 1..4),
        proptest::collection::vec(0u32..5000, 1..3),
    )
        .prop_map(|((tcp, udp), mut ports, uids)| {
            // Sometimes the DNS port, which also exempts the uid from DNS capture.
            if tcp && udp {
                ports.push(DNS_PORT);
            }
            UidPortExclude {
                tcp: tcp || !udp,
                udp,
                ports: ports.into_iter().map(PortRange::single).collect(),
                uids,
            }
        });
    proptest::collection::vec(entry, 0..3)
}

/// A chain's rules in the order the kernel holds them after the plan's appends and inserts.
fn installed(rules: &[Rule], table: Table, chain: Chain) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    for rule in rules
        .iter()
        .filter(|r| r.table == table && r.chain == chain)
    {
        match rule.position {
            Position::Append => out.push(rule.clone()),
            Position::Insert(n) => {
                let at = (n as usize).saturating_sub(1).min(out.len());
                out.insert(at, rule.clone());
            }
        }
    }
    out
}

prop_compose! {
    fn capture()(
        (proxy_port, inbound_capture_port, inbound_tunnel_port) in (port(), port(), port()),
        proxy_uids in proptest::collection::vec(0u32..5000, 1..3),
        proxy_gids in proptest::collection::vec(0u32..5000, 1..3),
        tproxy in any::<bool>(),
        tproxy_mark in 1u32..1338,
        inbound in prop_oneof![Just(InboundCapture::None), ports().prop_map(|exclude| InboundCapture::All { exclude }), ports().prop_map(InboundCapture::Ports)],
        (exclude_interfaces, virt_interfaces) in (ifnames(), ifnames()),
        outbound_include in prop_oneof![Just(OutboundInclude::All), cidrs().prop_map(OutboundInclude::Cidrs)],
        outbound_exclude in cidrs(),
        (outbound_ports_include, outbound_ports_exclude) in (ports(), ports()),
        owner_groups in prop_oneof![groups().prop_map(OwnerGroups::AllExcept), groups().prop_map(OwnerGroups::Only)],
        loopback_len in 8u8..=32,
        dns in prop_oneof![Just(DnsCapture::Off), Just(DnsCapture::All), dns_servers().prop_map(|s| {
            let (v4, v6) = s.into_iter().partition(|s| s.addr.is_ipv4());
            DnsCapture::Servers { v4, v6 }
        })],
        (drop_invalid, ipv6) in (any::<bool>(), any::<bool>()),
        (inbound_exclude_sources, outbound_uid_port_excludes) in (cidrs(), uid_excludes()),
    ) -> Capture {
        Capture {
            proxy_port, inbound_capture_port, inbound_tunnel_port, proxy_uids, proxy_gids,
            mode: if tproxy { InterceptMode::Tproxy } else { InterceptMode::Redirect },
            tproxy_mark, route_table: 133, inbound, exclude_interfaces, virt_interfaces,
            outbound_include, outbound_exclude, outbound_ports_include, outbound_ports_exclude,
            owner_groups,
            loopback_v4: Cidr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), loopback_len).unwrap(),
            dns, drop_invalid, ipv6,
            inbound_exclude_sources, outbound_uid_port_excludes,
        }
    }
}

fn addresses(rule: &Rule) -> Vec<IpAddr> {
    rule.matches
        .iter()
        .filter_map(|m| match m {
            Match::Source(net) | Match::Destination { net, .. } => Some(net.addr()),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn planning_is_deterministic(c in capture()) {
        prop_assert_eq!(plan(&c), plan(&c));
    }

    #[test]
    fn ipv6_rules_exist_exactly_when_ipv6_is_on(c in capture()) {
        prop_assert_eq!(plan(&c).families().len() == 2, c.ipv6);
        prop_assert_eq!(plan(&c).rules(Family::V6).is_empty(), !c.ipv6);
    }

    #[test]
    fn each_family_only_names_its_own_addresses(c in capture()) {
        let p = plan(&c);
        for family in p.families() {
            for rule in &p.rules(family) {
                for addr in addresses(rule) {
                    prop_assert_eq!(addr.is_ipv6(), family == Family::V6, "{:?}", rule);
                }
            }
        }
    }

    #[test]
    fn the_proxy_is_exempt_before_anything_is_redirected_outbound(c in capture()) {
        let p = plan(&c);
        for family in p.families() {
            let rules = p.rules(family);
            let output: Vec<&Rule> = rules.iter()
                .filter(|r| r.table == Table::Nat && r.chain == Chain::IstioOutput)
                .collect();
            let first_redirect = output.iter().position(|r| r.jump_target() == Some(Chain::IstioRedirect));
            let Some(first_redirect) = first_redirect else { continue };
            for uid in &c.proxy_uids {
                let exempt = output.iter().position(|r| r.target == Target::Return
                    && r.matches == vec![Match::Owner { owner: Owner::Uid(*uid), negate: false }]);
                prop_assert!(exempt.is_some_and(|e| e < first_redirect), "uid {} exempt too late", uid);
            }
        }
    }

    #[test]
    fn every_jump_goes_to_a_chain_with_rules(c in capture()) {
        let p = plan(&c);
        for family in p.families() {
            let rules = p.rules(family);
            for rule in &rules {
                if let Some(target) = rule.jump_target() {
                    prop_assert!(
                        rules.iter().any(|r| r.table == rule.table && r.chain == target),
                        "{} jumps to empty {}", rule, target.name()
                    );
                }
            }
        }
    }

    #[test]
    fn inserts_land_inside_their_chain(c in capture()) {
        let p = plan(&c);
        for family in p.families() {
            let mut lengths = std::collections::HashMap::new();
            for rule in &p.rules(family) {
                let len = lengths.entry((rule.table, rule.chain)).or_insert(0u32);
                if let Position::Insert(n) = rule.position {
                    prop_assert!(n >= 1 && n <= *len + 1, "{} inserted at {} of {}", rule, n, len);
                }
                *len += 1;
            }
        }
    }

    #[test]
    fn meshinit_own_exclusions_come_before_any_capture(c in capture()) {
        let p = plan(&c);
        let ours = |r: &Rule| r.purpose.contains("meshinit's");
        for family in p.families() {
            let rules = p.rules(family);
            // Inbound: every excluded source's RETURN before any jump (capture, divert).
            let table = if c.mode == InterceptMode::Tproxy { Table::Mangle } else { Table::Nat };
            let inbound = installed(&rules, table, Chain::IstioInbound);
            let sources = c.inbound_exclude_sources.family(family == Family::V6);
            let planned = inbound.iter().filter(|r| ours(r)).count();
            let expected = if c.inbound == InboundCapture::None { 0 } else { sources.len() };
            prop_assert_eq!(planned, expected);
            if let Some(first_jump) = inbound.iter().position(|r| r.jump_target().is_some()) {
                prop_assert!(inbound.iter().rposition(ours).is_none_or(|last| last < first_jump));
            }
            // Outbound: every uid-port RETURN before any rule of Istio's with an owner match
            // (the `-o lo` ones included) and before the DNS jump.
            let output = installed(&rules, Table::Nat, Chain::IstioOutput);
            let first_other = output.iter().position(|r| !ours(r) && (
                r.matches.iter().any(|m| matches!(m, Match::Owner { .. }))
                    || r.jump_target().is_some()));
            if let (Some(last), Some(first)) = (output.iter().rposition(ours), first_other) {
                prop_assert!(last < first, "an exclusion after {}", output[first]);
            }
            let count: usize = c.outbound_uid_port_excludes.iter()
                .map(|e| e.uids.len() * e.ports.len() * (usize::from(e.tcp) + usize::from(e.udp)))
                .sum();
            prop_assert_eq!(output.iter().filter(|r| ours(r)).count(), count);
            // A uid exempted from UDP DNS gets zone 1 before any app-query zone 2 rule.
            let raw = installed(&rules, Table::Raw, Chain::IstioOutputDns);
            let zone2 = raw.iter().position(|r| r.target == Target::ConntrackZone(2)
                && !r.matches.iter().any(|m| matches!(m, Match::Owner { .. })));
            for (i, r) in raw.iter().enumerate().filter(|(_, r)| ours(r)) {
                prop_assert_eq!(&r.target, &Target::ConntrackZone(1));
                prop_assert!(zone2.is_none_or(|z| i < z));
            }
        }
    }

    #[test]
    fn tproxy_routes_only_when_tproxy_captures_inbound(c in capture()) {
        let expected = c.mode == InterceptMode::Tproxy && c.inbound != InboundCapture::None;
        prop_assert_eq!(plan(&c).tproxy_route.is_some(), expected);
    }
}
