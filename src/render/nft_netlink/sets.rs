//! The nf_tables attributes of the anonymous sets a rule looks long lists up in — an interval
//! set of addresses, a plain set of ports or an interval set when a range is among them — and
//! how an interval set's elements read back. The arithmetic is [`crate::render::nft_sets`]'s.

use super::{
    ANON_SET_NAME, NFTA_DATA_VALUE, NFTA_SET_DESC, NFTA_SET_DESC_SIZE, NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_SET_ID,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_FLAGS, NFTA_SET_ID, NFTA_SET_KEY_LEN, NFTA_SET_KEY_TYPE,
    NFTA_SET_NAME, NFTA_SET_TABLE, NFTA_SET_USERDATA, NLA_F_NESTED,
};
use crate::config::types::{Cidr, PortRange};
use crate::plan::{Family, Protocol};
use crate::render::netlink_wire::{parse_attrs, put_attr, NLA_HDRLEN};
use crate::render::nft_ruleset::Direction;
use crate::render::nft_sets::*;

// nf_tables set attributes (linux/netfilter/nf_tables.h).
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;

/// `NFT_SET_ANONYMOUS | NFT_SET_CONSTANT`: bound to one rule, freed with it, never changed.
pub const ANON_CONSTANT: u32 = 0x1 | 0x2;
/// `NFT_SET_INTERVAL`: elements are ranges, each a start and an end element.
pub const NFT_SET_INTERVAL: u32 = 0x4;
/// `NFT_SET_ELEM_INTERVAL_END`: the element is the (exclusive) end of a range.
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
/// nft's data types `ipv4_addr` and `ipv6_addr`.
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_IPV6_ADDR: u32 = 8;
/// nft's data type `inet_service` (a port).
const TYPE_INET_SERVICE: u32 = 13;

/// Elements per `NEWSETELEM` message: an attribute's length is 16 bits, so a list of 5,000
/// CIDRs (10,000 elements, about 400 kB) must be spread over several messages, as nft does.
pub const ELEMS_PER_MESSAGE: usize = 1000;

fn u32_attr(buf: &mut Vec<u8>, kind: u16, value: u32) {
    put_attr(buf, kind, &value.to_be_bytes());
}

fn str_attr(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let mut data = s.as_bytes().to_vec();
    data.push(0);
    put_attr(buf, kind, &data);
}

fn nest(buf: &mut Vec<u8>, kind: u16, inner: &[u8]) {
    put_attr(buf, kind | NLA_F_NESTED, inner);
}

/// The key nft uses for an address set: its data type and length.
pub fn address_key(family: Family) -> (u32, u32) {
    match family {
        Family::V4 => (TYPE_IPV4_ADDR, 4),
        Family::V6 => (TYPE_IPV6_ADDR, 16),
    }
}

/// nft's set user data for an address interval set: key byte order big-endian (2) and
/// "merge elements" (automerge) on, as nft writes it for `ip daddr { … }`.
pub fn address_set_userdata() -> Vec<u8> {
    let tlv = |kind: u8, value: u32| {
        let mut v = vec![kind, 4];
        v.extend_from_slice(&value.to_ne_bytes());
        v
    };
    [tlv(0, 2), tlv(2, 1)].concat()
}

/// What a `NEWSET` of an anonymous constant set says.
pub struct SetSpec<'a> {
    /// The table.
    pub table: &'a str,
    /// The batch-local set id the rule's `lookup` names.
    pub id: u32,
    /// `NFT_SET_*` flags.
    pub flags: u32,
    /// nft's data type of the key.
    pub key_type: u32,
    /// The key's length in bytes.
    pub key_len: u32,
    /// nft's user data (how nft prints the set).
    pub userdata: Vec<u8>,
}

/// The attributes of the `NEWSET` message.
pub fn newset_attrs(spec: &SetSpec, elements: usize) -> Vec<u8> {
    let mut body = Vec::new();
    str_attr(&mut body, NFTA_SET_TABLE, spec.table);
    str_attr(&mut body, NFTA_SET_NAME, ANON_SET_NAME);
    u32_attr(&mut body, NFTA_SET_FLAGS, spec.flags);
    u32_attr(&mut body, NFTA_SET_KEY_TYPE, spec.key_type);
    u32_attr(&mut body, NFTA_SET_KEY_LEN, spec.key_len);
    u32_attr(&mut body, NFTA_SET_ID, spec.id);
    let mut desc = Vec::new();
    u32_attr(&mut desc, NFTA_SET_DESC_SIZE, elements as u32);
    nest(&mut body, NFTA_SET_DESC, &desc);
    put_attr(&mut body, NFTA_SET_USERDATA, &spec.userdata);
    body
}

/// The attributes of the `NEWSETELEM` messages that fill the set, at most
/// [`ELEMS_PER_MESSAGE`] elements each. Written in place, with no buffer per element: a set
/// of thousands of networks has twice as many elements.
pub fn newsetelem_attrs(table: &str, set_id: u32, elements: &[Element]) -> Vec<Vec<u8>> {
    elements
        .chunks(ELEMS_PER_MESSAGE)
        .map(|chunk| {
            // Per element at most: list entry, flags, key nest, key value (16), user data.
            let mut body = Vec::with_capacity(64 + chunk.len() * 56);
            str_attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, table);
            str_attr(&mut body, NFTA_SET_ELEM_LIST_SET, ANON_SET_NAME);
            u32_attr(&mut body, NFTA_SET_ELEM_LIST_SET_ID, set_id);
            nest_in(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                // nft numbers the list entries (1, 2, …); the kernel ignores the type here.
                for (i, el) in chunk.iter().enumerate() {
                    nest_in(list, (i % 0x3fff) as u16 + 1, |e| {
                        if el.end {
                            u32_attr(e, NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                        }
                        nest_in(e, NFTA_SET_ELEM_KEY, |key| {
                            put_attr(key, NFTA_DATA_VALUE, &el.key)
                        });
                        if el.open {
                            // NFTNL_UDATA_SET_ELEM_FLAGS = NFTNL_SET_ELEM_F_INTERVAL_OPEN.
                            let mut udata = [1u8, 4, 0, 0, 0, 0];
                            udata[2..].copy_from_slice(&1u32.to_ne_bytes());
                            put_attr(e, NFTA_SET_ELEM_USERDATA, &udata);
                        }
                    });
                }
            });
            body
        })
        .collect()
}

/// Appends a nested attribute whose contents `inner` writes straight after its header; the
/// length is filled in after. Every attribute is padded, so the contents stay aligned.
fn nest_in(buf: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&[0; NLA_HDRLEN]);
    inner(buf);
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    buf[at + 2..at + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

/// nft's user data for a port set: key byte order big-endian and "typeof tcp|udp dport|sport"
/// (the payload expression (7), nft's protocol description id (udp 6, tcp 8) and field
/// (sport 1, dport 2)); type-length-value, one byte each for type and length.
fn port_set_userdata(proto: Protocol, dir: Direction) -> Vec<u8> {
    let desc: u32 = match proto {
        Protocol::Udp => 6,
        Protocol::Tcp => 8,
    };
    let field: u32 = match dir {
        Direction::Source => 1,
        Direction::Destination => 2,
    };
    let tlv = |kind: u8, value: &[u8]| {
        let mut v = vec![kind, value.len() as u8];
        v.extend_from_slice(value);
        v
    };
    let payload_desc = [tlv(0, &desc.to_ne_bytes()), tlv(1, &field.to_ne_bytes())].concat();
    let key_typeof = [tlv(0, &7u32.to_ne_bytes()), tlv(1, &payload_desc)].concat();
    [tlv(0, &2u32.to_ne_bytes()), tlv(3, &key_typeof)].concat()
}

/// The messages' attributes of an anonymous set: `NEWSET`, then the `NEWSETELEM`s.
pub struct SetMessages {
    /// The `NEWSET` attributes.
    pub newset: Vec<u8>,
    /// The `NEWSETELEM` attributes, one message each.
    pub elems: Vec<Vec<u8>>,
}

/// The interval set of `ip[6] daddr|saddr { … }`: the ranges the networks cover, merged.
pub fn address_set(table: &str, id: u32, family: Family, nets: &[Cidr]) -> SetMessages {
    let elements = interval_elements(family, &intervals(nets));
    let (key_type, key_len) = address_key(family);
    let spec = SetSpec {
        table,
        id,
        flags: ANON_CONSTANT | NFT_SET_INTERVAL,
        key_type,
        key_len,
        userdata: address_set_userdata(),
    };
    SetMessages {
        newset: newset_attrs(&spec, elements.len()),
        elems: newsetelem_attrs(table, id, &elements),
    }
}

/// The set of `tcp|udp dport|sport { … }`: plain, or an interval set when a range is among
/// the elements (ports 1 to 65535 never start at 0, so nft's leading end element is always
/// there).
pub fn port_set(
    table: &str,
    id: u32,
    proto: Protocol,
    dir: Direction,
    ports: &[PortRange],
) -> SetMessages {
    let (elements, flags) = if has_span(ports) {
        (
            port_interval_elements(&port_intervals(ports)),
            ANON_CONSTANT | NFT_SET_INTERVAL,
        )
    } else {
        let singles: Vec<u16> = ports.iter().map(|p| p.lo().get()).collect();
        (port_elements(&singles), ANON_CONSTANT)
    };
    let spec = SetSpec {
        table,
        id,
        flags,
        key_type: TYPE_INET_SERVICE,
        key_len: 2,
        userdata: port_set_userdata(proto, dir),
    };
    SetMessages {
        newset: newset_attrs(&spec, elements.len()),
        elems: newsetelem_attrs(table, id, &elements),
    }
}

/// Where an address lies in the network header and how long it is.
pub fn address_field(family: Family, dir: Direction) -> (u32, u32) {
    match (family, dir) {
        (Family::V4, Direction::Source) => (12, 4),
        (Family::V4, Direction::Destination) => (16, 4),
        (Family::V6, Direction::Source) => (8, 16),
        (Family::V6, Direction::Destination) => (24, 16),
    }
}

/// The keys of one element (the attributes of an `NFTA_LIST_ELEM` of a `NEWSETELEM`), as the
/// comparison of sets by contents uses them: the key's value, and an interval's end as the
/// address after it followed by one byte `0x01`, so that a start and an end never compare
/// equal and a moved end reads as a difference. The kernel keeps an interval set in one of
/// two forms: rbtree dumps what nft sent (a start element and a flagged end element), pipapo
/// dumps one element per range with the inclusive last address in `NFTA_SET_ELEM_KEY_END`;
/// both become the same keys here. nft's leading end element at address 0 (which no range
/// needs) is left out, as pipapo does not keep it.
pub fn element_keys(elem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let attrs = parse_attrs(elem)?;
    let find = |kind: u16| attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v);
    let value_of = |nest: &[u8]| -> Result<Vec<u8>, String> {
        parse_attrs(nest)?
            .iter()
            .find(|(k, _)| *k == NFTA_DATA_VALUE)
            .map(|(_, v)| v.to_vec())
            .ok_or_else(|| "set element key without a value".to_string())
    };
    let key = value_of(find(NFTA_SET_ELEM_KEY).ok_or("set element without a key")?)?;
    let flags = find(NFTA_SET_ELEM_FLAGS)
        .and_then(|v| v.try_into().ok().map(u32::from_be_bytes))
        .unwrap_or(0);
    if flags & NFT_SET_ELEM_INTERVAL_END != 0 {
        if key.iter().all(|b| *b == 0) {
            return Ok(Vec::new());
        }
        let mut end = key;
        end.push(1);
        return Ok(vec![end]);
    }
    let mut out = vec![key];
    if let Some(last) = find(NFTA_SET_ELEM_KEY_END) {
        let mut next = value_of(last)?;
        // The address after the last one; none when the range runs to the end.
        let mut carry = true;
        for b in next.iter_mut().rev() {
            if carry {
                let (v, c) = b.overflowing_add(1);
                *b = v;
                carry = c;
            }
        }
        if !carry {
            next.push(1);
            out.push(next);
        }
    }
    Ok(out)
}

/// An interval set's keys (as [`element_keys`] gives them, sorted) as readable ranges:
/// `10.0.0.0/8`, `172.16.0.0-172.16.5.255`; a key that is not part of a well-formed range is
/// shown as it is.
pub fn show_interval_keys(key_len: u32, keys: &[Vec<u8>]) -> Vec<String> {
    if key_len == 2 {
        return show_port_interval_keys(keys);
    }
    let family = if key_len == 4 { Family::V4 } else { Family::V6 };
    let num = |k: &[u8]| -> u128 { k.iter().fold(0u128, |a, b| (a << 8) | u128::from(*b)) };
    let width = key_len as usize;
    // Sorted by value, an end element (value + 0x01 suffix) follows a start of equal value.
    let mut out = Vec::new();
    let mut start: Option<u128> = None;
    for k in keys {
        let is_end = k.len() == width + 1 && k[width] == 1;
        let v = num(&k[..width.min(k.len())]);
        match (start, is_end) {
            (None, true) if v == 0 => {}
            (None, false) => start = Some(v),
            (Some(s), true) if v > s => {
                out.push(show_interval(family, (s, v - 1)));
                start = None;
            }
            (Some(s), false) => {
                out.push(format!("{}-?", show_addr(family, s)));
                start = Some(v);
            }
            _ => out.push(format!("end {}", show_addr(family, v))),
        }
    }
    if let Some(s) = start {
        out.push(show_interval(family, (s, max_of(family))));
    }
    out
}

/// A port interval set's keys (as [`element_keys`] gives them, sorted) as nft prints them:
/// `80`, `8000-9000`; a key that is not part of a well-formed range is shown as it is.
pub fn show_port_interval_keys(keys: &[Vec<u8>]) -> Vec<String> {
    let mut out = Vec::new();
    let mut start: Option<u16> = None;
    for k in keys {
        let is_end = k.len() == 3 && k[2] == 1;
        let Some(v) = k.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            out.push(format!("{k:02x?}"));
            continue;
        };
        match (start, is_end) {
            (None, true) if v == 0 => {}
            (None, false) => start = Some(v),
            (Some(s), true) if v > s => {
                out.push(show_port_interval((s, v - 1)));
                start = None;
            }
            (Some(s), false) => {
                out.push(format!("{s}-?"));
                start = Some(v);
            }
            _ => out.push(format!("end {v}")),
        }
    }
    if let Some(s) = start {
        out.push(show_port_interval((s, u16::MAX)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn shown(family: Family, list: &[&str]) -> Vec<String> {
        intervals(&nets(list))
            .into_iter()
            .map(|r| show_interval(family, r))
            .collect()
    }

    #[test]
    fn nested_overlapping_and_adjacent_networks_merge() {
        assert_eq!(
            shown(
                Family::V4,
                &[
                    "10.1.0.0/16",
                    "10.0.0.0/8",
                    "192.168.1.0/24",
                    "192.168.0.0/24"
                ]
            ),
            ["10.0.0.0/8", "192.168.0.0/23"]
        );
        assert_eq!(
            shown(Family::V4, &["10.1.0.0/16", "10.2.0.0/16"]),
            ["10.1.0.0-10.2.255.255"]
        );
        assert_eq!(shown(Family::V6, &["::/0", "fd00::/8"]), ["::/0"]);
        assert_eq!(
            shown(Family::V4, &["0.0.0.0/0", "10.0.0.1/32"]),
            ["0.0.0.0/0"]
        );
        assert!(overlapping(&nets(&["10.0.0.0/8", "10.1.0.0/16"])));
        assert!(!overlapping(&nets(&["10.0.0.0/16", "10.1.0.0/16"])));
    }

    #[test]
    fn elements_are_half_open_with_nfts_leading_end() {
        let els = interval_elements(Family::V4, &intervals(&nets(&["10.0.0.0/8"])));
        let keys: Vec<(Vec<u8>, bool)> = els.iter().map(|e| (e.key.clone(), e.end)).collect();
        assert_eq!(
            keys,
            [
                (vec![0, 0, 0, 0], true),
                (vec![10, 0, 0, 0], false),
                (vec![11, 0, 0, 0], true)
            ]
        );
        // A range to the last address has no end element.
        let els = interval_elements(Family::V4, &intervals(&nets(&["0.0.0.0/0"])));
        assert_eq!(els.len(), 1);
        assert!(els[0].open);
    }

    #[test]
    fn interval_keys_read_back_as_ranges() {
        let els = interval_elements(
            Family::V4,
            &intervals(&nets(&["10.0.0.0/8", "172.16.0.0/12"])),
        );
        let mut keys: Vec<Vec<u8>> = els
            .iter()
            .map(|e| {
                let mut k = e.key.clone();
                if e.end {
                    k.push(1);
                }
                k
            })
            .collect();
        keys.sort();
        assert_eq!(
            show_interval_keys(4, &keys),
            ["10.0.0.0/8", "172.16.0.0/12"]
        );
    }

    /// A ruleset with a 3,000-CIDR set: its batch has one `NEWSET` and several `NEWSETELEM`s,
    /// each tagged as the set of its rule, and what the batch leaves reads as the ranges.
    #[test]
    fn a_set_rule_in_a_batch_names_its_rule_and_reads_back_as_ranges() {
        use crate::render::nft_netlink::{expected_tables, replace_batch, Origin};
        use crate::render::nft_ruleset::{NftRule, NftTable, Ruleset, Stmt};
        let nets: Vec<Cidr> = (0..3000)
            .map(|i| {
                format!("172.{}.{}.0/24", 16 + 2 * i / 256, 2 * i % 256)
                    .parse()
                    .unwrap()
            })
            .collect();
        let rs = Ruleset {
            tables: vec![NftTable {
                name: "istio-proxy-nat".into(),
                chains: vec![crate::render::nft_ruleset::NftChain {
                    name: "istio-output".into(),
                    base: None,
                }],
                rules: vec![NftRule {
                    chain: "istio-output".into(),
                    index: None,
                    stmts: vec![
                        Stmt::AddressIn {
                            dir: Direction::Destination,
                            family: Family::V4,
                            nets,
                        },
                        Stmt::Counter,
                        Stmt::Return,
                    ],
                    purpose: "excluded outbound CIDR",
                }],
            }],
        };
        let batch = replace_batch(&rs, &|_| None, 1, &[]).unwrap();
        let sets: Vec<String> = batch
            .messages()
            .iter()
            .filter(|m| matches!(&m.origin, Origin::Rule(r) if r.set))
            .map(|m| m.origin.to_string())
            .collect();
        // NEWSET + 6,001 elements in 7 messages.
        assert_eq!(sets.len(), 8);
        assert!(
            sets[0].starts_with("the set of rule 1 of istio-proxy-nat/istio-output"),
            "{}",
            &sets[0][..100]
        );
        let tables = expected_tables(&batch).unwrap();
        let rule = &tables[0].rules[0].1[0];
        let shown = rule
            .exprs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            shown.contains("172.16.0.0/24, 172.16.2.0/24, "),
            "{}",
            &shown[..300]
        );
    }

    #[test]
    fn long_lists_are_spread_over_messages() {
        let ports: Vec<u16> = (1..=2500).collect();
        let msgs = newsetelem_attrs("t", 1, &port_elements(&ports));
        assert_eq!(msgs.len(), 3);
        assert!(msgs.iter().all(|m| m.len() < 65_535));
    }
}
