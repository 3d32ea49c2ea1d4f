//! Sending this process's stderr (meshinit's log lines, and what the tools it starts print
//! there) to a log file: a CNI plugin's stdout is the protocol's, and a runtime may discard its
//! stderr.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// Why the log file cannot take the log.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    /// It cannot be opened (or created) for appending.
    #[error("cannot open the log file {}: {error}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The system's answer.
        #[source]
        error: std::io::Error,
    },
    /// stderr cannot be pointed at it.
    #[error("cannot log to {}: {errno}", path.display())]
    Redirect {
        /// The file.
        path: PathBuf,
        /// The kernel's answer to `dup2`.
        errno: Errno,
    },
    /// A check without opening it says `ADD` could not open it.
    #[error("{0}: every ADD would fail opening it")]
    Unopenable(Unopenable),
}

/// Why a log file `ADD` would open cannot be opened, found without creating it.
#[derive(Debug, thiserror::Error)]
pub enum Unopenable {
    /// It is a directory.
    #[error("{} is a directory", .0.display())]
    IsDirectory(PathBuf),
    /// It exists and cannot be opened for appending, or cannot be looked at.
    #[error("cannot open {path}: {error}", path = .0.display(), error = .1)]
    Open(PathBuf, std::io::Error),
    /// What should be its directory is not one.
    #[error("{} is not a directory", .0.display())]
    DirNotDirectory(PathBuf),
    /// Its directory cannot be looked at.
    #[error("its directory {path}: {error}", path = .0.display(), error = .1)]
    Dir(PathBuf, std::io::Error),
    /// Files cannot be created in its directory.
    #[error("cannot create files in its directory {path}: {errno}", path = .0.display(), errno = .1)]
    DirNotWritable(PathBuf, Errno),
}

/// Appends everything written to stderr from now on to `path` (created 0600 if missing).
pub fn redirect_stderr(path: &Path) -> Result<(), LogFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| LogFileError::Open {
            path: path.to_path_buf(),
            error,
        })?;
    // dup2 onto fd 2 keeps the file open after `file` is dropped.
    nix::unistd::dup2(file.as_raw_fd(), libc::STDERR_FILENO)
        .map(|_| ())
        .map_err(|errno| LogFileError::Redirect {
            path: path.to_path_buf(),
            errno,
        })
}

/// Whether [`redirect_stderr`] could open `path`, checked without creating or changing it (for
/// `cni-install`, before it puts a `log_file` into the node's conflist: a file `ADD` cannot
/// open fails every pod's `ADD`). An existing file is opened for appending and closed; a
/// missing one needs its directory to exist and be writable.
pub fn check_openable(path: &Path) -> Result<(), LogFileError> {
    use nix::unistd::{access, AccessFlags};
    let refuse = |why| Err(LogFileError::Unopenable(why));
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return refuse(Unopenable::IsDirectory(path.into())),
        Ok(_) => {
            return match OpenOptions::new().append(true).open(path) {
                Ok(_) => Ok(()),
                Err(e) => refuse(Unopenable::Open(path.into(), e)),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return refuse(Unopenable::Open(path.into(), e)),
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return refuse(Unopenable::DirNotDirectory(dir.into())),
        Err(e) => return refuse(Unopenable::Dir(dir.into(), e)),
    }
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK)
        .or_else(|e| refuse(Unopenable::DirNotWritable(dir.into(), e)))
}
