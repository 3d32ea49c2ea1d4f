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

/// With `--retries`, the effective configuration says so, its durations as the flags take them
/// (Go's `2m0s`, not `120s`); without it the block is Istio's as before.
#[test]
fn the_effective_configuration_names_retries_in_go_durations() {
    let mut args = istio_init_dry_run();
    args.push("--retries=2");
    let out = run_meshinit(&args, &[]);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains("retries 2 (pause 1s, within --timeout 2m0s)"),
        "{}",
        out.stderr
    );
    let out = run_meshinit(&istio_init_dry_run(), &[]);
    assert!(!out.stderr.contains("retries"), "{}", out.stderr);
}

#[test]
fn dry_run_needs_no_privileges() {
    // As root here, drop to nobody to prove it; as a normal user, this is simply unprivileged.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshinit"));
    cmd.args(istio_init_dry_run())
        .env_clear()
        .env("PATH", support::iptables_stand_ins());
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

/// The dry run prints what the same command installs: with `--backend auto` and no iptables
/// tool (the nftables-only image), that is the native nftables ruleset, also as a user, who
/// cannot ask the kernel; with the tools, Istio's iptables text.
#[test]
fn dry_run_shows_the_backend_the_real_run_chooses() {
    let empty = std::env::temp_dir().join(format!("meshinit-no-tools-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let no_tools = [("PATH".to_string(), empty.to_string_lossy().into_owned())];
    for as_nobody in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshinit"));
        cmd.args(istio_init_dry_run())
            .env_clear()
            .envs(no_tools.iter().cloned());
        if as_nobody && nix::unistd::geteuid().is_root() {
            cmd.uid(65534).gid(65534);
        }
        let out = cmd.output().expect("runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stdout.starts_with("# meshinit dry run: nftables script"),
            "nobody={as_nobody}: {stdout}"
        );
        assert!(stdout.contains("table inet"), "{stdout}");
        assert!(stderr.contains("\tbackend: nftables (no iptables tool is installed"));
        assert!(stderr.contains("; backend nftables;"), "{stderr}");
    }
    let out = run_meshinit(&istio_init_dry_run(), &[]);
    assert_eq!(without_comments(&out.stdout), DEFAULT_SIDECAR_RULES);
    assert!(out.stderr.contains("; backend iptables;"), "{}", out.stderr);
    let _ = std::fs::remove_dir(&empty);
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
        return;
    }
    // Either answer, said and followed: IPv6 rules are printed exactly when it is on.
    let on = out.stderr.contains("\tinfo\tIPv6 on: ");
    let off = out.stderr.contains("\tinfo\tIPv6 off: ");
    assert!(on != off, "one reason logged: {}", out.stderr);
    assert_eq!(
        out.stdout.contains("# meshinit dry run: IPv6 rules"),
        on,
        "{}",
        out.stdout
    );
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
        (
            &["--exclude-inbound-sources=10.0.0.0/8,nope"],
            &[],
            &[
                "--exclude-inbound-sources",
                "MESHINIT_EXCLUDE_INBOUND_SOURCES",
                "nope",
            ],
        ),
        (
            &[],
            &[("MESHINIT_EXCLUDE_OUTBOUND_PORTS_FOR_UIDS", "tcp:9090:root")],
            &[
                "--exclude-outbound-ports-for-uids",
                "MESHINIT_EXCLUDE_OUTBOUND_PORTS_FOR_UIDS",
                "tcp:9090:root",
            ],
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

/// One JSON object per line with exactly `time` (RFC 3339, UTC), `level` and `msg` strings, and
/// at most one structured field beside them: `summary` (the last line, checked field by field
/// by [`assert_summary_object`]), `config` (the effective configuration) or `settings` (debug:
/// where each setting came from), each an object.
fn assert_json_log_line(line: &str) -> serde_json::Map<String, serde_json::Value> {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {line}"))
        .clone();
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let extra: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !["level", "msg", "time"].contains(k))
        .collect();
    let base: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !extra.contains(k))
        .collect();
    assert_eq!(base, ["level", "msg", "time"], "{line}");
    assert!(extra.len() <= 1, "at most one structured field: {line}");
    for key in base {
        assert!(object[key].is_string(), "{key} is not a string: {line}");
    }
    match extra.first() {
        None => {}
        Some(&"summary") => assert_summary_object(&object["summary"], line),
        Some(&("config" | "settings")) => {
            assert!(object[extra[0]].is_object(), "{line}")
        }
        Some(other) => panic!("unexpected field {other}: {line}"),
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

/// The summary's fields, each with its type (null where the run never got that far).
fn assert_summary_object(summary: &serde_json::Value, line: &str) {
    use serde_json::Value;
    let object = summary.as_object().unwrap_or_else(|| panic!("{line}"));
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "backend",
            "change_count",
            "changed",
            "changes",
            "exit_code",
            "families",
            "mode",
            "namespace",
            "outcome",
            "phases_ms",
            "rules_planned",
            "tools",
            "total_ms",
            "variants"
        ],
        "{line}"
    );
    let string_or_null = |v: &Value| v.is_string() || v.is_null();
    let strings = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    assert!(object["exit_code"].is_u64(), "{line}");
    assert!(string_or_null(&object["mode"]), "{line}");
    assert!(string_or_null(&object["backend"]), "{line}");
    assert!(string_or_null(&object["namespace"]), "{line}");
    assert!(object["outcome"].is_string(), "{line}");
    assert!(object["changed"].is_boolean(), "{line}");
    assert!(object["change_count"].is_u64(), "{line}");
    assert!(
        strings(&object["changes"]) && strings(&object["tools"]),
        "{line}"
    );
    assert_eq!(
        object["change_count"].as_u64(),
        Some(object["changes"].as_array().unwrap().len() as u64)
    );
    assert!(
        object["families"].is_null()
            || object["families"]
                .as_array()
                .is_some_and(|a| a.iter().all(|f| f == "ipv4" || f == "ipv6")),
        "{line}"
    );
    assert!(
        object["rules_planned"].is_null() || object["rules_planned"].is_u64(),
        "{line}"
    );
    assert!(
        object["phases_ms"]
            .as_object()
            .is_some_and(|p| p.values().all(Value::is_f64)),
        "{line}"
    );
    assert!(object["total_ms"].is_f64(), "{line}");
    assert!(
        object["variants"]
            .as_object()
            .is_some_and(|v| v.values().all(Value::is_string)),
        "{line}"
    );
}

#[test]
fn the_flags_doc_names_every_flag_and_env_var() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/flags.md")).unwrap();
    for spec in meshinit::cli::FLAGS {
        assert!(
            readme.contains(&format!("`--{}`", spec.long)),
            "docs/flags.md misses --{}",
            spec.long
        );
        for env in spec.env {
            assert!(
                readme.contains(&format!("`{env}`")),
                "docs/flags.md misses {env}"
            );
        }
    }
    for spec in meshinit::cli::ENV_ONLY {
        assert!(
            readme.contains(&format!("`{}`", spec.name)),
            "docs/flags.md misses {}",
            spec.name
        );
    }
}

#[test]
fn json_logs_stay_json_when_the_input_is_rejected() {
    for args in [
        &["--log_as_json", "-p", "0", "--ipv6=false"][..],
        &["--log_as_json", "--bogus", "--ipv6=false"],
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

#[test]
fn json_summary_is_an_object_with_the_runs_facts() {
    let mut args = istio_init_dry_run();
    args.push("--log_as_json");
    let out = run_meshinit(&args, &[]);
    assert_eq!(out.code, Some(0));
    let last = assert_json_log_line(out.stderr.lines().last().unwrap());
    let s = &last["summary"];
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["mode"], "dry-run");
    assert_eq!(s["backend"], "iptables");
    assert_eq!(s["families"], serde_json::json!(["ipv4"]));
    assert_eq!(s["rules_planned"], 18);
    assert_eq!(s["changed"], false);
    assert_eq!(s["namespace"], serde_json::Value::Null);
    assert!(s["phases_ms"]["configure"].is_f64() && s["phases_ms"]["plan"].is_f64());
    assert!(last["msg"]
        .as_str()
        .unwrap()
        .starts_with("summary: exit 0; mode dry-run"));
    // The effective configuration is one object too.
    let config = out
        .stderr
        .lines()
        .map(assert_json_log_line)
        .find(|l| l.contains_key("config"))
        .expect("a config line");
    assert_eq!(config["config"]["proxy"]["uids"], serde_json::json!([1337]));
    assert_eq!(config["config"]["inbound"]["ports"]["capture"], "all");
    assert_eq!(config["config"]["run"]["backend"], "auto");
    assert!(!config["msg"].as_str().unwrap().contains('\n'));

    // A rejected command line: what the run never reached is null, not a placeholder.
    let out = run_meshinit(&["--log_as_json", "--bogus"], &[]);
    let last = assert_json_log_line(out.stderr.lines().last().unwrap());
    let s = &last["summary"];
    assert_eq!(s["exit_code"], 2);
    for key in ["mode", "backend", "families", "rules_planned"] {
        assert!(s[key].is_null(), "{key}: {s}");
    }
}

#[test]
fn logs_show_no_rust_debug_formatting_or_placeholders() {
    let mut args = istio_init_dry_run();
    args.extend(["--log_output_level=default:debug", "--dual-stack"]);
    let out = run_meshinit(&args, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for leak in [
        "[V4", "V4 ", "V6 ", "Auto", "Some(", "None", "Cidr {", "Port(",
    ] {
        assert!(!out.stderr.contains(leak), "{leak:?} in {}", out.stderr);
    }
    let summary = out.stderr.lines().last().unwrap();
    assert!(
        summary.contains("; families ipv4;") && summary.contains("; mode dry-run;"),
        "{summary}"
    );
    assert!(out.stderr.contains("\tdebug\tipv4 nat/ISTIO_OUTPUT: "));
    assert!(out.stderr.contains(", backend auto\n"));
    let out = run_meshinit(&["--bogus"], &[]);
    let summary = out.stderr.lines().last().unwrap();
    assert_eq!(
        summary.split_once('\t').unwrap().1,
        "info\tsummary: exit 2; nothing changed: invalid command line; time -"
    );
}

#[test]
fn debug_logs_say_where_each_setting_came_from() {
    let mut args = istio_init_dry_run();
    args.extend(["--log_output_level=default:debug", "-p", "15009"]);
    let env = [
        ("ENVOY_PORT", "15005"),
        ("REDIRECT_DNS", "false"),
        ("ISTIO_META_DNS_CAPTURE", "true"),
        ("MESHINIT_DNS_SERVERS", "10.96.0.10"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let out = run_meshinit(&args, &env);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for line in [
        "    --envoy-port = \"15009\" from command line -p, overriding env ENVOY_PORT=\"15005\"\n",
        "    --redirect-dns = \"true\" from env ISTIO_META_DNS_CAPTURE, overriding env REDIRECT_DNS=\"false\"\n",
        "    --inbound-capture-port = \"15006\" from command line -z\n",
        "    --inbound-tunnel-port = \"15008\" from default\n",
        "    ENVOY_USER = \"istio-proxy\" from default\n",
    ] {
        assert!(out.stderr.contains(line), "{line:?} in {}", out.stderr);
    }
    // Not at info level.
    let out = run_meshinit(&istio_init_dry_run(), &env);
    assert!(!out.stderr.contains("where they came from"));
}

#[test]
fn misleading_inputs_get_true_messages() {
    // --xtables-wait below 1s is refused, as the README and the message say.
    for wait in ["500ms", "0s", "999ms"] {
        let out = run_meshinit(
            &["-n", "--ipv6=false", &format!("--xtables-wait={wait}")],
            &[],
        );
        assert_eq!(out.code, Some(2), "{wait}");
        assert!(
            out.stderr.contains("the wait must be at least 1s"),
            "{}",
            out.stderr
        );
    }
    let out = run_meshinit(&["-n", "--ipv6=false", "--xtables-wait=1s"], &[]);
    assert_eq!(out.code, Some(0));
    // A named ENVOY_USER that does not exist: the fallback is said.
    let out = run_meshinit(
        &["-n", "--ipv6=false"],
        &[("ENVOY_USER".to_string(), "nosuchuser".to_string())],
    );
    assert_eq!(out.code, Some(0));
    assert!(
        out.stderr.contains(
            "warn\tENVOY_USER \"nosuchuser\" is not in /etc/passwd: the proxy uid falls back to 1337"
        ),
        "{}",
        out.stderr
    );
    // Host bits in a CIDR: what the kernel will hold is shown; the rules print as given.
    let out = run_meshinit(
        &[
            "-n",
            "--ipv6=false",
            "-i",
            "10.0.0.1/8",
            "-x",
            "192.168.1.1/16,10.1.0.0/16",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains(
        "--istio-service-cidr (-i, env ISTIO_SERVICE_CIDR): 10.0.0.1/8 has host bits set; the kernel stores it as 10.0.0.0/8"
    ), "{}", out.stderr);
    assert!(out
        .stderr
        .contains("192.168.1.1/16 has host bits set; the kernel stores it as 192.168.0.0/16"));
    assert!(!out.stderr.contains("10.1.0.0/16 has host bits"));
    assert!(out.stdout.contains("-d 10.0.0.1/8"), "dry run unchanged");
    // Why IPv6 is off, when the flag decides.
    assert!(out
        .stderr
        .contains("info\tIPv6 off: --ipv6=false (command line --ipv6)"));
}
