//! The node's files that `meshinit cni-install` changes: the plugin binary in the CNI bin
//! directory and the conflist, each replaced atomically (written beside, then renamed) so a
//! runtime reading them never sees half a file, a conflist only if no one rewrote it meanwhile;
//! and waiting, with `--wait`, for the next change to those directories (inotify) or the pod's
//! termination signal (signalfd), both in one `poll`.

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::signal::SigSet;
use nix::sys::signalfd::SignalFd;

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

/// A file's text, `None` when there is no such file.
pub fn read_if_exists(path: &Path) -> Result<Option<String>, String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// What [`replace_if_unchanged`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replaced {
    /// The new text is in place.
    Written,
    /// The file no longer held the text the edit was made from (the CNI rewrote or removed
    /// it meanwhile): nothing of the new text is left, the other writer's file is in place.
    ChangedMeanwhile,
}

/// Replaces `path` with `text` only while it still holds `expected` (what the edit was made
/// from), so a rewrite by the node's CNI between our read and our write is never clobbered:
/// the new text is written beside, the file re-read, then the two swapped atomically
/// (`RENAME_EXCHANGE`); if what was swapped out is not `expected` either (a rewrite landed in
/// between), it is swapped back. A runtime reading the file sees one whole version or the other.
/// On a file system without `RENAME_EXCHANGE`, a plain rename after the re-read.
pub fn replace_if_unchanged(path: &Path, expected: &str, text: &str) -> Result<Replaced, String> {
    replace_between(path, expected, text, &|| {})
}

/// [`replace_if_unchanged`], running `race` between the re-read and the swap (where the tests
/// put the other writer's rewrite).
fn replace_between(
    path: &Path,
    expected: &str,
    text: &str,
    race: &dyn Fn(),
) -> Result<Replaced, String> {
    let tmp = temp_beside(path);
    let failed = |e: &dyn std::fmt::Display| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    };
    // The new version keeps the file's mode and owner (a CNI may keep its conflist 0600);
    // if the file is gone already, the re-read below finds that and nothing is swapped in.
    let keep = match fs::metadata(path) {
        Ok(meta) => Keep::from(&meta),
        Err(_) => Keep::DEFAULT,
    };
    write_file(&tmp, text, keep).map_err(|e| failed(&e))?;
    if fs::read_to_string(path).ok().as_deref() != Some(expected) {
        let _ = fs::remove_file(&tmp);
        return Ok(Replaced::ChangedMeanwhile);
    }
    race();
    match renameat2(None, &tmp, None, path, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => {}
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
            return fs::rename(&tmp, path)
                .map(|()| Replaced::Written)
                .map_err(|e| failed(&e))
        }
        // Gone since the re-read: the other writer removed it.
        Err(Errno::ENOENT) => {
            let _ = fs::remove_file(&tmp);
            return Ok(Replaced::ChangedMeanwhile);
        }
        Err(e) => return Err(failed(&e)),
    }
    // `tmp` now names what `path` held at the swap.
    if fs::read_to_string(&tmp).ok().as_deref() == Some(expected) {
        let _ = fs::remove_file(&tmp);
        return Ok(Replaced::Written);
    }
    let back = renameat2(None, &tmp, None, path, RenameFlags::RENAME_EXCHANGE);
    // What came back is ours, unless yet another rewrite landed after our swap: that one is
    // the newest, so it goes back in place (and the one it superseded is dropped).
    if back.is_ok() && fs::read_to_string(&tmp).ok().as_deref() != Some(text) {
        let _ = renameat2(None, &tmp, None, path, RenameFlags::RENAME_EXCHANGE);
    }
    let _ = fs::remove_file(&tmp);
    back.map(|()| Replaced::ChangedMeanwhile).map_err(|e| {
        format!(
            "cannot restore {} after a concurrent rewrite: {e}",
            path.display()
        )
    })
}

/// The hidden name beside `path` that its next version is written to (runtimes skip names
/// without a .conf/.conflist/.json suffix, and so does the watch).
fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{}.meshinit-tmp", name.unwrap_or_default()))
}

/// The mode and owner a conflist's next version is given: the ones of the file it replaces.
#[derive(Clone, Copy)]
struct Keep {
    mode: u32,
    owner: Option<(u32, u32)>,
}

impl Keep {
    /// For a file with nothing to keep: 0644, owned by whoever runs meshinit.
    const DEFAULT: Keep = Keep {
        mode: 0o644,
        owner: None,
    };

    fn from(meta: &fs::Metadata) -> Keep {
        Keep {
            mode: meta.mode() & 0o7777,
            owner: Some((meta.uid(), meta.gid())),
        }
    }
}

/// `text` in a new file at `path`, on disk before it is renamed anywhere, with `keep`'s mode
/// and owner set before the text is written (a 0600 conflist is never readable by others, not
/// even beside it).
fn write_file(path: &Path, text: &str, keep: Keep) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(keep.mode)
        .open(path)?;
    if let Some((uid, gid)) = keep.owner {
        let meta = file.metadata()?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            // Giving a file away takes CAP_CHOWN (the example DaemonSet drops it); without it
            // the new version is the installer's own, as a file it creates always was.
            match std::os::unix::fs::fchown(&file, Some(uid), Some(gid)) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                other => other?,
            }
        }
    }
    // After the owner: chown clears set-id bits, and the umask narrowed the mode at creation.
    file.set_permissions(fs::Permissions::from_mode(keep.mode))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// What changed in a watched directory, as inotify reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A file was closed after writing (written in place, or created and written).
    Written,
    /// A file was renamed into this name (how CNIs write atomically), replacing any file there.
    RenamedIn,
    /// The file was renamed away.
    RenamedAway,
    /// The file was deleted.
    Deleted,
    /// The kernel's event queue overflowed: anything may have changed.
    Overflow,
    /// The directory itself was deleted, moved or unmounted: it can no longer be watched.
    DirGone,
}

impl Change {
    /// For log lines.
    pub fn describe(self) -> &'static str {
        match self {
            Change::Written => "written",
            Change::RenamedIn => "replaced (renamed in)",
            Change::RenamedAway => "renamed away",
            Change::Deleted => "deleted",
            Change::Overflow => "events lost (queue overflow)",
            Change::DirGone => "directory gone",
        }
    }
}

/// One change in the conf or the bin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEvent {
    /// In the bin directory (else the conf directory).
    pub in_bin_dir: bool,
    /// The file's name in the directory (none for the directory's own events).
    pub name: Option<String>,
    /// What happened to it.
    pub change: Change,
}

/// What [`Watch::next`] woke up for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The pod is being stopped (the signal's name).
    Terminate(String),
    /// These changes (one read of the queue: a batch, in the order they happened).
    Files(Vec<FileEvent>),
}

/// The conf directory and the bin directory under inotify, and the termination signals as a
/// signalfd: `next` sleeps in one `poll` until either has something (no polling of files, no
/// timers), so an idle node costs nothing.
pub struct Watch {
    inotify: Inotify,
    signals: SignalFd,
    conf: WatchDescriptor,
    bin: WatchDescriptor,
}

impl Watch {
    /// Starts watching; `signals` must already be blocked ([`block_termination`]), so they
    /// queue for the signalfd instead of killing the process.
    pub fn new(conf_dir: &Path, bin_dir: &Path, signals: &SigSet) -> Result<Watch, String> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| format!("cannot start inotify: {e}"))?;
        let gone = AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF;
        let add = |dir: &Path, mask: AddWatchFlags| {
            inotify
                .add_watch(dir, mask | gone | AddWatchFlags::IN_ONLYDIR)
                .map_err(|e| format!("cannot watch {}: {e}", dir.display()))
        };
        // Not IN_CREATE or IN_MODIFY: a file being written is looked at once it is closed.
        let conf = add(
            conf_dir,
            AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_DELETE,
        )?;
        let bin = add(
            bin_dir,
            AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_DELETE,
        )?;
        // One directory has one watch, whose mask the second call replaced.
        if bin == conf {
            return Err(format!(
                "--bin-dir and --conf-dir are the same directory ({})",
                conf_dir.display()
            ));
        }
        let signals = SignalFd::new(signals).map_err(|e| format!("cannot open a signalfd: {e}"))?;
        Ok(Watch {
            inotify,
            signals,
            conf,
            bin,
        })
    }

    /// Blocks until the directories change or a termination signal comes (which wins when
    /// both are ready: the pod is going away).
    pub fn next(&self) -> Result<Wake, String> {
        loop {
            let mut fds = [
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("waiting for changes or SIGTERM: {e}")),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[0]) {
                if let Some(info) = self
                    .signals
                    .read_signal()
                    .map_err(|e| format!("reading the signalfd: {e}"))?
                {
                    let name = nix::sys::signal::Signal::try_from(info.ssi_signo as i32)
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_else(|_| format!("signal {}", info.ssi_signo));
                    return Ok(Wake::Terminate(name));
                }
            }
            if ready(&fds[1]) {
                let events = self.drain()?;
                if !events.is_empty() {
                    return Ok(Wake::Files(events));
                }
            }
        }
    }

    /// Everything queued now.
    fn drain(&self) -> Result<Vec<FileEvent>, String> {
        let mut out = Vec::new();
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => return Ok(out),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("reading inotify events: {e}")),
            };
            for event in events {
                let mask = event.mask;
                let change = if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    Change::Overflow
                } else if mask.intersects(
                    AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF
                        | AddWatchFlags::IN_UNMOUNT
                        | AddWatchFlags::IN_IGNORED,
                ) {
                    Change::DirGone
                } else if mask.contains(AddWatchFlags::IN_CLOSE_WRITE) {
                    Change::Written
                } else if mask.contains(AddWatchFlags::IN_MOVED_TO) {
                    Change::RenamedIn
                } else if mask.contains(AddWatchFlags::IN_MOVED_FROM) {
                    Change::RenamedAway
                } else if mask.contains(AddWatchFlags::IN_DELETE) {
                    Change::Deleted
                } else {
                    continue;
                };
                if change != Change::Overflow && event.wd != self.conf && event.wd != self.bin {
                    continue;
                }
                out.push(FileEvent {
                    in_bin_dir: event.wd == self.bin,
                    name: event.name.map(|n| n.to_string_lossy().into_owned()),
                    change,
                });
            }
        }
    }
}

/// SIGTERM and SIGINT held back from now on (so one that comes early is not lost or fatal),
/// to be read from [`Watch`]'s signalfd.
pub fn block_termination() -> Result<nix::sys::signal::SigSet, String> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block()
        .map_err(|e| format!("cannot block SIGTERM: {e}"))?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflist_is_replaced_only_while_it_holds_what_the_edit_was_made_from() {
        let dir = std::env::temp_dir().join(format!("meshinit-replace-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("10-k8s.conflist");
        fs::write(&path, "A").unwrap();
        assert_eq!(
            replace_if_unchanged(&path, "A", "B").unwrap(),
            Replaced::Written
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "B");
        // Made from "A", but the file holds "B" now: the other writer's "B" stays.
        assert_eq!(
            replace_if_unchanged(&path, "A", "C").unwrap(),
            Replaced::ChangedMeanwhile
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "B");
        fs::remove_file(&path).unwrap();
        assert_eq!(
            replace_if_unchanged(&path, "B", "C").unwrap(),
            Replaced::ChangedMeanwhile
        );
        assert!(!path.exists());
        let left: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rewrite_between_the_re_read_and_the_swap_is_swapped_back_in() {
        let dir = std::env::temp_dir().join(format!("meshinit-race-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("10-k8s.conflist");
        // The other writer renames its new version over the file, as CNIs do.
        let rewrite = |text: &str| {
            let tmp = dir.join(".cni-tmp");
            fs::write(&tmp, text).unwrap();
            fs::rename(&tmp, &path).unwrap();
        };
        fs::write(&path, "A").unwrap();
        let outcome = replace_between(&path, "A", "A+meshinit", &|| rewrite("B")).unwrap();
        assert_eq!(outcome, Replaced::ChangedMeanwhile);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "B",
            "the rewrite is kept"
        );
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("10-k8s.conflist")]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
