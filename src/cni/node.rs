//! `meshinit cni-install` on the node, after its flags are checked: the binary in the bin
//! directory and meshinit's entry in the runtime's conflist, put there once or, with `--wait`,
//! kept there as the node's files change (a primary CNI rewriting or replacing its conflist,
//! a new first conflist, none yet, the binary deleted) until SIGTERM takes the entry out.
//! Every event is answered from the directory as it is now, never from the event alone, so
//! merged or lost events cannot mislead it, and its own writes find everything in place
//! (no write loop). Files are read, written and watched through `sys::cni_files`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::install::{self, Entry, First, Install};
use crate::config::LogLevel;
use crate::exit_code;
use crate::log::Log;
use crate::sys::cni_files::{self, Change, FileEvent, Replaced, Wake, Watch, Watched};

/// Attempts at one edit when another writer keeps rewriting the file between our read and our
/// write; after that the edit waits for that writer's next event.
const ATTEMPTS: usize = 3;

/// What one look at the conf directory did (for the log line and the exit code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// The entry was already in place: nothing written.
    InPlace,
    /// The entry was in place as meshinit itself last wrote it (the event was our own write).
    OwnWrite,
    /// The entry was written into the first conflist.
    Inserted,
    /// The first conflist changed: the entry was written into the new one and taken out of the
    /// old one.
    Moved,
    /// No conflist to edit yet (none, or the first cannot chain): waiting for one.
    Waiting,
    /// The conflist could not be used as it is (not JSON, no plugin list, unreadable, rewritten
    /// during every attempt): left as it is, looked at again on its next change.
    Retry,
    /// A write into the conf directory failed.
    Failed,
}

impl Action {
    /// The JSON log's `action` value.
    fn name(self) -> &'static str {
        match self {
            Action::InPlace => "none",
            Action::OwnWrite => "own_write",
            Action::Inserted => "inserted",
            Action::Moved => "moved",
            Action::Waiting => "waiting",
            Action::Retry => "retry",
            Action::Failed => "failed",
        }
    }

    fn level(self) -> LogLevel {
        match self {
            Action::Retry => LogLevel::Warn,
            Action::Failed => LogLevel::Error,
            _ => LogLevel::Info,
        }
    }
}

/// One look's result: what was done, said in words, and the conflist concerned.
struct Outcome {
    action: Action,
    detail: String,
    conflist: Option<PathBuf>,
}

/// The installer's state between events.
struct Node<'a> {
    install: &'a Install,
    /// The conflist holding meshinit's entry (written or found there): where it moves from when
    /// another file becomes the first, and where SIGTERM takes it out.
    current: Option<PathBuf>,
    /// meshinit's last conflist write, to recognise its own inotify event in the log.
    last_written: Option<(PathBuf, String)>,
    /// When the runtime's configuration is a symbolic link: the file it leads to, which the
    /// watch follows (the CNI rewrites it there, not in the conf directory).
    follow: Option<PathBuf>,
}

impl Node<'_> {
    /// Puts meshinit's entry into the conflist the runtime uses now, if it is not there.
    fn reconcile(&mut self) -> Outcome {
        for _ in 0..ATTEMPTS {
            if let Some(done) = self.look() {
                return done;
            }
        }
        outcome(
            Action::Retry,
            format!(
                "the conflist changed during each of {ATTEMPTS} attempts to edit it: looked at again when it next changes"
            ),
            None,
        )
    }

    /// One attempt: `None` when the conflist changed between our read and our write (or went
    /// away after the listing), so the next attempt starts again from the listing.
    fn look(&mut self) -> Option<Outcome> {
        let dir = &self.install.conf_dir;
        let name = match &self.install.conflist {
            Some(name) => name.clone(),
            None => match cni_files::names(dir).map(|names| install::first_config(&names)) {
                Ok(First::Conflist(name)) => name,
                Ok(First::None) => {
                    return Some(self.waiting(format!(
                        "no CNI configuration in {} yet (the cluster's CNI writes one)",
                        dir.display()
                    )))
                }
                Ok(First::NotChainable(name)) => {
                    return Some(self.waiting(format!(
                        "the node's first CNI configuration {name} is not a .conflist: a single plugin cannot be chained (name one with --conflist)"
                    )))
                }
                Err(e) => return Some(outcome(Action::Retry, e, None)),
            },
        };
        let target = dir.join(&name);
        self.follow = cni_files::link_target(&target);
        let text = match cni_files::read_config(&target) {
            Ok(Some(text)) => text,
            Ok(None) if self.install.conflist.is_some() => {
                return Some(self.waiting(format!("{} does not exist yet", target.display())))
            }
            // Gone since the listing.
            Ok(None) => return None,
            Err(e) => return Some(outcome(Action::Retry, e, Some(target))),
        };
        let state = match install::entry(&text, &self.install.plugin) {
            Ok(state) => state,
            Err(e) => {
                let detail = format!(
                    "{} is not a usable conflist ({e}): left as it is, looked at again when it next changes",
                    target.display()
                );
                return Some(outcome(Action::Retry, detail, Some(target)));
            }
        };
        let moved_from = self.current.clone().filter(|old| *old != target);
        if state == Entry::InPlace {
            let own = self.last_written.as_ref() == Some(&(target.clone(), text));
            self.current = Some(target.clone());
            return Some(match moved_from {
                Some(old) => self.moved(&old, &target, "meshinit's entry was already there"),
                None if own => outcome(
                    Action::OwnWrite,
                    format!(
                        "meshinit's entry in {} as meshinit wrote it: nothing to do",
                        target.display()
                    ),
                    Some(target),
                ),
                None => outcome(
                    Action::InPlace,
                    format!("{}: {}, nothing to do", target.display(), state.describe()),
                    Some(target),
                ),
            });
        }
        let edited = match install::with_plugin(&text, &self.install.plugin) {
            Ok(edited) => edited,
            Err(e) => return Some(outcome(Action::Retry, e, Some(target))),
        };
        match cni_files::replace_if_unchanged(&target, &text, &edited) {
            Ok(Replaced::Written) => {}
            Ok(Replaced::ChangedMeanwhile) => return None,
            Err(e) => return Some(outcome(Action::Failed, e, Some(target))),
        }
        self.last_written = Some((target.clone(), edited));
        self.current = Some(target.clone());
        Some(match moved_from {
            Some(old) => self.moved(
                &old,
                &target,
                &format!("{name} had {}", state.describe_short()),
            ),
            None => outcome(
                Action::Inserted,
                format!(
                    "{}, so meshinit's entry was appended to {}{}",
                    state.describe(),
                    target.display(),
                    self.through_link()
                ),
                Some(target),
            ),
        })
    }

    /// For log lines about the configuration: where its link leads, if it is one.
    fn through_link(&self) -> String {
        match &self.follow {
            Some(real) => format!(" (a symbolic link: edited at {})", real.display()),
            None => String::new(),
        }
    }

    fn waiting(&mut self, why: String) -> Outcome {
        self.follow = None;
        let detail = if self.install.wait && self.install.conflist.is_some() {
            format!("{why}: waiting for it to appear")
        } else if self.install.wait {
            format!("{why}: waiting for a .conflist to appear")
        } else {
            format!("{why}; retry")
        };
        outcome(Action::Waiting, detail, None)
    }

    /// The entry is in `new` now: takes it out of `old`, the previous first conflist.
    fn moved(&mut self, old: &Path, new: &Path, why: &str) -> Outcome {
        let out = match take_out(old) {
            Ok(TakenOut::Done) => format!("taken out of {}", old.display()),
            Ok(TakenOut::NotThere) => format!("{} no longer had it", old.display()),
            Ok(TakenOut::Gone) => format!("{} is gone", old.display()),
            Err(e) => format!(
                "not taken out of {} ({e}; the runtime does not read it while {} sorts first)",
                old.display(),
                new.display()
            ),
        };
        outcome(
            Action::Moved,
            format!(
                "{} is the first conflist now ({why}): meshinit's entry is in it and {out}",
                new.display()
            ),
            Some(new.to_path_buf()),
        )
    }
}

fn outcome(action: Action, detail: String, conflist: Option<PathBuf>) -> Outcome {
    Outcome {
        action,
        detail,
        conflist,
    }
}

/// What [`take_out`] found.
enum TakenOut {
    /// The entry was there and is out now.
    Done,
    /// The file has no meshinit entry (the CNI rewrote it without): nothing written.
    NotThere,
    /// The file is gone.
    Gone,
}

/// Takes meshinit's entries out of `path`.
fn take_out(path: &Path) -> Result<TakenOut, String> {
    for _ in 0..ATTEMPTS {
        let Some(text) = cni_files::read_if_exists(path)? else {
            return Ok(TakenOut::Gone);
        };
        let Some(edited) =
            install::without_plugin(&text).map_err(|e| format!("{}: {e}", path.display()))?
        else {
            return Ok(TakenOut::NotThere);
        };
        if cni_files::replace_if_unchanged(path, &text, &edited)? == Replaced::Written {
            return Ok(TakenOut::Done);
        }
    }
    Err(format!(
        "{} changed during each of {ATTEMPTS} attempts to edit it",
        path.display()
    ))
}

/// One log line for one look: the events that caused it (none at start), what was found and
/// done; with `--log_as_json` the same as fields under `cni_install`.
fn report(log: &Log, conf_dir: &Path, events: &[(String, Vec<Change>)], outcome: &Outcome) {
    let what = if events.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = events
            .iter()
            .map(|(file, changes)| {
                let changes: Vec<&str> = changes.iter().map(|c| c.describe()).collect();
                format!("{file} {}", changes.join(", "))
            })
            .collect();
        format!("{}: ", list.join("; "))
    };
    let fields = json!({
        "events": events.iter().map(|(file, changes)| json!({
            "dir": conf_dir.display().to_string(),
            "file": file,
            "changes": changes.iter().map(|c| c.describe()).collect::<Vec<_>>(),
        })).collect::<Vec<Value>>(),
        "action": outcome.action.name(),
        "conflist": outcome.conflist.as_ref().map(|p| p.display().to_string()),
    });
    log.with_fields(
        outcome.action.level(),
        &format!("{what}{}", outcome.detail),
        "cni_install",
        &fields,
    );
}

/// The conf directory's events by file, in order, each change once (an atomic swap reports a
/// name both renamed away and in): only the runtime's configuration names, so temporary files,
/// meshinit's own among them, are not events.
fn conf_events(events: &[FileEvent]) -> Vec<(String, Vec<Change>)> {
    let mut by_file: Vec<(String, Vec<Change>)> = Vec::new();
    for event in events.iter().filter(|e| e.dir != Watched::Bin) {
        let file = match (&event.name, event.change) {
            // The followed link's target, whatever its name (a path here).
            (Some(name), _) if event.dir == Watched::Target => name.clone(),
            (None, _) if event.dir == Watched::Target => "(the link's target directory)".into(),
            (Some(name), _) if install::is_config_name(name) => name.clone(),
            (_, Change::Overflow) => "(all files)".to_string(),
            _ => continue,
        };
        match by_file.iter_mut().find(|(f, _)| *f == file) {
            Some((_, changes)) if !changes.contains(&event.change) => changes.push(event.change),
            Some(_) => {}
            None => by_file.push((file, vec![event.change])),
        }
    }
    by_file
}

/// Runs `cni-install` with checked flags; returns the exit code.
pub fn run(install: &Install) -> u8 {
    let log = Log {
        level: LogLevel::Info,
        json: install.log_as_json,
    };
    // Before anything is written: a SIGTERM that comes early waits for the signalfd, and no
    // change after the first look can be missed.
    let watch = if install.wait {
        match cni_files::block_termination()
            .and_then(|signals| Watch::new(&install.conf_dir, &install.bin_dir, &signals))
        {
            Ok(watch) => Some(watch),
            Err(e) => {
                log.error(&format!("cni-install: {e}"));
                return exit_code::FAILURE;
            }
        }
    } else {
        None
    };
    let bin = match cni_files::install_binary(&install.bin_dir) {
        Ok(bin) => bin,
        Err(e) => {
            log.error(&format!("cni-install: {e}"));
            return exit_code::FAILURE;
        }
    };
    let mut node = Node {
        install,
        current: None,
        last_written: None,
        follow: None,
    };
    let first = node.reconcile();
    let Some(mut watch) = watch else {
        return match first.action {
            Action::Inserted | Action::InPlace | Action::OwnWrite | Action::Moved => {
                let conflist = first
                    .conflist
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let done = if first.action == Action::Inserted {
                    "appended meshinit to the plugins of"
                } else {
                    "meshinit's entry was already in place in"
                };
                log.info(&format!("installed {}; {done} {conflist}", bin.display()));
                exit_code::SUCCESS
            }
            _ => {
                log.error(&format!("cni-install: {}", first.detail));
                exit_code::FAILURE
            }
        };
    };
    log.info(&format!(
        "installed {}; watching {} and {} until SIGTERM",
        bin.display(),
        install.conf_dir.display(),
        install.bin_dir.display()
    ));
    report(&log, &install.conf_dir, &[], &first);
    if first.action == Action::Failed {
        return exit_code::FAILURE;
    }
    loop {
        // A watch on the link's target added only now misses what the CNI wrote there since
        // the last look: one more look closes that window (a look that finds the entry in
        // place writes and says nothing).
        while follow(&log, &mut watch, &node) {
            let again = node.reconcile();
            if again.action != Action::InPlace {
                report(&log, &install.conf_dir, &[], &again);
            }
            if again.action == Action::Failed {
                return exit_code::FAILURE;
            }
        }
        let events = match watch.wait() {
            Ok(Wake::Terminate(signal)) => return terminate(&log, &node, &signal),
            Ok(Wake::Files(events)) => events,
            Err(e) => {
                log.error(&format!("cni-install: {e}"));
                return exit_code::FAILURE;
            }
        };
        let gone = events
            .iter()
            .find(|e| e.change == Change::DirGone && e.dir != Watched::Target);
        if let Some(gone) = gone {
            let dir = if gone.dir == Watched::Bin {
                &install.bin_dir
            } else {
                &install.conf_dir
            };
            log.error(&format!(
                "cni-install: {} was deleted, moved or unmounted and cannot be watched any more: exiting (the DaemonSet's pod restarts and installs again)",
                dir.display()
            ));
            return exit_code::FAILURE;
        }
        binary_events(&log, install, &events);
        let changes = conf_events(&events);
        if changes.is_empty() {
            continue;
        }
        let done = node.reconcile();
        report(&log, &install.conf_dir, &changes, &done);
        if done.action == Action::Failed {
            return exit_code::FAILURE;
        }
    }
}

/// The watch on where the runtime's configuration links to, after a look (a warning when that
/// directory cannot be watched: the link's own changes are still seen). True when a watch was
/// added just now.
fn follow(log: &Log, watch: &mut Watch, node: &Node) -> bool {
    watch.follow(node.follow.as_deref()).unwrap_or_else(|e| {
        log.warn(&format!(
            "cni-install: {e}; changes there are seen when the link itself changes"
        ));
        false
    })
}

/// The binary deleted or renamed away from the bin directory: copied back, since the runtime
/// would fail every pod's `ADD` (and `DEL`) without it.
fn binary_events(log: &Log, install: &Install, events: &[FileEvent]) {
    let ours = events.iter().filter(|e| {
        e.dir == Watched::Bin
            && e.name.as_deref() == Some("meshinit")
            && matches!(e.change, Change::Deleted | Change::RenamedAway)
    });
    for event in ours {
        let path = install.bin_dir.join("meshinit");
        let change = event.change.describe();
        let (level, detail, action) = if path.exists() {
            (
                LogLevel::Info,
                "another one is in its place: nothing to do".to_string(),
                "none",
            )
        } else {
            match cni_files::install_binary(&install.bin_dir) {
                Ok(_) => (LogLevel::Info, "copied it back".to_string(), "reinstalled"),
                Err(e) => (LogLevel::Error, e, "failed"),
            }
        };
        log.with_fields(
            level,
            &format!("{} {change}: {detail}", path.display()),
            "cni_install",
            &json!({
                "events": [{
                    "dir": install.bin_dir.display().to_string(),
                    "file": "meshinit",
                    "changes": [change],
                }],
                "action": action,
            }),
        );
    }
}

/// SIGTERM: meshinit's entry out of the conflist holding it, so new pods start without
/// capture from now on; the binary stays for the `DEL`s still due.
fn terminate(log: &Log, node: &Node, signal: &str) -> u8 {
    let Some(current) = &node.current else {
        log.info(&format!(
            "terminating ({signal}): no conflist holds meshinit's entry, nothing to take out"
        ));
        return exit_code::SUCCESS;
    };
    match take_out(current) {
        Ok(TakenOut::Done) => {
            log.info(&format!(
                "terminating ({signal}): took meshinit out of {}",
                current.display()
            ));
            exit_code::SUCCESS
        }
        Ok(TakenOut::NotThere) => {
            log.info(&format!(
                "terminating ({signal}): {} no longer has meshinit's entry, nothing to take out",
                current.display()
            ));
            exit_code::SUCCESS
        }
        Ok(TakenOut::Gone) => {
            log.info(&format!(
                "terminating ({signal}): {} is gone, nothing to take out",
                current.display()
            ));
            exit_code::SUCCESS
        }
        Err(e) => {
            log.error(&format!(
                "terminating ({signal}): cannot take meshinit out of the conflist: {e}"
            ));
            exit_code::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, change: Change) -> FileEvent {
        FileEvent {
            dir: Watched::Conf,
            name: Some(name.to_string()),
            change,
        }
    }

    #[test]
    fn events_are_grouped_by_configuration_file_and_temporary_files_skipped() {
        let events = [
            event(".10-k8s.conflist.meshinit-tmp", Change::Written),
            event(".10-k8s.conflist.meshinit-tmp", Change::RenamedAway),
            event("10-k8s.conflist", Change::RenamedIn),
            event("10-k8s.conflist", Change::RenamedAway),
            event("10-k8s.conflist", Change::RenamedIn),
            event("README", Change::Written),
            event("05-new.conf", Change::Deleted),
            FileEvent {
                dir: Watched::Bin,
                name: Some("meshinit".to_string()),
                change: Change::Deleted,
            },
        ];
        assert_eq!(
            conf_events(&events),
            [
                (
                    "10-k8s.conflist".to_string(),
                    vec![Change::RenamedIn, Change::RenamedAway]
                ),
                ("05-new.conf".to_string(), vec![Change::Deleted]),
            ]
        );
        let lost = [FileEvent {
            dir: Watched::Conf,
            name: None,
            change: Change::Overflow,
        }];
        assert_eq!(conf_events(&lost)[0].0, "(all files)");
    }
}
