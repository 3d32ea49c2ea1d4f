//! The helper scripts people run by hand: `scripts/lab.sh` (namespace names overridable, usage
//! text without shell lines, IPv6 used when the lab has it) and `scripts/bench.py` (runs from
//! any directory).

mod support;

use std::process::{Command, Output};

use support::require_root;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn lab(args: &[&str], pod: &str, peer: &str) -> Output {
    Command::new(format!("{REPO}/scripts/lab.sh"))
        .args(args)
        .env("MI_POD", pod)
        .env("MI_PEER", peer)
        .env("MESHINIT", support::MESHINIT)
        .current_dir("/")
        .output()
        .expect("lab.sh runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn lab_usage_is_text_not_shell() {
    let out = lab(&[], "a", "b");
    assert_eq!(out.status.code(), Some(2));
    let usage = text(&out);
    assert!(usage.contains("Usage: scripts/lab.sh COMMAND"), "{usage}");
    for shell in ["set -e", "cd \"$(", "#", "POD="] {
        assert!(!usage.contains(shell), "{shell:?} in {usage}");
    }
    // The names it would use are the overridden ones.
    assert!(usage.contains("create a (10.77.0.1") && usage.contains("run a command in b"));
}

/// Deletes the lab's namespaces even when the test fails.
struct Down(String, String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab(&["down"], &self.0, &self.1);
    }
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn lab_names_are_overridable_and_ipv6_is_used() {
    if !require_root("lab_names_are_overridable_and_ipv6_is_used") {
        return;
    }
    let pod = format!("mi-t-pod-{}", std::process::id());
    let peer = format!("mi-t-peer-{}", std::process::id());
    let _down = Down(pod.clone(), peer.clone());
    let out = lab(&["up"], &pod, &peer);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("up: {pod} (10.77.0.1, fd00:77::1)")));
    let list = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(list.contains(&pod) && list.contains(&peer), "{list}");
    let out = lab(&["apply"], &pod, &peer);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("families ipv4,ipv6"), "{}", text(&out));
    let out = lab(
        &[
            "pod",
            "sh",
            "-c",
            "ip6tables-legacy-save; ip6tables-nft-save",
        ],
        &pod,
        &peer,
    );
    assert!(
        text(&out).contains("-A OUTPUT -j ISTIO_OUTPUT"),
        "{}",
        text(&out)
    );
    // The flags given last win, as everywhere on meshinit's command line.
    let out = lab(&["apply", "--dual-stack=false", "--check"], &pod, &peer);
    assert!(text(&out).contains("families ipv4;"), "{}", text(&out));
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn bench_runs_from_any_directory() {
    if !require_root("bench_runs_from_any_directory") {
        return;
    }
    let out = Command::new("python3")
        .args([&format!("{REPO}/scripts/bench.py"), "--samples", "1"])
        .args(["--sizes", "0", "--conns", "20"])
        .current_dir("/")
        .output()
        .expect("bench runs");
    let all = text(&out);
    let binary = format!("{REPO}/target/release/meshinit");
    let client = format!("{REPO}/target/release/examples/connrate");
    let exists = |p: &str| std::path::Path::new(p).exists();
    if exists(&binary) && !exists(&client) {
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(
            all.contains(&format!(
                "no connrate client at {client}: build it with `cargo build --release --example connrate`"
            )),
            "{all}"
        );
    } else if exists(&binary) {
        assert!(out.status.success(), "{all}");
        assert!(all.contains(&format!("binary: {binary}")), "{all}");
    } else {
        // Without a release build it says where it looked and how to build, no traceback.
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(
            all.contains(&format!(
                "no meshinit binary at {binary}: build it with `cargo build --release`"
            )),
            "{all}"
        );
        assert!(!all.contains("Traceback"), "{all}");
    }
}
