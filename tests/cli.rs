//! The binary end to end, without privileges: Istio's default istio-init invocation, exit codes
//! and error messages for bad input, help.

mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;

use support::{diff, run_meshinit, without_comments};

/// The rules newest Istio installs for the default sidecar (reference §3.11, newest form).
const DEFAULT_SIDECAR_RULES: &str = "\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";

/// Istio's default istio-init arguments with its log flag, as a dry run of an IPv4 pod.
fn istio_init_dry_run() -> Vec<&'static str> {
    let mut args = vec!["istio-iptables"];
    args.extend(support::ISTIO_INIT_ARGS);
    args.extend([
        "--log_output_level=default:info",
        "--dry-run",
        "--ipv6=false",
    ]);
    args
}

#[test]
fn default_istio_init_arguments_print_istios_rules() {
    let out = run_meshinit(&istio_init_dry_run(), &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let printed = without_comments(&out.stdout);
    assert!(
        printed == DEFAULT_SIDECAR_RULES,
        "{}",
        diff(DEFAULT_SIDECAR_RULES, &printed)
    );
    assert!(
        out.stderr.contains("effective configuration"),
        "logs the config: {}",
        out.stderr
    );
}

#[test]
fn dry_run_needs_no_privileges() {
    // As root here, drop to nobody to prove it; as a normal user, this is simply unprivileged.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshinit"));
    cmd.args(istio_init_dry_run()).env_clear();
    if nix::unistd::geteuid().is_root() {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        without_comments(&String::from_utf8_lossy(&out.stdout)),
        DEFAULT_SIDECAR_RULES
    );
}

#[test]
fn ipv6_auto_detection_runs_unprivileged() {
    // Without --ipv6 meshinit looks at this machine's addresses; either answer is fine, but it
    // must not need privileges or fail on a machine that has a usable address.
    let args: Vec<&str> = istio_init_dry_run()
        .into_iter()
        .filter(|a| *a != "--ipv6=false")
        .collect();
    let out = run_meshinit(&args, &[]);
    assert!(matches!(out.code, Some(0) | Some(1)), "{}", out.stderr);
    if out.code == Some(1) {
        assert!(
            out.stderr.contains("no valid local IP address"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn bad_input_exits_2_naming_the_flag_and_value() {
    // (arguments, environment, what the message must name)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &["-p", "70000"],
            &[],
            &["--envoy-port", "-p", "ENVOY_PORT", "70000"],
        ),
        (
            &["-i", "10.0.0.0/33"],
            &[],
            &["--istio-service-cidr", "10.0.0.0/33"],
        ),
        (&["-x", "*"], &[], &["--istio-service-exclude-cidr"]),
        (
            &["-c", "this-name-is-too-long"],
            &[],
            &["--istio-exclude-interfaces"],
        ),
        (
            &["-m", "tproxy"],
            &[],
            &["--istio-inbound-interception-mode"],
        ),
        (&["-t", "x"], &[], &["--istio-inbound-tproxy-mark"]),
        (&["-r", "x"], &[], &["--istio-inbound-tproxy-route-table"]),
        (&["-u", "root"], &[], &["--proxy-uid"]),
        (
            &[],
            &[("ISTIO_META_DNS_CAPTURE", "yes")],
            &["--redirect-dns", "ISTIO_META_DNS_CAPTURE", "yes"],
        ),
        (
            &[],
            &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.1/8")],
            &["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"],
        ),
        (&["--bogus"], &[], &["--bogus"]),
        (&["-p"], &[], &["-p"]),
        (&["stray"], &[], &["stray"]),
    ];
    for (args, env, names) in cases {
        let mut full = args.to_vec();
        full.extend(["--dry-run", "--ipv6=false"]);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let out = run_meshinit(&full, &env);
        assert_eq!(out.code, Some(2), "{args:?} {env:?}: {}", out.stderr);
        assert!(
            out.stdout.is_empty(),
            "nothing printed for bad input: {}",
            out.stdout
        );
        for name in *names {
            assert!(
                out.stderr.contains(name),
                "{args:?}: {:?} should name {name}",
                out.stderr
            );
        }
    }
}

#[test]
fn help_and_version_exit_0() {
    let out = run_meshinit(&["--help"], &[]);
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains("--istio-service-cidr") && out.stdout.contains("Exit codes"));
    let out = run_meshinit(&["--version"], &[]);
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.starts_with("meshinit "));
}

#[test]
fn json_logs_are_json_lines_only() {
    let mut args = istio_init_dry_run();
    args.push("--log_as_json");
    let out = run_meshinit(&args, &[]);
    assert_eq!(out.code, Some(0));
    assert!(!out.stderr.is_empty());
    for line in out.stderr.lines() {
        assert_json_log_line(line);
    }
}

/// One JSON object per line with exactly `time` (RFC 3339, UTC), `level` and `msg` strings.
fn assert_json_log_line(line: &str) -> serde_json::Map<String, serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {line}"))
        .clone();
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys, ["level", "msg", "time"], "{line}");
    for key in keys {
        assert!(object[key].is_string(), "{key} is not a string: {line}");
    }
    let time = object["time"].as_str().unwrap();
    assert!(
        time.len() >= 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "time is not RFC 3339 UTC: {line}"
    );
    assert!(
        ["debug", "info", "warn", "error"].contains(&object["level"].as_str().unwrap()),
        "{line}"
    );
    object
}

#[test]
fn readme_compatibility_table_names_every_flag_and_env_var() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for spec in meshinit::cli::FLAGS {
        assert!(
            readme.contains(&format!("`--{}`", spec.long)),
            "README misses --{}",
            spec.long
        );
        for env in spec.env {
            assert!(readme.contains(&format!("`{env}`")), "README misses {env}");
        }
    }
    for spec in meshinit::cli::ENV_ONLY {
        assert!(
            readme.contains(&format!("`{}`", spec.name)),
            "README misses {}",
            spec.name
        );
    }
}

#[test]
fn json_logs_stay_json_when_the_input_is_rejected() {
    for args in [
        &["--log_as_json", "-p", "0"][..],
        &["--log_as_json", "--bogus"],
    ] {
        let out = run_meshinit(args, &[]);
        assert_eq!(out.code, Some(2));
        assert!(!out.stderr.is_empty());
        let lines: Vec<_> = out.stderr.lines().map(assert_json_log_line).collect();
        let last = lines.last().unwrap()["msg"].as_str().unwrap();
        assert!(
            last.starts_with("summary: exit 2"),
            "the last line is the summary: {last}"
        );
    }
}
