//! Differential test beyond the 27 golden cases: thousands of random valid configurations,
//! rendered by meshinit (through its library: parse → config → plan → iptables text) and by an
//! independent string-level model of Istio's generator (`tests/istio_model`), must agree byte
//! for byte. A failure prints the case in the conformance `args` format.

mod istio_model;
mod support;

use istio_model::strategy::istio_config;
use istio_model::{restore_texts, to_case_args, to_cli};
use meshinit::cli::{self, Command};
use meshinit::config::detect::SystemHost;
use meshinit::config::Config;
use meshinit::plan::{self, Family};
use meshinit::render::iptables_text::restore_text;
use proptest::prelude::*;

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
