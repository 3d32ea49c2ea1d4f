//! A rule read back from the kernel, in nft syntax: the normalised expressions of
//! `nft_netlink` (`[meta 1:1 2:16] [cmp 1:1 2:0 3:{1:0x06}] …`) turned back into what `nft list`
//! prints (`meta l4proto tcp …`), for `--check`'s "unexpected rule" lines. Covers the
//! expressions Istio's rules and common hand-written ones use (meta, cmp, payload of IP
//! addresses and ports, bitwise prefixes, lookups in anonymous sets, ct state/mark/zone,
//! counter, verdicts, redirect, tproxy); anything else yields `None`, and the caller prints the
//! raw form. The numbers are the kernel's nf_tables ABI (`linux/netfilter/nf_tables.h`).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Expr, Value};

/// What a register holds: a loaded packet field (with the prefix mask applied to it, if any)
/// or an immediate value.
#[derive(Clone, Debug)]
enum Reg {
    Meta(u32),
    Payload { base: u32, offset: u32, len: u32 },
    Ct(u32),
    Masked(Box<Reg>, Vec<u8>),
    Data(Vec<u8>),
}

fn bytes(attrs: &[(u16, Value)], kind: u16) -> Option<&[u8]> {
    match attrs.iter().find(|(k, _)| *k == kind)?.1 {
        Value::Bytes(ref b) => Some(b),
        _ => None,
    }
}

fn num(attrs: &[(u16, Value)], kind: u16) -> Option<u32> {
    Some(u32::from_be_bytes(bytes(attrs, kind)?.try_into().ok()?))
}

/// `nft_data`'s value (`{1: bytes}`).
fn data(attrs: &[(u16, Value)], kind: u16) -> Option<Vec<u8>> {
    match &attrs.iter().find(|(k, _)| *k == kind)?.1 {
        Value::Nest(inner) => bytes(inner, 1).map(<[u8]>::to_vec),
        _ => None,
    }
}

fn meta_name(key: u32) -> Option<&'static str> {
    Some(match key {
        3 => "meta mark",
        4 => "iif",
        5 => "oif",
        6 => "iifname",
        7 => "oifname",
        10 => "meta skuid",
        11 => "meta skgid",
        15 => "meta nfproto",
        16 => "meta l4proto",
        _ => return None,
    })
}

fn ct_name(key: u32) -> Option<&'static str> {
    Some(match key {
        0 => "ct state",
        3 => "ct mark",
        17 => "ct zone",
        _ => return None,
    })
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        1 => "icmp".to_string(),
        58 => "ipv6-icmp".to_string(),
        n => n.to_string(),
    }
}

fn ne_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

/// A host-order number of 1, 2 or 4 bytes (ct zone is 16 bits).
fn ne_num(b: &[u8]) -> Option<u32> {
    match b.len() {
        1 => Some(u32::from(b[0])),
        2 => Some(u32::from(u16::from_ne_bytes(b.try_into().ok()?))),
        _ => ne_u32(b),
    }
}

/// An interface name as nft prints it: a full-length compare is the name, a shorter one
/// (without the NUL) a prefix match, `"eth*"`.
fn ifname(b: &[u8]) -> Option<String> {
    let (text, wildcard) = match b.iter().position(|&c| c == 0) {
        Some(end) => (&b[..end], false),
        None => (b, true),
    };
    let text = std::str::from_utf8(text).ok()?;
    Some(format!("\"{text}{}\"", if wildcard { "*" } else { "" }))
}

fn ct_state(mask: u32) -> String {
    let names: Vec<&str> = [
        (1, "invalid"),
        (2, "established"),
        (4, "related"),
        (8, "new"),
        (64, "untracked"),
    ]
    .iter()
    .filter(|(bit, _)| mask & bit != 0)
    .map(|(_, n)| *n)
    .collect();
    names.join(",")
}

/// The left-hand side in words and how to print a value of it; building one absorbs the
/// pending `meta l4proto` / `meta nfproto` match nft hides before `tcp dport`, `ip daddr`.
struct Field {
    text: String,
    value: ShowValue,
}

/// Prints a compared value (and the prefix mask applied before the compare, if any).
type ShowValue = Box<dyn Fn(&[u8], Option<&[u8]>) -> Option<String>>;

/// An address field compared in `len` of its `full` bytes: nft loads only the bytes a
/// byte-aligned prefix covers (`10.0.0.0/8` is one byte), and masks the last one otherwise.
fn address(full: usize, len: usize) -> ShowValue {
    Box::new(move |b, mask| {
        if b.len() != len {
            return None;
        }
        let mut padded = b.to_vec();
        padded.resize(full, 0);
        let addr = match full {
            4 => Ipv4Addr::from(<[u8; 4]>::try_from(padded.as_slice()).ok()?).to_string(),
            _ => Ipv6Addr::from(<[u8; 16]>::try_from(padded.as_slice()).ok()?).to_string(),
        };
        let prefix = match mask {
            Some(m) => m.iter().map(|x| x.count_ones()).sum::<u32>() as usize,
            None => len * 8,
        };
        Some(if prefix == full * 8 {
            addr
        } else {
            format!("{addr}/{prefix}")
        })
    })
}

fn field(reg: &Reg, l4: &mut Option<u8>, nf: &mut Option<u8>) -> Option<Field> {
    let reg = match reg {
        Reg::Masked(inner, _) => &**inner,
        other => other,
    };
    Some(match reg {
        Reg::Meta(key) => {
            let value: fn(&[u8], Option<&[u8]>) -> Option<String> = match key {
                6 | 7 => |b, _| ifname(b),
                10 | 11 | 4 | 5 => |b, _| ne_u32(b).map(|n| n.to_string()),
                3 => |b, _| ne_u32(b).map(|n| format!("0x{n:08x}")),
                15 => |b, _| match b {
                    [2] => Some("ipv4".to_string()),
                    [10] => Some("ipv6".to_string()),
                    _ => None,
                },
                16 => |b, _| match b {
                    [p] => Some(proto_name(*p)),
                    _ => None,
                },
                _ => return None,
            };
            Field {
                text: meta_name(*key)?.to_string(),
                value: Box::new(value),
            }
        }
        Reg::Ct(key) => Field {
            text: ct_name(*key)?.to_string(),
            value: Box::new(|b, _| ne_num(b).map(|n| n.to_string())),
        },
        Reg::Payload {
            base: 1,
            offset,
            len,
        } => {
            let len = *len as usize;
            let (text, family, full) = match offset {
                12 if len <= 4 => ("ip saddr", 2, 4),
                16 if len <= 4 => ("ip daddr", 2, 4),
                8 if len <= 16 => ("ip6 saddr", 10, 16),
                24 if len <= 16 => ("ip6 daddr", 10, 16),
                _ => return None,
            };
            // The family decides what offsets mean; without its nfproto match they are
            // ambiguous (an inet table serves both), so nothing is guessed.
            if *nf != Some(family) {
                return None;
            }
            *nf = None;
            Field {
                text: text.to_string(),
                value: address(full, len),
            }
        }
        Reg::Payload {
            base: 2,
            offset,
            len: 2,
        } => {
            let port = match offset {
                0 => "sport",
                2 => "dport",
                _ => return None,
            };
            let proto = match l4.take() {
                Some(p) => proto_name(p),
                None => "th".to_string(),
            };
            Field {
                text: format!("{proto} {port}"),
                value: Box::new(|b, _| Some(u16::from_be_bytes(b.try_into().ok()?).to_string())),
            }
        }
        _ => return None,
    })
}

/// The rule in nft syntax, or `None` when an expression is not one this module knows.
pub fn rule_text(exprs: &[Expr]) -> Option<String> {
    let mut regs: [Option<Reg>; 24] = Default::default();
    let mut out: Vec<String> = Vec::new();
    // A `meta l4proto` / `meta nfproto` match waiting to see whether a field absorbs it.
    let mut l4: Option<u8> = None;
    let mut nf: Option<u8> = None;
    let flush = |out: &mut Vec<String>, l4: &mut Option<u8>, nf: &mut Option<u8>| {
        if let Some(f) = nf.take() {
            out.push(format!(
                "meta nfproto {}",
                if f == 2 { "ipv4" } else { "ipv6" }
            ));
        }
        if let Some(p) = l4.take() {
            out.push(format!("meta l4proto {}", proto_name(p)));
        }
    };
    let reg = |r: Option<u32>| r.and_then(|r| usize::try_from(r).ok()).filter(|r| *r < 24);
    // `cmp gte` waiting for the `cmp lte` on the same register that makes it nft's
    // `tcp dport 8000-9000` (its register and lower bound).
    let mut gte: Option<(usize, Vec<u8>)> = None;
    for e in exprs {
        let a = &e.attrs;
        if let Some((r, lo)) = gte.take() {
            let pairs = e.name == "cmp" && num(a, 2) == Some(3) && reg(num(a, 1)) == Some(r);
            if !pairs {
                return None;
            }
            let hi = data(a, 3)?;
            let src = regs[r].clone()?;
            let f = field(&src, &mut l4, &mut nf)?;
            flush(&mut out, &mut l4, &mut nf);
            out.push(format!(
                "{} {}-{}",
                f.text,
                (f.value)(&lo, None)?,
                (f.value)(&hi, None)?
            ));
            continue;
        }
        match e.name.as_str() {
            "meta" if bytes(a, 1).is_some() => {
                regs[reg(num(a, 1))?] = Some(Reg::Meta(num(a, 2)?));
            }
            "meta" => {
                let Some(Reg::Data(value)) = regs[reg(num(a, 3))?].clone() else {
                    return None;
                };
                flush(&mut out, &mut l4, &mut nf);
                let name = meta_name(num(a, 2)?)?;
                let shown = match num(a, 2)? {
                    3 => format!("0x{:08x}", ne_u32(&value)?),
                    _ => ne_u32(&value)?.to_string(),
                };
                out.push(format!("{name} set {shown}"));
            }
            "ct" if bytes(a, 1).is_some() => {
                regs[reg(num(a, 1))?] = Some(Reg::Ct(num(a, 2)?));
            }
            "ct" => {
                let Some(Reg::Data(value)) = regs[reg(num(a, 4))?].clone() else {
                    return None;
                };
                flush(&mut out, &mut l4, &mut nf);
                out.push(format!("{} set {}", ct_name(num(a, 2)?)?, ne_num(&value)?));
            }
            "payload" => {
                regs[reg(num(a, 1))?] = Some(Reg::Payload {
                    base: num(a, 2)?,
                    offset: num(a, 3)?,
                    len: num(a, 4)?,
                });
            }
            "bitwise" => {
                let src = regs[reg(num(a, 1))?].clone()?;
                let mask = data(a, 4)?;
                if data(a, 5).is_some_and(|x| x.iter().any(|b| *b != 0)) {
                    return None;
                }
                regs[reg(num(a, 2))?] = Some(Reg::Masked(Box::new(src), mask));
            }
            "cmp" if num(a, 2) == Some(5) => {
                gte = Some((reg(num(a, 1))?, data(a, 3)?));
            }
            "range" => {
                let src = regs[reg(num(a, 1))?].clone()?;
                let negate = match num(a, 2)? {
                    0 => "",
                    1 => "!= ",
                    _ => return None,
                };
                let (lo, hi) = (data(a, 3)?, data(a, 4)?);
                let f = field(&src, &mut l4, &mut nf)?;
                flush(&mut out, &mut l4, &mut nf);
                let (lo, hi) = ((f.value)(&lo, None)?, (f.value)(&hi, None)?);
                out.push(format!("{} {negate}{lo}-{hi}", f.text));
            }
            "cmp" => {
                let src = regs[reg(num(a, 1))?].clone()?;
                let value = data(a, 3)?;
                let negate = match num(a, 2)? {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                // A pending dependency followed by another one: it stands on its own.
                match (&src, negate) {
                    (Reg::Meta(16), false) if value.len() == 1 => {
                        flush(&mut out, &mut l4, &mut nf);
                        l4 = Some(value[0]);
                        continue;
                    }
                    (Reg::Meta(15), false) if value.len() == 1 => {
                        flush(&mut out, &mut l4, &mut nf);
                        nf = Some(value[0]);
                        continue;
                    }
                    _ => {}
                }
                if let Reg::Masked(inner, mask) = &src {
                    if let (Reg::Ct(0), true) = (&**inner, value.iter().all(|b| *b == 0)) {
                        flush(&mut out, &mut l4, &mut nf);
                        out.push(format!("ct state {}", ct_state(ne_u32(mask)?)));
                        continue;
                    }
                }
                let f = field(&src, &mut l4, &mut nf)?;
                flush(&mut out, &mut l4, &mut nf);
                let mask = match &src {
                    Reg::Masked(_, m) => Some(m.as_slice()),
                    _ => None,
                };
                let shown = (f.value)(&value, mask)?;
                out.push(format!(
                    "{} {}{shown}",
                    f.text,
                    if negate { "!= " } else { "" }
                ));
            }
            "lookup" => {
                let src = regs[reg(num(a, 2))?].clone()?;
                let Some((_, Value::Set(set))) = a.iter().find(|(k, _)| *k == 1) else {
                    return None;
                };
                let negate = num(a, 5).is_some_and(|f| f & 1 != 0);
                let f = field(&src, &mut l4, &mut nf)?;
                flush(&mut out, &mut l4, &mut nf);
                // An interval set of ports (ranges among them) reads as nft prints it.
                let intervals = set.flags & super::sets::NFT_SET_INTERVAL != 0;
                let keys: Option<Vec<String>> = if intervals && set.key_len == 2 {
                    Some(super::sets::show_port_interval_keys(&set.keys))
                } else {
                    set.keys.iter().map(|k| (f.value)(k, None)).collect()
                };
                out.push(format!(
                    "{} {}{{ {} }}",
                    f.text,
                    if negate { "!= " } else { "" },
                    keys?.join(", ")
                ));
            }
            "immediate" if num(a, 1) == Some(0) => {
                flush(&mut out, &mut l4, &mut nf);
                let Some((_, Value::Nest(outer))) = a.iter().find(|(k, _)| *k == 2) else {
                    return None;
                };
                let Some((_, Value::Nest(verdict))) = outer.iter().find(|(k, _)| *k == 2) else {
                    return None;
                };
                let code = i32::from_be_bytes(bytes(verdict, 1)?.try_into().ok()?);
                let chain = bytes(verdict, 2).map(|c| {
                    String::from_utf8_lossy(c.strip_suffix(&[0]).unwrap_or(c)).into_owned()
                });
                out.push(match (code, chain) {
                    (0, _) => "drop".to_string(),
                    (1, _) => "accept".to_string(),
                    (-5, _) => "return".to_string(),
                    (-3, Some(c)) => format!("jump {c}"),
                    (-4, Some(c)) => format!("goto {c}"),
                    _ => return None,
                });
            }
            "immediate" => {
                regs[reg(num(a, 1))?] = Some(Reg::Data(data(a, 2)?));
            }
            "counter" => {
                flush(&mut out, &mut l4, &mut nf);
                out.push("counter".to_string());
            }
            "redir" | "tproxy" => {
                let port_reg = if e.name == "redir" { 1 } else { 3 };
                let port = match num(a, port_reg) {
                    Some(r) => match regs[reg(Some(r))?].clone() {
                        Some(Reg::Data(p)) => Some(u16::from_be_bytes(p.try_into().ok()?)),
                        _ => return None,
                    },
                    None => None,
                };
                flush(&mut out, &mut l4, &mut nf);
                let to = port.map(|p| format!(" to :{p}")).unwrap_or_default();
                out.push(if e.name == "redir" {
                    format!("redirect{to}")
                } else {
                    let family = match num(a, 1) {
                        Some(2) => " ip",
                        Some(10) => " ip6",
                        _ => "",
                    };
                    format!("tproxy{family}{to}")
                });
            }
            _ => return None,
        }
    }
    if gte.is_some() {
        return None;
    }
    flush(&mut out, &mut l4, &mut nf);
    Some(out.join(" "))
}
