//! The only code that changes the system: checks privileges, reads the live rules, decides per
//! family what to write (nothing, a fresh install, a replacement, a cleanup), writes it in one
//! restore transaction per family, reads it back, and undoes what it wrote if any step fails
//! or the kernel's view differs — saying exactly what, if anything, was left changed.

pub mod cni_files;
pub mod exec;
pub mod groups;
pub mod inventory;
pub mod iptables;
pub mod lock;
pub mod logfile;
pub mod netlink;
pub mod nftables;
pub mod nlsocket;
pub mod privileges;
pub mod procfs;
pub mod retry;
pub mod routing;
mod transaction;
mod xt_shells;

use std::collections::BTreeMap;

use caps::Capability;

use crate::backend::iptables::restore_text;
use crate::backend::iptables_save::{
    cleanup_text, compare, expected_tables, jumps_to_ours, leftover_probes, missing_tables,
    probe_cleanup_text, replace_text, ExpectedTable, State, PROBE_SPEC,
};
use crate::backend::nft_netlink::XtFamily;
use crate::backend::shadowing::shadowing;
use crate::config::{BackendChoice, Capture, InterceptMode, IptablesVariant, RunOptions};
use crate::log::Log;
use crate::plan::{self, Family, Plan, Table};
use exec::Runner;
use groups::Groups;
use inventory::{counts, Inventory, IptablesPlace, Reading};
use iptables::{Tools, XtablesLock};
use netlink::{Changed, Netlink};
use nftables::{NfTables, NftError};
use routing::Object;
use transaction::{commit, failure, CommitFailure, Goal, Transaction};

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
    /// A step failed for a reason that may pass (a lock held past its wait, the kernel's
    /// `EBUSY`/`EAGAIN`/`EINTR`), and nothing was left changed: `--retries` tries again.
    #[error("{message}")]
    Transient {
        /// The whole error, as the other kinds' text.
        message: String,
        /// Why it is transient, in a few words, for the retry's log line.
        reason: String,
    },
}

impl ApplyError {
    /// The same kind of error with `context` on a line before its message.
    pub fn with_context(self, context: &str) -> ApplyError {
        let add = |m: String| format!("{context}:\n{m}");
        match self {
            ApplyError::Precondition(m) => ApplyError::Precondition(add(m)),
            ApplyError::Drift(m) => ApplyError::Drift(add(m)),
            ApplyError::Failed(m) => ApplyError::Failed(add(m)),
            ApplyError::LeftChanged(m) => ApplyError::LeftChanged(add(m)),
            ApplyError::Transient { message, reason } => ApplyError::Transient {
                message: add(message),
                reason,
            },
        }
    }
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
    let lock = lock::lock_netns(wait).map_err(|e| match e {
        lock::LockError::Held { message, holder } => ApplyError::Transient {
            reason: format!(
                "another meshinit held this namespace's lock ({}) longer than {:.1}s",
                holder.unwrap_or_else(|| "holder unknown".to_string()),
                wait.as_secs_f64()
            ),
            message,
        },
        lock::LockError::Failed(message) => ApplyError::Precondition(message),
    })?;
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
                    "Istio's default, as iptables tools are installed".to_string(),
                );
            }
            match NfTables::open().and_then(|mut n| n.inet_tables()) {
                Ok(_) => (
                    Backend::Nftables,
                    "no iptables tool is installed and the kernel has nf_tables".to_string(),
                ),
                // Without CAP_NET_ADMIN (a dry run as a user) nfnetlink refuses every request
                // before nf_tables sees it, so the kernel cannot be asked. The run that
                // installs is privileged and finds no tool either: it goes native, so that is
                // what a dry run shows, saying it assumed.
                Err(NftError::Rejected { errno, .. } | NftError::Io { errno, .. })
                    if errno == nix::errno::Errno::EPERM =>
                {
                    (
                        Backend::Nftables,
                        "no iptables tool is installed; nf_tables assumed, as asking the kernel needs CAP_NET_ADMIN"
                            .to_string(),
                    )
                }
                Err(e) => (
                    Backend::Iptables,
                    format!(
                        "no iptables tool is installed, and nf_tables does not answer either: {e}"
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

/// Installs the plan natively with nf_tables: our tables replaced in one atomic batch, after
/// the routing objects; if the batch is rejected, the routing objects this run added are
/// removed again. Our tables exactly as planned are left alone (a re-run changes nothing);
/// tables of ours that differ, or rules of ours in iptables, are refused without
/// `--reconcile` like iptables drift. With it, the new tables go in first and the iptables
/// rules of ours are removed after, so capture never stops. Once the batch is in, our
/// routing objects that the plan no longer needs are removed. `ruleset` is the plan's
/// (`backend::nftables::ruleset_with`), built once by the caller.
pub fn apply_nftables(
    capture: &Capture,
    plan: &Plan,
    ruleset: &crate::backend::nftables::Ruleset,
    opts: &RunOptions,
    runner: &(dyn Runner + Sync),
    log: &Log,
) -> Result<Report, ApplyError> {
    let (mut lock, groups) = prepare(opts, reading_caps(runner))?;
    require_ipv6_usable(plan)?;
    let inventory = Inventory::read_for_native(runner);
    warn_unreadable(&inventory, log)?;
    let replace = opts.reconcile || opts.force_apply;
    let elsewhere: Vec<&IptablesPlace> = inventory.iptables_with_ours().collect();
    if !elsewhere.is_empty() && !replace {
        return Err(elsewhere_error(&elsewhere, &[]));
    }
    let mut nft = NfTables::open().map_err(nft_precondition)?;
    let present = inventory.native_tables();
    let mut install = true;
    if !present.is_empty() {
        let differences = nft
            .differences(ruleset, &groups)
            .map_err(nft_precondition)?;
        if differences.is_empty() && !opts.force_apply {
            log.info("native nftables: our tables are already as planned, nothing to do");
            install = false;
        } else if !differences.is_empty() && !replace {
            return Err(ApplyError::Drift(format!(
                "our nftables tables are already installed but differ from this configuration; nothing was changed. Re-run with --reconcile to replace them atomically.\n{}",
                differences.join("\n")
            )));
        } else if !differences.is_empty() {
            log.info(&format!(
                "native nftables: replacing our tables, which differ from the plan:\n{}",
                differences.join("\n")
            ));
        }
    }
    let mut nl = Netlink::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let added = add_routing(&mut nl, plan)?;
    let mut changes: Vec<String> = added.iter().map(|o| format!("added {o}")).collect();
    if install {
        let applied = nft.apply_ruleset(ruleset, &groups).map_err(|e| {
            let left = undo_routing(&mut nl, &added);
            failure(
                vec![format!("{e}; the batch was rejected as a whole")],
                left,
                e.transient(),
            )
        })?;
        // A fresh install adds; only tables of ours that were there are replaced.
        let verb = if present.is_empty() {
            "installed"
        } else {
            "replaced"
        };
        changes.push(format!(
            "{verb} tables {} ({} rules, {} netlink messages in one batch)",
            applied.tables.join(", "),
            applied.rules,
            applied.messages
        ));
    }
    if !elsewhere.is_empty() {
        changes.extend(move_from_elsewhere(
            capture,
            &elsewhere,
            false,
            &groups,
            runner,
            &xtables_lock(opts, &mut lock),
            log,
            "the native tables are in place",
        )?);
    }
    changes.extend(remove_stale_routing(&mut nl, plan, log));
    if !plan.ipv6 && !elsewhere.is_empty() {
        changes.extend(remove_unplanned_lo_address(&mut nl, &inventory, log));
    }
    Ok(Report {
        tools: vec!["nf_tables netlink".to_string()],
        changes,
    })
}

/// `--check` for the nftables backend: our tables that should be there are, no others of ours
/// are, each has exactly the planned chains and, chain by chain, the planned rules in order
/// (compared expression by expression with the batch an apply would send), the routing
/// objects are in place, and no rules of ours are in iptables (another backend). `ruleset`
/// is the plan's, as for [`apply_nftables`].
pub fn check_nftables(
    plan: &Plan,
    ruleset: &crate::backend::nftables::Ruleset,
    runner: &(dyn Runner + Sync),
    log: &Log,
) -> Result<Vec<String>, ApplyError> {
    let groups = load_groups()?;
    let inventory = Inventory::read(runner);
    require_readable(&inventory)?;
    let mut nft = NfTables::open().map_err(nft_precondition)?;
    let mut differences = nft
        .differences(ruleset, &groups)
        .map_err(nft_precondition)?;
    if differences.is_empty() {
        log.info("native nftables: in place");
    }
    for place in inventory.iptables_with_ours() {
        differences.push(format!(
            "{}: rules of ours are installed there too ({}), but this configuration uses the native nftables backend",
            place.name(),
            place.counts()
        ));
    }
    differences.extend(check_routing(plan)?);
    Ok(differences)
}

/// An nf_tables failure before anything was written: transient when the kernel's errno is.
fn nft_precondition(e: NftError) -> ApplyError {
    match e.transient() {
        Some(reason) => ApplyError::Transient {
            message: e.to_string(),
            reason,
        },
        None => ApplyError::Precondition(e.to_string()),
    }
}

/// An iptables failure before anything was written, with `end` after its text: transient
/// when the tool's failure is (see [`retry::transient_tool`]), so `--retries` retries it.
fn iptables_error(e: iptables::IptablesError, end: &str) -> ApplyError {
    let message = format!("{e}{end}");
    match e.transient() {
        Some(reason) => ApplyError::Transient {
            message,
            reason: reason.to_string(),
        },
        None => ApplyError::Precondition(message),
    }
}

/// The capabilities reading every place needs: the iptables tools' when one is installed.
fn reading_caps(runner: &dyn Runner) -> &'static [Capability] {
    let any_tool = inventory::PLACES
        .iter()
        .any(|t| runner.installed(&t.save()));
    if any_tool {
        IPTABLES_CAPS
    } else {
        NETLINK_CAPS
    }
}

/// Refuses to decide when a place that may hold rules of ours cannot be read: deciding
/// without it could leave two rulesets, or claim a cleanup that did not happen.
fn require_readable(inventory: &Inventory) -> Result<(), ApplyError> {
    let unreadable = inventory.unreadable();
    if unreadable.is_empty() {
        return Ok(());
    }
    let message = format!(
        "cannot see everything of ours in this network namespace; nothing was changed:\n{}",
        unreadable.join("\n")
    );
    // Every read that failed may pass (a lock, EBUSY, …): another attempt reads them all again.
    match inventory.transient() {
        Some(reason) => Err(ApplyError::Transient { message, reason }),
        None => Err(ApplyError::Precondition(message)),
    }
}

/// An apply goes ahead when a place it does not write to cannot be read (e.g. the legacy
/// tables as an unprivileged user with file capabilities: `/proc/net/ip_tables_names` is
/// root's), as it always has, but says that it could not look there.
/// A place that failed to read for a transient reason is not gone around, though: another
/// attempt (`--retries`) may read it, and it may hold ours.
fn warn_unreadable(inventory: &Inventory, log: &Log) -> Result<(), ApplyError> {
    let transient = inventory.transient_reads();
    if !transient.is_empty() {
        return Err(ApplyError::Transient {
            message: format!(
                "cannot see everything of ours in this network namespace; nothing was changed:\n{}",
                inventory.unreadable().join("\n")
            ),
            reason: transient.join("; "),
        });
    }
    for line in inventory.unreadable() {
        log.warn(&format!(
            "{line}; rules of ours there, if any, are not seen by this run (--cleanup-only and --check refuse in this case)"
        ));
    }
    Ok(())
}

/// Our native tables as nft names them: `inet istio-proxy-nat, inet istio-proxy-mangle`.
fn inet_tables(tables: &[String]) -> String {
    let named: Vec<String> = tables.iter().map(|t| format!("inet {t}")).collect();
    named.join(", ")
}

/// The refusal for rules of ours in another backend, variant or family than this run's.
fn elsewhere_error(places: &[&IptablesPlace], native: &[String]) -> ApplyError {
    let mut lines: Vec<String> = places
        .iter()
        .map(|p| format!("{}: {}", p.name(), p.counts()))
        .collect();
    if !native.is_empty() {
        lines.push(format!("native nftables: table(s) {}", inet_tables(native)));
    }
    ApplyError::Drift(format!(
        "rules of ours are already installed in another place than this run would use; nothing was changed. Re-run with --reconcile to install them here first and then remove the others (capture never stops), or remove them with --cleanup-only.\n{}",
        lines.join("\n")
    ))
}

/// The restore input removing everything of ours from one place (plus leftover probes), and
/// what it removes; `None` when nothing of ours is there.
fn removal_text(
    place: &IptablesPlace,
    expected: &BTreeMap<Table, ExpectedTable>,
) -> Option<(String, inventory::Counts)> {
    let saved = place.saved()?;
    let c = counts(saved);
    let ours = compare(saved, expected) != State::Absent || c.ours();
    if !ours && c.probes == 0 {
        return None;
    }
    let text = if ours {
        cleanup_text(saved, expected)
    } else {
        String::new()
    };
    Some((text + &probe_cleanup_text(saved), c))
}

/// Expected tables per family of this configuration with IPv6 on, in both interception
/// modes merged, so that rules of ours in built-in chains (TPROXY's mangle rules among them)
/// are recognised in either family whichever mode installed them.
fn full_expected(
    capture: &Capture,
    groups: &Groups,
) -> Result<[BTreeMap<Table, ExpectedTable>; 2], ApplyError> {
    let resolve = |name: &str| resolve_group(groups, name);
    let mut out: [BTreeMap<Table, ExpectedTable>; 2] = Default::default();
    for mode in [InterceptMode::Redirect, InterceptMode::Tproxy] {
        let full = plan::plan(&Capture {
            ipv6: true,
            mode,
            ..capture.clone()
        });
        for family in [Family::V4, Family::V6] {
            let tables =
                expected_tables(&full.rules(family), &resolve).map_err(ApplyError::Precondition)?;
            let merged = &mut out[family_index(family)];
            for (table, expected) in tables {
                let into = merged.entry(table).or_default();
                for (chain, specs) in expected.chains {
                    // Each spec as many times as the mode that plans it most often: a rule
                    // planned twice (`-k IF` and `-c IF` both write `-i IF -j RETURN`) is
                    // removed twice, while one both modes plan is removed once.
                    let have = into.chains.entry(chain).or_default();
                    for spec in &specs {
                        let planned = specs.iter().filter(|s| *s == spec).count();
                        if have.iter().filter(|s| *s == spec).count() < planned {
                            have.push(spec.clone());
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn family_index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// The second half of a move under `--reconcile`, once the new ruleset is in place (`here`
/// says where): removes the rules of ours elsewhere, so capture never stops; the change lines,
/// or `LeftChanged` when removing fails and both rulesets remain.
#[allow(clippy::too_many_arguments)]
fn move_from_elsewhere(
    capture: &Capture,
    places: &[&IptablesPlace],
    native: bool,
    groups: &Groups,
    runner: &(dyn Runner + Sync),
    lock: &XtablesLock,
    log: &Log,
    here: &str,
) -> Result<Vec<String>, ApplyError> {
    let removed = remove_elsewhere(capture, places, native, groups, runner, lock, log).map_err(|e| {
        ApplyError::LeftChanged(format!(
            "{here}, but removing the rules of ours elsewhere failed, so both are installed: {e}; re-run with --reconcile"
        ))
    })?;
    let mut changes = vec![
        "reconciled: installed here first, then removed the rules of ours elsewhere".to_string(),
    ];
    changes.extend(removed);
    Ok(changes)
}

/// Removes every rule of ours from these iptables places (and, with `native`, our native
/// tables), then the tables iptables-nft leaves empty; returns one line per place.
fn remove_elsewhere(
    capture: &Capture,
    places: &[&IptablesPlace],
    native: bool,
    groups: &Groups,
    runner: &(dyn Runner + Sync),
    lock: &XtablesLock,
    log: &Log,
) -> Result<Vec<String>, String> {
    let expected = full_expected(capture, groups).map_err(|e| e.to_string())?;
    let mut transactions = Vec::new();
    let mut lines = Vec::new();
    for place in places {
        let want = &expected[family_index(place.tools.family)];
        let Some((text, c)) = removal_text(place, want) else {
            continue;
        };
        lines.push(format!("{}: removed {c}", place.name()));
        transactions.push(Transaction {
            tools: place.tools,
            before: place.saved().cloned().unwrap_or_default(),
            text,
            fresh: false,
            expected: want.clone(),
            goal: Goal::Removed,
        });
    }
    commit(&mut transactions, runner, lock, log).map_err(|f| {
        let mut all = f.lines;
        all.extend(f.left);
        all.join("\n")
    })?;
    lines.extend(remove_empty_xt_tables(places, log));
    if native {
        let mut nft = NfTables::open().map_err(|e| e.to_string())?;
        let present = nft.managed_tables_present().map_err(|e| e.to_string())?;
        if !present.is_empty() {
            nft.cleanup().map_err(|e| e.to_string())?;
            lines.push(format!(
                "native nftables: deleted {}",
                present
                    .iter()
                    .map(|t| format!("table inet {t}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(lines)
}

/// Deletes the `ip`/`ip6` tables that iptables-nft created for rules of ours and that are
/// now empty shells (no rules, no sets, only base chains with policy accept), so the
/// namespace is as it was before the install. Only tables that held ours are considered;
/// the batch is valid only for the generation the tables were read in, so a rule added
/// meanwhile keeps its table. A failure is a warning: an empty table changes no packet.
fn remove_empty_xt_tables(places: &[&IptablesPlace], log: &Log) -> Vec<String> {
    let mut lines = Vec::new();
    for place in places {
        if place.tools.variant != IptablesVariant::Nft || !place.ours() {
            continue;
        }
        let family = match place.tools.family {
            Family::V4 => XtFamily::Ip,
            Family::V6 => XtFamily::Ip6,
        };
        let held: Vec<&String> = place
            .saved()
            .map(|s| {
                s.iter()
                    .filter(|(_, t)| {
                        t.our_chains().next().is_some()
                            || t.rules.values().flatten().any(|r| jumps_to_ours(r))
                    })
                    .map(|(name, _)| name)
                    .collect()
            })
            .unwrap_or_default();
        let mut outcome = Err("not tried".to_string());
        for _ in 0..3 {
            outcome = (|| {
                let mut nft = NfTables::open().map_err(|e| e.to_string())?;
                let generation = nft.generation().map_err(|e| e.to_string())?;
                let empty: Vec<String> = nft
                    .family_tables(family)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter(|t| held.contains(&&t.name) && t.is_empty_shell())
                    .map(|t| t.name)
                    .collect();
                if !empty.is_empty() {
                    nft.delete_family_tables(family, &empty, generation)
                        .map_err(|e| e.to_string())?;
                }
                Ok(empty)
            })();
            if outcome.is_ok() {
                break;
            }
        }
        match outcome {
            Ok(empty) => lines.extend(empty.iter().map(|t| {
                format!(
                    "{}: deleted the table {} {t} it left empty",
                    place.name(),
                    family.name()
                )
            })),
            Err(e) => log.warn(&format!(
                "{}: the empty tables it created could not be deleted (they change no packet): {e}",
                place.name()
            )),
        }
    }
    lines
}

/// Removes `::6` on lo (when ours) after the IPv6 rules of an earlier configuration were
/// removed by a reconcile that turned IPv6 off.
fn remove_unplanned_lo_address(nl: &mut Netlink, inventory: &Inventory, log: &Log) -> Vec<String> {
    let ours = matches!(&inventory.routing, Reading::Read(o) if o.contains(&Object::LoAddress));
    if !ours {
        return Vec::new();
    }
    match routing::remove_each(nl, &[Object::LoAddress]) {
        Ok(removed) => removed.iter().map(|o| format!("removed {o}")).collect(),
        Err(e) => {
            log.warn(&format!("{e} (the IPv6 rules are already removed)"));
            Vec::new()
        }
    }
}

/// Installs the plan's rules with iptables. Rules of ours in another place — the other
/// variant, a family the plan does not use, or native nftables tables — are refused like
/// drift; with `--reconcile` the plan is installed first and they are removed after.
pub fn apply(
    capture: &Capture,
    plan: &Plan,
    opts: &RunOptions,
    runner: &(dyn Runner + Sync),
    log: &Log,
) -> Result<Report, ApplyError> {
    let (mut lock, groups) = prepare(opts, IPTABLES_CAPS)?;
    // The variant probe and the writes make iptables-nft create tables and base chains that
    // stay, empty, after a failure: noted now, deleted again if this run fails.
    let shells = xt_shells::Snapshot::read();
    apply_locked(capture, plan, opts, runner, log, &mut lock, &groups)
        .map_err(|e| shells.after_failure(e, log))
}

/// [`apply`] once the namespace is locked and the groups are read.
fn apply_locked(
    capture: &Capture,
    plan: &Plan,
    opts: &RunOptions,
    runner: &(dyn Runner + Sync),
    log: &Log,
    lock: &mut lock::NetnsLock,
    groups: &Groups,
) -> Result<Report, ApplyError> {
    require_ipv6_usable(plan)?;
    let resolve = |name: &str| resolve_group(groups, name);
    let inventory = Inventory::read_writing(runner, opts.force_iptables_binary);
    // Decided before a variant is chosen, so that a refusal probes nothing.
    let elsewhere = elsewhere_for_iptables(&inventory, plan, opts.force_iptables_binary);
    let native = inventory.native_tables().to_vec();
    let moving = !elsewhere.is_empty() || !native.is_empty();
    if moving && !(opts.reconcile || opts.force_apply) {
        return Err(elsewhere_error(&elsewhere, &native));
    }

    // Decide everything for every family before writing anything.
    let mut transactions = Vec::new();
    let mut untouched = Vec::new();
    let mut drift = Vec::new();
    let mut report = Report::default();
    for family in plan.families() {
        let known = |tools| inventory.place(tools).known();
        let chosen =
            iptables::choose_variant_known(runner, family, opts.force_iptables_binary, &known)
                .map_err(|e| iptables_error(e, "; nothing was changed"))?;
        let (tools, before) = (chosen.tools, chosen.state);
        report
            .tools
            .push(format!("{} {}", family_name(family), tools.main()));
        log.info(&format!(
            "{}: using {}, because {}",
            family_name(family),
            tools.restore(),
            chosen.reason
        ));
        let rules = &plan.rules(family);
        let expected = expected_tables(rules, &resolve).map_err(ApplyError::Precondition)?;
        iptables::require_readable(runner, tools, &before, &expected)
            .map_err(|e| ApplyError::Precondition(format!("{}: {e}", family_name(family))))?;
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
    warn_unreadable(&inventory, log)?;

    // Routing first: without its rules it changes nothing, while rules without their routes
    // would lose TPROXY'd connections.
    let mut nl = Netlink::open().map_err(|e| ApplyError::Precondition(e.to_string()))?;
    let added = add_routing(&mut nl, plan)?;
    let read_back = match commit(&mut transactions, runner, &xtables_lock(opts, lock), log) {
        Ok(read_back) => read_back,
        Err(mut f) => {
            f.left.extend(undo_routing(&mut nl, &added));
            return Err(f.into_error());
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
    if moving {
        // The new rules are in and read back: only now do the old ones go.
        report.changes.extend(move_from_elsewhere(
            capture,
            &elsewhere,
            !native.is_empty(),
            groups,
            runner,
            &xtables_lock(opts, lock),
            log,
            "the rules are installed with iptables",
        )?);
    }
    report
        .changes
        .extend(remove_stale_routing(&mut nl, plan, log));
    if !plan.ipv6 && elsewhere.iter().any(|p| p.tools.family == Family::V6) {
        report
            .changes
            .extend(remove_unplanned_lo_address(&mut nl, &inventory, log));
    }
    Ok(report)
}

/// The iptables places holding rules of ours that an iptables run with this plan would not
/// use: families the plan lacks, and for a planned family the variant that would not be
/// chosen (the forced one is; else nft when it holds ours, as `choose_variant` decides).
fn elsewhere_for_iptables<'a>(
    inventory: &'a Inventory,
    plan: &Plan,
    forced: Option<IptablesVariant>,
) -> Vec<&'a IptablesPlace> {
    let families = plan.families();
    inventory
        .iptables_with_ours()
        .filter(|p| {
            let family = p.tools.family;
            if !families.contains(&family) {
                return true;
            }
            let chosen = forced.unwrap_or_else(|| {
                let nft = Tools {
                    family,
                    variant: IptablesVariant::Nft,
                };
                if inventory.place(nft).ours() {
                    IptablesVariant::Nft
                } else {
                    IptablesVariant::Legacy
                }
            });
            p.tools.variant != chosen
        })
        .collect()
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
    runner: &(dyn Runner + Sync),
    log: &Log,
) -> Result<Vec<String>, ApplyError> {
    let groups = load_groups()?;
    let resolve = |name: &str| resolve_group(&groups, name);
    let variants = match opts.force_iptables_binary {
        Some(v) => vec![v],
        None => vec![IptablesVariant::Nft, IptablesVariant::Legacy],
    };
    let inventory = Inventory::read(runner);
    let mut differences = Vec::new();
    for family in plan.families() {
        let name = family_name(family);
        let expected =
            expected_tables(&plan.rules(family), &resolve).map_err(ApplyError::Precondition)?;
        let mut found = Vec::new();
        for &variant in &variants {
            let tools = Tools { family, variant };
            let live = match inventory.place(tools).saved() {
                Some(saved) => Some(saved.clone()),
                // Read again only to give the same answer (not installed) or error as always.
                None => iptables::save_if_present(runner, tools).map_err(|e| {
                    let context = format!("cannot read the {name} rules with {}", tools.save());
                    iptables_error(
                        iptables::IptablesError::Context {
                            context,
                            source: Box::new(e),
                        },
                        "",
                    )
                })?,
            };
            let Some(live) = live else {
                continue;
            };
            iptables::require_readable(runner, tools, &live, &expected)
                .map_err(|e| ApplyError::Precondition(format!("{name}: {e}")))?;
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
                } else {
                    log.info(&format!("{name} ({}): in place", tools.main()));
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
    // Every other place: a family the plan lacks, the variant not forced, native tables.
    require_readable(&inventory)?;
    let families = plan.families();
    for place in inventory.iptables_with_ours() {
        if !families.contains(&place.tools.family) {
            differences.push(format!(
                "{}: rules of ours are installed ({}) while {} is off in this configuration",
                place.name(),
                place.counts(),
                family_name(place.tools.family)
            ));
        } else if opts
            .force_iptables_binary
            .is_some_and(|v| v != place.tools.variant)
        {
            differences.push(format!(
                "{}: rules of ours are installed there too ({}), but this configuration uses the other variant",
                place.name(),
                place.counts()
            ));
        }
    }
    let native = inventory.native_tables();
    if !native.is_empty() {
        differences.push(format!(
            "native nftables: table(s) {} of ours are installed too, but this configuration uses iptables",
            inet_tables(native)
        ));
    }
    differences.extend(check_routing(plan)?);
    Ok(differences)
}

/// What `--cleanup-only` would remove, per place, decided from one inventory: the restore
/// input per iptables place, our native tables, our routing objects. The same decision is
/// printed by a dry run and carried out by [`cleanup`].
pub struct CleanupPlan {
    /// The iptables places holding something of ours, each with its removal input.
    pub iptables: Vec<(IptablesPlace, String, inventory::Counts)>,
    /// Our native tables.
    pub native: Vec<String>,
    /// Our routing objects.
    pub routing: Vec<Object>,
    /// One line per place with nothing of ours, saying why it is known to be empty.
    pub nothing: Vec<String>,
}

/// The cleanup decision: everything of ours, in every place, whatever this run's backend or
/// IPv6 setting. A place that may hold ours but cannot be read refuses the whole cleanup.
fn cleanup_plan(
    inventory: &Inventory,
    expected: &[BTreeMap<Table, ExpectedTable>; 2],
) -> Result<CleanupPlan, ApplyError> {
    require_readable(inventory)?;
    let mut out = CleanupPlan {
        iptables: Vec::new(),
        native: inventory.native_tables().to_vec(),
        routing: match &inventory.routing {
            Reading::Read(objects) => objects.clone(),
            _ => Vec::new(),
        },
        nothing: Vec::new(),
    };
    for place in &inventory.iptables {
        match removal_text(place, &expected[family_index(place.tools.family)]) {
            Some((text, c)) => out.iptables.push((place.clone(), text, c)),
            None => out.nothing.push(match &place.reading {
                Reading::Nothing(why) => format!("{}: nothing of ours ({why})", place.name()),
                _ => format!("{}: nothing of ours", place.name()),
            }),
        }
    }
    if out.native.is_empty() {
        out.nothing
            .push("native nftables: nothing of ours".to_string());
    }
    Ok(out)
}

/// `--dry-run --cleanup-only`: what a cleanup would remove in this namespace, read-only.
pub fn cleanup_preview(
    capture: &Capture,
    runner: &(dyn Runner + Sync),
) -> Result<String, ApplyError> {
    privileges::require_capabilities(reading_caps(runner)).map_err(|e| {
        ApplyError::Precondition(format!(
            "a dry run of --cleanup-only reads this namespace's rules, which needs privileges: {e}"
        ))
    })?;
    let groups = load_groups()?;
    let inventory = Inventory::read(runner);
    let plan = cleanup_plan(&inventory, &full_expected(capture, &groups)?)?;
    let mut out = String::from("# meshinit dry run: what --cleanup-only would remove here\n");
    for (place, text, c) in &plan.iptables {
        out.push_str(&format!(
            "# {}: {c}, with {} --noflush:\n{text}",
            place.name(),
            place.tools.restore()
        ));
        if place.tools.variant == IptablesVariant::Nft {
            out.push_str(&format!(
                "# {}: then the tables it leaves empty (no rules, base chains with policy accept)\n",
                place.name()
            ));
        }
    }
    for table in &plan.native {
        out.push_str(&format!("# native nftables: delete table inet {table}\n"));
    }
    for object in plan.routing.iter().rev() {
        out.push_str(&format!("# remove {object}\n"));
    }
    for line in &plan.nothing {
        out.push_str(&format!("# {line}\n"));
    }
    if plan.iptables.is_empty() && plan.native.is_empty() && plan.routing.is_empty() {
        out.push_str("# nothing of ours is installed: nothing would be removed\n");
    }
    Ok(out)
}

/// Removes everything of ours from every place it is found in — both iptables variants and
/// both families, our native tables, the tables iptables-nft leaves empty, our routing
/// objects and `::6` — whatever this run's backend or IPv6 setting; says per place what
/// went. Refuses, changing nothing, when a place that may hold ours cannot be read.
pub fn cleanup(
    capture: &Capture,
    opts: &RunOptions,
    runner: &(dyn Runner + Sync),
    log: &Log,
) -> Result<Report, ApplyError> {
    let (mut lock, groups) = prepare(opts, reading_caps(runner))?;
    let inventory = Inventory::read(runner);
    let expected = full_expected(capture, &groups)?;
    let plan = cleanup_plan(&inventory, &expected)?;
    for line in &plan.nothing {
        log.info(line);
    }
    // An iptables-nft older than 1.8.8 shows a newer one's rules without some matches:
    // deleting by that text would fail or hit the wrong rule.
    for (place, _, _) in &plan.iptables {
        if let Some(saved) = place.saved() {
            let want = &expected[family_index(place.tools.family)];
            iptables::require_readable(runner, place.tools, saved, want).map_err(|e| {
                ApplyError::Precondition(format!("{}: {e}; nothing was changed", place.name()))
            })?;
        }
    }
    let mut transactions: Vec<Transaction> = plan
        .iptables
        .iter()
        .map(|(place, text, _)| Transaction {
            tools: place.tools,
            before: place.saved().cloned().unwrap_or_default(),
            text: text.clone(),
            fresh: false,
            expected: expected[family_index(place.tools.family)].clone(),
            goal: Goal::Removed,
        })
        .collect();
    commit(
        &mut transactions,
        runner,
        &xtables_lock(opts, &mut lock),
        log,
    )
    .map_err(CommitFailure::into_error)?;
    let mut changes: Vec<String> = plan
        .iptables
        .iter()
        .map(|(place, _, c)| format!("{}: removed {c}", place.name()))
        .collect();
    let places: Vec<&IptablesPlace> = plan.iptables.iter().map(|(p, _, _)| p).collect();
    changes.extend(remove_empty_xt_tables(&places, log));
    if !plan.native.is_empty() {
        let mut nft = NfTables::open().map_err(|e| ApplyError::Failed(e.to_string()))?;
        nft.cleanup().map_err(|e| {
            let removed = if changes.is_empty() {
                String::new()
            } else {
                format!(" (already removed: {})", changes.join("; "))
            };
            ApplyError::LeftChanged(format!("deleting our native nftables tables: {e}{removed}"))
        })?;
        changes.push(format!(
            "native nftables: deleted {}",
            plan.native
                .iter()
                .map(|t| format!("table inet {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    changes.extend(remove_routing(capture, log)?);
    Ok(Report {
        tools: plan
            .iptables
            .iter()
            .map(|(p, _, _)| format!("{} {}", family_name(p.tools.family), p.tools.main()))
            .collect(),
        changes,
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
                let transient = e.errno().and_then(retry::transient_errno);
                return Err(failure(
                    vec![format!("adding {object}: {e}")],
                    left,
                    transient,
                ));
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
