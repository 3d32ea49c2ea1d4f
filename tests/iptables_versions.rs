//! meshinit with other iptables versions than the machine's: Debian bullseye's 1.8.7 and
//! trixie's 1.8.11 (the machine has bookworm's 1.8.9), each from a root file system made by
//! `scripts/iptables-rootfs.sh`. meshinit runs on the host (it is built against the host's
//! glibc) with a PATH of wrapper scripts that run the other release's tools in its root file
//! system — `unshare --mount --root=ROOTFS --mount-proc`, which keeps the caller's network
//! namespace, and gives legacy iptables the `/proc/net/ip_tables_names` it reads. Every
//! conformance case on both variants of both releases: exact read-back, a no-op re-run,
//! `--check`, exact cleanup; and rules written by one version read by another (an init
//! container restarted after an image upgrade).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use meshinit::plan::Family;
use meshinit::render::iptables_save::{compare, expected_tables, parse_save, State};
use support::apply::{meshinit, plan_for, VARIANTS};
use support::netlab::{Lab, Netns};
use support::{conformance_cases, diff, require_root, Case, Output};

/// The other releases and the iptables version each ships.
const RELEASES: [(&str, &str); 2] = [("bullseye", "v1.8.7"), ("trixie", "v1.8.11")];

/// Every tool name meshinit may run.
fn tool_names() -> Vec<String> {
    let mut names = Vec::new();
    for base in ["iptables", "ip6tables"] {
        for variant in ["", "-legacy", "-nft"] {
            for suffix in ["", "-save", "-restore"] {
                names.push(format!("{base}{variant}{suffix}"));
            }
        }
    }
    names
}

/// A directory of wrappers running one release's iptables tools, removed on drop.
struct Tools {
    release: String,
    dir: PathBuf,
}

impl Tools {
    /// The tools of `release`, its root file system built first when needed. `None` stands
    /// for the machine's own tools.
    fn new(release: &str) -> Tools {
        let dir = std::env::temp_dir().join(format!(
            "meshinit-iptables-versions-{release}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tools = Tools {
            release: release.to_string(),
            dir,
        };
        if release == "bookworm-host" {
            return tools;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/iptables-rootfs.sh");
        let out = Command::new(script).arg(release).output().expect("runs");
        assert!(
            out.status.success(),
            "{script} {release} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rootfs = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            Path::new(&rootfs)
                .join("usr/sbin/xtables-nft-multi")
                .exists(),
            "{rootfs}"
        );
        for name in tool_names() {
            let path = tools.dir.join(&name);
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\nexec /usr/bin/unshare --mount --root={rootfs} --mount-proc \
                     /usr/sbin/{name} \"$@\"\n"
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        tools
    }

    /// meshinit's PATH: the wrappers (the machine's own /usr/sbin for the host's tools) and
    /// what the wrappers need.
    fn path(&self) -> String {
        if self.release == "bookworm-host" {
            "/usr/sbin:/usr/bin:/sbin:/bin".to_string()
        } else {
            format!("{}:/usr/bin:/bin", self.dir.display())
        }
    }

    /// A tool of these, as a path `ip netns exec` can run.
    fn tool(&self, name: &str) -> String {
        if self.release == "bookworm-host" {
            name.to_string()
        } else {
            self.dir.join(name).display().to_string()
        }
    }

    /// What `TOOL --version` prints through the wrapper.
    fn version(&self, name: &str) -> String {
        let out = Command::new(self.tool(name))
            .arg("--version")
            .output()
            .expect("wrapper runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One family's dump with one variant, as these tools print it.
    fn save(&self, pod: &Netns, family: Family, variant: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let out = pod
            .exec(&[&self.tool(&format!("{base}-{variant}-save"))], None)
            .expect("save runs");
        assert!(
            out.status.success(),
            "{} {base}-{variant}-save: {}",
            self.release,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Both variants' rules of both families, without comments, counters and tables that
    /// hold nothing (loading an empty table cannot be undone with legacy iptables).
    fn all_rules(&self, pod: &Netns) -> String {
        let mut out = String::new();
        for family in [Family::V4, Family::V6] {
            for variant in VARIANTS {
                out.push_str(&format!("== {family:?} {variant}\n"));
                for (name, table) in parse_save(&self.save(pod, family, variant)) {
                    let builtin = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
                    if table.rules.is_empty()
                        && table.chains.iter().all(|c| builtin.contains(&c.as_str()))
                    {
                        continue;
                    }
                    out.push_str(&format!("table {name}\n"));
                    for line in table.text.lines().filter(|l| !l.starts_with('*')) {
                        let line = match line.find(" [") {
                            Some(i) if line.starts_with(':') => &line[..i],
                            _ => line,
                        };
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

impl Drop for Tools {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(pod: &Netns, tools: &Tools, args: &[String], env: &[(String, String)]) -> Output {
    let mut env = env.to_vec();
    env.push(("PATH".to_string(), tools.path()));
    meshinit(pod, args, &env)
}

/// Why a run is not a clean success, if it is not.
fn failed(out: &Output) -> Option<String> {
    if out.code != Some(0) || out.stderr.contains("read-back differs") {
        Some(format!("exit {:?}:\n{}", out.code, out.stderr))
    } else {
        None
    }
}

/// The whole life of one case with one set of tools; the first failure, if any. Variant
/// `auto`: meshinit's own detection, which must pick nft in a fresh namespace.
fn life_of_case(tools: &Tools, case: &Case, variant: &str) -> Result<(), String> {
    let lab = Lab::new().expect("lab");
    let before = tools.all_rules(&lab.pod);
    let mut args = case.args.clone();
    if variant != "auto" {
        args.push(format!("--force-iptables-binary={variant}"));
    }
    let out = run(&lab.pod, tools, &args, &case.env);
    if let Some(why) = failed(&out) {
        return Err(format!("install: {why}"));
    }
    let variant = if variant == "auto" {
        if !out
            .stderr
            .contains("using iptables-nft-restore, because nft works")
        {
            return Err(format!("detection did not pick nft:\n{}", out.stderr));
        }
        "nft"
    } else {
        variant
    };
    let plan = plan_for(&args, &case.env);
    for family in plan.families() {
        let live = parse_save(&tools.save(&lab.pod, family, variant));
        let expected = expected_tables(&plan.rules(family), &|_| None).expect("numeric groups");
        let state = compare(&live, &expected);
        if state != State::InPlace {
            return Err(format!("{family:?} read back as {state:?}"));
        }
    }
    let installed = tools.all_rules(&lab.pod);
    let again = run(&lab.pod, tools, &args, &case.env);
    if let Some(why) = failed(&again) {
        return Err(format!("second run: {why}"));
    }
    if !again.stderr.contains("nothing changed") || tools.all_rules(&lab.pod) != installed {
        return Err(format!("second run changed something:\n{}", again.stderr));
    }
    let mut check = args.clone();
    check.push("--check".to_string());
    let checked = run(&lab.pod, tools, &check, &case.env);
    if checked.code != Some(0) {
        return Err(format!(
            "--check exit {:?}:\n{}",
            checked.code, checked.stderr
        ));
    }
    args.push("--cleanup-only".to_string());
    if let Some(why) = failed(&run(&lab.pod, tools, &args, &case.env)) {
        return Err(format!("cleanup: {why}"));
    }
    let after = tools.all_rules(&lab.pod);
    if after != before {
        return Err(format!("cleanup left:\n{}", diff(&before, &after)));
    }
    Ok(())
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn every_case_with_iptables_1_8_7_and_1_8_11() {
    if !require_root("every_case_with_iptables_1_8_7_and_1_8_11") {
        return;
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (release, version) in RELEASES {
        let tools = Tools::new(release);
        for name in [
            "iptables-legacy-save",
            "ip6tables-nft-restore",
            "iptables-nft",
        ] {
            let shown = tools.version(name);
            assert!(
                shown.contains(&format!("{version} ")),
                "{release} {name}: {shown}"
            );
        }
        for case in conformance_cases("iptables") {
            if !case.groups_resolvable() {
                // java/ftp are not groups on this machine: iptables cannot load such rules.
                continue;
            }
            // Variant detection (its nat probe) once per release, on the default sidecar.
            let auto = ["auto"];
            let variants: &[&str] = if case.name == "empty" { &auto } else { &[] };
            for &variant in VARIANTS.iter().chain(variants) {
                if let Err(why) = life_of_case(&tools, &case, variant) {
                    failures.push(format!("{} on {release} {variant}: {why}", case.name));
                }
                checked += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        checked >= 80,
        "only {checked} case/variant/release triples ran"
    );
}

/// The nft ruleset of the pod, without counter values (they are not state).
fn nft_ruleset(pod: &Netns) -> String {
    let text =
        String::from_utf8_lossy(&pod.run(&["nft", "list", "ruleset"], None).stdout).into_owned();
    text.lines()
        .map(|l| match l.find("counter packets") {
            Some(i) => format!("{}counter\n", &l[..i]),
            None => format!("{l}\n"),
        })
        .collect()
}

/// The default sidecar, IPv4 only (the incompatible rule below is an IPv4 one).
fn default_v4() -> Vec<String> {
    support::istio_init_args(&["--ipv6=false", "--force-iptables-binary=nft"])
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn a_table_iptables_nft_cannot_list_is_an_error_naming_it() {
    if !require_root("a_table_iptables_nft_cannot_list_is_an_error_naming_it") {
        return;
    }
    for release in ["bullseye", "bookworm-host", "trixie"] {
        let tools = Tools::new(release);
        let lab = Lab::new().expect("lab");
        let args = default_v4();
        let out = run(&lab.pod, &tools, &args, &[]);
        assert!(failed(&out).is_none(), "{release}: install: {}", out.stderr);
        // Another owner adds, with nft, a rule iptables-nft cannot print: every version's
        // iptables-nft-save then prints `# Table `nat' is incompatible, use 'nft' tool.` and
        // nothing of the table.
        lab.pod
            .nft_apply("add rule ip nat OUTPUT ct original ip daddr 1.2.3.4 accept\n");
        let saved = tools.save(&lab.pod, Family::V4, "nft");
        assert!(
            saved.contains("# Table `nat' is incompatible"),
            "{release}: {saved}"
        );
        let before = nft_ruleset(&lab.pod);

        let mut runs = vec![("re-run", args.clone())];
        for extra in ["--check", "--cleanup-only", "--reconcile"] {
            let mut a = args.clone();
            a.push(extra.to_string());
            runs.push((extra, a));
        }
        for (what, a) in runs {
            let out = run(&lab.pod, &tools, &a, &[]);
            assert_eq!(out.code, Some(1), "{release} {what}: {}", out.stderr);
            assert!(
                out.stderr.contains("table `nat`")
                    && out.stderr.contains("incompatible")
                    && out.stderr.contains("iptables-nft-save v1.8."),
                "{release} {what}: the error must name the table and the tool's version:\n{}",
                out.stderr
            );
            let after = nft_ruleset(&lab.pod);
            assert!(
                after == before,
                "{release} {what}: changed the ruleset:\n{}",
                diff(&before, &after)
            );
        }
    }
}

/// Cases for the mixed test: the default sidecar, TPROXY, DNS capture with owner matches, and
/// a CIDR/port-heavy one.
const MIXED_CASES: [&str; 4] = [
    "empty",
    "tproxy",
    "ipv6-dns-uid-gid",
    "outbound-ports-include",
];

/// Everything both variants hold, as the machine's own tools and nft list it.
fn kernel_view(pod: &Netns) -> String {
    let host = Tools::new("bookworm-host");
    format!("{}== nft\n{}", host.all_rules(pod), nft_ruleset(pod))
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn rules_written_by_one_version_are_in_place_for_another_or_a_clear_error() {
    if !require_root("rules_written_by_one_version_are_in_place_for_another_or_a_clear_error") {
        return;
    }
    let all: Vec<Tools> = ["bullseye", "bookworm-host", "trixie"]
        .into_iter()
        .map(Tools::new)
        .collect();
    let cases: Vec<Case> = conformance_cases("iptables")
        .into_iter()
        .filter(|c| MIXED_CASES.contains(&c.name.as_str()))
        .collect();
    assert_eq!(cases.len(), MIXED_CASES.len());
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    for writer in &all {
        for reader in all.iter().filter(|r| r.release != writer.release) {
            for case in &cases {
                for variant in VARIANTS {
                    let what = format!(
                        "{} on {variant}, written by {}, read by {}",
                        case.name, writer.release, reader.release
                    );
                    let lab = Lab::new().expect("lab");
                    let mut args = case.args.clone();
                    args.push(format!("--force-iptables-binary={variant}"));
                    let out = run(&lab.pod, writer, &args, &case.env);
                    assert!(failed(&out).is_none(), "{what}: install: {}", out.stderr);
                    let installed = kernel_view(&lab.pod);
                    // The init container restarted with the other image; then --check, then
                    // cleanup with it.
                    let again = run(&lab.pod, reader, &args, &case.env);
                    let in_place =
                        failed(&again).is_none() && again.stderr.contains("nothing changed");
                    let clear = again.code == Some(1)
                        && again.stderr.contains("cannot print")
                        && again.stderr.contains("written by a newer");
                    let now = kernel_view(&lab.pod);
                    if now != installed {
                        failures.push(format!(
                            "{what}: the re-run changed the rules:\n{}",
                            diff(&installed, &now)
                        ));
                        continue;
                    }
                    // Measured: only iptables-nft 1.8.7 cannot print what a newer one wrote
                    // (1.8.8 and later write ports and marks as native nftables expressions).
                    let unreadable = variant == "nft"
                        && reader.release == "bullseye"
                        && writer.release != "bullseye";
                    if (unreadable && !clear) || (!unreadable && !in_place) {
                        failures.push(format!(
                            "{what}: want {}:\n{}",
                            if unreadable {
                                "a clear error"
                            } else {
                                "in place"
                            },
                            again.stderr
                        ));
                        continue;
                    }
                    outcomes.push(format!(
                        "{what}: {}",
                        if in_place { "in place" } else { "clear error" }
                    ));
                    let mut check = args.clone();
                    check.push("--check".to_string());
                    let checked = run(&lab.pod, reader, &check, &case.env);
                    let want = if in_place { Some(0) } else { Some(1) };
                    if checked.code != want {
                        failures.push(format!(
                            "{what}: --check exit {:?}, want {want:?}:\n{}",
                            checked.code, checked.stderr
                        ));
                    }
                    let mut cleanup = args.clone();
                    cleanup.push("--cleanup-only".to_string());
                    let cleaned = run(&lab.pod, reader, &cleanup, &case.env);
                    if in_place {
                        let after = reader.all_rules(&lab.pod);
                        let lab2 = Lab::new().expect("lab");
                        let empty = reader.all_rules(&lab2.pod);
                        if failed(&cleaned).is_some() || after != empty {
                            failures.push(format!(
                                "{what}: cleanup: exit {:?}, left:\n{}\n{}",
                                cleaned.code,
                                diff(&empty, &after),
                                cleaned.stderr
                            ));
                        }
                    } else if cleaned.code != Some(1) || kernel_view(&lab.pod) != installed {
                        failures.push(format!(
                            "{what}: cleanup of rules it cannot read: exit {:?}:\n{}",
                            cleaned.code, cleaned.stderr
                        ));
                    }
                }
            }
        }
    }
    eprintln!("{}", outcomes.join("\n"));
    assert!(
        failures.is_empty(),
        "{} failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
#[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
fn an_earlier_configuration_is_drift_for_iptables_nft_1_8_7_too() {
    if !require_root("an_earlier_configuration_is_drift_for_iptables_nft_1_8_7_too") {
        return;
    }
    // `-b '*'` plans `-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT`, which is what `-b 80`'s
    // `... -m tcp --dport 80 ...` would look like to 1.8.7 if a newer version had written it;
    // the port matches 1.8.7 prints in the same chains say it wrote them itself.
    let tools = Tools::new("bullseye");
    let lab = Lab::new().expect("lab");
    let with_ports = |ports: &str| {
        let mut args = default_v4();
        let i = args.iter().position(|a| a == "-b").unwrap();
        args[i + 1] = ports.to_string();
        args
    };
    let out = run(&lab.pod, &tools, &with_ports("*"), &[]);
    assert!(failed(&out).is_none(), "install: {}", out.stderr);
    let refused = run(&lab.pod, &tools, &with_ports("80"), &[]);
    assert!(
        refused.code == Some(1) && refused.stderr.contains("--reconcile"),
        "another configuration must be drift: {}",
        refused.stderr
    );
    let mut reconcile = with_ports("80");
    reconcile.push("--reconcile".to_string());
    let out = run(&lab.pod, &tools, &reconcile, &[]);
    assert!(failed(&out).is_none(), "--reconcile: {}", out.stderr);
    let again = run(&lab.pod, &tools, &with_ports("80"), &[]);
    assert!(
        failed(&again).is_none() && again.stderr.contains("nothing changed"),
        "{}",
        again.stderr
    );
}
