//! Random valid Istio configurations for property tests: ports, lists as people write them
//! (empty elements, trailing commas), CIDRs of both families, ids, groups, DNS servers.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::IstioConfig;

pub fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("15001".to_string()),
        (1u16..=65535).prop_map(|p| p.to_string()),
    ]
}

/// A comma list as people write them: maybe empty elements, maybe a trailing comma.
fn list_of<S: Strategy<Value = String>>(item: S, max: usize) -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(item, 0..=max),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(items, trailing, double)| {
            let mut text = items.join(if double { ",," } else { "," });
            if trailing && !text.is_empty() {
                text.push(',');
            }
            text
        })
}

/// A port list as people write them (see [`list_of`]), with port ranges (`8000:9000`,
/// iptables' spelling, which Istio's generator passes through) among the ports; a range that
/// would share a port with an earlier entry is left out, since meshinit refuses such lists.
fn port_list(max: usize) -> impl Strategy<Value = String> {
    let entry = prop_oneof![
        3 => port().prop_map(|p| (p.parse::<u16>().unwrap(), None)),
        1 => (1u16..=65535, 0u16..3000).prop_map(|(lo, span)| (lo, Some(lo.saturating_add(span)))),
    ];
    (
        proptest::collection::vec(entry, 0..=max),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(entries, trailing, double)| {
            let mut kept: Vec<(u16, u16, bool)> = Vec::new();
            for (lo, hi) in entries {
                let (hi, range) = (hi.unwrap_or(lo), hi.is_some());
                let clash = kept
                    .iter()
                    .any(|&(l, h, r)| (r || range) && lo <= h && l <= hi);
                if !clash {
                    kept.push((lo, hi, range));
                }
            }
            let items: Vec<String> = kept
                .iter()
                .map(|&(lo, hi, range)| {
                    if range {
                        format!("{lo}:{hi}")
                    } else {
                        lo.to_string()
                    }
                })
                .collect();
            let mut text = items.join(if double { ",," } else { "," });
            if trailing && !text.is_empty() {
                text.push(',');
            }
            text
        })
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, l)| format!("{}/{l}", Ipv4Addr::from(a))),
        (any::<u128>(), 0u8..=128).prop_map(|(a, l)| format!("{}/{l}", Ipv6Addr::from(a))),
        (any::<u8>(), 8u8..=32).prop_map(|(b, l)| format!("127.0.{b}.1/{l}")),
        Just("::1/128".to_string()),
        Just("::ffff:10.1.2.3/120".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("2001:db8::/32".to_string()),
    ]
}

fn ids() -> impl Strategy<Value = String> {
    proptest::collection::vec(0u32..70000, 1..=3)
        .prop_map(|ids| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
}

fn ifname() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,8}"
}

fn group() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,6}",
        (0u32..70000).prop_map(|g| g.to_string())
    ]
}

fn dns_servers() -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
    (
        proptest::collection::vec(
            any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
            0..=2,
        ),
        proptest::collection::vec(
            any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
            0..=2,
        ),
    )
}

prop_compose! {
    /// A random valid configuration (valid for meshinit too, which refuses more than Istio).
    pub fn istio_config()(
        (proxy_port, inbound_capture_port, inbound_tunnel_port) in (port(), port(), port()),
        proxy_uid in ids(),
        proxy_gid in prop_oneof![Just(String::new()), ids()],
        mode in prop_oneof![Just(""), Just("REDIRECT"), Just("TPROXY")],
        mark in (1u32..100_000).prop_filter("1338 is the outbound mark", |m| *m != 1338),
        inbound_ports_include in prop_oneof![Just(String::new()), Just("*".to_string()), Just(",".to_string()), port_list(3)],
        inbound_ports_exclude in port_list(3),
        owner_groups_include in prop_oneof![3 => Just("*".to_string()), 1 => Just(String::new()), 2 => list_of(group(), 4)],
        owner_groups_exclude in list_of(group(), 3),
        (outbound_ports_include, outbound_ports_exclude) in (port_list(3), port_list(3)),
        outbound_ip_ranges_include in prop_oneof![Just(String::new()), Just("*".to_string()), list_of(cidr(), 4)],
        outbound_ip_ranges_exclude in list_of(cidr(), 3),
        (kube_virt_interfaces, exclude_interfaces) in (list_of(ifname(), 2), list_of(ifname(), 2)),
        (redirect_dns, capture_all_dns, drop_invalid, enable_ipv6) in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (dns_servers_v4, dns_servers_v6) in dns_servers(),
        (lb_octet, lb_len) in (any::<u8>(), 8u8..=32),
    ) -> IstioConfig {
        IstioConfig {
            proxy_port, inbound_capture_port, inbound_tunnel_port, proxy_uid, proxy_gid,
            inbound_interception_mode: mode.to_string(),
            inbound_tproxy_mark: mark.to_string(),
            inbound_tproxy_route_table: "133".to_string(),
            inbound_ports_include, inbound_ports_exclude, owner_groups_include, owner_groups_exclude,
            outbound_ports_include, outbound_ports_exclude, outbound_ip_ranges_include,
            outbound_ip_ranges_exclude, kube_virt_interfaces, exclude_interfaces,
            redirect_dns, capture_all_dns, drop_invalid, enable_ipv6,
            dns_servers_v4, dns_servers_v6,
            host_ipv4_loopback_cidr: format!("127.{lb_octet}.0.1/{lb_len}"),
        }
    }
}
