//! Istio's own 27 iptables test cases, read in place from `../shared/conformance/iptables`:
//! `meshinit --dry-run` with each case's arguments must print exactly Istio's restore input.

mod support;

use support::{conformance_cases, diff, run_meshinit};

#[test]
fn every_iptables_case_matches_istio_byte_for_byte() {
    let cases = conformance_cases("iptables");
    assert_eq!(cases.len(), 27, "expected Istio's 27 iptables cases");
    let mut failures = Vec::new();
    for case in &cases {
        let expected = [case.read("ipv4.rules"), case.read("ipv6.rules")].concat();
        let mut args = case.args.clone();
        args.push("--dry-run".to_string());
        let out = run_meshinit(&args, &case.env);
        let printed: String = out
            .stdout
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        if out.code != Some(0) || printed != expected {
            failures.push(format!(
                "case {} (exit {:?}, stderr: {})\n{}",
                case.name,
                out.code,
                out.stderr.trim(),
                diff(&expected, &printed)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
