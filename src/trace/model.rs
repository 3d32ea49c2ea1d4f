//! The netfilter model: a connection's first packet walked through the plan's rules of its
//! family, hook by hook and table by table in the kernel's priority order (raw, mangle, nat),
//! chain by chain with jumps and returns, as the kernel evaluates them for a new connection.
//!
//! What it models, and why each piece is there:
//! - The chains as installed: `-I CHAIN n` rules are placed where the kernel puts them.
//! - A built-in chain's end, or `RETURN` in it, is its ACCEPT policy (Istio never sets one);
//!   ACCEPT ends the table, not the hook: the next table still sees the packet.
//! - REDIRECT and TPROXY end their table; DROP ends everything. MARK, CONNMARK and CT zone
//!   rules change the packet and go on (a packet keeps its first CT zone).
//! - The connection is new (conntrack NEW): `--ctstate INVALID` and `RELATED,ESTABLISHED`
//!   never match its first packet.
//! - Socket-owner matches exist only where a local socket sent the packet (OUTPUT);
//!   `-i` only where a packet arrived (PREROUTING), `-o` only where it leaves (OUTPUT).
//! - An outbound packet routed through `lo` comes back in through PREROUTING on `lo` (raw and
//!   mangle only: its connection's NAT was decided in OUTPUT), which is where Istio's TPROXY
//!   rules see the proxy's own connections to the pod.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Conn, Direction, Step, Trace, Verdict};
use crate::config::types::{Cidr, IfName};
use crate::plan::{
    Chain, CtState, Family, Match, Owner, Plan, Position, Protocol, Rule, Table, Target,
};
use crate::render::iptables_text::rule_line;

/// Chains deeper than this are a loop in the plan; Istio's are at most three deep.
const MAX_DEPTH: usize = 16;

/// Resolves a group name in an owner rule to its gid (as iptables does when it installs the
/// rule). Names it cannot resolve match no packet.
pub type GroupLookup<'a> = &'a dyn Fn(&str) -> Option<u32>;

/// Which rules a packet meets: the backends render one plan differently where families meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One ruleset per family; none for IPv6 when IPv6 is off.
    Iptables,
    /// One `inet` ruleset for both families: a rule without an address match applies to IPv6
    /// too, even when IPv6 is off.
    Nftables,
}

impl Backend {
    /// `iptables` or `nftables`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        }
    }
}

/// Traces `conn` through the rules `backend` installs for `plan`.
pub fn trace(plan: &Plan, conn: &Conn, backend: Backend, groups: GroupLookup<'_>) -> Trace {
    let mut notes = Vec::new();
    // An IPv4-mapped address (`::ffff:10.0.0.1`, what a dual-stack socket shows) is sent by
    // the kernel as IPv4, and meets the IPv4 rules.
    let canonical = Conn {
        src: conn.src.map(|a| a.to_canonical()),
        dst: conn.dst.to_canonical(),
        ..conn.clone()
    };
    if canonical.dst != conn.dst {
        notes.push(format!(
            "{} is an IPv4-mapped address: the kernel sends the connection as IPv4, to {}",
            conn.dst, canonical.dst
        ));
    }
    let conn = &canonical;
    let family = if conn.dst.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let rules: Vec<Rule> = match backend {
        Backend::Iptables => {
            if family == Family::V6 && !plan.ipv6 {
                notes.push("IPv6 is off: iptables installs no IPv6 rules".to_string());
            }
            plan.rules(family)
        }
        Backend::Nftables => {
            if family == Family::V6 && !plan.ipv6 {
                notes.push(
                    "IPv6 is off, but nftables' inet tables still apply every rule without an \
                     address match to IPv6"
                        .to_string(),
                );
            }
            crate::render::nft_ruleset::nft_rules(plan)
                .into_iter()
                .cloned()
                .collect()
        }
    };
    let chains = installed_chains(&rules);
    let mut packet = Packet::new(conn, family);
    let mut walk = Walk {
        chains: &chains,
        groups,
        path: Vec::new(),
        capture: None,
        exit: None,
        fell_through: None,
        reentry: false,
    };
    let verdict = match conn.direction {
        Direction::In => walk.hook(
            Chain::Prerouting,
            &[Table::Raw, Table::Mangle, Table::Nat],
            &mut packet,
        ),
        Direction::Out => {
            let out = walk.hook(
                Chain::Output,
                &[Table::Raw, Table::Mangle, Table::Nat],
                &mut packet,
            );
            let redirected = matches!(out, Verdict::Redirect { .. });
            if (packet.oif.as_deref() == Some("lo") || redirected) && out != Verdict::Drop {
                // Back in through lo: a REDIRECT in OUTPUT re-routes the packet to the
                // loopback listener, whatever interface it was headed for.
                packet.oif = Some("lo".to_string());
                if let Verdict::Redirect { port } = out {
                    packet.dst = loopback(family);
                    packet.dport = port;
                }
                packet.iif = packet.oif.take();
                packet.local_socket = false;
                walk.reentry = true;
                let back = walk.hook(Chain::Prerouting, &[Table::Raw, Table::Mangle], &mut packet);
                combine(out, back)
            } else {
                out
            }
        }
    };
    if conn.src.is_none() && rules.iter().any(has_source) {
        notes.push("no src given: taken to match no source-address rule".to_string());
    }
    let decider = match verdict {
        Verdict::Accept => walk.exit,
        _ => walk.capture,
    };
    Trace {
        verdict,
        zone: packet.zone,
        path: walk.path,
        decider,
        fell_through: walk.fell_through.filter(|_| decider.is_none()),
        notes,
    }
}

/// The first packet as the rules see it; targets change some fields on the way.
struct Packet {
    protocol: Protocol,
    local_socket: bool,
    uid: u32,
    gid: u32,
    src: Option<IpAddr>,
    sport: Option<u16>,
    dst: IpAddr,
    dport: u16,
    iif: Option<String>,
    oif: Option<String>,
    mark: u32,
    connmark: u32,
    zone: Option<u16>,
}

impl Packet {
    fn new(conn: &Conn, family: Family) -> Packet {
        let out = conn.direction == Direction::Out;
        let oif = match (&conn.oif, out) {
            (Some(oif), true) => Some(oif.clone()),
            (None, true) if is_loopback(conn.dst) => Some("lo".to_string()),
            (None, true) => Some("eth0".to_string()),
            (_, false) => None,
        };
        let src = match conn.src {
            Some(src) => Some(src),
            None if out && is_loopback(conn.dst) => Some(loopback(family)),
            None => None,
        };
        Packet {
            protocol: conn.protocol,
            local_socket: out,
            uid: conn.uid,
            gid: conn.gid,
            src,
            sport: conn.sport,
            dst: conn.dst,
            dport: conn.dport,
            iif: if out {
                None
            } else {
                Some(conn.iif.clone().unwrap_or_else(|| "eth0".to_string()))
            },
            oif,
            mark: conn.mark,
            connmark: 0,
            zone: None,
        }
    }
}

/// How a walk through one chain ended.
enum Flow {
    /// Fell off the end or hit RETURN: back to the caller (or the policy, for a hook).
    Continue,
    /// The table is done with the packet, with this verdict (ACCEPT, REDIRECT, TPROXY).
    EndTable(Verdict),
    /// DROP.
    Drop,
}

struct Walk<'a> {
    chains: &'a BTreeMap<(Table, Chain), Vec<Rule>>,
    groups: GroupLookup<'a>,
    path: Vec<Step>,
    /// The latest capturing or dropping rule (index into `path`).
    capture: Option<usize>,
    /// The latest RETURN or ACCEPT of the packet's own hook (not of lo's way back in).
    exit: Option<usize>,
    /// The innermost chain of ours the packet fell off the end of after the last rule that
    /// matched, in its own hook.
    fell_through: Option<(Table, Chain)>,
    /// Walking lo's way back in: its RETURNs do not explain the outbound decision.
    reentry: bool,
}

impl Walk<'_> {
    /// One hook: each table's built-in chain in priority order. The last capturing verdict
    /// wins; a DROP ends everything.
    fn hook(&mut self, hook: Chain, tables: &[Table], packet: &mut Packet) -> Verdict {
        let mut verdict = Verdict::Accept;
        for &table in tables {
            match self.chain(hook, table, hook, packet, 0) {
                Flow::Drop => return Verdict::Drop,
                Flow::EndTable(v) => verdict = combine(verdict, v),
                Flow::Continue => {}
            }
        }
        verdict
    }

    fn chain(
        &mut self,
        hook: Chain,
        table: Table,
        chain: Chain,
        p: &mut Packet,
        depth: usize,
    ) -> Flow {
        let Some(rules) = self.chains.get(&(table, chain)) else {
            return Flow::Continue;
        };
        if depth > MAX_DEPTH {
            return Flow::Continue;
        }
        for (index, rule) in rules.iter().enumerate() {
            if !rule.matches.iter().all(|m| self.matches(m, p)) {
                continue;
            }
            self.path.push(Step {
                hook,
                table,
                chain,
                rule: index + 1,
                purpose: rule.purpose,
                text: as_listed(rule),
            });
            let step = self.path.len() - 1;
            if !self.reentry {
                self.fell_through = None;
            }
            match &rule.target {
                Target::Jump(next) => match self.chain(hook, table, *next, p, depth + 1) {
                    Flow::Continue => {}
                    end => return end,
                },
                Target::Return => {
                    self.exited(step);
                    return Flow::Continue;
                }
                Target::Accept => {
                    self.exited(step);
                    return Flow::EndTable(Verdict::Accept);
                }
                Target::Drop => {
                    self.capture = Some(step);
                    return Flow::Drop;
                }
                Target::Redirect(port) => {
                    self.capture = Some(step);
                    return Flow::EndTable(Verdict::Redirect { port: port.get() });
                }
                Target::Tproxy { mark, port } => {
                    self.capture = Some(step);
                    p.mark = *mark;
                    return Flow::EndTable(Verdict::Tproxy {
                        port: port.get(),
                        mark: *mark,
                    });
                }
                Target::SetMark(mark) => p.mark = *mark,
                Target::SaveMark => p.connmark = p.mark,
                Target::RestoreMark => p.mark = p.connmark,
                // The first CT rule wins: once a packet has a conntrack template, the kernel
                // ignores later CT targets (xt_CT and nft's `ct zone set` alike).
                Target::ConntrackZone(zone) => {
                    p.zone.get_or_insert(*zone);
                }
            }
        }
        // The innermost chain that let it through, since the last rule that matched.
        if !chain.is_builtin() && !self.reentry && self.fell_through.is_none() {
            self.fell_through = Some((table, chain));
        }
        Flow::Continue
    }

    fn exited(&mut self, step: usize) {
        if !self.reentry {
            self.exit = Some(step);
        }
    }

    fn matches(&self, m: &Match, p: &Packet) -> bool {
        match m {
            Match::InInterface(name) => p.iif.as_deref().is_some_and(|i| if_matches(name, i)),
            Match::OutInterface(name) => p.oif.as_deref().is_some_and(|o| if_matches(name, o)),
            Match::Protocol(proto) => *proto == p.protocol,
            // An address of the other family never matches, negated or not: iptables keeps
            // such rules out of the family's ruleset, nft's `ip daddr` implies IPv4.
            Match::Source(net) => p.src.is_some_and(|a| contains(net, a)),
            Match::Destination { net, negate } => {
                net.is_ipv4() == p.dst.is_ipv4() && contains(net, p.dst) != *negate
            }
            Match::DestinationPort { port, negate } => port.contains(p.dport) != *negate,
            Match::SourcePort(port) => p.sport == Some(port.get()),
            Match::DestinationPortNotIn(ports) => ports.iter().all(|q| q.get() != p.dport),
            Match::Owner { owner, negate } => {
                // Without a local socket the owner match fails, negated or not.
                p.local_socket
                    && match owner {
                        Owner::Uid(uid) => (*uid == p.uid) != *negate,
                        Owner::Gid(group) => {
                            let gid = group.gid().or_else(|| (self.groups)(group.as_str()));
                            (gid == Some(p.gid)) != *negate
                        }
                    }
            }
            Match::ConntrackState(CtState::Invalid | CtState::RelatedEstablished) => false,
            Match::Mark { mark, negate } => (*mark == p.mark) != *negate,
            Match::ConnMark(mark) => *mark == p.connmark,
        }
    }
}

/// Two tables' verdicts on one packet: a DROP stands, a capture beats ACCEPT, and a later
/// capture (TPROXY on lo's way back in) is where the packet is finally delivered.
fn combine(first: Verdict, then: Verdict) -> Verdict {
    match (first, then) {
        (Verdict::Drop, _) | (_, Verdict::Drop) => Verdict::Drop,
        (first, Verdict::Accept) => first,
        (_, then) => then,
    }
}

/// Each (table, chain)'s rules in the order the kernel holds them after the plan's `-A` and
/// `-I n` rules were added in generation order.
fn installed_chains(rules: &[Rule]) -> BTreeMap<(Table, Chain), Vec<Rule>> {
    let mut chains: BTreeMap<(Table, Chain), Vec<Rule>> = BTreeMap::new();
    for rule in rules {
        let chain = chains.entry((rule.table, rule.chain)).or_default();
        match rule.position {
            Position::Append => chain.push(rule.clone()),
            Position::Insert(n) => {
                let at = (n as usize).saturating_sub(1).min(chain.len());
                chain.insert(at, rule.clone());
            }
        }
    }
    chains
}

/// The rule as `iptables -t TABLE -S` lists it: `-A CHAIN …`, whatever its insert position.
fn as_listed(rule: &Rule) -> String {
    let listed = Rule {
        position: Position::Append,
        ..rule.clone()
    };
    format!("-t {} {}", rule.table.name(), rule_line(&listed))
}

/// iptables' interface match: exact, or a prefix when the name ends with `+`.
fn if_matches(pattern: &IfName, name: &str) -> bool {
    let pattern = pattern.as_str();
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn has_source(rule: &Rule) -> bool {
    rule.matches.iter().any(|m| matches!(m, Match::Source(_)))
}

/// Whether `addr` is inside `net` (families must agree).
pub fn contains(net: &Cidr, addr: IpAddr) -> bool {
    let len = u32::from(net.prefix_len());
    match (net.addr(), addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

fn is_loopback(addr: IpAddr) -> bool {
    addr.is_loopback()
}

fn loopback(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Family::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}
