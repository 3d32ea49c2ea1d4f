//! Serialises meshinit runs that target the same network namespace, so concurrent instances
//! read, decide and write one after another and converge on one ruleset.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// Held for the whole read-decide-write sequence; released when dropped.
pub struct NetnsLock {
    _lock: Flock<File>,
    /// The lock file, `/run/meshinit/netns-<dev>-<ino>.lock`.
    pub path: PathBuf,
}

/// Where the lock file of the current network namespace lives: named after the namespace's
/// identity, so every instance on this host that targets it uses the same file.
fn lock_path() -> std::io::Result<PathBuf> {
    let ns = std::fs::metadata("/proc/self/ns/net")?;
    Ok(PathBuf::from(format!(
        "/run/meshinit/netns-{}-{}.lock",
        ns.dev(),
        ns.ino()
    )))
}

/// A legacy-iptables lock file for the current network namespace alone (`--cni-mode`), next
/// to meshinit's own lock; `None` when /run/meshinit cannot be made.
pub fn xtables_lock_path() -> Option<PathBuf> {
    let path = lock_path().ok()?.with_extension("xtables.lock");
    std::fs::create_dir_all(path.parent()?).ok()?;
    Some(path)
}

/// Takes the lock, waiting at most `wait`. `Ok(None)` when no lock file can be made (e.g. a
/// read-only /run): meshinit then relies on its conflict checks alone.
pub fn lock_netns(wait: Duration) -> Result<Option<NetnsLock>, String> {
    let Ok(path) = lock_path() else {
        return Ok(None);
    };
    if let Some(dir) = path.parent() {
        if std::fs::create_dir_all(dir).is_err() {
            return Ok(None);
        }
    }
    let Ok(mut file) = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    else {
        return Ok(None);
    };
    let deadline = Instant::now() + wait;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Some(NetnsLock { _lock: lock, path })),
            Err((returned, _)) if Instant::now() < deadline => {
                file = returned;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, errno)) => {
                return Err(format!(
                "another meshinit holds {} for longer than {wait:?} ({errno}); nothing was changed",
                path.display()
            ))
            }
        }
    }
}
