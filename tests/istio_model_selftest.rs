//! Self-test of the independent Istio reference model (`tests/istio_model`): it must reproduce
//! all of Istio's golden iptables cases byte for byte, and its CLI conversion must round-trip.

mod istio_model;

use istio_model::{
    args::parse_args_file, from_case_args, from_cli, parse_prefix, restore_texts, to_case_args,
    to_cli, IstioConfig,
};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const CASES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/istio/iptables");

fn cases() -> Vec<(String, PathBuf)> {
    let mut cases: Vec<(String, PathBuf)> = fs::read_dir(CASES_DIR)
        .unwrap_or_else(|e| panic!("reading {CASES_DIR}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("args").is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    cases.sort();
    cases
}

fn read(path: &Path, file: &str) -> String {
    fs::read_to_string(path.join(file))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.join(file).display()))
}

fn diff(expected: &str, actual: &str, what: &str) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .header(&format!("{what} (golden)"), &format!("{what} (model)"))
        .to_string()
}

#[test]
fn model_matches_all_istio_goldens() {
    let cases = cases();
    assert_eq!(cases.len(), 27, "expected Istio's 27 iptables cases");
    let mut failures = Vec::new();
    for (name, dir) in &cases {
        let cfg = from_case_args(&read(dir, "args"));
        let (v4, v6) = restore_texts(&cfg);
        for (file, actual) in [("ipv4.rules", &v4), ("ipv6.rules", &v6)] {
            let expected = read(dir, file);
            if &expected != actual {
                failures.push(format!(
                    "case {name}: {file} differs\n{}",
                    diff(&expected, actual, file)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatch(es):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn cli_round_trips_for_all_cases() {
    let mut failures = Vec::new();
    for (name, dir) in cases() {
        let text = read(&dir, "args");
        let cfg = from_case_args(&text);
        let (args, env) = to_cli(&cfg);
        let back = from_cli(&args, &env);
        if back != cfg {
            failures.push(format!(
                "{name}: from_cli(to_cli(cfg)) != cfg\n{cfg:#?}\n{back:#?}"
            ));
        }
        if from_case_args(&to_case_args(&cfg)) != cfg {
            failures.push(format!("{name}: to_case_args does not round-trip"));
        }
        // Every setting in the case file is reproduced verbatim by to_cli (which adds the
        // defaults of what the case leaves out).
        let (case_args, case_env) = parse_args_file(&text);
        let ours: BTreeMap<&str, &str> = args
            .iter()
            .map(|a| a.split_once('=').expect("--flag=value"))
            .collect();
        for a in &case_args {
            let (k, v) = a.split_once('=').expect("--flag=value");
            if ours.get(k) != Some(&v) {
                failures.push(format!(
                    "{name}: {a} not reproduced (got {:?})",
                    ours.get(k)
                ));
            }
        }
        for kv in &case_env {
            if !env.contains(kv) {
                failures.push(format!("{name}: env {}={} not reproduced", kv.0, kv.1));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn to_cli_always_passes_dns_servers_and_ipv6() {
    let (args, env) = to_cli(&IstioConfig::default());
    assert!(args.contains(&"--dns-servers=".to_string()));
    assert!(args.contains(&"--ipv6=false".to_string()));
    assert!(args.iter().all(|a| a.starts_with("--") && a.contains('=')));
    assert_eq!(env.len(), 3);
    let cfg = IstioConfig {
        dns_servers_v4: vec!["10.0.0.10".into()],
        dns_servers_v6: vec!["fd00::a".into(), "::ffff:1.2.3.4".into()],
        ..IstioConfig::default()
    };
    let (args, env) = to_cli(&cfg);
    assert!(args.contains(&"--dns-servers=10.0.0.10,fd00::a,::ffff:1.2.3.4".to_string()));
    assert_eq!(from_cli(&args, &env), cfg);
}

#[test]
fn prefixes_print_like_go_netip() {
    // (input, Prefix.String(), Is4, IsLoopback)
    let cases = [
        ("10.1.2.3/8", "10.1.2.3/8", true, false),
        ("127.1.2.3/32", "127.1.2.3/32", true, true),
        ("2001:DB8:0:0:0:0:0:1/64", "2001:db8::1/64", false, false),
        ("::1/128", "::1/128", false, true),
        ("::ffff:127.0.0.1/104", "::ffff:127.0.0.1/104", false, true),
        ("::FFFF:10.0.0.1/120", "::ffff:10.0.0.1/120", false, false),
        ("::1.2.3.4/128", "::102:304/128", false, false),
        (
            "2001:db8:0:0:1:0:0:1/48",
            "2001:db8::1:0:0:1/48",
            false,
            false,
        ),
        ("0.0.0.0/0", "0.0.0.0/0", true, false),
    ];
    for (input, text, is4, lo) in cases {
        assert_eq!(
            parse_prefix(input),
            (text.to_string(), is4, lo),
            "for {input}"
        );
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// Behaviour outside the 27 goldens, each from a fact in Istio's run.go.
#[test]
fn non_golden_behaviour() {
    // `-b ","`: non-empty string -> PREROUTING jump, but Split yields no ports.
    let cfg = IstioConfig {
        inbound_ports_include: ",".into(),
        ..IstioConfig::default()
    };
    let (v4, v6) = restore_texts(&cfg);
    assert!(lines(&v4).contains(&"-A PREROUTING -p tcp -j ISTIO_INBOUND"));
    assert!(!v4.contains("--dport ,"));
    assert_eq!(v6, "");

    // Owner-group include list that is empty but not "*": a bare RETURN.
    let cfg = IstioConfig {
        owner_groups_include: "".into(),
        ..IstioConfig::default()
    };
    let (v4, _) = restore_texts(&cfg);
    assert!(lines(&v4).contains(&"-A ISTIO_OUTPUT -j RETURN"));

    // Outbound port excludes: TCP and UDP RETURNs.
    let cfg = IstioConfig {
        outbound_ports_exclude: "7,8".into(),
        ..IstioConfig::default()
    };
    let (v4, _) = restore_texts(&cfg);
    let l = lines(&v4);
    let i = l
        .iter()
        .position(|x| *x == "-A ISTIO_OUTPUT -p tcp --dport 7 -j RETURN")
        .expect("tcp exclude");
    assert_eq!(l[i + 1], "-A ISTIO_OUTPUT -p udp --dport 7 -j RETURN");
    assert_eq!(l[i + 2], "-A ISTIO_OUTPUT -p tcp --dport 8 -j RETURN");

    // Capture-all DNS: unconditional jumps and redirects in both families.
    let cfg = IstioConfig {
        redirect_dns: true,
        capture_all_dns: true,
        enable_ipv6: true,
        ..IstioConfig::default()
    };
    let (v4, v6) = restore_texts(&cfg);
    for text in [&v4, &v6] {
        let l = lines(text);
        for want in [
            "-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS",
            "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053",
            "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053",
            "-A PREROUTING -j ISTIO_INBOUND",
            "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2",
            "-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{text}");
        }
    }

    // Redirect-DNS without servers and without capture-all: DNS fully disabled.
    let cfg = IstioConfig {
        redirect_dns: true,
        ..IstioConfig::default()
    };
    assert_eq!(restore_texts(&cfg), restore_texts(&IstioConfig::default()));

    // A loopback include CIDR of the *other* family still suppresses the `-o lo` RETURNs, and an
    // IPv4-mapped IPv6 CIDR goes to the v6 list.
    let cfg = IstioConfig {
        outbound_ip_ranges_include: "::ffff:127.0.0.1/128".into(),
        ..IstioConfig::default()
    };
    let (v4, v6) = restore_texts(&cfg);
    assert!(!v4.contains("! --uid-owner"));
    assert!(!v4.contains("-j ISTIO_REDIRECT"));
    assert_eq!(v6, "");
    let cfg = IstioConfig {
        enable_ipv6: true,
        ..cfg
    };
    let (_, v6) = restore_texts(&cfg);
    assert!(lines(&v6).contains(&"-A ISTIO_OUTPUT -d ::ffff:127.0.0.1/128 -j ISTIO_REDIRECT"));

    // Empty GID falls back to the UID string.
    let cfg = IstioConfig {
        proxy_uid: "5,6".into(),
        proxy_gid: "".into(),
        ..IstioConfig::default()
    };
    let (v4, _) = restore_texts(&cfg);
    assert!(lines(&v4).contains(&"-A ISTIO_OUTPUT -m owner --gid-owner 6 -j RETURN"));
}
