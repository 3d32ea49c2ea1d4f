//! CNI mode through the binary, without privileges: environment + stdin → stdout and exit
//! code for every command and every error class, with the spec's example configurations
//! (result pass-through byte for byte, the error object's fields and codes).

mod support;

use serde_json::Value;

/// What one plugin invocation printed and how it exited.
type Reply = support::Output;

/// stdout as the CNI error object, checked for the spec's fields.
fn error_object(reply: &Reply) -> Value {
    let v: Value = serde_json::from_str(&reply.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", reply.stdout));
    for key in ["cniVersion", "code", "msg"] {
        assert!(v.get(key).is_some(), "error object lacks {key}: {v}");
    }
    assert!(v["code"].is_u64(), "{v}");
    assert!(v["msg"].is_string(), "{v}");
    v
}

fn cni(command: &str, env: &[(&str, String)], stdin: &str) -> Reply {
    let mut all: Vec<(&str, String)> = vec![("CNI_COMMAND", command.to_string())];
    all.extend(env.iter().cloned());
    support::Meshinit::new().envs(all).stdin(stdin).run()
}

/// The environment of an ADD/DEL/CHECK for a Kubernetes pod, as podman and the kubelet's
/// runtimes pass it.
fn pod_env<'a>(netns: &'a str, namespace: &'a str) -> Vec<(&'a str, String)> {
    vec![
        ("CNI_CONTAINERID", "3b1b7c2d4e5f".to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        (
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=web-0"),
        ),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
    ]
}

fn run(command: &str, env: &[(&str, String)], stdin: &str) -> Reply {
    cni(command, env, stdin)
}

/// The spec's 1.0.0 example result of the bridge plugin, written with the spacing and key
/// order a runtime might use: ADD must print it exactly.
const PREV_RESULT: &str = r#"{
      "cniVersion": "1.0.0",
      "interfaces": [
          {"name": "cni0", "mac": "00:11:22:33:44:55"},
          {"name": "veth3243", "mac": "55:44:33:22:11:11"},
          {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
      ],
      "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dns": {"nameservers": ["10.1.0.1"]}
  }"#;

/// A network configuration for meshinit with Istio's injected istio-init arguments.
fn config(version: &str, extra: &str, prev_result: bool) -> String {
    let prev = if prev_result {
        format!(",\n  \"prevResult\": {PREV_RESULT}")
    } else {
        String::new()
    };
    format!(
        r#"{{
  "cniVersion": "{version}",
  "name": "dbnet",
  "type": "meshinit",
  "istio_iptables_args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337",
      "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
      "--log_output_level=default:info"],
  "exclude_namespaces": ["kube-system"]{extra}{prev}
}}"#
    )
}

#[test]
fn version_lists_the_supported_versions_in_the_asked_version() {
    for asked in ["0.4.0", "1.0.0", "1.1.0"] {
        let out = cni("VERSION", &[], &format!(r#"{{"cniVersion":"{asked}"}}"#));
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).expect("JSON on stdout");
        assert_eq!(v["cniVersion"], asked);
        let supported: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(supported, ["0.4.0", "1.0.0", "1.1.0"]);
    }
    // An old runtime sends nothing (or an unknown version): meshinit answers in 1.0.0.
    let out = cni("VERSION", &[], "");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
}

#[test]
fn add_in_an_excluded_namespace_prints_prev_result_byte_for_byte() {
    for version in ["0.4.0", "1.0.0"] {
        let conf = config(version, "", true).replace(
            "\"1.0.0\",\n      \"interfaces\"",
            &format!("\"{version}\",\n      \"interfaces\""),
        );
        let out = run("ADD", &pod_env("/run/netns/none", "kube-system"), &conf);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let expected = PREV_RESULT.replace("\"1.0.0\"", &format!("\"{version}\""));
        assert_eq!(out.stdout, expected, "the result is prevResult, unchanged");
        assert!(
            out.stderr.contains("exclude_namespaces") && out.stderr.contains("kube-system/web-0"),
            "stderr says why nothing was done: {}",
            out.stderr
        );
    }
}

#[test]
fn del_and_check_in_an_excluded_namespace_succeed_silently() {
    for command in ["DEL", "CHECK"] {
        let out = run(
            command,
            &pod_env("/run/netns/none", "kube-system"),
            &config("1.0.0", "", true),
        );
        assert_eq!(out.code, Some(0), "{command}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{command} prints nothing on success");
    }
}

#[test]
fn del_succeeds_when_the_namespace_is_gone_or_not_given() {
    for netns in ["/run/netns/meshinit-test-no-such-namespace", ""] {
        for prev in [true, false] {
            let out = run(
                "DEL",
                &pod_env(netns, "default"),
                &config("1.0.0", "", prev),
            );
            assert_eq!(out.code, Some(0), "netns {netns:?}: {}", out.stderr);
            assert_eq!(out.stdout, "");
            assert!(out.stderr.contains("nothing to remove"), "{}", out.stderr);
        }
    }
}

#[test]
fn del_with_a_configuration_add_refuses_succeeds_and_says_so() {
    // An error here would stop the runtime's teardown before the bridge releases the address.
    let bad = [
        r#", "backend": "ebpf""#,
        r#", "exclude_namespace": ["x"]"#,
        r#", "env": {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "nonsense"}"#,
    ];
    for extra in bad {
        let out = run(
            "DEL",
            &pod_env("/run/netns/meshinit-test-no-such-namespace", "default"),
            &config("1.0.0", extra, true),
        );
        assert_eq!(out.code, Some(0), "{extra}: {}", out.stderr);
        assert_eq!(out.stdout, "");
        assert!(
            out.stderr.contains("ADD installs nothing with it"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn bad_values_are_invalid_config_naming_the_field_before_anything_is_touched() {
    // A namespace path that does not exist: the error must come before it is entered.
    let netns = "/run/netns/meshinit-test-no-such-namespace";
    let cases = [
        (r#", "backend": "ebpf""#, "backend"),
        (r#", "log_level": "loud""#, "log_level"),
        (r#", "log_file": "relative.log""#, "log_file"),
        (r#", "env": {"ENVOY_PORT": "15001"}"#, "env.ENVOY_PORT"),
        (
            r#", "env": {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "nonsense"}"#,
            "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
        ),
        (
            r#", "exclude_namespaces": "kube-system""#,
            "exclude_namespaces",
        ),
    ];
    for (extra, named) in cases {
        // A repeated key overrides the earlier one, as in every JSON decoder the runtimes use.
        let conf = config("1.0.0", extra, true);
        let out = run("ADD", &pod_env(netns, "default"), &conf);
        assert_eq!(out.code, Some(2), "{extra}: {}", out.stdout);
        let err = error_object(&out);
        assert_eq!(err["code"], 7, "{extra}: {err}");
        assert!(
            err["msg"].as_str().unwrap().contains(named),
            "{extra}: {err}"
        );
        assert_eq!(err["cniVersion"], "1.0.0");
    }
    // A capture flag's value: config's own message, naming the flag.
    let conf = config("1.0.0", "", true).replace(r#""-p", "15001""#, r#""-p", "70000""#);
    let out = run("ADD", &pod_env(netns, "default"), &conf);
    assert_eq!(out.code, Some(2), "{}", out.stdout);
    let err = error_object(&out);
    assert_eq!(err["code"], 7, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("--envoy-port") && msg.contains("70000"),
        "{msg}"
    );
    // Flags the CNI command owns.
    for flag in [
        "--dry-run",
        "--cleanup-only",
        "--check",
        "--network-namespace=/x",
    ] {
        let conf = config("1.0.0", "", true).replace(
            r#""--log_output_level=default:info""#,
            &format!(r#""{flag}""#),
        );
        let out = run("ADD", &pod_env(netns, "default"), &conf);
        let err = error_object(&out);
        assert_eq!(err["code"], 7, "{flag}: {err}");
        assert!(
            err["msg"]
                .as_str()
                .unwrap()
                .contains(flag.split('=').next().unwrap()),
            "{err}"
        );
    }
}

#[test]
fn an_unknown_field_is_unsupported_field_with_its_key_and_value() {
    let out = run(
        "ADD",
        &pod_env("/run/netns/x", "default"),
        &config("1.0.0", r#", "exclude_namespace": ["kube-system"]"#, true),
    );
    assert_eq!(out.code, Some(2));
    let err = error_object(&out);
    assert_eq!(err["code"], 2, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("exclude_namespace") && msg.contains("kube-system"),
        "{msg}"
    );
}

#[test]
fn the_specs_optional_fields_are_accepted() {
    let extra = r#", "args": {"cni": {"labels": [{"key": "app", "value": "db"}]}},
        "runtimeConfig": {"portMappings": []}, "capabilities": {"portMappings": true}"#;
    let out = run(
        "ADD",
        &pod_env("/run/netns/x", "kube-system"),
        &config("1.0.0", extra, true),
    );
    assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout, PREV_RESULT);
}

#[test]
fn versions_meshinit_does_not_speak_are_incompatible() {
    for version in ["0.3.1", "0.2.0", "2.0.0"] {
        let out = run(
            "ADD",
            &pod_env("/run/netns/x", "default"),
            &config(version, "", true),
        );
        assert_eq!(out.code, Some(2));
        let err = error_object(&out);
        assert_eq!(err["code"], 1, "{version}: {err}");
        assert!(err["msg"].as_str().unwrap().contains(version), "{err}");
    }
    // STATUS and GC are 1.1.0's.
    let out = run("STATUS", &[], &config("1.0.0", "", false));
    assert_eq!(error_object(&out)["code"], 1);
    for command in ["STATUS", "GC"] {
        let out = run(command, &[], &config("1.1.0", "", false));
        assert_eq!(out.code, Some(0), "{command}: {}", out.stderr);
        assert_eq!(out.stdout, "");
    }
}

#[test]
fn input_that_is_not_a_configuration_is_a_decoding_failure() {
    for stdin in ["", "not json", "[1,2]", r#"{"cniVersion": "1.0.0""#] {
        let out = run("ADD", &pod_env("/run/netns/x", "default"), stdin);
        assert_eq!(out.code, Some(2), "{stdin:?}");
        let err = error_object(&out);
        assert_eq!(err["code"], 6, "{stdin:?}: {err}");
        assert_eq!(err["cniVersion"], "1.0.0");
    }
    // Missing required fields of the configuration.
    for (conf, named) in [
        (r#"{"name": "n", "type": "meshinit"}"#, "cniVersion"),
        (r#"{"cniVersion": "1.0.0", "type": "meshinit"}"#, "name"),
    ] {
        let err = error_object(&run("DEL", &pod_env("/run/netns/x", "default"), conf));
        assert_eq!(err["code"], 7, "{err}");
        assert!(err["msg"].as_str().unwrap().contains(named), "{err}");
    }
}

#[test]
fn add_and_check_need_a_previous_result() {
    for command in ["ADD", "CHECK"] {
        let out = run(
            command,
            &pod_env("/run/netns/x", "default"),
            &config("1.0.0", "", false),
        );
        assert_eq!(out.code, Some(2), "{command}");
        let err = error_object(&out);
        assert_eq!(err["code"], 7, "{err}");
        assert!(err["msg"].as_str().unwrap().contains("prevResult"), "{err}");
        assert!(
            err["details"].as_str().unwrap().contains("conflist"),
            "{err}"
        );
    }
}

#[test]
fn bad_environment_is_invalid_env_naming_the_variable() {
    let conf = config("1.0.0", "", true);
    let out = cni("FROB", &[], &conf);
    assert_eq!(out.code, Some(2));
    let err = error_object(&out);
    assert_eq!(err["code"], 4, "{err}");
    assert!(
        err["msg"].as_str().unwrap().contains("CNI_COMMAND"),
        "{err}"
    );
    let base = pod_env("/run/netns/x", "default");
    let cases: [(&str, Option<&str>); 5] = [
        ("CNI_CONTAINERID", None),
        ("CNI_CONTAINERID", Some("-bad id")),
        ("CNI_IFNAME", None),
        ("CNI_NETNS", None),
        ("CNI_ARGS", Some("IgnoreUnknown=1;garbage")),
    ];
    for (var, value) in cases {
        let mut env: Vec<(&str, String)> =
            base.iter().filter(|(k, _)| *k != var).cloned().collect();
        if let Some(v) = value {
            env.push((var, v.to_string()));
        }
        for command in ["ADD", "CHECK"] {
            let out = run(command, &env, &conf);
            assert_eq!(out.code, Some(2), "{var}={value:?}");
            let err = error_object(&out);
            assert_eq!(err["code"], 4, "{command} {var}={value:?}: {err}");
            assert!(err["msg"].as_str().unwrap().contains(var), "{err}");
        }
    }
}

#[test]
fn stdout_carries_only_the_reply_and_log_file_takes_the_log() {
    let dir = std::env::temp_dir().join(format!("meshinit-cni-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("cni.log");
    let extra = format!(r#", "log_file": "{}", "log_level": "debug""#, log.display());
    let out = run(
        "ADD",
        &pod_env("/run/netns/x", "kube-system"),
        &config("1.0.0", &extra, true),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, PREV_RESULT);
    assert_eq!(out.stderr, "", "the log went to the file");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("CNI ADD (spec 1.0.0): network dbnet"),
        "{text}"
    );
    // An error goes to the log file too, and the error object to stdout.
    let out = run(
        "ADD",
        &pod_env("/run/netns/x", "default"),
        &config("1.0.0", &extra, false),
    );
    assert_eq!(error_object(&out)["code"], 7);
    assert_eq!(out.stderr, "");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("CNI error 7"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn arguments_on_the_command_line_mean_the_command_line_even_with_cni_command_set() {
    let out = cni("ADD", &[], "");
    assert_eq!(
        out.code,
        Some(2),
        "ADD without configuration: {}",
        out.stdout
    );
    let out = support::Meshinit::new()
        .no_path()
        .env("CNI_COMMAND", "ADD")
        .arg("--version")
        .run();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("meshinit "), "{}", out.stdout);
}

#[test]
fn an_excluded_namespace_starts_even_when_the_capture_settings_are_bad() {
    // kube-system's DNS must not depend on the mesh's settings being right.
    let conf = config("1.0.0", "", true).replace(r#""-p", "15001""#, r#""-p", "70000""#);
    let out = run("ADD", &pod_env("/run/netns/x", "kube-system"), &conf);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(out.stdout, PREV_RESULT);
    let out = run("ADD", &pod_env("/run/netns/x", "default"), &conf);
    assert_eq!(
        error_object(&out)["code"],
        7,
        "other namespaces get the error"
    );
}

/// libcni (1.2.3 on) adds `cni.dev/valid-attachments` to every GC configuration, and may pass
/// `cni.dev/attachments`: the runtime's `cni.dev/` fields are not meshinit's to refuse.
#[test]
fn gc_with_the_fields_libcni_sends_succeeds() {
    let gc = r#"{
  "cniVersion": "1.1.0",
  "name": "dbnet",
  "type": "meshinit",
  "istio_iptables_args": ["istio-iptables", "-p", "15001", "-u", "1337"],
  "cni.dev/valid-attachments": [{"containerID": "3b1b7c2d4e5f", "ifname": "eth0"}],
  "cni.dev/attachments": [{"containerID": "3b1b7c2d4e5f", "ifname": "eth0"}]
}"#;
    let out = run("GC", &[("CNI_PATH", "/opt/cni/bin".to_string())], gc);
    assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "");
    // Another unknown field is still refused, naming it.
    let out = run(
        "GC",
        &[("CNI_PATH", "/opt/cni/bin".to_string())],
        &gc.replace("cni.dev/attachments", "attachments"),
    );
    assert_eq!(error_object(&out)["code"], 2, "{}", out.stdout);
}

/// `"prevResult": null` is no previous result: ADD and CHECK fail with code 7, and nothing is
/// installed (the namespace is never entered: the path does not exist).
#[test]
fn a_null_previous_result_is_missing() {
    for command in ["ADD", "CHECK"] {
        let conf = config("1.0.0", r#", "prevResult": null"#, false);
        let out = run(command, &pod_env("/run/netns/x", "default"), &conf);
        assert_eq!(
            out.code,
            Some(2),
            "{command}: {} {}",
            out.stdout,
            out.stderr
        );
        let err = error_object(&out);
        assert_eq!(err["code"], 7, "{err}");
        assert!(err["msg"].as_str().unwrap().contains("prevResult"), "{err}");
    }
}

/// A `log_file` that is the plugin's own stdout would mix log lines into the result the runtime
/// parses: refused (code 7) under every name for it, and the reply is still clean JSON.
#[test]
fn log_file_on_stdout_is_refused() {
    for path in ["/dev/stdout", "/proc/self/fd/1", "/dev/fd/1"] {
        let extra = format!(r#", "log_file": "{path}", "log_level": "debug""#);
        let out = run(
            "ADD",
            &pod_env("/run/netns/x", "kube-system"),
            &config("1.0.0", &extra, true),
        );
        let err = error_object(&out);
        assert_eq!(err["code"], 7, "{path}: {err}");
        assert!(
            err["msg"].as_str().unwrap().contains("standard output"),
            "{err}"
        );
    }
}

/// A large previous result (a node with thousands of interfaces or routes) passes through byte
/// for byte; only its `dns` is read.
#[test]
fn a_large_previous_result_passes_through_byte_for_byte() {
    let interfaces: Vec<String> = (0..20_000)
        .map(|i| {
            format!(
                r#"{{"name": "veth{i}", "mac": "00:11:22:33:{:02x}:{:02x}"}}"#,
                i / 256 % 256,
                i % 256
            )
        })
        .collect();
    let prev = format!(
        r#"{{"cniVersion": "1.0.0", "interfaces": [{}], "ips": [], "dns": {{"nameservers": ["10.1.0.1"]}}, "n": 1e3}}"#,
        interfaces.join(", ")
    );
    let conf = config("1.0.0", &format!(r#", "prevResult": {prev}"#), false);
    let out = run("ADD", &pod_env("/run/netns/x", "kube-system"), &conf);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, prev);
}

/// A `CNI_NETNS` pin file whose namespace is gone (a plain file, as left after an unmount)
/// means the namespace and our rules with it are gone: DEL succeeds. ADD names `CNI_NETNS`.
#[test]
fn del_succeeds_with_a_stale_namespace_pin_file() {
    let pin = std::env::temp_dir().join(format!("meshinit-stale-pin-{}", std::process::id()));
    std::fs::write(&pin, "").unwrap();
    let netns = pin.to_string_lossy().into_owned();
    let out = run(
        "DEL",
        &pod_env(&netns, "default"),
        &config("1.0.0", "", true),
    );
    assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("nothing to remove"), "{}", out.stderr);
    let out = run(
        "ADD",
        &pod_env(&netns, "default"),
        &config("1.0.0", "", true),
    );
    let err = error_object(&out);
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("CNI_NETNS"), "{err}");
    assert!(!msg.contains("--network-namespace"), "{err}");
    std::fs::remove_file(&pin).unwrap();
}
