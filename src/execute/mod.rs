//! The executor: runs the decided steps in order with the drivers, reads back what it
//! writes, and undoes what this run added when a later step fails — saying exactly what, if
//! anything, was left changed. It decides nothing: what to write and remove is in the steps.

use crate::driver::nf_tables::NfTables;
use crate::driver::routing::{self, Object};
use crate::driver::rtnetlink::{Changed, Netlink};
use crate::driver::xtables::XtablesLock;
use crate::engine::decide::{nft_precondition, Decision, Note, Removal, Step};
use crate::engine::error::{
    family_name, ApplyError, Cause, Change, Elsewhere, Failed, Left, LeftChanged, Precondition,
    Report, ShellError, Write,
};
use crate::execute::transaction::{commit, failure, CommitFailure, Goal, Transaction};
use crate::log::Log;
use crate::render::nft_netlink::XtFamily;
use crate::render::nft_ruleset::Ruleset;
use crate::render::shadowing::shadowing;
use crate::sys::groups::Groups;
use crate::sys::process::Runner;

pub mod retry;
pub(crate) mod transaction;
pub(crate) mod xt_shells;

/// What the steps are carried out with.
pub struct Drivers<'a> {
    /// Runs the iptables tools.
    pub runner: &'a (dyn Runner + Sync),
    /// How legacy iptables serialises writers.
    pub lock: XtablesLock,
    /// The log.
    pub log: &'a Log,
    /// The native ruleset and the group database, for [`Step::WriteNative`].
    pub native: Option<(&'a Ruleset, &'a Groups)>,
}

/// What the steps so far changed, to report or to undo.
struct Progress {
    nl: Option<Netlink>,
    /// Routing objects this run added (undone if a later write fails).
    added: Vec<Object>,
    changes: Vec<Change>,
}

/// Logs the decision's notes, then runs its steps in order.
pub fn execute(decision: Decision, drivers: &Drivers) -> Result<Report, ApplyError> {
    let log = drivers.log;
    for note in &decision.notes {
        match note {
            Note::Info(line) => log.info(line),
            Note::Warn(line) => log.warn(line),
        }
    }
    // Opened before anything is written: failing to is a precondition, not a failed write.
    let mut nft = if decision
        .steps
        .iter()
        .any(|s| matches!(s, Step::WriteNative { .. }))
    {
        Some(NfTables::open().map_err(nft_precondition)?)
    } else {
        None
    };
    let mut done = Progress {
        nl: None,
        added: Vec::new(),
        changes: Vec::new(),
    };
    for step in decision.steps {
        match step {
            Step::AddRouting(objects) => {
                let mut nl = Netlink::open()
                    .map_err(|e| ApplyError::Precondition(Precondition::Netlink(e)))?;
                done.added = add_routing(&mut nl, &objects)?;
                done.changes
                    .extend(done.added.iter().map(|&o| Change::AddedRouting(o)));
                done.nl = Some(nl);
            }
            Step::WriteIptables {
                writes,
                untouched,
                changes,
            } => {
                let mut transactions: Vec<Transaction> = writes
                    .into_iter()
                    .map(|w| Transaction {
                        tools: w.tools,
                        before: w.before,
                        text: w.text,
                        fresh: w.fresh,
                        expected: w.expected,
                        goal: Goal::Planned,
                    })
                    .collect();
                let read_back = match commit(&mut transactions, drivers.runner, &drivers.lock, log)
                {
                    Ok(read_back) => read_back,
                    Err(mut f) => {
                        f.write.left.extend(undo_routing(&mut done));
                        return Err(f.into_error());
                    }
                };
                done.changes.extend(changes);
                // Other owners' rules ahead of our jumps: not ours to change, but capture may
                // not work.
                let states = transactions
                    .iter()
                    .zip(read_back)
                    .map(|(t, now)| (t.tools.family, now, &t.expected))
                    .chain(
                        untouched
                            .iter()
                            .map(|u| (u.family, u.state.clone(), &u.expected)),
                    );
                for (family, state, expected) in states {
                    for shadow in shadowing(&state, expected) {
                        log.warn(&format!("{}: {}", family_name(family), shadow.text));
                    }
                }
            }
            Step::WriteNative { replace } => {
                let (ruleset, groups) = drivers.native.expect("the native backend's ruleset");
                let nft = nft.as_mut().expect("opened before the steps");
                let applied = match nft.apply_ruleset(ruleset, groups) {
                    Ok(applied) => applied,
                    Err(e) => {
                        let transient = e.transient();
                        let mut write = Box::new(Write::new(Cause::Native(e)));
                        write.left = undo_routing(&mut done);
                        return Err(failure(write, transient));
                    }
                };
                // A fresh install adds; only tables of ours that were there are replaced.
                done.changes.push(Change::Native {
                    replaced: replace,
                    tables: applied.tables,
                    rules: applied.rules,
                    messages: applied.messages,
                });
            }
            Step::MoveHere {
                removals,
                native,
                here,
            } => {
                let removed = remove_elsewhere(&removals, &native, drivers).map_err(|error| {
                    ApplyError::LeftChanged(LeftChanged::BothInstalled { here, error })
                })?;
                done.changes.push(Change::Reconciled);
                done.changes.extend(removed);
            }
            Step::Remove(removals) => {
                let mut transactions = transactions(&removals);
                commit(&mut transactions, drivers.runner, &drivers.lock, log)
                    .map_err(CommitFailure::into_error)?;
                done.changes.extend(removals.iter().map(removed));
                done.changes.extend(remove_empty_shells(&removals, log));
            }
            Step::DeleteNative(tables) => {
                let mut nft = NfTables::open().map_err(|e| ApplyError::Failed(Failed::Nft(e)))?;
                nft.cleanup().map_err(|error| {
                    ApplyError::LeftChanged(LeftChanged::NativeCleanup {
                        error,
                        removed: done.changes.clone(),
                    })
                })?;
                done.changes.push(Change::DeletedNative(tables));
            }
            Step::RemoveStaleRouting(stale) => {
                // The rules are in place by then, so a failure here is a warning naming what
                // is left, not a failed apply.
                let nl = done.nl.as_mut().expect("the routing step opened rtnetlink");
                match routing::remove_each(nl, &stale) {
                    Ok(removed) => done
                        .changes
                        .extend(removed.into_iter().map(Change::RemovedStale)),
                    Err(e) => log.warn(&format!(
                        "the rules are in place, but meshinit's routing objects of an earlier configuration could not all be removed: {e}"
                    )),
                }
            }
            Step::RemoveLoAddress => {
                let nl = done.nl.as_mut().expect("the routing step opened rtnetlink");
                match routing::remove_each(nl, &[Object::LoAddress]) {
                    Ok(removed) => done
                        .changes
                        .extend(removed.into_iter().map(Change::RemovedRouting)),
                    Err(e) => log.warn(&format!("{e} (the IPv6 rules are already removed)")),
                }
            }
            Step::RemoveRouting { ours, foreign } => {
                let mut nl = Netlink::open().map_err(|e| ApplyError::Failed(Failed::Netlink(e)))?;
                let removed = routing::remove_each(&mut nl, &ours)
                    .map_err(|e| ApplyError::Failed(Failed::Routing(e)))?;
                for object in foreign {
                    log.info(&format!(
                        "left in place: {object} (not added by meshinit; remove it with ip if it is Istio's)"
                    ));
                }
                done.changes
                    .extend(removed.into_iter().map(Change::RemovedRouting));
            }
        }
    }
    Ok(Report {
        tools: decision.tools,
        changes: done.changes,
    })
}

/// Adds the routing objects that are missing; returns those added. On failure the ones added
/// are removed again, and the error says whether that worked.
fn add_routing(nl: &mut Netlink, objects: &[Object]) -> Result<Vec<Object>, ApplyError> {
    let mut added = Vec::new();
    for &object in objects {
        match routing::ensure(nl, object) {
            Ok(Changed::Yes) => added.push(object),
            Ok(Changed::No) => {}
            Err(error) => {
                let transient = error.transient();
                let mut write = Box::new(Write::new(Cause::AddRouting { object, error }));
                write.left = undo_added(nl, &added);
                return Err(failure(write, transient));
            }
        }
    }
    Ok(added)
}

/// Removes the routing objects this run added, newest first.
fn undo_routing(done: &mut Progress) -> Vec<Left> {
    match done.nl.as_mut() {
        Some(nl) => undo_added(nl, &done.added),
        None => Vec::new(),
    }
}

/// Removes these objects, added by this run, newest first; each object that could not be
/// removed (so it is left in place).
fn undo_added(nl: &mut Netlink, added: &[Object]) -> Vec<Left> {
    added
        .iter()
        .rev()
        .filter_map(|&object| {
            routing::remove_added(nl, object)
                .err()
                .map(|error| Left::Routing { object, error })
        })
        .collect()
}

/// What removing ours from one iptables place changed.
fn removed(r: &Removal) -> Change {
    Change::Removed {
        tools: r.tools,
        counts: r.counts,
    }
}

/// The removal transactions of these places.
fn transactions(removals: &[Removal]) -> Vec<Transaction> {
    removals
        .iter()
        .map(|r| Transaction {
            tools: r.tools,
            before: r.before.clone(),
            text: r.text.clone(),
            fresh: false,
            expected: r.expected.clone(),
            goal: Goal::Removed,
        })
        .collect()
}

/// Removes every rule of ours from these iptables places and our native tables `native`,
/// then the tables iptables-nft leaves empty; returns what changed.
fn remove_elsewhere(
    removals: &[Removal],
    native: &[String],
    drivers: &Drivers,
) -> Result<Vec<Change>, Elsewhere> {
    let mut changes: Vec<Change> = removals.iter().map(removed).collect();
    let mut transactions = transactions(removals);
    commit(
        &mut transactions,
        drivers.runner,
        &drivers.lock,
        drivers.log,
    )
    .map_err(|f| Elsewhere::Iptables(f.write))?;
    changes.extend(remove_empty_shells(removals, drivers.log));
    if !native.is_empty() {
        let mut nft = NfTables::open().map_err(Elsewhere::Nft)?;
        nft.cleanup().map_err(Elsewhere::Nft)?;
        changes.push(Change::DeletedNative(native.to_vec()));
    }
    Ok(changes)
}

/// Deletes the `ip`/`ip6` tables that iptables-nft created for rules of ours and that are
/// now empty shells (no rules, no sets, only base chains with policy accept). Only the tables
/// that held ours are considered, and only when empty in the generation they are read in (a
/// rule added meanwhile keeps its table); a batch refused for a newer generation is tried
/// again. A failure is a warning: an empty table changes no packet.
fn remove_empty_shells(removals: &[Removal], log: &Log) -> Vec<Change> {
    let mut lines = Vec::new();
    for r in removals {
        let Some(held) = &r.shells else {
            continue;
        };
        let family = XtFamily::of(r.tools.family);
        let mut outcome = Err(ShellError::Changed);
        for _ in 0..3 {
            outcome = delete_if_empty(family, held);
            if outcome.is_ok() {
                break;
            }
        }
        match outcome {
            Ok(empty) => lines.extend(empty.into_iter().map(|table| Change::DeletedShell {
                tools: r.tools,
                table,
            })),
            Err(e) => log.warn(&format!(
                "{}: the empty tables it created could not be deleted (they change no packet): {e}",
                r.name
            )),
        }
    }
    lines
}

/// Deletes those of `held` that are empty shells now, in the generation they were read in.
fn delete_if_empty(family: XtFamily, held: &[String]) -> Result<Vec<String>, ShellError> {
    let mut nft = NfTables::open()?;
    let generation = nft.generation()?;
    let empty: Vec<String> = nft
        .family_tables(family)?
        .into_iter()
        .filter(|t| held.contains(&t.name) && t.is_empty_shell())
        .map(|t| t.name)
        .collect();
    if !empty.is_empty() {
        nft.delete_family_tables(family, &empty, generation)?;
    }
    Ok(empty)
}
