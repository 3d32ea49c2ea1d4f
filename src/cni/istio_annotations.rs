//! Istio's pod annotations that Istio CNI's sidecar plugin turns into istio-iptables settings:
//! their names, Istio CNI's defaults and validation, and the settings one pod's annotations
//! give (`Redirect`). Pure: the annotations are a map the caller read from the runtime.
//!
//! Istio CNI reads these in `cni/pkg/plugin/sidecar_redirect.go`; the behaviour below follows
//! it (an absent annotation takes Istio CNI's default, an invalid one refuses the pod), except
//! that a setting the conflist's `istio_iptables_args` gives is the default instead, so a node
//! keeps the mesh-wide values Istio's injector would otherwise write into the annotations.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// `sidecar.istio.io/inject`: `false` (Go's boolean spellings) keeps the pod out.
pub const INJECT: &str = "sidecar.istio.io/inject";
/// `sidecar.istio.io/status`: written by Istio's injector on every pod it injected; a JSON
/// object naming the containers it added.
pub const STATUS: &str = "sidecar.istio.io/status";
/// `inject.istio.io/templates`: the injection templates used; `gateway` makes the proxy a
/// router, which Istio CNI leaves alone.
pub const TEMPLATES: &str = "inject.istio.io/templates";
/// `sidecar.istio.io/interceptionMode`: `REDIRECT` or `TPROXY`.
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
/// `traffic.sidecar.istio.io/includeOutboundIPRanges`.
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// `traffic.sidecar.istio.io/excludeOutboundIPRanges`.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// `traffic.sidecar.istio.io/includeInboundPorts`.
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// `traffic.sidecar.istio.io/excludeInboundPorts`.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// `traffic.sidecar.istio.io/includeOutboundPorts`.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// `traffic.sidecar.istio.io/excludeOutboundPorts`.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// `traffic.sidecar.istio.io/excludeInterfaces`.
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// `traffic.sidecar.istio.io/kubevirtInterfaces` (deprecated for the next one).
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
/// `istio.io/reroute-virtual-interfaces`; wins over `kubevirtInterfaces` when both are set.
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";

/// The inbound ports Istio CNI always excludes (status, health, Prometheus), appended to
/// whatever the annotation or default says.
const ALWAYS_EXCLUDED_INBOUND: &str = "15020,15021,15090";

/// How a value is checked (Istio CNI's validators).
#[derive(Clone, Copy)]
enum Check {
    Mode,
    Cidrs,
    CidrsOrWildcard,
    PortsOrWildcard,
    Interfaces,
}

/// One annotation that becomes one istio-iptables flag.
struct Setting {
    annotation: &'static str,
    /// The long flag (meshinit's = istio-iptables').
    flag: &'static str,
    /// Istio CNI's value when the annotation is absent (and the conflist does not set the flag).
    default: &'static str,
    check: Check,
}

/// Istio CNI's table, in the order its `NewRedirect` reads it.
const SETTINGS: &[Setting] = &[
    Setting {
        annotation: INTERCEPTION_MODE,
        flag: "istio-inbound-interception-mode",
        default: "REDIRECT",
        check: Check::Mode,
    },
    Setting {
        annotation: INCLUDE_OUTBOUND_IP_RANGES,
        flag: "istio-service-cidr",
        default: "*",
        check: Check::CidrsOrWildcard,
    },
    Setting {
        annotation: EXCLUDE_OUTBOUND_IP_RANGES,
        flag: "istio-service-exclude-cidr",
        default: "",
        check: Check::Cidrs,
    },
    Setting {
        annotation: EXCLUDE_INBOUND_PORTS,
        flag: "istio-local-exclude-ports",
        default: "15020",
        check: Check::PortsOrWildcard,
    },
    Setting {
        annotation: INCLUDE_INBOUND_PORTS,
        flag: "istio-inbound-ports",
        default: "*",
        check: Check::PortsOrWildcard,
    },
    Setting {
        annotation: EXCLUDE_OUTBOUND_PORTS,
        flag: "istio-local-outbound-ports-exclude",
        default: "15020",
        check: Check::PortsOrWildcard,
    },
    Setting {
        annotation: INCLUDE_OUTBOUND_PORTS,
        flag: "istio-outbound-ports",
        default: "",
        check: Check::PortsOrWildcard,
    },
    Setting {
        annotation: EXCLUDE_INTERFACES,
        flag: "istio-exclude-interfaces",
        default: "",
        check: Check::Interfaces,
    },
];

/// An annotation whose value Istio CNI refuses: the pod is refused too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAnnotation {
    /// The annotation's name.
    pub annotation: &'static str,
    /// Its value, as the runtime passed it.
    pub value: String,
    /// Why it is refused.
    pub why: String,
}

impl std::fmt::Display for InvalidAnnotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pod annotation {}={:?}: {}",
            self.annotation, self.value, self.why
        )
    }
}

/// The istio-iptables settings one pod's annotations give: `(long flag, value)` in Istio
/// CNI's order. `base` is the value the conflist's `istio_iptables_args` sets for a flag, if it
/// sets it; it replaces Istio CNI's default for an absent annotation.
pub fn redirect(
    annotations: &BTreeMap<String, String>,
    base: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(&'static str, String)>, InvalidAnnotation> {
    let mut settings = Vec::new();
    for setting in SETTINGS {
        let value = match annotations.get(setting.annotation) {
            Some(value) => {
                check(setting.check, value).map_err(|why| InvalidAnnotation {
                    annotation: setting.annotation,
                    value: value.clone(),
                    why,
                })?;
                value.clone()
            }
            None => base(setting.flag).unwrap_or_else(|| setting.default.to_string()),
        };
        let value = if setting.annotation == EXCLUDE_INBOUND_PORTS {
            with_always_excluded(&value)
        } else {
            value
        };
        settings.push((setting.flag, value));
    }
    // The virtual interfaces: the current name wins; the deprecated one is read only when the
    // current one is absent (Istio CNI does the same).
    let virtual_interfaces = [REROUTE_VIRTUAL_INTERFACES, KUBEVIRT_INTERFACES]
        .into_iter()
        .find_map(|name| annotations.get(name).map(|value| (name, value)));
    let value = match virtual_interfaces {
        Some((annotation, value)) => {
            check(Check::Interfaces, value).map_err(|why| InvalidAnnotation {
                annotation,
                value: value.clone(),
                why,
            })?;
            value.clone()
        }
        None => base("kube-virt-interfaces").unwrap_or_default(),
    };
    settings.push(("kube-virt-interfaces", value));
    Ok(settings)
}

/// Istio CNI's rule for the inbound exclusions: the value, trimmed, then `15020,15021,15090`,
/// each port once in first-seen order.
fn with_always_excluded(value: &str) -> String {
    let mut list = value.trim().to_string();
    if !list.is_empty() && !list.ends_with(',') {
        list.push(',');
    }
    list.push_str(ALWAYS_EXCLUDED_INBOUND);
    let mut seen: Vec<&str> = Vec::new();
    for port in list.split(',') {
        if !seen.contains(&port) {
            seen.push(port);
        }
    }
    seen.join(",")
}

fn check(kind: Check, value: &str) -> Result<(), String> {
    match kind {
        Check::Mode => match value {
            "REDIRECT" | "TPROXY" => Ok(()),
            _ => Err("not an interception mode Istio CNI supports (REDIRECT or TPROXY)".into()),
        },
        Check::Cidrs => cidrs(value),
        Check::CidrsOrWildcard if value == "*" => Ok(()),
        Check::CidrsOrWildcard => cidrs(value),
        Check::PortsOrWildcard if value == "*" => Ok(()),
        Check::PortsOrWildcard => ports(value),
        Check::Interfaces => interfaces(value),
    }
}

/// A comma-separated list of `address/bits` prefixes (Go's `netip.ParsePrefix`: no spaces, no
/// zone, bits in decimal without a sign or leading zero); empty is an empty list.
fn cidrs(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    for cidr in value.split(',') {
        let bad = |why: &str| Err(format!("{cidr:?} is not a CIDR ({why})"));
        let Some((addr, bits)) = cidr.split_once('/') else {
            return bad("no '/'");
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return bad("not an IP address before '/'");
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let digits = !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit());
        let leading_zero = bits.len() > 1 && bits.starts_with('0');
        match bits.parse::<u32>() {
            Ok(n) if digits && !leading_zero && n <= max => {}
            _ => return bad(&format!("prefix length must be 0 to {max}")),
        }
    }
    Ok(())
}

/// A comma-separated list of ports (Go's `strconv.ParseUint(.., 10, 16)` after trimming
/// spaces: no ranges, no sign); the whole value trimmed empty is an empty list.
fn ports(value: &str) -> Result<(), String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(());
    }
    for port in value.split(',') {
        let p = port.trim();
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return Err(format!(
                "{port:?} is not a port (0 to 65535; Istio CNI takes no ranges)"
            ));
        }
    }
    Ok(())
}

/// A comma-separated list of Linux interface names (letter first, then letters, digits, `_`,
/// `.`, `-`; at most 15 characters); empty is an empty list.
fn interfaces(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    for name in value.split(',') {
        let name = name.trim();
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if name.is_empty() {
            return Err("an empty interface name in the list".into());
        }
        if name.len() > 15 {
            return Err(format!(
                "interface name {name:?} is longer than 15 characters"
            ));
        }
        if !valid {
            return Err(format!("interface name {name:?} has invalid characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn no_base(_: &str) -> Option<String> {
        None
    }

    fn value(settings: &[(&str, String)], flag: &str) -> String {
        settings.iter().find(|(f, _)| *f == flag).unwrap().1.clone()
    }

    #[test]
    fn absent_annotations_take_istio_cni_defaults() {
        let s = redirect(&BTreeMap::new(), &no_base).unwrap();
        assert_eq!(value(&s, "istio-inbound-interception-mode"), "REDIRECT");
        assert_eq!(value(&s, "istio-service-cidr"), "*");
        assert_eq!(value(&s, "istio-service-exclude-cidr"), "");
        assert_eq!(value(&s, "istio-inbound-ports"), "*");
        assert_eq!(value(&s, "istio-local-exclude-ports"), "15020,15021,15090");
        assert_eq!(value(&s, "istio-local-outbound-ports-exclude"), "15020");
        assert_eq!(value(&s, "istio-outbound-ports"), "");
        assert_eq!(value(&s, "kube-virt-interfaces"), "");
    }

    #[test]
    fn the_conflist_replaces_defaults_and_annotations_replace_both() {
        let base = |flag: &str| (flag == "istio-service-cidr").then(|| "10.96.0.0/12".to_string());
        let s = redirect(&BTreeMap::new(), &base).unwrap();
        assert_eq!(value(&s, "istio-service-cidr"), "10.96.0.0/12");
        let s = redirect(&map(&[(INCLUDE_OUTBOUND_IP_RANGES, "127.0.0.0/8")]), &base).unwrap();
        assert_eq!(value(&s, "istio-service-cidr"), "127.0.0.0/8");
    }

    #[test]
    fn inbound_exclusions_always_end_with_the_agent_ports_once() {
        assert_eq!(
            with_always_excluded("3333,4444"),
            "3333,4444,15020,15021,15090"
        );
        assert_eq!(with_always_excluded(" 15090, "), "15090,15020,15021");
        assert_eq!(with_always_excluded("15021,"), "15021,15020,15090");
        assert_eq!(with_always_excluded(""), "15020,15021,15090");
    }

    #[test]
    fn virtual_interfaces_prefer_the_current_name() {
        let s = redirect(
            &map(&[
                (KUBEVIRT_INTERFACES, "old0"),
                (REROUTE_VIRTUAL_INTERFACES, "new0"),
            ]),
            &no_base,
        )
        .unwrap();
        assert_eq!(value(&s, "kube-virt-interfaces"), "new0");
        let s = redirect(&map(&[(KUBEVIRT_INTERFACES, "old0")]), &no_base).unwrap();
        assert_eq!(value(&s, "kube-virt-interfaces"), "old0");
    }

    #[test]
    fn invalid_values_name_the_annotation_and_value() {
        let cases = [
            (INTERCEPTION_MODE, "NONE"),
            (INTERCEPTION_MODE, "redirect"),
            (INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0"),
            (INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8, 11.0.0.0/8"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "*"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/08"),
            (INCLUDE_INBOUND_PORTS, "8000:9000"),
            (EXCLUDE_INBOUND_PORTS, "65536"),
            (EXCLUDE_OUTBOUND_PORTS, "80,"),
            (INCLUDE_OUTBOUND_PORTS, "+80"),
            (EXCLUDE_INTERFACES, "0eth"),
            (EXCLUDE_INTERFACES, "averyveryverylongname"),
            (REROUTE_VIRTUAL_INTERFACES, "a,,b"),
            (KUBEVIRT_INTERFACES, "a b"),
        ];
        for (annotation, bad) in cases {
            let err = redirect(&map(&[(annotation, bad)]), &no_base).unwrap_err();
            assert_eq!(err.annotation, annotation);
            let text = err.to_string();
            assert!(
                text.contains(annotation) && text.contains(&format!("{bad:?}")),
                "{text}"
            );
        }
    }

    #[test]
    fn valid_values_pass_as_given() {
        let given = [
            (INTERCEPTION_MODE, "TPROXY"),
            (
                INCLUDE_OUTBOUND_IP_RANGES,
                "10.0.0.0/8,fd00::/8,10.1.2.3/32",
            ),
            (EXCLUDE_OUTBOUND_IP_RANGES, ""),
            (INCLUDE_INBOUND_PORTS, " 80, 8080 "),
            (EXCLUDE_OUTBOUND_PORTS, "*"),
            (INCLUDE_OUTBOUND_PORTS, "0,65535"),
            (EXCLUDE_INTERFACES, "eth1, net-1.2"),
        ];
        let s = redirect(&map(&given), &no_base).unwrap();
        assert_eq!(value(&s, "istio-inbound-ports"), " 80, 8080 ");
        assert_eq!(value(&s, "istio-exclude-interfaces"), "eth1, net-1.2");
    }
}
