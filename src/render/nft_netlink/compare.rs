//! Comparing: our tables as dumped against the batch an apply would send, parsed back, rule
//! by rule (Myers' diff over the rules both sides share).

use super::*;

/// A rule ready for comparison.
#[derive(Clone, Debug)]
pub struct CheckedRule {
    /// Normalised expressions, sets by contents.
    pub exprs: Vec<Expr>,
    /// Expected rules: the nft text (`NftRule::body`); found rules: the kernel's handle.
    pub label: String,
}

/// One table's contents for the comparison: chains in order, each chain's rules in order.
#[derive(Clone, Debug, Default)]
pub struct CheckedTable {
    /// The table's name.
    pub name: String,
    /// The table's flags (dormant, …); a batch creates tables with none.
    pub flags: u32,
    /// The chains, in declaration (expected) or dump (found) order.
    pub chains: Vec<ChainInfo>,
    /// Per chain name, its rules in order.
    pub rules: Vec<(String, Vec<CheckedRule>)>,
}

impl CheckedTable {
    pub(super) fn rules_of(&self, chain: &str) -> &[CheckedRule] {
        self.rules
            .iter()
            .find(|(c, _)| c == chain)
            .map_or(&[], |(_, r)| r.as_slice())
    }

    pub(super) fn push_rule(&mut self, chain: &str, rule: CheckedRule) {
        match self.rules.iter_mut().find(|(c, _)| c == chain) {
            Some((_, rules)) => rules.push(rule),
            None => self.rules.push((chain.to_string(), vec![rule])),
        }
    }
}

/// A chain's rules while a batch is replayed: table, chain, and per rule its batch id, the
/// rule and its nft text.
pub(super) type ChainOrder = (String, String, Vec<(Option<u32>, RawRule, String)>);

/// What `batch` (from [`replace_batch`]) leaves in the kernel, table by table: its chains and,
/// per chain, its rules in the order they end up in after the batch's inserts.
pub fn expected_tables(batch: &Batch) -> Result<Vec<CheckedTable>, String> {
    let mut tables: Vec<CheckedTable> = Vec::new();
    let mut sets: HashMap<u32, SetContents> = HashMap::new();
    // Per (table, chain): the rules in their current order, with their batch ids.
    let mut order: Vec<ChainOrder> = Vec::new();
    for m in batch.messages() {
        let (Some(kind), Some(payload)) = (
            netlink_wire::u16_at(&m.bytes, 4),
            m.bytes.get(netlink_wire::NLMSG_HDRLEN..),
        ) else {
            continue;
        };
        if kind == nft_type(NFT_MSG_NEWTABLE)
            && matches!(
                m.origin,
                Origin::Table {
                    op: TableOp::Create,
                    ..
                }
            )
        {
            let (name, flags) = parse_table(payload)?;
            tables.push(CheckedTable {
                name,
                flags,
                ..CheckedTable::default()
            });
        } else if kind == nft_type(NFT_MSG_NEWCHAIN) {
            let chain = parse_chain(payload)?;
            let table = tables
                .iter_mut()
                .find(|t| t.name == chain.table)
                .ok_or("chain before its table")?;
            table.chains.push(chain);
        } else if kind == nft_type(NFT_MSG_NEWSET) {
            let (_, id, contents) = parse_set(payload)?;
            sets.insert(id.ok_or("batch set without an id")?, contents);
        } else if kind == nft_type(NFT_MSG_NEWSETELEM) {
            let elems = parse_set_elems(payload)?;
            let set = sets
                .get_mut(&elems.set_id.ok_or("batch elements without a set id")?)
                .ok_or("elements of an unknown set")?;
            set.keys.extend(elems.keys);
            set.keys.sort();
            set.keys.dedup();
        } else if kind == nft_type(NFT_MSG_NEWRULE) {
            let rule = parse_rule(payload)?;
            let text = match &m.origin {
                Origin::Rule(r) => r.text.to_string(),
                other => other.to_string(),
            };
            let slot = match order
                .iter()
                .position(|(t, c, _)| *t == rule.table && *c == rule.chain)
            {
                Some(i) => i,
                None => {
                    order.push((rule.table.clone(), rule.chain.clone(), Vec::new()));
                    order.len() - 1
                }
            };
            let rules = &mut order[slot].2;
            let flags = netlink_wire::u16_at(&m.bytes, 6).unwrap_or(0);
            let at = match rule.position_id {
                None => rules.len(),
                Some(target) => {
                    let i = rules
                        .iter()
                        .position(|(id, _, _)| *id == Some(target))
                        .ok_or("insert before an unknown rule")?;
                    // With NLM_F_APPEND a positioned rule goes after its target.
                    if flags & NLM_F_APPEND != 0 {
                        i + 1
                    } else {
                        i
                    }
                }
            };
            rules.insert(at, (rule.id, rule, text));
        }
    }
    for (table, chain, rules) in order {
        let t = tables
            .iter_mut()
            .find(|t| t.name == table)
            .ok_or("rule before its table")?;
        for (_, rule, text) in rules {
            let exprs = rule.resolved(&|r| match r {
                SetRef::Id(id) => sets.get(id).cloned(),
                SetRef::Name(_) => None,
            });
            t.push_rule(&chain, CheckedRule { exprs, label: text });
        }
    }
    Ok(tables)
}

/// What a dump of one table found, before its set references are resolved.
#[derive(Clone, Debug, Default)]
pub struct FoundTable {
    /// The table's name.
    pub name: String,
    /// Its flags.
    pub flags: u32,
    /// Its chains, in dump order.
    pub chains: Vec<ChainInfo>,
    /// Its rules, in dump order (chain by chain, each chain in order).
    pub rules: Vec<RawRule>,
    /// Its sets by name, with their elements.
    pub sets: HashMap<String, SetContents>,
}

impl FoundTable {
    /// The names of the sets its rules consult (whose elements are to be dumped).
    pub fn referenced_sets(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| r.set_refs())
            .filter_map(|r| match r {
                SetRef::Name(n) => Some(n),
                SetRef::Id(_) => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The table ready for comparison.
    pub fn checked(&self) -> CheckedTable {
        let mut t = CheckedTable {
            name: self.name.clone(),
            flags: self.flags,
            chains: self.chains.clone(),
            rules: Vec::new(),
        };
        for rule in &self.rules {
            let exprs = rule.resolved(&|r| match r {
                SetRef::Name(n) => self.sets.get(n).cloned(),
                SetRef::Id(_) => None,
            });
            let label = match rule.handle {
                Some(h) => format!("handle {h}"),
                None => "no handle".to_string(),
            };
            t.push_rule(&rule.chain, CheckedRule { exprs, label });
        }
        t
    }
}

/// The differences between one table as expected and as found, as readable lines: table
/// flags, the chain set (names, base chain type, hook, priority, policy), and each chain's
/// rules in order. Empty when they are the same.
pub fn compare_table(expected: &CheckedTable, found: &CheckedTable) -> Vec<String> {
    let t = &expected.name;
    let mut out = Vec::new();
    if found.flags != expected.flags {
        let dormant = if found.flags & 1 != 0 {
            " (dormant)"
        } else {
            ""
        };
        out.push(format!(
            "table inet {t}: flags {}{dormant}, expected {}",
            found.flags, expected.flags
        ));
    }
    for chain in &expected.chains {
        match found.chains.iter().find(|c| c.name == chain.name) {
            None => out.push(format!("{t}: chain {} missing", chain.name)),
            Some(f) if f.base != chain.base => out.push(format!(
                "{t}: chain {} is {}, expected {}",
                chain.name,
                base_text(&f.base),
                base_text(&chain.base)
            )),
            Some(_) => {}
        }
    }
    for chain in &found.chains {
        if !expected.chains.iter().any(|c| c.name == chain.name) {
            let rules = found.rules_of(&chain.name).len();
            out.push(format!(
                "{t}: unexpected chain {} ({}, {rules} rule(s))",
                chain.name,
                base_text(&chain.base)
            ));
        }
    }
    for chain in &expected.chains {
        if !found.chains.iter().any(|c| c.name == chain.name) {
            continue;
        }
        let want = expected.rules_of(&chain.name);
        let have = found.rules_of(&chain.name);
        out.extend(compare_rules(&format!("{t}/{}", chain.name), want, have));
    }
    out
}

pub(super) fn base_text(base: &Option<BaseInfo>) -> String {
    match base {
        None => "a regular chain".to_string(),
        Some(b) => format!("a base chain ({b})"),
    }
}

/// How long the alignment of one chain's rules may search for the fewest differences before
/// it settles for a correct but longer list (only a chain whose rules are heavily reordered
/// gets near it).
pub(super) const ALIGN_DEADLINE: Duration = Duration::from_secs(2);

/// One chain's rules, expected and found, compared in order: the longest common subsequence
/// is in place; around it, an expected rule facing a found one at the same spot "differs",
/// the others are missing or unexpected.
///
/// Linear in memory and, for the usual cases (everything in place, a few rules changed,
/// nothing in common), close to linear in time: each distinct rule becomes a number, and
/// only the rules found on both sides — the only ones a common subsequence can hold — go
/// through Myers' diff (`similar`), which skips a common prefix and suffix first.
pub(super) fn compare_rules(at: &str, want: &[CheckedRule], have: &[CheckedRule]) -> Vec<String> {
    let mut ids: HashMap<&[Expr], usize> = HashMap::new();
    let want_ids = intern(&mut ids, want);
    let have_ids = intern(&mut ids, have);
    let mut on_both = vec![0u8; ids.len()];
    for &id in &want_ids {
        on_both[id] |= 1;
    }
    for &id in &have_ids {
        on_both[id] |= 2;
    }
    // (position in the chain, rule id) of the rules that the other side has too.
    let shared = |ids: &[usize]| -> Vec<(usize, usize)> {
        ids.iter()
            .copied()
            .enumerate()
            .filter(|&(_, id)| on_both[id] == 3)
            .collect()
    };
    let (w, h) = (shared(&want_ids), shared(&have_ids));
    let w_ids: Vec<usize> = w.iter().map(|&(_, id)| id).collect();
    let h_ids: Vec<usize> = h.iter().map(|&(_, id)| id).collect();
    let deadline = Instant::now() + ALIGN_DEADLINE;
    // The aligned pairs (expected position, found position), in order.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for op in capture_diff_deadline(
        Algorithm::Myers,
        &w_ids,
        0..w_ids.len(),
        &h_ids,
        0..h_ids.len(),
        Some(deadline),
    ) {
        if let DiffOp::Equal {
            old_index,
            new_index,
            len,
        } = op
        {
            pairs.extend((0..len).map(|k| (w[old_index + k].0, h[new_index + k].0)));
        }
    }

    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    for (wi, hj) in pairs
        .into_iter()
        .chain(std::iter::once((want.len(), have.len())))
    {
        let (missing, extra) = (i..wi, j..hj);
        let paired = missing.len().min(extra.len());
        for (w, h) in missing.clone().zip(extra.clone()) {
            out.push(format!(
                "{at}: rule {} differs: expected `{}`, found ({}) {}",
                w + 1,
                want[w].label,
                have[h].label,
                exprs_text(&have[h].exprs)
            ));
        }
        for w in missing.skip(paired) {
            out.push(format!("{at}: missing rule {} `{}`", w + 1, want[w].label));
        }
        for h in extra.skip(paired) {
            out.push(format!(
                "{at}: unexpected rule ({}) at position {}: {}",
                have[h].label,
                h + 1,
                exprs_text(&have[h].exprs)
            ));
        }
        (i, j) = (wi + 1, hj + 1);
    }
    out
}

/// Each rule's number: equal rules get the same one, in order of first appearance.
pub(super) fn intern<'a>(
    ids: &mut HashMap<&'a [Expr], usize>,
    rules: &'a [CheckedRule],
) -> Vec<usize> {
    rules
        .iter()
        .map(|r| {
            let next = ids.len();
            *ids.entry(r.exprs.as_slice()).or_insert(next)
        })
        .collect()
}

pub(super) fn exprs_text(exprs: &[Expr]) -> String {
    // In nft syntax where every expression is one `nft_text` knows; raw otherwise.
    crate::render::nft_netlink::text::rule_text(exprs).unwrap_or_else(|| {
        let parts: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
        parts.join(" ")
    })
}
