//! `rust-version` in Cargo.toml must be what the locked dependencies really need: the highest
//! `rust_version` that `cargo metadata` reports for the packages in Cargo.lock that are built
//! for the Linux targets meshinit supports (a Windows- or WASI-only dependency is never built). Lower, and a
//! user with that toolchain fails to build; higher, and the manifest turns away toolchains
//! that would work (Debian trixie's 1.85 builds the image).

use std::process::Command;

/// `1.85`, `1.85.0` → (1, 85, 0).
fn version(text: &str) -> (u32, u32, u32) {
    let mut parts = text
        .split('.')
        .map(|p| p.parse::<u32>().expect("numeric version"));
    let major = parts.next().expect("major");
    (major, parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The targets meshinit is built for (README: "Targets").
const TARGETS: &[&str] = &["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];

/// `cargo metadata` for one target platform: the packages its resolve graph holds.
fn packages_for(target: &str) -> Vec<serde_json::Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", target])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let resolved: Vec<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|node| node["id"].as_str().unwrap())
        .collect();
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| resolved.contains(&p["id"].as_str().unwrap()))
        .cloned()
        .collect()
}

#[test]
fn the_manifest_rust_version_is_the_locked_dependencies_highest() {
    let packages: Vec<_> = TARGETS.iter().flat_map(|t| packages_for(t)).collect();
    let mut ours = None;
    let mut needed = ((0, 0, 0), String::new());
    for package in &packages {
        let name = package["name"].as_str().unwrap();
        let Some(rv) = package["rust_version"].as_str() else {
            continue;
        };
        if name == env!("CARGO_PKG_NAME") {
            ours = Some(version(rv));
        } else if version(rv) > needed.0 {
            needed = (version(rv), format!("{name} {}", package["version"]));
        }
    }
    let ours = ours.expect("Cargo.toml sets rust-version");
    assert_eq!(
        ours, needed.0,
        "Cargo.toml says rust-version {ours:?}, the locked dependencies need {:?} ({})",
        needed.0, needed.1
    );
}
