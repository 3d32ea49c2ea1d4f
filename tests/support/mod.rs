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

    /// Whether every group name the case's owner-group settings use exists on this machine
    /// (a number or `*` always does): iptables resolves names when it installs.
    pub fn groups_resolvable(&self) -> bool {
        let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
        self.env
            .iter()
            .filter(|(k, _)| k.starts_with("ISTIO_OUTBOUND_OWNER_GROUPS"))
            .all(|(_, v)| {
                v.split(',')
                    .filter(|g| !g.is_empty() && *g != "*")
                    .all(|g| {
                        g.bytes().all(|b| b.is_ascii_digit())
                            || groups.lines().any(|l| l.split(':').next() == Some(g))
                    })
            })
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

impl Output {
    /// stdout, then stderr: everything the run printed.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// The meshinit binary under test.
pub const MESHINIT: &str = env!("CARGO_BIN_EXE_meshinit");

/// Istio's default istio-init arguments ([`ISTIO_INIT_ARGS`]) followed by `extra`.
pub fn istio_init_args(extra: &[&str]) -> Vec<String> {
    ISTIO_INIT_ARGS
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
}

/// What `PATH` a run gets.
#[derive(Clone)]
enum PathEnv {
    /// [`iptables_stand_ins`]: a machine with the iptables tools, none of which may run.
    StandIns,
    Set(String),
    Unset,
}

/// One run of the meshinit binary, the one way tests start it: arguments, exactly this
/// environment (nothing inherited; `PATH` is [`iptables_stand_ins`] unless set), optionally
/// stdin, inside a lab namespace (`ip netns exec`), under a wrapper command (`setpriv`,
/// `unshare`, `sh -c`) or as another user. [`Meshinit::run`] waits and returns an [`Output`];
/// [`Meshinit::spawn`] returns the child.
pub struct Meshinit {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    path: PathEnv,
    stdin: Option<Vec<u8>>,
    netns: Option<String>,
    wrapper: Vec<String>,
    user: Option<(u32, u32)>,
    stdout: Option<std::process::Stdio>,
    stderr: Option<std::process::Stdio>,
}

impl Default for Meshinit {
    fn default() -> Self {
        Meshinit::new()
    }
}

impl Meshinit {
    pub fn new() -> Meshinit {
        Meshinit {
            program: MESHINIT.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            path: PathEnv::StandIns,
            stdin: None,
            netns: None,
            wrapper: Vec::new(),
            user: None,
            stdout: None,
            stderr: None,
        }
    }

    /// Istio's default istio-init arguments ([`ISTIO_INIT_ARGS`]) first.
    pub fn istio_init() -> Meshinit {
        Meshinit::new().args(ISTIO_INIT_ARGS)
    }

    /// Another copy of the binary (one carrying file capabilities, say).
    pub fn binary(mut self, program: impl AsRef<std::path::Path>) -> Meshinit {
        self.program = program.as_ref().to_string_lossy().into_owned();
        self
    }

    pub fn arg(mut self, arg: impl AsRef<str>) -> Meshinit {
        self.args.push(arg.as_ref().to_string());
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Meshinit {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// One environment variable (`PATH` is [`Meshinit::path`]).
    pub fn env(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Meshinit {
        let (name, value) = (name.as_ref(), value.as_ref());
        if name == "PATH" {
            self.path = PathEnv::Set(value.to_string());
        } else {
            self.env.push((name.to_string(), value.to_string()));
        }
        self
    }

    pub fn envs<K: AsRef<str>, V: AsRef<str>>(
        mut self,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Meshinit {
        for (k, v) in env {
            self = self.env(k, v);
        }
        self
    }

    /// `PATH` for the run (and for finding `ip` and a wrapper).
    pub fn path(self, path: impl AsRef<str>) -> Meshinit {
        self.env("PATH", path)
    }

    /// This test's own `PATH`, with the machine's real tools.
    pub fn real_path(self) -> Meshinit {
        let (_, path) = apply::path_env();
        self.path(path)
    }

    /// No `PATH` at all.
    pub fn no_path(mut self) -> Meshinit {
        self.path = PathEnv::Unset;
        self
    }

    /// Fed to the run's standard input (otherwise it reads nothing).
    pub fn stdin(mut self, input: impl AsRef<[u8]>) -> Meshinit {
        self.stdin = Some(input.as_ref().to_vec());
        self
    }

    /// Runs inside this lab namespace (`ip netns exec`), as a process in the pod would.
    pub fn netns(mut self, ns: &netlab::Netns) -> Meshinit {
        self.netns = Some(ns.name().to_string());
        self
    }

    /// Runs the binary as the last argument of this command (`setpriv …`, `sh -c … "$@"`).
    pub fn wrap<S: AsRef<str>>(mut self, wrapper: impl IntoIterator<Item = S>) -> Meshinit {
        self.wrapper
            .extend(wrapper.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// As nobody (65534) without supplementary groups or capabilities, through `setpriv`.
    pub fn nobody(self) -> Meshinit {
        self.wrap(AS_NOBODY)
    }

    /// Started as this uid and gid (by this test, which must be root to do so).
    pub fn user(mut self, uid: u32, gid: u32) -> Meshinit {
        self.user = Some((uid, gid));
        self
    }

    /// Where a spawned child's stdout goes (default: nowhere); [`Meshinit::run`] takes it.
    pub fn stdout(mut self, to: impl Into<std::process::Stdio>) -> Meshinit {
        self.stdout = Some(to.into());
        self
    }

    /// Where a spawned child's stderr goes (default: a pipe); [`Meshinit::run`] takes it.
    pub fn stderr(mut self, to: impl Into<std::process::Stdio>) -> Meshinit {
        self.stderr = Some(to.into());
        self
    }

    /// The command: `[ip netns exec NAME] [wrapper…] meshinit args…`.
    fn command(&mut self) -> Command {
        // `ip` and a wrapper are found where this test finds them: the run's own PATH may
        // not have them.
        let mut argv: Vec<String> = Vec::new();
        if let Some(name) = &self.netns {
            argv.extend([which("ip"), "netns".into(), "exec".into(), name.clone()]);
        }
        if let Some((first, rest)) = self.wrapper.split_first() {
            argv.push(which(first));
            argv.extend(rest.iter().cloned());
        }
        argv.push(self.program.clone());
        argv.extend(self.args.iter().cloned());
        let path = match &self.path {
            PathEnv::StandIns => Some(iptables_stand_ins()),
            PathEnv::Set(path) => Some(path.clone()),
            PathEnv::Unset => None,
        };
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).env_clear();
        if let Some(path) = path {
            command.env("PATH", path);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Starts it: stdin piped when given (the caller writes it), else nothing; stdout nowhere
    /// and stderr piped unless [`Meshinit::stdout`] / [`Meshinit::stderr`] say otherwise.
    pub fn spawn(mut self) -> std::process::Child {
        use std::process::Stdio;
        let mut command = self.command();
        command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(self.stdout.take().unwrap_or_else(Stdio::null))
            .stderr(self.stderr.take().unwrap_or_else(Stdio::piped));
        command.spawn().expect("meshinit starts")
    }

    /// Runs it to the end: what it printed and how it exited.
    pub fn run(mut self) -> Output {
        let input = self.stdin.take();
        let out = netlab::output_with_input(self.command(), input).expect("meshinit runs");
        output(out)
    }
}

/// `setpriv`'s arguments for nobody (65534) without supplementary groups.
pub const AS_NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// `program`'s full path on this test's `PATH` (itself when it has a `/` or is not found).
fn which(program: &str) -> String {
    if program.contains('/') {
        return program.to_string();
    }
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
        .map_or_else(|| program.to_string(), |p| p.to_string_lossy().into_owned())
}

/// Runs the meshinit binary with exactly these arguments and environment (nothing inherited;
/// `PATH` the stand-in tools unless `env` sets it): [`Meshinit`] in one call.
pub fn run_meshinit<S: AsRef<str>>(args: &[S], env: &[(String, String)]) -> Output {
    Meshinit::new().args(args).envs(env.iter().cloned()).run()
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
