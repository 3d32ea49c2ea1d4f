//! Owner-group names resolved on a real kernel from a group file of the test's own (bind
//! mounted over /etc/group in a private mount namespace, so neither the host's file is read nor
//! changed): meshinit reads it with getgrnam's rules — the first entry of a name wins, comments
//! and NIS lines are skipped — so its expected rules match what iptables (through getgrnam)
//! installs, on every backend.

mod support;

use std::path::PathBuf;

use support::apply::{default_args, in_pod, strings};
use support::netlab::{Lab, Netns};
use support::require_root;

const GROUP_FILE: &str = "\
# meshgrp:x:7000:
+meshgrp:x:6000:
-meshgrp:x:6001:
root:x:0:
meshgrp:x:5001:
meshgrp:x:5002:
";

/// Runs meshinit inside `pod` with `group_file` bind-mounted over /etc/group.
fn meshinit_with_groups(
    pod: &Netns,
    group_file: &std::path::Path,
    args: &[String],
) -> (Option<i32>, String) {
    let out = in_pod(pod)
        .wrap(["sh", "-c", "mount --bind \"$0\" /etc/group && exec \"$@\""])
        .wrap([group_file.to_string_lossy()])
        .args(args)
        .env("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "meshgrp")
        .run();
    (out.code, out.stderr)
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn group_names_resolve_to_the_first_entry_on_every_backend_as_iptables_does() {
    if !require_root("group_names_resolve_to_the_first_entry_on_every_backend_as_iptables_does") {
        return;
    }
    let dir = PathBuf::from(format!("/tmp/meshinit-groupfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("group");
    std::fs::write(&file, GROUP_FILE).unwrap();
    for (backend, listing) in [
        ("--force-iptables-binary=nft", &["iptables-nft-save"][..]),
        (
            "--force-iptables-binary=legacy",
            &["iptables-legacy-save"][..],
        ),
        ("--native-nftables", &["nft", "list", "ruleset"][..]),
    ] {
        let lab = Lab::new().expect("lab");
        let mut args = default_args();
        args.extend(strings(&[backend, "--ipv6=false"]));
        let (code, stderr) = meshinit_with_groups(&lab.pod, &file, &args);
        assert_eq!(code, Some(0), "{backend}: {stderr}");
        assert!(!stderr.contains("read-back differs"), "{backend}: {stderr}");
        let rules = String::from_utf8_lossy(&lab.pod.run(listing, None).stdout).into_owned();
        assert!(
            rules.contains("5001") && !rules.contains("5002") && !rules.contains("7000"),
            "{backend}: the first meshgrp entry (5001) is installed:\n{rules}"
        );
        // meshinit's view agrees with the kernel's: --check passes, a re-run changes nothing.
        let check = [args.clone(), strings(&["--check"])].concat();
        let (code, stderr) = meshinit_with_groups(&lab.pod, &file, &check);
        assert_eq!(code, Some(0), "{backend}: --check: {stderr}");
        if backend != "--native-nftables" {
            let (code, stderr) = meshinit_with_groups(&lab.pod, &file, &args);
            assert_eq!(code, Some(0), "{backend}: re-run: {stderr}");
            assert!(stderr.contains("already in place"), "{backend}: {stderr}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
