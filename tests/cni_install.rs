//! `meshinit cni-install` through the binary, in temporary directories standing for the
//! node's CNI bin and conf directories: the binary is copied, meshinit's entry appended to the
//! first conflist (once, however often it runs), a bad entry changes nothing, and with
//! `--wait` SIGTERM takes the entry out again; a rewritten conflist keeps its mode and owner.
//! With `--wait` the conf directory is watched (real inotify, the binary as a child process,
//! the test acting as the node's CNI): the entry
//! comes back after a rewrite in place or a rename over, moves to a new first conflist, is
//! inserted when a conflist appears in an empty directory, survives a broken conflist; a
//! deleted binary is copied back; an idle watcher writes nothing; a storm of rewrites is never
//! clobbered. A conflist that is a symbolic link is edited where it leads (the link kept, its
//! target followed by the watch); two installers at once never expose an empty file; a
//! `log_file` ADD could not open is refused; the CNI's bytes outside the entry are kept.
//! Waits poll the files up to a generous bound (`until`), never assert timing.

mod support;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Dirs {
    root: PathBuf,
}

/// The primary CNI's conflist, without meshinit.
const LIST: &str = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"ptp","ipam":{"type":"host-local","subnet":"10.1.0.0/16"}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

impl Dirs {
    fn new(name: &str) -> Dirs {
        let dirs = Dirs::empty(name);
        std::fs::write(dirs.conf("10-k8s.conflist"), LIST).unwrap();
        std::fs::write(dirs.conf("99-other.conflist"), LIST).unwrap();
        dirs
    }

    /// The directories with no CNI configuration yet.
    fn empty(name: &str) -> Dirs {
        let root = std::env::temp_dir().join(format!("meshinit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("net.d")).unwrap();
        Dirs { root }
    }

    fn conf(&self, file: &str) -> PathBuf {
        self.root.join("net.d").join(file)
    }

    /// Writes a conflist as CNIs do: a temporary file beside it, renamed over it.
    fn rename_over(&self, file: &str, text: &str) {
        let tmp = self.conf(&format!(".{file}.cni-tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.conf(file)).unwrap();
    }

    /// The plugin types of a conflist; `None` while it is missing or not a conflist.
    fn try_types(&self, file: &str) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.conf(file)).ok()?;
        let list: Value = serde_json::from_str(&text).ok()?;
        list["plugins"]
            .as_array()?
            .iter()
            .map(|p| p["type"].as_str().map(str::to_string))
            .collect()
    }

    /// The conf directory's hidden files (temporary files left behind).
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("net.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    fn args(&self, plugin: &str) -> Vec<String> {
        vec![
            "cni-install".to_string(),
            format!("--bin-dir={}", self.root.join("bin").display()),
            format!("--conf-dir={}", self.root.join("net.d").display()),
            "--plugin-config".to_string(),
            plugin.to_string(),
        ]
    }

    fn types(&self, file: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.root.join("net.d").join(file)).unwrap();
        let list: Value = serde_json::from_str(&text).unwrap();
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

const PLUGIN: &str = r#"{"type":"meshinit","istio_iptables_args":["istio-iptables","-p","15001","-z","15006","-u","1337","-m","REDIRECT","-i","*","-x","","-b","*","-d","15090,15021,15020"],"exclude_namespaces":["kube-system"]}"#;

const WITH: [&str; 3] = ["ptp", "portmap", "meshinit"];
const WITHOUT: [&str; 2] = ["ptp", "portmap"];

/// Polls `done` every 20 ms for up to 15 s (a generous bound on a loaded machine; the watcher
/// answers an event in milliseconds); panics with `what` and the watcher's log.
fn until(what: &str, watcher: &Watcher, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not within 15 s: {what}\nwatcher's log:\n{}",
            watcher.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `meshinit cni-install --wait` running as a child process, its stderr collected.
struct Watcher {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Watcher {
    fn start(dirs: &Dirs, extra: &[&str]) -> Watcher {
        let mut args = dirs.args(PLUGIN);
        args.push("--wait".to_string());
        args.extend(extra.iter().map(|a| a.to_string()));
        Watcher::spawn(args)
    }

    /// `meshinit` with `args`, as a child process.
    fn spawn(args: Vec<String>) -> Watcher {
        let mut child = support::Meshinit::new().no_path().args(&args).spawn();
        let log = collect(child.stderr.take().unwrap());
        Watcher { child, log }
    }

    /// Started, with the entry in 10-k8s.conflist (the watch is set up before that write).
    fn installed(dirs: &Dirs, extra: &[&str]) -> Watcher {
        let watcher = Watcher::start(dirs, extra);
        until("the entry installed", &watcher, || {
            dirs.try_types("10-k8s.conflist").as_deref() == Some(&WITH.map(String::from)[..])
        });
        watcher
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (as [`until`]) for meshinit's entry, last, in the conflist `file`.
    fn until_entry(&self, what: &str, dirs: &Dirs, file: &str) {
        until(what, self, || is(dirs.try_types(file), &WITH));
    }

    /// Waits (as [`until`]) for `text` in the watcher's log.
    fn until_logged(&self, what: &str, text: &str) {
        until(what, self, || self.log().contains(text));
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, which must end it with exit 0; the whole log.
    fn terminated(self) -> String {
        let (code, log) = self.terminate();
        assert_eq!(code, Some(0), "{log}");
        log
    }

    /// SIGTERM; the exit code and the whole log.
    fn terminate(mut self) -> (Option<i32>, String) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        // The reader thread has the rest once the pipe closes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log().contains("terminating") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        (status.code(), self.log())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `types` equals `want`.
fn is(types: Option<Vec<String>>, want: &[&str]) -> bool {
    types.is_some_and(|t| t == want)
}

fn meshinit(args: &[String]) -> support::Output {
    support::Meshinit::new().no_path().args(args).run()
}

#[test]
fn install_copies_the_binary_and_appends_meshinit_to_the_first_conflist_once() {
    let dirs = Dirs::new("cni-install");
    for _ in 0..2 {
        let out = meshinit(&dirs.args(PLUGIN));
        assert!(out.code == Some(0), "{}", out.stderr);
    }
    assert_eq!(
        dirs.types("10-k8s.conflist"),
        ["ptp", "portmap", "meshinit"]
    );
    assert_eq!(
        dirs.types("99-other.conflist"),
        ["ptp", "portmap"],
        "only the first"
    );
    let bin = dirs.root.join("bin/meshinit");
    let copied = std::fs::read(&bin).unwrap();
    assert_eq!(copied, std::fs::read(support::MESHINIT).unwrap());
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(version.status.success());
    let leftovers: Vec<_> = std::fs::read_dir(dirs.root.join("net.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_bad_entry_is_refused_naming_the_setting_and_changes_nothing() {
    let dirs = Dirs::new("cni-install-bad");
    for (plugin, named) in [
        (PLUGIN.replace("\"15001\"", "\"70000\""), "--envoy-port"),
        (
            PLUGIN.replace("exclude_namespaces", "exclude_namespace"),
            "exclude_namespace",
        ),
        (
            PLUGIN.replace("\"meshinit\"", "\"istio-cni\""),
            "\"type\": \"meshinit\"",
        ),
    ] {
        let out = meshinit(&dirs.args(&plugin));
        let stderr = &out.stderr;
        assert_eq!(out.code, Some(2), "{stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
        assert_eq!(dirs.types("10-k8s.conflist"), ["ptp", "portmap"]);
        assert!(!Path::new(&dirs.root.join("bin/meshinit")).exists());
    }
}

#[test]
fn with_wait_sigterm_takes_the_entry_out_again() {
    let dirs = Dirs::new("cni-install-wait");
    let mut args = dirs.args(PLUGIN);
    args.push("--wait".to_string());
    let mut child = support::Meshinit::new().no_path().args(&args).spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dirs.types("10-k8s.conflist").len() != 3 {
        assert!(Instant::now() < deadline, "not installed within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Installed, and still running (the signal is blocked before anything is written).
    assert!(child.try_wait().unwrap().is_none(), "--wait exited");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dirs.types("10-k8s.conflist"), ["ptp", "portmap"]);
}

/// examples/cni-daemonset.yaml's ConfigMap `plugin.json` (a block scalar), as text.
fn example_plugin_json() -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cni-daemonset.yaml"),
    )
    .unwrap();
    let mut lines = text.lines().skip_while(|l| l.trim() != "plugin.json: |");
    lines.next().expect("plugin.json: | in the ConfigMap");
    lines
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_daemonsets_entry_is_accepted_and_installed() {
    let dirs = Dirs::new("cni-install-example");
    let path = dirs.root.join("plugin.json");
    std::fs::write(&path, example_plugin_json()).unwrap();
    let out = meshinit(&dirs.args(&format!("@{}", path.display())));
    assert!(out.code == Some(0), "{}", out.stderr);
    assert_eq!(
        dirs.types("10-k8s.conflist"),
        ["ptp", "portmap", "meshinit"]
    );
}

#[test]
fn watch_puts_the_entry_back_when_the_cni_rewrites_the_conflist_in_place() {
    let dirs = Dirs::new("cni-watch-rewrite");
    let mut watcher = Watcher::installed(&dirs, &[]);
    // The CNI restarting: its own conflist again, written in place, meshinit's entry gone.
    std::fs::write(dirs.conf("10-k8s.conflist"), LIST).unwrap();
    watcher.until_entry(
        "the entry back after a rewrite in place",
        &dirs,
        "10-k8s.conflist",
    );
    assert!(watcher.running());
    // The line comes right after the write. Under load the write may share the line with the
    // installer's own earlier rename ("10-k8s.conflist replaced (renamed in), written: …").
    until("the event logged", &watcher, || {
        watcher.log().lines().any(|line| {
            line.contains("10-k8s.conflist")
                && line.contains("written")
                && line.contains(": it has no meshinit entry")
        })
    });
    assert_eq!(dirs.try_types("99-other.conflist").unwrap(), WITHOUT);
    assert!(dirs.leftovers().is_empty(), "{:?}", dirs.leftovers());
    watcher.terminated();
    assert_eq!(dirs.try_types("10-k8s.conflist").unwrap(), WITHOUT);
}

#[test]
fn watch_puts_the_entry_back_when_the_cni_renames_a_new_conflist_over_it() {
    let dirs = Dirs::new("cni-watch-rename");
    let watcher = Watcher::installed(&dirs, &[]);
    dirs.rename_over("10-k8s.conflist", LIST);
    watcher.until_entry(
        "the entry back after a rename over",
        &dirs,
        "10-k8s.conflist",
    );
    watcher.until_logged(
        "the event logged",
        "10-k8s.conflist replaced (renamed in): it has no meshinit entry",
    );
    assert!(dirs.leftovers().is_empty(), "{:?}", dirs.leftovers());
}

#[test]
fn watch_moves_the_entry_when_a_lower_sorted_conflist_appears_and_sigterm_takes_it_from_there() {
    let dirs = Dirs::new("cni-watch-move");
    let watcher = Watcher::installed(&dirs, &[]);
    // A new CNI (Cilium's 05-cilium.conflist, say) sorts first: the runtime uses it now.
    dirs.rename_over("05-new.conflist", LIST);
    until(
        "the entry in the new first conflist, out of the old",
        &watcher,
        || {
            is(dirs.try_types("05-new.conflist"), &WITH)
                && is(dirs.try_types("10-k8s.conflist"), &WITHOUT)
        },
    );
    watcher.until_logged("the move logged", "is the first conflist now");
    let log = watcher.terminated();
    assert!(log.contains("took meshinit out of"), "{log}");
    assert_eq!(dirs.try_types("05-new.conflist").unwrap(), WITHOUT);
    assert_eq!(dirs.try_types("10-k8s.conflist").unwrap(), WITHOUT);
    assert_eq!(dirs.try_types("99-other.conflist").unwrap(), WITHOUT);
}

#[test]
fn watch_waits_for_a_conflist_when_there_is_none_and_inserts_into_the_first_one() {
    let dirs = Dirs::empty("cni-watch-empty");
    let mut watcher = Watcher::start(&dirs, &[]);
    watcher.until_logged("the wait logged", "waiting for a .conflist to appear");
    assert!(watcher.running(), "{}", watcher.log());
    assert!(dirs.root.join("bin/meshinit").exists());
    // A single-plugin .conf first: still waiting (it cannot chain), nothing written.
    std::fs::write(
        dirs.conf("20-single.conf"),
        r#"{"cniVersion":"1.0.0","name":"x","type":"ptp"}"#,
    )
    .unwrap();
    watcher.until_logged("the .conf seen", "20-single.conf is not a .conflist");
    std::fs::write(dirs.conf("10-k8s.conflist"), LIST).unwrap();
    watcher.until_entry(
        "the entry in the conflist that appeared",
        &dirs,
        "10-k8s.conflist",
    );
    assert!(watcher.running());
    watcher.terminated();
    assert_eq!(dirs.try_types("10-k8s.conflist").unwrap(), WITHOUT);
}

#[test]
fn watch_leaves_a_conflist_that_is_not_json_and_retries_on_its_next_change() {
    let dirs = Dirs::new("cni-watch-broken");
    let mut watcher = Watcher::installed(&dirs, &[]);
    let broken = r#"{"cniVersion":"1.0.0","plugins":[{"type":"pt"#;
    std::fs::write(dirs.conf("10-k8s.conflist"), broken).unwrap();
    watcher.until_logged("the broken conflist logged", "is not a usable conflist");
    assert!(watcher.running(), "{}", watcher.log());
    assert_eq!(
        std::fs::read_to_string(dirs.conf("10-k8s.conflist")).unwrap(),
        broken,
        "left as it is"
    );
    std::fs::write(dirs.conf("10-k8s.conflist"), LIST).unwrap();
    watcher.until_entry(
        "the entry back once the conflist is valid",
        &dirs,
        "10-k8s.conflist",
    );
    watcher.terminated();
}

#[test]
fn an_idle_watcher_writes_nothing_after_its_own_write() {
    let dirs = Dirs::new("cni-watch-idle");
    let watcher = Watcher::installed(&dirs, &[]);
    // One event cycle first, so the watcher has seen the events of its own write.
    dirs.rename_over("10-k8s.conflist", LIST);
    watcher.until_entry("the entry back", &dirs, "10-k8s.conflist");
    // Its two writes (at start, after the rename) each come back as one event.
    until("its own writes' events handled", &watcher, || {
        watcher
            .log()
            .matches("as meshinit wrote it: nothing to do")
            .count()
            == 2
    });
    let stat = |file: &str| {
        let m = std::fs::metadata(dirs.conf(file)).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec(), m.ctime_nsec())
    };
    let before = (stat("10-k8s.conflist"), stat("99-other.conflist"));
    let text = std::fs::read_to_string(dirs.conf("10-k8s.conflist")).unwrap();
    let lines = watcher.log().lines().count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (stat("10-k8s.conflist"), stat("99-other.conflist")),
        before,
        "a write while idle:\n{}",
        watcher.log()
    );
    assert_eq!(
        std::fs::read_to_string(dirs.conf("10-k8s.conflist")).unwrap(),
        text
    );
    assert_eq!(watcher.log().lines().count(), lines, "{}", watcher.log());
    assert!(dirs.leftovers().is_empty(), "{:?}", dirs.leftovers());
}

#[test]
fn watch_copies_the_binary_back_when_it_is_deleted() {
    let dirs = Dirs::new("cni-watch-bin");
    let watcher = Watcher::installed(&dirs, &[]);
    let bin = dirs.root.join("bin/meshinit");
    std::fs::remove_file(&bin).unwrap();
    until("the binary back", &watcher, || bin.exists());
    watcher.until_logged("the copy finished", "copied it back");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(support::MESHINIT).unwrap()
    );
}

#[test]
fn watch_logs_each_event_as_json_with_the_file_the_change_and_the_action() {
    let dirs = Dirs::new("cni-watch-json");
    let watcher = Watcher::installed(&dirs, &["--log_as_json"]);
    std::fs::write(dirs.conf("10-k8s.conflist"), LIST).unwrap();
    watcher.until_entry("the entry back", &dirs, "10-k8s.conflist");
    watcher.until_logged("the event logged", "\"action\":\"inserted\"");
    let log = watcher.terminated();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let handled = lines
        .iter()
        .find(|l| {
            l["cni_install"]["action"] == "inserted"
                && l["cni_install"]["events"][0]["file"] == "10-k8s.conflist"
        })
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(handled["cni_install"]["events"][0]["changes"][0], "written");
    assert!(handled["cni_install"]["conflist"]
        .as_str()
        .unwrap()
        .ends_with("net.d/10-k8s.conflist"));
    assert!(handled["msg"]
        .as_str()
        .unwrap()
        .contains("it has no meshinit entry"));
    assert_eq!(handled["level"], "info");
}

#[test]
fn a_storm_of_cni_rewrites_is_never_clobbered_and_ends_with_one_entry() {
    let dirs = Dirs::new("cni-watch-storm");
    let watcher = Watcher::installed(&dirs, &[]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A reader standing for the runtime: every read a whole conflist with at most one entry.
    let reader = {
        let path = dirs.conf("10-k8s.conflist");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&path).unwrap();
                let list: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("half a file: {e}: {text}"));
                let ours = list["plugins"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["type"] == "meshinit")
                    .count();
                assert!(ours <= 1, "{text}");
                reads += 1;
            }
            reads
        })
    };
    let mut list: Value = serde_json::from_str(LIST).unwrap();
    let last = 300;
    for generation in 1..=last {
        list["generation"] = generation.into();
        dirs.rename_over("10-k8s.conflist", &list.to_string());
    }
    // The CNI's last version, with meshinit's entry added and nothing of an older one.
    until("the entry in the CNI's last version", &watcher, || {
        let Ok(text) = std::fs::read_to_string(dirs.conf("10-k8s.conflist")) else {
            return false;
        };
        let Ok(now) = serde_json::from_str::<Value>(&text) else {
            return false;
        };
        now["generation"] == last && is(dirs.try_types("10-k8s.conflist"), &WITH)
    });
    // Settled: stays so.
    std::thread::sleep(Duration::from_millis(500));
    let now: Value =
        serde_json::from_str(&std::fs::read_to_string(dirs.conf("10-k8s.conflist")).unwrap())
            .unwrap();
    assert_eq!(now["generation"], last, "clobbered:\n{}", watcher.log());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    assert!(dirs.leftovers().is_empty(), "{:?}", dirs.leftovers());
}

/// The conflist's mode and owner (uid, gid).
fn mode_and_owner(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

#[test]
fn the_conflists_mode_and_owner_are_kept_on_insert_and_on_sigterm_removal() {
    let dirs = Dirs::new("cni-install-mode");
    let path = dirs.conf("10-k8s.conflist");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Giving the file away needs root; without it the owner is ours and the check still holds.
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&path, Some(4242), Some(4243)).unwrap();
    }
    let before = mode_and_owner(&path);
    assert_eq!(before.0, 0o600);
    let out = meshinit(&dirs.args(PLUGIN));
    assert!(out.code == Some(0), "{}", out.stderr);
    assert_eq!(dirs.types("10-k8s.conflist"), WITH);
    assert_eq!(mode_and_owner(&path), before, "after the insert");
    // The watcher finds its entry in place; SIGTERM takes it out with another rewrite.
    let watcher = Watcher::start(&dirs, &[]);
    watcher.until_logged("the watcher's first look", "nothing to do");
    let log = watcher.terminated();
    assert_eq!(dirs.types("10-k8s.conflist"), WITHOUT, "{log}");
    assert_eq!(mode_and_owner(&path), before, "after the removal\n{log}");
}

/// A relative symbolic link `net.d/LINK -> ../real/LINK` and its target holding `text`.
fn link_to_real(dirs: &Dirs, link: &str, text: Option<&str>) -> PathBuf {
    let real = dirs.root.join("real");
    std::fs::create_dir_all(&real).unwrap();
    if let Some(text) = text {
        std::fs::write(real.join(link), text).unwrap();
    }
    std::os::unix::fs::symlink(format!("../real/{link}"), dirs.conf(link)).unwrap();
    real.join(link)
}

/// The plugin types of the conflist at `path`; `None` while it is missing or not a conflist.
fn types_at(path: &Path) -> Option<Vec<String>> {
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    list["plugins"]
        .as_array()?
        .iter()
        .map(|p| p["type"].as_str().map(str::to_string))
        .collect()
}

fn is_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn a_symlinked_first_conflist_is_the_one_edited_through_the_link_which_stays() {
    let dirs = Dirs::empty("cni-link-first");
    let real = link_to_real(&dirs, "10-k.conflist", Some(LIST));
    std::fs::write(dirs.conf("20-other.conflist"), LIST).unwrap();
    let out = meshinit(&dirs.args(PLUGIN));
    let stderr = &out.stderr;
    assert!(out.code == Some(0), "{stderr}");
    assert!(stderr.contains("10-k.conflist"), "{stderr}");
    assert!(is(types_at(&real), &WITH), "the link's target: {stderr}");
    assert!(is_link(&dirs.conf("10-k.conflist")), "the link stays");
    assert!(
        is(dirs.try_types("20-other.conflist"), &WITHOUT),
        "{stderr}"
    );
    assert!(dirs.leftovers().is_empty(), "{:?}", dirs.leftovers());
    let real_dir: Vec<_> = std::fs::read_dir(dirs.root.join("real")).unwrap().collect();
    assert_eq!(
        real_dir.len(),
        1,
        "no temporary file left beside the target"
    );

    // Alone in the directory, and named with --conflist: the same.
    let dirs = Dirs::empty("cni-link-alone");
    let real = link_to_real(&dirs, "10-k.conflist", Some(LIST));
    for extra in [None, Some("--conflist=10-k.conflist")] {
        let mut args = dirs.args(PLUGIN);
        args.extend(extra.map(String::from));
        let out = meshinit(&args);
        let stderr = &out.stderr;
        assert!(out.code == Some(0), "{extra:?}: {stderr}");
        assert!(is(types_at(&real), &WITH), "{extra:?}: {stderr}");
        assert!(
            is_link(&dirs.conf("10-k.conflist")),
            "{extra:?}: the link stays"
        );
    }
}

#[test]
fn a_dangling_or_directory_link_sorting_first_is_reported_not_skipped() {
    // libcni lists it (it is no directory entry of type directory) and the runtime fails to
    // read it: appending to the next conflist would be appending to one no one uses.
    for (name, target_is_dir) in [("dangling", false), ("dir", true)] {
        let dirs = Dirs::empty(&format!("cni-link-{name}"));
        let real = link_to_real(&dirs, "10-k.conflist", None);
        if target_is_dir {
            std::fs::create_dir_all(&real).unwrap();
        }
        std::fs::write(dirs.conf("20-other.conflist"), LIST).unwrap();
        let out = meshinit(&dirs.args(PLUGIN));
        let stderr = &out.stderr;
        assert_eq!(out.code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains("10-k.conflist") && stderr.contains("symbolic link"),
            "{name}: {stderr}"
        );
        assert!(is(dirs.try_types("20-other.conflist"), &WITHOUT), "{name}");
    }
}

#[test]
fn watch_follows_a_symlinked_conflist_its_appearance_and_its_targets_rewrites() {
    let dirs = Dirs::empty("cni-watch-link");
    let mut watcher = Watcher::start(&dirs, &[]);
    watcher.until_logged("the wait logged", "waiting for a .conflist to appear");
    // The link appears, dangling first: reported, then its target is written.
    let real = link_to_real(&dirs, "10-k.conflist", None);
    watcher.until_logged("the dangling link seen", "symbolic link");
    std::fs::write(dirs.root.join("real/.tmp"), LIST).unwrap();
    std::fs::rename(dirs.root.join("real/.tmp"), &real).unwrap();
    until("the entry in the link's target", &watcher, || {
        is(types_at(&real), &WITH)
    });
    // The CNI rewrites the target in its own directory.
    std::fs::write(&real, LIST).unwrap();
    until(
        "the entry back after the target's rewrite",
        &watcher,
        || is(types_at(&real), &WITH),
    );
    watcher.until_logged("the target's rewrite logged", "real/10-k.conflist written");
    assert!(watcher.running(), "{}", watcher.log());
    assert!(is_link(&dirs.conf("10-k.conflist")));
    let log = watcher.terminated();
    assert!(is(types_at(&real), &WITHOUT), "{log}");
    assert!(is_link(&dirs.conf("10-k.conflist")), "{log}");
}

/// A rewrite of the link's target made while the watcher is between its look and its watch on
/// the target's directory is undone too: a new watch is followed by one more look. The window
/// is held open by a stderr pipe that is already full, so the watcher blocks on its first log
/// line, which comes right after its first look (it logged nothing before).
#[test]
fn a_target_rewritten_before_its_directory_is_watched_gets_the_entry_back() {
    use nix::fcntl::{fcntl, FcntlArg};
    let dirs = Dirs::empty("cni-watch-window");
    let real = link_to_real(&dirs, "10-k.conflist", Some(LIST));
    let (held, stderr) = nix::unistd::pipe().unwrap();
    let size = fcntl(stderr.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    let mut stderr = std::fs::File::from(stderr);
    stderr.write_all(&vec![b'.'; size as usize]).unwrap();
    let mut args = dirs.args(PLUGIN);
    args.push("--wait".to_string());
    let child = support::Meshinit::new()
        .no_path()
        .args(&args)
        .stderr(stderr)
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !is(types_at(&real), &WITH) {
        assert!(Instant::now() < deadline, "no first look within 15 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The CNI rewrites its conflist while the watcher waits to log.
    std::fs::write(&real, LIST).unwrap();
    let watcher = Watcher {
        child,
        log: collect(std::fs::File::from(held)),
    };
    until("the entry back after the early rewrite", &watcher, || {
        is(types_at(&real), &WITH)
    });
    let log = watcher.terminated();
    assert!(is(types_at(&real), &WITHOUT), "{log}");
}

/// Everything `stderr` gives until it closes, collected by a thread as it comes.
fn collect(mut stderr: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    log
}

/// `meshinit cni-install --wait` with `plugin` as its entry.
fn watcher_with(dirs: &Dirs, plugin: &str) -> Watcher {
    let mut args = dirs.args(plugin);
    args.push("--wait".to_string());
    Watcher::spawn(args)
}

#[test]
fn two_installers_at_once_never_expose_an_empty_or_partial_conflist() {
    let other = PLUGIN.replace("\"-p\",\"15001\"", "\"-p\",\"15002\"");
    for (case, second) in [("different", other), ("same", PLUGIN.to_string())] {
        let dirs = Dirs::new(&format!("cni-two-{case}"));
        let path = dirs.conf("10-k8s.conflist");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let list: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("read {reads}: not a whole conflist ({e}): {text:?}")
                    });
                    assert!(
                        list["plugins"].as_array().is_some_and(|p| p.len() >= 2),
                        "{text}"
                    );
                    reads += 1;
                }
                reads
            })
        };
        let a = watcher_with(&dirs, PLUGIN);
        let b = watcher_with(&dirs, &second);
        // The CNI rewriting its conflist meanwhile: both installers race to put the entry back.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            dirs.rename_over("10-k8s.conflist", LIST);
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().unwrap();
        assert!(reads > 0);
        let (code_a, log_a) = a.terminate();
        let (code_b, log_b) = b.terminate();
        assert_eq!(code_a, Some(0), "{case}, first:\n{log_a}");
        assert_eq!(code_b, Some(0), "{case}, second:\n{log_b}");
        for log in [&log_a, &log_b] {
            assert!(!log.contains("cannot"), "{case}:\n{log}");
        }
        assert!(is(dirs.try_types("10-k8s.conflist"), &WITHOUT), "{case}");
        assert!(
            dirs.leftovers().is_empty(),
            "{case}: {:?}",
            dirs.leftovers()
        );
    }
}

#[test]
fn a_log_file_in_a_missing_directory_is_refused_naming_it_and_changes_nothing() {
    let dirs = Dirs::new("cni-install-logfile");
    let missing = dirs.root.join("no-such-dir/meshinit.log");
    let plugin = PLUGIN.replace(
        "\"exclude_namespaces\"",
        &format!(
            "\"log_file\":\"{}\",\"exclude_namespaces\"",
            missing.display()
        ),
    );
    let out = meshinit(&dirs.args(&plugin));
    let stderr = &out.stderr;
    assert_eq!(out.code, Some(2), "{stderr}");
    assert!(stderr.contains("log_file"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert_eq!(dirs.types("10-k8s.conflist"), WITHOUT);
    assert!(!dirs.root.join("bin/meshinit").exists());
    // A directory as log_file fails ADD as well; an existing directory is fine.
    let plugin_dir = plugin.replace(
        &missing.display().to_string(),
        &dirs.root.display().to_string(),
    );
    let out = meshinit(&dirs.args(&plugin_dir));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let fine = dirs.root.join("meshinit.log");
    let plugin_ok = plugin.replace(&missing.display().to_string(), &fine.display().to_string());
    let out = meshinit(&dirs.args(&plugin_ok));
    assert!(out.code == Some(0), "{}", out.stderr);
    assert!(!fine.exists(), "checking the log file does not create it");
}

/// A conflist as a person or a tool other than serde might write it: odd spacing, keys not
/// in order, a float written `1e3`, a 20-digit integer, escapes, a trailing newline missing.
const ODD: &str = "{ \"name\" : \"k8s\u{e9}-net\",   \"cniVersion\":\"1.0.0\",\n  \"plugins\" :[\n      {\"type\":\"ptp\", \"mtu\": 1e3, \"big\": 98765432109876543210, \"ipam\":{\"type\":\"host-local\",\"subnet\":\"10.1.0.0/16\"}},\n\t  { \"type\" : \"portmap\" ,\"capabilities\":{\"portMappings\":true}, \"note\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\/\"}\n  ] ,\n  \"zeta\": [1.50, -0.0, 1E+2]\n}";

#[test]
fn the_cnis_bytes_are_kept_the_entry_is_spliced_in_and_out() {
    let dirs = Dirs::empty("cni-install-bytes");
    let path = dirs.conf("10-k8s.conflist");
    std::fs::write(&path, ODD).unwrap();
    let out = meshinit(&dirs.args(PLUGIN));
    assert!(out.code == Some(0), "{}", out.stderr);
    let edited = std::fs::read_to_string(&path).unwrap();
    assert_eq!(dirs.types("10-k8s.conflist"), WITH);
    // The original is a prefix and a suffix of the edit around one inserted run.
    let prefix = ODD
        .bytes()
        .zip(edited.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = ODD
        .bytes()
        .rev()
        .zip(edited.bytes().rev())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        prefix + suffix >= ODD.len(),
        "bytes outside the inserted entry changed:\n{edited}"
    );
    let inserted = &edited[prefix.min(ODD.len())..edited.len() - suffix.min(ODD.len() - prefix)];
    assert!(inserted.contains("\"meshinit\""), "{inserted:?}");
    // SIGTERM takes it out again: the file is the CNI's to the byte.
    let watcher = Watcher::start(&dirs, &[]);
    watcher.until_logged("the watcher's first look", "nothing to do");
    let log = watcher.terminated();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), ODD, "{log}");
}
