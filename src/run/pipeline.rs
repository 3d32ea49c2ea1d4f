//! One pass of the pipeline for a mode that looks at the namespace: prepare (privileges, the
//! namespace lock, the group database), observe, decide, then execute — or, for `--check`
//! and the dry run of a cleanup, report the decision without executing anything.

use std::collections::BTreeMap;

use caps::Capability;

use crate::config::{BackendChoice, Capture, InterceptMode, IptablesVariant, RunOptions};
use crate::driver::nf_tables::{NfTables, NftError};
use crate::driver::routing;
use crate::driver::xtables::XtablesLock;
use crate::engine::decide::{self, family_index, Expected, Full, Input};
use crate::engine::error::{ApplyError, Precondition, Report};
use crate::engine::inventory;
use crate::engine::mode::Mode;
use crate::engine::observe::{observe, Ask};
use crate::execute::xt_shells;
use crate::execute::{execute, Drivers};
use crate::log::Log;
use crate::plan::{self, Family, Plan};
use crate::render::iptables_save::{expected_tables, ExpectedError};
use crate::render::nft_ruleset::Ruleset;
use crate::sys::groups::{self, Groups};
use crate::sys::process::Runner;
use crate::sys::transient::Transient;
use crate::sys::{lock, privileges};

/// The capabilities the iptables tools need (NET_RAW for the legacy variant's sockets).
const IPTABLES_CAPS: &[Capability] = &[Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];
/// nf_tables and rtnetlink need only NET_ADMIN.
const NETLINK_CAPS: &[Capability] = &[Capability::CAP_NET_ADMIN];

/// The backend that installs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The iptables tools (`*-save`, `*-restore --noflush`), per family.
    Iptables,
    /// nf_tables over netlink, one atomic batch for both families.
    Nftables,
}

/// Which backend `--backend auto` means on this machine, and why: iptables (Istio's default)
/// unless no iptables tool is installed and the kernel answers nf_tables requests.
pub fn resolve_backend(choice: BackendChoice, runner: &dyn Runner) -> (Backend, String) {
    match choice {
        BackendChoice::Iptables => (Backend::Iptables, "chosen with --backend".to_string()),
        BackendChoice::Nftables => (
            Backend::Nftables,
            "chosen with --native-nftables or --backend".to_string(),
        ),
        BackendChoice::Auto => {
            let tools = ["iptables-nft-save", "iptables-legacy-save"];
            if tools.iter().any(|t| runner.installed(t)) {
                return (
                    Backend::Iptables,
                    "Istio's default, as iptables tools are installed".to_string(),
                );
            }
            match NfTables::open().and_then(|mut n| n.inet_tables()) {
                Ok(_) => (
                    Backend::Nftables,
                    "no iptables tool is installed and the kernel has nf_tables".to_string(),
                ),
                // Without CAP_NET_ADMIN (a dry run as a user) nfnetlink refuses every request
                // before nf_tables sees it, so the kernel cannot be asked. The run that
                // installs is privileged and finds no tool either: it goes native, so that is
                // what a dry run shows, saying it assumed.
                Err(NftError::Rejected { errno, .. } | NftError::Io { errno, .. })
                    if errno == nix::errno::Errno::EPERM =>
                {
                    (
                        Backend::Nftables,
                        "no iptables tool is installed; nf_tables assumed, as asking the kernel needs CAP_NET_ADMIN"
                            .to_string(),
                    )
                }
                Err(e) => (
                    Backend::Iptables,
                    format!(
                        "no iptables tool is installed, and nf_tables does not answer either: {e}"
                    ),
                ),
            }
        }
    }
}

/// Installs the plan (`ruleset` given: natively with nf_tables, built once by the caller;
/// else with iptables). Rules of ours in another place are refused like drift; with
/// `--reconcile` the plan is installed first and they are removed after.
pub fn apply(
    capture: &Capture,
    plan: &Plan,
    ruleset: Option<&Ruleset>,
    opts: &RunOptions,
    runner: &(dyn Runner + Sync),
    log: &Log,
) -> Result<Report, ApplyError> {
    let native = ruleset.is_some();
    let caps = if native {
        reading_caps(runner)
    } else {
        IPTABLES_CAPS
    };
    let (mut netns, groups) = prepare(opts, caps)?;
    // The variant probe and the writes make iptables-nft create tables and base chains that
    // stay, empty, after a failure: noted now, deleted again if this run fails.
    let shells = (!native).then(xt_shells::Snapshot::read);
    let result = (|| {
        let full = || full_expected(capture, &|name: &str| resolve_group(&groups, name));
        let decision =
            observe_and_decide(plan, ruleset, &groups, opts, Mode::of(opts), &full, runner)?;
        let drivers = Drivers {
            runner,
            lock: xtables_lock(opts, &mut netns),
            log,
            native: ruleset.map(|r| (r, &groups)),
        };
        execute(decision, &drivers)
    })();
    match shells {
        Some(shells) => result.map_err(|e| shells.after_failure(e, log)),
        None => result,
    }
}

/// `--check`: the same observation and decision with the mode that reports, executing
/// nothing: the differences from the plan (empty when everything is in place). Reads every
/// place and never probes, so it is safe as a readiness check.
pub fn check(
    plan: &Plan,
    ruleset: Option<&Ruleset>,
    opts: &RunOptions,
    runner: &(dyn Runner + Sync),
    log: &Log,
) -> Result<Vec<decide::Difference>, ApplyError> {
    let groups = load_groups()?;
    // The removals `full` is for are never decided by --check.
    let none = || Ok(Default::default());
    let decision = observe_and_decide(plan, ruleset, &groups, opts, Mode::Check, &none, runner)?;
    for note in &decision.notes {
        match note {
            decide::Note::Info(line) => log.info(line),
            decide::Note::Warn(line) => log.warn(line),
        }
    }
    Ok(decision.differences)
}

/// One read of every place the plan may be in, and the decision for `mode` from it: what an
/// install and `--check` share (cleanup reads and decides for every configuration instead).
fn observe_and_decide(
    plan: &Plan,
    ruleset: Option<&Ruleset>,
    groups: &Groups,
    opts: &RunOptions,
    mode: Mode,
    full: &dyn Fn() -> Full,
    runner: &(dyn Runner + Sync),
) -> Result<decide::Decision, ApplyError> {
    let native = ruleset.is_some();
    let resolve = |name: &str| resolve_group(groups, name);
    let expected = planned_expected(plan, &resolve, !native);
    let ask = Ask {
        plan,
        expected: &expected,
        ruleset,
        groups,
        forced: opts.force_iptables_binary,
    };
    let seen = observe(&ask, mode, native, runner, None);
    let input = Input {
        plan,
        observed: &seen,
        forced: opts.force_iptables_binary,
        resolve: &resolve,
        expected: &expected,
        full,
    };
    decide::decide(&input, mode, native)
}

/// Removes everything of ours from every place it is found in, whatever this run's backend
/// or IPv6 setting; refuses, changing nothing, when a place that may hold ours cannot be read.
pub fn cleanup(
    capture: &Capture,
    opts: &RunOptions,
    runner: &(dyn Runner + Sync),
    log: &Log,
) -> Result<Report, ApplyError> {
    let (mut netns, groups) = prepare(opts, reading_caps(runner))?;
    let cleanup = Mode::Cleanup { validate: false };
    let forced = opts.force_iptables_binary;
    let decision = observe_and_decide_cleanup(capture, &groups, cleanup, forced, runner)?;
    let drivers = Drivers {
        runner,
        lock: xtables_lock(opts, &mut netns),
        log,
        native: None,
    };
    execute(decision, &drivers)
}

/// `--dry-run --cleanup-only`: the cleanup's decision for this namespace, printed; read-only.
pub fn cleanup_preview(
    capture: &Capture,
    runner: &(dyn Runner + Sync),
) -> Result<String, ApplyError> {
    privileges::require_capabilities(reading_caps(runner))
        .map_err(|e| ApplyError::Precondition(Precondition::DryRunCapabilities(e)))?;
    let groups = load_groups()?;
    let decision = observe_and_decide_cleanup(capture, &groups, Mode::DryRunCleanup, None, runner)?;
    Ok(decide::preview(&decision))
}

/// One read of every place and the cleanup's decision from it, for the cleanup (`mode`
/// `Cleanup`) and its dry run (`DryRunCleanup`) alike. Ours is looked for as every
/// configuration of this capture would have it (both families, whatever `--ipv6` says now).
fn observe_and_decide_cleanup(
    capture: &Capture,
    groups: &Groups,
    mode: Mode,
    forced: Option<IptablesVariant>,
    runner: &(dyn Runner + Sync),
) -> Result<decide::Decision, ApplyError> {
    let resolve = |name: &str| resolve_group(groups, name);
    let full = full_expected(capture, &resolve);
    let every_object = routing::objects(&plan::plan(&Capture {
        ipv6: true,
        ..capture.clone()
    }));
    let plan = plan::plan(capture);
    let expected: [Option<Result<Expected, ExpectedError>>; 2] = [None, None];
    let ask = Ask {
        plan: &plan,
        expected: &expected,
        ruleset: None,
        groups,
        forced,
    };
    let known = full.as_ref().ok().map(|f| (f, every_object.as_slice()));
    let seen = observe(&ask, mode, false, runner, known);
    let full = || full.clone();
    let input = Input {
        plan: &plan,
        observed: &seen,
        forced,
        resolve: &resolve,
        expected: &expected,
        full: &full,
    };
    decide::decide(&input, mode, false)
}

/// The plan's expected tables per family it has (only when `wanted`: the iptables backend).
fn planned_expected(
    plan: &Plan,
    resolve: &dyn Fn(&str) -> Option<u32>,
    wanted: bool,
) -> [Option<Result<Expected, ExpectedError>>; 2] {
    let mut out: [Option<Result<Expected, ExpectedError>>; 2] = [None, None];
    if wanted {
        for family in plan.families() {
            out[family_index(family)] = Some(expected_tables(&plan.rules(family), &resolve));
        }
    }
    out
}

/// Expected tables per family of this configuration with IPv6 on, in both interception
/// modes merged, so that rules of ours in built-in chains (TPROXY's mangle rules among them)
/// are recognised in either family whichever mode installed them.
fn full_expected(capture: &Capture, resolve: &dyn Fn(&str) -> Option<u32>) -> Full {
    let mut out: [BTreeMap<_, _>; 2] = Default::default();
    for mode in [InterceptMode::Redirect, InterceptMode::Tproxy] {
        let full = plan::plan(&Capture {
            ipv6: true,
            mode,
            ..capture.clone()
        });
        for family in [Family::V4, Family::V6] {
            let tables = expected_tables(&full.rules(family), &resolve)?;
            let merged: &mut Expected = &mut out[family_index(family)];
            for (table, expected) in tables {
                let into = merged.entry(table).or_default();
                for (chain, specs) in expected.chains {
                    // Each spec as many times as the mode that plans it most often: a rule
                    // planned twice (`-k IF` and `-c IF` both write `-i IF -j RETURN`) is
                    // removed twice, while one both modes plan is removed once.
                    let have = into.chains.entry(chain).or_default();
                    for spec in &specs {
                        let planned = specs.iter().filter(|s| *s == spec).count();
                        if have.iter().filter(|s| *s == spec).count() < planned {
                            have.push(spec.clone());
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// What applying and cleaning up both need before reading anything: the capabilities, the
/// namespace lock (held until the returned guard drops), and the group names for owner matches.
fn prepare(
    opts: &RunOptions,
    caps: &[Capability],
) -> Result<(lock::NetnsLock, Groups), ApplyError> {
    privileges::require_capabilities(caps)
        .map_err(|e| ApplyError::Precondition(Precondition::Capabilities(e)))?;
    // Waiting for another run counts against this run's deadline too.
    let wait = opts.xtables_wait.min(opts.timeout);
    let lock = lock::lock_netns(wait).map_err(|e| {
        // Held: released when that run ends, so another attempt may take it.
        let reason = match &e {
            lock::LockError::Held { holder, wait } => Some(Transient::NetnsLock {
                holder: holder.clone(),
                waited: *wait,
            }),
            _ => None,
        };
        ApplyError::precondition(Precondition::Lock(e), reason)
    })?;
    Ok((lock, load_groups()?))
}

/// The capabilities reading every place needs: the iptables tools' when one is installed.
fn reading_caps(runner: &dyn Runner) -> &'static [Capability] {
    let any_tool = inventory::PLACES
        .iter()
        .any(|t| runner.installed(&t.save()));
    if any_tool {
        IPTABLES_CAPS
    } else {
        NETLINK_CAPS
    }
}

/// The xtables lock legacy iptables should use: the host's, or under `--cni-mode` one of this
/// network namespace's own (removed again when `netns` is released).
fn xtables_lock(opts: &RunOptions, netns: &mut lock::NetnsLock) -> XtablesLock {
    XtablesLock {
        wait: opts.xtables_wait,
        file: if opts.cni_mode {
            netns.xtables_lock_file()
        } else {
            None
        },
    }
}

/// The gid of a group name in an iptables owner match, as the kernel will hold it: from
/// /etc/group first (no NSS: it can stall pod start-up, istio/istio#48416), else through the
/// system's group lookup — which is what iptables itself does when it loads the rule, so a
/// directory-only group resolves the same for both.
fn resolve_group(groups: &Groups, name: &str) -> Option<u32> {
    groups.gid(name).or_else(|| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
}

/// The group database of /etc/group, read directly (no NSS, see istio/istio#48416).
fn load_groups() -> Result<Groups, ApplyError> {
    Groups::load(std::path::Path::new(groups::GROUP_FILE))
        .map_err(|e| ApplyError::Precondition(Precondition::Groups(e)))
}
