//! The typed, validated configuration: [`RawArgs`] plus detection become one [`Config`], or an
//! error naming the flag, its environment variables and the value. Everything after this
//! point works on typed values only.

pub mod detect;
pub mod types;
pub mod uid_ports;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{self, RawArgs, Setting, Source};
use detect::{DnsServer, Host};
use types::{
    parse_decimal, parse_go_bool, parse_go_duration, parse_ids, parse_ifnames, parse_ports,
    split_list, Cidr, CidrsByFamily, GroupRef, IfName, Port, PortRange,
};
use uid_ports::{parse_uid_port_excludes, UidPortExclude};

/// Istio's fallback proxy UID when `ENVOY_USER` cannot be resolved.
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Istio limits the include list of owner groups: all of them end up in one iptables rule.
pub const MAX_OWNER_GROUPS_INCLUDE: usize = 64;
/// `--retries` at most: attempts are bounded by `--timeout` anyway; more than this is a typo.
pub const MAX_RETRIES: u32 = 100;
/// `--retry-pause` at least: a shorter pause would only spin against a lock or busy kernel.
pub const MIN_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// How inbound connections reach the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterceptMode {
    /// nat REDIRECT: the proxy reads the original destination with SO_ORIGINAL_DST.
    Redirect,
    /// mangle TPROXY: the original destination stays the socket's local address.
    Tproxy,
}

/// Which inbound ports are captured (`-b`, with `-d` for the wildcard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundCapture {
    /// `-b ""`: no inbound capture.
    None,
    /// `-b '*'`: every port except `exclude`.
    All {
        /// `-d`: ports never captured inbound.
        exclude: Vec<PortRange>,
    },
    /// A port list. May be empty when `-b` held only commas: Istio still installs the dispatch
    /// jump then, and so does meshinit.
    Ports(Vec<PortRange>),
}

/// Which outbound destinations are captured (`-i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundInclude {
    /// `-i '*'`: every destination, except `-x` and localhost.
    All,
    /// `-i` as a CIDR list: only these destinations (empty: none).
    Cidrs(CidrsByFamily),
}

/// Whose outbound traffic is captured, by group (`ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerGroups {
    /// Everyone's, except these groups.
    AllExcept(Vec<GroupRef>),
    /// Only these groups' (possibly none).
    Only(Vec<GroupRef>),
}

/// DNS capture, after detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsCapture {
    /// DNS is not captured (`--redirect-dns` off, or no server known).
    Off,
    /// Every server (`--capture-all-dns`).
    All,
    /// Only these servers, split by family.
    Servers {
        /// IPv4 servers, in resolv.conf order.
        v4: Vec<DnsServer>,
        /// IPv6 servers, in resolv.conf order.
        v6: Vec<DnsServer>,
    },
}

/// Everything that decides which rules, routes and addresses are installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// -p: the proxy's outbound listener, target of ISTIO_REDIRECT.
    pub proxy_port: Port,
    /// -z: the proxy's inbound listener, target of inbound REDIRECT or TPROXY.
    pub inbound_capture_port: Port,
    /// -e: the HBONE tunnel port, never captured.
    pub inbound_tunnel_port: Port,
    /// -u: the proxy's UIDs; their traffic is not captured outbound.
    pub proxy_uids: Vec<u32>,
    /// -g: the proxy's GIDs (default: the UIDs' numbers); their traffic is not captured.
    pub proxy_gids: Vec<u32>,
    /// -m: REDIRECT or TPROXY for inbound.
    pub mode: InterceptMode,
    /// -t: the fwmark TPROXY puts on diverted packets.
    pub tproxy_mark: u32,
    /// -r: the policy-routing table that delivers marked packets locally.
    pub route_table: u32,
    /// -b and -d: which inbound ports are captured.
    pub inbound: InboundCapture,
    /// -c: interfaces whose traffic is never captured.
    pub exclude_interfaces: Vec<IfName>,
    /// -k: KubeVirt VM interfaces; their arriving traffic is captured as outbound.
    pub virt_interfaces: Vec<IfName>,
    /// -i: outbound destinations captured.
    pub outbound_include: OutboundInclude,
    /// -x: outbound destinations never captured.
    pub outbound_exclude: CidrsByFamily,
    /// -q: outbound TCP ports captured even to destinations outside `-i`.
    pub outbound_ports_include: Vec<PortRange>,
    /// -o: outbound ports never captured (TCP and UDP).
    pub outbound_ports_exclude: Vec<PortRange>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`: whose outbound traffic is captured.
    pub owner_groups: OwnerGroups,
    /// Replaces 127.0.0.1/32 in the "localhost" rules; printed as given.
    pub loopback_v4: Cidr,
    /// `--redirect-dns`, `--capture-all-dns`: which DNS traffic goes to the agent.
    pub dns: DnsCapture,
    /// `--drop-invalid`: drop conntrack-INVALID packets in mangle.
    pub drop_invalid: bool,
    /// Whether IPv6 rules are installed (`--ipv6`, else detected).
    pub ipv6: bool,
    /// `--exclude-inbound-sources` (meshinit's own): inbound connections from these networks
    /// are never captured. Empty: Istio's rules unchanged.
    pub inbound_exclude_sources: CidrsByFamily,
    /// `--exclude-outbound-ports-for-uids` (meshinit's own): per-uid outbound port
    /// exclusions. Empty: Istio's rules unchanged.
    pub outbound_uid_port_excludes: Vec<UidPortExclude>,
}

/// Which backend installs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// Istio's default, iptables, unless no iptables tool is installed and nftables is there.
    Auto,
    /// The iptables tools, legacy or nft variant.
    Iptables,
    /// Native nf_tables over netlink (`--native-nftables`, `--backend nftables`).
    Nftables,
}

/// When the native nftables backend turns a run of rules that differ in one CIDR or port into
/// one rule with a set lookup (`--nft-sets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftSets {
    /// Runs longer than [`crate::render::nft_ruleset::SET_THRESHOLD`] rules; shorter lists keep
    /// Istio's exact text.
    Auto,
    /// Every run of two or more rules.
    Always,
    /// Never: one rule per entry, as Istio writes it.
    Never,
}

/// Which iptables variant to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IptablesVariant {
    /// `iptables-legacy`: the x_tables kernel interface.
    Legacy,
    /// `iptables-nft`: iptables syntax over nf_tables.
    Nft,
}

pub use crate::log::LogLevel;

/// The mark Istio puts on the proxy's own connections to the pod's address under TPROXY (a
/// plan fact, re-exported by `plan`; here because a TPROXY mark flag may not take it).
pub const OUTBOUND_MARK: u32 = 1338;

/// Everything about how meshinit runs, as opposed to what it installs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// -n: print the rules instead of applying them.
    pub dry_run: bool,
    /// `--skip-rule-apply`: install nothing (with `--run-validation`).
    pub skip_rule_apply: bool,
    /// `--run-validation`: probe that redirection works after applying.
    pub run_validation: bool,
    /// `--iptables-probe-port`: the validation probe's original destination port.
    pub probe_port: Port,
    /// `--probe-timeout`: how long validation waits for a redirected connection.
    pub probe_timeout: Duration,
    /// `--network-namespace`: the namespace to enter first; `None` for the current one.
    pub network_namespace: Option<PathBuf>,
    /// `--cni-mode`: use a lock file of this namespace instead of the host's xtables lock.
    pub cni_mode: bool,
    /// `--reconcile`: replace drifted rules of ours instead of refusing.
    pub reconcile: bool,
    /// `--cleanup-only`: only remove what this configuration would install.
    pub cleanup_only: bool,
    /// `--force-apply`: rewrite the rules even when they are already in place.
    pub force_apply: bool,
    /// `--backend`, with Istio's `--native-nftables` folded in.
    pub backend: BackendChoice,
    /// `--nft-sets`: when the native nftables backend uses set lookups.
    pub nft_sets: NftSets,
    /// `--force-iptables-binary`: the variant to use; `None` to detect it per family.
    pub force_iptables_binary: Option<IptablesVariant>,
    /// `--xtables-wait`: how long to wait for the xtables lock and meshinit's namespace lock.
    pub xtables_wait: Duration,
    /// `--timeout`: the run's deadline for helper programs (the iptables tools), and for
    /// every attempt under `--retries`.
    pub timeout: Duration,
    /// `--retries`: how many times a transient failure is tried again (0: never).
    pub retries: u32,
    /// `--retry-pause`: the pause before each further attempt.
    pub retry_pause: Duration,
    /// `--check`: compare the live rules with the plan; change nothing.
    pub check: bool,
    /// `--log_output_level` (the `default` scope).
    pub log_level: LogLevel,
    /// `--log_as_json`: JSON log lines instead of text.
    pub log_json: bool,
}

/// The whole configuration, plus the warnings found while building it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// What gets installed.
    pub capture: Capture,
    /// How this run behaves.
    pub run: RunOptions,
    /// Non-fatal findings (ignored flags, empty owner groups), logged before running.
    pub warnings: Vec<String>,
    /// Why IPv6 is on or off (the flag, or what detection saw), logged with the configuration.
    pub ipv6_reason: String,
}

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Bad input: exit code 2.
    #[error("invalid value {} for {setting} (from {origin}): {reason}", shown_value(.value))]
    Invalid {
        /// The setting as error messages name it (flag, short name, env names).
        setting: String,
        /// The rejected text.
        value: String,
        /// Where the text came from.
        origin: Source,
        /// What is wrong with it.
        reason: String,
    },
    /// Detection failed on this machine: exit code 1.
    #[error("{0}")]
    Detection(String),
}

fn invalid(setting: String, s: &Setting, reason: impl Into<String>) -> ConfigError {
    let mut reason = reason.into();
    if s.value.len() >= ARG_LIMIT_SUSPECT {
        reason.push_str(&format!(
            " (the value is {} bytes, at the kernel's limit of 128 KiB for one argument or \
             environment variable, about 8,000 CIDRs: it was probably cut off; shorten the \
             list, e.g. by merging adjacent CIDRs)",
            s.value.len()
        ));
    }
    ConfigError::Invalid {
        setting,
        value: s.value.clone(),
        origin: s.source.clone(),
        reason,
    }
}

/// The kernel refuses a single argument or environment string longer than 128 KiB
/// (`MAX_ARG_STRLEN`); a list this close to it was most likely cut off by whatever built it.
const ARG_LIMIT_SUSPECT: usize = 128 * 1024 - 1024;

/// A rejected value as an error message quotes it: whole when short, else its start and end
/// with its size, so that a list of thousands of CIDRs does not fill the log.
fn shown_value(value: &str) -> String {
    const LONG: usize = 200;
    if value.len() <= LONG {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(80).collect();
    let tail: String = {
        let mut t: Vec<char> = value.chars().rev().take(60).collect();
        t.reverse();
        t.into_iter().collect()
    };
    format!(
        "{head:?} … {tail:?} ({} bytes, {} entries)",
        value.len(),
        value.split(',').filter(|e| !e.is_empty()).count()
    )
}

/// Reads and checks one setting at a time, so every error carries the setting's names.
struct Reader<'a> {
    raw: &'a RawArgs,
}

impl Reader<'_> {
    fn flag<T>(
        &self,
        long: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let setting = self.raw.get(long);
        parse(&setting.value).map_err(|reason| invalid(cli::flag(long).describe(), setting, reason))
    }

    fn env_only<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let setting = self.raw.env_only(name);
        parse(&setting.value).map_err(|reason| invalid(format!("{name} (env)"), setting, reason))
    }

    fn bool(&self, long: &str) -> Result<bool, ConfigError> {
        self.flag(long, parse_go_bool)
    }

    fn is_set(&self, long: &str) -> bool {
        self.raw.get(long).source != Source::Default
    }
}

/// Modes that cannot be combined: `--check` only reads, `--cleanup-only` removes, and a dry run
/// of `--check` would be a check that does not check. Refused (exit 2) naming both flags.
fn contradictory_modes(r: &Reader<'_>, run: &RunOptions) -> Result<(), ConfigError> {
    let pairs = [
        (run.check && run.cleanup_only, "check", "cleanup-only"),
        (run.check && run.dry_run, "check", "dry-run"),
    ];
    for (both, first, second) in pairs {
        if both {
            let setting = r.raw.get(first);
            return Err(invalid(
                cli::flag(first).describe(),
                setting,
                format!(
                    "--{first} contradicts --{second}: --check compares the live rules and changes nothing; run them separately"
                ),
            ));
        }
    }
    Ok(())
}

/// A pause before a retry as long as the whole run's deadline leaves no time for a retry:
/// refused (exit 2) naming both flags, rather than silently never retrying.
fn retry_within_timeout(r: &Reader<'_>, run: &RunOptions) -> Result<(), ConfigError> {
    if run.retries == 0 || run.retry_pause < run.timeout {
        return Ok(());
    }
    Err(invalid(
        cli::flag("retry-pause").describe(),
        r.raw.get("retry-pause"),
        format!(
            "the pause before a retry must be shorter than --timeout ({}), the deadline of the whole run including its retries",
            crate::go_duration::go_duration(run.timeout)
        ),
    ))
}

/// An IPv6 network inside `::ffff:0:0/96`, the IPv4-mapped addresses.
fn is_ipv4_mapped(cidr: &Cidr) -> bool {
    match cidr.addr() {
        std::net::IpAddr::V6(a) => cidr.prefix_len() >= 96 && a.to_ipv4_mapped().is_some(),
        std::net::IpAddr::V4(_) => false,
    }
}

impl Config {
    /// Builds the configuration, consulting `host` only for what the arguments leave to
    /// detection.
    pub fn build(raw: &RawArgs, host: &dyn Host) -> Result<Config, ConfigError> {
        let r = Reader { raw };
        let mut warnings = Vec::new();

        let proxy_port = r.flag("envoy-port", str::parse)?;
        let inbound_capture_port = r.flag("inbound-capture-port", str::parse)?;
        let inbound_tunnel_port = r.flag("inbound-tunnel-port", str::parse)?;

        let proxy_uids = r.flag("proxy-uid", non_empty_ids)?;
        let proxy_uids = match proxy_uids {
            Some(uids) => uids,
            None => {
                let (uid, warning) =
                    r.env_only("ENVOY_USER", |user| Ok(default_proxy_uid(host, user)))?;
                // Only a user someone named is worth a warning; the default is often absent.
                if raw.env_only("ENVOY_USER").source != crate::cli::Source::Default {
                    warnings.extend(warning);
                }
                vec![uid]
            }
        };
        // Istio's default: the GIDs are the UIDs' numbers.
        let proxy_gids = r
            .flag("proxy-gid", non_empty_ids)?
            .unwrap_or_else(|| proxy_uids.clone());

        let mode = r.flag("istio-inbound-interception-mode", |s| match s {
            "" | "REDIRECT" => Ok(InterceptMode::Redirect),
            "TPROXY" => Ok(InterceptMode::Tproxy),
            _ => Err("the mode must be REDIRECT or TPROXY (upper case)".to_string()),
        })?;
        let tproxy_mark = r.flag("istio-inbound-tproxy-mark", parse_mark)?;
        let route_table = r.flag("istio-inbound-tproxy-route-table", parse_route_table)?;

        let inbound_exclude = r.flag("istio-local-exclude-ports", parse_ports)?;
        let inbound = r.flag("istio-inbound-ports", |s| match s {
            "" => Ok(InboundCapture::None),
            "*" => Ok(InboundCapture::All {
                exclude: inbound_exclude.clone(),
            }),
            list => parse_ports(list).map(InboundCapture::Ports),
        })?;
        let exclude_interfaces = r.flag("istio-exclude-interfaces", parse_ifnames)?;
        let virt_interfaces = r.flag("kube-virt-interfaces", parse_ifnames)?;
        let outbound_include = r.flag("istio-service-cidr", |s| match s {
            "*" => Ok(OutboundInclude::All),
            list => CidrsByFamily::parse(list).map(OutboundInclude::Cidrs),
        })?;
        let outbound_exclude = r.flag("istio-service-exclude-cidr", |s| match s {
            "*" => Err("'*' would exclude every destination; list CIDRs instead".to_string()),
            list => CidrsByFamily::parse(list),
        })?;
        let inbound_exclude_sources = r.flag("exclude-inbound-sources", |s| match s {
            "*" => Err("'*' would exclude every source; list CIDRs instead".to_string()),
            list => {
                let cidrs = CidrsByFamily::parse(list)?;
                for cidr in cidrs.v4.iter().chain(&cidrs.v6) {
                    // A /0 is every source of its family: inbound capture silently off, the
                    // opposite of what a list of exceptions is for.
                    if cidr.prefix_len() == 0 {
                        return Err(format!(
                            "{cidr} is every source of its family, which turns inbound capture off; list the networks to exclude (or capture no inbound port with -b \"\")"
                        ));
                    }
                    // The kernel sends an IPv4 peer's packets as IPv4, never as ::ffff:a.b.c.d:
                    // such a network would be installed for IPv6 and never match.
                    if is_ipv4_mapped(cidr) {
                        return Err(format!(
                            "{cidr} is an IPv4-mapped IPv6 network, which no packet carries (IPv4 peers arrive as IPv4); write the IPv4 network instead"
                        ));
                    }
                }
                Ok(cidrs)
            }
        })?;
        // Istio takes IPv4-mapped networks in its own flags (into ip6tables, where they never
        // match): kept for compatibility, but said.
        let none = CidrsByFamily::default();
        let included_cidrs = match &outbound_include {
            OutboundInclude::Cidrs(c) => c,
            OutboundInclude::All => &none,
        };
        for (long, cidrs) in [
            ("istio-service-exclude-cidr", &outbound_exclude),
            ("istio-service-cidr", included_cidrs),
        ] {
            for cidr in cidrs.v6.iter().filter(|c| is_ipv4_mapped(c)) {
                warnings.push(format!(
                    "{}: {cidr} is an IPv4-mapped IPv6 network; as in Istio it is installed for IPv6, where no packet carries such an address (IPv4 traffic is IPv4): it never matches; write the IPv4 network instead",
                    crate::cli::flag(long).describe()
                ));
            }
        }
        // The kernel masks an address with host bits to its network; say what it will hold.
        let included: &[&CidrsByFamily] = match &outbound_include {
            OutboundInclude::Cidrs(c) => &[c],
            OutboundInclude::All => &[],
        };
        for (long, cidrs) in included.iter().map(|c| ("istio-service-cidr", *c)).chain([
            ("istio-service-exclude-cidr", &outbound_exclude),
            ("exclude-inbound-sources", &inbound_exclude_sources),
        ]) {
            for cidr in cidrs.v4.iter().chain(&cidrs.v6) {
                if let Some(network) = cidr.masked_if_host_bits() {
                    warnings.push(format!(
                        "{}: {cidr} has host bits set; the kernel stores it as {network}, which is what will match",
                        crate::cli::flag(long).describe()
                    ));
                }
            }
        }
        let no_sources = inbound_exclude_sources == CidrsByFamily::default();
        if inbound == InboundCapture::None && !no_sources {
            warnings.push(format!(
                "{} has no effect: no inbound port is captured (-b is empty)",
                crate::cli::flag("exclude-inbound-sources").describe()
            ));
        }
        let outbound_ports_include = r.flag("istio-outbound-ports", parse_ports)?;
        let outbound_ports_exclude = r.flag("istio-local-outbound-ports-exclude", parse_ports)?;
        let outbound_uid_port_excludes =
            r.flag("exclude-outbound-ports-for-uids", parse_uid_port_excludes)?;

        let groups_exclude = r.env_only("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", parse_groups)?;
        let owner_groups = r.env_only("ISTIO_OUTBOUND_OWNER_GROUPS", |s| {
            if s == "*" {
                return Ok(OwnerGroups::AllExcept(groups_exclude.clone()));
            }
            let groups = parse_groups(s)?;
            if groups.len() > MAX_OWNER_GROUPS_INCLUDE {
                return Err(format!(
                    "at most {MAX_OWNER_GROUPS_INCLUDE} groups can be listed, got {}",
                    groups.len()
                ));
            }
            Ok(OwnerGroups::Only(groups))
        })?;
        if owner_groups == OwnerGroups::Only(Vec::new()) {
            warnings.push(
                "ISTIO_OUTBOUND_OWNER_GROUPS is empty: no outbound traffic will be captured"
                    .to_string(),
            );
        }
        let loopback_v4 = r.env_only("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", parse_loopback_cidr)?;

        let redirect_dns = r.bool("redirect-dns")?;
        let capture_all_dns = r.bool("capture-all-dns")?;
        let drop_invalid = r.bool("drop-invalid")?;
        let dual_stack = r.bool("dual-stack")?;
        let ipv6_choice = r.flag("ipv6", |s| match s {
            "auto" => Ok(None),
            other => parse_go_bool(other)
                .map(Some)
                .map_err(|_| "expected auto, true or false".to_string()),
        })?;
        let dns_servers_flag = r.flag("dns-servers", parse_dns_servers)?;

        let run = RunOptions {
            dry_run: r.bool("dry-run")?,
            skip_rule_apply: r.bool("skip-rule-apply")?,
            run_validation: r.bool("run-validation")?,
            probe_port: r.flag("iptables-probe-port", str::parse)?,
            probe_timeout: r.flag("probe-timeout", parse_go_duration)?,
            network_namespace: r.flag("network-namespace", |s| {
                Ok((!s.is_empty()).then(|| PathBuf::from(s)))
            })?,
            cni_mode: r.bool("cni-mode")?,
            reconcile: r.bool("reconcile")?,
            cleanup_only: r.bool("cleanup-only")?,
            force_apply: r.bool("force-apply")?,
            backend: {
                let native = r.bool("native-nftables")?;
                r.flag("backend", |s| match (s, native) {
                    ("auto", false) => Ok(BackendChoice::Auto),
                    ("auto" | "nftables", true) | ("nftables", false) => {
                        Ok(BackendChoice::Nftables)
                    }
                    ("iptables", false) => Ok(BackendChoice::Iptables),
                    ("iptables", true) => Err("contradicts --native-nftables=true".to_string()),
                    _ => Err("expected auto, iptables or nftables".to_string()),
                })?
            },
            nft_sets: r.flag("nft-sets", |s| match s {
                "auto" => Ok(NftSets::Auto),
                "always" => Ok(NftSets::Always),
                "never" => Ok(NftSets::Never),
                _ => Err("expected auto, always or never".to_string()),
            })?,
            force_iptables_binary: r.flag("force-iptables-binary", |s| match s {
                "" => Ok(None),
                "legacy" => Ok(Some(IptablesVariant::Legacy)),
                "nft" => Ok(Some(IptablesVariant::Nft)),
                _ => Err("expected legacy or nft".to_string()),
            })?,
            xtables_wait: r.flag("xtables-wait", |s| {
                let wait = parse_go_duration(s)?;
                if wait < Duration::from_secs(1) {
                    return Err("the wait must be at least 1s".to_string());
                }
                Ok(wait)
            })?,
            timeout: r.flag("timeout", |s| {
                let timeout = parse_go_duration(s)?;
                if timeout < Duration::from_secs(1) {
                    return Err("the timeout must be at least 1s".to_string());
                }
                Ok(timeout)
            })?,
            retries: r.flag("retries", |s| match s.parse::<u32>() {
                Ok(n) if n <= MAX_RETRIES => Ok(n),
                Ok(_) => Err(format!("at most {MAX_RETRIES} retries")),
                Err(_) => Err(format!("expected a whole number from 0 to {MAX_RETRIES}")),
            })?,
            retry_pause: r.flag("retry-pause", |s| {
                let pause = parse_go_duration(s)?;
                if pause < MIN_RETRY_PAUSE {
                    return Err(format!(
                        "the pause must be at least {}ms",
                        MIN_RETRY_PAUSE.as_millis()
                    ));
                }
                Ok(pause)
            })?,
            check: r.bool("check")?,
            log_level: r.flag("log_output_level", parse_log_level)?,
            log_json: r.bool("log_as_json")?,
        };
        contradictory_modes(&r, &run)?;
        retry_within_timeout(&r, &run)?;
        if run.xtables_wait > run.timeout {
            // The lock waits end at the run's deadline whatever --xtables-wait says.
            warnings.push(format!(
                "--xtables-wait ({}) is longer than --timeout ({}), the deadline of the whole run: lock waits end at {} at most",
                crate::go_duration::go_duration(run.xtables_wait),
                crate::go_duration::go_duration(run.timeout),
                crate::go_duration::go_duration(run.timeout),
            ));
        }
        warnings.extend(ignored_flag_warnings(&r)?);

        // Detection, only for what the arguments leave open.
        let (ipv6, ipv6_reason) = match ipv6_choice {
            Some(v) => (
                v,
                format!(
                    "IPv6 {}: --ipv6={v} ({})",
                    if v { "on" } else { "off" },
                    raw.get("ipv6").source
                ),
            ),
            None => {
                let addrs = host.interface_addrs().map_err(|e| {
                    ConfigError::Detection(format!("cannot list interface addresses: {e}"))
                })?;
                detect::ipv6_decision(&addrs, dual_stack).map_err(ConfigError::Detection)?
            }
        };
        let dns = if !redirect_dns {
            DnsCapture::Off
        } else if capture_all_dns {
            DnsCapture::All
        } else {
            let servers = match dns_servers_flag {
                Some(servers) if r.is_set("dns-servers") => servers,
                _ => {
                    let text = host.read_file("/etc/resolv.conf").map_err(|e| {
                        ConfigError::Detection(format!("failed to load /etc/resolv.conf: {e}"))
                    })?;
                    detect::nameservers(&text)
                }
            };
            if servers.is_empty() {
                warnings.push(
                    "DNS capture is on but no DNS server is known and --capture-all-dns is off: DNS capture disabled"
                        .to_string(),
                );
                DnsCapture::Off
            } else {
                let (v4, v6) = servers.into_iter().partition(|s| s.addr.is_ipv4());
                DnsCapture::Servers { v4, v6 }
            }
        };

        Ok(Config {
            capture: Capture {
                proxy_port,
                inbound_capture_port,
                inbound_tunnel_port,
                proxy_uids,
                proxy_gids,
                mode,
                tproxy_mark,
                route_table,
                inbound,
                exclude_interfaces,
                virt_interfaces,
                outbound_include,
                outbound_exclude,
                outbound_ports_include,
                outbound_ports_exclude,
                owner_groups,
                loopback_v4,
                dns,
                drop_invalid,
                ipv6,
                inbound_exclude_sources,
                outbound_uid_port_excludes,
            },
            run,
            warnings,
            ipv6_reason,
        })
    }
}

/// `None` for an empty flag (use the default); an explicit list must name at least one id,
/// because without owner rules the proxy's own traffic would loop back into itself.
fn non_empty_ids(s: &str) -> Result<Option<Vec<u32>>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let ids = parse_ids(s)?;
    if ids.is_empty() {
        return Err("at least one id is needed".to_string());
    }
    Ok(Some(ids))
}

/// The uid of `ENVOY_USER` from /etc/passwd, else Istio's 1337 — with a warning when the
/// user was named but not found, since the rules then exempt a uid nobody asked for.
fn default_proxy_uid(host: &dyn Host, user: &str) -> (u32, Option<String>) {
    let passwd = host.read_file("/etc/passwd");
    match passwd.as_ref().ok().and_then(|p| detect::uid_of(p, user)) {
        Some(uid) => (uid, None),
        None => {
            let why = match &passwd {
                Ok(_) => "is not in /etc/passwd".to_string(),
                Err(e) => format!("cannot be looked up (/etc/passwd: {e})"),
            };
            let warning = format!(
                "ENVOY_USER {user:?} {why}: the proxy uid falls back to {DEFAULT_PROXY_UID} (set -u / PROXY_UID to choose it)"
            );
            (DEFAULT_PROXY_UID, Some(warning))
        }
    }
}

/// The outbound mark (1338) is Istio's fixed mark for proxy-to-self traffic under TPROXY, so
/// the TPROXY mark must differ from it; 0 would match every unmarked packet.
fn parse_mark(s: &str) -> Result<u32, String> {
    match parse_decimal(s).and_then(|n| u32::try_from(n).ok()) {
        Some(0) => Err("mark 0 would match every unmarked packet".to_string()),
        Some(OUTBOUND_MARK) => Err(format!(
            "{} is Istio's outbound mark; choose another",
            OUTBOUND_MARK
        )),
        Some(mark) => Ok(mark),
        None => Err("expected a decimal integer 1-4294967295".to_string()),
    }
}

/// Tables 0 and 253–255 are the kernel's unspec/default/main/local tables: installing a local
/// default route there would hijack the pod's routing.
fn parse_route_table(s: &str) -> Result<u32, String> {
    match parse_decimal(s).and_then(|n| u32::try_from(n).ok()) {
        Some(t @ (0 | 253..=255)) => Err(format!("table {t} is reserved by the kernel")),
        Some(t) => Ok(t),
        None => Err("expected a decimal integer 1-4294967295".to_string()),
    }
}

fn parse_groups(s: &str) -> Result<Vec<GroupRef>, String> {
    split_list(s).into_iter().map(str::parse).collect()
}

fn parse_loopback_cidr(s: &str) -> Result<Cidr, String> {
    let cidr: Cidr = s.parse()?;
    if !cidr.is_ipv4() || !cidr.is_loopback() {
        return Err("expected an IPv4 loopback prefix (in 127.0.0.0/8)".to_string());
    }
    if !(8..=32).contains(&cidr.prefix_len()) {
        return Err("the prefix length must be 8 to 32".to_string());
    }
    Ok(cidr)
}

/// meshinit's `--dns-servers`: addresses are printed as given (Istio's tests inject them as
/// text), after checking that each parses.
fn parse_dns_servers(s: &str) -> Result<Option<Vec<DnsServer>>, String> {
    split_list(s)
        .into_iter()
        .map(|text| {
            let addr: IpAddr = text
                .parse()
                .map_err(|_| format!("{text:?} is not an IP address"))?;
            Ok(DnsServer {
                addr,
                text: text.to_string(),
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

/// `--log_output_level` as pilot-agent takes it: `level` or `scope:level,...`; meshinit logs
/// under the `default` scope only.
fn parse_log_level(s: &str) -> Result<LogLevel, String> {
    let mut level = LogLevel::Info;
    for item in split_list(s) {
        let (scope, name) = item.split_once(':').unwrap_or(("default", item));
        let parsed = match name {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" | "fatal" => LogLevel::Error,
            "none" => LogLevel::None,
            _ => {
                return Err(format!(
                    "unknown level {name:?} (debug, info, warn, error, fatal, none)"
                ))
            }
        };
        if scope == "default" {
            level = parsed;
        }
    }
    Ok(level)
}

/// Warnings for flags that are accepted for compatibility but change nothing here.
fn ignored_flag_warnings(r: &Reader<'_>) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for (spec, setting) in r.raw.flags() {
        if setting.source == Source::Default {
            continue;
        }
        let note = match (spec.origin, spec.long) {
            (cli::Origin::Removed, "restore-format") => {
                if r.bool("restore-format")? {
                    continue;
                }
                "--restore-format=false is ignored: rules are always applied with *-restore, atomically per table"
            }
            (cli::Origin::Removed, "iptables-trace-logging") => {
                if !r.bool("iptables-trace-logging")? {
                    continue;
                }
                "--iptables-trace-logging is ignored: Istio removed trace rules in 1.26"
            }
            (cli::Origin::Removed, _) => {
                "--iptables-version is ignored: the iptables variant is detected (or set with --force-iptables-binary)"
            }
            (cli::Origin::Logging, "log_output_level" | "log_as_json") => continue,
            (cli::Origin::Logging, "log_target") => {
                "--log_target is ignored: meshinit always logs to stderr"
            }
            (cli::Origin::Logging, _) => "has no effect in meshinit",
            _ => continue,
        };
        if note.starts_with("--") {
            out.push(note.to_string());
        } else {
            out.push(format!("--{} {note}", spec.long));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
