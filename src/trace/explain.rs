//! `meshinit explain`: where each kind of traffic goes for a configuration. The rows are
//! probe connections chosen from the configuration (an app's and the proxy's outbound
//! connections, each excluded or included destination, port and interface, DNS, inbound per
//! port) and each verdict is the netfilter model's, so the summary is as exact as `trace`.

use std::net::IpAddr;

use super::model::{trace, Backend, GroupLookup};
use super::output::{decided_by, describe_verdict};
use super::{Conn, Direction, Trace};
use crate::config::types::{Cidr, PortRange};
use crate::config::{
    Capture, DnsCapture, InboundCapture, InterceptMode, OutboundInclude, OwnerGroups,
};
use crate::plan::{Plan, Protocol};

/// An application's uid and gid in the probes: any id that is not the proxy's.
pub const APP_ID: u32 = 1000;
/// The app port inbound probes connect to, unless the configuration names ports.
const APP_PORT: u16 = 8080;

/// One row: what the probe stands for, the connection, and where it went.
#[derive(Clone, Debug)]
pub struct Row {
    /// `app → 203.0.113.10:80`, in words.
    pub what: String,
    /// The probe connection.
    pub conn: Conn,
    /// The model's answer.
    pub trace: Trace,
}

/// Sample addresses of one family: somewhere outside the pod, and the pod's own address.
struct Samples {
    outside: IpAddr,
    pod: IpAddr,
    peer: IpAddr,
}

fn samples(v6: bool) -> Samples {
    if v6 {
        Samples {
            outside: "2001:db8::10".parse().unwrap(),
            pod: "fd00:10:244::5".parse().unwrap(),
            peer: "fd00:10:244::7".parse().unwrap(),
        }
    } else {
        Samples {
            outside: "203.0.113.10".parse().unwrap(),
            pod: "10.244.0.5".parse().unwrap(),
            peer: "10.244.0.7".parse().unwrap(),
        }
    }
}

fn out(protocol: Protocol, uid: u32, gid: u32, dst: IpAddr, dport: u16) -> Conn {
    Conn {
        direction: Direction::Out,
        protocol,
        uid,
        gid,
        src: None,
        sport: None,
        dst,
        dport,
        iif: None,
        oif: None,
        mark: 0,
    }
}

fn inbound(protocol: Protocol, src: IpAddr, dst: IpAddr, dport: u16) -> Conn {
    Conn {
        direction: Direction::In,
        protocol,
        uid: 0,
        gid: 0,
        src: Some(src),
        sport: Some(40000),
        dst,
        dport,
        iif: Some("eth0".to_string()),
        oif: None,
        mark: 0,
    }
}

/// A host address inside `net` (its first address, or the one given).
fn inside(net: &Cidr) -> IpAddr {
    net.addr()
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The ports a list element is probed at: a port itself; a range at both of its bounds, each
/// named with the range (` 8000:9000`), since a rule for a range must hold at either end.
fn bounds_of(p: &PortRange) -> Vec<(u16, String)> {
    if p.is_range() && p.lo() != p.hi() {
        vec![
            (p.lo().get(), format!(" {p}")),
            (p.hi().get(), format!(" {p}")),
        ]
    } else if p.is_range() {
        vec![(p.lo().get(), format!(" {p}"))]
    } else {
        vec![(p.lo().get(), String::new())]
    }
}

fn show(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    }
}

/// The probe connections for this configuration, one family at a time.
pub fn probes(capture: &Capture, groups: GroupLookup<'_>) -> Vec<(String, Conn)> {
    let mut rows = Vec::new();
    let families: &[bool] = if capture.ipv6 {
        &[false, true]
    } else {
        &[false]
    };
    let proxy_uid = capture.proxy_uids.first().copied().unwrap_or(1337);
    let proxy_gid = capture.proxy_gids.first().copied().unwrap_or(proxy_uid);
    for &v6 in families {
        let s = samples(v6);
        let tag = if v6 { "IPv6 " } else { "" };
        let mut add = |what: String, conn: Conn| rows.push((format!("{tag}{what}"), conn));
        let outside = match &capture.outbound_include {
            OutboundInclude::Cidrs(cidrs) => cidrs.family(v6).first().map(inside),
            OutboundInclude::All => None,
        };
        add(
            format!("app → {}", show(s.outside, 80)),
            out(Protocol::Tcp, APP_ID, APP_ID, s.outside, 80),
        );
        if let Some(dst) = outside {
            add(
                format!("app → {} (in -i)", show(dst, 80)),
                out(Protocol::Tcp, APP_ID, APP_ID, dst, 80),
            );
        }
        add(
            format!("app → {} udp", show(s.outside, 8125)),
            out(Protocol::Udp, APP_ID, APP_ID, s.outside, 8125),
        );
        add(
            format!("proxy (uid {proxy_uid}) → {}", show(s.outside, 80)),
            out(Protocol::Tcp, proxy_uid, proxy_gid, s.outside, 80),
        );
        let localhost: IpAddr = if v6 {
            "::1".parse().unwrap()
        } else {
            capture.loopback_v4.addr()
        };
        add(
            format!("app → localhost {}", show(localhost, APP_PORT)),
            out(Protocol::Tcp, APP_ID, APP_ID, localhost, APP_PORT),
        );
        let mut to_pod = out(Protocol::Tcp, proxy_uid, proxy_gid, s.pod, APP_PORT);
        to_pod.oif = Some("lo".to_string());
        add(
            format!(
                "proxy → this pod's own address {} (via lo)",
                show(s.pod, APP_PORT)
            ),
            to_pod.clone(),
        );
        to_pod.uid = APP_ID;
        to_pod.gid = APP_ID;
        add(
            format!(
                "app → this pod's own address {} (via lo)",
                show(s.pod, APP_PORT)
            ),
            to_pod,
        );
        for net in capture.outbound_exclude.family(v6) {
            add(
                format!("app → {} (in -x {net})", show(inside(net), 80)),
                out(Protocol::Tcp, APP_ID, APP_ID, inside(net), 80),
            );
        }
        for (port, of) in capture.outbound_ports_exclude.iter().flat_map(bounds_of) {
            for p in [Protocol::Tcp, Protocol::Udp] {
                add(
                    format!("app → port {port} {} (-o{of})", proto_name(p)),
                    out(p, APP_ID, APP_ID, s.outside, port),
                );
            }
        }
        // meshinit's own: each listed uid to each listed port, and to a port it does not list.
        for entry in &capture.outbound_uid_port_excludes {
            for &uid in &entry.uids {
                let protocols = [(entry.tcp, Protocol::Tcp), (entry.udp, Protocol::Udp)];
                for (_, p) in protocols.into_iter().filter(|(on, _)| *on) {
                    for (port, of) in entry.ports.iter().flat_map(bounds_of) {
                        add(
                            format!(
                                "uid {uid} → port {port} {} (--exclude-outbound-ports-for-uids{})",
                                proto_name(p),
                                // The range as this flag takes it: `:` separates its parts.
                                of.replace(':', "-")
                            ),
                            out(p, uid, uid, s.outside, port),
                        );
                    }
                }
                if let Some(other) = (80..).find(|p| entry.ports.iter().all(|q| !q.contains(*p))) {
                    add(
                        format!("uid {uid} → port {other} tcp (not listed for it)"),
                        out(Protocol::Tcp, uid, uid, s.outside, other),
                    );
                }
            }
        }
        for (port, of) in capture.outbound_ports_include.iter().flat_map(bounds_of) {
            add(
                format!("app → port {port} (-q{of})"),
                out(Protocol::Tcp, APP_ID, APP_ID, s.outside, port),
            );
        }
        for name in &capture.exclude_interfaces {
            let mut c = out(Protocol::Tcp, APP_ID, APP_ID, s.outside, 80);
            let oif = iface_example(name.as_str());
            add(format!("app → {} via {oif} (-c)", show(s.outside, 80)), {
                c.oif = Some(oif.clone());
                c
            });
        }
        let dns_servers: Vec<IpAddr> = match &capture.dns {
            DnsCapture::Off => Vec::new(),
            DnsCapture::All => vec![s.outside],
            DnsCapture::Servers { v4, v6: six } => {
                let list = if v6 { six } else { v4 };
                list.iter().map(|d| d.addr).collect()
            }
        };
        for server in dns_servers {
            for p in [Protocol::Udp, Protocol::Tcp] {
                add(
                    format!("app → DNS {} {}", show(server, 53), proto_name(p)),
                    out(p, APP_ID, APP_ID, server, 53),
                );
            }
            add(
                format!("proxy → DNS {} udp", show(server, 53)),
                out(Protocol::Udp, proxy_uid, proxy_gid, server, 53),
            );
            let dns_port = crate::plan::DNS_PORT;
            let exempt = capture
                .outbound_uid_port_excludes
                .iter()
                .filter(|e| e.excludes_udp_port(dns_port))
                .flat_map(|e| e.uids.iter().copied());
            for uid in exempt {
                add(
                    format!(
                        "uid {uid} → DNS {} udp (--exclude-outbound-ports-for-uids)",
                        show(server, 53)
                    ),
                    out(Protocol::Udp, uid, uid, server, 53),
                );
            }
        }
        match &capture.owner_groups {
            OwnerGroups::AllExcept(list) | OwnerGroups::Only(list) => {
                for group in list {
                    if let Some(gid) = group.gid().or_else(|| groups(group.as_str())) {
                        add(
                            format!("app in group {group} → {}", show(s.outside, 80)),
                            out(Protocol::Tcp, APP_ID, gid, s.outside, 80),
                        );
                    }
                }
            }
        }
        // Inbound.
        let mut ports: Vec<(u16, String)> = match &capture.inbound {
            InboundCapture::None => vec![(APP_PORT, String::new())],
            InboundCapture::All { exclude } => {
                let mut v = vec![(APP_PORT, String::new())];
                v.extend(
                    exclude
                        .iter()
                        .flat_map(bounds_of)
                        .map(|(p, of)| (p, format!(" (-d{of})"))),
                );
                v
            }
            InboundCapture::Ports(list) => {
                let mut v: Vec<(u16, String)> = list
                    .iter()
                    .flat_map(bounds_of)
                    .map(|(p, of)| (p, format!(" (-b{of})")))
                    .collect();
                let other = (APP_PORT..)
                    .find(|p| list.iter().all(|q| !q.contains(*p)))
                    .unwrap_or(APP_PORT);
                v.push((other, " (not in -b)".to_string()));
                v
            }
        };
        ports.dedup();
        for (port, why) in ports {
            add(
                format!("peer → app port {port}{why}"),
                inbound(Protocol::Tcp, s.peer, s.pod, port),
            );
        }
        add(
            format!("peer → app port {APP_PORT} udp"),
            inbound(Protocol::Udp, s.peer, s.pod, APP_PORT),
        );
        for net in capture.inbound_exclude_sources.family(v6) {
            add(
                format!(
                    "peer {} → app port {APP_PORT} (--exclude-inbound-sources {net})",
                    inside(net)
                ),
                inbound(Protocol::Tcp, inside(net), s.pod, APP_PORT),
            );
        }
        for name in &capture.exclude_interfaces {
            let mut c = inbound(Protocol::Tcp, s.peer, s.pod, APP_PORT);
            c.iif = Some(iface_example(name.as_str()));
            add(
                format!(
                    "peer → app port {APP_PORT} on {} (-c)",
                    c.iif.clone().unwrap()
                ),
                c,
            );
        }
        for name in &capture.virt_interfaces {
            let mut c = inbound(Protocol::Tcp, s.peer, s.outside, 80);
            c.iif = Some(iface_example(name.as_str()));
            add(
                format!(
                    "VM on {} → {} (-k)",
                    c.iif.clone().unwrap(),
                    show(s.outside, 80)
                ),
                c,
            );
        }
    }
    rows
}

/// A concrete interface a `+` pattern matches (`veth+` → `veth0`).
fn iface_example(pattern: &str) -> String {
    match pattern.strip_suffix('+') {
        Some(prefix) => format!("{prefix}0"),
        None => pattern.to_string(),
    }
}

/// Every probe, traced through the plan.
pub fn rows(capture: &Capture, plan: &Plan, backend: Backend, groups: GroupLookup<'_>) -> Vec<Row> {
    probes(capture, groups)
        .into_iter()
        .map(|(what, conn)| {
            let trace = trace(plan, &conn, backend, groups);
            Row { what, conn, trace }
        })
        .collect()
}

/// The summary as a table a person can check against what they meant.
pub fn text(capture: &Capture, plan: &Plan, backend: Backend, groups: GroupLookup<'_>) -> String {
    let rows = rows(capture, plan, backend, groups);
    let mode = match capture.mode {
        InterceptMode::Redirect => "REDIRECT".to_string(),
        InterceptMode::Tproxy => format!(
            "TPROXY (mark {:#x}, route table {})",
            capture.tproxy_mark, capture.route_table
        ),
    };
    let mut out = format!(
        "meshinit explain: where traffic goes (outbound listener {}, inbound listener {}, \
         inbound mode {mode}; families {}; backend {})\n\n",
        capture.proxy_port,
        capture.inbound_capture_port,
        if capture.ipv6 { "IPv4, IPv6" } else { "IPv4" },
        backend.name(),
    );
    let cells: Vec<[String; 3]> = rows
        .iter()
        .map(|r| {
            let dir = match r.conn.direction {
                Direction::Out => "out",
                Direction::In => "in",
            };
            [
                format!("{dir:<3} {}", r.what),
                describe_verdict(&r.trace),
                decided_by(&r.trace),
            ]
        })
        .collect();
    let header = ["connection", "goes", "decided by"].map(String::from);
    let width = |i: usize| {
        cells
            .iter()
            .chain(std::iter::once(&header))
            .map(|c| c[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    for c in std::iter::once(&header).chain(cells.iter()) {
        out.push_str(&format!("{:<w0$}  {:<w1$}  {}\n", c[0], c[1], c[2]));
    }
    out.push_str(&format!(
        "\n\"app\" is uid/gid {APP_ID}; addresses are examples. `meshinit trace --conn SPEC` \
         shows any one connection's path rule by rule.\n"
    ));
    out
}
