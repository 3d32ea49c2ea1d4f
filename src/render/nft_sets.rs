//! Sets for long lists under native nftables, as arithmetic and text: the address intervals a
//! CIDR list covers and the port intervals a port list with ranges covers (merged as nft merges
//! them), their nft text, and the elements (keys in network order) a set of them holds. Pure
//! data; `nft_netlink::sets` turns elements into nf_tables attributes, and
//! [`super::nft_ruleset`] decides which rules use a set.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::types::{Cidr, PortRange};
use crate::plan::Family;

/// The address ranges a list of networks of one family covers, inclusive, sorted, with
/// overlapping, nested and adjacent networks merged into one range (what nft does before it
/// sends an interval set, and what the kernel would refuse otherwise).
pub fn intervals(nets: &[Cidr]) -> Vec<(u128, u128)> {
    let mut ranges: Vec<(u128, u128)> = nets.iter().map(range_of).collect();
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some((_, last)) if start <= last.saturating_add(1) => *last = (*last).max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// True when two networks of the list share an address (a packet may match several of the
/// rules the list came from).
pub fn overlapping(nets: &[Cidr]) -> bool {
    let mut ranges: Vec<(u128, u128)> = nets.iter().map(range_of).collect();
    ranges.sort_unstable();
    ranges.windows(2).any(|w| w[1].0 <= w[0].1)
}

/// A network's first and last address as numbers (IPv4 in the low 32 bits).
pub(crate) fn range_of(net: &Cidr) -> (u128, u128) {
    let (addr, bits) = match net.addr() {
        std::net::IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        std::net::IpAddr::V6(a) => (u128::from(a), 128),
    };
    let host_bits = bits - u32::from(net.prefix_len());
    let host_mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let start = addr & !host_mask;
    (start, start | host_mask)
}

pub(crate) fn family_bits(family: Family) -> u32 {
    match family {
        Family::V4 => 32,
        Family::V6 => 128,
    }
}

pub(crate) fn max_of(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

pub(crate) fn show_addr(family: Family, a: u128) -> String {
    match family {
        Family::V4 => Ipv4Addr::from(a as u32).to_string(),
        Family::V6 => Ipv6Addr::from(a).to_string(),
    }
}

/// One range as nft writes it: a prefix when it is one (`10.0.0.0/8`), else `first-last`.
pub fn show_interval(family: Family, (start, end): (u128, u128)) -> String {
    let size = end.wrapping_sub(start).wrapping_add(1);
    let bits = family_bits(family);
    if size == 0 && start == 0 {
        // The whole address space (only possible for IPv6's 2^128).
        return format!("{}/0", show_addr(family, 0));
    }
    if size.is_power_of_two() && start & (size - 1) == 0 {
        let host = size.trailing_zeros();
        if host <= bits {
            return format!("{}/{}", show_addr(family, start), bits - host);
        }
    }
    format!("{}-{}", show_addr(family, start), show_addr(family, end))
}

/// An address key in network order.
pub(crate) fn key_bytes(family: Family, a: u128) -> Vec<u8> {
    match family {
        Family::V4 => (a as u32).to_be_bytes().to_vec(),
        Family::V6 => a.to_be_bytes().to_vec(),
    }
}

/// One element of a set as sent: its key and whether it ends a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// The key in network order.
    pub key: Vec<u8>,
    /// `NFT_SET_ELEM_INTERVAL_END`.
    pub end: bool,
    /// A range that runs to the last address has no end element; nft marks its start as an
    /// open interval in the element's user data (read only by nft).
    pub open: bool,
}

/// The elements nft sends for these ranges: an end element at address 0 when the first range
/// does not start there (nft 1.0's leading interval end), then per range its start and the
/// address after its end, which is left out for a range reaching the last address.
pub fn interval_elements(family: Family, ranges: &[(u128, u128)]) -> Vec<Element> {
    let mut out = Vec::with_capacity(ranges.len() * 2 + 1);
    if ranges.first().is_some_and(|(start, _)| *start != 0) {
        out.push(Element {
            key: key_bytes(family, 0),
            end: true,
            open: false,
        });
    }
    for &(start, end) in ranges {
        let open = end == max_of(family);
        out.push(Element {
            key: key_bytes(family, start),
            end: false,
            open,
        });
        if !open {
            out.push(Element {
                key: key_bytes(family, end + 1),
                end: true,
                open: false,
            });
        }
    }
    out
}

/// Whether a port list needs an interval set: one of its elements spans more than one port.
pub fn has_span(ports: &[PortRange]) -> bool {
    ports.iter().any(|p| p.lo() != p.hi())
}

/// The port intervals a list covers, inclusive, sorted, with overlapping and adjacent ones
/// merged (`80, 81, 8000-9000` → `80-81, 8000-9000`), as nft merges an anonymous interval set.
pub fn port_intervals(ports: &[PortRange]) -> Vec<(u16, u16)> {
    let mut ranges: Vec<(u16, u16)> = ports.iter().map(|p| (p.lo().get(), p.hi().get())).collect();
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some((_, last)) if lo <= last.saturating_add(1) => *last = (*last).max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

pub(crate) fn show_port_interval((lo, hi): (u16, u16)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// A port set's elements as nft prints them: each port once, sorted; with a range among them,
/// the merged intervals (`80-81, 8000-9000`).
pub fn show_port_set(ports: &[PortRange]) -> Vec<String> {
    if has_span(ports) {
        return port_intervals(ports)
            .into_iter()
            .map(show_port_interval)
            .collect();
    }
    let mut list: Vec<u16> = ports.iter().map(|p| p.lo().get()).collect();
    list.sort_unstable();
    list.dedup();
    list.iter().map(u16::to_string).collect()
}

/// The elements nft sends for an interval set of ports: as for addresses (see
/// [`interval_elements`]), a leading end at port 0, then each interval's start and the port
/// after its end, left out for an interval reaching 65535.
pub fn port_interval_elements(ranges: &[(u16, u16)]) -> Vec<Element> {
    let mut out = vec![Element {
        key: 0u16.to_be_bytes().to_vec(),
        end: true,
        open: false,
    }];
    for &(lo, hi) in ranges {
        let open = hi == u16::MAX;
        out.push(Element {
            key: lo.to_be_bytes().to_vec(),
            end: false,
            open,
        });
        if !open {
            out.push(Element {
                key: (hi + 1).to_be_bytes().to_vec(),
                end: true,
                open: false,
            });
        }
    }
    out
}

/// The elements of a plain set of ports (sorted, each once).
pub fn port_elements(ports: &[u16]) -> Vec<Element> {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    ports
        .into_iter()
        .map(|p| Element {
            key: p.to_be_bytes().to_vec(),
            end: false,
            open: false,
        })
        .collect()
}
