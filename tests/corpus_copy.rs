//! The repository's copy of Istio's conformance corpus (`tests/data/istio`) must not drift
//! from the project's reference copy (`../shared/conformance`) where that folder exists: every
//! file of either must be in the other, byte for byte.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every file under `root`, by its path relative to `root`, with its bytes.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("readable file");
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

#[test]
fn the_repository_copy_equals_the_reference_corpus_when_present() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance");
    if !reference.is_dir() {
        eprintln!(
            "note: {} is absent; the repository copy is the only corpus",
            reference.display()
        );
        return;
    }
    let ours = support::conformance_dir();
    let mut theirs = files(&reference);
    // The reference's README describes its own layout; ours has its own README.
    theirs.remove(Path::new("README.md"));
    let mut ours = files(&ours);
    ours.remove(Path::new("README.md"));
    let mut problems = Vec::new();
    for (path, bytes) in &theirs {
        match ours.get(path) {
            None => problems.push(format!("missing from tests/data/istio: {}", path.display())),
            Some(b) if b != bytes => problems.push(format!("differs: {}", path.display())),
            Some(_) => {}
        }
    }
    for path in ours.keys().filter(|p| !theirs.contains_key(*p)) {
        problems.push(format!("not in the reference corpus: {}", path.display()));
    }
    assert!(
        problems.is_empty(),
        "tests/data/istio drifted from {}:\n{}",
        reference.display(),
        problems.join("\n")
    );
    assert_eq!(
        ours.len(),
        27 * 3 + 28 * 2,
        "27 iptables and 28 nftables cases"
    );
}
