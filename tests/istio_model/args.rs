//! Conversion between the reference model's `IstioConfig` and meshinit's command line
//! (`--long-flag=value` arguments + environment), including the conformance `args` file format.

use super::{split, IstioConfig};
use std::net::IpAddr;

/// Environment variables the model's configuration maps to (env-only options in Istio).
pub const ENV_OWNER_GROUPS: &str = "ISTIO_OUTBOUND_OWNER_GROUPS";
pub const ENV_OWNER_GROUPS_EXCLUDE: &str = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE";
pub const ENV_LOOPBACK_CIDR: &str = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR";

/// meshinit arguments (always `--flag=value`, every flag given explicitly, `--dns-servers=` even
/// when empty) and environment for `cfg`.
pub fn to_cli(cfg: &IstioConfig) -> (Vec<String>, Vec<(String, String)>) {
    let flag = |name: &str, value: &str| format!("--{name}={value}");
    let dns: Vec<&str> = cfg
        .dns_servers_v4
        .iter()
        .chain(cfg.dns_servers_v6.iter())
        .map(String::as_str)
        .collect();
    let args = vec![
        flag("envoy-port", &cfg.proxy_port),
        flag("inbound-capture-port", &cfg.inbound_capture_port),
        flag("inbound-tunnel-port", &cfg.inbound_tunnel_port),
        flag("proxy-uid", &cfg.proxy_uid),
        flag("proxy-gid", &cfg.proxy_gid),
        flag(
            "istio-inbound-interception-mode",
            &cfg.inbound_interception_mode,
        ),
        flag("istio-inbound-tproxy-mark", &cfg.inbound_tproxy_mark),
        flag(
            "istio-inbound-tproxy-route-table",
            &cfg.inbound_tproxy_route_table,
        ),
        flag("istio-inbound-ports", &cfg.inbound_ports_include),
        flag("istio-local-exclude-ports", &cfg.inbound_ports_exclude),
        flag("istio-service-cidr", &cfg.outbound_ip_ranges_include),
        flag(
            "istio-service-exclude-cidr",
            &cfg.outbound_ip_ranges_exclude,
        ),
        flag("istio-outbound-ports", &cfg.outbound_ports_include),
        flag(
            "istio-local-outbound-ports-exclude",
            &cfg.outbound_ports_exclude,
        ),
        flag("kube-virt-interfaces", &cfg.kube_virt_interfaces),
        flag("istio-exclude-interfaces", &cfg.exclude_interfaces),
        flag("redirect-dns", &cfg.redirect_dns.to_string()),
        flag("capture-all-dns", &cfg.capture_all_dns.to_string()),
        flag("drop-invalid", &cfg.drop_invalid.to_string()),
        flag("ipv6", &cfg.enable_ipv6.to_string()),
        flag("dns-servers", &dns.join(",")),
    ];
    let env = vec![
        (
            ENV_OWNER_GROUPS.to_string(),
            cfg.owner_groups_include.clone(),
        ),
        (
            ENV_OWNER_GROUPS_EXCLUDE.to_string(),
            cfg.owner_groups_exclude.clone(),
        ),
        (
            ENV_LOOPBACK_CIDR.to_string(),
            cfg.host_ipv4_loopback_cidr.clone(),
        ),
    ];
    (args, env)
}

/// Go's `strconv.ParseBool` (pflag's bool parser).
fn parse_bool(name: &str, v: &str) -> bool {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
        _ => panic!("--{name}: not a bool: {v:?}"),
    }
}

/// Inverse of [`to_cli`]: starts from [`IstioConfig::default`] and applies `--flag=value`
/// arguments and environment. Panics on anything it does not know (so new inputs are noticed).
pub fn from_cli(args: &[String], env: &[(String, String)]) -> IstioConfig {
    let mut cfg = IstioConfig::default();
    for arg in args {
        let (name, value) = arg
            .strip_prefix("--")
            .and_then(|a| a.split_once('='))
            .unwrap_or_else(|| panic!("argument {arg:?} is not of the form --flag=value"));
        let v = value.to_string();
        match name {
            "envoy-port" => cfg.proxy_port = v,
            "inbound-capture-port" => cfg.inbound_capture_port = v,
            "inbound-tunnel-port" => cfg.inbound_tunnel_port = v,
            "proxy-uid" => cfg.proxy_uid = v,
            "proxy-gid" => cfg.proxy_gid = v,
            "istio-inbound-interception-mode" => cfg.inbound_interception_mode = v,
            "istio-inbound-tproxy-mark" => cfg.inbound_tproxy_mark = v,
            "istio-inbound-tproxy-route-table" => cfg.inbound_tproxy_route_table = v,
            "istio-inbound-ports" => cfg.inbound_ports_include = v,
            "istio-local-exclude-ports" => cfg.inbound_ports_exclude = v,
            "istio-service-cidr" => cfg.outbound_ip_ranges_include = v,
            "istio-service-exclude-cidr" => cfg.outbound_ip_ranges_exclude = v,
            "istio-outbound-ports" => cfg.outbound_ports_include = v,
            "istio-local-outbound-ports-exclude" => cfg.outbound_ports_exclude = v,
            "kube-virt-interfaces" => cfg.kube_virt_interfaces = v,
            "istio-exclude-interfaces" => cfg.exclude_interfaces = v,
            "redirect-dns" => cfg.redirect_dns = parse_bool(name, value),
            "capture-all-dns" => cfg.capture_all_dns = parse_bool(name, value),
            "drop-invalid" => cfg.drop_invalid = parse_bool(name, value),
            "ipv6" => cfg.enable_ipv6 = parse_bool(name, value),
            "dns-servers" => {
                cfg.dns_servers_v4.clear();
                cfg.dns_servers_v6.clear();
                for s in split(value) {
                    // Classified like Istio's IPsSplitV4V6 (Is4: IPv4-mapped counts as v6), but
                    // kept verbatim.
                    match s.parse::<IpAddr>() {
                        Ok(IpAddr::V4(_)) => cfg.dns_servers_v4.push(s),
                        Ok(IpAddr::V6(_)) => cfg.dns_servers_v6.push(s),
                        Err(e) => panic!("--dns-servers: {s:?}: {e}"),
                    }
                }
            }
            _ => panic!("unknown flag --{name}"),
        }
    }
    for (name, value) in env {
        match name.as_str() {
            ENV_OWNER_GROUPS => cfg.owner_groups_include = value.clone(),
            ENV_OWNER_GROUPS_EXCLUDE => cfg.owner_groups_exclude = value.clone(),
            ENV_LOOPBACK_CIDR => cfg.host_ipv4_loopback_cidr = value.clone(),
            _ => panic!("unknown environment variable {name}"),
        }
    }
    cfg
}

/// Split a conformance `args` file into (arguments, environment). Blank lines and `#` comments
/// are skipped; `env NAME=value` lines are environment.
pub fn parse_args_file(text: &str) -> (Vec<String>, Vec<(String, String)>) {
    let mut args = Vec::new();
    let mut env = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(assign) = line.strip_prefix("env ") {
            let (k, v) = assign
                .split_once('=')
                .unwrap_or_else(|| panic!("bad env line {line:?}"));
            env.push((k.to_string(), v.to_string()));
        } else {
            args.push(line.to_string());
        }
    }
    (args, env)
}

/// Build an `IstioConfig` from the text of a conformance case's `args` file.
pub fn from_case_args(text: &str) -> IstioConfig {
    let (args, env) = parse_args_file(text);
    from_cli(&args, &env)
}

/// Render `cfg` in the conformance `args` file format (one argument per line, then `env` lines);
/// handy for turning a failing property-test input into a conformance case.
pub fn to_case_args(cfg: &IstioConfig) -> String {
    let (args, env) = to_cli(cfg);
    let mut out = String::new();
    for a in args {
        out.push_str(&a);
        out.push('\n');
    }
    for (k, v) in env {
        out.push_str(&format!("env {k}={v}\n"));
    }
    out
}
