//! Fuzzing of the rtnetlink reply parsers of `netlink.rs` (policy rules, routes, addresses,
//! and the datagrams that carry them): arbitrary bytes and mutated dump replies, built the
//! way the kernel dumps them, give an error or a value — never a panic. A child module so it
//! can reach the private parsers while staying out of the file whose behaviour it tests.

use super::{parse_address, parse_route, parse_rule};
use crate::netlink_wire::{message, parse_attrs, parse_messages, put_attr};
use proptest::prelude::*;

fn u32_attr(buf: &mut Vec<u8>, kind: u16, value: u32) {
    put_attr(buf, kind, &value.to_ne_bytes());
}

/// `ip rule` dump entry: fib_rule_hdr, then what current kernels send for a fwmark rule
/// (table, priority, mark and mask, protocol, the two "not set" suppressors).
fn rule_reply() -> Vec<u8> {
    let mut body = vec![libc::AF_INET as u8, 0, 0, 0, 133, 0, 0, 1];
    body.extend_from_slice(&0u32.to_ne_bytes());
    u32_attr(&mut body, 15, 133); // FRA_TABLE
    u32_attr(&mut body, 6, 32765); // FRA_PRIORITY
    u32_attr(&mut body, 10, 1337); // FRA_FWMARK
    u32_attr(&mut body, 16, u32::MAX); // FRA_FWMASK
    put_attr(&mut body, 21, &[4]); // FRA_PROTOCOL
    u32_attr(&mut body, 14, u32::MAX); // FRA_SUPPRESS_PREFIXLEN
    u32_attr(&mut body, 13, u32::MAX); // FRA_SUPPRESS_IFGROUP
    message(libc::RTM_NEWRULE, 2, 7, &body)
}

/// `ip route show table 133` entry: rtmsg, table, destination-less local default, device.
fn route_reply() -> Vec<u8> {
    let mut body = vec![libc::AF_INET6 as u8, 0, 0, 0, 133, 3, 254, 2];
    body.extend_from_slice(&0u32.to_ne_bytes());
    u32_attr(&mut body, libc::RTA_TABLE, 133);
    u32_attr(&mut body, libc::RTA_PRIORITY, 1024);
    u32_attr(&mut body, libc::RTA_OIF, 1);
    put_attr(&mut body, libc::RTA_PREF, &[0]);
    message(libc::RTM_NEWROUTE, 2, 8, &body)
}

/// `ip -6 addr show dev lo` entry: ifaddrmsg, address, flags, cache info.
fn address_reply() -> Vec<u8> {
    let mut body = vec![libc::AF_INET6 as u8, 128, 0x80, 254];
    body.extend_from_slice(&1u32.to_ne_bytes());
    let six = std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6).octets();
    put_attr(&mut body, libc::IFA_ADDRESS, &six);
    put_attr(&mut body, libc::IFA_CACHEINFO, &[0xff; 16]);
    u32_attr(&mut body, libc::IFA_FLAGS, 0x80);
    message(libc::RTM_NEWADDR, 2, 9, &body)
}

/// Every parser on one datagram and, directly, on its bytes as a message body.
fn parse_everything(datagram: &[u8]) {
    for body in [datagram, datagram.get(16..).unwrap_or_default()] {
        let _ = parse_rule(body);
        let _ = parse_route(body);
        let _ = parse_address(body);
        let _ = parse_attrs(body);
    }
    if let Ok(msgs) = parse_messages(datagram) {
        for msg in msgs {
            let _ = parse_rule(&msg.payload);
            let _ = parse_route(&msg.payload);
            let _ = parse_address(&msg.payload);
        }
    }
}

#[test]
fn the_sample_replies_parse() {
    assert!(parse_rule(&rule_reply()[16..]).is_ok());
    assert!(parse_route(&route_reply()[16..]).is_ok());
    assert!(parse_address(&address_reply()[16..]).is_ok());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_rtnetlink_parsers(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        parse_everything(&bytes);
    }

    #[test]
    fn mutated_dump_replies_never_panic_the_rtnetlink_parsers(
        pick in 0usize..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = match pick {
            0 => rule_reply(),
            1 => route_reply(),
            2 => address_reply(),
            _ => [rule_reply(), route_reply(), address_reply()].concat(),
        };
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        parse_everything(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        parse_everything(&bytes);
    }
}
