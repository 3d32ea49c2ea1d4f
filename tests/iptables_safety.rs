//! The iptables backend never leaves a silent bypass or a lie, on a real kernel: a rollback
//! touches only what the run wrote (a foreign nft rule iptables cannot print stays
//! byte-identical), interface names iptables cannot express are refused or read back exactly,
//! any read-back difference is a rolled-back failure, a state that cannot be read is exit 1,
//! `--check` names rules that take traffic away from our jumps, a leaked variant-detection
//! probe is recognised, and every failure message says what was left.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use meshinit::plan::Family;
use meshinit::render::iptables_save::State;
use support::apply::{
    all_rules, assert_ok, assert_unchanged, default_args, in_pod, kernel_state, meshinit, plan_for,
    strings, tools_with_broken, VARIANTS,
};
use support::netlab::{Client, Lab, ListenerSpec, Netns};
use support::nft::listing;
use support::{diff, require_root};

/// A scratch directory for fake tools, unique per test and process.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/tmp/meshinit-safety-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Replaces one tool of a `tools_with_broken` directory with a shell script.
fn fake_tool(dir: &Path, name: &str, script: &str) {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn path_with(dir: &Path) -> Vec<(String, String)> {
    vec![(
        "PATH".to_string(),
        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", dir.display()),
    )]
}

fn with(args: &[String], extra: &[&str]) -> Vec<String> {
    let mut all = args.to_vec();
    all.extend(strings(extra));
    all
}

fn nft_table(pod: &Netns, family: &str, table: &str) -> String {
    String::from_utf8_lossy(
        &pod.run(&["nft", "list", "table", family, table], None)
            .stdout,
    )
    .into_owned()
}

fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or("")
}

// --- item 1: rollback -------------------------------------------------------------------------

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_rollback_leaves_a_foreign_nft_rule_byte_identical() {
    if !require_root("a_rollback_leaves_a_foreign_nft_rule_byte_identical") {
        return;
    }
    let lab = Lab::new().expect("lab");
    // Another owner's chain in `ip nat` with a set match iptables-nft-save cannot print (it
    // lists it as `-A FOREIGN -j ACCEPT`), and the base chains iptables-nft uses.
    lab.pod.nft_apply(
        "table ip nat {\n\
         chain PREROUTING { type nat hook prerouting priority -100; policy accept; }\n\
         chain INPUT { type nat hook input priority 100; policy accept; }\n\
         chain OUTPUT { type nat hook output priority -100; policy accept; }\n\
         chain POSTROUTING { type nat hook postrouting priority 100; policy accept; }\n\
         chain FOREIGN { ip daddr { 10.9.9.9, 10.9.9.10 } accept; }\n}\n",
    );
    let table_before = nft_table(&lab.pod, "ip", "nat");
    assert!(table_before.contains("10.9.9.10"), "{table_before}");
    let before = all_rules(&lab.pod);

    let dir = scratch("rollback");
    tools_with_broken(&dir, "ip6tables-nft-restore");
    let args = with(&default_args(), &["--force-iptables-binary=nft"]);
    let out = meshinit(&lab.pod, &args, &path_with(&dir));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let table_after = nft_table(&lab.pod, "ip", "nat");
    assert_eq!(
        table_after, table_before,
        "the foreign nft rule was rewritten by the rollback:\n{}",
        out.stderr
    );
    assert_unchanged(&before, &all_rules(&lab.pod), "rollback");
    // The message is true: the IPv6 write failed, the IPv4 one was undone, nothing is left.
    assert!(
        out.stderr.contains("simulated failure")
            && out.stderr.contains("IPv4: undone")
            && out.stderr.contains("nothing was left changed"),
        "{}",
        out.stderr
    );
    assert!(
        last_line(&out.stderr).contains("nothing changed"),
        "{}",
        out.stderr
    );
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_failed_atomic_write_is_not_rolled_back_and_foreign_rules_stay() {
    if !require_root("a_failed_atomic_write_is_not_rolled_back_and_foreign_rules_stay") {
        return;
    }
    for variant in VARIANTS {
        let lab = Lab::new().expect("lab");
        // A foreign rule added after our read would be lost by a whole-table rollback.
        let dir = scratch(&format!("atomic-{variant}"));
        tools_with_broken(&dir, "unused-placeholder");
        let real = format!("/usr/sbin/iptables-{variant}-restore");
        // The first restore adds a foreign rule (as another program racing with us would) and
        // fails our write; later ones are the real tool.
        fake_tool(
            &dir,
            &format!("iptables-{variant}-restore"),
            &format!(
                "if [ -e {d}/once ]; then exec {real} \"$@\"; fi\ntouch {d}/once\ncat >/dev/null\nprintf '*nat\\n-A OUTPUT -d 10.1.1.1/32 -j ACCEPT\\nCOMMIT\\n' | {real} --noflush\necho 'simulated failure' >&2\nexit 1\n",
                d = dir.display()
            ),
        );
        let args = with(
            &default_args(),
            &[
                "--ipv6=false",
                &format!("--force-iptables-binary={variant}"),
            ],
        );
        let out = meshinit(&lab.pod, &args, &path_with(&dir));
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(out.code, Some(1), "{variant}: {}", out.stderr);
        let now = all_rules(&lab.pod);
        assert!(
            now.contains("-A OUTPUT -d 10.1.1.1/32 -j ACCEPT") && !now.contains("ISTIO"),
            "{variant}: {now}\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("nothing was left changed"),
            "{variant}: {}",
            out.stderr
        );
    }
}

/// A tool directory whose `ip6tables-nft-restore` works once (the variant probe) and fails
/// every later write.
fn ipv6_writes_fail_after_the_probe(name: &str) -> PathBuf {
    let dir = scratch(name);
    tools_with_broken(&dir, "unused-placeholder");
    let d = dir.display();
    fake_tool(
        &dir,
        "ip6tables-nft-restore",
        &format!(
            "if [ -e {d}/once ]; then cat >/dev/null; echo 'simulated failure' >&2; exit 1; fi\ntouch {d}/once\nexec /usr/sbin/ip6tables-nft-restore \"$@\"\n"
        ),
    );
    dir
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_failed_nft_apply_leaves_the_nft_ruleset_as_it_found_it() {
    if !require_root("a_failed_nft_apply_leaves_the_nft_ruleset_as_it_found_it") {
        return;
    }
    // A fresh namespace: both probes create a nat table, the IPv4 write its base chains, the
    // IPv6 write fails and the IPv4 one is undone.
    let lab = Lab::new().expect("lab");
    let before = listing(&lab.pod);
    let dir = ipv6_writes_fail_after_the_probe("shells-fresh");
    let out = meshinit(&lab.pod, &default_args(), &path_with(&dir));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("simulated failure")
            && out.stderr.contains("IPv4: undone")
            && out.stderr.contains("\n    nothing was left changed\n"),
        "{}",
        out.stderr
    );
    let after = listing(&lab.pod);
    assert!(
        before == after,
        "a failed run left nf_tables objects:\n{}\n{}",
        diff(&before, &after),
        out.stderr
    );

    // Refused before any write (drift in IPv6) after the IPv4 probe created its table.
    let lab = Lab::new().expect("lab");
    lab.pod
        .ip6tables_restore("*nat\n:ISTIO_OUTPUT - [0:0]\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n");
    let before = listing(&lab.pod);
    let out = meshinit(&lab.pod, &default_args(), &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
    let after = listing(&lab.pod);
    assert!(
        before == after,
        "a refused run left nf_tables objects:\n{}\n{}",
        diff(&before, &after),
        out.stderr
    );

    // A table that was there keeps the base chain the probe added to it: the message says so.
    let lab = Lab::new().expect("lab");
    lab.pod.nft_apply(
        "table ip nat {\n chain PREROUTING { type nat hook prerouting priority -100; policy accept; }\n}\n",
    );
    let dir = ipv6_writes_fail_after_the_probe("shells-kept");
    let out = meshinit(&lab.pod, &default_args(), &path_with(&dir));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "\n    left: the empty base chain ip nat OUTPUT that iptables-nft created during this run (it holds no rule; `nft delete chain ip nat OUTPUT` removes it)\n"
        ) && !out.stderr.contains("nothing was left changed")
            && last_line(&out.stderr).contains("left changed"),
        "{}",
        out.stderr
    );
    assert!(
        !listing(&lab.pod).contains("table ip6 nat"),
        "the new IPv6 table is deleted"
    );
}

// --- item 2: interface names -------------------------------------------------------------------

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_bare_plus_interface_reads_back_exactly_and_cleans_up() {
    if !require_root("a_bare_plus_interface_reads_back_exactly_and_cleans_up") {
        return;
    }
    for variant in VARIANTS {
        for flag in ["-c", "-k"] {
            let what = format!("{flag} + on {variant}");
            let lab = Lab::new().expect("lab");
            let before = all_rules(&lab.pod);
            let args = with(
                &default_args(),
                &[flag, "+", &format!("--force-iptables-binary={variant}")],
            );
            let out = meshinit(&lab.pod, &args, &[]);
            assert_ok(&out, &what);
            let plan = plan_for(&args, &[]);
            for family in plan.families() {
                let state = kernel_state(&lab.pod, variant, &plan, family);
                assert_eq!(state, State::InPlace, "{what} {family:?}");
            }
            let again = meshinit(&lab.pod, &args, &[]);
            assert_ok(&again, &what);
            assert!(again.stderr.contains("nothing changed"), "{}", again.stderr);
            let check = meshinit(&lab.pod, &with(&args, &["--check"]), &[]);
            assert_eq!(check.code, Some(0), "{what}: {}", check.stderr);
            assert_ok(
                &meshinit(&lab.pod, &with(&args, &["--cleanup-only"]), &[]),
                &what,
            );
            assert_unchanged(&before, &all_rules(&lab.pod), &what);
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn an_interface_name_restore_would_rewrite_is_refused() {
    if !require_root("an_interface_name_restore_would_rewrite_is_refused") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    for (flag, long, env) in [
        (
            "-c",
            "--istio-exclude-interfaces",
            "ISTIO_EXCLUDE_INTERFACES",
        ),
        ("-k", "--kube-virt-interfaces", "KUBE_VIRT_INTERFACES"),
    ] {
        for name in ["eth0\"", "\"eth0\""] {
            let out = meshinit(&lab.pod, &with(&default_args(), &[flag, name]), &[]);
            assert_eq!(out.code, Some(2), "{flag} {name}: {}", out.stderr);
            assert!(
                out.stderr.contains(long)
                    && out.stderr.contains(flag)
                    && out.stderr.contains(env)
                    && out.stderr.contains("eth0\\\""),
                "{}",
                out.stderr
            );
            assert_unchanged(&before, &all_rules(&lab.pod), name);
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn any_read_back_difference_is_a_failure_that_is_rolled_back() {
    if !require_root("any_read_back_difference_is_a_failure_that_is_rolled_back") {
        return;
    }
    for variant in VARIANTS {
        let lab = Lab::new().expect("lab");
        let before = all_rules(&lab.pod);
        // The first read after the write misses one of our rules (as when the kernel or the
        // tool does not hold what was written); later reads tell the truth.
        let dir = scratch(&format!("readback-{variant}"));
        tools_with_broken(&dir, "unused-placeholder");
        let d = dir.display();
        let restore = format!("iptables-{variant}-restore");
        let save = format!("iptables-{variant}-save");
        fake_tool(
            &dir,
            &restore,
            &format!("/usr/sbin/{restore} \"$@\" && touch {d}/written\n"),
        );
        fake_tool(
            &dir,
            &save,
            &format!(
                "if [ -e {d}/written ] && [ ! -e {d}/lied ]; then touch {d}/lied; /usr/sbin/{save} | grep -v -- '-A ISTIO_OUTPUT -j ISTIO_REDIRECT'; else exec /usr/sbin/{save}; fi\n"
            ),
        );
        let args = with(
            &default_args(),
            &[
                "--ipv6=false",
                &format!("--force-iptables-binary={variant}"),
            ],
        );
        let out = meshinit(&lab.pod, &args, &path_with(&dir));
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(out.code, Some(1), "{variant}: {}", out.stderr);
        assert!(
            out.stderr.contains("read-back differs")
                && out.stderr.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
            "{variant}: {}",
            out.stderr
        );
        assert_unchanged(&before, &all_rules(&lab.pod), variant);
    }
}

// --- item 6: state that cannot be read ---------------------------------------------------------

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn check_without_capabilities_fails_naming_the_cause() {
    if !require_root("check_without_capabilities_fails_naming_the_cause") {
        return;
    }
    for variant in VARIANTS {
        let lab = Lab::new().expect("lab");
        let args = with(
            &default_args(),
            &[&format!("--force-iptables-binary={variant}")],
        );
        assert_ok(&meshinit(&lab.pod, &args, &[]), variant);
        for forced in [true, false] {
            let mut check = default_args();
            check.push("--check".to_string());
            if forced {
                check.push(format!("--force-iptables-binary={variant}"));
            }
            let out = in_pod(&lab.pod).nobody().args(check).run();
            let stderr = &out.stderr;
            assert_eq!(out.code, Some(1), "{variant} {forced}: {stderr}");
            assert!(
                stderr.contains("Permission denied") && stderr.contains("-save"),
                "{variant} {forced}: {stderr}"
            );
            assert!(!stderr.contains("none of our rules"), "{stderr}");
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_failing_save_tool_fails_cleanup_and_check() {
    if !require_root("a_failing_save_tool_fails_cleanup_and_check") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let args = with(&default_args(), &["--force-iptables-binary=nft"]);
    assert_ok(&meshinit(&lab.pod, &args, &[]), "install");
    let installed = all_rules(&lab.pod);
    let dir = scratch("failing-save");
    tools_with_broken(&dir, "unused-placeholder");
    // The legacy tools fail to read, as on a node where they cannot (the nft rules are ours).
    fake_tool(
        &dir,
        "ip6tables-legacy-save",
        "echo 'ip6tables-legacy-save: simulated read failure' >&2\nexit 1\n",
    );
    let env = path_with(&dir);
    let out = meshinit(&lab.pod, &with(&default_args(), &["--cleanup-only"]), &env);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("simulated read failure"),
        "{}",
        out.stderr
    );
    assert_unchanged(&installed, &all_rules(&lab.pod), "failed cleanup");
    // Neither --check nor a run may decide without the unreadable variant.
    for extra in ["--check", "--force-apply"] {
        let out = meshinit(&lab.pod, &with(&default_args(), &[extra]), &env);
        assert_eq!(out.code, Some(1), "{extra}: {}", out.stderr);
        assert!(
            out.stderr.contains("simulated read failure"),
            "{extra}: {}",
            out.stderr
        );
        assert_unchanged(&installed, &all_rules(&lab.pod), extra);
    }
    std::fs::remove_dir_all(&dir).ok();
}

// --- item 7: shadowing rules ---------------------------------------------------------------------

fn any4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn check_reports_rules_that_take_traffic_away_from_our_jumps() {
    if !require_root("check_reports_rules_that_take_traffic_away_from_our_jumps") {
        return;
    }
    for variant in VARIANTS {
        let lab = Lab::new().expect("lab");
        let _outbound = ListenerSpec::tcp("outbound", any4(15001))
            .start(&lab.pod)
            .unwrap();
        let _peer = ListenerSpec::tcp("peer-80", any4(80))
            .start(&lab.peer)
            .unwrap();
        let args = with(
            &default_args(),
            &[
                "--ipv6=false",
                &format!("--force-iptables-binary={variant}"),
            ],
        );
        assert_ok(&meshinit(&lab.pod, &args, &[]), variant);
        let dst = lab.peer4(80);
        let app = Client::user(1000, 1000);
        let landed = app.tcp(&lab.pod, dst).expect("connects");
        assert_eq!(landed.listener, "outbound", "{variant}: captured first");
        let check = with(&args, &["--check"]);
        assert_eq!(meshinit(&lab.pod, &check, &[]).code, Some(0));

        // A conditional rule ahead of our jump: a warning, the check still passes.
        let tool = format!("iptables-{variant}");
        lab.pod.run(
            &[
                &tool,
                "-t",
                "nat",
                "-I",
                "OUTPUT",
                "1",
                "-d",
                "10.200.0.0/16",
                "-j",
                "ACCEPT",
            ],
            None,
        );
        let out = meshinit(&lab.pod, &check, &[]);
        assert_eq!(out.code, Some(0), "{variant}: {}", out.stderr);
        assert!(
            out.stderr.contains("-A OUTPUT -d 10.200.0.0/16 -j ACCEPT"),
            "{variant}: {}",
            out.stderr
        );

        // An unconditional ACCEPT ahead of our jump: all outbound traffic bypasses the proxy.
        lab.pod.run(
            &[&tool, "-t", "nat", "-I", "OUTPUT", "1", "-j", "ACCEPT"],
            None,
        );
        let landed = app.tcp(&lab.pod, dst).expect("connects");
        assert_eq!(landed.listener, "peer-80", "{variant}: the bypass is real");
        let out = meshinit(&lab.pod, &check, &[]);
        assert_eq!(out.code, Some(3), "{variant}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("nat: -A OUTPUT -j ACCEPT (rule 1) takes all traffic before our jump -A OUTPUT -j ISTIO_OUTPUT"),
            "{variant}: {}",
            out.stderr
        );
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_stray_return_before_a_fresh_install_fails_the_check() {
    if !require_root("a_stray_return_before_a_fresh_install_fails_the_check") {
        return;
    }
    for variant in VARIANTS {
        let lab = Lab::new().expect("lab");
        // What an old cleanup of `-c +` left behind, or a user chain that can accept all.
        lab.pod.run(
            &[&format!("iptables-{variant}-restore"), "--noflush"],
            Some("*nat\n:FOREIGN - [0:0]\n-A PREROUTING -j FOREIGN\n-A OUTPUT -j RETURN\n-A FOREIGN -p udp -j RETURN\n-A FOREIGN -j ACCEPT\nCOMMIT\n"),
        );
        let args = with(
            &default_args(),
            &[
                "--ipv6=false",
                &format!("--force-iptables-binary={variant}"),
            ],
        );
        let out = meshinit(&lab.pod, &args, &[]);
        assert_eq!(out.code, Some(0), "{variant}: {}", out.stderr);
        assert!(
            out.stderr.contains("takes all traffic before our jump"),
            "apply warns: {}",
            out.stderr
        );
        let out = meshinit(&lab.pod, &with(&args, &["--check"]), &[]);
        assert_eq!(out.code, Some(3), "{variant}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("nat: -A OUTPUT -j RETURN (rule 1) takes all traffic")
                && out
                    .stderr
                    .contains("nat: -A PREROUTING -j FOREIGN (rule 1) takes all traffic"),
            "{variant}: {}",
            out.stderr
        );
        assert!(
            !last_line(&out.stderr).contains("in place"),
            "{}",
            out.stderr
        );
    }
}

// --- item 11: the variant-detection probe --------------------------------------------------------

const PROBE: &str = "-A OUTPUT -p 255 -j RETURN";

fn nat_v4(pod: &Netns) -> String {
    String::from_utf8_lossy(&pod.run(&["iptables-nft-save", "-t", "nat"], None).stdout).into_owned()
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_leaked_probe_rule_is_removed_by_a_run_and_cleanup_and_reported_by_check() {
    if !require_root("a_leaked_probe_rule_is_removed_by_a_run_and_cleanup_and_reported_by_check") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let plant = || {
        lab.pod.run(
            &[
                "iptables-nft",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "255",
                "-j",
                "RETURN",
            ],
            None,
        );
    };
    // A run killed between the probe's add and delete left the rule; the next run detects
    // the variant again (nothing of ours installed yet).
    plant();
    let args = default_args();
    let out = meshinit(&lab.pod, &args, &[]);
    assert_ok(&out, "run after a leaked probe");
    assert!(!nat_v4(&lab.pod).contains(PROBE), "{}", nat_v4(&lab.pod));
    let plan = plan_for(&args, &[]);
    assert_eq!(
        kernel_state(&lab.pod, "nft", &plan, Family::V4),
        State::InPlace
    );

    // Leaked next to rules in place: --check warns (it matches nothing, capture is in
    // effect), a re-run removes it.
    plant();
    let check = meshinit(&lab.pod, &with(&args, &["--check"]), &[]);
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    assert!(
        check.stderr.contains("probe") && check.stderr.contains(PROBE),
        "{}",
        check.stderr
    );
    assert_ok(&meshinit(&lab.pod, &args, &[]), "re-run");
    assert!(!nat_v4(&lab.pod).contains(PROBE), "{}", nat_v4(&lab.pod));
    assert_eq!(
        meshinit(&lab.pod, &with(&args, &["--check"]), &[]).code,
        Some(0)
    );

    // Cleanup removes it too, leaving nothing of ours.
    plant();
    assert_ok(
        &meshinit(&lab.pod, &with(&args, &["--cleanup-only"]), &[]),
        "cleanup",
    );
    let nat = nat_v4(&lab.pod);
    assert!(!nat.contains(PROBE) && !nat.contains("ISTIO"), "{nat}");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn killing_runs_during_detection_never_leaks_the_probe() {
    if !require_root("killing_runs_during_detection_never_leaks_the_probe") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let mut args = default_args();
    args.push(format!("--network-namespace={}", lab.pod.path().display()));
    for i in 0..40u64 {
        let mut child = support::Meshinit::new()
            .args(&args)
            .real_path()
            .stderr(std::process::Stdio::null())
            .spawn();
        std::thread::sleep(std::time::Duration::from_millis(2 + (i * 7) % 25));
        let _ = child.kill();
        let _ = child.wait();
        let nat = nat_v4(&lab.pod);
        assert!(!nat.contains(PROBE), "run {i} leaked the probe:\n{nat}");
        let mut cleanup = args.clone();
        cleanup.push("--cleanup-only".to_string());
        let out = support::run_meshinit(&cleanup, &[support::apply::path_env()]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
}

// --- item 9: messages ---------------------------------------------------------------------------

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_rollback_that_fails_says_what_is_left() {
    if !require_root("a_rollback_that_fails_says_what_is_left") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let dir = scratch("rollback-fails");
    tools_with_broken(&dir, "ip6tables-nft-restore");
    let d = dir.display();
    // The IPv4 write works; every later IPv4 restore (the rollback) fails.
    fake_tool(
        &dir,
        "iptables-nft-restore",
        &format!(
            "if [ -e {d}/once ]; then cat >/dev/null; echo 'simulated rollback failure' >&2; exit 1; fi\ntouch {d}/once\nexec /usr/sbin/iptables-nft-restore \"$@\"\n"
        ),
    );
    let args = with(&default_args(), &["--force-iptables-binary=nft"]);
    let out = meshinit(&lab.pod, &args, &path_with(&dir));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("simulated rollback failure")
            && out.stderr.contains("left changed")
            && !out.stderr.contains("nothing was left changed"),
        "{}",
        out.stderr
    );
    let summary = last_line(&out.stderr);
    assert!(
        !summary.contains("nothing changed") && summary.contains("left changed"),
        "{summary}"
    );
    // And it is true: our IPv4 rules are there.
    assert!(all_rules(&lab.pod).contains("ISTIO_OUTPUT"));
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_tool_killed_by_a_signal_is_named_with_the_signal() {
    if !require_root("a_tool_killed_by_a_signal_is_named_with_the_signal") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    let dir = scratch("signal");
    tools_with_broken(&dir, "unused-placeholder");
    // As iptables-nft 1.8.7's save does on a foreign base chain (a double free): SIGABRT.
    fake_tool(&dir, "iptables-nft-save", "kill -ABRT $$\n");
    let args = with(&default_args(), &["--force-iptables-binary=nft"]);
    let out = meshinit(&lab.pod, &args, &path_with(&dir));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("iptables-nft-save was killed by signal 6 (SIGABRT)")
            && !out.stderr.contains("None")
            && !out.stderr.contains("Some("),
        "{}",
        out.stderr
    );
    assert_unchanged(&before, &all_rules(&lab.pod), "a killed save");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn the_backend_choice_is_logged_without_nested_parentheses() {
    if !require_root("the_backend_choice_is_logged_without_nested_parentheses") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let out = meshinit(&lab.pod, &default_args(), &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("backend: "))
        .unwrap_or_default();
    assert!(
        line.ends_with("\tbackend: iptables (Istio's default, as iptables tools are installed)"),
        "{line:?}"
    );
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn ipv6_disabled_in_the_namespace_is_named() {
    if !require_root("ipv6_disabled_in_the_namespace_is_named") {
        return;
    }
    for backend in ["--backend=iptables", "--native-nftables"] {
        let lab = Lab::new().expect("lab");
        lab.pod.run(
            &["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
            None,
        );
        lab.pod.run(
            &["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=1"],
            None,
        );
        let before = all_rules(&lab.pod);
        let out = meshinit(&lab.pod, &with(&default_args(), &[backend]), &[]);
        assert_eq!(out.code, Some(1), "{backend}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("IPv6 is disabled in this network namespace")
                && out.stderr.contains("disable_ipv6"),
            "{backend}: {}",
            out.stderr
        );
        assert_unchanged(&before, &all_rules(&lab.pod), backend);
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn dns_capture_with_only_ipv6_servers_and_ipv6_off_warns() {
    if !require_root("dns_capture_with_only_ipv6_servers_and_ipv6_off_warns") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let args = with(
        &default_args(),
        &["--ipv6=false", "--redirect-dns", "--dns-servers=fd00::10"],
    );
    let out = meshinit(&lab.pod, &args, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("warn")
            && out.stderr.contains("fd00::10")
            && out.stderr.contains("IPv6 is off"),
        "{}",
        out.stderr
    );
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_failed_reconcile_and_a_failed_cleanup_are_undone_exactly() {
    if !require_root("a_failed_reconcile_and_a_failed_cleanup_are_undone_exactly") {
        return;
    }
    for variant in VARIANTS {
        let lab = Lab::new().expect("lab");
        let force = format!("--force-iptables-binary={variant}");
        // Foreign rules around ours in the chains we use.
        lab.pod.run(
            &[&format!("iptables-{variant}-restore"), "--noflush"],
            Some("*nat\n-A OUTPUT -d 10.1.1.1/32 -j ACCEPT\n-A PREROUTING -d 10.1.1.2/32 -j ACCEPT\nCOMMIT\n"),
        );
        let first = with(
            &default_args(),
            &["--redirect-dns", "--capture-all-dns", "-c", "eth7", &force],
        );
        assert_ok(&meshinit(&lab.pod, &first, &[]), variant);
        lab.pod.run(
            &[&format!("iptables-{variant}-restore"), "--noflush"],
            Some("*nat\n-A OUTPUT -d 10.1.1.3/32 -j ACCEPT\nCOMMIT\n"),
        );
        let installed = all_rules(&lab.pod);

        let dir = scratch(&format!("undo-{variant}"));
        tools_with_broken(&dir, &format!("ip6tables-{variant}-restore"));
        let env = path_with(&dir);
        let second = with(
            &default_args(),
            &["-i", "10.0.0.0/8", "-q", "443", "--reconcile", &force],
        );
        let out = meshinit(&lab.pod, &second, &env);
        assert_eq!(out.code, Some(1), "{variant}: {}", out.stderr);
        assert!(
            out.stderr.contains("IPv4: undone") && out.stderr.contains("nothing was left changed"),
            "{}",
            out.stderr
        );
        assert_unchanged(&installed, &all_rules(&lab.pod), "failed reconcile");

        let cleanup = with(&first, &["--cleanup-only"]);
        let out = meshinit(&lab.pod, &cleanup, &env);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(out.code, Some(1), "{variant}: {}", out.stderr);
        assert!(
            out.stderr.contains("IPv4: undone") && out.stderr.contains("nothing was left changed"),
            "{}",
            out.stderr
        );
        assert_unchanged(&installed, &all_rules(&lab.pod), "failed cleanup");
    }
}
