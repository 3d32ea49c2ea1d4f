//! Messages that used to mislead, on a real kernel: validation as a uid that is not a proxy
//! uid, `--network-namespace` given a bare name or a file that is not a network namespace,
//! and the namespace a run entered, named in its log and summary.

mod support;

use support::netlab::Lab;
use support::{istio_init_args, require_root, run_meshinit};

/// meshinit's stderr run inside the pod namespace as root.
fn in_pod(lab: &Lab, extra: &[&str]) -> (Option<i32>, String) {
    let out = support::apply::in_pod(&lab.pod)
        .args(istio_init_args(extra))
        .run();
    (out.code, out.stderr)
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn validation_as_a_non_proxy_uid_says_so_first() {
    if !require_root("validation_as_a_non_proxy_uid_says_so_first") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let (code, stderr) = in_pod(&lab, &["--ipv6=false"]);
    assert_eq!(code, Some(0), "{stderr}");
    // The rules are in place; as root (uid 0, not -u 1337) the probe is not captured.
    let (code, stderr) = in_pod(
        &lab,
        &[
            "--run-validation",
            "--skip-rule-apply",
            "--probe-timeout=1s",
            "--ipv6=false",
        ],
    );
    assert_eq!(code, Some(126), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.contains("\terror\t"))
        .unwrap_or_else(|| panic!("no error: {stderr}"));
    assert!(
        error.contains(
            "validation failed: this process runs as uid 0 (gid 0), which is not a proxy uid (-u 1337)"
        ),
        "{error}"
    );
    assert!(
        !stderr.contains("Istio CNI") && !stderr.contains("delete the pod"),
        "no CNI advice for a wrong uid: {stderr}"
    );
}

/// `ip netns add NAME` for the test's lifetime.
struct NamedNetns(String);

impl NamedNetns {
    fn new(tag: &str) -> NamedNetns {
        let name = format!("meshinit-op-{tag}-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip runs")
            .success();
        assert!(ok, "ip netns add {name}");
        NamedNetns(name)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn dry_run_in(namespace: &str) -> support::Output {
    run_meshinit(
        &[
            format!("--network-namespace={namespace}").as_str(),
            "--dry-run",
            "--ipv6=false",
        ],
        &[],
    )
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn network_namespace_messages_say_what_was_meant() {
    if !require_root("network_namespace_messages_say_what_was_meant") {
        return;
    }
    let ns = NamedNetns::new("msg");
    // The name `ip netns` shows: the path it stands for is suggested.
    let out = dry_run_in(&ns.0);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("did you mean /run/netns/{}?", ns.0)),
        "{}",
        out.stderr
    );
    // A name that exists nowhere: the forms the flag takes.
    let out = dry_run_in("no-such-netns-here");
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("takes a path: /run/netns/NAME (what `ip netns` names) or /proc/PID/ns/net"),
        "{}",
        out.stderr
    );
    // A regular file, and a namespace of another kind: not a network namespace, and no
    // misleading word about CAP_SYS_ADMIN (we are root).
    for path in ["/etc/passwd", "/proc/self/ns/mnt"] {
        let out = dry_run_in(path);
        assert_eq!(out.code, Some(1), "{path}");
        assert!(
            out.stderr.contains("not a network namespace") && !out.stderr.contains("CAP_SYS_ADMIN"),
            "{path}: {}",
            out.stderr
        );
    }
    // The real path: entered, and named with its inode in the log and the summary.
    let path = format!("/run/netns/{}", ns.0);
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    let out = dry_run_in(&path);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let named = format!("{path} (net:[{inode}])");
    assert!(
        out.stderr
            .contains(&format!("entered network namespace {named}")),
        "{}",
        out.stderr
    );
    let summary = out.stderr.lines().last().unwrap();
    assert!(
        summary.contains(&format!("; namespace {named};")),
        "{summary}"
    );
}
