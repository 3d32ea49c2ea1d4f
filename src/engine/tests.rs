//! The decision from recorded inventories, without root: a fresh install, a re-run, drift,
//! rules of ours in another place (the other variant, native tables, another backend),
//! cleanup and its dry run, leftovers (a probe rule, stale routing objects), `--check`.

use std::io;
use std::net::IpAddr;

use super::decide::{decide, preview, Expected, Input, Note, Step};
use super::error::{ApplyError, Drift};
use super::mode::{Install, Mode};
use super::observe::{FamilyView, Ipv6Lo, Observed};
use crate::cli::{parse, Command, Env};
use crate::config::detect::Host;
use crate::config::{Config, IptablesVariant};
use crate::driver::routing::Object;
use crate::driver::xtables::{Chosen, IptablesError, Tools};
use crate::engine::inventory::{Inventory, IptablesPlace, Reading, Unread, PLACES};
use crate::plan::{self, Family, Plan};
use crate::render::iptables_save::{expected_tables, parse_save, Saved};
use crate::render::iptables_text::restore_text;
use crate::sys::process::Ended;

/// An IPv4-only pod.
struct Pod;

impl Host for Pod {
    fn interface_addrs(&self) -> io::Result<Vec<IpAddr>> {
        Ok(vec![
            "127.0.0.1".parse().unwrap(),
            "10.1.2.3".parse().unwrap(),
        ])
    }
    fn read_file(&self, path: &str) -> io::Result<String> {
        Err(io::Error::new(io::ErrorKind::NotFound, path.to_string()))
    }
}

fn config(args: &[&str]) -> Config {
    let argv: Vec<String> = std::iter::once("meshinit")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let Command::Run(raw) = parse(&argv, &Env::new()).expect("parses") else {
        panic!("not a run")
    };
    Config::build(&raw, &Pod).expect("valid")
}

/// Istio's usual sidecar configuration (IPv4: the pod has no IPv6 address).
fn sidecar() -> Config {
    config(&[
        "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*",
    ])
}

const LEGACY4: Tools = PLACES[0];
const NFT4: Tools = PLACES[1];
const NFT6: Tools = PLACES[3];

/// What `*-save` prints once the plan's IPv4 rules are installed, in its canonical form.
fn installed(plan: &Plan) -> Saved {
    let expected = expected_tables(&plan.rules(Family::V4), &no_gid).unwrap();
    let mut text = String::new();
    for (table, want) in &expected {
        text.push_str(&format!("*{}\n", table.name()));
        for chain in want.chains.keys() {
            let name = chain.name();
            let policy = if name.starts_with("ISTIO") {
                "-"
            } else {
                "ACCEPT"
            };
            text.push_str(&format!(":{name} {policy} [0:0]\n"));
        }
        for (chain, specs) in &want.chains {
            for spec in specs {
                text.push_str(&format!("-A {} {spec}\n", chain.name()));
            }
        }
        text.push_str("COMMIT\n");
    }
    parse_save(&text)
}

/// What `*-save` prints after an earlier configuration (another proxy port) was installed.
fn earlier() -> Saved {
    let old = config(&[
        "-p", "15002", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
    ]);
    installed(&plan::plan(&old.capture))
}

/// An inventory: every iptables place read with these contents (empty unless given), no
/// native tables, these routing objects.
fn inventory(places: &[(Tools, Saved)], routing: Vec<Object>) -> Inventory {
    Inventory {
        iptables: PLACES
            .iter()
            .map(|&tools| IptablesPlace {
                tools,
                reading: Reading::Read(
                    places
                        .iter()
                        .find(|(t, _)| *t == tools)
                        .map(|(_, s)| s.clone())
                        .unwrap_or_default(),
                ),
                read_by_tool: true,
            })
            .collect(),
        native: Reading::Read(Vec::new()),
        routing: Reading::Read(routing),
    }
}

/// The observation of an iptables install: the inventory, and the variant chosen for IPv4
/// with its state (as the inventory shows it).
fn observed(inventory: Inventory, chosen: Tools) -> Observed {
    let state = inventory.place(chosen).saved().cloned().unwrap_or_default();
    let mut seen = Observed::of(inventory);
    seen.families.push(Ok(FamilyView {
        family: Family::V4,
        chosen: Chosen {
            tools: chosen,
            reason: crate::driver::xtables::Why::Forced,
            state,
        },
    }));
    seen
}

fn no_gid(_: &str) -> Option<u32> {
    None
}

/// Everything of ours as expected tables: the plan's, for these tests.
fn full_of(plan: &Plan) -> [Expected; 2] {
    [
        expected_tables(&plan.rules(Family::V4), &no_gid).unwrap(),
        expected_tables(&plan.rules(Family::V6), &no_gid).unwrap(),
    ]
}

/// Decides for this plan and observation.
fn decided(
    plan: &Plan,
    seen: &Observed,
    mode: Mode,
    native: bool,
    forced: Option<IptablesVariant>,
) -> Result<super::decide::Decision, ApplyError> {
    let expected = [
        Some(expected_tables(&plan.rules(Family::V4), &no_gid)),
        None,
    ];
    let full = || Ok(full_of(plan));
    let input = Input {
        plan,
        observed: seen,
        forced,
        resolve: &no_gid,
        expected: &expected,
        full: &full,
    };
    decide(&input, mode, native)
}

fn install(reconcile: bool) -> Mode {
    Mode::Install {
        install: Install {
            reconcile,
            force: false,
        },
        validate: false,
    }
}

/// The values as their messages say them.
fn names<T: ToString>(values: &[T]) -> Vec<String> {
    values.iter().map(ToString::to_string).collect()
}

fn changes(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .flat_map(|s| match s {
            Step::WriteIptables { changes, .. } => {
                changes.iter().map(ToString::to_string).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn a_fresh_install_adds_routing_then_writes_the_plan_into_the_chosen_place() {
    let plan = plan::plan(&sidecar().capture);
    let seen = observed(inventory(&[], vec![]), LEGACY4);
    let d = decided(&plan, &seen, install(false), false, None).unwrap();
    assert_eq!(names(&d.tools), vec!["IPv4 iptables-legacy"]);
    let [Step::AddRouting(objects), Step::WriteIptables {
        writes,
        untouched,
        changes,
    }] = d.steps.as_slice()
    else {
        panic!("{:#?}", d.steps)
    };
    assert!(objects.is_empty(), "REDIRECT over IPv4 needs no routing");
    assert!(untouched.is_empty());
    assert_eq!(writes.len(), 1);
    assert!(writes[0].fresh);
    assert_eq!(writes[0].tools, LEGACY4);
    assert_eq!(writes[0].text, restore_text(&plan.rules(Family::V4)));
    assert_eq!(
        names(changes),
        ["IPv4: installed rules with iptables-legacy-restore"]
    );
    // The dry-run form of the write is the restore input itself.
    assert!(d.steps[1]
        .to_string()
        .starts_with("# iptables-legacy-restore --noflush:\n"));
}

#[test]
fn a_rerun_with_the_rules_in_place_writes_nothing() {
    let plan = plan::plan(&sidecar().capture);
    let seen = observed(inventory(&[(NFT4, installed(&plan))], vec![]), NFT4);
    let d = decided(&plan, &seen, install(false), false, None).unwrap();
    let Step::WriteIptables {
        writes, untouched, ..
    } = &d.steps[1]
    else {
        panic!("{:#?}", d.steps)
    };
    assert!(writes.is_empty());
    assert_eq!(untouched.len(), 1, "kept for the shadowing warnings");
    assert!(changes(&d.steps).is_empty());
    assert!(d.notes.contains(&Note::Info(
        "IPv4: rules already in place, nothing to do".into()
    )));
    // --force-apply rewrites them.
    let force = Mode::Install {
        install: Install {
            reconcile: false,
            force: true,
        },
        validate: false,
    };
    let d = decided(&plan, &seen, force, false, None).unwrap();
    assert_eq!(
        changes(&d.steps),
        vec!["IPv4: replaced rules with iptables-nft-restore"]
    );
}

#[test]
fn drift_is_refused_without_reconcile_and_replaced_with_it() {
    let plan = plan::plan(&sidecar().capture);
    let seen = observed(inventory(&[(LEGACY4, earlier())], vec![]), LEGACY4);
    let refused = decided(&plan, &seen, install(false), false, None).unwrap_err();
    let ApplyError::Drift(drift @ Drift::Iptables { .. }) = refused else {
        panic!("{refused:?}")
    };
    let message = drift.to_string();
    assert!(message.contains("Re-run with --reconcile"), "{message}");
    assert!(message.contains("IPv4:"), "{message}");
    let d = decided(&plan, &seen, install(true), false, None).unwrap();
    let Step::WriteIptables { writes, .. } = &d.steps[1] else {
        panic!("{:#?}", d.steps)
    };
    assert!(!writes[0].fresh);
    assert_eq!(
        changes(&d.steps),
        vec!["IPv4: replaced rules with iptables-legacy-restore"]
    );
    assert!(d.notes.iter().any(
        |n| matches!(n, Note::Info(l) if l.starts_with("IPv4: replacing rules of ours that differ"))
    ));
}

#[test]
fn rules_in_the_other_variant_are_refused_before_probing_and_moved_with_reconcile() {
    let plan = plan::plan(&sidecar().capture);
    // Ours are in IPv4 nft; this run is forced to legacy.
    let places = [(NFT4, installed(&plan))];
    let forced = Some(IptablesVariant::Legacy);
    let refused = Observed::of(inventory(&places, vec![]));
    let e = decided(&plan, &refused, install(false), false, forced).unwrap_err();
    assert!(
        matches!(&e, ApplyError::Drift(m) if m.to_string().contains("another place") && m.to_string().contains("IPv4 iptables-nft: ")),
        "{e:?}"
    );
    let seen = observed(inventory(&places, vec![]), LEGACY4);
    let d = decided(&plan, &seen, install(true), false, forced).unwrap();
    let [Step::AddRouting(_), Step::WriteIptables { writes, .. }, Step::MoveHere {
        removals,
        native,
        here,
    }] = d.steps.as_slice()
    else {
        panic!("{:#?}", d.steps)
    };
    assert!(writes[0].fresh, "installed here first");
    assert_eq!(removals.len(), 1);
    assert_eq!(removals[0].tools, NFT4);
    assert!(removals[0].text.contains("-D ") || removals[0].text.contains("-X "));
    assert!(
        removals[0].shells.as_ref().is_some_and(|s| !s.is_empty()),
        "the tables iptables-nft made for ours are deleted if left empty"
    );
    assert!(native.is_empty());
    assert_eq!(*here, "the rules are installed with iptables");
}

#[test]
fn native_tables_are_moved_to_iptables_and_iptables_rules_to_native() {
    let plan = plan::plan(&sidecar().capture);
    // Our native tables, with the iptables backend.
    let mut inv = inventory(&[], vec![]);
    inv.native = Reading::Read(vec!["istio-proxy-nat".to_string()]);
    let refused = decided(
        &plan,
        &Observed::of(inv.clone()),
        install(false),
        false,
        None,
    );
    assert!(
        matches!(&refused, Err(ApplyError::Drift(m)) if m.to_string().contains("native nftables: table(s) inet istio-proxy-nat")),
        "{refused:?}"
    );
    let d = decided(&plan, &observed(inv, LEGACY4), install(true), false, None).unwrap();
    assert!(matches!(
        d.steps.last(),
        Some(Step::MoveHere { native, .. }) if native == &["istio-proxy-nat".to_string()]
    ));
    // Our iptables rules, with the native backend.
    let mut seen = Observed::of(inventory(&[(LEGACY4, installed(&plan))], vec![]));
    seen.native_differences = Some(Ok(Vec::new()));
    let refused = decided(&plan, &seen, install(false), true, None).unwrap_err();
    assert!(matches!(refused, ApplyError::Drift(_)), "{refused:?}");
    let d = decided(&plan, &seen, install(true), true, None).unwrap();
    assert_eq!(names(&d.tools), vec!["nf_tables netlink"]);
    let [Step::AddRouting(_), Step::WriteNative { replace: false }, Step::MoveHere { removals, here, .. }] =
        d.steps.as_slice()
    else {
        panic!("{:#?}", d.steps)
    };
    assert_eq!(removals[0].tools, LEGACY4);
    assert_eq!(
        removals[0].shells, None,
        "legacy leaves no nf_tables tables"
    );
    assert_eq!(*here, "the native tables are in place");
}

#[test]
fn native_tables_as_planned_are_left_and_differing_ones_need_reconcile() {
    let plan = plan::plan(&sidecar().capture);
    let mut inv = inventory(&[], vec![]);
    inv.native = Reading::Read(vec!["istio-proxy-nat".to_string()]);
    let mut seen = Observed::of(inv);
    seen.native_differences = Some(Ok(Vec::new()));
    let d = decided(&plan, &seen, install(false), true, None).unwrap();
    assert!(
        !d.steps
            .iter()
            .any(|s| matches!(s, Step::WriteNative { .. })),
        "{:#?}",
        d.steps
    );
    seen.native_differences = Some(Ok(vec!["chain x differs".to_string()]));
    let e = decided(&plan, &seen, install(false), true, None).unwrap_err();
    assert!(
        matches!(&e, ApplyError::Drift(m) if m.to_string().contains("chain x differs")),
        "{e:?}"
    );
    let d = decided(&plan, &seen, install(true), true, None).unwrap();
    assert!(d
        .steps
        .iter()
        .any(|s| matches!(s, Step::WriteNative { replace: true })));
}

#[test]
fn a_leftover_probe_rule_goes_in_the_same_write() {
    let plan = plan::plan(&sidecar().capture);
    let mut state = installed(&plan);
    let probe = parse_save("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p 255 -j RETURN\nCOMMIT\n");
    state
        .get_mut("nat")
        .unwrap()
        .rules
        .entry("OUTPUT".to_string())
        .or_default()
        .extend(probe["nat"].rules["OUTPUT"].clone());
    let seen = observed(inventory(&[(LEGACY4, state)], vec![]), LEGACY4);
    let d = decided(&plan, &seen, install(false), false, None).unwrap();
    let Step::WriteIptables { writes, .. } = &d.steps[1] else {
        panic!("{:#?}", d.steps)
    };
    assert_eq!(writes.len(), 1);
    assert!(
        writes[0].text.contains("-D OUTPUT -p 255 -j RETURN"),
        "{}",
        writes[0].text
    );
    assert_eq!(
        changes(&d.steps),
        vec!["IPv4: removed a leftover probe rule"]
    );
}

#[test]
fn stale_routing_objects_and_our_lo_address_are_removed_after_a_move() {
    let plan = plan::plan(&sidecar().capture);
    let stale = Object::FwmarkRule {
        family: Family::V4,
        mark: 1337,
        table: 133,
    };
    // IPv6 rules of an earlier configuration, which had IPv6 on.
    let places = [(NFT6, installed(&plan))];
    let seen = observed(inventory(&places, vec![Object::LoAddress, stale]), LEGACY4);
    let d = decided(&plan, &seen, install(true), false, None).unwrap();
    let n = d.steps.len();
    assert!(matches!(&d.steps[n - 2], Step::RemoveStaleRouting(s) if s == &[stale]));
    assert!(matches!(d.steps[n - 1], Step::RemoveLoAddress));
}

#[test]
fn an_unreadable_place_is_refused_by_cleanup_and_only_warned_by_an_install() {
    let plan = plan::plan(&sidecar().capture);
    let mut inv = inventory(&[], vec![]);
    inv.iptables[2].reading = Reading::Unreadable(Unread::Tool(
        inv.iptables[2].tools,
        IptablesError::Tool {
            program: "ip6tables-legacy-save".into(),
            ended: Ended::Exited(1),
            stderr: "no permission".into(),
            hint: None,
        },
    ));
    let e = decided(
        &plan,
        &Observed::of(inv.clone()),
        Mode::Cleanup { validate: false },
        false,
        None,
    )
    .unwrap_err();
    assert!(
        matches!(&e, ApplyError::Precondition(m) if m.to_string().contains("IPv6 ip6tables-legacy: cannot read it with ip6tables-legacy-save: ip6tables-legacy-save exited with code 1: no permission")),
        "{e:?}"
    );
    let d = decided(&plan, &observed(inv, LEGACY4), install(false), false, None).unwrap();
    assert!(d
        .notes
        .iter()
        .any(|n| matches!(n, Note::Warn(l) if l.contains("no permission"))));
}

#[test]
fn ipv6_refused_by_the_kernel_stops_an_install_before_anything() {
    let plan = plan::plan(&config(&["-p", "15001", "-u", "1337", "--ipv6=true"]).capture);
    let mut seen = observed(inventory(&[], vec![]), LEGACY4);
    seen.ipv6 = Ipv6Lo::Value("1".to_string());
    let e = decided(&plan, &seen, install(false), false, None).unwrap_err();
    assert!(
        matches!(&e, ApplyError::Precondition(m) if m.to_string().contains("IPv6 is disabled")),
        "{e:?}"
    );
}

#[test]
fn cleanup_removes_ours_from_every_place_and_its_dry_run_prints_the_same_decision() {
    let plan = plan::plan(&sidecar().capture);
    let mut inv = inventory(
        &[(LEGACY4, installed(&plan)), (NFT4, installed(&plan))],
        vec![Object::LoAddress],
    );
    inv.native = Reading::Read(vec!["istio-proxy-nat".to_string()]);
    let seen = Observed::of(inv);
    let d = decided(&plan, &seen, Mode::Cleanup { validate: false }, false, None).unwrap();
    let [Step::Remove(removals), Step::DeleteNative(native), Step::RemoveRouting { ours, foreign }] =
        d.steps.as_slice()
    else {
        panic!("{:#?}", d.steps)
    };
    assert_eq!(removals.len(), 2);
    assert_eq!(native, &["istio-proxy-nat"]);
    assert_eq!(ours, &[Object::LoAddress]);
    assert!(foreign.is_empty());
    assert_eq!(
        names(&d.tools),
        vec!["IPv4 iptables-legacy", "IPv4 iptables-nft"]
    );
    let dry = decided(&plan, &seen, Mode::DryRunCleanup, false, None).unwrap();
    let text = preview(&dry);
    assert!(text.starts_with("# meshinit dry run: what --cleanup-only would remove here\n"));
    assert!(text.contains("# IPv4 iptables-legacy: "), "{text}");
    assert!(
        text.contains("with iptables-nft-restore --noflush:\n"),
        "{text}"
    );
    assert!(text.contains("# IPv4 iptables-nft: then the tables it leaves empty"));
    assert!(text.contains("# native nftables: delete table inet istio-proxy-nat\n"));
    assert!(text.contains(&format!("# remove {}\n", Object::LoAddress)));
    assert!(
        text.contains("# IPv6 ip6tables-legacy: nothing of ours\n"),
        "{text}"
    );
    assert!(!text.contains("nothing would be removed"));
}

#[test]
fn a_cleanup_with_nothing_of_ours_says_so() {
    let plan = plan::plan(&sidecar().capture);
    let seen = Observed::of(inventory(&[], vec![]));
    let d = decided(&plan, &seen, Mode::DryRunCleanup, false, None).unwrap();
    let text = preview(&d);
    assert!(
        text.ends_with("# nothing of ours is installed: nothing would be removed\n"),
        "{text}"
    );
    assert!(text.contains("# native nftables: nothing of ours\n"));
}

#[test]
fn check_reports_differences_and_executes_nothing() {
    let plan = plan::plan(&sidecar().capture);
    let check = |places: &[(Tools, Saved)]| {
        let d = decided(
            &plan,
            &Observed::of(inventory(places, vec![])),
            Mode::Check,
            false,
            None,
        )
        .unwrap();
        assert!(d.steps.is_empty(), "a check executes nothing");
        names(&d.differences)
    };
    assert!(check(&[(NFT4, installed(&plan))]).is_empty());
    assert_eq!(check(&[]), vec!["IPv4: none of our rules are installed"]);
    let drifted = check(&[(LEGACY4, earlier())]);
    assert!(
        drifted[0].starts_with("IPv4 (iptables-legacy-save):\n"),
        "{drifted:?}"
    );
    assert_eq!(
        check(&[(LEGACY4, installed(&plan)), (NFT4, installed(&plan))]),
        vec!["IPv4: rules of ours are installed in both the legacy and the nft tables"]
    );
    let v6 = check(&[(NFT4, installed(&plan)), (NFT6, installed(&plan))]);
    assert!(v6[0].contains("while IPv6 is off"), "{v6:?}");
}

#[test]
fn the_mode_is_decided_once_from_the_flags() {
    let mode = |args: &[&str]| Mode::of(&config(args).run);
    assert_eq!(mode(&["-p", "15001"]), install(false));
    assert_eq!(mode(&["-p", "15001", "--reconcile"]), install(true));
    assert_eq!(mode(&["-p", "15001", "--dry-run"]), Mode::DryRun);
    assert_eq!(
        mode(&["-p", "15001", "--dry-run", "--cleanup-only"]),
        Mode::DryRunCleanup
    );
    assert_eq!(mode(&["-p", "15001", "--check"]), Mode::Check);
    assert_eq!(
        mode(&["-p", "15001", "--cleanup-only"]),
        Mode::Cleanup { validate: false }
    );
    assert_eq!(mode(&["-p", "15001", "--check"]).name(), "check");
    assert_eq!(
        mode(&["--skip-rule-apply", "--run-validation"]).name(),
        "validation"
    );
}
