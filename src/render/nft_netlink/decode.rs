//! Decoding: dump requests and the parsing of what the kernel dumps (tables, chains, rules,
//! sets and elements), for our inet tables and for iptables-nft's ip/ip6 tables.

use super::*;

// ---------------------------------------------------------------------------------------------
// Reading the ruleset back (`--check`): dump requests, parsing of what the kernel dumps, and
// the comparison with a batch. The expected side is parsed out of the very batch an apply
// would send, so the check can never disagree with the encoder about what a rule means.

// Dump message types and the attributes only dumps carry.
pub(super) const NFT_MSG_GETCHAIN: u16 = 4;
pub(super) const NFT_MSG_GETRULE: u16 = 7;
pub(super) const NFT_MSG_GETSET: u16 = 10;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
pub(super) const NFTA_CHAIN_POLICY: u16 = 5;
pub(super) const NFTA_RULE_HANDLE: u16 = 3;
pub(super) const NFTA_GEN_ID: u16 = 1;
pub(super) const NFTA_COUNTER_BYTES: u16 = 1;
pub(super) const NFTA_COUNTER_PACKETS: u16 = 2;
pub(super) const NFTA_COUNTER_PAD: u16 = 3;
pub(super) const NFTA_BITWISE_OP: u16 = 6;
pub(super) const NFT_BITWISE_BOOL: u32 = 0;
pub(super) const NFTA_REDIR_REG_PROTO_MAX: u16 = 2;
pub(super) const NFTA_BITWISE_DATA: u16 = 7;

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
        DumpKind::Objects => NFT_MSG_NEWOBJ,
        DumpKind::Flowtables => NFT_MSG_NEWFLOWTABLE,
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
    /// `NFT_MSG_GETOBJ`: stateful objects (named counters, quotas, …).
    Objects,
    /// `NFT_MSG_GETFLOWTABLE`: flowtables.
    Flowtables,
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
        let keys: Vec<String> = if self.flags & super::sets::NFT_SET_INTERVAL != 0 {
            super::sets::show_interval_keys(self.key_len, &self.keys)
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
            keys.extend(super::sets::element_keys(elem)?);
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
pub(super) fn show_bytes(b: &[u8]) -> String {
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
pub(super) fn parse_expr(elem: &[u8]) -> Result<Expr, String> {
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
                | ("range", NFTA_RANGE_FROM_DATA | NFTA_RANGE_TO_DATA)
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
pub(super) fn parse_data(buf: &[u8]) -> Result<Vec<(u16, Value)>, String> {
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
    pub(super) fn set_refs(&self) -> Vec<SetRef> {
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
    pub(super) fn resolved(&self, contents: &dyn Fn(&SetRef) -> Option<SetContents>) -> Vec<Expr> {
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

// ---------------------------------------------------------------------------------------------
// The iptables-nft side of nf_tables (families ip and ip6): what the inventory needs to know
// without an iptables tool — which tables exist, their chains, how many rules and sets each
// holds — and the batch that deletes tables iptables-nft left empty.

/// The nf_tables families iptables-nft writes to: `ip` (IPv4) and `ip6` (IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum XtFamily {
    /// `ip`, what `iptables-nft` writes.
    Ip,
    /// `ip6`, what `ip6tables-nft` writes.
    Ip6,
}

impl XtFamily {
    /// The nf_tables family the iptables-nft tool of `family` writes to.
    pub fn of(family: crate::plan::Family) -> XtFamily {
        match family {
            crate::plan::Family::V4 => XtFamily::Ip,
            crate::plan::Family::V6 => XtFamily::Ip6,
        }
    }

    /// The family as nft names it.
    pub fn name(self) -> &'static str {
        match self {
            XtFamily::Ip => "ip",
            XtFamily::Ip6 => "ip6",
        }
    }

    pub(super) fn proto(self) -> u8 {
        match self {
            XtFamily::Ip => NFPROTO_IPV4,
            XtFamily::Ip6 => NFPROTO_IPV6,
        }
    }
}

/// A dump request of every table, chain, rule or set of one family (no table filter).
pub fn family_dump_request(kind: DumpKind, seq: u32, family: XtFamily) -> Vec<u8> {
    let (msg, flags) = match kind {
        DumpKind::Tables => (NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_DUMP | NLM_F_ACK),
        DumpKind::Chains => (NFT_MSG_GETCHAIN, NLM_F_REQUEST | NLM_F_DUMP),
        DumpKind::Rules => (NFT_MSG_GETRULE, NLM_F_REQUEST | NLM_F_DUMP),
        DumpKind::Sets | DumpKind::SetElems => (NFT_MSG_GETSET, NLM_F_REQUEST | NLM_F_DUMP),
        DumpKind::Objects => (NFT_MSG_GETOBJ, NLM_F_REQUEST | NLM_F_DUMP),
        DumpKind::Flowtables => (NFT_MSG_GETFLOWTABLE, NLM_F_REQUEST | NLM_F_DUMP),
    };
    message(msg, flags, seq, family.proto(), &[])
}

/// The table and chain of a `NEWRULE` payload, whatever its expressions (iptables-nft's
/// `match`/`target` expressions included).
pub fn rule_place(payload: &[u8]) -> Result<(String, String), String> {
    let attrs = top_attrs(payload)?;
    let table = string_attr(&attrs, NFTA_RULE_TABLE).ok_or("rule without a table")?;
    let chain = string_attr(&attrs, NFTA_RULE_CHAIN).ok_or("rule without a chain")?;
    Ok((table, chain))
}

/// The table of a `NEWSET`, `NEWOBJ` or `NEWFLOWTABLE` payload (attribute 1 in all three).
pub fn set_table(payload: &[u8]) -> Result<String, String> {
    let attrs = top_attrs(payload)?;
    string_attr(&attrs, NFTA_SET_TABLE).ok_or_else(|| "set without a table".to_string())
}

/// Stateful objects and flowtables of a family.
pub(super) const NFT_MSG_NEWOBJ: u16 = 18;
pub(super) const NFT_MSG_GETOBJ: u16 = 19;
pub(super) const NFT_MSG_NEWFLOWTABLE: u16 = 22;
pub(super) const NFT_MSG_GETFLOWTABLE: u16 = 23;

/// One table of the `ip` or `ip6` family as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyTable {
    /// The family.
    pub family: XtFamily,
    /// The table's name.
    pub name: String,
    /// Its chains.
    pub chains: Vec<ChainInfo>,
    /// How many rules it holds.
    pub rules: usize,
    /// How many sets it holds.
    pub sets: usize,
    /// How many stateful objects and flowtables it holds.
    pub others: usize,
}

impl FamilyTable {
    /// Whether the table holds nothing that acts: no rules, sets, objects or flowtables, and
    /// only base chains whose policy is accept — what iptables-nft leaves once our rules are
    /// deleted.
    pub fn is_empty_shell(&self) -> bool {
        self.rules == 0
            && self.sets == 0
            && self.others == 0
            && self.chains.iter().all(|c| {
                c.base
                    .as_ref()
                    .is_some_and(|b| b.policy == NF_ACCEPT as u32)
            })
    }
}
