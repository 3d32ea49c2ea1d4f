//! Istio's own 28 nftables test cases, read in place from `../shared/conformance/nftables`:
//! `meshinit --dry-run` with each case's arguments (which include `--native-nftables=true`)
//! must print exactly the nft script Istio's native nftables backend writes (`ruleset.nft`,
//! `#` lines ignored).

mod support;

use support::{conformance_cases, diff, run_meshinit};

/// Drops the lines nft ignores anyway (`#` comments), keeping every other line as is.
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn every_nftables_case_matches_istio_byte_for_byte() {
    let cases = conformance_cases("nftables");
    assert_eq!(cases.len(), 28, "expected Istio's 28 nftables cases");
    let mut failures = Vec::new();
    for case in &cases {
        let expected = without_comments(&case.read("ruleset.nft"));
        let mut args = case.args.clone();
        args.push("--dry-run".to_string());
        let out = run_meshinit(&args, &case.env);
        let printed = without_comments(&out.stdout);
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
