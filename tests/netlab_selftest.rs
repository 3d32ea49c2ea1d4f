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
