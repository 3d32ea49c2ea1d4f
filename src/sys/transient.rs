//! Which failures are transient — a lock held past its wait, the kernel answering `EBUSY`,
//! `EAGAIN` or `EINTR` — so that the drivers can mark them where they are known and the
//! retry loop (`execute::retry`) can try again.

use nix::errno::Errno;

use crate::sys::process::Output;

/// What legacy iptables exits with when it gave up waiting for the xtables lock (iptables'
/// `RESOURCE_PROBLEM`; 1.8.9 prints `Another app is currently holding the xtables lock.
/// Stopped waiting after 1s.`).
const XTABLES_LOCK_EXIT: i32 = 4;

/// Why a failure is transient, when it is: the errno of a kernel answer that says "not now"
/// rather than "no" — `EBUSY` (an object in use or a writer busy), `EAGAIN` (try again),
/// `EINTR` (interrupted). `EPERM`, `ENOENT`, `EOPNOTSUPP`, `EINVAL` and the rest are answers
/// about the request itself or the kernel, which another attempt does not change.
pub fn transient_errno(errno: Errno) -> Option<String> {
    match errno {
        Errno::EBUSY | Errno::EAGAIN | Errno::EINTR => {
            Some(format!("the kernel answered {errno:?} ({})", errno.desc()))
        }
        _ => None,
    }
}

/// Why a failed restore tool's run is transient, when it is: legacy iptables giving up on the
/// xtables lock (exit 4 naming the lock), or the kernel's `EBUSY`/`EAGAIN`/`EINTR` as the tool
/// prints them (`strerror` text, e.g. iptables-nft's `RULE_APPEND failed (Device or resource
/// busy)`). Other failures — bad rules, a missing module, no permission — are not.
pub fn transient_tool(program: &str, out: &Output) -> Option<String> {
    let stderr = out.stderr.trim();
    if out.code == Some(XTABLES_LOCK_EXIT) && stderr.contains("holding the xtables lock") {
        return Some(format!(
            "{program}: another program held the xtables lock longer than --xtables-wait ({})",
            stderr.lines().last().unwrap_or(stderr)
        ));
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
        .map(|errno| {
            format!(
                "{program}: the kernel answered {errno:?} ({}) ({})",
                errno.desc(),
                out.ended()
            )
        })
}
