//! Hostile input: random command lines and environments, built from meshinit's own flag names
//! and adversarial values, must never panic; every rejection is a bad-input error (exit 2)
//! that names a flag or variable and the value. Run longer with `PROPTEST_CASES=<n>`.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;

use meshinit::cli::{self, Command, FLAGS};
use meshinit::config::detect::Host;
use meshinit::config::{Config, ConfigError};
use meshinit::plan;
use meshinit::render::iptables_text::dry_run_text;
use meshinit::render::nft_ruleset::nft_script;
use proptest::prelude::*;

/// A machine with one IPv4 address, a resolv.conf and a passwd: detection always succeeds, so
/// every error left is about the input.
struct Machine;

impl Host for Machine {
    fn interface_addrs(&self) -> io::Result<Vec<IpAddr>> {
        Ok(vec!["10.1.2.3".parse().unwrap()])
    }
    fn read_file(&self, path: &str) -> io::Result<String> {
        match path {
            "/etc/resolv.conf" => Ok("nameserver 10.96.0.10\n".into()),
            "/etc/passwd" => Ok("istio-proxy:x:1337:1337::/:\n".into()),
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("*".to_string()),
        Just(",".to_string()),
        Just("-".to_string()),
        Just("--".to_string()),
        Just("=".to_string()),
        (0u64..200_000).prop_map(|n| n.to_string()),
        "[0-9a-fA-F:./,*-]{0,24}",
        "[ -~]{0,16}",
        ".{0,12}",
        Just("10.0.0.0/8,2001:db8::/32".to_string()),
        Just("true".to_string()),
        Just("TPROXY".to_string()),
        Just("1s".to_string()),
    ]
}

fn arg() -> impl Strategy<Value = Vec<String>> {
    let names: Vec<&'static cli::FlagSpec> = FLAGS.iter().collect();
    prop_oneof![
        // --long=value
        (proptest::sample::select(names.clone()), value())
            .prop_map(|(f, v)| vec![format!("--{}={v}", f.long)]),
        // --long value / -s value / -svalue
        (proptest::sample::select(names.clone()), value()).prop_map(|(f, v)| match f.short {
            Some(s) => vec![format!("-{s}"), v],
            None => vec![format!("--{}", f.long), v],
        }),
        (proptest::sample::select(names), value()).prop_map(|(f, v)| match f.short {
            Some(s) => vec![format!("-{s}{v}")],
            None => vec![format!("--{}", f.long)],
        }),
        // anything at all
        ".{0,10}".prop_map(|s| vec![s]),
        Just(vec!["istio-iptables".to_string()]),
    ]
}

fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    let mut names: Vec<String> = FLAGS
        .iter()
        .flat_map(|f| f.env.iter().map(|e| e.to_string()))
        .collect();
    names.extend(cli::ENV_ONLY.iter().map(|e| e.name.to_string()));
    proptest::collection::btree_map(proptest::sample::select(names), value(), 0..4)
}

/// 3000 cases by default; `PROPTEST_CASES` runs it as long as wanted.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3000);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_input_panics_and_every_rejection_names_its_setting(
        args in proptest::collection::vec(arg(), 0..8),
        env in env(),
    ) {
        let argv: Vec<String> = std::iter::once("meshinit".to_string()).chain(args.into_iter().flatten()).collect();
        let raw = match cli::parse(&argv, &env) {
            Ok(Command::Run(raw)) => raw,
            Ok(_) => return Ok(()),
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
        };
        match Config::build(&raw, &Machine) {
            Ok(config) => {
                // Whatever is valid must plan and render without panicking.
                let plan = plan::plan(&config.capture);
                let _ = dry_run_text(&plan);
                let _ = nft_script(&plan);
            }
            Err(ConfigError::Invalid { setting, value, .. }) => {
                prop_assert!(setting.contains("--") || setting.contains("(env)"), "{}", setting);
                let message = Config::build(&raw, &Machine).unwrap_err().to_string();
                prop_assert!(message.contains(&format!("{value:?}")), "{}", message);
            }
            Err(ConfigError::Detection(e)) => prop_assert!(false, "detection cannot fail here: {}", e),
        }
    }
}
