//! Helpers for the tests that apply rules in a lab namespace: running meshinit there, reading
//! back everything it may change, the plan for a command line, tool directories with one
//! tool broken on purpose or standing in for one answer, and the checks several tests make
//! (the namespace unchanged, the retry lines of a log, outbound traffic captured).

use std::os::fd::OwnedFd;
use std::path::Path;

use meshinit::cli::{self, Command};
use meshinit::config::detect::SystemHost;
use meshinit::config::Config;
use meshinit::plan::{self, Family};
use meshinit::render::iptables_save::{compare, expected_tables, parse_save, State};

use std::net::{Ipv4Addr, SocketAddr};

use super::netlab::{Client, Lab, ListenerSpec, Netns};
use super::{run_meshinit, Meshinit, Output};

pub const VARIANTS: [&str; 2] = ["legacy", "nft"];

pub fn path_env() -> (String, String) {
    (
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
    )
}

/// Runs meshinit in the lab's pod namespace with these arguments and environment (plus PATH).
pub fn meshinit(pod: &Netns, args: &[String], env: &[(String, String)]) -> Output {
    let mut full = args.to_vec();
    full.push(format!("--network-namespace={}", pod.path().display()));
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(path_env());
    }
    run_meshinit(&full, &env)
}

/// meshinit run inside the pod's namespace (`ip netns exec`) with the machine's tools, as a
/// process in the pod would run it; add arguments, `nobody()` and so on, then `run()`.
pub fn in_pod(pod: &Netns) -> Meshinit {
    Meshinit::new().netns(pod).real_path()
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// What `[ip6]iptables-<variant>-save` prints in the pod.
fn save_output(pod: &Netns, family: Family, variant: &str) -> String {
    let tool = match family {
        Family::V4 => format!("iptables-{variant}-save"),
        Family::V6 => format!("ip6tables-{variant}-save"),
    };
    String::from_utf8_lossy(&pod.run(&[&tool], None).stdout).into_owned()
}

/// How one family's live rules in the pod (read with the variant's save tool) relate to the
/// plan; numeric groups only.
pub fn kernel_state(pod: &Netns, variant: &str, plan: &plan::Plan, family: Family) -> State {
    let live = parse_save(&save_output(pod, family, variant));
    let expected = expected_tables(&plan.rules(family), &|_| None).expect("numeric groups");
    compare(&live, &expected)
}

/// One family's rules as the kernel holds them, normalised: no comments or counters, and no
/// tables that hold nothing (an empty table has no effect, and loading one cannot be undone
/// with legacy iptables).
pub fn rules_of(pod: &Netns, family: Family, variant: &str) -> String {
    let text = save_output(pod, family, variant);
    let mut kept = String::new();
    for (name, table) in parse_save(&text) {
        let has_content = !table.rules.is_empty()
            || table.chains.iter().any(|c| {
                !["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"].contains(&c.as_str())
            });
        if has_content {
            kept.push_str(&format!("table {name}\n"));
            for line in table.text.lines().filter(|l| !l.starts_with('*')) {
                let line = match line.find(" [") {
                    Some(i) if line.starts_with(':') => &line[..i],
                    _ => line,
                };
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    kept
}

/// Everything meshinit may change in a namespace: both variants' rules of both families, the
/// policy-routing rules, every routing table and lo's addresses (read with `ip`, which tests
/// may use; meshinit itself does not).
pub fn all_rules(pod: &Netns) -> String {
    let mut out = String::new();
    for family in [Family::V4, Family::V6] {
        for variant in VARIANTS {
            out.push_str(&format!(
                "== {family:?} {variant}\n{}",
                rules_of(pod, family, variant)
            ));
        }
    }
    out.push_str(&routing_state(pod, |_| true));
    out
}

/// The policy-routing rules, the routes for which `keep_route` holds, and lo's IPv6
/// addresses, as `ip` shows them (without address lifetimes, which count down between reads).
pub fn routing_state(pod: &Netns, keep_route: impl Fn(&str) -> bool) -> String {
    let mut out = String::new();
    for argv in [
        &["ip", "rule", "show"][..],
        &["ip", "-6", "rule", "show"],
        &["ip", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["ip", "-6", "addr", "show", "dev", "lo"],
    ] {
        let shown = String::from_utf8_lossy(&pod.run(argv, None).stdout).into_owned();
        let routes = argv.contains(&"route");
        let shown: String = shown
            .lines()
            .filter(|l| !l.contains("valid_lft") && (!routes || keep_route(l)))
            .map(|l| format!("{l}\n"))
            .collect();
        out.push_str(&format!("== {}\n{shown}", argv.join(" ")));
    }
    out
}

/// The plan meshinit makes for these arguments, built through the library.
pub fn plan_for(args: &[String], env: &[(String, String)]) -> plan::Plan {
    let argv: Vec<String> = std::iter::once("meshinit".to_string())
        .chain(args.iter().cloned())
        .collect();
    let env: cli::Env = env.iter().cloned().collect();
    let Ok(Command::Run(raw)) = cli::parse(&argv, &env) else {
        panic!("args parse")
    };
    let config = Config::build(&raw, &SystemHost).expect("valid config");
    plan::plan(&config.capture)
}

pub fn assert_ok(out: &Output, what: &str) {
    assert_eq!(
        out.code,
        Some(0),
        "{what}: meshinit failed:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("read-back differs"),
        "{what}: {}",
        out.stderr
    );
}

/// Istio's default arguments with IPv6 on, so both families are exercised.
pub fn default_args() -> Vec<String> {
    super::istio_init_args(&["--ipv6=true"])
}

/// A directory whose tools are the real ones, except `broken`, which always fails.
pub fn tools_with_broken(dir: &Path, broken: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir("/usr/sbin").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains("tables") && name != broken {
            let _ = std::os::unix::fs::symlink(&path, dir.join(&name));
        }
    }
    let script = dir.join(broken);
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\necho 'simulated failure' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir.display().to_string()
}

/// Where the real tool is, for a stand-in to hand over to.
pub fn real(tool: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A directory of the iptables tools with `tool` replaced by a script that, for its first
/// call whose stdin passes `grep -q PATTERN` (any call with an empty pattern), runs `first`
/// (shell text, which ends the script) and otherwise runs the real tool with the same input.
/// The PATH to run meshinit with.
pub fn stand_in(dir: &Path, tool: &str, pattern: &str, first: &str) -> Vec<(String, String)> {
    std::fs::remove_dir_all(dir).ok();
    let path = tools_with_broken(dir, tool);
    let marker = dir.join("answered-once");
    let input = dir.join("input");
    let matches = if pattern.is_empty() {
        "true".to_string()
    } else {
        format!("grep -q -e '{pattern}' {}", input.display())
    };
    std::fs::write(
        dir.join(tool),
        format!(
            "#!/bin/sh\ncat > {input}\nif [ ! -e {m} ] && {matches}; then\n  touch {m}\n  {first}\nfi\nexec {real} \"$@\" < {input}\n",
            input = input.display(),
            m = marker.display(),
            real = real(tool)
        ),
    )
    .unwrap();
    vec![(
        "PATH".to_string(),
        format!("{path}:/usr/sbin:/usr/bin:/bin"),
    )]
}

/// Lets a [`stand_in`] answer once more.
pub fn rearm(dir: &Path) {
    std::fs::remove_file(dir.join("answered-once")).ok();
}

/// Binds meshinit's lock name in `ns` from a thread of this test, as a running meshinit
/// would; the lock is held until the returned socket is dropped.
pub fn hold_meshinit_lock(ns: &Netns) -> OwnedFd {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let addr = nix::sys::socket::UnixAddr::new_abstract(b"meshinit/netns-lock").unwrap();
        nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
            .expect("the lock is free");
        fd
    })
    .join()
    .expect("lock thread")
}

/// Fails with a diff unless the namespace's state `after` a run is what it was `before`.
pub fn assert_unchanged(before: &str, after: &str, what: &str) {
    assert!(
        before == after,
        "{what}: the namespace changed:\n{}",
        super::diff(before, after)
    );
}

/// The retry lines of a run's log (the `--retries` loop's "failed for a transient reason").
pub fn retry_lines(out: &Output) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.contains("failed for a transient reason"))
        .collect()
}

/// An app's (uid 1000) outbound connection to the peer's port 80 lands on the proxy's outbound
/// port 15001 with its original destination: the rules a run installed capture traffic.
pub fn assert_outbound_captured(lab: &Lab, what: &str) {
    let _outbound = ListenerSpec::tcp(
        "outbound",
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 15001),
    )
    .start(&lab.pod)
    .expect("outbound listener");
    let _peer = ListenerSpec::tcp("peer-80", SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 80))
        .start(&lab.peer)
        .expect("peer listener");
    let dst = lab.peer4(80);
    match Client::user(1000, 1000).tcp(&lab.pod, dst) {
        Ok(l) if l.listener == "outbound" && l.original_dst == Some(dst) => {}
        Ok(l) => panic!("{what}: app->peer:80 should be captured, landed: {l}"),
        Err(e) => panic!("{what}: app->peer:80 should be captured, got no landing: {e}"),
    }
}
