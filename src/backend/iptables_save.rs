//! The kernel's view of iptables rules: parsing `iptables-save` output, the canonical form our
//! planned rules take in it (so live state can be compared with the plan as plain text), and
//! the comparison itself. Pure text; reading the live state belongs to `apply`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::types::Cidr;
use crate::plan::{Chain, CtState, Match, Owner, Position, Protocol, Rule, Table, Target};

/// Every chain name of ours starts with this (Istio's convention, kept for its tooling).
pub const OUR_CHAIN_PREFIX: &str = "ISTIO_";

/// One table as `iptables-save` prints it: chains in order, each with its rule specs (the text
/// after `-A <chain> `).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// Chain names in the order declared (`:CHAIN POLICY`).
    pub chains: Vec<String>,
    /// Chain name → its rule specs, in order.
    pub rules: BTreeMap<String, Vec<String>>,
    /// The table's text as printed, for rolling back to it.
    pub text: String,
}

impl SavedTable {
    /// The rule specs of a chain; empty for an unknown chain.
    pub fn rules_of(&self, chain: &str) -> &[String] {
        self.rules.get(chain).map(Vec::as_slice).unwrap_or(&[])
    }
    /// Chains of ours present in this table.
    pub fn our_chains(&self) -> impl Iterator<Item = &str> {
        self.chains
            .iter()
            .map(String::as_str)
            .filter(|c| c.starts_with(OUR_CHAIN_PREFIX))
    }
}

/// A whole `iptables-save` dump: table name → table.
pub type Saved = BTreeMap<String, SavedTable>;

/// Parses `iptables-save` output. Comment lines and counters are ignored.
pub fn parse_save(text: &str) -> Saved {
    let mut out = Saved::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            let name = name.trim().to_string();
            out.entry(name.clone()).or_default();
            current = Some(name);
        }
        let Some(table) = current.as_ref().and_then(|t| out.get_mut(t)) else {
            continue;
        };
        table.text.push_str(line);
        table.text.push('\n');
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                table.chains.push(name.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            table
                .rules
                .entry(chain.to_string())
                .or_default()
                .push(spec.to_string());
        } else if line == "COMMIT" {
            current = None;
        }
    }
    out
}

/// Resolves a group name to its gid, as iptables does when it loads a rule.
pub type GroupResolver<'a> = &'a dyn Fn(&str) -> Option<u32>;

/// Formats an address as glibc's `inet_ntop` does (what iptables-save prints): like Rust's
/// form, except that an address whose only zero run is exactly the first six groups
/// (`::a.b.c.d`, IPv4-compatible) keeps a dotted tail.
fn ntop(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => {
            let s = a.segments();
            let compatible = s[..6] == [0; 6] && s[6] != 0;
            if compatible {
                let o = a.octets();
                format!("::{}", Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                a.to_string()
            }
        }
    }
}

/// A network as iptables-save prints it: the address masked to the prefix.
fn saved_net(net: &Cidr) -> String {
    let len = net.prefix_len();
    let masked = match net.addr() {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    format!("{}/{len}", ntop(masked))
}

fn neg(negate: bool) -> &'static str {
    if negate {
        "! "
    } else {
        ""
    }
}

/// A rule as `iptables-save` prints it, without the `-A <chain> ` prefix: address, interface
/// and protocol options first (in the kernel's fixed order), then the match modules in rule
/// order with implicit `-m tcp`/`-m udp`, then the target with the kernel's normalised options.
pub fn canonical_spec(rule: &Rule, resolve: GroupResolver<'_>) -> Result<String, String> {
    let mut head: Vec<String> = Vec::new();
    let mut src = None;
    let mut dst = None;
    let mut iface_in = None;
    let mut iface_out = None;
    let mut proto = None;
    let mut modules: Vec<String> = Vec::new();
    for m in &rule.matches {
        match m {
            Match::Source(net) => src = Some(format!("-s {}", saved_net(net))),
            Match::Destination { net, negate } => {
                // A /0 network matches everything and is not printed at all.
                if net.prefix_len() > 0 || *negate {
                    dst = Some(format!("{}-d {}", neg(*negate), saved_net(net)));
                }
            }
            // A bare `+` matches every interface, and iptables-save prints no option for it.
            Match::InInterface(name) if name.as_str() != "+" => {
                iface_in = Some(format!("-i {name}"))
            }
            Match::OutInterface(name) if name.as_str() != "+" => {
                iface_out = Some(format!("-o {name}"))
            }
            Match::InInterface(_) | Match::OutInterface(_) => {}
            Match::Protocol(p) => proto = Some(*p),
            Match::DestinationPort { port, negate } => {
                modules.push(format!(
                    "-m {} {}--dport {port}",
                    proto_name(proto)?,
                    neg(*negate)
                ));
            }
            Match::SourcePort(port) => {
                modules.push(format!("-m {} --sport {port}", proto_name(proto)?));
            }
            Match::DestinationPortNotIn(ports) => {
                let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
                modules.push(format!("-m multiport ! --dports {}", list.join(",")));
            }
            Match::Owner { owner, negate } => {
                let spec = match owner {
                    Owner::Uid(uid) => format!("--uid-owner {uid}"),
                    Owner::Gid(group) => {
                        let gid = group
                            .gid()
                            .or_else(|| resolve(group.as_str()))
                            .ok_or_else(|| format!("unknown group {:?}", group.as_str()))?;
                        format!("--gid-owner {gid}")
                    }
                };
                modules.push(format!("-m owner {}{spec}", neg(*negate)));
            }
            Match::ConntrackState(state) => {
                let state = match state {
                    CtState::Invalid => "INVALID",
                    CtState::RelatedEstablished => "RELATED,ESTABLISHED",
                };
                modules.push(format!("-m conntrack --ctstate {state}"));
            }
            Match::Mark { mark, negate } => {
                modules.push(format!("-m mark {}--mark {mark:#x}", neg(*negate)))
            }
            Match::ConnMark(mark) => modules.push(format!("-m connmark --mark {mark:#x}")),
        }
    }
    let proto = proto.map(|p| format!("-p {}", proto_str(p)));
    head.extend([src, dst, iface_in, iface_out, proto].into_iter().flatten());
    head.extend(modules);
    head.push(canonical_target(rule));
    Ok(head.join(" "))
}

fn proto_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn proto_name(p: Option<Protocol>) -> Result<&'static str, String> {
    p.map(proto_str)
        .ok_or_else(|| "a port match needs a protocol".to_string())
}

fn canonical_target(rule: &Rule) -> String {
    let any = if rule.matches.iter().any(|m| match m {
        Match::Source(n) | Match::Destination { net: n, .. } => !n.is_ipv4(),
        _ => false,
    }) {
        "::"
    } else {
        "0.0.0.0"
    };
    match &rule.target {
        Target::Jump(chain) => format!("-j {}", chain.name()),
        Target::Return => "-j RETURN".to_string(),
        Target::Accept => "-j ACCEPT".to_string(),
        Target::Drop => "-j DROP".to_string(),
        Target::Redirect(port) => format!("-j REDIRECT --to-ports {port}"),
        Target::Tproxy { mark, port } => {
            format!("-j TPROXY --on-port {port} --on-ip {any} --tproxy-mark {mark:#x}/0xffffffff")
        }
        Target::SetMark(mark) => format!("-j MARK --set-xmark {mark:#x}/0xffffffff"),
        Target::SaveMark => {
            "-j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff".into()
        }
        Target::RestoreMark => {
            "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff".into()
        }
        Target::ConntrackZone(zone) => format!("-j CT --zone {zone}"),
    }
}

/// What one table should hold after applying, in the kernel's final order: the rules of each
/// chain (ours and built-in), inserts placed where `-I` puts them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedTable {
    /// Chain → its rule specs in canonical `iptables-save` form, in final order.
    pub chains: BTreeMap<Chain, Vec<String>>,
}

/// The expected final state of each table of one family's rules.
pub fn expected_tables(
    rules: &[Rule],
    resolve: GroupResolver<'_>,
) -> Result<BTreeMap<Table, ExpectedTable>, String> {
    let mut out: BTreeMap<Table, ExpectedTable> = BTreeMap::new();
    for rule in rules {
        let spec = canonical_spec(rule, resolve).map_err(|e| {
            format!(
                "{} ({}): {e}",
                rule,
                crate::backend::iptables::rule_line(rule)
            )
        })?;
        let table = out.entry(rule.table).or_default();
        let chain = table.chains.entry(rule.chain).or_default();
        match rule.position {
            Position::Append => chain.push(spec),
            Position::Insert(n) => chain.insert((n as usize - 1).min(chain.len()), spec),
        }
        if let Some(target) = rule.jump_target() {
            table.chains.entry(target).or_default();
        }
    }
    Ok(out)
}

/// How the live rules of one family relate to what the plan wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Nothing of ours is there.
    Absent,
    /// Exactly the planned rules are there.
    InPlace,
    /// Some of ours is there, but not exactly the plan; the lines say what differs.
    Drifted(Vec<String>),
}

/// Rules of ours found in a built-in chain: jumps into our chains, and rules equal to one we
/// plan for that chain. (A foreign rule identical to one of ours is indistinguishable from it.)
pub fn ours_in_builtin<'a>(
    live: &'a SavedTable,
    chain: &str,
    expected: &[String],
) -> Vec<&'a String> {
    live.rules_of(chain)
        .iter()
        .filter(|spec| jumps_to_ours(spec) || expected.contains(spec))
        .collect()
}

/// Whether a rule spec jumps into one of our chains.
pub fn jumps_to_ours(spec: &str) -> bool {
    spec.split(' ')
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0] == "-j" && w[1].starts_with(OUR_CHAIN_PREFIX))
}

/// Compares the live dump of one family with the expected tables.
pub fn compare(live: &Saved, expected: &BTreeMap<Table, ExpectedTable>) -> State {
    let mut diffs = Vec::new();
    let mut any_ours = false;
    let tables = [Table::Filter, Table::Mangle, Table::Nat, Table::Raw];
    for table in tables {
        let empty_live = SavedTable::default();
        let live_table = live.get(table.name()).unwrap_or(&empty_live);
        let empty_expected = ExpectedTable::default();
        let want = expected.get(&table).unwrap_or(&empty_expected);
        let t = table.name();
        for chain in live_table.our_chains() {
            any_ours = true;
            let planned = want.chains.keys().any(|c| c.name() == chain);
            if !planned {
                diffs.push(format!("{t}: chain {chain} exists but is not planned"));
            }
        }
        for (chain, rules) in &want.chains {
            let name = chain.name();
            let want_rules: Vec<&String> = rules.iter().collect();
            if chain.is_builtin() {
                // Built-in chains also hold other owners' rules, possibly identical to ours:
                // ours must all be there in order, and the jumps into our chains exactly.
                let live_rules = ours_in_builtin(live_table, name, rules);
                let live_jumps = live_rules.iter().filter(|s| jumps_to_ours(s)).count();
                let want_jumps = rules.iter().filter(|s| jumps_to_ours(s)).count();
                any_ours |= live_jumps > 0;
                if live_jumps != want_jumps || !is_subsequence(&want_rules, &live_rules) {
                    diffs.push(describe_chain_diff(t, name, &live_rules, &want_rules));
                }
                continue;
            }
            if !live_table.chains.iter().any(|c| c == name) {
                diffs.push(format!("{t}: chain {name} is missing"));
                continue;
            }
            let live_rules: Vec<&String> = live_table.rules_of(name).iter().collect();
            if live_rules != want_rules {
                diffs.push(describe_chain_diff(t, name, &live_rules, &want_rules));
            }
        }
        // Jumps into our chains from built-in chains we plan nothing for.
        for chain in &live_table.chains {
            if chain.starts_with(OUR_CHAIN_PREFIX) || want.chains.keys().any(|c| c.name() == chain)
            {
                continue;
            }
            let jumps: Vec<&String> = live_table
                .rules_of(chain)
                .iter()
                .filter(|s| jumps_to_ours(s))
                .collect();
            if !jumps.is_empty() {
                any_ours = true;
                for spec in jumps {
                    diffs.push(format!("{t}: unplanned rule -A {chain} {spec}"));
                }
            }
        }
    }
    if !any_ours {
        State::Absent
    } else if diffs.is_empty() {
        State::InPlace
    } else {
        State::Drifted(diffs)
    }
}

/// When a family's rules of ours are an interrupted install of exactly this plan — every table
/// either exactly as planned or holding nothing of ours, as happens when a run is killed
/// between two tables' commits — the tables still missing. `None` for anything else.
pub fn missing_tables(
    live: &Saved,
    expected: &BTreeMap<Table, ExpectedTable>,
) -> Option<Vec<Table>> {
    let mut missing = Vec::new();
    for table in [Table::Filter, Table::Mangle, Table::Nat, Table::Raw] {
        let live_one: Saved = live
            .get(table.name())
            .map(|t| (table.name().to_string(), t.clone()))
            .into_iter()
            .collect();
        let want_one: BTreeMap<Table, ExpectedTable> = expected
            .get(&table)
            .map(|e| (table, e.clone()))
            .into_iter()
            .collect();
        match compare(&live_one, &want_one) {
            State::InPlace => {}
            State::Absent if want_one.is_empty() => {}
            State::Absent => missing.push(table),
            State::Drifted(_) => return None,
        }
    }
    (!missing.is_empty()).then_some(missing)
}

/// Whether `want` appears in `live` in order (other elements may sit in between).
fn is_subsequence(want: &[&String], live: &[&String]) -> bool {
    let mut live = live.iter();
    want.iter().all(|w| live.any(|l| l == w))
}

fn describe_chain_diff(table: &str, chain: &str, live: &[&String], want: &[&String]) -> String {
    let mut lines = vec![format!("{table}: chain {chain} differs:")];
    for spec in want.iter().filter(|s| !live.contains(s)) {
        lines.push(format!("  missing: -A {chain} {spec}"));
    }
    for spec in live.iter().filter(|s| !want.contains(s)) {
        lines.push(format!("  unexpected: -A {chain} {spec}"));
    }
    if lines.len() == 1 {
        lines.push("  same rules, different order or count".to_string());
    }
    lines.join("\n")
}

/// The `--noflush` restore input that turns the live state of one family into the planned one
/// in one transaction per table: flush (or create) every chain of ours with a `:CHAIN` line,
/// delete our rules from built-in chains, delete chains of ours that are no longer planned, then
/// add the planned rules. Tables with nothing of ours and nothing planned are left out.
pub fn replace_text(
    live: &Saved,
    rules: &[Rule],
    expected: &BTreeMap<Table, ExpectedTable>,
) -> String {
    transaction_text(live, Some(rules), expected)
}

/// The `--noflush` restore input that removes everything of ours from one family: our jumps
/// and planned rules in built-in chains, and every chain of ours.
pub fn cleanup_text(live: &Saved, expected: &BTreeMap<Table, ExpectedTable>) -> String {
    transaction_text(live, None, expected)
}

fn transaction_text(
    live: &Saved,
    rules: Option<&[Rule]>,
    expected: &BTreeMap<Table, ExpectedTable>,
) -> String {
    let mut out = String::new();
    for table in [Table::Filter, Table::Mangle, Table::Nat, Table::Raw] {
        let empty_live = SavedTable::default();
        let live_table = live.get(table.name()).unwrap_or(&empty_live);
        let empty_expected = ExpectedTable::default();
        let want = expected.get(&table).unwrap_or(&empty_expected);
        let planned: Vec<&Rule> = rules
            .unwrap_or(&[])
            .iter()
            .filter(|r| r.table == table)
            .collect();

        let mut lines = Vec::new();
        // Chains to flush or create: every live chain of ours, then every planned one.
        let mut declared: Vec<String> = live_table.our_chains().map(String::from).collect();
        if rules.is_some() {
            for chain in want.chains.keys().filter(|c| !c.is_builtin()) {
                if !declared.iter().any(|d| d == chain.name()) {
                    declared.push(chain.name().to_string());
                }
            }
        }
        for chain in &declared {
            lines.push(format!(":{chain} - [0:0]"));
        }
        // Our rules in built-in chains (jumps, and rules equal to planned ones).
        for chain in live_table
            .chains
            .iter()
            .filter(|c| !c.starts_with(OUR_CHAIN_PREFIX))
        {
            let planned_here: Vec<String> = want
                .chains
                .iter()
                .filter(|(c, _)| c.name() == chain)
                .flat_map(|(_, r)| r.clone())
                .collect();
            // Every jump into our chains goes; a rule equal to a planned one goes once per
            // planned copy, so an identical rule of another owner stays.
            let mut planned_left = planned_here.clone();
            for spec in ours_in_builtin(live_table, chain, &planned_here) {
                if let Some(i) = planned_left.iter().position(|p| p == spec) {
                    planned_left.remove(i);
                } else if !jumps_to_ours(spec) {
                    continue;
                }
                lines.push(format!("-D {chain} {spec}"));
            }
        }
        // Chains of ours that will not be used any more.
        for chain in live_table.our_chains() {
            let keep = rules.is_some() && want.chains.keys().any(|c| c.name() == chain);
            if !keep {
                lines.push(format!("-X {chain}"));
            }
        }
        for rule in planned {
            lines.push(crate::backend::iptables::rule_line(rule));
        }
        if lines.is_empty() {
            continue;
        }
        out.push_str(&format!("*{}\n", table.name()));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The `--noflush` restore input that puts back, table by table, what a run of ours changed
/// between the dump `before` and the dump `now` — and nothing else: chains of ours are flushed
/// and refilled (or deleted), and in other chains only rules of ours (jumps into our chains,
/// rules equal to planned ones, the variant-detection probe) are deleted or re-inserted at
/// their old place. Other owners' rules are never rewritten, so a rule iptables-save cannot
/// print faithfully (an nft set match) survives. Empty when nothing of ours changed.
pub fn undo_text(before: &Saved, now: &Saved, expected: &BTreeMap<Table, ExpectedTable>) -> String {
    let mut out = String::new();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(now.keys()).collect();
    let empty = SavedTable::default();
    for name in names {
        let was = before.get(name).unwrap_or(&empty);
        let is = now.get(name).unwrap_or(&empty);
        let planned = |chain: &str| -> Vec<String> {
            expected
                .iter()
                .filter(|(t, _)| t.name() == name)
                .flat_map(|(_, e)| e.chains.iter())
                .filter(|(c, _)| c.name() == chain)
                .flat_map(|(_, r)| r.clone())
                .collect()
        };
        let (mut declare, mut delete, mut remove, mut refill, mut insert) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Chains of ours: refill those that changed, delete those that are new.
        let mut ours: Vec<&str> = was.our_chains().collect();
        ours.extend(
            is.our_chains()
                .filter(|c| !was.chains.iter().any(|w| w == c)),
        );
        for chain in ours {
            let existed = was.chains.iter().any(|c| c == chain);
            let exists = is.chains.iter().any(|c| c == chain);
            if existed && exists && was.rules_of(chain) == is.rules_of(chain) {
                continue;
            }
            declare.push(format!(":{chain} - [0:0]"));
            if existed {
                refill.extend(
                    was.rules_of(chain)
                        .iter()
                        .map(|r| format!("-A {chain} {r}")),
                );
            } else {
                remove.push(format!("-X {chain}"));
            }
        }
        // Other chains: only rules of ours move.
        for chain in is
            .chains
            .iter()
            .filter(|c| !c.starts_with(OUR_CHAIN_PREFIX))
        {
            let planned = planned(chain);
            let is_ours = |spec: &String| {
                jumps_to_ours(spec)
                    || planned.contains(spec)
                    || (name == "nat" && chain == "OUTPUT" && spec == PROBE_SPEC)
            };
            let (old, new) = (was.rules_of(chain), is.rules_of(chain));
            // Chains without anything of ours (another owner's, however long) are not looked at.
            if old == new || !old.iter().chain(new).any(is_ours) {
                continue;
            }
            let (kept_old, kept_new): (Vec<usize>, Vec<usize>) =
                common_subsequence(old, new).into_iter().unzip();
            for (i, spec) in new.iter().enumerate() {
                if !kept_new.contains(&i) && is_ours(spec) {
                    delete.push(format!("-D {chain} {spec}"));
                }
            }
            // After the deletions the chain holds the common rules (and any foreign rule added
            // meanwhile, which stays); re-insert ours at their old positions among them.
            let mut position = 0;
            for (i, spec) in old.iter().enumerate() {
                if kept_old.contains(&i) {
                    position += 1;
                } else if is_ours(spec) {
                    position += 1;
                    insert.push(format!("-I {chain} {position} {spec}"));
                }
            }
        }
        let lines: Vec<String> = [declare, delete, remove, refill, insert].concat();
        if lines.is_empty() {
            continue;
        }
        out.push_str(&format!("*{name}\n"));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Above this many cells the quadratic table gives way to a greedy in-order match.
const LCS_CELLS: usize = 1 << 20;

/// The pairs of indices `(in a, in b)` of a common subsequence of two rule lists: the longest
/// one for chains of ordinary size (built-in chains of a pod hold tens of rules; equal prefixes
/// and suffixes are matched first anyway), a greedy in-order one beyond `LCS_CELLS`.
fn common_subsequence(a: &[String], b: &[String]) -> Vec<(usize, usize)> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut pairs: Vec<(usize, usize)> = (0..prefix).map(|i| (i, i)).collect();
    if (ma.len() + 1) * (mb.len() + 1) > LCS_CELLS {
        // Each rule is looked for only a short way ahead, so one moved rule cannot make the
        // rest unmatched.
        let mut j = 0;
        for (i, rule) in ma.iter().enumerate() {
            let window = &mb[j..mb.len().min(j + 64)];
            if let Some(k) = window.iter().position(|r| r == rule) {
                pairs.push((prefix + i, prefix + j + k));
                j += k + 1;
            }
        }
        pairs.extend((0..suffix).map(|k| (a.len() - suffix + k, b.len() - suffix + k)));
        return pairs;
    }
    // lengths[i][j]: LCS length of ma[i..] and mb[j..].
    let mut lengths = vec![vec![0usize; mb.len() + 1]; ma.len() + 1];
    for i in (0..ma.len()).rev() {
        for j in (0..mb.len()).rev() {
            lengths[i][j] = if ma[i] == mb[j] {
                lengths[i + 1][j + 1] + 1
            } else {
                lengths[i + 1][j].max(lengths[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < ma.len() && j < mb.len() {
        if ma[i] == mb[j] {
            pairs.push((prefix + i, prefix + j));
            i += 1;
            j += 1;
        } else if lengths[i + 1][j] >= lengths[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    pairs.extend((0..suffix).map(|k| (a.len() - suffix + k, b.len() - suffix + k)));
    pairs
}

/// The rule meshinit's (and Istio's) variant detection adds to and removes from nat OUTPUT:
/// protocol 255 never matches. A run killed in between leaves it behind.
pub const PROBE_SPEC: &str = "-p 255 -j RETURN";

/// How many leftover variant-detection probe rules nat OUTPUT holds.
pub fn leftover_probes(live: &Saved) -> usize {
    live.get("nat")
        .map(|t| {
            t.rules_of("OUTPUT")
                .iter()
                .filter(|s| *s == PROBE_SPEC)
                .count()
        })
        .unwrap_or(0)
}

/// The `--noflush` restore input deleting every leftover probe rule; empty when there is none.
pub fn probe_cleanup_text(live: &Saved) -> String {
    match leftover_probes(live) {
        0 => String::new(),
        n => format!(
            "*nat\n{}COMMIT\n",
            format!("-D OUTPUT {PROBE_SPEC}\n").repeat(n)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::Port;

    fn no_groups(_: &str) -> Option<u32> {
        None
    }

    /// `-A OUTPUT -j ISTIO_OUTPUT` and `-A ISTIO_OUTPUT -j RETURN` in nat: the smallest plan.
    fn nat_output_rules() -> Vec<Rule> {
        vec![
            rule(
                Table::Nat,
                Chain::Output,
                vec![],
                Target::Jump(Chain::IstioOutput),
            ),
            rule(Table::Nat, Chain::IstioOutput, vec![], Target::Return),
        ]
    }

    fn rule(table: Table, chain: Chain, matches: Vec<Match>, target: Target) -> Rule {
        Rule::new(table, chain, "test", matches, target)
    }

    #[test]
    fn addresses_print_like_inet_ntop() {
        let n = |s: &str| saved_net(&s.parse().unwrap());
        assert_eq!(n("10.1.2.3/8"), "10.0.0.0/8");
        assert_eq!(n("127.0.0.1/32"), "127.0.0.1/32");
        assert_eq!(n("::127.0.0.53/128"), "::127.0.0.53/128");
        assert_eq!(n("::ffff:1.2.3.4/128"), "::ffff:1.2.3.4/128");
        assert_eq!(n("::1/128"), "::1/128");
        assert_eq!(n("::6/128"), "::6/128");
        assert_eq!(n("::1:0/128"), "::0.1.0.0/128");
        assert_eq!(n("2001:db8::1:0:0:1/128"), "2001:db8::1:0:0:1/128");
        assert_eq!(n("2001:db8::1/32"), "2001:db8::/32");
    }

    #[test]
    fn canonical_specs_match_what_iptables_save_prints() {
        let lo = "lo".parse().unwrap();
        let tun: Port = "15008".parse().unwrap();
        let r = rule(
            Table::Nat,
            Chain::IstioOutput,
            vec![
                Match::OutInterface(lo),
                Match::Destination {
                    net: "127.0.0.1/32".parse().unwrap(),
                    negate: true,
                },
                Match::Protocol(Protocol::Tcp),
                Match::DestinationPort {
                    port: tun,
                    negate: true,
                },
                Match::Owner {
                    owner: Owner::Uid(1337),
                    negate: false,
                },
            ],
            Target::Jump(Chain::IstioInRedirect),
        );
        assert_eq!(
            canonical_spec(&r, &no_groups).unwrap(),
            "! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"
        );
        let r = rule(
            Table::Mangle,
            Chain::IstioTproxy,
            vec![
                Match::Destination {
                    net: "::1/128".parse().unwrap(),
                    negate: true,
                },
                Match::Protocol(Protocol::Tcp),
            ],
            Target::Tproxy {
                mark: 1337,
                port: "15006".parse().unwrap(),
            },
        );
        assert_eq!(
            canonical_spec(&r, &no_groups).unwrap(),
            "! -d ::1/128 -p tcp -j TPROXY --on-port 15006 --on-ip :: --tproxy-mark 0x539/0xffffffff"
        );
        let group = Match::Owner {
            owner: Owner::Gid("java".parse().unwrap()),
            negate: true,
        };
        let r = rule(Table::Nat, Chain::IstioOutput, vec![group], Target::Return);
        assert!(canonical_spec(&r, &no_groups).is_err());
        assert_eq!(
            canonical_spec(&r, &|g| (g == "java").then_some(4242)).unwrap(),
            "-m owner ! --gid-owner 4242 -j RETURN"
        );
    }

    const LIVE: &str =
        "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :ISTIO_OUTPUT - [0:0]\n:ISTIO_OLD - [0:0]\n-A PREROUTING -i eth9 -j RETURN\n\
        -A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OLD\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n";

    #[test]
    fn save_output_is_parsed_per_chain() {
        let saved = parse_save(LIVE);
        let nat = &saved["nat"];
        assert_eq!(
            nat.chains,
            ["PREROUTING", "OUTPUT", "ISTIO_OUTPUT", "ISTIO_OLD"]
        );
        assert_eq!(nat.rules_of("OUTPUT"), ["-j ISTIO_OUTPUT", "-j ISTIO_OLD"]);
        assert_eq!(
            nat.our_chains().collect::<Vec<_>>(),
            ["ISTIO_OUTPUT", "ISTIO_OLD"]
        );
        assert!(nat.text.starts_with("*nat\n") && nat.text.ends_with("COMMIT\n"));
    }

    #[test]
    fn comparison_finds_absent_in_place_and_drift() {
        let rules = nat_output_rules();
        let expected = expected_tables(&rules, &no_groups).unwrap();
        assert_eq!(compare(&Saved::new(), &expected), State::Absent);
        let foreign = parse_save("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n");
        assert_eq!(compare(&foreign, &expected), State::Absent);
        let exact = parse_save(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j RETURN\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n",
        );
        assert_eq!(compare(&exact, &expected), State::InPlace);
        let State::Drifted(diffs) = compare(&parse_save(LIVE), &expected) else {
            panic!("drift expected")
        };
        let text = diffs.join("\n");
        assert!(
            text.contains("ISTIO_OLD exists but is not planned"),
            "{text}"
        );
    }

    #[test]
    fn an_interrupted_install_is_told_from_a_conflict() {
        let mut rules = nat_output_rules();
        rules.extend([
            rule(
                Table::Raw,
                Chain::Output,
                vec![],
                Target::Jump(Chain::IstioOutputDns),
            ),
            rule(Table::Raw, Chain::IstioOutputDns, vec![], Target::Return),
        ]);
        let expected = expected_tables(&rules, &no_groups).unwrap();
        let nat_only = parse_save(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n",
        );
        assert!(matches!(compare(&nat_only, &expected), State::Drifted(_)));
        assert_eq!(missing_tables(&nat_only, &expected), Some(vec![Table::Raw]));
        assert_eq!(
            missing_tables(&parse_save(LIVE), &expected),
            None,
            "a different install"
        );
        assert_eq!(
            missing_tables(&Saved::new(), &expected),
            Some(vec![Table::Nat, Table::Raw])
        );
    }

    #[test]
    fn replacing_flushes_ours_removes_stale_and_keeps_foreign_rules() {
        let rules = nat_output_rules();
        let expected = expected_tables(&rules, &no_groups).unwrap();
        let text = replace_text(&parse_save(LIVE), &rules, &expected);
        assert_eq!(
            text,
            "*nat\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_OLD - [0:0]\n-D OUTPUT -j ISTIO_OUTPUT\n\
             -D OUTPUT -j ISTIO_OLD\n-X ISTIO_OLD\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n"
        );
        let text = cleanup_text(&parse_save(LIVE), &expected);
        assert_eq!(
            text,
            "*nat\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_OLD - [0:0]\n-D OUTPUT -j ISTIO_OUTPUT\n\
             -D OUTPUT -j ISTIO_OLD\n-X ISTIO_OUTPUT\n-X ISTIO_OLD\nCOMMIT\n"
        );
    }

    #[test]
    fn undoing_touches_only_what_of_ours_changed() {
        let rules = nat_output_rules();
        let expected = expected_tables(&rules, &no_groups).unwrap();
        // Before: a foreign chain (its rule printed lossily by iptables-nft-save) and a
        // foreign rule in OUTPUT; after the write: our chain and jump among them.
        let before = parse_save(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:FOREIGN - [0:0]\n-A OUTPUT -d 10.1.1.1/32 -j ACCEPT\n-A FOREIGN -j ACCEPT\nCOMMIT\n",
        );
        let now = parse_save(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:FOREIGN - [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -d 10.1.1.1/32 -j ACCEPT\n-A OUTPUT -j ISTIO_OUTPUT\n-A FOREIGN -j ACCEPT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n",
        );
        assert_eq!(
            undo_text(&before, &now, &expected),
            "*nat\n:ISTIO_OUTPUT - [0:0]\n-D OUTPUT -j ISTIO_OUTPUT\n-X ISTIO_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(
            undo_text(&before, &before, &expected),
            "",
            "nothing changed"
        );
        // A cleanup undone: our chain refilled, our jump back at its old place between
        // foreign rules; a foreign rule added meanwhile stays.
        let cleaned = parse_save(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:FOREIGN - [0:0]\n-A OUTPUT -d 10.1.1.1/32 -j ACCEPT\n-A OUTPUT -d 10.2.2.2/32 -j ACCEPT\n-A FOREIGN -j ACCEPT\nCOMMIT\n",
        );
        let installed = parse_save(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:FOREIGN - [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -d 10.1.1.1/32 -j ACCEPT\n-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -d 10.2.2.2/32 -j ACCEPT\n-A FOREIGN -j ACCEPT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n",
        );
        assert_eq!(
            undo_text(&installed, &cleaned, &expected),
            "*nat\n:ISTIO_OUTPUT - [0:0]\n-A ISTIO_OUTPUT -j RETURN\n-I OUTPUT 2 -j ISTIO_OUTPUT\nCOMMIT\n"
        );
    }

    #[test]
    fn common_subsequences_are_longest_and_bounded() {
        let list = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            common_subsequence(&list("a x b c"), &list("a b y c")),
            [(0, 0), (2, 1), (3, 3)]
        );
        assert_eq!(common_subsequence(&list("a"), &list("b")), []);
        // Long lists take the greedy path and still give an in-order common subsequence.
        let a: Vec<String> = (0..3000).map(|i| format!("r{i}")).collect();
        let mut b = a.clone();
        b.insert(1500, "ours".to_string());
        b.swap(0, 2999);
        let pairs = common_subsequence(&a, &b);
        assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert!(pairs.iter().all(|&(i, j)| a[i] == b[j]));
        assert!(pairs.len() >= 2990, "{}", pairs.len());
    }

    #[test]
    fn a_bare_plus_interface_prints_as_no_option() {
        let plus: crate::config::types::IfName = "+".parse().unwrap();
        let r = rule(
            Table::Nat,
            Chain::Prerouting,
            vec![Match::InInterface(plus.clone())],
            Target::Return,
        );
        assert_eq!(canonical_spec(&r, &no_groups).unwrap(), "-j RETURN");
        let r = rule(
            Table::Nat,
            Chain::Output,
            vec![Match::OutInterface(plus)],
            Target::Return,
        );
        assert_eq!(canonical_spec(&r, &no_groups).unwrap(), "-j RETURN");
    }

    #[test]
    fn leftover_probes_are_counted_and_deleted() {
        let live = parse_save("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p 255 -j RETURN\n-A OUTPUT -p 255 -j RETURN\nCOMMIT\n");
        assert_eq!(leftover_probes(&live), 2);
        assert_eq!(
            probe_cleanup_text(&live),
            "*nat\n-D OUTPUT -p 255 -j RETURN\n-D OUTPUT -p 255 -j RETURN\nCOMMIT\n"
        );
        assert_eq!(probe_cleanup_text(&Saved::new()), "");
    }
}
