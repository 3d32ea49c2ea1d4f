//! Shared support for integration tests: the network-namespace lab and small test-gating helpers.

// Every integration test binary compiles this module tree but uses only part of it.
#![allow(dead_code)]

pub mod netlab;

use std::path::PathBuf;

/// True when the test may use network namespaces. Without root the test is skipped with a
/// note, unless `CI` is set: CI must prove the traffic behaviour, so a silent skip there
/// would hide a misconfigured runner.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root for network namespaces, and CI is set so it may not skip");
    }
    eprintln!("note: skipping {test}: needs root for network namespaces");
    false
}

/// The shared conformance corpus (Istio's own rule-generation cases).
pub fn conformance_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/conformance"
    ))
}

/// One file of an iptables conformance case, e.g. `iptables_case("ipnets", "ipv4.rules")`.
pub fn iptables_case(case: &str, file: &str) -> String {
    let path = conformance_dir().join("iptables").join(case).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The nft script of an nftables conformance case.
pub fn nftables_case(case: &str) -> String {
    let path = conformance_dir()
        .join("nftables")
        .join(case)
        .join("ruleset.nft");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
