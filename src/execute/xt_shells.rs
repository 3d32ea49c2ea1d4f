//! The nf_tables objects iptables-nft creates on its own: the `ip`/`ip6` tables and base chains
//! it adds for the variant probe or for a write, which stay behind, empty, after the probe's
//! transaction or an undo (iptables-nft-save cannot tell them from absent ones). They are
//! noted before an iptables run touches anything, and when the run fails, those that are new
//! and empty are deleted again, so a failed run leaves `nft list ruleset` as it found it; what
//! cannot be deleted is named in the error.

use std::collections::BTreeSet;

use nix::errno::Errno;

use crate::driver::nf_tables::{NfTables, NftError};
use crate::engine::error::ApplyError;
use crate::log::Log;
use crate::render::nft_netlink::{FamilyTable, XtFamily};

const FAMILIES: [XtFamily; 2] = [XtFamily::Ip, XtFamily::Ip6];

/// The `ip`/`ip6` tables and their chains before the run: `(family, table, chain)`, with
/// `None` as the chain for the table itself.
/// `Ok(None)` when the kernel has no nf_tables (iptables-nft can create nothing there).
pub(crate) struct Snapshot(Result<Option<BTreeSet<Object>>, String>);

type Object = (&'static str, String, Option<String>);

/// What a family holds now, read in one generation.
struct Now {
    generation: u32,
    tables: Vec<FamilyTable>,
    /// `(table, chain)` of every rule.
    rules: Vec<(String, String)>,
}

impl Snapshot {
    /// Reads the `ip` and `ip6` tables and chains (read-only, over netlink).
    pub(crate) fn read() -> Snapshot {
        let read = || -> Result<BTreeSet<Object>, NftError> {
            let mut nft = NfTables::open()?;
            let mut all = BTreeSet::new();
            for family in FAMILIES {
                for (table, chains) in nft.family_names(family, true)? {
                    all.insert((family.name(), table.clone(), None));
                    all.extend(
                        chains
                            .into_iter()
                            .map(|c| (family.name(), table.clone(), Some(c))),
                    );
                }
            }
            Ok(all)
        };
        Snapshot(match read() {
            Ok(all) => Ok(Some(all)),
            Err(NftError::Io { errno, .. })
                if [Errno::EPROTONOSUPPORT, Errno::EAFNOSUPPORT].contains(&errno) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        })
    }

    /// After a failed run: deletes the tables that are new since the snapshot and hold
    /// nothing (no rule, set or object; only base chains with policy accept), each family in a
    /// batch valid only for the generation it was read in. Returns the error, unchanged when
    /// nothing of that kind is left; otherwise it names what is left (new empty base chains
    /// in tables that were there before, which cannot be deleted without the table) and no
    /// longer claims that nothing changed.
    pub(crate) fn after_failure(&self, error: ApplyError, log: &Log) -> ApplyError {
        let before = match &self.0 {
            Ok(Some(before)) => before,
            Ok(None) => return error,
            Err(e) => {
                return with_left(
                    error,
                    vec![format!(
                        "whether iptables-nft left empty tables or base chains could not be checked: reading them before the run failed: {e}"
                    )],
                )
            }
        };
        let mut left = Vec::new();
        for family in FAMILIES {
            match remove_new_tables(family, before) {
                Ok((deleted, kept)) => {
                    for table in deleted {
                        log.info(&format!(
                            "deleted the empty table {} {table} that iptables-nft created during this run",
                            family.name()
                        ));
                    }
                    left.extend(kept);
                }
                Err(e) => left.push(format!(
                    "the {} tables iptables-nft may have created during this run could not be checked or deleted: {e}",
                    family.name()
                )),
            }
        }
        with_left(error, left)
    }
}

fn read_now(nft: &mut NfTables, family: XtFamily) -> Result<Now, String> {
    let generation = nft.generation().map_err(|e| e.to_string())?;
    let tables = nft.family_tables(family).map_err(|e| e.to_string())?;
    let rules = nft.family_rule_places(family).map_err(|e| e.to_string())?;
    if nft.generation().map_err(|e| e.to_string())? != generation {
        return Err("the ruleset changed while it was being read".to_string());
    }
    Ok(Now {
        generation,
        tables,
        rules,
    })
}

/// Deletes one family's new empty tables (three tries: a change meanwhile refuses the batch);
/// returns them, and one line per new empty base chain left in a table that was there.
fn remove_new_tables(
    family: XtFamily,
    before: &BTreeSet<Object>,
) -> Result<(Vec<String>, Vec<String>), String> {
    let mut outcome = Err("not tried".to_string());
    for _ in 0..3 {
        outcome = (|| {
            let mut nft = NfTables::open().map_err(|e| e.to_string())?;
            let now = read_now(&mut nft, family)?;
            let existed = |table: &str| before.contains(&(family.name(), table.to_string(), None));
            let new_empty: Vec<String> = now
                .tables
                .iter()
                .filter(|t| !existed(&t.name) && t.is_empty_shell())
                .map(|t| t.name.clone())
                .collect();
            let kept = now
                .tables
                .iter()
                .filter(|t| existed(&t.name))
                .flat_map(|t| {
                    t.chains
                        .iter()
                        .filter(|c| {
                            c.base.is_some()
                                && !before.contains(&(
                                    family.name(),
                                    t.name.clone(),
                                    Some(c.name.clone()),
                                ))
                                && !now.rules.iter().any(|(rt, rc)| rt == &t.name && rc == &c.name)
                        })
                        .map(|c| {
                            format!(
                                "left: the empty base chain {} {} {} that iptables-nft created during this run (it holds no rule; `nft delete chain {0} {1} {2}` removes it)",
                                family.name(),
                                t.name,
                                c.name
                            )
                        })
                })
                .collect();
            if !new_empty.is_empty() {
                nft.delete_family_tables(family, &new_empty, now.generation)
                    .map_err(|e| e.to_string())?;
            }
            Ok((new_empty, kept))
        })();
        if outcome.is_ok() {
            break;
        }
    }
    outcome
}

/// The error, saying also what is left: unchanged when nothing is; otherwise a
/// `LeftChanged` whose text no longer claims that nothing changed.
fn with_left(error: ApplyError, left: Vec<String>) -> ApplyError {
    if left.is_empty() {
        return error;
    }
    let text = error
        .to_string()
        .replace("nothing was left changed", "nothing of ours was left")
        .replace("nothing was changed", "no rule was changed");
    let end = "the namespace was left changed as described above";
    let mut lines = vec![text.trim_end_matches(end).trim_end().to_string()];
    lines.extend(left);
    lines.push(end.to_string());
    ApplyError::LeftChanged(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_left_is_named_and_nothing_is_claimed_unchanged() {
        let e = ApplyError::Failed("IPv6: boom\nIPv4: undone\nnothing was left changed".into());
        let ApplyError::LeftChanged(text) = with_left(e, vec!["left: x".into()]) else {
            panic!("left changed");
        };
        assert_eq!(
            text,
            "IPv6: boom\nIPv4: undone\nnothing of ours was left\nleft: x\nthe namespace was left changed as described above"
        );
        let e = ApplyError::Drift("differ; nothing was changed. Re-run".into());
        assert!(
            matches!(with_left(e, vec![]), ApplyError::Drift(t) if t.contains("nothing was changed"))
        );
    }
}
