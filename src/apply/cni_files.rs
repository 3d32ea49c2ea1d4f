//! The node's files that `meshinit cni-install` changes: the plugin binary in the CNI bin
//! directory and the conflist, each replaced atomically (written beside, then renamed) so a
//! runtime reading them never sees half a file; and waiting for the pod's termination signal.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Copies the running binary to `bin_dir/meshinit`; returns the path.
pub fn install_binary(bin_dir: &Path) -> Result<PathBuf, String> {
    let target = bin_dir.join("meshinit");
    let tmp = bin_dir.join(format!(".meshinit.tmp-{}", std::process::id()));
    let copied = fs::copy("/proc/self/exe", &tmp)
        .and_then(|_| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)))
        .and_then(|()| fs::rename(&tmp, &target));
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(format!("cannot install {}: {e}", target.display()));
    }
    Ok(target)
}

/// The file names in `dir`.
pub fn names(dir: &Path) -> Result<Vec<String>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// A file's text.
pub fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Replaces `path` with `text`: written to a hidden file beside it, then renamed over it.
/// (Hidden: runtimes skip names without a .conf/.conflist/.json suffix.)
pub fn replace(path: &Path, text: &str) -> Result<(), String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{}.meshinit-tmp", name.unwrap_or_default()));
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", path.display()));
    }
    Ok(())
}

/// SIGTERM and SIGINT held back from now on (so one that comes early is not lost or fatal),
/// to be waited for with [`wait_for_termination`].
pub fn block_termination() -> Result<nix::sys::signal::SigSet, String> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block()
        .map_err(|e| format!("cannot block SIGTERM: {e}"))?;
    Ok(set)
}

/// Blocks until one of the signals of `set` arrives (the kubelet stopping the pod).
pub fn wait_for_termination(set: &nix::sys::signal::SigSet) -> Result<(), String> {
    set.wait()
        .map(|_| ())
        .map_err(|e| format!("waiting for SIGTERM: {e}"))
}
