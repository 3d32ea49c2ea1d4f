//! Faults on a real kernel, each followed by proof that the namespace is unchanged: an IPv6
//! half that conflicts while IPv4 would apply, IPv6 tools missing while IPv6 is on, the
//! xtables lock held by someone else, meshinit's own lock held, and a kernel piece missing.

mod support;

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use support::apply::{
    all_rules, assert_unchanged, default_args, hold_meshinit_lock, in_pod, meshinit, strings,
    tools_with_broken,
};
use support::netlab::Lab;
use support::require_root;

/// Takes an exclusive flock on `path` (created if missing), as another program would.
fn hold_lock(path: impl AsRef<std::path::Path>, what: &str) -> Flock<std::fs::File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    Flock::lock(file, FlockArg::LockExclusive).unwrap_or_else(|_| panic!("{what}"))
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_conflicting_ipv6_half_stops_everything_before_ipv4_is_touched() {
    if !require_root("a_conflicting_ipv6_half_stops_everything_before_ipv4_is_touched") {
        return;
    }
    let lab = Lab::new().expect("lab");
    // Someone else's (or an old) ISTIO_OUTPUT in IPv6 only.
    lab.pod.run(
        &["ip6tables-nft-restore", "--noflush"],
        Some("*nat\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n"),
    );
    let before = all_rules(&lab.pod);
    let mut args = default_args();
    args.push("--force-iptables-binary=nft".to_string());
    let out = meshinit(&lab.pod, &args, &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("IPv6:") && out.stderr.contains("--reconcile"),
        "{}",
        out.stderr
    );
    assert_unchanged(&before, &all_rules(&lab.pod), "IPv6 conflict");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn missing_ipv6_tools_with_ipv6_on_change_nothing() {
    if !require_root("missing_ipv6_tools_with_ipv6_on_change_nothing") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    // A PATH with every iptables tool except the IPv6 ones.
    let dir = PathBuf::from(format!("/tmp/meshinit-faults-no6-{}", std::process::id()));
    let path = tools_with_broken(&dir, "unused-placeholder");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ip6tables")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let env = vec![("PATH".to_string(), format!("{path}:/usr/bin:/bin"))];
    let out = meshinit(&lab.pod, &default_args(), &env);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("ip6tables") && out.stderr.contains("not installed"),
        "{}",
        out.stderr
    );
    assert_unchanged(&before, &all_rules(&lab.pod), "missing ip6tables");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_held_xtables_lock_is_waited_for_then_reported() {
    if !require_root("a_held_xtables_lock_is_waited_for_then_reported") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    // The legacy tools' lock is one file per host, shared by every namespace.
    let held = hold_lock("/run/xtables.lock", "take the xtables lock");
    let mut args = default_args();
    args.extend(strings(&[
        "--force-iptables-binary=legacy",
        "--xtables-wait=1s",
    ]));
    let started = Instant::now();
    let out = meshinit(&lab.pod, &args, &[]);
    let waited = started.elapsed();
    drop(held);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("xtables lock"), "{}", out.stderr);
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(20),
        "waited {waited:?}"
    );
    assert_unchanged(&before, &all_rules(&lab.pod), "xtables lock held");
    // With --cni-mode the pod's rules use a lock of the pod's own: the host's lock holder
    // does not delay them.
    let held = hold_lock("/run/xtables.lock", "take the xtables lock again");
    let mut cni = args.clone();
    cni.push("--cni-mode".to_string());
    let out = meshinit(&lab.pod, &cni, &[]);
    drop(held);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_held_meshinit_lock_is_waited_for_then_reported() {
    if !require_root("a_held_meshinit_lock_is_waited_for_then_reported") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    // meshinit's lock is an abstract unix socket name in the namespace.
    let held = hold_meshinit_lock(&lab.pod);
    let mut args = default_args();
    args.push("--xtables-wait=1s".to_string());
    let out = meshinit(&lab.pod, &args, &[]);
    drop(held);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("another meshinit holds"),
        "{}",
        out.stderr
    );
    assert_unchanged(&before, &all_rules(&lab.pod), "meshinit lock held");
}

/// The kernel pieces cannot be unloaded from a test, so the missing piece is played by a tool
/// that fails with the exact message iptables prints when a target module is missing.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_missing_kernel_piece_is_named_and_nothing_is_left() {
    if !require_root("a_missing_kernel_piece_is_named_and_nothing_is_left") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    let dir = PathBuf::from(format!(
        "/tmp/meshinit-faults-tproxy-{}",
        std::process::id()
    ));
    let path = tools_with_broken(&dir, "iptables-nft-restore");
    std::fs::write(
        dir.join("iptables-nft-restore"),
        "#!/bin/sh\ncat >/dev/null\necho \"iptables-restore v1.8.9 (nf_tables): Couldn't load target \\`TPROXY':No such file or directory\" >&2\nexit 2\n",
    )
    .unwrap();
    let env = vec![("PATH".to_string(), format!("{path}:/usr/bin:/bin"))];
    let mut args = default_args();
    args.extend(strings(&["-m", "TPROXY", "--force-iptables-binary=nft"]));
    let out = meshinit(&lab.pod, &args, &env);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("xt_TPROXY"),
        "names the missing module: {}",
        out.stderr
    );
    // The TPROXY routes were added before the rules and must be gone again.
    assert_unchanged(&before, &all_rules(&lab.pod), "missing TPROXY");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn invalid_input_exits_2_and_changes_nothing() {
    if !require_root("invalid_input_exits_2_and_changes_nothing") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    // (extra arguments, environment)
    type Input<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let bad: &[Input] = &[
        (&["-p", "0"], &[]),
        (&["-i", "10.0.0.0/33"], &[]),
        (&["-k", "bad/name"], &[]),
        (&["-m", "TPROXY", "-t", "1338"], &[]),
        (&[], &[("ISTIO_OUTBOUND_OWNER_GROUPS", "a b")]),
        (&[], &[("INVALID_DROP", "maybe")]),
        (&["--no-such-flag"], &[]),
    ];
    for (extra, env) in bad {
        let mut args = default_args();
        args.extend(strings(extra));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let out = meshinit(&lab.pod, &args, &env);
        assert_eq!(out.code, Some(2), "{extra:?} {env:?}: {}", out.stderr);
        assert_unchanged(&before, &all_rules(&lab.pod), &format!("{extra:?}"));
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_non_root_user_with_file_capabilities_can_apply() {
    if !require_root("a_non_root_user_with_file_capabilities_can_apply") {
        return;
    }
    let lab = Lab::new().expect("lab");
    // A copy of the binary carrying NET_ADMIN and NET_RAW as file capabilities, run as nobody:
    // the iptables tools it starts get the capabilities only through the ambient set.
    let dir = PathBuf::from(format!("/tmp/meshinit-filecaps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("meshinit");
    std::fs::copy(support::MESHINIT, &binary).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let status = std::process::Command::new("setcap")
        .args(["cap_net_admin,cap_net_raw+ep", binary.to_str().unwrap()])
        .status()
        .expect("setcap (libcap2-bin) is installed");
    assert!(status.success());
    let out = in_pod(&lab.pod)
        .nobody()
        .binary(&binary)
        .args(default_args())
        // nft: legacy would also need write access to /run/xtables.lock, which nobody lacks.
        .arg("--force-iptables-binary=nft")
        .run();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rules = all_rules(&lab.pod);
    assert!(
        rules.contains("ISTIO_OUTPUT") && rules.contains("::6/128"),
        "{rules}"
    );
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn an_unknown_owner_group_is_named_and_nothing_changes() {
    if !require_root("an_unknown_owner_group_is_named_and_nothing_changes") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    let env = vec![(
        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE".to_string(),
        "no-such-group-42".to_string(),
    )];
    for backend in ["--backend=iptables", "--native-nftables"] {
        let mut args = default_args();
        args.push(backend.to_string());
        let out = meshinit(&lab.pod, &args, &env);
        assert_eq!(out.code, Some(1), "{backend}: {}", out.stderr);
        assert!(
            out.stderr.contains("no-such-group-42"),
            "{backend}: {}",
            out.stderr
        );
        assert_unchanged(&before, &all_rules(&lab.pod), backend);
    }
}
