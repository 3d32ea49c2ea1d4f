//! CNI mode on a real kernel: the binary run as a CNI runtime runs a chained plugin, with a
//! lab pod namespace as `CNI_NETNS`. `ADD` installs the rules (real traffic lands on the
//! proxy's port) and prints `prevResult`; `CHECK` passes; `DEL` leaves the namespace exactly
//! as before, and again succeeds when there is nothing left; a failing `ADD` changes nothing.
//! (`scripts/pod_test_cni.py` drives the same binary from podman's CNI backend.)

mod support;

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::Value;
use support::netlab::{Client, Lab, ListenerSpec, Netns};
use support::{require_root, ISTIO_INIT_ARGS};

/// What one plugin invocation printed and how it exited.
type Reply = support::Output;

fn cni(command: &str, netns: &Netns, stdin: &str) -> Reply {
    let netns = netns.path().display().to_string();
    let env = [
        // The runtime's PATH: the iptables tools are found there.
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", &netns),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ];
    support::Meshinit::new().envs(env).stdin(stdin).run()
}

const PREV_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"address":"10.1.0.5/16","interface":0}]}"#;

fn config(extra: &str) -> String {
    let mut args = vec!["istio-iptables"];
    args.extend(ISTIO_INIT_ARGS);
    format!(
        r#"{{"cniVersion":"1.0.0","name":"meshnet","type":"meshinit","istio_iptables_args":{}{extra},"prevResult":{PREV_RESULT}}}"#,
        serde_json::to_string(&args).unwrap()
    )
}

/// Everything of ours a run may leave: both iptables variants and families, nftables, policy
/// routing and lo's addresses.
fn snapshot(ns: &Netns) -> String {
    let mut out = String::new();
    for argv in [
        &["iptables-legacy-save"][..],
        &["ip6tables-legacy-save"],
        &["iptables-nft-save"],
        &["ip6tables-nft-save"],
        &["nft", "list", "ruleset"],
        &["ip", "rule"],
        &["ip", "-6", "rule"],
        &["ip", "addr", "show", "dev", "lo"],
    ] {
        let text = String::from_utf8_lossy(&ns.run(argv, None).stdout).into_owned();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("valid_lft"))
            .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
                (true, Some(i)) => &l[..i],
                _ => l,
            })
            .collect();
        out += &format!("== {}\n{}\n", argv.join(" "), lines.join("\n"));
    }
    out
}

/// A snapshot without tables and chains that hold no rule: rules (`-A` lines, nft rule
/// lines), policies other than ACCEPT, and the routing sections as they are.
fn rules_only(snapshot: &str) -> String {
    snapshot
        .lines()
        .filter(|l| {
            let t = l.trim();
            !(t.is_empty()
                || t == "}"
                || t == "COMMIT"
                || t.starts_with('*')
                || (t.starts_with(':') && t.ends_with(" ACCEPT"))
                || t.starts_with("table ")
                || t.starts_with("chain ")
                || (t.starts_with("type ") && t.ends_with("policy accept;")))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn add_check_del(name: &str, extra: &str, ours: &str) {
    if !require_root(name) {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = snapshot(&lab.pod);
    let conf = config(extra);

    let add = cni("ADD", &lab.pod, &conf);
    assert_eq!(add.code, Some(0), "ADD: {}{}", add.stdout, add.stderr);
    assert_eq!(add.stdout, PREV_RESULT, "ADD prints prevResult through");
    let installed = snapshot(&lab.pod);
    assert!(
        installed.contains(ours),
        "no {ours} after ADD:\n{installed}"
    );

    // An app connecting out lands on the proxy's outbound port with its original destination.
    let listener = ListenerSpec::tcp(
        "proxy",
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 15001),
    )
    .start(&lab.pod)
    .expect("listener");
    let landing = Client::user(1000, 1000)
        .tcp(&lab.pod, lab.peer4(80))
        .expect("app connects");
    assert_eq!(landing.listener, "proxy", "{landing:?}");
    assert_eq!(landing.original_dst, Some(lab.peer4(80)), "{landing:?}");
    drop(listener);

    let check = cni("CHECK", &lab.pod, &conf);
    assert_eq!(
        check.code,
        Some(0),
        "CHECK: {}{}",
        check.stdout,
        check.stderr
    );
    assert_eq!(check.stdout, "");

    let del = cni("DEL", &lab.pod, &conf);
    assert_eq!(del.code, Some(0), "DEL: {}{}", del.stdout, del.stderr);
    assert_eq!(del.stdout, "");
    // iptables-nft leaves the empty built-in chains it made (docs/applying.md, step 7): they
    // hold no rule, so rules and routing are compared.
    let (before, after) = (rules_only(&before), rules_only(&snapshot(&lab.pod)));
    assert!(
        after == before,
        "DEL left the namespace changed:\n{}",
        support::diff(&before, &after)
    );

    // A repeated DEL finds nothing and succeeds; CHECK now reports the rules missing.
    let again = cni("DEL", &lab.pod, &conf);
    assert_eq!(
        again.code,
        Some(0),
        "second DEL: {}{}",
        again.stdout,
        again.stderr
    );
    let check = cni("CHECK", &lab.pod, &conf);
    assert_eq!(check.code, Some(3), "CHECK after DEL: {}", check.stderr);
    let err: Value = serde_json::from_str(&check.stdout).expect("error object");
    assert_eq!(err["code"], 102, "{err}");
    // The message starts with what differs, not with a header.
    let msg = err["msg"].as_str().unwrap();
    assert!(!msg.starts_with("the live rules differ"), "{err}");
    assert!(
        msg.starts_with("IPv4: none of our rules are installed") || msg.starts_with("missing"),
        "{err}"
    );
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("none of our rules are installed")
            || err["details"].as_str().unwrap().contains("missing"),
        "{err}"
    );
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn add_check_del_with_iptables() {
    add_check_del("add_check_del_with_iptables", "", "-A ISTIO_OUTPUT");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn add_check_del_with_native_nftables() {
    add_check_del(
        "add_check_del_with_native_nftables",
        r#","backend":"nftables""#,
        "table inet istio-proxy-nat",
    );
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_failing_add_is_a_cni_error_and_changes_nothing() {
    if !require_root("a_failing_add_is_a_cni_error_and_changes_nothing") {
        return;
    }
    let lab = Lab::new().expect("lab");
    // IPv6 rules wanted, IPv6 off in the pod: refused up front.
    let out = lab.pod.run(
        &["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
        None,
    );
    assert!(out.status.success());
    let before = snapshot(&lab.pod);
    let add = cni(
        "ADD",
        &lab.pod,
        &config(r#","env":{}"#).replace(
            r#""15090,15021,15020""#,
            r#""15090,15021,15020","--ipv6=true","-m","TPROXY""#,
        ),
    );
    assert_eq!(add.code, Some(1), "ADD: {}{}", add.stdout, add.stderr);
    let err: Value = serde_json::from_str(&add.stdout).expect("only the error object on stdout");
    assert_eq!(err["code"], 100, "{err}");
    assert!(
        err["msg"].as_str().unwrap().contains("disable_ipv6"),
        "{err}"
    );
    let after = snapshot(&lab.pod);
    assert!(after == before, "{}", support::diff(&before, &after));
}
