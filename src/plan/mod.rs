//! The backend-neutral plan: which rules go into which table and chain, in which order, as
//! typed matches and targets, each with its purpose. Computed purely from the configuration
//! (see `build`); backends only translate it.

mod build;
mod own;

pub use build::plan;

use std::fmt;

use crate::config::types::{Cidr, GroupRef, IfName, Port, PortRange};

pub use crate::config::OUTBOUND_MARK;
/// Where istio-agent's DNS proxy listens.
pub const DNS_PROXY_PORT: Port = Port::new_const(15053);
/// The DNS port.
pub const DNS_PORT: Port = Port::new_const(53);

/// An address family; each gets its own ruleset under iptables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4: `iptables`, `ip` in nft.
    V4,
    /// IPv6: `ip6tables`, `ip6` in nft; only used when IPv6 is on.
    V6,
}

/// A netfilter table. The order is the order Istio writes them in (sorted by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// filter: Istio plans nothing here.
    Filter,
    /// mangle: TPROXY interception, its mark bookkeeping, and the conntrack-INVALID drop.
    Mangle,
    /// nat: REDIRECT capture, inbound and outbound, and DNS redirection.
    Nat,
    /// raw: conntrack zones that keep DNS flows apart.
    Raw,
}

impl Table {
    /// The table name iptables uses (`nat`, …).
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }
}

/// A chain: the kernel's built-in hooks and Istio's own chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    /// PREROUTING: built-in hook for arriving packets; dispatches inbound traffic.
    Prerouting,
    /// OUTPUT: built-in hook for locally generated packets; dispatches outbound traffic.
    Output,
    /// ISTIO_INBOUND: inbound dispatch: skips excluded ports, sends captured ones to redirect or
    /// TPROXY (in raw: zones for DNS answers).
    IstioInbound,
    /// ISTIO_REDIRECT: REDIRECTs outbound TCP to the proxy's outbound port (`-p`).
    IstioRedirect,
    /// ISTIO_IN_REDIRECT: REDIRECTs inbound TCP to the proxy's inbound port (`-z`).
    IstioInRedirect,
    /// ISTIO_OUTPUT: outbound decisions: what returns uncaptured, what goes to ISTIO_REDIRECT.
    IstioOutput,
    /// ISTIO_OUTPUT_DNS: DNS to the agent's proxy (nat), DNS conntrack zones (raw).
    IstioOutputDns,
    /// ISTIO_DIVERT: marks and accepts packets of already-diverted inbound connections (TPROXY).
    IstioDivert,
    /// ISTIO_TPROXY: TPROXYs new inbound TCP connections to the proxy's inbound port.
    IstioTproxy,
    /// ISTIO_DROP: drops conntrack-INVALID packets (`--drop-invalid`).
    IstioDrop,
}

impl Chain {
    /// The chain name iptables uses (`ISTIO_OUTPUT`, …).
    pub fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::IstioInbound => "ISTIO_INBOUND",
            Chain::IstioRedirect => "ISTIO_REDIRECT",
            Chain::IstioInRedirect => "ISTIO_IN_REDIRECT",
            Chain::IstioOutput => "ISTIO_OUTPUT",
            Chain::IstioOutputDns => "ISTIO_OUTPUT_DNS",
            Chain::IstioDivert => "ISTIO_DIVERT",
            Chain::IstioTproxy => "ISTIO_TPROXY",
            Chain::IstioDrop => "ISTIO_DROP",
        }
    }

    /// Built-in chains exist in every table; meshinit never creates or deletes them.
    pub fn is_builtin(self) -> bool {
        matches!(self, Chain::Prerouting | Chain::Output)
    }
}

/// Whether a rule goes to the end of its chain or to a 1-based position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// `-A`: after the chain's existing rules.
    Append,
    /// `-I <n>`: before the rule now at 1-based position `n`.
    Insert(u32),
}

/// The layer-4 protocol a rule matches (`-p`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `-p tcp`: what the proxy captures.
    Tcp,
    /// `-p udp`: only DNS and excluded ports.
    Udp,
}

/// Whose socket sent a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// `-m owner --uid-owner`: the socket's user id.
    Uid(u32),
    /// `-m owner --gid-owner`: the socket's group, by gid or name.
    Gid(GroupRef),
}

/// A conntrack state a rule matches (`-m conntrack --ctstate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// `INVALID`: packets conntrack cannot place in a connection.
    Invalid,
    /// `RELATED,ESTABLISHED`: packets of a connection already seen (TPROXY divert).
    RelatedEstablished,
}

/// One match of a rule. Order within a rule is kept: it is part of Istio's rule text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// `-i IF`: arrived on this interface (a trailing `+` is a prefix wildcard).
    InInterface(IfName),
    /// `-o IF`: leaves through this interface.
    OutInterface(IfName),
    /// `-p tcp|udp`.
    Protocol(Protocol),
    /// `-s NET`: source address.
    Source(Cidr),
    /// `[!] -d NET`: destination address.
    Destination {
        /// The destination network.
        net: Cidr,
        /// True for `! -d`.
        negate: bool,
    },
    /// `[!] --dport P` or `[!] --dport LO:HI`: destination port, or a range of them (a port
    /// list element: meshinit's ports and ranges, Istio's single ports).
    DestinationPort {
        /// The destination port or range.
        port: PortRange,
        /// True for `! --dport`.
        negate: bool,
    },
    /// `--sport P`: source port (DNS zone rules).
    SourcePort(Port),
    /// The destination port is none of these (`-m multiport ! --dports`). Istio plans it only
    /// for its own fixed ports (DNS and the tunnel port), never for a port list.
    DestinationPortNotIn(Vec<Port>),
    /// `-m owner [!] --uid-owner|--gid-owner`: who sent the packet.
    Owner {
        /// The user or group.
        owner: Owner,
        /// True for `! --uid-owner` / `! --gid-owner`.
        negate: bool,
    },
    /// `-m conntrack --ctstate S`: INVALID drop, TPROXY divert of established connections.
    ConntrackState(CtState),
    /// `-m mark [!] --mark M`: the packet's fwmark.
    Mark {
        /// The mark value.
        mark: u32,
        /// True for `! --mark`.
        negate: bool,
    },
    /// `-m connmark --mark M`: the connection's mark (TPROXY replies).
    ConnMark(u32),
}

/// What a rule does with a matching packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `-j CHAIN`: continue in one of Istio's chains.
    Jump(Chain),
    /// `-j RETURN`: leave the chain; the packet is not captured here.
    Return,
    /// `-j ACCEPT`: accepted in this table; its later rules are skipped.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j REDIRECT --to-ports P`: to a proxy listener on the local address.
    Redirect(Port),
    /// `-j TPROXY --tproxy-mark M/0xffffffff --on-port P`: to the proxy's inbound listener,
    /// keeping the original destination.
    Tproxy {
        /// The mark set on the packet, so policy routing delivers it locally.
        mark: u32,
        /// The proxy's inbound listener.
        port: Port,
    },
    /// `-j MARK --set-mark M`.
    SetMark(u32),
    /// `-j CONNMARK --save-mark`: copy the packet mark to the connection.
    SaveMark,
    /// `-j CONNMARK --restore-mark`: copy the connection mark to the packet.
    RestoreMark,
    /// `-j CT --zone Z`: put the flow in conntrack zone Z (raw table).
    ConntrackZone(u16),
}

/// Which families a rule is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One rule per family (iptables), one rule for both (nftables).
    Both,
    /// This family's ruleset only (e.g. the rule names an address of that family).
    Only(Family),
}

impl Scope {
    /// Whether a rule with this scope belongs to `family`'s ruleset.
    pub fn includes(self, family: Family) -> bool {
        match self {
            Scope::Both => true,
            Scope::Only(f) => f == family,
        }
    }
}

/// One rule of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Which families it is installed for.
    pub scope: Scope,
    /// The table it goes into.
    pub table: Table,
    /// The chain it goes into.
    pub chain: Chain,
    /// Appended or inserted at a position.
    pub position: Position,
    /// All must hold, in Istio's order.
    pub matches: Vec<Match>,
    /// What happens to a matching packet.
    pub target: Target,
    /// Why the rule exists, in a few words; shown in logs and error messages.
    pub purpose: &'static str,
}

impl Rule {
    /// A rule appended to `chain`.
    pub fn new(
        table: Table,
        chain: Chain,
        purpose: &'static str,
        matches: Vec<Match>,
        target: Target,
    ) -> Rule {
        Rule {
            scope: Scope::Both,
            table,
            chain,
            position: Position::Append,
            matches,
            target,
            purpose,
        }
    }

    /// The same rule, inserted at a 1-based position instead.
    pub fn at(mut self, position: u32) -> Rule {
        self.position = Position::Insert(position);
        self
    }

    /// The chain this rule jumps to, if any.
    pub fn jump_target(&self) -> Option<Chain> {
        match self.target {
            Target::Jump(chain) => Some(chain),
            _ => None,
        }
    }

    /// The protocol the rule matches, if it matches one.
    pub fn protocol(&self) -> Option<Protocol> {
        self.matches.iter().find_map(|m| match m {
            Match::Protocol(p) => Some(*p),
            _ => None,
        })
    }
}

impl fmt::Display for Rule {
    /// A readable one-line form for logs: `nat/ISTIO_OUTPUT: <purpose>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}: {}",
            self.table.name(),
            self.chain.name(),
            self.purpose
        )
    }
}

/// Everything to install: the rules in Istio's generation order, each scoped to both families
/// or one (a family-specific pair sits side by side, IPv4 first), plus the TPROXY policy
/// routes. An iptables family's ruleset is the rules in its scope; nftables takes the whole list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// All rules, in generation order.
    pub rules: Vec<Rule>,
    /// Whether IPv6 is on; when off, no rule is scoped to IPv6 alone and nothing is installed
    /// for IPv6.
    pub ipv6: bool,
    /// `ip rule fwmark <mark> lookup <table>` + a local default route, for each family in use.
    pub tproxy_route: Option<TproxyRoute>,
}

/// The policy routing TPROXY needs so marked packets are delivered locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TproxyRoute {
    /// The fwmark TPROXY sets (`-t`); the policy rule looks it up.
    pub mark: u32,
    /// The routing table holding the local default route (`-r`).
    pub table: u32,
}

impl Plan {
    /// The rules of one family, in order (none for IPv6 when it is off).
    pub fn rules(&self, family: Family) -> Vec<Rule> {
        if family == Family::V6 && !self.ipv6 {
            return Vec::new();
        }
        self.rules
            .iter()
            .filter(|r| r.scope.includes(family))
            .cloned()
            .collect()
    }

    /// The families the plan installs rules for.
    pub fn families(&self) -> Vec<Family> {
        let mut out = vec![Family::V4];
        if self.ipv6 {
            out.push(Family::V6);
        }
        out
    }
}

#[cfg(test)]
mod tests;
