//! `--exclude-outbound-ports-for-uids` (meshinit's own, after Kuma's flag of that name): the
//! grammar of its `PROTO:PORTS:UIDS` entries and the typed exclusions they become.
//!
//! Grammar: entries separated by `;` (a comma already separates ports and uids; Kuma repeats
//! the flag instead, which a pflag-style "last one wins" flag and an environment variable
//! cannot). Each entry is exactly three `:`-separated parts:
//! - PROTO: `tcp`, `udp`, `tcp,udp` (either order) or `*` for both;
//! - PORTS: what `-o` takes (a comma list, parsed by [`parse_ports`]); `*` (Kuma's "every
//!   port") is refused, since it would be a uid exclusion, not a port exclusion;
//! - UIDS: a comma list of numeric uids (Kuma's uid ranges `106-108` are refused: list them).
//!
//! Kuma's shorter forms (`PORTS:UIDS`, `UIDS`) are refused: with iptables-style port ranges
//! (`8000:9000`) in port lists, `9000:1500` could mean either. Empty entries (`a;;b`, a
//! trailing `;`) are dropped as empty list elements are elsewhere; empty parts are errors.

use super::types::{parse_ids, parse_ports, split_list, Port, PortRange};

/// One entry: connections from any of `uids` to any of `ports` over the listed protocols are
/// not captured outbound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UidPortExclude {
    /// TCP connections are excluded.
    pub tcp: bool,
    /// UDP datagrams are excluded (also from DNS capture, when a port is 53).
    pub udp: bool,
    /// The destination ports and ranges, as `-o` takes them.
    pub ports: Vec<PortRange>,
    /// The sending sockets' uids.
    pub uids: Vec<u32>,
}

impl UidPortExclude {
    /// Whether the entry excludes UDP to `port` (the DNS port makes the uid's queries bypass
    /// DNS capture).
    pub fn excludes_udp_port(&self, port: Port) -> bool {
        self.udp && self.ports.iter().any(|r| r.contains(port.get()))
    }
}

impl std::fmt::Display for UidPortExclude {
    /// The entry as the flag takes it (`tcp,udp:9000,9100:1500`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match (self.tcp, self.udp) {
            (true, true) => "tcp,udp",
            (true, false) => "tcp",
            _ => "udp",
        };
        let join = |items: Vec<String>| items.join(",");
        write!(
            f,
            "{proto}:{}:{}",
            join(
                self.ports
                    .iter()
                    // `LO-HI`, the range spelling this flag's grammar takes (`:` separates parts).
                    .map(|r| match r.as_single() {
                        Some(p) => p.to_string(),
                        None => format!("{}-{}", r.lo(), r.hi()),
                    })
                    .collect()
            ),
            join(self.uids.iter().map(ToString::to_string).collect())
        )
    }
}

/// Parses the whole flag value: `;`-separated entries, none of them empty inside.
pub fn parse_uid_port_excludes(s: &str) -> Result<Vec<UidPortExclude>, String> {
    s.split(';')
        .filter(|e| !e.is_empty())
        .map(parse_entry)
        .collect()
}

fn parse_entry(entry: &str) -> Result<UidPortExclude, String> {
    let parts: Vec<&str> = entry.split(':').collect();
    let [proto, ports, uids] = parts[..] else {
        let hint = if parts.len() > 3 {
            " (write a port range as 8000-9000 here: ':' separates the parts)"
        } else {
            " (e.g. tcp:9090:1500; separate entries with ';')"
        };
        return Err(format!("entry {entry:?} is not PROTO:PORTS:UIDS{hint}"));
    };
    for (name, part) in [("protocol", proto), ("ports", ports), ("uids", uids)] {
        if part.is_empty() {
            return Err(format!("entry {entry:?} has no {name}"));
        }
    }
    let (tcp, udp) = match proto {
        "*" => (true, true),
        _ => {
            let (mut tcp, mut udp) = (false, false);
            for p in split_list(proto) {
                match p {
                    "tcp" => tcp = true,
                    "udp" => udp = true,
                    other => {
                        return Err(format!(
                            "entry {entry:?}: protocol {other:?} is not tcp, udp or *"
                        ))
                    }
                }
            }
            (tcp, udp)
        }
    };
    if !(tcp || udp) {
        return Err(format!("entry {entry:?} has no protocol"));
    }
    if ports == "*" {
        return Err(format!(
            "entry {entry:?}: '*' (every port) is not supported; list the ports"
        ));
    }
    let ports = parse_ports(ports).map_err(|e| format!("entry {entry:?}: {e}"))?;
    if ports.is_empty() {
        return Err(format!("entry {entry:?} has no ports"));
    }
    let uid_list = parse_ids(uids).map_err(|e| {
        let range = if uids.contains('-') {
            " (uid ranges are not supported; list the uids)"
        } else {
            ""
        };
        format!("entry {entry:?}: {e}{range}")
    })?;
    if uid_list.is_empty() {
        return Err(format!("entry {entry:?} has no uids"));
    }
    Ok(UidPortExclude {
        tcp,
        udp,
        ports,
        uids: uid_list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(p: u16) -> PortRange {
        PortRange::single(p.to_string().parse().unwrap())
    }

    #[test]
    fn entries_and_their_parts() {
        let got = parse_uid_port_excludes("tcp:9090:1500;tcp,udp:9000,9100:1500,1600;").unwrap();
        assert_eq!(
            got,
            vec![
                UidPortExclude {
                    tcp: true,
                    udp: false,
                    ports: vec![port(9090)],
                    uids: vec![1500],
                },
                UidPortExclude {
                    tcp: true,
                    udp: true,
                    ports: vec![port(9000), port(9100)],
                    uids: vec![1500, 1600],
                },
            ]
        );
        let star = parse_uid_port_excludes("*:53:0").unwrap();
        assert!(star[0].tcp && star[0].udp);
        assert!(star[0].excludes_udp_port(port(53).lo()));
        assert!(!parse_uid_port_excludes("tcp:53:0").unwrap()[0].excludes_udp_port(port(53).lo()));
        assert_eq!(got[1].to_string(), "tcp,udp:9000,9100:1500,1600");
        // Ranges come from the port-list parser: `LO-HI` (`:` separates the parts), shown as
        // written so the entry reads back.
        let ranged = parse_uid_port_excludes("udp:50-60,9090:1500").unwrap();
        assert_eq!(ranged[0].ports[0].lo().get(), 50);
        assert_eq!(ranged[0].ports[0].hi().get(), 60);
        assert!(ranged[0].excludes_udp_port(port(53).lo()));
        assert!(!ranged[0].excludes_udp_port(port(61).lo()));
        assert_eq!(ranged[0].to_string(), "udp:50-60,9090:1500");
        assert_eq!(parse_uid_port_excludes("").unwrap(), vec![]);
        assert_eq!(parse_uid_port_excludes(";;").unwrap(), vec![]);
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (bad, says) in [
            ("tcp:9090", "is not PROTO:PORTS:UIDS"),
            ("9090:1500", "is not PROTO:PORTS:UIDS"),
            ("tcp:8000:9000:1500", "8000-9000"),
            (":9090:1500", "has no protocol"),
            ("tcp::1500", "has no ports"),
            ("tcp:9090:", "has no uids"),
            ("tcp:,:1500", "has no ports"),
            ("tcp:9090:,", "has no uids"),
            (",:9090:1500", "has no protocol"),
            ("sctp:9090:1500", "\"sctp\" is not tcp, udp or *"),
            ("TCP:9090:1500", "\"TCP\""),
            ("tcp:*:1500", "every port"),
            ("tcp:0:1500", "not a port number"),
            ("tcp:9090:istio", "not a numeric id"),
            ("tcp:9090:106-108", "uid ranges"),
            ("tcp:9090:-1", "not a numeric id"),
            ("tcp:9090:1500;udp:53", "\"udp:53\""),
            ("tcp:9000-8000:1500", "reversed"),
            ("tcp:8000-9000,8500:1500", "overlap"),
        ] {
            let e = parse_uid_port_excludes(bad).expect_err(bad);
            assert!(e.contains(says), "{bad:?}: {e:?} should say {says:?}");
        }
    }
}
