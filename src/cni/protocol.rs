//! The CNI protocol (spec 0.4.0, 1.0.0 and 1.1.0): the command and parameters from the
//! environment, the network configuration from stdin, into a typed [`Request`]; the error
//! object and the `VERSION` answer meshinit prints on stdout. Pure: no I/O here.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::cli::Env;

/// The spec versions meshinit speaks. Results are passed through, so every version whose
/// result a chained plugin may print unchanged is supported; 0.4.0 is the first with `CHECK`.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The version meshinit answers in when the input names none it can use.
pub const DEFAULT_VERSION: &str = "1.0.0";

/// The error codes meshinit returns: the spec's well-known ones and its own (100 and up).
pub mod code {
    /// The configuration's `cniVersion` is not one meshinit supports.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field meshinit does not know is in the network configuration (key and value named).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// A necessary `CNI_*` environment variable is missing or invalid (its name is given).
    pub const INVALID_ENV: u32 = 4;
    /// stdin could not be read.
    pub const IO_FAILURE: u32 = 5;
    /// stdin is not a JSON object.
    pub const DECODING_FAILURE: u32 = 6;
    /// A field of the network configuration has an invalid value (the field is named).
    pub const INVALID_CONFIG: u32 = 7;
    /// meshinit's: the rules could not be installed, checked or removed at run time; nothing
    /// was left changed (a failed write was undone).
    pub const FAILED: u32 = 100;
    /// meshinit's: a failed write could not be undone completely; the message says what is
    /// left in the namespace.
    pub const LEFT_CHANGED: u32 = 101;
    /// meshinit's: `CHECK` found that the rules in the namespace differ from the
    /// configuration (or are shadowed); the message lists the differences.
    pub const CHECK_DIFFERS: u32 = 102;
}

/// A CNI error: printed on stdout as `{cniVersion, code, msg, details}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    /// The spec's or meshinit's code (see [`code`]).
    pub code: u32,
    /// One line: what failed and why.
    pub msg: String,
    /// More: the full message when it has several lines, or what to do.
    pub details: String,
}

impl CniError {
    /// An error with this code and message and no details.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The error object, as the spec's version `version` prints it.
    pub fn to_json(&self, version: &str) -> String {
        let mut object = serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            object["details"] = Value::String(self.details.clone());
        }
        format!("{object}\n")
    }
}

/// What the runtime asks for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Install the rules in `CNI_NETNS`; print `prevResult` through.
    Add,
    /// Remove what `ADD` installed; succeed when it is gone already.
    Del,
    /// Compare the rules in `CNI_NETNS` with the configuration (`--check`).
    Check,
    /// Print the versions meshinit supports.
    Version,
    /// 1.1.0: is the plugin ready to `ADD`? (It has no state of its own: always.)
    Status,
    /// 1.1.0: release resources of attachments no longer valid (meshinit holds none outside
    /// the pod's namespace: nothing to do).
    Gc,
}

impl Command {
    /// The name as `CNI_COMMAND` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// `CNI_COMMAND` from the environment.
pub fn command(env: &Env) -> Result<Command, CniError> {
    let value = env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
    match value {
        "ADD" => Ok(Command::Add),
        "DEL" => Ok(Command::Del),
        "CHECK" => Ok(Command::Check),
        "VERSION" => Ok(Command::Version),
        "STATUS" => Ok(Command::Status),
        "GC" => Ok(Command::Gc),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_COMMAND={other:?} is not a CNI command (ADD, DEL, CHECK, VERSION, STATUS, GC)"
            ),
        )),
    }
}

/// The answer to `VERSION`: in the version the input asks for when meshinit supports it.
pub fn version_reply(stdin: &str) -> String {
    let asked = version_of(stdin).unwrap_or_else(|| DEFAULT_VERSION.to_string());
    let reply = serde_json::json!({
        "cniVersion": asked,
        "supportedVersions": SUPPORTED_VERSIONS,
    });
    format!("{reply}\n")
}

/// The pod named in `CNI_ARGS` (Kubernetes runtimes set `K8S_POD_NAMESPACE` and
/// `K8S_POD_NAME`; others may set neither).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
}

impl Pod {
    /// `namespace/name` for log lines, `-` for what is unknown.
    pub fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.namespace.as_deref().unwrap_or("-"),
            self.name.as_deref().unwrap_or("-")
        )
    }
}

/// One `ADD`, `DEL`, `CHECK`, `STATUS` or `GC` with its parameters, checked.
#[derive(Debug)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// The configuration's `cniVersion`, one of [`SUPPORTED_VERSIONS`].
    pub version: String,
    /// The network's `name`.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`; may be empty for `DEL`.
    pub netns: String,
    /// The pod from `CNI_ARGS`.
    pub pod: Pod,
    /// `prevResult`, exactly as the runtime wrote it (printed through by `ADD`).
    pub prev_result: Option<String>,
    /// The configuration's other fields (the plugin's own and the spec's optional ones).
    pub fields: BTreeMap<String, Value>,
}

/// The version a configuration text names, if it can be read, for the error object of a
/// request that failed before [`request`] could check it.
pub fn version_of(stdin: &str) -> Option<String> {
    let raw = top_level_field(stdin, "cniVersion")?;
    serde_json::from_str::<String>(raw.get())
        .ok()
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
}

/// One field of a JSON object's text, undecoded (borrowed from `text`): reading a field of a
/// large configuration or result must not build a tree of all of it.
pub fn top_level_field<'a>(text: &'a str, name: &str) -> Option<&'a RawValue> {
    let fields: BTreeMap<std::borrow::Cow<'a, str>, &'a RawValue> =
        serde_json::from_str(text).ok()?;
    fields.get(name).copied()
}

/// `ADD` and `CHECK` need `prevResult`: meshinit is a chained plugin.
pub fn require_prev_result(request: &Request) -> Result<(), CniError> {
    if matches!(request.command, Command::Add | Command::Check) && request.prev_result.is_none() {
        return Err(CniError {
            code: code::INVALID_CONFIG,
            msg: format!(
                "prevResult is missing: meshinit is a chained plugin, and {} needs the result of the plugin before it",
                request.command.name()
            ),
            details: "put meshinit after the interface plugin (e.g. bridge, ptp, or the cluster's CNI) in the plugins list of a conflist".to_string(),
        });
    }
    Ok(())
}

/// Checks the environment and decodes the network configuration for `command` (not
/// `VERSION`).
pub fn request(command: Command, env: &Env, stdin: &str) -> Result<Request, CniError> {
    // Borrowed, undecoded values: `prevResult` is passed through as its text, never as a
    // tree (a result of megabytes would cost many times that).
    let top: BTreeMap<String, &RawValue> = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("cannot decode the network configuration on stdin as a JSON object: {e}"),
        )
    })?;
    let mut fields = BTreeMap::new();
    let mut prev_result = None;
    for (key, raw) in top {
        if key == "prevResult" {
            // `null` is no result: a chained ADD without one must fail, not install.
            if raw.get() != "null" {
                prev_result = Some(raw.get().to_string());
            }
            continue;
        }
        let value: Value = serde_json::from_str(raw.get()).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("cannot decode field {key}: {e}"),
            )
        })?;
        fields.insert(key, value);
    }
    let version = match fields.remove("cniVersion") {
        Some(Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => v,
        Some(Value::String(v)) => {
            return Err(CniError {
                code: code::INCOMPATIBLE_VERSION,
                msg: format!(
                    "incompatible CNI version {v:?}: meshinit supports {SUPPORTED_VERSIONS:?}"
                ),
                details: String::new(),
            })
        }
        Some(other) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("cniVersion must be a string, not {other}"),
            ))
        }
        None => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "cniVersion is missing from the network configuration",
            ))
        }
    };
    if matches!(command, Command::Status | Command::Gc) && version != "1.1.0" {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CNI_COMMAND={} needs cniVersion 1.1.0, not {version:?}",
                command.name()
            ),
        ));
    }
    let network = match fields.remove("name") {
        Some(Value::String(n)) if !n.is_empty() => n,
        Some(other) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("name must be a non-empty string, not {other}"),
            ))
        }
        None => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "name (the network's name) is missing from the network configuration",
            ))
        }
    };
    let var = |name: &str| env.get(name).cloned().unwrap_or_default();
    let (container_id, netns) = (var("CNI_CONTAINERID"), var("CNI_NETNS"));
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        if !valid_container_id(&container_id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID={container_id:?} is not a container ID (alphanumeric first, then alphanumerics, '_', '.', '-')"
                ),
            ));
        }
        if var("CNI_IFNAME").is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_IFNAME is missing or empty",
            ));
        }
        if netns.is_empty() && command != Command::Del {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_NETNS is missing or empty: {} needs the pod's network namespace",
                    command.name()
                ),
            ));
        }
    }
    let pod = pod_args(&var("CNI_ARGS"))?;
    Ok(Request {
        command,
        version,
        network,
        container_id,
        netns,
        pod,
        prev_result,
        fields,
    })
}

/// The spec's container ID rule: not empty, alphanumeric first, then alphanumerics, `_`, `.`
/// and `-`.
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`. Only the pod's namespace and name are used;
/// other keys are ignored whatever `IgnoreUnknown` says (they are for other plugins).
fn pod_args(text: &str) -> Result<Pod, CniError> {
    let mut pod = Pod::default();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE (pairs are separated by ';')"),
            ));
        };
        match key {
            "K8S_POD_NAMESPACE" => pod.namespace = Some(value.to_string()),
            "K8S_POD_NAME" => pod.name = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_give_the_pod() {
        let pod = pod_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc").unwrap();
        assert_eq!(pod.namespace.as_deref(), Some("default"));
        assert_eq!(pod.name.as_deref(), Some("web-0"));
        assert_eq!(pod_args("").unwrap(), Pod::default());
        let err = pod_args("IgnoreUnknown=1;oops").unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        assert!(err.msg.contains("\"oops\""), "{}", err.msg);
    }

    #[test]
    fn container_ids() {
        for ok in ["a", "0abc", "f00-ba_r.1"] {
            assert!(valid_container_id(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", "a b", "a/b"] {
            assert!(!valid_container_id(bad), "{bad}");
        }
    }

    #[test]
    fn version_reply_follows_the_input() {
        let v: Value = serde_json::from_str(&version_reply(r#"{"cniVersion":"0.4.0"}"#)).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(SUPPORTED_VERSIONS)
        );
        let v: Value = serde_json::from_str(&version_reply("")).unwrap();
        assert_eq!(v["cniVersion"], DEFAULT_VERSION);
    }
}
