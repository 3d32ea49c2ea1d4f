//! meshinit's per-namespace lock on a real kernel: it needs no file system (concurrent runs
//! with different configurations under a read-only `/run` still end in exactly one of them),
//! a held lock is waited for and its holder named, and no run leaves a file in `/run`.

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::apply::{
    default_args, hold_meshinit_lock, in_pod, meshinit, path_env, routing_state, rules_of, strings,
    tools_with_broken,
};
use support::netlab::{Lab, Netns};
use support::{diff, require_root};

use meshinit::plan::Family;

/// Everything the two test configurations may change, independent of the lab's addresses:
/// the nft variant's rules of both families, the native tables (counter values removed),
/// policy rules, table 133 and lo's IPv6 addresses.
fn state(pod: &Netns) -> String {
    let mut out = String::new();
    for family in [Family::V4, Family::V6] {
        out.push_str(&format!("== {family:?}\n{}", rules_of(pod, family, "nft")));
    }
    let nft =
        String::from_utf8_lossy(&pod.run(&["nft", "list", "ruleset"], None).stdout).into_owned();
    out.push_str("== nft\n");
    for line in nft
        .lines()
        .filter(|l| l.contains("istio-proxy") || !l.starts_with("table"))
    {
        // `counter packets N bytes M` counts traffic, not configuration.
        let line = match line.find("counter packets") {
            Some(i) => {
                let rest = &line[i..];
                let after = rest
                    .split_whitespace()
                    .skip(5)
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{}counter {after}", &line[..i])
            }
            None => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&routing_state(pod, |route| route.contains("table 133")));
    out
}

/// Starts meshinit inside `pod` with a read-only tmpfs mounted over `/run` (in the private
/// mount namespace `ip netns exec` makes, so the host's `/run` is untouched).
fn start_with_read_only_run(pod: &Netns, args: &[String]) -> std::process::Child {
    in_pod(pod)
        .wrap([
            "sh",
            "-c",
            "mount -t tmpfs -o ro meshinit-test-ro /run && exec \"$@\"",
            "sh",
        ])
        .args(args)
        .spawn()
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn concurrent_runs_with_different_configurations_under_a_read_only_run_leave_one_of_them() {
    if !require_root(
        "concurrent_runs_with_different_configurations_under_a_read_only_run_leave_one_of_them",
    ) {
        return;
    }
    for backend in ["--force-iptables-binary=nft", "--native-nftables"] {
        let mut a = default_args();
        a.extend(strings(&["--redirect-dns", "--capture-all-dns", backend]));
        let mut b = a.clone();
        b.extend(strings(&["-m", "TPROXY"]));
        // What each configuration alone leaves.
        let reference = |args: &[String]| {
            let lab = Lab::new().expect("lab");
            let out = meshinit(&lab.pod, args, &[]);
            assert_eq!(out.code, Some(0), "{}", out.stderr);
            state(&lab.pod)
        };
        let (ref_a, ref_b) = (reference(&a), reference(&b));
        assert_ne!(ref_a, ref_b);
        for round in 0..4 {
            let lab = Lab::new().expect("lab");
            let children: Vec<_> = (0..6)
                .map(|i| start_with_read_only_run(&lab.pod, if i % 2 == 0 { &a } else { &b }))
                .collect();
            let mut succeeded = 0;
            for child in children {
                let out = child.wait_with_output().expect("finishes");
                let stderr = String::from_utf8_lossy(&out.stderr);
                match out.status.code() {
                    Some(0) => succeeded += 1,
                    // The other configuration's rules were there first: refused, unchanged.
                    Some(1) => assert!(stderr.contains("--reconcile"), "{backend}: {stderr}"),
                    code => panic!("{backend} round {round}: exit {code:?}: {stderr}"),
                }
            }
            assert!(succeeded > 0, "{backend} round {round}: no run succeeded");
            let now = state(&lab.pod);
            assert!(
                now == ref_a || now == ref_b,
                "{backend} round {round}: the result is neither configuration:\nagainst A:\n{}\nagainst B:\n{}",
                diff(&ref_a, &now),
                diff(&ref_b, &now)
            );
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_held_lock_is_waited_for_and_its_holder_is_named() {
    if !require_root("a_held_lock_is_waited_for_and_its_holder_is_named") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = state(&lab.pod);
    let held = hold_meshinit_lock(&lab.pod);
    for backend in ["--force-iptables-binary=nft", "--native-nftables"] {
        let mut args = default_args();
        args.extend(strings(&["--xtables-wait=1s", backend]));
        let started = Instant::now();
        let out = meshinit(&lab.pod, &args, &[]);
        let waited = started.elapsed();
        assert_eq!(out.code, Some(1), "{backend}: {}", out.stderr);
        assert!(
            out.stderr.contains("another meshinit")
                && out.stderr.contains("@meshinit/netns-lock")
                && out.stderr.contains(&format!("pid {}", std::process::id())),
            "{backend}: names the lock and its holder: {}",
            out.stderr
        );
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(10),
            "{backend}: waited {waited:?}"
        );
        assert_eq!(state(&lab.pod), before, "{backend}: changed the namespace");
    }
    // Released: the next run takes it at once.
    drop(held);
    let mut args = default_args();
    args.push("--xtables-wait=1s".to_string());
    let out = meshinit(&lab.pod, &args, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn runs_leave_no_files_in_run() {
    if !require_root("runs_leave_no_files_in_run") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let ns = std::fs::metadata(lab.pod.path()).unwrap();
    let prefix = format!("netns-{}-{}", ns.dev(), ns.ino());
    let ours = || -> Vec<String> {
        std::fs::read_dir("/run/meshinit")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Files of an earlier namespace with the same inode (left by older versions) are stale.
    for name in ours() {
        std::fs::remove_file(format!("/run/meshinit/{name}")).unwrap();
    }
    // Every kind of run, including --cni-mode's own xtables lock file for legacy iptables.
    let runs: &[&[&str]] = &[
        &["--force-iptables-binary=nft"],
        &["--force-iptables-binary=nft", "--check"],
        &["--force-iptables-binary=nft", "--cleanup-only"],
        &["--force-iptables-binary=legacy", "--cni-mode"],
        &[
            "--force-iptables-binary=legacy",
            "--cni-mode",
            "--cleanup-only",
        ],
        &["--native-nftables"],
        &["--native-nftables", "--cleanup-only"],
    ];
    for extra in runs {
        let mut args = default_args();
        args.extend(strings(extra));
        let out = meshinit(&lab.pod, &args, &[]);
        assert_eq!(out.code, Some(0), "{extra:?}: {}", out.stderr);
        assert_eq!(
            ours(),
            Vec::<String>::new(),
            "{extra:?} left files in /run/meshinit"
        );
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_run_holding_the_lock_is_named_by_the_run_that_gives_up() {
    if !require_root("a_run_holding_the_lock_is_named_by_the_run_that_gives_up") {
        return;
    }
    let lab = Lab::new().expect("lab");
    // The first run holds the lock while its restore tool hangs (until its --timeout).
    let dir = std::path::PathBuf::from(format!("/tmp/meshinit-lockholder-{}", std::process::id()));
    let marker = dir.join("started");
    let path = tools_with_broken(&dir, "iptables-nft-restore");
    std::fs::write(
        dir.join("iptables-nft-restore"),
        // Hangs once; the rollback after the first run's deadline uses the real tool.
        format!(
            "#!/bin/sh\n[ -e {m} ] && exec /usr/sbin/iptables-nft-restore \"$@\"\ntouch {m}\nexec sleep 60\n",
            m = marker.display()
        ),
    )
    .unwrap();
    let mut args = default_args();
    args.extend(strings(&["--force-iptables-binary=nft", "--timeout=4s"]));
    args.push(format!("--network-namespace={}", lab.pod.path().display()));
    let first = support::Meshinit::new()
        .args(&args)
        .path(format!("{path}:{}", path_env().1))
        .stderr(Stdio::null())
        .spawn();
    let pid = first.id();
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the first run never got going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = default_args();
    second.extend(strings(&[
        "--force-iptables-binary=nft",
        "--xtables-wait=1s",
    ]));
    let out = meshinit(&lab.pod, &second, &[]);
    let first = first.wait_with_output().expect("first run ends");
    assert_eq!(
        first.status.code(),
        Some(1),
        "the first run is killed at its deadline"
    );
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("held by pid {pid}, meshinit")),
        "{}",
        out.stderr
    );
}
