//! The one read of the namespace before anything is decided: the inventory of every place,
//! and what else the decision needs to know of the live system (whether lo takes IPv6, the
//! variant chosen per family with its probe, whether an iptables-nft is too old to print
//! rules of ours, our native tables compared with the plan, which routing objects exist).
//! Everything here reads; nothing writes except the variant probe, whose rule is added and
//! deleted in one transaction.

use crate::config::IptablesVariant;
use crate::driver::nf_tables::NfTables;
use crate::driver::routing::{self, Object};
use crate::driver::rtnetlink::Netlink;
use crate::driver::xtables::{self, Chosen, Tools};
use crate::engine::inventory::Inventory;
use crate::plan::{Family, Plan};
use crate::render::iptables_save::Saved;
use crate::render::nft_ruleset::Ruleset;
use crate::sys::process::Runner;

use super::decide::{self, nft_precondition, Expected, Input};
use super::error::ApplyError;
use super::mode::Mode;
use crate::driver::rtnetlink::NetlinkError;
use crate::render::iptables_save::ExpectedError;

/// Routing objects and whether each is present (or why that could not be read); `Err` when
/// rtnetlink could not be opened.
pub type RoutingPresent = Result<Vec<(Object, Result<bool, NetlinkError>)>, NetlinkError>;

/// What `/proc/sys/net/ipv6/conf/lo/disable_ipv6` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipv6Lo {
    /// Not read: the plan has no IPv6.
    NotAsked,
    /// The file's value, trimmed (`0`: IPv6 works on lo).
    Value(String),
    /// The file does not exist (IPv6 disabled in the kernel or the namespace).
    Missing,
    /// The file could not be read; why.
    Unreadable(String),
}

/// The path read for [`Ipv6Lo`].
pub const LO_DISABLE_IPV6: &str = "/proc/sys/net/ipv6/conf/lo/disable_ipv6";

/// The variant chosen for a family of the plan, with its live state.
#[derive(Debug)]
pub struct FamilyView {
    /// The family.
    pub family: Family,
    /// The choice (tools, reason, state read with the tool).
    pub chosen: Chosen,
}

/// Everything read before deciding. Fields a mode does not need stay empty.
#[derive(Debug)]
pub struct Observed {
    /// Every place's contents.
    pub inventory: Inventory,
    /// Whether lo takes IPv6 (read when the plan has IPv6 and the mode installs).
    pub ipv6: Ipv6Lo,
    /// For an iptables install, per planned family in order, the chosen variant; stops at the
    /// first family whose choice failed (that error ends the run, as no variant is known).
    /// Empty when the decision refuses before choosing (nothing is probed then).
    pub families: Vec<Result<FamilyView, ApplyError>>,
    /// An iptables-nft older than 1.8.8 that shows the rules of ours it was asked about
    /// without some of their matches: per place, the tool's error.
    pub old_tools: Vec<(Tools, xtables::IptablesError)>,
    /// For `--check`, the places the inventory could not show as read, read again with their
    /// tool: `None` when the variant does not exist here.
    pub reread: Vec<(Tools, Result<Option<Saved>, ApplyError>)>,
    /// For the native backend: our tables compared with the ruleset (`None` when not asked,
    /// the comparison's lines, or why nf_tables could not be read).
    pub native_differences: Option<Result<Vec<String>, ApplyError>>,
    /// The routing objects asked about and whether each is present (ours or not); `Err` when
    /// rtnetlink could not be opened.
    pub routing_present: RoutingPresent,
}

impl Observed {
    /// An observation of only this inventory (the rest empty), for a decision that needs
    /// nothing else and for tests.
    pub fn of(inventory: Inventory) -> Observed {
        Observed {
            inventory,
            ipv6: Ipv6Lo::NotAsked,
            families: Vec::new(),
            old_tools: Vec::new(),
            reread: Vec::new(),
            native_differences: None,
            routing_present: Ok(Vec::new()),
        }
    }
}

/// What the pipeline hands to [`observe`] besides the runner.
pub struct Ask<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// The plan's expected tables per family (`None` for a family it lacks).
    pub expected: &'a [Option<Result<Expected, ExpectedError>>; 2],
    /// The native ruleset, when the backend is nftables.
    pub ruleset: Option<&'a Ruleset>,
    /// The gid of a group name (for comparing native tables).
    pub groups: &'a crate::sys::groups::Groups,
    /// `--force-iptables-binary`.
    pub forced: Option<IptablesVariant>,
}

/// Reads everything the decision of this mode needs. `full` is, for a cleanup, the expected
/// tables of everything of ours (to find old iptables-nft tools), and the routing objects
/// any configuration of ours would add (to name those left in place).
pub fn observe(
    ask: &Ask,
    mode: Mode,
    native: bool,
    runner: &(dyn Runner + Sync),
    full: Option<(&[Expected; 2], &[Object])>,
) -> Observed {
    let installs = matches!(mode, Mode::Install { .. });
    let inventory = if installs && native {
        Inventory::read_for_native(runner)
    } else if installs {
        Inventory::read_writing(runner, ask.forced)
    } else {
        Inventory::read(runner)
    };
    let mut seen = Observed::of(inventory);
    if installs && ask.plan.ipv6 {
        seen.ipv6 = read_ipv6_lo();
    }
    match mode {
        Mode::Install { install, .. } if !native => {
            // The variant probe writes (a rule added and deleted in one transaction, and the
            // nat base chain it needs): only when the decision will not refuse anyway.
            let input = Input {
                plan: ask.plan,
                observed: &seen,
                forced: ask.forced,
                resolve: &|_| None,
                expected: ask.expected,
                full: &|| Ok(Default::default()),
            };
            if decide::preflight_iptables(&input, install).is_ok() {
                choose_variants(ask, runner, &mut seen);
            }
        }
        Mode::Install { .. } => {
            seen.native_differences = Some(native_differences(ask, &seen.inventory, true));
        }
        Mode::Check if native => {
            seen.native_differences = Some(native_differences(ask, &seen.inventory, false));
            seen.routing_present = routing_present(&routing::objects(ask.plan));
        }
        Mode::Check => {
            reread_for_check(ask, runner, &mut seen);
            seen.routing_present = routing_present(&routing::objects(ask.plan));
        }
        Mode::Cleanup { .. } => {
            if let Some((expected, objects)) = full {
                for place in &seen.inventory.iptables {
                    let Some(saved) = place.saved() else {
                        continue;
                    };
                    let want = &expected[decide::family_index(place.tools.family)];
                    note_old_tool(runner, place.tools, saved, want, &mut seen.old_tools);
                }
                seen.routing_present = routing_present(objects);
            }
        }
        _ => {}
    }
    seen
}

/// Whether lo takes IPv6.
fn read_ipv6_lo() -> Ipv6Lo {
    match std::fs::read_to_string(LO_DISABLE_IPV6) {
        Ok(value) => Ipv6Lo::Value(value.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ipv6Lo::Missing,
        Err(e) => Ipv6Lo::Unreadable(e.to_string()),
    }
}

/// Chooses the variant for each planned family (reading, and probing when neither variant
/// holds rules), stopping at the first that cannot be chosen.
fn choose_variants(ask: &Ask, runner: &(dyn Runner + Sync), seen: &mut Observed) {
    for family in ask.plan.families() {
        let known = |tools| seen.inventory.place(tools).known();
        let chosen = xtables::choose_variant_known(runner, family, ask.forced, &known)
            .map_err(|e| decide::iptables_error(e, true));
        match chosen {
            Ok(chosen) => {
                if let Some(Ok(want)) = &ask.expected[decide::family_index(family)] {
                    let tools = chosen.tools;
                    let state = chosen.state.clone();
                    note_old_tool(runner, tools, &state, want, &mut seen.old_tools);
                }
                seen.families.push(Ok(FamilyView { family, chosen }));
            }
            Err(e) => {
                seen.families.push(Err(e));
                return;
            }
        }
    }
}

/// Records when the place's iptables-nft is too old to print these rules of ours faithfully.
fn note_old_tool(
    runner: &dyn Runner,
    tools: Tools,
    live: &Saved,
    want: &Expected,
    old: &mut Vec<(Tools, xtables::IptablesError)>,
) {
    if let Err(e) = xtables::require_readable(runner, tools, live, want) {
        old.push((tools, e));
    }
}

/// `--check` with iptables: each place of a planned family that the inventory did not show
/// read is read again with its tool, to give the same answer (absent) or error as always;
/// and each read one is checked for an old iptables-nft.
fn reread_for_check(ask: &Ask, runner: &(dyn Runner + Sync), seen: &mut Observed) {
    let variants = match ask.forced {
        Some(v) => vec![v],
        None => vec![IptablesVariant::Nft, IptablesVariant::Legacy],
    };
    for family in ask.plan.families() {
        for &variant in &variants {
            let tools = Tools { family, variant };
            let live = match seen.inventory.place(tools).saved() {
                Some(saved) => Some(saved.clone()),
                None => {
                    let read = xtables::save_if_present(runner, tools).map_err(|e| {
                        decide::iptables_error(
                            xtables::IptablesError::Context {
                                doing: xtables::Doing::ReadingWith(tools),
                                source: Box::new(e),
                            },
                            false,
                        )
                    });
                    let live = read.as_ref().ok().cloned().flatten();
                    seen.reread.push((tools, read));
                    live
                }
            };
            if let (Some(live), Some(Ok(want))) =
                (live, &ask.expected[decide::family_index(family)])
            {
                note_old_tool(runner, tools, &live, want, &mut seen.old_tools);
            }
        }
    }
}

/// Our native tables compared with the plan's ruleset. For an install only when some are
/// there (a fresh install compares nothing); the socket is opened either way, as its failure
/// ends the run before anything is written.
fn native_differences(
    ask: &Ask,
    inventory: &Inventory,
    only_present: bool,
) -> Result<Vec<String>, ApplyError> {
    let mut nft = NfTables::open().map_err(nft_precondition)?;
    if only_present && inventory.native_tables().is_empty() {
        return Ok(Vec::new());
    }
    let ruleset = ask.ruleset.expect("the native backend has a ruleset");
    nft.differences(ruleset, ask.groups)
        .map_err(nft_precondition)
}

/// Whether each of these routing objects is present (with our mark or without).
fn routing_present(objects: &[Object]) -> RoutingPresent {
    let mut nl = Netlink::open()?;
    Ok(objects
        .iter()
        .map(|&o| (o, routing::present(&mut nl, o)))
        .collect())
}
