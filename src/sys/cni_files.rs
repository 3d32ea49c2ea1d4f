//! The node's files that `meshinit cni-install` changes: the plugin binary in the CNI bin
//! directory and the conflist, each replaced atomically (written beside under a name no other
//! writer uses, then renamed) so a runtime reading them never sees half a file, a conflist only
//! if no one rewrote it meanwhile, and through a symbolic link where it is one (the link kept);
//! the conf directory listed as libcni lists it; and waiting, with `--wait`, for the next change
//! to those directories, or to where the conflist links to (inotify), or the pod's termination
//! signal (signalfd), all in one `poll`.

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

/// The names in `dir` the runtime may take for configuration files: every entry that is not
/// a directory itself, as libcni's `ConfFiles` lists them (by the entry's own type, so a
/// symbolic link counts whatever it leads to: a file, a directory, nothing).
pub fn names(dir: &Path) -> Result<Vec<String>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// A configuration file's text, read through a symbolic link as the runtime reads it; `None`
/// when there is no such name. A link leading nowhere or to a directory, or a name that is no
/// regular file, is an error saying so (the runtime cannot read it either).
pub fn read_config(path: &Path) -> Result<Option<String>, String> {
    let own = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let what = if own.file_type().is_symlink() {
        let to = fs::read_link(path).unwrap_or_default();
        format!(
            "{} is a symbolic link to {}, which",
            path.display(),
            to.display()
        )
    } else {
        format!("{}, which", path.display())
    };
    let unusable = |why: &str| {
        Err(format!(
            "{what} {why}: the runtime cannot read it as its configuration either"
        ))
    };
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(meta) if meta.is_dir() => return unusable("is a directory"),
        Ok(_) => return unusable("is not a regular file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return unusable("does not exist"),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    read_if_exists(path)
}

/// For a symbolic link, the file it leads to (all links followed), or, when it leads nowhere,
/// where its own target would be; `None` for anything else.
pub fn link_target(path: &Path) -> Option<PathBuf> {
    let to = fs::read_link(path).ok()?;
    Some(
        fs::canonicalize(path).unwrap_or_else(|_| match path.parent() {
            Some(dir) => dir.join(&to),
            None => to,
        }),
    )
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
    // A symbolic link (a CNI may link its conflist from elsewhere) is followed, as the runtime
    // reads through it: the file it leads to is replaced, in its own directory, and the link
    // stays, so the CNI's later rewrites of its file still reach the runtime.
    let path = match fs::canonicalize(path) {
        Ok(real) => real,
        // Gone (or a link leading nowhere) since it was read.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Replaced::ChangedMeanwhile)
        }
        Err(e) => return Err(format!("cannot write {}: {e}", path.display())),
    };
    let path = path.as_path();
    let failed = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    // The new version keeps the file's mode and owner (a CNI may keep its conflist 0600);
    // if the file is gone already, the re-read below finds that and nothing is swapped in.
    let keep = match fs::metadata(path) {
        Ok(meta) => Keep::from(&meta),
        Err(_) => Keep::DEFAULT,
    };
    let tmp = temp_beside(path, text, keep).map_err(|e| failed(&e))?;
    // From here on `tmp` is removed on every path out.
    let outcome = swap_in(path, &tmp, expected, text, race);
    let _ = fs::remove_file(&tmp);
    outcome.map_err(|e| failed(&e))
}

/// The swap of [`replace_between`], `tmp` holding `text`; `tmp` is left for the caller to
/// remove, whatever it names by then.
fn swap_in(
    path: &Path,
    tmp: &Path,
    expected: &str,
    text: &str,
    race: &dyn Fn(),
) -> Result<Replaced, String> {
    if fs::read_to_string(path).ok().as_deref() != Some(expected) {
        return Ok(Replaced::ChangedMeanwhile);
    }
    race();
    match renameat2(None, tmp, None, path, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => {}
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
            return fs::rename(tmp, path)
                .map(|()| Replaced::Written)
                .map_err(|e| e.to_string())
        }
        // Gone since the re-read: the other writer removed it.
        Err(Errno::ENOENT) => return Ok(Replaced::ChangedMeanwhile),
        Err(e) => return Err(e.to_string()),
    }
    // `tmp` now names what `path` held at the swap.
    if fs::read_to_string(tmp).ok().as_deref() == Some(expected) {
        return Ok(Replaced::Written);
    }
    match renameat2(None, tmp, None, path, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => {}
        // Removed since our swap: its remover had the last word, nothing to give back.
        Err(Errno::ENOENT) => return Ok(Replaced::ChangedMeanwhile),
        Err(e) => return Err(format!("cannot restore it after a concurrent rewrite: {e}")),
    }
    // What came back is ours, unless yet another rewrite landed after our swap: that one is
    // the newest, so it goes back in place (and the one it superseded is dropped).
    if fs::read_to_string(tmp).ok().as_deref() != Some(text) {
        let _ = renameat2(None, tmp, None, path, RenameFlags::RENAME_EXCHANGE);
    }
    Ok(Replaced::ChangedMeanwhile)
}

/// A new hidden file beside `path` (created with `O_EXCL`, so never one another installer, or
/// the CNI, is writing), holding `text` with `keep`'s mode and owner, on disk; its path. The
/// name is unique to this process and call: two installers never truncate each other's file
/// (which a runtime would then see empty once swapped in). Runtimes skip names without a
/// .conf/.conflist/.json suffix, and so does the watch.
fn temp_beside(path: &Path, text: &str, keep: Keep) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_file_name(format!(".{name}.meshinit-tmp-{}-{n}", std::process::id()));
        match write_new_file(&tmp, text, keep) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(()) => return Ok(tmp),
        }
    }
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

/// `text` in a new file at `path` (which must not exist: `AlreadyExists` then, and that file
/// is left alone), on disk before it is renamed anywhere, with `keep`'s mode and owner set
/// before the text is written (a 0600 conflist is never readable by others, not even beside
/// it).
fn write_new_file(path: &Path, text: &str, keep: Keep) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
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
    /// A symbolic link was made at this name (`ln -s`: created whole, never written).
    Linked,
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
            Change::Linked => "linked",
            Change::Overflow => "events lost (queue overflow)",
            Change::DirGone => "directory gone",
        }
    }
}

/// Where a change happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// The conf directory.
    Conf,
    /// The bin directory.
    Bin,
    /// The file a symbolic link in the conf directory leads to ([`Watch::follow`]), or its
    /// directory (for the directory's own events).
    Target,
}

/// One change in the conf or the bin directory, or to a followed link's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEvent {
    /// Where.
    pub dir: Watched,
    /// The file's name in the directory (none for the directory's own events); for
    /// [`Watched::Target`], the target's whole path.
    pub name: Option<String>,
    /// What happened to it.
    pub change: Change,
}

/// What [`Watch::wait`] woke up for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The pod is being stopped (the signal's name).
    Terminate(String),
    /// These changes (one read of the queue: a batch, in the order they happened).
    Files(Vec<FileEvent>),
}

/// The conf directory and the bin directory under inotify, and the termination signals as a
/// signalfd: `wait` sleeps in one `poll` until either has something (no polling of files, no
/// timers), so an idle node costs nothing. When the runtime's configuration is a symbolic link
/// into another directory, that directory is watched too ([`Watch::follow`]).
pub struct Watch {
    inotify: Inotify,
    signals: SignalFd,
    conf: WatchDescriptor,
    bin: WatchDescriptor,
    conf_dir: PathBuf,
    /// The two directories as their real paths, which a followed directory must not be (one
    /// directory has one watch: adding it again would replace the mask).
    conf_real: PathBuf,
    bin_real: PathBuf,
    /// The followed link target: its directory, its name, and that directory's watch (`None`
    /// when it is the conf directory, watched already, or could not be watched).
    target: Option<(PathBuf, String, Option<WatchDescriptor>)>,
}

/// What a followed link target's directory is watched for: the target written in place,
/// renamed over or away, deleted (as the conf directory is watched), or the directory gone.
const TARGET_MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

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
        // Not IN_MODIFY: a file being written is looked at once it is closed. IN_CREATE only
        // for symbolic links (which are never written); `drain` drops the others.
        let conf = add(
            conf_dir,
            AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_CREATE,
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
        let real = |dir: &Path| fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Ok(Watch {
            inotify,
            signals,
            conf,
            bin,
            conf_dir: conf_dir.to_path_buf(),
            conf_real: real(conf_dir),
            bin_real: real(bin_dir),
            target: None,
        })
    }

    /// Watches `target` (the file the runtime's configuration links to, see [`link_target`])
    /// from now on instead of the one followed before; `None`: none. An error says the
    /// target's directory cannot be watched (it does not exist, say): its changes are then
    /// seen only through the conf directory's (the link replaced or removed). Reported once
    /// per target. `Ok(true)`: a watch was added just now, so a change made at the target
    /// before it is not an event — the caller looks once more; `Ok(false)`: nothing new.
    pub fn follow(&mut self, target: Option<&Path>) -> Result<bool, String> {
        let wanted = target.and_then(|t| {
            let dir = t.parent()?;
            let name = t.file_name()?.to_string_lossy().into_owned();
            Some((
                fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
                name,
            ))
        });
        let now = self.target.as_ref().map(|(d, n, _)| (d.clone(), n.clone()));
        if wanted == now {
            return Ok(false);
        }
        if let Some((_, _, Some(wd))) = self.target.take() {
            let _ = self.inotify.rm_watch(wd);
        }
        let Some((dir, name)) = wanted else {
            return Ok(false);
        };
        if dir == self.conf_real || dir == self.bin_real {
            // Already watched since the start, with every change in it.
            self.target = Some((dir, name, None));
            return Ok(false);
        }
        let added = self.inotify.add_watch(&dir, TARGET_MASK);
        self.target = Some((dir.clone(), name, added.as_ref().ok().copied()));
        added.map(|_| true).map_err(|e| {
            format!(
                "cannot watch {} (where the conflist's link leads): {e}",
                dir.display()
            )
        })
    }

    /// Whether an event of watch `wd` about `name` concerns the followed target.
    fn is_target(&self, wd: WatchDescriptor, name: Option<&str>) -> bool {
        let Some((dir, target, followed)) = &self.target else {
            return false;
        };
        match followed {
            Some(own) if *own == wd => name.is_none() || name == Some(target.as_str()),
            Some(_) => false,
            None => wd == self.conf && *dir == self.conf_real && name == Some(target.as_str()),
        }
    }

    /// Blocks until the directories change or a termination signal comes (which wins when
    /// both are ready: the pod is going away).
    pub fn wait(&mut self) -> Result<Wake, String> {
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
    fn drain(&mut self) -> Result<Vec<FileEvent>, String> {
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
                } else if mask.contains(AddWatchFlags::IN_CREATE) {
                    // A file created to be written is looked at once it is closed; only a
                    // link, never written, is a change now.
                    let linked = event.name.as_ref().is_some_and(|n| {
                        fs::symlink_metadata(self.conf_dir.join(n))
                            .is_ok_and(|m| m.file_type().is_symlink())
                    });
                    if !linked {
                        continue;
                    }
                    Change::Linked
                } else {
                    continue;
                };
                let name = event.name.map(|n| n.to_string_lossy().into_owned());
                let dir = if change == Change::Overflow {
                    Watched::Conf
                } else if self.is_target(event.wd, name.as_deref()) {
                    Watched::Target
                } else if event.wd == self.conf {
                    Watched::Conf
                } else if event.wd == self.bin {
                    Watched::Bin
                } else {
                    // A watch given up (a target no longer followed).
                    continue;
                };
                let name = match (dir, &self.target) {
                    (Watched::Target, Some((target_dir, target, _))) => Some(
                        match name {
                            Some(_) => target_dir.join(target),
                            None => target_dir.clone(),
                        }
                        .display()
                        .to_string(),
                    ),
                    _ => name,
                };
                if dir == Watched::Target && change == Change::DirGone {
                    // Its watch is gone with it: the next `follow` starts afresh.
                    self.target = None;
                }
                out.push(FileEvent { dir, name, change });
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

    #[test]
    fn names_are_every_entry_but_directories_links_included_as_libcni_lists_them() {
        let dir = std::env::temp_dir().join(format!("meshinit-names-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub.conflist")).unwrap();
        fs::write(dir.join("20-file.conflist"), "{}").unwrap();
        let link = |to: &str, name: &str| std::os::unix::fs::symlink(to, dir.join(name)).unwrap();
        link("20-file.conflist", "10-link.conflist");
        link("sub.conflist", "11-dirlink.conflist");
        link("nowhere", "12-dangling.conflist");
        let mut names = names(&dir).unwrap();
        names.sort();
        assert_eq!(
            names,
            [
                "10-link.conflist",
                "11-dirlink.conflist",
                "12-dangling.conflist",
                "20-file.conflist"
            ]
        );
        assert_eq!(
            read_config(&dir.join("10-link.conflist"))
                .unwrap()
                .as_deref(),
            Some("{}")
        );
        for (name, says) in [
            ("11-dirlink.conflist", "a directory"),
            ("12-dangling.conflist", "does not exist"),
        ] {
            let err = read_config(&dir.join(name)).unwrap_err();
            assert!(err.contains("symbolic link") && err.contains(says), "{err}");
        }
        assert_eq!(read_config(&dir.join("none.conflist")).unwrap(), None);
        assert_eq!(link_target(&dir.join("20-file.conflist")), None);
        assert_eq!(
            link_target(&dir.join("10-link.conflist")),
            Some(fs::canonicalize(dir.join("20-file.conflist")).unwrap())
        );
        assert_eq!(
            link_target(&dir.join("12-dangling.conflist")),
            Some(dir.join("nowhere"))
        );
        // Replaced through the link: the link stays, its target has the new text.
        assert_eq!(
            replace_if_unchanged(&dir.join("10-link.conflist"), "{}", "[]").unwrap(),
            Replaced::Written
        );
        assert!(fs::symlink_metadata(dir.join("10-link.conflist"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(dir.join("20-file.conflist")).unwrap(),
            "[]"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
