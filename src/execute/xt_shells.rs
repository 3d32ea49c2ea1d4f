//! The nf_tables objects iptables-nft creates on its own: the `ip`/`ip6` tables and base chains
//! it adds for the variant probe or for a write, which stay behind, empty, after the probe's
//! transaction or an undo (iptables-nft-save cannot tell them from absent ones). They are
//! noted before an iptables run touches anything, and when the run fails, those that are new
//! and empty are deleted again, so a failed run leaves `nft list ruleset` as it found it; what
//! cannot be deleted is named in the error.

use std::collections::BTreeSet;

use nix::errno::Errno;

use crate::driver::nf_tables::{NfTables, NftError};
use crate::engine::error::{ApplyError, Cause, Failed, Left, LeftChanged, ShellError, Write};
use crate::log::Log;
use crate::render::nft_netlink::{FamilyTable, XtFamily};

const FAMILIES: [XtFamily; 2] = [XtFamily::Ip, XtFamily::Ip6];

/// The `ip`/`ip6` tables and their chains before the run: `(family, table, chain)`, with
/// `None` as the chain for the table itself.
/// `Ok(None)` when the kernel has no nf_tables (iptables-nft can create nothing there).
pub(crate) struct Snapshot(Result<Option<BTreeSet<Object>>, NftError>);

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
            Err(e) => Err(e),
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
            Err(e) => return with_left(error, vec![Left::ShellsUnknown(e.clone())]),
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
                Err(error) => left.push(Left::Shells { family, error }),
            }
        }
        with_left(error, left)
    }
}

fn read_now(nft: &mut NfTables, family: XtFamily) -> Result<Now, ShellError> {
    let generation = nft.generation()?;
    let tables = nft.family_tables(family)?;
    let rules = nft.family_rule_places(family)?;
    if nft.generation()? != generation {
        return Err(ShellError::Changed);
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
) -> Result<(Vec<String>, Vec<Left>), ShellError> {
    let mut outcome = Err(ShellError::Changed);
    for _ in 0..3 {
        outcome = (|| {
            let mut nft = NfTables::open()?;
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
                                && !now
                                    .rules
                                    .iter()
                                    .any(|(rt, rc)| rt == &t.name && rc == &c.name)
                        })
                        .map(|c| Left::BaseChain {
                            family,
                            table: t.name.clone(),
                            chain: c.name.clone(),
                        })
                })
                .collect();
            if !new_empty.is_empty() {
                nft.delete_family_tables(family, &new_empty, now.generation)?;
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
/// `LeftChanged` that no longer claims that nothing changed: a failed write gets what is left
/// added to its own account, and a refusal becomes the cause of one.
fn with_left(error: ApplyError, left: Vec<Left>) -> ApplyError {
    if left.is_empty() {
        return error;
    }
    let mut write = match error {
        ApplyError::Failed(Failed::Write(write))
        | ApplyError::LeftChanged(LeftChanged::Write(write)) => *write,
        ApplyError::Transient { error, reason } => match *error {
            ApplyError::Failed(Failed::Write(write)) => *write,
            error => Write::new(Cause::Refused(Box::new(ApplyError::Transient {
                error: Box::new(error),
                reason,
            }))),
        },
        error => Write::new(Cause::Refused(Box::new(error))),
    };
    write.shells.extend(left);
    ApplyError::LeftChanged(LeftChanged::Write(Box::new(write)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_left_is_named_and_nothing_is_claimed_unchanged() {
        use crate::driver::xtables::{IptablesError, Tools};
        use crate::engine::error::{Drift, Undone};
        use crate::plan::Family;
        let tools = Tools {
            family: Family::V6,
            variant: crate::config::IptablesVariant::Nft,
        };
        let mut write = Write::new(Cause::Restore {
            tools,
            error: IptablesError::Panicked("boom"),
        });
        write.done.push(Undone::Undone(Family::V4));
        let e = ApplyError::Failed(Failed::Write(Box::new(write)));
        assert_eq!(
            e.to_string(),
            "IPv6: reading the boom rules panicked\nIPv4: undone\nnothing was left changed"
        );
        let chain = Left::BaseChain {
            family: XtFamily::Ip,
            table: "nat".into(),
            chain: "OUTPUT".into(),
        };
        let left = with_left(e, vec![chain.clone()]);
        assert!(matches!(left, ApplyError::LeftChanged(_)));
        assert_eq!(
            left.to_string(),
            format!("IPv6: reading the boom rules panicked\nIPv4: undone\nnothing of ours was left\n{chain}\nthe namespace was left changed as described above")
        );
        // A refusal keeps its words, no longer claiming that nothing changed.
        let e = ApplyError::Drift(Drift::Native {
            differences: vec!["x".into()],
        });
        assert!(
            matches!(with_left(e.clone(), vec![]), ApplyError::Drift(d) if d.to_string().contains("nothing was changed"))
        );
        let refused = with_left(e, vec![chain]).to_string();
        assert!(
            refused.starts_with("our nftables tables are already installed but differ from this configuration; no rule was changed.")
                && refused.ends_with("removes it)\nthe namespace was left changed as described above"),
            "{refused}"
        );
    }
}
