//! The backend-neutral plan: which rules go into which table and chain, in which order, as
//! typed matches and targets, each with its purpose. Computed purely from the configuration
//! (see [`build`]); backends only translate it.

mod build;

pub use build::plan;

use std::fmt;

use crate::config::types::{Cidr, GroupRef, IfName, Port};

/// The mark Istio puts on the proxy's own connections to the pod's address under TPROXY.
pub const OUTBOUND_MARK: u32 = 1338;
/// Where istio-agent's DNS proxy listens.
pub const DNS_PROXY_PORT: Port = Port::new_const(15053);
/// The DNS port.
pub const DNS_PORT: Port = Port::new_const(53);

/// An address family; each gets its own ruleset under iptables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

/// A netfilter table. The order is the order Istio writes them in (sorted by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Mangle,
    Nat,
    Raw,
}

impl Table {
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
    Prerouting,
    Output,
    IstioInbound,
    IstioRedirect,
    IstioInRedirect,
    IstioOutput,
    IstioOutputDns,
    IstioDivert,
    IstioTproxy,
    IstioDrop,
}

impl Chain {
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
    Append,
    Insert(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Whose socket sent a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Uid(u32),
    Gid(GroupRef),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    Invalid,
    RelatedEstablished,
}

/// One match of a rule. Order within a rule is kept: it is part of Istio's rule text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    InInterface(IfName),
    OutInterface(IfName),
    Protocol(Protocol),
    Source(Cidr),
    Destination {
        net: Cidr,
        negate: bool,
    },
    DestinationPort {
        port: Port,
        negate: bool,
    },
    SourcePort(Port),
    /// The destination port is none of these.
    DestinationPortNotIn(Vec<Port>),
    Owner {
        owner: Owner,
        negate: bool,
    },
    ConntrackState(CtState),
    Mark {
        mark: u32,
        negate: bool,
    },
    ConnMark(u32),
}

/// What a rule does with a matching packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Jump(Chain),
    Return,
    Accept,
    Drop,
    Redirect(Port),
    Tproxy { mark: u32, port: Port },
    SetMark(u32),
    SaveMark,
    RestoreMark,
    ConntrackZone(u16),
}

/// Which families a rule is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Both,
    Only(Family),
}

impl Scope {
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
    pub scope: Scope,
    pub table: Table,
    pub chain: Chain,
    pub position: Position,
    pub matches: Vec<Match>,
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
    pub mark: u32,
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
