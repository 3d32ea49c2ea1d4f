//! meshinit's fields of a CNI network configuration, and how they become the same
//! [`RawArgs`] the command line builds: `istio_iptables_args` is an istio-iptables command line
//! (Istio's injection values carry over), `env` the environment-only settings, and the CNI
//! command adds the flag it means (`DEL` → `--cleanup-only`, `CHECK` → `--check`). Every
//! capture setting is then validated by `config`, exactly as for the command line. Pure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::protocol::{code, CniError, Command};
use crate::cli::{self, Env, RawArgs, Source};
use crate::config::LogLevel;

/// The fields of the spec that may appear in a plugin's configuration beside meshinit's own;
/// meshinit reads none of them (`prevResult` is taken apart before).
const SPEC_FIELDS: &[&str] = &[
    "type",
    "args",
    "runtimeConfig",
    "capabilities",
    "ipam",
    "dns",
    "cniVersions",
];

/// meshinit's own fields.
const OWN_FIELDS: &[&str] = &[
    "istio_iptables_args",
    "env",
    "backend",
    "exclude_namespaces",
    "log_level",
    "log_file",
    super::pod::WITHOUT_FIELD,
];

/// Flags the CNI command decides (or that make no sense for a plugin); refused in
/// `istio_iptables_args`.
const CNI_OWNED_FLAGS: &[(&str, &str)] = &[
    ("network-namespace", "the namespace is CNI_NETNS"),
    (
        "dry-run",
        "a plugin installs; use `meshinit --dry-run` on the command line",
    ),
    ("check", "CNI CHECK runs the check"),
    ("cleanup-only", "CNI DEL removes the rules"),
    (
        "run-validation",
        "validation runs in the pod (Istio's istio-validation container)",
    ),
    (
        "skip-rule-apply",
        "a plugin that installs nothing has no use",
    ),
];

/// meshinit's settings from one network configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginConfig {
    /// `istio_iptables_args`: an istio-iptables command line, without the program name.
    pub args: Vec<String>,
    /// `env`: environment-only settings (`ISTIO_OUTBOUND_OWNER_GROUPS`, ...).
    pub env: BTreeMap<String, String>,
    /// `backend`: `auto`, `iptables` or `nftables` (`--backend`).
    pub backend: Option<String>,
    /// `exclude_namespaces`: pods in these Kubernetes namespaces get no rules.
    pub exclude_namespaces: Vec<String>,
    /// `log_level`: `debug`, `info`, `warn`, `error` or `none`.
    pub log_level: Option<LogLevel>,
    /// `log_file`: log lines are appended there instead of going to stderr.
    pub log_file: Option<PathBuf>,
    /// `without_pod_annotations`: `capture` or `refuse` when the runtime passed no pod
    /// annotations (`pod`; default: refuse when the entry declares the capability).
    pub without_pod_annotations: Option<super::pod::WithoutAnnotations>,
}

fn invalid(field: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(code::INVALID_CONFIG, format!("{field}: {why}"))
}

fn strings(field: &str, value: &Value) -> Result<Vec<String>, CniError> {
    let Some(items) = value.as_array() else {
        return Err(invalid(
            field,
            format!("must be a list of strings, not {value}"),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str().map(str::to_string).ok_or_else(|| {
                invalid(
                    &format!("{field}[{i}]"),
                    format!("must be a string, not {item}"),
                )
            })
        })
        .collect()
}

fn string(field: &str, value: &Value) -> Result<String, CniError> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(field, format!("must be a string, not {value}")))
}

/// Reads meshinit's fields; an unknown field is the spec's "unsupported field" (code 2), a bad
/// value an invalid configuration (code 7), each naming the field.
pub fn plugin_config(fields: &BTreeMap<String, Value>) -> Result<PluginConfig, CniError> {
    let mut config = PluginConfig::default();
    for (key, value) in fields {
        // `cni.dev/` is the runtime's prefix: libcni (1.2.3 on) adds
        // `cni.dev/valid-attachments` to every GC, and `cni.dev/attachments` may come too.
        if SPEC_FIELDS.contains(&key.as_str()) || key.starts_with("cni.dev/") {
            continue;
        }
        match key.as_str() {
            "istio_iptables_args" => config.args = strings(key, value)?,
            "env" => {
                let Some(map) = value.as_object() else {
                    return Err(invalid(
                        key,
                        format!("must be an object of strings, not {value}"),
                    ));
                };
                for (name, v) in map {
                    let field = format!("env.{name}");
                    if name == "ENVOY_USER" {
                        return Err(invalid(
                            &field,
                            "a CNI plugin cannot see the pod's /etc/passwd to look the user up; give the proxy's uid with -u in istio_iptables_args",
                        ));
                    }
                    if !cli::ENV_ONLY.iter().any(|e| e.name == name) {
                        let known: Vec<&str> = cli::ENV_ONLY
                            .iter()
                            .map(|e| e.name)
                            .filter(|n| *n != "ENVOY_USER")
                            .collect();
                        return Err(invalid(
                            &field,
                            format!(
                                "not an environment-only setting ({}); flags go in istio_iptables_args",
                                known.join(", ")
                            ),
                        ));
                    }
                    config.env.insert(name.clone(), string(&field, v)?);
                }
            }
            "backend" => {
                let b = string(key, value)?;
                if !["auto", "iptables", "nftables"].contains(&b.as_str()) {
                    return Err(invalid(
                        key,
                        format!("{b:?} is not auto, iptables or nftables"),
                    ));
                }
                config.backend = Some(b);
            }
            "exclude_namespaces" => config.exclude_namespaces = strings(key, value)?,
            "log_level" => {
                let level = string(key, value)?;
                config.log_level = Some(match level.as_str() {
                    "debug" => LogLevel::Debug,
                    "info" => LogLevel::Info,
                    "warn" => LogLevel::Warn,
                    "error" => LogLevel::Error,
                    "none" => LogLevel::None,
                    _ => {
                        return Err(invalid(
                            key,
                            format!("{level:?} is not debug, info, warn, error or none"),
                        ))
                    }
                });
            }
            super::pod::WITHOUT_FIELD => {
                config.without_pod_annotations = Some(super::pod::without_annotations(value)?)
            }
            "log_file" => {
                let path = PathBuf::from(string(key, value)?);
                if !path.is_absolute() {
                    return Err(invalid(
                        key,
                        format!("{} is not an absolute path", path.display()),
                    ));
                }
                config.log_file = Some(path);
            }
            _ => {
                return Err(CniError {
                    code: code::UNSUPPORTED_FIELD,
                    msg: format!(
                    "unsupported field {key} (value {value}) in meshinit's network configuration"
                ),
                    details: format!("meshinit's fields: {}", OWN_FIELDS.join(", ")),
                })
            }
        }
    }
    Ok(config)
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::None => "none",
    }
}

/// The settings of one CNI command: `istio_iptables_args` and `env` parsed as the command line
/// would, plus the fields and the flag the command means. A flag the CNI command owns, or set
/// both by a field and in `istio_iptables_args`, is refused naming both.
pub fn raw_args(config: &PluginConfig, command: Command) -> Result<RawArgs, CniError> {
    let env: Env = config.env.clone();
    let parse = |args: &[String]| -> Result<RawArgs, CniError> {
        let mut argv = vec!["meshinit".to_string()];
        argv.extend(args.iter().cloned());
        match cli::parse(&argv, &env) {
            Ok(cli::Command::Run(raw)) => Ok(raw),
            Ok(_) => Err(invalid(
                "istio_iptables_args",
                "must be istio-iptables flags, not a sub-command, --help or --version",
            )),
            Err(e) => Err(invalid("istio_iptables_args", e)),
        }
    };
    let given = parse(&config.args)?;
    let on_command_line = |long: &str| matches!(given.get(long).source, Source::CommandLine(_));
    for (long, why) in CNI_OWNED_FLAGS {
        if on_command_line(long) {
            return Err(invalid(
                "istio_iptables_args",
                format!("--{long} is not for a CNI plugin: {why}"),
            ));
        }
    }
    let mut extra = Vec::new();
    if let Some(backend) = &config.backend {
        for long in ["backend", "native-nftables"] {
            if on_command_line(long) {
                return Err(invalid(
                    "backend",
                    format!("set both here and as --{long} in istio_iptables_args; keep one"),
                ));
            }
        }
        extra.push(format!("--backend={backend}"));
    }
    if let Some(level) = config.log_level {
        if on_command_line("log_output_level") {
            return Err(invalid(
                "log_level",
                "set both here and as --log_output_level in istio_iptables_args; keep one",
            ));
        }
        extra.push(format!("--log_output_level=default:{}", level_name(level)));
    }
    // The legacy xtables lock of the pod's namespace, not the node's /run/xtables.lock that
    // every pod start would otherwise queue on (what --cni-mode is for).
    if !on_command_line("cni-mode") {
        extra.push("--cni-mode".to_string());
    }
    match command {
        Command::Del => {
            extra.push("--cleanup-only".to_string());
            // Removal must not depend on the pod's addresses still being there (a repeated
            // DEL may come after the interface is gone); planning both families removes ours
            // from both.
            if !on_command_line("ipv6") {
                extra.push("--ipv6=true".to_string());
            }
        }
        Command::Check => extra.push("--check".to_string()),
        _ => {}
    }
    let mut args = config.args.clone();
    args.extend(extra);
    parse(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> BTreeMap<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn fields_become_flags() {
        let config = plugin_config(&fields(
            r#"{"type":"meshinit","istio_iptables_args":["istio-iptables","-p","15001","-u","1337"],
                "backend":"nftables","log_level":"debug","env":{"ISTIO_OUTBOUND_OWNER_GROUPS":"1000"}}"#,
        ))
        .unwrap();
        let raw = raw_args(&config, Command::Del).unwrap();
        assert_eq!(raw.get("envoy-port").value, "15001");
        assert_eq!(raw.get("backend").value, "nftables");
        assert_eq!(raw.get("cleanup-only").value, "true");
        assert_eq!(raw.get("check").value, "false");
        assert_eq!(raw.get("cni-mode").value, "true");
        assert_eq!(raw.get("log_output_level").value, "default:debug");
        assert_eq!(raw.env_only("ISTIO_OUTBOUND_OWNER_GROUPS").value, "1000");
        let raw = raw_args(&config, Command::Check).unwrap();
        assert_eq!(raw.get("check").value, "true");
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                r#"{"istio_iptables_args":"-p 1"}"#,
                code::INVALID_CONFIG,
                "istio_iptables_args:",
            ),
            (
                r#"{"istio_iptables_args":["-p",1]}"#,
                code::INVALID_CONFIG,
                "istio_iptables_args[1]",
            ),
            (r#"{"backend":"ebpf"}"#, code::INVALID_CONFIG, "backend:"),
            (
                r#"{"log_level":"loud"}"#,
                code::INVALID_CONFIG,
                "log_level:",
            ),
            (
                r#"{"log_file":"rel/x.log"}"#,
                code::INVALID_CONFIG,
                "log_file:",
            ),
            (
                r#"{"env":{"ENVOY_PORT":"1"}}"#,
                code::INVALID_CONFIG,
                "env.ENVOY_PORT",
            ),
            (
                r#"{"env":{"ENVOY_USER":"x"}}"#,
                code::INVALID_CONFIG,
                "env.ENVOY_USER",
            ),
            (
                r#"{"exclude_namespace":["a"]}"#,
                code::UNSUPPORTED_FIELD,
                "exclude_namespace",
            ),
        ];
        for (json, want, named) in cases {
            let err = plugin_config(&fields(json)).unwrap_err();
            assert_eq!(err.code, want, "{json}: {err:?}");
            assert!(err.msg.contains(named), "{json}: {}", err.msg);
        }
    }

    #[test]
    fn flags_the_command_owns_are_refused() {
        for flag in [
            "--dry-run",
            "--check",
            "--cleanup-only",
            "--network-namespace=/x",
        ] {
            let config = PluginConfig {
                args: vec![flag.to_string()],
                ..PluginConfig::default()
            };
            let err = raw_args(&config, Command::Add).unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG);
            assert!(
                err.msg.contains(flag.split('=').next().unwrap()),
                "{}",
                err.msg
            );
        }
        let both = PluginConfig {
            args: vec!["--backend=iptables".to_string()],
            backend: Some("nftables".to_string()),
            ..PluginConfig::default()
        };
        assert!(raw_args(&both, Command::Add)
            .unwrap_err()
            .msg
            .contains("--backend"));
    }
}
