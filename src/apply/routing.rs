//! The netlink objects a plan needs besides its rules — the IPv6 passthrough address on `lo`
//! and, under TPROXY, a `fwmark` policy rule and a local default route per family — as one
//! list, so applying, cleaning up and checking all speak of the same objects.

use std::fmt;
use std::net::Ipv6Addr;

use super::netlink::{Changed, Netlink, NetlinkError};
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

/// Removes exactly this object, if it is there.
pub fn remove(nl: &mut Netlink, object: Object) -> Result<Changed, NetlinkError> {
    match object {
        Object::LoAddress => nl.remove_lo_address_v6(PASSTHROUGH_V6),
        Object::FwmarkRule {
            family,
            mark,
            table,
        } => nl.remove_fwmark_rule(family, mark, table),
        Object::LocalRoute { family, table } => nl.remove_local_default_route(family, table),
    }
}

/// Whether the object is there.
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

/// Adds every object the plan needs; returns those this call added. On failure the ones it
/// added are removed again and the error says which object failed.
pub fn ensure_all(nl: &mut Netlink, plan: &Plan) -> Result<Vec<Object>, String> {
    let mut added = Vec::new();
    for object in objects(plan) {
        match ensure(nl, object) {
            Ok(Changed::Yes) => added.push(object),
            Ok(Changed::No) => {}
            Err(e) => {
                remove_all(nl, &added);
                return Err(format!("adding {object}: {e}"));
            }
        }
    }
    Ok(added)
}

/// Removes these objects, newest first. Best effort: used to undo after another failure,
/// which is the error reported.
pub fn remove_all(nl: &mut Netlink, objects: &[Object]) {
    for &object in objects.iter().rev() {
        let _ = remove(nl, object);
    }
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
