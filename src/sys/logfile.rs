//! Sending this process's stderr (meshinit's log lines, and what the tools it starts print
//! there) to a log file: a CNI plugin's stdout is the protocol's, and a runtime may discard its
//! stderr.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Appends everything written to stderr from now on to `path` (created 0600 if missing).
pub fn redirect_stderr(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
    // dup2 onto fd 2 keeps the file open after `file` is dropped.
    nix::unistd::dup2(file.as_raw_fd(), libc::STDERR_FILENO)
        .map(|_| ())
        .map_err(|e| format!("cannot log to {}: {e}", path.display()))
}

/// Whether [`redirect_stderr`] could open `path`, checked without creating or changing it (for
/// `cni-install`, before it puts a `log_file` into the node's conflist: a file `ADD` cannot
/// open fails every pod's `ADD`). An existing file is opened for appending and closed; a
/// missing one needs its directory to exist and be writable.
pub fn check_openable(path: &Path) -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    let refuse = |why: String| Err(format!("{why}: every ADD would fail opening it"));
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return refuse(format!("{} is a directory", path.display())),
        Ok(_) => {
            return match OpenOptions::new().append(true).open(path) {
                Ok(_) => Ok(()),
                Err(e) => refuse(format!("cannot open {}: {e}", path.display())),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return refuse(format!("cannot open {}: {e}", path.display())),
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return refuse(format!("{} is not a directory", dir.display())),
        Err(e) => return refuse(format!("its directory {}: {e}", dir.display())),
    }
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).or_else(|e| {
        refuse(format!(
            "cannot create files in its directory {}: {e}",
            dir.display()
        ))
    })
}
