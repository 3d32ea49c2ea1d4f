//! What a run says about its configuration: the effective-configuration block (text, or one
//! JSON object with `--log_as_json`), the run's mode in a word, and at debug level where each
//! setting came from.

use serde_json::{json, Value};

use crate::cli::{Env, RawArgs, Source};
use crate::config::types::Cidr;
use crate::config::{
    BackendChoice, Config, DnsCapture, InboundCapture, InterceptMode, OutboundInclude, OwnerGroups,
};
use crate::go_duration::go_duration;
use crate::log::Log;

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    use std::fmt::Write;
    if items.is_empty() {
        return "-".to_string();
    }
    // Written in place: a list can hold thousands of CIDRs.
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{item}");
    }
    out
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(T::to_string).collect()
}

/// `auto`, `iptables`, `nftables`: the backend as `--backend` spells it.
fn backend_name(backend: BackendChoice) -> &'static str {
    match backend {
        BackendChoice::Auto => "auto",
        BackendChoice::Iptables => "iptables",
        BackendChoice::Nftables => "nftables",
    }
}

/// The effective configuration, logged once at start: the text block, and with `json` the
/// same as one JSON object (not built otherwise: it copies every listed CIDR).
pub fn describe(config: &Config, json: bool) -> (String, Option<Value>) {
    let c = &config.capture;
    let mode = match c.mode {
        InterceptMode::Redirect => "REDIRECT",
        InterceptMode::Tproxy => "TPROXY",
    };
    let (inbound, inbound_json) = match &c.inbound {
        InboundCapture::None => ("none".to_string(), json!({"capture": "none"})),
        InboundCapture::All { exclude } => (
            format!("all ports except {}", list(exclude)),
            json!({"capture": "all", "exclude_ports": strings(exclude)}),
        ),
        InboundCapture::Ports(ports) => (
            format!("ports {}", list(ports)),
            json!({"capture": "ports", "ports": strings(ports)}),
        ),
    };
    let (outbound, outbound_json) = match &c.outbound_include {
        OutboundInclude::All => ("all".to_string(), json!("all")),
        OutboundInclude::Cidrs(cidrs) => {
            let all: Vec<&Cidr> = cidrs.v4.iter().chain(&cidrs.v6).collect();
            (format!("CIDRs {}", list(&all)), json!(strings(&all)))
        }
    };
    let (groups, groups_json) = match &c.owner_groups {
        OwnerGroups::AllExcept(g) => (
            format!("all except {}", list(g)),
            json!({"all_except": strings(g)}),
        ),
        OwnerGroups::Only(g) => (format!("only {}", list(g)), json!({"only": strings(g)})),
    };
    let (dns, dns_json) = match &c.dns {
        DnsCapture::Off => ("off".to_string(), json!("off")),
        DnsCapture::All => ("all servers".to_string(), json!("all")),
        DnsCapture::Servers { v4, v6 } => {
            let texts: Vec<&str> = v4.iter().chain(v6).map(|s| s.text.as_str()).collect();
            (
                format!("servers {}", list(&texts)),
                json!({"servers": texts}),
            )
        }
    };
    let excluded_cidrs: Vec<&Cidr> = c
        .outbound_exclude
        .v4
        .iter()
        .chain(&c.outbound_exclude.v6)
        .collect();
    let r = &config.run;
    let version = env!("CARGO_PKG_VERSION");
    let text = format!(
        "meshinit {version}: effective configuration\n\
         proxy: outbound port {out}, inbound port {inp}, tunnel port {tun}, uids {uids}, gids {gids}\n\
         inbound: {mode}, {inbound}; tproxy mark {mark}, route table {table}\n\
         outbound: capture {outbound}, exclude CIDRs {xc}, include ports {ip}, exclude ports {xp}\n\
         owner groups: {groups}; localhost {lb}\n\
         interfaces: excluded {xi}, VM {vi}\n\
         dns capture: {dns}; drop invalid: {di}; ipv6: {ipv6}\n\
         run: dry-run {dry}, skip-rule-apply {skip}, validation {val}, reconcile {rec}, cleanup-only {clean}, force-apply {force}, backend {backend}",
        out = c.proxy_port,
        inp = c.inbound_capture_port,
        tun = c.inbound_tunnel_port,
        uids = list(&c.proxy_uids),
        gids = list(&c.proxy_gids),
        mark = c.tproxy_mark,
        table = c.route_table,
        xc = list(&excluded_cidrs),
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
        backend = backend_name(r.backend),
    );
    // Said only when asked for, so Istio's arguments log the same block as before.
    let text = if r.retries > 0 {
        format!(
            "{text}, retries {} (pause {}, within --timeout {})",
            r.retries,
            go_duration(r.retry_pause),
            go_duration(r.timeout)
        )
    } else {
        text
    };
    let fields = json.then(|| {
        json!({
            "version": version,
            "proxy": {
                "outbound_port": c.proxy_port.to_string(),
                "inbound_port": c.inbound_capture_port.to_string(),
                "tunnel_port": c.inbound_tunnel_port.to_string(),
                "uids": c.proxy_uids,
                "gids": c.proxy_gids,
            },
            "inbound": {
                "mode": mode,
                "ports": inbound_json,
                "tproxy_mark": c.tproxy_mark,
                "route_table": c.route_table,
            },
            "outbound": {
                "capture": outbound_json,
                "exclude_cidrs": strings(&excluded_cidrs),
                "include_ports": strings(&c.outbound_ports_include),
                "exclude_ports": strings(&c.outbound_ports_exclude),
            },
            "owner_groups": groups_json,
            "localhost": c.loopback_v4.to_string(),
            "interfaces": {
                "excluded": strings(&c.exclude_interfaces),
                "vm": strings(&c.virt_interfaces),
            },
            "dns_capture": dns_json,
            "drop_invalid": c.drop_invalid,
            "ipv6": c.ipv6,
            "ipv6_reason": config.ipv6_reason,
            "run": {
                "dry_run": r.dry_run,
                "skip_rule_apply": r.skip_rule_apply,
                "validation": r.run_validation,
                "reconcile": r.reconcile,
                "cleanup_only": r.cleanup_only,
                "force_apply": r.force_apply,
                "check": r.check,
                "backend": backend_name(r.backend),
                "retries": r.retries,
                "retry_pause_ms": r.retry_pause.as_millis() as u64,
            },
        })
    });
    // meshinit's own capture options: said only when used, so that a run with Istio's flags
    // alone describes itself exactly as before.
    let sources = [
        &c.inbound_exclude_sources.v4[..],
        &c.inbound_exclude_sources.v6[..],
    ]
    .concat();
    let uid_ports = &c.outbound_uid_port_excludes;
    let (mut text, mut fields) = (text, fields);
    if !sources.is_empty() || !uid_ports.is_empty() {
        text.push_str(&format!(
            "\nmeshinit's own: exclude inbound sources {}, exclude outbound ports for uids {}",
            list(&sources),
            if uid_ports.is_empty() {
                "-".to_string()
            } else {
                strings(uid_ports).join(";")
            }
        ));
        if let Some(fields) = &mut fields {
            fields["meshinit_own"] = json!({
                "exclude_inbound_sources": strings(&sources),
                "exclude_outbound_ports_for_uids": strings(uid_ports),
            });
        }
    }
    (text, fields)
}

/// What a setting's value overrode: the sources of lower precedence that were set too.
fn overridden(source: &Source, env_names: &[&'static str], env: &Env) -> Vec<String> {
    // Env names are lowest precedence first; the winner overrides every set name before it,
    // and a command-line value overrides them all.
    let below: &[&'static str] = match source {
        Source::CommandLine(_) => env_names,
        Source::Env(name) => {
            let at = env_names.iter().position(|n| n == name).unwrap_or(0);
            &env_names[..at]
        }
        Source::Default => &[],
    };
    below
        .iter()
        .filter_map(|name| env.get(*name).map(|v| format!("env {name}={v:?}")))
        .collect()
}

/// At debug level: every setting's value and where it came from (command line spelling, env
/// name, default), and what it overrode. One line per setting; in JSON one object.
pub fn log_sources(raw: &RawArgs, env: &Env, log: &Log) {
    let mut lines = Vec::new();
    let mut fields = serde_json::Map::new();
    for (spec, setting) in raw.flags() {
        let over = overridden(&setting.source, spec.env, env);
        let mut line = format!(
            "--{} = {:?} from {}",
            spec.long, setting.value, setting.source
        );
        if !over.is_empty() {
            line.push_str(&format!(", overriding {}", over.join(", ")));
        }
        lines.push(line);
        fields.insert(
            format!("--{}", spec.long),
            json!({"value": setting.value, "source": setting.source.to_string(), "overrides": over}),
        );
    }
    for (spec, setting) in raw.env_only_settings() {
        lines.push(format!(
            "{} = {:?} from {}",
            spec.name, setting.value, setting.source
        ));
        fields.insert(
            spec.name.to_string(),
            json!({"value": setting.value, "source": setting.source.to_string(), "overrides": []}),
        );
    }
    let msg = "settings and where they came from";
    if log.json {
        log.with_fields(
            crate::config::LogLevel::Debug,
            msg,
            "settings",
            &Value::Object(fields),
        );
    } else {
        log.debug(&format!("{msg}:\n{}", lines.join("\n")));
    }
}
