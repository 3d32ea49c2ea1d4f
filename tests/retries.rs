//! `--retries` on a real kernel: the xtables lock (legacy) and meshinit's own namespace lock
//! (nft variant and native nftables) held past their wait and released a moment later are
//! retried until the run succeeds, each retry logged with its reason (text and JSON); without
//! retries the run fails as before; a deadline shorter than the hold fails naming it; and what
//! is not transient (no capabilities, a failing tool) is never retried.

mod support;

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use support::apply::{
    all_rules, assert_outbound_captured, assert_unchanged, hold_meshinit_lock, in_pod, meshinit,
    retry_lines, stand_in, strings, tools_with_broken,
};
use support::netlab::Lab;
use support::{istio_init_args, require_root};

/// How long a lock is held: past one `--xtables-wait=1s` and a `--retry-pause=1s`, within
/// the third attempt.
const HOLD: Duration = Duration::from_millis(3000);

/// Takes the host's xtables lock as another program (kube-proxy) would, and lets it go after
/// `hold` from a thread of its own.
fn hold_xtables_lock(hold: Duration) -> JoinHandle<()> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/xtables.lock")
        .expect("open /run/xtables.lock");
    let held = Flock::lock(file, FlockArg::LockExclusive).expect("take the xtables lock");
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        drop(held);
    })
}

/// Holds meshinit's namespace lock in the pod, as a running meshinit would, for `hold`.
fn hold_netns_lock(lab: &Lab, hold: Duration) -> JoinHandle<()> {
    let held: OwnedFd = hold_meshinit_lock(&lab.pod);
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        drop(held);
    })
}

/// Istio's default arguments for IPv4 only (one family keeps the timing simple), with this
/// variant or backend, the lock wait and these extra flags.
fn args(backend: &str, extra: &[&str]) -> Vec<String> {
    let mut args = istio_init_args(&["--ipv6=false", "--xtables-wait=1s"]);
    match backend {
        "native" => args.push("--backend=nftables".to_string()),
        variant => args.push(format!("--force-iptables-binary={variant}")),
    }
    args.extend(strings(extra));
    args
}

/// Runs meshinit with `extra` while `hold` keeps a lock for [`HOLD`]: the retried run
/// succeeds on a later attempt, logs why, and traffic is captured; then, with the lock held
/// again, no retries fails as before and a deadline within the hold fails naming it.
fn retried_until_released(
    backend: &str,
    hold: &dyn Fn(&Lab, Duration) -> JoinHandle<()>,
    reason: &str,
) {
    // Retried: succeeds once the holder lets go, and says so in text and JSON.
    for json in [false, true] {
        let lab = Lab::new().expect("lab");
        let mut extra = vec!["--retries=5", "--retry-pause=1s"];
        if json {
            extra.push("--log_as_json");
        }
        let holder = hold(&lab, HOLD);
        let started = Instant::now();
        let out = meshinit(&lab.pod, &args(backend, &extra), &[]);
        let took = started.elapsed();
        holder.join().unwrap();
        assert_eq!(out.code, Some(0), "{backend} json={json}: {}", out.stderr);
        // The holder started just before meshinit did.
        assert!(
            took + Duration::from_millis(300) >= HOLD,
            "{backend}: succeeded before the lock was released ({took:?})"
        );
        let retries = retry_lines(&out);
        assert!(
            !retries.is_empty() && retries.iter().all(|l| l.contains(reason)),
            "{backend} json={json}: each retry names its reason ({reason}):\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("of 6 succeeded, after"),
            "{backend}: {}",
            out.stderr
        );
        if json {
            let line: serde_json::Value = serde_json::from_str(retries[0]).expect("a JSON line");
            assert_eq!(line["level"], "warn", "{line}");
            assert_eq!(line["retry"]["attempt"], 1, "{line}");
            assert_eq!(line["retry"]["attempts"], 6, "{line}");
            assert_eq!(line["retry"]["pause_ms"], 1000, "{line}");
            assert!(
                line["retry"]["reason"].as_str().unwrap().contains(reason),
                "{line}"
            );
        }
        let check = meshinit(&lab.pod, &args(backend, &["--check"]), &[]);
        assert_eq!(check.code, Some(0), "{backend}: {}", check.stderr);
        assert_outbound_captured(&lab, backend);
    }

    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    // No retries (the default): fails at the first wait as before, changing nothing.
    let holder = hold(&lab, HOLD);
    let out = meshinit(&lab.pod, &args(backend, &[]), &[]);
    holder.join().unwrap();
    assert_eq!(out.code, Some(1), "{backend}: {}", out.stderr);
    assert!(
        retry_lines(&out).is_empty() && out.stderr.contains("--retries retries such failures"),
        "{backend}: {}",
        out.stderr
    );
    assert_unchanged(&before, &all_rules(&lab.pod), "no retries");

    // A deadline within the hold: the run stops before an attempt it could not finish.
    let holder = hold(&lab, HOLD * 2);
    let started = Instant::now();
    let out = meshinit(
        &lab.pod,
        &args(
            backend,
            &["--retries=10", "--retry-pause=2500ms", "--timeout=3s"],
        ),
        &[],
    );
    let took = started.elapsed();
    holder.join().unwrap();
    assert_eq!(out.code, Some(1), "{backend}: {}", out.stderr);
    assert!(
        out.stderr
            .contains("gave up after 1 of 11 attempts: the run's deadline (--timeout 3s")
            && out.stderr.contains("(--retry-pause 2.5s)")
            && out.stderr.contains(reason),
        "{backend}: {}",
        out.stderr
    );
    assert!(took < Duration::from_secs(3), "{backend}: took {took:?}");
    assert_unchanged(&before, &all_rules(&lab.pod), "deadline");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_held_xtables_lock_is_retried_until_it_is_released() {
    if !require_root("a_held_xtables_lock_is_retried_until_it_is_released") {
        return;
    }
    retried_until_released(
        "legacy",
        &|_, hold| hold_xtables_lock(hold),
        "another program held the xtables lock longer than --xtables-wait",
    );
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_held_namespace_lock_is_retried_until_it_is_released() {
    if !require_root("a_held_namespace_lock_is_retried_until_it_is_released") {
        return;
    }
    for backend in ["native", "nft"] {
        retried_until_released(
            backend,
            &hold_netns_lock,
            "another meshinit held this namespace's lock (pid",
        );
    }
}

/// What changed while a run waited is seen by its next attempt: each attempt reads the
/// namespace again. Someone installs exactly our rules while meshinit's lock is held; the
/// retried run then finds them in place and writes nothing. A cleanup behind a held lock is
/// retried the same way.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn each_attempt_reads_the_namespace_again() {
    if !require_root("each_attempt_reads_the_namespace_again") {
        return;
    }
    for backend in ["nft", "native"] {
        let lab = Lab::new().expect("lab");
        let dry = support::run_meshinit(&args(backend, &["--dry-run"]), &[]);
        assert_eq!(dry.code, Some(0), "{}", dry.stderr);
        let holder = hold_netns_lock(&lab, HOLD);
        let retried = std::thread::scope(|scope| {
            let run = scope.spawn(|| {
                meshinit(
                    &lab.pod,
                    &args(backend, &["--retries=5", "--retry-pause=1s"]),
                    &[],
                )
            });
            std::thread::sleep(Duration::from_millis(500));
            match backend {
                "native" => lab.pod.nft_apply(&dry.stdout),
                _ => {
                    lab.pod
                        .run(&["iptables-nft-restore", "--noflush"], Some(&dry.stdout));
                }
            }
            run.join().unwrap()
        });
        holder.join().unwrap();
        assert_eq!(retried.code, Some(0), "{backend}: {}", retried.stderr);
        assert!(
            !retry_lines(&retried).is_empty(),
            "{backend}: {}",
            retried.stderr
        );
        let summary = retried.stderr.lines().last().unwrap();
        assert!(
            retried.stderr.contains("nothing to do")
                && !summary.contains("installed")
                && !summary.contains("replaced"),
            "{backend}: the retried attempt must see the rules installed meanwhile:\n{}",
            retried.stderr
        );
        let check = meshinit(&lab.pod, &args(backend, &["--check"]), &[]);
        assert_eq!(check.code, Some(0), "{backend}: {}", check.stderr);

        // Cleanup behind a held lock: retried, then everything of ours is gone.
        let holder = hold_netns_lock(&lab, HOLD);
        let out = meshinit(
            &lab.pod,
            &args(
                backend,
                &["--cleanup-only", "--retries=5", "--retry-pause=1s"],
            ),
            &[],
        );
        holder.join().unwrap();
        assert_eq!(out.code, Some(0), "{backend}: {}", out.stderr);
        assert!(!retry_lines(&out).is_empty(), "{backend}: {}", out.stderr);
        let rules = all_rules(&lab.pod);
        let native = support::nft::listing(&lab.pod);
        assert!(
            !rules.contains("ISTIO_") && !native.contains("istio-proxy"),
            "{backend}: {rules}\n{native}"
        );
    }
}

/// The kernel's EBUSY cannot be provoked on demand from a test, so it is played by an
/// iptables-nft-restore that fails once with the text iptables-nft prints for it, then runs
/// the real tool: the classification of the tool's output is what is tested end to end.
#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_restore_answered_ebusy_is_retried() {
    if !require_root("a_restore_answered_ebusy_is_retried") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let dir = PathBuf::from(format!(
        "/tmp/meshinit-retries-ebusy-{}",
        std::process::id()
    ));
    let env = stand_in(
        &dir,
        "iptables-nft-restore",
        "",
        "echo 'iptables-restore v1.8.9 (nf_tables): line 5: RULE_APPEND failed (Device or resource busy): rule in chain OUTPUT' >&2\n  exit 4",
    );
    let out = meshinit(
        &lab.pod,
        &args("nft", &["--retries=2", "--retry-pause=100ms"]),
        &env,
    );
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let retries = retry_lines(&out);
    assert!(
        retries.len() == 1
            && retries[0].contains(
                "iptables-nft-restore: the kernel answered EBUSY (Device or resource busy) (exited with code 4)"
            ),
        "{}",
        out.stderr
    );
    assert_outbound_captured(&lab, "after EBUSY");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn what_is_not_transient_is_never_retried() {
    if !require_root("what_is_not_transient_is_never_retried") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    // Without CAP_NET_ADMIN (nobody, no file capabilities): fails at once.
    for backend in ["nft", "native"] {
        let run = in_pod(&lab.pod)
            .nobody()
            .args(args(backend, &["--retries=5", "--retry-pause=1s"]));
        let started = Instant::now();
        let out = run.run();
        let stderr = &out.stderr;
        assert_eq!(out.code, Some(1), "{backend}: {stderr}");
        assert!(stderr.contains("CAP_NET_ADMIN"), "{backend}: {stderr}");
        assert!(
            !stderr.contains("transient") && !stderr.contains("attempt"),
            "{backend}: not retried: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "{backend}");
    }
    // A restore tool failing for a reason that is not transient: once, and undone.
    let dir = PathBuf::from(format!(
        "/tmp/meshinit-retries-broken-{}",
        std::process::id()
    ));
    let path = tools_with_broken(&dir, "iptables-nft-restore");
    let env = vec![("PATH".to_string(), format!("{path}:/usr/bin:/bin"))];
    let out = meshinit(
        &lab.pod,
        &args("nft", &["--retries=5", "--retry-pause=1s"]),
        &env,
    );
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("simulated failure") && retry_lines(&out).is_empty(),
        "{}",
        out.stderr
    );
    assert_unchanged(&before, &all_rules(&lab.pod), "not transient");
}
