//! The iptables variant probe and the inventory's reads on a real kernel, with stand-in tools
//! on PATH for the answers a test cannot provoke (the kernel's EBUSY, a tool killed by a
//! signal, a save tool's lock message): a probe failing for another reason than nft being
//! unusable never silently picks legacy — a transient one is retried under `--retries` and
//! ends with nft, any other fails naming the tool and changes nothing — and a transient read
//! error is retried by apply, `--check` and `--cleanup-only`.

mod support;

use std::path::PathBuf;

use support::apply::{
    assert_outbound_captured, assert_unchanged, meshinit, rearm, retry_lines, stand_in, strings,
};
use support::netlab::{Lab, Netns};
use support::{istio_init_args, require_root};

/// Istio's default arguments for IPv4 only, detection left to meshinit, plus `extra`.
fn args(extra: &[&str]) -> Vec<String> {
    let mut args = istio_init_args(&["--ipv6=false"]);
    args.extend(strings(extra));
    args
}

/// Everything a run could change: both variants (both families), nf_tables, routing.
fn state(ns: &Netns) -> String {
    let mut out = String::new();
    for tool in [
        "iptables-legacy-save",
        "ip6tables-legacy-save",
        "iptables-nft-save",
        "ip6tables-nft-save",
    ] {
        let saved = String::from_utf8_lossy(&ns.run(&[tool], None).stdout).into_owned();
        // Header and footer lines carry the time of the dump.
        let saved: String = saved
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        out.push_str(&format!("== {tool}\n{saved}"));
    }
    out.push_str(&format!(
        "== nft list ruleset\n{}",
        support::nft::listing(ns)
    ));
    out.push_str(&support::apply::routing_state(ns, |_| true));
    out
}

fn tool_rules(ns: &Netns, tool: &str) -> String {
    String::from_utf8_lossy(&ns.run(&[tool], None).stdout).into_owned()
}

/// The probe's transaction, as meshinit feeds it (`PROBE_INPUT`).
const PROBE: &str = "-A OUTPUT -p 255 -j RETURN";

/// iptables-nft 1.8.9's text when the kernel answers the probe's first request EBUSY
/// (measured: `strace -e inject=sendto:error=EBUSY:when=1 iptables-nft-restore --noflush`).
const EBUSY: &str = "iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Device or resource busy";

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_probe_answered_ebusy_is_retried_and_ends_with_nft_never_legacy() {
    if !require_root("a_probe_answered_ebusy_is_retried_and_ends_with_nft_never_legacy") {
        return;
    }
    let dir = PathBuf::from(format!("/tmp/meshinit-probe-ebusy-{}", std::process::id()));
    let env = stand_in(
        &dir,
        "iptables-nft-restore",
        PROBE,
        &format!("echo '{EBUSY}' >&2; exit 4"),
    );

    // Without retries: fails naming EBUSY, suggests --retries, and leaves nothing.
    let lab = Lab::new().expect("lab");
    let before = state(&lab.pod);
    let out = meshinit(&lab.pod, &args(&[]), &env);
    let after = state(&lab.pod);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "the nft variant's nat table probe (iptables-nft-restore --noflush) failed for a reason that does not show nft to be unusable here, so no iptables variant was chosen for V4: iptables-nft-restore exited with code 4: "
        ) && out.stderr.contains("Device or resource busy")
            && out.stderr.contains("--retries retries such failures")
            && !out.stderr.contains("using iptables-legacy-restore"),
        "{}",
        out.stderr
    );
    assert_unchanged(&before, &after, "EBUSY without retries");

    // With retries: the next attempt probes again, nft works, and the rules go into nft.
    rearm(&dir);
    let out = meshinit(
        &lab.pod,
        &args(&["--retries=2", "--retry-pause=100ms"]),
        &env,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let retries = retry_lines(&out);
    assert!(
        retries.len() == 1
            && retries[0].contains(
                "iptables-nft-restore: the kernel answered EBUSY (Device or resource busy) (exited with code 4)"
            )
            && retries[0].contains("retrying in 100ms"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(
            "IPv4: using iptables-nft-restore, because nft works: its nat table probe passed"
        ),
        "{}",
        out.stderr
    );
    assert!(
        tool_rules(&lab.pod, "iptables-nft-save").contains(":ISTIO_OUTPUT")
            && !tool_rules(&lab.pod, "iptables-legacy-save").contains("ISTIO"),
        "the rules must be in the nft variant only"
    );
    assert_outbound_captured(&lab, "after the retried probe");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_probe_killed_by_a_signal_is_an_error_not_legacy() {
    if !require_root("a_probe_killed_by_a_signal_is_an_error_not_legacy") {
        return;
    }
    let dir = PathBuf::from(format!("/tmp/meshinit-probe-killed-{}", std::process::id()));
    let env = stand_in(
        &dir,
        "iptables-nft-restore",
        PROBE,
        "echo 'about to die' >&2; kill -KILL $$",
    );
    let lab = Lab::new().expect("lab");
    let before = state(&lab.pod);
    // Not transient: not retried either.
    let out = meshinit(
        &lab.pod,
        &args(&["--retries=3", "--retry-pause=100ms"]),
        &env,
    );
    let after = state(&lab.pod);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "so no iptables variant was chosen for V4: iptables-nft-restore was killed by signal 9 (SIGKILL): about to die; nothing was changed"
        ) && retry_lines(&out).is_empty()
            && !out.stderr.contains("using iptables-legacy-restore"),
        "{}",
        out.stderr
    );
    assert_unchanged(&before, &after, "probe killed");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_probe_killed_at_the_deadline_is_an_error_not_legacy() {
    if !require_root("a_probe_killed_at_the_deadline_is_an_error_not_legacy") {
        return;
    }
    let dir = PathBuf::from(format!("/tmp/meshinit-probe-hangs-{}", std::process::id()));
    let env = stand_in(&dir, "iptables-nft-restore", PROBE, "sleep 30");
    let lab = Lab::new().expect("lab");
    let before = state(&lab.pod);
    let started = std::time::Instant::now();
    let out = meshinit(&lab.pod, &args(&["--timeout=2s", "--retries=3"]), &env);
    let took = started.elapsed();
    let after = state(&lab.pod);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    assert!(
        out.stderr.contains("so no iptables variant was chosen for V4: iptables-nft-restore did not finish within ")
            && out.stderr.contains("and was killed at the run's deadline (--timeout 2s from the start of the run); nothing was changed")
            && retry_lines(&out).is_empty()
            && !out.stderr.contains("using iptables-legacy-restore"),
        "{}",
        out.stderr
    );
    assert_unchanged(&before, &after, "probe killed at the deadline");
}

/// A kernel without nf_tables, or without its nat support, is still told apart: the probe's
/// measured texts for them (played by the stand-in; see `not_usable` in
/// src/apply/iptables.rs for how they were measured) pick legacy, saying why in one line.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_probe_saying_nf_tables_or_its_nat_is_missing_picks_legacy() {
    if !require_root("a_probe_saying_nf_tables_or_its_nat_is_missing_picks_legacy") {
        return;
    }
    for (answer, line) in [
        (
            "echo 'iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Invalid argument' >&2; exit 4",
            "IPv4: using iptables-legacy-restore, because nft is not usable here: the kernel has no nf_tables; iptables-nft-restore exited with code 4: iptables-nft-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Invalid argument\n",
        ),
        (
            "printf 'iptables-nft-restore v1.8.9 (nf_tables): \\nline 2: CHAIN_ADD failed (No such file or directory): chain OUTPUT\\nline 2: RULE_APPEND failed (No such file or directory): rule in chain OUTPUT\\n' >&2; exit 4",
            "IPv4: using iptables-legacy-restore, because nft is not usable here: the kernel has no nf_tables nat support (nft_chain_nat); iptables-nft-restore exited with code 4: iptables-nft-restore v1.8.9 (nf_tables): line 2: CHAIN_ADD failed (No such file or directory): chain OUTPUT line 2: RULE_APPEND failed (No such file or directory): rule in chain OUTPUT\n",
        ),
    ] {
        let dir = PathBuf::from(format!("/tmp/meshinit-probe-nonft-{}", std::process::id()));
        let env = stand_in(&dir, "iptables-nft-restore", PROBE, answer);
        let lab = Lab::new().expect("lab");
        let out = meshinit(&lab.pod, &args(&[]), &env);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(out.stderr.contains(line), "{line}\n{}", out.stderr);
        assert!(tool_rules(&lab.pod, "iptables-legacy-save").contains(":ISTIO_OUTPUT"));
        assert_outbound_captured(&lab, "legacy");
    }
}

/// iptables 1.8.9's text when the xtables lock stays held past its wait (exit 4).
const LOCK: &str = "Another app is currently holding the xtables lock. Stopped waiting after 1s.";

/// A save tool answering the lock message once while the inventory reads: apply, `--check`
/// and `--cleanup-only` retry it under `--retries`; without, `--check` fails saying it may
/// pass.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_read_answered_with_the_lock_message_is_retried_by_apply_check_and_cleanup() {
    if !require_root("a_read_answered_with_the_lock_message_is_retried_by_apply_check_and_cleanup")
    {
        return;
    }
    let dir = PathBuf::from(format!("/tmp/meshinit-read-lock-{}", std::process::id()));
    let env = stand_in(
        &dir,
        "iptables-legacy-save",
        "",
        &format!("echo '{LOCK}' >&2; exit 4"),
    );
    let reason =
        "iptables-legacy-save: another program held the xtables lock longer than --xtables-wait";
    let lab = Lab::new().expect("lab");
    let nft = |extra: &[&str]| {
        let mut a = args(&["--force-iptables-binary=nft"]);
        a.extend(strings(extra));
        a
    };
    let retried = ["--retries=2", "--retry-pause=100ms"];

    // Apply without retries: refused, nothing changed.
    let before = state(&lab.pod);
    let out = meshinit(&lab.pod, &nft(&[]), &env);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot see everything of ours in this network namespace")
            && out.stderr.contains(LOCK)
            && out.stderr.contains("--retries retries such failures"),
        "{}",
        out.stderr
    );
    assert_unchanged(&before, &state(&lab.pod), "apply without retries");

    for (what, extra) in [
        ("apply", &[][..]),
        ("check", &["--check"][..]),
        ("cleanup", &["--cleanup-only"][..]),
    ] {
        if what == "check" {
            // Without retries --check fails, saying that it may pass.
            rearm(&dir);
            let out = meshinit(&lab.pod, &nft(extra), &env);
            assert_eq!(out.code, Some(1), "{what}: {}", out.stderr);
            assert!(
                out.stderr.contains("--retries retries such failures") && out.stderr.contains(LOCK),
                "{what}: {}",
                out.stderr
            );
        }
        rearm(&dir);
        let mut extra = extra.to_vec();
        extra.extend(retried);
        let out = meshinit(&lab.pod, &nft(&extra), &env);
        assert_eq!(out.code, Some(0), "{what}: {}", out.stderr);
        let retries = retry_lines(&out);
        assert!(
            retries.len() == 1 && retries[0].contains(reason),
            "{what}: {}",
            out.stderr
        );
        if what == "apply" {
            assert_outbound_captured(&lab, "after the retried read");
        }
    }
    assert!(
        !tool_rules(&lab.pod, "iptables-nft-save").contains("ISTIO"),
        "the cleanup removed ours"
    );
    std::fs::remove_dir_all(&dir).ok();
}
