//! How a run that reads or writes the namespace ends: the error kinds (what was left
//! changed decides the kind) and the report of what changed.

use crate::plan::Family;

/// Why applying or cleaning up stopped. Except for `LeftChanged`, the namespace is as it was
/// before.
#[derive(Clone, Debug, thiserror::Error)]
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
pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}
