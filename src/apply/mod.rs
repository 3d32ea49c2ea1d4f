//! The only code that changes the system: checks privileges, reads the live rules, decides per
//! family what to write (nothing, a fresh install, a replacement, a cleanup), writes it in one
//! restore transaction per family, reads it back, and undoes what it wrote if any step fails
//! or the kernel's view differs — saying exactly what, if anything, was left changed.

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
mod transaction;

use caps::Capability;

use crate::backend::iptables::restore_text;
use crate::backend::iptables_save::{
    cleanup_text, compare, expected_tables, leftover_probes, missing_tables, probe_cleanup_text,
    replace_text, State, PROBE_SPEC,
};
use crate::backend::shadowing::shadowing;
use crate::config::{BackendChoice, Capture, IptablesVariant, NftSets, RunOptions};
use crate::log::Log;
use crate::plan::{self, Family, Plan};
use exec::Runner;
use groups::Groups;
use iptables::{Tools, XtablesLock};
use netlink::{Changed, Netlink};
use nftables::NfTables;
use routing::Object;
use transaction::{commit, failure, Goal, Transaction};

/// Why applying or cleaning up stopped. Except for `LeftChanged`, the namespace is as it was
/// before.
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
    /// A write failed and could not be undone completely; the message says what is left.
    #[error("{0}")]
    LeftChanged(String),
}

/// What a run did, for the summary line.
#[derive(Debug, Default)]
pub struct Report {
    /// The iptables tools used per family, e.g. `IPv4 iptables-nft`.
    pub tools: Vec<String>,
    /// One line per change; empty when nothing changed.
    pub changes: Vec<String>,
}

/// `IPv4` or `IPv6`, as messages name a family.
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
    require_ipv6_usable(plan)?;
    let mut nft = NfTables::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let mut nl = Netlink::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let added = add_routing(&mut nl, plan)?;
    let applied = nft.apply(plan, opts.nft_sets).map_err(|e| {
        let left = undo_routing(&mut nl, &added);
        failure(
            vec![format!("{e}; the batch was rejected as a whole")],
            left,
        )
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
pub fn check_nftables(plan: &Plan, sets: NftSets) -> Result<Vec<String>, ApplyError> {
    let groups = load_groups()?;
    let mut nft = NfTables::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let mut differences = nft
        .differences(&crate::backend::nftables::ruleset_with(plan, sets), &groups)
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
    require_ipv6_usable(plan)?;
    let resolve = |name: &str| resolve_group(&groups, name);

    // Decide everything for every family before writing anything.
    let mut transactions = Vec::new();
    let mut untouched = Vec::new();
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
        // A probe rule left by a run killed during variant detection goes in the same write.
        let probes = probe_cleanup_text(&before);
        if !probes.is_empty() {
            log.info(&format!(
                "{}: removing {} leftover variant-detection probe rule(s) -A OUTPUT {PROBE_SPEC} (nat)",
                family_name(family),
                leftover_probes(&before)
            ));
            report.changes.push(format!(
                "{}: removed a leftover probe rule",
                family_name(family)
            ));
        }
        let (text, fresh) = match compare(&before, &expected) {
            State::InPlace if !opts.force_apply && probes.is_empty() => {
                log.info(&format!(
                    "{}: rules already in place, nothing to do",
                    family_name(family)
                ));
                untouched.push((family, before, expected));
                continue;
            }
            State::InPlace if !opts.force_apply => (String::new(), false),
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
        let install = !text.is_empty();
        transactions.push(Transaction {
            tools,
            before,
            text: text + &probes,
            fresh,
            expected,
            goal: Goal::Planned,
        });
        if install {
            report.changes.push(format!(
                "{}: {} {}",
                family_name(family),
                if fresh {
                    "installed rules with"
                } else {
                    "replaced rules with"
                },
                tools.restore()
            ));
        }
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
    let added = add_routing(&mut nl, plan)?;
    let read_back = match commit(
        &mut transactions,
        runner,
        &xtables_lock(opts, &mut lock),
        log,
    ) {
        Ok(read_back) => read_back,
        Err((lines, mut left)) => {
            left.extend(undo_routing(&mut nl, &added));
            return Err(failure(lines, left));
        }
    };
    let added: Vec<String> = added.iter().map(|o| format!("added {o}")).collect();
    report.changes.splice(0..0, added);
    // Other owners' rules ahead of our jumps: not ours to change, but capture may not work.
    let states = transactions
        .iter()
        .zip(read_back)
        .map(|(t, now)| (t.tools.family, now, &t.expected))
        .chain(untouched.iter().map(|(f, s, e)| (*f, s.clone(), e)));
    for (family, state, expected) in states {
        for shadow in shadowing(&state, expected) {
            log.warn(&format!("{}: {}", family_name(family), shadow.text));
        }
    }
    report
        .changes
        .extend(remove_stale_routing(&mut nl, plan, log));
    Ok(report)
}

/// Compares the live rules with the plan without changing anything: the differences, one
/// entry per family that differs (empty when everything is in place). Reads both variants and
/// never probes, so it is safe as a readiness check. A state that cannot be read is an error,
/// never "not installed". Rules of other owners ahead of our jumps that take all traffic are
/// differences (capture is not in effect); those that take only what they match are logged as
/// warnings.
pub fn check(
    plan: &Plan,
    opts: &RunOptions,
    runner: &dyn Runner,
    log: &Log,
) -> Result<Vec<String>, ApplyError> {
    let groups = load_groups()?;
    let resolve = |name: &str| resolve_group(&groups, name);
    let variants = match opts.force_iptables_binary {
        Some(v) => vec![v],
        None => vec![IptablesVariant::Nft, IptablesVariant::Legacy],
    };
    let mut differences = Vec::new();
    for family in plan.families() {
        let name = family_name(family);
        let expected =
            expected_tables(&plan.rules(family), &resolve).map_err(ApplyError::Precondition)?;
        let mut found = Vec::new();
        for &variant in &variants {
            let tools = Tools { family, variant };
            let live = iptables::save_if_present(runner, tools).map_err(|e| {
                ApplyError::Precondition(format!(
                    "cannot read the {name} rules with {}: {e}",
                    tools.save()
                ))
            })?;
            let Some(live) = live else {
                continue;
            };
            // Harmless (protocol 255 never matches), so not a difference; but ours to remove.
            let probes = leftover_probes(&live);
            if probes > 0 {
                log.warn(&format!(
                    "{name} ({}): {probes} leftover variant-detection probe rule(s) -A OUTPUT {PROBE_SPEC} in nat, which match nothing (a run with this variant or --cleanup-only removes them)",
                    tools.save()
                ));
            }
            match compare(&live, &expected) {
                State::Absent => {}
                state => found.push((tools, state, live)),
            }
        }
        match found.as_slice() {
            [] => differences.push(format!("{name}: none of our rules are installed")),
            [(tools, state, live)] => {
                if let State::Drifted(diffs) = state {
                    differences.push(format!("{name} ({}):\n{}", tools.save(), diffs.join("\n")));
                }
                for shadow in shadowing(live, &expected) {
                    let line = format!("{name} ({}): {}", tools.save(), shadow.text);
                    if shadow.all {
                        differences.push(format!("{line}: capture is not in effect"));
                    } else {
                        log.warn(&line);
                    }
                }
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
            // A missing tool cannot have installed anything; a failing one leaves us blind.
            let before = iptables::save_if_present(runner, tools).map_err(|e| {
                ApplyError::Precondition(format!(
                    "cannot read the {} rules with {}: {e}; nothing was changed",
                    family_name(family),
                    tools.save()
                ))
            })?;
            let Some(before) = before else {
                continue;
            };
            let ours = compare(&before, &expected) != State::Absent;
            let probes = probe_cleanup_text(&before);
            if !ours && probes.is_empty() {
                continue;
            }
            let text = if ours {
                cleanup_text(&before, &expected)
            } else {
                String::new()
            };
            transactions.push(Transaction {
                tools,
                before,
                text: text + &probes,
                fresh: false,
                expected: expected.clone(),
                goal: Goal::Removed,
            });
        }
    }
    commit(
        &mut transactions,
        runner,
        &xtables_lock(opts, &mut lock),
        log,
    )
    .map_err(|(lines, left)| failure(lines, left))?;
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

/// IPv6 rules need the `::6/128` address on lo, which the kernel refuses with EACCES
/// ("Permission denied") when IPv6 is disabled on lo (as `net.ipv6.conf.all.disable_ipv6=1`
/// does): say so before anything is written.
fn require_ipv6_usable(plan: &Plan) -> Result<(), ApplyError> {
    if !plan.ipv6 {
        return Ok(());
    }
    let path = "/proc/sys/net/ipv6/conf/lo/disable_ipv6";
    let advice = "IPv6 rules were asked for (--ipv6=true, or --dual-stack with an IPv6 address found) and need the ::6/128 address on lo, which the kernel then refuses (EACCES, \"Permission denied\"); run with --ipv6=false or enable IPv6 in the pod; nothing was changed";
    match std::fs::read_to_string(path) {
        Ok(value) if value.trim() == "0" => Ok(()),
        Ok(value) => Err(ApplyError::Precondition(format!(
            "IPv6 is disabled in this network namespace ({path} = {}, e.g. from net.ipv6.conf.all.disable_ipv6=1): {advice}",
            value.trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApplyError::Precondition(
            format!("IPv6 is disabled in this network namespace or kernel ({path} does not exist): {advice}"),
        )),
        Err(e) => Err(ApplyError::Precondition(format!("cannot read {path}: {e}"))),
    }
}

/// Adds the plan's routing objects that are missing; returns those added. On failure the ones
/// added are removed again, and the error says whether that worked.
fn add_routing(nl: &mut Netlink, plan: &Plan) -> Result<Vec<Object>, ApplyError> {
    let mut added = Vec::new();
    for object in routing::objects(plan) {
        match routing::ensure(nl, object) {
            Ok(Changed::Yes) => added.push(object),
            Ok(Changed::No) => {}
            Err(e) => {
                let left = undo_routing(nl, &added);
                return Err(failure(vec![format!("adding {object}: {e}")], left));
            }
        }
    }
    Ok(added)
}

/// Removes the routing objects this run added, newest first; one line per object that could
/// not be removed (so it is left in place).
fn undo_routing(nl: &mut Netlink, added: &[Object]) -> Vec<String> {
    added
        .iter()
        .rev()
        .filter_map(|&object| {
            routing::remove_added(nl, object)
                .err()
                .map(|e| format!("{object}, added by this run, could not be removed: {e}"))
        })
        .collect()
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
            Err(e) => {
                return Err(ApplyError::Precondition(format!(
                    "cannot check {object}: {e}"
                )))
            }
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
