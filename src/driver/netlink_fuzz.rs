//! Fuzzing of the rtnetlink reply parsers of `netlink.rs` (policy rules, routes, addresses,
//! and the datagrams that carry them): arbitrary bytes and mutated dump replies, built the
//! way the kernel dumps them and taken from a real kernel, give an error or a value — never
//! a panic. A child module so it
//! can reach the private parsers while staying out of the file whose behaviour it tests.

use std::os::fd::AsRawFd;
use std::process::Command;

use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{
    bind, recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::{parse_address, parse_route, parse_rule};
use crate::render::netlink_wire::{message, parse_attrs, parse_messages, put_attr};

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

/// Runs `ip` in the calling thread's namespace.
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split(' '))
        .output()
        .expect("running ip");
    assert!(out.status.success(), "ip {args}: {out:?}");
}

/// Every datagram of a dump (`kind`, family `family`) from a raw rtnetlink socket.
fn real_dump(kind: u16, family: u8, seq: u32) -> Vec<Vec<u8>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .expect("rtnetlink socket");
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).expect("bind");
    // rtgenmsg/rtmsg/ifaddrmsg all start with the family; the rest may be zero.
    let mut body = vec![family];
    body.resize(12, 0);
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let request = message(kind, flags, seq, &body);
    sendto(
        fd.as_raw_fd(),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .expect("send");
    let mut out = Vec::new();
    loop {
        let mut buf = vec![0u8; 1 << 16];
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("recv");
        buf.truncate(n);
        let done = parse_messages(&buf)
            .expect("the kernel's datagram parses")
            .iter()
            .any(|m| m.kind == libc::NLMSG_DONE as u16);
        out.push(buf);
        if done {
            return out;
        }
    }
}

/// Real rule, route and address dumps of a namespace holding what meshinit installs under
/// TPROXY (fwmark rules, local default routes, `::6` on lo) and more (a gateway route, a
/// rule with other selectors), flipped and cut at random: no parser panics, and unmutated
/// every message of its kind parses.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn mutated_real_rtnetlink_dumps_never_panic_the_parsers() {
    // As `require_root` of the integration tests: a skip, unless CI says it may not.
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "needs root for a network namespace, and CI is set so it may not skip"
        );
        eprintln!("note: skipping mutated_real_rtnetlink_dumps_never_panic_the_parsers: not root");
        return;
    }
    let dumps = std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        for cmd in [
            "link set lo up",
            "link add d0 type veth peer name d1",
            "link set d1 up",
            "link set d0 up",
            "addr add 192.0.2.1/24 dev d0",
            "-6 addr add ::6/128 dev lo",
            "-6 addr add 2001:db8::1/64 dev d0 nodad",
            "rule add fwmark 1337 lookup 133",
            "-6 rule add fwmark 1337 lookup 133",
            "rule add from 192.0.2.0/24 iif d0 tos 0x10 lookup 1000 priority 50",
            "route add local default dev lo table 133",
            "-6 route add local default dev lo table 133",
            "route add 198.51.100.0/24 via 192.0.2.2 dev d0 metric 7",
        ] {
            ip(cmd);
        }
        let mut dumps = Vec::new();
        for (i, (kind, family)) in [
            (libc::RTM_GETRULE, libc::AF_INET),
            (libc::RTM_GETRULE, libc::AF_INET6),
            (libc::RTM_GETROUTE, libc::AF_INET),
            (libc::RTM_GETROUTE, libc::AF_INET6),
            (libc::RTM_GETADDR, libc::AF_INET6),
        ]
        .into_iter()
        .enumerate()
        {
            dumps.push((kind, real_dump(kind, family as u8, i as u32 + 1)));
        }
        dumps
    })
    .join()
    .expect("dump thread");

    // Unmutated: every rule, route and address message parses.
    let mut parsed = 0;
    for (kind, datagrams) in &dumps {
        for datagram in datagrams {
            for msg in parse_messages(datagram).unwrap() {
                let ok = match msg.kind {
                    libc::RTM_NEWRULE => parse_rule(&msg.payload).is_ok(),
                    libc::RTM_NEWROUTE => parse_route(&msg.payload).is_ok(),
                    libc::RTM_NEWADDR => parse_address(&msg.payload).is_ok(),
                    _ => continue,
                };
                assert!(ok, "a real reply to dump {kind} does not parse: {msg:?}");
                parsed += 1;
            }
        }
    }
    assert!(parsed >= 12, "only {parsed} objects dumped");

    let datagrams: Vec<Vec<u8>> = dumps.into_iter().flat_map(|(_, d)| d).collect();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let strategy = (
        0..datagrams.len(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        any::<usize>(),
    );
    TestRunner::new(Config::with_cases(cases))
        .run(&strategy, |(pick, flips, cut)| {
            let mut bytes = datagrams[pick].clone();
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            parse_everything(&bytes);
            bytes.truncate(cut % (bytes.len() + 1));
            parse_everything(&bytes);
            Ok(())
        })
        .unwrap();
}
