//! Domain value types of the configuration (ports and port ranges, CIDRs, interface names,
//! owner ids and groups) and the parsers that make them: each one rejects what Istio's generator
//! would turn into a broken or silently different rule.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Splits a comma-separated list as Istio does: empty elements are dropped, nothing is trimmed.
pub fn split_list(s: &str) -> Vec<&str> {
    s.split(',').filter(|e| !e.is_empty()).collect()
}

/// A TCP/UDP port, 1–65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(u16);

impl Port {
    /// A port from a constant known to be valid.
    pub const fn new_const(p: u16) -> Port {
        assert!(p != 0);
        Port(p)
    }
    /// The port number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Port, String> {
        match parse_decimal(s).and_then(|n| u16::try_from(n).ok()) {
            Some(p) if p > 0 => Ok(Port(p)),
            _ => Err(format!("{s:?} is not a port number 1-65535")),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses an unsigned decimal number: digits only (no sign, no spaces, no hex), at most u64.
pub fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One element of a port list: a port (`8000`) or an inclusive range of ports, written
/// `8000:9000` (iptables' own syntax, which Istio's generator passes through unchanged) or
/// `8000-9000` (meshinit's spelling, the one nft uses). Every port list of the plan is a list
/// of these, so a renderer or reader that handles one handles ranges too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    lo: Port,
    hi: Port,
    /// Written as a range (`8000:8000` included): iptables then gets `LO:HI`, as Istio would
    /// print it, even when both bounds are one port.
    range: bool,
}

impl PortRange {
    /// A single port.
    pub const fn single(p: Port) -> PortRange {
        PortRange {
            lo: p,
            hi: p,
            range: false,
        }
    }
    /// The first port.
    pub fn lo(self) -> Port {
        self.lo
    }
    /// The last port (the first one for a single port).
    pub fn hi(self) -> Port {
        self.hi
    }
    /// The port, when it was written as a single port.
    pub fn as_single(self) -> Option<Port> {
        (!self.range).then_some(self.lo)
    }
    /// Whether it was written as a range (`LO:HI` or `LO-HI`, even with `LO` = `HI`).
    pub fn is_range(self) -> bool {
        self.range
    }
    /// Whether a port falls inside, bounds included.
    pub fn contains(self, port: u16) -> bool {
        (self.lo.get()..=self.hi.get()).contains(&port)
    }
    /// Whether two elements share a port.
    pub fn overlaps(self, other: PortRange) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
    /// The form `iptables-save` prints (`8000:9000`; a range of one port prints as `8000`).
    pub fn saved(self) -> String {
        if self.lo == self.hi {
            self.lo.to_string()
        } else {
            format!("{}:{}", self.lo, self.hi)
        }
    }
    /// The form nft writes and prints (`8000-9000`; a range of one port is that port).
    pub fn nft(self) -> String {
        if self.lo == self.hi {
            self.lo.to_string()
        } else {
            format!("{}-{}", self.lo, self.hi)
        }
    }
}

impl From<Port> for PortRange {
    fn from(p: Port) -> PortRange {
        PortRange::single(p)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRange, String> {
        let Some(at) = s.find([':', '-']) else {
            return s.parse().map(PortRange::single);
        };
        let (lo, hi) = (&s[..at], &s[at + 1..]);
        if lo.is_empty() || hi.is_empty() {
            return Err(format!(
                "{s:?} is an open-ended range; write both ends (like 1:9000 or 8000:65535)"
            ));
        }
        let bound = |b: &str| -> Result<Port, String> {
            b.parse().map_err(|_| {
                format!("{s:?} is not a port or a port range LO:HI or LO-HI (1-65535)")
            })
        };
        let (lo, hi) = (bound(lo)?, bound(hi)?);
        if lo > hi {
            let sep = &s[at..=at];
            return Err(format!(
                "{s:?} is a reversed range (its first port is above its last); write {hi}{sep}{lo}"
            ));
        }
        Ok(PortRange {
            lo,
            hi,
            range: true,
        })
    }
}

/// Two elements that share a port where one of them is a range, in the order listed. A sweep
/// over the elements sorted by first port: an element overlaps an earlier one exactly when its
/// first port is at most the highest last port seen so far (of a range, or of any element when
/// it is a range itself).
fn overlap_with_a_range(list: &[PortRange]) -> Option<(PortRange, PortRange)> {
    if !list.iter().any(|p| p.is_range()) {
        return None;
    }
    let mut order: Vec<usize> = (0..list.len()).collect();
    order.sort_by_key(|&i| (list[i].lo, list[i].hi, i));
    let mut widest: Option<usize> = None;
    let mut widest_range: Option<usize> = None;
    for i in order {
        let c = list[i];
        let earlier = match (c.is_range(), widest, widest_range) {
            (true, Some(w), _) if c.lo <= list[w].hi => Some(w),
            (_, _, Some(w)) if c.lo <= list[w].hi => Some(w),
            _ => None,
        };
        if let Some(w) = earlier {
            return Some(if w < i { (list[w], c) } else { (c, list[w]) });
        }
        if widest.is_none_or(|w| c.hi > list[w].hi) {
            widest = Some(i);
        }
        if c.is_range() && widest_range.is_none_or(|w| c.hi > list[w].hi) {
            widest_range = Some(i);
        }
    }
    None
}

impl fmt::Display for PortRange {
    /// As written for iptables and Istio's rule text: `8000`, or `8000:9000` for either
    /// spelling of a range (`8000-9000` becomes `8000:9000`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.range {
            write!(f, "{}:{}", self.lo, self.hi)
        } else {
            self.lo.fmt(f)
        }
    }
}

/// Parses a comma-separated port list (`-b`, `-d`, `-q`, `-o`, and every other port list):
/// ports and ranges (`8000:9000` or `8000-9000`), in the order given. A range may not overlap
/// another element of its list (the rule Istio's layout prints for each element would then
/// match some ports twice, and merging would change which rules are printed); a single port
/// listed twice is kept twice, as Istio keeps it.
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, String> {
    let list: Vec<PortRange> = split_list(s)
        .into_iter()
        .map(PortRange::from_str)
        .collect::<Result<_, _>>()?;
    if let Some((a, b)) = overlap_with_a_range(&list) {
        return Err(format!(
            "{a} and {b} overlap; a range may not share a port with another entry of the list"
        ));
    }
    Ok(list)
}

/// An IP network as written on the command line: the address is kept as given (not masked),
/// and prints as Istio's `netip.Prefix.String()` does — or, for addresses Istio takes as text
/// (DNS servers injected by its tests and by `--dns-servers`), exactly as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
    /// Shared by the copies the plan and the renderers make: with thousands of listed CIDRs a
    /// copy of its own per clone is most of the run's allocations.
    text: std::sync::Arc<str>,
}

impl Cidr {
    /// A network from an address and prefix length; refuses a length longer than the family's.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, String> {
        Cidr::check_len(addr, len)?;
        let text = format!("{addr}/{len}").into();
        Ok(Cidr { addr, len, text })
    }
    /// Refuses a prefix length longer than the address family's.
    fn check_len(addr: IpAddr, len: u8) -> Result<(), String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length {len} is longer than {max}"));
        }
        Ok(())
    }
    /// The host network of an address given as text (`127.0.0.53` → `127.0.0.53/32`), keeping
    /// the address's spelling.
    pub fn host_spelled(addr: IpAddr, spelling: &str) -> Cidr {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        let text = format!("{spelling}/{len}").into();
        Cidr { addr, len, text }
    }
    /// The address as given (not masked to the prefix).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    /// The network the kernel stores (`10.0.0.0/8` for `10.0.0.1/8`), when the address has
    /// host bits set; `None` when it is already the network address.
    pub fn masked_if_host_bits(&self) -> Option<String> {
        let masked = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        (masked != self.addr).then(|| format!("{masked}/{}", self.len))
    }
    /// The host network of an address: /32 or /128.
    pub fn host(addr: IpAddr) -> Cidr {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Cidr::new(addr, len).expect("host prefix length fits the family")
    }
    /// Whether it is an IPv4 network (IPv4-mapped IPv6 is not).
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
    /// Loopback as Go's `netip.Addr.IsLoopback` sees it: 127/8, ::1, and IPv4-mapped 127/8.
    pub fn is_loopback(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => a.is_loopback(),
            IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr_text, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (missing /prefix-length)"))?;
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR (bad address {addr_text:?})"))?;
        // Leading zeros and signs are refused, as Go's netip.ParsePrefix does.
        let len = match parse_decimal(len) {
            Some(n) if n <= 128 && (len == "0" || !len.starts_with('0')) => n as u8,
            _ => return Err(format!("{s:?} is not a CIDR (bad prefix length {len:?})")),
        };
        Cidr::check_len(addr, len).map_err(|e| format!("{s:?} is not a CIDR ({e})"))?;
        // An IPv4 address parses only as four decimal octets without leading zeros, and the
        // length was checked the same way: the input is already the canonical text, and
        // formatting it again costs more than the parse (thousands of `-x` CIDRs).
        // An IPv6 address has many spellings: the input is kept when it is the canonical one
        // (as lists usually are), checked against the canonical text written without `fmt`.
        let text = match addr {
            IpAddr::V4(_) => s.into(),
            IpAddr::V6(a) => {
                let mut buf = [0u8; 39];
                match canonical_v6(a, &mut buf) {
                    Some(n) if buf[..n] == *addr_text.as_bytes() => s.into(),
                    Some(n) => {
                        let canonical = std::str::from_utf8(&buf[..n]).expect("ASCII");
                        format!("{canonical}/{len}").into()
                    }
                    None => format!("{addr}/{len}").into(),
                }
            }
        };
        Ok(Cidr { addr, len, text })
    }
}

/// Writes an IPv6 address as `Ipv6Addr`'s `Display` does (lower-case hex groups, the first
/// longest run of two or more zero groups as `::`) into `buf` and returns its length; `None`
/// for an IPv4-mapped address, which `Display` writes with a dotted quad.
fn canonical_v6(a: std::net::Ipv6Addr, buf: &mut [u8; 39]) -> Option<usize> {
    if a.to_ipv4_mapped().is_some() {
        return None;
    }
    let groups = a.segments();
    // The first longest run of zero groups.
    let (mut best_start, mut best_len, mut start, mut len) = (0, 0, 0, 0);
    for (i, &g) in groups.iter().enumerate() {
        if g == 0 {
            if len == 0 {
                start = i;
            }
            len += 1;
            if len > best_len {
                (best_start, best_len) = (start, len);
            }
        } else {
            len = 0;
        }
    }
    // Writes groups as hex without leading zeros (one digit for a zero group), `:` between.
    fn put_groups(groups: &[u16], buf: &mut [u8; 39], n: &mut usize) {
        for (k, &g) in groups.iter().enumerate() {
            if k > 0 {
                buf[*n] = b':';
                *n += 1;
            }
            let digits = (4 - g.leading_zeros() as usize / 4).max(1);
            for d in (0..digits).rev() {
                buf[*n] = b"0123456789abcdef"[usize::from((g >> (4 * d)) & 0xf)];
                *n += 1;
            }
        }
    }
    let mut n = 0;
    if best_len > 1 {
        put_groups(&groups[..best_start], buf, &mut n);
        buf[n..n + 2].copy_from_slice(b"::");
        n += 2;
        put_groups(&groups[best_start + best_len..], buf, &mut n);
    } else {
        put_groups(&groups, buf, &mut n);
    }
    Some(n)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// CIDRs split by family, each list in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrsByFamily {
    /// The IPv4 networks.
    pub v4: Vec<Cidr>,
    /// The IPv6 networks (IPv4-mapped ones included, as in Istio).
    pub v6: Vec<Cidr>,
}

impl CidrsByFamily {
    /// Parses a comma-separated CIDR list (`-i`, `-x`), splitting it by family.
    pub fn parse(s: &str) -> Result<CidrsByFamily, String> {
        let mut out = CidrsByFamily::default();
        for item in split_list(s) {
            let cidr: Cidr = item.parse()?;
            // IPv4-mapped IPv6 prefixes stay IPv6, as in Istio (netip's Is4 is false for them).
            if cidr.is_ipv4() {
                out.v4.push(cidr);
            } else {
                out.v6.push(cidr);
            }
        }
        Ok(out)
    }
    /// The list of one family: IPv6 when `ipv6`, else IPv4.
    pub fn family(&self, ipv6: bool) -> &[Cidr] {
        if ipv6 {
            &self.v6
        } else {
            &self.v4
        }
    }
    /// Whether any network is a loopback one; an included loopback range turns off the
    /// "app to app over lo is not captured" rule.
    pub fn has_loopback(&self) -> bool {
        self.v4.iter().chain(&self.v6).any(Cidr::is_loopback)
    }
}

/// A network interface name as the kernel accepts it: 1–15 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace — and no `"`, which iptables-restore takes as a quote (`eth0"` would
/// become a rule for `eth0`). A trailing `+` is iptables' wildcard and is allowed; a bare `+`
/// matches every interface (iptables-save then prints no `-i`/`-o`, which the read-back
/// expects).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IfName(String);

impl IfName {
    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = String;
    fn from_str(s: &str) -> Result<IfName, String> {
        if s.len() > 15 {
            return Err(format!(
                "{s:?} is not an interface name (longer than 15 bytes)"
            ));
        }
        if s == "." || s == ".." {
            return Err(format!("{s:?} is not an interface name"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
        {
            return Err(format!("{s:?} is not an interface name (contains {c:?})"));
        }
        if s.contains('"') {
            return Err(format!(
                "{s:?} cannot be used: iptables-restore reads '\"' as a quote and would install a rule for another name"
            ));
        }
        Ok(IfName(s.to_string()))
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a comma-separated list of interface names.
pub fn parse_ifnames(s: &str) -> Result<Vec<IfName>, String> {
    split_list(s).into_iter().map(IfName::from_str).collect()
}

/// A numeric user or group id (0 to 2^32-2; 2^32-1 is the kernel's "no id").
pub fn parse_id(s: &str) -> Result<u32, String> {
    match parse_decimal(s) {
        Some(n) if n < u64::from(u32::MAX) => Ok(n as u32),
        _ => Err(format!("{s:?} is not a numeric id (0-4294967294)")),
    }
}

/// Parses a comma-separated list of numeric ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>, String> {
    split_list(s).into_iter().map(parse_id).collect()
}

/// A group in the owner-group lists: a gid or a group name. Kept as written, because iptables
/// resolves names itself and Istio renders them verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupRef(String);

impl GroupRef {
    /// A group given by number.
    pub fn from_gid(gid: u32) -> GroupRef {
        GroupRef(gid.to_string())
    }
    /// The group as written: a gid or a name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The numeric gid, when the group was given as a number.
    pub fn gid(&self) -> Option<u32> {
        parse_id(&self.0).ok()
    }
}

impl FromStr for GroupRef {
    type Err = String;
    fn from_str(s: &str) -> Result<GroupRef, String> {
        if s.bytes().all(|b| b.is_ascii_digit()) {
            parse_id(s)?;
        } else if s.len() > 32
            || s.starts_with('-')
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-$".contains(c))
        {
            return Err(format!(
                "{s:?} is not a gid or group name (letters, digits, '.', '_', '-', at most 32)"
            ));
        }
        Ok(GroupRef(s.to_string()))
    }
}

impl fmt::Display for GroupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub use crate::go_duration::parse_go_bool;

pub use crate::go_duration::parse_go_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn lists_drop_empty_elements_and_keep_spaces() {
        assert_eq!(split_list("6000,7000,"), vec!["6000", "7000"]);
        assert_eq!(split_list(",,a,,b"), vec!["a", "b"]);
        assert_eq!(split_list(""), Vec::<&str>::new());
        assert_eq!(split_list(" a"), vec![" a"]);
    }

    #[test]
    fn ports() {
        assert_eq!(
            parse_ports("6000,7000,").unwrap(),
            vec![PortRange::single(Port(6000)), PortRange::single(Port(7000))]
        );
        assert_eq!("65535".parse::<Port>().unwrap().get(), 65535);
        for bad in [
            "0", "65536", "-1", "+80", " 80", "80 ", "0x50", "", "eighty", "1:2",
        ] {
            assert!(bad.parse::<Port>().is_err(), "{bad:?}");
        }
    }

    /// `(lo, hi, written as a range)` of each element, or the error.
    fn ranges(s: &str) -> Result<Vec<(u16, u16, bool)>, String> {
        parse_ports(s).map(|l| {
            l.iter()
                .map(|p| (p.lo().get(), p.hi().get(), p.is_range()))
                .collect()
        })
    }

    #[test]
    fn port_ranges_in_both_spellings_with_inclusive_bounds() {
        assert_eq!(
            ranges("8000:9000,80,1-2").unwrap(),
            [(8000, 9000, true), (80, 80, false), (1, 2, true)]
        );
        assert_eq!(ranges("1:65535").unwrap(), [(1, 65535, true)]);
        assert_eq!(ranges("65535-65535").unwrap(), [(65535, 65535, true)]);
        // LO = HI is a range of one port: kept as written for iptables (Istio prints what it
        // was given), one port for iptables-save and nft.
        let one: PortRange = "8000:8000".parse().unwrap();
        assert_eq!(
            (one.to_string(), one.saved(), one.nft()),
            ("8000:8000".into(), "8000".into(), "8000".into())
        );
        let dash: PortRange = "8000-9000".parse().unwrap();
        assert_eq!(
            (dash.to_string(), dash.saved(), dash.nft()),
            ("8000:9000".into(), "8000:9000".into(), "8000-9000".into())
        );
        assert!(dash.contains(8000) && dash.contains(9000));
        assert!(!dash.contains(7999) && !dash.contains(9001));
        let single: PortRange = "80".parse().unwrap();
        assert_eq!(
            (single.to_string(), single.nft()),
            ("80".into(), "80".into())
        );
        assert_eq!(single.as_single(), Some(Port(80)));
        assert_eq!(one.as_single(), None);
    }

    #[test]
    fn bad_port_ranges_are_refused_with_the_reason() {
        let err = |s: &str| ranges(s).expect_err(s);
        assert!(
            err("9000:8000").contains("reversed"),
            "{}",
            err("9000:8000")
        );
        assert!(err("9000-8000").contains("reversed"));
        assert!(err(":9000").contains("open-ended"));
        assert!(err("8000:").contains("open-ended"));
        assert!(err("-80").contains("open-ended"));
        for bad in [
            "0:10", "1:65536", "1:2:3", "1-2-3", "1:-2", "a:b", " 1:2", "1:2 ", "1:+2", "1:0x10",
            "1::2",
        ] {
            assert!(ranges(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overlaps_involving_a_range_are_refused_and_repeated_ports_kept() {
        // Istio's behaviour for a single port listed twice: two rules.
        assert_eq!(ranges("80,80").unwrap(), [(80, 80, false), (80, 80, false)]);
        for bad in [
            "8000:9000,8500",
            "8500,8000:9000",
            "8000:9000,9000:9100",
            "1-10,5-6",
            "80,80:80",
            "1:3,7,2:5",
            "9000,1,8000:9000",
        ] {
            let e = ranges(bad).expect_err(bad);
            assert!(e.contains("overlap"), "{bad}: {e}");
        }
        // Adjacent is not overlapping.
        assert!(ranges("8000:8999,9000:9100,9101").is_ok());
        let e = ranges("1,8000-9000,20,8500").unwrap_err();
        assert!(e.starts_with("8000:9000 and 8500 overlap"), "{e}");
    }

    #[test]
    fn cidrs_print_as_go_netip_does() {
        for (input, printed) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.1.2.3/8"),
            ("2001:DB8::/32", "2001:db8::/32"),
            ("2001:db8:0:0:1:0:0:1/128", "2001:db8::1:0:0:1/128"),
            ("::ffff:1.2.3.4/128", "::ffff:1.2.3.4/128"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ] {
            assert_eq!(input.parse::<Cidr>().unwrap().to_string(), printed);
        }
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/08",
            "010.0.0.0/8",
            "10.0.0/8",
            "*",
            "",
            "fe80::1%eth0/64",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_split_by_family_in_order() {
        let c = CidrsByFamily::parse("10.0.0.0/8,2001:db8::/32,,1.1.1.1/32,::ffff:1.2.3.4/128")
            .unwrap();
        assert_eq!(c.v4.len(), 2);
        assert_eq!(c.v4[1].to_string(), "1.1.1.1/32");
        assert_eq!(c.v6.len(), 2);
        assert!(!c.has_loopback());
        assert!(CidrsByFamily::parse("127.1.2.3/32").unwrap().has_loopback());
        assert!(CidrsByFamily::parse("::1/128").unwrap().has_loopback());
        assert!(CidrsByFamily::parse("::ffff:127.0.0.1/128")
            .unwrap()
            .has_loopback());
    }

    #[test]
    fn interface_names() {
        for good in [
            "eth0",
            "not-istio-nic",
            "a",
            "veth+",
            "+",
            "123456789012345",
        ] {
            assert!(good.parse::<IfName>().is_ok(), "{good:?}");
        }
        for bad in [
            "1234567890123456",
            "a/b",
            "a b",
            "eth0:1",
            ".",
            "..",
            "a\tb",
            "eth0\"",
            "\"eth0\"",
        ] {
            assert!(bad.parse::<IfName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_and_groups() {
        assert_eq!(parse_ids("3,4").unwrap(), vec![3, 4]);
        assert!(parse_id("4294967295").is_err());
        assert!(parse_id("-1").is_err());
        assert!(parse_id("istio-proxy").is_err());
        assert_eq!("java".parse::<GroupRef>().unwrap().gid(), None);
        assert_eq!("202".parse::<GroupRef>().unwrap().gid(), Some(202));
        for bad in ["a b", "-x", "99999999999", "a;b"] {
            assert!(bad.parse::<GroupRef>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn go_bools_and_durations() {
        assert!(parse_go_bool("T").unwrap());
        let masked = |s: &str| s.parse::<Cidr>().unwrap().masked_if_host_bits();
        assert_eq!(masked("10.0.0.1/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(masked("10.0.0.0/8"), None);
        assert_eq!(masked("0.0.0.0/0"), None);
        assert_eq!(masked("1.2.3.4/0").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(masked("1.2.3.4/32"), None);
        assert_eq!(masked("2001:db8::1/32").as_deref(), Some("2001:db8::/32"));
        assert!(!parse_go_bool("0").unwrap());
        assert!(parse_go_bool("yes").is_err());
        assert!(parse_go_bool("").is_err());
        let d = |s| parse_go_duration(s).unwrap().as_millis();
        assert_eq!(d("5s"), 5000);
        assert_eq!(d("1m30s"), 90_000);
        assert_eq!(d("500ms"), 500);
        assert_eq!(d("1.5s"), 1500);
        assert_eq!(d("0"), 0);
        for bad in ["5", "", "s", "-1s", "5x", "1..2s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn port_lists_round_trip(ports in proptest::collection::vec(1u16.., 0..20), trailing in any::<bool>()) {
            let mut text = ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
            if trailing { text.push(','); }
            let parsed = parse_ports(&text).unwrap();
            prop_assert!(parsed.iter().all(|p| !p.is_range()));
            prop_assert_eq!(parsed.iter().map(|p| p.lo().get()).collect::<Vec<_>>(), ports);
        }

        /// A range is refused exactly when it overlaps another element, whatever the order.
        #[test]
        fn port_range_overlap_matches_a_pairwise_check(
            items in proptest::collection::vec((1u16..200, 0u16..20, any::<bool>()), 0..8)
        ) {
            let text: Vec<String> = items.iter().map(|&(lo, span, range)| {
                if range { format!("{lo}:{}", lo + span) } else { lo.to_string() }
            }).collect();
            let elems: Vec<(u16, u16, bool)> = items.iter()
                .map(|&(lo, span, range)| if range { (lo, lo + span, true) } else { (lo, lo, false) })
                .collect();
            let clash = elems.iter().enumerate().any(|(i, a)| elems[..i].iter()
                .any(|b| (a.2 || b.2) && a.0 <= b.1 && b.0 <= a.1));
            let parsed = ranges(&text.join(","));
            prop_assert_eq!(parsed.is_err(), clash, "{:?}", parsed);
            if let Ok(p) = parsed {
                prop_assert_eq!(p, elems);
            }
        }

        #[test]
        fn any_list_text_parses_or_errors_without_panicking(text in ".{0,40}") {
            let _ = parse_ports(&text);
            let _ = CidrsByFamily::parse(&text);
            let _ = parse_ifnames(&text);
            let _ = parse_ids(&text);
            let _ = parse_go_duration(&text);
        }

        #[test]
        fn v4_cidrs_round_trip(a in any::<[u8; 4]>(), len in 0u8..=32) {
            let text = format!("{}.{}.{}.{}/{len}", a[0], a[1], a[2], a[3]);
            let c: Cidr = text.parse().unwrap();
            prop_assert_eq!(c.to_string(), text);
            prop_assert!(c.is_ipv4());
            // The parse keeps the input as the text: the same as formatting the network.
            prop_assert_eq!(&c, &Cidr::new(IpAddr::V4(a.into()), len).unwrap());
        }

        #[test]
        fn v6_cidrs_reparse_to_the_same_network(a in any::<u128>(), len in 0u8..=128) {
            let c = Cidr::new(IpAddr::V6(Ipv6Addr::from(a)), len).unwrap();
            let again: Cidr = c.to_string().parse().unwrap();
            prop_assert_eq!(&again, &c);
            prop_assert!(!again.is_ipv4());
        }

        #[test]
        fn v6_text_is_displays_text_whatever_the_spelling(
            groups in proptest::array::uniform8(prop_oneof![
                Just(0u16), Just(1u16), Just(0xffffu16), any::<u16>()
            ]),
            len in 0u8..=128,
            upper in any::<bool>(),
        ) {
            let a = Ipv6Addr::from(groups);
            let canonical = format!("{a}/{len}");
            // Spellings other than the canonical one: every group written out, upper case.
            let full = format!(
                "{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}/{len}",
                groups[0], groups[1], groups[2], groups[3],
                groups[4], groups[5], groups[6], groups[7]
            );
            for text in [canonical.clone(), full] {
                let text = if upper { text.to_uppercase() } else { text };
                let c: Cidr = text.parse().unwrap();
                prop_assert_eq!(c.to_string(), canonical.clone());
                prop_assert_eq!(&c, &Cidr::new(IpAddr::V6(a), len).unwrap());
            }
        }

        #[test]
        fn mixed_cidr_lists_keep_order_within_a_family(
            items in proptest::collection::vec((any::<bool>(), any::<u32>(), any::<u128>()), 0..12)
        ) {
            let texts: Vec<(bool, String)> = items.iter().map(|(v6, a4, a6)| {
                if *v6 { (true, format!("{}/128", Ipv6Addr::from(*a6))) }
                else { (false, format!("{}/32", Ipv4Addr::from(*a4))) }
            }).collect();
            let joined = texts.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(",");
            let parsed = CidrsByFamily::parse(&joined).unwrap();
            let v4: Vec<String> = texts.iter().filter(|(v6, _)| !v6).map(|(_, t)| t.clone()).collect();
            prop_assert_eq!(parsed.v4.iter().map(|c| c.to_string()).collect::<Vec<_>>(), v4);
            prop_assert_eq!(parsed.v6.len(), texts.iter().filter(|(v6, _)| *v6).count());
        }
    }
}
