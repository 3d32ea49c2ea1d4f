//! Which failures are transient — a lock held past its wait, the kernel answering `EBUSY`,
//! `EAGAIN` or `EINTR` — so that the drivers can mark them where they are known and the
//! retry loop (`execute::retry`) can try again. The reason is a value ([`Transient`]); its
//! text is what the retry's log line and JSON `reason` say.

use std::fmt;
use std::time::Duration;

use nix::errno::Errno;

use crate::sys::process::{Ended, Output};

/// What legacy iptables exits with when it gave up waiting for the xtables lock (iptables'
/// `RESOURCE_PROBLEM`; 1.8.9 prints `Another app is currently holding the xtables lock.
/// Stopped waiting after 1s.`).
const XTABLES_LOCK_EXIT: i32 = 4;

/// Why a failure may pass when tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transient {
    /// The kernel answered "not now" to a request of ours (netlink).
    Errno(Errno),
    /// A tool printed the kernel's "not now" (`strerror` text) and failed so.
    ToolErrno {
        /// The tool, e.g. `iptables-nft-restore`.
        program: String,
        /// The errno whose text it printed.
        errno: Errno,
        /// How it ended.
        ended: Ended,
    },
    /// Legacy iptables gave up waiting for the xtables lock.
    XtablesLock {
        /// The tool.
        program: String,
        /// Its last stderr line (`Stopped waiting after 1s.`).
        said: String,
    },
    /// Another meshinit held this namespace's lock for all of the wait.
    NetnsLock {
        /// `pid N, comm`, when found.
        holder: Option<String>,
        /// How long this run waited.
        waited: Duration,
    },
    /// Several failures, each transient (one per place that could not be read).
    All(Vec<Transient>),
}

impl fmt::Display for Transient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transient::Errno(errno) => {
                write!(f, "the kernel answered {errno:?} ({})", errno.desc())
            }
            Transient::ToolErrno {
                program,
                errno,
                ended,
            } => write!(
                f,
                "{program}: the kernel answered {errno:?} ({}) ({ended})",
                errno.desc()
            ),
            Transient::XtablesLock { program, said } => write!(
                f,
                "{program}: another program held the xtables lock longer than --xtables-wait ({said})"
            ),
            Transient::NetnsLock { holder, waited } => write!(
                f,
                "another meshinit held this namespace's lock ({}) longer than {:.1}s",
                holder.as_deref().unwrap_or("holder unknown"),
                waited.as_secs_f64()
            ),
            Transient::All(reasons) => {
                for (i, reason) in reasons.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{reason}")?;
                }
                Ok(())
            }
        }
    }
}

impl Transient {
    /// One reason for several transient failures (itself when there is one).
    pub fn all(mut reasons: Vec<Transient>) -> Transient {
        if reasons.len() == 1 {
            reasons.remove(0)
        } else {
            Transient::All(reasons)
        }
    }
}

/// Why a failure is transient, when it is: the errno of a kernel answer that says "not now"
/// rather than "no" — `EBUSY` (an object in use or a writer busy), `EAGAIN` (try again),
/// `EINTR` (interrupted). `EPERM`, `ENOENT`, `EOPNOTSUPP`, `EINVAL` and the rest are answers
/// about the request itself or the kernel, which another attempt does not change.
pub fn transient_errno(errno: Errno) -> Option<Transient> {
    match errno {
        Errno::EBUSY | Errno::EAGAIN | Errno::EINTR => Some(Transient::Errno(errno)),
        _ => None,
    }
}

/// Why a failed restore tool's run is transient, when it is: legacy iptables giving up on the
/// xtables lock (exit 4 naming the lock), or the kernel's `EBUSY`/`EAGAIN`/`EINTR` as the tool
/// prints them (`strerror` text, e.g. iptables-nft's `RULE_APPEND failed (Device or resource
/// busy)`). Other failures — bad rules, a missing module, no permission — are not.
pub fn transient_tool(program: &str, out: &Output) -> Option<Transient> {
    transient_end(program, out.ended(), &out.stderr)
}

/// [`transient_tool`] from how the tool ended and its stderr.
pub fn transient_end(program: &str, ended: Ended, stderr: &str) -> Option<Transient> {
    let stderr = stderr.trim();
    if ended == Ended::Exited(XTABLES_LOCK_EXIT) && stderr.contains("holding the xtables lock") {
        return Some(Transient::XtablesLock {
            program: program.to_string(),
            said: stderr.lines().last().unwrap_or(stderr).to_string(),
        });
    }
    // A chain still jumped to (a foreign rule into one of ours) is busy until that rule goes:
    // iptables-nft prints `CHAIN_DEL failed (Device or resource busy): chain X` (measured), and
    // no retry changes it.
    if stderr.contains("CHAIN_DEL failed (Device or resource busy)") {
        return None;
    }
    // The lock's own EAGAIN line ("Can't lock /run/xtables.lock: Resource temporarily
    // unavailable") comes with the exit above; without it, such text is the kernel's answer.
    [Errno::EBUSY, Errno::EAGAIN, Errno::EINTR]
        .into_iter()
        .find(|errno| stderr.contains(errno.desc()))
        .map(|errno| Transient::ToolErrno {
            program: program.to_string(),
            errno,
            ended,
        })
}
