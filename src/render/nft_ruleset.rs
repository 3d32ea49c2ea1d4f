//! Plan → nftables: the ruleset Istio's native nftables backend (`--native-nftables`,
//! Istio ≥ 1.27) writes for the same configuration — inet tables `istio-proxy-nat`,
//! `istio-proxy-mangle`, `istio-proxy-raw`, their chains and rules.
//!
//! The plan is first turned into a [`Ruleset`]: tables, chains and rules made of typed
//! [`Stmt`]s in nft's order. That list is the single source of truth for what each rule
//! means; [`nft_script`] renders it as the `nft -f` script (byte for byte Istio's), and
//! [`super::nft_netlink`] encodes the same list as nf_tables netlink messages. Long lists
//! (Istio's rule per CIDR or port) then become one rule with a set lookup ([`with_sets`],
//! `--nft-sets`), with the same traffic. Pure data; loading it belongs to `driver::nf_tables`.

use std::collections::HashMap;
use std::fmt;

use super::nft_sets;
use crate::config::types::{Cidr, IfName, Port, PortRange};
use crate::config::NftSets;
use crate::plan::{
    Chain, CtState, Family, Match, Owner, Plan, Position, Protocol, Rule, Scope, Table, Target,
};

/// The tables in the order Istio's nftables backend writes them: nat, mangle, raw (its fixed
/// order, not sorted by name as under iptables). Istio has no filter table; the plan never
/// uses one, but should it, it goes last rather than being lost.
const TABLE_ORDER: [Table; 4] = [Table::Nat, Table::Mangle, Table::Raw, Table::Filter];

/// The tables meshinit owns under nftables: an apply replaces them, a cleanup deletes them,
/// and nothing else in the ruleset is touched.
pub const MANAGED_TABLES: [&str; 3] = ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"];

/// The nftables table that stands for an iptables table: `istio-proxy-<name>`.
pub fn table_name(table: Table) -> String {
    format!("istio-proxy-{}", table.name())
}

/// A chain's nftables name: Istio's upper-case name lower-cased with `_` → `-`
/// (`ISTIO_OUTPUT_DNS` → `istio-output-dns`, `PREROUTING` → `prerouting`).
pub fn chain_name(chain: Chain) -> String {
    chain.name().to_ascii_lowercase().replace('_', "-")
}

/// Istio's chain list per table, in declaration order. Only those that receive rules are
/// declared; jump targets without rules are not (Istio never jumps to an empty chain).
fn declared_chains(table: Table) -> &'static [Chain] {
    use Chain::*;
    match table {
        Table::Nat => &[
            Prerouting,
            Output,
            IstioInbound,
            IstioRedirect,
            IstioInRedirect,
            IstioOutput,
            IstioOutputDns,
        ],
        Table::Mangle => &[
            Prerouting,
            Output,
            IstioDivert,
            IstioTproxy,
            IstioInbound,
            IstioDrop,
        ],
        Table::Raw => &[Prerouting, Output, IstioInbound, IstioOutputDns],
        Table::Filter => &[Prerouting, Output],
    }
}

/// The whole ruleset of a plan: the tables that receive rules (nat, mangle, raw), each with
/// the chains that receive rules and its rules in generation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    /// Only tables with at least one rule; a table the plan does not use is absent.
    pub tables: Vec<NftTable>,
}

/// One `inet` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftTable {
    /// `istio-proxy-nat`, …
    pub name: String,
    /// In declaration order; base chains first.
    pub chains: Vec<NftChain>,
    /// In the order they are added (an insert names its index at that moment).
    pub rules: Vec<NftRule>,
}

/// A chain: regular, or a base chain attached to a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftChain {
    /// The chain's nft name (`istio-output`, `prerouting`, …).
    pub name: String,
    /// `None` for a regular chain (reached only by jumps).
    pub base: Option<BaseChain>,
}

/// The hook of a base chain. The policy is always `accept` (nft's default, which Istio keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    /// The chain type: `filter`, `nat` or `route`.
    pub kind: ChainKind,
    /// The netfilter hook it is attached to.
    pub hook: Hook,
    /// Where it runs relative to other chains on the hook (nat -100, mangle -150, raw -300),
    /// as the iptables table it stands for.
    pub priority: i32,
}

/// An nftables chain type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainKind {
    /// `type filter`: raw, mangle prerouting, and filter.
    Filter,
    /// `type nat`: the nat table's base chains, where `redirect` is allowed.
    Nat,
    /// A filter chain that re-routes packets whose mark or addresses it changed (output only).
    Route,
}

impl ChainKind {
    /// The name nft and the kernel use.
    pub fn name(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
            ChainKind::Route => "route",
        }
    }
}

/// A netfilter hook of the inet family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `hook prerouting`: arriving packets.
    Prerouting,
    /// `hook output`: locally generated packets.
    Output,
}

impl Hook {
    /// The name nft uses.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Output => "output",
        }
    }
}

/// One rule: where it goes and its statements, matches first, in nft's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftRule {
    /// The nft name of the chain it goes into.
    pub chain: String,
    /// `Some(i)`: `insert rule … index i` (before the rule at 0-based index `i` at that
    /// moment); `None`: appended.
    pub index: Option<usize>,
    /// Matches, then the verdict or action.
    pub stmts: Vec<Stmt>,
    /// Why the rule exists (the plan's purpose), for logs and error messages.
    pub purpose: &'static str,
}

impl NftRule {
    /// The rule's text after its chain (and index), as in the script.
    pub fn body(&self) -> String {
        let words: Vec<String> = self.stmts.iter().map(Stmt::to_string).collect();
        words.join(" ")
    }
}

/// Which interface of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Source address or port, input interface.
    Source,
    /// Destination address or port, output interface.
    Destination,
}

/// One statement of a rule: a match or an action. Each has one nft spelling and one fixed
/// netlink encoding; the implicit protocol dependencies nft adds are the encoder's business.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stmt {
    /// `iifname NAME` (`Source`) / `oifname NAME` (`Destination`). A trailing `+` (iptables'
    /// wildcard) matches every name with that prefix.
    Interface {
        /// `Source` for `iifname`, `Destination` for `oifname`.
        dir: Direction,
        /// The interface name or `prefix+` wildcard.
        name: IfName,
    },
    /// `meta l4proto tcp`.
    L4Proto(Protocol),
    /// `ct state invalid` / `ct state related,established`.
    CtState(CtState),
    /// `mark [!=] M`: the packet mark.
    Mark {
        /// The mark value.
        mark: u32,
        /// True for `!=`.
        negate: bool,
    },
    /// `ct mark M`: the connection mark.
    CtMark(u32),
    /// `ip[6] saddr|daddr [!=] NET`.
    Address {
        /// `saddr` (`Source`) or `daddr` (`Destination`).
        dir: Direction,
        /// The network; its family picks `ip` or `ip6`.
        net: Cidr,
        /// True for `!=`.
        negate: bool,
    },
    /// `tcp|udp sport|dport [!=] P` or `… [!=] LO-HI`.
    Port {
        /// `tcp` or `udp`.
        proto: Protocol,
        /// `sport` (`Source`) or `dport` (`Destination`).
        dir: Direction,
        /// The port or range.
        port: PortRange,
        /// True for `!=`.
        negate: bool,
    },
    /// `tcp|udp dport != { P, Q }`: an anonymous set.
    PortNotIn {
        /// `tcp` or `udp`.
        proto: Protocol,
        /// The set's elements, in plan order.
        ports: Vec<Port>,
    },
    /// `ip[6] saddr|daddr { NET, … }`: an anonymous interval set, for a run of rules that
    /// differed only in this network (see [`with_sets`]).
    AddressIn {
        /// `saddr` (`Source`) or `daddr` (`Destination`).
        dir: Direction,
        /// `ip` or `ip6`: every network of the list is of this family.
        family: Family,
        /// The networks, as listed; the set holds the ranges they cover, merged.
        nets: Vec<Cidr>,
    },
    /// `tcp|udp sport|dport { P, Q, LO-HI, … }`: an anonymous set, for a run of rules that
    /// differed only in this port or range (see [`with_sets`]); an interval set when a range
    /// is among them.
    PortIn {
        /// `tcp` or `udp`.
        proto: Protocol,
        /// `sport` (`Source`) or `dport` (`Destination`).
        dir: Direction,
        /// The ports and ranges, as listed; the set holds each port once (with ranges: the
        /// intervals they cover, merged as nft merges them).
        ports: Vec<PortRange>,
    },
    /// `[meta] skuid|skgid [!=] ID`; `meta` is only spelling (Istio writes it in raw).
    Owner {
        /// The user or group id.
        owner: Owner,
        /// True for `!=`.
        negate: bool,
        /// Spelled with `meta` (as Istio does in raw); same encoding either way.
        meta: bool,
    },
    /// `counter`.
    Counter,
    /// `jump CHAIN`.
    Jump(String),
    /// `return`.
    Return,
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `redirect to :P`.
    Redirect(Port),
    /// `tproxy ip|ip6 to :P`.
    Tproxy {
        /// `ip` or `ip6`: nft needs the family of the packets it diverts.
        family: Family,
        /// The proxy's inbound listener.
        port: Port,
    },
    /// `meta mark set M`.
    SetMark(u32),
    /// `ct mark set mark` (CONNMARK --save-mark).
    SaveMark,
    /// `meta mark set ct mark` (CONNMARK --restore-mark).
    RestoreMark,
    /// `ct zone set Z`.
    CtZone(u16),
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn neq(negate: bool) -> &'static str {
    if negate {
        "!= "
    } else {
        ""
    }
}

fn family_word(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The family of an address.
pub fn cidr_family(net: &Cidr) -> Family {
    if net.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// The prefix an iptables-style wildcard name (`eth+`) matches, or `None` for a plain name.
pub fn wildcard_prefix(name: &IfName) -> Option<&str> {
    name.as_str().strip_suffix('+')
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::Interface { dir, name } => {
                let key = match dir {
                    Direction::Source => "iifname",
                    Direction::Destination => "oifname",
                };
                // Istio writes `eth+` verbatim, which nft refuses (a syntax error); nft's
                // own wildcard is a quoted `*` suffix.
                match wildcard_prefix(name) {
                    Some(prefix) => write!(f, "{key} \"{prefix}*\""),
                    None => write!(f, "{key} {name}"),
                }
            }
            Stmt::L4Proto(p) => write!(f, "meta l4proto {}", protocol_name(*p)),
            Stmt::CtState(CtState::Invalid) => f.write_str("ct state invalid"),
            Stmt::CtState(CtState::RelatedEstablished) => {
                f.write_str("ct state related,established")
            }
            Stmt::Mark { mark, negate } => write!(f, "mark {}{mark}", neq(*negate)),
            Stmt::CtMark(mark) => write!(f, "ct mark {mark}"),
            Stmt::Address { dir, net, negate } => {
                let key = match dir {
                    Direction::Source => "saddr",
                    Direction::Destination => "daddr",
                };
                let fam = family_word(cidr_family(net));
                write!(f, "{fam} {key} {}{net}", neq(*negate))
            }
            Stmt::Port {
                proto,
                dir,
                port,
                negate,
            } => {
                let key = match dir {
                    Direction::Source => "sport",
                    Direction::Destination => "dport",
                };
                let port = port.nft();
                write!(f, "{} {key} {}{port}", protocol_name(*proto), neq(*negate))
            }
            Stmt::PortNotIn { proto, ports } => {
                let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
                write!(
                    f,
                    "{} dport != {{ {} }}",
                    protocol_name(*proto),
                    list.join(", ")
                )
            }
            Stmt::AddressIn { dir, family, nets } => {
                let key = match dir {
                    Direction::Source => "saddr",
                    Direction::Destination => "daddr",
                };
                let list: Vec<String> = nft_sets::intervals(nets)
                    .into_iter()
                    .map(|r| nft_sets::show_interval(*family, r))
                    .collect();
                write!(
                    f,
                    "{} {key} {{ {} }}",
                    family_word(*family),
                    list.join(", ")
                )
            }
            Stmt::PortIn { proto, dir, ports } => {
                let key = match dir {
                    Direction::Source => "sport",
                    Direction::Destination => "dport",
                };
                let list = nft_sets::show_port_set(ports);
                write!(
                    f,
                    "{} {key} {{ {} }}",
                    protocol_name(*proto),
                    list.join(", ")
                )
            }
            Stmt::Owner {
                owner,
                negate,
                meta,
            } => {
                let meta = if *meta { "meta " } else { "" };
                let (key, id) = match owner {
                    Owner::Uid(uid) => ("skuid", uid.to_string()),
                    Owner::Gid(group) => ("skgid", group.as_str().to_string()),
                };
                write!(f, "{meta}{key} {}{id}", neq(*negate))
            }
            Stmt::Counter => f.write_str("counter"),
            Stmt::Jump(chain) => write!(f, "jump {chain}"),
            Stmt::Return => f.write_str("return"),
            Stmt::Accept => f.write_str("accept"),
            Stmt::Drop => f.write_str("drop"),
            Stmt::Redirect(port) => write!(f, "redirect to :{port}"),
            Stmt::Tproxy { family, port } => {
                write!(f, "tproxy {} to :{port}", family_word(*family))
            }
            Stmt::SetMark(mark) => write!(f, "meta mark set {mark}"),
            Stmt::SaveMark => f.write_str("ct mark set mark"),
            Stmt::RestoreMark => f.write_str("meta mark set ct mark"),
            Stmt::CtZone(zone) => write!(f, "ct zone set {zone}"),
        }
    }
}

/// The base-chain spec of a chain, or `None` for a regular chain.
fn base_chain(table: Table, chain: Chain) -> Option<BaseChain> {
    let hook = match chain {
        Chain::Prerouting => Hook::Prerouting,
        Chain::Output => Hook::Output,
        _ => return None,
    };
    let (kind, priority) = match (table, chain) {
        // dstnat priority, as iptables' nat table.
        (Table::Nat, _) => (ChainKind::Nat, -100),
        // Marks set in mangle/OUTPUT must re-route the packet (TPROXY's policy routing), which
        // only a `route` chain does; prerouting is an ordinary filter chain.
        (Table::Mangle, Chain::Output) => (ChainKind::Route, -150),
        (Table::Mangle, _) => (ChainKind::Filter, -150),
        (Table::Raw, _) => (ChainKind::Filter, -300),
        (Table::Filter, _) => (ChainKind::Filter, 0),
    };
    Some(BaseChain {
        kind,
        hook,
        priority,
    })
}

/// The rules nftables gets, in plan order: those of IPv4 and of both families, IPv6-only ones
/// when IPv6 is on — minus an IPv6-only rule whose text repeats an IPv4-only one. In an inet
/// table a rule without an address match covers both families, so where iptables needs one
/// copy per family (`ISTIO_OUTPUT → ISTIO_OUTPUT_DNS`, raw `PREROUTING → ISTIO_INBOUND`, the
/// include-all `→ ISTIO_REDIRECT` and its VM-interface inserts) Istio writes it once.
pub fn nft_rules(plan: &Plan) -> Vec<&Rule> {
    // A set: with thousands of excluded CIDRs a list would make this quadratic.
    let mut v4_texts: std::collections::HashSet<(Table, Chain, Option<u64>, String)> =
        std::collections::HashSet::new();
    let mut out = Vec::new();
    for rule in &plan.rules {
        let position = match rule.position {
            Position::Append => None,
            Position::Insert(n) => Some(u64::from(n)),
        };
        let key = || (rule.table, rule.chain, position, rule_body(rule));
        // A rule with an address match names its family (`ip`/`ip6`), so its text never
        // repeats the other family's: no text needed (thousands of CIDR rules).
        let has_address = rule
            .matches
            .iter()
            .any(|m| matches!(m, Match::Destination { .. } | Match::Source(_)));
        if has_address {
            // With IPv6 off an inet table still captures IPv6 (its capture rules match no
            // address, so they match both families): an IPv6 exclusion (a RETURN) must stay,
            // or a listed IPv6 peer or network would be captured all the same. IPv6 rules
            // that capture stay out, as Istio has them.
            let v6_exclusion = matches!(rule.target, Target::Return);
            if rule.scope != Scope::Only(Family::V6) || plan.ipv6 || v6_exclusion {
                out.push(rule);
            }
            continue;
        }
        match rule.scope {
            Scope::Both => {}
            Scope::Only(Family::V4) => {
                v4_texts.insert(key());
            }
            Scope::Only(Family::V6) => {
                if !plan.ipv6 || v4_texts.contains(&key()) {
                    continue;
                }
            }
        }
        out.push(rule);
    }
    out
}

/// The 0-based index an insert goes to, or `None` when it must be an append: iptables
/// positions are 1-based, and nft refuses an index into an empty chain or at/after its end,
/// which Istio turns into `add rule` (`chain_len` = rules the chain has at that point).
pub fn insert_index(position: Position, chain_len: usize) -> Option<usize> {
    match position {
        Position::Append => None,
        Position::Insert(n) => {
            let index = (n as usize).saturating_sub(1);
            (chain_len > 0 && index < chain_len).then_some(index)
        }
    }
}

/// The plan as nftables tables, chains and rules (see [`Ruleset`]), with sets for long lists
/// as `--nft-sets=auto` has them.
pub fn ruleset(plan: &Plan) -> Ruleset {
    ruleset_with(plan, NftSets::Auto)
}

/// [`ruleset`] with the given `--nft-sets` policy (see [`with_sets`]).
pub fn ruleset_with(plan: &Plan, sets: NftSets) -> Ruleset {
    let mut rs = per_rule_ruleset(plan);
    for table in &mut rs.tables {
        let rules = std::mem::take(&mut table.rules);
        table.rules = with_sets(rules, sets);
    }
    rs
}

/// The plan as nftables tables, chains and rules, one rule per plan rule (Istio's text).
fn per_rule_ruleset(plan: &Plan) -> Ruleset {
    let rules = nft_rules(plan);
    let mut tables = Vec::new();
    for table in TABLE_ORDER {
        let rules: Vec<&Rule> = rules.iter().copied().filter(|r| r.table == table).collect();
        if rules.is_empty() {
            continue;
        }
        let chains = chains_with_rules(table, &rules)
            .into_iter()
            .map(|chain| NftChain {
                name: chain_name(chain),
                base: base_chain(table, chain),
            })
            .collect();
        // Per chain its name and rule count so far: a table has a handful of chains, and with
        // thousands of rules a hash lookup and a fresh name per rule cost more than the scan.
        let mut chain_len: Vec<(Chain, String, usize)> = Vec::new();
        let mut nft_rules = Vec::with_capacity(rules.len());
        for rule in rules {
            let at = match chain_len.iter().position(|(c, _, _)| *c == rule.chain) {
                Some(at) => at,
                None => {
                    chain_len.push((rule.chain, chain_name(rule.chain), 0));
                    chain_len.len() - 1
                }
            };
            let (_, name, len) = &mut chain_len[at];
            nft_rules.push(NftRule {
                chain: name.clone(),
                index: insert_index(rule.position, *len),
                stmts: rule_stmts(rule),
                purpose: rule.purpose,
            });
            *len += 1;
        }
        tables.push(NftTable {
            name: table_name(table),
            chains,
            rules: nft_rules,
        });
    }
    Ruleset { tables }
}

/// Under `--nft-sets=auto`, a run of more than this many rules that differ only in one
/// network or one port becomes one rule with a set lookup; shorter lists keep Istio's text (a
/// rule per entry), which every one of Istio's cases uses.
pub const SET_THRESHOLD: usize = 16;

/// What varies between the rules of a run: a positive address or a positive port match, on
/// one side of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Addr(Direction),
    Port(Direction),
}

/// The index of the rule's statement of that kind, when it has exactly one.
fn key_of(rule: &NftRule, kind: KeyKind) -> Option<usize> {
    let mut found = None;
    for (i, stmt) in rule.stmts.iter().enumerate() {
        let hit = match (kind, stmt) {
            (
                KeyKind::Addr(want),
                Stmt::Address {
                    dir, negate: false, ..
                },
            ) => *dir == want,
            (
                KeyKind::Port(want),
                Stmt::Port {
                    dir, negate: false, ..
                },
            ) => *dir == want,
            _ => false,
        };
        if hit {
            if found.is_some() {
                return None;
            }
            found = Some(i);
        }
    }
    found
}

/// A rule with its varying statement taken out: rules of one template differ only in it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template {
    /// Where the varying statement was.
    pos: usize,
    /// The address family or the port's protocol: a set holds keys of one type.
    tag: u8,
    /// Every other statement.
    rest: Vec<Stmt>,
}

/// The template of a rule and what a packet must have to possibly match it: its family (for
/// an address) or its protocol and port (for a port), as one number.
fn template(rule: &NftRule, pos: usize) -> (Template, u32) {
    let (tag, exclusive) = match &rule.stmts[pos] {
        Stmt::Address { net, .. } => {
            let fam = cidr_family(net) as u8;
            (fam, u32::from(fam))
        }
        Stmt::Port { proto, port, .. } => {
            let p = *proto as u8;
            (p, (u32::from(p) << 16) | u32::from(port.lo().get()))
        }
        _ => unreachable!("key_of found the statement"),
    };
    // Every statement but the varying one, which is not copied (thousands of networks).
    let mut rest = Vec::with_capacity(rule.stmts.len() - 1);
    rest.extend_from_slice(&rule.stmts[..pos]);
    rest.extend_from_slice(&rule.stmts[pos + 1..]);
    (Template { pos, tag, rest }, exclusive)
}

/// Statements that change the packet or its connection and let it go on.
fn modifies(stmt: &Stmt) -> bool {
    matches!(
        stmt,
        Stmt::SetMark(_) | Stmt::SaveMark | Stmt::RestoreMark | Stmt::CtZone(_)
    )
}

/// Whether a packet that matches several rules with these statements ends up as if it had
/// matched only the first: the rule ends evaluation (a verdict, `redirect`, `tproxy`), or it
/// jumps to a chain that changes nothing on the way back, or it only counts.
fn once_is_enough(stmts: &[Stmt], rules: &[NftRule], depth: usize) -> bool {
    let ends = stmts.iter().any(|s| {
        matches!(
            s,
            Stmt::Return | Stmt::Accept | Stmt::Drop | Stmt::Redirect(_) | Stmt::Tproxy { .. }
        )
    });
    if ends {
        return true;
    }
    if stmts.iter().any(modifies) {
        return false;
    }
    stmts.iter().all(|s| match s {
        Stmt::Jump(chain) => depth < 8 && chain_is_pure(chain, rules, depth + 1),
        _ => true,
    })
}

/// A chain whose traversal changes nothing when the packet comes back out of it: each rule
/// either ends evaluation or modifies nothing (and jumps only to such chains).
fn chain_is_pure(chain: &str, rules: &[NftRule], depth: usize) -> bool {
    rules.iter().filter(|r| r.chain == chain).all(|r| {
        let terminal = r.stmts.iter().any(|s| {
            matches!(
                s,
                Stmt::Accept | Stmt::Drop | Stmt::Redirect(_) | Stmt::Tproxy { .. }
            )
        });
        terminal || once_is_enough(&r.stmts, rules, depth)
    })
}

/// The rules a run becomes, or `None` when it stays as it is. The run's rules are grouped by
/// template (groups in order of first appearance); a group of at least `min` rules becomes one
/// rule with a set. Regrouping reorders rules, which is exact only when any two rules a single
/// packet could match keep their order: ports differ per packet (a packet has one protocol
/// and port) and families too, so it is checked that, per port (or per family), the groups
/// appear in increasing order; otherwise only consecutive rules of one template are merged.
/// A range covers many ports, so it is checked against every rule whose ports it overlaps.
/// A set replaces several matching rules by one, so a packet matching several entries (nested
/// networks, a repeated port) takes the action once: allowed when once is enough (see
/// [`once_is_enough`]) or when no two entries overlap.
fn run_with_sets(
    run: &[NftRule],
    kind: KeyKind,
    min: usize,
    all: &[NftRule],
) -> Option<Vec<NftRule>> {
    let mut groups: Vec<(Template, Vec<&NftRule>)> = Vec::new();
    // Ordered, not hashed: two keys (the families) for an address list, and a tree lookup is
    // cheaper than hashing for each of thousands of rules.
    let mut seen: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
    let mut in_order = true;
    let mut group_of: Vec<usize> = Vec::with_capacity(run.len());
    for rule in run {
        let pos = key_of(rule, kind)?;
        let (t, exclusive) = template(rule, pos);
        let g = match groups.iter().position(|(g, _)| *g == t) {
            Some(g) => g,
            None => {
                groups.push((t, Vec::new()));
                groups.len() - 1
            }
        };
        groups[g].1.push(rule);
        group_of.push(g);
        let last = seen.entry(exclusive).or_insert(g);
        in_order &= g >= *last;
        *last = g;
    }
    // A range matches many ports: for each port it covers, the groups must still come in
    // order. Pairs of single ports are checked above; here each range against every rule.
    let span = |r: &NftRule| match key_of(r, kind).map(|pos| &r.stmts[pos]) {
        Some(Stmt::Port { proto, port, .. }) => Some((*proto as u8, port.lo(), port.hi())),
        _ => None,
    };
    if groups.len() > 1 {
        let spans: Vec<Option<(u8, Port, Port)>> = run.iter().map(span).collect();
        for (i, s) in spans.iter().enumerate() {
            let Some((tag, lo, hi)) = *s else { continue };
            if lo == hi {
                continue;
            }
            for (j, other) in spans.iter().enumerate() {
                let Some((t, l, h)) = *other else { continue };
                let overlap = t == tag && l <= hi && lo <= h;
                let reordered =
                    (j < i && group_of[j] > group_of[i]) || (j > i && group_of[j] < group_of[i]);
                if overlap && reordered {
                    in_order = false;
                }
            }
        }
    }
    if !in_order {
        // Split into runs of one template each, which merge without reordering.
        let mut out = Vec::new();
        let mut changed = false;
        let mut start = 0;
        for i in 1..=run.len() {
            let same = i < run.len() && {
                let t = |r: &NftRule| template(r, key_of(r, kind).unwrap_or(0)).0;
                t(&run[i]) == t(&run[start])
            };
            if !same {
                match run_with_sets(&run[start..i], kind, min, all) {
                    Some(rules) => {
                        changed = true;
                        out.extend(rules);
                    }
                    None => out.extend_from_slice(&run[start..i]),
                }
                start = i;
            }
        }
        return changed.then_some(out);
    }
    let mut out = Vec::new();
    let mut changed = false;
    for (t, members) in groups {
        let mergeable = members.len() >= min
            && (once_is_enough(&t.rest, all, 0) || !entries_overlap(&members, t.pos));
        if !mergeable {
            out.extend(members.into_iter().cloned());
            continue;
        }
        changed = true;
        let first = members[0];
        let stmt = match &first.stmts[t.pos] {
            Stmt::Address { dir, net, .. } => Stmt::AddressIn {
                dir: *dir,
                family: cidr_family(net),
                nets: members
                    .iter()
                    .filter_map(|r| match &r.stmts[t.pos] {
                        Stmt::Address { net, .. } => Some(net.clone()),
                        _ => None,
                    })
                    .collect(),
            },
            Stmt::Port { proto, dir, .. } => Stmt::PortIn {
                proto: *proto,
                dir: *dir,
                ports: members
                    .iter()
                    .filter_map(|r| match &r.stmts[t.pos] {
                        Stmt::Port { port, .. } => Some(*port),
                        _ => None,
                    })
                    .collect(),
            },
            _ => unreachable!("key_of found the statement"),
        };
        let mut stmts = t.rest.clone();
        stmts.insert(t.pos, stmt);
        out.push(NftRule {
            chain: first.chain.clone(),
            index: None,
            stmts,
            purpose: first.purpose,
        });
    }
    changed.then_some(out)
}

/// Whether two rules of a group can match the same packet: nested or overlapping networks,
/// or a repeated or overlapping port or range.
fn entries_overlap(members: &[&NftRule], pos: usize) -> bool {
    let mut nets = Vec::new();
    let mut ports = Vec::new();
    for r in members {
        match &r.stmts[pos] {
            Stmt::Address { net, .. } => nets.push(net.clone()),
            Stmt::Port { port, .. } => ports.push((port.lo().get(), port.hi().get())),
            _ => {}
        }
    }
    ports.sort_unstable();
    let mut highest: Option<u16> = None;
    let ports_overlap = ports.iter().any(|&(lo, hi)| {
        let hit = highest.is_some_and(|h| lo <= h);
        highest = Some(highest.map_or(hi, |h| h.max(hi)));
        hit
    });
    nft_sets::overlapping(&nets) || ports_overlap
}

/// A table's rules (in the order they are added, inserts with their index) with every run of
/// rules that differ only in one network or one port, longer than the policy allows, replaced
/// by one rule with a set lookup — same traffic, one rule to walk instead of thousands. A run
/// is consecutive appends to one chain. Later inserts into the chain keep their place: their
/// indices are recounted, and a run an insert would land inside of is left as it is.
pub fn with_sets(rules: Vec<NftRule>, sets: NftSets) -> Vec<NftRule> {
    let min = match sets {
        NftSets::Never => return rules,
        NftSets::Always => 2,
        NftSets::Auto => SET_THRESHOLD + 1,
    };
    const KINDS: [KeyKind; 4] = [
        KeyKind::Addr(Direction::Destination),
        KeyKind::Addr(Direction::Source),
        KeyKind::Port(Direction::Destination),
        KeyKind::Port(Direction::Source),
    ];
    // Runs: [start, end) of the rule list, with what they become.
    let mut runs: Vec<(usize, usize, Vec<NftRule>)> = Vec::new();
    let mut i = 0;
    while i < rules.len() {
        let mut best: Option<(usize, KeyKind)> = None;
        for kind in KINDS {
            let len = rules[i..]
                .iter()
                .take_while(|r| {
                    r.chain == rules[i].chain && r.index.is_none() && key_of(r, kind).is_some()
                })
                .count();
            if len >= 2 && best.is_none_or(|(l, _)| len > l) {
                best = Some((len, kind));
            }
        }
        match best {
            Some((len, kind)) => {
                if let Some(new) = run_with_sets(&rules[i..i + len], kind, min, &rules) {
                    runs.push((i, i + len, new));
                }
                i += len;
            }
            None => i += 1,
        }
    }
    if runs.is_empty() {
        return rules;
    }
    // Recount insert indices; drop runs an insert lands inside of, until none does.
    loop {
        let run_at = |k: usize| runs.iter().position(|(s, e, _)| (*s..*e).contains(&k));
        let weight = |k: usize| match run_at(k) {
            Some(r) if runs[r].0 == k => runs[r].2.len(),
            Some(_) => 0,
            None => 1,
        };
        // Per chain the rules in their order; a table has a handful of chains, so a scan is
        // cheaper than hashing each of thousands of rules' chain names.
        let mut order: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut new_index: HashMap<usize, usize> = HashMap::new();
        let mut conflict = None;
        for (k, rule) in rules.iter().enumerate() {
            let at = match order.iter().position(|(c, _)| *c == rule.chain) {
                Some(at) => at,
                None => {
                    order.push((rule.chain.as_str(), Vec::new()));
                    order.len() - 1
                }
            };
            let chain = &mut order[at].1;
            match rule.index {
                None => chain.push(k),
                Some(at) => {
                    if let Some(&target) = chain.get(at) {
                        if let Some(r) = run_at(target) {
                            if runs[r].0 != target {
                                conflict = Some(r);
                                break;
                            }
                        }
                    }
                    new_index.insert(
                        k,
                        chain[..at.min(chain.len())]
                            .iter()
                            .map(|t| weight(*t))
                            .sum(),
                    );
                    chain.insert(at.min(chain.len()), k);
                }
            }
        }
        if let Some(r) = conflict {
            runs.remove(r);
            if runs.is_empty() {
                return rules;
            }
            continue;
        }
        let mut out = Vec::with_capacity(rules.len());
        let mut runs_iter = runs.into_iter().peekable();
        let mut k = 0;
        while k < rules.len() {
            if runs_iter.peek().is_some_and(|(s, _, _)| *s == k) {
                let (_, end, new) = runs_iter.next().expect("peeked");
                out.extend(new);
                k = end;
                continue;
            }
            let mut rule = rules[k].clone();
            if let Some(i) = new_index.get(&k) {
                rule.index = Some(*i);
            }
            out.push(rule);
            k += 1;
        }
        return out;
    }
}

/// The whole `nft -f` script for a plan: per table with rules (nat, mangle, raw), `add table`
/// and `flush table`, the chains that receive rules, then the rules in generation order
/// (`add rule …` or `insert rule … index N …`). Empty when nothing is planned.
pub fn nft_script(plan: &Plan) -> String {
    script(&ruleset(plan))
}

/// [`nft_script`] with the given `--nft-sets` policy.
pub fn nft_script_with(plan: &Plan, sets: NftSets) -> String {
    script(&ruleset_with(plan, sets))
}

/// A ruleset as `nft -f` text (see [`nft_script`]).
pub fn script(ruleset: &Ruleset) -> String {
    let mut out = String::new();
    for table in &ruleset.tables {
        let t = &table.name;
        out.push_str(&format!("add table inet {t}\nflush table inet {t}\n"));
        for chain in &table.chains {
            let name = &chain.name;
            match chain.base {
                Some(b) => out.push_str(&format!(
                    "add chain inet {t} {name} {{ type {} hook {} priority {} ; }}\n",
                    b.kind.name(),
                    b.hook.name(),
                    b.priority
                )),
                None => out.push_str(&format!("add chain inet {t} {name}\n")),
            }
        }
        for rule in &table.rules {
            let chain = &rule.chain;
            let body = rule.body();
            match rule.index {
                Some(i) => {
                    out.push_str(&format!("insert rule inet {t} {chain} index {i} {body}\n"))
                }
                None => out.push_str(&format!("add rule inet {t} {chain} {body}\n")),
            }
        }
    }
    out
}

/// The chains of a table that receive rules, in Istio's declaration order; a chain Istio's
/// list lacks (not planned today) follows, in order of first use, so the script still loads.
fn chains_with_rules(table: Table, rules: &[&Rule]) -> Vec<Chain> {
    let used = |c: &Chain| rules.iter().any(|r| r.chain == *c);
    let known = declared_chains(table);
    let mut out: Vec<Chain> = known.iter().copied().filter(used).collect();
    for rule in rules {
        if !known.contains(&rule.chain) && !out.contains(&rule.chain) {
            out.push(rule.chain);
        }
    }
    out
}

/// A rule's text after its chain: the matches in nftables' order, `counter`, the statement.
pub fn rule_body(rule: &Rule) -> String {
    let words: Vec<String> = rule_stmts(rule).iter().map(Stmt::to_string).collect();
    words.join(" ")
}

/// A plan rule as nft statements: the matches in Istio's nftables order, then `counter` and
/// the action.
pub fn rule_stmts(rule: &Rule) -> Vec<Stmt> {
    // Sized exactly, once: with thousands of listed CIDRs there are as many rules.
    let actions = match rule.target {
        Target::Tproxy { .. } => 4,
        _ => 2,
    };
    let mut out: Vec<Stmt> = Vec::with_capacity(rule.matches.len() + 1 + actions);
    // Istio writes matches in one fixed order whatever iptables' order was: each match goes
    // after those of its rank or a lower one, which keeps lists of one kind (owner-group
    // include lists) as given. The ranks sit beside `out`, not in a second list per rule.
    let mut ranks: Vec<u8> = Vec::new();
    let mut small = [0u8; 16];
    let mut put = |rank: u8, stmt: Stmt, out: &mut Vec<Stmt>| {
        let n = out.len();
        let ranks_of: &mut [u8] = if n < small.len() {
            &mut small[..=n]
        } else {
            if ranks.is_empty() {
                ranks.extend_from_slice(&small);
            }
            ranks.push(0);
            &mut ranks[..]
        };
        let at = ranks_of[..n].iter().position(|r| *r > rank).unwrap_or(n);
        ranks_of.copy_within(at..n, at + 1);
        ranks_of[at] = rank;
        out.insert(at, stmt);
    };
    if let Some(proto) = l4proto(rule) {
        put(RANK_L4PROTO, Stmt::L4Proto(proto), &mut out);
    }
    for m in &rule.matches {
        if let Some((rank, stmt)) = match_stmt(rule, m) {
            put(rank, stmt, &mut out);
        }
    }
    action(rule, &mut out);
    out
}

// The order of match kinds in Istio's nft rules: interface, `meta l4proto`, `ct state`,
// (conn)mark, address, port, socket owner. The raw table is the exception (see `port_rank`).
const RANK_IFACE: u8 = 0;
const RANK_L4PROTO: u8 = 1;
const RANK_CTSTATE: u8 = 2;
const RANK_MARK: u8 = 3;
const RANK_ADDR: u8 = 4;
const RANK_PORT: u8 = 5;
const RANK_OWNER: u8 = 6;

/// Ports sort after addresses, except in raw, where Istio's conntrack-zone rules start with
/// the port (`udp dport 53 ip daddr …`, `udp sport 53 ip saddr …`).
fn port_rank(rule: &Rule) -> u8 {
    if rule.table == Table::Raw {
        RANK_L4PROTO
    } else {
        RANK_PORT
    }
}

/// The protocol of the `meta l4proto` word, where Istio writes one. A port match
/// (`tcp dport …`) already implies the protocol, and Istio leaves the `meta l4proto` out of:
/// every UDP rule; the ISTIO_OUTPUT rules on a plain destination port (excluded `-o` and
/// included `-q` ports); the per-server DNS redirects (only the capture-all one has it).
/// Everywhere else TCP rules carry it — including the invalid-drop rule, which under nftables
/// is TCP-only although the plan (like iptables) matches every protocol.
fn l4proto(rule: &Rule) -> Option<Protocol> {
    let has_port = rule.matches.iter().any(|m| {
        matches!(
            m,
            Match::DestinationPort { .. } | Match::SourcePort(_) | Match::DestinationPortNotIn(_)
        )
    });
    let positive_dport = rule
        .matches
        .iter()
        .any(|m| matches!(m, Match::DestinationPort { negate: false, .. }));
    let has_destination = rule
        .matches
        .iter()
        .any(|m| matches!(m, Match::Destination { .. }));
    let proto = match rule.protocol() {
        Some(p) => p,
        None if is_invalid_drop(rule) => Protocol::Tcp,
        None => return None,
    };
    if !has_port {
        return Some(proto);
    }
    let written = match proto {
        Protocol::Udp => false,
        Protocol::Tcp => match rule.chain {
            Chain::IstioOutput => !positive_dport,
            Chain::IstioOutputDns => !has_destination,
            _ => true,
        },
    };
    written.then_some(proto)
}

fn is_invalid_drop(rule: &Rule) -> bool {
    rule.matches
        .iter()
        .any(|m| matches!(m, Match::ConntrackState(CtState::Invalid)))
}

/// One match as a statement with its rank; `None` for the protocol, which `l4proto` and the
/// port matches express.
fn match_stmt(rule: &Rule, m: &Match) -> Option<(u8, Stmt)> {
    // Port expressions name their protocol (`tcp dport`); the plan's rules with ports always
    // name one, TCP being Istio's default.
    let proto = rule.protocol().unwrap_or(Protocol::Tcp);
    let stmt = match m {
        Match::Protocol(_) => return None,
        Match::InInterface(name) => (
            RANK_IFACE,
            Stmt::Interface {
                dir: Direction::Source,
                name: name.clone(),
            },
        ),
        Match::OutInterface(name) => (
            RANK_IFACE,
            Stmt::Interface {
                dir: Direction::Destination,
                name: name.clone(),
            },
        ),
        Match::Source(net) => (
            RANK_ADDR,
            Stmt::Address {
                dir: Direction::Source,
                net: net.clone(),
                negate: false,
            },
        ),
        Match::Destination { net, negate } => (
            RANK_ADDR,
            Stmt::Address {
                dir: Direction::Destination,
                net: net.clone(),
                negate: *negate,
            },
        ),
        Match::DestinationPort { port, negate } => (
            port_rank(rule),
            Stmt::Port {
                proto,
                dir: Direction::Destination,
                port: *port,
                negate: *negate,
            },
        ),
        Match::SourcePort(port) => (
            port_rank(rule),
            Stmt::Port {
                proto,
                dir: Direction::Source,
                port: (*port).into(),
                negate: false,
            },
        ),
        Match::DestinationPortNotIn(ports) => (
            port_rank(rule),
            Stmt::PortNotIn {
                proto,
                ports: ports.clone(),
            },
        ),
        // Istio spells the socket owner `meta skuid` in raw and bare `skuid` elsewhere;
        // nft accepts both and compiles them alike.
        Match::Owner { owner, negate } => (
            RANK_OWNER,
            Stmt::Owner {
                owner: owner.clone(),
                negate: *negate,
                meta: rule.table == Table::Raw,
            },
        ),
        Match::ConntrackState(state) => (RANK_CTSTATE, Stmt::CtState(*state)),
        Match::Mark { mark, negate } => (
            RANK_MARK,
            Stmt::Mark {
                mark: *mark,
                negate: *negate,
            },
        ),
        Match::ConnMark(mark) => (RANK_MARK, Stmt::CtMark(*mark)),
    };
    Some(stmt)
}

/// The family a TPROXY rule diverts: that of its address match, else its scope.
fn tproxy_family(rule: &Rule) -> Family {
    let from_match = rule.matches.iter().find_map(|m| match m {
        Match::Destination { net, .. } | Match::Source(net) => Some(cidr_family(net)),
        _ => None,
    });
    from_match.unwrap_or(match rule.scope {
        Scope::Only(Family::V6) => Family::V6,
        _ => Family::V4,
    })
}

/// `counter` and the action. `counter` comes right before the verdict or statement, except
/// for TPROXY, where Istio writes it between the mark and `accept`.
fn action(rule: &Rule, out: &mut Vec<Stmt>) {
    let stmt = match &rule.target {
        Target::Jump(chain) => Stmt::Jump(chain_name(*chain)),
        Target::Return => Stmt::Return,
        Target::Accept => Stmt::Accept,
        Target::Drop => Stmt::Drop,
        Target::Redirect(port) => Stmt::Redirect(*port),
        Target::Tproxy { mark, port } => {
            out.extend([
                Stmt::Tproxy {
                    family: tproxy_family(rule),
                    port: *port,
                },
                Stmt::SetMark(*mark),
                Stmt::Counter,
                Stmt::Accept,
            ]);
            return;
        }
        Target::SetMark(mark) => Stmt::SetMark(*mark),
        // CONNMARK --save-mark / --restore-mark.
        Target::SaveMark => Stmt::SaveMark,
        Target::RestoreMark => Stmt::RestoreMark,
        Target::ConntrackZone(zone) => Stmt::CtZone(*zone),
    };
    out.extend([Stmt::Counter, stmt]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::{GroupRef, Port};

    fn rule(table: Table, chain: Chain, matches: Vec<Match>, target: Target) -> Rule {
        Rule::new(table, chain, "test", matches, target)
    }

    fn only(family: Family, r: Rule) -> Rule {
        Rule {
            scope: Scope::Only(family),
            ..r
        }
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn plan(rules: Vec<Rule>, ipv6: bool) -> Plan {
        Plan {
            rules,
            ipv6,
            tproxy_route: None,
        }
    }

    #[test]
    fn names() {
        assert_eq!(table_name(Table::Mangle), "istio-proxy-mangle");
        assert_eq!(chain_name(Chain::IstioOutputDns), "istio-output-dns");
        assert_eq!(chain_name(Chain::IstioInRedirect), "istio-in-redirect");
        assert_eq!(chain_name(Chain::Prerouting), "prerouting");
    }

    #[test]
    fn insert_positions_are_zero_based_and_become_appends_past_the_end() {
        assert_eq!(insert_index(Position::Append, 3), None);
        // Into an empty chain: nft refuses index 0, so it is an append.
        assert_eq!(insert_index(Position::Insert(1), 0), None);
        assert_eq!(insert_index(Position::Insert(1), 1), Some(0));
        // At or beyond the end: append.
        assert_eq!(insert_index(Position::Insert(2), 1), None);
        assert_eq!(insert_index(Position::Insert(3), 2), None);
        assert_eq!(insert_index(Position::Insert(3), 4), Some(2));
    }

    #[test]
    fn inserts_count_the_rules_already_in_the_chain() {
        let ret = |iface: &str| {
            rule(
                Table::Nat,
                Chain::Prerouting,
                vec![Match::InInterface(iface.parse().unwrap())],
                Target::Return,
            )
            .at(1)
        };
        let script = nft_script(&plan(vec![ret("eth1"), ret("eth2")], false));
        let lines: Vec<&str> = script.lines().filter(|l| l.contains(" rule ")).collect();
        assert_eq!(
            lines,
            [
                "add rule inet istio-proxy-nat prerouting iifname eth1 counter return",
                "insert rule inet istio-proxy-nat prerouting index 0 iifname eth2 counter return",
            ]
        );
    }

    #[test]
    fn owner_group_include_list_keeps_its_order() {
        let not_gid = |g: &str| Match::Owner {
            owner: Owner::Gid(g.parse::<GroupRef>().unwrap()),
            negate: true,
        };
        let r = rule(
            Table::Nat,
            Chain::IstioOutput,
            vec![not_gid("java"), not_gid("202")],
            Target::Return,
        );
        assert_eq!(rule_body(&r), "skgid != java skgid != 202 counter return");
    }

    #[test]
    fn a_rule_with_more_matches_than_the_fast_path_holds_keeps_istios_order() {
        // More than 16 statements: the ranks leave their fixed-size array.
        let not_gid = |g: u32| Match::Owner {
            owner: Owner::Gid(g.to_string().parse::<GroupRef>().unwrap()),
            negate: true,
        };
        let mut matches: Vec<Match> = (1..=20).map(not_gid).collect();
        // Last: it goes before all twenty, which the ranks past the array must tell.
        matches.push(Match::Destination {
            net: cidr("10.0.0.0/8"),
            negate: false,
        });
        let r = rule(Table::Nat, Chain::IstioOutput, matches, Target::Return);
        let groups: Vec<String> = (1..=20).map(|g| format!("skgid != {g}")).collect();
        assert_eq!(
            rule_body(&r),
            format!("ip daddr 10.0.0.0/8 {} counter return", groups.join(" "))
        );
    }

    #[test]
    fn owner_is_meta_skuid_in_raw_only() {
        let m = vec![
            Match::Protocol(Protocol::Udp),
            Match::DestinationPort {
                port: Port::new_const(53).into(),
                negate: false,
            },
            Match::Owner {
                owner: Owner::Uid(3),
                negate: false,
            },
        ];
        let raw = rule(
            Table::Raw,
            Chain::IstioOutputDns,
            m.clone(),
            Target::ConntrackZone(1),
        );
        assert_eq!(
            rule_body(&raw),
            "udp dport 53 meta skuid 3 counter ct zone set 1"
        );
        let nat = rule(Table::Nat, Chain::IstioOutput, m, Target::Return);
        assert_eq!(rule_body(&nat), "udp dport 53 skuid 3 counter return");
    }

    #[test]
    fn matches_follow_nft_order_not_iptables_order() {
        // iptables: `! -d 127.0.0.1/32 -p tcp -j TPROXY …`
        let r = only(
            Family::V6,
            rule(
                Table::Mangle,
                Chain::IstioTproxy,
                vec![
                    Match::Destination {
                        net: cidr("::1/128"),
                        negate: true,
                    },
                    Match::Protocol(Protocol::Tcp),
                ],
                Target::Tproxy {
                    mark: 1337,
                    port: Port::new_const(15006),
                },
            ),
        );
        assert_eq!(
            rule_body(&r),
            "meta l4proto tcp ip6 daddr != ::1/128 tproxy ip6 to :15006 meta mark set 1337 counter accept"
        );
        // Address before port in nat, port before address in raw.
        let dns = |table| {
            rule(
                table,
                Chain::IstioOutputDns,
                vec![
                    Match::Protocol(Protocol::Udp),
                    Match::DestinationPort {
                        port: Port::new_const(53).into(),
                        negate: false,
                    },
                    Match::Destination {
                        net: cidr("127.0.0.53/32"),
                        negate: false,
                    },
                ],
                Target::ConntrackZone(2),
            )
        };
        assert!(rule_body(&dns(Table::Nat)).starts_with("ip daddr 127.0.0.53/32 udp dport 53 "));
        assert!(rule_body(&dns(Table::Raw)).starts_with("udp dport 53 ip daddr 127.0.0.53/32 "));
    }

    #[test]
    fn l4proto_where_istio_writes_it() {
        let tcp_dport = |chain| {
            rule(
                Table::Nat,
                chain,
                vec![
                    Match::Protocol(Protocol::Tcp),
                    Match::DestinationPort {
                        port: Port::new_const(32000).into(),
                        negate: false,
                    },
                ],
                Target::Return,
            )
        };
        assert_eq!(
            rule_body(&tcp_dport(Chain::IstioInbound)),
            "meta l4proto tcp tcp dport 32000 counter return"
        );
        assert_eq!(
            rule_body(&tcp_dport(Chain::IstioOutput)),
            "tcp dport 32000 counter return"
        );
        let invalid = rule(
            Table::Mangle,
            Chain::Prerouting,
            vec![Match::ConntrackState(CtState::Invalid)],
            Target::Jump(Chain::IstioDrop),
        );
        assert_eq!(
            rule_body(&invalid),
            "meta l4proto tcp ct state invalid counter jump istio-drop"
        );
    }

    #[test]
    fn per_family_copies_without_addresses_are_written_once() {
        let jump = rule(
            Table::Nat,
            Chain::IstioOutput,
            vec![],
            Target::Jump(Chain::IstioOutputDns),
        );
        let dns = |net: &str| {
            rule(
                Table::Nat,
                Chain::IstioOutputDns,
                vec![Match::Destination {
                    net: cidr(net),
                    negate: false,
                }],
                Target::Redirect(Port::new_const(15053)),
            )
        };
        let p = plan(
            vec![
                only(Family::V4, jump.clone()),
                only(Family::V6, jump.clone()),
                only(Family::V4, dns("10.0.0.1/32")),
                only(Family::V6, dns("::1/128")),
            ],
            true,
        );
        let kept = nft_rules(&p);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0].scope, Scope::Only(Family::V4));
        // An IPv6-only rule alone stays; with IPv6 off it goes.
        let p = plan(vec![only(Family::V6, jump)], true);
        assert_eq!(nft_rules(&p).len(), 1);
        let p = Plan { ipv6: false, ..p };
        assert!(nft_rules(&p).is_empty());
        assert_eq!(nft_script(&p), "");
    }

    /// The rule lines of the script for a command line (IPv6 and DNS servers given, so
    /// nothing is detected from the host).
    fn script_rules(args: &[&str]) -> Vec<String> {
        use crate::cli::{parse, Command, Env};
        use crate::config::{detect::SystemHost, Config};
        let mut argv = vec!["meshinit".to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let Command::Run(raw) = parse(&argv, &Env::new()).unwrap() else {
            panic!("not a run")
        };
        let config = Config::build(&raw, &SystemHost).unwrap();
        nft_script(&crate::plan::plan(&config.capture))
            .lines()
            .filter(|l| l.contains(" rule "))
            .map(String::from)
            .collect()
    }

    // The paths below have no golden; the expected text is what Istio's nftables Run()
    // generates for them.
    #[test]
    fn capture_all_dns_keeps_l4proto_on_tcp_only() {
        let rules = script_rules(&[
            "--redirect-dns=true",
            "--capture-all-dns=true",
            "--ipv6=true",
            "--dns-servers=",
        ]);
        let nat_dns = "add rule inet istio-proxy-nat istio-output-dns";
        let raw = "add rule inet istio-proxy-raw";
        for line in [
            format!("{nat_dns} meta l4proto tcp tcp dport 53 counter redirect to :15053"),
            format!("{nat_dns} udp dport 53 counter redirect to :15053"),
            format!("{raw} prerouting counter jump istio-inbound"),
            format!("{raw} istio-output-dns udp dport 53 counter ct zone set 2"),
            format!("{raw} istio-inbound udp sport 53 counter ct zone set 1"),
        ] {
            assert_eq!(rules.iter().filter(|r| **r == line).count(), 1, "{line}");
        }
        let jumps = "add rule inet istio-proxy-nat istio-output counter jump istio-output-dns";
        assert_eq!(rules.iter().filter(|r| *r == jumps).count(), 1);
    }

    #[test]
    fn excluded_ports() {
        let rules = script_rules(&[
            "--istio-inbound-ports=*",
            "--istio-local-exclude-ports=7000",
            "--istio-local-outbound-ports-exclude=8000",
            "--ipv6=false",
            "--dns-servers=",
        ]);
        let nat = "add rule inet istio-proxy-nat";
        for line in [
            format!("{nat} istio-inbound meta l4proto tcp tcp dport 7000 counter return"),
            format!("{nat} istio-inbound meta l4proto tcp counter jump istio-in-redirect"),
            format!("{nat} istio-output tcp dport 8000 counter return"),
            format!("{nat} istio-output udp dport 8000 counter return"),
        ] {
            assert!(rules.contains(&line), "{line} missing from {rules:#?}");
        }
    }

    #[test]
    fn include_all_with_vm_interfaces_is_written_once_for_both_families() {
        let rules = script_rules(&[
            "--istio-service-cidr=*",
            "--kube-virt-interfaces=eth1",
            "--ipv6=true",
            "--dns-servers=",
        ]);
        let tail = &rules[rules.len() - 2..];
        assert_eq!(
            tail,
            [
                "add rule inet istio-proxy-nat istio-output counter jump istio-redirect",
                "insert rule inet istio-proxy-nat prerouting index 0 iifname eth1 counter jump istio-redirect",
            ]
        );
    }

    fn script_rules_with(args: &[&str], sets: &str) -> Vec<String> {
        let mut all: Vec<&str> = args.to_vec();
        let flag = format!("--nft-sets={sets}");
        all.push(&flag);
        use crate::cli::{parse, Command, Env};
        use crate::config::{detect::SystemHost, Config};
        let mut argv = vec!["meshinit".to_string()];
        argv.extend(all.iter().map(|a| a.to_string()));
        let Command::Run(raw) = parse(&argv, &Env::new()).unwrap() else {
            panic!("not a run")
        };
        let config = Config::build(&raw, &SystemHost).unwrap();
        nft_script_with(&crate::plan::plan(&config.capture), config.run.nft_sets)
            .lines()
            .filter(|l| l.contains(" rule "))
            .map(String::from)
            .collect()
    }

    #[test]
    fn long_lists_become_sets_and_short_ones_keep_istios_text() {
        let ports: Vec<String> = (9000..9017).map(|p| p.to_string()).collect();
        let b = format!("-b={}", ports.join(","));
        let base = [
            "--ipv6=false",
            "--dns-servers=",
            &b,
            "-x=10.1.0.0/16,10.3.0.0/24",
        ];
        let nat = "add rule inet istio-proxy-nat";
        // 17 ports: more than the threshold, one set; 2 CIDRs (+ loopback): rules.
        let auto = script_rules_with(&base, "auto");
        let set = format!(
            "{nat} istio-inbound meta l4proto tcp tcp dport {{ {} }} counter jump istio-in-redirect",
            ports.join(", ")
        );
        assert!(auto.contains(&set), "{auto:#?}");
        assert!(auto.contains(&format!(
            "{nat} istio-output ip daddr 10.1.0.0/16 counter return"
        )));
        let never = script_rules_with(&base, "never");
        assert_eq!(never.len(), auto.len() + 16);
        let always = script_rules_with(&base, "always");
        assert!(always.contains(&format!(
            "{nat} istio-output ip daddr {{ 10.1.0.0/16, 10.3.0.0/24, 127.0.0.1/32 }} counter return"
        )));
    }

    #[test]
    fn interleaved_per_port_rules_regroup_and_later_inserts_keep_their_place() {
        let args = [
            "--ipv6=false",
            "--dns-servers=",
            "-m=TPROXY",
            "-b=8080,9090,7070",
        ];
        let rules = script_rules_with(&args, "always");
        let mangle = "inet istio-proxy-mangle istio-inbound";
        let want = [
            format!("add rule {mangle} meta l4proto tcp ct state related,established tcp dport {{ 7070, 8080, 9090 }} counter jump istio-divert"),
            format!("add rule {mangle} meta l4proto tcp tcp dport {{ 7070, 8080, 9090 }} counter jump istio-tproxy"),
            format!("insert rule {mangle} index 0 meta l4proto tcp mark 1337 counter return"),
            format!("insert rule {mangle} index 1 iifname lo meta l4proto tcp ip saddr 127.0.0.6/32 counter return"),
            format!("insert rule {mangle} index 2 iifname lo meta l4proto tcp mark != 1338 counter return"),
        ];
        let got: Vec<&String> = rules.iter().filter(|r| r.contains(mangle)).collect();
        assert_eq!(got.len(), 5, "{got:#?}");
        for w in &want {
            assert!(rules.contains(w), "{w} missing from {got:#?}");
        }
    }

    #[test]
    fn overlapping_networks_stay_rules_when_their_action_is_not_idempotent() {
        let mark = |net: &str| NftRule {
            chain: "c".into(),
            index: None,
            stmts: vec![
                Stmt::Address {
                    dir: Direction::Destination,
                    net: cidr(net),
                    negate: false,
                },
                Stmt::Counter,
                Stmt::SetMark(1),
            ],
            purpose: "test",
        };
        // A packet to 10.1.2.3 passes both rules: one set rule would count it once.
        let nested = vec![mark("10.0.0.0/8"), mark("10.1.0.0/16")];
        assert_eq!(with_sets(nested.clone(), NftSets::Always), nested);
        let apart = vec![mark("10.0.0.0/16"), mark("10.2.0.0/16")];
        assert_eq!(with_sets(apart, NftSets::Always).len(), 1);
    }

    #[test]
    fn port_ranges_regroup_only_where_no_overlapping_entries_change_order() {
        let rule = |proto, port: &str, stmt: Stmt| NftRule {
            chain: "c".into(),
            index: None,
            stmts: vec![
                Stmt::Port {
                    proto,
                    dir: Direction::Destination,
                    port: port.parse().unwrap(),
                    negate: false,
                },
                Stmt::Counter,
                stmt,
            ],
            purpose: "test",
        };
        let ret = |proto, port: &str| rule(proto, port, Stmt::Return);
        let jump = |port: &str| rule(Protocol::Tcp, port, Stmt::Jump("x".into()));
        let text = |rules: Vec<NftRule>| -> Vec<String> {
            rules.iter().map(|r| r.stmts[0].to_string()).collect()
        };
        // `-o` with ranges: TCP and UDP alternate; a packet has one protocol, so they regroup.
        let alternating = vec![
            ret(Protocol::Tcp, "22:23"),
            ret(Protocol::Udp, "22:23"),
            ret(Protocol::Tcp, "24"),
            ret(Protocol::Udp, "24"),
        ];
        assert_eq!(
            text(with_sets(alternating, NftSets::Always)),
            ["tcp dport { 22-24 }", "udp dport { 22-24 }"]
        );
        // Port 7 first meets the jump (5-10); regrouping the returns {1, 7} ahead of it would
        // change that, so only consecutive rules of one kind merge.
        let crossing = vec![
            ret(Protocol::Tcp, "1"),
            jump("5-10"),
            ret(Protocol::Tcp, "7"),
        ];
        assert_eq!(with_sets(crossing.clone(), NftSets::Always), crossing);
        // No overlap between the groups: regrouped.
        let apart = vec![
            ret(Protocol::Tcp, "1"),
            jump("5-10"),
            ret(Protocol::Tcp, "11"),
        ];
        assert_eq!(
            text(with_sets(apart, NftSets::Always)),
            ["tcp dport { 1, 11 }", "tcp dport 5-10"]
        );
    }

    #[test]
    fn only_chains_with_rules_are_declared_in_istios_order() {
        let r = |chain, target| rule(Table::Raw, chain, vec![], target);
        let p = plan(
            vec![
                r(Chain::Output, Target::Jump(Chain::IstioOutputDns)),
                r(Chain::IstioOutputDns, Target::ConntrackZone(1)),
                r(Chain::Prerouting, Target::Jump(Chain::IstioInbound)),
            ],
            false,
        );
        let chains: Vec<String> = nft_script(&p)
            .lines()
            .filter(|l| l.starts_with("add chain"))
            .map(String::from)
            .collect();
        assert_eq!(
            chains,
            [
                "add chain inet istio-proxy-raw prerouting { type filter hook prerouting priority -300 ; }",
                "add chain inet istio-proxy-raw output { type filter hook output priority -300 ; }",
                "add chain inet istio-proxy-raw istio-output-dns",
            ]
        );
    }
}
