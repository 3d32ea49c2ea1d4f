//! The connection spec of `meshinit trace --conn`: `DIRECTION PROTOCOL key=value …`, e.g.
//! `out tcp uid=1000 gid=1000 dst=10.96.0.10:80` or
//! `in tcp src=10.0.0.7:4321 dst=10.244.1.5:8080 iface=eth0`. Every error names the field and
//! its value.

use std::net::{IpAddr, SocketAddr};

use super::{Conn, Direction};
use crate::plan::Protocol;

/// What `--conn` takes, for error messages and help.
pub const SPEC_HELP: &str = "out|in tcp|udp dst=ADDR:PORT [src=ADDR[:PORT]] [uid=N] [gid=N] \
     [iface=IF (in)] [oif=IF (out)] [mark=N]";

/// A connection spec that cannot be read, naming the field and value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --conn {field} {value:?}: {reason} (--conn takes: {SPEC_HELP})")]
pub struct ConnError {
    /// The field (`direction`, `protocol`, `dst`, …).
    pub field: String,
    /// Its value as written.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

fn error(field: &str, value: &str, reason: &str) -> ConnError {
    ConnError {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Parses a connection spec.
pub fn parse(spec: &str) -> Result<Conn, ConnError> {
    let mut words = spec.split_whitespace();
    let direction = match words.next() {
        Some("out") => Direction::Out,
        Some("in") => Direction::In,
        other => return Err(error("direction", other.unwrap_or(""), "must be out or in")),
    };
    let protocol = match words.next() {
        Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        other => return Err(error("protocol", other.unwrap_or(""), "must be tcp or udp")),
    };
    let mut conn = Conn {
        direction,
        protocol,
        uid: 0,
        gid: 0,
        src: None,
        sport: None,
        dst: IpAddr::from([0, 0, 0, 0]),
        dport: 0,
        iif: None,
        oif: None,
        mark: 0,
    };
    let mut have_dst = false;
    let mut seen: Vec<&str> = Vec::new();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(error("field", word, "expected key=value"));
        };
        if seen.contains(&key) {
            return Err(error(key, value, "given twice"));
        }
        seen.push(key);
        match key {
            "uid" | "gid" if direction == Direction::In => {
                return Err(error(
                    key,
                    value,
                    "inbound connections have no local socket owner",
                ))
            }
            "uid" => conn.uid = number(key, value)?,
            "gid" => conn.gid = number(key, value)?,
            "mark" => conn.mark = number(key, value)?,
            "dst" => {
                let addr = socket_addr(key, value)?;
                if addr.port() == 0 {
                    return Err(error(key, value, "port must be 1-65535"));
                }
                conn.dst = addr.ip();
                conn.dport = addr.port();
                have_dst = true;
            }
            "src" => {
                let (ip, port) = match value.parse::<IpAddr>() {
                    Ok(ip) => (ip, None),
                    Err(_) => {
                        let addr = socket_addr(key, value)?;
                        (addr.ip(), Some(addr.port()))
                    }
                };
                conn.src = Some(ip);
                conn.sport = port;
            }
            "iface" | "iif" if direction == Direction::Out => {
                return Err(error(key, value, "outbound connections leave through oif="))
            }
            "iface" | "iif" => conn.iif = Some(ifname(key, value)?),
            "oif" if direction == Direction::In => {
                return Err(error(key, value, "inbound connections arrive on iface="))
            }
            "oif" => conn.oif = Some(ifname(key, value)?),
            _ => return Err(error("field", key, "unknown field")),
        }
    }
    if !have_dst {
        return Err(error("dst", "", "missing: dst=ADDR:PORT is required"));
    }
    if let Some(src) = conn.src {
        // IPv4-mapped addresses are IPv4 (the kernel sends them so).
        if src.to_canonical().is_ipv4() != conn.dst.to_canonical().is_ipv4() {
            return Err(error("src", &src.to_string(), "not the family of dst"));
        }
    }
    Ok(conn)
}

fn number(field: &str, value: &str) -> Result<u32, ConnError> {
    value
        .parse::<u32>()
        .map_err(|_| error(field, value, "must be a non-negative integer"))
}

fn socket_addr(field: &str, value: &str) -> Result<SocketAddr, ConnError> {
    value
        .parse::<SocketAddr>()
        .map_err(|_| error(field, value, "must be ADDR:PORT (IPv6 as [ADDR]:PORT)"))
}

fn ifname(field: &str, value: &str) -> Result<String, ConnError> {
    if value.is_empty() || value.len() > 15 || value.contains('/') {
        return Err(error(field, value, "not an interface name"));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_examples_parse() {
        let c = parse("out tcp uid=1000 gid=1000 dst=10.96.0.10:80").unwrap();
        assert_eq!(
            (c.direction, c.uid, c.gid, c.dport),
            (Direction::Out, 1000, 1000, 80)
        );
        let c = parse("in tcp src=10.0.0.7:4321 dst=10.244.1.5:8080 iface=eth0").unwrap();
        assert_eq!(c.sport, Some(4321));
        assert_eq!(c.iif.as_deref(), Some("eth0"));
        let c = parse("out udp uid=1000 dst=[fd00::10]:53").unwrap();
        assert!(c.dst.is_ipv6());
        assert_eq!(c.protocol, Protocol::Udp);
    }

    #[test]
    fn every_error_names_its_field_and_value() {
        for (spec, field, value) in [
            ("sideways tcp dst=1.2.3.4:80", "direction", "sideways"),
            ("out sctp dst=1.2.3.4:80", "protocol", "sctp"),
            ("out tcp uid=x dst=1.2.3.4:80", "uid", "x"),
            ("out tcp dst=1.2.3.4", "dst", "1.2.3.4"),
            ("out tcp dst=1.2.3.4:0", "dst", "1.2.3.4:0"),
            ("out tcp", "dst", ""),
            ("out tcp dst=1.2.3.4:80 colour=red", "field", "colour"),
            ("out tcp dst=1.2.3.4:80 iface=eth0", "iface", "eth0"),
            ("in tcp dst=1.2.3.4:80 uid=5", "uid", "5"),
            ("out tcp src=fd00::1 dst=1.2.3.4:80", "src", "fd00::1"),
            ("out tcp dst=1.2.3.4:80 dst=1.2.3.4:81", "dst", "1.2.3.4:81"),
        ] {
            let e = parse(spec).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.value.as_str()),
                (field, value),
                "{spec}"
            );
            assert!(e.to_string().contains(&format!("--conn {field}")), "{e}");
        }
    }
}
