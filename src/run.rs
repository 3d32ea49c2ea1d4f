//! One run of meshinit: parse, configure, plan, then print (dry run) or apply, and map every
//! outcome to a documented exit code.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::apply::{self, exec::SystemRunner, ApplyError};
use crate::cli::{self, Command, Env};
use crate::config::detect::Host;
use crate::config::{
    BackendChoice, Config, ConfigError, DnsCapture, InboundCapture, InterceptMode, OutboundInclude,
    OwnerGroups,
};
use crate::log::Log;
use crate::{backend, plan, trace, validate};

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

/// What the last log line of every run reports.
struct Summary {
    started: Instant,
    phases: Vec<(&'static str, Duration)>,
    backend: String,
    families: String,
    rules: usize,
    outcome: String,
}

impl Summary {
    fn new() -> Summary {
        Summary {
            started: Instant::now(),
            phases: Vec::new(),
            backend: "iptables".to_string(),
            families: "-".to_string(),
            rules: 0,
            outcome: "nothing changed".to_string(),
        }
    }

    /// Records the time since the previous phase ended.
    fn phase(&mut self, name: &'static str) {
        let done: Duration = self.phases.iter().map(|(_, d)| *d).sum();
        self.phases
            .push((name, self.started.elapsed().saturating_sub(done)));
    }

    fn finish(mut self, log: &Log, code: u8) -> u8 {
        self.phase("end");
        let phases: Vec<String> = self
            .phases
            .iter()
            .filter(|(name, _)| *name != "end")
            .map(|(name, d)| format!("{name} {:.1}ms", d.as_secs_f64() * 1000.0))
            .collect();
        log.info(&format!(
            "summary: exit {code}; backend {}; families {}; {} rules planned; {}; time {}",
            self.backend,
            self.families,
            self.rules,
            self.outcome,
            if phases.is_empty() {
                "-".to_string()
            } else {
                phases.join(", ")
            }
        ));
        code
    }
}

/// Runs meshinit with these arguments and environment; returns the exit code.
pub fn run(argv: &[String], env: &Env, host: &dyn Host) -> u8 {
    let mut summary = Summary::new();
    // Until the configuration is read, log as JSON if the flag is anywhere on the line.
    let mut log = Log {
        json: argv
            .iter()
            .any(|a| a == "--log_as_json" || a == "--log_as_json=true"),
        ..Log::default()
    };
    let raw = match cli::parse(argv, env) {
        Ok(Command::Run(raw)) => raw,
        Ok(Command::Explain(raw)) => return inspect(&raw, host, &log, None),
        Ok(Command::Trace { raw, conn, json }) => {
            return inspect(&raw, host, &log, Some((&conn, json)))
        }
        Ok(Command::Help) => return print_stdout(&cli::usage()),
        Ok(Command::Version) => {
            return print_stdout(&format!("meshinit {}\n", env!("CARGO_PKG_VERSION")))
        }
        Err(e) => {
            log.error(&format!("{e} (see --help)"));
            summary.outcome = "nothing changed: invalid command line".to_string();
            return summary.finish(&log, exit_code::INVALID_INPUT);
        }
    };
    // Detection and everything after it must see the pod's namespace: enter it first, while
    // meshinit is still single-threaded.
    let netns = &raw.get("network-namespace").value;
    if !netns.is_empty() {
        if let Err(e) = apply::privileges::enter_netns(Path::new(netns)) {
            log.error(&e);
            return summary.finish(&log, exit_code::FAILURE);
        }
    }
    let config = match Config::build(&raw, host) {
        Ok(config) => config,
        Err(e) => {
            log.error(&e.to_string());
            summary.outcome = "nothing changed".to_string();
            let code = match e {
                ConfigError::Invalid { .. } => exit_code::INVALID_INPUT,
                ConfigError::Detection(_) => exit_code::FAILURE,
            };
            return summary.finish(&log, code);
        }
    };
    log = Log {
        level: config.run.log_level,
        json: config.run.log_json,
    };
    log.info(&describe(&config));
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
    for family in plan.families() {
        for rule in &plan.rules(family) {
            log.debug(&format!("{family:?} {rule}"));
        }
    }
    summary.families = format!("{:?}", plan.families());
    summary.rules = plan.families().iter().map(|f| plan.rules(*f).len()).sum();
    summary.phase("plan");
    let run = &config.run;
    let nftables = run.backend == BackendChoice::Nftables;
    if nftables {
        summary.backend = "nftables".to_string();
    }
    if run.dry_run {
        summary.outcome = "dry run: printed, nothing changed".to_string();
        let text = if nftables {
            format!(
                "# meshinit dry run: nftables script, as input to `nft -f`\n{}",
                backend::nftables::nft_script_with(&plan, run.nft_sets)
            )
        } else {
            backend::iptables::dry_run_text(&plan)
        };
        let code = print_stdout(&text);
        return summary.finish(&log, code);
    }
    // The whole run's deadline for helper programs, counted from the start of the run.
    let runner = SystemRunner::new(Some(summary.started + run.timeout));
    let (backend, why) = apply::resolve_backend(run.backend, &runner);
    let nftables = backend == apply::Backend::Nftables;
    log.info(&format!(
        "backend: {} ({why})",
        if nftables { "nftables" } else { "iptables" }
    ));
    summary.backend = if nftables { "nftables" } else { "iptables" }.to_string();
    if nftables {
        // One inet rule serves both families where iptables needs one per family.
        let ruleset = backend::nftables::ruleset_with(&plan, run.nft_sets);
        summary.rules = ruleset.tables.iter().map(|t| t.rules.len()).sum();
    }
    if run.check {
        let checked = if nftables {
            apply::check_nftables(&plan, run.nft_sets)
        } else {
            apply::check(&plan, run, &runner, &log)
        };
        let code = match checked {
            Ok(diffs) if diffs.is_empty() => {
                summary.outcome = "check: rules in place".to_string();
                exit_code::SUCCESS
            }
            Ok(diffs) => {
                log.warn(&format!(
                    "the live rules differ from this configuration:\n{}",
                    diffs.join("\n")
                ));
                summary.outcome = "check: rules differ".to_string();
                exit_code::CHECK_DIFFERS
            }
            Err(e) => {
                log.error(&format!("cannot check: {e}"));
                summary.outcome = "check: the live state could not be read".to_string();
                exit_code::FAILURE
            }
        };
        summary.phase("check");
        return summary.finish(&log, code);
    }

    let result = match (run.cleanup_only, run.skip_rule_apply, nftables) {
        (true, _, true) => apply::cleanup_nftables(&config.capture, run, &log),
        (true, _, false) => apply::cleanup(&config.capture, run, &runner, &log),
        (false, true, _) => Ok(apply::Report {
            changes: vec!["rules not applied (--skip-rule-apply)".to_string()],
            ..apply::Report::default()
        }),
        (false, false, true) => apply::apply_nftables(&plan, run, &log),
        (false, false, false) => apply::apply(&plan, run, &runner, &log),
    };
    summary.phase("apply");
    let code = match result {
        Ok(report) => {
            if !report.tools.is_empty() {
                summary.backend = format!("{} ({})", summary.backend, report.tools.join(", "));
            }
            if !report.changes.is_empty() {
                summary.outcome = report.changes.join("; ");
            }
            exit_code::SUCCESS
        }
        Err(e) => {
            let (kind, outcome) = match e {
                ApplyError::Precondition(_) => ("cannot apply", "nothing changed"),
                ApplyError::Drift(_) => ("refusing to apply", "nothing changed"),
                ApplyError::Failed(_) => ("applying failed", "nothing changed (undone)"),
                ApplyError::LeftChanged(_) => (
                    "applying failed",
                    "FAILED and left changed: see the error above",
                ),
            };
            log.error(&format!("{kind}: {e}"));
            summary.outcome = outcome.to_string();
            exit_code::FAILURE
        }
    };
    if code == exit_code::SUCCESS && run.run_validation {
        let code = run_validation(&config, &log);
        summary.phase("validate");
        return summary.finish(&log, code);
    }
    summary.finish(&log, code)
}

/// `explain` (no connection) and `trace` (a connection spec, and whether to print JSON): the
/// configuration as a real run builds it, its plan, and the netfilter model's answer on
/// stdout. Needs no privileges and touches nothing.
fn inspect(raw: &cli::RawArgs, host: &dyn Host, log: &Log, conn: Option<(&str, bool)>) -> u8 {
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
    let groups =
        apply::groups::Groups::load(Path::new(apply::groups::GROUP_FILE)).unwrap_or_else(|e| {
            log.warn(&format!(
                "{e}: owner rules by group name match nothing in this trace"
            ));
            apply::groups::Groups::default()
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
            let conn = match trace::conn::parse(spec) {
                Ok(conn) => conn,
                Err(e) => {
                    log.error(&e.to_string());
                    return exit_code::INVALID_INPUT;
                }
            };
            let mut traced = trace::model::trace(&plan, &conn, backend, &lookup);
            if config.run.backend == BackendChoice::Auto {
                traced.notes.push(
                    "traced for the iptables backend (Istio's default, what --backend auto \
                     picks when an iptables tool is installed); add --backend=nftables for the \
                     native backend"
                        .to_string(),
                );
            }
            if json {
                trace::render::json(&conn, &traced)
            } else {
                trace::render::text(&conn, &traced)
            }
        }
    };
    print_stdout(&text)
}

/// `--run-validation`: the IPv4 probe, and the IPv6 one when IPv6 is on.
fn run_validation(config: &Config, log: &Log) -> u8 {
    let c = &config.capture;
    let ports = [c.proxy_port, c.inbound_capture_port];
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
            log.error(&format!(
                "validation failed: {e}\n{}",
                validate::FAILURE_ADVICE
            ));
            return exit_code::VALIDATION_FAILED;
        }
        log.info(&format!(
            "validation passed for {}: probe redirected to a capture port",
            probe.target
        ));
    }
    exit_code::SUCCESS
}

fn print_stdout(text: &str) -> u8 {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => exit_code::SUCCESS,
        Err(_) => exit_code::FAILURE,
    }
}

fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
    }
}

/// The effective configuration, logged once at start.
fn describe(config: &Config) -> String {
    let c = &config.capture;
    let mode = match c.mode {
        InterceptMode::Redirect => "REDIRECT",
        InterceptMode::Tproxy => "TPROXY",
    };
    let inbound = match &c.inbound {
        InboundCapture::None => "none".to_string(),
        InboundCapture::All { exclude } => format!("all ports except {}", list(exclude)),
        InboundCapture::Ports(ports) => format!("ports {}", list(ports)),
    };
    let outbound = match &c.outbound_include {
        OutboundInclude::All => "all".to_string(),
        OutboundInclude::Cidrs(cidrs) => {
            format!("CIDRs {}", list(&[&cidrs.v4[..], &cidrs.v6[..]].concat()))
        }
    };
    let groups = match &c.owner_groups {
        OwnerGroups::AllExcept(g) => format!("all except {}", list(g)),
        OwnerGroups::Only(g) => format!("only {}", list(g)),
    };
    let dns = match &c.dns {
        DnsCapture::Off => "off".to_string(),
        DnsCapture::All => "all servers".to_string(),
        DnsCapture::Servers { v4, v6 } => {
            let texts: Vec<&str> = v4.iter().chain(v6).map(|s| s.text.as_str()).collect();
            format!("servers {}", list(&texts))
        }
    };
    let r = &config.run;
    format!(
        "meshinit {version}: effective configuration\n\
         proxy: outbound port {out}, inbound port {inp}, tunnel port {tun}, uids {uids}, gids {gids}\n\
         inbound: {mode}, {inbound}; tproxy mark {mark}, route table {table}\n\
         outbound: capture {outbound}, exclude CIDRs {xc}, include ports {ip}, exclude ports {xp}\n\
         owner groups: {groups}; localhost {lb}\n\
         interfaces: excluded {xi}, VM {vi}\n\
         dns capture: {dns}; drop invalid: {di}; ipv6: {ipv6}\n\
         run: dry-run {dry}, skip-rule-apply {skip}, validation {val}, reconcile {rec}, cleanup-only {clean}, force-apply {force}, backend {nft:?}",
        version = env!("CARGO_PKG_VERSION"),
        out = c.proxy_port,
        inp = c.inbound_capture_port,
        tun = c.inbound_tunnel_port,
        uids = list(&c.proxy_uids),
        gids = list(&c.proxy_gids),
        mark = c.tproxy_mark,
        table = c.route_table,
        xc = list(&[&c.outbound_exclude.v4[..], &c.outbound_exclude.v6[..]].concat()),
        ip = list(&c.outbound_ports_include),
        xp = list(&c.outbound_ports_exclude),
        lb = c.loopback_v4,
        xi = list(&c.exclude_interfaces),
        vi = list(&c.virt_interfaces),
        di = c.drop_invalid,
        ipv6 = c.ipv6,
        dry = r.dry_run,
        skip = r.skip_rule_apply,
        val = r.run_validation,
        rec = r.reconcile,
        clean = r.cleanup_only,
        force = r.force_apply,
        nft = r.backend,
    )
}
