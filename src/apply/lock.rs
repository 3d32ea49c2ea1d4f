//! Serialises meshinit runs that target the same network namespace, so concurrent instances
//! read, decide and write one after another and converge on one ruleset.
//!
//! The lock is an abstract unix socket name (`@meshinit/netns-lock`) bound in the target
//! namespace. Abstract names live in the network namespace, not in a file system, so the lock
//! is per namespace by construction, works with a read-only or private `/run`, leaves no file
//! behind, and the kernel releases it when the holder exits, however it dies.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};

use super::procfs;

/// The abstract socket name of the lock (without the leading NUL; `/proc/net/unix` and `ss`
/// show it as `@meshinit/netns-lock`).
pub const LOCK_NAME: &str = "meshinit/netns-lock";

/// How often a waiting run tries the lock again.
const RETRY: Duration = Duration::from_millis(20);

/// Held for the whole read-decide-write sequence; released when dropped (or when the process
/// dies: the kernel closes the socket).
pub struct NetnsLock {
    _socket: OwnedFd,
    /// The `--cni-mode` xtables lock file made during this run, removed on drop.
    xtables_file: Option<PathBuf>,
}

impl NetnsLock {
    /// A legacy-iptables lock file for this network namespace alone (`--cni-mode`), named
    /// after the namespace's identity; `None` when /run/meshinit cannot be made (legacy
    /// iptables then uses the host's lock). The file is removed when this lock is released:
    /// every meshinit run that could use it holds this lock, so nobody else is waiting on it.
    pub fn xtables_lock_file(&mut self) -> Option<PathBuf> {
        if self.xtables_file.is_none() {
            let ns = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
            let path = PathBuf::from(format!(
                "/run/meshinit/netns-{}-{}.xtables.lock",
                ns.dev(),
                ns.ino()
            ));
            std::fs::create_dir_all(path.parent()?).ok()?;
            self.xtables_file = Some(path);
        }
        self.xtables_file.clone()
    }
}

impl Drop for NetnsLock {
    fn drop(&mut self) {
        // Runs before the socket closes, so no other meshinit run can be using the file.
        if let Some(path) = &self.xtables_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Takes the lock of the calling thread's network namespace, waiting at most `wait`.
pub fn lock_netns(wait: Duration) -> Result<NetnsLock, String> {
    let addr = UnixAddr::new_abstract(LOCK_NAME.as_bytes())
        .map_err(|e| format!("cannot name meshinit's namespace lock: {e}"))?;
    let deadline = Instant::now() + wait;
    loop {
        // CLOEXEC: the iptables tools must not inherit (and so outlive us holding) the lock.
        let socket = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| {
            format!("cannot make meshinit's namespace lock: socket: {e}; nothing was changed")
        })?;
        match bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &addr) {
            Ok(()) => {
                return Ok(NetnsLock {
                    _socket: socket,
                    xtables_file: None,
                })
            }
            Err(Errno::EADDRINUSE) if Instant::now() < deadline => std::thread::sleep(RETRY),
            Err(Errno::EADDRINUSE) => {
                let holder = holder()
                    .map(|h| format!("; held by {h}"))
                    .unwrap_or_default();
                return Err(format!(
                    "another meshinit holds the lock of this network namespace (abstract unix socket @{LOCK_NAME}{holder}) for longer than {wait:?}; nothing was changed"
                ));
            }
            Err(e) => {
                return Err(format!(
                    "cannot take meshinit's namespace lock (abstract unix socket @{LOCK_NAME}): {e}; nothing was changed"
                ))
            }
        }
    }
}

/// Who holds the lock, best effort (`pid N, comm`).
fn holder() -> Option<String> {
    let table = std::fs::read_to_string("/proc/thread-self/net/unix").ok()?;
    let inode = procfs::unix_socket_inode(&table, &format!("@{LOCK_NAME}"))?;
    let (pid, comm) = procfs::socket_owner(inode)?;
    Some(format!("pid {pid}, {comm}"))
}
