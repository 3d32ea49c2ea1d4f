//! One run of meshinit: parse, configure, plan, then print (dry run) or apply, and map every
//! outcome to a documented exit code.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cli::{self, Env};
use crate::config::detect::Host;
use crate::config::LogLevel;
use crate::config::{self, BackendChoice, Config, ConfigError, DnsCapture};
use crate::engine::decide::Difference;
use crate::engine::error::{ApplyError, Change, Kind, Report, ToolUse};
use crate::engine::mode::Mode;
use crate::execute::retry;
use crate::log::Log;
use crate::plan::Family;
use crate::sys::privileges::NetnsError;
use crate::sys::process::{Deadline, SystemRunner};
use crate::sys::{groups, privileges};
use crate::{plan, render, trace, validate};

mod describe;
mod pipeline;
use describe::{describe, log_sources};

/// The exit codes, documented in the README.
pub mod exit_code {
    /// Rules are in place (or printed, for a dry run).
    pub const SUCCESS: u8 = 0;
    /// Something failed at run time (detection, applying); nothing is left half-applied.
    pub const FAILURE: u8 = 1;
    /// Bad input: unknown flag, invalid value. Nothing was changed.
    pub const INVALID_INPUT: u8 = 2;
    /// `--check` found that the live rules differ from the configuration.
    pub const CHECK_DIFFERS: u8 = 3;
    /// `--run-validation` found that traffic is not redirected (Istio's code).
    pub const VALIDATION_FAILED: u8 = 126;
}

/// What the last log line of every run reports. What a run never got to (a backend after a
/// parse error) is left out rather than shown as a placeholder.
pub(crate) struct Summary {
    started: Instant,
    phases: Vec<(&'static str, Duration)>,
    /// `apply`, `dry-run`, `check`, `cleanup`, `validation`, once the configuration is read.
    mode: Option<&'static str>,
    backend: Option<&'static str>,
    /// The tools per family, as the apply step reports them (`IPv4 iptables-legacy`).
    tools: Vec<ToolUse>,
    families: Option<Vec<Family>>,
    rules: Option<usize>,
    /// The network namespace entered, as logged.
    namespace: Option<String>,
    /// What changed, one entry per change.
    changes: Vec<Change>,
    /// The outcome in words when no change list says it.
    pub(crate) outcome: String,
}

/// `ipv4` / `ipv6`, as logs and the summary name a family.
fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

impl Summary {
    pub(crate) fn new() -> Summary {
        Summary {
            started: Instant::now(),
            phases: Vec::new(),
            mode: None,
            backend: None,
            tools: Vec::new(),
            families: None,
            rules: None,
            namespace: None,
            changes: Vec::new(),
            outcome: "nothing changed".to_string(),
        }
    }

    /// Records the time since the previous phase ended.
    fn phase(&mut self, name: &'static str) {
        let done: Duration = self.phases.iter().map(|(_, d)| *d).sum();
        self.phases
            .push((name, self.started.elapsed().saturating_sub(done)));
    }

    fn outcome_text(&self) -> String {
        if self.changes.is_empty() {
            self.outcome.clone()
        } else {
            joined(&self.changes, "; ")
        }
    }

    /// The one-line text form.
    fn text(&self, code: u8) -> String {
        let mut parts = vec![format!("summary: exit {code}")];
        if let Some(mode) = self.mode {
            parts.push(format!("mode {mode}"));
        }
        if let Some(backend) = self.backend {
            parts.push(if self.tools.is_empty() {
                format!("backend {backend}")
            } else {
                format!("backend {backend} ({})", joined(&self.tools, ", "))
            });
        }
        if let Some(families) = &self.families {
            let names: Vec<&str> = families.iter().map(|f| family_name(*f)).collect();
            parts.push(format!("families {}", names.join(",")));
        }
        if let Some(rules) = self.rules {
            parts.push(format!("{rules} rules planned"));
        }
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace {ns}"));
        }
        parts.push(self.outcome_text());
        let phases: Vec<String> = self
            .phases
            .iter()
            .filter(|(name, _)| *name != "end")
            .map(|(name, d)| format!("{name} {:.1}ms", d.as_secs_f64() * 1000.0))
            .collect();
        parts.push(format!(
            "time {}",
            if phases.is_empty() {
                "-".to_string()
            } else {
                phases.join(", ")
            }
        ));
        parts.join("; ")
    }

    /// The same facts as fields, for `--log_as_json`.
    fn fields(&self, code: u8) -> serde_json::Value {
        let ms = |d: &Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let phases: serde_json::Map<String, serde_json::Value> = self
            .phases
            .iter()
            .filter(|(name, _)| *name != "end")
            .map(|(name, d)| (name.to_string(), ms(d).into()))
            .collect();
        // `IPv4 iptables-legacy` → {"ipv4": "iptables-legacy"}; a tool for no one family
        // (nf_tables netlink serves both) stays in `tools` only.
        let variants: serde_json::Map<String, serde_json::Value> = self
            .tools
            .iter()
            .filter_map(|t| match t {
                ToolUse::Iptables(tools) => {
                    Some((family_name(tools.family).to_string(), tools.main().into()))
                }
                ToolUse::Netlink => None,
            })
            .collect();
        serde_json::json!({
            "exit_code": code,
            "mode": self.mode,
            "backend": self.backend,
            "variants": variants,
            "tools": strings(&self.tools),
            "families": self.families.as_ref().map(|f| f.iter().map(|f| family_name(*f)).collect::<Vec<_>>()),
            "rules_planned": self.rules,
            "namespace": self.namespace,
            "changed": !self.changes.is_empty(),
            "change_count": self.changes.len(),
            "changes": strings(&self.changes),
            "outcome": self.outcome_text(),
            "phases_ms": phases,
            "total_ms": ms(&self.started.elapsed()),
        })
    }

    pub(crate) fn finish(mut self, log: &Log, code: u8) -> u8 {
        self.phase("end");
        log.with_fields(
            LogLevel::Info,
            &self.text(code),
            "summary",
            &self.fields(code),
        );
        code
    }
}

/// What kind of failure ended a run, for callers that report it otherwise than by exit code
/// (the CNI error codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// Invalid input: nothing was changed (exit 2).
    Invalid,
    /// A run-time failure that changed nothing or was undone (exit 1).
    Failed,
    /// A run-time failure that left the namespace changed (exit 1).
    LeftChanged,
    /// `--check`: the live rules differ (exit 3).
    CheckDiffers,
    /// `--run-validation`: traffic is not redirected (exit 126).
    NotRedirected,
}

/// How a run ended: its exit code and, on failure, why.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The exit code (README's table).
    pub code: u8,
    /// The failure, if the run failed.
    pub failure: Option<Failure>,
}

impl Outcome {
    fn ok(code: u8) -> Outcome {
        Outcome {
            code,
            failure: None,
        }
    }
}

/// Why a run failed, as values: the log's error line renders it, the CNI plugin its error
/// object.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The network namespace could not be entered.
    Netns(NetnsError),
    /// The settings are invalid, or detection failed; with a hint for a long flag written
    /// with one dash.
    Config {
        /// The error.
        error: ConfigError,
        /// The hint, when there is one.
        hint: Option<String>,
    },
    /// `--dry-run --cleanup-only` could not decide.
    CleanupPreview(ApplyError),
    /// `--check` could not read the live state.
    Check(ApplyError),
    /// `--check`: the live rules differ; the differences.
    Differs(Vec<Difference>),
    /// Applying (or cleaning up) failed.
    Apply(ApplyError),
    /// `--run-validation` failed: the test ran and found traffic not redirected (`ran`), or
    /// it could not run.
    Validation {
        /// Whether the test ran.
        ran: bool,
    },
}

/// The sentence before `--check`'s differences.
const DIFFER: &str = "the live rules differ from this configuration";

impl Failure {
    /// What kind of failure it is.
    pub(crate) fn kind(&self) -> FailureKind {
        match self {
            Failure::Config {
                error: ConfigError::Invalid { .. },
                ..
            } => FailureKind::Invalid,
            Failure::Differs(_) => FailureKind::CheckDiffers,
            Failure::Apply(e) if e.kind() == Kind::LeftChanged => FailureKind::LeftChanged,
            Failure::Validation { ran: true } => FailureKind::NotRedirected,
            _ => FailureKind::Failed,
        }
    }

    /// One line saying what failed (the CNI error object's `msg`): for `--check`, the first
    /// difference with the count of the others; else the error's own first line.
    pub(crate) fn headline(&self) -> String {
        match self {
            Failure::Differs(diffs) => {
                // Every line that differs counts, the first one's included.
                let more = match diffs.iter().map(Difference::line_count).sum::<usize>() {
                    0 | 1 => String::new(),
                    n => format!("and {} more; ", n - 1),
                };
                let first = diffs.first().map(Difference::headline);
                format!("{} ({more}{DIFFER})", first.unwrap_or_default())
            }
            Failure::CleanupPreview(e) => format!("{PREVIEW}: {}", e.headline()),
            Failure::Check(e) => format!("cannot check: {}", e.headline()),
            Failure::Apply(e) => format!("{}: {}", apply_what(e), e.headline()),
            _ => self.to_string(),
        }
    }
}

const PREVIEW: &str = "cannot show what --cleanup-only would remove";

/// How the error line of a failed apply starts.
fn apply_what(e: &ApplyError) -> &'static str {
    match e.kind() {
        Kind::Precondition => "cannot apply",
        Kind::Drift => "refusing to apply",
        Kind::Transient | Kind::Failed | Kind::LeftChanged => "applying failed",
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Netns(e) => write!(f, "{e}"),
            Failure::Config {
                error,
                hint: Some(hint),
            } => write!(f, "{error}; {hint}"),
            Failure::Config { error, hint: None } => write!(f, "{error}"),
            Failure::CleanupPreview(e) => write!(f, "{PREVIEW}: {e}"),
            Failure::Check(e) => write!(f, "cannot check: {e}"),
            Failure::Differs(diffs) => {
                write!(f, "{DIFFER}:")?;
                for diff in diffs {
                    write!(f, "\n{diff}")?;
                }
                Ok(())
            }
            Failure::Apply(e) => write!(f, "{}: {e}", apply_what(e)),
            Failure::Validation { .. } => f.write_str("validation failed: see the log"),
        }
    }
}

/// One run from its settings on: enter the namespace, configure, plan, print or apply. The
/// summary line is logged at the end, whatever the outcome.
///
/// `argv` and `env` are what the settings came from (empty in CNI mode, whose settings come
/// from the network configuration), for hints and the debug log of each setting's source.
pub(crate) fn execute(
    raw: &cli::RawArgs,
    host: &dyn Host,
    log: Log,
    argv: &[String],
    env: &Env,
) -> Outcome {
    let mut summary = Summary::new();
    let mut log = log;
    let fail = |summary: Summary, log: &Log, code: u8, failure: Failure| {
        log.error(&failure.to_string());
        Outcome {
            code: summary.finish(log, code),
            failure: Some(failure),
        }
    };
    // Detection and everything after it must see the pod's namespace: enter it first, while
    // meshinit is still single-threaded.
    let netns = &raw.get("network-namespace").value;
    if !netns.is_empty() {
        match privileges::enter_netns(Path::new(netns), "--network-namespace") {
            Ok(entered) => summary.namespace = Some(entered),
            Err(e) => return fail(summary, &log, exit_code::FAILURE, Failure::Netns(e)),
        }
    }
    let config = match Config::build(raw, host) {
        Ok(config) => config,
        Err(e) => {
            summary.outcome = "nothing changed".to_string();
            let code = match e {
                ConfigError::Invalid { .. } => exit_code::INVALID_INPUT,
                ConfigError::Detection(_) => exit_code::FAILURE,
            };
            // A value error caused by a long flag written with one dash says so.
            let hint = match &e {
                ConfigError::Invalid { .. } => cli::single_dash_hint(argv),
                ConfigError::Detection(_) => None,
            };
            return fail(summary, &log, code, Failure::Config { error: e, hint });
        }
    };
    log = Log {
        level: config.run.log_level,
        json: config.run.log_json,
    };
    // In a block: with thousands of listed CIDRs the text is large, and freed at once.
    {
        let (text, fields) = describe(&config, log.json);
        match fields {
            Some(fields) => {
                let first = text.lines().next().unwrap_or_default();
                log.with_fields(LogLevel::Info, first, "config", &fields);
            }
            None => log.info(&text),
        }
    }
    if let Some(entered) = &summary.namespace {
        log.info(&format!("entered network namespace {entered}"));
    }
    log.info(&config.ipv6_reason);
    if log.enabled(LogLevel::Debug) {
        log_sources(raw, env, &log);
    }
    let mode = Mode::of(&config.run);
    summary.mode = Some(mode.name());
    for warning in &config.warnings {
        log.warn(warning);
    }
    if let DnsCapture::Servers { v4, v6 } = &config.capture.dns {
        if v4.is_empty() && !v6.is_empty() && !config.capture.ipv6 {
            let servers: Vec<&str> = v6.iter().map(|s| s.text.as_str()).collect();
            log.warn(&format!(
                "DNS capture: the only DNS servers ({}) are IPv6 and IPv6 is off, so no DNS traffic is captured (turn IPv6 on, or use --capture-all-dns or IPv4 servers)",
                servers.join(",")
            ));
        }
    }
    summary.phase("configure");

    let plan = plan::plan(&config.capture);
    // Only when they are shown: with thousands of listed CIDRs, copying and formatting
    // every rule costs more than the rest of the plan.
    if log.enabled(LogLevel::Debug) {
        for family in plan.families() {
            for rule in &plan.rules(family) {
                log.debug(&format!("{} {rule}", family_name(family)));
            }
        }
    }
    summary.families = Some(plan.families());
    summary.rules = Some(
        plan.families()
            .iter()
            .map(|f| plan.rules.iter().filter(|r| r.scope.includes(*f)).count())
            .sum(),
    );
    summary.phase("plan");
    let run = &config.run;
    // The whole run's deadline for helper programs, counted from the start of the run.
    let runner = SystemRunner::new(Some(Deadline {
        started: summary.started,
        timeout: run.timeout,
    }));
    if mode == Mode::DryRunCleanup {
        // What cleanup would remove here, not the install rules.
        return match pipeline::cleanup_preview(&config.capture, &runner) {
            Ok(text) => {
                summary.outcome = "dry run of --cleanup-only: printed, nothing changed".to_string();
                let code = print_stdout(&text);
                Outcome::ok(summary.finish(&log, code))
            }
            Err(e) => {
                summary.outcome = "nothing changed".to_string();
                fail(
                    summary,
                    &log,
                    exit_code::FAILURE,
                    Failure::CleanupPreview(e),
                )
            }
        };
    }
    // Decided once, before the dry run: a dry run prints what the same command installs.
    let (backend, why) = pipeline::resolve_backend(run.backend, &runner);
    let nftables = backend == pipeline::Backend::Nftables;
    log.info(&format!(
        "backend: {} ({why})",
        if nftables { "nftables" } else { "iptables" }
    ));
    summary.backend = Some(if nftables { "nftables" } else { "iptables" });
    let v6_excluded = config.capture.outbound_exclude.family(true);
    if nftables && !plan.ipv6 && !v6_excluded.is_empty() {
        // Istio drops IPv6 entries with IPv6 off, and its text is kept; but an inet table
        // captures IPv6 all the same, so the user must hear that these are not honoured.
        log.warn(&format!(
            "-x (ISTIO_SERVICE_EXCLUDE_CIDR) lists IPv6 networks ({}) but IPv6 is off: as Istio, they are not installed, while the native inet table still captures IPv6; turn IPv6 on (--dual-stack or --ipv6=true) for them to be excluded",
            joined(v6_excluded, ",")
        ));
    }
    if mode == Mode::DryRun {
        summary.outcome = "dry run: printed, nothing changed".to_string();
        let text = if nftables {
            format!(
                "# meshinit dry run: nftables script, as input to `nft -f`\n{}",
                render::nft_ruleset::nft_script_with(&plan, run.nft_sets)
            )
        } else {
            render::iptables_text::dry_run_text(&plan)
        };
        let code = print_stdout(&text);
        return Outcome::ok(summary.finish(&log, code));
    }
    // Built once, here: the summary counts its rules, and --check and the apply (every
    // attempt of it) use the same one; with thousands of listed CIDRs, merging the lists
    // into sets is a few milliseconds.
    let ruleset = nftables.then(|| render::nft_ruleset::ruleset_with(&plan, run.nft_sets));
    if let Some(ruleset) = &ruleset {
        // One inet rule serves both families where iptables needs one per family.
        summary.rules = Some(ruleset.tables.iter().map(|t| t.rules.len()).sum());
    }
    if matches!(mode, Mode::Cleanup { .. }) {
        // Cleanup removes what is there; the plan's count says nothing about that.
        summary.rules = None;
    }
    // One place retries transient failures, for every backend: each attempt reads the
    // namespace afresh, and its lock waits end at the run's deadline.
    let policy = retry::Policy {
        retries: run.retries,
        pause: run.retry_pause,
        deadline: Deadline {
            started: summary.started,
            timeout: run.timeout,
        },
    };
    if mode == Mode::Check {
        // A read answered EBUSY (or a save tool's lock message) is retried under --retries
        // too: a readiness probe should not answer 1 for a moment's contention.
        let checked = retry::with_retries(&policy, &log, |_| {
            pipeline::check(&plan, ruleset.as_ref(), run, &runner, &log)
        });
        summary.phase("check");
        return match checked {
            Ok(diffs) if diffs.is_empty() => {
                summary.outcome = "check: rules in place".to_string();
                Outcome::ok(summary.finish(&log, exit_code::SUCCESS))
            }
            Ok(diffs) => {
                let failure = Failure::Differs(diffs);
                log.warn(&failure.to_string());
                summary.outcome = "check: rules differ".to_string();
                Outcome {
                    code: summary.finish(&log, exit_code::CHECK_DIFFERS),
                    failure: Some(failure),
                }
            }
            Err(e) => {
                summary.outcome = "check: the live state could not be read".to_string();
                fail(summary, &log, exit_code::FAILURE, Failure::Check(e))
            }
        };
    }

    let result = retry::with_retries(&policy, &log, |left| {
        let run = &config::RunOptions {
            xtables_wait: run.xtables_wait.min(left),
            ..run.clone()
        };
        match mode {
            // Cleanup removes ours from every backend, variant and family, whatever was chosen.
            Mode::Cleanup { .. } => pipeline::cleanup(&config.capture, run, &runner, &log),
            Mode::Skip { .. } => Ok(Report {
                changes: vec![Change::Skipped],
                ..Report::default()
            }),
            _ => pipeline::apply(&config.capture, &plan, ruleset.as_ref(), run, &runner, &log),
        }
    });
    summary.phase("apply");
    match result {
        Ok(report) => {
            summary.tools = report.tools;
            summary.changes = report.changes;
            if matches!(mode, Mode::Cleanup { .. }) && summary.changes.is_empty() {
                summary.outcome = "nothing of ours was found: nothing changed".to_string();
            }
        }
        Err(e) => {
            summary.outcome = match e.kind() {
                // Transient failures left nothing changed, whether written and undone or not.
                Kind::Precondition | Kind::Drift | Kind::Transient => "nothing changed",
                Kind::Failed => "nothing changed (undone)",
                Kind::LeftChanged => "FAILED and left changed: see the error above",
            }
            .to_string();
            return fail(summary, &log, exit_code::FAILURE, Failure::Apply(e));
        }
    }
    if mode.validates() {
        let code = run_validation(&config, &log);
        summary.phase("validate");
        let failure = match code {
            exit_code::SUCCESS => None,
            exit_code::VALIDATION_FAILED => Some(Failure::Validation { ran: true }),
            _ => Some(Failure::Validation { ran: false }),
        };
        return Outcome {
            code: summary.finish(&log, code),
            failure,
        };
    }
    Outcome::ok(summary.finish(&log, exit_code::SUCCESS))
}

/// `explain` (no connection) and `trace` (a connection spec, and whether to print JSON): the
/// configuration as a real run builds it, its plan, and the netfilter model's answer on
/// stdout. Needs no privileges and touches nothing.
/// The interface an outbound connection without `oif=` leaves through, as routing would
/// choose it here: an address of this network namespace (the pod's own, when trace runs in
/// the pod) goes over `lo`; anything else is taken to leave through `eth0`, and the note says
/// that it was assumed.
fn default_route(conn: &mut trace::Conn, host: &dyn Host) -> Option<String> {
    if conn.direction != trace::Direction::Out || conn.oif.is_some() || conn.dst.is_loopback() {
        return None;
    }
    let dst = conn.dst.to_canonical();
    // A connection's own source is a local address by definition; else ask this namespace.
    let local = conn.src.is_some_and(|src| src.to_canonical() == dst)
        || host
            .interface_addrs()
            .is_ok_and(|addrs| addrs.iter().any(|a| a.to_canonical() == dst));
    if local {
        conn.oif = Some("lo".to_string());
        Some(format!(
            "{dst} is an address of this network namespace: the kernel routes the connection over lo"
        ))
    } else {
        Some(format!(
            "oif=eth0 assumed ({dst} is not an address of this network namespace); give oif=IF when the pod routes it elsewhere"
        ))
    }
}

pub(crate) fn inspect(
    raw: &cli::RawArgs,
    host: &dyn Host,
    log: &Log,
    conn: Option<(&str, bool)>,
) -> u8 {
    let log = Log {
        json: raw.get("log_as_json").value == "true",
        ..*log
    };
    let config = match Config::build(raw, host) {
        Ok(config) => config,
        Err(e) => {
            log.error(&e.to_string());
            return match e {
                ConfigError::Invalid { .. } => exit_code::INVALID_INPUT,
                ConfigError::Detection(_) => exit_code::FAILURE,
            };
        }
    };
    let plan = plan::plan(&config.capture);
    // Owner rules by group name match the gid iptables resolves when it installs them.
    let groups = groups::Groups::load(Path::new(groups::GROUP_FILE)).unwrap_or_else(|e| {
        log.warn(&format!(
            "{e}: owner rules by group name match nothing in this trace"
        ));
        groups::Groups::default()
    });
    let lookup = |name: &str| groups.gid(name);
    // `auto` is traced as Istio's default, iptables; the native backend differs for IPv6.
    let backend = match config.run.backend {
        BackendChoice::Nftables => trace::model::Backend::Nftables,
        BackendChoice::Auto | BackendChoice::Iptables => trace::model::Backend::Iptables,
    };
    let text = match conn {
        None => trace::explain::text(&config.capture, &plan, backend, &lookup),
        Some((spec, json)) => {
            let mut conn = match trace::conn::parse(spec) {
                Ok(conn) => conn,
                Err(e) => {
                    log.error(&e.to_string());
                    return exit_code::INVALID_INPUT;
                }
            };
            let route_note = default_route(&mut conn, host);
            let mut traced = trace::model::trace(&plan, &conn, backend, &lookup);
            traced.notes.extend(route_note);
            if config.run.backend == BackendChoice::Auto {
                traced.notes.push(
                    "traced for the iptables backend (Istio's default, what --backend auto \
                     picks when an iptables tool is installed); add --backend=nftables for the \
                     native backend"
                        .to_string(),
                );
            }
            if json {
                trace::output::json(&conn, &traced)
            } else {
                trace::output::text(&conn, &traced)
            }
        }
    };
    print_stdout(&text)
}

/// `--run-validation`: the IPv4 probe, and the IPv6 one when IPv6 is on.
fn run_validation(config: &Config, log: &Log) -> u8 {
    let c = &config.capture;
    let ports = [c.proxy_port, c.inbound_capture_port];
    // The probe is captured by the rule for the proxy's own traffic to a pod address over lo;
    // from any other uid and gid it is not, whatever the rules.
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let not_proxy = (!c.proxy_uids.contains(&uid) && !c.proxy_gids.contains(&gid)).then(|| {
        format!(
            "this process runs as uid {uid} (gid {gid}), which is not a proxy uid (-u {}) or gid (-g {}): only the proxy's own traffic is redirected to the inbound capture port, so the probe cannot be; run the validation as the proxy user, as Istio's istio-validation container does",
            joined(&c.proxy_uids, ","),
            joined(&c.proxy_gids, ",")
        )
    });
    if let Some(why) = &not_proxy {
        log.warn(why);
    }
    let mut probes = vec![validate::Probe::v4()];
    if c.ipv6 {
        probes.push(validate::Probe::v6());
    }
    for probe in probes {
        if let Err(e) = validate::validate(
            probe,
            &ports,
            config.run.probe_port,
            config.run.probe_timeout,
        ) {
            // Only "not redirected" is Istio's 126 (which its CNI repair controller acts on);
            // a test that could not run is a run-time failure.
            if let validate::ValidationError::PortUnavailable { .. } = e {
                log.error(&format!("validation could not run: {e}"));
                return exit_code::FAILURE;
            }
            match &not_proxy {
                // The likely cause comes first; the CNI advice does not apply to it.
                Some(why) => log.error(&format!("validation failed: {why}\n({e})")),
                None => log.error(&format!(
                    "validation failed: {e}\n{}",
                    validate::FAILURE_ADVICE
                )),
            }
            return exit_code::VALIDATION_FAILED;
        }
        log.info(&format!(
            "validation passed for {}: probe redirected to a capture port",
            probe.target
        ));
    }
    exit_code::SUCCESS
}

pub(crate) fn print_stdout(text: &str) -> u8 {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => exit_code::SUCCESS,
        Err(_) => exit_code::FAILURE,
    }
}

/// Each item as it displays.
fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(T::to_string).collect()
}

/// The items as they display, separated by `sep`.
fn joined<T: ToString>(items: &[T], sep: &str) -> String {
    strings(items).join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IptablesVariant;
    use crate::driver::xtables::{IptablesError, Tools};
    use crate::engine::error::{Cause, Failed, Left, LeftChanged, Undone, Write};
    use crate::sys::process::Ended;

    fn write() -> Write {
        let tools = Tools {
            family: Family::V6,
            variant: IptablesVariant::Nft,
        };
        let mut write = Write::new(Cause::Restore {
            tools,
            error: IptablesError::Tool {
                program: tools.restore(),
                ended: Ended::Exited(1),
                stderr: "line 3 failed\nCOMMIT".into(),
                hint: None,
            },
        });
        write.done.push(Undone::Undone(Family::V4));
        write
    }

    #[test]
    fn a_failure_renders_its_log_line_and_a_one_line_headline_from_the_same_values() {
        let failed = Failure::Apply(ApplyError::Failed(Failed::Write(Box::new(write()))));
        assert_eq!(failed.kind(), FailureKind::Failed);
        assert_eq!(
            failed.to_string(),
            "applying failed: IPv6: ip6tables-nft-restore exited with code 1: line 3 failed\nCOMMIT\nIPv4: undone\nnothing was left changed"
        );
        assert_eq!(
            failed.headline(),
            "applying failed: IPv6: ip6tables-nft-restore exited with code 1: line 3 failed; nothing was left changed"
        );
        let mut left = write();
        left.left.push(Left::InPart {
            family: Family::V4,
            remaining: "*nat\nCOMMIT\n".into(),
        });
        let left = Failure::Apply(ApplyError::LeftChanged(LeftChanged::Write(Box::new(left))));
        assert_eq!(left.kind(), FailureKind::LeftChanged);
        assert!(left
            .headline()
            .ends_with("; the namespace was left changed as described above"));
        // --check: the first difference first, then how many more, then the header.
        let differs = Failure::Differs(vec![
            Difference::line("missing: a"),
            Difference {
                what: "IPv4 (iptables-nft-save)".into(),
                lines: vec!["-A X".into(), "-A Y".into()],
            },
        ]);
        assert_eq!(differs.kind(), FailureKind::CheckDiffers);
        assert_eq!(
            differs.headline(),
            "missing: a (and 2 more; the live rules differ from this configuration)"
        );
        assert_eq!(
            differs.to_string(),
            "the live rules differ from this configuration:\nmissing: a\nIPv4 (iptables-nft-save):\n-A X\n-A Y"
        );
        let differs = Failure::Differs(differs_rev());
        assert_eq!(
            differs.headline(),
            "IPv4 (iptables-nft-save): -A X (and 2 more; the live rules differ from this configuration)"
        );
    }

    fn differs_rev() -> Vec<Difference> {
        vec![
            Difference {
                what: "IPv4 (iptables-nft-save)".into(),
                lines: vec!["-A X".into(), "-A Y".into()],
            },
            Difference::line("missing: a"),
        ]
    }

    #[test]
    fn the_summary_renders_tools_and_changes_from_their_values() {
        let mut summary = Summary::new();
        summary.tools = vec![
            ToolUse::Iptables(Tools {
                family: Family::V4,
                variant: IptablesVariant::Legacy,
            }),
            ToolUse::Netlink,
        ];
        summary.changes = vec![Change::Skipped, Change::Reconciled];
        summary.backend = Some("iptables");
        let fields = summary.fields(0);
        assert_eq!(
            fields["variants"],
            serde_json::json!({"ipv4": "iptables-legacy"})
        );
        assert_eq!(
            fields["tools"],
            serde_json::json!(["IPv4 iptables-legacy", "nf_tables netlink"])
        );
        assert_eq!(fields["change_count"], 2);
        assert_eq!(
            fields["outcome"],
            "rules not applied (--skip-rule-apply); reconciled: installed here first, then removed the rules of ours elsewhere"
        );
        assert!(summary
            .text(0)
            .contains("backend iptables (IPv4 iptables-legacy, nf_tables netlink)"));
    }
}
