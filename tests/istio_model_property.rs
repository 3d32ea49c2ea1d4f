//! Differential test beyond the 27 golden cases: thousands of random valid configurations,
//! rendered by meshinit (through its library: parse → config → plan → iptables text) and by an
//! independent string-level model of Istio's generator (`tests/istio_model`), must agree byte
//! for byte. A failure prints the case in the conformance `args` format.

mod istio_model;
mod support;

use std::net::{Ipv4Addr, Ipv6Addr};

use istio_model::{restore_texts, to_case_args, to_cli, IstioConfig};
use meshinit::backend::iptables::restore_text;
use meshinit::cli::{self, Command};
use meshinit::config::detect::SystemHost;
use meshinit::config::Config;
use meshinit::plan::{self, Family};
use proptest::prelude::*;

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("15001".to_string()),
        (1u16..=65535).prop_map(|p| p.to_string()),
    ]
}

/// A comma list as people write them: maybe empty elements, maybe a trailing comma.
fn list_of<S: Strategy<Value = String>>(item: S, max: usize) -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(item, 0..=max),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(items, trailing, double)| {
            let mut text = items.join(if double { ",," } else { "," });
            if trailing && !text.is_empty() {
                text.push(',');
            }
            text
        })
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, l)| format!("{}/{l}", Ipv4Addr::from(a))),
        (any::<u128>(), 0u8..=128).prop_map(|(a, l)| format!("{}/{l}", Ipv6Addr::from(a))),
        (any::<u8>(), 8u8..=32).prop_map(|(b, l)| format!("127.0.{b}.1/{l}")),
        Just("::1/128".to_string()),
        Just("::ffff:10.1.2.3/120".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("2001:db8::/32".to_string()),
    ]
}

fn ids() -> impl Strategy<Value = String> {
    proptest::collection::vec(0u32..70000, 1..=3)
        .prop_map(|ids| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
}

fn ifname() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,8}"
}

fn group() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,6}",
        (0u32..70000).prop_map(|g| g.to_string())
    ]
}

fn dns_servers() -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
    (
        proptest::collection::vec(
            any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
            0..=2,
        ),
        proptest::collection::vec(
            any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
            0..=2,
        ),
    )
}

prop_compose! {
    fn istio_config()(
        (proxy_port, inbound_capture_port, inbound_tunnel_port) in (port(), port(), port()),
        proxy_uid in ids(),
        proxy_gid in prop_oneof![Just(String::new()), ids()],
        mode in prop_oneof![Just(""), Just("REDIRECT"), Just("TPROXY")],
        mark in (1u32..100_000).prop_filter("1338 is the outbound mark", |m| *m != 1338),
        inbound_ports_include in prop_oneof![Just(String::new()), Just("*".to_string()), Just(",".to_string()), list_of(port(), 3)],
        inbound_ports_exclude in list_of(port(), 3),
        owner_groups_include in prop_oneof![3 => Just("*".to_string()), 1 => Just(String::new()), 2 => list_of(group(), 4)],
        owner_groups_exclude in list_of(group(), 3),
        (outbound_ports_include, outbound_ports_exclude) in (list_of(port(), 3), list_of(port(), 3)),
        outbound_ip_ranges_include in prop_oneof![Just(String::new()), Just("*".to_string()), list_of(cidr(), 4)],
        outbound_ip_ranges_exclude in list_of(cidr(), 3),
        (kube_virt_interfaces, exclude_interfaces) in (list_of(ifname(), 2), list_of(ifname(), 2)),
        (redirect_dns, capture_all_dns, drop_invalid, enable_ipv6) in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (dns_servers_v4, dns_servers_v6) in dns_servers(),
        (lb_octet, lb_len) in (any::<u8>(), 8u8..=32),
    ) -> IstioConfig {
        IstioConfig {
            proxy_port, inbound_capture_port, inbound_tunnel_port, proxy_uid, proxy_gid,
            inbound_interception_mode: mode.to_string(),
            inbound_tproxy_mark: mark.to_string(),
            inbound_tproxy_route_table: "133".to_string(),
            inbound_ports_include, inbound_ports_exclude, owner_groups_include, owner_groups_exclude,
            outbound_ports_include, outbound_ports_exclude, outbound_ip_ranges_include,
            outbound_ip_ranges_exclude, kube_virt_interfaces, exclude_interfaces,
            redirect_dns, capture_all_dns, drop_invalid, enable_ipv6,
            dns_servers_v4, dns_servers_v6,
            host_ipv4_loopback_cidr: format!("127.{lb_octet}.0.1/{lb_len}"),
        }
    }
}

/// meshinit's restore texts for a command line, through the library (no process per case).
fn meshinit_texts(args: &[String], env: &[(String, String)]) -> Result<(String, String), String> {
    let argv: Vec<String> = std::iter::once("meshinit".to_string())
        .chain(args.iter().cloned())
        .collect();
    let env: cli::Env = env.iter().cloned().collect();
    let raw = match cli::parse(&argv, &env).map_err(|e| e.to_string())? {
        Command::Run(raw) => raw,
        other => return Err(format!("not a run: {other:?}")),
    };
    let config = Config::build(&raw, &SystemHost).map_err(|e| e.to_string())?;
    let plan = plan::plan(&config.capture);
    Ok((
        restore_text(&plan.rules(Family::V4)),
        restore_text(&plan.rules(Family::V6)),
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn meshinit_renders_random_configurations_exactly_as_istio(cfg in istio_config()) {
        let (args, env) = to_cli(&cfg);
        let (model_v4, model_v6) = restore_texts(&cfg);
        let (ours_v4, ours_v6) = meshinit_texts(&args, &env)
            .map_err(|e| TestCaseError::fail(format!("meshinit rejected a valid configuration: {e}\n{}", to_case_args(&cfg))))?;
        prop_assert!(
            ours_v4 == model_v4 && ours_v6 == model_v6,
            "case:\n{}\nIPv4:\n{}\nIPv6:\n{}",
            to_case_args(&cfg),
            support::diff(&model_v4, &ours_v4),
            support::diff(&model_v6, &ours_v6)
        );
    }
}
