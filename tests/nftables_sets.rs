//! Long lists under the native backend: 5,000 included and 5,000 excluded CIDRs (nested and
//! overlapping ones among them, both families) and thousands of inbound and excluded outbound
//! ports, applied by the binary as set lookups (`--nft-sets=auto`) and, for comparison, as a
//! rule per entry (`--nft-sets=never`). Real TCP connections land exactly alike; `--check`
//! reads the sets back by contents and reports a tampered element; a re-run leaves the same
//! ruleset; cleanup leaves nothing of ours.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use support::apply::meshinit;
use support::netlab::{Client, ClientError, Lab, Landing, Listener, ListenerSpec, Netns};
use support::nft::{chain_with_handles, listing, rule_count};
use support::require_root;

const APP: u32 = 1000;
const PROXY: u32 = 1337;
const OUTBOUND_PORT: u16 = 15001;
const INBOUND_PORT: u16 = 15006;

/// An address of the peer inside an excluded network.
const EXCLUDED4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 7);
/// Inside both of two nested excluded networks (10.97.0.0/16 ⊃ 10.97.1.0/24).
const NESTED4: Ipv4Addr = Ipv4Addr::new(10, 97, 1, 7);
/// Inside two overlapping excluded networks' common part (10.95.128.0/17 and 10.95.0.0/16).
const OVERLAP4: Ipv4Addr = Ipv4Addr::new(10, 95, 200, 7);
/// Outside every included network.
const OUTSIDE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

fn excluded6() -> Ipv6Addr {
    "fd99::7".parse().unwrap()
}

fn outside6() -> Ipv6Addr {
    "2001:db8:ffff::7".parse().unwrap()
}

/// 5,000 included networks: the lab's (10.0.0.0/8, fd00::/8) among 2,499 IPv4 /24s in
/// 100.64.0.0/10 and 2,499 IPv6 /48s in 2001:db8::/32 that the test never connects to (every
/// other one, so that they do not merge into one range).
fn included() -> String {
    let mut v = vec!["10.0.0.0/8".to_string(), "fd00::/8".to_string()];
    v.extend((0..2499).map(|i| format!("100.{}.{}.0/24", 64 + 2 * i / 256, 2 * i % 256)));
    v.extend((0..2499).map(|i| format!("2001:db8:{:x}::/48", 2 * i)));
    v.join(",")
}

/// 5,000 excluded networks: the peer's excluded, nested and overlapping ones, fd99::/16, and
/// fillers (every other IPv4 /24 in 172.16.0.0/12 and IPv6 /64 in fd50::/16).
fn excluded() -> String {
    let mut v: Vec<String> = [
        "10.99.0.0/16",
        "10.97.1.0/24",
        "10.97.0.0/16",
        "10.95.128.0/17",
        "10.95.0.0/16",
        "fd99::/16",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend((0..2497).map(|i| format!("172.{}.{}.0/24", 16 + 2 * i / 256, 2 * i % 256)));
    v.extend((0..2497).map(|i| format!("fd50:0:0:{:x}::/64", 2 * i)));
    assert_eq!(v.len(), 5000);
    v.join(",")
}

/// Inbound ports: 2,000 of them (8080 among them, 8081 not).
fn inbound_ports() -> String {
    let mut v: Vec<String> = (20000..21999).map(|p| p.to_string()).collect();
    v.push("8080".into());
    v.join(",")
}

/// Outbound ports never captured: 2,000 (81 among them, 82 not).
fn excluded_ports() -> String {
    let mut v: Vec<String> = (30000..31999).map(|p| p.to_string()).collect();
    v.push("81".into());
    v.join(",")
}

fn args(sets: &str) -> Vec<String> {
    [
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "--native-nftables",
        "--ipv6=true",
        "--dns-servers=",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("-i={}", included()),
        format!("-x={}", excluded()),
        format!("-b={}", inbound_ports()),
        format!("-o={}", excluded_ports()),
        format!("--nft-sets={sets}"),
    ])
    .collect()
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn listen(ns: &Netns, name: &str, at: SocketAddr) -> Listener {
    ListenerSpec::tcp(name, at)
        .start(ns)
        .unwrap_or_else(|e| panic!("listener {name} on {at}: {e}"))
}

#[track_caller]
fn lands(what: &str, got: Result<Landing, ClientError>, listener: &str, original: SocketAddr) {
    match got {
        Ok(l) if l.listener == listener && l.original_dst == Some(original) => {}
        Ok(l) => panic!("{what}: expected {listener} with original dst {original}, landed: {l}"),
        Err(e) => panic!("{what}: expected {listener} with original dst {original}: {e}"),
    }
}

/// Every connection of the scenario lands where Istio's semantics say.
fn traffic(lab: &Lab) {
    let (pod, peer) = (&lab.pod, &lab.peer);
    let app = Client::user(APP, APP);
    for (what, dst, listener) in [
        ("included", lab.peer4(80), "outbound"),
        ("excluded", addr(EXCLUDED4, 80), "peer-80"),
        ("inside nested exclusions", addr(NESTED4, 80), "peer-80"),
        (
            "inside overlapping exclusions",
            addr(OVERLAP4, 80),
            "peer-80",
        ),
        ("outside every list", addr(OUTSIDE4, 80), "peer-80"),
        ("included v6", lab.peer6(80), "outbound6"),
        ("excluded v6", addr(excluded6(), 80), "peer6-80"),
        ("outside every list v6", addr(outside6(), 80), "peer6-80"),
        ("excluded port 81", lab.peer4(81), "peer-81"),
        ("port 82, not excluded", lab.peer4(82), "outbound"),
    ] {
        lands(
            &format!("app->{dst} ({what})"),
            app.tcp(pod, dst),
            listener,
            dst,
        );
    }
    let dst = lab.peer4(80);
    let proxy = Client::user(PROXY, PROXY);
    lands("proxy->included", proxy.tcp(pod, dst), "peer-80", dst);
    for (what, port, listener) in [
        ("listed inbound port", 8080, "inbound"),
        ("listed inbound port", 20500, "inbound"),
        ("unlisted inbound port", 8081, "app-8081"),
    ] {
        let dst = lab.pod4(port);
        lands(
            &format!("peer->pod:{port} ({what})"),
            Client::root().tcp(peer, dst),
            listener,
            dst,
        );
    }
}

fn scenario(sets: &str) {
    let lab = Lab::new().expect("lab");
    for a in [
        IpAddr::V4(EXCLUDED4),
        IpAddr::V4(NESTED4),
        IpAddr::V4(OVERLAP4),
        IpAddr::V4(OUTSIDE4),
        IpAddr::V6(excluded6()),
        IpAddr::V6(outside6()),
    ] {
        lab.add_peer_addr(a).expect("extra peer address");
    }
    let any4 = |p| addr(Ipv4Addr::UNSPECIFIED, p);
    let any6 = |p| addr(Ipv6Addr::UNSPECIFIED, p);
    let _listeners = [
        listen(&lab.pod, "outbound", any4(OUTBOUND_PORT)),
        listen(&lab.pod, "outbound6", any6(OUTBOUND_PORT)),
        listen(&lab.pod, "inbound", any4(INBOUND_PORT)),
        listen(&lab.pod, "app-8081", any4(8081)),
        listen(&lab.peer, "peer-80", any4(80)),
        listen(&lab.peer, "peer6-80", any6(80)),
        listen(&lab.peer, "peer-81", any4(81)),
        listen(&lab.peer, "peer-82", any4(82)),
    ];
    let args = args(sets);
    let before = (listing(&lab.pod), addresses(&lab.pod));
    let out = meshinit(&lab.pod, &args, &[]);
    assert_eq!(out.code, Some(0), "apply: {}", tail(&out.stderr));
    let rules = rule_count(&lab.pod);
    let installed = listing(&lab.pod);
    if sets == "never" {
        assert!(rules > 14_000, "{rules} rules");
        assert!(!installed.contains("daddr {"), "no set expected");
    } else {
        assert!(rules < 40, "{rules} rules");
        for set in [
            "ip daddr { 10.0.0.0/8, ",
            "ip6 daddr { 2001:db8::/",
            "tcp dport { 8080, 20000, ",
            "udp dport { 81, 30000, ",
        ] {
            assert!(installed.contains(set), "no `{set}` in the ruleset");
        }
    }
    traffic(&lab);

    let mut check = args.clone();
    check.push("--check".into());
    let out = meshinit(&lab.pod, &check, &[]);
    assert_eq!(out.code, Some(0), "--check: {}", tail(&out.stderr));

    // A re-run leaves the same ruleset.
    let out = meshinit(&lab.pod, &args, &[]);
    assert_eq!(out.code, Some(0), "re-run: {}", tail(&out.stderr));
    assert!(
        listing(&lab.pod) == installed,
        "a re-run changed the ruleset"
    );
    traffic(&lab);

    if sets != "never" {
        tamper_and_check(&lab, &check);
    }

    let mut cleanup = args.clone();
    cleanup.push("--cleanup-only".into());
    let out = meshinit(&lab.pod, &cleanup, &[]);
    assert_eq!(out.code, Some(0), "cleanup: {}", tail(&out.stderr));
    let after = (listing(&lab.pod), addresses(&lab.pod));
    assert!(
        after == before,
        "cleanup left the namespace changed: {after:?}"
    );
}

/// The pod's addresses (meshinit adds `::6` on lo with IPv6).
fn addresses(ns: &Netns) -> String {
    String::from_utf8_lossy(&ns.run(&["ip", "-br", "addr"], None).stdout).into_owned()
}

/// One element of the excluded set replaced (10.99.0.0/16 → 10.99.0.0/17, so 10.99.200.0 is
/// no longer excluded): `--check` names the rule as different.
fn tamper_and_check(lab: &Lab, check: &[String]) {
    let chain = chain_with_handles(&lab.pod, "istio-proxy-nat", "istio-output");
    let line = chain
        .lines()
        .find(|l| l.contains("10.99.0.0/16"))
        .unwrap_or_else(|| panic!("no set with 10.99.0.0/16 in\n{chain}"));
    let (body, handle) = line.trim().rsplit_once(" # handle ").unwrap();
    let body = body.replace("10.99.0.0/16", "10.99.0.0/17");
    // In place of the rule, in one transaction (nft 1.0.6's `replace rule` aborts on an
    // interval set).
    let chain = "inet istio-proxy-nat istio-output";
    let script = format!(
        "insert rule {chain} position {handle} {body}\ndelete rule {chain} handle {handle}\n"
    );
    lab.pod.nft_apply(&script);
    let out = meshinit(&lab.pod, check, &[]);
    assert_eq!(
        out.code,
        Some(3),
        "--check after tampering: {}",
        tail(&out.stderr)
    );
    let differences: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("istio-proxy-nat/istio-output:"))
        .collect();
    assert_eq!(differences.len(), 1, "{}", tail(&out.stderr));
    assert!(
        differences[0].contains("differs") && differences[0].contains("10.99.0.0/16"),
        "{}",
        &differences[0][..differences[0].len().min(400)]
    );
}

/// The last lines of a log (the configuration line lists thousands of entries).
fn tail(stderr: &str) -> String {
    let lines: Vec<String> = stderr
        .lines()
        .map(|l| l.chars().take(600).collect())
        .collect();
    lines[lines.len().saturating_sub(6)..].join("\n")
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn five_thousand_entries_as_sets_route_real_traffic_exactly() {
    if !require_root("five_thousand_entries_as_sets_route_real_traffic_exactly") {
        return;
    }
    scenario("auto");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn five_thousand_entries_as_rules_route_the_same_traffic() {
    if !require_root("five_thousand_entries_as_rules_route_the_same_traffic") {
        return;
    }
    scenario("never");
}
