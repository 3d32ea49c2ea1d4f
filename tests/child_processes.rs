//! The helper programs meshinit starts (the iptables tools), on a real kernel: a hung tool is
//! killed at the run's deadline (`--timeout`) and named, and nothing is left changed; a tool
//! that writes a lot before reading its input cannot deadlock against meshinit.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshinit::plan::Family;
use meshinit::render::iptables_save::State;
use support::apply::{all_rules, default_args, kernel_state, plan_for, strings, tools_with_broken};
use support::netlab::{Lab, Netns};
use support::{diff, require_root};

/// A tool directory whose `name` is `script` (with `$REAL` the real tool), the rest real.
fn tools_with(dir: &Path, name: &str, script: &str) -> String {
    let path = tools_with_broken(dir, name);
    let text = format!("#!/bin/sh\nREAL=/usr/sbin/{name}\n{script}");
    std::fs::write(dir.join(name), text).unwrap();
    path
}

/// Runs meshinit in `pod`, but gives up (killing it) after `bound`: returns the exit code
/// (`None` when it had to be killed), stderr and how long it ran.
fn meshinit_bounded(
    pod: &Netns,
    args: &[String],
    path: &str,
    env: &[(&str, &str)],
    bound: Duration,
) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let err_file = std::env::temp_dir().join(format!(
        "meshinit-children-{}-{}.err",
        std::process::id(),
        pod.name()
    ));
    let mut child = support::Meshinit::new()
        .args(args)
        .arg(format!("--network-namespace={}", pod.path().display()))
        .path(format!("{path}:/usr/sbin:/usr/bin:/sbin:/bin"))
        .envs(env.iter().copied())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
    std::fs::remove_file(&err_file).ok();
    (code, stderr, elapsed)
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_hung_restore_tool_is_killed_at_the_deadline_named_and_nothing_is_left_changed() {
    if !require_root(
        "a_hung_restore_tool_is_killed_at_the_deadline_named_and_nothing_is_left_changed",
    ) {
        return;
    }
    let lab = Lab::new().expect("lab");
    let before = all_rules(&lab.pod);
    let dir = PathBuf::from(format!("/tmp/meshinit-hung-{}", std::process::id()));
    let pidfile = dir.join("sleeper.pid");
    // The IPv6 restore hangs the first time (after IPv4 was written), then works, so the
    // rollback of IPv4 can run; the sleeping grandchild must die with it.
    let path = tools_with(
        &dir,
        "ip6tables-nft-restore",
        &format!(
            "if [ ! -e {p} ]; then sleep 600 & echo $! > {p}; wait; fi\nexec \"$REAL\" \"$@\"\n",
            p = pidfile.display()
        ),
    );
    let mut args = default_args();
    args.push("--force-iptables-binary=nft".to_string());
    // The deadline through its environment variable (`--timeout`'s).
    let env = [("MESHINIT_TIMEOUT", "3s")];
    let (code, stderr, took) =
        meshinit_bounded(&lab.pod, &args, &path, &env, Duration::from_secs(30));
    let sleeper = std::fs::read_to_string(&pidfile).unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, Some(1), "took {took:?}: {stderr}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "took {took:?}: {stderr}"
    );
    // The tool's own run time depends on when it started (the machine's load); the deadline
    // it hit is the run's `--timeout`, named exactly.
    assert!(
        stderr.contains("ip6tables-nft-restore did not finish within ")
            && stderr.contains(
                "and was killed at the run's deadline (--timeout 3s from the start of the run)"
            ),
        "names the tool, how long it ran and the deadline: {stderr}"
    );
    let sleeper = sleeper.trim();
    assert!(!sleeper.is_empty(), "the fake tool ran");
    // Gone, or a zombie waiting for init to reap it: not running anyway.
    let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
    assert!(
        matches!(state, None | Some('Z') | Some('X')),
        "what the hung tool started was killed too: {stat}"
    );
    let after = all_rules(&lab.pod);
    assert!(before == after, "changed:\n{}", diff(&before, &after));
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_tool_writing_megabytes_before_reading_a_large_input_does_not_deadlock() {
    if !require_root("a_tool_writing_megabytes_before_reading_a_large_input_does_not_deadlock") {
        return;
    }
    let lab = Lab::new().expect("lab");
    let dir = PathBuf::from(format!("/tmp/meshinit-chatty-{}", std::process::id()));
    // 2 MB on stderr before reading stdin; 3000 inbound ports make a restore input of about
    // 175 kB: both far beyond a pipe's 64 kB buffer.
    let path = tools_with(
        &dir,
        "iptables-nft-restore",
        "head -c 2000000 /dev/zero | tr '\\0' x >&2\nexec \"$REAL\" \"$@\"\n",
    );
    let ports: Vec<String> = (1000..4000).map(|p| p.to_string()).collect();
    let mut args = default_args();
    let b = args.iter().position(|a| a == "-b").unwrap();
    args[b + 1] = ports.join(",");
    args.extend(strings(&["--force-iptables-binary=nft", "--ipv6=false"]));
    let (code, stderr, took) =
        meshinit_bounded(&lab.pod, &args, &path, &[], Duration::from_secs(60));
    std::fs::remove_dir_all(&dir).ok();
    let tail: String = stderr
        .chars()
        .rev()
        .take(2000)
        .collect::<String>()
        .chars()
        .rev()
        .collect();
    assert_eq!(code, Some(0), "took {took:?}: ...{tail}");
    let plan = plan_for(&args, &[]);
    assert_eq!(
        kernel_state(&lab.pod, "nft", &plan, Family::V4),
        State::InPlace
    );
}

/// A tool directory in which every iptables tool is the real one behind a wrapper that first
/// appends its name to `log`.
fn logging_tools(dir: &Path, log: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir("/usr/sbin").unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.contains("tables") {
            let script = format!(
                "#!/bin/sh\necho {name} >> {}\nexec /usr/sbin/{name} \"$@\"\n",
                log.display()
            );
            let path = dir.join(&name);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
    }
    dir.display().to_string()
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn an_install_runs_only_the_tool_processes_it_needs() {
    if !require_root("an_install_runs_only_the_tool_processes_it_needs") {
        return;
    }
    let dir = PathBuf::from(format!("/tmp/meshinit-count-{}", std::process::id()));
    let log = dir.join("calls.log");
    let path = logging_tools(&dir.join("bin"), &log);
    // Istio's default arguments with IPv6, in a fresh namespace: what each run starts.
    let count = |pod: &Netns, extra: &[&str]| {
        let _ = std::fs::remove_file(&log);
        let mut args = default_args();
        args.extend(strings(extra));
        let (code, stderr, _) = meshinit_bounded(pod, &args, &path, &[], Duration::from_secs(60));
        assert_eq!(code, Some(0), "{extra:?}: {stderr}");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let mut calls: Vec<&str> = calls.lines().collect();
        calls.sort_unstable();
        calls.join(" ")
    };
    let lab = Lab::new().expect("lab");
    // The variant chosen by the probe: the legacy tables read (their tool is always run), the
    // nft tables known empty from the kernel; per family the probe with a save beside it, the
    // write and the read-back.
    assert_eq!(
        count(&lab.pod, &[]),
        "ip6tables-legacy-save ip6tables-nft-restore ip6tables-nft-restore ip6tables-nft-save \
         ip6tables-nft-save iptables-legacy-save iptables-nft-restore iptables-nft-restore \
         iptables-nft-save iptables-nft-save"
    );
    // A re-run reads each place once and writes nothing.
    assert_eq!(
        count(&lab.pod, &[]),
        "ip6tables-legacy-save ip6tables-nft-save iptables-legacy-save iptables-nft-save"
    );
    // Forced nft: every place read once with its tool, then the writes and the read-backs.
    let lab = Lab::new().expect("lab");
    assert_eq!(
        count(&lab.pod, &["--force-iptables-binary=nft"]),
        "ip6tables-legacy-save ip6tables-nft-restore ip6tables-nft-save ip6tables-nft-save \
         iptables-legacy-save iptables-nft-restore iptables-nft-save iptables-nft-save"
    );
    let lab = Lab::new().expect("lab");
    let legacy = ["--force-iptables-binary=legacy"];
    assert_eq!(
        count(&lab.pod, &legacy),
        "ip6tables-legacy-restore ip6tables-legacy-save ip6tables-legacy-save \
         iptables-legacy-restore iptables-legacy-save iptables-legacy-save"
    );
    assert_eq!(
        count(&lab.pod, &legacy),
        "ip6tables-legacy-save iptables-legacy-save"
    );
    std::fs::remove_dir_all(&dir).ok();
}
