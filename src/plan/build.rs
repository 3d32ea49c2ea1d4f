//! Configuration → plan: Istio's rule-generation algorithm (newest form, stable since 1.25),
//! step by step in its order. Each step's comment shows the iptables rule it plans.

use std::net::{IpAddr, Ipv6Addr};

use super::{
    Chain, CtState, Family, Match, Owner, Plan, Protocol, Rule, Scope, Table, Target, TproxyRoute,
    DNS_PORT, DNS_PROXY_PORT, OUTBOUND_MARK,
};
use crate::config::types::{Cidr, GroupRef, IfName, PortRange};
use crate::config::{
    Capture, DnsCapture, InboundCapture, InterceptMode, OutboundInclude, OwnerGroups,
};

use Chain::*;
use Table::*;

/// The per-family addresses Istio's rules refer to.
struct FamilyAddrs {
    /// Localhost (`127.0.0.1/32` or `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`; `::1/128`).
    loopback: Cidr,
    /// The source the proxy uses for inbound passthrough (`127.0.0.6/32`, `::6/128`).
    passthrough: Cidr,
}

/// Collects rules in generation order, each with its family scope.
struct Rules {
    list: Vec<Rule>,
    ipv6: bool,
    v4_addrs: FamilyAddrs,
    v6_addrs: FamilyAddrs,
}

impl Rules {
    fn both(&mut self, rule: Rule) {
        self.list.push(rule);
    }

    /// A rule for one family; IPv6-only rules are dropped when IPv6 is off.
    fn only(&mut self, family: Family, rule: Rule) {
        if family == Family::V6 && !self.ipv6 {
            return;
        }
        self.list.push(Rule {
            scope: Scope::Only(family),
            ..rule
        });
    }

    /// Rules already scoped (meshinit's own options, see `own`), in order. Unlike Istio's,
    /// their IPv6 exclusions stay with IPv6 off: a native inet table captures IPv6 then too
    /// (its capture rules match no address), and a listed IPv6 peer must not be captured
    /// ([`Plan::rules`] still gives iptables no IPv6 rule when IPv6 is off). Istio's own
    /// IPv6 rules are dropped as Istio drops them, so its output stays Istio's.
    fn scoped(&mut self, rules: Vec<Rule>) {
        for rule in rules {
            match rule.scope {
                Scope::Both => self.both(rule),
                Scope::Only(Family::V6) if is_address_exclusion(&rule) => self.list.push(rule),
                Scope::Only(family) => self.only(family, rule),
            }
        }
    }

    /// A rule for both families that refers to a family-specific address.
    fn per_family(&mut self, make: impl Fn(&FamilyAddrs) -> Rule) {
        let v4 = make(&self.v4_addrs);
        let v6 = make(&self.v6_addrs);
        self.only(Family::V4, v4);
        self.only(Family::V6, v6);
    }
}

/// A RETURN for an address or network: what an exclusion of an IPv6 peer needs to be kept.
fn is_address_exclusion(rule: &Rule) -> bool {
    rule.target == Target::Return
        && rule
            .matches
            .iter()
            .any(|m| matches!(m, Match::Source(_) | Match::Destination { .. }))
}

fn lo() -> IfName {
    "lo".parse().expect("lo is a valid interface name")
}

fn tcp() -> Match {
    Match::Protocol(Protocol::Tcp)
}

fn udp() -> Match {
    Match::Protocol(Protocol::Udp)
}

/// `--dport P` or `--dport LO:HI`: the one place a port list element becomes a match.
fn dport(port: impl Into<PortRange>) -> Match {
    Match::DestinationPort {
        port: port.into(),
        negate: false,
    }
}

/// `! --dport P` (or a range).
fn not_dport(port: impl Into<PortRange>) -> Match {
    Match::DestinationPort {
        port: port.into(),
        negate: true,
    }
}

fn dst(net: &Cidr) -> Match {
    Match::Destination {
        net: net.clone(),
        negate: false,
    }
}

fn not_dst(net: &Cidr) -> Match {
    Match::Destination {
        net: net.clone(),
        negate: true,
    }
}

fn owner(owner: &Owner) -> Match {
    Match::Owner {
        owner: owner.clone(),
        negate: false,
    }
}

fn not_owner(owner: &Owner) -> Match {
    Match::Owner {
        owner: owner.clone(),
        negate: true,
    }
}

/// Computes the plan for a configuration. Pure: same configuration, same plan.
pub fn plan(c: &Capture) -> Plan {
    let mut r = Rules {
        list: Vec::new(),
        ipv6: c.ipv6,
        v4_addrs: FamilyAddrs {
            loopback: c.loopback_v4.clone(),
            passthrough: Cidr::host(IpAddr::from([127, 0, 0, 6])),
        },
        v6_addrs: FamilyAddrs {
            loopback: Cidr::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            passthrough: Cidr::host(IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6))),
        },
    };
    let tproxy = c.mode == InterceptMode::Tproxy;

    // Excluded interfaces: `-A PREROUTING -i IF -j RETURN`, `-A OUTPUT -o IF -j RETURN` in nat,
    // and in mangle too under TPROXY.
    let mut exclude_tables = vec![Nat];
    if tproxy {
        exclude_tables.push(Mangle);
    }
    for table in exclude_tables {
        for ifname in &c.exclude_interfaces {
            let purpose = "excluded interface: inbound not captured";
            r.both(Rule::new(
                table,
                Prerouting,
                purpose,
                vec![Match::InInterface(ifname.clone())],
                Target::Return,
            ));
            let purpose = "excluded interface: outbound not captured";
            r.both(Rule::new(
                table,
                Output,
                purpose,
                vec![Match::OutInterface(ifname.clone())],
                Target::Return,
            ));
        }
    }

    // Virtual (KubeVirt) interfaces: `-I PREROUTING 1 -i IF -j RETURN`.
    for ifname in &c.virt_interfaces {
        let purpose = "VM interface: not inbound traffic";
        r.both(
            Rule::new(
                Nat,
                Prerouting,
                purpose,
                vec![Match::InInterface(ifname.clone())],
                Target::Return,
            )
            .at(1),
        );
    }

    // `-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP`, `-A ISTIO_DROP -j DROP`.
    if c.drop_invalid {
        let purpose = "drop conntrack-invalid packets";
        r.both(Rule::new(
            Mangle,
            Prerouting,
            purpose,
            vec![Match::ConntrackState(CtState::Invalid)],
            Target::Jump(IstioDrop),
        ));
        r.both(Rule::new(Mangle, IstioDrop, purpose, vec![], Target::Drop));
    }

    // `-A ISTIO_INBOUND -p tcp --dport <tunnel> -j RETURN`
    let purpose = "tunnel port is never captured inbound";
    r.both(Rule::new(
        Nat,
        IstioInbound,
        purpose,
        vec![tcp(), dport(c.inbound_tunnel_port)],
        Target::Return,
    ));
    // `-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports <envoy port>`
    let purpose = "outbound: to the proxy's outbound listener";
    r.both(Rule::new(
        Nat,
        IstioRedirect,
        purpose,
        vec![tcp()],
        Target::Redirect(c.proxy_port),
    ));
    // `-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports <inbound capture port>`
    let purpose = "inbound: to the proxy's inbound listener";
    r.both(Rule::new(
        Nat,
        IstioInRedirect,
        purpose,
        vec![tcp()],
        Target::Redirect(c.inbound_capture_port),
    ));

    plan_inbound(&mut r, c);

    // `-A OUTPUT -j ISTIO_OUTPUT`: every protocol, UDP is sorted out inside.
    r.both(Rule::new(
        Nat,
        Output,
        "outbound dispatch",
        vec![],
        Target::Jump(IstioOutput),
    ));

    // `-A ISTIO_OUTPUT -p tcp|udp --dport P -j RETURN` per excluded outbound port.
    for &port in &c.outbound_ports_exclude {
        let purpose = "excluded outbound port";
        r.both(Rule::new(
            Nat,
            IstioOutput,
            purpose,
            vec![tcp(), dport(port)],
            Target::Return,
        ));
        r.both(Rule::new(
            Nat,
            IstioOutput,
            purpose,
            vec![udp(), dport(port)],
            Target::Return,
        ));
    }
    // meshinit's own, after `-o`'s RETURNs: a uid's excluded ports (see `own`).
    r.scoped(super::own::outbound_uid_port_returns(c));

    // `-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN`: the proxy's inbound passthrough.
    r.per_family(|a| {
        let purpose = "proxy's inbound passthrough from 127.0.0.6 is not captured";
        Rule::new(
            Nat,
            IstioOutput,
            purpose,
            vec![
                Match::OutInterface(lo()),
                Match::Source(a.passthrough.clone()),
            ],
            Target::Return,
        )
    });

    let dns_on = c.dns != DnsCapture::Off;
    let loopback_included =
        matches!(&c.outbound_include, OutboundInclude::Cidrs(cidrs) if cidrs.has_loopback());
    let uids = c.proxy_uids.iter().map(|&u| Owner::Uid(u));
    let gids = c
        .proxy_gids
        .iter()
        .map(|&g| Owner::Gid(GroupRef::from_gid(g)));
    let owners: Vec<(Owner, bool)> = uids
        .map(|o| (o, true))
        .chain(gids.map(|o| (o, false)))
        .collect();
    for (who, is_uid) in &owners {
        // The proxy calling the pod's own address (e.g. through a service VIP) goes back
        // through inbound: `-o lo ! -d <lo> -p tcp ! --dport <tunnel> -m owner --uid-owner U
        // -j ISTIO_IN_REDIRECT`. With DNS capture and a UID, port 53 is excluded too
        // (`-m multiport ! --dports 53,<tunnel>`); Istio does not do this for GIDs.
        r.per_family(|a| {
            let port_match = if dns_on && *is_uid {
                Match::DestinationPortNotIn(vec![DNS_PORT, c.inbound_tunnel_port])
            } else {
                not_dport(c.inbound_tunnel_port)
            };
            let purpose = "proxy calling its own pod goes through inbound";
            let matches = vec![
                Match::OutInterface(lo()),
                not_dst(&a.loopback),
                tcp(),
                port_match,
                owner(who),
            ];
            Rule::new(
                Nat,
                IstioOutput,
                purpose,
                matches,
                Target::Jump(IstioInRedirect),
            )
        });
        // App to app over lo is not captured — unless a loopback range is explicitly included:
        // `-o lo [-p tcp ! --dport 53] -m owner ! --uid-owner U -j RETURN`.
        if !loopback_included {
            let purpose = "app calling its own pod over lo is not captured";
            let mut matches = vec![Match::OutInterface(lo())];
            if dns_on {
                matches.extend([tcp(), not_dport(DNS_PORT)]);
            }
            matches.push(not_owner(who));
            r.both(Rule::new(
                Nat,
                IstioOutput,
                purpose,
                matches,
                Target::Return,
            ));
        }
        // `-m owner --uid-owner U -j RETURN`: never capture the proxy's own traffic.
        let purpose = "proxy's own traffic is not captured";
        r.both(Rule::new(
            Nat,
            IstioOutput,
            purpose,
            vec![owner(who)],
            Target::Return,
        ));
    }

    // Owner groups: `-m owner --gid-owner G -j RETURN` per excluded group, or one rule
    // `-m owner ! --gid-owner G1 -m owner ! --gid-owner G2 ... -j RETURN` for an include list.
    match &c.owner_groups {
        OwnerGroups::AllExcept(groups) => {
            for g in groups {
                let purpose = "excluded owner group is not captured";
                r.both(Rule::new(
                    Nat,
                    IstioOutput,
                    purpose,
                    vec![owner(&Owner::Gid(g.clone()))],
                    Target::Return,
                ));
            }
        }
        OwnerGroups::Only(groups) => {
            let purpose = "only the listed owner groups are captured";
            let matches = groups
                .iter()
                .map(|g| not_owner(&Owner::Gid(g.clone())))
                .collect();
            r.both(Rule::new(
                Nat,
                IstioOutput,
                purpose,
                matches,
                Target::Return,
            ));
        }
    }

    plan_dns(&mut r, c, &owners);

    // `-A ISTIO_OUTPUT -d <lo> -j RETURN`: localhost traffic is never captured.
    r.per_family(|a| {
        Rule::new(
            Nat,
            IstioOutput,
            "localhost is not captured",
            vec![dst(&a.loopback)],
            Target::Return,
        )
    });

    // `-A ISTIO_OUTPUT -d C -j RETURN` per excluded CIDR, IPv4 first.
    for family in [Family::V4, Family::V6] {
        for cidr in c.outbound_exclude.family(family == Family::V6) {
            r.only(
                family,
                Rule::new(
                    Nat,
                    IstioOutput,
                    "excluded outbound CIDR",
                    vec![dst(cidr)],
                    Target::Return,
                ),
            );
        }
    }

    // `-A ISTIO_OUTPUT -p tcp --dport P -j ISTIO_REDIRECT` per included outbound port.
    for &port in &c.outbound_ports_include {
        let purpose = "included outbound port is captured";
        r.both(Rule::new(
            Nat,
            IstioOutput,
            purpose,
            vec![tcp(), dport(port)],
            Target::Jump(IstioRedirect),
        ));
    }

    // Included CIDRs, IPv4 then IPv6: `-A ISTIO_OUTPUT [-d C] -j ISTIO_REDIRECT`, and for VM
    // interfaces `-I PREROUTING 1 -i IF [-d C] -j ISTIO_REDIRECT`.
    for family in [Family::V4, Family::V6] {
        match &c.outbound_include {
            OutboundInclude::All => {
                r.only(
                    family,
                    Rule::new(
                        Nat,
                        IstioOutput,
                        "all outbound traffic is captured",
                        vec![],
                        Target::Jump(IstioRedirect),
                    ),
                );
                for ifname in &c.virt_interfaces {
                    let purpose = "VM interface traffic is captured as outbound";
                    r.only(
                        family,
                        Rule::new(
                            Nat,
                            Prerouting,
                            purpose,
                            vec![Match::InInterface(ifname.clone())],
                            Target::Jump(IstioRedirect),
                        )
                        .at(1),
                    );
                }
            }
            OutboundInclude::Cidrs(cidrs) => {
                for cidr in cidrs.family(family == Family::V6) {
                    for ifname in &c.virt_interfaces {
                        let purpose = "VM interface traffic to an included CIDR is captured";
                        let matches = vec![Match::InInterface(ifname.clone()), dst(cidr)];
                        r.only(
                            family,
                            Rule::new(
                                Nat,
                                Prerouting,
                                purpose,
                                matches,
                                Target::Jump(IstioRedirect),
                            )
                            .at(1),
                        );
                    }
                    let purpose = "included outbound CIDR is captured";
                    r.only(
                        family,
                        Rule::new(
                            Nat,
                            IstioOutput,
                            purpose,
                            vec![dst(cidr)],
                            Target::Jump(IstioRedirect),
                        ),
                    );
                }
            }
        }
    }

    if tproxy {
        plan_tproxy_marks(&mut r, c, &owners);
    }

    let tproxy_route = (tproxy && c.inbound != InboundCapture::None).then_some(TproxyRoute {
        mark: c.tproxy_mark,
        table: c.route_table,
    });
    Plan {
        rules: r.list,
        ipv6: c.ipv6,
        tproxy_route,
    }
}

/// Inbound capture (`-b`, `-d`): nat REDIRECT, or mangle TPROXY with its divert chain.
fn plan_inbound(r: &mut Rules, c: &Capture) {
    if c.inbound == InboundCapture::None {
        return;
    }
    let tproxy = c.mode == InterceptMode::Tproxy;
    let table = if tproxy { Mangle } else { Nat };
    if tproxy {
        // `-A ISTIO_DIVERT -j MARK --set-mark <mark>`, `-A ISTIO_DIVERT -j ACCEPT`
        let purpose = "established inbound connection: deliver locally";
        r.both(Rule::new(
            Mangle,
            IstioDivert,
            purpose,
            vec![],
            Target::SetMark(c.tproxy_mark),
        ));
        r.both(Rule::new(
            Mangle,
            IstioDivert,
            purpose,
            vec![],
            Target::Accept,
        ));
        // `-A ISTIO_TPROXY ! -d <lo> -p tcp -j TPROXY --tproxy-mark <mark>/0xffffffff --on-port <in>`
        r.per_family(|a| {
            let purpose = "new inbound connection: to the proxy's inbound listener";
            let target = Target::Tproxy {
                mark: c.tproxy_mark,
                port: c.inbound_capture_port,
            };
            Rule::new(
                Mangle,
                IstioTproxy,
                purpose,
                vec![not_dst(&a.loopback), tcp()],
                target,
            )
        });
    }
    // `-A PREROUTING -p tcp -j ISTIO_INBOUND`
    r.both(Rule::new(
        table,
        Prerouting,
        "inbound dispatch",
        vec![tcp()],
        Target::Jump(IstioInbound),
    ));
    // meshinit's own, before any capture or divert rule: excluded sources (see `own`).
    r.scoped(super::own::inbound_source_returns(c, table));

    let capture = |r: &mut Rules, port: Option<PortRange>| {
        let port_match: Vec<Match> = port.into_iter().map(dport).collect();
        if tproxy {
            let mut matches = vec![tcp()];
            matches.extend(port_match.clone());
            matches.push(Match::ConntrackState(CtState::RelatedEstablished));
            let purpose = "inbound connection already diverted";
            r.both(Rule::new(
                Mangle,
                IstioInbound,
                purpose,
                matches,
                Target::Jump(IstioDivert),
            ));
            let mut matches = vec![tcp()];
            matches.extend(port_match);
            r.both(Rule::new(
                Mangle,
                IstioInbound,
                "inbound port is captured",
                matches,
                Target::Jump(IstioTproxy),
            ));
        } else {
            let mut matches = vec![tcp()];
            matches.extend(port_match);
            r.both(Rule::new(
                Nat,
                IstioInbound,
                "inbound port is captured",
                matches,
                Target::Jump(IstioInRedirect),
            ));
        }
    };
    match &c.inbound {
        InboundCapture::None => {}
        InboundCapture::All { exclude } => {
            // `-A ISTIO_INBOUND -p tcp --dport P -j RETURN` per excluded port, then capture.
            for &port in exclude {
                r.both(Rule::new(
                    table,
                    IstioInbound,
                    "excluded inbound port",
                    vec![tcp(), dport(port)],
                    Target::Return,
                ));
            }
            capture(r, None);
        }
        InboundCapture::Ports(ports) => {
            for &port in ports {
                capture(r, Some(port));
            }
        }
    }
}

/// DNS capture: TCP and UDP to port 53 go to the agent on 15053 (nat `ISTIO_OUTPUT_DNS`), and
/// UDP DNS is split into conntrack zones (raw) so replies are not mixed up
/// (istio/istio#33469).
fn plan_dns(r: &mut Rules, c: &Capture, owners: &[(Owner, bool)]) {
    let (all, v4, v6) = match &c.dns {
        DnsCapture::Off => return,
        DnsCapture::All => (true, &[][..], &[][..]),
        DnsCapture::Servers { v4, v6 } => (false, &v4[..], &v6[..]),
    };
    let servers = |family: Family| {
        let list = if family == Family::V4 { v4 } else { v6 };
        list.iter()
            .map(|s| Cidr::host_spelled(s.addr, &s.text))
            .collect::<Vec<_>>()
    };

    // `-t raw -A OUTPUT -j ISTIO_OUTPUT_DNS`
    r.both(Rule::new(
        Raw,
        Output,
        "DNS conntrack zones",
        vec![],
        Target::Jump(IstioOutputDns),
    ));
    // `-t nat -A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS`, only for families with something to capture.
    for family in [Family::V4, Family::V6] {
        if all || !servers(family).is_empty() {
            r.only(
                family,
                Rule::new(
                    Nat,
                    IstioOutput,
                    "DNS capture",
                    vec![],
                    Target::Jump(IstioOutputDns),
                ),
            );
        }
    }
    // `-A ISTIO_OUTPUT_DNS -p tcp --dport 53 [-d S] -j REDIRECT --to-ports 15053`, then UDP.
    for proto in [tcp(), udp()] {
        let purpose = "DNS query: to the agent's DNS proxy";
        if all {
            r.both(Rule::new(
                Nat,
                IstioOutputDns,
                purpose,
                vec![proto.clone(), dport(DNS_PORT)],
                Target::Redirect(DNS_PROXY_PORT),
            ));
            continue;
        }
        for family in [Family::V4, Family::V6] {
            for server in servers(family) {
                let matches = vec![proto.clone(), dport(DNS_PORT), dst(&server)];
                r.only(
                    family,
                    Rule::new(
                        Nat,
                        IstioOutputDns,
                        purpose,
                        matches,
                        Target::Redirect(DNS_PROXY_PORT),
                    ),
                );
            }
        }
    }

    // Proxy ↔ upstream resolver is zone 1, app ↔ agent is zone 2:
    // `-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner U -j CT --zone 1`,
    // `-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner U -j CT --zone 2`.
    for (who, _) in owners {
        let purpose = "agent's upstream DNS queries: conntrack zone 1";
        r.both(Rule::new(
            Raw,
            IstioOutputDns,
            purpose,
            vec![udp(), dport(DNS_PORT), owner(who)],
            Target::ConntrackZone(1),
        ));
        let purpose = "agent's DNS answers to apps: conntrack zone 2";
        r.both(Rule::new(
            Raw,
            IstioOutputDns,
            purpose,
            vec![udp(), Match::SourcePort(DNS_PROXY_PORT), owner(who)],
            Target::ConntrackZone(2),
        ));
    }
    // meshinit's own, before the app-query zone 2 rules: uids excluded from DNS (see `own`).
    r.scoped(super::own::dns_zone_for_excluded_uids(c));
    let query = "app DNS queries: conntrack zone 2";
    let answer = "DNS answers from resolvers: conntrack zone 1";
    if all {
        r.both(Rule::new(
            Raw,
            Prerouting,
            "DNS conntrack zones",
            vec![],
            Target::Jump(IstioInbound),
        ));
        r.both(Rule::new(
            Raw,
            IstioOutputDns,
            query,
            vec![udp(), dport(DNS_PORT)],
            Target::ConntrackZone(2),
        ));
        r.both(Rule::new(
            Raw,
            IstioInbound,
            answer,
            vec![udp(), Match::SourcePort(DNS_PORT)],
            Target::ConntrackZone(1),
        ));
        return;
    }
    for family in [Family::V4, Family::V6] {
        let servers = servers(family);
        if !servers.is_empty() {
            r.only(
                family,
                Rule::new(
                    Raw,
                    Prerouting,
                    "DNS conntrack zones",
                    vec![],
                    Target::Jump(IstioInbound),
                ),
            );
        }
        for server in servers {
            let matches = vec![udp(), dport(DNS_PORT), dst(&server)];
            r.only(
                family,
                Rule::new(
                    Raw,
                    IstioOutputDns,
                    query,
                    matches,
                    Target::ConntrackZone(2),
                ),
            );
            let matches = vec![udp(), Match::SourcePort(DNS_PORT), Match::Source(server)];
            r.only(
                family,
                Rule::new(Raw, IstioInbound, answer, matches, Target::ConntrackZone(1)),
            );
        }
    }
}

/// TPROXY's mark bookkeeping in mangle, so replies and the proxy's calls to its own pod are
/// routed right. Istio plans these even when no inbound port is captured.
fn plan_tproxy_marks(r: &mut Rules, c: &Capture, owners: &[(Owner, bool)]) {
    let mark = c.tproxy_mark;
    // `-A PREROUTING -p tcp -m mark --mark <mark> -j CONNMARK --save-mark`
    let purpose = "remember the TPROXY mark on the connection";
    r.both(Rule::new(
        Mangle,
        Prerouting,
        purpose,
        vec![
            tcp(),
            Match::Mark {
                mark,
                negate: false,
            },
        ],
        Target::SaveMark,
    ));
    // `-A OUTPUT -p tcp -o lo -m mark --mark <mark> -j RETURN`
    let purpose = "proxy to app: already marked";
    r.both(Rule::new(
        Mangle,
        Output,
        purpose,
        vec![
            tcp(),
            Match::OutInterface(lo()),
            Match::Mark {
                mark,
                negate: false,
            },
        ],
        Target::Return,
    ));
    // `-A OUTPUT ! -d <lo> -p tcp -o lo -m owner --uid-owner U -j MARK --set-mark 1338`
    for (who, _) in owners {
        r.per_family(|a| {
            let purpose = "proxy calling its own pod: outbound mark";
            let matches = vec![
                not_dst(&a.loopback),
                tcp(),
                Match::OutInterface(lo()),
                owner(who),
            ];
            Rule::new(
                Mangle,
                Output,
                purpose,
                matches,
                Target::SetMark(OUTBOUND_MARK),
            )
        });
    }
    // `-A OUTPUT -p tcp -m connmark --mark <mark> -j CONNMARK --restore-mark`
    let purpose = "replies of diverted connections: restore the mark for policy routing";
    r.both(Rule::new(
        Mangle,
        Output,
        purpose,
        vec![tcp(), Match::ConnMark(mark)],
        Target::RestoreMark,
    ));
    // `-I ISTIO_INBOUND 1 -p tcp -m mark --mark <mark> -j RETURN`
    let purpose = "already diverted: no loop";
    r.both(
        Rule::new(
            Mangle,
            IstioInbound,
            purpose,
            vec![
                tcp(),
                Match::Mark {
                    mark,
                    negate: false,
                },
            ],
            Target::Return,
        )
        .at(1),
    );
    // `-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN`
    r.per_family(|a| {
        let purpose = "proxy's passthrough to the app is not captured";
        let matches = vec![
            tcp(),
            Match::Source(a.passthrough.clone()),
            Match::InInterface(lo()),
        ];
        Rule::new(Mangle, IstioInbound, purpose, matches, Target::Return).at(2)
    });
    // `-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN`
    let purpose = "app to app over lo is not captured";
    let matches = vec![
        tcp(),
        Match::InInterface(lo()),
        Match::Mark {
            mark: OUTBOUND_MARK,
            negate: true,
        },
    ];
    r.both(Rule::new(Mangle, IstioInbound, purpose, matches, Target::Return).at(3));
}
