//! Entering the pod's network namespace and checking (and passing on) the capabilities the
//! apply step needs, before anything is touched.

use std::fs::File;
use std::path::Path;

use caps::{CapSet, Capability};

/// Moves this process into the network namespace at `path`. Must run before any thread
/// exists: `setns` moves only the calling thread, and later threads inherit from it.
pub fn enter_netns(path: &Path) -> Result<(), String> {
    let file = File::open(path)
        .map_err(|e| format!("cannot open network namespace {}: {e}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        format!(
            "cannot enter network namespace {}: {e} (needs CAP_SYS_ADMIN)",
            path.display()
        )
    })
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
