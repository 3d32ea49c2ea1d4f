//! nftables ruleset → nf_tables netlink messages: one batch (`NFNL_MSG_BATCH_BEGIN` …
//! `NFNL_MSG_BATCH_END`) that the kernel applies as a single transaction, and back. Pure
//! encoding and decoding, no socket; sending and receiving belong to `driver::nf_tables`.
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
//!
//! The module is split along its jobs: `encode` builds batches, `decode` parses what the
//! kernel dumps (and builds the dump requests), `compare` judges a dump against a batch; the
//! constants and attribute helpers they share are here.

mod compare;
mod decode;
mod encode;
pub mod sets;
pub mod text;

pub use compare::*;
pub use decode::*;
pub use encode::*;

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use similar::{capture_diff_deadline, Algorithm, DiffOp};

use crate::config::types::Cidr;
use crate::plan::{CtState, Family, Owner, Protocol};
use crate::render::netlink_wire::{self, parse_attrs, put_attr};
use crate::render::nft_ruleset::{
    cidr_family, wildcard_prefix, Direction, Hook, NftRule, NftTable, Ruleset, Stmt, MANAGED_TABLES,
};

// nfnetlink (<linux/netfilter/nfnetlink.h>).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
/// `NFNL_BATCH_GENID`: the generation a batch is valid for.
const NFNL_BATCH_GENID: u16 = 1;
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
pub(crate) const NFTA_SET_TABLE: u16 = 1;
pub(crate) const NFTA_SET_NAME: u16 = 2;
pub(crate) const NFTA_SET_FLAGS: u16 = 3;
pub(crate) const NFTA_SET_KEY_TYPE: u16 = 4;
pub(crate) const NFTA_SET_KEY_LEN: u16 = 5;
pub(crate) const NFTA_SET_DESC: u16 = 9;
pub(crate) const NFTA_SET_ID: u16 = 10;
pub(crate) const NFTA_SET_USERDATA: u16 = 13;
pub(crate) const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
pub(crate) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub(crate) const NFTA_SET_ELEM_KEY: u16 = 1;
/// nft's datatype number for `inet_service` (a port); informational for the kernel, used by
/// nft to print the set.
const TYPE_INET_SERVICE: u32 = 13;
/// The name the kernel completes with a free number (`__set0`, …), as nft names anonymous sets.
pub(crate) const ANON_SET_NAME: &str = "__set%d";

// Generic list, expression, data and verdict attributes.
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
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
const NFT_CMP_LTE: u32 = 3;
const NFT_CMP_GTE: u32 = 5;
// The range expression (`tcp dport != 8000-9000`).
const NFTA_RANGE_SREG: u16 = 1;
const NFTA_RANGE_OP: u16 = 2;
const NFTA_RANGE_FROM_DATA: u16 = 3;
const NFTA_RANGE_TO_DATA: u16 = 4;
const NFT_RANGE_NEQ: u32 = 1;
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
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_APPEND: u16 = 0x800;
/// `IFNAMSIZ`: nft compares a whole interface name as 16 zero-padded bytes.
const IFNAMSIZ: usize = 16;

/// A sequence of netlink attributes being built.
#[derive(Default)]
pub(super) struct Attrs(Vec<u8>);

impl Attrs {
    pub(super) fn put(&mut self, kind: u16, data: &[u8]) {
        put_attr(&mut self.0, kind, data);
    }

    /// A NUL-terminated string (`NLA_STRING`/`NLA_NUL_STRING`).
    pub(super) fn str(&mut self, kind: u16, s: &str) {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.put(kind, &data);
    }

    /// A 32-bit number in network order, as every nf_tables `NLA_U32` is.
    pub(super) fn u32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    pub(super) fn raw_nest(&mut self, kind: u16, inner: &[u8]) {
        self.put(kind | NLA_F_NESTED, inner);
    }

    pub(super) fn nest(&mut self, kind: u16, build: impl FnOnce(&mut Attrs)) {
        let mut inner = Attrs::default();
        build(&mut inner);
        self.raw_nest(kind, &inner.0);
    }
}

/// A complete nfnetlink message: `nlmsghdr` (port id 0) + `nfgenmsg` + attributes.
pub(super) fn message(kind: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    // nfgenmsg: family, version, res_id (big-endian; 0 for nf_tables messages).
    let mut body = vec![family, NFNETLINK_V0, 0, 0];
    body.extend_from_slice(attrs);
    netlink_wire::message(nft_type(kind), flags, seq, &body)
}

/// `BATCH_BEGIN`/`END`: a bare nfgenmsg whose res_id names the nf_tables subsystem.
pub(super) fn batch_marker(kind: u16, seq: u32) -> Vec<u8> {
    let mut body = vec![NFPROTO_UNSPEC, NFNETLINK_V0];
    body.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    netlink_wire::message(kind, NLM_F_REQUEST, seq, &body)
}

/// The attributes of an nf_tables message payload (after its nfgenmsg).
pub(super) fn top_attrs(payload: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    parse_attrs(
        payload
            .get(NFGENMSG_LEN..)
            .ok_or("message shorter than nfgenmsg")?,
    )
}

pub(super) fn attr<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

pub(super) fn string_attr(attrs: &[(u16, &[u8])], kind: u16) -> Option<String> {
    let raw = attr(attrs, kind)?;
    let raw = raw.split(|&b| b == 0).next().unwrap_or(raw);
    String::from_utf8(raw.to_vec()).ok()
}

pub(super) fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_shell_is_only_accepting_base_chains_without_rules_or_sets() {
        let base = |policy: i32| ChainInfo {
            table: "nat".into(),
            name: "OUTPUT".into(),
            base: Some(BaseInfo {
                kind: "nat".into(),
                hook: 3,
                priority: -100,
                policy: policy as u32,
            }),
        };
        let shell = FamilyTable {
            family: XtFamily::Ip,
            name: "nat".into(),
            chains: vec![base(NF_ACCEPT)],
            rules: 0,
            sets: 0,
            others: 0,
        };
        assert!(shell.is_empty_shell());
        let regular = ChainInfo {
            base: None,
            name: "KUBE".into(),
            ..base(NF_ACCEPT)
        };
        for held in [
            FamilyTable {
                rules: 1,
                ..shell.clone()
            },
            FamilyTable {
                sets: 1,
                ..shell.clone()
            },
            FamilyTable {
                others: 1,
                ..shell.clone()
            },
            FamilyTable {
                chains: vec![base(NF_DROP)],
                ..shell.clone()
            },
            FamilyTable {
                chains: vec![base(NF_ACCEPT), regular],
                ..shell.clone()
            },
        ] {
            assert!(!held.is_empty_shell(), "{held:?}");
        }
    }

    #[test]
    fn the_empty_table_batch_is_bound_to_a_generation_and_names_each_table() {
        let tables = ["nat".to_string(), "mangle".to_string()];
        let batch = delete_tables_batch(40, XtFamily::Ip6, &tables, 0x1234_5678);
        let msgs = batch.messages();
        assert_eq!(msgs.len(), 4, "begin, two deletes, end");
        // BATCH_BEGIN: nfgenmsg (4 bytes) then NFNL_BATCH_GENID, big-endian.
        let begin = &msgs[0].bytes[netlink_wire::NLMSG_HDRLEN..];
        let attrs = parse_attrs(&begin[NFGENMSG_LEN..]).unwrap();
        assert_eq!(
            attrs,
            vec![(NFNL_BATCH_GENID, &0x1234_5678u32.to_be_bytes()[..])]
        );
        for (msg, name) in msgs[1..3].iter().zip(&tables) {
            assert_eq!(
                netlink_wire::u16_at(&msg.bytes, 4),
                Some(nft_type(NFT_MSG_DELTABLE))
            );
            assert_eq!(msg.bytes[netlink_wire::NLMSG_HDRLEN], NFPROTO_IPV6);
            assert_eq!(
                msg.origin.to_string(),
                format!("deleting the empty table ip6 {name}")
            );
        }
        assert_eq!(batch.next_seq(), 44);
    }
    use crate::render::netlink_wire::{align4, NLMSG_HDRLEN};

    /// As if all our tables existed: every table is replaced.
    fn managed() -> Vec<String> {
        MANAGED_TABLES.iter().map(|t| t.to_string()).collect()
    }
    use crate::config::types::{GroupRef, Port};
    use crate::plan::{CtState, Family, Owner, Protocol};
    use crate::render::nft_ruleset::{BaseChain, ChainKind, NftChain, NftRule, NftTable};

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

    /// What `nft --debug=netlink` shows nft itself sends: `tcp dport 8000-9000` as `cmp gte`
    /// then `cmp lte`, `!= 8000-9000` as `range neq`, a range of one port as `cmp eq`, a set
    /// with a range as an interval set (adjacent ports merged); each reads back as nft prints
    /// it.
    #[test]
    fn port_ranges_encode_as_nft_does_and_read_back_as_it_prints() {
        use crate::config::types::PortRange;
        let range = |s: &str| s.parse::<PortRange>().unwrap();
        let port = |negate, p: &str| Stmt::Port {
            proto: Protocol::Tcp,
            dir: Direction::Destination,
            port: range(p),
            negate,
        };
        let set = Stmt::PortIn {
            proto: Protocol::Tcp,
            dir: Direction::Destination,
            ports: ["80", "81", "8000-9000", "65000:65535"].map(range).to_vec(),
        };
        let rs = table(vec![
            rule("c", None, vec![port(false, "8000:9000"), Stmt::Return]),
            rule("c", None, vec![port(true, "8000-9000"), Stmt::Return]),
            rule("c", None, vec![port(false, "8000:8000"), Stmt::Return]),
            rule("c", None, vec![set, Stmt::Return]),
        ]);
        let rules = expected_rules(&rs);
        let read: Vec<String> = rules
            .iter()
            .map(|r| crate::render::nft_netlink::text::rule_text(&r.exprs).expect("readable"))
            .collect();
        let labels: Vec<&str> = rules.iter().map(|r| r.label.as_str()).collect();
        let want = [
            "tcp dport 8000-9000 return",
            "tcp dport != 8000-9000 return",
            "tcp dport 8000 return",
            "tcp dport { 80-81, 8000-9000, 65000-65535 } return",
        ];
        assert_eq!(read, want);
        assert_eq!(labels, want);

        let batch = replace_batch(&rs, &no_groups, 0, &managed()).unwrap();
        let rules: Vec<String> = payloads(&batch, NFT_MSG_NEWRULE)
            .iter()
            .map(|p| hex(p))
            .collect();
        // cmp: op (attribute 2) gte (5) with 0x1f40, then lte (3) with 0x2328.
        let cmp_op = |op: u32| format!("08000200{}", hex(&op.to_be_bytes()));
        assert!(rules[0].contains(&cmp_op(NFT_CMP_GTE)) && rules[0].contains("1f40"));
        assert!(rules[0].contains(&cmp_op(NFT_CMP_LTE)) && rules[0].contains("2328"));
        assert!(!rules[0].contains(&hex(b"range")));
        assert!(rules[1].contains(&hex(b"range\0")) && !rules[1].contains(&cmp_op(NFT_CMP_GTE)));
        assert!(!rules[2].contains(&cmp_op(NFT_CMP_GTE)));
        let sets = payloads(&batch, NFT_MSG_NEWSET);
        assert_eq!(sets.len(), 1);
        let flags = format!("08000300{}", hex(&7u32.to_be_bytes()));
        assert!(
            hex(&sets[0]).contains(&flags),
            "anonymous, constant, interval"
        );
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
                port: Port::new_const(15008).into(),
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
