//! `meshinit cni-install` through the binary, in temporary directories standing for the
//! node's CNI bin and conf directories: the binary is copied, meshinit's entry appended to the
//! first conflist (once, however often it runs), a bad entry changes nothing, and with
//! `--wait` SIGTERM takes the entry out again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new(name: &str) -> Dirs {
        let root = std::env::temp_dir().join(format!("meshinit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("net.d")).unwrap();
        let list = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"ptp","ipam":{"type":"host-local","subnet":"10.1.0.0/16"}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        std::fs::write(root.join("net.d/10-k8s.conflist"), list).unwrap();
        std::fs::write(root.join("net.d/99-other.conflist"), list).unwrap();
        Dirs { root }
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

fn meshinit(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshinit"))
        .args(args)
        .env_clear()
        .output()
        .unwrap()
}

#[test]
fn install_copies_the_binary_and_appends_meshinit_to_the_first_conflist_once() {
    let dirs = Dirs::new("cni-install");
    for _ in 0..2 {
        let out = meshinit(&dirs.args(PLUGIN));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
    assert_eq!(
        copied,
        std::fs::read(env!("CARGO_BIN_EXE_meshinit")).unwrap()
    );
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
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshinit"))
        .args(&args)
        .env_clear()
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dirs.types("10-k8s.conflist"),
        ["ptp", "portmap", "meshinit"]
    );
}
