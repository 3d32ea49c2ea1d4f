//! The only code that changes the system: checks privileges, reads the live rules, decides per
//! family what to write (nothing, a fresh install, a replacement, a cleanup), writes it in one
//! restore transaction per family and rolls everything back if any step fails.

pub mod exec;
pub mod groups;
pub mod iptables;
pub mod lock;
pub mod netlink;
pub mod nftables;
pub mod nlsocket;
pub mod privileges;
pub mod procfs;
pub mod routing;

use std::collections::BTreeMap;

use caps::Capability;

use crate::backend::iptables::restore_text;
use crate::backend::iptables_save::{
    cleanup_text, compare, expected_tables, missing_tables, replace_text, rollback_text, tables_in,
    ExpectedTable, Saved, State,
};
use crate::config::{BackendChoice, Capture, IptablesVariant, RunOptions};
use crate::log::Log;
use crate::plan::{self, Family, Plan, Table};
use exec::Runner;
use groups::Groups;
use iptables::{Tools, XtablesLock};
use netlink::Netlink;
use nftables::NfTables;

/// Why applying or cleaning up stopped. In every case the namespace is as it was before.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Something needed is missing (capabilities, tools, a group); nothing was touched.
    #[error("{0}")]
    Precondition(String),
    /// Rules of ours are there but differ from the plan, and `--reconcile` was not given.
    #[error("{0}")]
    Drift(String),
    /// A write failed; what was written has been rolled back.
    #[error("{0}")]
    Failed(String),
}

/// What a run did, for the summary line.
#[derive(Debug, Default)]
pub struct Report {
    /// The iptables tools used per family, e.g. `IPv4 iptables-nft`.
    pub tools: Vec<String>,
    /// One line per change; empty when nothing changed.
    pub changes: Vec<String>,
}

/// One family's pending restore: the tools, the state before, the input to feed.
struct Transaction {
    tools: Tools,
    before: Saved,
    text: String,
    /// A fresh install may race with another instance doing the same; see `commit`.
    fresh: bool,
    expected: BTreeMap<Table, ExpectedTable>,
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// The capabilities the iptables tools need (NET_RAW for the legacy variant's sockets).
const IPTABLES_CAPS: &[Capability] = &[Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];
/// nf_tables and rtnetlink need only NET_ADMIN.
const NETLINK_CAPS: &[Capability] = &[Capability::CAP_NET_ADMIN];

/// What applying and cleaning up both need before reading anything: the capabilities, the
/// namespace lock (held until the returned guard drops), and the group names for owner matches.
fn prepare(
    opts: &RunOptions,
    caps: &[Capability],
) -> Result<(lock::NetnsLock, Groups), ApplyError> {
    privileges::require_capabilities(caps).map_err(ApplyError::Precondition)?;
    // Waiting for another run counts against this run's deadline too.
    let wait = opts.xtables_wait.min(opts.timeout);
    let lock = lock::lock_netns(wait).map_err(ApplyError::Precondition)?;
    Ok((lock, load_groups()?))
}

/// Which backend `--backend auto` means on this machine, and why: iptables (Istio's default)
/// unless no iptables tool is installed and the kernel answers nf_tables requests.
pub fn resolve_backend(choice: BackendChoice, runner: &dyn Runner) -> (Backend, String) {
    match choice {
        BackendChoice::Iptables => (Backend::Iptables, "chosen with --backend".to_string()),
        BackendChoice::Nftables => (
            Backend::Nftables,
            "chosen with --native-nftables or --backend".to_string(),
        ),
        BackendChoice::Auto => {
            let tools = ["iptables-nft-save", "iptables-legacy-save"];
            if tools.iter().any(|t| runner.installed(t)) {
                return (
                    Backend::Iptables,
                    "iptables tools are installed (Istio's default)".to_string(),
                );
            }
            match NfTables::open().and_then(|mut n| n.inet_tables()) {
                Ok(_) => (
                    Backend::Nftables,
                    "no iptables tool is installed and the kernel has nf_tables".to_string(),
                ),
                Err(e) => (
                    Backend::Iptables,
                    format!(
                        "no iptables tool is installed, and nf_tables does not answer either ({e})"
                    ),
                ),
            }
        }
    }
}

/// The backend that installs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The iptables tools (`*-save`, `*-restore --noflush`), per family.
    Iptables,
    /// nf_tables over netlink, one atomic batch for both families.
    Nftables,
}

/// Installs the plan natively with nf_tables: our tables replaced in one atomic batch
/// (idempotent by construction), after the routing objects; if the batch is rejected, the
/// routing objects this run added are removed again. Once the batch is in, our routing
/// objects that the plan no longer needs are removed.
pub fn apply_nftables(plan: &Plan, opts: &RunOptions, log: &Log) -> Result<Report, ApplyError> {
    let (_lock, _) = prepare(opts, NETLINK_CAPS)?;
    let mut nft = NfTables::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let mut nl = Netlink::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let added = routing::ensure_all(&mut nl, plan)
        .map_err(|e| ApplyError::Failed(format!("{e}; nothing was left changed")))?;
    let applied = nft.apply(plan).map_err(|e| {
        routing::remove_all(&mut nl, &added);
        ApplyError::Failed(format!(
            "{e}; the batch was rejected as a whole, nothing was left changed"
        ))
    })?;
    let mut changes: Vec<String> = added.iter().map(|o| format!("added {o}")).collect();
    changes.push(format!(
        "replaced tables {} ({} rules, {} netlink messages in one batch)",
        applied.tables.join(", "),
        applied.rules,
        applied.messages
    ));
    changes.extend(remove_stale_routing(&mut nl, plan, log));
    Ok(Report {
        tools: vec!["nf_tables netlink".to_string()],
        changes,
    })
}

/// Removes our nftables tables and routing objects, nothing else.
pub fn cleanup_nftables(
    capture: &Capture,
    opts: &RunOptions,
    log: &Log,
) -> Result<Report, ApplyError> {
    let (_lock, _) = prepare(opts, NETLINK_CAPS)?;
    let mut nft = NfTables::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let present = nft
        .managed_tables_present()
        .map_err(|e| ApplyError::Precondition(e.to_string()))?;
    nft.cleanup()
        .map_err(|e| ApplyError::Failed(e.to_string()))?;
    let mut changes: Vec<String> = present
        .iter()
        .map(|t| format!("deleted table inet {t}"))
        .collect();
    changes.extend(remove_routing(capture, log)?);
    Ok(Report {
        tools: vec!["nf_tables netlink".to_string()],
        changes,
    })
}

/// `--check` for the nftables backend: our tables that should be there are, no others of ours
/// are, each has exactly the planned chains and, chain by chain, the planned rules in order
/// (compared expression by expression with the batch an apply would send), and the routing
/// objects are in place.
pub fn check_nftables(plan: &Plan) -> Result<Vec<String>, ApplyError> {
    let groups = load_groups()?;
    let mut nft = NfTables::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let mut differences = nft
        .differences(&crate::backend::nftables::ruleset(plan), &groups)
        .map_err(|e| ApplyError::Precondition(e.to_string()))?;
    differences.extend(check_routing(plan)?);
    Ok(differences)
}

/// Installs the plan's rules.
pub fn apply(
    plan: &Plan,
    opts: &RunOptions,
    runner: &dyn Runner,
    log: &Log,
) -> Result<Report, ApplyError> {
    let (mut lock, groups) = prepare(opts, IPTABLES_CAPS)?;
    let resolve = |name: &str| resolve_group(&groups, name);

    // Decide everything for every family before writing anything.
    let mut transactions = Vec::new();
    let mut drift = Vec::new();
    let mut report = Report::default();
    for family in plan.families() {
        let chosen = iptables::choose_variant(runner, family, opts.force_iptables_binary)
            .map_err(|e| ApplyError::Precondition(e.to_string()))?;
        let (tools, before) = (chosen.tools, chosen.state);
        report
            .tools
            .push(format!("{} {}", family_name(family), tools.main()));
        log.info(&format!(
            "{}: using {} ({})",
            family_name(family),
            tools.restore(),
            chosen.reason
        ));
        let rules = &plan.rules(family);
        let expected = expected_tables(rules, &resolve).map_err(ApplyError::Precondition)?;
        let missing = missing_tables(&before, &expected);
        let (text, fresh) = match compare(&before, &expected) {
            State::InPlace if !opts.force_apply => {
                log.info(&format!(
                    "{}: rules already in place, nothing to do",
                    family_name(family)
                ));
                continue;
            }
            State::InPlace => (replace_text(&before, rules, &expected), false),
            State::Absent => (restore_text(rules), true),
            State::Drifted(_) if missing.is_some() => {
                // Safe without --reconcile: the result only adds what this same configuration
                // plans; nothing of a different configuration is replaced.
                log.info(&format!(
                    "{}: completing an interrupted install of this configuration (missing tables: {})",
                    family_name(family),
                    missing
                        .unwrap_or_default()
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                (replace_text(&before, rules, &expected), false)
            }
            State::Drifted(diffs) if opts.reconcile || opts.force_apply => {
                log.info(&format!(
                    "{}: replacing rules of ours that differ from the plan:\n{}",
                    family_name(family),
                    diffs.join("\n")
                ));
                (replace_text(&before, rules, &expected), false)
            }
            State::Drifted(diffs) => {
                drift.push(format!("{}:\n{}", family_name(family), diffs.join("\n")));
                continue;
            }
        };
        transactions.push(Transaction {
            tools,
            before,
            text,
            fresh,
            expected,
        });
    }
    if !drift.is_empty() {
        return Err(ApplyError::Drift(format!(
            "rules of ours are already installed but differ from this configuration; nothing was changed. Re-run with --reconcile to replace them atomically.\n{}",
            drift.join("\n")
        )));
    }

    // Routing first: without its rules it changes nothing, while rules without their routes
    // would lose TPROXY'd connections.
    let mut nl = Netlink::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let added = routing::ensure_all(&mut nl, plan)
        .map_err(|e| ApplyError::Failed(format!("{e}; nothing was left changed")))?;
    if let Err(e) = commit(&transactions, runner, &xtables_lock(opts, &mut lock), log) {
        routing::remove_all(&mut nl, &added);
        return Err(e);
    }
    report
        .changes
        .extend(added.iter().map(|o| format!("added {o}")));
    for t in &transactions {
        report.changes.push(format!(
            "{}: {} {}",
            family_name(t.tools.family),
            if t.fresh {
                "installed rules with"
            } else {
                "replaced rules with"
            },
            t.tools.restore()
        ));
    }
    verify(&transactions, runner, log);
    report
        .changes
        .extend(remove_stale_routing(&mut nl, plan, log));
    Ok(report)
}

/// Compares the live rules with the plan without changing anything: the differences, one
/// entry per family that differs (empty when everything is in place). Reads both variants and
/// never probes, so it is safe as a readiness check.
pub fn check(
    plan: &Plan,
    opts: &RunOptions,
    runner: &dyn Runner,
) -> Result<Vec<String>, ApplyError> {
    let groups = load_groups()?;
    let resolve = |name: &str| resolve_group(&groups, name);
    let variants = match opts.force_iptables_binary {
        Some(v) => vec![v],
        None => vec![IptablesVariant::Nft, IptablesVariant::Legacy],
    };
    let mut differences = Vec::new();
    for family in plan.families() {
        let expected =
            expected_tables(&plan.rules(family), &resolve).map_err(ApplyError::Precondition)?;
        let mut found = Vec::new();
        for &variant in &variants {
            let tools = Tools { family, variant };
            let Ok(live) = iptables::save(runner, tools) else {
                continue;
            };
            match compare(&live, &expected) {
                State::Absent => {}
                state => found.push((tools, state)),
            }
        }
        let name = family_name(family);
        match found.as_slice() {
            [] => differences.push(format!("{name}: none of our rules are installed")),
            [(_, State::InPlace)] => {}
            [(tools, State::Drifted(diffs))] => {
                differences.push(format!("{name} ({}):\n{}", tools.save(), diffs.join("\n")))
            }
            _ => differences.push(format!(
                "{name}: rules of ours are installed in both the legacy and the nft tables"
            )),
        }
    }
    differences.extend(check_routing(plan)?);
    Ok(differences)
}

/// Removes everything of ours that this configuration would install, in both families and
/// both variants, wherever it is found.
pub fn cleanup(
    capture: &Capture,
    opts: &RunOptions,
    runner: &dyn Runner,
    log: &Log,
) -> Result<Report, ApplyError> {
    let (mut lock, groups) = prepare(opts, IPTABLES_CAPS)?;
    let resolve = |name: &str| resolve_group(&groups, name);
    // Plan as if IPv6 were on, so IPv6 leftovers are recognised too.
    let full = plan::plan(&Capture {
        ipv6: true,
        ..capture.clone()
    });
    let variants = match opts.force_iptables_binary {
        Some(v) => vec![v],
        None => vec![IptablesVariant::Legacy, IptablesVariant::Nft],
    };
    let mut transactions = Vec::new();
    for family in [Family::V4, Family::V6] {
        let expected =
            expected_tables(&full.rules(family), &resolve).map_err(ApplyError::Precondition)?;
        for &variant in &variants {
            let tools = Tools { family, variant };
            // A missing tool cannot have installed anything.
            let Ok(before) = iptables::save(runner, tools) else {
                continue;
            };
            if compare(&before, &expected) == State::Absent {
                continue;
            }
            let text = cleanup_text(&before, &expected);
            transactions.push(Transaction {
                tools,
                before,
                text,
                fresh: false,
                expected: BTreeMap::new(),
            });
        }
    }
    commit(&transactions, runner, &xtables_lock(opts, &mut lock), log)?;
    let removed = remove_routing(capture, log)?;
    Ok(Report {
        tools: transactions
            .iter()
            .map(|t| format!("{} {}", family_name(t.tools.family), t.tools.main()))
            .collect(),
        changes: transactions
            .iter()
            .map(|t| {
                format!(
                    "{}: removed rules with {}",
                    family_name(t.tools.family),
                    t.tools.restore()
                )
            })
            .chain(removed)
            .collect(),
    })
}

/// The routing objects of the plan that are missing (present without our mark counts as in
/// place), and ours that the plan does not need (left by another configuration).
fn check_routing(plan: &Plan) -> Result<Vec<String>, ApplyError> {
    let mut nl = Netlink::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let mut differences = Vec::new();
    for object in routing::objects(plan) {
        match routing::present(&mut nl, object) {
            Ok(true) => {}
            Ok(false) => differences.push(format!("missing: {object}")),
            Err(e) => differences.push(format!("cannot check {object}: {e}")),
        }
    }
    match routing::stale(&mut nl, plan) {
        Ok(stale) => differences.extend(stale.iter().map(|o| {
            format!("unexpected: {o} (added by meshinit, not planned by this configuration)")
        })),
        Err(e) => differences.push(format!("cannot list meshinit's routing objects: {e}")),
    }
    Ok(differences)
}

/// Removes our routing objects that an earlier configuration left and this plan does not
/// need (TPROXY → REDIRECT, another mark or table); returns the change lines. The rules are
/// in place by then, so a failure here is a warning naming what is left, not a failed apply.
fn remove_stale_routing(nl: &mut Netlink, plan: &Plan, log: &Log) -> Vec<String> {
    let removed = routing::stale(nl, plan)
        .map_err(|e| e.to_string())
        .and_then(|stale| routing::remove_each(nl, &stale));
    match removed {
        Ok(removed) => removed
            .iter()
            .map(|o| format!("removed {o} (not planned by this configuration)"))
            .collect(),
        Err(e) => {
            log.warn(&format!(
                "the rules are in place, but meshinit's routing objects of an earlier configuration could not all be removed: {e}"
            ));
            Vec::new()
        }
    }
}

/// Removes every routing object of ours (whatever configuration added it), newest first;
/// returns what went. Objects this configuration would use that carry no mark of ours (made
/// by istio-init or an administrator) are left and named in the log.
fn remove_routing(capture: &Capture, log: &Log) -> Result<Vec<String>, ApplyError> {
    let mut nl = Netlink::open().map_err(|e| ApplyError::Failed(e.to_string()))?;
    let ours = routing::ours(&mut nl).map_err(|e| {
        ApplyError::Failed(format!(
            "listing meshinit's routing objects: {e} (the rules are already removed)"
        ))
    })?;
    let removed = routing::remove_each(&mut nl, &ours)
        .map_err(|e| ApplyError::Failed(format!("{e} (the rules are already removed)")))?;
    let full = plan::plan(&Capture {
        ipv6: true,
        ..capture.clone()
    });
    for object in routing::objects(&full) {
        if routing::present(&mut nl, object).unwrap_or(false)
            && !routing::owned(&mut nl, object).unwrap_or(true)
        {
            log.info(&format!(
                "left in place: {object} (not added by meshinit; remove it with ip if it is Istio's)"
            ));
        }
    }
    Ok(removed.iter().map(|o| format!("removed {o}")).collect())
}

/// The xtables lock legacy iptables should use: the host's, or under `--cni-mode` one of this
/// network namespace's own (removed again when `netns` is released).
fn xtables_lock(opts: &RunOptions, netns: &mut lock::NetnsLock) -> XtablesLock {
    XtablesLock {
        wait: opts.xtables_wait,
        file: if opts.cni_mode {
            netns.xtables_lock_file()
        } else {
            None
        },
    }
}

/// Feeds each transaction in turn. If one fails, every table already written is put back as
/// it was — so either all families change or none does.
fn commit(
    transactions: &[Transaction],
    runner: &dyn Runner,
    lock: &XtablesLock,
    log: &Log,
) -> Result<(), ApplyError> {
    for (i, t) in transactions.iter().enumerate() {
        log.debug(&format!("{} input:\n{}", t.tools.restore(), t.text));
        let Err(e) = iptables::restore(runner, t.tools, &t.text, true, lock) else {
            continue;
        };
        // Another instance may have installed the same rules between our read and our write.
        if t.fresh {
            if let Ok(now) = iptables::save(runner, t.tools) {
                if compare(&now, &t.expected) == State::InPlace {
                    log.info(&format!(
                        "{}: the same rules were installed concurrently; nothing to do",
                        family_name(t.tools.family)
                    ));
                    continue;
                }
            }
        }
        let mut message = format!("{}: {e}", family_name(t.tools.family));
        for done in transactions[..=i].iter().rev() {
            let tables = tables_in(&done.text);
            let text = rollback_text(&done.before, &tables);
            if let Err(rollback) = iptables::restore(runner, done.tools, &text, false, lock) {
                message.push_str(&format!(
                    "\nrolling back {} tables {} also failed: {rollback}",
                    family_name(done.tools.family),
                    tables.join(",")
                ));
            }
        }
        message.push_str("\nnothing was left changed");
        return Err(ApplyError::Failed(message));
    }
    Ok(())
}

/// Reads the rules back and warns when the kernel's view differs from the plan.
fn verify(transactions: &[Transaction], runner: &dyn Runner, log: &Log) {
    for t in transactions {
        match iptables::save(runner, t.tools).map(|now| compare(&now, &t.expected)) {
            Ok(State::InPlace) => {}
            Ok(state) => log.warn(&format!(
                "{}: read-back differs from the plan: {state:?}",
                family_name(t.tools.family)
            )),
            Err(e) => log.warn(&format!(
                "{}: cannot read rules back: {e}",
                family_name(t.tools.family)
            )),
        }
    }
}

/// The gid of a group name in an iptables owner match, as the kernel will hold it: from
/// /etc/group first (no NSS: it can stall pod start-up, istio/istio#48416), else through the
/// system's group lookup — which is what iptables itself does when it loads the rule, so a
/// directory-only group resolves the same for both.
fn resolve_group(groups: &Groups, name: &str) -> Option<u32> {
    groups.gid(name).or_else(|| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
}

/// The group database of /etc/group, read directly (no NSS, see istio/istio#48416).
fn load_groups() -> Result<Groups, ApplyError> {
    Groups::load(std::path::Path::new(groups::GROUP_FILE)).map_err(ApplyError::Precondition)
}
