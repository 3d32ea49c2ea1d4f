//! The nf_tables reply parsers on real kernel replies, mutated: dumps of tables, chains,
//! rules, sets and set elements (and the generation) taken from a namespace holding Istio's
//! TPROXY ruleset and a configuration with every statement kind, then bytes flipped and cut
//! at random. Every parser returns a value or an error — none panics — and the unmutated
//! replies read back as exactly the ruleset that was applied. (The same parsers on arbitrary
//! bytes and on mutated encoded messages are unit tests in `src/backend/nft_netlink/mod.rs`.)

mod support;

use std::os::fd::{AsRawFd, OwnedFd};

use meshinit::driver::nf_tables::NfTables;
use meshinit::render::netlink_wire::parse_messages;
use meshinit::render::nft_netlink::{
    self, compare_table, expected_tables, replace_batch, FoundTable,
};
use meshinit::render::nft_ruleset::{ruleset, Ruleset};
use nix::sys::socket::{
    bind, recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::apply::{default_args, plan_for};
use support::netlab::Lab;
use support::nft::{groups, in_netns};
use support::require_root;

/// Istio's TPROXY sidecar with DNS capture, IPv6, excluded and included CIDRs and ports,
/// owner groups and a wildcard interface: sets, marks, conntrack, tproxy, redirect, bitwise.
fn rich_ruleset() -> Ruleset {
    let mut args = default_args();
    args.extend(
        [
            "--istio-inbound-interception-mode=TPROXY",
            "--istio-exclude-interfaces=eth+",
            "--istio-service-cidr=10.16.0.0/12,2001:db8::/33",
            "--istio-service-exclude-cidr=10.16.32.0/20",
            "--istio-local-exclude-ports=7000,7001",
            "--istio-local-outbound-ports-exclude=9000",
            "--redirect-dns=true",
            "--capture-all-dns=true",
            "--drop-invalid=true",
            "--dns-servers=10.0.0.10,fd00::10",
            "--proxy-gid=1337,202",
        ]
        .map(String::from),
    );
    ruleset(&plan_for(&args, &[]))
}

/// A raw `NETLINK_NETFILTER` socket of the calling thread's namespace.
fn raw_socket() -> OwnedFd {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .expect("netlink socket");
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).expect("bind");
    fd
}

/// Sends `request` and returns every datagram of the reply, up to `NLMSG_DONE` or a
/// non-multipart answer.
fn exchange(fd: &OwnedFd, request: &[u8], dump: bool) -> Vec<Vec<u8>> {
    sendto(
        fd.as_raw_fd(),
        request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .expect("send");
    let mut datagrams = Vec::new();
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("recv");
        buf.truncate(n);
        let done = parse_messages(&buf)
            .expect("the kernel's datagram parses")
            .iter()
            .any(|m| m.kind == 3 || !dump);
        datagrams.push(buf);
        if done {
            return datagrams;
        }
    }
}

/// Real replies for our tables: every dump `--check` makes, plus the generation.
fn real_replies(fd: &OwnedFd, tables: &[String]) -> Vec<Vec<u8>> {
    let mut out = exchange(fd, &nft_netlink::gettable_dump_request(1), true);
    out.extend(exchange(fd, &nft_netlink::getchain_dump_request(2), true));
    out.extend(exchange(fd, &nft_netlink::getgen_request(3), false));
    let mut seq = 10;
    for table in tables {
        seq += 2;
        out.extend(exchange(
            fd,
            &nft_netlink::getrule_dump_request(seq, table),
            true,
        ));
        let sets = exchange(fd, &nft_netlink::getset_dump_request(seq + 1, table), true);
        for datagram in &sets {
            for msg in parse_messages(datagram).unwrap() {
                if let Ok((set, _, _)) = nft_netlink::parse_set(&msg.payload) {
                    seq += 1;
                    out.extend(exchange(
                        fd,
                        &nft_netlink::getsetelem_dump_request(seq + 100, table, &set),
                        true,
                    ));
                }
            }
        }
        out.extend(sets);
    }
    out
}

/// What `--check` does with replies, without a socket: split the datagrams, parse every
/// message as each kind of object, assemble the tables found and compare them with the
/// expected ones. Returns the differences (meaningful only for unmutated replies).
fn read_back(datagrams: &[Vec<u8>], expected: &[nft_netlink::CheckedTable]) -> Vec<String> {
    let mut tables: Vec<FoundTable> = Vec::new();
    let mut elems = Vec::new();
    for datagram in datagrams {
        let Ok(msgs) = parse_messages(datagram) else {
            continue;
        };
        for msg in msgs {
            let p = &msg.payload;
            let _ = nft_netlink::gen_id_of(p);
            // nf_tables messages only (subsystem 10 in the high byte), not NLMSG_DONE & co.
            if msg.kind >> 8 != 10 {
                continue;
            }
            match msg.kind & 0xff {
                0 => {
                    if let Ok((name, flags)) = nft_netlink::parse_table(p) {
                        tables.push(FoundTable {
                            name,
                            flags,
                            ..FoundTable::default()
                        });
                    }
                }
                3 => {
                    if let Ok(chain) = nft_netlink::parse_chain(p) {
                        if let Some(t) = tables.iter_mut().find(|t| t.name == chain.table) {
                            t.chains.push(chain);
                        }
                    }
                }
                6 => {
                    if let Ok(rule) = nft_netlink::parse_rule(p) {
                        if let Some(t) = tables.iter_mut().find(|t| t.name == rule.table) {
                            t.rules.push(rule);
                        }
                    }
                }
                12 => elems.extend(nft_netlink::parse_set_elems(p)),
                _ => {
                    let _ = nft_netlink::parse_set(p);
                }
            }
        }
    }
    for datagram in datagrams {
        for msg in parse_messages(datagram).unwrap_or_default() {
            if msg.kind != (10 << 8 | 9) {
                continue;
            }
            let Ok((name, _, mut contents)) = nft_netlink::parse_set(&msg.payload) else {
                continue;
            };
            for e in elems.iter().filter(|e| e.set == name) {
                contents.keys.extend(e.keys.iter().cloned());
            }
            contents.keys.sort();
            contents.keys.dedup();
            for t in &mut tables {
                if t.referenced_sets().contains(&name) {
                    t.sets.insert(name.clone(), contents.clone());
                }
            }
        }
    }
    let mut lines = Vec::new();
    for want in expected {
        match tables.iter().find(|t| t.name == want.name) {
            Some(found) => lines.extend(compare_table(want, &found.checked())),
            None => lines.push(format!("missing table {}", want.name)),
        }
    }
    lines
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn mutated_real_nf_tables_replies_never_panic_the_parsers() {
    if !require_root("mutated_real_nf_tables_replies_never_panic_the_parsers") {
        return;
    }
    let rs = rich_ruleset();
    let names: Vec<String> = rs.tables.iter().map(|t| t.name.clone()).collect();
    assert!(names.len() >= 2, "{names:?}");
    let gids = groups();
    let batch = replace_batch(&rs, &|g| gids.gid(g), 0, &[]).unwrap();
    let expected = expected_tables(&batch).unwrap();
    let lab = Lab::new().expect("lab");
    let applied = rs.clone();
    let replies = in_netns(&lab.pod, move || {
        NfTables::open()
            .unwrap()
            .apply_ruleset(&applied, &groups())
            .unwrap();
        real_replies(&raw_socket(), &names)
    });
    // Unmutated, the replies are exactly the ruleset applied.
    assert_eq!(read_back(&replies, &expected), Vec::<String>::new());

    let count = replies.len();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let strategy = (
        0..count,
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        any::<usize>(),
    );
    runner
        .run(&strategy, |(pick, flips, cut)| {
            let mut mutated = replies.clone();
            let bytes = &mut mutated[pick];
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            let _ = read_back(&mutated, &expected);
            let len = mutated[pick].len();
            mutated[pick].truncate(cut % (len + 1));
            let _ = read_back(&mutated, &expected);
            Ok(())
        })
        .unwrap();
}
