//! The netlink objects a plan needs besides its rules — the IPv6 passthrough address on `lo`
//! and, under TPROXY, a `fwmark` policy rule and a local default route per family — as one
//! list, so applying, cleaning up and checking all speak of the same objects.
//!
//! Ownership: what meshinit adds carries its rtnetlink protocol number
//! ([`rtnetlink::PROTOCOL`](super::rtnetlink::PROTOCOL)), and only objects carrying it are ever
//! removed — by a rollback, by `--cleanup-only` (all of ours, whatever configuration added
//! them), or by an apply that no longer plans them (TPROXY → REDIRECT). An identical object
//! without the mark (an administrator's, or istio-init's, which sets no protocol) is used
//! where the plan needs it but never removed.

use std::fmt;
use std::net::Ipv6Addr;

use super::rtnetlink::{Changed, Netlink, NetlinkError};
use crate::plan::{Family, Plan};

/// The address the proxy's inbound passthrough binds to under IPv6: IPv6 loopback is a single
/// /128, so `::6` must be added to `lo` (Istio does the same).
pub const PASSTHROUGH_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// One routing object of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// `ip -6 addr add ::6/128 dev lo`
    LoAddress,
    /// `ip [-6] rule add fwmark <mark> lookup <table>`
    FwmarkRule {
        /// The rule's family.
        family: Family,
        /// The TPROXY mark (`-t`) it selects.
        mark: u32,
        /// The routing table (`-r`) it sends marked packets to.
        table: u32,
    },
    /// `ip [-6] route add local default dev lo table <table>`
    LocalRoute {
        /// The route's family.
        family: Family,
        /// The TPROXY routing table (`-r`).
        table: u32,
    },
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |family: &Family| match family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        };
        match self {
            Object::LoAddress => write!(f, "::6/128 on lo"),
            Object::FwmarkRule {
                family,
                mark,
                table,
            } => {
                write!(f, "{} rule fwmark {mark} lookup {table}", name(family))
            }
            Object::LocalRoute { family, table } => {
                write!(f, "{} local default route in table {table}", name(family))
            }
        }
    }
}

/// The objects a plan needs, in the order they are added (removal goes in reverse).
pub fn objects(plan: &Plan) -> Vec<Object> {
    let mut out = Vec::new();
    if plan.ipv6 {
        out.push(Object::LoAddress);
    }
    if let Some(route) = plan.tproxy_route {
        for family in plan.families() {
            out.push(Object::FwmarkRule {
                family,
                mark: route.mark,
                table: route.table,
            });
            out.push(Object::LocalRoute {
                family,
                table: route.table,
            });
        }
    }
    out
}

/// Adds the object unless it is there.
pub fn ensure(nl: &mut Netlink, object: Object) -> Result<Changed, NetlinkError> {
    match object {
        Object::LoAddress => nl.ensure_lo_address_v6(PASSTHROUGH_V6),
        Object::FwmarkRule {
            family,
            mark,
            table,
        } => nl.ensure_fwmark_rule(family, mark, table),
        Object::LocalRoute { family, table } => nl.ensure_local_default_route(family, table),
    }
}

/// Removes exactly this object, if it is there and ours.
pub fn remove(nl: &mut Netlink, object: Object) -> Result<Changed, NetlinkError> {
    remove_object(nl, object, false)
}

/// [`remove`]; `just_added` also removes the address when it carries no protocol at all,
/// which is how a kernel without `IFA_PROTO` keeps the one this run has just added.
fn remove_object(
    nl: &mut Netlink,
    object: Object,
    just_added: bool,
) -> Result<Changed, NetlinkError> {
    match object {
        Object::LoAddress => nl.remove_lo_address_v6(PASSTHROUGH_V6, just_added),
        Object::FwmarkRule {
            family,
            mark,
            table,
        } => nl.remove_fwmark_rule(family, mark, table),
        Object::LocalRoute { family, table } => nl.remove_local_default_route(family, table),
    }
}

/// Whether the object is there, whoever added it.
pub fn present(nl: &mut Netlink, object: Object) -> Result<bool, NetlinkError> {
    match object {
        Object::LoAddress => nl.has_lo_address_v6(PASSTHROUGH_V6),
        Object::FwmarkRule {
            family,
            mark,
            table,
        } => nl.has_fwmark_rule(family, mark, table),
        Object::LocalRoute { family, table } => nl.has_local_default_route(family, table),
    }
}

/// Whether the object is there with meshinit's mark.
pub fn owned(nl: &mut Netlink, object: Object) -> Result<bool, NetlinkError> {
    match object {
        Object::LoAddress => nl.has_our_lo_address_v6(PASSTHROUGH_V6),
        Object::FwmarkRule {
            family,
            mark,
            table,
        } => nl.has_our_fwmark_rule(family, mark, table),
        Object::LocalRoute { family, table } => {
            Ok(nl.our_local_default_routes(family)?.contains(&table))
        }
    }
}

/// Every object in the namespace that carries meshinit's mark, whichever configuration added
/// it, in the order they would have been added.
pub fn ours(nl: &mut Netlink) -> Result<Vec<Object>, NetlinkError> {
    let mut out = Vec::new();
    if without_ipv6(nl.has_our_lo_address_v6(PASSTHROUGH_V6))?.unwrap_or(false) {
        out.push(Object::LoAddress);
    }
    for family in [Family::V4, Family::V6] {
        let rules = nl.our_fwmark_rules(family);
        let rules = match family {
            Family::V4 => rules?,
            Family::V6 => without_ipv6(rules)?.unwrap_or_default(),
        };
        for (mark, table) in rules {
            out.push(Object::FwmarkRule {
                family,
                mark,
                table,
            });
        }
        let routes = nl.our_local_default_routes(family);
        let routes = match family {
            Family::V4 => routes?,
            Family::V6 => without_ipv6(routes)?.unwrap_or_default(),
        };
        for table in routes {
            out.push(Object::LocalRoute { family, table });
        }
    }
    Ok(out)
}

/// An IPv6 listing on a kernel without IPv6 (`ipv6.disable=1`) fails with
/// `EAFNOSUPPORT`: then nothing of ours can be there (`None`).
fn without_ipv6<T>(listed: Result<T, NetlinkError>) -> Result<Option<T>, NetlinkError> {
    match listed {
        Err(e) if e.errno() == Some(nix::errno::Errno::EAFNOSUPPORT) => Ok(None),
        other => other.map(Some),
    }
}

/// Our TPROXY objects (rules and routes) that the plan does not need: left by an earlier
/// configuration (another mode, mark or table, or a family no longer planned). `::6` is not
/// among them: IPv6 rules of an earlier configuration are not removed by an apply either.
pub fn stale(nl: &mut Netlink, plan: &Plan) -> Result<Vec<Object>, NetlinkError> {
    let planned = objects(plan);
    Ok(ours(nl)?
        .into_iter()
        .filter(|o| *o != Object::LoAddress && !planned.contains(o))
        .collect())
}

/// Removing one of several objects failed: which, why, and those removed before it.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "removing {object}: {error}{}",
    if removed.is_empty() {
        String::new()
    } else {
        format!(
            " (already removed: {})",
            removed.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
        )
    }
)]
pub struct RemoveError {
    /// The object that could not be removed.
    pub object: Object,
    /// Why.
    #[source]
    pub error: NetlinkError,
    /// The objects removed before it.
    pub removed: Vec<Object>,
}

/// Removes these objects (ours), newest first; returns what went. Stops at the first failure,
/// which names the object and what was removed before it.
pub fn remove_each(nl: &mut Netlink, objects: &[Object]) -> Result<Vec<Object>, RemoveError> {
    let mut removed = Vec::new();
    for &object in objects.iter().rev() {
        match remove(nl, object) {
            Ok(Changed::Yes) => removed.push(object),
            Ok(Changed::No) => {}
            Err(error) => {
                return Err(RemoveError {
                    object,
                    error,
                    removed,
                })
            }
        }
    }
    Ok(removed)
}

/// Removes an object this run has just added (undo after a failure): [`remove`], and also
/// the address when it carries no protocol at all, which is how a kernel without `IFA_PROTO`
/// keeps the one this run added.
pub fn remove_added(nl: &mut Netlink, object: Object) -> Result<Changed, NetlinkError> {
    remove_object(nl, object, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::TproxyRoute;

    #[test]
    fn objects_follow_the_plan() {
        let plan = |ipv6, tproxy: Option<TproxyRoute>| Plan {
            rules: vec![],
            ipv6,
            tproxy_route: tproxy,
        };
        assert!(objects(&plan(false, None)).is_empty());
        assert_eq!(objects(&plan(true, None)), vec![Object::LoAddress]);
        let route = TproxyRoute {
            mark: 1337,
            table: 133,
        };
        let all = objects(&plan(true, Some(route)));
        assert_eq!(all.len(), 5);
        assert_eq!(all[1].to_string(), "IPv4 rule fwmark 1337 lookup 133");
        assert_eq!(all[4].to_string(), "IPv6 local default route in table 133");
    }
}
