//! The run's mode: one value decided once from the configuration's flags, so that the
//! dry run, the check, the cleanup and the install branch on it instead of on five booleans.

use crate::config::RunOptions;

/// What to do when rules of ours are installed but differ from the plan (or are in another
/// place than this run's): refuse, or replace them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Install {
    /// `--reconcile`: replace drifted rules, move ours from other places.
    pub reconcile: bool,
    /// `--force-apply`: as `reconcile`, and rewrite rules that are already in place.
    pub force: bool,
}

impl Install {
    /// Whether drift and rules of ours elsewhere are replaced rather than refused.
    pub fn replaces(self) -> bool {
        self.reconcile || self.force
    }
}

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `--dry-run`: print the rules an install would write; read nothing.
    DryRun,
    /// `--dry-run --cleanup-only`: print what a cleanup would remove here; change nothing.
    DryRunCleanup,
    /// `--check`: compare the live state with the plan and report; change nothing.
    Check,
    /// `--cleanup-only`: remove everything of ours from every place, then validate when
    /// `validate` (the flags allow it; the probe then shows that capture is gone).
    Cleanup {
        /// `--run-validation` after the cleanup.
        validate: bool,
    },
    /// Install the plan (the default), then validate when `validate`.
    Install {
        /// How drift is treated.
        install: Install,
        /// `--run-validation` after installing.
        validate: bool,
    },
    /// `--skip-rule-apply`: install nothing, then validate when `validate`.
    Skip {
        /// `--run-validation`.
        validate: bool,
    },
}

impl Mode {
    /// The mode the flags ask for. The configuration has already refused contradictory
    /// combinations; among the rest, a dry run wins, then `--check`, then `--cleanup-only`.
    pub fn of(run: &RunOptions) -> Mode {
        if run.dry_run {
            if run.cleanup_only {
                Mode::DryRunCleanup
            } else {
                Mode::DryRun
            }
        } else if run.check {
            Mode::Check
        } else if run.cleanup_only {
            Mode::Cleanup {
                validate: run.run_validation,
            }
        } else if run.skip_rule_apply {
            Mode::Skip {
                validate: run.run_validation,
            }
        } else {
            Mode::Install {
                install: Install {
                    reconcile: run.reconcile,
                    force: run.force_apply,
                },
                validate: run.run_validation,
            }
        }
    }

    /// The mode in a word, for the summary line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::DryRun | Mode::DryRunCleanup => "dry-run",
            Mode::Check => "check",
            Mode::Cleanup { .. } => "cleanup",
            Mode::Skip { validate: true } => "validation",
            Mode::Skip { validate: false } => "skip-rule-apply",
            Mode::Install { validate: true, .. } => "apply+validation",
            Mode::Install {
                validate: false, ..
            } => "apply",
        }
    }

    /// Whether `--run-validation` follows.
    pub fn validates(self) -> bool {
        matches!(
            self,
            Mode::Install { validate: true, .. }
                | Mode::Skip { validate: true }
                | Mode::Cleanup { validate: true }
        )
    }
}
