//! Entering the pod's network namespace and checking (and passing on) the capabilities the
//! apply step needs, before anything is touched.

use std::fs::File;
use std::path::Path;

use caps::{CapSet, Capability};

/// Moves this process into the network namespace at `path`. Must run before any thread
/// exists: `setns` moves only the calling thread, and later threads inherit from it. Returns
/// the namespace as the log names it: the path and its inode (`net:[4026532…]`, as `ls -l
/// /proc/PID/ns/net` shows it).
/// `setting` names where the path came from in messages (`--network-namespace`, or
/// `CNI_NETNS` for a CNI plugin).
pub fn enter_netns(path: &Path, setting: &str) -> Result<String, String> {
    let file = File::open(path).map_err(|e| {
        let mut message = format!("cannot open network namespace {}: {e}", path.display());
        // `ip netns` shows names; the flag takes a path, as Istio's does.
        let bare = !path.as_os_str().is_empty() && path.components().count() == 1;
        let named = Path::new("/run/netns").join(path);
        if bare && named.exists() {
            message.push_str(&format!(
                "; {setting} takes a path: did you mean {}?",
                named.display()
            ));
        } else {
            message.push_str(&format!(
                "; {setting} takes a path: /run/netns/NAME (what `ip netns` names) or /proc/PID/ns/net"
            ));
        }
        message
    })?;
    if !on_nsfs(&file) {
        return Err(format!(
            "cannot enter network namespace {} ({setting}): not a network namespace (give /run/netns/NAME or /proc/PID/ns/net)",
            path.display()
        ));
    }
    let inode = file
        .metadata()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        let why = match e {
            nix::errno::Errno::EINVAL => {
                "a namespace of another kind, not a network namespace (/proc/PID/ns/net is the network one)".to_string()
            }
            nix::errno::Errno::EPERM => format!("{e} (needs CAP_SYS_ADMIN)"),
            _ => e.to_string(),
        };
        format!("cannot enter network namespace {}: {why}", path.display())
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

/// Checks that this process holds `needed` in its effective set, and raises them into the
/// inheritable and ambient sets so the iptables tools it starts keep them even when meshinit
/// runs as a non-root user with file capabilities.
pub fn require_capabilities(needed: &[Capability]) -> Result<(), String> {
    let effective = caps::read(None, CapSet::Effective)
        .map_err(|e| format!("cannot read this process's capabilities: {e}"))?;
    let missing: Vec<String> = needed
        .iter()
        .filter(|c| !effective.contains(c))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing capabilities {}: run as root or grant them to the container (securityContext.capabilities.add: [NET_ADMIN, NET_RAW]); nothing was changed",
            missing.join(", ")
        ));
    }
    if nix::unistd::geteuid().is_root() {
        // Root's children get the bounding set anyway.
        return Ok(());
    }
    for &cap in needed {
        caps::raise(None, CapSet::Inheritable, cap)
            .and_then(|()| caps::raise(None, CapSet::Ambient, cap))
            .map_err(|e| format!("cannot pass {cap} on to helper programs: {e}"))?;
    }
    Ok(())
}
