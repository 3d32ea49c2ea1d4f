//! What of ours exists in the namespace, read once before anything is decided, whatever the
//! chosen backend: our chains and jumps in iptables-legacy and iptables-nft for IPv4 and IPv6,
//! our native nftables tables, and our routing objects (`::6` included). A plain value, one
//! entry per place; a place that may hold rules but cannot be read is said to be so, never
//! taken for empty.
//!
//! Without an iptables tool a place is still known empty when the kernel shows that nothing
//! can be there: no legacy table exists in this namespace (`/proc/net/ip_tables_names` lists
//! none), or nf_tables (read over netlink) holds no chain of ours in the `ip`/`ip6` family.
//! With the tool, an nft place of a family that has no nf_tables table at all is known empty
//! without running it (the tool would print nothing), which saves a process per family in a
//! fresh namespace; the run then reads the place it writes with the tool before writing.
//! The native backend's apply asks the kernel first even with the tool: where it holds no
//! table of a place at all, the place is empty without running the tool.

use crate::config::IptablesVariant;
use crate::driver::nf_tables::NfTables;
use crate::driver::nf_tables::NftError;
use crate::driver::routing::{self, Object};
use crate::driver::rtnetlink::Netlink;
use crate::driver::rtnetlink::NetlinkError;
use crate::driver::xtables::{self, IptablesError, Tools};
use crate::engine::error::place_name;
use crate::plan::Family;
use crate::render::iptables_save::{jumps_to_ours, leftover_probes, Saved, OUR_CHAIN_PREFIX};
use crate::render::nft_netlink::XtFamily;
use crate::sys::process::Runner;
use crate::sys::transient::Transient;
use std::sync::Arc;

/// What reading one place gave.
#[derive(Clone, Debug)]
pub enum Reading<T> {
    /// Read: its contents.
    Read(T),
    /// Nothing of ours can be there; why (e.g. no tool, and the kernel holds no such tables).
    Nothing(Nothing),
    /// Something may be there but could not be read; why. Its transient marker (a save
    /// tool's lock message, the kernel's `EBUSY`, `EAGAIN` or `EINTR`: see
    /// [`crate::sys::transient`]) is carried up so that apply and cleanup retry it under
    /// `--retries`.
    Unreadable(Unread),
}

impl<T> Reading<T> {
    /// Why it could not be read, when it could not.
    fn unread(&self) -> Option<&Unread> {
        match self {
            Reading::Unreadable(why) => Some(why),
            _ => None,
        }
    }
}

/// Why a place holds nothing of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nothing {
    /// The kernel lacks what the variant's save tool needs (see `xtables::save_if_present`).
    KernelLacks(Tools),
    /// No save tool, and the kernel has no legacy tables at all (no `*_tables_names`).
    NoLegacyTables(Tools),
    /// No save tool, and no legacy table exists in this namespace.
    NoLegacyTable(Tools),
    /// No save tool, and nf_tables holds no chain of ours in the family.
    NoChainOfOurs(Tools),
    /// The kernel has no nf_tables.
    NoNfTables,
}

impl std::fmt::Display for Nothing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Nothing::KernelLacks(tools) => write!(
                f,
                "the kernel lacks what {} needs, so it cannot hold rules",
                tools.save()
            ),
            Nothing::NoLegacyTables(tools) => write!(
                f,
                "{} is not installed and the kernel has no legacy tables ({} does not exist)",
                tools.save(),
                legacy_names(tools.family)
            ),
            Nothing::NoLegacyTable(tools) => write!(
                f,
                "{} is not installed and no legacy table exists in this namespace",
                tools.save()
            ),
            Nothing::NoChainOfOurs(tools) => write!(
                f,
                "{} is not installed and nf_tables holds no chain of ours in the {} family",
                tools.save(),
                XtFamily::of(tools.family).name()
            ),
            Nothing::NoNfTables => f.write_str("the kernel has no nf_tables"),
        }
    }
}

/// Why a place that may hold rules of ours could not be read.
#[derive(Clone, Debug)]
pub enum Unread {
    /// Its save tool failed.
    Tool(Tools, IptablesError),
    /// No save tool, and `*_tables_names` cannot be read.
    LegacyNames(Tools, Arc<std::io::Error>),
    /// No save tool, and legacy tables exist (these), which only it can read.
    LegacyTables(Tools, Vec<String>),
    /// No save tool, and nf_tables cannot be read either.
    Nft(Tools, NftError),
    /// No save tool, and nf_tables holds these chains of ours, which only it can remove.
    NftChains(Tools, Vec<String>),
    /// Our native tables cannot be listed.
    Native(NftError),
    /// Our routing objects cannot be listed.
    Routing(NetlinkError),
    /// The thread reading it panicked.
    Panicked(Place),
}

impl Unread {
    /// Why another read may succeed, when it may.
    pub fn transient(&self) -> Option<Transient> {
        match self {
            Unread::Tool(_, e) => e.transient(),
            Unread::Nft(_, e) | Unread::Native(e) => e.transient(),
            Unread::Routing(e) => e.transient(),
            _ => None,
        }
    }
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unread::Tool(tools, e) => write!(f, "cannot read it with {}: {e}", tools.save()),
            Unread::LegacyNames(tools, e) => write!(
                f,
                "{} is not installed and {} cannot be read: {e}",
                tools.save(),
                legacy_names(tools.family)
            ),
            Unread::LegacyTables(tools, tables) => write!(
                f,
                "{} is not installed, and legacy tables exist in this namespace ({}), which only it can read",
                tools.save(),
                tables.join(", ")
            ),
            Unread::Nft(tools, e) => write!(
                f,
                "{} is not installed and nf_tables cannot be read either: {e}",
                tools.save()
            ),
            Unread::NftChains(tools, chains) => write!(
                f,
                "{} is not installed, and nf_tables holds chains of ours that only it can remove: {}",
                tools.save(),
                chains.join(", ")
            ),
            Unread::Native(e) => write!(f, "{e}"),
            Unread::Routing(e) => write!(f, "cannot list meshinit's routing objects: {e}"),
            Unread::Panicked(Place::Iptables(tools)) => {
                write!(f, "reading {} panicked", tools.save())
            }
            Unread::Panicked(Place::Native) => f.write_str("reading the native tables panicked"),
            Unread::Panicked(Place::Routing) => {
                f.write_str("reading the routing objects panicked")
            }
        }
    }
}

/// A place the inventory reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// An iptables family and variant.
    Iptables(Tools),
    /// Our native nftables tables.
    Native,
    /// Our routing objects.
    Routing,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Iptables(tools) => f.write_str(&place_name(*tools)),
            Place::Native => f.write_str("native nftables"),
            Place::Routing => f.write_str("routing objects"),
        }
    }
}

/// A place that may hold something of ours but could not be read, and why.
#[derive(Clone, Debug)]
pub struct Unreadable {
    /// The place.
    pub place: Place,
    /// Why.
    pub why: Unread,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place, self.why)
    }
}

/// One iptables place: a family in one variant.
#[derive(Clone, Debug)]
pub struct IptablesPlace {
    /// The family and variant.
    pub tools: Tools,
    /// What `*-save` printed, or why there is nothing to read.
    pub reading: Reading<Saved>,
    /// Whether the tool itself printed the reading; `false` when the kernel showed the place
    /// empty (no table of the nf_tables family) or the tool is not installed, so that the
    /// tool was not run: a run that writes here reads it with the tool first.
    pub read_by_tool: bool,
}

/// What of ours an iptables dump holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Chains of ours (`ISTIO_*`).
    pub chains: usize,
    /// Rules in our chains plus jumps into them from other chains.
    pub rules: usize,
    /// Leftover variant-detection probe rules.
    pub probes: usize,
}

impl Counts {
    /// Whether anything of ours is there (probes aside).
    pub fn ours(&self) -> bool {
        self.chains > 0 || self.rules > 0
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} chain(s), {} rule(s)", self.chains, self.rules)?;
        if self.probes > 0 {
            write!(f, ", {} leftover probe rule(s)", self.probes)?;
        }
        Ok(())
    }
}

/// Counts what of ours a dump holds: our chains, their rules, and jumps into them.
pub fn counts(saved: &Saved) -> Counts {
    let mut c = Counts {
        probes: leftover_probes(saved),
        ..Counts::default()
    };
    for table in saved.values() {
        for chain in &table.chains {
            if chain.starts_with(OUR_CHAIN_PREFIX) {
                c.chains += 1;
                c.rules += table.rules_of(chain).len();
            } else {
                c.rules += table
                    .rules_of(chain)
                    .iter()
                    .filter(|s| jumps_to_ours(s))
                    .count();
            }
        }
    }
    c
}

impl IptablesPlace {
    /// `IPv4 iptables-nft`, as messages name the place.
    pub fn name(&self) -> String {
        place_name(self.tools)
    }

    /// The dump, when the place was read.
    pub fn saved(&self) -> Option<&Saved> {
        match &self.reading {
            Reading::Read(saved) => Some(saved),
            _ => None,
        }
    }

    /// The dump for choosing a variant, when the place was read.
    pub fn known(&self) -> Option<xtables::Known> {
        self.saved().map(|saved| xtables::Known {
            saved: saved.clone(),
            by_tool: self.read_by_tool,
        })
    }

    /// What of ours is there (zero when nothing was read).
    pub fn counts(&self) -> Counts {
        self.saved().map(counts).unwrap_or_default()
    }

    /// Whether chains or jumps of ours are there.
    pub fn ours(&self) -> bool {
        self.counts().ours()
    }
}

/// Everything of ours in the namespace, per place.
#[derive(Clone, Debug)]
pub struct Inventory {
    /// IPv4 legacy, IPv4 nft, IPv6 legacy, IPv6 nft, in this order.
    pub iptables: Vec<IptablesPlace>,
    /// Our native tables (`inet istio-proxy-*`) that exist.
    pub native: Reading<Vec<String>>,
    /// Our routing objects (marked with our protocol), `::6` on lo included.
    pub routing: Reading<Vec<Object>>,
}

/// Every iptables place, in the inventory's order.
pub const PLACES: [Tools; 4] = [
    Tools {
        family: Family::V4,
        variant: IptablesVariant::Legacy,
    },
    Tools {
        family: Family::V4,
        variant: IptablesVariant::Nft,
    },
    Tools {
        family: Family::V6,
        variant: IptablesVariant::Legacy,
    },
    Tools {
        family: Family::V6,
        variant: IptablesVariant::Nft,
    },
];

impl Inventory {
    /// Reads every place, all at once (one thread per place: the run's `--timeout` budget is
    /// shared with the writes that follow). Threads inherit the network namespace of the one
    /// that spawns them. Needs the privileges to read (CAP_NET_ADMIN); read-only.
    pub fn read(runner: &(dyn Runner + Sync)) -> Inventory {
        Inventory::read_places(runner, None, false)
    }

    /// [`Inventory::read`] for a run that will write with this variant (`--force-iptables-
    /// binary`): its places are read with their tools even when the kernel shows them empty,
    /// as the write needs that reading anyway.
    pub fn read_writing(
        runner: &(dyn Runner + Sync),
        writes: Option<IptablesVariant>,
    ) -> Inventory {
        Inventory::read_places(runner, writes, false)
    }

    /// [`Inventory::read`] for the native backend's apply, which needs of iptables only
    /// whether rules of ours are there: a place whose kernel side holds no table at all — no
    /// legacy table in this namespace, no nf_tables table of the family — is read as empty,
    /// what its tool would print, without running it (four processes, most of a fresh
    /// install's time). A place with any table is read with its tool, as by `read`.
    pub fn read_for_native(runner: &(dyn Runner + Sync)) -> Inventory {
        Inventory::read_places(runner, None, true)
    }

    fn read_places(
        runner: &(dyn Runner + Sync),
        writes: Option<IptablesVariant>,
        legacy_from_kernel: bool,
    ) -> Inventory {
        std::thread::scope(|scope| {
            let places: Vec<_> = PLACES
                .iter()
                .map(|&tools| {
                    scope.spawn(move || read_iptables(runner, tools, writes, legacy_from_kernel))
                })
                .collect();
            let native = scope.spawn(read_native);
            let routing = read_routing();

            Inventory {
                iptables: PLACES
                    .iter()
                    .zip(places)
                    .map(|(&tools, handle)| {
                        let (reading, read_by_tool) = handle.join().unwrap_or_else(|_| {
                            let why = Unread::Panicked(Place::Iptables(tools));
                            (Reading::Unreadable(why), true)
                        });
                        IptablesPlace {
                            tools,
                            reading,
                            read_by_tool,
                        }
                    })
                    .collect(),
                native: native
                    .join()
                    .unwrap_or(Reading::Unreadable(Unread::Panicked(Place::Native))),
                routing,
            }
        })
    }

    /// The iptables place of these tools.
    pub fn place(&self, tools: Tools) -> &IptablesPlace {
        self.iptables
            .iter()
            .find(|p| p.tools == tools)
            .expect("the inventory holds every place")
    }

    /// Our native tables, when they were read.
    pub fn native_tables(&self) -> &[String] {
        match &self.native {
            Reading::Read(tables) => tables,
            _ => &[],
        }
    }

    /// Each place that may hold something of ours but could not be read, and why.
    pub fn unreadable(&self) -> Vec<Unreadable> {
        let mut out: Vec<Unreadable> = self
            .iptables
            .iter()
            .filter_map(|p| {
                p.reading.unread().map(|why| Unreadable {
                    place: Place::Iptables(p.tools),
                    why: why.clone(),
                })
            })
            .collect();
        for (place, reading) in [
            (Place::Native, self.native.unread()),
            (Place::Routing, self.routing.unread()),
        ] {
            out.extend(reading.map(|why| Unreadable {
                place,
                why: why.clone(),
            }));
        }
        out
    }

    /// Why the places that could not be read may be readable on another attempt, when every
    /// one of them may (one reason per place); `None` when all were read, or when one failed
    /// for a reason that another attempt would not change.
    pub fn transient(&self) -> Option<Transient> {
        let unread = self.unreadable();
        if unread.is_empty() {
            return None;
        }
        let reasons: Option<Vec<Transient>> = unread.iter().map(|u| u.why.transient()).collect();
        reasons.map(Transient::all)
    }

    /// Why the places that failed to read for a transient reason may be readable on another
    /// attempt, one reason each (empty when none did).
    pub fn transient_reads(&self) -> Vec<Transient> {
        self.unreadable()
            .iter()
            .filter_map(|u| u.why.transient())
            .collect()
    }

    /// The iptables places that hold chains or jumps of ours.
    pub fn iptables_with_ours(&self) -> impl Iterator<Item = &IptablesPlace> {
        self.iptables.iter().filter(|p| p.ours())
    }
}

/// One iptables place, and whether its tool printed it: for the nft variant, empty without
/// running the tool when nf_tables holds no table of the family at all (the tool would print
/// nothing: it lists only tables the kernel has); else with its tool when installed; without
/// it, from what the kernel shows. (A legacy tool is always run when installed: one that
/// fails refuses the run even where the kernel shows no legacy table.)
fn read_iptables(
    runner: &dyn Runner,
    tools: Tools,
    writes: Option<IptablesVariant>,
    legacy_from_kernel: bool,
) -> (Reading<Saved>, bool) {
    let save = tools.save();
    if !runner.installed(&save) {
        return (read_without_tool(tools), false);
    }
    // Known empty from the kernel, without the tool: an nft place whose family has no
    // nf_tables table (unless this run writes there and needs the tool's reading anyway), and
    // for the native backend's apply a legacy place with no legacy table in this namespace.
    let empty = match tools.variant {
        IptablesVariant::Nft => writes != Some(IptablesVariant::Nft) && no_nft_table(tools.family),
        IptablesVariant::Legacy => {
            legacy_from_kernel
                && std::fs::read_to_string(legacy_names(tools.family))
                    .is_ok_and(|text| text.trim().is_empty())
        }
    };
    if empty {
        return (Reading::Read(Saved::default()), false);
    }
    (read_with_tool(runner, tools), true)
}

/// Whether nf_tables holds no table of the family's (`ip`/`ip6`) at all; a listing that fails
/// is not taken for empty.
fn no_nft_table(family: Family) -> bool {
    NfTables::open()
        .and_then(|mut n| n.family_names(XtFamily::of(family), false))
        .is_ok_and(|tables| tables.is_empty())
}

fn legacy_names(family: Family) -> &'static str {
    match family {
        Family::V4 => "/proc/net/ip_tables_names",
        Family::V6 => "/proc/net/ip6_tables_names",
    }
}

/// One iptables place read with its tool.
fn read_with_tool(runner: &dyn Runner, tools: Tools) -> Reading<Saved> {
    match xtables::save_if_present(runner, tools) {
        Ok(Some(saved)) => Reading::Read(saved),
        Ok(None) => Reading::Nothing(Nothing::KernelLacks(tools)),
        Err(e) => Reading::Unreadable(Unread::Tool(tools, e)),
    }
}

/// One iptables place whose tool is not installed, from what the kernel shows.
fn read_without_tool(tools: Tools) -> Reading<Saved> {
    match tools.variant {
        IptablesVariant::Legacy => match std::fs::read_to_string(legacy_names(tools.family)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Reading::Nothing(Nothing::NoLegacyTables(tools))
            }
            Err(e) => Reading::Unreadable(Unread::LegacyNames(tools, Arc::new(e))),
            Ok(text) if text.trim().is_empty() => Reading::Nothing(Nothing::NoLegacyTable(tools)),
            Ok(text) => Reading::Unreadable(Unread::LegacyTables(
                tools,
                text.split_whitespace().map(String::from).collect(),
            )),
        },
        IptablesVariant::Nft => {
            let family = XtFamily::of(tools.family);
            match NfTables::open().and_then(|mut n| n.family_tables(family)) {
                Err(e) => Reading::Unreadable(Unread::Nft(tools, e)),
                Ok(tables) => {
                    let ours: Vec<String> = tables
                        .iter()
                        .flat_map(|t| {
                            t.chains
                                .iter()
                                .filter(|c| c.name.starts_with(OUR_CHAIN_PREFIX))
                                .map(move |c| format!("{} {} {}", family.name(), t.name, c.name))
                        })
                        .collect();
                    if ours.is_empty() {
                        Reading::Nothing(Nothing::NoChainOfOurs(tools))
                    } else {
                        Reading::Unreadable(Unread::NftChains(tools, ours))
                    }
                }
            }
        }
    }
}

/// Our native tables; a kernel without nf_tables cannot hold any.
fn read_native() -> Reading<Vec<String>> {
    use nix::errno::Errno;
    match NfTables::open().and_then(|mut n| n.managed_tables_present()) {
        Ok(tables) => Reading::Read(tables),
        Err(NftError::Io { errno, .. })
            if [Errno::EPROTONOSUPPORT, Errno::EAFNOSUPPORT].contains(&errno) =>
        {
            Reading::Nothing(Nothing::NoNfTables)
        }
        Err(e) => Reading::Unreadable(Unread::Native(e)),
    }
}

/// Our routing objects.
fn read_routing() -> Reading<Vec<Object>> {
    match Netlink::open().and_then(|mut nl| routing::ours(&mut nl)) {
        Ok(objects) => Reading::Read(objects),
        Err(e) => Reading::Unreadable(Unread::Routing(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::iptables_save::parse_save;
    use crate::sys::process::Output;

    /// A save tool that answers with this exit code and stderr.
    struct Answers(i32, &'static str);

    impl Runner for Answers {
        fn run(
            &self,
            _: &str,
            _: &[&str],
            _: &[(&str, &str)],
            _: Option<&str>,
        ) -> Result<Output, crate::sys::process::RunError> {
            Ok(Output {
                code: Some(self.0),
                signal: None,
                stdout: String::new(),
                stderr: self.1.to_string(),
            })
        }

        fn installed(&self, _: &str) -> bool {
            true
        }
    }

    /// iptables 1.8.9's text when the xtables lock stays held past its wait (exit 4).
    const LOCK: &str =
        "Another app is currently holding the xtables lock. Stopped waiting after 1s.\n";
    const LEGACY4: Tools = PLACES[0];

    fn inventory(reading: Reading<Saved>) -> Inventory {
        let mut places: Vec<IptablesPlace> = PLACES
            .iter()
            .map(|&tools| IptablesPlace {
                tools,
                reading: Reading::Read(Saved::default()),
                read_by_tool: true,
            })
            .collect();
        places[0].reading = reading;
        Inventory {
            iptables: places,
            native: Reading::Read(Vec::new()),
            routing: Reading::Read(Vec::new()),
        }
    }

    #[test]
    fn a_read_failing_for_a_transient_reason_carries_its_marker_up() {
        // The save tool's lock message: the reading says why it may pass.
        let reading = read_with_tool(&Answers(4, LOCK), LEGACY4);
        let Reading::Unreadable(why @ Unread::Tool(LEGACY4, _)) = &reading else {
            panic!("{reading:?}");
        };
        assert!(
            why.to_string()
                .starts_with("cannot read it with iptables-legacy-save: "),
            "{why}"
        );
        let transient = why.transient();
        assert!(
            transient
                .as_ref()
                .unwrap()
                .to_string()
                .contains("another program held the xtables lock"),
            "{transient:?}"
        );
        let inv = inventory(reading);
        assert_eq!(inv.unreadable().len(), 1);
        assert!(matches!(
            inv.transient(),
            Some(Transient::XtablesLock { .. })
        ));
        assert_eq!(inv.transient_reads().len(), 1);
        // The kernel's EBUSY to a listing over netlink (routing objects, nf_tables).
        let mut inv = inventory(Reading::Read(Saved::default()));
        inv.routing = Reading::Unreadable(Unread::Routing(NetlinkError::Io {
            op: "listing rules".into(),
            errno: nix::errno::Errno::EBUSY,
        }));
        assert_eq!(
            inv.transient(),
            Some(Transient::Errno(nix::errno::Errno::EBUSY))
        );
        // A failure another attempt would not change is not transient, and one such place
        // makes the inventory's failure permanent: retrying cannot make it readable.
        let denied = Answers(1, "iptables-legacy-save: Permission denied\n");
        let reading = read_with_tool(&denied, LEGACY4);
        assert!(
            matches!(&reading, Reading::Unreadable(why) if why.transient().is_none()),
            "{reading:?}"
        );
        inv.iptables[0].reading = reading;
        assert_eq!(inv.transient(), None);
        assert_eq!(inv.transient_reads().len(), 1, "the routing read may pass");
        assert_eq!(inventory(Reading::Read(Saved::default())).transient(), None);
    }

    #[test]
    fn counts_are_our_chains_their_rules_and_jumps_into_them() {
        let saved = parse_save(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n:KUBE - [0:0]\n\
             -A PREROUTING -j KUBE\n-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -p 255 -j RETURN\n\
             -A ISTIO_OUTPUT -o lo -j RETURN\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n-A KUBE -j RETURN\nCOMMIT\n",
        );
        let c = counts(&saved);
        assert_eq!(
            c,
            Counts {
                chains: 1,
                rules: 3,
                probes: 1
            }
        );
        assert_eq!(
            c.to_string(),
            "1 chain(s), 3 rule(s), 1 leftover probe rule(s)"
        );
        let foreign = parse_save("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n");
        assert!(!counts(&foreign).ours());
    }
}
