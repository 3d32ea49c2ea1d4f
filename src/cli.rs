//! The istio-iptables-compatible command line: the table of every flag and environment
//! variable meshinit accepts, and a pflag-compatible parser that turns argv + environment into
//! [`RawArgs`] — the text of each setting and where it came from. Nothing here interprets a
//! value; that is `config`'s job.

use std::collections::BTreeMap;
use std::fmt;

mod help;
pub use help::{error_message, nearest, single_dash_hint, usage};

/// The environment as meshinit sees it. Passed explicitly so tests never touch the process env.
pub type Env = BTreeMap<String, String>;

/// Whether a flag takes a value or is a switch (`--dry-run`, `--dry-run=false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A switch: `--flag` means true; a value only inline (`--flag=false`).
    Bool,
    /// Takes a value: `--flag V`, `--flag=V`, `-fV` or `-f V`.
    Value,
}

/// Where a flag comes from, which decides what meshinit does with it and how the docs
/// compatibility table describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A flag of istio-iptables (1.20.8 and/or newest) that meshinit honours.
    Istio,
    /// A flag upstream removed; accepted so old templates keep working, ignored with a warning
    /// when set to anything but its default.
    Removed,
    /// pilot-agent's logging flags, inherited by the `istio-iptables` sub-command.
    Logging,
    /// meshinit's own flags.
    Meshinit,
}

/// One flag: its names, kind, default and the environment variables that can set it.
#[derive(Debug)]
pub struct FlagSpec {
    /// The long name, without `--` (`envoy-port`).
    pub long: &'static str,
    /// The one-letter shorthand (`-p`), if any.
    pub short: Option<char>,
    /// Switch or value.
    pub kind: Kind,
    /// The value when neither command line nor environment sets it.
    pub default: &'static str,
    /// Environment variables, lowest precedence first (primary name, then Istio's extra name).
    pub env: &'static [&'static str],
    /// Istio's, removed upstream, logging, or meshinit's own.
    pub origin: Origin,
    /// One-line description, shown by `--help`.
    pub help: &'static str,
}

impl FlagSpec {
    /// `--envoy-port (-p, env ENVOY_PORT)`: how error messages name a flag.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.short {
            parts.push(format!("-{s}"));
        }
        if !self.env.is_empty() {
            parts.push(format!("env {}", self.env.join(", ")));
        }
        if parts.is_empty() {
            format!("--{}", self.long)
        } else {
            format!("--{} ({})", self.long, parts.join(", "))
        }
    }
}

/// Settings that only exist as environment variables (no flag), with their defaults.
#[derive(Debug)]
pub struct EnvSpec {
    /// The variable's name (`ISTIO_OUTBOUND_OWNER_GROUPS`).
    pub name: &'static str,
    /// The value when the variable is unset.
    pub default: &'static str,
    /// One-line description, shown by `--help`.
    pub help: &'static str,
}

macro_rules! flag {
    ($long:literal, $short:expr, $kind:ident, $default:literal, [$($env:literal),*], $origin:ident, $help:literal) => {
        FlagSpec {
            long: $long,
            short: $short,
            kind: Kind::$kind,
            default: $default,
            env: &[$($env),*],
            origin: Origin::$origin,
            help: $help,
        }
    };
}

/// Every flag meshinit accepts. docs/flags.md is checked against this list.
pub static FLAGS: &[FlagSpec] = &[
    flag!("envoy-port", Some('p'), Value, "15001", ["ENVOY_PORT"], Istio,
        "port Envoy listens on for outbound traffic (REDIRECT target)"),
    flag!("inbound-capture-port", Some('z'), Value, "15006", ["INBOUND_CAPTURE_PORT"], Istio,
        "port inbound traffic is redirected to"),
    flag!("inbound-tunnel-port", Some('e'), Value, "15008", ["INBOUND_TUNNEL_PORT"], Istio,
        "HBONE tunnel port, never captured"),
    flag!("proxy-uid", Some('u'), Value, "", ["PROXY_UID"], Istio,
        "comma-separated UIDs whose traffic is not redirected (default: uid of $ENVOY_USER, else 1337)"),
    flag!("proxy-gid", Some('g'), Value, "", ["PROXY_GID"], Istio,
        "comma-separated GIDs whose traffic is not redirected (default: the proxy UIDs)"),
    flag!("istio-inbound-interception-mode", Some('m'), Value, "", ["ISTIO_INBOUND_INTERCEPTION_MODE"], Istio,
        "REDIRECT or TPROXY (empty means REDIRECT)"),
    flag!("istio-inbound-ports", Some('b'), Value, "", ["ISTIO_INBOUND_PORTS"], Istio,
        "inbound ports (or ranges 8000:9000) to capture; '*' for all, empty for none"),
    flag!("istio-local-exclude-ports", Some('d'), Value, "", ["ISTIO_LOCAL_EXCLUDE_PORTS"], Istio,
        "inbound ports or ranges never captured (only with -b '*')"),
    flag!("istio-exclude-interfaces", Some('c'), Value, "", ["ISTIO_EXCLUDE_INTERFACES"], Istio,
        "interfaces whose traffic is never captured"),
    flag!("istio-service-cidr", Some('i'), Value, "", ["ISTIO_SERVICE_CIDR"], Istio,
        "outbound CIDRs to capture; '*' for all, empty for none"),
    flag!("istio-service-exclude-cidr", Some('x'), Value, "", ["ISTIO_SERVICE_EXCLUDE_CIDR"], Istio,
        "outbound CIDRs never captured"),
    flag!("istio-outbound-ports", Some('q'), Value, "", ["ISTIO_OUTBOUND_PORTS"], Istio,
        "outbound TCP ports or ranges always captured"),
    flag!("istio-local-outbound-ports-exclude", Some('o'), Value, "", ["ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"], Istio,
        "outbound ports or ranges never captured"),
    flag!("kube-virt-interfaces", Some('k'), Value, "", ["KUBE_VIRT_INTERFACES"], Istio,
        "VM interfaces whose inbound traffic is treated as outbound"),
    flag!("istio-inbound-tproxy-mark", Some('t'), Value, "1337", ["ISTIO_INBOUND_TPROXY_MARK"], Istio,
        "fwmark used by TPROXY"),
    flag!("istio-inbound-tproxy-route-table", Some('r'), Value, "133", ["ISTIO_INBOUND_TPROXY_ROUTE_TABLE"], Istio,
        "policy-routing table used by TPROXY"),
    flag!("dry-run", Some('n'), Bool, "false", ["DRY_RUN"], Istio,
        "print the rules instead of applying them; needs no privileges"),
    flag!("iptables-probe-port", None, Value, "15002", ["IPTABLES_PROBE_PORT"], Istio,
        "validation: original destination port of the probe"),
    flag!("probe-timeout", None, Value, "5s", ["PROBE_TIMEOUT"], Istio,
        "validation: how long to wait for the probe"),
    flag!("skip-rule-apply", None, Bool, "false", ["SKIP_RULE_APPLY"], Istio,
        "do not install anything (used with --run-validation)"),
    flag!("run-validation", None, Bool, "false", ["RUN_VALIDATION"], Istio,
        "prove that redirection works"),
    flag!("redirect-dns", None, Bool, "false", ["REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"], Istio,
        "capture DNS (TCP and UDP port 53) to the agent on 15053"),
    flag!("drop-invalid", None, Bool, "false", ["DROP_INVALID", "INVALID_DROP"], Istio,
        "drop conntrack-INVALID packets"),
    flag!("dual-stack", None, Bool, "false", ["DUAL_STACK", "ISTIO_DUAL_STACK"], Istio,
        "IPv6 rules when any IPv6 address exists, not only the first"),
    flag!("capture-all-dns", None, Bool, "false", ["CAPTURE_ALL_DNS"], Istio,
        "capture DNS to any server, not only those of /etc/resolv.conf"),
    flag!("network-namespace", None, Value, "", ["NETWORK_NAMESPACE"], Istio,
        "network namespace to enter first: a path, /run/netns/NAME (what `ip netns` names) or /proc/PID/ns/net"),
    flag!("cni-mode", None, Bool, "false", ["CNI_MODE"], Istio,
        "run as called from the CNI plugin (pod-scoped xtables lock)"),
    flag!("reconcile", None, Bool, "false", ["RECONCILE"], Istio,
        "replace different existing rules of ours"),
    flag!("cleanup-only", None, Bool, "false", ["CLEANUP_ONLY"], Istio,
        "only remove what this configuration would install"),
    flag!("force-apply", None, Bool, "false", ["FORCE_APPLY"], Istio,
        "apply even when the rules look already in place"),
    flag!("native-nftables", None, Bool, "false", ["NATIVE_NFTABLES"], Istio,
        "use the native nftables backend"),
    flag!("force-iptables-binary", None, Value, "", ["FORCE_IPTABLES_BINARY"], Istio,
        "iptables variant: legacy or nft (default: detect)"),
    flag!("restore-format", Some('f'), Bool, "true", ["RESTORE_FORMAT"], Removed,
        "removed in Istio 1.24; restore format is always used"),
    flag!("iptables-trace-logging", None, Bool, "false", ["IPTABLES_TRACE_LOGGING"], Removed,
        "removed in Istio 1.26; no trace rules are installed"),
    flag!("iptables-version", None, Value, "", ["IPTABLES_VERSION"], Removed,
        "removed in Istio 1.22; the variant is detected"),
    flag!("log_output_level", None, Value, "default:info", [], Logging,
        "log level, as 'level' or 'scope:level,...' (the 'default' scope is used)"),
    flag!("log_as_json", None, Bool, "false", [], Logging,
        "log JSON lines instead of text"),
    flag!("log_caller", None, Value, "", [], Logging, "accepted, no effect"),
    flag!("log_rotate", None, Value, "", [], Logging, "accepted, no effect"),
    flag!("log_rotate_max_age", None, Value, "30", [], Logging, "accepted, no effect"),
    flag!("log_rotate_max_backups", None, Value, "1000", [], Logging, "accepted, no effect"),
    flag!("log_rotate_max_size", None, Value, "104857600", [], Logging, "accepted, no effect"),
    flag!("log_stacktrace_level", None, Value, "default:none", [], Logging, "accepted, no effect"),
    flag!("log_target", None, Value, "stdout", [], Logging,
        "accepted; meshinit always logs to stderr"),
    flag!("vklog", None, Value, "0", [], Logging, "accepted, no effect"),
    flag!("ipv6", None, Value, "auto", ["MESHINIT_IPV6"], Meshinit,
        "auto|true|false: IPv6 rules; auto detects as Istio does"),
    flag!("dns-servers", None, Value, "", ["MESHINIT_DNS_SERVERS"], Meshinit,
        "DNS servers to capture (default: nameservers of /etc/resolv.conf)"),
    flag!("xtables-wait", None, Value, "30s", ["MESHINIT_XTABLES_WAIT"], Meshinit,
        "how long legacy iptables waits for the xtables lock"),
    flag!("timeout", None, Value, "2m", ["MESHINIT_TIMEOUT"], Meshinit,
        "deadline for the run's helper programs: one still running then is killed and named"),
    flag!("retries", None, Value, "0", ["MESHINIT_RETRIES"], Meshinit,
        "retry a transient failure (a lock held past its wait, EBUSY/EAGAIN/EINTR) up to N times, within --timeout"),
    flag!("retry-pause", None, Value, "1s", ["MESHINIT_RETRY_PAUSE"], Meshinit,
        "pause before each retry"),
    flag!("backend", None, Value, "auto", ["MESHINIT_BACKEND"], Meshinit,
        "auto|iptables|nftables; auto is iptables unless no iptables tool is installed"),
    flag!("check", None, Bool, "false", ["MESHINIT_CHECK"], Meshinit,
        "compare the live rules with this configuration; change nothing (exit 3 when they differ)"),
    flag!("nft-sets", None, Value, "auto", ["MESHINIT_NFT_SETS"], Meshinit,
        "auto|always|never: native nftables turns long CIDR and port lists into one set lookup"),
    flag!("exclude-inbound-sources", None, Value, "", ["MESHINIT_EXCLUDE_INBOUND_SOURCES"], Meshinit,
        "inbound connections from these CIDRs (both families) are never captured"),
    flag!("exclude-outbound-ports-for-uids", None, Value, "", ["MESHINIT_EXCLUDE_OUTBOUND_PORTS_FOR_UIDS"], Meshinit,
        "PROTO:PORTS:UIDS entries, ';'-separated (tcp:9090:1500;tcp,udp:53,8125:1600): these uids' connections to these ports are not captured"),
];

/// Environment-only settings (no flag), as in Istio.
pub static ENV_ONLY: &[EnvSpec] = &[
    EnvSpec {
        name: "ISTIO_OUTBOUND_OWNER_GROUPS",
        default: "*",
        help: "groups whose outbound traffic is captured ('*' for all)",
    },
    EnvSpec {
        name: "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        default: "",
        help:
            "groups whose outbound traffic is not captured (with ISTIO_OUTBOUND_OWNER_GROUPS='*')",
    },
    EnvSpec {
        name: "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
        default: "127.0.0.1/32",
        help: "IPv4 loopback range treated as localhost",
    },
    EnvSpec {
        name: "ENVOY_USER",
        default: "istio-proxy",
        help: "user whose uid is the default proxy UID",
    },
];

/// Looks up a flag by its long name. Panics on a name missing from [`FLAGS`]: that is a bug in
/// meshinit, not bad input.
pub fn flag(long: &str) -> &'static FlagSpec {
    FLAGS
        .iter()
        .find(|f| f.long == long)
        .unwrap_or_else(|| panic!("flag --{long} is not in the flag table"))
}

/// Where a setting's value came from, for error messages and the effective-config log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Neither command line nor environment set it.
    Default,
    /// This environment variable set it.
    Env(&'static str),
    /// The spelling used on the command line, e.g. `-p` or `--envoy-port`.
    CommandLine(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::CommandLine(spelling) => write!(f, "command line {spelling}"),
        }
    }
}

/// A setting's text and origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The text as given, uninterpreted.
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// What the user asked for, before interpretation.
#[derive(Debug)]
pub enum Command {
    /// Install (or print) rules with these settings.
    Run(RawArgs),
    /// `meshinit explain [FLAGS]`: where each kind of traffic goes with these settings.
    Explain(RawArgs),
    /// `meshinit trace [FLAGS] --conn SPEC [--json]`: one connection's path.
    Trace {
        /// The capture settings.
        raw: RawArgs,
        /// The `--conn` spec, as written.
        conn: String,
        /// `--json`: one JSON object instead of text.
        json: bool,
    },
    /// `--help` / `-h`: print usage.
    Help,
    /// `--version`: print the version.
    Version,
}

/// Every flag's text and source, resolved with Istio's precedence:
/// command line > extra env name > primary env name > default.
#[derive(Debug, Clone)]
pub struct RawArgs {
    flags: BTreeMap<&'static str, Setting>,
    env_only: BTreeMap<&'static str, Setting>,
}

impl RawArgs {
    /// The setting of a flag (always present: every flag has a default).
    pub fn get(&self, long: &str) -> &Setting {
        self.flags
            .get(long)
            .unwrap_or_else(|| panic!("flag --{long} is not in the flag table"))
    }

    /// The setting of an environment-only variable.
    pub fn env_only(&self, name: &str) -> &Setting {
        self.env_only
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the env-only table"))
    }

    /// All environment-only settings in table order.
    pub fn env_only_settings(&self) -> impl Iterator<Item = (&'static EnvSpec, &Setting)> {
        ENV_ONLY.iter().map(|spec| (spec, self.env_only(spec.name)))
    }

    /// All flags in table order, for logging the effective configuration.
    pub fn flags(&self) -> impl Iterator<Item = (&'static FlagSpec, &Setting)> {
        FLAGS.iter().map(|spec| (spec, self.get(spec.long)))
    }
}

/// Command-line errors: unknown flags, missing values, stray arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// A `--name` not in the flag table.
    #[error("unknown flag: {0}")]
    UnknownFlag(String),
    /// A shorthand letter not in the flag table, and the argument it was in.
    #[error("unknown shorthand flag: '{0}' in {1}")]
    UnknownShorthand(char, String),
    /// A value flag at the end of the command line.
    #[error("flag needs an argument: {0}")]
    MissingValue(String),
    /// A sub-command flag with a value it does not take.
    #[error("invalid value {1:?} for {0}")]
    BadValue(String, String),
    /// A positional argument: istio-iptables takes none.
    #[error("unexpected argument {0:?}: istio-iptables takes only flags")]
    UnexpectedArgument(String),
}

/// Parses `argv` (including the program name) and the environment.
///
/// `argv[1] == "istio-iptables"` is skipped: Istio's injection template passes the sub-command
/// name as the first argument to the image's entrypoint. `explain` and `trace` there are
/// meshinit's own sub-commands; they take the same flags (and `trace` its `--conn`, `--json`).
pub fn parse(argv: &[String], env: &Env) -> Result<Command, CliError> {
    let rest = argv.get(1..).unwrap_or_default();
    match rest.first().map(String::as_str) {
        Some("explain") => Ok(match parse_flags(&rest[1..], env, &[])?.0 {
            Command::Run(raw) => Command::Explain(raw),
            other => other,
        }),
        Some("trace") => {
            let (command, mut extra) = parse_flags(&rest[1..], env, TRACE_FLAGS)?;
            let Command::Run(raw) = command else {
                return Ok(command);
            };
            let conn = extra.remove("conn").ok_or_else(|| {
                CliError::MissingValue("--conn (trace needs a connection)".into())
            })?;
            let json = match extra.remove("json").as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => return Err(CliError::BadValue("--json".into(), other.into())),
            };
            Ok(Command::Trace { raw, conn, json })
        }
        Some("istio-iptables") => Ok(parse_flags(&rest[1..], env, &[])?.0),
        // The words clap-style tools accept, only in first position (no flag has such a value).
        Some("help") if rest.len() == 1 => Ok(Command::Help),
        Some("version") if rest.len() == 1 => Ok(Command::Version),
        _ => Ok(parse_flags(rest, env, &[])?.0),
    }
}

/// Go's `strconv.ParseBool`, for the parser's own switches (`--help=false`).
fn parse_go_bool(s: &str) -> Option<bool> {
    crate::go_duration::parse_go_bool(s).ok()
}

/// `trace`'s own flags, beside the capture flags.
const TRACE_FLAGS: &[(&str, Kind)] = &[("conn", Kind::Value), ("json", Kind::Bool)];

/// The capture flags and environment, plus a sub-command's own long flags (`extra`), whose
/// values are returned by name.
fn parse_flags(
    argv: &[String],
    env: &Env,
    extra: &[(&'static str, Kind)],
) -> Result<(Command, BTreeMap<&'static str, String>), CliError> {
    let mut args = argv.iter().peekable();
    let mut extras: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut from_cli: BTreeMap<&'static str, Setting> = BTreeMap::new();
    while let Some(arg) = args.next() {
        if arg == "--" {
            if let Some(stray) = args.next() {
                return Err(CliError::UnexpectedArgument(stray.clone()));
            }
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            // `--help` and `--version` are switches as in pflag: `--help=false` asks for nothing.
            let command = match name {
                "help" => Some(Command::Help),
                "version" => Some(Command::Version),
                _ => None,
            };
            if let Some(command) = command {
                match inline.as_deref().map(parse_go_bool) {
                    None | Some(Some(true)) => return Ok((command, extras)),
                    Some(Some(false)) => continue,
                    Some(None) => {
                        return Err(CliError::BadValue(format!("--{name}"), inline.unwrap()))
                    }
                }
            }
            if let Some(&(long, kind)) = extra.iter().find(|(long, _)| *long == name) {
                let value = match (kind, inline) {
                    (_, Some(v)) => v,
                    (Kind::Bool, None) => "true".to_string(),
                    (Kind::Value, None) => args
                        .next()
                        .cloned()
                        .ok_or_else(|| CliError::MissingValue(format!("--{name}")))?,
                };
                extras.insert(long, value);
                continue;
            }
            let spec = FLAGS
                .iter()
                .find(|f| f.long == name)
                .ok_or_else(|| CliError::UnknownFlag(format!("--{name}")))?;
            let value = match (spec.kind, inline) {
                (_, Some(v)) => v,
                (Kind::Bool, None) => "true".to_string(),
                (Kind::Value, None) => args
                    .next()
                    .cloned()
                    .ok_or_else(|| CliError::MissingValue(format!("--{name}")))?,
            };
            from_cli.insert(
                spec.long,
                Setting {
                    value,
                    source: Source::CommandLine(format!("--{name}")),
                },
            );
        } else if arg.len() > 1 && arg.starts_with('-') {
            // A group of shorthands, as pflag reads them: bools consume one letter each, the
            // first value flag takes the rest of the group (after an optional '=') or the next
            // argument.
            let mut rest = &arg[1..];
            while let Some(c) = rest.chars().next() {
                let after = &rest[c.len_utf8()..];
                if c == 'h' || c == 'V' {
                    let command = if c == 'h' {
                        Command::Help
                    } else {
                        Command::Version
                    };
                    match after.strip_prefix('=').filter(|v| !v.is_empty()) {
                        None => return Ok((command, extras)),
                        Some(v) => match parse_go_bool(v) {
                            Some(true) => return Ok((command, extras)),
                            Some(false) => break,
                            None => return Err(CliError::BadValue(format!("-{c}"), v.into())),
                        },
                    }
                }
                let spec = FLAGS
                    .iter()
                    .find(|f| f.short == Some(c))
                    .ok_or_else(|| CliError::UnknownShorthand(c, arg.clone()))?;
                let spelling = format!("-{c}");
                let value;
                if after.len() > 1 && after.starts_with('=') {
                    value = after[1..].to_string();
                    rest = "";
                } else if spec.kind == Kind::Bool {
                    value = "true".to_string();
                    rest = after;
                } else if !after.is_empty() {
                    value = after.to_string();
                    rest = "";
                } else {
                    value = args
                        .next()
                        .cloned()
                        .ok_or_else(|| CliError::MissingValue(spelling.clone()))?;
                    rest = "";
                }
                from_cli.insert(
                    spec.long,
                    Setting {
                        value,
                        source: Source::CommandLine(spelling),
                    },
                );
            }
        } else {
            return Err(CliError::UnexpectedArgument(arg.clone()));
        }
    }

    let flags = FLAGS
        .iter()
        .map(|spec| {
            let setting = from_cli.remove(spec.long).unwrap_or_else(|| {
                // Later env names take precedence over earlier ones.
                spec.env
                    .iter()
                    .rev()
                    .find_map(|name| {
                        env.get(*name).map(|v| Setting {
                            value: v.clone(),
                            source: Source::Env(name),
                        })
                    })
                    .unwrap_or(Setting {
                        value: spec.default.to_string(),
                        source: Source::Default,
                    })
            });
            (spec.long, setting)
        })
        .collect();
    let env_only = ENV_ONLY
        .iter()
        .map(|spec| {
            let setting = match env.get(spec.name) {
                Some(v) => Setting {
                    value: v.clone(),
                    source: Source::Env(spec.name),
                },
                None => Setting {
                    value: spec.default.to_string(),
                    source: Source::Default,
                },
            };
            (spec.name, setting)
        })
        .collect();
    Ok((Command::Run(RawArgs { flags, env_only }), extras))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        std::iter::once("meshinit")
            .chain(args.iter().copied())
            .map(String::from)
            .collect()
    }

    fn run(args: &[&str], env: &[(&str, &str)]) -> RawArgs {
        let env: Env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(&argv(args), &env).expect("parses") {
            Command::Run(raw) => raw,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    fn value(raw: &RawArgs, long: &str) -> String {
        raw.get(long).value.clone()
    }

    #[test]
    fn every_flag_has_unique_names() {
        for (i, a) in FLAGS.iter().enumerate() {
            for b in &FLAGS[i + 1..] {
                assert_ne!(a.long, b.long);
                if a.short.is_some() {
                    assert_ne!(a.short, b.short, "--{} and --{}", a.long, b.long);
                }
            }
        }
    }

    #[test]
    fn every_flag_is_set_by_long_name_short_name_and_env() {
        for spec in FLAGS {
            let sample = match spec.kind {
                Kind::Bool => "true",
                Kind::Value => "sample",
            };
            let raw = run(&[&format!("--{}={sample}", spec.long)], &[]);
            assert_eq!(value(&raw, spec.long), sample, "--{}=", spec.long);
            let raw = match spec.kind {
                Kind::Bool => run(&[&format!("--{}", spec.long)], &[]),
                Kind::Value => run(&[&format!("--{}", spec.long), sample], &[]),
            };
            assert_eq!(value(&raw, spec.long), sample, "--{} <value>", spec.long);
            if let Some(short) = spec.short {
                let raw = match spec.kind {
                    Kind::Bool => run(&[&format!("-{short}")], &[]),
                    Kind::Value => run(&[&format!("-{short}"), sample], &[]),
                };
                assert_eq!(value(&raw, spec.long), sample, "-{short}");
            }
            for name in spec.env {
                let raw = run(&[], &[(name, sample)]);
                assert_eq!(value(&raw, spec.long), sample, "env {name}");
                assert_eq!(raw.get(spec.long).source, Source::Env(name));
            }
            let raw = run(&[], &[]);
            assert_eq!(value(&raw, spec.long), spec.default);
            assert_eq!(raw.get(spec.long).source, Source::Default);
        }
    }

    #[test]
    fn every_value_flag_accepts_pflag_short_forms() {
        for spec in FLAGS.iter().filter(|f| f.kind == Kind::Value) {
            let Some(s) = spec.short else { continue };
            for form in [
                vec![format!("-{s}"), "v1".into()],
                vec![format!("-{s}=v1")],
                vec![format!("-{s}v1")],
                vec![format!("--{}", spec.long), "v1".into()],
                vec![format!("--{}=v1", spec.long)],
            ] {
                let forms: Vec<&str> = form.iter().map(|x| x.as_str()).collect();
                assert_eq!(value(&run(&forms, &[]), spec.long), "v1", "{forms:?}");
            }
        }
    }

    #[test]
    fn bools_take_only_inline_values() {
        assert_eq!(value(&run(&["-n"], &[]), "dry-run"), "true");
        assert_eq!(value(&run(&["--dry-run"], &[]), "dry-run"), "true");
        assert_eq!(value(&run(&["--dry-run=false"], &[]), "dry-run"), "false");
        assert_eq!(value(&run(&["-n=false"], &[]), "dry-run"), "false");
        assert_eq!(
            parse(&argv(&["--dry-run", "false"]), &Env::new()).unwrap_err(),
            CliError::UnexpectedArgument("false".into())
        );
    }

    #[test]
    fn shorthands_combine_like_pflag() {
        let raw = run(&["-np15001"], &[]);
        assert_eq!(value(&raw, "dry-run"), "true");
        assert_eq!(value(&raw, "envoy-port"), "15001");
        let raw = run(&["-nx", "10.0.0.0/8"], &[]);
        assert_eq!(value(&raw, "istio-service-exclude-cidr"), "10.0.0.0/8");
    }

    #[test]
    fn explicit_empty_values_are_kept() {
        let raw = run(
            &["-x", "", "-i", "*"],
            &[("ISTIO_SERVICE_EXCLUDE_CIDR", "1.1.1.1/32")],
        );
        assert_eq!(value(&raw, "istio-service-exclude-cidr"), "");
        assert_eq!(
            raw.get("istio-service-exclude-cidr").source,
            Source::CommandLine("-x".into())
        );
        assert_eq!(
            value(
                &run(&["--istio-inbound-ports="], &[]),
                "istio-inbound-ports"
            ),
            ""
        );
    }

    #[test]
    fn value_flags_take_the_next_argument_even_if_it_looks_like_a_flag() {
        assert_eq!(
            value(&run(&["-x", "-n"], &[]), "istio-service-exclude-cidr"),
            "-n"
        );
    }

    #[test]
    fn precedence_is_cli_then_extra_env_then_primary_env_then_default() {
        let both = [
            ("REDIRECT_DNS", "false"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
        ];
        assert_eq!(value(&run(&[], &[]), "redirect-dns"), "false");
        assert_eq!(value(&run(&[], &both[..1]), "redirect-dns"), "false");
        let raw = run(&[], &both);
        assert_eq!(value(&raw, "redirect-dns"), "true");
        assert_eq!(
            raw.get("redirect-dns").source,
            Source::Env("ISTIO_META_DNS_CAPTURE")
        );
        let raw = run(&["--redirect-dns=false"], &both);
        assert_eq!(value(&raw, "redirect-dns"), "false");
        assert_eq!(
            raw.get("redirect-dns").source,
            Source::CommandLine("--redirect-dns".into())
        );
        let raw = run(&[], &[("INVALID_DROP", "1"), ("DROP_INVALID", "0")]);
        assert_eq!(value(&raw, "drop-invalid"), "1");
        let raw = run(&[], &[("ISTIO_DUAL_STACK", "true")]);
        assert_eq!(value(&raw, "dual-stack"), "true");
    }

    #[test]
    fn last_occurrence_wins() {
        assert_eq!(value(&run(&["-p", "1", "-p", "2"], &[]), "envoy-port"), "2");
    }

    #[test]
    fn subcommand_name_is_skipped_only_in_first_position() {
        let raw = run(&["istio-iptables", "-p", "1"], &[]);
        assert_eq!(value(&raw, "envoy-port"), "1");
        assert!(parse(&argv(&["-p", "1", "istio-iptables"]), &Env::new()).is_err());
    }

    #[test]
    fn env_only_settings_have_defaults_and_keep_explicit_empty() {
        let raw = run(&[], &[]);
        assert_eq!(raw.env_only("ISTIO_OUTBOUND_OWNER_GROUPS").value, "*");
        let raw = run(&[], &[("ISTIO_OUTBOUND_OWNER_GROUPS", "")]);
        assert_eq!(raw.env_only("ISTIO_OUTBOUND_OWNER_GROUPS").value, "");
        assert_eq!(
            raw.env_only("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR").value,
            "127.0.0.1/32"
        );
    }

    #[test]
    fn errors_name_the_offending_argument() {
        let env = Env::new();
        assert_eq!(
            parse(&argv(&["--bogus"]), &env).unwrap_err(),
            CliError::UnknownFlag("--bogus".into())
        );
        assert_eq!(
            parse(&argv(&["-y"]), &env).unwrap_err(),
            CliError::UnknownShorthand('y', "-y".into())
        );
        assert_eq!(
            parse(&argv(&["-p"]), &env).unwrap_err(),
            CliError::MissingValue("-p".into())
        );
        assert_eq!(
            parse(&argv(&["--envoy-port"]), &env).unwrap_err(),
            CliError::MissingValue("--envoy-port".into())
        );
        assert_eq!(
            parse(&argv(&["stray"]), &env).unwrap_err(),
            CliError::UnexpectedArgument("stray".into())
        );
    }

    #[test]
    fn logging_flags_are_accepted() {
        let raw = run(
            &[
                "--log_output_level=default:info",
                "--log_as_json",
                "--log_caller=default",
                "--log_rotate=/tmp/x",
                "--log_rotate_max_age=1",
                "--log_rotate_max_backups=1",
                "--log_rotate_max_size=1",
                "--log_stacktrace_level=default:none",
                "--log_target=stderr",
                "--vklog=2",
            ],
            &[],
        );
        assert_eq!(value(&raw, "log_as_json"), "true");
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(
            parse(&argv(&["--help"]), &Env::new()),
            Ok(Command::Help)
        ));
        assert!(matches!(
            parse(&argv(&["-h"]), &Env::new()),
            Ok(Command::Help)
        ));
        assert!(matches!(
            parse(&argv(&["--version"]), &Env::new()),
            Ok(Command::Version)
        ));
        assert!(usage().contains("--envoy-port"));
    }
}
