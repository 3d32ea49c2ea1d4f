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
