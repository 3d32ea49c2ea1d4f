//! Shared support for integration tests: the network-namespace lab, running the meshinit
//! binary with a controlled environment, reading the conformance corpus, readable
//! diffs, and test gating.

// Every integration test binary compiles this module tree but uses only part of it.
#![allow(dead_code)]

pub mod apply;
pub mod netlab;
pub mod nft;

use std::path::PathBuf;
use std::process::Command;

/// Istio's default istio-init arguments, as its injection template passes them (the shell
/// quoting resolved; `-x ""` is an explicit empty value), without the log flag.
pub const ISTIO_INIT_ARGS: &[&str] = &[
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

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

/// The repository's copy of Istio's conformance corpus (its own rule-generation cases);
/// `tests/data/istio/README.md` says where it comes from.
pub fn conformance_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/istio"))
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshinit"));
    command.args(args.iter().map(|a| a.as_ref())).env_clear();
    if !env.iter().any(|(k, _)| k == "PATH") {
        command.env("PATH", iptables_stand_ins());
    }
    let out = command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("meshinit runs");
    output(out)
}

/// A `PATH` directory that looks like a machine with the iptables tools installed (Istio's
/// image), whatever this machine has: `--backend auto` then means iptables, so output-checking
/// tests do not depend on the host. The stand-ins fail loudly if a test does run them; tests
/// that install rules pass the real `PATH` (`support::apply::path_env`).
pub fn iptables_stand_ins() -> String {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("meshinit-test-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the stand-in tools' directory");
        for tool in ["iptables-nft-save", "iptables-legacy-save"] {
            let path = dir.join(tool);
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho \"stand-in {tool}: a test ran it\" >&2\nexit 99\n"),
            )
            .expect("writing a stand-in tool");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("making a stand-in tool executable");
        }
        dir.to_string_lossy().into_owned()
    })
    .clone()
}

/// Runs the meshinit binary with no arguments, this environment (with the stand-in tools as
/// `PATH` unless it gives one, as [`run_meshinit`]) and `stdin` on its
/// standard input, as a CNI runtime runs a plugin.
pub fn run_meshinit_stdin<K: AsRef<str>, V: AsRef<str>>(env: &[(K, V)], stdin: &str) -> Output {
    use std::io::Write;
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshinit"));
    command.env_clear();
    if !env.iter().any(|(k, _)| k.as_ref() == "PATH") {
        command.env("PATH", iptables_stand_ins());
    }
    let mut child = command
        .envs(env.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("meshinit runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    output(child.wait_with_output().expect("meshinit ends"))
}

fn output(out: std::process::Output) -> Output {
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

/// Runs `meshinit --dry-run` for every case of a backend and compares what it prints
/// (without `#` lines) with `expected(case)`; reports every differing case at once.
pub fn check_dry_run_cases(backend: &str, count: usize, expected: impl Fn(&Case) -> String) {
    let cases = conformance_cases(backend);
    assert_eq!(
        cases.len(),
        count,
        "expected Istio's {count} {backend} cases"
    );
    let mut failures = Vec::new();
    for case in &cases {
        let expected = without_comments(&expected(case));
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

/// The text without `#` lines (comments for iptables-restore and nft alike).
pub fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}
