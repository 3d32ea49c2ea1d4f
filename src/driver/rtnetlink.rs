//! Owns the policy routing and loopback address that TPROXY capture needs (`ip rule`, `ip route`,
//! `ip -6 addr` in istio-init), done over rtnetlink so no `ip` binary is needed at run time.
//!
//! Every change is idempotent and reports whether it changed anything: istio-init runs these
//! commands blindly, so a restarted init container fails with "File exists" (or piles up
//! duplicate rules) — here an object that is already in place, whoever made it, is left alone.
//!
//! What meshinit adds carries its own rtnetlink protocol number, [`PROTOCOL`] (`FRA_PROTOCOL`
//! on rules, `rtm_protocol` on routes, `IFA_PROTO` on addresses), and every removal deletes
//! only objects that carry it: an identical object someone else made (an administrator, Istio's
//! own istio-init, which leaves the protocol unset) is never ours to remove.
//!
//! Messages are built and parsed as plain byte vectors (native-endian fields, 4-byte aligned
//! attributes), so the module needs no unsafe code.

use std::net::Ipv6Addr;

use nix::errno::Errno;
use nix::sys::socket::SockProtocol;

use super::nlsocket::{NlSocket, SocketError};
use crate::render::netlink_wire::{error_code, message, parse_attrs, put_attr, u32_at, Msg};

use crate::plan::Family;

// Attribute and action numbers from <linux/fib_rules.h>, which libc does not define.
/// `FRA_PRIORITY`: the rule's preference (its position in the rule list).
const FRA_PRIORITY: u16 = 6;
/// `FRA_FWMARK`: the firewall mark the rule matches.
const FRA_FWMARK: u16 = 10;
/// `FRA_SUPPRESS_IFGROUP`: "unless the route's device is in this group"; -1 means unset.
const FRA_SUPPRESS_IFGROUP: u16 = 13;
/// `FRA_SUPPRESS_PREFIXLEN`: "unless the route's prefix is this short"; -1 means unset, and
/// the kernel dumps it with -1 on every rule.
const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
/// `FRA_TABLE`: the full 32-bit table id (the header's table field is only 8 bits).
const FRA_TABLE: u16 = 15;
/// `FRA_FWMASK`: the mask applied to the packet's mark before comparing.
const FRA_FWMASK: u16 = 16;
/// `FRA_PROTOCOL`: who installed the rule (a u8); the kernel also matches it on delete.
const FRA_PROTOCOL: u16 = 21;
/// `IFA_PROTO` (<linux/if_addr.h>, Linux 5.18+): who installed the address (a u8).
const IFA_PROTO: u16 = 11;

/// meshinit's rtnetlink protocol number, set on every rule, route and address it adds so that
/// cleanup can tell its objects from identical ones of other owners. 157 is unused by the
/// kernel's `RTPROT_*` values and iproute2's `rt_protos` (0–18, 42, 99, 186–192) and by the
/// routing daemons we know of (FRR uses 186–198, Calico 80, BIRD 12); `ip` shows it as
/// `proto 157`.
pub const PROTOCOL: u8 = 157;
/// `FR_ACT_TO_TBL`: the rule's action is "lookup <table>".
const FR_ACT_TO_TBL: u8 = 1;
/// `FIB_RULE_INVERT`: the rule is negated (`ip rule add not fwmark ...`).
const FIB_RULE_INVERT: u32 = 0x2;

/// `sizeof(struct fib_rule_hdr)` and `sizeof(struct rtmsg)`: both are 12 bytes.
const RULE_HDRLEN: usize = 12;
const RTMSG_LEN: usize = 12;
/// `sizeof(struct ifaddrmsg)`.
const IFADDRMSG_LEN: usize = 8;
/// How often a dump that the kernel flags as interrupted (`NLM_F_DUMP_INTR`) is retried.
const DUMP_ATTEMPTS: usize = 5;
/// The address prefix length used for the loopback address: a single host address.
const LO_PREFIX_LEN: u8 = 128;

/// Whether a call changed the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// The object was added or removed.
    Yes,
    /// The object was already as requested; nothing was sent.
    No,
}

/// Why a netlink operation failed. Every variant names the operation, so the message reads
/// e.g. "adding rule fwmark 1337 lookup 133 (IPv4): File exists".
#[derive(Clone, Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request (`NLMSG_ERROR` with a non-zero errno).
    #[error("{op}: {}", errno.desc())]
    Rejected {
        /// What was being done.
        op: String,
        /// The errno the kernel returned.
        errno: Errno,
    },
    /// The socket itself failed (open, bind, send, receive).
    #[error("{op}: {}", errno.desc())]
    Io {
        /// What was being done.
        op: String,
        /// The errno of the failing system call.
        errno: Errno,
    },
    /// The kernel's reply could not be understood.
    #[error("{op}: malformed netlink reply: {detail}")]
    Malformed {
        /// What was being done.
        op: String,
        /// What was wrong with the reply.
        detail: String,
    },
    /// A different object occupies the place ours would take; it is not ours to replace.
    #[error("{op}: {detail}")]
    Conflict {
        /// What was being done.
        op: String,
        /// What is in the way.
        detail: String,
    },
    /// The arguments cannot describe a valid object.
    #[error("{op}: {detail}")]
    Invalid {
        /// What was being done.
        op: String,
        /// What is wrong with the arguments.
        detail: String,
    },
}

impl NetlinkError {
    /// The errno behind the error, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Rejected { errno, .. } | Self::Io { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Why this failure may pass when tried again: the kernel's `EBUSY`, `EAGAIN` or `EINTR`
    /// (see [`crate::sys::transient::transient_errno`]); `None` for every other failure.
    pub fn transient(&self) -> Option<crate::sys::transient::Transient> {
        self.errno()
            .and_then(crate::sys::transient::transient_errno)
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// One `NETLINK_ROUTE` socket. A netlink socket acts in the network namespace it was opened
/// in, whichever thread uses it later, so open it from a thread that is in the pod's namespace.
#[derive(Debug)]
pub struct Netlink {
    sock: NlSocket,
    seq: u32,
    /// `lo`'s index in this socket's namespace, looked up at open time for the same reason.
    lo_index: u32,
}

/// A policy rule as the kernel dumps it, reduced to what decides whether it is ours.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    src_len: u8,
    dst_len: u8,
    tos: u8,
    /// The 8-bit table field of the header, kept to report how the kernel fills it.
    header_table: u8,
    /// `FRA_TABLE` if present, else the header's table.
    table: u32,
    action: u8,
    flags: u32,
    priority: Option<u32>,
    fwmark: Option<u32>,
    fwmask: Option<u32>,
    /// `FRA_PROTOCOL`, 0 (unspec) when absent.
    protocol: u8,
    /// Any attribute that selects packets or changes the action beyond mark and table
    /// (`iif`, `oif`, `uidrange`, `ipproto`, ports, `suppress_prefixlength`, ...).
    has_other_attrs: bool,
}

impl Rule {
    /// Exactly `fwmark <mark> lookup <table>`: no other selector, not negated.
    fn is_fwmark_lookup(&self, mark: u32, table: u32) -> bool {
        self.src_len == 0
            && self.dst_len == 0
            && self.tos == 0
            && self.action == FR_ACT_TO_TBL
            && self.flags & FIB_RULE_INVERT == 0
            && self.table == table
            && self.fwmark == Some(mark)
            && matches!(self.fwmask, None | Some(u32::MAX))
            && !self.has_other_attrs
    }

    /// Whether an `RTM_DELRULE` carrying `ours`'s priority, mark, mask, table, action and
    /// protocol would hit this rule: the kernel treats every field the request leaves out, and
    /// a priority, mark or protocol of 0, as a wildcard, and deletes the first rule in list
    /// order that matches.
    fn matched_by_delete_of(&self, ours: &Rule) -> bool {
        let wild = |v: Option<u32>| v.unwrap_or(0) == 0;
        (wild(ours.priority) || self.priority == ours.priority)
            && self.action == ours.action
            && self.table == ours.table
            && (wild(ours.fwmark) || self.fwmark == ours.fwmark)
            && self.fwmask.unwrap_or(u32::MAX) == ours.fwmask.unwrap_or(u32::MAX)
            && (ours.protocol == 0 || self.protocol == ours.protocol)
    }

    /// `fwmark <mark> lookup <table>` added by meshinit: the shape it adds, with its protocol.
    fn is_ours(&self) -> bool {
        self.protocol == PROTOCOL
            && self
                .fwmark
                .is_some_and(|mark| self.is_fwmark_lookup(mark, self.table))
    }

    /// Roughly as `ip rule show` would print it, for error messages.
    fn describe(&self) -> String {
        let mut text = format!("priority {}", self.priority.unwrap_or(0));
        if self.flags & FIB_RULE_INVERT != 0 {
            text.push_str(" not");
        }
        if let Some(mark) = self.fwmark {
            text.push_str(&format!(" fwmark {mark:#x}"));
            if let Some(mask) = self.fwmask.filter(|&m| m != u32::MAX) {
                text.push_str(&format!("/{mask:#x}"));
            }
        }
        text.push_str(&format!(" lookup {}", self.table));
        if self.src_len != 0 || self.dst_len != 0 || self.tos != 0 || self.has_other_attrs {
            text.push_str(" with further selectors");
        }
        text
    }
}

/// A route as the kernel dumps it, reduced to what decides whether it is ours.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    dst_len: u8,
    src_len: u8,
    tos: u8,
    table: u32,
    protocol: u8,
    kind: u8,
    oif: Option<u32>,
    priority: Option<u32>,
    /// A gateway or multipath next hop: then it is not a plain `dev lo` route.
    has_gateway: bool,
}

impl Route {
    /// Exactly `local default dev <lo> table <table>`, whoever installed it and at what metric.
    fn is_local_default(&self, table: u32, lo_index: u32) -> bool {
        self.dst_len == 0
            && self.src_len == 0
            && self.tos == 0
            && self.table == table
            && self.kind == libc::RTN_LOCAL
            && self.oif == Some(lo_index)
            && !self.has_gateway
    }
}

/// An interface address as the kernel dumps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Address {
    index: u32,
    prefix_len: u8,
    address: Vec<u8>,
    /// `IFA_PROTO`; `None` when absent (unset, or a kernel before 5.18).
    protocol: Option<u8>,
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace and looks up
    /// that namespace's `lo`.
    pub fn open() -> Result<Self> {
        let sock = NlSocket::open(SockProtocol::NetlinkRoute)
            .map_err(|e| socket_error("opening a NETLINK_ROUTE socket", e))?;
        let lo_index = nix::net::if_::if_nametoindex("lo").map_err(|errno| NetlinkError::Io {
            op: "looking up the index of lo".to_string(),
            errno,
        })?;
        Ok(Self {
            sock,
            seq: 0,
            lo_index,
        })
    }

    /// Makes sure `[ip -6] rule add fwmark <mark> lookup <table>` is in place: adds it only
    /// when no rule with exactly that mark (full mask), table and action and no other
    /// selector exists. The kernel picks the priority, as it does for `ip rule add`.
    pub fn ensure_fwmark_rule(&mut self, family: Family, mark: u32, table: u32) -> Result<Changed> {
        let op = format!(
            "adding rule fwmark {mark} lookup {table} ({})",
            name(family)
        );
        check_table(&op, table)?;
        if self.has_fwmark_rule(family, mark, table)? {
            return Ok(Changed::No);
        }
        let body = rule_message(family, mark, table, None, PROTOCOL);
        let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        self.request(&op, libc::RTM_NEWRULE, flags as u16, &body)?;
        Ok(Changed::Yes)
    }

    /// Removes every rule of ours that is exactly `fwmark <mark> lookup <table>`, each by its
    /// priority and protocol; other rules, identical ones of other owners included, stay. No
    /// such rule: a no-op.
    pub fn remove_fwmark_rule(&mut self, family: Family, mark: u32, table: u32) -> Result<Changed> {
        let op = format!(
            "removing rule fwmark {mark} lookup {table} ({})",
            name(family)
        );
        check_table(&op, table)?;
        let rules = self.rules(&op, family)?;
        let mut changed = Changed::No;
        for (i, rule) in rules.iter().enumerate() {
            if !rule.is_fwmark_lookup(mark, table) || !rule.is_ours() {
                continue;
            }
            // The kernel deletes the first rule matching the request; refuse rather than
            // delete someone else's rule that sorts before ours and looks the same to it.
            if let Some(other) = rules[..i]
                .iter()
                .find(|r| r.matched_by_delete_of(rule) && !r.is_ours())
            {
                return Err(NetlinkError::Conflict {
                    op,
                    detail: format!(
                        "the kernel would delete another rule instead ({})",
                        other.describe()
                    ),
                });
            }
            let body = rule_message(family, mark, table, rule.priority, PROTOCOL);
            self.request(&op, libc::RTM_DELRULE, 0, &body)?;
            changed = Changed::Yes;
        }
        Ok(changed)
    }

    /// Whether a rule that is exactly `fwmark <mark> lookup <table>` is in place, whoever
    /// added it.
    pub fn has_fwmark_rule(&mut self, family: Family, mark: u32, table: u32) -> Result<bool> {
        let op = format!("listing rules ({})", name(family));
        Ok(self
            .rules(&op, family)?
            .iter()
            .any(|r| r.is_fwmark_lookup(mark, table)))
    }

    /// Whether a rule of ours that is exactly `fwmark <mark> lookup <table>` is in place.
    pub fn has_our_fwmark_rule(&mut self, family: Family, mark: u32, table: u32) -> Result<bool> {
        let op = format!("listing rules ({})", name(family));
        Ok(self
            .rules(&op, family)?
            .iter()
            .any(|r| r.is_fwmark_lookup(mark, table) && r.is_ours()))
    }

    /// The `(mark, table)` of every `fwmark <mark> lookup <table>` rule of ours, whatever
    /// configuration added it, in list order without repeats.
    pub fn our_fwmark_rules(&mut self, family: Family) -> Result<Vec<(u32, u32)>> {
        let op = format!("listing rules ({})", name(family));
        let mut out = Vec::new();
        for rule in self.rules(&op, family)? {
            if let (true, Some(mark)) = (rule.is_ours(), rule.fwmark) {
                if !out.contains(&(mark, rule.table)) {
                    out.push((mark, rule.table));
                }
            }
        }
        Ok(out)
    }

    /// Makes sure `ip [-6] route add local 0.0.0.0/0 (::/0) dev lo table <table>` is in place.
    /// A different default route already in that table is an error, not something to replace.
    pub fn ensure_local_default_route(&mut self, family: Family, table: u32) -> Result<Changed> {
        let op = format!(
            "adding route local {} dev lo table {table} ({})",
            default_dst(family),
            name(family)
        );
        check_table(&op, table)?;
        if self.has_local_default_route(family, table)? {
            return Ok(Changed::No);
        }
        let route = Route {
            dst_len: 0,
            src_len: 0,
            tos: 0,
            table,
            protocol: PROTOCOL,
            kind: libc::RTN_LOCAL,
            oif: Some(self.lo_index),
            priority: None,
            has_gateway: false,
        };
        let body = route_message(family, &route, libc::RT_SCOPE_HOST);
        // EXCL: never let the kernel replace or append to a route that is not ours.
        let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        match self.request(&op, libc::RTM_NEWROUTE, flags as u16, &body) {
            Err(NetlinkError::Rejected {
                errno: Errno::EEXIST,
                op,
            }) => Err(NetlinkError::Conflict {
                op,
                detail: format!("table {table} already has a different default route"),
            }),
            other => other.map(|()| Changed::Yes),
        }
    }

    /// Removes our `local` default route via `lo` from `table`; other routes in the table,
    /// including other default routes and an identical one of another owner, stay. Not
    /// there: a no-op.
    pub fn remove_local_default_route(&mut self, family: Family, table: u32) -> Result<Changed> {
        let op = format!(
            "removing route local {} dev lo table {table} ({})",
            default_dst(family),
            name(family)
        );
        check_table(&op, table)?;
        let ours: Vec<Route> = self
            .routes(&op, family)?
            .into_iter()
            .filter(|r| r.is_local_default(table, self.lo_index) && r.protocol == PROTOCOL)
            .collect();
        for route in &ours {
            // Type, device, protocol and metric all narrow the kernel's match to this route;
            // scope NOWHERE means "any scope", as `ip route del` sends it.
            let body = route_message(family, route, libc::RT_SCOPE_NOWHERE);
            self.request(&op, libc::RTM_DELROUTE, 0, &body)?;
        }
        Ok(if ours.is_empty() {
            Changed::No
        } else {
            Changed::Yes
        })
    }

    /// Whether `table` holds the `local` default route via `lo`, whoever added it.
    pub fn has_local_default_route(&mut self, family: Family, table: u32) -> Result<bool> {
        let op = format!("listing routes ({})", name(family));
        let lo = self.lo_index;
        Ok(self
            .routes(&op, family)?
            .iter()
            .any(|r| r.is_local_default(table, lo)))
    }

    /// The tables holding a `local` default route via `lo` of ours, in dump order without
    /// repeats.
    pub fn our_local_default_routes(&mut self, family: Family) -> Result<Vec<u32>> {
        let op = format!("listing routes ({})", name(family));
        let lo = self.lo_index;
        let mut out = Vec::new();
        for route in self.routes(&op, family)? {
            if route.protocol == PROTOCOL
                && route.is_local_default(route.table, lo)
                && !out.contains(&route.table)
            {
                out.push(route.table);
            }
        }
        Ok(out)
    }

    /// Makes sure `ip -6 addr add <addr>/128 dev lo` is in place.
    pub fn ensure_lo_address_v6(&mut self, addr: Ipv6Addr) -> Result<Changed> {
        let op = format!("adding address {addr}/{LO_PREFIX_LEN} to lo");
        if self.has_lo_address_v6(addr)? {
            return Ok(Changed::No);
        }
        let body = address_message(self.lo_index, addr);
        let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        match self.request(&op, libc::RTM_NEWADDR, flags as u16, &body) {
            // IPv6 keys addresses by address alone, so this is the same address with another
            // prefix length; changing it is not ours to do.
            Err(NetlinkError::Rejected {
                errno: Errno::EEXIST,
                op,
            }) => Err(NetlinkError::Conflict {
                op,
                detail: format!("lo already has {addr} with a different prefix length"),
            }),
            other => other.map(|()| Changed::Yes),
        }
    }

    /// Removes `<addr>/128` from `lo` if it is ours (or, with `even_unmarked`, if it carries
    /// no protocol at all: an address this run has just added on a kernel without
    /// `IFA_PROTO`); the same address with another prefix length stays. Not there: a no-op.
    pub fn remove_lo_address_v6(&mut self, addr: Ipv6Addr, even_unmarked: bool) -> Result<Changed> {
        let op = format!("removing address {addr}/{LO_PREFIX_LEN} from lo");
        match self.lo_address_v6(addr)? {
            Some(Some(PROTOCOL)) => {}
            Some(None) if even_unmarked => {}
            _ => return Ok(Changed::No),
        }
        let body = address_message(self.lo_index, addr);
        self.request(&op, libc::RTM_DELADDR, 0, &body)?;
        Ok(Changed::Yes)
    }

    /// Whether `lo` has `<addr>/128`, whoever added it.
    pub fn has_lo_address_v6(&mut self, addr: Ipv6Addr) -> Result<bool> {
        Ok(self.lo_address_v6(addr)?.is_some())
    }

    /// Whether `lo` has `<addr>/128` added by meshinit.
    pub fn has_our_lo_address_v6(&mut self, addr: Ipv6Addr) -> Result<bool> {
        Ok(self.lo_address_v6(addr)? == Some(Some(PROTOCOL)))
    }

    /// `lo`'s `<addr>/128`, if there, with its protocol.
    fn lo_address_v6(&mut self, addr: Ipv6Addr) -> Result<Option<Option<u8>>> {
        let op = "listing IPv6 addresses";
        let mut body = vec![0; IFADDRMSG_LEN];
        body[0] = libc::AF_INET6 as u8;
        let lo = self.lo_index;
        let octets = addr.octets();
        let mut found = None;
        for payload in self.dump(op, libc::RTM_GETADDR, &body)? {
            if payload.first() != Some(&(libc::AF_INET6 as u8)) {
                continue;
            }
            let a = parse_address(&payload).map_err(|detail| malformed(op, detail))?;
            if a.index == lo && a.prefix_len == LO_PREFIX_LEN && a.address == octets {
                found = Some(a.protocol);
            }
        }
        Ok(found)
    }

    /// Every rule of `family`, in the kernel's list order. The family check guards against
    /// a kernel that answers a filtered dump with every family.
    fn rules(&mut self, op: &str, family: Family) -> Result<Vec<Rule>> {
        let mut body = vec![0; RULE_HDRLEN];
        body[0] = af(family);
        self.dump(op, libc::RTM_GETRULE, &body)?
            .iter()
            .filter(|p| p.first() == Some(&af(family)))
            .map(|p| parse_rule(p).map_err(|detail| malformed(op, detail)))
            .collect()
    }

    /// Every route of `family` in every table (the dump does not filter by table unless
    /// strict checking is on, which we do not turn on).
    fn routes(&mut self, op: &str, family: Family) -> Result<Vec<Route>> {
        let mut body = vec![0; RTMSG_LEN];
        body[0] = af(family);
        self.dump(op, libc::RTM_GETROUTE, &body)?
            .iter()
            .filter(|p| p.first() == Some(&af(family)))
            .map(|p| parse_route(p).map_err(|detail| malformed(op, detail)))
            .collect()
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request with `NLM_F_ACK` and waits for its acknowledgement.
    fn request(&mut self, op: &str, kind: u16, flags: u16, body: &[u8]) -> Result<()> {
        let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        let seq = self.next_seq();
        self.send(op, &message(kind, flags, seq, body))?;
        loop {
            for msg in self.receive(op, seq)? {
                if msg.kind == libc::NLMSG_ERROR as u16 {
                    return match error_code(&msg.payload) {
                        Some(0) => Ok(()),
                        Some(code) => Err(NetlinkError::Rejected {
                            op: op.to_string(),
                            errno: Errno::from_raw(-code),
                        }),
                        None => Err(malformed(op, "truncated NLMSG_ERROR".into())),
                    };
                }
                // Nothing else is expected for a plain request; skip it (e.g. NLMSG_NOOP).
            }
        }
    }

    /// Sends one `NLM_F_DUMP` request and collects the payloads of every reply until
    /// `NLMSG_DONE`. A dump the kernel marks as interrupted by a concurrent change is redone.
    fn dump(&mut self, op: &str, kind: u16, body: &[u8]) -> Result<Vec<Vec<u8>>> {
        for _ in 0..DUMP_ATTEMPTS {
            let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
            let seq = self.next_seq();
            self.send(op, &message(kind, flags, seq, body))?;
            let mut payloads = Vec::new();
            let mut interrupted = false;
            'recv: loop {
                for msg in self.receive(op, seq)? {
                    interrupted |= msg.flags & libc::NLM_F_DUMP_INTR as u16 != 0;
                    match i32::from(msg.kind) {
                        libc::NLMSG_DONE => {
                            // The payload may carry the dump's own error code.
                            match error_code(&msg.payload) {
                                Some(code) if code < 0 => {
                                    return Err(NetlinkError::Rejected {
                                        op: op.to_string(),
                                        errno: Errno::from_raw(-code),
                                    })
                                }
                                _ => break 'recv,
                            }
                        }
                        libc::NLMSG_ERROR => match error_code(&msg.payload) {
                            Some(0) => {}
                            Some(code) => {
                                return Err(NetlinkError::Rejected {
                                    op: op.to_string(),
                                    errno: Errno::from_raw(-code),
                                })
                            }
                            None => return Err(malformed(op, "truncated NLMSG_ERROR".into())),
                        },
                        libc::NLMSG_NOOP => {}
                        _ => payloads.push(msg.payload),
                    }
                }
            }
            if !interrupted {
                return Ok(payloads);
            }
        }
        Err(NetlinkError::Io {
            op: op.to_string(),
            errno: Errno::EINTR,
        })
    }

    fn send(&self, op: &str, buf: &[u8]) -> Result<()> {
        self.sock.send(buf).map_err(|e| socket_error(op, e))
    }

    /// Reads one datagram and returns its messages that answer `seq`. Messages with an older
    /// sequence number are left over from an earlier request that was abandoned on an error,
    /// and are dropped; a newer one means the stream is out of step.
    fn receive(&self, op: &str, seq: u32) -> Result<Vec<Msg>> {
        let mut out = Vec::new();
        for msg in self.sock.receive().map_err(|e| socket_error(op, e))? {
            if msg.seq == seq {
                out.push(msg);
            } else if msg.seq > seq {
                return Err(malformed(
                    op,
                    format!("reply to sequence {} while waiting for {seq}", msg.seq),
                ));
            }
        }
        Ok(out)
    }
}

/// Adds what was being done to a socket error.
fn socket_error(op: &str, e: SocketError) -> NetlinkError {
    match e {
        SocketError::Io(_, errno) => NetlinkError::Io {
            op: op.to_string(),
            errno,
        },
        SocketError::Malformed(detail) => malformed(op, detail),
    }
}

fn malformed(op: &str, detail: String) -> NetlinkError {
    NetlinkError::Malformed {
        op: op.to_string(),
        detail,
    }
}

/// Table 0 is `RT_TABLE_UNSPEC`: the kernel would silently put a route into `main`, and a
/// rule cannot look it up, so it is refused before anything is sent.
fn check_table(op: &str, table: u32) -> Result<()> {
    if table == u32::from(libc::RT_TABLE_UNSPEC) {
        return Err(NetlinkError::Invalid {
            op: op.to_string(),
            detail: "table 0 (unspecified) is not a routing table".into(),
        });
    }
    Ok(())
}

fn name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

fn af(family: Family) -> u8 {
    match family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

fn default_dst(family: Family) -> &'static str {
    match family {
        Family::V4 => "0.0.0.0/0",
        Family::V6 => "::/0",
    }
}

/// The 8-bit table field of a rule or route header: ids above 255 only fit in the 32-bit
/// attribute, and the header then says `RT_TABLE_UNSPEC` so the kernel takes the attribute.
fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(libc::RT_TABLE_UNSPEC)
}

/// `fib_rule_hdr` + mark, full mask, table and protocol (+ priority, to pick one rule for
/// deletion).
fn rule_message(
    family: Family,
    mark: u32,
    table: u32,
    priority: Option<u32>,
    protocol: u8,
) -> Vec<u8> {
    // family, dst_len, src_len, tos, table, res1, res2, action, then flags (u32).
    let mut body = vec![
        af(family),
        0,
        0,
        0,
        header_table(table),
        0,
        0,
        FR_ACT_TO_TBL,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes());
    put_attr_u32(&mut body, FRA_FWMARK, mark);
    // Explicit full mask: what the kernel defaults to for a non-zero mark, and it makes a
    // mark of 0 mean "mark is 0" instead of "no mark selector".
    put_attr_u32(&mut body, FRA_FWMASK, u32::MAX);
    put_attr_u32(&mut body, FRA_TABLE, table);
    if let Some(priority) = priority {
        put_attr_u32(&mut body, FRA_PRIORITY, priority);
    }
    put_attr(&mut body, FRA_PROTOCOL, &[protocol]);
    body
}

/// `rtmsg` + table, device and (for deletion) metric of a default route.
fn route_message(family: Family, route: &Route, scope: u8) -> Vec<u8> {
    // family, dst_len, src_len, tos, table, protocol, scope, type, then flags (u32).
    let mut body = vec![
        af(family),
        route.dst_len,
        route.src_len,
        route.tos,
        header_table(route.table),
        route.protocol,
        scope,
        route.kind,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes());
    put_attr_u32(&mut body, libc::RTA_TABLE, route.table);
    if let Some(oif) = route.oif {
        put_attr_u32(&mut body, libc::RTA_OIF, oif);
    }
    if let Some(priority) = route.priority {
        put_attr_u32(&mut body, libc::RTA_PRIORITY, priority);
    }
    body
}

/// `ifaddrmsg` + the address as both local and peer address, as `ip addr add` sends it.
fn address_message(index: u32, addr: Ipv6Addr) -> Vec<u8> {
    // family, prefixlen, flags, scope (the kernel derives IPv6 scope from the address).
    let mut body = vec![libc::AF_INET6 as u8, LO_PREFIX_LEN, 0, 0];
    body.extend_from_slice(&index.to_ne_bytes());
    put_attr(&mut body, libc::IFA_LOCAL, &addr.octets());
    put_attr(&mut body, libc::IFA_ADDRESS, &addr.octets());
    put_attr(&mut body, IFA_PROTO, &[PROTOCOL]);
    body
}

/// A native-order u32 attribute, as rtnetlink takes them.
fn put_attr_u32(buf: &mut Vec<u8>, kind: u16, value: u32) {
    put_attr(buf, kind, &value.to_ne_bytes());
}

fn attr_u32(kind: u16, data: &[u8]) -> std::result::Result<u32, String> {
    u32_at(data, 0).ok_or_else(|| format!("attribute {kind} is shorter than 4 bytes"))
}

fn parse_rule(payload: &[u8]) -> std::result::Result<Rule, String> {
    let hdr = payload.get(..RULE_HDRLEN).ok_or("truncated fib_rule_hdr")?;
    let mut rule = Rule {
        dst_len: hdr[1],
        src_len: hdr[2],
        tos: hdr[3],
        header_table: hdr[4],
        table: u32::from(hdr[4]),
        action: hdr[7],
        flags: u32_at(hdr, 8).ok_or("truncated fib_rule_hdr")?,
        priority: None,
        fwmark: None,
        fwmask: None,
        protocol: 0,
        has_other_attrs: false,
    };
    for (kind, data) in parse_attrs(&payload[RULE_HDRLEN..])? {
        match kind {
            FRA_TABLE => rule.table = attr_u32(kind, data)?,
            FRA_PRIORITY => rule.priority = Some(attr_u32(kind, data)?),
            FRA_FWMARK => rule.fwmark = Some(attr_u32(kind, data)?),
            FRA_FWMASK => rule.fwmask = Some(attr_u32(kind, data)?),
            FRA_PROTOCOL => rule.protocol = *data.first().ok_or("empty FRA_PROTOCOL")?,
            // Dumped as -1 ("not set") on every rule by current kernels.
            FRA_SUPPRESS_PREFIXLEN | FRA_SUPPRESS_IFGROUP if attr_u32(kind, data)? == u32::MAX => {}
            _ => rule.has_other_attrs = true,
        }
    }
    Ok(rule)
}

fn parse_route(payload: &[u8]) -> std::result::Result<Route, String> {
    let hdr = payload.get(..RTMSG_LEN).ok_or("truncated rtmsg")?;
    let mut route = Route {
        dst_len: hdr[1],
        src_len: hdr[2],
        tos: hdr[3],
        table: u32::from(hdr[4]),
        protocol: hdr[5],
        kind: hdr[7],
        oif: None,
        priority: None,
        has_gateway: false,
    };
    for (kind, data) in parse_attrs(&payload[RTMSG_LEN..])? {
        match kind {
            libc::RTA_TABLE => route.table = attr_u32(kind, data)?,
            libc::RTA_OIF => route.oif = Some(attr_u32(kind, data)?),
            libc::RTA_PRIORITY => route.priority = Some(attr_u32(kind, data)?),
            libc::RTA_GATEWAY | libc::RTA_MULTIPATH | libc::RTA_VIA => route.has_gateway = true,
            _ => {}
        }
    }
    Ok(route)
}

fn parse_address(payload: &[u8]) -> std::result::Result<Address, String> {
    let hdr = payload.get(..IFADDRMSG_LEN).ok_or("truncated ifaddrmsg")?;
    let mut local = None;
    let mut address = None;
    let mut protocol = None;
    for (kind, data) in parse_attrs(&payload[IFADDRMSG_LEN..])? {
        match kind {
            libc::IFA_LOCAL => local = Some(data.to_vec()),
            libc::IFA_ADDRESS => address = Some(data.to_vec()),
            IFA_PROTO => protocol = Some(*data.first().ok_or("empty IFA_PROTO")?),
            _ => {}
        }
    }
    Ok(Address {
        index: u32_at(hdr, 4).ok_or("truncated ifaddrmsg")?,
        prefix_len: hdr[1],
        // IFA_LOCAL is the interface's own address when there is a peer; otherwise the
        // kernel sends only IFA_ADDRESS.
        address: local.or(address).unwrap_or_default(),
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::netlink_wire::{parse_messages, u16_at};
    use std::process::Command;

    use nix::sched::{unshare, CloneFlags};

    const MARK: u32 = 1337;
    const TABLE: u32 = 133;
    const ADDR: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

    /// Root is needed for namespaces. Without it the test is skipped with a note, unless `CI`
    /// is set: there a silent skip would hide that nothing was proven.
    fn may_use_netns(test: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!("{test}: needs root for network namespaces, and CI is set so it may not skip");
        }
        eprintln!("note: skipping {test}: needs root for network namespaces");
        false
    }

    /// Runs `f` on a new thread that alone moves into a fresh network namespace; the test
    /// harness's threads stay where they are.
    fn in_new_netns(test: &str, f: impl FnOnce() + Send + 'static) {
        if !may_use_netns(test) {
            return;
        }
        let joined = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            f();
        })
        .join();
        if let Err(panic) = joined {
            std::panic::resume_unwind(panic);
        }
    }

    /// Runs `ip` (tests only) in the calling thread's namespace; a child inherits it.
    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("ip output is UTF-8")
    }

    fn flag(family: Family) -> &'static str {
        match family {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// `ip rule show` as (priority, rest with whitespace normalised).
    fn ip_rules(family: Family) -> Vec<(u32, String)> {
        ip(&[flag(family), "rule", "show"])
            .lines()
            .map(|line| {
                let (prio, rest) = line.split_once(':').expect("rule line has a priority");
                let rest = rest.split_whitespace().collect::<Vec<_>>().join(" ");
                (prio.trim().parse().expect("numeric priority"), rest)
            })
            .collect()
    }

    fn count_ip_rules(family: Family, text: &str) -> usize {
        ip_rules(family).iter().filter(|(_, r)| r == text).count()
    }

    fn ip_routes(family: Family, table: &str) -> Vec<String> {
        ip(&[flag(family), "route", "show", "table", table])
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// `ip link set lo up` over our own socket: a fresh namespace's `lo` is down, and IPv6
    /// refuses routes through a device that is down.
    fn set_lo_up(nl: &mut Netlink) {
        // ifinfomsg: family, pad, type (u16), index (i32), flags (u32), change (u32).
        let mut body = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        body.extend_from_slice(&nl.lo_index.to_ne_bytes());
        body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        nl.request("setting lo up", libc::RTM_NEWLINK, 0, &body)
            .expect("set lo up");
    }

    fn open_with_lo_up() -> Netlink {
        let mut nl = Netlink::open().expect("open netlink");
        set_lo_up(&mut nl);
        nl
    }

    #[test]
    fn encodes_attributes_4_byte_aligned() {
        let mut buf = Vec::new();
        put_attr(&mut buf, 3, b"lo");
        put_attr_u32(&mut buf, 15, 1000);
        // Length 6 (header + 2 bytes), padded to 8; then a plain 8-byte u32 attribute.
        assert_eq!(buf.len(), 16);
        assert_eq!(u16_at(&buf, 0), Some(6));
        let attrs = parse_attrs(&buf).unwrap();
        assert_eq!(
            attrs,
            vec![(3, &b"lo"[..]), (15, &1000u32.to_ne_bytes()[..])]
        );

        let msg = message(libc::RTM_GETRULE, 0x301, 42, &[1, 2, 3]);
        assert_eq!(msg.len(), 20);
        let parsed = parse_messages(&msg).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            (parsed[0].kind, parsed[0].flags, parsed[0].seq),
            (libc::RTM_GETRULE, 0x301, 42)
        );
        assert_eq!(parsed[0].payload, vec![1, 2, 3]);
    }

    #[test]
    fn rejects_truncated_replies_without_panicking() {
        let msg = message(libc::RTM_NEWRULE, 0, 1, &[0; 12]);
        assert!(parse_messages(&msg[..msg.len() - 4]).is_err());
        assert!(parse_messages(&msg[..10]).is_err());
        // An attribute claiming more bytes than there are.
        assert!(parse_attrs(&[200, 0, 1, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_rule(&[0; 11]).is_err());
        assert!(parse_route(&[0; 5]).is_err());
        assert!(parse_address(&[0; 7]).is_err());
        let mut bad = rule_message(Family::V4, MARK, TABLE, None, PROTOCOL);
        put_attr(&mut bad, FRA_PRIORITY, &[1, 2]);
        assert!(parse_rule(&bad).is_err());
    }

    #[test]
    fn our_rule_request_reads_back_as_our_rule() {
        for table in [TABLE, 1000] {
            let rule =
                parse_rule(&rule_message(Family::V6, MARK, table, Some(5), PROTOCOL)).unwrap();
            assert!(rule.is_fwmark_lookup(MARK, table));
            assert!(rule.is_ours());
            assert_eq!(rule.protocol, PROTOCOL);
            let foreign = parse_rule(&rule_message(Family::V6, MARK, table, Some(5), 0)).unwrap();
            assert!(foreign.is_fwmark_lookup(MARK, table) && !foreign.is_ours());
            assert!(!rule.is_fwmark_lookup(MARK, table + 1));
            assert!(!rule.is_fwmark_lookup(MARK + 1, table));
            assert_eq!(rule.priority, Some(5));
        }
        // Header table 0 (unspecified) when the id does not fit in 8 bits.
        assert_eq!(rule_message(Family::V4, MARK, 1000, None, PROTOCOL)[4], 0);
        assert_eq!(rule_message(Family::V4, MARK, 133, None, PROTOCOL)[4], 133);
    }

    #[test]
    fn child_process_inherits_the_threads_namespace() {
        in_new_netns("child_process_inherits_the_threads_namespace", || {
            let thread_ns = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
            // /proc/self is the thread-group leader, which stayed in the original namespace.
            let process_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
            assert_ne!(thread_ns, process_ns, "unshare moved only this thread");
            let child = Command::new("readlink")
                .arg("/proc/self/ns/net")
                .output()
                .expect("running readlink");
            let child_ns = String::from_utf8(child.stdout).unwrap();
            assert_eq!(child_ns.trim(), thread_ns.to_str().unwrap());
            // And the objects agree: what our socket adds, the child's `ip` sees.
            let mut nl = Netlink::open().unwrap();
            nl.ensure_fwmark_rule(Family::V4, MARK, TABLE).unwrap();
            assert_eq!(
                count_ip_rules(Family::V4, "from all fwmark 0x539 lookup 133 proto 157"),
                1
            );
        });
    }

    #[test]
    fn handle_stays_in_the_namespace_it_was_opened_in() {
        in_new_netns("handle_stays_in_the_namespace_it_was_opened_in", || {
            let mut first = Netlink::open().unwrap();
            first.ensure_fwmark_rule(Family::V4, MARK, TABLE).unwrap();
            unshare(CloneFlags::CLONE_NEWNET).unwrap();
            // The old socket still acts on the first namespace...
            assert!(first.has_fwmark_rule(Family::V4, MARK, TABLE).unwrap());
            // ...while this thread, its children and new sockets are in the second.
            assert_eq!(
                count_ip_rules(Family::V4, "from all fwmark 0x539 lookup 133 proto 157"),
                0
            );
            let mut second = Netlink::open().unwrap();
            assert!(!second.has_fwmark_rule(Family::V4, MARK, TABLE).unwrap());
        });
    }

    #[test]
    fn fwmark_rule_lifecycle() {
        in_new_netns("fwmark_rule_lifecycle", || {
            let mut nl = Netlink::open().unwrap();
            let text = "from all fwmark 0x539 lookup 133 proto 157";
            for family in [Family::V4, Family::V6] {
                assert!(!nl.has_fwmark_rule(family, MARK, TABLE).unwrap());
                assert_eq!(
                    nl.ensure_fwmark_rule(family, MARK, TABLE).unwrap(),
                    Changed::Yes
                );
                assert!(nl.has_fwmark_rule(family, MARK, TABLE).unwrap());
                assert_eq!(count_ip_rules(family, text), 1);
                // The kernel picks the priority just below the first non-zero one (main).
                let prio = ip_rules(family)
                    .into_iter()
                    .find(|(_, r)| r == text)
                    .unwrap()
                    .0;
                assert_eq!(prio, 32765, "{family:?}");

                assert_eq!(
                    nl.ensure_fwmark_rule(family, MARK, TABLE).unwrap(),
                    Changed::No
                );
                assert_eq!(count_ip_rules(family, text), 1);

                assert_eq!(
                    nl.remove_fwmark_rule(family, MARK, TABLE).unwrap(),
                    Changed::Yes
                );
                assert!(!nl.has_fwmark_rule(family, MARK, TABLE).unwrap());
                assert_eq!(count_ip_rules(family, text), 0);
                assert_eq!(
                    nl.remove_fwmark_rule(family, MARK, TABLE).unwrap(),
                    Changed::No
                );
            }
        });
    }

    #[test]
    fn rule_with_table_above_255() {
        in_new_netns("rule_with_table_above_255", || {
            let mut nl = Netlink::open().unwrap();
            for family in [Family::V4, Family::V6] {
                assert_eq!(
                    nl.ensure_fwmark_rule(family, MARK, 1000).unwrap(),
                    Changed::Yes
                );
                assert!(nl.has_fwmark_rule(family, MARK, 1000).unwrap());
                // 1000 mod 256 = 232: make sure nothing truncated the id.
                assert!(!nl.has_fwmark_rule(family, MARK, 232).unwrap());
                assert_eq!(
                    count_ip_rules(family, "from all fwmark 0x539 lookup 1000 proto 157"),
                    1
                );
                // The kernel reports a table id that does not fit the header as COMPAT (252).
                let dumped = nl.rules("test", family).unwrap();
                let ours = dumped.iter().find(|r| r.table == 1000).unwrap();
                assert_eq!(ours.header_table, libc::RT_TABLE_COMPAT);
                assert_eq!(
                    nl.ensure_fwmark_rule(family, MARK, 1000).unwrap(),
                    Changed::No
                );
                assert_eq!(
                    nl.remove_fwmark_rule(family, MARK, 1000).unwrap(),
                    Changed::Yes
                );
                assert_eq!(
                    count_ip_rules(family, "from all fwmark 0x539 lookup 1000 proto 157"),
                    0
                );
            }
        });
    }

    #[test]
    fn removing_our_rule_leaves_other_rules_alone() {
        in_new_netns("removing_our_rule_leaves_other_rules_alone", || {
            let mut nl = Netlink::open().unwrap();
            ip(&["-4", "rule", "add", "fwmark", "7", "lookup", "100"]);
            // Same mark and table as ours, but with another selector / negated / masked.
            ip(&[
                "-4",
                "rule",
                "add",
                "from",
                "10.0.0.0/8",
                "fwmark",
                "1337",
                "lookup",
                "133",
            ]);
            ip(&[
                "-4", "rule", "add", "not", "fwmark", "1337", "lookup", "133",
            ]);
            ip(&["-4", "rule", "add", "fwmark", "1337/0xff", "lookup", "133"]);
            ip(&[
                "-4", "rule", "add", "fwmark", "1337", "lookup", "133", "iif", "lo",
            ]);
            let before = ip_rules(Family::V4);
            assert!(!nl.has_fwmark_rule(Family::V4, MARK, TABLE).unwrap());
            assert!(nl.has_fwmark_rule(Family::V4, 7, 100).unwrap());

            assert_eq!(
                nl.ensure_fwmark_rule(Family::V4, MARK, TABLE).unwrap(),
                Changed::Yes
            );
            assert_eq!(ip_rules(Family::V4).len(), before.len() + 1);
            assert_eq!(
                nl.remove_fwmark_rule(Family::V4, MARK, TABLE).unwrap(),
                Changed::Yes
            );
            assert_eq!(ip_rules(Family::V4), before);
        });
    }

    #[test]
    fn duplicates_left_by_istio_init_count_as_in_place_and_are_not_ours_to_remove() {
        in_new_netns("duplicates_left_by_istio_init", || {
            let mut nl = Netlink::open().unwrap();
            let text = "from all fwmark 0x539 lookup 133";
            // istio-init run twice: this kernel accepts the second add at a new priority.
            ip(&["-6", "rule", "add", "fwmark", "1337", "lookup", "133"]);
            ip(&["-6", "rule", "add", "fwmark", "1337", "lookup", "133"]);
            assert_eq!(count_ip_rules(Family::V6, text), 2);
            assert_eq!(
                nl.ensure_fwmark_rule(Family::V6, MARK, TABLE).unwrap(),
                Changed::No
            );
            assert_eq!(count_ip_rules(Family::V6, text), 2);
            // They carry no protocol of ours: not ours to remove.
            assert!(!nl.has_our_fwmark_rule(Family::V6, MARK, TABLE).unwrap());
            assert_eq!(
                nl.remove_fwmark_rule(Family::V6, MARK, TABLE).unwrap(),
                Changed::No
            );
            assert_eq!(count_ip_rules(Family::V6, text), 2);
        });
    }

    #[test]
    fn identical_objects_of_other_owners_survive_removal_and_ours_are_listed() {
        in_new_netns("identical_objects_of_other_owners_survive", || {
            let mut nl = open_with_lo_up();
            for family in [Family::V4, Family::V6] {
                let f = flag(family);
                ip(&[f, "rule", "add", "fwmark", "1337", "lookup", "133"]);
                ip(&[
                    f, "route", "add", "local", "default", "dev", "lo", "table", "133",
                ]);
                // Ours, for another mark and table (an earlier configuration).
                nl.ensure_fwmark_rule(family, 7, 700).unwrap();
                nl.ensure_local_default_route(family, 700).unwrap();
                let before = (ip_rules(family), ip_routes(family, "133"));
                assert!(nl.has_fwmark_rule(family, MARK, TABLE).unwrap());
                assert!(nl.has_local_default_route(family, TABLE).unwrap());
                assert_eq!(
                    nl.remove_fwmark_rule(family, MARK, TABLE).unwrap(),
                    Changed::No
                );
                assert_eq!(
                    nl.remove_local_default_route(family, TABLE).unwrap(),
                    Changed::No
                );
                assert_eq!((ip_rules(family), ip_routes(family, "133")), before);
                assert_eq!(nl.our_fwmark_rules(family).unwrap(), vec![(7, 700)]);
                assert_eq!(nl.our_local_default_routes(family).unwrap(), vec![700]);
                assert_eq!(nl.remove_fwmark_rule(family, 7, 700).unwrap(), Changed::Yes);
                assert_eq!(
                    nl.remove_local_default_route(family, 700).unwrap(),
                    Changed::Yes
                );
                assert!(nl.our_fwmark_rules(family).unwrap().is_empty());
                assert!(nl.our_local_default_routes(family).unwrap().is_empty());
            }
            // An address added without a protocol (iproute2 here cannot set one) is left,
            // unless the caller says it added it itself.
            ip(&["-6", "addr", "add", "::6/128", "dev", "lo"]);
            assert!(nl.has_lo_address_v6(ADDR).unwrap());
            assert!(!nl.has_our_lo_address_v6(ADDR).unwrap());
            assert_eq!(nl.remove_lo_address_v6(ADDR, false).unwrap(), Changed::No);
            assert!(nl.has_lo_address_v6(ADDR).unwrap());
            assert_eq!(nl.remove_lo_address_v6(ADDR, true).unwrap(), Changed::Yes);
            // Ours carries IFA_PROTO (Linux 5.18+).
            assert_eq!(nl.ensure_lo_address_v6(ADDR).unwrap(), Changed::Yes);
            assert!(nl.has_our_lo_address_v6(ADDR).unwrap());
            assert_eq!(nl.remove_lo_address_v6(ADDR, false).unwrap(), Changed::Yes);
            assert!(!nl.has_lo_address_v6(ADDR).unwrap());
        });
    }

    #[test]
    fn refuses_to_remove_when_the_kernel_would_pick_another_rule() {
        in_new_netns("refuses_to_remove_when_ambiguous", || {
            let mut nl = Netlink::open().unwrap();
            // Same priority, and first in the list: a delete by (priority, mark, table) would
            // hit it instead of ours. `ip rule add` cannot build this (its NLM_F_EXCL check
            // matches with the same wildcards and says "File exists"), so ours goes in without
            // EXCL.
            ip(&[
                "rule",
                "add",
                "from",
                "10.0.0.0/8",
                "fwmark",
                "1337",
                "lookup",
                "133",
                "pref",
                "100",
                // The kernel matches the protocol on delete: only a rule carrying ours can be
                // hit instead of ours.
                "proto",
                "157",
            ]);
            let body = rule_message(Family::V4, MARK, TABLE, Some(100), PROTOCOL);
            nl.request("test", libc::RTM_NEWRULE, libc::NLM_F_CREATE as u16, &body)
                .unwrap();
            assert!(nl.has_fwmark_rule(Family::V4, MARK, TABLE).unwrap());
            let before = ip_rules(Family::V4);
            let err = nl.remove_fwmark_rule(Family::V4, MARK, TABLE).unwrap_err();
            assert!(matches!(err, NetlinkError::Conflict { .. }), "{err}");
            assert!(
                err.to_string()
                    .starts_with("removing rule fwmark 1337 lookup 133 (IPv4): "),
                "{err}"
            );
            assert_eq!(ip_rules(Family::V4), before);
        });
    }

    #[test]
    fn local_default_route_lifecycle() {
        in_new_netns("local_default_route_lifecycle", || {
            let mut nl = open_with_lo_up();
            for family in [Family::V4, Family::V6] {
                // A neighbour in another table, and the whole routing state, must survive.
                ip(&[
                    flag(family),
                    "route",
                    "add",
                    "local",
                    "default",
                    "dev",
                    "lo",
                    "table",
                    "134",
                ]);
                let all_before = ip(&[flag(family), "route", "show", "table", "all"]);
                assert!(!nl.has_local_default_route(family, TABLE).unwrap());

                assert_eq!(
                    nl.ensure_local_default_route(family, TABLE).unwrap(),
                    Changed::Yes
                );
                assert!(nl.has_local_default_route(family, TABLE).unwrap());
                let shown = ip_routes(family, "133");
                assert_eq!(shown.len(), 1, "{shown:?}");
                assert!(shown[0].starts_with("local default dev lo"), "{shown:?}");
                let detail = ip(&[flag(family), "-d", "route", "show", "table", "133"]);
                assert!(detail.contains("proto 157"), "{detail}");

                assert_eq!(
                    nl.ensure_local_default_route(family, TABLE).unwrap(),
                    Changed::No
                );
                assert_eq!(ip_routes(family, "133").len(), 1);

                assert_eq!(
                    nl.remove_local_default_route(family, TABLE).unwrap(),
                    Changed::Yes
                );
                assert!(!nl.has_local_default_route(family, TABLE).unwrap());
                assert!(ip_routes(family, "133").is_empty());
                assert_eq!(
                    ip(&[flag(family), "route", "show", "table", "all"]),
                    all_before
                );
                assert!(nl.has_local_default_route(family, 134).unwrap());
                assert_eq!(
                    nl.remove_local_default_route(family, TABLE).unwrap(),
                    Changed::No
                );
            }
        });
    }

    #[test]
    fn local_default_route_in_table_above_255() {
        in_new_netns("local_default_route_in_table_above_255", || {
            let mut nl = open_with_lo_up();
            for family in [Family::V4, Family::V6] {
                assert_eq!(
                    nl.ensure_local_default_route(family, 1000).unwrap(),
                    Changed::Yes
                );
                assert!(nl.has_local_default_route(family, 1000).unwrap());
                assert!(!nl.has_local_default_route(family, 232).unwrap());
                assert_eq!(ip_routes(family, "1000").len(), 1);
                assert_eq!(
                    nl.ensure_local_default_route(family, 1000).unwrap(),
                    Changed::No
                );
                assert_eq!(
                    nl.remove_local_default_route(family, 1000).unwrap(),
                    Changed::Yes
                );
                assert!(ip_routes(family, "1000").is_empty());
            }
        });
    }

    #[test]
    fn a_different_default_route_is_a_conflict_and_is_left_alone() {
        in_new_netns("a_different_default_route_is_a_conflict", || {
            let mut nl = open_with_lo_up();
            for family in [Family::V4, Family::V6] {
                ip(&[
                    flag(family),
                    "route",
                    "add",
                    "unreachable",
                    "default",
                    "table",
                    "133",
                ]);
                let before = ip_routes(family, "133");
                assert!(!nl.has_local_default_route(family, TABLE).unwrap());
                let err = nl.ensure_local_default_route(family, TABLE).unwrap_err();
                assert!(matches!(err, NetlinkError::Conflict { .. }), "{err}");
                assert!(err
                    .to_string()
                    .contains("table 133 already has a different default route"));
                assert_eq!(
                    nl.remove_local_default_route(family, TABLE).unwrap(),
                    Changed::No
                );
                assert_eq!(ip_routes(family, "133"), before);
            }
        });
    }

    #[test]
    fn lo_address_lifecycle() {
        in_new_netns("lo_address_lifecycle", || {
            let mut nl = open_with_lo_up();
            let has_in_ip = |text: &str| ip(&["-6", "addr", "show", "dev", "lo"]).contains(text);
            assert!(has_in_ip("inet6 ::1/128"));
            assert!(!nl.has_lo_address_v6(ADDR).unwrap());
            assert_eq!(nl.ensure_lo_address_v6(ADDR).unwrap(), Changed::Yes);
            assert!(nl.has_lo_address_v6(ADDR).unwrap());
            assert!(has_in_ip("inet6 ::6/128 scope global"));
            assert_eq!(nl.ensure_lo_address_v6(ADDR).unwrap(), Changed::No);
            assert_eq!(nl.remove_lo_address_v6(ADDR, false).unwrap(), Changed::Yes);
            assert!(!nl.has_lo_address_v6(ADDR).unwrap());
            assert!(!has_in_ip("::6/"));
            assert!(has_in_ip("inet6 ::1/128"));
            assert_eq!(nl.remove_lo_address_v6(ADDR, false).unwrap(), Changed::No);
        });
    }

    #[test]
    fn lo_address_with_another_prefix_is_a_conflict_and_is_left_alone() {
        in_new_netns("lo_address_with_another_prefix", || {
            let mut nl = open_with_lo_up();
            ip(&["-6", "addr", "add", "::6/64", "dev", "lo"]);
            assert!(!nl.has_lo_address_v6(ADDR).unwrap());
            let err = nl.ensure_lo_address_v6(ADDR).unwrap_err();
            assert_eq!(
                err.to_string(),
                "adding address ::6/128 to lo: lo already has ::6 with a different prefix length"
            );
            assert_eq!(nl.remove_lo_address_v6(ADDR, false).unwrap(), Changed::No);
            assert!(ip(&["-6", "addr", "show", "dev", "lo"]).contains("inet6 ::6/64"));
        });
    }

    #[test]
    fn errors_are_typed_and_name_the_operation() {
        in_new_netns("errors_are_typed_and_name_the_operation", || {
            // lo is still down in a fresh namespace: IPv6 refuses a route through it.
            let mut nl = Netlink::open().unwrap();
            let err = nl
                .ensure_local_default_route(Family::V6, TABLE)
                .unwrap_err();
            assert_eq!(err.errno(), Some(Errno::ENETDOWN), "{err:?}");
            assert_eq!(
                err.to_string(),
                "adding route local ::/0 dev lo table 133 (IPv6): Network is down"
            );

            // Table 0 would silently mean "main" to the kernel: refused before sending.
            let err = nl.ensure_fwmark_rule(Family::V4, MARK, 0).unwrap_err();
            assert!(matches!(err, NetlinkError::Invalid { .. }));
            assert_eq!(
                err.to_string(),
                "adding rule fwmark 1337 lookup 0 (IPv4): table 0 (unspecified) is not a routing table"
            );
            assert!(nl.ensure_local_default_route(Family::V4, 0).is_err());

            // A kernel rejection through the shared request path: a device that does not exist.
            let route = Route {
                dst_len: 0,
                src_len: 0,
                tos: 0,
                table: TABLE,
                protocol: libc::RTPROT_BOOT,
                kind: libc::RTN_LOCAL,
                oif: Some(99_999),
                priority: None,
                has_gateway: false,
            };
            let body = route_message(Family::V4, &route, libc::RT_SCOPE_HOST);
            let err = nl
                .request(
                    "adding route via ifindex 99999",
                    libc::RTM_NEWROUTE,
                    0x600,
                    &body,
                )
                .unwrap_err();
            assert_eq!(err.errno(), Some(Errno::ENODEV), "{err:?}");
            assert_eq!(
                err.to_string(),
                "adding route via ifindex 99999: No such device"
            );
            // The socket is still in step after an error.
            assert!(!nl.has_local_default_route(Family::V4, TABLE).unwrap());
        });
    }
}

#[cfg(test)]
#[path = "netlink_fuzz.rs"]
mod fuzz;
