//! How a run that reads or writes the namespace ends: the error kinds (what was left
//! changed decides the kind), each with typed payloads — which place, family and tool, the
//! driver's own error (a tool's exit status and stderr, the kernel's errno) — and the report
//! of what changed, as typed changes. Nothing here is text until it is printed: the CLI's log
//! line, the CNI error object and the JSON summary render the same values.

use std::fmt;
use std::time::Duration;

use crate::driver::nf_tables::NftError;
use crate::driver::routing::{Object, RemoveError};
use crate::driver::rtnetlink::NetlinkError;
use crate::driver::xtables::{IptablesError, Tools};
use crate::engine::inventory::{Counts, Unreadable};
use crate::go_duration::go_duration;
use crate::plan::Family;
use crate::render::iptables_save::{ExpectedError, PROBE_SPEC};
use crate::render::nft_netlink::XtFamily;
use crate::sys::groups::GroupsError;
use crate::sys::lock::LockError;
use crate::sys::privileges::CapsError;
use crate::sys::transient::Transient;

pub use crate::driver::xtables::family_name;

/// Why applying or cleaning up stopped. Except for `LeftChanged`, the namespace is as it was
/// before.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApplyError {
    /// Something needed is missing (capabilities, tools, a group); nothing was touched.
    #[error("{0}")]
    Precondition(Precondition),
    /// Rules of ours are there but differ from the plan, and `--reconcile` was not given.
    #[error("{0}")]
    Drift(Drift),
    /// A write failed; what was written has been rolled back.
    #[error("{0}")]
    Failed(Failed),
    /// A write failed and could not be undone completely; the error says what is left.
    #[error("{0}")]
    LeftChanged(LeftChanged),
    /// A step failed for a reason that may pass (a lock held past its wait, the kernel's
    /// `EBUSY`/`EAGAIN`/`EINTR`), and nothing was left changed: `--retries` tries again.
    #[error("{error}")]
    Transient {
        /// The failure (a precondition, or a write undone).
        error: Box<ApplyError>,
        /// Why it may pass, for the retry's log line.
        reason: Transient,
    },
    /// The last attempt's error, with what the retry loop (`--retries`) has to say about it.
    #[error("{}", retried(retry, error))]
    Retried {
        /// What the retry loop says.
        retry: Retry,
        /// The last attempt's error.
        error: Box<ApplyError>,
    },
}

/// The kind of an [`ApplyError`]: what it means for the namespace and the exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Nothing was touched: something needed is missing.
    Precondition,
    /// Nothing was touched: rules of ours differ.
    Drift,
    /// Nothing is left changed, and trying again may help.
    Transient,
    /// A write failed and was undone.
    Failed,
    /// A write failed and is not undone completely.
    LeftChanged,
}

impl ApplyError {
    /// What kind of error this is (a retried error is of its last attempt's kind, transient
    /// unless that attempt failed otherwise).
    pub fn kind(&self) -> Kind {
        match self {
            ApplyError::Precondition(_) => Kind::Precondition,
            ApplyError::Drift(_) => Kind::Drift,
            ApplyError::Failed(_) => Kind::Failed,
            ApplyError::LeftChanged(_) => Kind::LeftChanged,
            ApplyError::Transient { .. } => Kind::Transient,
            ApplyError::Retried { error, .. } => error.kind(),
        }
    }

    /// Why this failure may pass when tried again, when it may.
    pub fn transient(&self) -> Option<&Transient> {
        match self {
            ApplyError::Transient { reason, .. } => Some(reason),
            ApplyError::Retried { error, .. } => error.transient(),
            _ => None,
        }
    }

    /// A precondition that may pass when tried again, when `reason` says so.
    pub fn precondition(p: Precondition, reason: Option<Transient>) -> ApplyError {
        let error = ApplyError::Precondition(p);
        match reason {
            Some(reason) => ApplyError::Transient {
                error: Box::new(error),
                reason,
            },
            None => error,
        }
    }

    /// One line saying what failed, for a reader that shows a short message first (the CNI
    /// error object's `msg`): the cause without the lines that list or explain it.
    pub fn headline(&self) -> String {
        match self {
            ApplyError::Precondition(Precondition::Unreadable { .. }) => {
                UNREADABLE_HEAD.to_string()
            }
            ApplyError::Precondition(p) => p.to_string(),
            ApplyError::Drift(d) => d.head().to_string(),
            ApplyError::Failed(Failed::Write(w))
            | ApplyError::LeftChanged(LeftChanged::Write(w)) => w.headline(),
            ApplyError::Failed(f) => f.to_string(),
            ApplyError::LeftChanged(l) => l.to_string(),
            ApplyError::Transient { error, .. } | ApplyError::Retried { error, .. } => {
                error.headline()
            }
        }
    }
}

/// What the retry loop (`--retries`) says about the last attempt's error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The failure is transient, but no retries were asked for.
    NotAsked,
    /// Every attempt failed for a transient reason.
    Exhausted {
        /// How many attempts were made.
        attempts: u32,
        /// `--retries`.
        retries: u32,
        /// Why the last one failed.
        reason: Transient,
    },
    /// The deadline came within the pause before the next attempt.
    Deadline {
        /// The attempt that failed last.
        number: u32,
        /// How many attempts were allowed.
        attempts: u32,
        /// `--timeout`.
        timeout: Duration,
        /// How long was left until the deadline.
        left: Duration,
        /// `--retry-pause`.
        pause: Duration,
        /// Why the last attempt failed.
        reason: Transient,
    },
    /// A later attempt failed for a reason that is not transient.
    Permanent {
        /// That attempt.
        number: u32,
        /// How many attempts were allowed.
        attempts: u32,
        /// Why the attempt before it failed.
        last: Transient,
    },
}

fn retried(retry: &Retry, error: &ApplyError) -> String {
    match retry {
        Retry::NotAsked => format!(
            "{error}\n(this may pass: --retries retries such failures within --timeout)"
        ),
        Retry::Exhausted {
            attempts,
            retries,
            reason,
        } => format!(
            "gave up after {attempts} attempts (--retries {retries}), each failed for a transient reason; the last because {reason}:\n{error}"
        ),
        Retry::Deadline {
            number,
            attempts,
            timeout,
            left,
            pause,
            reason,
        } => format!(
            "gave up after {number} of {attempts} attempts: the run's deadline (--timeout {} from the start of the run) is {:.1}s away, within the pause before the next attempt (--retry-pause {}); the last attempt failed because {reason}:\n{error}",
            go_duration(*timeout),
            left.as_secs_f64(),
            go_duration(*pause)
        ),
        Retry::Permanent {
            number,
            attempts,
            last,
        } => format!(
            "attempt {number} of {attempts} failed for a reason that is not transient, after {} transient failure(s) (the last: {last}):\n{error}",
            number - 1
        ),
    }
}

const UNREADABLE_HEAD: &str =
    "cannot see everything of ours in this network namespace; nothing was changed";

/// Something needed is missing; nothing was touched.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Precondition {
    /// The capabilities to read or write.
    #[error("{0}")]
    Capabilities(CapsError),
    /// The capabilities a dry run of `--cleanup-only` needs to read the namespace.
    #[error(
        "a dry run of --cleanup-only reads this namespace's rules, which needs privileges: {0}"
    )]
    DryRunCapabilities(CapsError),
    /// meshinit's namespace lock.
    #[error("{0}")]
    Lock(LockError),
    /// The group database.
    #[error("{0}")]
    Groups(GroupsError),
    /// A planned rule has no iptables form here (an unknown group).
    #[error("{0}")]
    Expected(ExpectedError),
    /// IPv6 rules are planned and lo's `disable_ipv6` is this value.
    #[error(
        "IPv6 is disabled in this network namespace ({path} = {value}, e.g. from net.ipv6.conf.all.disable_ipv6=1): {IPV6_ADVICE}",
        path = super::observe::LO_DISABLE_IPV6
    )]
    Ipv6Disabled {
        /// The file's value.
        value: String,
    },
    /// IPv6 rules are planned and lo has no `disable_ipv6` (no IPv6 at all).
    #[error(
        "IPv6 is disabled in this network namespace or kernel ({} does not exist): {IPV6_ADVICE}",
        super::observe::LO_DISABLE_IPV6
    )]
    Ipv6Missing,
    /// lo's `disable_ipv6` could not be read.
    #[error("cannot read {path}: {0}", path = super::observe::LO_DISABLE_IPV6)]
    Ipv6Unreadable(String),
    /// Places that may hold rules of ours could not be read.
    #[error("{UNREADABLE_HEAD}:\n{}", places.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Unreadable {
        /// Each place and why.
        places: Vec<Unreadable>,
    },
    /// An iptables-nft older than 1.8.8 would have to read rules of ours it cannot print.
    #[error(
        "{}: {error}{}",
        if *cleanup { format!("{} {}", family_name(tools.family), tools.main()) } else { family_name(tools.family).to_string() },
        if *cleanup { "; nothing was changed" } else { "" }
    )]
    OldTool {
        /// The place.
        tools: Tools,
        /// The tool's failure.
        error: IptablesError,
        /// For a cleanup (which names the place and says nothing was changed).
        cleanup: bool,
    },
    /// An iptables step before anything was written (choosing the variant, reading).
    #[error("{error}{}", if *nothing_changed { "; nothing was changed" } else { "" })]
    Iptables {
        /// The failure.
        error: IptablesError,
        /// Whether the message says nothing was changed.
        nothing_changed: bool,
    },
    /// nf_tables before anything was written.
    #[error("{0}")]
    Nft(NftError),
    /// rtnetlink could not be opened.
    #[error("{0}")]
    Netlink(NetlinkError),
    /// A routing object's presence could not be read.
    #[error("cannot check {object}: {error}")]
    Routing {
        /// The object.
        object: Object,
        /// Why.
        error: NetlinkError,
    },
}

const IPV6_ADVICE: &str = "IPv6 rules were asked for (--ipv6=true, or --dual-stack with an IPv6 address found) and need the ::6/128 address on lo, which the kernel then refuses (EACCES, \"Permission denied\"); run with --ipv6=false or enable IPv6 in the pod; nothing was changed";

/// Rules of ours are there but differ, and `--reconcile` was not given; nothing was changed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Drift {
    /// Our iptables rules differ from the plan: per family, the differences.
    #[error("{}\n{}", self.head(), families.iter().map(|(f, d)| format!("{}:\n{}", family_name(*f), d.join("\n"))).collect::<Vec<_>>().join("\n"))]
    Iptables {
        /// Each family's differences.
        families: Vec<(Family, Vec<String>)>,
    },
    /// Our native tables differ from the ruleset.
    #[error("{}\n{}", self.head(), differences.join("\n"))]
    Native {
        /// The differences.
        differences: Vec<String>,
    },
    /// Rules of ours are in another place than this run would use.
    #[error("{}\n{}", self.head(), elsewhere_lines(places, native).join("\n"))]
    Elsewhere {
        /// The iptables places and what of ours each holds.
        places: Vec<(Tools, Counts)>,
        /// Our native tables.
        native: Vec<String>,
    },
}

impl Drift {
    /// The sentence before the list.
    pub fn head(&self) -> &'static str {
        match self {
            Drift::Iptables { .. } => "rules of ours are already installed but differ from this configuration; nothing was changed. Re-run with --reconcile to replace them atomically.",
            Drift::Native { .. } => "our nftables tables are already installed but differ from this configuration; nothing was changed. Re-run with --reconcile to replace them atomically.",
            Drift::Elsewhere { .. } => "rules of ours are already installed in another place than this run would use; nothing was changed. Re-run with --reconcile to install them here first and then remove the others (capture never stops), or remove them with --cleanup-only.",
        }
    }
}

fn elsewhere_lines(places: &[(Tools, Counts)], native: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = places
        .iter()
        .map(|(tools, counts)| format!("{}: {counts}", place_name(*tools)))
        .collect();
    if !native.is_empty() {
        lines.push(format!("native nftables: table(s) {}", inet_tables(native)));
    }
    lines
}

/// `IPv4 iptables-nft`, as messages name an iptables place.
pub fn place_name(tools: Tools) -> String {
    format!("{} {}", family_name(tools.family), tools.main())
}

/// Our native tables as nft names them: `inet istio-proxy-nat, inet istio-proxy-mangle`.
pub fn inet_tables(tables: &[String]) -> String {
    let named: Vec<String> = tables.iter().map(|t| format!("inet {t}")).collect();
    named.join(", ")
}

/// A write that failed, and what was done about it: the cause, each family undone or found
/// unchanged, what of ours could not be undone, and what iptables-nft's own empty tables and
/// base chains were left (see `execute::xt_shells`).
#[derive(Clone, Debug)]
pub struct Write {
    /// What failed.
    pub cause: Cause,
    /// Each family undone, or unchanged by the failed write.
    pub done: Vec<Undone>,
    /// What of ours could not be undone.
    pub left: Vec<Left>,
    /// What iptables-nft created during the run and could not be deleted again.
    pub shells: Vec<Left>,
}

impl Write {
    /// A write failure with nothing done about it yet.
    pub fn new(cause: Cause) -> Write {
        Write {
            cause,
            done: Vec::new(),
            left: Vec::new(),
            shells: Vec::new(),
        }
    }

    /// Whether anything is left changed.
    pub fn left_changed(&self) -> bool {
        !self.left.is_empty() || !self.shells.is_empty()
    }

    /// The cause, then what was done and what is left, one line each, without the verdict
    /// (`nothing was left changed`, …).
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![self.cause.to_string()];
        lines.extend(self.done.iter().map(ToString::to_string));
        lines.extend(self.left.iter().map(ToString::to_string));
        lines
    }

    /// The cause's first line, and the verdict.
    pub fn headline(&self) -> String {
        format!(
            "{}; {}",
            self.cause.headline(),
            if self.left_changed() {
                LEFT_CHANGED
            } else {
                NOTHING_LEFT
            }
        )
    }
}

const NOTHING_LEFT: &str = "nothing was left changed";
const LEFT_CHANGED: &str = "the namespace was left changed as described above";

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cause)?;
        for line in &self.done {
            write!(f, "\n{line}")?;
        }
        if !self.left_changed() {
            return write!(f, "\n{NOTHING_LEFT}");
        }
        for line in &self.left {
            write!(f, "\n{line}")?;
        }
        // A refusal says itself what of ours it changed (nothing).
        if self.left.is_empty() && !matches!(self.cause, Cause::Refused(_)) {
            write!(f, "\nnothing of ours was left")?;
        }
        for line in &self.shells {
            write!(f, "\n{line}")?;
        }
        write!(f, "\n{LEFT_CHANGED}")
    }
}

/// What failed in a write.
#[derive(Clone, Debug)]
pub enum Cause {
    /// A family's restore failed.
    Restore {
        /// The family and variant.
        tools: Tools,
        /// The tool's failure.
        error: IptablesError,
    },
    /// A family's rules could not be read back after the writes.
    ReadBack {
        /// The family and variant.
        tools: Tools,
        /// Why.
        error: IptablesError,
    },
    /// A family's read-back is not what the writes were for.
    ReadBackDiffers {
        /// The family and variant.
        tools: Tools,
        /// What differs.
        problems: Vec<Problem>,
    },
    /// The native batch was rejected (as a whole).
    Native(NftError),
    /// A routing object could not be added.
    AddRouting {
        /// The object.
        object: Object,
        /// Why.
        error: NetlinkError,
    },
    /// The run was refused before it wrote anything of ours (after iptables-nft had created
    /// empty objects): the refusal, whose claim that nothing was changed is narrowed to ours.
    Refused(Box<ApplyError>),
}

impl Cause {
    /// The first line of the cause.
    fn headline(&self) -> String {
        match self {
            Cause::ReadBack { tools, .. } | Cause::ReadBackDiffers { tools, .. } => {
                read_back_head(*tools)
            }
            Cause::Refused(error) => error.headline(),
            _ => {
                let text = self.to_string();
                text.lines().next().unwrap_or_default().to_string()
            }
        }
    }
}

fn read_back_head(tools: Tools) -> String {
    format!(
        "{}: read-back differs from the plan after writing with {}",
        family_name(tools.family),
        tools.restore()
    )
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Restore { tools, error } => write!(f, "{}: {error}", family_name(tools.family)),
            Cause::ReadBack { tools, error } => write!(
                f,
                "{}:\ncannot read the rules back: {error}",
                read_back_head(*tools)
            ),
            Cause::ReadBackDiffers { tools, problems } => {
                write!(f, "{}:", read_back_head(*tools))?;
                for problem in problems {
                    write!(f, "\n{problem}")?;
                }
                Ok(())
            }
            Cause::Native(error) => write!(f, "{error}; the batch was rejected as a whole"),
            Cause::AddRouting { object, error } => write!(f, "adding {object}: {error}"),
            Cause::Refused(error) => {
                // The refusal's own words, but no longer claiming that nothing changed: what
                // iptables-nft left follows.
                let text = error
                    .to_string()
                    .replace(NOTHING_LEFT, "nothing of ours was left")
                    .replace("nothing was changed", "no rule was changed");
                f.write_str(text.trim_end_matches(LEFT_CHANGED).trim_end())
            }
        }
    }
}

/// How a family's read-back differs from what was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// None of the planned rules are there.
    NoneThere,
    /// After a removal, the rules are still there.
    StillThere,
    /// One difference, as the comparison says it.
    Differs(String),
    /// The variant probe's rule is still there.
    ProbeLeft,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoneThere => f.write_str("none of the planned rules are there"),
            Problem::StillThere => f.write_str("the rules are still there"),
            Problem::Differs(line) => f.write_str(line),
            Problem::ProbeLeft => write!(f, "nat: -A OUTPUT {PROBE_SPEC} is still there"),
        }
    }
}

/// A family after a failed write: undone, or unchanged by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undone {
    /// The failed write changed nothing there.
    Unchanged(Family),
    /// What was written there was undone.
    Undone(Family),
}

impl fmt::Display for Undone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undone::Unchanged(family) => write!(
                f,
                "{}: unchanged (the write changed nothing)",
                family_name(*family)
            ),
            Undone::Undone(family) => write!(f, "{}: undone", family_name(*family)),
        }
    }
}

/// Something a failed run could not undo.
#[derive(Clone, Debug)]
pub enum Left {
    /// The family could not be read to undo its write.
    Unread {
        /// The family.
        family: Family,
        /// Why.
        error: IptablesError,
    },
    /// Undoing the family's write failed.
    UndoFailed {
        /// The family.
        family: Family,
        /// Why.
        error: IptablesError,
    },
    /// The undo went in, but the family still differs from before by this restore text.
    InPart {
        /// The family.
        family: Family,
        /// What would still have to be undone.
        remaining: String,
    },
    /// The undo went in, but the result cannot be read back.
    Unknown {
        /// The family.
        family: Family,
        /// Why.
        error: IptablesError,
    },
    /// A routing object this run added could not be removed.
    Routing {
        /// The object.
        object: Object,
        /// Why.
        error: NetlinkError,
    },
    /// What iptables-nft had before the run could not be read, so what it left is unknown.
    ShellsUnknown(NftError),
    /// A family's tables iptables-nft may have created could not be checked or deleted.
    Shells {
        /// `ip` or `ip6`.
        family: XtFamily,
        /// Why.
        error: ShellError,
    },
    /// An empty base chain iptables-nft created in a table that was there before.
    BaseChain {
        /// `ip` or `ip6`.
        family: XtFamily,
        /// The table.
        table: String,
        /// The chain.
        chain: String,
    },
}

impl fmt::Display for Left {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Left::Unread { family, error } => write!(
                f,
                "{}: cannot read the rules to undo the write, so it may be left in place: {error}",
                family_name(*family)
            ),
            Left::UndoFailed { family, error } => write!(
                f,
                "{}: undoing the write failed, the rules written are left changed: {error}",
                family_name(*family)
            ),
            Left::InPart { family, remaining } => write!(
                f,
                "{}: undone only in part; still different from before:\n{remaining}",
                family_name(*family)
            ),
            Left::Unknown { family, error } => write!(
                f,
                "{}: undone, but the result cannot be read back, so it is not known: {error}",
                family_name(*family)
            ),
            Left::Routing { object, error } => write!(
                f,
                "{object}, added by this run, could not be removed: {error}"
            ),
            Left::ShellsUnknown(error) => write!(
                f,
                "whether iptables-nft left empty tables or base chains could not be checked: reading them before the run failed: {error}"
            ),
            Left::Shells { family, error } => write!(
                f,
                "the {} tables iptables-nft may have created during this run could not be checked or deleted: {error}",
                family.name()
            ),
            Left::BaseChain {
                family,
                table,
                chain,
            } => write!(
                f,
                "left: the empty base chain {0} {table} {chain} that iptables-nft created during this run (it holds no rule; `nft delete chain {0} {table} {chain}` removes it)",
                family.name()
            ),
        }
    }
}

/// Why iptables-nft's empty tables could not be checked or deleted.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ShellError {
    /// nf_tables failed.
    #[error("{0}")]
    Nft(#[from] NftError),
    /// The ruleset changed during the read.
    #[error("the ruleset changed while it was being read")]
    Changed,
}

/// A failure that left nothing changed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Failed {
    /// A write, undone.
    #[error("{0}")]
    Write(Box<Write>),
    /// nf_tables could not be opened to delete our tables.
    #[error("{0}")]
    Nft(NftError),
    /// rtnetlink could not be opened to remove our routing objects.
    #[error("{0}")]
    Netlink(NetlinkError),
    /// Removing our routing objects failed (after the rules were removed).
    #[error("{0} (the rules are already removed)")]
    Routing(RemoveError),
}

/// A failure that left the namespace changed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LeftChanged {
    /// A write not undone completely.
    #[error("{0}")]
    Write(Box<Write>),
    /// The new rules are in place, but removing ours from the other places failed.
    #[error(
        "{here}, but removing the rules of ours elsewhere failed, so both are installed: {error}; re-run with --reconcile"
    )]
    BothInstalled {
        /// Where the new rules are.
        here: &'static str,
        /// Why the removal failed.
        error: Elsewhere,
    },
    /// Deleting our native tables failed during a cleanup.
    #[error(
        "deleting our native nftables tables: {error}{}",
        if removed.is_empty() {
            String::new()
        } else {
            format!(" (already removed: {})", removed.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        }
    )]
    NativeCleanup {
        /// Why.
        error: NftError,
        /// What the cleanup had removed before.
        removed: Vec<Change>,
    },
}

/// Why removing ours from the other places failed.
#[derive(Clone, Debug)]
pub enum Elsewhere {
    /// An iptables removal (and what was undone).
    Iptables(Box<Write>),
    /// Our native tables.
    Nft(NftError),
}

impl fmt::Display for Elsewhere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Elsewhere::Iptables(write) => f.write_str(&write.lines().join("\n")),
            Elsewhere::Nft(e) => write!(f, "{e}"),
        }
    }
}

/// What a run did, for the summary line.
#[derive(Debug, Default)]
pub struct Report {
    /// The tools used.
    pub tools: Vec<ToolUse>,
    /// One per change; empty when nothing changed.
    pub changes: Vec<Change>,
}

/// A tool a run used to write or remove rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolUse {
    /// An iptables variant for one family.
    Iptables(Tools),
    /// nf_tables over netlink (both families).
    Netlink,
}

impl fmt::Display for ToolUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolUse::Iptables(tools) => f.write_str(&place_name(*tools)),
            ToolUse::Netlink => f.write_str("nf_tables netlink"),
        }
    }
}

/// One change a run made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A routing object added.
    AddedRouting(Object),
    /// A family's rules installed (`fresh`) or replaced with iptables.
    Wrote {
        /// The family and variant.
        tools: Tools,
        /// Nothing of ours was there before.
        fresh: bool,
    },
    /// A leftover variant-detection probe rule removed.
    RemovedProbe(Family),
    /// Our native tables installed or replaced in one batch.
    Native {
        /// Tables of ours were there.
        replaced: bool,
        /// The tables.
        tables: Vec<String>,
        /// How many rules.
        rules: usize,
        /// How many netlink messages the batch had.
        messages: usize,
    },
    /// `--reconcile`: installed here, then removed from the other places.
    Reconciled,
    /// Ours removed from an iptables place.
    Removed {
        /// The place.
        tools: Tools,
        /// What was removed.
        counts: Counts,
    },
    /// An `ip`/`ip6` table iptables-nft left empty, deleted.
    DeletedShell {
        /// The place whose removal left it empty.
        tools: Tools,
        /// The table.
        table: String,
    },
    /// Our native tables deleted.
    DeletedNative(Vec<String>),
    /// A routing object of ours that this configuration does not plan, removed.
    RemovedStale(Object),
    /// A routing object of ours removed.
    RemovedRouting(Object),
    /// `--skip-rule-apply`.
    Skipped,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AddedRouting(object) => write!(f, "added {object}"),
            Change::Wrote { tools, fresh } => write!(
                f,
                "{}: {} {}",
                family_name(tools.family),
                if *fresh {
                    "installed rules with"
                } else {
                    "replaced rules with"
                },
                tools.restore()
            ),
            Change::RemovedProbe(family) => {
                write!(f, "{}: removed a leftover probe rule", family_name(*family))
            }
            Change::Native {
                replaced,
                tables,
                rules,
                messages,
            } => write!(
                f,
                "{} tables {} ({rules} rules, {messages} netlink messages in one batch)",
                if *replaced { "replaced" } else { "installed" },
                tables.join(", ")
            ),
            Change::Reconciled => f.write_str(
                "reconciled: installed here first, then removed the rules of ours elsewhere",
            ),
            Change::Removed { tools, counts } => {
                write!(f, "{}: removed {counts}", place_name(*tools))
            }
            Change::DeletedShell { tools, table } => write!(
                f,
                "{}: deleted the table {} {table} it left empty",
                place_name(*tools),
                XtFamily::of(tools.family).name()
            ),
            Change::DeletedNative(tables) => write!(
                f,
                "native nftables: deleted {}",
                tables
                    .iter()
                    .map(|t| format!("table inet {t}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Change::RemovedStale(object) => {
                write!(f, "removed {object} (not planned by this configuration)")
            }
            Change::RemovedRouting(object) => write!(f, "removed {object}"),
            Change::Skipped => f.write_str("rules not applied (--skip-rule-apply)"),
        }
    }
}
