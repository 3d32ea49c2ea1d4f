//! One owner of the pod's capture rules (issue 9), on a real kernel: rules of ours in another
//! backend, variant or family are refused like drift and moved with `--reconcile` (new place
//! first, real traffic captured throughout); `--cleanup-only` removes ours from every place and
//! returns the namespace to exactly its state before (the tables iptables-nft created
//! included), whatever its own configuration; `--check` names every misplacement and judges
//! each family; native drift is refused like iptables drift; contradictory modes are refused.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use support::apply::{all_rules, meshinit, strings};
use support::netlab::{Client, Lab, ListenerSpec, Netns};
use support::nft::listing;
use support::{diff, require_root, run_meshinit, Output, ISTIO_INIT_ARGS};

/// Where a ruleset of ours can live, and the flags that put it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Legacy,
    Nft,
    Native,
}

const PLACES: [Place; 3] = [Place::Legacy, Place::Nft, Place::Native];

impl Place {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Place::Legacy => &["--backend=iptables", "--force-iptables-binary=legacy"],
            Place::Nft => &["--backend=iptables", "--force-iptables-binary=nft"],
            Place::Native => &["--backend=nftables"],
        }
    }

    /// How error messages name the place (one family suffices to find it).
    fn named(self) -> &'static str {
        match self {
            Place::Legacy => "IPv4 iptables-legacy",
            Place::Nft => "IPv4 iptables-nft",
            Place::Native => "native nftables",
        }
    }

    /// Whether anything of ours is in this place, read with the tools (not with meshinit).
    fn holds_ours(self, pod: &Netns) -> bool {
        match self {
            Place::Native => listing(pod).contains("istio-proxy-"),
            Place::Legacy | Place::Nft => {
                let variant = if self == Place::Legacy {
                    "legacy"
                } else {
                    "nft"
                };
                ["iptables", "ip6tables"].iter().any(|base| {
                    let tool = format!("{base}-{variant}-save");
                    String::from_utf8_lossy(&pod.run(&[&tool], None).stdout).contains("ISTIO_")
                })
            }
        }
    }
}

/// The arguments for a place and IPv6 setting, plus extra flags.
fn args(place: Place, ipv6: bool, extra: &[&str]) -> Vec<String> {
    let mut out = strings(ISTIO_INIT_ARGS);
    out.extend(strings(place.flags()));
    out.push(format!("--ipv6={ipv6}"));
    out.extend(strings(extra));
    out
}

/// The namespace's whole state: both iptables variants of both families (empty tables
/// dropped: loading one cannot be undone with legacy iptables), routing, lo's addresses, and
/// the complete nftables ruleset (every family: iptables-nft's tables show here even empty).
fn state(pod: &Netns) -> String {
    format!("{}== nft list ruleset\n{}", all_rules(pod), listing(pod))
}

fn run(pod: &Netns, args: &[String]) -> Output {
    meshinit(pod, args, &[])
}

#[track_caller]
fn expect_code(out: &Output, code: i32, what: &str) {
    assert_eq!(out.code, Some(code), "{what}: exit code\n{}", out.stderr);
}

/// Rules of other owners in tables we do not use, in every place: they must survive
/// everything.
fn add_foreign(pod: &Netns) {
    pod.run(
        &[
            "iptables-nft",
            "-t",
            "filter",
            "-A",
            "INPUT",
            "-s",
            "192.0.2.1",
            "-j",
            "DROP",
        ],
        None,
    );
    pod.run(
        &[
            "iptables-legacy",
            "-t",
            "filter",
            "-A",
            "INPUT",
            "-s",
            "192.0.2.2",
            "-j",
            "DROP",
        ],
        None,
    );
    pod.nft_apply(
        "table inet foreign {\n chain out {\n  type filter hook output priority 10; policy accept;\n  ip daddr 192.0.2.3 counter drop\n }\n}\n",
    );
}

#[test]
fn contradictory_modes_are_refused_naming_both_flags() {
    for (a, b) in [("--check", "--cleanup-only"), ("--dry-run", "--check")] {
        let mut argv = strings(ISTIO_INIT_ARGS);
        // IPv6 pinned: what is asserted must not depend on this machine's addresses.
        argv.extend([a.to_string(), b.to_string(), "--ipv6=false".to_string()]);
        let out = run_meshinit(&argv, &[]);
        assert_eq!(out.code, Some(2), "{a} {b}: {}", out.stderr);
        assert!(
            out.stderr.contains(a) && out.stderr.contains(b),
            "{a} {b}: both flags named: {}",
            out.stderr
        );
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn every_pair_of_places_is_refused_then_moved_with_traffic_captured_throughout() {
    if !require_root("every_pair_of_places_is_refused_then_moved_with_traffic_captured_throughout")
    {
        return;
    }
    for from in PLACES {
        for to in PLACES {
            if from == to {
                continue;
            }
            let what = format!("{from:?} -> {to:?}");
            let lab = Lab::new().expect("lab");
            let pod = &lab.pod;
            let before = state(pod);
            expect_code(
                &run(pod, &args(from, true, &[])),
                0,
                &format!("{what}: install"),
            );
            let installed = state(pod);

            // Refused, naming where ours are and what to run; nothing changed.
            let refused = run(pod, &args(to, true, &[]));
            expect_code(&refused, 1, &format!("{what}: second backend"));
            assert!(
                refused.stderr.contains(from.named()) && refused.stderr.contains("--reconcile"),
                "{what}: the refusal names the place and --reconcile:\n{}",
                refused.stderr
            );
            assert_eq!(
                state(pod),
                installed,
                "{what}: a refusal changed nothing\n{}",
                diff(&installed, &state(pod))
            );

            // Moved while an application keeps connecting: none may bypass the proxy.
            let _outbound = ListenerSpec::tcp("outbound", any4(15001))
                .start(pod)
                .expect("outbound listener");
            let _peer = ListenerSpec::tcp("peer-80", any4(80))
                .start(&lab.peer)
                .expect("peer listener");
            let dst = lab.peer4(80);
            let stop = AtomicBool::new(false);
            let (moved, landed) = std::thread::scope(|scope| {
                let client = scope.spawn(|| {
                    let mut landed = Vec::new();
                    while !stop.load(Ordering::SeqCst) || landed.len() < 20 {
                        landed.push(Client::user(1000, 1000).tcp(pod, dst));
                    }
                    landed
                });
                let moved = run(pod, &args(to, true, &["--reconcile"]));
                stop.store(true, Ordering::SeqCst);
                (moved, client.join().expect("client thread"))
            });
            expect_code(&moved, 0, &format!("{what}: --reconcile"));
            assert!(
                moved.stderr.contains("reconciled"),
                "{what}: the summary says so:\n{}",
                moved.stderr
            );
            let bypassed: Vec<String> = landed
                .iter()
                .filter(|l| !matches!(l, Ok(l) if l.listener == "outbound"))
                .map(|l| format!("{l:?}"))
                .collect();
            assert!(
                bypassed.is_empty(),
                "{what}: {} of {} connections were not captured: {bypassed:?}",
                bypassed.len(),
                landed.len()
            );

            // Exactly one ruleset, in the new place.
            assert!(to.holds_ours(pod), "{what}: installed in the new place");
            assert!(
                !from.holds_ours(pod),
                "{what}: nothing left in the old place"
            );
            expect_code(
                &run(pod, &args(to, true, &["--check"])),
                0,
                &format!("{what}: check after the move"),
            );
            // A re-run is a no-op.
            let settled = state(pod);
            expect_code(
                &run(pod, &args(to, true, &[])),
                0,
                &format!("{what}: re-run"),
            );
            assert_eq!(state(pod), settled, "{what}: a re-run changed nothing");

            expect_code(
                &run(pod, &args(to, false, &["--cleanup-only"])),
                0,
                &format!("{what}: cleanup"),
            );
            assert_eq!(
                state(pod),
                before,
                "{what}: cleanup restores the namespace\n{}",
                diff(&before, &state(pod))
            );
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn turning_ipv6_off_is_refused_then_removes_the_ipv6_rules_with_reconcile() {
    if !require_root("turning_ipv6_off_is_refused_then_removes_the_ipv6_rules_with_reconcile") {
        return;
    }
    for place in [Place::Legacy, Place::Nft] {
        let what = format!("{place:?}");
        let lab = Lab::new().expect("lab");
        let pod = &lab.pod;
        expect_code(&run(pod, &args(place, false, &[])), 0, &what);
        let v4_only = state(pod);
        expect_code(
            &run(pod, &args(place, false, &["--cleanup-only"])),
            0,
            &what,
        );
        expect_code(&run(pod, &args(place, true, &[])), 0, &what);
        let dual = state(pod);
        let refused = run(pod, &args(place, false, &[]));
        expect_code(
            &refused,
            1,
            &format!("{what}: IPv6 rules left by a dual-stack run"),
        );
        assert!(refused.stderr.contains("IPv6"), "{}", refused.stderr);
        assert_eq!(state(pod), dual, "{what}: nothing changed");
        expect_code(&run(pod, &args(place, false, &["--reconcile"])), 0, &what);
        assert_eq!(
            state(pod),
            v4_only,
            "{what}: exactly the IPv4-only install, ::6 gone too\n{}",
            diff(&v4_only, &state(pod))
        );
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn cleanup_from_every_place_restores_the_namespace_whatever_its_configuration() {
    if !require_root("cleanup_from_every_place_restores_the_namespace_whatever_its_configuration") {
        return;
    }
    for place in PLACES {
        for ipv6 in [false, true] {
            for mode in ["REDIRECT", "TPROXY"] {
                let what = format!("{place:?} ipv6={ipv6} {mode}");
                let lab = Lab::new().expect("lab");
                let pod = &lab.pod;
                add_foreign(pod);
                let before = state(pod);
                let mode_flag = format!("--istio-inbound-interception-mode={mode}");
                let install = args(place, ipv6, &[&mode_flag, "--istio-inbound-ports=*"]);
                expect_code(&run(pod, &install), 0, &format!("{what}: install"));
                // Another configuration: the other backend, IPv6 off, REDIRECT.
                let other = match place {
                    Place::Native => Place::Legacy,
                    _ => Place::Native,
                };
                let out = run(pod, &args(other, false, &["--cleanup-only"]));
                expect_code(&out, 0, &format!("{what}: cleanup"));
                assert!(
                    out.stderr.contains(match place {
                        Place::Native => "native nftables: deleted table inet istio-proxy-nat",
                        _ => "chain(s)",
                    }),
                    "{what}: says what it removed:\n{}",
                    out.stderr
                );
                assert_eq!(
                    state(pod),
                    before,
                    "{what}: the namespace is as before\n{}",
                    diff(&before, &state(pod))
                );
            }
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn cleanup_without_any_iptables_tool_removes_native_rules_and_refuses_when_blind() {
    if !require_root(
        "cleanup_without_any_iptables_tool_removes_native_rules_and_refuses_when_blind",
    ) {
        return;
    }
    let no_tools = vec![("PATH".to_string(), "/nonexistent".to_string())];
    // Nothing installed: the kernel shows that nothing can be there; says so.
    let lab = Lab::new().expect("lab");
    let pod = &lab.pod;
    let out = meshinit(
        pod,
        &args(Place::Legacy, false, &["--cleanup-only"]),
        &no_tools,
    );
    expect_code(&out, 0, "empty namespace");
    assert!(out.stderr.contains("is not installed"), "{}", out.stderr);

    // Native rules of ours, no iptables tool: removed completely.
    for ipv6 in [false, true] {
        let lab = Lab::new().expect("lab");
        let pod = &lab.pod;
        pod.nft_apply("table inet foreign {\n chain c {\n  counter\n }\n}\n");
        let before = state(pod);
        expect_code(
            &run(pod, &args(Place::Native, ipv6, &[])),
            0,
            "native install",
        );
        let out = meshinit(
            pod,
            &args(Place::Legacy, false, &["--cleanup-only"]),
            &no_tools,
        );
        expect_code(&out, 0, &format!("cleanup without tools, ipv6={ipv6}"));
        assert_eq!(state(pod), before, "{}", diff(&before, &state(pod)));
    }

    // iptables rules of ours and no tool to remove them: refused, nothing changed.
    for place in [Place::Legacy, Place::Nft] {
        let lab = Lab::new().expect("lab");
        let pod = &lab.pod;
        expect_code(&run(pod, &args(place, true, &[])), 0, "install");
        let installed = state(pod);
        let out = meshinit(
            pod,
            &args(Place::Native, false, &["--cleanup-only"]),
            &no_tools,
        );
        expect_code(&out, 1, &format!("{place:?}: blind cleanup"));
        assert!(
            out.stderr.contains("is not installed") && out.stderr.contains("nothing was changed"),
            "{place:?}: {}",
            out.stderr
        );
        assert_eq!(state(pod), installed, "{place:?}: nothing changed");
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn check_reports_every_misplacement_and_judges_each_family() {
    if !require_root("check_reports_every_misplacement_and_judges_each_family") {
        return;
    }
    let cases: [(Place, bool, Place, bool, &str); 5] = [
        (
            Place::Native,
            true,
            Place::Nft,
            true,
            "native nftables: table(s) inet istio-proxy-nat",
        ),
        (
            Place::Nft,
            true,
            Place::Native,
            true,
            "IPv4 iptables-nft: rules of ours are installed there too",
        ),
        (
            Place::Legacy,
            true,
            Place::Native,
            true,
            "IPv6 ip6tables-legacy: rules of ours are installed there too",
        ),
        (
            Place::Nft,
            true,
            Place::Legacy,
            true,
            "IPv4 iptables-nft: rules of ours are installed there too",
        ),
        (
            Place::Nft,
            true,
            Place::Nft,
            false,
            "IPv6 ip6tables-nft: rules of ours are installed",
        ),
    ];
    for (installed, ipv6, checked, check_ipv6, line) in cases {
        let what = format!("{installed:?} ipv6={ipv6}, checked as {checked:?} ipv6={check_ipv6}");
        let lab = Lab::new().expect("lab");
        let pod = &lab.pod;
        expect_code(&run(pod, &args(installed, ipv6, &[])), 0, &what);
        let out = run(pod, &args(checked, check_ipv6, &["--check"]));
        expect_code(&out, 3, &what);
        assert!(
            out.stderr.contains(line),
            "{what}: wants {line:?}:\n{}",
            out.stderr
        );
    }

    // Drift in IPv6 only is reported as IPv6, while IPv4 is judged in place.
    let lab = Lab::new().expect("lab");
    let pod = &lab.pod;
    expect_code(&run(pod, &args(Place::Nft, true, &[])), 0, "install");
    pod.run(
        &[
            "ip6tables-nft",
            "-t",
            "nat",
            "-A",
            "ISTIO_OUTPUT",
            "-d",
            "2001:db8::1",
            "-j",
            "RETURN",
        ],
        None,
    );
    let out = run(pod, &args(Place::Nft, true, &["--check"]));
    expect_code(&out, 3, "IPv6 drift");
    assert!(
        out.stderr.contains("IPv6 (ip6tables-nft-save)")
            && out.stderr.contains("IPv4 (iptables-nft): in place")
            && !out.stderr.contains("IPv4 (iptables-nft-save)"),
        "{}",
        out.stderr
    );
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn native_drift_is_refused_without_reconcile_and_replaced_with_it() {
    if !require_root("native_drift_is_refused_without_reconcile_and_replaced_with_it") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let pod = &lab.pod;
    let native = args(Place::Native, true, &[]);
    expect_code(&run(pod, &native), 0, "install");
    let installed = state(pod);
    let again = run(pod, &native);
    expect_code(&again, 0, "re-run");
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);
    assert_eq!(state(pod), installed, "a re-run is a no-op");

    pod.run(
        &[
            "nft",
            "add",
            "rule",
            "inet",
            "istio-proxy-nat",
            "istio-output",
            "ip",
            "daddr",
            "192.0.2.9",
            "return",
        ],
        None,
    );
    let drifted = state(pod);
    let refused = run(pod, &native);
    expect_code(&refused, 1, "drift without --reconcile");
    assert!(
        refused.stderr.contains("differ") && refused.stderr.contains("--reconcile"),
        "{}",
        refused.stderr
    );
    assert_eq!(state(pod), drifted, "refused: nothing changed");
    expect_code(
        &run(pod, &args(Place::Native, true, &["--reconcile"])),
        0,
        "reconcile",
    );
    assert_eq!(state(pod), installed, "{}", diff(&installed, &state(pod)));
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_dry_run_of_cleanup_prints_what_would_be_removed() {
    if !require_root("a_dry_run_of_cleanup_prints_what_would_be_removed") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let pod = &lab.pod;
    expect_code(&run(pod, &args(Place::Nft, true, &[])), 0, "install");
    let installed = state(pod);
    let out = run(
        pod,
        &args(Place::Native, false, &["--dry-run", "--cleanup-only"]),
    );
    expect_code(&out, 0, "dry run");
    for wanted in [
        "IPv4 iptables-nft",
        "IPv6 ip6tables-nft",
        "-X ISTIO_OUTPUT",
        "remove ::6/128 on lo",
    ] {
        assert!(out.stdout.contains(wanted), "{wanted}:\n{}", out.stdout);
    }
    assert!(
        !out.stdout.contains("-A ISTIO_OUTPUT"),
        "no install rules:\n{}",
        out.stdout
    );
    assert_eq!(state(pod), installed, "a dry run changes nothing");

    // Without privileges it says so.
    let bin = env!("CARGO_BIN_EXE_meshinit");
    let mut argv = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin,
    ];
    let a = args(Place::Nft, true, &["--dry-run", "--cleanup-only"]);
    argv.extend(a.iter().map(String::as_str));
    let out = pod.exec(&argv, None).expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs privileges"), "{stderr}");
}

fn any4(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_table_iptables_nft_shares_with_another_owner_is_kept_by_cleanup() {
    if !require_root("a_table_iptables_nft_shares_with_another_owner_is_kept_by_cleanup") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let pod = &lab.pod;
    // Another owner's rule in the nat table ours go into, and a chain of its own in mangle.
    pod.run(
        &[
            "iptables-nft",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "192.0.2.7",
            "-j",
            "ACCEPT",
        ],
        None,
    );
    pod.run(&["iptables-nft", "-t", "mangle", "-N", "FOREIGN"], None);
    let tproxy = [
        "--istio-inbound-interception-mode=TPROXY",
        "--istio-inbound-ports=*",
    ];
    expect_code(&run(pod, &args(Place::Nft, false, &tproxy)), 0, "install");
    expect_code(
        &run(pod, &args(Place::Nft, false, &["--cleanup-only"])),
        0,
        "cleanup",
    );
    let nft = listing(pod);
    assert!(
        nft.contains("table ip nat") && nft.contains("ip daddr 192.0.2.7"),
        "the nat table with the foreign rule stays:\n{nft}"
    );
    assert!(
        nft.contains("table ip mangle") && nft.contains("chain FOREIGN"),
        "the mangle table with the foreign chain stays:\n{nft}"
    );
    assert!(!nft.contains("ISTIO_"), "nothing of ours is left:\n{nft}");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_table_holding_only_a_named_object_of_another_owner_is_kept_by_cleanup() {
    if !require_root("a_table_holding_only_a_named_object_of_another_owner_is_kept_by_cleanup") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let pod = &lab.pod;
    expect_code(&run(pod, &args(Place::Nft, false, &[])), 0, "install");
    // Another owner puts a named counter into the nat table iptables-nft made for us.
    pod.nft_apply("add counter ip nat foreign_counter\n");
    expect_code(
        &run(pod, &args(Place::Nft, false, &["--cleanup-only"])),
        0,
        "cleanup",
    );
    let nft = listing(pod);
    assert!(
        nft.contains("table ip nat") && nft.contains("counter foreign_counter"),
        "the table with the foreign object stays:\n{nft}"
    );
    assert!(!nft.contains("ISTIO_"), "nothing of ours is left:\n{nft}");
}
