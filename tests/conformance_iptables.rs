//! Istio's own 27 iptables test cases, read from the repository's copy in `tests/data/istio/iptables`:
//! `meshinit --dry-run` with each case's arguments must print exactly Istio's restore input
//! (`ipv4.rules`, then `ipv6.rules`).

mod support;

#[test]
fn every_iptables_case_matches_istio_byte_for_byte() {
    support::check_dry_run_cases("iptables", 27, |case| {
        [case.read("ipv4.rules"), case.read("ipv6.rules")].concat()
    });
}
