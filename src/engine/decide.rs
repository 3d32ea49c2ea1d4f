//! The decision: one pure function from the plan, what was observed and the mode to the
//! steps to take (or, for `--check`, the differences to report). It reads nothing and writes
//! nothing, so every case — a fresh install, a re-run, drift, rules in another place,
//! cleanup, leftovers — is tested from recorded inventories without privileges.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::IptablesVariant;
use crate::driver::nf_tables;
use crate::driver::routing::{self, Object};
use crate::driver::xtables::{self, Tools};
use crate::engine::inventory::{counts, Counts, Inventory, IptablesPlace, Reading};
use crate::plan::{Family, Plan, Table};
use crate::render::iptables_save::{
    cleanup_text, compare, jumps_to_ours, leftover_probes, missing_tables, probe_cleanup_text,
    replace_text, ExpectedTable, Saved, State, PROBE_SPEC,
};
use crate::render::iptables_text::restore_text;
use crate::render::shadowing::shadowing;
use crate::sys::transient::Transient;

use super::error::{family_name, inet_tables, ApplyError, Change, Drift, Precondition, ToolUse};
use super::mode::{Install, Mode};
use super::observe::{Ipv6Lo, Observed};
use crate::render::iptables_save::ExpectedError;

/// The expected tables of one family: the reference for comparing, replacing and removing.
pub type Expected = BTreeMap<Table, ExpectedTable>;

/// The expected tables of everything of ours per family (both interception modes, IPv6 on).
pub type Full = Result<[Expected; 2], ExpectedError>;

/// What the decision is made from.
pub struct Input<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// What was read.
    pub observed: &'a Observed,
    /// `--force-iptables-binary`.
    pub forced: Option<IptablesVariant>,
    /// The gid of a group name in an owner match (for the expected tables of a place).
    pub resolve: &'a dyn Fn(&str) -> Option<u32>,
    /// The plan's expected tables per family (`None` for a family it lacks).
    pub expected: &'a [Option<Result<Expected, ExpectedError>>; 2],
    /// Everything of ours as expected tables, computed when a removal needs it.
    pub full: &'a dyn Fn() -> Full,
}

/// A line for the log, said before the steps run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// An info line.
    Info(String),
    /// A warning.
    Warn(String),
}

/// One family's restore with iptables.
#[derive(Clone, Debug)]
pub struct Write {
    /// The family and variant.
    pub tools: Tools,
    /// The family's rules before: what an undo goes back to.
    pub before: Saved,
    /// The `--noflush` restore input.
    pub text: String,
    /// Whether nothing of ours was there (a concurrent identical install is then fine).
    pub fresh: bool,
    /// What the read-back must show.
    pub expected: Expected,
}

/// A family left as it is (already in place), for the shadowing warnings after the writes.
#[derive(Clone, Debug)]
pub struct Untouched {
    /// The family.
    pub family: Family,
    /// Its live rules.
    pub state: Saved,
    /// The plan's expected tables.
    pub expected: Expected,
}

/// Everything of ours removed from one iptables place.
#[derive(Clone, Debug)]
pub struct Removal {
    /// `IPv4 iptables-nft`.
    pub name: String,
    /// The place.
    pub tools: Tools,
    /// Its rules before.
    pub before: Saved,
    /// The restore input removing ours (and leftover probes).
    pub text: String,
    /// What it removes.
    pub counts: Counts,
    /// Everything of ours, as expected tables (which rules in built-in chains are ours).
    pub expected: Expected,
    /// For iptables-nft, the `ip`/`ip6` tables that held ours: deleted after, if left empty.
    pub shells: Option<Vec<String>>,
}

/// One thing to do, in order.
#[derive(Clone, Debug)]
pub enum Step {
    /// Add the plan's routing objects that are missing; undone if a later write fails.
    AddRouting(Vec<Object>),
    /// Restore into each family with iptables, read all back, undo all on any failure; then
    /// warn about other owners' rules ahead of our jumps (written and untouched families).
    WriteIptables {
        /// The writes, in family order.
        writes: Vec<Write>,
        /// Families already in place.
        untouched: Vec<Untouched>,
        /// The changes the writes make.
        changes: Vec<Change>,
    },
    /// Install (or, with `replace`, replace) our native tables in one atomic batch.
    WriteNative {
        /// Whether tables of ours were there.
        replace: bool,
    },
    /// With the new rules in place: remove ours from the other places (`here` says where
    /// the new ones are). A failure leaves both installed.
    MoveHere {
        /// The iptables places.
        removals: Vec<Removal>,
        /// Our native tables.
        native: Vec<String>,
        /// Where the new rules are, for the error.
        here: &'static str,
    },
    /// Cleanup: remove ours from these iptables places, each read back.
    Remove(Vec<Removal>),
    /// Cleanup: delete our native tables.
    DeleteNative(Vec<String>),
    /// Remove our routing objects that the plan does not need (a failure is a warning).
    RemoveStaleRouting(Vec<Object>),
    /// Remove `::6` on lo (ours) after the IPv6 rules it served were removed.
    RemoveLoAddress,
    /// Cleanup: remove every routing object of ours; name those left that are not ours.
    RemoveRouting {
        /// Ours, in the order they were added.
        ours: Vec<Object>,
        /// Present, used by a configuration of ours, but not added by meshinit.
        foreign: Vec<Object>,
    },
}

/// What was decided.
#[derive(Debug, Default)]
pub struct Decision {
    /// Lines for the log.
    pub notes: Vec<Note>,
    /// The tools per family (`IPv4 iptables-nft`), for the summary.
    pub tools: Vec<ToolUse>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// `--check`: the differences from the plan (empty when in place).
    pub differences: Vec<Difference>,
}

/// One way the live state differs from the plan (`--check`): a line, or a place with the
/// lines that differ there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// What differs, or where.
    pub what: String,
    /// For a place, each line that differs there.
    pub lines: Vec<String>,
}

impl Difference {
    /// A difference said in one line.
    pub fn line(what: impl Into<String>) -> Difference {
        Difference {
            what: what.into(),
            lines: Vec::new(),
        }
    }

    /// How many lines it takes (at least one).
    pub fn line_count(&self) -> usize {
        self.lines.len().max(1)
    }

    /// Its first line: what differs, with the first line that differs there.
    pub fn headline(&self) -> String {
        match self.lines.first() {
            Some(first) => format!("{}: {first}", self.what),
            None => self.what.clone(),
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        if !self.lines.is_empty() {
            write!(f, ":\n{}", self.lines.join("\n"))?;
        }
        Ok(())
    }
}

/// The decision for a mode and backend (`native`: the nftables backend).
pub fn decide(input: &Input, mode: Mode, native: bool) -> Result<Decision, ApplyError> {
    match mode {
        Mode::Install { install, .. } if native => install_native(input, install),
        Mode::Install { install, .. } => install_iptables(input, install),
        Mode::Check if native => check_native(input),
        Mode::Check => check_iptables(input),
        Mode::Cleanup { .. } => cleanup(input, true),
        Mode::DryRunCleanup => cleanup(input, false),
        Mode::DryRun | Mode::Skip { .. } => Ok(Decision::default()),
    }
}

/// Renders a cleanup decision as `--dry-run --cleanup-only` prints it.
pub fn preview(decision: &Decision) -> String {
    let mut out = String::from("# meshinit dry run: what --cleanup-only would remove here\n");
    let mut any = false;
    for step in &decision.steps {
        let text = step.to_string();
        any |= !text.is_empty();
        out.push_str(&text);
    }
    for note in &decision.notes {
        let (Note::Info(line) | Note::Warn(line)) = note;
        out.push_str(&format!("# {line}\n"));
    }
    if !any {
        out.push_str("# nothing of ours is installed: nothing would be removed\n");
    }
    out
}

impl fmt::Display for Step {
    /// The step as comment lines (and restore inputs), as a dry run prints it; empty when the
    /// step would change nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let removal = |f: &mut fmt::Formatter<'_>, r: &Removal| -> fmt::Result {
            write!(
                f,
                "# {}: {}, with {} --noflush:\n{}",
                r.name,
                r.counts,
                r.tools.restore(),
                r.text
            )?;
            if r.tools.variant == IptablesVariant::Nft {
                writeln!(
                    f,
                    "# {}: then the tables it leaves empty (no rules, base chains with policy accept)",
                    r.name
                )?;
            }
            Ok(())
        };
        match self {
            Step::AddRouting(objects) => {
                for o in objects {
                    writeln!(f, "# add {o} (unless present)")?;
                }
            }
            Step::WriteIptables { writes, .. } => {
                for w in writes {
                    write!(f, "# {} --noflush:\n{}", w.tools.restore(), w.text)?;
                }
            }
            Step::WriteNative { replace } => writeln!(
                f,
                "# native nftables: {} our tables in one batch",
                if *replace { "replace" } else { "install" }
            )?,
            Step::MoveHere {
                removals, native, ..
            } => {
                for r in removals {
                    removal(f, r)?;
                }
                for t in native {
                    writeln!(f, "# native nftables: delete table inet {t}")?;
                }
            }
            Step::Remove(removals) => {
                for r in removals {
                    removal(f, r)?;
                }
            }
            Step::DeleteNative(tables) => {
                for t in tables {
                    writeln!(f, "# native nftables: delete table inet {t}")?;
                }
            }
            Step::RemoveStaleRouting(objects) => {
                for o in objects.iter().rev() {
                    writeln!(f, "# remove {o} (not planned by this configuration)")?;
                }
            }
            Step::RemoveLoAddress => writeln!(f, "# remove {}", Object::LoAddress)?,
            Step::RemoveRouting { ours, .. } => {
                for o in ours.iter().rev() {
                    writeln!(f, "# remove {o}")?;
                }
            }
        }
        Ok(())
    }
}

/// What an iptables install checks before choosing a variant (which probes): that IPv6 can
/// be used when planned, and that rules of ours elsewhere are not refused.
pub fn preflight_iptables(input: &Input, install: Install) -> Result<(), ApplyError> {
    require_ipv6_usable(input.plan, &input.observed.ipv6)?;
    let inventory = &input.observed.inventory;
    let elsewhere = elsewhere_for_iptables(inventory, input.plan, input.forced);
    let native = inventory.native_tables();
    if (!elsewhere.is_empty() || !native.is_empty()) && !install.replaces() {
        return Err(elsewhere_error(&elsewhere, native));
    }
    Ok(())
}

/// Installing with iptables. Rules of ours in another place — the other variant, a family
/// the plan does not use, or native nftables tables — are refused like drift; with
/// `--reconcile` the plan is installed first and they are removed after.
fn install_iptables(input: &Input, install: Install) -> Result<Decision, ApplyError> {
    preflight_iptables(input, install)?;
    let seen = input.observed;
    let inventory = &seen.inventory;
    let plan = input.plan;
    let elsewhere = elsewhere_for_iptables(inventory, plan, input.forced);
    let native = inventory.native_tables().to_vec();
    let moving = !elsewhere.is_empty() || !native.is_empty();
    let mut out = Decision::default();
    let mut writes = Vec::new();
    let mut untouched = Vec::new();
    let mut changes = Vec::new();
    let mut drift = Vec::new();
    for view in &seen.families {
        let view = view.as_ref().map_err(Clone::clone)?;
        let family = view.family;
        let name = family_name(family);
        let (tools, before) = (view.chosen.tools, view.chosen.state.clone());
        out.tools.push(ToolUse::Iptables(tools));
        out.notes.push(Note::Info(format!(
            "{name}: using {}, because {}",
            tools.restore(),
            view.chosen.reason
        )));
        let rules = &plan.rules(family);
        let expected = planned(input, family)?;
        if let Some(e) = old_tool(seen, tools) {
            return Err(ApplyError::Precondition(Precondition::OldTool {
                tools,
                error: e.clone(),
                cleanup: false,
            }));
        }
        let missing = missing_tables(&before, &expected);
        // A probe rule left by a run killed during variant detection goes in the same write.
        let probes = probe_cleanup_text(&before);
        if !probes.is_empty() {
            out.notes.push(Note::Info(format!(
                "{name}: removing {} leftover variant-detection probe rule(s) -A OUTPUT {PROBE_SPEC} (nat)",
                leftover_probes(&before)
            )));
            changes.push(Change::RemovedProbe(family));
        }
        let (text, fresh) = match compare(&before, &expected) {
            State::InPlace if !install.force && probes.is_empty() => {
                out.notes.push(Note::Info(format!(
                    "{name}: rules already in place, nothing to do"
                )));
                untouched.push(Untouched {
                    family,
                    state: before,
                    expected,
                });
                continue;
            }
            State::InPlace if !install.force => (String::new(), false),
            State::InPlace => (replace_text(&before, rules, &expected), false),
            State::Absent => (restore_text(rules), true),
            State::Drifted(_) if missing.is_some() => {
                // Safe without --reconcile: the result only adds what this same configuration
                // plans; nothing of a different configuration is replaced.
                out.notes.push(Note::Info(format!(
                    "{name}: completing an interrupted install of this configuration (missing tables: {})",
                    missing
                        .unwrap_or_default()
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
                (replace_text(&before, rules, &expected), false)
            }
            State::Drifted(diffs) if install.replaces() => {
                out.notes.push(Note::Info(format!(
                    "{name}: replacing rules of ours that differ from the plan:\n{}",
                    diffs.join("\n")
                )));
                (replace_text(&before, rules, &expected), false)
            }
            State::Drifted(diffs) => {
                drift.push((family, diffs));
                continue;
            }
        };
        if !text.is_empty() {
            changes.push(Change::Wrote { tools, fresh });
        }
        writes.push(Write {
            tools,
            before,
            text: text + &probes,
            fresh,
            expected,
        });
    }
    if !drift.is_empty() {
        return Err(ApplyError::Drift(Drift::Iptables { families: drift }));
    }
    out.notes.extend(warn_unreadable(inventory)?);
    let removals = if moving {
        removals(&elsewhere, input.full)?
    } else {
        Vec::new()
    };
    // Routing first: without its rules it changes nothing, while rules without their routes
    // would lose TPROXY'd connections.
    out.steps.push(Step::AddRouting(routing::objects(plan)));
    out.steps.push(Step::WriteIptables {
        writes,
        untouched,
        changes,
    });
    if moving {
        // The new rules are in and read back: only then do the old ones go.
        out.steps.push(Step::MoveHere {
            removals,
            native,
            here: "the rules are installed with iptables",
        });
    }
    out.steps.extend(stale_routing(inventory, plan));
    if !plan.ipv6 && elsewhere.iter().any(|p| p.tools.family == Family::V6) {
        out.steps.extend(lo_address(inventory));
    }
    Ok(out)
}

/// Installing natively with nf_tables: our tables replaced in one atomic batch, after the
/// routing objects. Our tables exactly as planned are left alone; tables of ours that
/// differ, or rules of ours in iptables, are refused without `--reconcile` like iptables
/// drift. With it, the new tables go in first and the iptables rules of ours are removed
/// after, so capture never stops.
fn install_native(input: &Input, install: Install) -> Result<Decision, ApplyError> {
    require_ipv6_usable(input.plan, &input.observed.ipv6)?;
    let inventory = &input.observed.inventory;
    let plan = input.plan;
    let mut out = Decision {
        tools: vec![ToolUse::Netlink],
        ..Decision::default()
    };
    out.notes.extend(warn_unreadable(inventory)?);
    let elsewhere: Vec<&IptablesPlace> = inventory.iptables_with_ours().collect();
    if !elsewhere.is_empty() && !install.replaces() {
        return Err(elsewhere_error(&elsewhere, &[]));
    }
    let differences = match &input.observed.native_differences {
        Some(Ok(d)) => d.clone(),
        Some(Err(e)) => return Err(e.clone()),
        None => Vec::new(),
    };
    let present = inventory.native_tables();
    let mut write = true;
    if !present.is_empty() {
        if differences.is_empty() && !install.force {
            out.notes.push(Note::Info(
                "native nftables: our tables are already as planned, nothing to do".to_string(),
            ));
            write = false;
        } else if !differences.is_empty() && !install.replaces() {
            return Err(ApplyError::Drift(Drift::Native { differences }));
        } else if !differences.is_empty() {
            out.notes.push(Note::Info(format!(
                "native nftables: replacing our tables, which differ from the plan:\n{}",
                differences.join("\n")
            )));
        }
    }
    let removals = if elsewhere.is_empty() {
        Vec::new()
    } else {
        removals(&elsewhere, input.full)?
    };
    out.steps.push(Step::AddRouting(routing::objects(plan)));
    if write {
        out.steps.push(Step::WriteNative {
            replace: !present.is_empty(),
        });
    }
    if !elsewhere.is_empty() {
        out.steps.push(Step::MoveHere {
            removals,
            native: Vec::new(),
            here: "the native tables are in place",
        });
    }
    out.steps.extend(stale_routing(inventory, plan));
    if !plan.ipv6 && !elsewhere.is_empty() {
        out.steps.extend(lo_address(inventory));
    }
    Ok(out)
}

/// `--check` with iptables: per planned family, the variant holding ours (both variants
/// are read, never probed) compared with the plan; rules of other owners ahead of our jumps
/// that take all traffic are differences, those that take only what they match warnings;
/// then every other place, and the routing objects.
fn check_iptables(input: &Input) -> Result<Decision, ApplyError> {
    let seen = input.observed;
    let inventory = &seen.inventory;
    let variants = match input.forced {
        Some(v) => vec![v],
        None => vec![IptablesVariant::Nft, IptablesVariant::Legacy],
    };
    let mut out = Decision::default();
    for family in input.plan.families() {
        let name = family_name(family);
        let expected = planned(input, family)?;
        let mut found = Vec::new();
        for &variant in &variants {
            let tools = Tools { family, variant };
            let live = match inventory.place(tools).saved() {
                Some(saved) => Some(saved.clone()),
                None => match seen.reread.iter().find(|(t, _)| *t == tools) {
                    Some((_, read)) => read.clone()?,
                    None => None,
                },
            };
            let Some(live) = live else {
                continue;
            };
            if let Some(e) = old_tool(seen, tools) {
                return Err(ApplyError::Precondition(Precondition::OldTool {
                    tools,
                    error: e.clone(),
                    cleanup: false,
                }));
            }
            // Harmless (protocol 255 never matches), so not a difference; but ours to remove.
            let probes = leftover_probes(&live);
            if probes > 0 {
                out.notes.push(Note::Warn(format!(
                    "{name} ({}): {probes} leftover variant-detection probe rule(s) -A OUTPUT {PROBE_SPEC} in nat, which match nothing (a run with this variant or --cleanup-only removes them)",
                    tools.save()
                )));
            }
            match compare(&live, &expected) {
                State::Absent => {}
                state => found.push((tools, state, live)),
            }
        }
        match found.as_slice() {
            [] => out.differences.push(Difference::line(format!(
                "{name}: none of our rules are installed"
            ))),
            [(tools, state, live)] => {
                if let State::Drifted(diffs) = state {
                    out.differences.push(Difference {
                        what: format!("{name} ({})", tools.save()),
                        lines: diffs.clone(),
                    });
                } else {
                    out.notes
                        .push(Note::Info(format!("{name} ({}): in place", tools.main())));
                }
                for shadow in shadowing(live, &expected) {
                    let line = format!("{name} ({}): {}", tools.save(), shadow.text);
                    if shadow.all {
                        out.differences.push(Difference::line(format!(
                            "{line}: capture is not in effect"
                        )));
                    } else {
                        out.notes.push(Note::Warn(line));
                    }
                }
            }
            _ => out.differences.push(Difference::line(format!(
                "{name}: rules of ours are installed in both the legacy and the nft tables"
            ))),
        }
    }
    // Every other place: a family the plan lacks, the variant not forced, native tables.
    require_readable(inventory)?;
    let families = input.plan.families();
    for place in inventory.iptables_with_ours() {
        if !families.contains(&place.tools.family) {
            out.differences.push(Difference::line(format!(
                "{}: rules of ours are installed ({}) while {} is off in this configuration",
                place.name(),
                place.counts(),
                family_name(place.tools.family)
            )));
        } else if input.forced.is_some_and(|v| v != place.tools.variant) {
            out.differences.push(Difference::line(format!(
                "{}: rules of ours are installed there too ({}), but this configuration uses the other variant",
                place.name(),
                place.counts()
            )));
        }
    }
    let native = inventory.native_tables();
    if !native.is_empty() {
        out.differences.push(Difference::line(format!(
            "native nftables: table(s) {} of ours are installed too, but this configuration uses iptables",
            inet_tables(native)
        )));
    }
    out.differences.extend(check_routing(input)?);
    Ok(out)
}

/// `--check` for the nftables backend: our tables compared with the batch an apply would
/// send, the routing objects, and no rules of ours in iptables (another backend).
fn check_native(input: &Input) -> Result<Decision, ApplyError> {
    let inventory = &input.observed.inventory;
    require_readable(inventory)?;
    let mut out = Decision {
        differences: match &input.observed.native_differences {
            Some(Ok(d)) => d.iter().cloned().map(Difference::line).collect(),
            Some(Err(e)) => return Err(e.clone()),
            None => Vec::new(),
        },
        ..Decision::default()
    };
    if out.differences.is_empty() {
        out.notes
            .push(Note::Info("native nftables: in place".to_string()));
    }
    for place in inventory.iptables_with_ours() {
        out.differences.push(Difference::line(format!(
            "{}: rules of ours are installed there too ({}), but this configuration uses the native nftables backend",
            place.name(),
            place.counts()
        )));
    }
    out.differences.extend(check_routing(input)?);
    Ok(out)
}

/// The routing objects of the plan that are missing (present without our mark counts as in
/// place), and ours that the plan does not need (left by another configuration).
fn check_routing(input: &Input) -> Result<Vec<Difference>, ApplyError> {
    let present = input
        .observed
        .routing_present
        .as_ref()
        .map_err(|e| ApplyError::Precondition(Precondition::Netlink(e.clone())))?;
    let mut differences = Vec::new();
    for object in routing::objects(input.plan) {
        match present.iter().find(|(o, _)| *o == object) {
            Some((_, Ok(true))) => {}
            Some((_, Ok(false))) | None => {
                differences.push(Difference::line(format!("missing: {object}")))
            }
            Some((_, Err(e))) => {
                return Err(ApplyError::Precondition(Precondition::Routing {
                    object,
                    error: e.clone(),
                }))
            }
        }
    }
    for o in stale(&input.observed.inventory, input.plan) {
        differences.push(Difference::line(format!(
            "unexpected: {o} (added by meshinit, not planned by this configuration)"
        )));
    }
    Ok(differences)
}

/// The cleanup: everything of ours, in every place, whatever this run's backend or IPv6
/// setting. A place that may hold ours but cannot be read refuses the whole cleanup.
/// `carry_out` is false for the dry run, which does not need the old tools checked.
fn cleanup(input: &Input, carry_out: bool) -> Result<Decision, ApplyError> {
    let seen = input.observed;
    let inventory = &seen.inventory;
    let expected =
        (input.full)().map_err(|e| ApplyError::Precondition(Precondition::Expected(e)))?;
    require_readable(inventory)?;
    let mut out = Decision::default();
    let mut removed = Vec::new();
    for place in &inventory.iptables {
        match removal(place, &expected[family_index(place.tools.family)]) {
            Some(r) => removed.push(r),
            None => out.notes.push(Note::Info(match &place.reading {
                Reading::Nothing(why) => format!("{}: nothing of ours ({why})", place.name()),
                _ => format!("{}: nothing of ours", place.name()),
            })),
        }
    }
    let native = inventory.native_tables().to_vec();
    if native.is_empty() {
        out.notes
            .push(Note::Info("native nftables: nothing of ours".to_string()));
    }
    if carry_out {
        // An iptables-nft older than 1.8.8 shows a newer one's rules without some matches:
        // deleting by that text would fail or hit the wrong rule.
        for r in &removed {
            if let Some(e) = old_tool(seen, r.tools) {
                return Err(ApplyError::Precondition(Precondition::OldTool {
                    tools: r.tools,
                    error: e.clone(),
                    cleanup: true,
                }));
            }
        }
    }
    out.tools = removed.iter().map(|r| ToolUse::Iptables(r.tools)).collect();
    let ours = match &inventory.routing {
        Reading::Read(objects) => objects.clone(),
        _ => Vec::new(),
    };
    let foreign = match &seen.routing_present {
        Ok(present) => present
            .iter()
            .filter(|(o, p)| matches!(p, Ok(true)) && !ours.contains(o))
            .map(|(o, _)| *o)
            .collect(),
        Err(_) => Vec::new(),
    };
    if !removed.is_empty() {
        out.steps.push(Step::Remove(removed));
    }
    if !native.is_empty() {
        out.steps.push(Step::DeleteNative(native));
    }
    out.steps.push(Step::RemoveRouting { ours, foreign });
    Ok(out)
}

/// The plan's expected tables of a family.
fn planned(input: &Input, family: Family) -> Result<Expected, ApplyError> {
    match &input.expected[family_index(family)] {
        Some(Ok(e)) => Ok(e.clone()),
        Some(Err(e)) => Err(ApplyError::Precondition(Precondition::Expected(e.clone()))),
        None => {
            let resolve = input.resolve;
            crate::render::iptables_save::expected_tables(&input.plan.rules(family), &resolve)
                .map_err(|e| ApplyError::Precondition(Precondition::Expected(e)))
        }
    }
}

/// The old iptables-nft's error for this place, if its tool was found too old.
fn old_tool(seen: &Observed, tools: Tools) -> Option<&xtables::IptablesError> {
    seen.old_tools
        .iter()
        .find(|(t, _)| *t == tools)
        .map(|(_, e)| e)
}

/// The removals of everything of ours from these places.
fn removals(
    places: &[&IptablesPlace],
    full: &dyn Fn() -> Full,
) -> Result<Vec<Removal>, ApplyError> {
    let expected = full().map_err(|e| ApplyError::Precondition(Precondition::Expected(e)))?;
    Ok(places
        .iter()
        .filter_map(|p| removal(p, &expected[family_index(p.tools.family)]))
        .collect())
}

/// Removing everything of ours from one place (plus leftover probes); `None` when nothing
/// of ours is there.
fn removal(place: &IptablesPlace, expected: &Expected) -> Option<Removal> {
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
    Some(Removal {
        name: place.name(),
        tools: place.tools,
        before: saved.clone(),
        text: text + &probe_cleanup_text(saved),
        counts: c,
        expected: expected.clone(),
        shells: shells(place),
    })
}

/// The `ip`/`ip6` tables iptables-nft created for rules of ours in this place: deleted after
/// the removal when they are left empty shells.
fn shells(place: &IptablesPlace) -> Option<Vec<String>> {
    if place.tools.variant != IptablesVariant::Nft || !place.ours() {
        return None;
    }
    let saved = place.saved()?;
    Some(
        saved
            .iter()
            .filter(|(_, t)| {
                t.our_chains().next().is_some()
                    || t.rules.values().flatten().any(|r| jumps_to_ours(r))
            })
            .map(|(name, _)| name.clone())
            .collect(),
    )
}

/// Our routing objects that an earlier configuration left and this plan does not need
/// (TPROXY → REDIRECT, another mark or table). `::6` is not among them.
fn stale(inventory: &Inventory, plan: &Plan) -> Vec<Object> {
    let planned = routing::objects(plan);
    match &inventory.routing {
        Reading::Read(ours) => ours
            .iter()
            .filter(|o| **o != Object::LoAddress && !planned.contains(o))
            .copied()
            .collect(),
        _ => Vec::new(),
    }
}

fn stale_routing(inventory: &Inventory, plan: &Plan) -> Option<Step> {
    let stale = stale(inventory, plan);
    (!stale.is_empty()).then_some(Step::RemoveStaleRouting(stale))
}

/// Removing `::6` on lo, when it is ours.
fn lo_address(inventory: &Inventory) -> Option<Step> {
    let ours = matches!(&inventory.routing, Reading::Read(o) if o.contains(&Object::LoAddress));
    ours.then_some(Step::RemoveLoAddress)
}

/// IPv6 rules need the `::6/128` address on lo, which the kernel refuses with EACCES when
/// IPv6 is disabled on lo (as `net.ipv6.conf.all.disable_ipv6=1` does): said before
/// anything is written.
fn require_ipv6_usable(plan: &Plan, lo: &Ipv6Lo) -> Result<(), ApplyError> {
    if !plan.ipv6 {
        return Ok(());
    }
    match lo {
        Ipv6Lo::NotAsked => Ok(()),
        Ipv6Lo::Value(value) if value == "0" => Ok(()),
        Ipv6Lo::Value(value) => Err(ApplyError::Precondition(Precondition::Ipv6Disabled {
            value: value.clone(),
        })),
        Ipv6Lo::Missing => Err(ApplyError::Precondition(Precondition::Ipv6Missing)),
        Ipv6Lo::Unreadable(e) => Err(ApplyError::Precondition(Precondition::Ipv6Unreadable(
            e.clone(),
        ))),
    }
}

/// The iptables places holding rules of ours that an iptables run with this plan would not
/// use: families the plan lacks, and for a planned family the variant that would not be
/// chosen (the forced one is; else nft when it holds ours, as the variant choice decides).
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

/// The refusal for rules of ours in another backend, variant or family than this run's.
fn elsewhere_error(places: &[&IptablesPlace], native: &[String]) -> ApplyError {
    ApplyError::Drift(Drift::Elsewhere {
        places: places.iter().map(|p| (p.tools, p.counts())).collect(),
        native: native.to_vec(),
    })
}

/// Refuses to decide when a place that may hold rules of ours cannot be read: deciding
/// without it could leave two rulesets, or claim a cleanup that did not happen.
pub fn require_readable(inventory: &Inventory) -> Result<(), ApplyError> {
    let unreadable = inventory.unreadable();
    if unreadable.is_empty() {
        return Ok(());
    }
    // Every read that failed may pass (a lock, EBUSY, …): another attempt reads them all again.
    Err(ApplyError::precondition(
        Precondition::Unreadable { places: unreadable },
        inventory.transient(),
    ))
}

/// An install goes ahead when a place it does not write to cannot be read (e.g. the legacy
/// tables as an unprivileged user with file capabilities: `/proc/net/ip_tables_names` is
/// root's), as it always has, but says that it could not look there. A place that failed
/// to read for a transient reason is not gone around: another attempt may read it.
fn warn_unreadable(inventory: &Inventory) -> Result<Vec<Note>, ApplyError> {
    let transient = inventory.transient_reads();
    if !transient.is_empty() {
        return Err(ApplyError::precondition(
            Precondition::Unreadable {
                places: inventory.unreadable(),
            },
            Some(Transient::all(transient)),
        ));
    }
    Ok(inventory
        .unreadable()
        .into_iter()
        .map(|line| Note::Warn(format!(
            "{line}; rules of ours there, if any, are not seen by this run (--cleanup-only and --check refuse in this case)"
        )))
        .collect())
}

/// An nf_tables failure before anything was written: transient when the kernel's errno is.
pub fn nft_precondition(e: nf_tables::NftError) -> ApplyError {
    let reason = e.transient();
    ApplyError::precondition(Precondition::Nft(e), reason)
}

/// An iptables failure before anything was written (`nothing_changed`: the message says
/// so): transient when the tool's failure is, so `--retries` retries it.
pub fn iptables_error(e: xtables::IptablesError, nothing_changed: bool) -> ApplyError {
    let reason = e.transient();
    ApplyError::precondition(
        Precondition::Iptables {
            error: e,
            nothing_changed,
        },
        reason,
    )
}

/// The index of a family in per-family arrays.
pub fn family_index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}
