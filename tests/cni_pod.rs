//! CNI mode's per-pod decision through the binary (`meshinit cni-dry-run`, the decision `ADD`
//! makes, printing instead of installing): Istio CNI's own plugin dry-run cases
//! (`tests/data/istio-cni`, pod annotations → Istio's golden iptables-restore text, byte for
//! byte), the pods Istio CNI leaves alone, and invalid annotations.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

const CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

fn corpus() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/istio-cni"))
}

/// The network configuration containerd passes to the meshinit entry of a conflist declaring
/// the capability, with these pod annotations (`None`: the runtime passed none).
fn netconf(args: &[String], annotations: Option<Value>) -> String {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "meshinit",
        "capabilities": {CAPABILITY: true},
        "istio_iptables_args": args,
    });
    if let Some(annotations) = annotations {
        conf["runtimeConfig"] = json!({ CAPABILITY: annotations });
    }
    conf.to_string()
}

fn dry_run(stdin: &str) -> support::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshinit"))
        .arg("cni-dry-run")
        .env_clear()
        // A node with the iptables tools, as Istio CNI's goldens assume.
        .env("PATH", support::iptables_stand_ins())
        .env(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=test-ns-name;K8S_POD_NAME=test-pod",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshinit runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    support::Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn istio_cni_plugin_cases_match_byte_for_byte() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 9, "Istio CNI's 9 plugin dry-run cases");
    let mut failures = Vec::new();
    for case in &cases {
        let read = |f: &str| std::fs::read_to_string(case.join(f)).unwrap();
        let args: Vec<String> = read("istio_iptables_args")
            .lines()
            .map(str::to_string)
            .collect();
        let annotations: Value = serde_json::from_str(&read("annotations.json")).unwrap();
        let expected = read("expected.rules");
        let out = dry_run(&netconf(&args, Some(annotations)));
        let printed = support::without_comments(&out.stdout);
        if out.code != Some(0) || printed != expected {
            failures.push(format!(
                "{} (exit {:?}, stderr {}):\n{}",
                case.display(),
                out.code,
                out.stderr.trim(),
                support::diff(&expected, &printed)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn status(init: &[&str], containers: &[&str]) -> String {
    json!({"initContainers": init, "containers": containers, "volumes": [],
           "imagePullSecrets": null, "revision": "default"})
    .to_string()
}

#[test]
fn pods_istio_cni_leaves_alone_get_nothing() {
    let cases = [
        (json!(null), "no sidecar.istio.io/status"),
        (json!({"app": "web"}), "no sidecar.istio.io/status"),
        (
            json!({"sidecar.istio.io/status": "true", "sidecar.istio.io/inject": "false"}),
            "sidecar.istio.io/inject=\"false\"",
        ),
        (
            json!({"sidecar.istio.io/status": status(&["istio-init"], &["istio-proxy"])}),
            "istio-init",
        ),
        (
            json!({"sidecar.istio.io/status": status(&["istio-validation"], &["app"])}),
            "no istio-proxy",
        ),
        (
            json!({"sidecar.istio.io/status": "true", "inject.istio.io/templates": "gateway"}),
            "gateway",
        ),
    ];
    for (annotations, why) in cases {
        let out = dry_run(&netconf(&[], Some(annotations.clone())));
        assert_eq!(out.code, Some(0), "{annotations}: {}", out.stderr);
        assert!(
            out.stdout
                .starts_with("# meshinit CNI ADD installs nothing: not injected: ")
                && out.stdout.contains(why)
                && out.stdout.lines().count() == 1,
            "{annotations}: {}",
            out.stdout
        );
    }
    // Injected as the injector writes it with Istio CNI on: the proxy, istio-validation.
    let injected =
        json!({"sidecar.istio.io/status": status(&["istio-validation"], &["istio-proxy"])});
    let out = dry_run(&netconf(&[], Some(injected)));
    assert!(out.stdout.contains("-j ISTIO_REDIRECT"), "{}", out.stdout);
}

#[test]
fn an_invalid_annotation_is_refused_naming_it() {
    for (name, value) in [
        ("sidecar.istio.io/interceptionMode", "NONE"),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0",
        ),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "8000:9000"),
        ("traffic.sidecar.istio.io/excludeInterfaces", "0bad"),
    ] {
        let annotations = json!({"sidecar.istio.io/status": "true", name: value});
        let out = dry_run(&netconf(&[], Some(annotations)));
        assert_eq!(out.code, Some(2), "{name}: {}", out.stdout);
        assert!(out.stdout.is_empty(), "{name}: printed {}", out.stdout);
        assert!(
            out.stderr.contains(&format!("{name}={value:?}")),
            "{name}: {}",
            out.stderr
        );
    }
}

#[test]
fn without_annotations_the_conflist_field_decides() {
    let args = vec!["-i".to_string(), "*".to_string()];
    // Declared but not passed: refused by default.
    let out = dry_run(&netconf(&args, None));
    assert_eq!(out.code, Some(2), "{}", out.stdout);
    assert!(
        out.stderr.contains("without_pod_annotations"),
        "{}",
        out.stderr
    );
    // Said to capture: the conflist's rules as they are.
    let mut conf: Value = serde_json::from_str(&netconf(&args, None)).unwrap();
    conf["without_pod_annotations"] = json!("capture");
    let out = dry_run(&conf.to_string());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("-j ISTIO_REDIRECT"), "{}", out.stdout);
    // Not declared (podman, plain CNI tools): capture, as before.
    conf.as_object_mut()
        .unwrap()
        .remove("without_pod_annotations");
    conf.as_object_mut().unwrap().remove("capabilities");
    let out = dry_run(&conf.to_string());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("-j ISTIO_REDIRECT"), "{}", out.stdout);
    // A bad value is named.
    conf["without_pod_annotations"] = json!("sometimes");
    let out = dry_run(&conf.to_string());
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("without_pod_annotations") && out.stderr.contains("sometimes"));
}

#[test]
fn cni_install_declares_the_capability_in_the_entry() {
    let root =
        std::env::temp_dir().join(format!("meshinit-cni-pod-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("net.d")).unwrap();
    let conflist = root.join("net.d/10-k8s.conflist");
    std::fs::write(
        &conflist,
        r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let out = support::run_meshinit(
        &[
            "cni-install".to_string(),
            format!("--bin-dir={}", root.join("bin").display()),
            format!("--conf-dir={}", root.join("net.d").display()),
            r#"--plugin-config={"type":"meshinit","without_pod_annotations":"refuse"}"#.to_string(),
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    let entry = &written["plugins"][1];
    assert_eq!(entry["type"], "meshinit");
    assert_eq!(entry["capabilities"][CAPABILITY], true, "{written}");
    assert_eq!(entry["without_pod_annotations"], "refuse");
    std::fs::remove_dir_all(&root).unwrap();
}
