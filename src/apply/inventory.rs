//! What of ours exists in the namespace, read once before anything is decided, whatever the
//! chosen backend: our chains and jumps in iptables-legacy and iptables-nft for IPv4 and IPv6,
//! our native nftables tables, and our routing objects (`::6` included). A plain value, one
//! entry per place; a place that may hold rules but cannot be read is said to be so, never
//! taken for empty.
//!
//! Without an iptables tool a place is still known empty when the kernel shows that nothing
//! can be there: no legacy table exists in this namespace (`/proc/net/ip_tables_names` lists
//! none), or nf_tables (read over netlink) holds no chain of ours in the `ip`/`ip6` family.
//! The native backend's apply asks the kernel first even with the tool: where it holds no
//! table of a place at all, the place is empty without running the tool.

use super::exec::Runner;
use super::family_name;
use super::iptables::{self, Tools};
use super::netlink::Netlink;
use super::nftables::NfTables;
use super::routing::{self, Object};
use crate::backend::iptables_save::{
    jumps_to_ours, leftover_probes, parse_save, Saved, OUR_CHAIN_PREFIX,
};
use crate::backend::nft_netlink::XtFamily;
use crate::config::IptablesVariant;
use crate::plan::Family;

/// What reading one place gave.
#[derive(Clone, Debug)]
pub enum Reading<T> {
    /// Read: its contents.
    Read(T),
    /// Nothing of ours can be there; why (e.g. no tool, and the kernel holds no such tables).
    Nothing(String),
    /// Something may be there but could not be read; why.
    Unreadable(String),
}

/// One iptables place: a family in one variant.
#[derive(Clone, Debug)]
pub struct IptablesPlace {
    /// The family and variant.
    pub tools: Tools,
    /// What `*-save` printed, or why there is nothing to read.
    pub reading: Reading<Saved>,
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
        format!("{} {}", family_name(self.tools.family), self.tools.main())
    }

    /// The dump, when the place was read.
    pub fn saved(&self) -> Option<&Saved> {
        match &self.reading {
            Reading::Read(saved) => Some(saved),
            _ => None,
        }
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
        Inventory::read_with(runner, false)
    }

    /// [`Inventory::read`] for the native backend's apply, which needs of iptables only
    /// whether rules of ours are there: a place whose kernel side holds no table at all — no
    /// legacy table in this namespace, no nf_tables table of the family — is read as empty,
    /// what its tool would print, without running it (four processes, most of a fresh
    /// install's time). A place with any table is read with its tool, as by `read`.
    pub fn read_for_native(runner: &(dyn Runner + Sync)) -> Inventory {
        Inventory::read_with(runner, true)
    }

    fn read_with(runner: &(dyn Runner + Sync), kernel_first: bool) -> Inventory {
        std::thread::scope(|scope| {
            let places: Vec<_> = PLACES
                .iter()
                .map(|&tools| {
                    scope.spawn(move || {
                        if kernel_first && no_tables(tools) {
                            Reading::Read(parse_save(""))
                        } else {
                            read_iptables(runner, tools)
                        }
                    })
                })
                .collect();
            let native = scope.spawn(read_native);
            let routing = read_routing();
            let failed = |what: &str| format!("reading {what} panicked");
            Inventory {
                iptables: PLACES
                    .iter()
                    .zip(places)
                    .map(|(&tools, handle)| IptablesPlace {
                        tools,
                        reading: handle
                            .join()
                            .unwrap_or_else(|_| Reading::Unreadable(failed(&tools.save()))),
                    })
                    .collect(),
                native: native
                    .join()
                    .unwrap_or_else(|_| Reading::Unreadable(failed("the native tables"))),
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

    /// One line per place that may hold something of ours but could not be read.
    pub fn unreadable(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .iptables
            .iter()
            .filter_map(|p| match &p.reading {
                Reading::Unreadable(why) => Some(format!("{}: {why}", p.name())),
                _ => None,
            })
            .collect();
        if let Reading::Unreadable(why) = &self.native {
            out.push(format!("native nftables: {why}"));
        }
        if let Reading::Unreadable(why) = &self.routing {
            out.push(format!("routing objects: {why}"));
        }
        out
    }

    /// The iptables places that hold chains or jumps of ours.
    pub fn iptables_with_ours(&self) -> impl Iterator<Item = &IptablesPlace> {
        self.iptables.iter().filter(|p| p.ours())
    }
}

/// One iptables place: with its tool when installed; without, from what the kernel shows.
fn read_iptables(runner: &dyn Runner, tools: Tools) -> Reading<Saved> {
    let save = tools.save();
    if runner.installed(&save) {
        return match iptables::save_if_present(runner, tools) {
            Ok(Some(saved)) => Reading::Read(saved),
            Ok(None) => Reading::Nothing(format!(
                "the kernel lacks what {save} needs, so it cannot hold rules"
            )),
            Err(e) => Reading::Unreadable(format!("cannot read it with {save}: {e}")),
        };
    }
    match tools.variant {
        IptablesVariant::Legacy => {
            let names = match tools.family {
                Family::V4 => "/proc/net/ip_tables_names",
                Family::V6 => "/proc/net/ip6_tables_names",
            };
            match std::fs::read_to_string(names) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Reading::Nothing(format!(
                    "{save} is not installed and the kernel has no legacy tables ({names} does not exist)"
                )),
                Err(e) => Reading::Unreadable(format!(
                    "{save} is not installed and {names} cannot be read: {e}"
                )),
                Ok(text) if text.trim().is_empty() => Reading::Nothing(format!(
                    "{save} is not installed and no legacy table exists in this namespace"
                )),
                Ok(text) => Reading::Unreadable(format!(
                    "{save} is not installed, and legacy tables exist in this namespace ({}), which only it can read",
                    text.split_whitespace().collect::<Vec<_>>().join(", ")
                )),
            }
        }
        IptablesVariant::Nft => {
            let family = match tools.family {
                Family::V4 => XtFamily::Ip,
                Family::V6 => XtFamily::Ip6,
            };
            match NfTables::open().and_then(|mut n| n.family_tables(family)) {
                Err(e) => Reading::Unreadable(format!(
                    "{save} is not installed and nf_tables cannot be read either: {e}"
                )),
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
                        Reading::Nothing(format!(
                            "{save} is not installed and nf_tables holds no chain of ours in the {} family",
                            family.name()
                        ))
                    } else {
                        Reading::Unreadable(format!(
                            "{save} is not installed, and nf_tables holds chains of ours that only it can remove: {}",
                            ours.join(", ")
                        ))
                    }
                }
            }
        }
    }
}

/// Whether the kernel shows that no table of this variant and family exists in the
/// namespace, so that its `*-save` could print nothing: `/proc/net/ip[6]_tables_names` is
/// there and empty, or nf_tables lists no table of the family. `false` when it cannot tell.
fn no_tables(tools: Tools) -> bool {
    match tools.variant {
        IptablesVariant::Legacy => {
            let names = match tools.family {
                Family::V4 => "/proc/net/ip_tables_names",
                Family::V6 => "/proc/net/ip6_tables_names",
            };
            std::fs::read_to_string(names).is_ok_and(|text| text.trim().is_empty())
        }
        IptablesVariant::Nft => {
            let family = match tools.family {
                Family::V4 => XtFamily::Ip,
                Family::V6 => XtFamily::Ip6,
            };
            NfTables::open()
                .and_then(|mut n| n.family_has_tables(family))
                .is_ok_and(|has| !has)
        }
    }
}

/// Our native tables; a kernel without nf_tables cannot hold any.
fn read_native() -> Reading<Vec<String>> {
    use super::nftables::NftError;
    use nix::errno::Errno;
    match NfTables::open().and_then(|mut n| n.managed_tables_present()) {
        Ok(tables) => Reading::Read(tables),
        Err(NftError::Io { errno, .. })
            if [Errno::EPROTONOSUPPORT, Errno::EAFNOSUPPORT].contains(&errno) =>
        {
            Reading::Nothing("the kernel has no nf_tables".to_string())
        }
        Err(e) => Reading::Unreadable(e.to_string()),
    }
}

/// Our routing objects.
fn read_routing() -> Reading<Vec<Object>> {
    match Netlink::open()
        .map_err(|e| e.to_string())
        .and_then(|mut nl| routing::ours(&mut nl).map_err(|e| e.to_string()))
    {
        Ok(objects) => Reading::Read(objects),
        Err(e) => Reading::Unreadable(format!("cannot list meshinit's routing objects: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::iptables_save::parse_save;

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
