//! nftables ruleset → nf_tables netlink messages: one batch (`NFNL_MSG_BATCH_BEGIN` …
//! `NFNL_MSG_BATCH_END`) that the kernel applies as a single transaction. Pure encoding, no
//! socket; sending it belongs to `apply::nftables`.
//!
//! The expressions are those `nft` 1.0 generates for the same text (checked with
//! `nft --debug=netlink` and `--debug=mnl`), including what nft adds implicitly: `meta nfproto`
//! before an address match in an inet table, `meta l4proto` before a port match when the rule
//! has not matched the protocol yet, a shortened load for a byte-aligned prefix and a bitwise
//! mask for any other one, and an anonymous set (created in the same batch) for a port list.
//! So the kernel ends up with exactly what `nft -f` of the script would give it.
//!
//! Messages are plain byte vectors: netlink headers in host order, nf_tables attribute values
//! in network order (`NLA_U32` fields are big-endian), register data as the packet or the
//! kernel holds it (ports and addresses big-endian, marks, uids and zones host-endian).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use similar::{capture_diff_deadline, Algorithm, DiffOp};

use crate::backend::nft_sets;
use crate::backend::nftables::{
    cidr_family, wildcard_prefix, Direction, Hook, NftRule, NftTable, Ruleset, Stmt, MANAGED_TABLES,
};
use crate::config::types::Cidr;
use crate::netlink_wire::{self, parse_attrs, put_attr};
use crate::plan::{CtState, Family, Owner, Protocol};

// nfnetlink (<linux/netfilter/nfnetlink.h>).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNETLINK_V0: u8 = 0;

// Netfilter protocol families (<linux/netfilter.h>).
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

// Hooks (<linux/netfilter.h>).
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;

// Message types (enum nf_tables_msg_types).
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETGEN: u16 = 16;

// Table, chain and hook attributes.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;

// Rule attributes.
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_ID: u16 = 9;
const NFTA_RULE_POSITION_ID: u16 = 10;

// Set and set-element attributes.
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
/// nft's datatype number for `inet_service` (a port); informational for the kernel, used by
/// nft to print the set.
const TYPE_INET_SERVICE: u32 = 13;
/// The name the kernel completes with a free number (`__set0`, …), as nft names anonymous sets.
const ANON_SET_NAME: &str = "__set%d";

// Generic list, expression, data and verdict attributes.
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

// Verdict codes (<linux/netfilter.h>, enum nft_verdicts).
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;

// Registers: nft uses the verdict register and the first 16-byte data register.
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

// Expression attributes.
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_SREG: u16 = 4;
const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
const NFTA_REDIR_FLAGS: u16 = 3;
/// `NF_NAT_RANGE_PROTO_SPECIFIED`: the redirect names a port.
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFTA_TPROXY_FAMILY: u16 = 1;
const NFTA_TPROXY_REG_PORT: u16 = 3;

// Meta and conntrack keys.
const NFT_META_MARK: u32 = 3;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_SKUID: u32 = 10;
const NFT_META_SKGID: u32 = 11;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_MARK: u32 = 3;
const NFT_CT_ZONE: u32 = 17;

// Conntrack state bits as `ct state` sees them (<linux/netfilter/nf_conntrack_common.h>).
const CT_STATE_INVALID: u32 = 1;
const CT_STATE_ESTABLISHED: u32 = 1 << 1;
const CT_STATE_RELATED: u32 = 1 << 2;

// Netlink framing (the generic parts are in `netlink_wire`).
const NFGENMSG_LEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_APPEND: u16 = 0x800;
/// `IFNAMSIZ`: nft compares a whole interface name as 16 zero-padded bytes.
const IFNAMSIZ: usize = 16;

/// Why a ruleset cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A group name (`skgid java`) that the group database does not know; the kernel only
    /// takes numeric gids.
    #[error("{rule}: group {group:?} does not exist (not in the group database)")]
    UnknownGroup {
        /// The group as written.
        group: String,
        /// The rule that names it.
        rule: String,
    },
    /// An insert refers to an index its chain does not have at that point.
    #[error("{rule}: index {index} is beyond the end of the chain ({len} rules)")]
    BadIndex {
        /// The rule being inserted.
        rule: String,
        /// The requested 0-based index.
        index: usize,
        /// How many rules the chain had.
        len: usize,
    },
}

/// What a table message of the batch does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableOp {
    /// `NEWTABLE` so that the following delete finds the table even when it did not exist.
    Ensure,
    /// `DELTABLE`: removes the table with everything in it.
    Delete,
    /// `NEWTABLE` of the fresh table, exclusive: refused (`EEXIST`) if the table exists.
    Create,
}

/// Which part of the ruleset a message of the batch comes from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `NFNL_MSG_BATCH_BEGIN`/`END`; an error here concerns the whole transaction.
    Batch,
    /// A table message.
    Table {
        /// The table's name.
        table: String,
        /// What the message does.
        op: TableOp,
    },
    /// A chain declaration.
    Chain {
        /// The table's name.
        table: String,
        /// The chain's name.
        chain: String,
    },
    /// A rule, or the anonymous set one of its matches uses.
    Rule(RuleOrigin),
}

/// A rule of the batch, as a person finds it in the script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOrigin {
    /// The table's name.
    pub table: String,
    /// The chain's name.
    pub chain: String,
    /// 1-based: the n-th rule added to this chain by the batch (the n-th `add`/`insert
    /// rule` line of the chain in the script).
    pub number: usize,
    /// Why the rule exists.
    pub purpose: &'static str,
    /// The rule's nft text (after the chain).
    pub text: String,
    /// True for the anonymous set the rule uses rather than the rule itself.
    pub set: bool,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Batch => f.write_str("the nf_tables transaction"),
            Origin::Table { table, op } => {
                let what = match op {
                    TableOp::Ensure => "adding",
                    TableOp::Delete => "deleting",
                    TableOp::Create => "creating",
                };
                write!(f, "{what} table inet {table}")
            }
            Origin::Chain { table, chain } => write!(f, "chain {table}/{chain}"),
            Origin::Rule(r) => {
                let set = if r.set { "the set of " } else { "" };
                write!(
                    f,
                    "{set}rule {} of {}/{} ({}) `{}`",
                    r.number, r.table, r.chain, r.purpose, r.text
                )
            }
        }
    }
}

/// One message of a batch: its complete bytes, sequence number and origin.
#[derive(Clone, Debug)]
pub struct BatchMessage {
    /// The sequence number in the header; the kernel's error for it carries the same.
    pub seq: u32,
    /// The complete netlink message (header included), 4-byte aligned.
    pub bytes: Vec<u8>,
    /// Where it comes from.
    pub origin: Origin,
}

/// A complete nf_tables batch, sent in one `sendmsg`.
#[derive(Clone, Debug)]
pub struct Batch {
    messages: Vec<BatchMessage>,
}

impl Batch {
    /// The messages, `BATCH_BEGIN` first and `BATCH_END` last.
    pub fn messages(&self) -> &[BatchMessage] {
        &self.messages
    }

    /// All messages back to back: what is sent.
    pub fn bytes(&self) -> Vec<u8> {
        self.messages
            .iter()
            .flat_map(|m| m.bytes.iter().copied())
            .collect()
    }

    /// The origin of the message with this sequence number.
    pub fn origin(&self, seq: u32) -> Option<&Origin> {
        self.message(seq).map(|m| &m.origin)
    }

    /// The message with this sequence number. Numbers are consecutive from the first
    /// message's, so this is an index, not a search (a refused batch of thousands of
    /// messages is looked up once per failing message).
    pub fn message(&self, seq: u32) -> Option<&BatchMessage> {
        let first = self.messages.first()?.seq;
        let m = self.messages.get(seq.wrapping_sub(first) as usize)?;
        (m.seq == seq).then_some(m)
    }

    /// The sequence number after the last message's.
    pub fn next_seq(&self) -> u32 {
        self.messages.last().map_or(0, |m| m.seq.wrapping_add(1))
    }

    /// Number of messages between `BATCH_BEGIN` and `BATCH_END`.
    pub fn len(&self) -> usize {
        self.messages.len().saturating_sub(2)
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The batch that makes our tables exactly `ruleset`: for every managed table in `existing`
/// `NEWTABLE` + `DELTABLE` — removing what an earlier run left (the pair is safe even if the
/// table vanished meanwhile) — then, for the tables the ruleset has, an exclusive `NEWTABLE`
/// (so a table that exists although `existing` lacks it makes the kernel refuse the batch
/// rather than double its rules), the chains, and the rules (each port set right before its
/// rule). Applying it twice leaves the same ruleset. `gid_of` resolves group names
/// (`skgid java`); numeric groups need nothing. Sequence numbers start at `first_seq`.
pub fn replace_batch(
    ruleset: &Ruleset,
    gid_of: &dyn Fn(&str) -> Option<u32>,
    first_seq: u32,
    existing: &[String],
) -> Result<Batch, EncodeError> {
    let mut b = Builder::new(first_seq);
    let mut names: Vec<&str> = MANAGED_TABLES.to_vec();
    for t in &ruleset.tables {
        if !names.contains(&t.name.as_str()) {
            names.push(&t.name);
        }
    }
    for name in names {
        // Deleting a table costs the commit an RCU grace period (~10 ms, paid when the socket
        // closes), so only tables that exist are deleted; a fresh install adds only.
        if existing.iter().any(|e| e == name) {
            b.remove_table(name);
        }
        if let Some(table) = ruleset.tables.iter().find(|t| t.name == name) {
            b.table(table, gid_of)?;
        }
    }
    Ok(b.finish())
}

/// The batch that deletes our three tables if they exist (`NEWTABLE` + `DELTABLE` each),
/// and nothing else.
pub fn cleanup_batch(first_seq: u32) -> Batch {
    let mut b = Builder::new(first_seq);
    for name in MANAGED_TABLES {
        b.remove_table(name);
    }
    b.finish()
}

/// `NFT_MSG_GETGEN`: a request whose reply marks the end of everything the kernel says about
/// a batch sent before it.
pub fn getgen_request(seq: u32) -> Vec<u8> {
    message(NFT_MSG_GETGEN, NLM_F_REQUEST, seq, NFPROTO_UNSPEC, &[])
}

/// `NFT_MSG_GETTABLE` dump of the inet tables.
pub fn gettable_dump_request(seq: u32) -> Vec<u8> {
    message(
        NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_DUMP | NLM_F_ACK,
        seq,
        NFPROTO_INET,
        &[],
    )
}

/// What in one of our batch messages the kernel objects to, from the byte offset its
/// extended ack gives (counted from the start of the message's header): for a rule, the
/// expression, e.g. "expression 2 (immediate)"; `None` where the offset is elsewhere or does
/// not fall on an attribute.
pub fn locate(message: &[u8], offset: u32) -> Option<String> {
    let base = netlink_wire::NLMSG_HDRLEN + NFGENMSG_LEN;
    if netlink_wire::u16_at(message, 4)? != nft_type(NFT_MSG_NEWRULE) {
        return None;
    }
    let body = message.get(base..)?;
    let at = (offset as usize).checked_sub(base)?;
    let (_, start, end) = attr_spans(body)
        .into_iter()
        .find(|&(kind, start, end)| kind == NFTA_RULE_EXPRESSIONS && (start..end).contains(&at))?;
    let list = body.get(start + netlink_wire::NLA_HDRLEN..end)?;
    let at = at.checked_sub(start + netlink_wire::NLA_HDRLEN)?;
    let (n, (start, end)) = attr_spans(list)
        .into_iter()
        .map(|(_, start, end)| (start, end))
        .enumerate()
        .find(|(_, (start, end))| (*start..*end).contains(&at))?;
    let elem = list.get(start + netlink_wire::NLA_HDRLEN..end)?;
    let name = parse_attrs(elem)
        .ok()
        .and_then(|attrs| string_attr(&attrs, NFTA_EXPR_NAME))
        .unwrap_or_default();
    Some(format!("expression {} ({name})", n + 1))
}

/// The attributes of `buf` as (type, start, end) byte ranges (header included), up to the
/// first one whose length does not fit.
fn attr_spans(buf: &[u8]) -> Vec<(u16, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (
        netlink_wire::u16_at(buf, at),
        netlink_wire::u16_at(buf, at + 2),
    ) {
        let len = usize::from(len);
        if len < netlink_wire::NLA_HDRLEN || at + len > buf.len() {
            break;
        }
        out.push((kind & netlink_wire::NLA_TYPE_MASK, at, at + len));
        at += netlink_wire::align4(len);
    }
    out
}

/// The full message type of an nf_tables message (subsystem in the high byte).
pub fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// Builds a batch message by message.
struct Builder {
    messages: Vec<BatchMessage>,
    seq: u32,
    /// Transaction-local ids of rules and of sets (two separate spaces, as in the kernel),
    /// each counting from 1 as nft does.
    next_rule_id: u32,
    next_set_id: u32,
}

impl Builder {
    fn new(first_seq: u32) -> Builder {
        let mut b = Builder {
            messages: Vec::new(),
            seq: first_seq,
            next_rule_id: 1,
            next_set_id: 1,
        };
        b.push(batch_marker(NFNL_MSG_BATCH_BEGIN, first_seq), Origin::Batch);
        b
    }

    fn push(&mut self, bytes: Vec<u8>, origin: Origin) {
        self.messages.push(BatchMessage {
            seq: self.seq,
            bytes,
            origin,
        });
        self.seq = self.seq.wrapping_add(1);
    }

    fn nft(&mut self, kind: u16, flags: u16, body: Attrs, origin: Origin) {
        let bytes = message(kind, NLM_F_REQUEST | flags, self.seq, NFPROTO_INET, &body.0);
        self.push(bytes, origin);
    }

    fn rule_id(&mut self) -> u32 {
        self.next_rule_id += 1;
        self.next_rule_id - 1
    }

    fn set_id(&mut self) -> u32 {
        self.next_set_id += 1;
        self.next_set_id - 1
    }

    fn finish(mut self) -> Batch {
        let end = batch_marker(NFNL_MSG_BATCH_END, self.seq);
        self.push(end, Origin::Batch);
        Batch {
            messages: self.messages,
        }
    }

    /// `NEWTABLE` (creates it when missing, else changes nothing) + `DELTABLE`.
    fn remove_table(&mut self, name: &str) {
        for (kind, flags, op) in [
            (NFT_MSG_NEWTABLE, NLM_F_CREATE, TableOp::Ensure),
            (NFT_MSG_DELTABLE, 0, TableOp::Delete),
        ] {
            let mut body = Attrs::default();
            body.str(NFTA_TABLE_NAME, name);
            if kind == NFT_MSG_NEWTABLE {
                body.u32(NFTA_TABLE_FLAGS, 0);
            }
            let origin = Origin::Table {
                table: name.to_string(),
                op,
            };
            self.nft(kind, flags, body, origin);
        }
    }

    fn table(
        &mut self,
        table: &NftTable,
        gid_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), EncodeError> {
        let name = &table.name;
        let mut body = Attrs::default();
        body.str(NFTA_TABLE_NAME, name);
        body.u32(NFTA_TABLE_FLAGS, 0);
        let origin = Origin::Table {
            table: name.clone(),
            op: TableOp::Create,
        };
        // Exclusive: if the table exists after all (the caller's listing of our tables was
        // stale), the kernel refuses the batch instead of adding these chains and rules to
        // the ones already there — which would double every rule.
        self.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, body, origin);

        for chain in &table.chains {
            let mut body = Attrs::default();
            body.str(NFTA_CHAIN_TABLE, name);
            body.str(NFTA_CHAIN_NAME, &chain.name);
            if let Some(base) = chain.base {
                // No NFTA_CHAIN_POLICY, as nft: the kernel's default policy is accept.
                body.str(NFTA_CHAIN_TYPE, base.kind.name());
                body.nest(NFTA_CHAIN_HOOK, |h| {
                    let hooknum = match base.hook {
                        Hook::Prerouting => NF_INET_PRE_ROUTING,
                        Hook::Output => NF_INET_LOCAL_OUT,
                    };
                    h.u32(NFTA_HOOK_HOOKNUM, hooknum);
                    h.u32(NFTA_HOOK_PRIORITY, base.priority as u32);
                });
            }
            let origin = Origin::Chain {
                table: name.clone(),
                chain: chain.name.clone(),
            };
            self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, body, origin);
        }

        // Each chain's rules as batch ids in their current order: an insert names the rule it
        // goes before by that rule's id (NFTA_RULE_POSITION_ID), since none of them has a
        // handle yet — what nft does for `insert … index N` into a chain it is filling.
        let mut chains: Vec<(&str, Vec<u32>, usize)> = Vec::new();
        for rule in &table.rules {
            let slot = match chains.iter().position(|(c, _, _)| *c == rule.chain) {
                Some(i) => i,
                None => {
                    chains.push((&rule.chain, Vec::new(), 0));
                    chains.len() - 1
                }
            };
            chains[slot].2 += 1;
            let origin = RuleOrigin {
                table: name.clone(),
                chain: rule.chain.clone(),
                number: chains[slot].2,
                purpose: rule.purpose,
                text: rule.body(),
                set: false,
            };
            let id = self.rule_id();
            let before = match rule.index {
                None => None,
                Some(index) => {
                    let order = &chains[slot].1;
                    let Some(&target) = order.get(index) else {
                        return Err(EncodeError::BadIndex {
                            rule: Origin::Rule(origin).to_string(),
                            index,
                            len: order.len(),
                        });
                    };
                    Some((index, target))
                }
            };
            self.rule(name, rule, id, before.map(|(_, t)| t), &origin, gid_of)?;
            let order = &mut chains[slot].1;
            match before {
                Some((index, _)) => order.insert(index, id),
                None => order.push(id),
            }
        }
        Ok(())
    }

    /// The rule's sets (if any), then the rule itself.
    fn rule(
        &mut self,
        table: &str,
        rule: &NftRule,
        id: u32,
        before: Option<u32>,
        origin: &RuleOrigin,
        gid_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), EncodeError> {
        let mut exprs = Attrs::default();
        let mut deps = Deps::default();
        for stmt in &rule.stmts {
            self.stmt(&mut exprs, &mut deps, stmt, table, origin, gid_of)?;
        }
        let mut body = Attrs::default();
        body.str(NFTA_RULE_TABLE, table);
        body.str(NFTA_RULE_CHAIN, &rule.chain);
        body.raw_nest(NFTA_RULE_EXPRESSIONS, &exprs.0);
        body.u32(NFTA_RULE_ID, id);
        let flags = match before {
            // Without NLM_F_APPEND the rule goes before the one named.
            Some(target) => {
                body.u32(NFTA_RULE_POSITION_ID, target);
                NLM_F_CREATE
            }
            None => NLM_F_CREATE | NLM_F_APPEND,
        };
        self.nft(NFT_MSG_NEWRULE, flags, body, Origin::Rule(origin.clone()));
        Ok(())
    }

    /// Appends one statement's expressions, with the protocol dependencies nft would add.
    fn stmt(
        &mut self,
        e: &mut Attrs,
        deps: &mut Deps,
        stmt: &Stmt,
        table: &str,
        origin: &RuleOrigin,
        gid_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), EncodeError> {
        match stmt {
            Stmt::Interface { dir, name } => {
                let key = match dir {
                    Direction::Source => NFT_META_IIFNAME,
                    Direction::Destination => NFT_META_OIFNAME,
                };
                // A whole name is compared as 16 zero-padded bytes; a wildcard `eth+` only on
                // its prefix, as nft compiles `"eth*"`.
                let value = match wildcard_prefix(name) {
                    Some(prefix) => prefix.as_bytes().to_vec(),
                    None => {
                        let mut v = name.as_str().as_bytes().to_vec();
                        v.resize(IFNAMSIZ, 0);
                        v
                    }
                };
                // An empty prefix (`+`) matches every interface: no expression at all.
                if !value.is_empty() {
                    meta_load(e, key);
                    cmp(e, NFT_CMP_EQ, &value);
                }
            }
            Stmt::L4Proto(proto) => {
                meta_load(e, NFT_META_L4PROTO);
                cmp(e, NFT_CMP_EQ, &[ip_proto(*proto)]);
                deps.l4 = Some(*proto);
            }
            Stmt::CtState(state) => {
                let bits = match state {
                    CtState::Invalid => CT_STATE_INVALID,
                    CtState::RelatedEstablished => CT_STATE_RELATED | CT_STATE_ESTABLISHED,
                };
                ct_load(e, NFT_CT_STATE);
                bitwise(e, &bits.to_ne_bytes(), &[0; 4]);
                cmp(e, NFT_CMP_NEQ, &[0; 4]);
            }
            Stmt::Mark { mark, negate } => {
                meta_load(e, NFT_META_MARK);
                cmp(e, op(*negate), &mark.to_ne_bytes());
            }
            Stmt::CtMark(mark) => {
                ct_load(e, NFT_CT_MARK);
                cmp(e, NFT_CMP_EQ, &mark.to_ne_bytes());
            }
            Stmt::Address { dir, net, negate } => {
                let family = cidr_family(net);
                deps.network(e, family);
                address(e, *dir, net, *negate);
            }
            Stmt::Port {
                proto,
                dir,
                port,
                negate,
            } => {
                deps.transport(e, *proto);
                let offset = match dir {
                    Direction::Source => 0,
                    Direction::Destination => 2,
                };
                payload(e, NFT_PAYLOAD_TRANSPORT_HEADER, offset, 2);
                cmp(e, op(*negate), &port.get().to_be_bytes());
            }
            Stmt::PortNotIn { proto, ports } => {
                deps.transport(e, *proto);
                payload(e, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                let ports: Vec<u16> = ports.iter().map(|p| p.get()).collect();
                // nft turns a one-element list into a plain comparison. A longer list becomes
                // a set even when its elements repeat (`{ 53, 53 }` when the tunnel port is
                // 53); nft sends every element and the kernel keeps one of each.
                if let [port] = ports[..] {
                    cmp(e, NFT_CMP_NEQ, &port.to_be_bytes());
                } else {
                    let set_id = self.set_id();
                    self.port_set(table, set_id, *proto, &ports, origin);
                    expr(e, "lookup", |a| {
                        a.u32(NFTA_LOOKUP_SREG, NFT_REG_1);
                        a.str(NFTA_LOOKUP_SET, ANON_SET_NAME);
                        a.u32(NFTA_LOOKUP_SET_ID, set_id);
                        a.u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                    });
                }
            }
            // Long lists as set lookups (src/backend/nft_sets.rs).
            Stmt::AddressIn { dir, family, nets } => {
                deps.network(e, *family);
                let (offset, len) = nft_sets::address_field(*family, *dir);
                payload(e, NFT_PAYLOAD_NETWORK_HEADER, offset, len);
                let set_id = self.set_id();
                let set = nft_sets::address_set(table, set_id, *family, nets);
                self.lookup_set(e, set_id, set, origin);
            }
            Stmt::PortIn { proto, dir, ports } => {
                deps.transport(e, *proto);
                let offset = match dir {
                    Direction::Source => 0,
                    Direction::Destination => 2,
                };
                payload(e, NFT_PAYLOAD_TRANSPORT_HEADER, offset, 2);
                let set_id = self.set_id();
                let ports: Vec<u16> = ports.iter().map(|p| p.get()).collect();
                let set = nft_sets::port_set(table, set_id, *proto, *dir, &ports);
                self.lookup_set(e, set_id, set, origin);
            }
            Stmt::Owner { owner, negate, .. } => {
                let (key, id) =
                    match owner {
                        Owner::Uid(uid) => (NFT_META_SKUID, *uid),
                        Owner::Gid(group) => {
                            let gid = group.gid().or_else(|| gid_of(group.as_str())).ok_or_else(
                                || EncodeError::UnknownGroup {
                                    group: group.as_str().to_string(),
                                    rule: Origin::Rule(origin.clone()).to_string(),
                                },
                            )?;
                            (NFT_META_SKGID, gid)
                        }
                    };
                meta_load(e, key);
                cmp(e, op(*negate), &id.to_ne_bytes());
            }
            Stmt::Counter => expr(e, "counter", |_| {}),
            Stmt::Jump(chain) => verdict(e, NFT_JUMP, Some(chain)),
            Stmt::Return => verdict(e, NFT_RETURN, None),
            Stmt::Accept => verdict(e, NF_ACCEPT, None),
            Stmt::Drop => verdict(e, NF_DROP, None),
            Stmt::Redirect(port) => {
                immediate(e, &port.get().to_be_bytes());
                expr(e, "redir", |a| {
                    a.u32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
                    a.u32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
                });
            }
            Stmt::Tproxy { family, port } => {
                immediate(e, &port.get().to_be_bytes());
                expr(e, "tproxy", |a| {
                    a.u32(NFTA_TPROXY_FAMILY, u32::from(nfproto(*family)));
                    a.u32(NFTA_TPROXY_REG_PORT, NFT_REG_1);
                });
            }
            Stmt::SetMark(mark) => {
                immediate(e, &mark.to_ne_bytes());
                meta_set(e, NFT_META_MARK);
            }
            Stmt::SaveMark => {
                meta_load(e, NFT_META_MARK);
                ct_set(e, NFT_CT_MARK);
            }
            Stmt::RestoreMark => {
                ct_load(e, NFT_CT_MARK);
                meta_set(e, NFT_META_MARK);
            }
            Stmt::CtZone(zone) => {
                immediate(e, &zone.to_ne_bytes());
                ct_set(e, NFT_CT_ZONE);
            }
        }
        Ok(())
    }

    /// An anonymous set's messages (tagged as the rule's set) and the `lookup` of register 1
    /// in it.
    fn lookup_set(
        &mut self,
        e: &mut Attrs,
        set_id: u32,
        set: nft_sets::SetMessages,
        origin: &RuleOrigin,
    ) {
        let origin = Origin::Rule(RuleOrigin {
            set: true,
            ..origin.clone()
        });
        self.nft(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            Attrs(set.newset),
            origin.clone(),
        );
        for elems in set.elems {
            self.nft(
                NFT_MSG_NEWSETELEM,
                NLM_F_CREATE,
                Attrs(elems),
                origin.clone(),
            );
        }
        expr(e, "lookup", |a| {
            a.u32(NFTA_LOOKUP_SREG, NFT_REG_1);
            a.str(NFTA_LOOKUP_SET, ANON_SET_NAME);
            a.u32(NFTA_LOOKUP_SET_ID, set_id);
            // Not sent by nft, but dumped by the kernel: sent so that `--check` compares equal.
            a.u32(NFTA_LOOKUP_FLAGS, 0);
        });
    }

    /// A constant anonymous set of ports (`NEWSET` + `NEWSETELEM`), as nft creates for
    /// `tcp dport != { 53, 15008 }`; the kernel names it and frees it with its rule.
    fn port_set(
        &mut self,
        table: &str,
        set_id: u32,
        proto: Protocol,
        ports: &[u16],
        origin: &RuleOrigin,
    ) {
        let origin = Origin::Rule(RuleOrigin {
            set: true,
            ..origin.clone()
        });
        let mut body = Attrs::default();
        body.str(NFTA_SET_TABLE, table);
        body.str(NFTA_SET_NAME, ANON_SET_NAME);
        body.u32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
        body.u32(NFTA_SET_KEY_TYPE, TYPE_INET_SERVICE);
        body.u32(NFTA_SET_KEY_LEN, 2);
        body.u32(NFTA_SET_ID, set_id);
        body.nest(NFTA_SET_DESC, |d| {
            d.u32(NFTA_SET_DESC_SIZE, ports.len() as u32)
        });
        body.put(NFTA_SET_USERDATA, &set_userdata(proto));
        self.nft(NFT_MSG_NEWSET, NLM_F_CREATE, body, origin.clone());

        let mut body = Attrs::default();
        body.str(NFTA_SET_ELEM_LIST_TABLE, table);
        body.str(NFTA_SET_ELEM_LIST_SET, ANON_SET_NAME);
        body.u32(NFTA_SET_ELEM_LIST_SET_ID, set_id);
        body.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
            // nft numbers the list entries (1, 2, …); the kernel ignores the type here.
            for (i, port) in ports.iter().enumerate() {
                list.nest(i as u16 + 1, |el| {
                    el.nest(NFTA_SET_ELEM_KEY, |k| {
                        k.put(NFTA_DATA_VALUE, &port.to_be_bytes())
                    });
                });
            }
        });
        self.nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE, body, origin);
    }
}

/// Which protocols a rule has matched so far; nft adds a match for a protocol a payload
/// expression needs only when the rule has not matched it already.
#[derive(Default)]
struct Deps {
    l3: Option<Family>,
    l4: Option<Protocol>,
}

impl Deps {
    /// `meta nfproto ipv4|ipv6` before the first address of that family (the table is inet).
    fn network(&mut self, e: &mut Attrs, family: Family) {
        if self.l3 != Some(family) {
            meta_load(e, NFT_META_NFPROTO);
            cmp(e, NFT_CMP_EQ, &[nfproto(family)]);
            self.l3 = Some(family);
        }
    }

    /// `meta l4proto tcp|udp` before the first port of that protocol.
    fn transport(&mut self, e: &mut Attrs, proto: Protocol) {
        if self.l4 != Some(proto) {
            meta_load(e, NFT_META_L4PROTO);
            cmp(e, NFT_CMP_EQ, &[ip_proto(proto)]);
            self.l4 = Some(proto);
        }
    }
}

fn ip_proto(proto: Protocol) -> u8 {
    match proto {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    }
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

fn op(negate: bool) -> u32 {
    if negate {
        NFT_CMP_NEQ
    } else {
        NFT_CMP_EQ
    }
}

/// nft's user data for an anonymous port set (read back only by nft, to print it): key byte
/// order big-endian, and "typeof tcp|udp dport" — the payload expression (7), its protocol
/// (nft's description id: udp 6, tcp 8) and field (dport, 2). Type-length-value, one byte each
/// for type and length, values host-endian.
fn set_userdata(proto: Protocol) -> Vec<u8> {
    let desc: u32 = match proto {
        Protocol::Udp => 6,
        Protocol::Tcp => 8,
    };
    let tlv = |kind: u8, value: &[u8]| {
        let mut v = vec![kind, value.len() as u8];
        v.extend_from_slice(value);
        v
    };
    let payload_desc = [tlv(0, &desc.to_ne_bytes()), tlv(1, &2u32.to_ne_bytes())].concat();
    let key_typeof = [tlv(0, &7u32.to_ne_bytes()), tlv(1, &payload_desc)].concat();
    [tlv(0, &2u32.to_ne_bytes()), tlv(3, &key_typeof)].concat()
}

/// The address match: the shortest load that holds the prefix when it is a whole number of
/// bytes, otherwise the whole address under a bitwise mask — nft's choice, which decides how
/// the rule reads back.
fn address(e: &mut Attrs, dir: Direction, net: &Cidr, negate: bool) {
    let (octets, offset) = match (net.addr(), dir) {
        (std::net::IpAddr::V4(a), Direction::Source) => (a.octets().to_vec(), 12),
        (std::net::IpAddr::V4(a), Direction::Destination) => (a.octets().to_vec(), 16),
        (std::net::IpAddr::V6(a), Direction::Source) => (a.octets().to_vec(), 8),
        (std::net::IpAddr::V6(a), Direction::Destination) => (a.octets().to_vec(), 24),
    };
    let full = octets.len();
    let len = usize::from(net.prefix_len());
    if len == full * 8 || (len > 0 && len % 8 == 0) {
        let bytes = len / 8;
        payload(e, NFT_PAYLOAD_NETWORK_HEADER, offset, bytes as u32);
        cmp(e, op(negate), &octets[..bytes]);
    } else {
        let mask: Vec<u8> = (0..full)
            .map(|i| {
                let bits = len.saturating_sub(i * 8).min(8);
                (0xff00u16 >> bits) as u8
            })
            .collect();
        let masked: Vec<u8> = octets.iter().zip(&mask).map(|(a, m)| a & m).collect();
        payload(e, NFT_PAYLOAD_NETWORK_HEADER, offset, full as u32);
        bitwise(e, &mask, &vec![0; full]);
        cmp(e, op(negate), &masked);
    }
}

fn expr(e: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    e.nest(NFTA_LIST_ELEM, |el| {
        el.str(NFTA_EXPR_NAME, name);
        el.nest(NFTA_EXPR_DATA, data);
    });
}

fn meta_load(e: &mut Attrs, key: u32) {
    expr(e, "meta", |a| {
        a.u32(NFTA_META_KEY, key);
        a.u32(NFTA_META_DREG, NFT_REG_1);
    });
}

fn meta_set(e: &mut Attrs, key: u32) {
    expr(e, "meta", |a| {
        a.u32(NFTA_META_KEY, key);
        a.u32(NFTA_META_SREG, NFT_REG_1);
    });
}

fn ct_load(e: &mut Attrs, key: u32) {
    expr(e, "ct", |a| {
        a.u32(NFTA_CT_KEY, key);
        a.u32(NFTA_CT_DREG, NFT_REG_1);
    });
}

fn ct_set(e: &mut Attrs, key: u32) {
    expr(e, "ct", |a| {
        a.u32(NFTA_CT_KEY, key);
        a.u32(NFTA_CT_SREG, NFT_REG_1);
    });
}

fn cmp(e: &mut Attrs, op: u32, value: &[u8]) {
    expr(e, "cmp", |a| {
        a.u32(NFTA_CMP_SREG, NFT_REG_1);
        a.u32(NFTA_CMP_OP, op);
        a.nest(NFTA_CMP_DATA, |d| d.put(NFTA_DATA_VALUE, value));
    });
}

fn payload(e: &mut Attrs, base: u32, offset: u32, len: u32) {
    expr(e, "payload", |a| {
        a.u32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        a.u32(NFTA_PAYLOAD_BASE, base);
        a.u32(NFTA_PAYLOAD_OFFSET, offset);
        a.u32(NFTA_PAYLOAD_LEN, len);
    });
}

fn bitwise(e: &mut Attrs, mask: &[u8], xor: &[u8]) {
    expr(e, "bitwise", |a| {
        a.u32(NFTA_BITWISE_SREG, NFT_REG_1);
        a.u32(NFTA_BITWISE_DREG, NFT_REG_1);
        a.u32(NFTA_BITWISE_LEN, mask.len() as u32);
        a.nest(NFTA_BITWISE_MASK, |d| d.put(NFTA_DATA_VALUE, mask));
        a.nest(NFTA_BITWISE_XOR, |d| d.put(NFTA_DATA_VALUE, xor));
    });
}

fn immediate(e: &mut Attrs, value: &[u8]) {
    expr(e, "immediate", |a| {
        a.u32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
        a.nest(NFTA_IMMEDIATE_DATA, |d| d.put(NFTA_DATA_VALUE, value));
    });
}

fn verdict(e: &mut Attrs, code: i32, chain: Option<&str>) {
    expr(e, "immediate", |a| {
        a.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        a.nest(NFTA_IMMEDIATE_DATA, |d| {
            d.nest(NFTA_DATA_VERDICT, |v| {
                v.u32(NFTA_VERDICT_CODE, code as u32);
                if let Some(chain) = chain {
                    v.str(NFTA_VERDICT_CHAIN, chain);
                }
            });
        });
    });
}

/// A sequence of netlink attributes being built.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, kind: u16, data: &[u8]) {
        put_attr(&mut self.0, kind, data);
    }

    /// A NUL-terminated string (`NLA_STRING`/`NLA_NUL_STRING`).
    fn str(&mut self, kind: u16, s: &str) {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.put(kind, &data);
    }

    /// A 32-bit number in network order, as every nf_tables `NLA_U32` is.
    fn u32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    fn raw_nest(&mut self, kind: u16, inner: &[u8]) {
        self.put(kind | NLA_F_NESTED, inner);
    }

    fn nest(&mut self, kind: u16, build: impl FnOnce(&mut Attrs)) {
        let mut inner = Attrs::default();
        build(&mut inner);
        self.raw_nest(kind, &inner.0);
    }
}

/// A complete nfnetlink message: `nlmsghdr` (port id 0) + `nfgenmsg` + attributes.
fn message(kind: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    // nfgenmsg: family, version, res_id (big-endian; 0 for nf_tables messages).
    let mut body = vec![family, NFNETLINK_V0, 0, 0];
    body.extend_from_slice(attrs);
    netlink_wire::message(nft_type(kind), flags, seq, &body)
}

/// `BATCH_BEGIN`/`END`: a bare nfgenmsg whose res_id names the nf_tables subsystem.
fn batch_marker(kind: u16, seq: u32) -> Vec<u8> {
    let mut body = vec![NFPROTO_UNSPEC, NFNETLINK_V0];
    body.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    netlink_wire::message(kind, NLM_F_REQUEST, seq, &body)
}

// ---------------------------------------------------------------------------------------------
// Reading the ruleset back (`--check`): dump requests, parsing of what the kernel dumps, and
// the comparison with a batch. The expected side is parsed out of the very batch an apply
// would send, so the check can never disagree with the encoder about what a rule means.

// Dump message types and the attributes only dumps carry.
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_GEN_ID: u16 = 1;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_COUNTER_PAD: u16 = 3;
const NFTA_BITWISE_OP: u16 = 6;
const NFT_BITWISE_BOOL: u32 = 0;
const NFTA_REDIR_REG_PROTO_MAX: u16 = 2;
const NFTA_BITWISE_DATA: u16 = 7;

/// `NFT_MSG_GETCHAIN` dump of every inet chain (the kernel filters chain dumps by family only).
pub fn getchain_dump_request(seq: u32) -> Vec<u8> {
    message(
        NFT_MSG_GETCHAIN,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        &[],
    )
}

/// `NFT_MSG_GETRULE` dump of one inet table's rules, every chain, each chain in order.
pub fn getrule_dump_request(seq: u32, table: &str) -> Vec<u8> {
    let mut body = Attrs::default();
    body.str(NFTA_RULE_TABLE, table);
    message(
        NFT_MSG_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        &body.0,
    )
}

/// `NFT_MSG_GETSET` dump of one inet table's sets, anonymous ones included.
pub fn getset_dump_request(seq: u32, table: &str) -> Vec<u8> {
    let mut body = Attrs::default();
    body.str(NFTA_SET_TABLE, table);
    message(
        NFT_MSG_GETSET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        &body.0,
    )
}

/// `NFT_MSG_GETSETELEM` dump of one set's elements.
pub fn getsetelem_dump_request(seq: u32, table: &str, set: &str) -> Vec<u8> {
    let mut body = Attrs::default();
    body.str(NFTA_SET_ELEM_LIST_TABLE, table);
    body.str(NFTA_SET_ELEM_LIST_SET, set);
    message(
        NFT_MSG_GETSETELEM,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        &body.0,
    )
}

/// The generation id in the reply to [`getgen_request`]: it changes with every committed
/// transaction, so equal ids before and after a series of dumps mean they saw one ruleset.
pub fn gen_id_of(payload: &[u8]) -> Option<u32> {
    let attrs = parse_attrs(payload.get(NFGENMSG_LEN..)?).ok()?;
    attrs
        .into_iter()
        .find(|(kind, _)| *kind == NFTA_GEN_ID)
        .and_then(|(_, v)| be_u32(v))
}

/// The message type of a dump reply for a `GET*` request: the kernel answers with `NEW*`.
pub fn dump_reply_type(kind: DumpKind) -> u16 {
    nft_type(match kind {
        DumpKind::Tables => NFT_MSG_NEWTABLE,
        DumpKind::Chains => NFT_MSG_NEWCHAIN,
        DumpKind::Rules => NFT_MSG_NEWRULE,
        DumpKind::Sets => NFT_MSG_NEWSET,
        DumpKind::SetElems => NFT_MSG_NEWSETELEM,
    })
}

/// What a dump lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpKind {
    /// `NFT_MSG_GETTABLE`: the tables.
    Tables,
    /// `NFT_MSG_GETCHAIN`: the chains.
    Chains,
    /// `NFT_MSG_GETRULE`: the rules of one table.
    Rules,
    /// `NFT_MSG_GETSET`: the (anonymous) sets of one table.
    Sets,
    /// `NFT_MSG_GETSETELEM`: the elements of one set.
    SetElems,
}

/// One chain as the kernel holds it, or as a batch declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainInfo {
    /// The table it belongs to.
    pub table: String,
    /// The chain's name.
    pub name: String,
    /// The hook of a base chain; `None` for a regular chain.
    pub base: Option<BaseInfo>,
}

/// A base chain's attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseInfo {
    /// `filter`, `nat`, `route`.
    pub kind: String,
    /// The netfilter hook number.
    pub hook: u32,
    /// The priority.
    pub priority: i32,
    /// The policy verdict (the kernel's default, accept, when a batch names none).
    pub policy: u32,
}

impl fmt::Display for BaseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hook = match self.hook {
            0 => "prerouting".to_string(),
            1 => "input".to_string(),
            2 => "forward".to_string(),
            3 => "output".to_string(),
            4 => "postrouting".to_string(),
            n => format!("{n}"),
        };
        let policy = match self.policy as i32 {
            NF_ACCEPT => "accept".to_string(),
            NF_DROP => "drop".to_string(),
            n => format!("{n}"),
        };
        write!(
            f,
            "type {} hook {hook} priority {} policy {policy}",
            self.kind, self.priority
        )
    }
}

/// Parses a `NEWCHAIN` payload (after the netlink header): a dump reply or a batch message.
pub fn parse_chain(payload: &[u8]) -> Result<ChainInfo, String> {
    let attrs = top_attrs(payload)?;
    let table = string_attr(&attrs, NFTA_CHAIN_TABLE).ok_or("chain without a table")?;
    let name = string_attr(&attrs, NFTA_CHAIN_NAME).ok_or("chain without a name")?;
    let base = match attr(&attrs, NFTA_CHAIN_HOOK) {
        None => None,
        Some(hook) => {
            let hook = parse_attrs(hook)?;
            Some(BaseInfo {
                kind: string_attr(&attrs, NFTA_CHAIN_TYPE).unwrap_or_default(),
                hook: attr(&hook, NFTA_HOOK_HOOKNUM)
                    .and_then(be_u32)
                    .ok_or("base chain without a hook number")?,
                priority: attr(&hook, NFTA_HOOK_PRIORITY)
                    .and_then(be_u32)
                    .ok_or("base chain without a priority")? as i32,
                policy: attr(&attrs, NFTA_CHAIN_POLICY)
                    .and_then(be_u32)
                    .unwrap_or(NF_ACCEPT as u32),
            })
        }
    };
    Ok(ChainInfo { table, name, base })
}

/// The name and flags of a table in a `NEWTABLE` payload.
pub fn parse_table(payload: &[u8]) -> Result<(String, u32), String> {
    let attrs = top_attrs(payload)?;
    let name = string_attr(&attrs, NFTA_TABLE_NAME).ok_or("table without a name")?;
    let flags = attr(&attrs, NFTA_TABLE_FLAGS).and_then(be_u32).unwrap_or(0);
    Ok((name, flags))
}

/// The contents of a set that a `lookup` consults: what decides whether a packet matches,
/// independent of the set's (kernel-chosen) name or (transaction-local) id.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetContents {
    /// `NFT_SET_*` flags.
    pub flags: u32,
    /// Key length in bytes.
    pub key_len: u32,
    /// Each distinct key once, sorted (the kernel keeps one copy of a repeated element).
    pub keys: Vec<Vec<u8>>,
}

impl fmt::Display for SetContents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = if self.flags & nft_sets::NFT_SET_INTERVAL != 0 {
            nft_sets::show_interval_keys(self.key_len, &self.keys)
        } else {
            self.keys.iter().map(|k| show_bytes(k)).collect()
        };
        write!(f, "{{ {} }}", keys.join(", "))
    }
}

/// A set's name, id (batch messages only), flags and key length, from a `NEWSET` payload.
pub fn parse_set(payload: &[u8]) -> Result<(String, Option<u32>, SetContents), String> {
    let attrs = top_attrs(payload)?;
    let name = string_attr(&attrs, NFTA_SET_NAME).ok_or("set without a name")?;
    let contents = SetContents {
        flags: attr(&attrs, NFTA_SET_FLAGS).and_then(be_u32).unwrap_or(0),
        key_len: attr(&attrs, NFTA_SET_KEY_LEN).and_then(be_u32).unwrap_or(0),
        keys: Vec::new(),
    };
    Ok((name, attr(&attrs, NFTA_SET_ID).and_then(be_u32), contents))
}

/// The elements of a `NEWSETELEM` message and the set they belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetElems {
    /// The set's name (`__set%d` in a batch).
    pub set: String,
    /// The set's transaction id (batch messages only).
    pub set_id: Option<u32>,
    /// The element keys, as listed.
    pub keys: Vec<Vec<u8>>,
}

/// Parses a `NEWSETELEM` payload (a dump reply or a batch message).
pub fn parse_set_elems(payload: &[u8]) -> Result<SetElems, String> {
    let attrs = top_attrs(payload)?;
    let set = string_attr(&attrs, NFTA_SET_ELEM_LIST_SET).ok_or("elements without a set")?;
    let mut keys = Vec::new();
    if let Some(list) = attr(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS) {
        for (_, elem) in parse_attrs(list)? {
            // An interval's end is told from a start (src/backend/nft_sets.rs).
            keys.extend(nft_sets::element_keys(elem)?);
        }
    }
    Ok(SetElems {
        set,
        set_id: attr(&attrs, NFTA_SET_ELEM_LIST_SET_ID).and_then(be_u32),
        keys,
    })
}

/// One attribute value of an expression, decoded as far as the comparison needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// A plain value (a number in network order, a string, register data).
    Bytes(Vec<u8>),
    /// Nested attributes (`nft_data`, verdicts), sorted by type.
    Nest(Vec<(u16, Value)>),
    /// The set a `lookup` consults, by contents.
    Set(SetContents),
}

/// One expression of a rule, normalised: attributes sorted by type, the kernel's run-time state
/// and the attributes it fills in with their default values left out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Expr {
    /// `meta`, `cmp`, `payload`, …
    pub name: String,
    /// The attributes that define what it does.
    pub attrs: Vec<(u16, Value)>,
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}", self.name)?;
        for (kind, value) in &self.attrs {
            write!(f, " {kind}:{value}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bytes(b) => f.write_str(&show_bytes(b)),
            Value::Set(s) => write!(f, "{s}"),
            Value::Nest(attrs) => {
                let inner: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                write!(f, "{{{}}}", inner.join(" "))
            }
        }
    }
}

/// A short readable form of a value: text for a NUL-terminated name, a signed number for a
/// 32-bit network-order attribute (verdict codes are negative), hex otherwise.
fn show_bytes(b: &[u8]) -> String {
    if let Some(text) = b.strip_suffix(&[0]) {
        if !text.is_empty() && text.iter().all(|c| c.is_ascii_graphic()) {
            return String::from_utf8_lossy(text).into_owned();
        }
    }
    if b.len() == 4 {
        return i32::from_be_bytes([b[0], b[1], b[2], b[3]]).to_string();
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("0x{hex}")
}

/// A rule as found in a `NEWRULE` payload, its `lookup`s not yet resolved to set contents.
#[derive(Clone, Debug)]
pub struct RawRule {
    /// The table.
    pub table: String,
    /// The chain.
    pub chain: String,
    /// The kernel's handle (dumps only).
    pub handle: Option<u64>,
    /// The batch id (batch messages only).
    pub id: Option<u32>,
    /// The batch id of the rule it is inserted before (batch messages only).
    pub position_id: Option<u32>,
    /// The expressions, normalised except for the set references.
    pub exprs: Vec<Expr>,
}

/// Which set a `lookup` names before its contents are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetRef {
    /// By name (a dump names the set the kernel created).
    Name(String),
    /// By transaction id (a batch names a set it creates itself).
    Id(u32),
}

/// Parses a `NEWRULE` payload (a dump reply or a batch message).
pub fn parse_rule(payload: &[u8]) -> Result<RawRule, String> {
    let attrs = top_attrs(payload)?;
    let table = string_attr(&attrs, NFTA_RULE_TABLE).ok_or("rule without a table")?;
    let chain = string_attr(&attrs, NFTA_RULE_CHAIN).ok_or("rule without a chain")?;
    let handle =
        attr(&attrs, NFTA_RULE_HANDLE).and_then(|v| Some(u64::from_be_bytes(v.try_into().ok()?)));
    let mut exprs = Vec::new();
    if let Some(list) = attr(&attrs, NFTA_RULE_EXPRESSIONS) {
        for (_, elem) in parse_attrs(list)? {
            exprs.push(parse_expr(elem)?);
        }
    }
    Ok(RawRule {
        table,
        chain,
        handle,
        id: attr(&attrs, NFTA_RULE_ID).and_then(be_u32),
        position_id: attr(&attrs, NFTA_RULE_POSITION_ID).and_then(be_u32),
        exprs,
    })
}

/// Decodes and normalises one `NFTA_LIST_ELEM` of a rule's expressions. What the kernel adds
/// to or changes in a dump compared with what was sent (found by dumping what a batch
/// installed) is brought back to the sent form here:
/// - `counter`: its packets and bytes (and the padding before them) are run-time state;
/// - `bitwise`: the kernel dumps its operation, boolean, which a batch leaves implicit;
/// - `redir`: the kernel dumps the upper port register, equal to the lower one when a batch
///   names only that;
/// - `lookup`: the set is named by the kernel (`__set0`, …) and by id in a batch; both are
///   replaced by the set's contents when the rule is resolved.
///
/// Every other attribute is compared as it is.
fn parse_expr(elem: &[u8]) -> Result<Expr, String> {
    let attrs = parse_attrs(elem)?;
    let name = string_attr(&attrs, NFTA_EXPR_NAME).ok_or("expression without a name")?;
    let data = match attr(&attrs, NFTA_EXPR_DATA) {
        Some(data) => parse_attrs(data)?,
        None => Vec::new(),
    };
    let mut out: Vec<(u16, Value)> = Vec::new();
    for (kind, value) in data {
        let nested_data = matches!(
            (name.as_str(), kind),
            ("cmp", NFTA_CMP_DATA)
                | (
                    "bitwise",
                    NFTA_BITWISE_MASK | NFTA_BITWISE_XOR | NFTA_BITWISE_DATA
                )
                | ("immediate", NFTA_IMMEDIATE_DATA)
        );
        let skip = match (name.as_str(), kind) {
            ("counter", NFTA_COUNTER_BYTES | NFTA_COUNTER_PACKETS | NFTA_COUNTER_PAD) => true,
            ("bitwise", NFTA_BITWISE_OP) => be_u32(value) == Some(NFT_BITWISE_BOOL),
            _ => false,
        };
        if skip {
            continue;
        }
        let value = if nested_data {
            Value::Nest(parse_data(value)?)
        } else {
            Value::Bytes(value.to_vec())
        };
        out.push((kind, value));
    }
    if name == "redir" {
        let min = out
            .iter()
            .find(|(k, _)| *k == NFTA_REDIR_REG_PROTO_MIN)
            .map(|(_, v)| v.clone());
        if let Some(pos) = out.iter().position(|(k, _)| *k == NFTA_REDIR_REG_PROTO_MAX) {
            if min.as_ref() == Some(&out[pos].1) {
                out.remove(pos);
            }
        }
    }
    out.sort();
    Ok(Expr { name, attrs: out })
}

/// An `nft_data` nest: a value, or a verdict (code and chain).
fn parse_data(buf: &[u8]) -> Result<Vec<(u16, Value)>, String> {
    let mut out = Vec::new();
    for (kind, value) in parse_attrs(buf)? {
        let value = if kind == NFTA_DATA_VERDICT {
            let mut verdict: Vec<(u16, Value)> = parse_attrs(value)?
                .into_iter()
                .map(|(k, v)| (k, Value::Bytes(v.to_vec())))
                .collect();
            verdict.sort();
            Value::Nest(verdict)
        } else {
            Value::Bytes(value.to_vec())
        };
        out.push((kind, value));
    }
    out.sort();
    Ok(out)
}

impl RawRule {
    /// The sets its `lookup`s consult.
    fn set_refs(&self) -> Vec<SetRef> {
        let mut refs = Vec::new();
        for e in self.exprs.iter().filter(|e| e.name == "lookup") {
            let id = e.attrs.iter().find(|(k, _)| *k == NFTA_LOOKUP_SET_ID);
            let name = e.attrs.iter().find(|(k, _)| *k == NFTA_LOOKUP_SET);
            match (id, name) {
                (Some((_, Value::Bytes(id))), _) => {
                    if let Some(id) = be_u32(id) {
                        refs.push(SetRef::Id(id));
                    }
                }
                (None, Some((_, Value::Bytes(name)))) => {
                    let name = name.split(|&b| b == 0).next().unwrap_or(name);
                    refs.push(SetRef::Name(String::from_utf8_lossy(name).into_owned()));
                }
                _ => {}
            }
        }
        refs
    }

    /// The expressions with each `lookup`'s set name and id replaced by the set's contents
    /// (`None` contents: a set that could not be found, which then never compares equal).
    fn resolved(&self, contents: &dyn Fn(&SetRef) -> Option<SetContents>) -> Vec<Expr> {
        self.exprs
            .iter()
            .map(|e| {
                if e.name != "lookup" {
                    return e.clone();
                }
                let refs = RawRule {
                    exprs: vec![e.clone()],
                    ..self.clone()
                }
                .set_refs();
                let set = refs.first().and_then(contents);
                let mut attrs: Vec<(u16, Value)> = e
                    .attrs
                    .iter()
                    .filter(|(k, _)| *k != NFTA_LOOKUP_SET && *k != NFTA_LOOKUP_SET_ID)
                    .cloned()
                    .collect();
                attrs.push((
                    NFTA_LOOKUP_SET,
                    match set {
                        Some(s) => Value::Set(s),
                        None => Value::Bytes(b"missing set".to_vec()),
                    },
                ));
                attrs.sort();
                Expr {
                    name: e.name.clone(),
                    attrs,
                }
            })
            .collect()
    }
}

/// A rule ready for comparison.
#[derive(Clone, Debug)]
pub struct CheckedRule {
    /// Normalised expressions, sets by contents.
    pub exprs: Vec<Expr>,
    /// Expected rules: the nft text (`NftRule::body`); found rules: the kernel's handle.
    pub label: String,
}

/// One table's contents for the comparison: chains in order, each chain's rules in order.
#[derive(Clone, Debug, Default)]
pub struct CheckedTable {
    /// The table's name.
    pub name: String,
    /// The table's flags (dormant, …); a batch creates tables with none.
    pub flags: u32,
    /// The chains, in declaration (expected) or dump (found) order.
    pub chains: Vec<ChainInfo>,
    /// Per chain name, its rules in order.
    pub rules: Vec<(String, Vec<CheckedRule>)>,
}

impl CheckedTable {
    fn rules_of(&self, chain: &str) -> &[CheckedRule] {
        self.rules
            .iter()
            .find(|(c, _)| c == chain)
            .map_or(&[], |(_, r)| r.as_slice())
    }

    fn push_rule(&mut self, chain: &str, rule: CheckedRule) {
        match self.rules.iter_mut().find(|(c, _)| c == chain) {
            Some((_, rules)) => rules.push(rule),
            None => self.rules.push((chain.to_string(), vec![rule])),
        }
    }
}

/// A chain's rules while a batch is replayed: table, chain, and per rule its batch id, the
/// rule and its nft text.
type ChainOrder = (String, String, Vec<(Option<u32>, RawRule, String)>);

/// What `batch` (from [`replace_batch`]) leaves in the kernel, table by table: its chains and,
/// per chain, its rules in the order they end up in after the batch's inserts.
pub fn expected_tables(batch: &Batch) -> Result<Vec<CheckedTable>, String> {
    let mut tables: Vec<CheckedTable> = Vec::new();
    let mut sets: HashMap<u32, SetContents> = HashMap::new();
    // Per (table, chain): the rules in their current order, with their batch ids.
    let mut order: Vec<ChainOrder> = Vec::new();
    for m in batch.messages() {
        let (Some(kind), Some(payload)) = (
            netlink_wire::u16_at(&m.bytes, 4),
            m.bytes.get(netlink_wire::NLMSG_HDRLEN..),
        ) else {
            continue;
        };
        if kind == nft_type(NFT_MSG_NEWTABLE)
            && matches!(
                m.origin,
                Origin::Table {
                    op: TableOp::Create,
                    ..
                }
            )
        {
            let (name, flags) = parse_table(payload)?;
            tables.push(CheckedTable {
                name,
                flags,
                ..CheckedTable::default()
            });
        } else if kind == nft_type(NFT_MSG_NEWCHAIN) {
            let chain = parse_chain(payload)?;
            let table = tables
                .iter_mut()
                .find(|t| t.name == chain.table)
                .ok_or("chain before its table")?;
            table.chains.push(chain);
        } else if kind == nft_type(NFT_MSG_NEWSET) {
            let (_, id, contents) = parse_set(payload)?;
            sets.insert(id.ok_or("batch set without an id")?, contents);
        } else if kind == nft_type(NFT_MSG_NEWSETELEM) {
            let elems = parse_set_elems(payload)?;
            let set = sets
                .get_mut(&elems.set_id.ok_or("batch elements without a set id")?)
                .ok_or("elements of an unknown set")?;
            set.keys.extend(elems.keys);
            set.keys.sort();
            set.keys.dedup();
        } else if kind == nft_type(NFT_MSG_NEWRULE) {
            let rule = parse_rule(payload)?;
            let text = match &m.origin {
                Origin::Rule(r) => r.text.clone(),
                other => other.to_string(),
            };
            let slot = match order
                .iter()
                .position(|(t, c, _)| *t == rule.table && *c == rule.chain)
            {
                Some(i) => i,
                None => {
                    order.push((rule.table.clone(), rule.chain.clone(), Vec::new()));
                    order.len() - 1
                }
            };
            let rules = &mut order[slot].2;
            let flags = netlink_wire::u16_at(&m.bytes, 6).unwrap_or(0);
            let at = match rule.position_id {
                None => rules.len(),
                Some(target) => {
                    let i = rules
                        .iter()
                        .position(|(id, _, _)| *id == Some(target))
                        .ok_or("insert before an unknown rule")?;
                    // With NLM_F_APPEND a positioned rule goes after its target.
                    if flags & NLM_F_APPEND != 0 {
                        i + 1
                    } else {
                        i
                    }
                }
            };
            rules.insert(at, (rule.id, rule, text));
        }
    }
    for (table, chain, rules) in order {
        let t = tables
            .iter_mut()
            .find(|t| t.name == table)
            .ok_or("rule before its table")?;
        for (_, rule, text) in rules {
            let exprs = rule.resolved(&|r| match r {
                SetRef::Id(id) => sets.get(id).cloned(),
                SetRef::Name(_) => None,
            });
            t.push_rule(&chain, CheckedRule { exprs, label: text });
        }
    }
    Ok(tables)
}

/// What a dump of one table found, before its set references are resolved.
#[derive(Clone, Debug, Default)]
pub struct FoundTable {
    /// The table's name.
    pub name: String,
    /// Its flags.
    pub flags: u32,
    /// Its chains, in dump order.
    pub chains: Vec<ChainInfo>,
    /// Its rules, in dump order (chain by chain, each chain in order).
    pub rules: Vec<RawRule>,
    /// Its sets by name, with their elements.
    pub sets: HashMap<String, SetContents>,
}

impl FoundTable {
    /// The names of the sets its rules consult (whose elements are to be dumped).
    pub fn referenced_sets(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| r.set_refs())
            .filter_map(|r| match r {
                SetRef::Name(n) => Some(n),
                SetRef::Id(_) => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The table ready for comparison.
    pub fn checked(&self) -> CheckedTable {
        let mut t = CheckedTable {
            name: self.name.clone(),
            flags: self.flags,
            chains: self.chains.clone(),
            rules: Vec::new(),
        };
        for rule in &self.rules {
            let exprs = rule.resolved(&|r| match r {
                SetRef::Name(n) => self.sets.get(n).cloned(),
                SetRef::Id(_) => None,
            });
            let label = match rule.handle {
                Some(h) => format!("handle {h}"),
                None => "no handle".to_string(),
            };
            t.push_rule(&rule.chain, CheckedRule { exprs, label });
        }
        t
    }
}

/// The differences between one table as expected and as found, as readable lines: table
/// flags, the chain set (names, base chain type, hook, priority, policy), and each chain's
/// rules in order. Empty when they are the same.
pub fn compare_table(expected: &CheckedTable, found: &CheckedTable) -> Vec<String> {
    let t = &expected.name;
    let mut out = Vec::new();
    if found.flags != expected.flags {
        let dormant = if found.flags & 1 != 0 {
            " (dormant)"
        } else {
            ""
        };
        out.push(format!(
            "table inet {t}: flags {}{dormant}, expected {}",
            found.flags, expected.flags
        ));
    }
    for chain in &expected.chains {
        match found.chains.iter().find(|c| c.name == chain.name) {
            None => out.push(format!("{t}: chain {} missing", chain.name)),
            Some(f) if f.base != chain.base => out.push(format!(
                "{t}: chain {} is {}, expected {}",
                chain.name,
                base_text(&f.base),
                base_text(&chain.base)
            )),
            Some(_) => {}
        }
    }
    for chain in &found.chains {
        if !expected.chains.iter().any(|c| c.name == chain.name) {
            let rules = found.rules_of(&chain.name).len();
            out.push(format!(
                "{t}: unexpected chain {} ({}, {rules} rule(s))",
                chain.name,
                base_text(&chain.base)
            ));
        }
    }
    for chain in &expected.chains {
        if !found.chains.iter().any(|c| c.name == chain.name) {
            continue;
        }
        let want = expected.rules_of(&chain.name);
        let have = found.rules_of(&chain.name);
        out.extend(compare_rules(&format!("{t}/{}", chain.name), want, have));
    }
    out
}

fn base_text(base: &Option<BaseInfo>) -> String {
    match base {
        None => "a regular chain".to_string(),
        Some(b) => format!("a base chain ({b})"),
    }
}

/// How long the alignment of one chain's rules may search for the fewest differences before
/// it settles for a correct but longer list (only a chain whose rules are heavily reordered
/// gets near it).
const ALIGN_DEADLINE: Duration = Duration::from_secs(2);

/// One chain's rules, expected and found, compared in order: the longest common subsequence
/// is in place; around it, an expected rule facing a found one at the same spot "differs",
/// the others are missing or unexpected.
///
/// Linear in memory and, for the usual cases (everything in place, a few rules changed,
/// nothing in common), close to linear in time: each distinct rule becomes a number, and
/// only the rules found on both sides — the only ones a common subsequence can hold — go
/// through Myers' diff (`similar`), which skips a common prefix and suffix first.
fn compare_rules(at: &str, want: &[CheckedRule], have: &[CheckedRule]) -> Vec<String> {
    let mut ids: HashMap<&[Expr], usize> = HashMap::new();
    let want_ids = intern(&mut ids, want);
    let have_ids = intern(&mut ids, have);
    let mut on_both = vec![0u8; ids.len()];
    for &id in &want_ids {
        on_both[id] |= 1;
    }
    for &id in &have_ids {
        on_both[id] |= 2;
    }
    // (position in the chain, rule id) of the rules that the other side has too.
    let shared = |ids: &[usize]| -> Vec<(usize, usize)> {
        ids.iter()
            .copied()
            .enumerate()
            .filter(|&(_, id)| on_both[id] == 3)
            .collect()
    };
    let (w, h) = (shared(&want_ids), shared(&have_ids));
    let w_ids: Vec<usize> = w.iter().map(|&(_, id)| id).collect();
    let h_ids: Vec<usize> = h.iter().map(|&(_, id)| id).collect();
    let deadline = Instant::now() + ALIGN_DEADLINE;
    // The aligned pairs (expected position, found position), in order.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for op in capture_diff_deadline(
        Algorithm::Myers,
        &w_ids,
        0..w_ids.len(),
        &h_ids,
        0..h_ids.len(),
        Some(deadline),
    ) {
        if let DiffOp::Equal {
            old_index,
            new_index,
            len,
        } = op
        {
            pairs.extend((0..len).map(|k| (w[old_index + k].0, h[new_index + k].0)));
        }
    }

    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    for (wi, hj) in pairs
        .into_iter()
        .chain(std::iter::once((want.len(), have.len())))
    {
        let (missing, extra) = (i..wi, j..hj);
        let paired = missing.len().min(extra.len());
        for (w, h) in missing.clone().zip(extra.clone()) {
            out.push(format!(
                "{at}: rule {} differs: expected `{}`, found ({}) {}",
                w + 1,
                want[w].label,
                have[h].label,
                exprs_text(&have[h].exprs)
            ));
        }
        for w in missing.skip(paired) {
            out.push(format!("{at}: missing rule {} `{}`", w + 1, want[w].label));
        }
        for h in extra.skip(paired) {
            out.push(format!(
                "{at}: unexpected rule ({}) at position {}: {}",
                have[h].label,
                h + 1,
                exprs_text(&have[h].exprs)
            ));
        }
        (i, j) = (wi + 1, hj + 1);
    }
    out
}

/// Each rule's number: equal rules get the same one, in order of first appearance.
fn intern<'a>(ids: &mut HashMap<&'a [Expr], usize>, rules: &'a [CheckedRule]) -> Vec<usize> {
    rules
        .iter()
        .map(|r| {
            let next = ids.len();
            *ids.entry(r.exprs.as_slice()).or_insert(next)
        })
        .collect()
}

fn exprs_text(exprs: &[Expr]) -> String {
    let parts: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
    parts.join(" ")
}

/// The attributes of an nf_tables message payload (after its nfgenmsg).
fn top_attrs(payload: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    parse_attrs(
        payload
            .get(NFGENMSG_LEN..)
            .ok_or("message shorter than nfgenmsg")?,
    )
}

fn attr<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

fn string_attr(attrs: &[(u16, &[u8])], kind: u16) -> Option<String> {
    let raw = attr(attrs, kind)?;
    let raw = raw.split(|&b| b == 0).next().unwrap_or(raw);
    String::from_utf8(raw.to_vec()).ok()
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink_wire::{align4, NLMSG_HDRLEN};

    /// As if all our tables existed: every table is replaced.
    fn managed() -> Vec<String> {
        MANAGED_TABLES.iter().map(|t| t.to_string()).collect()
    }
    use crate::backend::nftables::{BaseChain, ChainKind, NftChain, NftRule, NftTable};
    use crate::config::types::{GroupRef, Port};
    use crate::plan::{CtState, Family, Owner, Protocol};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn table(rules: Vec<NftRule>) -> Ruleset {
        let mut chains = vec![NftChain {
            name: "output".into(),
            base: Some(BaseChain {
                kind: ChainKind::Nat,
                hook: Hook::Output,
                priority: -100,
            }),
        }];
        for r in &rules {
            if !chains.iter().any(|c| c.name == r.chain) {
                chains.push(NftChain {
                    name: r.chain.clone(),
                    base: None,
                });
            }
        }
        Ruleset {
            tables: vec![NftTable {
                name: "istio-proxy-nat".into(),
                chains,
                rules,
            }],
        }
    }

    fn rule(chain: &str, index: Option<usize>, stmts: Vec<Stmt>) -> NftRule {
        NftRule {
            chain: chain.into(),
            index,
            stmts,
            purpose: "test",
        }
    }

    fn no_groups(_: &str) -> Option<u32> {
        None
    }

    /// The messages of a batch by type (without the subsystem byte), payload after the
    /// netlink header.
    fn payloads(batch: &Batch, msg: u16) -> Vec<Vec<u8>> {
        batch
            .messages()
            .iter()
            .filter(|m| m.bytes[4..6] == nft_type(msg).to_ne_bytes())
            .map(|m| m.bytes[NLMSG_HDRLEN..].to_vec())
            .collect()
    }

    /// `nft --debug=mnl` (nft 1.0.6) for `add rule inet istio-proxy-nat istio-output oifname
    /// lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != { 53, 15008 } skuid 1337
    /// counter return`: the set, its elements and the rule, after the netlink header.
    const NFT_SET: &str = "0100000014000100697374696f2d70726f78792d6e6174000c0002005f5f7365742564000800030000000003080004000000000d080005000000000208000a00000000010c000980080001000000000220000d000004020000000314000407000000010c000408000000010402000000";
    const NFT_ELEMS: &str = "0100000014000100697374696f2d70726f78792d6e6174000c0002005f5f736574256400080004000000000124000380100001800c0001800600010000350000100002800c000180060001003aa00000";
    const NFT_RULE: &str = "0100000014000100697374696f2d70726f78792d6e61740011000200697374696f2d6f7574707574000000006002048024000180090001006d6574610000000014000280080002000000000708000100000000013800018008000100636d70002c0002800800010000000001080002000000000018000380140001006c6f000000000000000000000000000024000180090001006d6574610000000014000280080002000000001008000100000000012c00018008000100636d700020000280080001000000000108000200000000000c000380050001000600000024000180090001006d6574610000000014000280080002000000000f08000100000000012c00018008000100636d700020000280080001000000000108000200000000000c0003800500010002000000340001800c0001007061796c6f6164002400028008000100000000010800020000000001080003000000001008000400000000042c00018008000100636d700020000280080001000000000108000200000000010c000380080001007f000001340001800c0001007061796c6f616400240002800800010000000001080002000000000208000300000000020800040000000002380001800b0001006c6f6f6b757000002800028008000200000000010c0001005f5f7365742564000800040000000001080005000000000124000180090001006d6574610000000014000280080002000000000a08000100000000012c00018008000100636d700020000280080001000000000108000200000000000c0003800800010039050000140001800c000100636f756e7465720004000280300001800e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100fffffffb";

    // The reference bytes hold host-endian netlink headers and values.
    #[cfg(target_endian = "little")]
    #[test]
    fn a_rule_with_a_port_set_is_byte_for_byte_what_nft_sends() {
        let stmts = vec![
            Stmt::Interface {
                dir: Direction::Destination,
                name: "lo".parse().unwrap(),
            },
            Stmt::L4Proto(Protocol::Tcp),
            Stmt::Address {
                dir: Direction::Destination,
                net: "127.0.0.1/32".parse().unwrap(),
                negate: true,
            },
            Stmt::PortNotIn {
                proto: Protocol::Tcp,
                ports: vec![Port::new_const(53), Port::new_const(15008)],
            },
            Stmt::Owner {
                owner: Owner::Uid(1337),
                negate: false,
                meta: false,
            },
            Stmt::Counter,
            Stmt::Return,
        ];
        let rs = table(vec![rule("istio-output", None, stmts)]);
        let batch = replace_batch(&rs, &no_groups, 0, &managed()).unwrap();
        assert_eq!(hex(&payloads(&batch, NFT_MSG_NEWSET)[0]), NFT_SET);
        assert_eq!(hex(&payloads(&batch, NFT_MSG_NEWSETELEM)[0]), NFT_ELEMS);
        // meshinit adds NFTA_RULE_ID (1) to every rule; nft only to rules an insert names.
        let mut ours = payloads(&batch, NFT_MSG_NEWRULE).remove(0);
        let id = ours.split_off(ours.len() - 8);
        assert_eq!(hex(&ours), NFT_RULE);
        assert_eq!(hex(&id), "0800090000000001");
    }

    #[test]
    fn batch_replaces_every_managed_table_and_frames_the_transaction() {
        let rs = table(vec![rule(
            "output",
            None,
            vec![Stmt::Counter, Stmt::Accept],
        )]);
        let batch = replace_batch(&rs, &no_groups, 100, &managed()).unwrap();
        let kinds: Vec<(u16, &Origin)> = batch
            .messages()
            .iter()
            .map(|m| (u16::from_ne_bytes([m.bytes[4], m.bytes[5]]), &m.origin))
            .collect();
        let t = |msg| nft_type(msg);
        let expected_types = [
            NFNL_MSG_BATCH_BEGIN,
            t(NFT_MSG_NEWTABLE),
            t(NFT_MSG_DELTABLE),
            t(NFT_MSG_NEWTABLE),
            t(NFT_MSG_NEWCHAIN),
            t(NFT_MSG_NEWRULE),
            t(NFT_MSG_NEWTABLE),
            t(NFT_MSG_DELTABLE),
            t(NFT_MSG_NEWTABLE),
            t(NFT_MSG_DELTABLE),
            NFNL_MSG_BATCH_END,
        ];
        assert_eq!(
            kinds.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            expected_types
        );
        // Sequence numbers are consecutive from the first one given.
        let seqs: Vec<u32> = batch.messages().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (100..111).collect::<Vec<_>>());
        assert_eq!(batch.next_seq(), 111);
        assert_eq!(
            batch.origin(108).unwrap().to_string(),
            "adding table inet istio-proxy-raw"
        );
        assert_eq!(
            batch.origin(105).unwrap().to_string(),
            "rule 1 of istio-proxy-nat/output (test) `counter accept`"
        );
        // Only the creation of a table is exclusive: the add before a delete must succeed
        // whether or not the table exists.
        let table_flags: Vec<(TableOp, u16)> = batch
            .messages()
            .iter()
            .filter_map(|m| match &m.origin {
                Origin::Table { op, .. } if *op != TableOp::Delete => {
                    Some((*op, u16::from_ne_bytes([m.bytes[6], m.bytes[7]])))
                }
                _ => None,
            })
            .collect();
        let flags =
            |op| NLM_F_REQUEST | NLM_F_CREATE | if op == TableOp::Create { NLM_F_EXCL } else { 0 };
        assert_eq!(table_flags.len(), 4);
        for (op, f) in table_flags {
            assert_eq!(f, flags(op), "{op:?}");
        }
        let cleanup = cleanup_batch(1);
        assert_eq!(cleanup.len(), 6);
        for name in MANAGED_TABLES {
            assert!(cleanup.messages().iter().any(|m| m.origin
                == Origin::Table {
                    table: name.into(),
                    op: TableOp::Delete
                }));
        }
    }

    /// The value of the `NFTA_RULE_POSITION_ID` attribute of a NEWRULE payload, if any.
    fn position_id(payload: &[u8]) -> Option<u32> {
        let mut at = NFGENMSG_LEN;
        while at + 4 <= payload.len() {
            let len = usize::from(u16::from_ne_bytes([payload[at], payload[at + 1]]));
            let kind = u16::from_ne_bytes([payload[at + 2], payload[at + 3]]);
            if kind == NFTA_RULE_POSITION_ID {
                return Some(u32::from_be_bytes(
                    payload[at + 4..at + 8].try_into().unwrap(),
                ));
            }
            at += align4(len);
        }
        None
    }

    #[test]
    fn inserts_name_the_rule_they_go_before_by_its_batch_id() {
        // The mangle istio-inbound inserts of the tproxy case: two appends (ids 1, 2), then
        // index 0, 1, 1, 2 — each goes before whatever rule is at that index at that moment.
        let r = |index| rule("c", index, vec![Stmt::Counter, Stmt::Return]);
        let rs = table(vec![
            r(None),
            r(None),
            r(Some(0)),
            r(Some(1)),
            r(Some(1)),
            r(Some(2)),
        ]);
        let batch = replace_batch(&rs, &no_groups, 0, &managed()).unwrap();
        let rules = payloads(&batch, NFT_MSG_NEWRULE);
        let positions: Vec<Option<u32>> = rules.iter().map(|p| position_id(p)).collect();
        // Chain after each step: [1] [1 2] [3 1 2] [3 4 1 2] [3 5 4 1 2] [3 5 6 4 1 2].
        assert_eq!(positions, [None, None, Some(1), Some(1), Some(4), Some(4)]);
        // Appends carry NLM_F_APPEND, inserts do not.
        let flags: Vec<u16> = batch
            .messages()
            .iter()
            .filter(|m| m.bytes[4..6] == nft_type(NFT_MSG_NEWRULE).to_ne_bytes())
            .map(|m| u16::from_ne_bytes([m.bytes[6], m.bytes[7]]) & NLM_F_APPEND)
            .collect();
        assert_eq!(flags, [NLM_F_APPEND, NLM_F_APPEND, 0, 0, 0, 0]);
        // An index past the end cannot be expressed.
        let bad = table(vec![r(None), r(Some(1))]);
        let err = replace_batch(&bad, &no_groups, 0, &managed()).unwrap_err();
        assert!(matches!(
            err,
            EncodeError::BadIndex {
                index: 1,
                len: 1,
                ..
            }
        ));
    }

    #[test]
    fn group_names_are_resolved_and_an_unknown_one_is_named() {
        let owner = |g: &str| Stmt::Owner {
            owner: Owner::Gid(g.parse::<GroupRef>().unwrap()),
            negate: true,
            meta: false,
        };
        let rs = table(vec![rule(
            "istio-output",
            None,
            vec![owner("java"), owner("202"), Stmt::Counter, Stmt::Return],
        )]);
        let java = |g: &str| (g == "java").then_some(4242);
        let batch = replace_batch(&rs, &java, 0, &managed()).unwrap();
        let rule = hex(&payloads(&batch, NFT_MSG_NEWRULE)[0]);
        // cmp data attributes holding the host-endian gids.
        assert!(rule.contains(&format!("08000100{}", hex(&4242u32.to_ne_bytes()))));
        assert!(rule.contains(&format!("08000100{}", hex(&202u32.to_ne_bytes()))));
        let err = replace_batch(&rs, &no_groups, 0, &managed()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rule 1 of istio-proxy-nat/istio-output (test) `skgid != java skgid != 202 counter \
             return`: group \"java\" does not exist (not in the group database)"
        );
    }

    /// The expressions of the only rule of a one-rule batch, as (name, payload hex) pairs.
    fn exprs_of(stmts: Vec<Stmt>) -> String {
        let rs = table(vec![rule("c", None, stmts)]);
        let batch = replace_batch(&rs, &no_groups, 0, &managed()).unwrap();
        hex(&payloads(&batch, NFT_MSG_NEWRULE)[0])
    }

    #[test]
    fn prefixes_load_whole_bytes_or_mask() {
        let addr = |net: &str| {
            vec![Stmt::Address {
                dir: Direction::Destination,
                net: net.parse().unwrap(),
                negate: false,
            }]
        };
        let payload_len = |n: u32| format!("08000400{}", hex(&n.to_be_bytes()));
        // /8: one byte, no mask, the host bits dropped.
        let eight = exprs_of(addr("127.0.0.1/8"));
        assert!(eight.contains(&payload_len(1)));
        assert!(!eight.contains(&hex(b"bitwise")));
        assert!(eight.contains("050001007f"), "{eight}");
        // /12: four bytes under a mask.
        let twelve = exprs_of(addr("10.16.0.0/12"));
        assert!(twelve.contains(&payload_len(4)));
        assert!(twelve.contains(&hex(b"bitwise")));
        assert!(twelve.contains("08000100fff00000"), "{twelve}");
        // /0 is masked to nothing, as nft does, rather than loading zero bytes.
        let zero = exprs_of(addr("0.0.0.0/0"));
        assert!(zero.contains(&payload_len(4)));
        assert!(zero.contains("0800010000000000"));
        // Each address family match is preceded by its nfproto once.
        let nfproto = hex(&[NFPROTO_IPV4]);
        let two = exprs_of([addr("10.0.0.0/8"), addr("10.0.0.1/32")].concat());
        assert_eq!(two.matches(&format!("05000100{nfproto}000000")).count(), 1);
    }

    #[test]
    fn a_single_port_list_is_a_comparison_and_ports_imply_their_protocol() {
        let stmts = vec![Stmt::PortNotIn {
            proto: Protocol::Udp,
            ports: vec![Port::new_const(53)],
        }];
        let rs = table(vec![rule("c", None, stmts)]);
        let batch = replace_batch(&rs, &no_groups, 0, &managed()).unwrap();
        assert!(payloads(&batch, NFT_MSG_NEWSET).is_empty());
        let rule = hex(&payloads(&batch, NFT_MSG_NEWRULE)[0]);
        assert!(!rule.contains(&hex(b"lookup")));
        // meta l4proto udp, then dport != 53.
        assert!(rule.contains("0500010011000000"));
        assert!(rule.contains("060001000035"));
    }

    /// A ruleset in the shape of Istio's tproxy mangle chain: appends, then inserts by index.
    fn ordered() -> Ruleset {
        let r = |index, port: u16| {
            rule(
                "c",
                index,
                vec![
                    Stmt::PortNotIn {
                        proto: Protocol::Tcp,
                        ports: vec![
                            Port::new_const(port),
                            Port::new_const(53),
                            Port::new_const(53),
                        ],
                    },
                    Stmt::Counter,
                    Stmt::Return,
                ],
            )
        };
        table(vec![r(None, 1), r(None, 2), r(Some(0), 3), r(Some(1), 4)])
    }

    /// The rules of chain `c` of a one-table ruleset, expected as an apply leaves them.
    fn expected_rules(rs: &Ruleset) -> Vec<CheckedRule> {
        let batch = replace_batch(rs, &no_groups, 0, &[]).unwrap();
        let tables = expected_tables(&batch).unwrap();
        assert_eq!(tables.len(), 1);
        tables[0].rules_of("c").to_vec()
    }

    #[test]
    fn expected_rules_follow_the_batch_inserts_and_carry_sets_by_contents() {
        let rules = expected_rules(&ordered());
        let labels: Vec<&str> = rules.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "tcp dport != { 3, 53, 53 } counter return",
                "tcp dport != { 4, 53, 53 } counter return",
                "tcp dport != { 1, 53, 53 } counter return",
                "tcp dport != { 2, 53, 53 } counter return",
            ]
        );
        let lookup = rules[0].exprs.iter().find(|e| e.name == "lookup").unwrap();
        // Repeated elements once, sorted; no set name or id left.
        assert_eq!(lookup.to_string(), "[lookup 1:{ 0x0003, 0x0035 } 2:1 5:1]");
    }

    #[test]
    fn chain_comparison_names_missing_unexpected_and_different_rules() {
        let want = expected_rules(&ordered());
        let found = |rules: Vec<CheckedRule>| {
            rules
                .into_iter()
                .enumerate()
                .map(|(i, r)| CheckedRule {
                    label: format!("handle {}", i + 10),
                    ..r
                })
                .collect::<Vec<_>>()
        };
        assert!(compare_rules("t/c", &want, &found(want.clone())).is_empty());
        // One rule gone, one added at the front.
        let mut have = want.clone();
        have.remove(1);
        have.insert(0, want[3].clone());
        let lines = compare_rules("t/c", &want, &found(have));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("t/c: unexpected rule (handle 10) at position 1: "));
        assert_eq!(
            lines[1],
            "t/c: missing rule 2 `tcp dport != { 4, 53, 53 } counter return`"
        );
        // A rule whose set holds another port differs.
        let mut have = want.clone();
        have[2] = want[0].clone();
        let lines = compare_rules("t/c", &want, &found(have));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "t/c: rule 3 differs: expected `tcp dport != { 1, 53, 53 } counter return`, \
                 found (handle 12) "
            ),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn what_the_kernel_adds_to_a_dump_is_normalised_away() {
        // A dump's counter carries its values, its bitwise the (boolean) operation, its redir
        // the upper port register; attribute order is the kernel's.
        let dumped = |name: &str, data: &[(u16, Vec<u8>)]| {
            let mut e = Attrs::default();
            e.str(NFTA_EXPR_NAME, name);
            e.nest(NFTA_EXPR_DATA, |d| {
                for (k, v) in data {
                    d.put(*k, v);
                }
            });
            parse_expr(&e.0).unwrap()
        };
        let sent = |build: &dyn Fn(&mut Attrs)| {
            let mut list = Attrs::default();
            build(&mut list);
            let elems = parse_attrs(&list.0).unwrap();
            parse_expr(elems[0].1).unwrap()
        };
        assert_eq!(
            dumped(
                "counter",
                &[
                    (NFTA_COUNTER_BYTES, vec![0, 0, 0, 0, 0, 0, 1, 0]),
                    (NFTA_COUNTER_PACKETS, vec![0; 8])
                ]
            ),
            sent(&|e| expr(e, "counter", |_| {}))
        );
        assert_eq!(
            dumped(
                "redir",
                &[
                    (NFTA_REDIR_REG_PROTO_MIN, 1u32.to_be_bytes().to_vec()),
                    (NFTA_REDIR_REG_PROTO_MAX, 1u32.to_be_bytes().to_vec()),
                    (NFTA_REDIR_FLAGS, 2u32.to_be_bytes().to_vec()),
                ]
            ),
            sent(&|e| expr(e, "redir", |a| {
                a.u32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
                a.u32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
            }))
        );
        let mut mask = Attrs::default();
        mask.put(NFTA_DATA_VALUE, &[6, 0, 0, 0]);
        let mut xor = Attrs::default();
        xor.put(NFTA_DATA_VALUE, &[0; 4]);
        let dumped_bitwise = dumped(
            "bitwise",
            &[
                (NFTA_BITWISE_SREG, 1u32.to_be_bytes().to_vec()),
                (NFTA_BITWISE_DREG, 1u32.to_be_bytes().to_vec()),
                (NFTA_BITWISE_LEN, 4u32.to_be_bytes().to_vec()),
                (NFTA_BITWISE_OP, 0u32.to_be_bytes().to_vec()),
                (NFTA_BITWISE_MASK, mask.0.clone()),
                (NFTA_BITWISE_XOR, xor.0.clone()),
            ],
        );
        assert_eq!(
            dumped_bitwise,
            sent(&|e| bitwise(e, &[6, 0, 0, 0], &[0; 4]))
        );
        // A shift is another operation: it stays.
        let shift = dumped("bitwise", &[(NFTA_BITWISE_OP, 1u32.to_be_bytes().to_vec())]);
        assert_eq!(shift.attrs.len(), 1);
        // A redirect to a port range keeps its upper register.
        let range = dumped(
            "redir",
            &[
                (NFTA_REDIR_REG_PROTO_MIN, 1u32.to_be_bytes().to_vec()),
                (NFTA_REDIR_REG_PROTO_MAX, 2u32.to_be_bytes().to_vec()),
            ],
        );
        assert_eq!(range.attrs.len(), 2);
    }

    // ---- Fuzzing: every parser of what the kernel sends (tables, chains, rules and their
    // expressions, sets, set elements, the generation, an extended ack's offset) on arbitrary
    // bytes and on mutated real messages: errors are fine, panics are not.

    use proptest::prelude::*;

    /// A ruleset using every statement, so the batch holds every expression the encoder
    /// writes (and a port set).
    fn every_statement() -> Ruleset {
        let net = |s: &str| s.parse::<Cidr>().unwrap();
        let stmts = vec![
            Stmt::Interface {
                dir: Direction::Source,
                name: "eth+".parse().unwrap(),
            },
            Stmt::Interface {
                dir: Direction::Destination,
                name: "lo".parse().unwrap(),
            },
            Stmt::L4Proto(Protocol::Tcp),
            Stmt::CtState(CtState::RelatedEstablished),
            Stmt::Mark {
                mark: 1337,
                negate: true,
            },
            Stmt::CtMark(1337),
            Stmt::Address {
                dir: Direction::Source,
                net: net("10.16.0.0/12"),
                negate: false,
            },
            Stmt::Address {
                dir: Direction::Destination,
                net: net("2001:db8::/33"),
                negate: true,
            },
            Stmt::Port {
                proto: Protocol::Tcp,
                dir: Direction::Destination,
                port: Port::new_const(15008),
                negate: true,
            },
            Stmt::PortNotIn {
                proto: Protocol::Udp,
                ports: vec![Port::new_const(53), Port::new_const(15053)],
            },
            Stmt::Owner {
                owner: Owner::Uid(1337),
                negate: false,
                meta: true,
            },
            Stmt::Counter,
            Stmt::SetMark(1337),
            Stmt::SaveMark,
            Stmt::RestoreMark,
            Stmt::CtZone(7),
            Stmt::Redirect(Port::new_const(15001)),
            Stmt::Tproxy {
                family: Family::V6,
                port: Port::new_const(15006),
            },
            Stmt::Jump("istio-output".into()),
        ];
        let mut rules = vec![rule("istio-output", None, stmts)];
        for end in [Stmt::Return, Stmt::Accept, Stmt::Drop] {
            rules.push(rule("istio-output", Some(0), vec![Stmt::Counter, end]));
        }
        table(rules)
    }

    fn sample_batch() -> Batch {
        replace_batch(&every_statement(), &no_groups, 1, &managed()).unwrap()
    }

    /// A batch message as a dump would show it: with a handle, and counter values.
    fn as_dumped(bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        put_attr(&mut out, NFTA_RULE_HANDLE, &42u64.to_be_bytes());
        let len = out.len() as u32;
        out[..4].copy_from_slice(&len.to_ne_bytes());
        out
    }

    /// Every reply parser on one message (header included) and one offset.
    fn parse_everything(message: &[u8], offset: u32, expected: &[CheckedTable]) {
        let _ = locate(message, offset);
        let Some(payload) = message.get(NLMSG_HDRLEN..) else {
            return;
        };
        let _ = parse_table(payload);
        let _ = parse_chain(payload);
        let _ = parse_set(payload);
        let _ = parse_set_elems(payload);
        let _ = gen_id_of(payload);
        if let Ok(rule) = parse_rule(payload) {
            let mut found = FoundTable {
                name: rule.table.clone(),
                ..FoundTable::default()
            };
            if let Ok(chain) = parse_chain(payload) {
                found.chains.push(chain);
            }
            found.rules.push(rule);
            for name in found.referenced_sets() {
                found.sets.insert(name, SetContents::default());
            }
            let checked = found.checked();
            for table in expected {
                let _ = compare_table(table, &checked);
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_nf_tables_parsers(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            offset in any::<u32>(),
        ) {
            parse_everything(&bytes, offset, &[]);
            let mut message = netlink_wire::message(nft_type(NFT_MSG_NEWRULE), 0, 1, &bytes);
            parse_everything(&message, offset, &[]);
            message.truncate(NLMSG_HDRLEN + 4);
            parse_everything(&message, offset, &[]);
        }

        #[test]
        fn mutated_messages_never_panic_the_nf_tables_parsers(
            pick in any::<usize>(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
            offset in any::<u32>(),
            dumped in any::<bool>(),
        ) {
            let batch = sample_batch();
            let expected = expected_tables(&batch).unwrap();
            let mut messages = batch.messages().to_vec();
            let count = messages.len();
            let m = &mut messages[pick % count];
            if dumped {
                m.bytes = as_dumped(&m.bytes);
            }
            for (at, value) in flips {
                let at = at % m.bytes.len();
                m.bytes[at] = value;
            }
            parse_everything(&m.bytes, offset, &expected);
            m.bytes.truncate(cut % (m.bytes.len() + 1));
            parse_everything(&m.bytes, offset, &expected);
            // The batch read back as the expected side of a check: errors, never panics.
            let _ = expected_tables(&Batch { messages });
        }
    }

    /// Found by the fuzzing above: a message shorter than a netlink header made the reading
    /// of a batch slice past its end.
    #[test]
    fn a_truncated_batch_message_is_an_error_or_skipped_never_a_panic() {
        let mut messages = sample_batch().messages().to_vec();
        messages[1].bytes.truncate(11);
        let _ = expected_tables(&Batch { messages });
    }

    #[test]
    fn the_kernels_offset_names_the_expression_of_a_rule() {
        let batch = sample_batch();
        let m = batch
            .messages()
            .iter()
            .find(|m| m.bytes[4..6] == nft_type(NFT_MSG_NEWRULE).to_ne_bytes())
            .unwrap();
        let body = &m.bytes[NLMSG_HDRLEN + NFGENMSG_LEN..];
        let (_, start, _) = attr_spans(body)
            .into_iter()
            .find(|(k, _, _)| *k == NFTA_RULE_EXPRESSIONS)
            .unwrap();
        let list_at = NLMSG_HDRLEN + NFGENMSG_LEN + start + 4;
        let spans = attr_spans(&m.bytes[list_at..]);
        // An offset inside the third expression (the first's comparison is the second).
        let third = (list_at + spans[2].1 + 10) as u32;
        assert_eq!(
            locate(&m.bytes, third).as_deref(),
            Some("expression 3 (meta)")
        );
        assert_eq!(
            locate(&m.bytes, (list_at + spans[1].1) as u32).as_deref(),
            Some("expression 2 (cmp)")
        );
        // The rule's table name, the header, beyond the end: no expression.
        assert_eq!(
            locate(&m.bytes, (NLMSG_HDRLEN + NFGENMSG_LEN + 4) as u32),
            None
        );
        assert_eq!(locate(&m.bytes, 3), None);
        assert_eq!(locate(&m.bytes, u32::MAX), None);
        // Only rules are located.
        assert_eq!(locate(&batch.messages()[1].bytes, 30), None);
    }
}
