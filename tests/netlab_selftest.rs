//! Self-tests of the netns traffic lab: with Istio's own rulesets applied in a fresh pod
//! namespace, real connections land where Istio's semantics say they must, and without rules
//! they do not, so the lab can tell capture from no capture.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use support::netlab::{Client, ClientError, Creds, Lab, Landing, Listener, ListenerSpec, Netns};
use support::{iptables_case, nftables_case, require_root};

const APP_UID: u32 = 1000;
const PROXY_ID: u32 = 1337;

fn lab() -> Lab {
    Lab::new().expect("creating the lab namespaces")
}

fn app() -> Client {
    Client::user(APP_UID, APP_UID)
}

fn proxy() -> Client {
    Client::user(PROXY_ID, PROXY_ID)
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

fn any4(port: u16) -> SocketAddr {
    v4([0, 0, 0, 0], port)
}

fn any6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port)
}

fn listen(ns: &Netns, spec: ListenerSpec) -> Listener {
    spec.start(ns).expect("starting a listener")
}

/// (listener name, original destination) of a landing; panics with the failure otherwise.
fn at(what: &str, r: Result<Landing, ClientError>) -> (String, Option<SocketAddr>) {
    match r {
        Ok(l) => (l.listener, l.original_dst),
        Err(e) => panic!("{what}: expected a landing, got: {e}"),
    }
}

fn landed(name: &str, orig: SocketAddr) -> (String, Option<SocketAddr>) {
    (name.to_string(), Some(orig))
}

/// The harness must be able to say "not captured": with no rules, app traffic reaches the peer
/// and never the outbound listener, and misses fail fast and distinctly.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn without_rules_nothing_is_captured() {
    if !require_root("without_rules_nothing_is_captured") {
        return;
    }
    let lab = lab();
    let outbound = listen(&lab.pod, ListenerSpec::tcp("outbound-15001", any4(15001)));
    let _peer = listen(&lab.peer, ListenerSpec::tcp("peer-80", any4(80)));
    let _peer6 = listen(&lab.peer, ListenerSpec::tcp("peer-80-v6", any6(80)));

    assert_eq!(
        at("app->peer:80", app().tcp(&lab.pod, lab.peer4(80))),
        landed("peer-80", lab.peer4(80))
    );
    assert_eq!(
        at("app->[peer]:80", app().tcp(&lab.pod, lab.peer6(80))),
        landed("peer-80-v6", lab.peer6(80))
    );
    assert_eq!(
        outbound.hits(),
        0,
        "outbound listener must not see uncaptured traffic"
    );

    assert_eq!(
        app().tcp(&lab.pod, lab.peer4(81)),
        Err(ClientError::Refused)
    );
    let nobody = SocketAddr::new(
        IpAddr::V4(lab.peer_v4.to_bits().wrapping_add(97).into()),
        80,
    );
    let quick = app().timeout(Duration::from_millis(300));
    assert_eq!(quick.tcp(&lab.pod, nobody), Err(ClientError::Timeout));
}

/// The client's credentials are what owner matching sees, and switching them touches only the
/// client thread, never the test process.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn owner_match_sees_client_thread_credentials() {
    if !require_root("owner_match_sees_client_thread_credentials") {
        return;
    }
    let lab = lab();
    lab.pod.iptables_restore(
        "*nat\n\
         -A OUTPUT -p tcp -m owner --uid-owner 4242 -j REDIRECT --to-ports 15001\n\
         -A OUTPUT -p tcp -m owner --gid-owner 4343 -j REDIRECT --to-ports 15001\n\
         COMMIT\n",
    );
    let _out = listen(&lab.pod, ListenerSpec::tcp("outbound-15001", any4(15001)));
    let _peer = listen(&lab.peer, ListenerSpec::tcp("peer-80", any4(80)));
    let dst = lab.peer4(80);
    let captured = landed("outbound-15001", dst);
    let direct = landed("peer-80", dst);

    assert_eq!(
        at("uid 4242", Client::user(4242, 1).tcp(&lab.pod, dst)),
        captured
    );
    assert_eq!(
        at("gid 4343", Client::user(1, 4343).tcp(&lab.pod, dst)),
        captured
    );
    assert_eq!(at("uid/gid 1000", app().tcp(&lab.pod, dst)), direct);
    assert_eq!(at("root", Client::root().tcp(&lab.pod, dst)), direct);
    // --gid-owner without --suppl-groups looks at the primary gid only.
    let suppl = Client::with_creds(Creds::new(1000, 1000).with_groups(&[4343]));
    assert_eq!(at("supplementary 4343", suppl.tcp(&lab.pod, dst)), direct);

    assert!(nix::unistd::getuid().is_root() && nix::unistd::getgid().as_raw() == 0);
    assert!(nix::unistd::geteuid().is_root() && nix::unistd::getegid().as_raw() == 0);
}

/// `--istio-inbound-ports=*` with REDIRECT: all inbound TCP except the tunnel port goes to
/// 15006; outbound is not captured (no service CIDR); the proxy is never captured, except that
/// its own traffic to the pod IP over lo counts as inbound; 127.0.0.6-sourced passthrough is not.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn inbound_ports_wildcard() {
    if !require_root("inbound_ports_wildcard") {
        return;
    }
    let lab = lab();
    lab.pod
        .iptables_restore(&iptables_case("inbound-ports-wildcard", "ipv4.rules"));
    let pod = &lab.pod;
    let _inbound = listen(pod, ListenerSpec::tcp("inbound-15006", any4(15006)));
    let outbound = listen(pod, ListenerSpec::tcp("outbound-15001", any4(15001)));
    let _app = listen(pod, ListenerSpec::tcp("app-8080", any4(8080)));
    let _tunnel = listen(pod, ListenerSpec::tcp("tunnel-15008", any4(15008)));
    let _peer = listen(&lab.peer, ListenerSpec::tcp("peer-80", any4(80)));

    let from_peer = Client::root();
    assert_eq!(
        at("peer->pod:8080", from_peer.tcp(&lab.peer, lab.pod4(8080))),
        landed("inbound-15006", lab.pod4(8080))
    );
    assert_eq!(
        at("peer->pod:15008", from_peer.tcp(&lab.peer, lab.pod4(15008))),
        landed("tunnel-15008", lab.pod4(15008))
    );
    assert_eq!(
        at("app->peer:80", app().tcp(pod, lab.peer4(80))),
        landed("peer-80", lab.peer4(80))
    );
    assert_eq!(
        at("proxy->peer:80", proxy().tcp(pod, lab.peer4(80))),
        landed("peer-80", lab.peer4(80))
    );
    assert_eq!(
        at("app->pod:8080 over lo", app().tcp(pod, lab.pod4(8080))),
        landed("app-8080", lab.pod4(8080))
    );
    assert_eq!(
        at("proxy->pod:8080 over lo", proxy().tcp(pod, lab.pod4(8080))),
        landed("inbound-15006", lab.pod4(8080))
    );
    let passthrough = proxy().bind(v4([127, 0, 0, 6], 0));
    let l = passthrough
        .tcp(pod, lab.pod4(8080))
        .expect("127.0.0.6 passthrough");
    assert_eq!(
        (l.listener.as_str(), l.remote.ip()),
        ("app-8080", IpAddr::from([127, 0, 0, 6]))
    );
    assert_eq!(outbound.hits(), 0);
}

/// The only iptables case that sends all outbound TCP to 15001 (`-A ISTIO_OUTPUT -j
/// ISTIO_REDIRECT`): the app is captured; proxy uid or proxy gid is not; loopback is not.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn kube_virt_interfaces_outbound_capture() {
    if !require_root("kube_virt_interfaces_outbound_capture") {
        return;
    }
    let lab = lab();
    lab.pod
        .iptables_restore(&iptables_case("kube-virt-interfaces", "ipv4.rules"));
    let pod = &lab.pod;
    let _outbound = listen(pod, ListenerSpec::tcp("outbound-15001", any4(15001)));
    let _app = listen(pod, ListenerSpec::tcp("app-8080", any4(8080)));
    let _peer = listen(&lab.peer, ListenerSpec::tcp("peer-80", any4(80)));
    let dst = lab.peer4(80);

    assert_eq!(
        at("app uid", app().tcp(pod, dst)),
        landed("outbound-15001", dst)
    );
    assert_eq!(
        at("proxy uid", proxy().tcp(pod, dst)),
        landed("peer-80", dst)
    );
    assert_eq!(
        at(
            "proxy uid, app gid",
            Client::user(PROXY_ID, APP_UID).tcp(pod, dst)
        ),
        landed("peer-80", dst)
    );
    assert_eq!(
        at(
            "app uid, proxy gid",
            Client::user(APP_UID, PROXY_ID).tcp(pod, dst)
        ),
        landed("peer-80", dst)
    );
    let lo = v4([127, 0, 0, 1], 8080);
    assert_eq!(
        at("app->127.0.0.1", app().tcp(pod, lo)),
        landed("app-8080", lo)
    );
}

/// `--istio-service-cidr=10.0.0.0/8`: only destinations inside the CIDR are captured.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn ipnets_capture_only_included_cidr() {
    if !require_root("ipnets_capture_only_included_cidr") {
        return;
    }
    let lab = lab();
    let outside = v4([192, 0, 2, 80], 80);
    lab.add_peer_addr(outside.ip())
        .expect("second peer address");
    lab.pod
        .iptables_restore(&iptables_case("ipnets", "ipv4.rules"));
    let _outbound = listen(&lab.pod, ListenerSpec::tcp("outbound-15001", any4(15001)));
    let _peer = listen(&lab.peer, ListenerSpec::tcp("peer-80", any4(80)));

    assert!(
        lab.peer_v4.octets()[0] == 10,
        "the lab subnet must be inside 10.0.0.0/8"
    );
    assert_eq!(
        at("app->10.x peer", app().tcp(&lab.pod, lab.peer4(80))),
        landed("outbound-15001", lab.peer4(80))
    );
    assert_eq!(
        at("app->192.0.2.80", app().tcp(&lab.pod, outside)),
        landed("peer-80", outside)
    );
}

/// `--istio-inbound-ports=4000,5000` with IPv6 on: listed ports are captured over both
/// families with the right original destination; other ports reach the app.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn ipv6_inbound_ports() {
    if !require_root("ipv6_inbound_ports") {
        return;
    }
    let lab = lab();
    lab.pod
        .iptables_restore(&iptables_case("ipv6-inbound-ports", "ipv4.rules"));
    lab.pod
        .ip6tables_restore(&iptables_case("ipv6-inbound-ports", "ipv6.rules"));
    let pod = &lab.pod;
    let _in4 = listen(pod, ListenerSpec::tcp("inbound-15006", any4(15006)));
    let _in6 = listen(pod, ListenerSpec::tcp("inbound-15006-v6", any6(15006)));
    let _app6 = listen(pod, ListenerSpec::tcp("app-4001-v6", any6(4001)));
    let from_peer = Client::root();

    assert_eq!(
        at("peer->[pod]:4000", from_peer.tcp(&lab.peer, lab.pod6(4000))),
        landed("inbound-15006-v6", lab.pod6(4000))
    );
    assert_eq!(
        at("peer->[pod]:5000", from_peer.tcp(&lab.peer, lab.pod6(5000))),
        landed("inbound-15006-v6", lab.pod6(5000))
    );
    assert_eq!(
        at("peer->[pod]:4001", from_peer.tcp(&lab.peer, lab.pod6(4001))),
        landed("app-4001-v6", lab.pod6(4001))
    );
    assert_eq!(
        at("peer->pod:4000", from_peer.tcp(&lab.peer, lab.pod4(4000))),
        landed("inbound-15006", lab.pod4(4000))
    );
}

/// TPROXY inbound capture: listed ports reach the transparent 15006 listener with the original
/// destination as the socket's own local address and the peer's source address intact.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn inbound_ports_tproxy() {
    if !require_root("inbound_ports_tproxy") {
        return;
    }
    let lab = lab();
    // What istio-init sets up next to the rules for TPROXY mode.
    lab.pod.run(
        &["ip", "-4", "rule", "add", "fwmark", "1337", "lookup", "133"],
        None,
    );
    lab.pod.run(
        &[
            "ip",
            "-4",
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            "133",
        ],
        None,
    );
    lab.pod
        .iptables_restore(&iptables_case("inbound-ports-tproxy", "ipv4.rules"));
    let pod = &lab.pod;
    let _inbound = listen(
        pod,
        ListenerSpec::tcp("inbound-15006", any4(15006)).transparent(),
    );
    let _app = listen(pod, ListenerSpec::tcp("app-31500", any4(31500)));
    let from_peer = Client::root();

    let l = from_peer
        .tcp(&lab.peer, lab.pod4(32000))
        .expect("peer->pod:32000");
    assert_eq!(
        (l.listener.as_str(), l.original_dst, l.local, l.remote.ip()),
        (
            "inbound-15006",
            Some(lab.pod4(32000)),
            lab.pod4(32000),
            IpAddr::V4(lab.peer_v4)
        )
    );
    assert_eq!(
        at("peer->pod:31000", from_peer.tcp(&lab.peer, lab.pod4(31000))),
        landed("inbound-15006", lab.pod4(31000))
    );
    assert_eq!(
        at("peer->pod:31500", from_peer.tcp(&lab.peer, lab.pod4(31500))),
        landed("app-31500", lab.pod4(31500))
    );
}

/// TPROXY with inbound `*` over both families (case `tproxy`): the peer reaches the transparent
/// listeners with its source intact; the proxy's own lo traffic to the pod IP is REDIRECTed by
/// the nat table to the same listener; the app's own lo traffic is left alone.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn tproxy_dual_stack() {
    if !require_root("tproxy_dual_stack") {
        return;
    }
    let lab = lab();
    for (family, any) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        lab.pod.run(
            &[
                "ip", family, "rule", "add", "fwmark", "1337", "lookup", "133",
            ],
            None,
        );
        lab.pod.run(
            &[
                "ip", family, "route", "add", "local", any, "dev", "lo", "table", "133",
            ],
            None,
        );
    }
    lab.pod
        .iptables_restore(&iptables_case("tproxy", "ipv4.rules"));
    lab.pod
        .ip6tables_restore(&iptables_case("tproxy", "ipv6.rules"));
    let pod = &lab.pod;
    let _in4 = listen(
        pod,
        ListenerSpec::tcp("inbound-15006", any4(15006)).transparent(),
    );
    let _in6 = listen(
        pod,
        ListenerSpec::tcp("inbound-15006-v6", any6(15006)).transparent(),
    );
    let _app4 = listen(pod, ListenerSpec::tcp("app-8080", any4(8080)));
    let _app6 = listen(pod, ListenerSpec::tcp("app-8080-v6", any6(8080)));

    for (name, dst, src) in [
        ("inbound-15006", lab.pod4(8080), IpAddr::V4(lab.peer_v4)),
        ("inbound-15006-v6", lab.pod6(8080), IpAddr::V6(lab.peer_v6)),
    ] {
        let l = Client::root()
            .tcp(&lab.peer, dst)
            .unwrap_or_else(|e| panic!("peer->{dst}: {e}"));
        assert_eq!(
            (l.listener.as_str(), l.original_dst, l.local, l.remote.ip()),
            (name, Some(dst), dst, src)
        );
    }
    for (name, dst) in [
        ("inbound-15006", lab.pod4(8080)),
        ("inbound-15006-v6", lab.pod6(8080)),
    ] {
        assert_eq!(
            at("proxy->own pod IP", proxy().tcp(pod, dst)),
            landed(name, dst)
        );
    }
    for (name, dst) in [
        ("app-8080", lab.pod4(8080)),
        ("app-8080-v6", lab.pod6(8080)),
    ] {
        assert_eq!(
            at("app->own pod IP", app().tcp(pod, dst)),
            landed(name, dst)
        );
    }
}

/// DNS capture (`--redirect-dns`, proxy uids 3,4 and gids 1,2): app queries to the resolver
/// 127.0.0.53:53 over UDP and TCP reach the DNS proxy on 127.0.0.1:15053, which runs as the
/// proxy uid so its UDP answers get conntrack zone 2 and are un-NATed on the way back; the
/// proxy's own queries reach the real resolver.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn dns_capture_by_owner() {
    if !require_root("dns_capture_by_owner") {
        return;
    }
    let lab = lab();
    lab.pod
        .iptables_restore(&iptables_case("dns-uid-gid", "ipv4.rules"));
    let pod = &lab.pod;
    let dns_proxy = v4([127, 0, 0, 1], 15053);
    let resolver = v4([127, 0, 0, 53], 53);
    let as_proxy = Creds::new(3, 1);
    let _proxy_udp = listen(
        pod,
        ListenerSpec::udp("dns-proxy-udp", dns_proxy).run_as(as_proxy.clone()),
    );
    let _proxy_tcp = listen(
        pod,
        ListenerSpec::tcp("dns-proxy-tcp", dns_proxy).run_as(as_proxy),
    );
    let _resolver_udp = listen(pod, ListenerSpec::udp("resolver-udp", resolver));
    let _resolver_tcp = listen(pod, ListenerSpec::tcp("resolver-tcp", resolver));

    let udp = app().udp(pod, resolver).expect("app UDP query");
    assert_eq!(udp.listener, "dns-proxy-udp");
    assert_eq!(udp.local, dns_proxy);
    assert_eq!(
        at("app TCP query", app().tcp(pod, resolver)),
        landed("dns-proxy-tcp", resolver)
    );

    for (who, client) in [
        ("proxy uid 3", Client::user(3, 3)),
        ("proxy uid 4", Client::user(4, APP_UID)),
    ] {
        let udp = client
            .udp(pod, resolver)
            .unwrap_or_else(|e| panic!("{who} UDP: {e}"));
        assert_eq!((who, udp.listener.as_str()), (who, "resolver-udp"));
        assert_eq!(
            at(who, client.tcp(pod, resolver)),
            landed("resolver-tcp", resolver)
        );
    }

    // Istio's asymmetry, faithfully reproduced: the --gid-owner "proxy talks to itself over lo"
    // rule excludes only the tunnel port, not 53 as the --uid-owner rule does, so a TCP query
    // from the proxy gid is sent to the inbound listener. UDP is not affected.
    let _inbound = listen(pod, ListenerSpec::tcp("inbound-15006", any4(15006)));
    let gid_only = Client::user(APP_UID, 2);
    let udp = gid_only.udp(pod, resolver).expect("proxy gid UDP");
    assert_eq!(udp.listener, "resolver-udp");
    assert_eq!(
        at("proxy gid TCP", gid_only.tcp(pod, resolver)),
        landed("inbound-15006", resolver)
    );
}

/// Listener credentials matter: a DNS proxy running as root answers from conntrack zone 0, so
/// its answer is not un-NATed and the app's connected socket never sees it.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn dns_answer_from_wrong_owner_is_lost() {
    if !require_root("dns_answer_from_wrong_owner_is_lost") {
        return;
    }
    let lab = lab();
    lab.pod
        .iptables_restore(&iptables_case("dns-uid-gid", "ipv4.rules"));
    let root_proxy = listen(
        &lab.pod,
        ListenerSpec::udp("dns-proxy-udp", v4([127, 0, 0, 1], 15053)),
    );
    let quick = app().timeout(Duration::from_millis(300));
    assert_eq!(
        quick.udp(&lab.pod, v4([127, 0, 0, 53], 53)),
        Err(ClientError::Timeout)
    );
    assert_eq!(
        root_proxy.hits(),
        1,
        "the query itself was still redirected"
    );
}

/// The same semantics through nftables: Istio's native-nftables ruleset for inbound `*`.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn nft_inbound_ports_wildcard() {
    if !require_root("nft_inbound_ports_wildcard") {
        return;
    }
    let lab = lab();
    lab.pod.nft_apply(&nftables_case("inbound-ports-wildcard"));
    let _inbound = listen(&lab.pod, ListenerSpec::tcp("inbound-15006", any4(15006)));
    let _app = listen(&lab.pod, ListenerSpec::tcp("app-8080", any4(8080)));
    assert_eq!(
        at(
            "peer->pod:8080",
            Client::root().tcp(&lab.peer, lab.pod4(8080))
        ),
        landed("inbound-15006", lab.pod4(8080))
    );
    assert_eq!(
        at("app->pod:8080 over lo", app().tcp(&lab.pod, lab.pod4(8080))),
        landed("app-8080", lab.pod4(8080))
    );
    assert_eq!(
        at(
            "proxy->pod:8080 over lo",
            proxy().tcp(&lab.pod, lab.pod4(8080))
        ),
        landed("inbound-15006", lab.pod4(8080))
    );
}
