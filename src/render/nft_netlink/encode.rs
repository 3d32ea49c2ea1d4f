//! Encoding: the nf_tables batch that installs, replaces or deletes our tables, message by
//! message, each with its origin for error messages.

use super::*;

use std::sync::{Arc, OnceLock};

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
    /// Deleting a table of another family that iptables-nft created and left empty.
    EmptyTable {
        /// `ip` or `ip6`.
        family: &'static str,
        /// The table's name (`nat`, `mangle`, …).
        table: String,
    },
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
    pub text: RuleText,
    /// True for the anonymous set the rule uses rather than the rule itself.
    pub set: bool,
}

/// A rule's nft text (after the chain), rendered the first time it is shown — in an error
/// message or a `--check` difference. A rule with a set of thousands of networks renders to
/// tens of kilobytes, which a successful apply never shows; clones share one rendering.
#[derive(Clone)]
pub struct RuleText(Arc<(Vec<Stmt>, OnceLock<String>)>);

impl RuleText {
    /// The text of a rule with these statements.
    pub fn of(stmts: &[Stmt]) -> RuleText {
        RuleText(Arc::new((stmts.to_vec(), OnceLock::new())))
    }

    /// The text, rendered now if it was not yet.
    pub fn as_str(&self) -> &str {
        let (stmts, text) = &*self.0;
        text.get_or_init(|| {
            let words: Vec<String> = stmts.iter().map(Stmt::to_string).collect();
            words.join(" ")
        })
    }
}

impl From<&str> for RuleText {
    fn from(text: &str) -> RuleText {
        RuleText(Arc::new((Vec::new(), OnceLock::from(text.to_string()))))
    }
}

impl fmt::Display for RuleText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RuleText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for RuleText {
    fn eq(&self, other: &RuleText) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RuleText {}

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
            Origin::EmptyTable { family, table } => {
                write!(f, "deleting the empty table {family} {table}")
            }
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
    pub(super) messages: Vec<BatchMessage>,
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
pub(super) fn attr_spans(buf: &[u8]) -> Vec<(u16, usize, usize)> {
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
pub(super) struct Builder {
    messages: Vec<BatchMessage>,
    seq: u32,
    /// Transaction-local ids of rules and of sets (two separate spaces, as in the kernel),
    /// each counting from 1 as nft does.
    next_rule_id: u32,
    next_set_id: u32,
}

impl Builder {
    pub(super) fn new(first_seq: u32) -> Builder {
        let mut b = Builder {
            messages: Vec::new(),
            seq: first_seq,
            next_rule_id: 1,
            next_set_id: 1,
        };
        b.push(batch_marker(NFNL_MSG_BATCH_BEGIN, first_seq), Origin::Batch);
        b
    }

    pub(super) fn push(&mut self, bytes: Vec<u8>, origin: Origin) {
        self.messages.push(BatchMessage {
            seq: self.seq,
            bytes,
            origin,
        });
        self.seq = self.seq.wrapping_add(1);
    }

    pub(super) fn nft(&mut self, kind: u16, flags: u16, body: Attrs, origin: Origin) {
        let bytes = message(kind, NLM_F_REQUEST | flags, self.seq, NFPROTO_INET, &body.0);
        self.push(bytes, origin);
    }

    pub(super) fn rule_id(&mut self) -> u32 {
        self.next_rule_id += 1;
        self.next_rule_id - 1
    }

    pub(super) fn set_id(&mut self) -> u32 {
        self.next_set_id += 1;
        self.next_set_id - 1
    }

    pub(super) fn finish(mut self) -> Batch {
        let end = batch_marker(NFNL_MSG_BATCH_END, self.seq);
        self.push(end, Origin::Batch);
        Batch {
            messages: self.messages,
        }
    }

    /// `NEWTABLE` (creates it when missing, else changes nothing) + `DELTABLE`.
    pub(super) fn remove_table(&mut self, name: &str) {
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

    pub(super) fn table(
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
                text: RuleText::of(&rule.stmts),
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
    pub(super) fn rule(
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
    pub(super) fn stmt(
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
                let (lo, hi) = (port.lo().get().to_be_bytes(), port.hi().get().to_be_bytes());
                // What nft compiles: `dport 8000-9000` as two comparisons, `!= 8000-9000` as
                // a range expression; a range of one port as that port.
                if lo == hi {
                    cmp(e, op(*negate), &lo);
                } else if *negate {
                    range(e, NFT_RANGE_NEQ, &lo, &hi);
                } else {
                    cmp(e, NFT_CMP_GTE, &lo);
                    cmp(e, NFT_CMP_LTE, &hi);
                }
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
                let (offset, len) = super::sets::address_field(*family, *dir);
                payload(e, NFT_PAYLOAD_NETWORK_HEADER, offset, len);
                let set_id = self.set_id();
                let set = super::sets::address_set(table, set_id, *family, nets);
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
                let set = super::sets::port_set(table, set_id, *proto, *dir, ports);
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
        set: super::sets::SetMessages,
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
    pub(super) fn port_set(
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
pub(super) struct Deps {
    l3: Option<Family>,
    l4: Option<Protocol>,
}

impl Deps {
    /// `meta nfproto ipv4|ipv6` before the first address of that family (the table is inet).
    pub(super) fn network(&mut self, e: &mut Attrs, family: Family) {
        if self.l3 != Some(family) {
            meta_load(e, NFT_META_NFPROTO);
            cmp(e, NFT_CMP_EQ, &[nfproto(family)]);
            self.l3 = Some(family);
        }
    }

    /// `meta l4proto tcp|udp` before the first port of that protocol.
    pub(super) fn transport(&mut self, e: &mut Attrs, proto: Protocol) {
        if self.l4 != Some(proto) {
            meta_load(e, NFT_META_L4PROTO);
            cmp(e, NFT_CMP_EQ, &[ip_proto(proto)]);
            self.l4 = Some(proto);
        }
    }
}

pub(super) fn ip_proto(proto: Protocol) -> u8 {
    match proto {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    }
}

pub(super) fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

pub(super) fn op(negate: bool) -> u32 {
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
pub(super) fn set_userdata(proto: Protocol) -> Vec<u8> {
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
pub(super) fn address(e: &mut Attrs, dir: Direction, net: &Cidr, negate: bool) {
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

pub(super) fn expr(e: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    e.nest(NFTA_LIST_ELEM, |el| {
        el.str(NFTA_EXPR_NAME, name);
        el.nest(NFTA_EXPR_DATA, data);
    });
}

pub(super) fn meta_load(e: &mut Attrs, key: u32) {
    expr(e, "meta", |a| {
        a.u32(NFTA_META_KEY, key);
        a.u32(NFTA_META_DREG, NFT_REG_1);
    });
}

pub(super) fn meta_set(e: &mut Attrs, key: u32) {
    expr(e, "meta", |a| {
        a.u32(NFTA_META_KEY, key);
        a.u32(NFTA_META_SREG, NFT_REG_1);
    });
}

pub(super) fn ct_load(e: &mut Attrs, key: u32) {
    expr(e, "ct", |a| {
        a.u32(NFTA_CT_KEY, key);
        a.u32(NFTA_CT_DREG, NFT_REG_1);
    });
}

pub(super) fn ct_set(e: &mut Attrs, key: u32) {
    expr(e, "ct", |a| {
        a.u32(NFTA_CT_KEY, key);
        a.u32(NFTA_CT_SREG, NFT_REG_1);
    });
}

pub(super) fn cmp(e: &mut Attrs, op: u32, value: &[u8]) {
    expr(e, "cmp", |a| {
        a.u32(NFTA_CMP_SREG, NFT_REG_1);
        a.u32(NFTA_CMP_OP, op);
        a.nest(NFTA_CMP_DATA, |d| d.put(NFTA_DATA_VALUE, value));
    });
}

/// `range eq|neq reg 1 FROM TO`: register 1 within (or outside) `[from, to]`.
pub(super) fn range(e: &mut Attrs, op: u32, from: &[u8], to: &[u8]) {
    expr(e, "range", |a| {
        a.u32(NFTA_RANGE_SREG, NFT_REG_1);
        a.u32(NFTA_RANGE_OP, op);
        a.nest(NFTA_RANGE_FROM_DATA, |d| d.put(NFTA_DATA_VALUE, from));
        a.nest(NFTA_RANGE_TO_DATA, |d| d.put(NFTA_DATA_VALUE, to));
    });
}

pub(super) fn payload(e: &mut Attrs, base: u32, offset: u32, len: u32) {
    expr(e, "payload", |a| {
        a.u32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        a.u32(NFTA_PAYLOAD_BASE, base);
        a.u32(NFTA_PAYLOAD_OFFSET, offset);
        a.u32(NFTA_PAYLOAD_LEN, len);
    });
}

pub(super) fn bitwise(e: &mut Attrs, mask: &[u8], xor: &[u8]) {
    expr(e, "bitwise", |a| {
        a.u32(NFTA_BITWISE_SREG, NFT_REG_1);
        a.u32(NFTA_BITWISE_DREG, NFT_REG_1);
        a.u32(NFTA_BITWISE_LEN, mask.len() as u32);
        a.nest(NFTA_BITWISE_MASK, |d| d.put(NFTA_DATA_VALUE, mask));
        a.nest(NFTA_BITWISE_XOR, |d| d.put(NFTA_DATA_VALUE, xor));
    });
}

pub(super) fn immediate(e: &mut Attrs, value: &[u8]) {
    expr(e, "immediate", |a| {
        a.u32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
        a.nest(NFTA_IMMEDIATE_DATA, |d| d.put(NFTA_DATA_VALUE, value));
    });
}

pub(super) fn verdict(e: &mut Attrs, code: i32, chain: Option<&str>) {
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

/// The batch that deletes these tables of one family, valid only while the ruleset's
/// generation is still `generation` (`NFNL_BATCH_GENID`): if anything changed since the tables
/// were read and found empty, the kernel refuses the whole batch (`ERESTART`).
pub fn delete_tables_batch(
    first_seq: u32,
    family: XtFamily,
    tables: &[String],
    generation: u32,
) -> Batch {
    let mut b = Builder::new(first_seq);
    // BATCH_BEGIN with the generation attribute.
    let mut begin = vec![NFPROTO_UNSPEC, NFNETLINK_V0];
    begin.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    put_attr(&mut begin, NFNL_BATCH_GENID, &generation.to_be_bytes());
    b.messages[0].bytes =
        netlink_wire::message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq, &begin);
    for table in tables {
        let mut body = Attrs::default();
        body.str(NFTA_TABLE_NAME, table);
        let bytes = message(
            NFT_MSG_DELTABLE,
            NLM_F_REQUEST,
            b.seq,
            family.proto(),
            &body.0,
        );
        b.push(
            bytes,
            Origin::EmptyTable {
                family: family.name(),
                table: table.clone(),
            },
        );
    }
    b.finish()
}
