//! CNI mode's per-pod decision, as Istio CNI's sidecar plugin makes it but without the
//! Kubernetes API: from the pod annotations the runtime passes (containerd and CRI-O, for an
//! entry declaring the `io.kubernetes.cri.pod-annotations` capability), whether the pod gets
//! rules at all and which istio-iptables settings its annotations give on top of the conflist's
//! `istio_iptables_args`; and `meshinit cni-dry-run`, which prints what `ADD` would do.
//!
//! ```text
//! runtimeConfig["io.kubernetes.cri.pod-annotations"] ─▶ injected? ─no─▶ nothing (reason logged)
//!                                                        │yes
//!                          istio_iptables_args + the annotations' settings ─▶ config::raw_args
//! ```

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::Value;

use super::config::{self, PluginConfig};
use super::istio_annotations::{self as annotations, InvalidAnnotation};
use super::protocol::{self, code, CniError, Command, Request};
use crate::cli::{self, Env, Source};
use crate::config::detect::Host;
use crate::config::types::parse_go_bool;
use crate::exit_code;
use crate::log::Log;
use crate::run;

/// The capability a conflist entry declares to get the pod's annotations in
/// `runtimeConfig` (containerd ≥ 1.5 and CRI-O pass them).
pub const CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// The conflist field saying what to do when the runtime passed no annotations.
pub const WITHOUT_FIELD: &str = "without_pod_annotations";

/// `cni-install`'s entry declares the capability, so that containerd and CRI-O pass the pod's
/// annotations; an entry that sets it (to `false`, to opt out) keeps its own value.
pub fn declare_capability(entry: &mut Value) {
    let Some(object) = entry.as_object_mut() else {
        return;
    };
    let capabilities = object
        .entry("capabilities")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(capabilities) = capabilities.as_object_mut() {
        capabilities.entry(CAPABILITY).or_insert(Value::Bool(true));
    }
}

/// What `ADD` does when the runtime passed no pod annotations (`without_pod_annotations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WithoutAnnotations {
    /// `capture`: install the conflist's rules in every pod (podman, plain CNI tools).
    Capture,
    /// `refuse`: fail `ADD`; capturing a pod without a sidecar would cut its traffic off.
    Refuse,
}

/// Reads the `without_pod_annotations` field.
pub fn without_annotations(value: &Value) -> Result<WithoutAnnotations, CniError> {
    match value.as_str() {
        Some("capture") => Ok(WithoutAnnotations::Capture),
        Some("refuse") => Ok(WithoutAnnotations::Refuse),
        _ => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{WITHOUT_FIELD}: {value} is not \"capture\" or \"refuse\""),
        )),
    }
}

/// What one pod gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Rules: the conflist's arguments followed by these (the annotations' settings).
    Capture {
        /// `--flag=value` arguments appended to `istio_iptables_args`.
        args: Vec<String>,
        /// Why, for the log.
        why: String,
    },
    /// The runtime passed no annotations and the configuration says capture: the conflist's
    /// rules as they are.
    CaptureAsConfigured(String),
    /// Nothing: the pod is not one Istio CNI would touch.
    Skip(String),
}

/// The annotations the runtime passed, if it passed any (`null` is an empty set: containerd
/// passes a pod without annotations so).
fn passed_annotations(
    fields: &BTreeMap<String, Value>,
) -> Result<Option<BTreeMap<String, String>>, CniError> {
    let Some(value) = fields
        .get("runtimeConfig")
        .and_then(|rc| rc.get(CAPABILITY))
    else {
        return Ok(None);
    };
    if value.is_null() {
        return Ok(Some(BTreeMap::new()));
    }
    let field = format!("runtimeConfig[{CAPABILITY:?}]");
    let Some(map) = value.as_object() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{field} must be an object of strings, not {value}"),
        ));
    };
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(CniError::new(
                code::INVALID_CONFIG,
                format!("{field}.{k} must be a string, not {v}"),
            )),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Whether the entry declares the capability (then the runtime is expected to pass them).
fn declares_capability(fields: &BTreeMap<String, Value>) -> bool {
    fields
        .get("capabilities")
        .and_then(|c| c.get(CAPABILITY))
        .and_then(Value::as_bool)
        == Some(true)
}

/// The containers Istio's injector added, from its status annotation (a JSON object with
/// `initContainers` and `containers` lists); `None` when the value is not such an object.
fn injected_containers(status: &str) -> Option<(Vec<String>, Vec<String>)> {
    let value: Value = serde_json::from_str(status).ok()?;
    let list = |key: &str| -> Option<Vec<String>> {
        match value.get(key)? {
            Value::Null => Some(Vec::new()),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect(),
            _ => None,
        }
    };
    value.as_object()?;
    Some((list("initContainers")?, list("containers")?))
}

/// Why Istio CNI would leave this pod alone, in the order its plugin checks; `None`: the pod
/// is injected. Without the API, the container list comes from the injector's status
/// annotation (which names what it added); a status that is not such a list (Istio's own tests
/// write `true`) counts as injected.
fn skip_reason(annotations: &BTreeMap<String, String>) -> Option<String> {
    let status = annotations.get(annotations::STATUS);
    if let Some((init, containers)) = status.and_then(|s| injected_containers(s)) {
        if init.iter().any(|c| c == "istio-init") {
            return Some(format!(
                "{} lists an istio-init container, which installs the rules itself",
                annotations::STATUS
            ));
        }
        if !init.iter().chain(&containers).any(|c| c == "istio-proxy") {
            return Some(format!(
                "{} lists no istio-proxy container (init: {init:?}, containers: {containers:?})",
                annotations::STATUS
            ));
        }
    }
    if let Some(templates) = annotations.get(annotations::TEMPLATES) {
        if templates.split(',').any(|t| t.trim() == "gateway") {
            return Some(format!(
                "{}={templates:?}: the proxy is a gateway (router), which Istio CNI does not capture",
                annotations::TEMPLATES
            ));
        }
    }
    if let Some(inject) = annotations.get(annotations::INJECT) {
        if parse_go_bool(inject) == Ok(false) {
            return Some(format!("{}={inject:?}", annotations::INJECT));
        }
    }
    if status.is_none() {
        return Some(format!(
            "no {} annotation: Istio's injector did not add a sidecar",
            annotations::STATUS
        ));
    }
    None
}

/// The value the conflist's `istio_iptables_args` gives a flag, when it gives one.
fn base_values(plugin: &PluginConfig) -> Result<cli::RawArgs, CniError> {
    let mut argv = vec!["meshinit".to_string()];
    argv.extend(plugin.args.iter().cloned());
    match cli::parse(&argv, &plugin.env) {
        Ok(cli::Command::Run(raw)) => Ok(raw),
        Ok(_) => Err(CniError::new(
            code::INVALID_CONFIG,
            "istio_iptables_args: must be istio-iptables flags, not a sub-command, --help or --version",
        )),
        Err(e) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("istio_iptables_args: {e}"),
        )),
    }
}

/// Decides for the pod of `fields` (one plugin's network configuration as the runtime passed
/// it) with meshinit's settings `plugin`.
pub fn decide(
    fields: &BTreeMap<String, Value>,
    plugin: &PluginConfig,
) -> Result<Decision, CniError> {
    let Some(pod_annotations) = passed_annotations(fields)? else {
        let declared = declares_capability(fields);
        let rule = plugin.without_pod_annotations.unwrap_or(if declared {
            WithoutAnnotations::Refuse
        } else {
            WithoutAnnotations::Capture
        });
        let why = if declared {
            format!("the entry declares the capability {CAPABILITY} but the runtime passed no pod annotations (containerd before 1.5 or a runtime without it)")
        } else {
            format!("the runtime passed no pod annotations (the entry does not declare the capability {CAPABILITY})")
        };
        return match rule {
            WithoutAnnotations::Capture => Ok(Decision::CaptureAsConfigured(format!(
                "{why}; {WITHOUT_FIELD} is capture: the conflist's rules for every pod"
            ))),
            WithoutAnnotations::Refuse => Err(CniError {
                code: code::INVALID_CONFIG,
                msg: format!(
                    "{why}, and {WITHOUT_FIELD} is refuse{}: cannot tell whether the pod has a sidecar",
                    if plugin.without_pod_annotations.is_none() {
                        " (the default with the capability)"
                    } else {
                        ""
                    }
                ),
                details: "containerd 1.5+ and CRI-O pass pod annotations to an entry declaring the capability; or set \"without_pod_annotations\": \"capture\" to capture every pod (docs/cni-per-pod.md)".to_string(),
            }),
        };
    };
    if let Some(why) = skip_reason(&pod_annotations) {
        return Ok(Decision::Skip(format!("not injected: {why}")));
    }
    let base = base_values(plugin)?;
    let base_value = |flag: &str| match base.get(flag).source {
        Source::CommandLine(_) => Some(base.get(flag).value.clone()),
        _ => None,
    };
    let settings = annotations::redirect(&pod_annotations, &base_value).map_err(
        |e: InvalidAnnotation| CniError {
            code: code::INVALID_CONFIG,
            msg: e.to_string(),
            details: "Istio CNI refuses the pod for this value too; fix the annotation (or the injector's values it came from)".to_string(),
        },
    )?;
    let args = settings
        .iter()
        .map(|(flag, value)| format!("--{flag}={value}"))
        .collect();
    let read: Vec<&str> = pod_annotations
        .keys()
        .map(String::as_str)
        .filter(|k| k.contains("istio.io/"))
        .collect();
    Ok(Decision::Capture {
        args,
        why: format!(
            "injected ({} present); Istio annotations read: {}",
            annotations::STATUS,
            read.join(", ")
        ),
    })
}

/// `ADD`, `DEL` and `CHECK`'s step: the configuration to run with for this pod, or `None`
/// when it gets nothing (the reason is logged).
pub fn for_pod(
    request: &Request,
    plugin: PluginConfig,
    log: &Log,
) -> Result<Option<PluginConfig>, CniError> {
    let pod = request.pod.describe();
    match decide(&request.fields, &plugin)? {
        Decision::Skip(why) => {
            log.info(&format!("pod {pod}: {why}: no rules"));
            Ok(None)
        }
        Decision::CaptureAsConfigured(why) => {
            log.info(&format!("pod {pod}: {why}"));
            Ok(Some(plugin))
        }
        Decision::Capture { args, why } => {
            log.info(&format!("pod {pod}: {why}; settings: {}", args.join(" ")));
            let mut plugin = plugin;
            plugin.args.extend(args);
            Ok(Some(plugin))
        }
    }
}

/// `meshinit cni-dry-run`: reads one plugin's network configuration as the runtime passes it
/// on stdin (`runtimeConfig` with the pod's annotations; `prevResult` for the DNS servers),
/// with `CNI_ARGS` from the environment when given, and prints what `ADD` would install (the
/// rules, as `meshinit --dry-run`) or a `#` line saying why nothing. Changes nothing. Exit 0,
/// or 2 when `ADD` would refuse the input.
pub fn dry_run_main(env: &Env, host: &dyn Host) -> u8 {
    let log = Log::default();
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        log.error(&format!("cni-dry-run: cannot read stdin: {e}"));
        return exit_code::FAILURE;
    }
    match dry_run(env, &input, host, log) {
        Ok(code) => code,
        Err(e) => {
            log.error(&format!("cni-dry-run: CNI error {}: {}", e.code, e.msg));
            if !e.details.is_empty() {
                log.error(&e.details);
            }
            exit_code::INVALID_INPUT
        }
    }
}

fn dry_run(env: &Env, input: &str, host: &dyn Host, log: Log) -> Result<u8, CniError> {
    // The parameters only a real ADD has: stand-ins, so that the request is checked as ADD's.
    let mut env = env.clone();
    for (name, stand_in) in [
        ("CNI_CONTAINERID", "dry-run"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/dev/null"),
    ] {
        env.entry(name.to_string())
            .or_insert_with(|| stand_in.to_string());
    }
    let request = protocol::request(Command::Add, &env, input)?;
    let plugin = config::plugin_config(&request.fields)?;
    let nothing = |why: &str| {
        let line = format!("# meshinit CNI ADD installs nothing: {why}\n");
        print!("{line}");
        Ok(exit_code::SUCCESS)
    };
    if let Some(ns) = &request.pod.namespace {
        if plugin.exclude_namespaces.contains(ns) {
            return nothing(&format!("namespace {ns} is in exclude_namespaces"));
        }
    }
    let mut plugin = match decide(&request.fields, &plugin)? {
        Decision::Skip(why) => return nothing(&why),
        Decision::CaptureAsConfigured(_) => plugin,
        Decision::Capture { args, .. } => {
            let mut plugin = plugin;
            plugin.args.extend(args);
            plugin
        }
    };
    // `--dry-run` is refused in istio_iptables_args; the environment of the parse sets it.
    plugin.env.insert("DRY_RUN".to_string(), "true".to_string());
    let raw = config::raw_args(&plugin, Command::Add)?;
    let resolv_conf = super::resolv_conf(request.prev_result.as_deref());
    super::validate(&raw, &resolv_conf)?;
    let host = super::CniHost {
        inner: host,
        resolv_conf,
    };
    Ok(run::execute(&raw, &host, log, &[], &Env::new()).code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> BTreeMap<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    fn with_annotations(annotations: &str) -> BTreeMap<String, Value> {
        fields(&format!(
            r#"{{"type":"meshinit","capabilities":{{"{CAPABILITY}":true}},
                "runtimeConfig":{{"{CAPABILITY}":{annotations}}}}}"#
        ))
    }

    fn skipped(annotations: &str) -> String {
        match decide(&with_annotations(annotations), &PluginConfig::default()).unwrap() {
            Decision::Skip(why) => why,
            other => panic!("{annotations}: {other:?}"),
        }
    }

    #[test]
    fn pods_istio_cni_leaves_alone_get_nothing() {
        assert!(skipped("null").contains("no sidecar.istio.io/status"));
        assert!(skipped("{}").contains("no sidecar.istio.io/status"));
        assert!(
            skipped(r#"{"sidecar.istio.io/inject":"false","sidecar.istio.io/status":"true"}"#)
                .contains("sidecar.istio.io/inject=\"false\"")
        );
        assert!(
            skipped(r#"{"sidecar.istio.io/inject":"F","sidecar.istio.io/status":"x"}"#)
                .contains("inject")
        );
        let status = |init: &str, containers: &str| {
            format!(
                r#"{{"sidecar.istio.io/status":{}}}"#,
                Value::String(format!(
                    r#"{{"initContainers":{init},"containers":{containers},"volumes":[],"imagePullSecrets":null,"revision":"default"}}"#
                ))
            )
        };
        assert!(skipped(&status(r#"["istio-init"]"#, r#"["istio-proxy"]"#)).contains("istio-init"));
        assert!(
            skipped(&status(r#"["istio-validation"]"#, r#"["app"]"#)).contains("no istio-proxy")
        );
        assert!(skipped(&status("null", "null")).contains("no istio-proxy"));
        assert!(skipped(
            r#"{"sidecar.istio.io/status":"true","inject.istio.io/templates":"gateway"}"#
        )
        .contains("gateway"));
    }

    #[test]
    fn injected_pods_get_the_annotations_settings() {
        let status = Value::String(
            r#"{"initContainers":["istio-validation"],"containers":["istio-proxy"]}"#.into(),
        );
        for annotations in [
            r#"{"sidecar.istio.io/status":"true"}"#.to_string(),
            format!(r#"{{"sidecar.istio.io/status":{status}}}"#),
            // Native sidecar: the proxy is an init container.
            format!(
                r#"{{"sidecar.istio.io/status":{}}}"#,
                Value::String(r#"{"initContainers":["istio-proxy"],"containers":[]}"#.into())
            ),
            r#"{"sidecar.istio.io/status":"true","sidecar.istio.io/inject":"true"}"#.to_string(),
        ] {
            match decide(&with_annotations(&annotations), &PluginConfig::default()).unwrap() {
                Decision::Capture { args, .. } => {
                    assert!(
                        args.contains(&"--istio-service-cidr=*".to_string()),
                        "{args:?}"
                    )
                }
                other => panic!("{annotations}: {other:?}"),
            }
        }
    }

    #[test]
    fn without_annotations_the_field_decides() {
        let plain = fields(r#"{"type":"meshinit"}"#);
        let declared = fields(&format!(r#"{{"capabilities":{{"{CAPABILITY}":true}}}}"#));
        let mut plugin = PluginConfig::default();
        assert!(matches!(
            decide(&plain, &plugin).unwrap(),
            Decision::CaptureAsConfigured(_)
        ));
        let err = decide(&declared, &plugin).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(err.msg.contains(WITHOUT_FIELD), "{}", err.msg);
        plugin.without_pod_annotations = Some(WithoutAnnotations::Capture);
        assert!(matches!(
            decide(&declared, &plugin).unwrap(),
            Decision::CaptureAsConfigured(_)
        ));
        plugin.without_pod_annotations = Some(WithoutAnnotations::Refuse);
        assert!(decide(&plain, &plugin).is_err());
    }

    #[test]
    fn install_declares_the_capability_unless_the_entry_says_otherwise() {
        let mut entry = serde_json::json!({"type": "meshinit"});
        declare_capability(&mut entry);
        assert_eq!(entry["capabilities"][CAPABILITY], true);
        let mut entry = serde_json::json!({"type": "meshinit",
            "capabilities": {"portMappings": true, CAPABILITY: false}});
        declare_capability(&mut entry);
        assert_eq!(entry["capabilities"][CAPABILITY], false);
        assert_eq!(entry["capabilities"]["portMappings"], true);
    }

    #[test]
    fn bad_input_is_named() {
        let err = decide(
            &with_annotations(
                r#"{"sidecar.istio.io/status":"true","sidecar.istio.io/interceptionMode":"NONE"}"#,
            ),
            &PluginConfig::default(),
        )
        .unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(
            err.msg
                .contains("sidecar.istio.io/interceptionMode=\"NONE\""),
            "{}",
            err.msg
        );
        let err = decide(&with_annotations(r#"{"a":1}"#), &PluginConfig::default()).unwrap_err();
        assert!(err.msg.contains("runtimeConfig"), "{}", err.msg);
        let err = without_annotations(&Value::String("maybe".into())).unwrap_err();
        assert!(err.msg.contains(WITHOUT_FIELD) && err.msg.contains("maybe"));
    }

    #[test]
    fn the_conflist_is_the_base_annotations_override() {
        let plugin = PluginConfig {
            args: vec![
                "-i".into(),
                "10.96.0.0/12".into(),
                "-o".into(),
                "9999".into(),
            ],
            ..PluginConfig::default()
        };
        let Decision::Capture { args, .. } = decide(
            &with_annotations(
                r#"{"sidecar.istio.io/status":"true","traffic.sidecar.istio.io/excludeOutboundPorts":"5555"}"#,
            ),
            &plugin,
        )
        .unwrap() else {
            panic!()
        };
        assert!(args.contains(&"--istio-service-cidr=10.96.0.0/12".to_string()));
        assert!(args.contains(&"--istio-local-outbound-ports-exclude=5555".to_string()));
    }
}
