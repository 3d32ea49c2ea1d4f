//! Random valid configurations applied to a real kernel, on every backend: the kernel must hold
//! exactly the plan afterwards (meshinit's read-back and `--check` agree), a second run must
//! change nothing, and cleanup must restore the namespace exactly. This is what keeps re-runs
//! idempotent for inputs beyond Istio's 27 cases: a mismatch between meshinit's idea of the
//! kernel's form of a rule and the kernel's would make every re-run see drift.
//! meshinit's own options (`--exclude-inbound-sources`, `--exclude-outbound-ports-for-uids`)
//! are drawn on top of half of the configurations.

mod istio_model;
mod support;

use istio_model::strategy::istio_config;
use istio_model::{to_case_args, to_cli, IstioConfig};
use proptest::prelude::*;
use support::apply::{all_rules, meshinit};
use support::netlab::Lab;
use support::{diff, require_root};

/// Group names would need entries in /etc/group; numbers exercise the same rules.
fn numeric_groups(cfg: &mut IstioConfig) {
    let numeric = |list: &str| -> String {
        list.split(',')
            .map(|g| {
                if g.is_empty() || g == "*" || g.bytes().all(|b| b.is_ascii_digit()) {
                    g.to_string()
                } else {
                    (3000 + g.len()).to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    cfg.owner_groups_include = numeric(&cfg.owner_groups_include);
    cfg.owner_groups_exclude = numeric(&cfg.owner_groups_exclude);
}

/// meshinit's own options, at random: source networks of both families (host bits, nesting
/// and more than 16 of a family possible: sets under native nftables) and uid-port entries
/// (long port lists possible), as extra arguments.
fn own_options() -> impl Strategy<Value = Vec<String>> {
    let net = prop_oneof![
        (any::<[u8; 4]>(), 8u8..=32)
            .prop_map(|(a, len)| format!("{}.{}.{}.{}/{len}", a[0], a[1], a[2], a[3])),
        (any::<u128>(), 16u8..=128)
            .prop_map(|(a, len)| format!("{}/{len}", std::net::Ipv6Addr::from(a))),
    ];
    let entry = (
        prop_oneof![Just("tcp"), Just("udp"), Just("tcp,udp"), Just("*")],
        proptest::collection::vec(1u16.., 1..20),
        proptest::collection::vec(0u32..5000, 1..3),
    )
        .prop_map(|(proto, ports, uids)| {
            let list = |v: Vec<String>| v.join(",");
            format!(
                "{proto}:{}:{}",
                list(ports.iter().map(u16::to_string).collect()),
                list(uids.iter().map(u32::to_string).collect())
            )
        });
    (
        proptest::collection::vec(net, 0..40),
        proptest::collection::vec(entry, 0..3),
    )
        .prop_map(|(nets, entries)| {
            let mut out = Vec::new();
            if !nets.is_empty() {
                out.push(format!("--exclude-inbound-sources={}", nets.join(",")));
            }
            if !entries.is_empty() {
                out.push(format!(
                    "--exclude-outbound-ports-for-uids={}",
                    entries.join(";")
                ));
            }
            out
        })
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(16);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    #[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
    fn random_configurations_apply_exactly_rerun_as_no_op_and_clean_up(
        mut cfg in istio_config(),
        backend in prop_oneof![Just("--force-iptables-binary=legacy"), Just("--force-iptables-binary=nft"), Just("--native-nftables")],
        own in prop_oneof![Just(Vec::new()), own_options()],
    ) {
        if !require_root("random_configurations_apply_exactly_rerun_as_no_op_and_clean_up") {
            return Ok(());
        }
        numeric_groups(&mut cfg);
        let (mut args, env) = to_cli(&cfg);
        args.push(backend.to_string());
        args.extend(own.iter().cloned());
        let case = format!("{backend} {own:?}\n{}", to_case_args(&cfg));
        let lab = Lab::new().expect("lab");
        let before = all_rules(&lab.pod);

        let out = meshinit(&lab.pod, &args, &env);
        prop_assert_eq!(out.code, Some(0), "install failed:\n{}\n{}", case, out.stderr);
        prop_assert!(!out.stderr.contains("read-back differs"), "{}\n{}", case, out.stderr);
        let installed = all_rules(&lab.pod);

        let mut check = args.clone();
        check.push("--check".to_string());
        let out = meshinit(&lab.pod, &check, &env);
        prop_assert_eq!(out.code, Some(0), "--check after install:\n{}\n{}", case, out.stderr);

        let out = meshinit(&lab.pod, &args, &env);
        prop_assert_eq!(out.code, Some(0), "second run:\n{}\n{}", case, out.stderr);
        if backend != "--native-nftables" {
            prop_assert!(out.stderr.contains("nothing changed"), "{}\n{}", case, out.stderr);
        }
        let again = all_rules(&lab.pod);
        prop_assert!(again == installed, "second run changed:\n{}\n{}", case, diff(&installed, &again));

        let mut cleanup = args.clone();
        cleanup.push("--cleanup-only".to_string());
        let out = meshinit(&lab.pod, &cleanup, &env);
        prop_assert_eq!(out.code, Some(0), "cleanup:\n{}\n{}", case, out.stderr);
        let after = all_rules(&lab.pod);
        prop_assert!(after == before, "cleanup left:\n{}\n{}", case, diff(&before, &after));
    }
}
