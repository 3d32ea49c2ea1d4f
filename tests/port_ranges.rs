//! Port ranges (`8000:8010`, `8000-8010`) in `-b`, `-d`, `-q` and `-o`, on a real kernel with
//! real traffic, for each backend (iptables legacy, iptables nft variant, native nftables, and
//! native nftables with its set lookups forced): a range takes exactly the ports from its
//! first to its last, both included, and not the ports just outside; `--check` finds the
//! rules in place after an apply and reports a range rule deleted by hand; a re-run changes
//! nothing; cleanup leaves nothing of ours.

mod support;

use std::net::{Ipv4Addr, SocketAddr};

use support::apply::{assert_ok, meshinit, strings};
use support::netlab::{Client, Lab, Listener, ListenerSpec, Netns};
use support::nft::{chain_with_handles, listing};
use support::require_root;

const APP: u32 = 1000;
const OUTBOUND_PORT: u16 = 15001;
const INBOUND_PORT: u16 = 15006;

/// How meshinit installs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Legacy,
    Nft,
    Native,
    /// Native with `--nft-sets=always`: a port list with a range becomes one interval set.
    NativeSets,
}

impl Backend {
    fn args(self) -> Vec<String> {
        strings(match self {
            Backend::Legacy => &["--force-iptables-binary=legacy"],
            Backend::Nft => &["--force-iptables-binary=nft"],
            Backend::Native => &["--native-nftables"],
            Backend::NativeSets => &["--native-nftables", "--nft-sets=always"],
        })
    }

    fn native(self) -> bool {
        matches!(self, Backend::Native | Backend::NativeSets)
    }

    /// The iptables variant's name, for the iptables backends.
    fn variant(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
            _ => unreachable!("native nftables has no iptables variant"),
        }
    }
}

fn any4(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
}

fn listen(ns: &Netns, name: &str, port: u16) -> Listener {
    ListenerSpec::tcp(name, any4(port))
        .start(ns)
        .unwrap_or_else(|e| panic!("listener {name}: {e}"))
}

/// Where a TCP connection landed (the listener's name), or why it did not.
fn landed(client: Client, ns: &Netns, dst: SocketAddr) -> String {
    match client.tcp(ns, dst) {
        Ok(l) if l.original_dst == Some(dst) => l.listener,
        Ok(l) => format!(
            "{} with original destination {:?}",
            l.listener, l.original_dst
        ),
        Err(e) => format!("no landing: {e}"),
    }
}

/// Each peer -> pod:port connection lands on the listener named with its port (`flags`, the
/// flags that decide it, name the case in a failure).
fn inbound_lands(lab: &Lab, backend: Backend, flags: &str, want: &[(u16, &str)]) {
    for &(port, want) in want {
        let got = landed(Client::root(), &lab.peer, lab.pod4(port));
        assert_eq!(got, want, "{backend:?}: peer -> pod:{port} ({flags})");
    }
}

/// Each app -> peer:port connection (the app's uid) lands on the listener named with its port.
fn outbound_lands(lab: &Lab, backend: Backend, flags: &str, want: &[(u16, &str)]) {
    for &(port, want) in want {
        let got = landed(Client::user(APP, APP), &lab.pod, lab.peer4(port));
        assert_eq!(got, want, "{backend:?}: app -> peer:{port} ({flags})");
    }
}

/// A listener in `ns` on each of `ports`, named `{prefix}-{port}`.
fn listen_on(ns: &Netns, prefix: &str, ports: &[u16]) -> Vec<Listener> {
    ports
        .iter()
        .map(|port| listen(ns, &format!("{prefix}-{port}"), *port))
        .collect()
}

/// Everything of ours the kernel holds: the iptables rules of both variants and the nft
/// ruleset, for "a re-run changes nothing" and "cleanup leaves nothing".
fn rules_now(pod: &Netns) -> String {
    let mut out = listing(pod);
    for tool in ["iptables-legacy-save", "iptables-nft-save"] {
        let text = String::from_utf8_lossy(&pod.run(&[tool], None).stdout).into_owned();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            // Chain counters count traffic, not rules.
            let line = match (line.starts_with(':'), line.rfind(" [")) {
                (true, Some(i)) => &line[..i],
                _ => line,
            };
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn ours_left(pod: &Netns) -> bool {
    let now = rules_now(pod);
    now.contains("ISTIO_") || now.contains("istio-proxy")
}

/// A rule of ours to delete by hand: its table and chain (iptables names), its iptables spec,
/// and the range it matches (iptables spelling `LO:HI`).
struct Tamper {
    table: &'static str,
    chain: &'static str,
    spec: &'static str,
    range: &'static str,
}

/// Deletes by hand the rule of ours that matches `t.range`: with iptables by its spec, with
/// nft by its handle (the first rule with the range in the chain of ours named like it).
fn delete_range_rule(pod: &Netns, backend: Backend, t: &Tamper) {
    let Tamper {
        table,
        chain,
        spec,
        range,
    } = *t;
    if !backend.native() {
        let tool = format!("iptables-{}", backend.variant());
        let mut argv = vec![tool.as_str(), "-t", table, "-D", chain];
        argv.extend(spec.split(' '));
        let out = pod.run(&argv, None);
        assert!(out.status.success(), "{argv:?}: {out:?}");
        return;
    }
    let nft_chain = chain.to_lowercase().replace('_', "-");
    let nft_range = range.replace(':', "-");
    let nft_table = format!("istio-proxy-{table}");
    let text = chain_with_handles(pod, &nft_table, &nft_chain);
    let line = text
        .lines()
        .find(|l| l.contains(&nft_range))
        .unwrap_or_else(|| panic!("no rule with {nft_range} in {nft_chain}:\n{text}"));
    let handle = line.rsplit(' ').next().expect("a handle");
    let out = pod.run(
        &[
            "nft", "delete", "rule", "inet", &nft_table, &nft_chain, "handle", handle,
        ],
        None,
    );
    assert!(out.status.success(), "deleting {line}: {out:?}");
}

/// Installs `args`, checks `traffic`, runs `--check` (in place), re-runs (nothing changes),
/// checks the traffic again, deletes the rule for `range` by hand (`--check` exits 3 and names
/// it), then cleans up (nothing of ours left).
fn scenario(lab: &Lab, backend: Backend, args: &[&str], traffic: &dyn Fn(), tampered: Tamper) {
    let mut args = strings(args);
    args.extend(backend.args());
    args.push("--ipv6=false".to_string());
    let with = |extra: &str| {
        let mut a = args.clone();
        a.push(extra.to_string());
        a
    };
    let what = format!("{backend:?} {args:?}");

    assert_ok(&meshinit(&lab.pod, &args, &[]), &what);
    if backend == Backend::NativeSets {
        // The two-element list with a range is one rule with an interval set.
        assert!(
            listing(&lab.pod).contains("dport { 8000-8010, 8020 }"),
            "{what}: no set lookup\n{}",
            listing(&lab.pod)
        );
    }
    traffic();
    let out = meshinit(&lab.pod, &with("--check"), &[]);
    assert_eq!(
        out.code,
        Some(0),
        "{what}: --check after apply\n{}",
        out.stderr
    );

    let before = rules_now(&lab.pod);
    let out = meshinit(&lab.pod, &args, &[]);
    assert_ok(&out, &what);
    if !backend.native() {
        assert!(
            out.stderr.contains("nothing changed"),
            "{what}: re-run\n{}",
            out.stderr
        );
    }
    assert_eq!(
        rules_now(&lab.pod),
        before,
        "{what}: the re-run changed the rules"
    );
    traffic();

    let range = tampered.range;
    delete_range_rule(&lab.pod, backend, &tampered);
    let tampered_rules = rules_now(&lab.pod);
    let out = meshinit(&lab.pod, &with("--check"), &[]);
    assert_eq!(
        out.code,
        Some(3),
        "{what}: --check after deleting {range}\n{}",
        out.stderr
    );
    let shown = if backend.native() {
        range.replace(':', "-")
    } else {
        range.to_string()
    };
    assert!(
        out.stderr.contains(&shown),
        "{what}: --check must name the rule for {shown}\n{}",
        out.stderr
    );
    assert_eq!(
        rules_now(&lab.pod),
        tampered_rules,
        "{what}: --check changed something"
    );

    assert_ok(&meshinit(&lab.pod, &with("--cleanup-only"), &[]), &what);
    assert!(
        !ours_left(&lab.pod),
        "{what}: cleanup left rules of ours\n{}",
        rules_now(&lab.pod)
    );
}

/// `-b 8000:8010,8020` captures inbound 8000 and 8010 (and 8020) but not 7999 or 8011;
/// `-q 9000-9010` (no `-i`) captures outbound 9000 and 9010 but not 8999 or 9011.
fn captured_ranges(backend: Backend) {
    let lab = Lab::new().expect("lab");
    let (pod, peer) = (&lab.pod, &lab.peer);
    let mut keep = vec![
        listen(pod, "inbound", INBOUND_PORT),
        listen(pod, "outbound", OUTBOUND_PORT),
    ];
    keep.extend(listen_on(pod, "app", &[7999, 8000, 8010, 8011, 8020]));
    keep.extend(listen_on(peer, "peer", &[8999, 9000, 9010, 9011]));
    let traffic = || {
        inbound_lands(
            &lab,
            backend,
            "-b 8000:8010,8020",
            &[
                (7999, "app-7999"),
                (8000, "inbound"),
                (8010, "inbound"),
                (8011, "app-8011"),
                (8020, "inbound"),
            ],
        );
        outbound_lands(
            &lab,
            backend,
            "-q 9000-9010",
            &[
                (8999, "peer-8999"),
                (9000, "outbound"),
                (9010, "outbound"),
                (9011, "peer-9011"),
            ],
        );
    };
    scenario(
        &lab,
        backend,
        &[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "",
            "-b",
            "8000:8010,8020",
            "-q",
            "9000-9010",
        ],
        &traffic,
        Tamper {
            table: "nat",
            chain: "ISTIO_OUTPUT",
            spec: "-p tcp --dport 9000:9010 -j ISTIO_REDIRECT",
            range: "9000:9010",
        },
    );
    drop(keep);
}

/// `-b '*' -d 8000-8010,8020` leaves inbound 8000 and 8010 (and 8020) alone and captures 7999
/// and 8011; `-o 9000:9010,9020:9020` with `-i '*'` leaves outbound 9000 and 9010 uncaptured
/// and captures 8999 and 9011 (`9020:9020`, a range of one port, is written so for iptables,
/// which shows it as `9020`: `--check` and the re-run must still find it in place).
fn excluded_ranges(backend: Backend) {
    let lab = Lab::new().expect("lab");
    let (pod, peer) = (&lab.pod, &lab.peer);
    let mut keep = vec![
        listen(pod, "inbound", INBOUND_PORT),
        listen(pod, "outbound", OUTBOUND_PORT),
    ];
    keep.extend(listen_on(pod, "app", &[7999, 8000, 8010, 8011, 8020]));
    keep.extend(listen_on(peer, "peer", &[8999, 9000, 9010, 9011, 9020]));
    let traffic = || {
        inbound_lands(
            &lab,
            backend,
            "-b '*' -d 8000-8010,8020",
            &[
                (7999, "inbound"),
                (8000, "app-8000"),
                (8010, "app-8010"),
                (8011, "inbound"),
                (8020, "app-8020"),
            ],
        );
        outbound_lands(
            &lab,
            backend,
            "-o 9000:9010,9020:9020",
            &[
                (8999, "outbound"),
                (9000, "peer-9000"),
                (9010, "peer-9010"),
                (9011, "outbound"),
                (9020, "peer-9020"),
            ],
        );
    };
    scenario(
        &lab,
        backend,
        &[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-b",
            "*",
            "-d",
            "8000-8010,8020",
            "-o",
            "9000:9010,9020:9020",
        ],
        &traffic,
        Tamper {
            table: "nat",
            chain: "ISTIO_INBOUND",
            spec: "-p tcp --dport 8000:8010 -j RETURN",
            range: "8000:8010",
        },
    );
    drop(keep);
}

/// `-m TPROXY -b 8000:8010,8020`: both of TPROXY's rules per entry (divert of established
/// connections, TPROXY of new ones) take the range: 8000 and 8010 reach the transparent
/// listener with their destination kept, 7999 and 8011 reach the app.
fn tproxy_ranges(backend: Backend) {
    let lab = Lab::new().expect("lab");
    let pod = &lab.pod;
    let mut keep = vec![ListenerSpec::tcp("inbound", any4(INBOUND_PORT))
        .transparent()
        .start(pod)
        .expect("transparent listener")];
    keep.extend(listen_on(pod, "app", &[7999, 8000, 8010, 8011, 8020]));
    let traffic = || {
        inbound_lands(
            &lab,
            backend,
            "TPROXY -b 8000:8010,8020",
            &[
                (7999, "app-7999"),
                (8000, "inbound"),
                (8010, "inbound"),
                (8011, "app-8011"),
                (8020, "inbound"),
            ],
        );
    };
    scenario(
        &lab,
        backend,
        &[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "TPROXY",
            "-i",
            "",
            "-b",
            "8000:8010,8020",
        ],
        &traffic,
        Tamper {
            table: "mangle",
            chain: "ISTIO_INBOUND",
            spec: "-p tcp --dport 8000:8010 -j ISTIO_TPROXY",
            range: "8000:8010",
        },
    );
    drop(keep);
}

macro_rules! per_backend {
    ($($module:ident: $backend:ident),+ $(,)?) => {
        $(
            mod $module {
                #[test]
                #[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
                fn captured_ranges_take_their_bounds_and_nothing_outside() {
                    if !super::require_root(concat!(stringify!($module), "::captured_ranges")) {
                        return;
                    }
                    super::captured_ranges(super::Backend::$backend);
                }

                #[test]
                #[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
                fn excluded_ranges_leave_their_bounds_alone_and_nothing_outside() {
                    if !super::require_root(concat!(stringify!($module), "::excluded_ranges")) {
                        return;
                    }
                    super::excluded_ranges(super::Backend::$backend);
                }

                #[test]
                #[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
                fn tproxy_ranges_take_their_bounds_and_nothing_outside() {
                    if !super::require_root(concat!(stringify!($module), "::tproxy_ranges")) {
                        return;
                    }
                    super::tproxy_ranges(super::Backend::$backend);
                }
            }
        )+
    };
}

per_backend!(
    legacy: Legacy,
    nft: Nft,
    native: Native,
    native_sets: NativeSets,
);
