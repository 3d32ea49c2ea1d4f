//! One family's iptables restore transaction and what happens around it: feeding the restore
//! inputs in turn, reading every family back, and — when a write fails or a read-back differs
//! — undoing exactly what of ours changed, then saying truthfully what, if anything, is left.

use std::collections::BTreeMap;

use crate::driver::xtables::{self, Tools, XtablesLock};
use crate::engine::error::{
    family_name, ApplyError, Cause, Failed, Left, LeftChanged, Problem, Undone, Write,
};
use crate::log::Log;
use crate::plan::Table;
use crate::render::iptables_save::{
    compare, leftover_probes, undo_text, ExpectedTable, Saved, State,
};
use crate::sys::process::Runner;
use crate::sys::transient::Transient;

/// One family's pending restore: the tools, the state before, the input to feed.
pub(crate) struct Transaction {
    /// The family and variant written.
    pub tools: Tools,
    /// The family's rules as read before anything was written: what an undo goes back to.
    pub before: Saved,
    /// The `--noflush` restore input.
    pub text: String,
    /// A fresh install may race with another instance doing the same; see `commit`.
    pub fresh: bool,
    /// The plan's rules in canonical form: the read-back's reference, and which rules in
    /// built-in chains are ours.
    pub expected: BTreeMap<Table, ExpectedTable>,
    /// What the kernel must hold afterwards.
    pub goal: Goal,
}

/// What a transaction is for, so its read-back can be judged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Goal {
    /// Exactly the planned rules.
    Planned,
    /// Nothing of ours (cleanup).
    Removed,
}

/// Turns a failed write (its cause, what was undone and what could not be) into the error:
/// `LeftChanged` when anything is left, whatever the cause; otherwise `Failed`, or
/// `Transient` when the cause may pass (`transient`, the reason), so `--retries` may try
/// again.
pub(crate) fn failure(write: Box<Write>, transient: Option<Transient>) -> ApplyError {
    if write.left_changed() {
        return ApplyError::LeftChanged(LeftChanged::Write(write));
    }
    let error = ApplyError::Failed(Failed::Write(write));
    match transient {
        Some(reason) => ApplyError::Transient {
            error: Box::new(error),
            reason,
        },
        None => error,
    }
}

/// Why a commit failed.
pub(crate) struct CommitFailure {
    /// What happened, what was undone and what could not be.
    pub write: Box<Write>,
    /// Why the failed tool's run may pass when tried again, when it may.
    pub transient: Option<Transient>,
}

impl CommitFailure {
    /// The error for this failure (see [`failure`]).
    pub fn into_error(self) -> ApplyError {
        failure(self.write, self.transient)
    }
}

/// Feeds each transaction in turn, then reads every family back: the kernel must hold exactly
/// what was planned. If a write fails or any read-back differs, what the transactions wrote
/// is undone — so either all families change or none does. Returns the read-back states.
pub(crate) fn commit(
    transactions: &mut [Transaction],
    runner: &(dyn Runner + Sync),
    lock: &XtablesLock,
    log: &Log,
) -> Result<Vec<Saved>, CommitFailure> {
    for i in 0..transactions.len() {
        let t = &transactions[i];
        let name = family_name(t.tools.family);
        log.debug(&format!("{} input:\n{}", t.tools.restore(), t.text));
        // In turn (not at once): the kernel then creates the tables in the same order on every
        // run, which is the order `nft list ruleset` shows them in.
        let Err(e) = xtables::restore(runner, t.tools, &t.text, true, lock) else {
            continue;
        };
        // Another instance may have installed the same rules between our read and our write.
        if t.fresh {
            if let Ok(now) = xtables::save(runner, t.tools) {
                if compare(&now, &t.expected) == State::InPlace {
                    log.info(&format!(
                        "{name}: the same rules were installed concurrently; nothing to do"
                    ));
                    // Not ours to undo.
                    transactions[i].before = now;
                    continue;
                }
            }
        }
        let transient = e.transient();
        return Err(undo(
            &transactions[..=i],
            runner,
            lock,
            Cause::Restore {
                tools: t.tools,
                error: e,
            },
            transient,
        ));
    }
    // Every family is read back at once (reading changes nothing), then judged in order.
    let saved: Vec<_> = std::thread::scope(|scope| {
        let reads: Vec<_> = transactions
            .iter()
            .map(|t| {
                let tools = t.tools;
                scope.spawn(move || xtables::save(runner, tools))
            })
            .collect();
        reads
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or(Err(xtables::IptablesError::Panicked("written")))
            })
            .collect()
    });
    let mut read_back = Vec::new();
    for (t, saved) in transactions.iter().zip(saved) {
        let (cause, transient) = match saved {
            Err(error) => {
                let transient = error.transient();
                (
                    Cause::ReadBack {
                        tools: t.tools,
                        error,
                    },
                    transient,
                )
            }
            Ok(now) => {
                let mut problems = Vec::new();
                match (t.goal, compare(&now, &t.expected)) {
                    (Goal::Planned, State::InPlace) | (Goal::Removed, State::Absent) => {}
                    (Goal::Planned, State::Absent) => problems.push(Problem::NoneThere),
                    (_, State::Drifted(diffs)) => {
                        problems.extend(diffs.into_iter().map(Problem::Differs))
                    }
                    (Goal::Removed, State::InPlace) => problems.push(Problem::StillThere),
                }
                if leftover_probes(&now) > 0 {
                    problems.push(Problem::ProbeLeft);
                }
                read_back.push(now);
                if problems.is_empty() {
                    continue;
                }
                (
                    Cause::ReadBackDiffers {
                        tools: t.tools,
                        problems,
                    },
                    None,
                )
            }
        };
        return Err(undo(transactions, runner, lock, cause, transient));
    }
    Ok(read_back)
}

/// Undoes what these transactions wrote, newest first: reads each family now and puts back
/// only what of ours changed since it was read before (see `undo_text`); a family whose failed
/// write changed nothing is left alone. Then reads again to know, not assume, the result.
fn undo(
    done: &[Transaction],
    runner: &dyn Runner,
    lock: &XtablesLock,
    cause: Cause,
    transient: Option<Transient>,
) -> CommitFailure {
    let mut write = Box::new(Write::new(cause));
    for t in done.iter().rev() {
        let family = t.tools.family;
        let now = match xtables::save(runner, t.tools) {
            Ok(now) => now,
            Err(error) => {
                write.left.push(Left::Unread { family, error });
                continue;
            }
        };
        let text = undo_text(&t.before, &now, &t.expected);
        if text.is_empty() {
            write.done.push(Undone::Unchanged(family));
            continue;
        }
        if let Err(error) = xtables::restore(runner, t.tools, &text, true, lock) {
            write.left.push(Left::UndoFailed { family, error });
            continue;
        }
        match xtables::save(runner, t.tools) {
            Ok(after) => {
                let remaining = undo_text(&t.before, &after, &t.expected);
                if remaining.is_empty() {
                    write.done.push(Undone::Undone(family));
                } else {
                    write.left.push(Left::InPart { family, remaining });
                }
            }
            Err(error) => write.left.push(Left::Unknown { family, error }),
        }
    }
    CommitFailure { write, transient }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IptablesVariant;
    use crate::plan::Family;
    use crate::render::iptables_save::parse_save;
    use crate::sys::process::Output;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Save prints a fixed dump; restore answers from a queue of exit codes (a failure prints
    /// `failure`, or "boom"); calls recorded.
    #[derive(Default)]
    struct Fake {
        dump: String,
        restores: Mutex<Vec<i32>>,
        calls: Mutex<Vec<String>>,
        failure: Option<&'static str>,
    }

    impl Runner for Fake {
        fn installed(&self, _: &str) -> bool {
            true
        }
        fn run(
            &self,
            program: &str,
            _: &[&str],
            _: &[(&str, &str)],
            stdin: Option<&str>,
        ) -> Result<Output, crate::sys::process::RunError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{program} {}", stdin.unwrap_or("")));
            let code = if program.ends_with("-save") {
                0
            } else {
                self.restores.lock().unwrap().remove(0)
            };
            Ok(Output {
                code: Some(code),
                signal: None,
                stdout: if code == 0 {
                    self.dump.clone()
                } else {
                    String::new()
                },
                stderr: if code == 0 {
                    String::new()
                } else {
                    self.failure.unwrap_or("boom").into()
                },
            })
        }
    }

    const BEFORE: &str = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j ACCEPT\nCOMMIT\n";

    fn transaction() -> Transaction {
        Transaction {
            tools: Tools {
                family: Family::V4,
                variant: IptablesVariant::Nft,
            },
            before: parse_save(BEFORE),
            text: "*nat\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n".to_string(),
            fresh: false,
            expected: BTreeMap::new(),
            goal: Goal::Planned,
        }
    }

    fn lock() -> XtablesLock {
        XtablesLock {
            wait: Duration::from_secs(1),
            file: None,
        }
    }

    #[test]
    fn a_failed_write_that_changed_nothing_is_not_undone() {
        let fake = Fake {
            dump: BEFORE.to_string(),
            restores: Mutex::new(vec![1]),
            ..Fake::default()
        };
        let CommitFailure { write, transient } =
            commit(&mut [transaction()], &fake, &lock(), &Log::default()).unwrap_err();
        assert!(write.left.is_empty(), "{:?}", write.left);
        assert_eq!(transient, None, "exit 1 \"boom\" is not transient");
        assert_eq!(write.done, [Undone::Unchanged(Family::V4)]);
        assert_eq!(
            write.done[0].to_string(),
            "IPv4: unchanged (the write changed nothing)"
        );
        let restores = fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("iptables-nft-restore"))
            .count();
        assert_eq!(
            restores,
            1,
            "no second restore: {:?}",
            fake.calls.lock().unwrap()
        );
        let error = failure(write, None);
        assert!(matches!(error, ApplyError::Failed(_)), "nothing is left");
        let message = error.to_string();
        assert!(message.ends_with("nothing was left changed"), "{message}");
    }

    #[test]
    fn an_undo_that_fails_is_reported_as_left_changed() {
        // The write went in; the read-back shows our jump without our chain, and the undo's
        // restore fails.
        let fake = Fake {
            dump: "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j ACCEPT\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n"
                .to_string(),
            restores: Mutex::new(vec![0, 1]),
            ..Fake::default()
        };
        let CommitFailure { write, .. } =
            commit(&mut [transaction()], &fake, &lock(), &Log::default()).unwrap_err();
        assert!(
            matches!(write.cause, Cause::ReadBackDiffers { .. }),
            "{:?}",
            write.cause
        );
        assert!(write.cause.to_string().contains("read-back differs"));
        assert!(
            matches!(
                write.left[..],
                [Left::UndoFailed {
                    family: Family::V4,
                    ..
                }]
            ),
            "{:?}",
            write.left
        );
        assert!(write.left[0]
            .to_string()
            .contains("undoing the write failed"));
        let calls = fake.calls.lock().unwrap();
        let undo = calls.last().unwrap();
        assert_eq!(
            undo, "iptables-nft-restore *nat\n-D OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n",
            "only our jump is deleted; the foreign rule is not rewritten"
        );
        // Even a transient cause is not retried once something is left.
        let error = failure(write, Some(Transient::Errno(nix::errno::Errno::EBUSY)));
        assert!(
            matches!(&error, ApplyError::LeftChanged(_))
                && !error.to_string().contains("nothing was left changed")
        );
    }

    #[test]
    fn a_write_refused_for_a_held_lock_that_changed_nothing_is_transient() {
        let fake = Fake {
            dump: BEFORE.to_string(),
            restores: Mutex::new(vec![4]),
            failure: Some(
                "Another app is currently holding the xtables lock. Stopped waiting after 1s.",
            ),
            ..Fake::default()
        };
        let f = commit(&mut [transaction()], &fake, &lock(), &Log::default()).unwrap_err();
        assert!(f.write.left.is_empty(), "{:?}", f.write.left);
        match f.into_error() {
            error @ ApplyError::Transient { .. } => {
                let reason = error.transient().unwrap().to_string();
                assert!(reason.contains("xtables lock"), "{reason}");
                let message = error.to_string();
                assert!(message.ends_with("nothing was left changed"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
