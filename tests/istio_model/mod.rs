//! Independent, string-based reference model of newest Istio's (>= 1.25) iptables rule generator
//! (`pilot-agent istio-iptables`), used as a differential-testing oracle for meshinit.
//!
//! This module deliberately shares nothing with meshinit's `src/`: it mirrors the shape of Istio's
//! Go code (`tools/istio-iptables/pkg/capture/run.go` `Run()`/`SetupDNSRedir`/
//! `addDNSConntrackZones`, `pkg/builder/iptables_builder_impl.go` `buildRestore`,
//! `tools/common/config/{config,types}.go`): rules are `(table, chain, params)` triples appended to
//! a v4 and a v6 list, and the restore text is assembled from those lists exactly as Istio does.
//!
//! The model assumes valid input (what Istio's injector would pass); it panics on input Istio
//! would reject (e.g. an unparsable CIDR or `-x '*'`).
#![allow(dead_code)]

pub mod args;
pub mod strategy;

#[allow(unused_imports)] // each test binary uses a different part
pub use args::{from_case_args, from_cli, to_case_args, to_cli};

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Istio's `config.Config`, restricted to the fields that influence the generated rules, after
/// `FillConfigFromEnvironment` (IPv6 and DNS servers are given, not detected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioConfig {
    /// `-p` / `--envoy-port`
    pub proxy_port: String,
    /// `-z` / `--inbound-capture-port`
    pub inbound_capture_port: String,
    /// `-e` / `--inbound-tunnel-port`
    pub inbound_tunnel_port: String,
    /// `-u` / `--proxy-uid` (comma list). Empty means Istio's fallback (see [`restore_texts`]).
    pub proxy_uid: String,
    /// `-g` / `--proxy-gid` (comma list). Empty means "same as the UID string".
    pub proxy_gid: String,
    /// `-m`; only the exact string `TPROXY` selects TPROXY.
    pub inbound_interception_mode: String,
    /// `-t`
    pub inbound_tproxy_mark: String,
    /// `-r` (no influence on the rule text; carried for the command line)
    pub inbound_tproxy_route_table: String,
    /// `-b`: `*`, a port list, or empty (no inbound capture).
    pub inbound_ports_include: String,
    /// `-d`: only used with `-b '*'`.
    pub inbound_ports_exclude: String,
    /// env `ISTIO_OUTBOUND_OWNER_GROUPS`
    pub owner_groups_include: String,
    /// env `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`
    pub owner_groups_exclude: String,
    /// `-q`
    pub outbound_ports_include: String,
    /// `-o`
    pub outbound_ports_exclude: String,
    /// `-i`: `*` or a CIDR list.
    pub outbound_ip_ranges_include: String,
    /// `-x`: a CIDR list (`*` is invalid).
    pub outbound_ip_ranges_exclude: String,
    /// `-k`
    pub kube_virt_interfaces: String,
    /// `-c`
    pub exclude_interfaces: String,
    /// `--redirect-dns`
    pub redirect_dns: bool,
    /// `--capture-all-dns`
    pub capture_all_dns: bool,
    /// `--drop-invalid`
    pub drop_invalid: bool,
    /// detected by Istio (`EnableIPv6`); meshinit's `--ipv6`
    pub enable_ipv6: bool,
    /// nameservers from resolv.conf, IPv4 ones, rendered exactly as given
    pub dns_servers_v4: Vec<String>,
    /// nameservers from resolv.conf, IPv6 ones, rendered exactly as given
    pub dns_servers_v6: Vec<String>,
    /// env `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`
    pub host_ipv4_loopback_cidr: String,
}

impl Default for IstioConfig {
    /// Istio's `constructTestConfig()` baseline used by every golden case.
    fn default() -> Self {
        IstioConfig {
            proxy_port: "15001".into(),
            inbound_capture_port: "15006".into(),
            inbound_tunnel_port: "15008".into(),
            proxy_uid: "1337".into(),
            proxy_gid: "1337".into(),
            inbound_interception_mode: String::new(),
            inbound_tproxy_mark: "1337".into(),
            inbound_tproxy_route_table: "133".into(),
            inbound_ports_include: String::new(),
            inbound_ports_exclude: String::new(),
            owner_groups_include: "*".into(),
            owner_groups_exclude: String::new(),
            outbound_ports_include: String::new(),
            outbound_ports_exclude: String::new(),
            outbound_ip_ranges_include: String::new(),
            outbound_ip_ranges_exclude: String::new(),
            kube_virt_interfaces: String::new(),
            exclude_interfaces: String::new(),
            redirect_dns: false,
            capture_all_dns: false,
            drop_invalid: false,
            enable_ipv6: false,
            dns_servers_v4: Vec::new(),
            dns_servers_v6: Vec::new(),
            host_ipv4_loopback_cidr: "127.0.0.1/32".into(),
        }
    }
}

// Chain names and fixed values (Istio's `constants` package).
const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
const ISTIO_OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
const ISTIO_TPROXY: &str = "ISTIO_TPROXY";
const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
const ISTIO_DROP: &str = "ISTIO_DROP";
const OUTBOUND_MARK: &str = "1338";
const AGENT_DNS_PORT: &str = "15053";
const DEFAULT_PROXY_UID: &str = "1337";
/// Stand-in token replaced by a family-specific address in "versioned" rules.
const PLACEHOLDER: &str = "PLACEHOLDER_IP_VERSION_SPECIFIC";
/// Names never given a `-N` line (built-in chains and built-in targets).
const BUILTIN_CHAINS_AND_TARGETS: [&str; 8] = [
    "INPUT",
    "OUTPUT",
    "FORWARD",
    "PREROUTING",
    "POSTROUTING",
    "ACCEPT",
    "RETURN",
    "DROP",
];

/// Istio's `config.Split`: split on `,`, drop empty elements, no trimming.
pub fn split(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Istio's `NetworkRange` (one address family of a `-i`/`-x` list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRange {
    pub is_wildcard: bool,
    /// Each prefix printed like Go's `netip.Prefix.String()`.
    pub cidrs: Vec<String>,
    pub has_loopback_ip: bool,
}

/// Parse like Go's `netip.ParsePrefix` (valid input assumed) and return
/// (`Prefix.String()`, `Addr().Is4()`, `Addr().IsLoopback()`).
pub fn parse_prefix(s: &str) -> (String, bool, bool) {
    let (addr, bits) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("CIDR {s:?} has no '/'"));
    let addr: IpAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("CIDR {s:?}: bad address: {e}"));
    let bits: u8 = bits
        .parse()
        .unwrap_or_else(|e| panic!("CIDR {s:?}: bad prefix length: {e}"));
    let max = if addr.is_ipv4() { 32 } else { 128 };
    assert!(bits <= max, "CIDR {s:?}: prefix length out of range");
    let loopback = match addr {
        IpAddr::V4(a) => a.octets()[0] == 127,
        IpAddr::V6(a) => {
            a.segments() == [0, 0, 0, 0, 0, 0, 0, 1]
                || a.to_ipv4_mapped().is_some_and(|m| m.octets()[0] == 127)
        }
    };
    // Go prints the address as given (not masked); Rust's Ipv6Addr Display is RFC 5952 like Go's.
    (format!("{addr}/{bits}"), addr.is_ipv4(), loopback)
}

/// Istio's `config.SeparateV4V6`.
pub fn separate_v4_v6(cidr_list: &str) -> (NetworkRange, NetworkRange) {
    if cidr_list == "*" {
        let w = NetworkRange {
            is_wildcard: true,
            ..NetworkRange::default()
        };
        return (w.clone(), w);
    }
    let mut v4 = NetworkRange::default();
    let mut v6 = NetworkRange::default();
    for item in split(cidr_list) {
        let (text, is4, loopback) = parse_prefix(&item);
        let family = if is4 { &mut v4 } else { &mut v6 };
        family.cidrs.push(text);
        if loopback {
            family.has_loopback_ip = true;
        }
    }
    (v4, v6)
}

/// One rule: Istio's `builder.Rule`. `params` starts with `-A <chain>` or `-I <chain> <pos>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub table: String,
    pub params: Vec<String>,
}

/// Istio's `IptablesRuleBuilder`: two rule lists, v6 writes dropped when IPv6 is off.
struct RuleBuilder {
    v4: Vec<Rule>,
    v6: Vec<Rule>,
    ipv6: bool,
}

fn strings(params: &[&str]) -> Vec<String> {
    params.iter().map(|s| s.to_string()).collect()
}

fn appended(chain: &str, table: &str, params: &[&str]) -> Rule {
    let mut p = vec!["-A".to_string(), chain.to_string()];
    p.extend(strings(params));
    Rule {
        chain: chain.into(),
        table: table.into(),
        params: p,
    }
}

fn inserted(chain: &str, table: &str, pos: u32, params: &[&str]) -> Rule {
    let mut p = vec!["-I".to_string(), chain.to_string(), pos.to_string()];
    p.extend(strings(params));
    Rule {
        chain: chain.into(),
        table: table.into(),
        params: p,
    }
}

impl RuleBuilder {
    fn append_v4(&mut self, chain: &str, table: &str, params: &[&str]) {
        self.v4.push(appended(chain, table, params));
    }
    fn append_v6(&mut self, chain: &str, table: &str, params: &[&str]) {
        if self.ipv6 {
            self.v6.push(appended(chain, table, params));
        }
    }
    fn append(&mut self, chain: &str, table: &str, params: &[&str]) {
        self.append_v4(chain, table, params);
        self.append_v6(chain, table, params);
    }
    fn insert_v4(&mut self, chain: &str, table: &str, pos: u32, params: &[&str]) {
        self.v4.push(inserted(chain, table, pos, params));
    }
    fn insert_v6(&mut self, chain: &str, table: &str, pos: u32, params: &[&str]) {
        if self.ipv6 {
            self.v6.push(inserted(chain, table, pos, params));
        }
    }
    fn insert(&mut self, chain: &str, table: &str, pos: u32, params: &[&str]) {
        self.insert_v4(chain, table, pos, params);
        self.insert_v6(chain, table, pos, params);
    }
    /// Istio's `AppendVersionedRule`: `PLACEHOLDER` becomes `v4` / `v6` in the respective list.
    fn append_versioned(&mut self, v4: &str, v6: &str, chain: &str, table: &str, params: &[&str]) {
        let sub = |with: &str| -> Vec<String> {
            params
                .iter()
                .map(|p| if *p == PLACEHOLDER { with } else { *p }.to_string())
                .collect()
        };
        let p4 = sub(v4);
        let p6 = sub(v6);
        self.append_v4(
            chain,
            table,
            &p4.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        self.append_v6(
            chain,
            table,
            &p6.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
}

/// Which family an include-CIDR pass writes to (`handleOutboundIncludeRules` gets the V4 or V6
/// append/insert functions).
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl RuleBuilder {
    fn append_family(&mut self, f: Family, chain: &str, table: &str, params: &[&str]) {
        match f {
            Family::V4 => self.append_v4(chain, table, params),
            Family::V6 => self.append_v6(chain, table, params),
        }
    }
    fn insert_family(&mut self, f: Family, chain: &str, table: &str, pos: u32, params: &[&str]) {
        match f {
            Family::V4 => self.insert_v4(chain, table, pos, params),
            Family::V6 => self.insert_v6(chain, table, pos, params),
        }
    }
}

/// The rule lists (v4, v6) newest Istio's `IptablesConfigurator.Run()` builds for `cfg`.
pub fn rule_lists(cfg: &IstioConfig) -> (Vec<Rule>, Vec<Rule>) {
    // FillConfigFromEnvironment fallbacks (UID: `ENVOY_USER` lookup, assumed absent -> 1337).
    let proxy_uid = if cfg.proxy_uid.is_empty() {
        DEFAULT_PROXY_UID.to_string()
    } else {
        cfg.proxy_uid.clone()
    };
    let proxy_gid = if cfg.proxy_gid.is_empty() {
        proxy_uid.clone()
    } else {
        cfg.proxy_gid.clone()
    };
    let tproxy = cfg.inbound_interception_mode == "TPROXY";
    let lb4 = cfg.host_ipv4_loopback_cidr.as_str();
    let lb6 = "::1/128";
    let tun = cfg.inbound_tunnel_port.as_str();
    let mark = cfg.inbound_tproxy_mark.as_str();

    let mut b = RuleBuilder {
        v4: Vec::new(),
        v6: Vec::new(),
        ipv6: cfg.enable_ipv6,
    };

    let (ex4, ex6) = separate_v4_v6(&cfg.outbound_ip_ranges_exclude);
    assert!(
        !ex4.is_wildcard,
        "invalid value for OUTBOUND_IP_RANGES_EXCLUDE"
    );
    let (in4, in6) = separate_v4_v6(&cfg.outbound_ip_ranges_include);

    let redirect_dns = cfg.redirect_dns
        && (cfg.capture_all_dns
            || !cfg.dns_servers_v4.is_empty()
            || !cfg.dns_servers_v6.is_empty());

    // shortCircuitExcludeInterfaces
    for nic in split(&cfg.exclude_interfaces) {
        b.append("PREROUTING", "nat", &["-i", &nic, "-j", "RETURN"]);
        b.append("OUTPUT", "nat", &["-o", &nic, "-j", "RETURN"]);
    }
    if tproxy {
        for nic in split(&cfg.exclude_interfaces) {
            b.append("PREROUTING", "mangle", &["-i", &nic, "-j", "RETURN"]);
            b.append("OUTPUT", "mangle", &["-o", &nic, "-j", "RETURN"]);
        }
    }

    // shortCircuitKubeInternalInterface
    for nic in split(&cfg.kube_virt_interfaces) {
        b.insert("PREROUTING", "nat", 1, &["-i", &nic, "-j", "RETURN"]);
    }

    if cfg.drop_invalid {
        b.append(
            "PREROUTING",
            "mangle",
            &["-m", "conntrack", "--ctstate", "INVALID", "-j", ISTIO_DROP],
        );
        b.append(ISTIO_DROP, "mangle", &["-j", "DROP"]);
    }

    b.append(
        ISTIO_INBOUND,
        "nat",
        &["-p", "tcp", "--dport", tun, "-j", "RETURN"],
    );
    b.append(
        ISTIO_REDIRECT,
        "nat",
        &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &cfg.proxy_port],
    );
    b.append(
        ISTIO_IN_REDIRECT,
        "nat",
        &[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &cfg.inbound_capture_port,
        ],
    );

    // handleInboundPortsInclude
    if !cfg.inbound_ports_include.is_empty() {
        let table = if tproxy {
            b.append(ISTIO_DIVERT, "mangle", &["-j", "MARK", "--set-mark", mark]);
            b.append(ISTIO_DIVERT, "mangle", &["-j", "ACCEPT"]);
            let tproxy_mark = format!("{mark}/0xffffffff");
            b.append_versioned(
                lb4,
                lb6,
                ISTIO_TPROXY,
                "mangle",
                &[
                    "!",
                    "-d",
                    PLACEHOLDER,
                    "-p",
                    "tcp",
                    "-j",
                    "TPROXY",
                    "--tproxy-mark",
                    &tproxy_mark,
                    "--on-port",
                    &cfg.inbound_capture_port,
                ],
            );
            "mangle"
        } else {
            "nat"
        };
        b.append("PREROUTING", table, &["-p", "tcp", "-j", ISTIO_INBOUND]);

        if cfg.inbound_ports_include == "*" {
            for port in split(&cfg.inbound_ports_exclude) {
                b.append(
                    ISTIO_INBOUND,
                    table,
                    &["-p", "tcp", "--dport", &port, "-j", "RETURN"],
                );
            }
            if tproxy {
                b.append(
                    ISTIO_INBOUND,
                    "mangle",
                    &[
                        "-p",
                        "tcp",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "RELATED,ESTABLISHED",
                        "-j",
                        ISTIO_DIVERT,
                    ],
                );
                b.append(ISTIO_INBOUND, "mangle", &["-p", "tcp", "-j", ISTIO_TPROXY]);
            } else {
                b.append(
                    ISTIO_INBOUND,
                    "nat",
                    &["-p", "tcp", "-j", ISTIO_IN_REDIRECT],
                );
            }
        } else {
            for port in split(&cfg.inbound_ports_include) {
                if tproxy {
                    b.append(
                        ISTIO_INBOUND,
                        "mangle",
                        &[
                            "-p",
                            "tcp",
                            "--dport",
                            &port,
                            "-m",
                            "conntrack",
                            "--ctstate",
                            "RELATED,ESTABLISHED",
                            "-j",
                            ISTIO_DIVERT,
                        ],
                    );
                    b.append(
                        ISTIO_INBOUND,
                        "mangle",
                        &["-p", "tcp", "--dport", &port, "-j", ISTIO_TPROXY],
                    );
                } else {
                    b.append(
                        ISTIO_INBOUND,
                        "nat",
                        &["-p", "tcp", "--dport", &port, "-j", ISTIO_IN_REDIRECT],
                    );
                }
            }
        }
    }

    // All protocols jump; UDP is sorted out inside ISTIO_OUTPUT.
    b.append("OUTPUT", "nat", &["-j", ISTIO_OUTPUT]);

    for port in split(&cfg.outbound_ports_exclude) {
        b.append(
            ISTIO_OUTPUT,
            "nat",
            &["-p", "tcp", "--dport", &port, "-j", "RETURN"],
        );
        b.append(
            ISTIO_OUTPUT,
            "nat",
            &["-p", "udp", "--dport", &port, "-j", "RETURN"],
        );
    }

    b.append_versioned(
        "127.0.0.6/32",
        "::6/128",
        ISTIO_OUTPUT,
        "nat",
        &["-o", "lo", "-s", PLACEHOLDER, "-j", "RETURN"],
    );

    let include_has_loopback = in4.has_loopback_ip || in6.has_loopback_ip;
    let dns_and_tunnel = format!("53,{tun}");

    for uid in split(&proxy_uid) {
        if redirect_dns {
            b.append_versioned(
                lb4,
                lb6,
                ISTIO_OUTPUT,
                "nat",
                &[
                    "-o",
                    "lo",
                    "!",
                    "-d",
                    PLACEHOLDER,
                    "-p",
                    "tcp",
                    "-m",
                    "multiport",
                    "!",
                    "--dports",
                    &dns_and_tunnel,
                    "-m",
                    "owner",
                    "--uid-owner",
                    &uid,
                    "-j",
                    ISTIO_IN_REDIRECT,
                ],
            );
        } else {
            b.append_versioned(
                lb4,
                lb6,
                ISTIO_OUTPUT,
                "nat",
                &[
                    "-o",
                    "lo",
                    "!",
                    "-d",
                    PLACEHOLDER,
                    "-p",
                    "tcp",
                    "!",
                    "--dport",
                    tun,
                    "-m",
                    "owner",
                    "--uid-owner",
                    &uid,
                    "-j",
                    ISTIO_IN_REDIRECT,
                ],
            );
        }
        if !include_has_loopback {
            if redirect_dns {
                b.append(
                    ISTIO_OUTPUT,
                    "nat",
                    &[
                        "-o",
                        "lo",
                        "-p",
                        "tcp",
                        "!",
                        "--dport",
                        "53",
                        "-m",
                        "owner",
                        "!",
                        "--uid-owner",
                        &uid,
                        "-j",
                        "RETURN",
                    ],
                );
            } else {
                b.append(
                    ISTIO_OUTPUT,
                    "nat",
                    &[
                        "-o",
                        "lo",
                        "-m",
                        "owner",
                        "!",
                        "--uid-owner",
                        &uid,
                        "-j",
                        "RETURN",
                    ],
                );
            }
        }
        b.append(
            ISTIO_OUTPUT,
            "nat",
            &["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"],
        );
    }

    for gid in split(&proxy_gid) {
        // No port-53 variant for GIDs (upstream asymmetry).
        b.append_versioned(
            lb4,
            lb6,
            ISTIO_OUTPUT,
            "nat",
            &[
                "-o",
                "lo",
                "!",
                "-d",
                PLACEHOLDER,
                "-p",
                "tcp",
                "!",
                "--dport",
                tun,
                "-m",
                "owner",
                "--gid-owner",
                &gid,
                "-j",
                ISTIO_IN_REDIRECT,
            ],
        );
        if !include_has_loopback {
            if redirect_dns {
                b.append(
                    ISTIO_OUTPUT,
                    "nat",
                    &[
                        "-o",
                        "lo",
                        "-p",
                        "tcp",
                        "!",
                        "--dport",
                        "53",
                        "-m",
                        "owner",
                        "!",
                        "--gid-owner",
                        &gid,
                        "-j",
                        "RETURN",
                    ],
                );
            } else {
                b.append(
                    ISTIO_OUTPUT,
                    "nat",
                    &[
                        "-o",
                        "lo",
                        "-m",
                        "owner",
                        "!",
                        "--gid-owner",
                        &gid,
                        "-j",
                        "RETURN",
                    ],
                );
            }
        }
        b.append(
            ISTIO_OUTPUT,
            "nat",
            &["-m", "owner", "--gid-owner", &gid, "-j", "RETURN"],
        );
    }

    // handleCaptureByOwnerGroup (ParseInterceptFilter)
    if cfg.owner_groups_include == "*" {
        for group in split(&cfg.owner_groups_exclude) {
            b.append(
                ISTIO_OUTPUT,
                "nat",
                &["-m", "owner", "--gid-owner", &group, "-j", "RETURN"],
            );
        }
    } else {
        let groups = split(&cfg.owner_groups_include);
        let mut params: Vec<&str> = Vec::new();
        for group in &groups {
            params.extend(["-m", "owner", "!", "--gid-owner", group.as_str()]);
        }
        params.extend(["-j", "RETURN"]);
        b.append(ISTIO_OUTPUT, "nat", &params);
    }

    if redirect_dns {
        setup_dns_redir(
            &mut b,
            &proxy_uid,
            &proxy_gid,
            &cfg.dns_servers_v4,
            &cfg.dns_servers_v6,
            cfg.capture_all_dns,
        );
    }

    b.append_versioned(
        lb4,
        lb6,
        ISTIO_OUTPUT,
        "nat",
        &["-d", PLACEHOLDER, "-j", "RETURN"],
    );
    for cidr in &ex4.cidrs {
        b.append_v4(ISTIO_OUTPUT, "nat", &["-d", cidr, "-j", "RETURN"]);
    }
    for cidr in &ex6.cidrs {
        b.append_v6(ISTIO_OUTPUT, "nat", &["-d", cidr, "-j", "RETURN"]);
    }

    // handleOutboundPortsInclude
    for port in split(&cfg.outbound_ports_include) {
        b.append(
            ISTIO_OUTPUT,
            "nat",
            &["-p", "tcp", "--dport", &port, "-j", ISTIO_REDIRECT],
        );
    }

    // handleOutboundIncludeRules, v4 then v6
    for (range, family) in [(&in4, Family::V4), (&in6, Family::V6)] {
        if range.is_wildcard {
            b.append_family(family, ISTIO_OUTPUT, "nat", &["-j", ISTIO_REDIRECT]);
            for nic in split(&cfg.kube_virt_interfaces) {
                b.insert_family(
                    family,
                    "PREROUTING",
                    "nat",
                    1,
                    &["-i", &nic, "-j", ISTIO_REDIRECT],
                );
            }
        } else {
            for cidr in &range.cidrs {
                for nic in split(&cfg.kube_virt_interfaces) {
                    b.insert_family(
                        family,
                        "PREROUTING",
                        "nat",
                        1,
                        &["-i", &nic, "-d", cidr, "-j", ISTIO_REDIRECT],
                    );
                }
                b.append_family(
                    family,
                    ISTIO_OUTPUT,
                    "nat",
                    &["-d", cidr, "-j", ISTIO_REDIRECT],
                );
            }
        }
    }

    if tproxy {
        b.append(
            "PREROUTING",
            "mangle",
            &[
                "-p",
                "tcp",
                "-m",
                "mark",
                "--mark",
                mark,
                "-j",
                "CONNMARK",
                "--save-mark",
            ],
        );
        b.append(
            "OUTPUT",
            "mangle",
            &[
                "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN",
            ],
        );
        for (flag, ids) in [("--uid-owner", &proxy_uid), ("--gid-owner", &proxy_gid)] {
            for id in split(ids) {
                b.append_versioned(
                    lb4,
                    lb6,
                    "OUTPUT",
                    "mangle",
                    &[
                        "!",
                        "-d",
                        PLACEHOLDER,
                        "-p",
                        "tcp",
                        "-o",
                        "lo",
                        "-m",
                        "owner",
                        flag,
                        &id,
                        "-j",
                        "MARK",
                        "--set-mark",
                        OUTBOUND_MARK,
                    ],
                );
            }
        }
        b.append(
            "OUTPUT",
            "mangle",
            &[
                "-p",
                "tcp",
                "-m",
                "connmark",
                "--mark",
                mark,
                "-j",
                "CONNMARK",
                "--restore-mark",
            ],
        );
        b.insert(
            ISTIO_INBOUND,
            "mangle",
            1,
            &["-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN"],
        );
        b.insert_v4(
            ISTIO_INBOUND,
            "mangle",
            2,
            &[
                "-p",
                "tcp",
                "-s",
                "127.0.0.6/32",
                "-i",
                "lo",
                "-j",
                "RETURN",
            ],
        );
        b.insert_v6(
            ISTIO_INBOUND,
            "mangle",
            2,
            &["-p", "tcp", "-s", "::6/128", "-i", "lo", "-j", "RETURN"],
        );
        b.insert(
            ISTIO_INBOUND,
            "mangle",
            3,
            &[
                "-p",
                "tcp",
                "-i",
                "lo",
                "-m",
                "mark",
                "!",
                "--mark",
                OUTBOUND_MARK,
                "-j",
                "RETURN",
            ],
        );
    }

    (b.v4, b.v6)
}

/// Istio's `SetupDNSRedir` (+ `addDNSConntrackZones`): nat/raw `ISTIO_OUTPUT_DNS` and raw
/// `ISTIO_INBOUND`.
fn setup_dns_redir(
    b: &mut RuleBuilder,
    proxy_uid: &str,
    proxy_gid: &str,
    servers_v4: &[String],
    servers_v6: &[String],
    capture_all: bool,
) {
    b.append("OUTPUT", "raw", &["-j", ISTIO_OUTPUT_DNS]);
    if capture_all || !servers_v4.is_empty() {
        b.append_v4(ISTIO_OUTPUT, "nat", &["-j", ISTIO_OUTPUT_DNS]);
    }
    if capture_all || !servers_v6.is_empty() {
        b.append_v6(ISTIO_OUTPUT, "nat", &["-j", ISTIO_OUTPUT_DNS]);
    }

    // TCP (`--to-ports`), then UDP (`--to-port`).
    for (proto, to) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
        if capture_all {
            b.append(
                ISTIO_OUTPUT_DNS,
                "nat",
                &[
                    "-p",
                    proto,
                    "--dport",
                    "53",
                    "-j",
                    "REDIRECT",
                    to,
                    AGENT_DNS_PORT,
                ],
            );
        } else {
            for s in servers_v4 {
                let dst = format!("{s}/32");
                b.append_v4(
                    ISTIO_OUTPUT_DNS,
                    "nat",
                    &[
                        "-p",
                        proto,
                        "--dport",
                        "53",
                        "-d",
                        &dst,
                        "-j",
                        "REDIRECT",
                        to,
                        AGENT_DNS_PORT,
                    ],
                );
            }
            for s in servers_v6 {
                let dst = format!("{s}/128");
                b.append_v6(
                    ISTIO_OUTPUT_DNS,
                    "nat",
                    &[
                        "-p",
                        proto,
                        "--dport",
                        "53",
                        "-d",
                        &dst,
                        "-j",
                        "REDIRECT",
                        to,
                        AGENT_DNS_PORT,
                    ],
                );
            }
        }
    }

    // addDNSConntrackZones
    for (flag, ids) in [("--uid-owner", proxy_uid), ("--gid-owner", proxy_gid)] {
        for id in split(ids) {
            b.append(
                ISTIO_OUTPUT_DNS,
                "raw",
                &[
                    "-p", "udp", "--dport", "53", "-m", "owner", flag, &id, "-j", "CT", "--zone",
                    "1",
                ],
            );
            b.append(
                ISTIO_OUTPUT_DNS,
                "raw",
                &[
                    "-p",
                    "udp",
                    "--sport",
                    AGENT_DNS_PORT,
                    "-m",
                    "owner",
                    flag,
                    &id,
                    "-j",
                    "CT",
                    "--zone",
                    "2",
                ],
            );
        }
    }
    if capture_all {
        b.append("PREROUTING", "raw", &["-j", ISTIO_INBOUND]);
        b.append(
            ISTIO_OUTPUT_DNS,
            "raw",
            &["-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2"],
        );
        b.append(
            ISTIO_INBOUND,
            "raw",
            &["-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1"],
        );
    } else {
        if !servers_v4.is_empty() {
            b.append_v4("PREROUTING", "raw", &["-j", ISTIO_INBOUND]);
        }
        for s in servers_v4 {
            let addr = format!("{s}/32");
            b.append_v4(
                ISTIO_OUTPUT_DNS,
                "raw",
                &[
                    "-p", "udp", "--dport", "53", "-d", &addr, "-j", "CT", "--zone", "2",
                ],
            );
            b.append_v4(
                ISTIO_INBOUND,
                "raw",
                &[
                    "-p", "udp", "--sport", "53", "-s", &addr, "-j", "CT", "--zone", "1",
                ],
            );
        }
        if !servers_v6.is_empty() {
            b.append_v6("PREROUTING", "raw", &["-j", ISTIO_INBOUND]);
        }
        for s in servers_v6 {
            let addr = format!("{s}/128");
            b.append_v6(
                ISTIO_OUTPUT_DNS,
                "raw",
                &[
                    "-p", "udp", "--dport", "53", "-d", &addr, "-j", "CT", "--zone", "2",
                ],
            );
            b.append_v6(
                ISTIO_INBOUND,
                "raw",
                &[
                    "-p", "udp", "--sport", "53", "-s", &addr, "-j", "CT", "--zone", "1",
                ],
            );
        }
    }
}

/// Istio's `buildRestore`: per table, `-N` for every non-built-in chain that receives a rule
/// (first appearance), then `-N` for pure jump targets, then the rules; tables sorted, empty
/// tables omitted.
pub fn build_restore(rules: &[Rule]) -> String {
    let mut tables: BTreeMap<String, Vec<String>> = ["filter", "nat", "mangle"]
        .iter()
        .map(|t| (t.to_string(), Vec::new()))
        .collect();
    let mut seen: Vec<(String, String)> = Vec::new();
    let builtin = |name: &str| BUILTIN_CHAINS_AND_TARGETS.contains(&name);

    for r in rules {
        let key = (r.chain.clone(), r.table.clone());
        if !seen.contains(&key) {
            seen.push(key);
            if !builtin(&r.chain) {
                tables
                    .entry(r.table.clone())
                    .or_default()
                    .push(format!("-N {}", r.chain));
            }
        }
    }
    for r in rules {
        let n = r.params.len();
        if n >= 2 && r.params[n - 2] == "-j" {
            let target = &r.params[n - 1];
            let key = (target.clone(), r.table.clone());
            if !seen.contains(&key) {
                seen.push(key);
                if !builtin(target) {
                    tables
                        .entry(r.table.clone())
                        .or_default()
                        .push(format!("-N {target}"));
                }
            }
        }
    }
    for r in rules {
        tables
            .entry(r.table.clone())
            .or_default()
            .push(r.params.join(" "));
    }

    let mut out = String::new();
    for (table, lines) in &tables {
        if lines.is_empty() {
            continue;
        }
        out.push_str(&format!("* {table}\n"));
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The `iptables-restore` (IPv4) and `ip6tables-restore` (IPv6) inputs newest Istio generates for
/// `cfg`; the IPv6 text is empty when IPv6 is off.
///
/// Empty `proxy_uid` follows Istio's fallback with no `istio-proxy` user present (`1337`); empty
/// `proxy_gid` becomes the UID string.
pub fn restore_texts(cfg: &IstioConfig) -> (String, String) {
    let (v4, v6) = rule_lists(cfg);
    (build_restore(&v4), build_restore(&v6))
}
