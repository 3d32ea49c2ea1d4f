//! `--run-validation` on a real kernel, run as the proxy user without capabilities (as Istio's
//! istio-validation container runs): passes when the rules redirect, exits 126 when they don't,
//! and fails at once (exit 1, naming the port and its holder) when a capture port is taken.

mod support;

use std::time::{Duration, Instant};

use support::apply::in_pod;
use support::netlab::{Lab, ListenerSpec, Netns};
use support::{istio_init_args, require_root};

/// Runs meshinit inside the pod namespace as uid/gid 1337 with no capabilities.
fn as_proxy_user(pod: &Netns, extra: &[&str]) -> (Option<i32>, String) {
    let out = in_pod(pod)
        .wrap([
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args(istio_init_args(extra))
        .run();
    (out.code, out.stderr)
}

fn install(pod: &Netns, extra: &[&str]) {
    let out = in_pod(pod).args(istio_init_args(extra)).run();
    assert_eq!(out.code, Some(0), "installing: {}", out.text());
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn validation_fails_with_126_without_rules_and_passes_with_them() {
    if !require_root("validation_fails_with_126_without_rules_and_passes_with_them") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let flags = [
        "--run-validation",
        "--skip-rule-apply",
        "--probe-timeout=1500ms",
        "--ipv6=false",
    ];
    let (code, stderr) = as_proxy_user(&lab.pod, &flags);
    assert_eq!(code, Some(126), "{stderr}");
    assert!(
        stderr.contains("127.0.0.6:15002") && stderr.contains("not ready for the mesh"),
        "{stderr}"
    );

    install(&lab.pod, &["--ipv6=false"]);
    let (code, stderr) = as_proxy_user(&lab.pod, &flags);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("validation passed"), "{stderr}");

    // Another probe port is honoured.
    let (code, stderr) = as_proxy_user(
        &lab.pod,
        &[&flags[..], &["--iptables-probe-port=15999"]].concat(),
    );
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn validation_probes_ipv6_too_when_ipv6_is_on() {
    if !require_root("validation_probes_ipv6_too_when_ipv6_is_on") {
        return;
    }
    let lab = Lab::new().expect("lab");
    // Only IPv4 rules: the IPv6 probe to ::6 must fail.
    install(&lab.pod, &["--ipv6=false"]);
    let flags = [
        "--run-validation",
        "--skip-rule-apply",
        "--probe-timeout=1500ms",
        "--ipv6=true",
    ];
    let (code, stderr) = as_proxy_user(&lab.pod, &flags);
    assert_eq!(code, Some(126), "{stderr}");
    assert!(stderr.contains("::6"), "{stderr}");
    // Both families (the IPv6 rules and ::6 on lo): passes.
    install(&lab.pod, &["--ipv6=true", "--reconcile"]);
    let (code, stderr) = as_proxy_user(&lab.pod, &flags);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("validation passed for ::6"), "{stderr}");
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_capture_port_held_by_another_socket_fails_at_once_naming_the_port_and_holder() {
    if !require_root(
        "a_capture_port_held_by_another_socket_fails_at_once_naming_the_port_and_holder",
    ) {
        return;
    }
    let lab = Lab::new().expect("lab");
    install(&lab.pod, &["--ipv6=false"]);
    // Another program on the inbound capture port, without SO_REUSEPORT.
    let addr = "127.0.0.1:15006".parse().unwrap();
    let _holder = ListenerSpec::tcp("holder", addr)
        .start(&lab.pod)
        .expect("listens");
    let flags = [
        "--run-validation",
        "--skip-rule-apply",
        "--probe-timeout=10s",
        "--ipv6=false",
    ];
    // As the proxy user, the holder's process (root's) is not visible: its uid is named.
    let started = Instant::now();
    let (code, stderr) = as_proxy_user(&lab.pod, &flags);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {stderr}");
    assert!(
        stderr.contains("cannot listen on capture port 127.0.0.1:15006")
            && stderr.contains("Address already in use")
            && stderr.contains("uid 0 listening on 127.0.0.1:15006"),
        "{stderr}"
    );
    assert!(!stderr.contains("not ready for the mesh"), "{stderr}");
    // As root, the holder's pid is found.
    let out = in_pod(&lab.pod).args(istio_init_args(&flags)).run();
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("held by pid {} (", std::process::id())),
        "{stderr}"
    );
}
