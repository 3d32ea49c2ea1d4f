//! Istio's own 28 nftables test cases, read from the repository's copy in `tests/data/istio/nftables`:
//! `meshinit --dry-run` with each case's arguments (which include `--native-nftables=true`)
//! must print exactly the nft script Istio's native nftables backend writes (`ruleset.nft`).

mod support;

#[test]
fn every_nftables_case_matches_istio_byte_for_byte() {
    support::check_dry_run_cases("nftables", 28, |case| case.read("ruleset.nft"));
}
