//! Where a connection goes and which rule sent it there: a model of netfilter evaluating the
//! plan's rules for a connection's first packet (`model`), the connection specs of `meshinit
//! trace --conn` (`conn`), the probe connections and table of `meshinit explain` (`explain`),
//! and their text and JSON forms (`output`). Pure: it reads the plan, never the kernel.
//!
//! Both backends install the same plan in Istio's chain layout, so a trace holds for either,
//! with one difference the model follows (`model::Backend`): nftables' `inet` tables apply a
//! rule without an address match to both families, even when IPv6 is off. The rule text shown
//! is the iptables form.

pub mod conn;
pub mod explain;
pub mod model;
pub mod output;

use std::net::IpAddr;

use crate::plan::{Chain, Protocol, Table};

/// Which way a connection goes, seen from the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Opened by a process in the pod (the OUTPUT hook).
    Out,
    /// Arriving at the pod from outside (the PREROUTING hook).
    In,
}

/// One connection, as its first packet looks to netfilter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    /// Out of or into the pod.
    pub direction: Direction,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The sending socket's uid (outbound only).
    pub uid: u32,
    /// The sending socket's gid (outbound only).
    pub gid: u32,
    /// Source address, when known. Outbound connections to loopback take the loopback address;
    /// otherwise an unknown source matches no source-address rule.
    pub src: Option<IpAddr>,
    /// Source port, when given (DNS zone rules match `--sport 53`).
    pub sport: Option<u16>,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// Inbound: the interface the packet arrives on.
    pub iif: Option<String>,
    /// Outbound: the interface the packet leaves through (routing's choice).
    pub oif: Option<String>,
    /// The packet's fwmark before our rules (0 unless given).
    pub mark: u32,
}

/// Where the connection ends up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// nat REDIRECT to a local port: the proxy's listener takes it (original destination
    /// kept for SO_ORIGINAL_DST).
    Redirect {
        /// The listener's port.
        port: u16,
    },
    /// mangle TPROXY to a local port, with a mark that policy routing delivers locally.
    Tproxy {
        /// The listener's port.
        port: u16,
        /// The mark set on the packet.
        mark: u32,
    },
    /// Not captured: the packet goes on to its destination.
    Accept,
    /// Dropped.
    Drop,
}

impl Verdict {
    /// `redirect`, `tproxy`, `accept` or `drop`: the JSON `verdict` field.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Redirect { .. } => "redirect",
            Verdict::Tproxy { .. } => "tproxy",
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
        }
    }

    /// The listener's port, for redirect and tproxy.
    pub fn port(&self) -> Option<u16> {
        match self {
            Verdict::Redirect { port } | Verdict::Tproxy { port, .. } => Some(*port),
            Verdict::Accept | Verdict::Drop => None,
        }
    }
}

/// One rule of ours that matched the packet, in evaluation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The hook the packet was in (`OUTPUT`, `PREROUTING`).
    pub hook: Chain,
    /// Its table.
    pub table: Table,
    /// Its chain.
    pub chain: Chain,
    /// 1-based position of the rule in its chain as installed.
    pub rule: usize,
    /// Why the rule exists.
    pub purpose: &'static str,
    /// The rule as iptables lists it (`-A CHAIN …`).
    pub text: String,
}

/// The result of tracing one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// Where it ends up.
    pub verdict: Verdict,
    /// The conntrack zone a raw-table rule put the flow in, if any.
    pub zone: Option<u16>,
    /// Every rule that matched, in order.
    pub path: Vec<Step>,
    /// The index in `path` of the rule that decided: the capturing (or dropping) rule, or for
    /// a connection that is not captured the RETURN or ACCEPT that let it go.
    pub decider: Option<usize>,
    /// For a connection not captured by any rule: the last chain of ours it fell off the end
    /// of (e.g. ISTIO_REDIRECT, which redirects only TCP).
    pub fell_through: Option<(Table, Chain)>,
    /// Things the model assumed, to show the reader (e.g. an unknown source address).
    pub notes: Vec<String>,
}
