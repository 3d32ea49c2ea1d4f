//! Tests of configuration building: each flag's effect, detection with a fake host, and the
//! error for each kind of bad input.

use super::*;
use crate::cli::{parse, Command, Env};
use std::collections::BTreeMap;
use std::io;

/// A machine with fixed addresses and files.
struct FakeHost {
    addrs: Vec<IpAddr>,
    files: BTreeMap<&'static str, &'static str>,
}

impl FakeHost {
    fn v4_pod() -> FakeHost {
        FakeHost {
            addrs: vec!["127.0.0.1".parse().unwrap(), "10.1.2.3".parse().unwrap()],
            files: BTreeMap::from([
                (
                    "/etc/resolv.conf",
                    "nameserver 10.96.0.10\nnameserver fd00::10\n",
                ),
                (
                    "/etc/passwd",
                    "root:x:0:0::/:\nistio-proxy:x:1500:1500::/:\nenvoy:x:101:101::/:\n",
                ),
            ]),
        }
    }
}

impl Host for FakeHost {
    fn interface_addrs(&self) -> io::Result<Vec<IpAddr>> {
        Ok(self.addrs.clone())
    }
    fn read_file(&self, path: &str) -> io::Result<String> {
        self.files
            .get(path)
            .map(|s| s.to_string())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.to_string()))
    }
}

fn build_on(host: &FakeHost, args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let argv: Vec<String> = std::iter::once("meshinit")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let env: Env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let Command::Run(raw) = parse(&argv, &env).expect("parses") else {
        panic!("not a run")
    };
    Config::build(&raw, host)
}

fn build(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    build_on(&FakeHost::v4_pod(), args, env)
}

fn ok(args: &[&str]) -> Capture {
    build(args, &[]).expect("valid").capture
}

fn ports(list: &[u16]) -> Vec<PortRange> {
    list.iter()
        .map(|p| p.to_string().parse().unwrap())
        .collect()
}

/// The bad-input error for these arguments, which must name `names`.
fn rejected(args: &[&str], env: &[(&str, &str)], names: &[&str]) -> String {
    match build(args, env) {
        Err(e @ ConfigError::Invalid { .. }) => {
            let msg = e.to_string();
            for name in names {
                assert!(msg.contains(name), "{msg:?} should name {name:?}");
            }
            msg
        }
        other => panic!("{args:?} {env:?} should be rejected as invalid, got {other:?}"),
    }
}

#[test]
fn defaults_match_istio() {
    let c = ok(&[]);
    assert_eq!(c.proxy_port.get(), 15001);
    assert_eq!(c.inbound_capture_port.get(), 15006);
    assert_eq!(c.inbound_tunnel_port.get(), 15008);
    assert_eq!(c.mode, InterceptMode::Redirect);
    assert_eq!(c.tproxy_mark, 1337);
    assert_eq!(c.route_table, 133);
    assert_eq!(c.inbound, InboundCapture::None);
    assert_eq!(
        c.outbound_include,
        OutboundInclude::Cidrs(CidrsByFamily::default())
    );
    assert_eq!(c.owner_groups, OwnerGroups::AllExcept(vec![]));
    assert_eq!(c.loopback_v4.to_string(), "127.0.0.1/32");
    assert_eq!(c.dns, DnsCapture::Off);
    assert!(!c.drop_invalid);
    let run = build(&[], &[]).unwrap().run;
    assert!(!run.dry_run);
    assert_eq!(run.probe_port.get(), 15002);
    assert_eq!(run.probe_timeout, Duration::from_secs(5));
    assert_eq!(run.timeout, Duration::from_secs(120));
    assert_eq!(run.log_level, LogLevel::Info);
}

#[test]
fn proxy_ids_default_to_envoy_user_then_1337() {
    let c = ok(&[]);
    assert_eq!(
        c.proxy_uids,
        vec![1500],
        "istio-proxy's uid from /etc/passwd"
    );
    assert_eq!(c.proxy_gids, vec![1500], "gids default to the uids");
    let c = build(&[], &[("ENVOY_USER", "envoy")]).unwrap().capture;
    assert_eq!(c.proxy_uids, vec![101]);
    let c = build(&[], &[("ENVOY_USER", "nobody-here")])
        .unwrap()
        .capture;
    assert_eq!(c.proxy_uids, vec![DEFAULT_PROXY_UID]);
    let c = ok(&["-u", "3,4"]);
    assert_eq!((c.proxy_uids, c.proxy_gids), (vec![3, 4], vec![3, 4]));
    let c = ok(&["-u", "3,4", "-g", "1,2"]);
    assert_eq!(c.proxy_gids, vec![1, 2]);
    let c = build(&[], &[("PROXY_UID", "7"), ("PROXY_GID", "8")])
        .unwrap()
        .capture;
    assert_eq!((c.proxy_uids, c.proxy_gids), (vec![7], vec![8]));
}

#[test]
fn each_flag_reaches_the_capture_config() {
    assert_eq!(ok(&["-p", "1"]).proxy_port.get(), 1);
    assert_eq!(ok(&["-z", "2"]).inbound_capture_port.get(), 2);
    assert_eq!(ok(&["-e", "3"]).inbound_tunnel_port.get(), 3);
    assert_eq!(ok(&["-m", "TPROXY"]).mode, InterceptMode::Tproxy);
    assert_eq!(ok(&["-m", "REDIRECT"]).mode, InterceptMode::Redirect);
    assert_eq!(ok(&["-m", ""]).mode, InterceptMode::Redirect);
    assert_eq!(ok(&["-t", "42"]).tproxy_mark, 42);
    assert_eq!(ok(&["-r", "7"]).route_table, 7);
    assert_eq!(
        ok(&["-b", "*", "-d", "15090,15021"]).inbound,
        InboundCapture::All {
            exclude: ports(&[15090, 15021])
        }
    );
    assert_eq!(
        ok(&["-b", "80,443", "-d", "1"]).inbound,
        InboundCapture::Ports(ports(&[80, 443]))
    );
    assert_eq!(ok(&["-b", ","]).inbound, InboundCapture::Ports(vec![]));
    assert_eq!(ok(&["-c", "eth1,eth2"]).exclude_interfaces.len(), 2);
    assert_eq!(ok(&["-k", "net1"]).virt_interfaces[0].as_str(), "net1");
    assert_eq!(ok(&["-i", "*"]).outbound_include, OutboundInclude::All);
    let OutboundInclude::Cidrs(inc) = ok(&["-i", "10.0.0.0/8,fd00::/8"]).outbound_include else {
        panic!("cidrs")
    };
    assert_eq!((inc.v4.len(), inc.v6.len()), (1, 1));
    assert_eq!(
        ok(&["-x", "1.1.0.0/16"]).outbound_exclude.v4[0].to_string(),
        "1.1.0.0/16"
    );
    assert_eq!(
        ok(&["-q", "32000,31000"]).outbound_ports_include,
        ports(&[32000, 31000])
    );
    assert_eq!(ok(&["-o", "22"]).outbound_ports_exclude, ports(&[22]));
    assert!(ok(&["--drop-invalid"]).drop_invalid);
    assert!(ok(&["--ipv6=true"]).ipv6);
    assert!(!ok(&["--ipv6=false"]).ipv6);
    let run = build(
        &[
            "-n",
            "--skip-rule-apply",
            "--run-validation",
            "--iptables-probe-port=1",
            "--probe-timeout=1m",
            "--network-namespace=/run/netns/x",
            "--cni-mode",
            "--reconcile",
            "--cleanup-only",
            "--force-apply",
            "--native-nftables",
            "--force-iptables-binary=nft",
            "--log_output_level=default:debug",
            "--log_as_json",
        ],
        &[],
    )
    .unwrap()
    .run;
    assert!(run.dry_run && run.skip_rule_apply && run.run_validation && run.cni_mode);
    assert!(run.reconcile && run.cleanup_only && run.force_apply);
    assert_eq!(run.backend, BackendChoice::Nftables);
    assert_eq!(run.probe_port.get(), 1);
    assert_eq!(run.probe_timeout, Duration::from_secs(60));
    assert_eq!(run.network_namespace, Some(PathBuf::from("/run/netns/x")));
    assert_eq!(run.force_iptables_binary, Some(IptablesVariant::Nft));
    assert_eq!(run.log_level, LogLevel::Debug);
    assert!(run.log_json);
}

#[test]
fn owner_groups_from_env() {
    let c = build(&[], &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,ftp")])
        .unwrap()
        .capture;
    let OwnerGroups::AllExcept(groups) = c.owner_groups else {
        panic!()
    };
    assert_eq!(
        groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        ["888", "ftp"]
    );
    let c = build(&[], &[("ISTIO_OUTBOUND_OWNER_GROUPS", "java,202")])
        .unwrap()
        .capture;
    assert!(matches!(c.owner_groups, OwnerGroups::Only(g) if g.len() == 2));
    let cfg = build(&[], &[("ISTIO_OUTBOUND_OWNER_GROUPS", "")]).unwrap();
    assert_eq!(cfg.capture.owner_groups, OwnerGroups::Only(vec![]));
    assert!(cfg
        .warnings
        .iter()
        .any(|w| w.contains("no outbound traffic")));
    let sixty_four = (1..=64)
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert!(build(&[], &[("ISTIO_OUTBOUND_OWNER_GROUPS", &sixty_four)]).is_ok());
}

#[test]
fn dns_servers_come_from_resolv_conf_unless_given() {
    let c = ok(&["--redirect-dns"]);
    let DnsCapture::Servers { v4, v6 } = c.dns else {
        panic!("servers")
    };
    assert_eq!(
        (v4[0].text.as_str(), v6[0].text.as_str()),
        ("10.96.0.10", "fd00::10")
    );
    assert_eq!(
        ok(&["--redirect-dns", "--capture-all-dns"]).dns,
        DnsCapture::All
    );
    let c = ok(&["--redirect-dns", "--dns-servers=::127.0.0.53"]);
    let DnsCapture::Servers { v4, v6 } = c.dns else {
        panic!("servers")
    };
    assert!(v4.is_empty());
    assert_eq!(v6[0].text, "::127.0.0.53", "given spelling is kept");
    let cfg = build(&["--redirect-dns", "--dns-servers="], &[]).unwrap();
    assert_eq!(
        cfg.capture.dns,
        DnsCapture::Off,
        "explicitly none: capture disabled"
    );
    assert!(cfg
        .warnings
        .iter()
        .any(|w| w.contains("DNS capture disabled")));
    let c = build(&[], &[("ISTIO_META_DNS_CAPTURE", "true")])
        .unwrap()
        .capture;
    assert!(matches!(c.dns, DnsCapture::Servers { .. }));
    assert_eq!(
        ok(&["--dns-servers=1.1.1.1"]).dns,
        DnsCapture::Off,
        "no capture without -redirect-dns"
    );
}

#[test]
fn missing_resolv_conf_is_a_detection_error() {
    let host = FakeHost {
        addrs: FakeHost::v4_pod().addrs,
        files: BTreeMap::new(),
    };
    let err = build_on(&host, &["--redirect-dns"], &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Detection(ref m) if m.contains("/etc/resolv.conf")));
    assert!(build_on(&host, &["--redirect-dns", "--capture-all-dns"], &[]).is_ok());
}

#[test]
fn ipv6_is_detected_unless_given() {
    let v6_pod = FakeHost {
        addrs: vec!["fd00::5".parse().unwrap()],
        files: BTreeMap::new(),
    };
    assert!(build_on(&v6_pod, &[], &[]).unwrap().capture.ipv6);
    let dual = FakeHost {
        addrs: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        files: BTreeMap::new(),
    };
    assert!(!build_on(&dual, &[], &[]).unwrap().capture.ipv6);
    assert!(
        build_on(&dual, &["--dual-stack"], &[])
            .unwrap()
            .capture
            .ipv6
    );
    assert!(
        build_on(&dual, &[], &[("ISTIO_DUAL_STACK", "true")])
            .unwrap()
            .capture
            .ipv6
    );
    assert!(
        !build_on(&dual, &["--ipv6=false", "--dual-stack"], &[])
            .unwrap()
            .capture
            .ipv6
    );
    let none = FakeHost {
        addrs: vec!["127.0.0.1".parse().unwrap()],
        files: BTreeMap::new(),
    };
    assert!(matches!(
        build_on(&none, &[], &[]),
        Err(ConfigError::Detection(_))
    ));
    assert!(build_on(&none, &["--ipv6=false"], &[]).is_ok());
}

#[test]
fn port_ranges_are_accepted_and_bad_ones_named() {
    let range = |s: &str| s.parse::<PortRange>().unwrap();
    assert_eq!(
        ok(&["-b", "8000:8010,80"]).inbound,
        InboundCapture::Ports(vec![range("8000:8010"), range("80")])
    );
    assert_eq!(
        ok(&["-b", "*", "-d", "9000-9100"]).inbound,
        InboundCapture::All {
            exclude: vec![range("9000:9100")]
        }
    );
    assert_eq!(
        ok(&["-q", "1:65535"]).outbound_ports_include,
        [range("1:65535")]
    );
    assert_eq!(ok(&["-o", "7-7"]).outbound_ports_exclude, [range("7:7")]);
    for (flag, long, env) in [
        ("-b", "--istio-inbound-ports", "ISTIO_INBOUND_PORTS"),
        (
            "-d",
            "--istio-local-exclude-ports",
            "ISTIO_LOCAL_EXCLUDE_PORTS",
        ),
        ("-q", "--istio-outbound-ports", "ISTIO_OUTBOUND_PORTS"),
        (
            "-o",
            "--istio-local-outbound-ports-exclude",
            "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        ),
    ] {
        for (value, why) in [
            ("9000:8000", "reversed"),
            ("0:10", "1-65535"),
            ("1-65536", "1-65535"),
            (":9000", "open-ended"),
            ("8000-", "open-ended"),
            ("8000:9000,8080", "overlap"),
        ] {
            let quoted = format!("{value:?}");
            let msg = rejected(&[flag, value], &[], &[long, env, &quoted]);
            assert!(msg.contains(why), "{flag} {value}: {msg}");
        }
    }
}

#[test]
fn bad_ports_are_rejected_naming_flag_env_and_value() {
    let msg = rejected(
        &["-p", "70000"],
        &[],
        &[
            "--envoy-port",
            "-p",
            "ENVOY_PORT",
            "\"70000\"",
            "command line -p",
        ],
    );
    assert!(msg.contains("1-65535"), "{msg}");
    rejected(
        &["-z", "0"],
        &[],
        &["--inbound-capture-port", "INBOUND_CAPTURE_PORT"],
    );
    rejected(&["-e", "x"], &[], &["--inbound-tunnel-port"]);
    rejected(
        &["-b", "80,http"],
        &[],
        &["--istio-inbound-ports", "\"80,http\""],
    );
    rejected(&["-b", "80,*"], &[], &["--istio-inbound-ports"]);
    rejected(&["-d", "65536"], &[], &["--istio-local-exclude-ports"]);
    rejected(&["-q", "-1"], &[], &["--istio-outbound-ports"]);
    // `1-2` is a port range now (see port_ranges_are_accepted_and_bad_ones_named); a
    // reversed one is refused.
    let msg = rejected(
        &["-o", "2-1"],
        &[],
        &[
            "--istio-local-outbound-ports-exclude",
            "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
            "\"2-1\"",
        ],
    );
    assert!(msg.contains("reversed"), "{msg}");
    rejected(
        &["--iptables-probe-port=0"],
        &[],
        &["--iptables-probe-port"],
    );
    rejected(
        &[],
        &[("INBOUND_CAPTURE_PORT", "99999")],
        &["env INBOUND_CAPTURE_PORT", "\"99999\""],
    );
}

#[test]
fn bad_cidrs_are_rejected() {
    rejected(
        &["-i", "10.0.0.0/33"],
        &[],
        &["--istio-service-cidr", "ISTIO_SERVICE_CIDR"],
    );
    rejected(
        &["-i", "10.0.0.1"],
        &[],
        &["--istio-service-cidr", "missing /prefix-length"],
    );
    rejected(&["-i", "*,10.0.0.0/8"], &[], &["--istio-service-cidr"]);
    rejected(&["-x", "*"], &[], &["--istio-service-exclude-cidr", "'*'"]);
    rejected(&["-x", "nonsense"], &[], &["--istio-service-exclude-cidr"]);
    rejected(
        &[],
        &[("ISTIO_SERVICE_EXCLUDE_CIDR", "1.1.1.1/32,bad")],
        &["env ISTIO_SERVICE_EXCLUDE_CIDR"],
    );
}

#[test]
fn bad_interfaces_modes_marks_and_tables_are_rejected() {
    rejected(
        &["-c", "a-very-long-interface"],
        &[],
        &["--istio-exclude-interfaces", "15 bytes"],
    );
    rejected(&["-k", "eth/0"], &[], &["--kube-virt-interfaces"]);
    rejected(&["-k", "eth 0"], &[], &["--kube-virt-interfaces"]);
    rejected(
        &["-m", "tproxy"],
        &[],
        &["--istio-inbound-interception-mode", "REDIRECT or TPROXY"],
    );
    rejected(&["-m", "NONE"], &[], &["--istio-inbound-interception-mode"]);
    rejected(
        &["-t", "0x539"],
        &[],
        &["--istio-inbound-tproxy-mark", "ISTIO_INBOUND_TPROXY_MARK"],
    );
    rejected(&["-t", "0"], &[], &["--istio-inbound-tproxy-mark"]);
    rejected(
        &["-t", "1338"],
        &[],
        &["--istio-inbound-tproxy-mark", "outbound mark"],
    );
    rejected(
        &["-r", "main"],
        &[],
        &["--istio-inbound-tproxy-route-table"],
    );
    rejected(
        &["-r", "254"],
        &[],
        &["--istio-inbound-tproxy-route-table", "reserved"],
    );
}

#[test]
fn bad_ids_groups_and_loopback_cidrs_are_rejected() {
    rejected(&["-u", "istio-proxy"], &[], &["--proxy-uid", "PROXY_UID"]);
    rejected(&["-u", ","], &[], &["--proxy-uid", "at least one"]);
    rejected(&["-g", "1,x"], &[], &["--proxy-gid"]);
    let sixty_five = (1..=65)
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(",");
    rejected(
        &[],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS", &sixty_five)],
        &["ISTIO_OUTBOUND_OWNER_GROUPS (env)", "at most 64"],
    );
    rejected(
        &[],
        &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "a b")],
        &["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"],
    );
    for bad in ["10.0.0.0/8", "127.0.0.1/7", "127.0.0.1", "::1/128", "x"] {
        rejected(
            &[],
            &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", bad)],
            &["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"],
        );
    }
    assert_eq!(
        build(&[], &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8")])
            .unwrap()
            .capture
            .loopback_v4
            .to_string(),
        "127.0.0.1/8"
    );
}

#[test]
fn bad_bools_durations_and_choices_are_rejected() {
    rejected(&["--dry-run=yes"], &[], &["--dry-run", "DRY_RUN"]);
    rejected(
        &[],
        &[("ISTIO_META_DNS_CAPTURE", "yes")],
        &["--redirect-dns", "env ISTIO_META_DNS_CAPTURE"],
    );
    rejected(
        &[],
        &[("INVALID_DROP", "on")],
        &["--drop-invalid", "env INVALID_DROP"],
    );
    rejected(
        &["--probe-timeout=5"],
        &[],
        &["--probe-timeout", "PROBE_TIMEOUT"],
    );
    rejected(
        &["--timeout=500ms"],
        &[],
        &["--timeout", "MESHINIT_TIMEOUT"],
    );
    rejected(&[], &[("MESHINIT_TIMEOUT", "soon")], &["--timeout"]);
    assert_eq!(
        build(&[], &[("MESHINIT_TIMEOUT", "3s")])
            .unwrap()
            .run
            .timeout,
        Duration::from_secs(3)
    );
    rejected(
        &["--force-iptables-binary=iptables"],
        &[],
        &["--force-iptables-binary", "legacy or nft"],
    );
    rejected(&["--ipv6=maybe"], &[], &["--ipv6", "MESHINIT_IPV6"]);
    rejected(&["--dns-servers=10.0.0.300"], &[], &["--dns-servers"]);
    rejected(
        &["--log_output_level=default:loud"],
        &[],
        &["--log_output_level"],
    );
}

#[test]
fn retries_are_opt_in_and_bad_counts_and_pauses_are_rejected() {
    let run = build(&[], &[]).unwrap().run;
    assert_eq!((run.retries, run.retry_pause), (0, Duration::from_secs(1)));
    let run = build(&["--retries=3"], &[("MESHINIT_RETRY_PAUSE", "250ms")])
        .unwrap()
        .run;
    assert_eq!(
        (run.retries, run.retry_pause),
        (3, Duration::from_millis(250))
    );
    assert_eq!(
        build(&[], &[("MESHINIT_RETRIES", "5")])
            .unwrap()
            .run
            .retries,
        5
    );
    for bad in ["-1", "three", "1.5", "101", ""] {
        let msg = rejected(
            &[&format!("--retries={bad}")],
            &[],
            &["--retries", "MESHINIT_RETRIES"],
        );
        assert!(msg.contains(&format!("invalid value \"{bad}\"")), "{msg}");
    }
    rejected(
        &[],
        &[("MESHINIT_RETRIES", "many")],
        &["--retries", "env MESHINIT_RETRIES", "\"many\""],
    );
    for bad in ["1", "5ms", "-1s", "soon"] {
        rejected(
            &[&format!("--retry-pause={bad}")],
            &[],
            &["--retry-pause", "MESHINIT_RETRY_PAUSE", bad],
        );
    }
    // A pause as long as the whole deadline would never retry: refused, naming both.
    let msg = rejected(
        &["--retries=2", "--retry-pause=5s", "--timeout=5s"],
        &[],
        &[
            "--retry-pause",
            "MESHINIT_RETRY_PAUSE",
            "\"5s\"",
            "--timeout (5s)",
        ],
    );
    assert!(msg.contains("shorter than --timeout (5s)"), "{msg}");
    // The deadline is written as the flag takes it (Go's duration text), not in seconds.
    let msg = rejected(
        &["--retries=2", "--retry-pause=2m"],
        &[],
        &["--retry-pause", "--timeout (2m0s)"],
    );
    assert!(!msg.contains("120s"), "{msg}");
    // Without retries the pause is never used, so it is not held against the timeout.
    assert!(build(&["--retry-pause=5s", "--timeout=5s"], &[]).is_ok());
}

#[test]
fn backend_choice_folds_in_native_nftables() {
    let backend = |args: &[&str]| build(args, &[]).map(|c| c.run.backend);
    assert_eq!(backend(&[]).unwrap(), BackendChoice::Auto);
    assert_eq!(
        backend(&["--native-nftables"]).unwrap(),
        BackendChoice::Nftables
    );
    assert_eq!(
        backend(&["--backend=nftables"]).unwrap(),
        BackendChoice::Nftables
    );
    assert_eq!(
        backend(&["--backend=iptables"]).unwrap(),
        BackendChoice::Iptables
    );
    assert_eq!(
        build(&[], &[("NATIVE_NFTABLES", "true")])
            .unwrap()
            .run
            .backend,
        BackendChoice::Nftables
    );
    rejected(
        &["--backend=iptables", "--native-nftables"],
        &[],
        &["--backend", "contradicts"],
    );
    rejected(&["--backend=nft"], &[], &["--backend", "MESHINIT_BACKEND"]);
}

#[test]
fn removed_and_logging_flags_warn_when_they_change_nothing() {
    let warnings = |args: &[&str]| build(args, &[]).unwrap().warnings;
    assert!(warnings(&["--restore-format=false"])
        .iter()
        .any(|w| w.contains("--restore-format")));
    assert!(warnings(&["--restore-format=true"]).is_empty());
    assert!(warnings(&["--iptables-trace-logging"])
        .iter()
        .any(|w| w.contains("trace")));
    assert!(warnings(&["--iptables-version=iptables v1.8.7 (legacy)"])
        .iter()
        .any(|w| w.contains("detected")));
    assert!(warnings(&["--log_caller=default"])
        .iter()
        .any(|w| w.contains("--log_caller")));
    assert!(warnings(&["--log_target=stdout"])
        .iter()
        .any(|w| w.contains("stderr")));
    assert!(warnings(&["--log_output_level=default:info", "--log_as_json"]).is_empty());
}

#[test]
fn a_long_rejected_list_is_quoted_short_and_a_cut_off_one_says_so() {
    let list: Vec<String> = (0..9000)
        .map(|i| format!("172.{}.{}.0/24", 16 + i / 256 % 16, i % 256))
        .collect();
    let mut value = list.join(",");
    value.truncate(128 * 1024 - 1);
    let err = build(&["-x", &value], &[]).unwrap_err();
    let text = err.to_string();
    assert!(text.len() < 1000, "{} bytes: {text}", text.len());
    assert!(text.contains("--istio-service-exclude-cidr"), "{text}");
    assert!(text.contains("is not a CIDR"), "{text}");
    assert!(
        text.contains("128 KiB") && text.contains("cut off"),
        "{text}"
    );
    // A short bad list is quoted whole, without the hint.
    let text = build(&["-x", "10.0.0.0/8,10.1.2."], &[])
        .unwrap_err()
        .to_string();
    assert!(text.contains("\"10.0.0.0/8,10.1.2.\""), "{text}");
    assert!(!text.contains("128 KiB"), "{text}");
}

#[test]
fn meshinit_own_options_parse_and_default_to_nothing() {
    let c = ok(&[]);
    assert_eq!(c.inbound_exclude_sources, CidrsByFamily::default());
    assert!(c.outbound_uid_port_excludes.is_empty());
    let c = ok(&[
        "--exclude-inbound-sources=10.1.0.0/16,fd00:1::/64",
        "--exclude-outbound-ports-for-uids=tcp:9090:1500;tcp,udp:53,8125:1600,1700",
    ]);
    assert_eq!(c.inbound_exclude_sources.v4[0].to_string(), "10.1.0.0/16");
    assert_eq!(c.inbound_exclude_sources.v6[0].to_string(), "fd00:1::/64");
    let uid_ports: Vec<String> = c
        .outbound_uid_port_excludes
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(uid_ports, ["tcp:9090:1500", "tcp,udp:53,8125:1600,1700"]);
    let from_env = build(
        &[],
        &[
            ("MESHINIT_EXCLUDE_INBOUND_SOURCES", "192.0.2.0/24"),
            ("MESHINIT_EXCLUDE_OUTBOUND_PORTS_FOR_UIDS", "udp:53:1500"),
        ],
    )
    .unwrap()
    .capture;
    assert_eq!(from_env.inbound_exclude_sources.v4.len(), 1);
    assert_eq!(from_env.outbound_uid_port_excludes.len(), 1);
    let cfg = build(&["--exclude-inbound-sources=10.1.0.0/16"], &[]).unwrap();
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("--exclude-inbound-sources") && w.contains("no effect")),
        "{:?}",
        cfg.warnings
    );
    // Host bits: kept, with the same warning as -x.
    let cfg = build(&["-b", "*", "--exclude-inbound-sources=10.1.2.3/16"], &[]).unwrap();
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("--exclude-inbound-sources")
                && w.contains("MESHINIT_EXCLUDE_INBOUND_SOURCES")
                && w.contains("10.1.0.0/16")),
        "{:?}",
        cfg.warnings
    );
}

#[test]
fn bad_meshinit_own_options_are_rejected_naming_flag_env_and_value() {
    for (value, says) in [
        ("10.0.0.0/33", "is not a CIDR"),
        ("10.0.0.1", "missing /prefix-length"),
        ("*", "'*'"),
        ("10.0.0.0/8,bad", "\"bad\""),
        ("0.0.0.0/0", "turns inbound capture off"),
        ("10.1.0.0/16,::/0", "::/0 is every source"),
        ("::ffff:10.0.0.0/104", "IPv4-mapped"),
    ] {
        rejected(
            &[&format!("--exclude-inbound-sources={value}")],
            &[],
            &[
                "--exclude-inbound-sources",
                "env MESHINIT_EXCLUDE_INBOUND_SOURCES",
                &format!("{value:?}"),
                says,
            ],
        );
    }
    rejected(
        &[],
        &[("MESHINIT_EXCLUDE_INBOUND_SOURCES", "fd00::/129")],
        &[
            "from env MESHINIT_EXCLUDE_INBOUND_SOURCES",
            "\"fd00::/129\"",
        ],
    );
    for (value, says) in [
        ("tcp:9090:istio", "not a numeric id"),
        ("sctp:9090:1500", "not tcp, udp or *"),
        ("tcp::1500", "has no ports"),
        ("tcp:9090", "PROTO:PORTS:UIDS"),
        ("tcp:70000:1500", "1-65535"),
    ] {
        rejected(
            &["--exclude-outbound-ports-for-uids", value],
            &[],
            &[
                "--exclude-outbound-ports-for-uids",
                "env MESHINIT_EXCLUDE_OUTBOUND_PORTS_FOR_UIDS",
                &format!("{value:?}"),
                says,
            ],
        );
    }
}

#[test]
fn an_xtables_wait_past_the_timeout_is_said() {
    let cfg = build(&["--xtables-wait=5m", "--timeout=2m"], &[]).unwrap();
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("--xtables-wait (5m0s)") && w.contains("--timeout (2m0s)")),
        "{:?}",
        cfg.warnings
    );
    let cfg = build(&["--xtables-wait=30s", "--timeout=2m"], &[]).unwrap();
    assert!(!cfg.warnings.iter().any(|w| w.contains("--xtables-wait")));
}

#[test]
fn ipv4_mapped_networks_in_istios_flags_are_kept_and_said() {
    let cfg = build(&["-x", "::ffff:10.0.0.0/104,10.2.0.0/16"], &[]).unwrap();
    assert_eq!(cfg.capture.outbound_exclude.v6.len(), 1);
    assert!(
        cfg.warnings.iter().any(|w| w.contains("-x")
            && w.contains("::ffff:10.0.0.0/104")
            && w.contains("never matches")),
        "{:?}",
        cfg.warnings
    );
    let cfg = build(&["-x", "fd00::/64"], &[]).unwrap();
    assert!(!cfg.warnings.iter().any(|w| w.contains("IPv4-mapped")));
}
