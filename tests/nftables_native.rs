//! The native nftables backend on a real kernel, judged by `nft list ruleset`: for every one
//! of Istio's 28 nftables cases, the ruleset applied over netlink lists exactly like the same
//! case's script loaded with `nft -f`; re-applying changes nothing; switching configurations
//! leaves only the new tables; cleanup removes our tables and nothing else; a batch the kernel
//! rejects changes nothing and the error names the rule. `--check`'s read-back comparison finds
//! every case in place (applied natively or by `nft -f`), and names each kind of tampering
//! without changing anything. Where the kernel holds no iptables table, a native install runs
//! no iptables tool, and still finds rules of ours in iptables where there are some.

mod support;

use meshinit::driver::nf_tables::{Groups, NfTables, NftError};
use meshinit::render::nft_netlink::replace_batch;
use meshinit::render::nft_ruleset::{ruleset, NftRule, Ruleset, Stmt};
use support::apply::{assert_ok, default_args, meshinit, plan_for};
use support::netlab::{Lab, Netns};
use support::nft::{chain_with_handles, groups, in_netns, listing, without_counters};
use support::{conformance_cases, diff, nftables_case, require_root, Case};

/// A case's script with every group name replaced by its gid, so `nft` (which resolves names
/// through NSS) loads the same numbers meshinit resolved.
fn script_with_gids(script: &str, groups: &Groups) -> String {
    let words: Vec<String> = script
        .lines()
        .map(|line| {
            let mut out: Vec<String> = Vec::new();
            let mut after_skgid = false;
            for word in line.split(' ') {
                let word = match (after_skgid, groups.gid(word)) {
                    (true, Some(gid)) if word != "!=" => gid.to_string(),
                    _ => word.to_string(),
                };
                after_skgid = word == "skgid" || (after_skgid && word == "!=");
                out.push(word);
            }
            out.join(" ")
        })
        .collect();
    words.join("\n") + "\n"
}

fn apply(ns: &Netns, rs: &Ruleset) -> Result<(), String> {
    let rs = rs.clone();
    let groups = groups();
    in_netns(ns, move || {
        let mut nft = NfTables::open().map_err(|e| e.to_string())?;
        nft.apply_ruleset(&rs, &groups)
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

fn cleanup(ns: &Netns) {
    in_netns(ns, || NfTables::open().and_then(|mut n| n.cleanup()))
        .unwrap_or_else(|e| panic!("cleanup: {e}"));
}

fn case(name: &str) -> Case {
    conformance_cases("nftables")
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

fn case_ruleset(case: &Case) -> Ruleset {
    ruleset(&plan_for(&case.args, &case.env))
}

/// What `nft -f` of the case's script lists in a fresh namespace.
fn nft_listing(case: &Case) -> String {
    let lab = Lab::new().expect("lab");
    lab.peer
        .nft_apply(&script_with_gids(&nftables_case(&case.name), &groups()));
    listing(&lab.peer)
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn every_case_lists_exactly_like_nft_f_of_istios_script() {
    if !require_root("every_case_lists_exactly_like_nft_f_of_istios_script") {
        return;
    }
    let cases = conformance_cases("nftables");
    assert_eq!(cases.len(), 28);
    let mut failures = Vec::new();
    for case in &cases {
        // Pod: native; peer: nft. Both are fresh namespaces built alike.
        let lab = Lab::new().expect("lab");
        let script = script_with_gids(&nftables_case(&case.name), &groups());
        lab.peer.nft_apply(&script);
        let expected = listing(&lab.peer);
        if let Err(e) = apply(&lab.pod, &case_ruleset(case)) {
            failures.push(format!("case {}: {e}", case.name));
            continue;
        }
        let actual = listing(&lab.pod);
        assert!(
            expected.contains("table inet istio-proxy-nat"),
            "{expected}"
        );
        if actual != expected {
            failures.push(format!("case {}:\n{}", case.name, diff(&expected, &actual)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 28 cases differ from nft:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn applying_twice_leaves_the_same_ruleset() {
    if !require_root("applying_twice_leaves_the_same_ruleset") {
        return;
    }
    let tproxy = case("tproxy");
    let lab = Lab::new().expect("lab");
    apply(&lab.pod, &case_ruleset(&tproxy)).unwrap();
    let once = listing(&lab.pod);
    apply(&lab.pod, &case_ruleset(&tproxy)).unwrap();
    assert_eq!(listing(&lab.pod), once);
    assert_eq!(once, nft_listing(&tproxy));
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn switching_configuration_leaves_exactly_the_new_tables() {
    if !require_root("switching_configuration_leaves_exactly_the_new_tables") {
        return;
    }
    // tproxy uses nat, mangle and raw; empty only nat, with other chains.
    let (a, b) = (case("tproxy"), case("empty"));
    let lab = Lab::new().expect("lab");
    apply(&lab.pod, &case_ruleset(&a)).unwrap();
    assert!(listing(&lab.pod).contains("table inet istio-proxy-raw"));
    // Checked against the other configuration, the tables it does not use are named.
    let lines = differences(&lab.pod, &case_ruleset(&b));
    assert!(
        lines.contains(&"unexpected: table inet istio-proxy-raw".to_string()),
        "{lines:?}"
    );
    apply(&lab.pod, &case_ruleset(&b)).unwrap();
    assert_eq!(listing(&lab.pod), nft_listing(&b));
    // And back.
    apply(&lab.pod, &case_ruleset(&a)).unwrap();
    assert_eq!(listing(&lab.pod), nft_listing(&a));
}

const FOREIGN: &str = "table inet foreign {
    chain c { type filter hook input priority 0; }
}
table ip nat {
    chain POSTROUTING { type nat hook postrouting priority 100; }
    chain c { ip daddr 10.9.9.9 counter accept; }
}
";

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn cleanup_removes_our_tables_and_nothing_else() {
    if !require_root("cleanup_removes_our_tables_and_nothing_else") {
        return;
    }
    let lab = Lab::new().expect("lab");
    // On an empty ruleset: nothing to remove, nothing created.
    cleanup(&lab.pod);
    assert_eq!(listing(&lab.pod), "");

    lab.pod.nft_apply(FOREIGN);
    let foreign = listing(&lab.pod);
    let tproxy = case("tproxy");
    apply(&lab.pod, &case_ruleset(&tproxy)).unwrap();
    let both = listing(&lab.pod);
    assert!(
        both.starts_with(&foreign),
        "foreign tables changed:\n{both}"
    );
    let present = in_netns(&lab.pod, || {
        NfTables::open()
            .and_then(|mut n| n.managed_tables_present())
            .unwrap()
    });
    assert_eq!(
        present,
        ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"]
    );

    cleanup(&lab.pod);
    assert_eq!(listing(&lab.pod), foreign);
    cleanup(&lab.pod);
    assert_eq!(listing(&lab.pod), foreign);
    let present = in_netns(&lab.pod, || {
        NfTables::open()
            .and_then(|mut n| n.managed_tables_present())
            .unwrap()
    });
    assert!(present.is_empty());
}

/// The `empty` case's ruleset with one more rule in istio-output, jumping to a chain that
/// does not exist: the kernel refuses that message.
fn with_bad_jump(mut rs: Ruleset) -> (Ruleset, usize) {
    let nat = &mut rs.tables[0];
    let bad = NftRule {
        chain: "istio-output".into(),
        index: None,
        stmts: vec![Stmt::Counter, Stmt::Jump("no-such-chain".into())],
        purpose: "test: a jump to a missing chain",
    };
    nat.rules.push(bad);
    let number = nat
        .rules
        .iter()
        .filter(|r| r.chain == "istio-output")
        .count();
    (rs, number)
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_rejected_batch_changes_nothing_and_names_the_rule() {
    if !require_root("a_rejected_batch_changes_nothing_and_names_the_rule") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let (bad, number) = with_bad_jump(case_ruleset(&case("empty")));

    // Into an empty namespace: nothing appears.
    let err = apply(&lab.pod, &bad).unwrap_err();
    assert!(
        err.starts_with(&format!(
            "rule {number} of istio-proxy-nat/istio-output (test: a jump to a missing chain) \
             `counter jump no-such-chain`: "
        )),
        "{err}"
    );
    assert_eq!(listing(&lab.pod), "");

    // Over an installed configuration with a foreign table: all of it stays as it was,
    // although the failing rule comes after the deletion of our tables in the batch.
    lab.pod.nft_apply(FOREIGN);
    let tproxy = case("tproxy");
    apply(&lab.pod, &case_ruleset(&tproxy)).unwrap();
    let before = listing(&lab.pod);
    let err = apply(&lab.pod, &bad).unwrap_err();
    assert!(err.contains("istio-proxy-nat/istio-output"), "{err}");
    assert_eq!(listing(&lab.pod), before);

    // The typed error carries the errno.
    let bad2 = bad.clone();
    let groups = groups();
    let typed = in_netns(&lab.pod, move || {
        let mut nft = NfTables::open().unwrap();
        let existing = nft.managed_tables_present().unwrap();
        let batch = replace_batch(&bad2, &|g| groups.gid(g), nft.next_seq(), &existing).unwrap();
        nft.send_batch(&batch).unwrap_err()
    });
    match typed {
        NftError::Rejected { errno, .. } => assert_eq!(errno, nix::errno::Errno::ENOENT),
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(listing(&lab.pod), before);
}

/// Configurations Istio's cases do not cover — wildcard interfaces, prefixes that are not a
/// whole number of bytes, /0, IPv6 prefixes, a DNS port equal to the tunnel port — list the
/// same applied natively as meshinit's own script loaded with `nft -f`.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn other_configurations_list_like_their_script() {
    if !require_root("other_configurations_list_like_their_script") {
        return;
    }
    let configs: &[&[&str]] = &[
        &[
            "--istio-exclude-interfaces=eth+,veth0",
            "--kube-virt-interfaces=vm+",
            "--istio-service-cidr=10.16.0.0/12,0.0.0.0/0,2001:db8::/33",
            "--istio-service-exclude-cidr=10.16.32.0/20,192.168.0.0/31",
            "--ipv6=true",
            "--dns-servers=",
        ],
        &[
            "--istio-inbound-interception-mode=TPROXY",
            "--istio-inbound-ports=*",
            "--istio-local-exclude-ports=7000,7001",
            "--istio-outbound-ports=80,443",
            "--istio-local-outbound-ports-exclude=9000",
            "--inbound-tunnel-port=53",
            "--redirect-dns=true",
            "--capture-all-dns=true",
            "--drop-invalid=true",
            "--ipv6=true",
            "--dns-servers=10.0.0.10,fd00::10",
        ],
        // Port ranges: a range rule (`tcp dport 8000-8010`), a range of one port, and a long
        // list with ranges as an interval set, one interval reaching 65535 (no end element).
        &[
            "--istio-inbound-ports=8000:8010,80,7000-7000",
            "--istio-outbound-ports=30000-30010",
            "--istio-local-outbound-ports-exclude=1:3,5,7-9,11,13,15,17,19,21,23,25,27,29,31,33,35,37,39,64000:65535",
            "--ipv6=true",
            "--dns-servers=",
        ],
    ];
    for args in configs {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env = vec![(
            "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR".to_string(),
            "127.0.0.1/8".to_string(),
        )];
        let rs = ruleset(&plan_for(&args, &env));
        let lab = Lab::new().expect("lab");
        lab.peer
            .nft_apply(&meshinit::render::nft_ruleset::script(&rs));
        apply(&lab.pod, &rs).unwrap();
        // `--check`'s comparison finds both in place.
        assert_eq!(differences(&lab.pod, &rs), Vec::<String>::new(), "{args:?}");
        assert_eq!(
            differences(&lab.peer, &rs),
            Vec::<String>::new(),
            "{args:?}"
        );
        let expected = listing(&lab.peer);
        assert_eq!(
            listing(&lab.pod),
            expected,
            "{args:?}\n{}",
            diff(&expected, &listing(&lab.pod))
        );
    }
}

/// `NfTables::differences` for `rs`, run inside `ns`.
fn differences(ns: &Netns, rs: &Ruleset) -> Vec<String> {
    let rs = rs.clone();
    let groups = groups();
    in_netns(ns, move || {
        NfTables::open()
            .and_then(|mut n| n.differences(&rs, &groups))
            .unwrap_or_else(|e| panic!("differences: {e}"))
    })
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn every_case_checks_in_place_after_a_native_apply_and_after_nft_f() {
    if !require_root("every_case_checks_in_place_after_a_native_apply_and_after_nft_f") {
        return;
    }
    let cases = conformance_cases("nftables");
    assert_eq!(cases.len(), 28);
    let mut failures = Vec::new();
    for case in &cases {
        let rs = case_ruleset(case);
        let lab = Lab::new().expect("lab");
        // Nothing installed: every planned table is missing.
        let none = differences(&lab.pod, &rs);
        assert_eq!(none.len(), rs.tables.len(), "{}: {none:?}", case.name);
        assert!(none.iter().all(|l| l.starts_with("missing: table inet ")));
        apply(&lab.pod, &rs).unwrap();
        let native = differences(&lab.pod, &rs);
        if !native.is_empty() {
            failures.push(format!(
                "case {} (native):\n{}",
                case.name,
                native.join("\n")
            ));
        }
        // The same rules loaded by nft itself (as Istio would) are in place too.
        lab.peer
            .nft_apply(&script_with_gids(&nftables_case(&case.name), &groups()));
        let by_nft = differences(&lab.peer, &rs);
        if !by_nft.is_empty() {
            failures.push(format!(
                "case {} (nft -f):\n{}",
                case.name,
                by_nft.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The ruleset with handles (counters dropped), so that `--check` changing anything at all
/// (even re-creating an identical rule) would show.
fn listing_with_handles(ns: &Netns) -> String {
    without_counters(ns, &["nft", "-a", "list", "ruleset"])
}

/// The handle of the `n`-th (1-based) rule of a chain of ours, from `nft -a`.
fn handle_of(ns: &Netns, table: &str, chain: &str, n: usize) -> (String, String) {
    let text = chain_with_handles(ns, table, chain);
    let line = text
        .lines()
        // The table and chain lines carry handles too.
        .filter(|l| l.contains(" # handle ") && !l.trim_end().ends_with('{') && !l.contains("{ #"))
        .nth(n - 1)
        .unwrap_or_else(|| panic!("no rule {n} in {chain}:\n{text}"));
    let (body, handle) = line.trim().rsplit_once(" # handle ").unwrap();
    (body.to_string(), handle.to_string())
}

/// `--check` of the binary (native nftables) after each kind of tampering with `nft`: exit 3,
/// a line naming what differs, and the ruleset exactly as the tampering left it.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn check_reports_each_kind_of_tampering_and_changes_nothing() {
    if !require_root("check_reports_each_kind_of_tampering_and_changes_nothing") {
        return;
    }
    let mut args = default_args();
    args.extend(
        [
            "--native-nftables",
            "--redirect-dns=true",
            "--dns-servers=10.0.0.10",
        ]
        .map(String::from),
    );
    let mut check = args.clone();
    check.push("--check".to_string());
    let lab = Lab::new().expect("lab");

    let out = meshinit(&lab.pod, &check, &[]);
    assert_eq!(out.code, Some(3), "nothing installed: {}", out.stderr);
    assert!(
        out.stderr.contains("missing: table inet istio-proxy-nat"),
        "{}",
        out.stderr
    );

    type Tamper = fn(&Netns);
    let cases: &[(&str, Tamper, &[&str])] = &[
        ("nothing", |_| {}, &[]),
        (
            "a rule inserted into istio-output",
            |ns| {
                let argv = [
                    "nft", "insert", "rule", "inet", "istio-proxy-nat", "istio-output",
                    "counter", "return",
                ];
                ns.run(&argv, None);
            },
            &["istio-proxy-nat/istio-output: unexpected rule (handle "],
        ),
        (
            "a rule deleted",
            |ns| {
                let (_, handle) = handle_of(ns, "istio-proxy-nat", "istio-output", 2);
                let argv = [
                    "nft", "delete", "rule", "inet", "istio-proxy-nat", "istio-output",
                    "handle", &handle,
                ];
                ns.run(&argv, None);
            },
            &["istio-proxy-nat/istio-output: missing rule 2 `"],
        ),
        (
            "a port changed in a set",
            |ns| {
                // An anonymous set cannot be changed in place; its rule is replaced.
                let (body, handle) = (1..)
                    .map(|n| handle_of(ns, "istio-proxy-nat", "istio-output", n))
                    .find(|(body, _)| body.contains("{ 53, 15008 }"))
                    .unwrap();
                let body = body.replace("{ 53, 15008 }", "{ 53, 15009 }");
                let argv = [
                    "nft", "replace", "rule", "inet", "istio-proxy-nat", "istio-output",
                    "handle", &handle, &body,
                ];
                ns.run(&argv, None);
            },
            &["differs: expected `oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != { 53, 15008 } skuid 1337"],
        ),
        (
            "a chain added",
            |ns| {
                ns.run(&["nft", "add", "chain", "inet", "istio-proxy-nat", "extra"], None);
            },
            &["istio-proxy-nat: unexpected chain extra (a regular chain, 0 rule(s))"],
        ),
        (
            "a chain flushed",
            |ns| {
                let argv = ["nft", "flush", "chain", "inet", "istio-proxy-raw", "istio-output-dns"];
                ns.run(&argv, None);
            },
            &[
                "istio-proxy-raw/istio-output-dns: missing rule 1 `",
                "istio-proxy-raw/istio-output-dns: missing rule 2 `",
            ],
        ),
        (
            "a base chain's policy changed",
            |ns| {
                let argv = [
                    "nft", "add", "chain", "inet", "istio-proxy-nat", "output",
                    "{ type nat hook output priority -100; policy drop; }",
                ];
                ns.run(&argv, None);
            },
            &["istio-proxy-nat: chain output is a base chain (type nat hook output priority -100 policy drop), expected a base chain (type nat hook output priority -100 policy accept)"],
        ),
        (
            "a table deleted",
            |ns| {
                ns.run(&["nft", "delete", "table", "inet", "istio-proxy-raw"], None);
            },
            &["missing: table inet istio-proxy-raw"],
        ),
    ];
    let mut reset = args.clone();
    reset.push("--reconcile".to_string());
    for (what, tamper, expected) in cases {
        // A fresh install for each: with --reconcile the apply replaces our tables, whatever
        // they hold (without it, tables of ours that differ are refused: issue 9).
        assert_ok(&meshinit(&lab.pod, &reset, &[]), what);
        tamper(&lab.pod);
        let before = listing_with_handles(&lab.pod);
        let out = meshinit(&lab.pod, &check, &[]);
        assert_eq!(
            listing_with_handles(&lab.pod),
            before,
            "{what}: --check changed the ruleset"
        );
        if expected.is_empty() {
            assert_eq!(out.code, Some(0), "{what}: {}", out.stderr);
            continue;
        }
        assert_eq!(out.code, Some(3), "{what}: {}", out.stderr);
        for line in *expected {
            assert!(
                out.stderr.contains(line),
                "{what}: no {line:?} in\n{}",
                out.stderr
            );
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn the_summary_says_installed_on_a_fresh_install_and_replaced_on_a_forced_one() {
    if !require_root("the_summary_says_installed_on_a_fresh_install_and_replaced_on_a_forced_one") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let mut args = default_args();
    args.push("--native-nftables".to_string());
    let summary = |out: &support::Output| {
        out.stderr
            .lines()
            .find(|l| l.contains("summary: exit"))
            .unwrap_or_default()
            .to_string()
    };
    let fresh = meshinit(&lab.pod, &args, &[]);
    assert_ok(&fresh, "fresh native install");
    assert!(
        summary(&fresh).contains("installed tables"),
        "{}",
        fresh.stderr
    );
    assert!(!summary(&fresh).contains("replaced"), "{}", fresh.stderr);
    args.push("--force-apply".to_string());
    let forced = meshinit(&lab.pod, &args, &[]);
    assert_ok(&forced, "forced re-install");
    assert!(
        summary(&forced).contains("replaced tables"),
        "{}",
        forced.stderr
    );
}

/// A directory of recording `*-save` tools: each notes that it ran, then runs the real one.
fn recording_save_tools(dir: &std::path::Path) -> Vec<(String, String)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for family in ["iptables", "ip6tables"] {
        for variant in ["legacy", "nft"] {
            let name = format!("{family}-{variant}-save");
            let path = dir.join(&name);
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\ntouch {}/ran-{name}\nexec /usr/sbin/{name} \"$@\"\n",
                    dir.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
    }
    vec![(
        "PATH".to_string(),
        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", dir.display()),
    )]
}

/// Which recording tools ran since the last call (and forgets them).
fn tools_that_ran(dir: &std::path::Path) -> Vec<String> {
    let mut ran: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let tool = name.strip_prefix("ran-")?.to_string();
            std::fs::remove_file(dir.join(&name)).unwrap();
            Some(tool)
        })
        .collect();
    ran.sort();
    ran
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_native_install_runs_no_iptables_tool_where_the_kernel_has_no_table_and_still_finds_ours() {
    if !require_root(
        "a_native_install_runs_no_iptables_tool_where_the_kernel_has_no_table_and_still_finds_ours",
    ) {
        return;
    }
    let dir =
        std::path::PathBuf::from(format!("/tmp/meshinit-native-tools-{}", std::process::id()));
    let env = recording_save_tools(&dir);
    let mut native = default_args();
    native.push("--native-nftables".to_string());
    // A fresh pod: no legacy table, no ip/ip6 nf_tables table, so nothing for a tool to print.
    let lab = Lab::new().expect("lab");
    assert_ok(&meshinit(&lab.pod, &native, &env), "fresh native install");
    assert_eq!(tools_that_ran(&dir), Vec::<String>::new());
    // Rules of ours in iptables: the tables exist, so their tool reads them, and the native
    // install is refused as before, changing nothing.
    for variant in ["nft", "legacy"] {
        let lab = Lab::new().expect("lab");
        let mut iptables = default_args();
        iptables.push(format!("--force-iptables-binary={variant}"));
        assert_ok(&meshinit(&lab.pod, &iptables, &[]), variant);
        tools_that_ran(&dir);
        let before = listing(&lab.pod);
        let out = meshinit(&lab.pod, &native, &env);
        assert_eq!(out.code, Some(1), "{variant}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("rules of ours are already installed in another place")
                && out.stderr.contains(&format!("IPv4 iptables-{variant}:")),
            "{variant}: {}",
            out.stderr
        );
        let ran = tools_that_ran(&dir);
        assert!(
            ran.contains(&format!("iptables-{variant}-save"))
                && ran.contains(&format!("ip6tables-{variant}-save")),
            "{variant}: {ran:?}"
        );
        assert_eq!(listing(&lab.pod), before, "{variant}: nothing changed");
    }
    std::fs::remove_dir_all(&dir).ok();
}
