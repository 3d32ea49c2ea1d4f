//! Entering the pod's network namespace and checking (and passing on) the capabilities the
//! apply step needs, before anything is touched.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;

use caps::{CapSet, Capability};

/// Why the network namespace could not be entered. `setting` names where the path came
/// from (`--network-namespace`, or `CNI_NETNS` for a CNI plugin).
#[derive(Clone, Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path cannot be opened.
    #[error(
        "cannot open network namespace {}: {error}; {setting} takes a path: {}",
        path.display(),
        match named {
            Some(named) => format!("did you mean {}?", named.display()),
            None => "/run/netns/NAME (what `ip netns` names) or /proc/PID/ns/net".to_string(),
        }
    )]
    Open {
        /// The path given.
        path: PathBuf,
        /// Where it came from.
        setting: &'static str,
        /// The system's answer.
        #[source]
        error: Arc<std::io::Error>,
        /// For a bare name that `ip netns` knows: its path.
        named: Option<PathBuf>,
    },
    /// The file is not a namespace.
    #[error(
        "cannot enter network namespace {} ({setting}): not a network namespace (give /run/netns/NAME or /proc/PID/ns/net)",
        path.display()
    )]
    NotNamespace {
        /// The path given.
        path: PathBuf,
        /// Where it came from.
        setting: &'static str,
    },
    /// `setns` refused.
    #[error(
        "cannot enter network namespace {}: {}",
        path.display(),
        match errno {
            Errno::EINVAL => "a namespace of another kind, not a network namespace (/proc/PID/ns/net is the network one)".to_string(),
            Errno::EPERM => format!("{errno} (needs CAP_SYS_ADMIN)"),
            _ => errno.to_string(),
        }
    )]
    Setns {
        /// The path given.
        path: PathBuf,
        /// The kernel's answer.
        errno: Errno,
    },
}

/// Moves this process into the network namespace at `path`. Must run before any thread
/// exists: `setns` moves only the calling thread, and later threads inherit from it. Returns
/// the namespace as the log names it: the path and its inode (`net:[4026532…]`, as `ls -l
/// /proc/PID/ns/net` shows it).
/// `setting` names where the path came from in messages (`--network-namespace`, or
/// `CNI_NETNS` for a CNI plugin).
pub fn enter_netns(path: &Path, setting: &'static str) -> Result<String, NetnsError> {
    let file = File::open(path).map_err(|error| {
        // `ip netns` shows names; the flag takes a path, as Istio's does.
        let bare = !path.as_os_str().is_empty() && path.components().count() == 1;
        let named = Path::new("/run/netns").join(path);
        NetnsError::Open {
            path: path.to_path_buf(),
            setting,
            error: Arc::new(error),
            named: (bare && named.exists()).then_some(named),
        }
    })?;
    if !on_nsfs(&file) {
        return Err(NetnsError::NotNamespace {
            path: path.to_path_buf(),
            setting,
        });
    }
    let inode = file
        .metadata()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
        NetnsError::Setns {
            path: path.to_path_buf(),
            errno,
        }
    })?;
    Ok(match inode {
        Some(ino) => format!("{} (net:[{ino}])", path.display()),
        None => path.display().to_string(),
    })
}

/// Whether `path` is a namespace file: a pin file whose namespace is gone (`ip netns`'s file
/// left after the unmount, or a runtime's) is a plain file, not on nsfs.
pub fn is_namespace_file(path: &Path) -> bool {
    File::open(path).is_ok_and(|file| on_nsfs(&file))
}

/// A namespace file lives on nsfs; anything else (a regular file, a directory) is not one,
/// which setns would only report as EINVAL.
fn on_nsfs(file: &File) -> bool {
    nix::sys::statfs::fstatfs(file)
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(true)
}

/// Why the capabilities the run needs are not there to use.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CapsError {
    /// The effective set could not be read.
    #[error("cannot read this process's capabilities: {0}")]
    Read(String),
    /// Some are missing from the effective set.
    #[error(
        "missing capabilities {}: run as root or grant them to the container (securityContext.capabilities.add: [NET_ADMIN, NET_RAW]); nothing was changed",
        missing.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
    )]
    Missing {
        /// The missing ones.
        missing: Vec<Capability>,
    },
    /// One could not be raised into the ambient set for the helper programs.
    #[error("cannot pass {cap} on to helper programs: {error}")]
    Pass {
        /// The capability.
        cap: Capability,
        /// The `caps` crate's answer.
        error: String,
    },
}

/// Checks that this process holds `needed` in its effective set, and raises them into the
/// inheritable and ambient sets so the iptables tools it starts keep them even when meshinit
/// runs as a non-root user with file capabilities.
pub fn require_capabilities(needed: &[Capability]) -> Result<(), CapsError> {
    let effective =
        caps::read(None, CapSet::Effective).map_err(|e| CapsError::Read(e.to_string()))?;
    let missing: Vec<Capability> = needed
        .iter()
        .filter(|c| !effective.contains(c))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Err(CapsError::Missing { missing });
    }
    if nix::unistd::geteuid().is_root() {
        // Root's children get the bounding set anyway.
        return Ok(());
    }
    for &cap in needed {
        caps::raise(None, CapSet::Inheritable, cap)
            .and_then(|()| caps::raise(None, CapSet::Ambient, cap))
            .map_err(|e| CapsError::Pass {
                cap,
                error: e.to_string(),
            })?;
    }
    Ok(())
}
