//! Run-time detection, as Istio does it, behind the [`Host`] trait so tests can fake the
//! machine: whether IPv6 rules are needed (from interface addresses), the DNS servers (from
//! /etc/resolv.conf) and the proxy UID (from /etc/passwd, without NSS). Reads only.

use std::net::IpAddr;

/// What detection may read from the machine.
pub trait Host {
    /// Every interface address, in the kernel's dump order (IPv4 before IPv6).
    fn interface_addrs(&self) -> std::io::Result<Vec<IpAddr>>;
    /// A file's whole text (`/etc/resolv.conf`, `/etc/passwd`).
    fn read_file(&self, path: &str) -> std::io::Result<String>;
}

/// The real machine.
pub struct SystemHost;

impl Host for SystemHost {
    fn interface_addrs(&self) -> std::io::Result<Vec<IpAddr>> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
        Ok(addrs
            .filter_map(|ifa| {
                let sa = ifa.address?;
                if let Some(v4) = sa.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect())
    }

    fn read_file(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Decides whether IPv6 rules are needed, as Istio's `getLocalIP` does: skip loopback and
/// link-local addresses (IPv4-mapped ones unwrapped); without dual-stack the first remaining
/// address decides, with dual-stack any IPv6 address turns IPv6 on. No usable address is an
/// error (Istio panics with "no valid local IP address found").
pub fn ipv6_from_addrs(addrs: &[IpAddr], dual_stack: bool) -> Result<bool, String> {
    ipv6_decision(addrs, dual_stack).map(|(on, _)| on)
}

/// [`ipv6_from_addrs`], with the reason in words for the log ("IPv6 off: fd00::1 is present
/// but --dual-stack is off, as Istio decides").
pub fn ipv6_decision(addrs: &[IpAddr], dual_stack: bool) -> Result<(bool, String), String> {
    let usable: Vec<IpAddr> = addrs
        .iter()
        .map(|a| a.to_canonical())
        .filter(|a| !is_excluded(a))
        .collect();
    let Some(first) = usable.first() else {
        return Err(format!(
            "no valid local IP address found (looked at {} addresses; pass --ipv6=true|false to skip detection)",
            addrs.len()
        ));
    };
    let some_v6 = usable.iter().find(|a| a.is_ipv6());
    Ok(match (first.is_ipv6(), some_v6, dual_stack) {
        (true, _, _) => (
            true,
            format!("IPv6 on: the first usable address, {first}, is IPv6, as Istio decides"),
        ),
        (false, Some(v6), true) => (
            true,
            format!("IPv6 on: {v6} is present and --dual-stack is on, as Istio decides"),
        ),
        (false, Some(v6), false) => (
            false,
            format!(
                "IPv6 off: {v6} is present but --dual-stack is off and the first usable address, {first}, is IPv4, as Istio decides (--ipv6=true or --dual-stack to turn it on)"
            ),
        ),
        (false, None, _) => (
            false,
            format!("IPv6 off: no usable IPv6 address (the first usable address is {first})"),
        ),
    })
}

fn is_excluded(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback() || v4.is_link_local() || (o[0] == 224 && o[1] == 0 && o[2] == 0)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback() || (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xff0f) == 0xff02
        }
    }
}

/// A DNS server to capture traffic to: the address, and the text rules print it as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsServer {
    /// The address.
    pub addr: IpAddr,
    /// How rules print it: Go's normal form, or the text given to `--dns-servers`.
    pub text: String,
}

/// The nameservers of a resolv.conf, normalised as Istio does (Go's `netip.Addr.String()`).
/// Zoned IPv6 addresses (`fe80::1%eth0`) are skipped: no rule can carry a zone.
pub fn nameservers(resolv_conf: &str) -> Vec<DnsServer> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == "nameserver").then_some(())?;
            let addr: IpAddr = fields.next()?.parse().ok()?;
            Some(DnsServer {
                addr,
                text: addr.to_string(),
            })
        })
        .collect()
}

/// The uid of `user` in an /etc/passwd text. Looked up without NSS on purpose: NSS modules can
/// block pod start-up for a minute (istio/istio#48416).
pub fn uid_of(passwd: &str, user: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        fields.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn ipv6_decision_says_why() {
        let reason = |list: &[&str], dual| ipv6_decision(&addrs(list), dual).unwrap();
        assert_eq!(
            reason(&["10.1.2.3", "fd00:77::1"], false),
            (false, "IPv6 off: fd00:77::1 is present but --dual-stack is off and the first usable address, 10.1.2.3, is IPv4, as Istio decides (--ipv6=true or --dual-stack to turn it on)".to_string())
        );
        assert_eq!(
            reason(&["10.1.2.3", "fd00:77::1"], true),
            (
                true,
                "IPv6 on: fd00:77::1 is present and --dual-stack is on, as Istio decides"
                    .to_string()
            )
        );
        assert_eq!(
            reason(&["fe80::1", "fd00::2", "10.1.2.3"], false),
            (
                true,
                "IPv6 on: the first usable address, fd00::2, is IPv6, as Istio decides".to_string()
            )
        );
        assert_eq!(
            reason(&["127.0.0.1", "10.1.2.3"], true),
            (
                false,
                "IPv6 off: no usable IPv6 address (the first usable address is 10.1.2.3)"
                    .to_string()
            )
        );
    }

    #[test]
    fn ipv6_follows_the_first_usable_address() {
        let v4_first = addrs(&["127.0.0.1", "::1", "10.1.1.1", "fd00::1"]);
        assert!(!ipv6_from_addrs(&v4_first, false).unwrap());
        assert!(ipv6_from_addrs(&v4_first, true).unwrap());
        let v6_only = addrs(&["127.0.0.1", "fe80::1", "169.254.1.1", "fd00::1"]);
        assert!(ipv6_from_addrs(&v6_only, false).unwrap());
        let mapped = addrs(&["::ffff:10.0.0.1", "fd00::1"]);
        assert!(!ipv6_from_addrs(&mapped, false).unwrap());
        let multicast = addrs(&["224.0.0.251", "ff02::1", "fd00::1"]);
        assert!(ipv6_from_addrs(&multicast, false).unwrap());
        assert!(ipv6_from_addrs(&addrs(&["127.0.0.1", "::1"]), true).is_err());
        assert!(ipv6_from_addrs(&[], false).is_err());
    }

    #[test]
    fn resolv_conf_nameservers_are_normalised() {
        let text = "# comment\nsearch a.svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver 2001:DB8::0:1\nnameserver fe80::1%eth0\nnameserver bogus\n\
                    nameserver\noptions ndots:5\n  nameserver 127.0.0.53\n";
        let servers: Vec<String> = nameservers(text).into_iter().map(|s| s.text).collect();
        assert_eq!(servers, vec!["10.96.0.10", "2001:db8::1", "127.0.0.53"]);
    }

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:1337:1337::/home:/bin/sh\nbad:x:nan:1::/:\n";
        assert_eq!(uid_of(passwd, "istio-proxy"), Some(1337));
        assert_eq!(uid_of(passwd, "root"), Some(0));
        assert_eq!(uid_of(passwd, "bad"), None);
        assert_eq!(uid_of(passwd, "nobody"), None);
        assert_eq!(uid_of(passwd, "istio"), None);
    }

    #[test]
    fn the_real_host_answers() {
        assert!(SystemHost.interface_addrs().is_ok());
    }
}
