//! Helpers shared by the integration tests: running the meshinit binary with a controlled
//! environment, reading the conformance corpus in place, readable diffs.
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the shared conformance corpus lives, next to the repository.
pub fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance")
}

/// One conformance case: its directory, command-line arguments and environment.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Case {
    pub fn read(&self, file: &str) -> String {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// Every case of one backend (`iptables` or `nftables`), sorted by name.
pub fn conformance_cases(backend: &str) -> Vec<Case> {
    let root = conformance_dir().join(backend);
    let mut cases: Vec<Case> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|entry| {
            let dir = entry.expect("readable corpus").path();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(dir.join("args")).expect("args file");
            let mut args = Vec::new();
            let mut env = Vec::new();
            for line in text.lines().filter(|l| !l.is_empty()) {
                match line.strip_prefix("env ") {
                    Some(assignment) => {
                        let (k, v) = assignment.split_once('=').expect("env NAME=value");
                        env.push((k.to_string(), v.to_string()));
                    }
                    None => args.push(line.to_string()),
                }
            }
            Case {
                name,
                dir,
                args,
                env,
            }
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// What a meshinit run printed and how it exited.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the meshinit binary with exactly these arguments and environment (nothing inherited).
pub fn run_meshinit<S: AsRef<str>>(args: &[S], env: &[(String, String)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_meshinit"))
        .args(args.iter().map(|a| a.as_ref()))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("meshinit runs");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A unified line diff, expected (-) against actual (+).
pub fn diff(expected: &str, actual: &str) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .header("expected", "meshinit")
        .to_string()
}
