//! What other owners' rules do to ours: the rules ahead of our first jump in a built-in chain
//! that end a packet's walk there (a verdict, or a jump into a chain with one), so capture
//! does not see that traffic. Pure text over `iptables-save` dumps; the executor and `--check` report them.

use std::collections::BTreeMap;

use super::iptables_save::{
    jumps_to_ours, ExpectedTable, Saved, SavedTable, OUR_CHAIN_PREFIX, PROBE_SPEC,
};
use crate::plan::Table;

/// A rule of another owner ahead of our first jump in a built-in chain that ends packets'
/// walk through the chain before they reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadow {
    /// One line naming the table, the rule, its position and our jump.
    pub text: String,
    /// Whether it takes all traffic (no match, a terminal verdict), not only matching packets.
    pub all: bool,
}

/// The rules of other owners that sit before our first jump in a built-in chain and can end a
/// packet's walk there: a verdict ACCEPT, DROP, REJECT or RETURN, or a jump to another
/// owner's chain that can end in ACCEPT, DROP or REJECT. Without a match such a rule takes all
/// traffic (capture is not in effect); with one, only the packets it matches. A rule
/// iptables-save cannot print faithfully (an nft set match) looks unconditional here.
pub fn shadowing(live: &Saved, expected: &BTreeMap<Table, ExpectedTable>) -> Vec<Shadow> {
    let mut out = Vec::new();
    for (table, want) in expected {
        let Some(live_table) = live.get(table.name()) else {
            continue;
        };
        for (chain, planned) in want.chains.iter().filter(|(c, _)| c.is_builtin()) {
            let rules = live_table.rules_of(chain.name());
            let Some(first_jump) = rules.iter().position(|s| jumps_to_ours(s)) else {
                continue;
            };
            for (i, spec) in rules[..first_jump].iter().enumerate() {
                // Ours, or the probe (reported on its own).
                if planned.contains(spec) || (*table == Table::Nat && spec == PROBE_SPEC) {
                    continue;
                }
                let Some((ends, unconditional)) = ends_walk(live_table, spec, 0) else {
                    continue;
                };
                let all = unconditional && (spec.starts_with("-j ") || spec.starts_with("-g "));
                let (t, c) = (table.name(), chain.name());
                let how = if all {
                    "takes all traffic before our jump"
                } else {
                    "takes the traffic it matches before our jump"
                };
                out.push(Shadow {
                    text: format!(
                        "{t}: -A {c} {spec} (rule {}) {how} -A {c} {}{ends}",
                        i + 1,
                        rules[first_jump]
                    ),
                    all,
                });
            }
        }
    }
    out
}

/// Whether a rule can end a packet's walk through its chain, and whether its target does so
/// for every packet: a verdict (`""`, true), or a jump into another owner's chain that holds
/// a verdict (`" (CHAIN ends with …)"`, true when that verdict has no match). `None` when it
/// cannot.
fn ends_walk(table: &SavedTable, spec: &str, depth: usize) -> Option<(String, bool)> {
    let target = target_of(spec)?;
    if ["ACCEPT", "DROP", "REJECT", "RETURN"].contains(&target) {
        return Some((String::new(), true));
    }
    if depth >= 8
        || target.starts_with(OUR_CHAIN_PREFIX)
        || !table.chains.iter().any(|c| c == target)
    {
        return None;
    }
    let mut found: Option<(String, bool)> = None;
    for inner in table.rules_of(target) {
        let unconditional = inner.starts_with("-j ") || inner.starts_with("-g ");
        let hit = match target_of(inner) {
            Some("ACCEPT" | "DROP" | "REJECT") => Some(unconditional),
            // A RETURN sends the packet back to the chain it came from.
            Some("RETURN") if unconditional => break,
            Some("RETURN") => None,
            Some(_) => ends_walk(table, inner, depth + 1)
                .filter(|(e, _)| !e.is_empty())
                .map(|(_, all)| all && unconditional),
            None => None,
        };
        if let Some(all) = hit {
            let why = format!(" ({target} ends with -A {target} {inner})");
            if all {
                return Some((why, true));
            }
            found.get_or_insert((why, false));
        }
    }
    found
}

/// The target of a rule spec: the word after `-j` or `-g`.
fn target_of(spec: &str) -> Option<&str> {
    let words: Vec<&str> = spec.split(' ').collect();
    words
        .windows(2)
        .find(|w| w[0] == "-j" || w[0] == "-g")
        .map(|w| w[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Chain, Rule, Target};
    use crate::render::iptables_save::{expected_tables, parse_save};

    /// `-A OUTPUT -j ISTIO_OUTPUT` and `-A ISTIO_OUTPUT -j RETURN` in nat.
    fn nat_output_rules() -> Vec<Rule> {
        vec![
            Rule::new(
                Table::Nat,
                Chain::Output,
                "test",
                vec![],
                Target::Jump(Chain::IstioOutput),
            ),
            Rule::new(
                Table::Nat,
                Chain::IstioOutput,
                "test",
                vec![],
                Target::Return,
            ),
        ]
    }

    fn no_groups(_: &str) -> Option<u32> {
        None
    }

    #[test]
    fn rules_ahead_of_our_jump_that_end_the_walk_are_named() {
        let rules = nat_output_rules();
        let expected = expected_tables(&rules, &no_groups).unwrap();
        let live = parse_save(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:ALL - [0:0]\n:SOME - [0:0]\n:MARKS - [0:0]\n:ISTIO_OUTPUT - [0:0]\n\
             -A OUTPUT -j MARKS\n-A OUTPUT -p 255 -j RETURN\n-A OUTPUT -d 10.0.0.0/8 -j ACCEPT\n-A OUTPUT -j SOME\n-A OUTPUT -j ALL\n\
             -A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j DROP\n-A MARKS -j MARK --set-xmark 0x1/0xffffffff\n\
             -A SOME -p udp -j DROP\n-A ALL -p udp -j RETURN\n-A ALL -j ACCEPT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n",
        );
        let found = shadowing(&live, &expected);
        let texts: Vec<(&str, bool)> = found.iter().map(|s| (s.text.as_str(), s.all)).collect();
        assert_eq!(
            texts,
            [
                ("nat: -A OUTPUT -d 10.0.0.0/8 -j ACCEPT (rule 3) takes the traffic it matches before our jump -A OUTPUT -j ISTIO_OUTPUT", false),
                ("nat: -A OUTPUT -j SOME (rule 4) takes the traffic it matches before our jump -A OUTPUT -j ISTIO_OUTPUT (SOME ends with -A SOME -p udp -j DROP)", false),
                ("nat: -A OUTPUT -j ALL (rule 5) takes all traffic before our jump -A OUTPUT -j ISTIO_OUTPUT (ALL ends with -A ALL -j ACCEPT)", true),
            ]
        );
    }

    /// Another owner's port range ahead of our jump takes the ports it matches; one after it
    /// (where our capture has already happened) is not reported.
    #[test]
    fn a_foreign_port_range_ahead_of_our_jump_is_named() {
        let expected = expected_tables(&nat_output_rules(), &no_groups).unwrap();
        let live = parse_save(
            "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n\
             -A OUTPUT -p tcp -m tcp --dport 8000:9000 -j ACCEPT\n-A OUTPUT -j ISTIO_OUTPUT\n\
             -A OUTPUT -p udp -m multiport --dports 53,1000:2000 -j DROP\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n",
        );
        let found = shadowing(&live, &expected);
        let texts: Vec<(&str, bool)> = found.iter().map(|s| (s.text.as_str(), s.all)).collect();
        assert_eq!(
            texts,
            [(
                "nat: -A OUTPUT -p tcp -m tcp --dport 8000:9000 -j ACCEPT (rule 1) takes the traffic it matches before our jump -A OUTPUT -j ISTIO_OUTPUT",
                false
            )]
        );
    }
}
