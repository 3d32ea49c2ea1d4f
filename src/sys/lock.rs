//! Serialises meshinit runs that target the same network namespace, so concurrent instances
//! read, decide and write one after another and converge on one ruleset.
//!
//! The lock is an abstract unix socket name (`@meshinit/netns-lock`) bound in the target
//! namespace. Abstract names live in the network namespace, not in a file system, so the lock
//! is per namespace by construction, works with a read-only or private `/run`, leaves no file
//! behind, and the kernel releases it when the holder exits, however it dies. The holder also
//! listens (never accepting), so a run that gives up waiting can name it from the kernel's
//! `SO_PEERCRED`.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, connect, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    UnixAddr,
};

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

/// Why the lock was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Another run held it for all of the wait (transient: it is released when that run
    /// ends); who held it when that is known.
    #[error(
        "another meshinit holds the lock of this network namespace (abstract unix socket @{LOCK_NAME}{}) for longer than {wait:?}; nothing was changed",
        holder.as_ref().map(|h| format!("; held by {h}")).unwrap_or_default()
    )]
    Held {
        /// `pid N, comm`, when found.
        holder: Option<String>,
        /// How long this run waited.
        wait: Duration,
    },
    /// The lock's name could not be made.
    #[error("cannot name meshinit's namespace lock: {0}")]
    Name(Errno),
    /// The lock's socket could not be made.
    #[error("cannot make meshinit's namespace lock: socket: {0}; nothing was changed")]
    Socket(Errno),
    /// Binding the name failed for another reason than another holder.
    #[error(
        "cannot take meshinit's namespace lock (abstract unix socket @{LOCK_NAME}): {0}; nothing was changed"
    )]
    Bind(Errno),
}

/// Takes the lock of the calling thread's network namespace, waiting at most `wait`.
pub fn lock_netns(wait: Duration) -> Result<NetnsLock, LockError> {
    let addr = UnixAddr::new_abstract(LOCK_NAME.as_bytes()).map_err(LockError::Name)?;
    let deadline = Instant::now() + wait;
    loop {
        // CLOEXEC: the iptables tools must not inherit (and so outlive us holding) the lock.
        let socket = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(LockError::Socket)?;
        match bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &addr) {
            Ok(()) => {
                // Listening lets a waiting run ask the kernel who we are (SO_PEERCRED);
                // nobody is ever accepted, and the lock does not depend on it.
                let _ = listen(&socket, Backlog::new(1).unwrap_or(Backlog::MAXCONN));
                return Ok(NetnsLock {
                    _socket: socket,
                    xtables_file: None,
                });
            }
            Err(Errno::EADDRINUSE) if Instant::now() < deadline => std::thread::sleep(RETRY),
            Err(Errno::EADDRINUSE) => {
                return Err(LockError::Held {
                    holder: holder(&addr),
                    wait,
                });
            }
            Err(e) => return Err(LockError::Bind(e)),
        }
    }
}

/// Who holds the lock, best effort (`pid N, comm`): the kernel's credentials of the listening
/// holder (any user's, in our pid namespace), else a search of `/proc` for the socket.
fn holder(addr: &UnixAddr) -> Option<String> {
    let pid = peer_pid(addr).or_else(|| {
        let table = std::fs::read_to_string("/proc/thread-self/net/unix").ok()?;
        let inode = procfs::unix_socket_inode(&table, &format!("@{LOCK_NAME}"))?;
        procfs::socket_owner(inode).map(|(pid, _)| pid)
    })?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Some(format!("pid {pid}, {}", comm.trim()))
}

/// The pid of the process listening on `addr`, from `SO_PEERCRED` of a connection to it. Not
/// blocking: a full backlog or a holder that does not listen gives `None`.
fn peer_pid(addr: &UnixAddr) -> Option<u32> {
    let probe = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .ok()?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&probe), addr).ok()?;
    let cred = getsockopt(&probe, sockopt::PeerCredentials).ok()?;
    u32::try_from(cred.pid()).ok().filter(|&pid| pid != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "kernel test: needs root (scripts/test.sh runs it)"]
    fn a_second_taker_waits_then_names_the_holder_from_its_credentials() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "needs root, and CI may not skip"
            );
            eprintln!("note: skipping: needs root for a network namespace of its own");
            return;
        }
        std::thread::spawn(|| {
            // A namespace of this thread's own: the lock name is per namespace.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let held = lock_netns(Duration::from_secs(1)).expect("free");
            let addr = UnixAddr::new_abstract(LOCK_NAME.as_bytes()).unwrap();
            assert_eq!(peer_pid(&addr), Some(std::process::id()));
            let started = Instant::now();
            let err = lock_netns(Duration::from_millis(200))
                .err()
                .expect("held")
                .to_string();
            assert!(started.elapsed() >= Duration::from_millis(200));
            assert!(
                err.contains(&format!("held by pid {}, ", std::process::id())),
                "{err}"
            );
            drop(held);
            assert!(lock_netns(Duration::from_secs(1)).is_ok(), "released");
        })
        .join()
        .unwrap();
    }
}
