//! CNI mode: meshinit as a chained CNI plugin. A runtime runs the binary with `CNI_COMMAND`
//! in its environment and the network configuration on stdin; meshinit turns that into the
//! same settings the command line gives (`config`), enters `CNI_NETNS` and runs the same
//! configure → plan → apply path, then prints `prevResult` through (`ADD`) or the CNI error
//! object on stdout. Log lines go to stderr or the configuration's `log_file`, never stdout.
//!
//! ```text
//! env + stdin ─▶ Request ─▶ PluginConfig ─▶ RawArgs ─▶ (enter CNI_NETNS) ─▶ Config ─▶ Plan ─▶ apply
//!  (protocol)               (config)
//! ```

pub mod config;
pub mod install;
pub mod istio_annotations;
pub mod node;
pub mod pod;
pub mod protocol;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;

use crate::cli::{Env, RawArgs};
use crate::config::detect::Host;
use crate::config::{Config, ConfigError};
use crate::log::Log;
use crate::run::{self, FailureKind};
use crate::{exit_code, sys};
use protocol::{code, CniError, Command, Request};

/// Detection in CNI mode. The plugin runs in the node's mount namespace, so the files
/// detection reads there (`/etc/resolv.conf`, `/etc/passwd`) are the node's, not the pod's:
/// the DNS servers come from the previous result's `dns.nameservers` instead (none when it has
/// none: give `--dns-servers`), and the proxy's uid from `-u` (Istio's 1337 by default).
/// Interface addresses are read in the pod's namespace, entered before.
struct CniHost<'a> {
    inner: &'a dyn Host,
    resolv_conf: String,
}

impl Host for CniHost<'_> {
    fn interface_addrs(&self) -> std::io::Result<Vec<IpAddr>> {
        self.inner.interface_addrs()
    }

    fn read_file(&self, path: &str) -> std::io::Result<String> {
        if path == "/etc/resolv.conf" {
            return Ok(self.resolv_conf.clone());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{path}: a CNI plugin does not read the node's copy"),
        ))
    }
}

/// Detection's stand-in for validating settings before the pod's namespace is entered: one
/// IPv4 address, as a pod has after the interface plugin ran.
struct StandInHost;

impl Host for StandInHost {
    fn interface_addrs(&self) -> std::io::Result<Vec<IpAddr>> {
        Ok(vec![IpAddr::from([10, 0, 0, 1])])
    }

    fn read_file(&self, path: &str) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.to_string(),
        ))
    }
}

/// Validates the settings as `config` does, with a stand-in for detection.
fn validate(raw: &RawArgs, resolv_conf: &str) -> Result<(), CniError> {
    let stand_in = CniHost {
        inner: &StandInHost,
        resolv_conf: resolv_conf.to_string(),
    };
    match Config::build(raw, &stand_in) {
        Err(e @ ConfigError::Invalid { .. }) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid setting in istio_iptables_args or env: {e}"),
        )),
        _ => Ok(()),
    }
}

/// `meshinit cni-install FLAGS`: copies this binary into the node's CNI bin directory and
/// appends meshinit's entry to the node's conflist; with `--wait`, keeps both there as the
/// node's files change until SIGTERM, then takes the entry out again (`node`). Returns the
/// exit code (2 for bad flags or a bad entry).
pub fn install_main(args: &[String]) -> u8 {
    let log = Log::default();
    let read = |path: &str| sys::cni_files::read(Path::new(path));
    let install = match install::parse(args, &read).and_then(|i| {
        let fields = i.plugin.as_object().cloned().unwrap_or_default();
        let plugin = config::plugin_config(&fields.into_iter().collect())
            .map_err(|e| format!("--plugin-config: {}", e.msg))?;
        // As ADD opens it (the path as this process sees it; the DaemonSet must mount the
        // host's log directory at the same path for the check to be the node's).
        if let Some(path) = &plugin.log_file {
            sys::logfile::check_openable(path).map_err(|e| {
                format!(
                    "--plugin-config: log_file {:?} cannot be used: {e}",
                    path.display().to_string()
                )
            })?;
        }
        for command in [Command::Add, Command::Del] {
            let raw = config::raw_args(&plugin, command)
                .map_err(|e| format!("--plugin-config: {}", e.msg))?;
            validate(&raw, "").map_err(|e| format!("--plugin-config: {}", e.msg))?;
        }
        Ok(i)
    }) {
        Ok(install) => install,
        Err(e) => {
            log.error(&e);
            return exit_code::INVALID_INPUT;
        }
    };
    node::run(&install)
}

/// Whether `path` is the file this process's standard output is (`/dev/stdout`,
/// `/proc/self/fd/1`, or the same pipe or file by another name): same device and inode.
fn is_stdout(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(named), Ok(out)) = (
        std::fs::metadata(path),
        nix::sys::stat::fstat(libc::STDOUT_FILENO),
    ) else {
        return false;
    };
    // st_dev and st_ino are not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    let same = named.dev() == out.st_dev as u64 && named.ino() == out.st_ino as u64;
    same
}

/// `prevResult.dns.nameservers` as resolv.conf lines.
fn resolv_conf(prev_result: Option<&str>) -> String {
    // Only `dns` is decoded: a result listing thousands of interfaces or routes would cost
    // many times its size as a tree of values, and none of it is needed here.
    let Some(dns) = prev_result.and_then(|r| protocol::top_level_field(r, "dns")) else {
        return String::new();
    };
    let Ok(dns) = serde_json::from_str::<Value>(dns.get()) else {
        return String::new();
    };
    dns["nameservers"]
        .as_array()
        .map(|servers| {
            servers
                .iter()
                .filter_map(Value::as_str)
                .map(|s| format!("nameserver {s}\n"))
                .collect()
        })
        .unwrap_or_default()
}

/// The process exit code for a CNI error (the runtime reads the error object; the code keeps
/// meshinit's table): bad input 2, `CHECK` differences 3, other failures 1.
fn exit_for(error: &CniError) -> u8 {
    match error.code {
        code::INCOMPATIBLE_VERSION
        | code::UNSUPPORTED_FIELD
        | code::INVALID_ENV
        | code::DECODING_FAILURE
        | code::INVALID_CONFIG => exit_code::INVALID_INPUT,
        code::CHECK_DIFFERS => exit_code::CHECK_DIFFERS,
        _ => exit_code::FAILURE,
    }
}

/// Runs one CNI command: `env` holds `CNI_*`, `stdin` the network configuration; the result or
/// the error object goes to `stdout`. Returns the exit code.
pub fn run(env: &Env, stdin: &mut dyn Read, stdout: &mut dyn Write, host: &dyn Host) -> u8 {
    let mut log = Log::default();
    let mut input = String::new();
    // stdin is read whatever comes next, so a runtime never writes into a closed pipe.
    let read = stdin.read_to_string(&mut input).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("cannot read the network configuration from stdin: {e}"),
        )
    });
    let outcome = read
        .and_then(|_| protocol::command(env))
        .and_then(|command| {
            if command == Command::Version {
                return Ok(Some(protocol::version_reply(&input)));
            }
            handle(command, env, &input, host, &mut log)
        });
    let (text, code) = match outcome {
        Ok(text) => (text.unwrap_or_default(), exit_code::SUCCESS),
        Err(e) => {
            log.error(&format!("CNI error {}: {}", e.code, e.msg));
            let version = protocol::version_of(&input)
                .unwrap_or_else(|| protocol::DEFAULT_VERSION.to_string());
            (e.to_json(&version), exit_for(&e))
        }
    };
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => code,
        Err(_) => exit_code::FAILURE,
    }
}

/// `DEL` with a configuration that `ADD` refuses succeeds: `ADD` installed nothing with it, and
/// an error here would stop the runtime's teardown of the chain before the interface plugin
/// releases the pod's address.
fn tolerate_on_del(
    command: Command,
    error: CniError,
    log: &Log,
) -> Result<Option<String>, CniError> {
    if command == Command::Del
        && matches!(error.code, code::UNSUPPORTED_FIELD | code::INVALID_CONFIG)
    {
        log.warn(&format!(
            "DEL with a configuration ADD refuses: {}; nothing removed (ADD installs nothing with it)",
            error.msg
        ));
        return Ok(None);
    }
    Err(error)
}

/// `ADD`, `DEL`, `CHECK`, `STATUS`, `GC`: what is printed on success.
fn handle(
    command: Command,
    env: &Env,
    input: &str,
    host: &dyn Host,
    log: &mut Log,
) -> Result<Option<String>, CniError> {
    let request = protocol::request(command, env, input)?;
    let plugin = match config::plugin_config(&request.fields) {
        Ok(plugin) => plugin,
        Err(e) => return tolerate_on_del(command, e, log),
    };
    if let Some(level) = plugin.log_level {
        log.level = level;
    }
    if let Some(path) = &plugin.log_file {
        if is_stdout(path) {
            // The runtime parses stdout as the result: a log line there breaks every pod.
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "log_file: {} is this plugin's standard output, where the runtime reads the result; give a file (or leave log_file out: logs go to stderr)",
                    path.display()
                ),
            ));
        }
        if let Err(e) = sys::logfile::redirect_stderr(path) {
            let error = CniError::new(code::INVALID_CONFIG, format!("log_file: {e}"));
            if command != Command::Del {
                return Err(error);
            }
            log.warn(&error.msg);
        }
    }
    log.info(&format!(
        "CNI {} (spec {}): network {}, container {}, pod {}, namespace {}",
        command.name(),
        request.version,
        request.network,
        request.container_id,
        request.pod.describe(),
        if request.netns.is_empty() {
            "-"
        } else {
            &request.netns
        }
    ));
    protocol::require_prev_result(&request)?;
    if matches!(command, Command::Status | Command::Gc) {
        // Nothing of meshinit's lives outside the pods' namespaces: always ready, nothing
        // to collect.
        return Ok(None);
    }
    let passed_through = |request: &Request| {
        (command == Command::Add).then(|| request.prev_result.clone().unwrap_or_default())
    };
    // Before the capture settings are validated, on purpose: a mistake in them must not stop
    // the pods of an excluded namespace (kube-system's DNS, the CNI itself) from starting.
    if let Some(ns) = &request.pod.namespace {
        if plugin.exclude_namespaces.contains(ns) {
            log.info(&format!(
                "pod {} is in namespace {ns}, which exclude_namespaces lists: nothing to do",
                request.pod.describe()
            ));
            return Ok(passed_through(&request));
        }
    }
    // Per pod, from the annotations the runtime passed, as Istio CNI decides (`pod`).
    let plugin = match pod::for_pod(&request, plugin, log) {
        Ok(Some(plugin)) => plugin,
        Ok(None) => return Ok(passed_through(&request)),
        Err(e) => return tolerate_on_del(command, e, log),
    };
    let raw = match config::raw_args(&plugin, command) {
        Ok(raw) => raw,
        Err(e) => return tolerate_on_del(command, e, log),
    };
    log.json = raw.get("log_as_json").value == "true";
    // Bad values are reported before anything is touched, the namespace not even entered.
    let resolv_conf = resolv_conf(request.prev_result.as_deref());
    if let Err(error) = validate(&raw, &resolv_conf) {
        return tolerate_on_del(command, error, log);
    }
    // A missing path, or a pin file left after its namespace was unmounted: the namespace
    // is gone, and our rules with it. Failing would stop the runtime's teardown.
    if command == Command::Del
        && (request.netns.is_empty()
            || !sys::privileges::is_namespace_file(Path::new(&request.netns)))
    {
        log.info(&format!(
            "DEL: the network namespace is gone (CNI_NETNS={:?} is missing or not a namespace), and the rules with it: nothing to remove",
            request.netns
        ));
        return Ok(None);
    }
    sys::privileges::enter_netns(Path::new(&request.netns), "CNI_NETNS")
        .map_err(|e| CniError::new(code::FAILED, e))?;
    let host = CniHost {
        inner: host,
        resolv_conf,
    };
    let outcome = run::execute(&raw, &host, *log, &[], &Env::new());
    let Some((kind, message)) = outcome.failure else {
        return Ok(passed_through(&request));
    };
    let code = match kind {
        FailureKind::Invalid if command == Command::Del => {
            return tolerate_on_del(command, CniError::new(code::INVALID_CONFIG, message), log)
        }
        FailureKind::Invalid => code::INVALID_CONFIG,
        FailureKind::Failed | FailureKind::NotRedirected => code::FAILED,
        FailureKind::LeftChanged => code::LEFT_CHANGED,
        FailureKind::CheckDiffers => code::CHECK_DIFFERS,
    };
    // The first line is the message; a longer text (a check's differences) goes in details.
    let (msg, details) = match message.split_once('\n') {
        Some((first, rest)) => {
            // The difference first: a runtime's event or a log shows the start of `msg`,
            // and the header ("rules differ from the plan") says less than the first line
            // that differs.
            let lines: Vec<&str> = rest.lines().map(str::trim).collect();
            let more = match lines.len() {
                0 | 1 => String::new(),
                n => format!("and {} more; ", n - 1),
            };
            let msg = format!(
                "{} ({more}{})",
                lines.first().copied().unwrap_or_default(),
                first.trim_end_matches(':'),
            );
            (msg, message.clone())
        }
        None => (message, String::new()),
    };
    let msg = if kind == FailureKind::Invalid {
        format!("invalid setting in istio_iptables_args or env: {msg}")
    } else {
        msg
    };
    Err(CniError { code, msg, details })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_servers_come_from_the_previous_result() {
        let result = r#"{"cniVersion":"1.0.0","dns":{"nameservers":["10.96.0.10","fd00::a"]}}"#;
        assert_eq!(
            resolv_conf(Some(result)),
            "nameserver 10.96.0.10\nnameserver fd00::a\n"
        );
        assert_eq!(resolv_conf(Some(r#"{"cniVersion":"1.0.0"}"#)), "");
        assert_eq!(resolv_conf(None), "");
    }
}
